"""Confidence statistics of a dLLM decoding step, fused.

``token_stats``: one pass over the vocabulary per row gives the proposal token (argmax, or a
Gumbel-max sample), its probability, the top-1/top-2 margin and the entropy. The decoders compute
the same with 5-10 PyTorch ops (softmax, max, topk, log, mul, sum, gather, ...) that each read or
write the ``[rows, V]`` tensor; here the logits are read exactly once and 16 bytes per row are
written.

Online softmax with a pivot ``m`` (the largest logit seen), ``s = sum(exp(z - m))`` and
``u = sum(exp(z - m) * (z - m))``::

    p_i = exp(z_i - m) / s,   H = -sum p_i log p_i = log s - u / s

Every lane of the tile keeps its own state ``(m, s, u, top-2, argmax id[, best Gumbel score,
its logit and id])`` over the loop, updated element-wise with one ``exp`` per logit: a logit
above the lane's pivot becomes the pivot and rescales the lane's sums by ``t = exp(m - z)``,
otherwise it adds ``t = exp(z - m)``. Nothing is reduced across the block inside the loop; the
lanes' states are merged once after it, by the same merge (:func:`_merge`) that combines the
vocabulary splits of a row and the shards of a tensor-parallel vocabulary. Keeping ``u``
relative to the pivot (rather than ``sum(e * z)``) avoids cancelling two numbers of the size of
the logits when the entropy is small. Ties resolve to the lowest id: a lane sees its ids in
increasing order and keeps the first of equal values (strict ``>``); merges take the lowest id
among the states holding the maximum.

PTX for sm_90a (4 warps, bf16, counted on ``triton.compile(..., target=GPUTarget("cuda", 90,
32))`` output; the loop = the basic blocks on a cycle through its header): the former loop
reduced ``(max, sum, sum)`` across the block every iteration, 9 ``bar.sync`` per iteration,
argmax and sampling alike (21 / 30 in the kernel). With per-lane state the loop holds no
reduction; the 3-stage ``tl.range`` pipeline (``cp.async``, two tiles in flight ahead of the one
being reduced) costs 2 ``bar.sync`` per iteration (21 / 30 in all, the rest in the merge after
the loop). 128 registers (96 sampling), no spills. ``tests/test_token_stats.py`` checks the count.

Extreme values (one definition for the kernel and the reference):

- ``-inf`` is an impossible token; ``NaN`` counts as ``-inf`` (as do ``suppress_ids``). A row
  without a logit above ``-inf`` gives token 0, prob 0, margin 0, entropy ``+inf``.
- ``+inf`` logits (an fp16 LM-head overflow) take all the mass: the distribution is uniform over
  the ``+inf`` entries (the limit of the softmax), so one ``+inf`` gives that token, prob 1,
  margin 1, entropy 0; ``k`` of them give the lowest such id (at every temperature), prob 1/k,
  margin 0 (k > 1), entropy log k. Internally the pivot may be ``+inf``; ``z == m`` then counts
  as ``exp(0)``.
- Logits spanning more than the fp32 range (``finfo.min`` tiles next to ordinary values) are
  fine: every rescale ``t * (m - z)`` is taken as 0 where ``t`` underflows to 0, never ``0 * inf``.
- Sampling scores ``z * (1 / T) - log(-log U)`` are fp32; a score that overflows to ``-inf``
  (``finfo.min`` logits at T < 1) is still a candidate (the lowest id wins a tie at ``-inf``),
  ``U == 0`` (probability 2**-31) is raised to 2**-32 so that the noise is always finite.

Temperatures, tempered statistics, bitmask (constexpr-selected, off in the loop's launches):

- ``ROW_TEMP``: one fp32 temperature per row; ``1 / T`` is computed in the kernel, rounded
  correctly (``div_rn``, as the reference), and a T = 0 row scores its raw logits (its argmax).
- ``TEMPERED``: ``(s, u)`` are sums over ``d = (z - m) * inv`` with the pivot ``m`` kept in raw
  logit units (vLLM 0.33's remedy: scaling the row by 1e10 first makes ``exp(z - m)`` 0 or inf
  for the maximum itself), so the statistics of ``softmax(z / T)`` stay finite as T -> 0; T = 0
  takes ``inv = 1 / 1e-10``. Merges scale the pivot distances alike.
- ``ALLOWED``: an int32 bitmask row (xgrammar's layout, bit ``v % 32`` of word ``v // 32`` for
  global id ``v``); a zero bit makes the logit ``-inf`` before anything else reads it.
- ``VLLM``: vLLM 0.33's ``_row_stats_kernel`` noise, term for term: ``U = max(tl.rand(seed, row *
  V + v), 1e-20)``, score ``z * (1 / max(T, 1e-10)) + (-log(-log U)) * (T > 0)`` with Triton's
  ``/``, strict ``>`` from ``-inf`` (a row whose scores are all ``-inf`` keeps no sample id).

Error bound (fp32 accumulation, any input dtype, inputs upcast exactly): prob and margin are
within about ``4e-6`` (absolute) of an fp64 reference and entropy within about ``1e-5 * (1 + H)``;
the token is exact at temperature 0.

Small row counts (a 32-token block) would leave most SMs idle with one program per row, so the
vocabulary is split across ``NS`` programs per row that write partial states, merged by a tiny
combine kernel. The partial state is also the public tensor-parallel format
(``token_stats_partial`` / ``merge_token_stats``): 8 words per row, fp32
``(m, s, u, v2, gumbel score, its logit)`` then int32 ``(argmax id, sampled id)``, ids global.

``window_confidence``: the R2-dLLM spatial rule's aggregation over sliding windows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _utils
from ._utils import (
    IS_INTERPRET,
    TORCH_TO_TRITON,
    AotSpec,
    aot_signature,
    cdiv,
    check_launchable,
    next_pow2,
    programs_target,
)

# Partial state of one row (or one split of a row): 8 32-bit words, fp32 (m, s, u, v2, gs, gz)
# then int32 (i1, gi); see the module docstring. Absent ids are INT_MAX (2147483647); uniforms
# of exactly 0 (tl.rand returns 0 with probability 2**-31) are raised to 2**-32.
PARTIAL_WORDS = 8
_MAX_SPLITS = 64


@triton.jit
def _merge(b_m, b_s, b_u, b_v2, b_i1, b_gs, b_gz, b_gi, inv_s, SAMPLE: tl.constexpr, TEMPERED: tl.constexpr):
    """Merge a vector of online-softmax states (tile lanes, vocabulary splits or shards) into one.

    (m, s, u) are moved onto the common pivot ``m = max(b_m)``: ``a = exp(b_m - m)``, ``s = sum
    a * b_s``, ``u = sum a * (b_u + b_s * (b_m - m))``, with ``a * (b_m - m)`` taken as 0 where
    ``a`` underflows (no ``0 * inf``) and a distance of 0 between equal pivots (``+inf`` ones too).
    ``TEMPERED``: the distances are ``(b_m - m) * inv_s`` (pivots stay raw logits).
    """
    m = tl.max(b_m, 0)
    pivot = tl.where(m > float("-inf"), m, 0.0)
    b_piv = tl.where(b_m > float("-inf"), b_m, pivot)  # states without a finite logit have s = u = 0
    b_d = tl.where(b_piv == pivot, 0.0, b_piv - pivot)
    if TEMPERED:
        b_d = b_d * inv_s
    b_a = tl.exp(b_d)
    s = tl.sum(b_a * b_s, 0)
    u = tl.sum(b_a * b_u + b_s * tl.where(b_a > 0.0, b_a * b_d, 0.0), 0)
    # top-1 is m itself; its id is the lowest among the states holding it
    i1 = tl.min(tl.where(b_m == m, b_i1, 2147483647), 0)
    is_top = (b_m == m) & (b_i1 == i1)
    v2 = tl.maximum(tl.max(b_v2, 0), tl.max(tl.where(is_top, float("-inf"), b_m), 0))
    if SAMPLE:
        gs = tl.max(b_gs, 0)
        gi = tl.min(tl.where(b_gs == gs, b_gi, 2147483647), 0)
        gz = tl.max(tl.where((b_gs == gs) & (b_gi == gi), b_gz, float("-inf")), 0)
    else:
        gs, gi, gz = m, i1, m
    return m, s, u, v2, i1, gs, gz, gi


@triton.jit
def _finalize(row, m, s, u, v2, z_tok, i_tok, token_ptr, prob_ptr, margin_ptr, entropy_ptr, inv_t, TEMPERED):
    """Write the statistics of one row from its merged online-softmax state (``TEMPERED``: of
    ``softmax(z * inv_t)``, whose distances from the raw pivot are scaled by ``inv_t``)."""
    # A row without a logit above -inf has no distribution: token 0, prob 0, margin 0 and
    # entropy +inf, the least confident values under every measure.
    valid = m > float("-inf")
    pivot = tl.where(valid, m, 0.0)
    inv_s = 1.0 / tl.where(valid, s, 1.0)
    d_tok = tl.where(z_tok == pivot, 0.0, z_tok - pivot)  # z == +inf pivot -> 1 / s
    d_v2 = tl.where(v2 == pivot, 0.0, v2 - pivot)
    if TEMPERED:
        d_tok = d_tok * inv_t
        d_v2 = d_v2 * inv_t
    prob = tl.exp(d_tok) * inv_s
    margin = (1.0 - tl.exp(d_v2)) * inv_s
    entropy = tl.maximum(tl.log(tl.where(valid, s, 1.0)) - u * inv_s, 0.0)
    # i_tok is INT_MAX only under vLLM's noise where every score overflowed to -inf (its token 0)
    tl.store(token_ptr + row, tl.where(valid & (i_tok != 2147483647), i_tok, 0).to(tl.int64))
    tl.store(prob_ptr + row, tl.where(valid, prob, 0.0))
    tl.store(margin_ptr + row, tl.where(valid, margin, 0.0))
    tl.store(entropy_ptr + row, tl.where(valid, entropy, float("inf")))


@triton.jit
def _store_partial(p_f, p_i, m, s, u, v2, i1, gs, gz, gi):
    tl.store(p_f + 0, m)
    tl.store(p_f + 1, s)
    tl.store(p_f + 2, u)
    tl.store(p_f + 3, v2)
    tl.store(p_f + 4, gs)
    tl.store(p_f + 5, gz)
    tl.store(p_i + 6, i1)
    tl.store(p_i + 7, gi)


@triton.jit
def _emit(
    row,
    state,
    token_ptr,
    prob_ptr,
    margin_ptr,
    entropy_ptr,
    p_f,
    p_i,
    w,
    inv_s,
    FINAL: tl.constexpr,
    TEMPERED: tl.constexpr,
):
    """Write a merged ``state`` (:func:`_merge`'s tuple): the row's statistics (``FINAL``), else
    the partial state at word ``w`` of ``p_f`` (fp32 words) / ``p_i`` (the same memory as int32
    words)."""
    m, s, u, v2, i1, gs, gz, gi = state
    if FINAL:
        _finalize(row, m, s, u, v2, gz, gi, token_ptr, prob_ptr, margin_ptr, entropy_ptr, inv_s, TEMPERED)
    else:
        _store_partial(p_f + w, p_i + w, m, s, u, v2, i1, gs, gz, gi)


@triton.jit
def _row_temperature(temp_ptr, i_r, inv_t, inv_s, ROW_TEMP: tl.constexpr, VLLM: tl.constexpr):
    """``(inv, hot, inv_stat)`` of row ``i_r``: the inverse temperature of its sampling scores,
    whether it samples, and the inverse temperature of its statistics (TEMPERED launches read it).

    Per-row temperatures (``ROW_TEMP``) are read as fp32; T = 0 samples nothing and its statistics
    take T = 1e-10. vLLM's noise computes ``1 / max(T, 1e-10)`` with Triton's ``/`` as vLLM 0.33
    does (approximate on the GPU); ours rounds correctly (``div_rn``), as the reference does."""
    if ROW_TEMP:
        t = tl.load(temp_ptr + i_r).to(tl.float32)
        if VLLM:
            inv = 1.0 / tl.maximum(t, 1e-10)
        else:
            inv = tl.math.div_rn(1.0, tl.where(t > 0.0, t, 1e-10))
        hot = t > 0.0
        inv_stat = inv
    else:
        inv = inv_t
        hot = inv_t > 0.0
        inv_stat = inv_s
    return inv, hot, inv_stat


@triton.jit(do_not_specialize=["L", "V", "v_off", "V_row", "chunk", "n_splits", "seed", "stride_ar"])
def _token_stats_kernel(
    x_ptr,  # logits; element (b, l, v) at b * stride_b + l * stride_l + v * stride_v
    stride_b,
    stride_l,
    stride_v,
    L,  # rows per batch entry (1 for 2-D logits)
    V,  # vocabulary entries in this tensor (a shard's width under tensor parallelism)
    v_off,  # global id of entry 0 (the shard's vocab_start; 0 for a whole vocabulary)
    V_row,  # row stride of the Philox offsets: the global vocabulary size (scalar seed)
    chunk,  # vocabulary entries per split, a multiple of BLOCK
    n_splits,  # programs per row along the vocabulary
    inv_t,  # 1 / temperature (SAMPLE and not ROW_TEMP)
    inv_s,  # 1 / temperature of the statistics (TEMPERED and not ROW_TEMP)
    temp_ptr,  # [R] fp32 per-row temperatures (ROW_TEMP)
    seed,  # Philox seed (SAMPLE and not ROW_SEED)
    seed_ptr,  # [R] int64 per-row seeds (ROW_SEED)
    allowed_ptr,  # [R, W] int32 allowed-token bitmask, bit j of word w = global id 32 w + j (ALLOWED)
    stride_ar,  # row stride of the bitmask, in words
    token_ptr,  # [R] int64                (FINAL)
    prob_ptr,  # [R] fp32                 (FINAL)
    margin_ptr,  # [R] fp32                 (FINAL)
    entropy_ptr,  # [R] fp32                 (FINAL)
    part_f_ptr,  # [R, n_splits, 8] fp32 words (not FINAL)
    part_i_ptr,  # the same memory as int32 words
    FINAL: tl.constexpr,  # n_splits == 1 and statistics wanted: write them, not a partial state
    SUPPRESS: tl.constexpr,  # tuple of global token ids whose logits count as -inf
    SAMPLE: tl.constexpr,  # Gumbel-max sampling at temperature 1 / inv_t
    ROW_SEED: tl.constexpr,  # U(row, v) = rand(seed[row], v) instead of rand(seed, row * V_row + v)
    ROW_TEMP: tl.constexpr,  # per-row temperatures at temp_ptr (T = 0: no sampling in that row)
    TEMPERED: tl.constexpr,  # statistics of softmax(z / T) instead of softmax(z)
    ALLOWED: tl.constexpr,  # logits of ids whose bit is 0 in the bitmask count as -inf
    VLLM: tl.constexpr,  # vLLM 0.33's Gumbel noise: U clamped at 1e-20, scores z * inv + g * (T > 0)
    CONTIG: tl.constexpr,  # stride_v == 1
    BLOCK: tl.constexpr,
    STAGES: tl.constexpr,  # software-pipelined tiles (cp.async): STAGES - 1 tiles in flight ahead
):
    i_r, i_s = tl.program_id(0), tl.program_id(1)
    i_b, i_l = i_r // L, i_r % L
    p_row = x_ptr + i_b.to(tl.int64) * stride_b + i_l.to(tl.int64) * stride_l
    o_lane = tl.arange(0, BLOCK)
    v_start = i_s * chunk
    v_end = tl.minimum(v_start + chunk, V)
    inv, hot, inv_stat = _row_temperature(temp_ptr, i_r, inv_t, inv_s, ROW_TEMP, VLLM)
    if SAMPLE:
        if ROW_SEED:
            row_seed = tl.load(seed_ptr + i_r)
        else:
            row_off = i_r.to(tl.int64) * V_row + v_off
    if ALLOWED:
        p_allowed = allowed_ptr + i_r.to(tl.int64) * stride_ar

    # per-lane state, [BLOCK] each; no reduction across lanes inside the loop
    b_m = tl.full([BLOCK], float("-inf"), tl.float32)  # pivot: the lane's largest logit (its top-1)
    b_s = tl.zeros([BLOCK], tl.float32)  # sum exp(z - m)
    b_u = tl.zeros([BLOCK], tl.float32)  # sum exp(z - m) * (z - m)
    b_v2 = tl.full([BLOCK], float("-inf"), tl.float32)  # the lane's second largest logit
    b_i1 = tl.full([BLOCK], 2147483647, tl.int32)  # id of the lane's top-1
    if SAMPLE:
        b_gs = tl.full([BLOCK], float("-inf"), tl.float32)  # best Gumbel score
        b_gz = tl.full([BLOCK], float("-inf"), tl.float32)  # its logit
        b_gi = tl.full([BLOCK], 2147483647, tl.int32)  # its id
    else:  # no Gumbel state: _merge does not read these without SAMPLE
        b_gs, b_gz, b_gi = b_m, b_m, b_i1

    for v0 in tl.range(v_start, v_end, BLOCK, num_stages=STAGES):
        o_v = v0 + o_lane  # [BLOCK] local ids
        m_v = o_v < v_end
        if CONTIG:
            p_x = p_row + o_v
        else:
            p_x = p_row + o_v.to(tl.int64) * stride_v
        b_z = tl.load(p_x, mask=m_v, other=float("-inf")).to(tl.float32)  # [BLOCK]
        b_z = tl.where(b_z == b_z, b_z, float("-inf"))  # NaN counts as -inf
        o_g = o_v + v_off  # [BLOCK] global ids
        for k in tl.static_range(len(SUPPRESS)):
            b_z = tl.where(o_g == SUPPRESS[k], float("-inf"), b_z)
        if ALLOWED:
            b_word = tl.load(p_allowed + (o_g >> 5), mask=m_v, other=0)  # [BLOCK] int32
            b_z = tl.where(((b_word >> (o_g & 31)) & 1) != 0, b_z, float("-inf"))
        valid = b_z > float("-inf")

        # online softmax per lane, one exp: t = exp(-|z - m|) rescales the sums when z becomes
        # the pivot (z > m) and is z's own weight otherwise; t * d is 0 where t underflows
        gt = b_z > b_m  # strict: the first of equal logits keeps the top-1 (lowest id)
        b_d = tl.where(b_z == b_m, 0.0, b_z - b_m)  # [BLOCK]; 0 for +inf == +inf
        if TEMPERED:  # distances from the raw pivot, scaled: finite as T -> 0
            b_d = b_d * inv_stat
        b_t = tl.where(valid, tl.exp(-tl.abs(b_d)), 0.0)
        b_w = tl.where(b_t > 0.0, b_t * b_d, 0.0)
        b_u = tl.where(gt, b_t * b_u - b_s * b_w, b_u + b_w)
        b_s = tl.where(gt, b_s * b_t + 1.0, b_s + b_t)
        b_v2 = tl.where(gt, b_m, tl.maximum(b_v2, b_z))
        b_i1 = tl.where(gt, o_g, b_i1)
        b_m = tl.where(gt, b_z, b_m)

        if SAMPLE:
            # Gumbel-max: argmax(z / T + g), g = -log(-log(U)); U keyed by the global id
            if ROW_SEED:
                b_r = tl.rand(row_seed, o_g)
            else:
                b_r = tl.rand(seed, row_off + o_v)
            if VLLM:  # vLLM 0.33's expression, term for term (a T = 0 row scores z * 1e10 + g * 0)
                b_r = tl.maximum(b_r, 1e-20)
                b_gum = -tl.log(-tl.log(b_r))
                b_g = b_z * inv + b_gum * hot.to(tl.float32)
                take = b_g > b_gs  # as vLLM: a -inf score is never taken
            else:
                b_r = tl.maximum(b_r, 2.3283064365386963e-10)
                b_g = tl.where(b_z == float("inf"), float("inf"), b_z * inv - tl.log(-tl.log(b_r)))
                if ROW_TEMP:  # a T = 0 row scores its raw logits: its argmax
                    b_g = tl.where(hot, b_g, b_z)
                take = (b_g > b_gs) | ((b_gi == 2147483647) & valid)  # a -inf score is still a candidate
            b_gs = tl.where(take, b_g, b_gs)
            b_gz = tl.where(take, b_z, b_gz)
            b_gi = tl.where(take, o_g, b_gi)

    state = _merge(b_m, b_s, b_u, b_v2, b_i1, b_gs, b_gz, b_gi, inv_stat, SAMPLE, TEMPERED)
    w = (i_r.to(tl.int64) * n_splits + i_s) * 8
    _emit(
        i_r, state, token_ptr, prob_ptr, margin_ptr, entropy_ptr, part_f_ptr, part_i_ptr, w, inv_stat, FINAL, TEMPERED
    )


@triton.jit(do_not_specialize=["n_splits", "stride_r", "stride_s"])
def _token_stats_combine_kernel(
    part_f_ptr,  # partial states, fp32 words; state (row r, split j) at r * stride_r + j * stride_s
    part_i_ptr,  # the same memory as int32 words
    stride_r,
    stride_s,
    n_splits,
    token_ptr,  # [R] int64 (FINAL)
    prob_ptr,  # [R] fp32 (FINAL)
    margin_ptr,  # [R] fp32 (FINAL)
    entropy_ptr,  # [R] fp32 (FINAL)
    out_f_ptr,  # [R, 8] fp32 words (not FINAL: the merged partial state)
    out_i_ptr,  # the same memory as int32 words
    inv_s,  # 1 / temperature of the statistics (TEMPERED and not ROW_TEMP)
    temp_ptr,  # [R] fp32 per-row temperatures (TEMPERED and ROW_TEMP)
    FINAL: tl.constexpr,
    SAMPLE: tl.constexpr,  # the partials hold sampled ids (else gs/gz/gi repeat m/m/i1)
    NS_P2: tl.constexpr,  # next power of two >= n_splits
    TEMPERED: tl.constexpr,  # the partials are states of softmax(z / T)
    ROW_TEMP: tl.constexpr,  # (TEMPERED) per-row temperatures at temp_ptr
    VLLM: tl.constexpr,  # 1 / T computed as vLLM's kernel does (see _row_temperature)
):
    i_r = tl.program_id(0)
    inv, hot, inv_stat = _row_temperature(temp_ptr, i_r, inv_s, inv_s, ROW_TEMP, VLLM)
    o_s = tl.arange(0, NS_P2)
    m_s = o_s < n_splits
    w = i_r.to(tl.int64) * stride_r + o_s.to(tl.int64) * stride_s  # [NS_P2]
    p_f, p_i = part_f_ptr + w, part_i_ptr + w
    b_m = tl.load(p_f + 0, mask=m_s, other=float("-inf"))
    b_s = tl.load(p_f + 1, mask=m_s, other=0.0)
    b_u = tl.load(p_f + 2, mask=m_s, other=0.0)
    b_v2 = tl.load(p_f + 3, mask=m_s, other=float("-inf"))
    b_i1 = tl.load(p_i + 6, mask=m_s, other=2147483647)
    if SAMPLE:
        b_gs = tl.load(p_f + 4, mask=m_s, other=float("-inf"))
        b_gz = tl.load(p_f + 5, mask=m_s, other=float("-inf"))
        b_gi = tl.load(p_i + 7, mask=m_s, other=2147483647)
    else:  # _merge does not read these without SAMPLE
        b_gs, b_gz, b_gi = b_m, b_m, b_i1
    state = _merge(b_m, b_s, b_u, b_v2, b_i1, b_gs, b_gz, b_gi, inv_stat, SAMPLE, TEMPERED)
    w_o = i_r.to(tl.int64) * 8
    _emit(
        i_r, state, token_ptr, prob_ptr, margin_ptr, entropy_ptr, out_f_ptr, out_i_ptr, w_o, inv_stat, FINAL, TEMPERED
    )


# ------------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------------

# Elements per loop iteration: 4 KiB of logits per program and iteration on the GPU (enough
# bytes in flight per SM at 4 warps), half that when sampling (its per-lane state grows).
_GPU_BLOCK = {torch.float32: 1024, torch.float16: 2048, torch.bfloat16: 2048}
_GPU_WARPS = 4
# Tiles of the loop pipelined through shared memory: two 4 KiB tiles in flight ahead of the one
# being reduced (12 KiB of shared memory per program), at 2 bar.sync per iteration for the hand-off.
_GPU_STAGES = 3
# The interpreter costs ~0.4 ms per tl op per program whatever the block size: few, big blocks.
_INTERPRET_BLOCK = 8192


def _token_stats_config(dtype: torch.dtype, n_rows: int, V: int, sample: bool, device: torch.device):
    """(BLOCK, num_splits) for a launch; num_splits spreads small row counts over the GPU."""
    if IS_INTERPRET:
        return min(_INTERPRET_BLOCK, max(16, next_pow2(V))), 1
    block = _GPU_BLOCK[dtype] // (2 if sample else 1)
    # at least two loop iterations per split; no more splits than needed to fill the GPU
    splits = max(1, min(_MAX_SPLITS, programs_target(device) // max(n_rows, 1), cdiv(V, 2 * block)))
    return block, splits


# 1 / T of the statistics of a T = 0 row (T taken as 1e-10, as vLLM 0.33): the fp32 quotient
INV_T0 = float(torch.tensor(1.0) / torch.tensor(1e-10))


def _launch(logits, v_off, V_row, temperature, seed, suppress_ids, num_splits, stats, partial, allowed, tempered, vllm):
    """Run the statistics kernel over ``logits`` (``[N, V]`` or ``[B, L, V]``) and write either the
    final ``stats`` (4 flat tensors) or the merged ``partial`` state (``[R, 8]`` fp32).

    ``temperature`` is a float or an fp32 tensor of the rows' shape (per-row temperatures; then
    every row may sample), ``allowed`` an int32 bitmask ``[*lead, W]`` over the global ids or
    None, ``tempered`` asks for the statistics of ``softmax(z / T)``, ``vllm`` for vLLM 0.33's
    Gumbel noise."""
    V = logits.shape[-1]
    x3 = logits if logits.dim() == 3 else logits.unsqueeze(0)  # a view: no copy
    B, L = x3.shape[0], x3.shape[1]
    R = B * L
    if R == 0:
        return
    device = logits.device
    row_temp = isinstance(temperature, torch.Tensor)
    sample = row_temp or temperature > 0.0
    row_seed = isinstance(seed, torch.Tensor)
    block, splits = _token_stats_config(logits.dtype, R, V, sample, device)
    if num_splits is not None:
        splits = max(1, min(int(num_splits), _MAX_SPLITS, cdiv(V, block)))
    chunk = cdiv(cdiv(V, splits), block) * block
    splits = cdiv(V, chunk)
    seeds = _utils.dense(seed.reshape(R).to(torch.int64)) if row_seed else partial if partial is not None else stats[1]
    token, prob, margin, entropy = stats if stats is not None else (partial,) * 4
    if splits > 1:
        part = _utils.empty(R, splits, PARTIAL_WORDS, dtype=torch.float32, device=device)
    else:  # unused by the kernel when FINAL
        part = partial if partial is not None else prob
    if row_temp:
        temps = _utils.dense(temperature.reshape(R).to(torch.float32))
        inv_t = inv_s = 1.0
    else:
        temps = prob if partial is None else partial  # unused
        inv_t = (1.0 / temperature) if sample else 1.0
        inv_s = inv_t if sample else INV_T0
    if allowed is not None:
        bits = allowed.reshape(R, allowed.shape[-1])
        if bits.stride(-1) != 1:
            bits = bits.contiguous()
        stride_ar = bits.stride(0)
    else:
        bits, stride_ar = part.view(torch.int32), 0  # unused
    _token_stats_kernel[(R, splits)](
        x3,
        x3.stride(0),
        x3.stride(1),
        x3.stride(2),
        L,
        V,
        v_off,
        V_row,
        chunk,
        splits,
        inv_t,
        inv_s,
        temps,
        0 if row_seed else int(seed),
        seeds,
        bits,
        stride_ar,
        token,
        prob,
        margin,
        entropy,
        part,
        part.view(torch.int32),
        FINAL=splits == 1 and stats is not None,
        SUPPRESS=tuple(suppress_ids),
        SAMPLE=sample,
        ROW_SEED=sample and row_seed,
        ROW_TEMP=row_temp,
        TEMPERED=tempered,
        ALLOWED=allowed is not None,
        VLLM=vllm,
        CONTIG=x3.stride(2) == 1,
        BLOCK=block,
        STAGES=_GPU_STAGES,
        num_warps=_GPU_WARPS,
    )
    if splits > 1:
        out = partial if partial is not None else prob
        _token_stats_combine_kernel[(R,)](
            part,
            part.view(torch.int32),
            splits * PARTIAL_WORDS,
            PARTIAL_WORDS,
            splits,
            token,
            prob,
            margin,
            entropy,
            out,
            out.view(torch.int32),
            inv_s,
            temps,
            FINAL=stats is not None,
            SAMPLE=sample,
            NS_P2=next_pow2(splits),
            TEMPERED=tempered,
            ROW_TEMP=tempered and row_temp,
            VLLM=vllm,
            num_warps=1,
        )


def _stats_buffers(R: int, device: torch.device):
    return (
        _utils.empty(R, dtype=torch.int64, device=device),
        _utils.empty(R, dtype=torch.float32, device=device),
        _utils.empty(R, dtype=torch.float32, device=device),
        _utils.empty(R, dtype=torch.float32, device=device),
    )


def token_stats(
    logits: torch.Tensor,
    temperature: float | torch.Tensor = 0.0,
    seed: int | torch.Tensor = 0,
    suppress_ids: tuple[int, ...] = (),
    num_splits: int | None = None,
    *,
    allowed: torch.Tensor | None = None,
    tempered: bool = False,
    vllm: bool = False,
    shard: tuple[int, int] | None = None,
):
    """Launch the fused statistics kernel. Inputs are assumed validated by the public op.

    Returns ``(token, prob, margin, entropy)`` shaped like ``logits.shape[:-1]``. ``seed`` is an
    int or an integer tensor of that shape (per-row seeds), ``temperature`` a float or an fp32
    tensor of that shape. ``num_splits`` overrides the vocabulary split heuristic (tests use it
    to cover the combine path). ``allowed``, ``tempered``, ``vllm``: see :func:`_launch`.
    ``shard``: ``(vocab_start, vocab_size)``, see :func:`token_stats_partial`.
    """
    check_launchable("token_stats" if shard is None else "token_stats_partial", logits)
    lead, V = logits.shape[:-1], logits.shape[-1]
    if shard is None:
        (v_off, V_row), stats, partial = (0, V), _stats_buffers(lead.numel(), logits.device), None
    else:
        (v_off, V_row), stats = shard, None
        partial = _utils.empty(lead.numel(), PARTIAL_WORDS, dtype=torch.float32, device=logits.device)
    _launch(logits, v_off, V_row, temperature, seed, suppress_ids, num_splits, stats, partial, allowed, tempered, vllm)
    return tuple(t.view(lead) for t in stats) if shard is None else partial.view(*lead, PARTIAL_WORDS)


def token_stats_partial(logits: torch.Tensor, vocab_start: int, vocab_size: int, *args, **kwargs) -> torch.Tensor:
    """The merged online-softmax state ``[*lead, 8]`` (fp32 words) of a vocabulary shard whose
    entry 0 is global id ``vocab_start`` of a ``vocab_size`` vocabulary: :func:`token_stats`'s
    launch with ``shard=(vocab_start, vocab_size)``, the other arguments as there."""
    return token_stats(logits, *args, shard=(vocab_start, vocab_size), **kwargs)


def merge_token_stats(partials: torch.Tensor, temperature: float | torch.Tensor = 0.0, tempered: bool = False):
    """Merge ``[S, *lead, 8]`` partial states (one per shard) into ``(token, prob, margin,
    entropy)`` shaped ``lead``. ``tempered``: the states were made with ``tempered=True`` at
    ``temperature`` (a float or an fp32 tensor shaped ``lead``)."""
    check_launchable("merge_token_stats", partials)
    S, lead = partials.shape[0], partials.shape[1:-1]
    R = lead.numel()
    part = partials.reshape(S, R, PARTIAL_WORDS)
    if part.stride(-1) != 1:
        part = part.contiguous()
    stats = _stats_buffers(R, partials.device)
    row_temp = tempered and isinstance(temperature, torch.Tensor)
    if row_temp:
        temps, inv_s = _utils.dense(temperature.reshape(R).to(torch.float32)), 1.0
    else:
        temps = stats[1]  # unused
        inv_s = (1.0 / temperature if temperature > 0.0 else INV_T0) if tempered else 1.0
    if R > 0:
        _token_stats_combine_kernel[(R,)](
            part,
            part.view(torch.int32),
            part.stride(1),
            part.stride(0),
            S,
            *stats,
            stats[1],
            stats[0].view(torch.int32),
            inv_s,
            temps,
            FINAL=True,
            SAMPLE=True,
            NS_P2=next_pow2(S),
            TEMPERED=tempered,
            ROW_TEMP=row_temp,
            VLLM=False,
            num_warps=1 if S <= 64 else 4,
        )
    return tuple(t.view(lead) for t in stats)


def _stats_spec(ty, *, sample, row_seed, final, suppress, row_temp=False, tempered=False, allowed=False, vllm=False):
    dtype = {v: k for k, v in TORCH_TO_TRITON.items()}[ty]
    block = _GPU_BLOCK[dtype] // (2 if sample else 1)
    extra = [
        n for n, on in (("row_temp", row_temp), ("tempered", tempered), ("allowed", allowed), ("vllm", vllm)) if on
    ]
    return AotSpec(
        name=f"token_stats[{ty},sample={sample},row_seed={row_seed},final={final},suppress={len(suppress)}"
        + "".join("," + n for n in extra)
        + "]",
        kernel=_token_stats_kernel,
        signature=aot_signature(
            _token_stats_kernel,
            {
                "x_ptr": f"*{ty}",
                "temp_ptr prob_ptr margin_ptr entropy_ptr part_f_ptr": "*fp32",
                "seed_ptr token_ptr": "*i64",
                "allowed_ptr part_i_ptr": "*i32",
                "stride_b stride_l stride_ar seed": "i64",
                "stride_v L V v_off V_row chunk n_splits": "i32",
                "inv_t inv_s": "fp32",
            },
        ),
        constexprs={
            "FINAL": final,
            "SUPPRESS": suppress,
            "SAMPLE": sample,
            "ROW_SEED": row_seed,
            "ROW_TEMP": row_temp,
            "TEMPERED": tempered,
            "ALLOWED": allowed,
            "VLLM": vllm,
            "CONTIG": True,
            "BLOCK": block,
            "STAGES": _GPU_STAGES,
        },
        num_warps=_GPU_WARPS,
        # the models' logits: vocabularies (126464, 152064, 262144) and chunks are multiples of
        # 16, rows start 16-byte aligned (bitmask rows too: ceil(V / 32) words, a multiple of 4)
        aligned=(
            "x_ptr",
            "stride_b",
            "stride_l",
            "V",
            "chunk",
            "temp_ptr",
            "seed_ptr",
            "allowed_ptr",
            "token_ptr",
            "prob_ptr",
            "margin_ptr",
            "entropy_ptr",
            "part_f_ptr",
            "part_i_ptr",
        ),
    )


def _aot_specs_token_stats():
    specs = []
    for ty in TORCH_TO_TRITON.values():
        for sample, row_seed in ((False, False), (True, False), (True, True)):
            for final in (True, False):
                for suppress in ((), (126081, 126348)):
                    specs.append(_stats_spec(ty, sample=sample, row_seed=row_seed, final=final, suppress=suppress))
        # tempered statistics, per-row temperatures, the bitmask, and the vLLM drop-in's launch
        specs += [
            _stats_spec(ty, sample=False, row_seed=False, final=True, suppress=(), tempered=True, allowed=True),
            _stats_spec(ty, sample=True, row_seed=True, final=True, suppress=(), row_temp=True, tempered=True),
            _stats_spec(ty, sample=True, row_seed=True, final=False, suppress=(), row_temp=True, allowed=True),
            _stats_spec(
                ty, sample=True, row_seed=False, final=False, suppress=(), row_temp=True, tempered=True, vllm=True
            ),
        ]
    combos = [(s, f, False, False, False) for s in (False, True) for f in (True, False)]
    combos += [(True, True, True, False, False), (True, True, True, True, False), (True, False, True, True, True)]
    for sample, final, tempered, row_temp, vllm in combos:
        for ns in range(1, 7):
            extra = "".join(n for n, on in ((",tempered", tempered), (",row_temp", row_temp), (",vllm", vllm)) if on)
            specs.append(
                AotSpec(
                    name=f"token_stats_combine[sample={sample},final={final},NS_P2={2**ns}{extra}]",
                    kernel=_token_stats_combine_kernel,
                    signature=aot_signature(
                        _token_stats_combine_kernel,
                        {
                            "part_f_ptr prob_ptr margin_ptr entropy_ptr out_f_ptr temp_ptr": "*fp32",
                            "part_i_ptr out_i_ptr": "*i32",
                            "token_ptr": "*i64",
                            "stride_r stride_s": "i64",
                            "n_splits": "i32",
                            "inv_s": "fp32",
                        },
                    ),
                    constexprs={
                        "FINAL": final,
                        "SAMPLE": sample,
                        "NS_P2": 2**ns,
                        "TEMPERED": tempered,
                        "ROW_TEMP": row_temp,
                        "VLLM": vllm,
                    },
                    num_warps=1,
                )
            )
    return specs


# ------------------------------------------------------------------------------------------------
# window_confidence: R2-dLLM's confidence-cluster aggregation (DESIGN.md 1.2, rule 5)
# ------------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["L", "max_decided"])
def _window_confidence_kernel(
    conf_ptr,  # [B, L] fp32
    dec_ptr,  # [B, L] bool
    out_ptr,  # [B, L] fp32, contiguous
    stride_cb,
    stride_cl,
    stride_db,
    stride_dl,
    L,
    max_decided,  # windows holding more decided positions than this are skipped
    W: tl.constexpr,  # window length
    BLOCK_L: tl.constexpr,
):
    i_b, i_t = tl.program_id(0), tl.program_id(1)
    p_conf = conf_ptr + i_b.to(tl.int64) * stride_cb
    p_dec = dec_ptr + i_b.to(tl.int64) * stride_db
    o_p = i_t * BLOCK_L + tl.arange(0, BLOCK_L)  # output positions
    b_out = tl.full([BLOCK_L], float("-inf"), tl.float32)
    # position p is covered by the windows starting at p - W + 1 .. p; each is judged on its own
    for j in tl.static_range(W):
        o_w = o_p - j  # window starts
        m_w = (o_w >= 0) & (o_w + W <= L)
        b_sum = tl.zeros([BLOCK_L], tl.float32)
        b_nmask = tl.zeros([BLOCK_L], tl.int32)
        b_ndec = tl.zeros([BLOCK_L], tl.int32)
        b_finite = m_w
        for k in tl.static_range(W):  # left to right, the reference's summation order
            o_k = o_w + k
            b_d = tl.load(p_dec + o_k * stride_dl, mask=m_w, other=1).to(tl.int1)
            b_c = tl.load(p_conf + o_k * stride_cl, mask=m_w, other=0.0)
            b_sum = b_sum + tl.where(b_d, 0.0, b_c)
            b_nmask += tl.where(b_d, 0, 1)
            b_ndec += tl.where(b_d, 1, 0)
            b_finite = b_finite & (b_d | (tl.abs(b_c) < float("inf")))
        ok = b_finite & (b_ndec <= max_decided) & (b_nmask > 0)
        b_mean = tl.math.div_rn(b_sum, tl.maximum(b_nmask, 1).to(tl.float32))
        b_out = tl.maximum(b_out, tl.where(ok, b_mean, float("-inf")))
    m_p = o_p < L
    b_self = tl.load(p_dec + o_p * stride_dl, mask=m_p, other=1).to(tl.int1)
    tl.store(out_ptr + i_b.to(tl.int64) * L + o_p, tl.where(b_self, float("-inf"), b_out), mask=m_p)


def _window_block_l(window: int) -> int:
    """Positions per program; each loads W * W shifted vectors, so long windows get fewer."""
    return 256 if window <= 8 else 64


def window_confidence(conf: torch.Tensor, decided: torch.Tensor, window: int, max_decided: int) -> torch.Tensor:
    """Launch the window aggregation. Inputs are assumed validated by the public op."""
    check_launchable("window_confidence", conf, decided)
    B, L = conf.shape
    out = _utils.empty(B, L, dtype=torch.float32, device=conf.device)
    block_l = min(next_pow2(L), _window_block_l(window) if not IS_INTERPRET else 4096)
    if B * L > 0:
        _window_confidence_kernel[(B, cdiv(L, block_l))](
            conf,
            decided,
            out,
            conf.stride(0),
            conf.stride(1),
            decided.stride(0),
            decided.stride(1),
            L,
            max_decided,
            W=window,
            BLOCK_L=block_l,
            num_warps=4,
        )
    return out


def _aot_specs_window():
    return [
        AotSpec(
            name=f"window_confidence[W={w}]",
            kernel=_window_confidence_kernel,
            signature=aot_signature(
                _window_confidence_kernel,
                {
                    "conf_ptr out_ptr": "*fp32",
                    "dec_ptr": "*i1",
                    "stride_cb stride_cl stride_db stride_dl L max_decided": "i32",
                },
            ),
            constexprs={"W": w, "BLOCK_L": _window_block_l(w)},
            num_warps=4,
            main=w <= 4,
        )
        for w in (2, 3, 4, 8, 16)
    ]


def aot_specs():
    return _aot_specs_token_stats() + _aot_specs_window()
