"""Fused token commit of one dLLM decoding step (DESIGN.md 1.2): every commit rule, one launch.

After the forward and ``token_stats``, a decoder decides which masked positions of the active
region take their proposals. The public decoders spend 10-30 small PyTorch ops per step on it
(sorts, top-k, masks, Python loops over windows and runs, ``.item()`` syncs). Here one program
holds a row's whole active region as one register tile and applies R2-dLLM's order::

    base rule (top-k | threshold | dynamic threshold | entropy | entropy bound, + the best candidate)
      -> R2 spatial windows -> R2 token clusters -> R2 temporal stability -> forced progress
      (-> LLaDA2.1 token editing of positions committed by earlier steps, if enabled)

then stores ``x``, ``commit_step`` and the temporal state only where they change, and one
int32 count per row. Memory traffic per region position: ``x`` (8 B) and the statistics it
uses (token 8 B, prob or entropy 4 B) read once; with the temporal rule 20 B of state read and
written at masked positions; the Streaming rule reads ``x`` at the W + 1 kept suffix positions.
k, the regions and the step index are read from device tensors: no host sync.

How the rules map onto a tile:

- Rankings use int64 keys ``(fp32 bits made monotone) << 13 | (BLOCK - 1 - i)``: comparing two
  keys compares the confidences and breaks ties towards the lower position. "The best
  candidate" is a max-reduction of keys; top-k with a runtime k bisects for the k-th largest
  key (45 count-reductions) and keeps the keys >= it.
- Windows and runs need a row's neighbours: shifts of the tile are ``tl.gather``s along the
  row (warp shuffles when the row fits in one warp, shared memory beyond), so the commits of
  each rule reach the next one without a round trip through global memory.
- Token clusters: a run starts where a position does not continue its left neighbour's run.
  Each position finds its run's first and last index with a prefix / suffix max, and the run's
  best key with a prefix max over ``(run start << 45) | key``, read at the run's last index.
  The scans are log2(BLOCK) doubling steps of shifts; like the bisection they avoid
  ``tl.sort`` and custom-combine ``tl.associative_scan``, which Triton's interpreter runs
  element by element in Python (seconds per call), so the CPU tests can cover every rule.
- Entropy bound (EB-sampler, DiffusionGemma): "the entropies ranked before i sum to <= bound"
  is an exact rank-and-prefix-sum without a sort: entropies become int64 fixed point (2**-36
  units, so sums are exact in any order) and each position adds up the candidates with larger
  keys, CHUNK columns at a time (O(BLOCK^2) integer compare-adds; not timed on a GPU yet).
- Renoise (uniform-state models, ``RENOISE``): the rest of the region draws ``r mod V`` from
  ``tl.randint4x`` under the row's seed at ``(position, row step)``; the argmax streaks
  (``RenoiseState``) give vLLM's all-history-rows-equal test as "every streak >= ST", and one
  reduction per row the mean-entropy test and the ``converged`` flag.
- Pinned positions (``HAS_PIN``) are removed from the candidates and never stored.
- Exactness: floats are aggregated in the reference's fp32 order (window sums left to right,
  streak sums step by step), divisions are correctly rounded (``div_rn``) and no product feeds
  an addition, so FMA contraction on the GPU cannot change a decision.

Under the interpreter one program handles ``ROWS`` rows as a ``[ROWS, BLOCK]`` tile (its cost
is per op and program, not per element); on the GPU ``ROWS = 1``: one program per row.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

import torch
import triton
import triton.language as tl

from . import _utils
from ._utils import (
    ENTROPY_CAP,
    ENTROPY_FRAC_BITS,
    IS_INTERPRET,
    MAX_COMMIT_POSITIONS,
    AotSpec,
    CommitRule,
    CommitState,
    RenoiseState,
    aot_signature,
    cdiv,
    check_launchable,
    dense,
    next_pow2,
)

BASES = {"topk": 0, "threshold": 1, "dynamic": 2, "entropy": 3, "entropy_bound": 4}
AGGS = {"last": 0, "mean": 1, "max": 2}
_MAX_TILE = tl.constexpr(MAX_COMMIT_POSITIONS)
_IDX_BITS = tl.constexpr(MAX_COMMIT_POSITIONS.bit_length() - 1)  # a key's low bits: the position
_KEY_BIAS = tl.constexpr(1 << 44)  # |key| < 2**44; key + bias >= 0 fits in 45 bits
_NONE = tl.constexpr(-(1 << 62))  # the key of a non-candidate, below every real key
_INTERPRET_MAX_ROWS = 64
_FIXED_SCALE = tl.constexpr(float(2**ENTROPY_FRAC_BITS))  # entropies in fixed point (entropy_bound)
_CAP = tl.constexpr(ENTROPY_CAP)


@triton.jit
def _order_key(b_v, o_t, BLOCK: tl.constexpr):
    """int64 keys ordering positions by ``b_v`` (fp32) descending, then by position ascending."""
    b_v = tl.where(b_v == 0.0, 0.0, b_v)  # -0.0 and +0.0 are one value
    b_bits = b_v.to(tl.int32, bitcast=True)
    b_ord = tl.where(b_bits < 0, b_bits ^ 0x7FFFFFFF, b_bits)  # monotone in b_v as a signed int
    return (b_ord.to(tl.int64) << _IDX_BITS) | (BLOCK - 1 - o_t)


@triton.jit
def _gather_row(b, o_src, BLOCK: tl.constexpr):
    """``b[r, o_src[r, i]]`` for a ``[ROWS, BLOCK]`` tile. Gathers on the flattened tile: Triton
    gives a 2-D gather a warp-local layout that holds the whole row in every warp (32 registers
    per vector at BLOCK 1024, and spills), while a 1-D gather goes through shared memory, or
    through shuffles when the row fits in one warp."""
    ROWS: tl.constexpr = b.shape[0]
    o_flat = tl.reshape(tl.arange(0, ROWS)[:, None] * BLOCK + o_src, [ROWS * BLOCK])
    return tl.reshape(tl.gather(tl.reshape(b, [ROWS * BLOCK]), o_flat, 0), [ROWS, BLOCK])


@triton.jit
def _shift(b, o_t, d, BLOCK: tl.constexpr):
    """``b[:, i + d]`` at every ``i``, the index clamped to the tile (a read past an edge returns
    the edge element; each caller states why that is harmless or masks it)."""
    return _gather_row(b, tl.minimum(tl.maximum(o_t + d, 0), BLOCK - 1), BLOCK)


@triton.jit
def _scan_max(b, o_t, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """Inclusive prefix max along the row (suffix max if REVERSE) in log2(BLOCK) doubling steps
    (Hillis-Steele); a clamped shift stays inside the prefix, so the edges need no mask. (Not
    tl.associative_scan: Triton's interpreter runs custom-combine scans element by element.)"""
    for i in tl.static_range(_IDX_BITS):
        if (1 << i) < BLOCK:
            b = tl.maximum(b, _shift(b, o_t, (1 << i) if REVERSE else -(1 << i), BLOCK))
    return b


@triton.jit
def _best(b_key, m_cand):
    """The candidate with the largest key in each row (none in rows without candidates)."""
    b_k = tl.where(m_cand, b_key, _NONE)
    return m_cand & (b_k == tl.max(b_k, 1)[:, None])


@triton.jit
def _top_k(b_key, m_cand, b_k):
    """The min(k, #candidates) candidates with the largest keys in each row: bisection for the
    k-th largest key over the key range (keys are unique, so ``key >= it`` selects exactly k).
    45 count-reductions, no sort (Triton's interpreter sorts element by element)."""
    b_k = tl.minimum(tl.maximum(b_k, 0), tl.sum(m_cand.to(tl.int32), 1))  # [ROWS]
    b_lo = tl.full(b_k.shape, -_KEY_BIAS, tl.int64)  # at least k candidate keys are >= lo
    b_hi = tl.full(b_k.shape, _KEY_BIAS, tl.int64)  # fewer than k are >= hi
    for _ in range(45):  # keys lie in [-2**44, 2**44)
        b_mid = b_lo + (b_hi - b_lo) // 2
        m_enough = tl.sum((m_cand & (b_key >= b_mid[:, None])).to(tl.int32), 1) >= b_k
        b_lo = tl.where(m_enough, b_mid, b_lo)
        b_hi = tl.where(m_enough, b_hi, b_mid)
    return m_cand & (b_key >= b_lo[:, None]) & (b_k > 0)[:, None]


@triton.jit
def _dynamic_threshold(
    p_row, stride_xl, m_r, b_end, b_n, n_mask, L, mask_id, tau0, alpha, suffix_window, o_l, BLOCK: tl.constexpr
):
    """Streaming-dLLM: tau_t = tau0 * (1 - alpha * (1 - r_mask)) per row, as
    ``tau0 * (1 - (alpha * (n - n_mask)) / n)`` over the region (n_mask of its b_n positions
    masked) plus the kept suffix: ``[end, end + W)`` and the canvas's last position."""
    b_stop = tl.minimum(b_end + suffix_window, L)  # [ROWS]
    n = b_n + tl.maximum(b_stop - b_end, 0)
    for j0 in range(0, suffix_window, BLOCK):
        o_p = b_end[:, None] + j0 + o_l  # [ROWS, BLOCK]
        m_p = m_r[:, None] & (o_p < b_stop[:, None])
        b_x = tl.load(p_row[:, None] + o_p * stride_xl, mask=m_p, other=0)
        n_mask += tl.sum((m_p & (b_x == mask_id)).to(tl.int32), 1)
    m_last = m_r & (b_stop < L)  # the last position lies beyond the window
    b_last = tl.load(p_row + (L - 1) * stride_xl, mask=m_last, other=0)  # [ROWS]
    n_mask += (m_last & (b_last == mask_id)).to(tl.int32)
    n += m_last.to(tl.int32)
    q = tl.math.div_rn(alpha * (n - n_mask).to(tl.float32), tl.maximum(n, 1).to(tl.float32))
    return tau0 * (1.0 - q)


@triton.jit
def _spatial_rule(m_und, b_conf, b_n, o_t, max_decided, tau_s, W: tl.constexpr, BLOCK: tl.constexpr):
    """R2 confidence clusters over the undecided positions ``m_und`` of each row's region."""
    # per window start i: the sum of its undecided confidences (left to right, as the
    # reference) and a packed count: undecided positions + 32 * those with a non-finite conf
    b_cu = tl.where(m_und, b_conf, 0.0)  # [ROWS, BLOCK]
    b_code = tl.where(m_und, tl.where(tl.abs(b_conf) < float("inf"), 1, 33), 0)
    b_sum = tl.zeros(b_cu.shape, tl.float32)
    b_cnt = tl.zeros(b_code.shape, tl.int32)
    for k in tl.static_range(W):
        b_sum += _shift(b_cu, o_t, k, BLOCK)
        b_cnt += _shift(b_code, o_t, k, BLOCK)
    n_und = b_cnt % 32
    ok = (o_t + W <= b_n[:, None]) & (W - n_und <= max_decided) & (n_und > 0) & (b_cnt < 32)
    b_mean = tl.math.div_rn(b_sum, tl.maximum(n_und, 1).to(tl.float32))
    b_pass = (ok & (b_mean >= tau_s)).to(tl.int32)
    # position i is covered by the windows starting at i - W + 1 .. i (for i < j the clamped
    # read is window 0, which covers i too)
    m_cov = b_pass != 0
    for j in tl.static_range(1, W):
        m_cov |= _shift(b_pass, o_t, -j, BLOCK) != 0
    return m_und & m_cov


@triton.jit
def _token_cluster_rule(m_live, b_tok, b_conf, o_t, min_len, tau_s, BLOCK: tl.constexpr):
    """R2 token clusters: the most confident position of every maximal run of >= min_len
    still-masked positions with one proposal, if its confidence is > tau_s."""
    # i extends the run of i - 1 (m_cont), i + 1 extends the run of i (m_next). At the tile's
    # edges the clamped shifts compare a position with itself: harmless, since the first index
    # of a run starting at 0 is 0 and the last of a run ending at BLOCK - 1 is BLOCK - 1 anyway.
    m_prev = _shift(m_live.to(tl.int32), o_t, -1, BLOCK) != 0
    m_cont = m_live & m_prev & (_shift(b_tok, o_t, -1, BLOCK) == b_tok)
    m_next = _shift(m_cont.to(tl.int32), o_t, 1, BLOCK) != 0
    b_first = _scan_max(tl.where(m_cont, 0, o_t), o_t, False, BLOCK)  # the run's first index
    b_last = BLOCK - 1 - _scan_max(tl.where(m_next, 0, BLOCK - 1 - o_t), o_t, True, BLOCK)  # its last
    b_key = _order_key(b_conf, o_t, BLOCK) + _KEY_BIAS  # [ROWS, BLOCK], in [0, 2**45)
    # a prefix max of (first index, key) stays inside the run: earlier runs have lower firsts
    b_run = _scan_max((b_first.to(tl.int64) << 45) | b_key, o_t, False, BLOCK)
    b_run_key = _gather_row(b_run, b_last, BLOCK) & ((1 << 45) - 1)  # the run's best key
    return m_live & (b_key == b_run_key) & (b_last - b_first + 1 >= min_len) & (b_conf > tau_s)


@triton.jit
def _token_edit_rule(m, m_mask, b_x, b_tok, b_conf, commit_step_ptr, p_state, tau_e):
    """LLaDA2.1 token editing: a region position with a valid proposal (``m``) that an earlier
    step committed (not masked, ``commit_step >= 0``: never the prompt) takes its proposal if it
    differs and its confidence is > tau_e (strict)."""
    m_old = m & ~m_mask
    b_cs = tl.load(commit_step_ptr + p_state, mask=m_old, other=-1)
    return m_old & (b_cs >= 0) & (b_tok != b_x) & (b_conf > tau_e)


@triton.jit
def _fixed_entropy(b_ent):
    """Entropies in fixed point, int64: ``floor(clamp(H, 0, cap) * 2**36)`` (exact for
    ``H >= 2**-13``): their sums are exact whatever the order of addition."""
    return tl.floor(tl.minimum(tl.maximum(b_ent, 0.0), _CAP) * _FIXED_SCALE).to(tl.int64)


@triton.jit
def _entropy_bound_rule(b_key, b_q, m_cand, eb_q, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """Base "entropy_bound": the candidates whose predecessors (larger keys = lower entropy, ties
    -> lower position) have fixed-point entropies summing to ``<= eb_q``. An exact rank-and-sum,
    no sort: for each CHUNK of columns j (gathered from the row tile), every position i adds
    ``q_j`` where ``key_j > key_i``: O(BLOCK^2) integer compare-adds in [ROWS, BLOCK, CHUNK]
    tiles; non-candidates carry the lowest key and q = 0, so they never rank first."""
    ROWS: tl.constexpr = b_key.shape[0]
    b_kc = tl.reshape(tl.where(m_cand, b_key, _NONE), [ROWS * BLOCK])
    b_qc = tl.reshape(tl.where(m_cand, b_q, 0), [ROWS * BLOCK])
    o_row = tl.arange(0, ROWS)[:, None] * BLOCK  # [ROWS, 1]
    b_s = tl.zeros([ROWS, BLOCK], tl.int64)
    for j0 in range(0, BLOCK, CHUNK):
        o_c = tl.reshape(o_row + j0 + tl.arange(0, CHUNK)[None, :], [ROWS * CHUNK])
        b_kj = tl.reshape(tl.gather(b_kc, o_c, 0), [ROWS, 1, CHUNK])
        b_qj = tl.reshape(tl.gather(b_qc, o_c, 0), [ROWS, 1, CHUNK])
        b_s += tl.sum(tl.where(b_kj > b_key[:, :, None], b_qj, 0), 2)  # [ROWS, BLOCK]
    return m_cand & (b_s <= eb_q)


@triton.jit(
    do_not_specialize=[
        "B",
        "L",
        "Ls",
        "mask_id",
        "tok_hi",
        "suffix_window",
        "max_decided",
        "min_len",
        "temporal_n",
        "stab_n",
        "max_steps",
    ]
)
def _commit_kernel(
    x_ptr,  # [B, L] int64 canvas, updated in place
    stride_xb,
    stride_xl,
    tok_ptr,  # [B, Ls] int64 proposals    (column j = canvas position offset[b] + j)
    conf_ptr,  # [B, Ls] fp32 probabilities (same layout)
    ent_ptr,  # [B, Ls] fp32 entropies     (same layout)
    stride_sb,
    stride_sl,
    step_ptr,  # [] int32/int64 step index
    commit_step_ptr,  # [B, L] int32, contiguous
    last_ptr,  # [B, L] int64 temporal state, contiguous (TEMPORAL)
    count_ptr,  # [B, L] int32 (TEMPORAL)
    sum_ptr,  # [B, L] fp32 (TEMPORAL)
    max_ptr,  # [B, L] fp32 (TEMPORAL)
    rows_ptr,  # [6, B] contiguous: active start, end, force start, end, stats offset, top-k count
    pin_ptr,  # [B, L] bool, contiguous: pinned positions (HAS_PIN)
    arg_ptr,  # [B, Ls] int64 argmax, the stats' layout (RENOISE)
    seed_ptr,  # [B] int64 renoise seeds (RENOISE)
    amax_ptr,  # [B, L] int64 argmax history, contiguous (RENOISE)
    run_ptr,  # [B, L] int32 argmax streaks (RENOISE)
    steps_ptr,  # [B] int32 steps per row (RENOISE)
    conv_ptr,  # [B] bool converged (RENOISE)
    out_ptr,  # [B] int32 positions committed per row
    B,
    L,
    Ls,
    mask_id,
    tok_hi,  # proposals must lie in [0, tok_hi) and differ from mask_id
    tau,  # threshold / tau0
    alpha,
    suffix_window,
    tau_h,
    max_decided,
    tau_s,
    min_len,
    temporal_n,
    tau_t,
    tau_e,  # token-edit threshold (TOKEN_EDIT)
    eb_q,  # entropy bound in fixed point (BASE 4)
    conf_q,  # renoise: confidence threshold in fixed point, rounded up
    stab_n,  # renoise: argmax streak a stable position needs
    max_steps,  # renoise: step cap
    BASE: tl.constexpr,  # 0 top-k, 1 threshold, 2 dynamic threshold, 3 entropy, 4 entropy bound
    COMMIT_BEST: tl.constexpr,
    ENTROPY_STRICT: tl.constexpr,
    SPATIAL_W: tl.constexpr,  # 0 = off
    TOKEN_CLUSTER: tl.constexpr,
    TEMPORAL: tl.constexpr,
    AGG: tl.constexpr,  # 0 last, 1 mean, 2 max
    TOKEN_EDIT: tl.constexpr,
    HAS_PIN: tl.constexpr,
    RENOISE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    CHUNK: tl.constexpr,  # entropy bound: columns per compare-add step
):
    tl.static_assert(BLOCK <= _MAX_TILE)
    i_p = tl.program_id(0)
    o_r = i_p * ROWS + tl.arange(0, ROWS)  # [ROWS] rows
    m_r = o_r < B
    o_l = tl.arange(0, BLOCK)[None, :]  # [1, BLOCK] position in the region
    o_t = tl.broadcast_to(o_l, (ROWS, BLOCK))  # [ROWS, BLOCK]

    # the active region, clipped to the canvas and the stats window (validated on CPU inputs)
    b_off = tl.load(rows_ptr + 4 * B + o_r, mask=m_r, other=0).to(tl.int64)  # [ROWS]
    b_start = tl.maximum(tl.maximum(tl.load(rows_ptr + o_r, mask=m_r, other=0).to(tl.int64), b_off), 0)
    b_end = tl.minimum(tl.minimum(tl.load(rows_ptr + B + o_r, mask=m_r, other=0).to(tl.int64), b_off + Ls), L)
    b_n = tl.maximum(b_end - b_start, 0).to(tl.int32)  # [ROWS]
    o_p = b_start[:, None] + o_l  # [ROWS, BLOCK] canvas positions
    m = m_r[:, None] & (o_l < b_n[:, None])

    p_row = x_ptr + o_r.to(tl.int64) * stride_xb  # [ROWS]
    p_x = p_row[:, None] + o_p * stride_xl  # [ROWS, BLOCK]
    b_x = tl.load(p_x, mask=m, other=0)
    m_mask = m & (b_x == mask_id)  # masked at step start
    p_s = o_r[:, None].to(tl.int64) * stride_sb + (o_p - b_off[:, None]) * stride_sl
    b_tok = tl.load(tok_ptr + p_s, mask=m, other=0)
    m_valid = (b_tok >= 0) & (b_tok < tok_hi) & (b_tok != mask_id)  # a proposal that may be written
    p_state = o_r[:, None].to(tl.int64) * L + o_p  # [ROWS, BLOCK] into the contiguous [B, L] state
    m_free = m  # region positions the step may write
    if HAS_PIN:  # a pinned position is no candidate of any rule and never written
        m_free = m & (tl.load(pin_ptr + p_state, mask=m, other=0) == 0)
        m_valid = m_valid & m_free
    if RENOISE:
        m_cand = m & m_valid  # uniform state: every position is decided anew
    else:
        m_cand = m_mask & m_valid
    # non-finite statistics: NaN confidence reads as -inf, NaN entropy as +inf (the reference's
    # order); every comparison below is then an IEEE comparison of non-NaN values
    if BASE < 3 or SPATIAL_W > 0 or TOKEN_CLUSTER or TEMPORAL or TOKEN_EDIT:
        b_conf = tl.load(conf_ptr + p_s, mask=m, other=0.0)
        b_conf = tl.where(b_conf == b_conf, b_conf, float("-inf"))
    if BASE >= 3:
        b_ent = tl.load(ent_ptr + p_s, mask=m, other=0.0)
        b_ent = tl.where(b_ent == b_ent, b_ent, float("inf"))
        b_key = _order_key(-b_ent, o_t, BLOCK)  # best = lowest entropy
    else:
        b_key = _order_key(b_conf, o_t, BLOCK)  # best = highest probability

    # ---- rules 1-4: the base rule ---------------------------------------------------------
    if BASE == 0:
        m_take = _top_k(b_key, m_cand, tl.load(rows_ptr + 5 * B + o_r, mask=m_r, other=0))
    elif BASE == 4:
        b_q = _fixed_entropy(b_ent)
        m_take = _entropy_bound_rule(b_key, b_q, m_cand, eb_q, CHUNK, BLOCK)
    elif BASE == 3:
        if ENTROPY_STRICT:
            m_take = m_cand & (b_ent < tau_h)
        else:
            m_take = m_cand & (b_ent <= tau_h)
    elif BASE == 2:
        n_mask = tl.sum(m_mask.to(tl.int32), 1)
        b_tau = _dynamic_threshold(
            p_row, stride_xl, m_r, b_end, b_n, n_mask, L, mask_id, tau, alpha, suffix_window, o_l, BLOCK
        )
        m_take = m_cand & (b_conf >= b_tau[:, None])
    else:
        m_take = m_cand & (b_conf >= tau)
    if COMMIT_BEST:
        m_take |= _best(b_key, m_cand)

    # ---- rules 5-6: R2 spatial windows, then token clusters on what is still masked --------
    if SPATIAL_W > 0:
        m_take |= _spatial_rule(m_cand & ~m_take, b_conf, b_n, o_t, max_decided, tau_s, SPATIAL_W, BLOCK)
    if TOKEN_CLUSTER:
        m_take |= _token_cluster_rule(m_cand & ~m_take, b_tok, b_conf, o_t, min_len, tau_s, BLOCK)

    # ---- uniform state (DiffusionGemma): the entropy-bound set m_take takes its proposals, every
    # other free (region, unpinned) position a uniform token r mod V from 63 bits of Philox under
    # the row's seed at the counter (position, steps); the argmax streaks, the row's convergence
    # test and, for a converged row, the argmax canvas
    if RENOISE:
        b_seed = tl.load(seed_ptr + o_r, mask=m_r, other=0)  # [ROWS]
        b_steps = tl.load(steps_ptr + o_r, mask=m_r, other=0)  # [ROWS] int32
        c0, c1, _, _ = tl.randint4x(b_seed[:, None], (b_steps.to(tl.int64)[:, None] << 32) | o_p)
        b_rand = (((c1.to(tl.int64) & 0x7FFFFFFF) << 32) | c0.to(tl.int64)) % tok_hi  # [ROWS, BLOCK]
        # argmax streaks: all ST history rows of vLLM equal <=> every streak >= ST
        b_arg = tl.load(arg_ptr + p_s, mask=m_free, other=0)
        b_prev = tl.load(amax_ptr + p_state, mask=m_free, other=-1)
        b_run = tl.load(run_ptr + p_state, mask=m_free, other=0)
        b_run = tl.where(b_prev == b_arg, tl.minimum(b_run, (1 << 30) - 1) + 1, 1)
        n_free = tl.sum(m_free.to(tl.int32), 1)  # [ROWS]
        m_unstable = tl.sum((m_free & (b_run < stab_n)).to(tl.int32), 1) > 0
        m_huge = tl.sum((m_free & (b_ent >= _CAP)).to(tl.int32), 1) > 0
        b_total = tl.sum(tl.where(m_free, b_q, 0), 1)  # exact: fixed point
        m_conf = (n_free > 0) & ~m_huge & (b_total < n_free.to(tl.int64) * conf_q)
        b_steps = b_steps + 1
        m_conv = (~m_unstable & m_conf) | (b_steps >= max_steps)  # [ROWS]
        m_live = m_r & (b_n > 0)
        b_new = tl.where(m_conv[:, None], b_arg, tl.where(m_take, b_tok, b_rand))
        tl.store(p_x, b_new, mask=m_free)
        tl.store(amax_ptr + p_state, b_arg, mask=m_free)
        tl.store(run_ptr + p_state, b_run, mask=m_free)
        tl.store(steps_ptr + o_r, b_steps, mask=m_live)
        tl.store(conv_ptr + o_r, m_conv, mask=m_live)
        step = tl.load(step_ptr).to(tl.int32)
        tl.store(commit_step_ptr + p_state, tl.zeros(b_run.shape, tl.int32) + step, mask=m_free & m_conv[:, None])
        n_take = tl.sum(m_take.to(tl.int32), 1)
        tl.store(out_ptr + o_r, tl.where(m_conv, n_free, n_take), mask=m_r)
        return

    # ---- rule 7: R2 temporal stability of the positions masked at step start and still masked
    if TEMPORAL:
        m_act = m_cand & ~m_take
        b_last = tl.load(last_ptr + p_state, mask=m_cand, other=-1)
        b_cnt = tl.load(count_ptr + p_state, mask=m_cand, other=0)
        b_sum = tl.load(sum_ptr + p_state, mask=m_cand, other=0.0)
        b_max = tl.load(max_ptr + p_state, mask=m_cand, other=0.0)
        m_same = b_last == b_tok
        b_cnt = tl.where(m_same, b_cnt + 1, 1)
        b_sum = tl.where(m_same, b_sum + b_conf, b_conf)
        b_peak = tl.maximum(b_max, b_conf, propagate_nan=tl.PropagateNan.ALL)  # NaN state: as torch.maximum
        b_max = tl.where(m_same, b_peak, b_conf)
        if AGG == 0:
            b_agg = b_conf
        elif AGG == 1:
            b_agg = tl.math.div_rn(b_sum, b_cnt.to(tl.float32))
        else:
            b_agg = b_max
        m_take |= m_act & (b_cnt >= temporal_n) & (b_agg >= tau_t)

    # ---- forced progress: the force region's best candidate if the rules left it empty -------
    b_fs = tl.load(rows_ptr + 2 * B + o_r, mask=m_r, other=0).to(tl.int64)
    b_fe = tl.load(rows_ptr + 3 * B + o_r, mask=m_r, other=0).to(tl.int64)
    m_force = m_cand & (o_p >= b_fs[:, None]) & (o_p < b_fe[:, None])
    m_starved = tl.sum((m_force & m_take).to(tl.int32), 1) == 0  # [ROWS]
    m_take |= _best(b_key, m_force) & m_starved[:, None]

    # ---- token editing (LLaDA2.1) of positions committed by earlier steps -------------------
    if TOKEN_EDIT:
        m_write = m_take | _token_edit_rule(m & m_valid, m_mask, b_x, b_tok, b_conf, commit_step_ptr, p_state, tau_e)
    else:
        m_write = m_take

    # ---- stores: only where something changes ------------------------------------------------
    step = tl.load(step_ptr).to(tl.int32)
    tl.store(p_x, b_tok, mask=m_write)
    tl.store(commit_step_ptr + p_state, tl.zeros([ROWS, BLOCK], tl.int32) + step, mask=m_take)
    if TEMPORAL:  # streaks of the still-masked positions; committed positions start afresh
        tl.store(last_ptr + p_state, tl.where(m_take, -1, b_tok), mask=m_cand)
        tl.store(count_ptr + p_state, tl.where(m_take, 0, b_cnt), mask=m_cand)
        tl.store(sum_ptr + p_state, tl.where(m_take, 0.0, b_sum), mask=m_cand)
        tl.store(max_ptr + p_state, tl.where(m_take, 0.0, b_max), mask=m_cand)
    tl.store(out_ptr + o_r, tl.sum(m_write.to(tl.int32), 1), mask=m_r)


# ------------------------------------------------------------------------------------------------
# launcher
# ------------------------------------------------------------------------------------------------


def _block(L: int, Ls: int) -> int:
    """Tile width: the longest region the shapes allow (never a data-dependent size)."""
    return max(32, next_pow2(min(L, Ls)))


def _num_warps(block: int) -> int:
    """About 64 positions per warp: 1 warp for a 32/64-token block, 16 for 1024+ positions."""
    return max(1, min(16, block // 64))


def _chunk(block: int) -> int:
    """Columns per compare-add step of the entropy bound: ~16 int64 per thread of the
    ``[BLOCK, CHUNK]`` tile on the GPU; up to 64 columns under the interpreter (cost per op)."""
    if IS_INTERPRET:
        return min(block, 64)
    return max(1, min(block, 16 * 32 * _num_warps(block) // block))


def fixed_bound(value: float, ceil: bool = False) -> int:
    """``floor`` (``ceil``) of ``fp32(value) * 2**36``: a rule's entropy number in the units of
    :func:`_fixed_entropy` (= ``dllm_kernels.reference.commit.fixed_bound``)."""
    scaled = struct.unpack("f", struct.pack("f", value))[0] * 2**ENTROPY_FRAC_BITS
    return math.ceil(scaled) if ceil else math.floor(scaled)


def _flags(rule: CommitRule, pinned: bool = False) -> dict:
    return dict(
        BASE=BASES[rule.base],
        COMMIT_BEST=rule.commit_best,
        ENTROPY_STRICT=rule.entropy_strict,
        SPATIAL_W=rule.spatial_window,
        TOKEN_CLUSTER=rule.token_cluster,
        TEMPORAL=rule.temporal_steps > 0,
        AGG=AGGS[rule.temporal_agg],
        TOKEN_EDIT=rule.token_edit,
        HAS_PIN=pinned,
        RENOISE=rule.renoise,
    )


def commit(
    x: torch.Tensor,
    token: torch.Tensor,
    prob: torch.Tensor,
    entropy: torch.Tensor,
    state: CommitState,
    rule: CommitRule,
    rows: torch.Tensor,
    step: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    pinned: torch.Tensor | None = None,
    argmax: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
    renoise_state: RenoiseState | None = None,
) -> torch.Tensor:
    """Launch the commit kernel (one launch). Inputs are assumed validated by the public op;
    ``token``, ``prob``, ``entropy`` (and ``argmax``) are the ``[B, Ls]`` statistics, sharing
    one layout; ``rows`` the ``[6, B]`` per-row table of ``dllm_kernels.commit.pack_rows`` (read
    densely: a strided view is copied); ``vocab_size < 0``: no upper bound on proposals;
    ``pinned`` a contiguous bool ``[B, L]``; with ``rule.renoise``, ``seed`` the int64 ``[B]``
    seeds (``argmax`` defaults to ``token``) and ``renoise_state`` is updated."""
    check_launchable("commit", x, token, state.commit_step)
    rows = dense(rows)
    B, L = x.shape
    Ls = token.shape[1]
    block = _block(L, Ls)
    rows_per_program = min(next_pow2(B), _INTERPRET_MAX_ROWS) if IS_INTERPRET else 1
    counts = _utils.empty(B, dtype=torch.int32, device=x.device)
    if B == 0:
        return counts
    _commit_kernel[(cdiv(B, rows_per_program),)](
        x,
        x.stride(0),
        x.stride(1),
        token,
        prob,
        entropy,
        token.stride(0),
        token.stride(1),
        step,
        state.commit_step,
        state.last_id,
        state.count,
        state.conf_sum,
        state.conf_max,
        rows,
        x if pinned is None else pinned,
        token if argmax is None else argmax,
        x if seed is None else dense(seed),
        *(
            (renoise_state.argmax, renoise_state.stable_steps, renoise_state.steps, renoise_state.converged)
            if rule.renoise
            else (x, x, x, x)
        ),
        counts,
        B,
        L,
        Ls,
        mask_id,
        vocab_size if vocab_size >= 0 else 2**63 - 1,
        rule.threshold,
        rule.alpha,
        rule.suffix_window,
        rule.entropy_threshold,
        rule.spatial_max_decided,
        rule.spatial_threshold,
        rule.cluster_min_len,
        rule.temporal_steps,
        rule.temporal_threshold,
        rule.edit_threshold,
        fixed_bound(rule.entropy_bound),
        fixed_bound(rule.confidence_threshold, ceil=True),
        rule.stability_steps,
        rule.max_steps,
        **_flags(rule, pinned is not None),
        ROWS=rows_per_program,
        BLOCK=block,
        CHUNK=_chunk(block),
        num_warps=_num_warps(block),
    )
    return counts


# Ahead-of-time configurations of the commit rules the policies launch (the list comes from
# dllm_kernels.policies.compiled_rules, see _aot.py): every rule at the tile of a 32-token block
# (also with int32 index tensors), of a 1024-token canvas and of a 4096-token canvas; the heaviest
# rules (R2's three gates: windows, runs, streaks) at every tile width. Tiles up to 1024 positions
# must not spill; whole long canvases may (R2 keeps ~30 vectors of the row live: at 4096
# positions they exceed the register file).
MAIN_MAX_BLOCK = 1024


def _aot_configs(rules: Mapping[str, CommitRule]):
    seen = []
    for label, rule in rules.items():
        # uniform-state rules also with pinned positions (vLLM's diffusion_pinned infill)
        for pinned in (False, True) if rule.renoise else (False,):
            flags = _flags(rule, pinned)
            if flags in seen:  # the same compiled variant (rules differ only in runtime numbers)
                continue
            seen.append(flags)
            tag = f"{label},pinned" if pinned else label
            yield tag, flags, 32, "i32"
            heavy = rule.spatial_window > 0 and rule.token_cluster and rule.temporal_steps > 0
            if heavy:
                blocks = (32, 64, 128, 256, 512, 1024, 2048, 4096)
            elif rule.renoise:  # DiffusionGemma's canvas: 256 positions
                blocks = (32, 256, 1024, 4096)
            else:
                blocks = (32, 1024, 4096)
            for block in blocks:
                yield tag, flags, block, "i64"


def aot_specs(rules: Mapping[str, CommitRule]):
    """One spec per configuration of ``rules`` (label -> rule; labels name the specs)."""
    specs = []
    for label, flags, block, index in _aot_configs(rules):
        specs.append(
            AotSpec(
                name=f"commit[{label},BLOCK={block},index={index}]",
                kernel=_commit_kernel,
                signature=aot_signature(
                    _commit_kernel,
                    {
                        "x_ptr tok_ptr last_ptr arg_ptr seed_ptr amax_ptr": "*i64",
                        "conf_ptr ent_ptr sum_ptr max_ptr": "*fp32",
                        "commit_step_ptr count_ptr run_ptr steps_ptr out_ptr": "*i32",
                        "pin_ptr conv_ptr": "*i1",
                        "step_ptr rows_ptr": f"*{index}",
                        "stride_xb stride_xl stride_sb stride_sl B L Ls suffix_window": "i32",
                        "max_decided min_len temporal_n stab_n max_steps": "i32",
                        "mask_id tok_hi eb_q conf_q": "i64",
                        "tau alpha tau_h tau_s tau_t tau_e": "fp32",
                    },
                ),
                constexprs={**flags, "ROWS": 1, "BLOCK": block, "CHUNK": _chunk(block)},
                num_warps=_num_warps(block),
                main=block <= MAIN_MAX_BLOCK,
            )
        )
    return specs
