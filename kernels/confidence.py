"""Confidence statistics of a dLLM decoding step, fused.

``token_stats``: one pass over the vocabulary per row gives the proposal token (argmax, or a
Gumbel-max sample), its probability, the top-1/top-2 margin and the entropy. The decoders compute
the same with 5-10 PyTorch ops (softmax, max, topk, log, mul, sum, gather, ...) that each read or
write the ``[rows, V]`` tensor; here the logits are read exactly once and 16 bytes per row are
written.

Online softmax with a running maximum ``m`` (a finite pivot), the rescaled sum
``s = sum(exp(z - m))`` and ``u = sum(exp(z - m) * (z - m))``::

    p_i = exp(z_i - m) / s,   H = -sum p_i log p_i = log s - u / s

When the maximum grows from ``m`` to ``m'`` both sums rescale by ``a = exp(m - m')`` and ``u``
gains ``s * (m - m')``. Keeping ``u`` relative to the pivot (rather than ``sum(e * z)``) avoids
cancelling two numbers of the size of the logits when the entropy is small. Top-1 and top-2 are
tracked per lane (element-wise, no reduction inside the loop); ties resolve to the lowest index
because each lane sees its indices in increasing order and the final reduction takes the lowest
index among lanes holding the maximum.

Error bound (fp32 accumulation, any input dtype, inputs upcast exactly): prob and margin are
within about ``4e-6`` (absolute) of an fp64 reference and entropy within about ``1e-5 * (1 + H)``;
the token is exact at temperature 0.

Small row counts (a 32-token block) would leave most SMs idle with one program per row, so the
vocabulary is split across ``NS`` programs per row that write partial states, merged by a tiny
combine kernel (log-sum-exp merge of ``(m, s, u)`` and a top-2 merge).

``window_confidence``: the R2-dLLM spatial rule's aggregation over sliding windows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _utils
from ._utils import IS_INTERPRET, TORCH_TO_TRITON, AotSpec, cdiv, check_launchable, next_pow2, programs_target

# Partial state of one (row, split): 8 fp32 fields (m, s, u, top-1, top-2, sample score, sample
# logit, pad) and 2 int32 fields (top-1 index, sample index).
_PF = 8
_PI = 2
_MAX_SPLITS = 64


@triton.jit
def _lowest_index_of_max(b_val, b_idx, SENTINEL: tl.constexpr):
    """Max of ``b_val`` and the lowest ``b_idx`` holding it; plus the mask of that element."""
    v = tl.max(b_val, 0)
    i = tl.min(tl.where(b_val == v, b_idx, SENTINEL), 0)
    return v, i, (b_val == v) & (b_idx == i)


@triton.jit
def _finalize(row, m, s, u, v1, v2, z_tok, i_tok, token_ptr, prob_ptr, margin_ptr, entropy_ptr):
    """Write the statistics of one row from its merged online-softmax state."""
    # A row without a single finite logit has no distribution: token 0, prob 0, margin 0 and
    # entropy +inf, the least confident values under every measure.
    valid = m > float("-inf")
    pivot = tl.where(valid, m, 0.0)
    inv_s = 1.0 / tl.where(valid, s, 1.0)
    prob = tl.exp(z_tok - pivot) * inv_s
    margin = (tl.exp(v1 - pivot) - tl.exp(v2 - pivot)) * inv_s
    entropy = tl.maximum(tl.log(tl.where(valid, s, 1.0)) - u * inv_s, 0.0)
    tl.store(token_ptr + row, tl.where(valid, i_tok, 0).to(tl.int64))
    tl.store(prob_ptr + row, tl.where(valid, prob, 0.0))
    tl.store(margin_ptr + row, tl.where(valid, margin, 0.0))
    tl.store(entropy_ptr + row, tl.where(valid, entropy, float("inf")))


@triton.jit(do_not_specialize=["L", "V", "chunk", "n_splits", "seed"])
def _token_stats_kernel(
    x_ptr,  # logits; element (b, l, v) at b * stride_b + l * stride_l + v * stride_v
    stride_b,
    stride_l,
    stride_v,
    L,  # rows per batch entry (1 for 2-D logits)
    V,  # vocabulary size
    chunk,  # vocabulary entries per split, a multiple of BLOCK
    n_splits,  # programs per row along the vocabulary
    inv_t,  # 1 / temperature (SAMPLE only)
    seed,  # Philox seed (SAMPLE only)
    token_ptr,  # [R] int64                (FINAL)
    prob_ptr,  # [R] fp32                 (FINAL)
    margin_ptr,  # [R] fp32                 (FINAL)
    entropy_ptr,  # [R] fp32                 (FINAL)
    part_f_ptr,  # [R, n_splits, 8] fp32   (not FINAL)
    part_i_ptr,  # [R, n_splits, 2] int32  (not FINAL)
    FINAL: tl.constexpr,  # n_splits == 1: write the statistics, not a partial state
    SUPPRESS: tl.constexpr,  # tuple of token ids whose logits count as -inf
    SAMPLE: tl.constexpr,  # Gumbel-max sampling at temperature 1 / inv_t
    CONTIG: tl.constexpr,  # stride_v == 1
    BLOCK: tl.constexpr,
):
    i_r, i_s = tl.program_id(0), tl.program_id(1)
    i_b, i_l = i_r // L, i_r % L
    p_row = x_ptr + i_b.to(tl.int64) * stride_b + i_l.to(tl.int64) * stride_l
    o_lane = tl.arange(0, BLOCK)
    v_start = i_s * chunk
    v_end = tl.minimum(v_start + chunk, V)

    m = tl.full([], float("-inf"), tl.float32)  # running max (-inf until a finite logit is seen)
    s = tl.zeros([], tl.float32)  # sum exp(z - m)
    u = tl.zeros([], tl.float32)  # sum exp(z - m) * (z - m)
    b_v1 = tl.full([BLOCK], float("-inf"), tl.float32)  # per-lane top-1 value
    b_v2 = tl.full([BLOCK], float("-inf"), tl.float32)  # per-lane top-2 value
    b_i1 = tl.zeros([BLOCK], tl.int32)  # per-lane top-1 index
    b_gs = tl.full([BLOCK], float("-inf"), tl.float32)  # per-lane best Gumbel score
    b_gz = tl.full([BLOCK], float("-inf"), tl.float32)  # its logit
    b_gi = tl.zeros([BLOCK], tl.int32)  # its index

    for v0 in tl.range(v_start, v_end, BLOCK):
        o_v = v0 + o_lane
        m_v = o_v < v_end
        if CONTIG:
            p_x = p_row + o_v
        else:
            p_x = p_row + o_v.to(tl.int64) * stride_v
        b_z = tl.load(p_x, mask=m_v, other=float("-inf")).to(tl.float32)  # [BLOCK]
        for k in tl.static_range(len(SUPPRESS)):
            b_z = tl.where(o_v == SUPPRESS[k], float("-inf"), b_z)

        # top-2 per lane; strict '>' keeps the lowest index of a tie
        gt = b_z > b_v1
        b_v2 = tl.where(gt, b_v1, tl.maximum(b_v2, b_z))
        b_i1 = tl.where(gt, o_v, b_i1)
        b_v1 = tl.where(gt, b_z, b_v1)

        # online softmax with a finite pivot (fully -inf prefixes keep s = u = 0)
        m_new = tl.maximum(m, tl.max(b_z, 0))
        p_new = tl.where(m_new > float("-inf"), m_new, 0.0)
        p_old = tl.where(m > float("-inf"), m, p_new)
        alpha = tl.exp(p_old - p_new)
        b_d = b_z - p_new  # [BLOCK], -inf where the logit is -inf
        b_e = tl.exp(b_d)
        u = alpha * (u + s * (p_old - p_new)) + tl.sum(b_e * tl.where(b_e > 0.0, b_d, 0.0), 0)
        s = alpha * s + tl.sum(b_e, 0)
        m = m_new

        if SAMPLE:
            # Gumbel-max: argmax(z / T + g), g = -log(-log(U)), U from Philox at (row * V + v)
            b_u = tl.rand(seed, i_r.to(tl.int64) * V + o_v)
            b_g = b_z * inv_t - tl.log(-tl.log(b_u))
            gt = b_g > b_gs
            b_gs = tl.where(gt, b_g, b_gs)
            b_gz = tl.where(gt, b_z, b_gz)
            b_gi = tl.where(gt, o_v, b_gi)

    v1, i1, is_top = _lowest_index_of_max(b_v1, b_i1, 2147483647)
    v2 = tl.maximum(tl.max(b_v2, 0), tl.max(tl.where(is_top, float("-inf"), b_v1), 0))
    if SAMPLE:
        gs, gi, is_best = _lowest_index_of_max(b_gs, b_gi, 2147483647)
        gz = tl.max(tl.where(is_best, b_gz, float("-inf")), 0)
    else:
        gs, gi, gz = v1, i1, v1

    if FINAL:
        _finalize(i_r, m, s, u, v1, v2, gz, gi, token_ptr, prob_ptr, margin_ptr, entropy_ptr)
    else:
        p_f = part_f_ptr + (i_r.to(tl.int64) * n_splits + i_s) * 8
        p_i = part_i_ptr + (i_r.to(tl.int64) * n_splits + i_s) * 2
        tl.store(p_f + 0, m)
        tl.store(p_f + 1, s)
        tl.store(p_f + 2, u)
        tl.store(p_f + 3, v1)
        tl.store(p_f + 4, v2)
        tl.store(p_f + 5, gs)
        tl.store(p_f + 6, gz)
        tl.store(p_i + 0, i1)
        tl.store(p_i + 1, gi)


@triton.jit(do_not_specialize=["n_splits"])
def _token_stats_combine_kernel(
    part_f_ptr,  # [R, n_splits, 8] fp32
    part_i_ptr,  # [R, n_splits, 2] int32
    token_ptr,  # [R] int64
    prob_ptr,  # [R] fp32
    margin_ptr,  # [R] fp32
    entropy_ptr,  # [R] fp32
    n_splits,
    SAMPLE: tl.constexpr,
    NS_P2: tl.constexpr,  # next power of two >= n_splits
):
    i_r = tl.program_id(0)
    o_s = tl.arange(0, NS_P2)
    m_s = o_s < n_splits
    p_f = part_f_ptr + (i_r.to(tl.int64) * n_splits + o_s) * 8  # [NS_P2]
    p_i = part_i_ptr + (i_r.to(tl.int64) * n_splits + o_s) * 2  # [NS_P2]
    b_m = tl.load(p_f + 0, mask=m_s, other=float("-inf"))
    b_s = tl.load(p_f + 1, mask=m_s, other=0.0)
    b_u = tl.load(p_f + 2, mask=m_s, other=0.0)
    b_v1 = tl.load(p_f + 3, mask=m_s, other=float("-inf"))
    b_v2 = tl.load(p_f + 4, mask=m_s, other=float("-inf"))
    b_i1 = tl.load(p_i + 0, mask=m_s, other=2147483647)

    # log-sum-exp merge of the splits' (m, s, u) onto the global pivot
    m = tl.max(b_m, 0)
    pivot = tl.where(m > float("-inf"), m, 0.0)
    b_piv = tl.where(b_m > float("-inf"), b_m, pivot)  # splits without finite logits have s = u = 0
    b_a = tl.exp(b_piv - pivot)
    s = tl.sum(b_a * b_s, 0)
    u = tl.sum(b_a * (b_u + b_s * (b_piv - pivot)), 0)

    # splits cover increasing vocabulary ranges, so the lowest index of a tie is well defined
    v1, i1, is_top = _lowest_index_of_max(b_v1, b_i1, 2147483647)
    v2 = tl.maximum(tl.max(b_v2, 0), tl.max(tl.where(is_top, float("-inf"), b_v1), 0))
    if SAMPLE:
        b_gs = tl.load(p_f + 5, mask=m_s, other=float("-inf"))
        b_gz = tl.load(p_f + 6, mask=m_s, other=float("-inf"))
        b_gi = tl.load(p_i + 1, mask=m_s, other=2147483647)
        gs, gi, is_best = _lowest_index_of_max(b_gs, b_gi, 2147483647)
        gz = tl.max(tl.where(is_best, b_gz, float("-inf")), 0)
    else:
        gz, gi = v1, i1
    _finalize(i_r, m, s, u, v1, v2, gz, gi, token_ptr, prob_ptr, margin_ptr, entropy_ptr)


# ------------------------------------------------------------------------------------------------
# launcher
# ------------------------------------------------------------------------------------------------

# Elements per loop iteration: 4 KiB of logits per program and iteration on the GPU (enough
# bytes in flight per SM at 4 warps), half that when sampling (its per-lane state doubles).
_GPU_BLOCK = {torch.float32: 1024, torch.float16: 2048, torch.bfloat16: 2048}
_GPU_WARPS = 4
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


def token_stats(
    logits: torch.Tensor,
    temperature: float = 0.0,
    seed: int = 0,
    suppress_ids: tuple[int, ...] = (),
    num_splits: int | None = None,
):
    """Launch the fused statistics kernel. Inputs are assumed validated by the public op.

    Returns ``(token, prob, margin, entropy)`` shaped like ``logits.shape[:-1]``. ``num_splits``
    overrides the vocabulary split heuristic (tests use it to cover the combine path).
    """
    check_launchable("token_stats", logits)
    lead = logits.shape[:-1]
    V = logits.shape[-1]
    x3 = logits if logits.dim() == 3 else logits.unsqueeze(0)  # a view: no copy
    B, L = x3.shape[0], x3.shape[1]
    R = B * L
    device = logits.device
    sample = temperature > 0.0
    block, splits = _token_stats_config(logits.dtype, R, V, sample, device)
    if num_splits is not None:
        splits = max(1, min(int(num_splits), _MAX_SPLITS, cdiv(V, block)))
    chunk = cdiv(cdiv(V, splits), block) * block
    splits = cdiv(V, chunk)

    token = _utils.empty(R, dtype=torch.int64, device=device)
    prob = _utils.empty(R, dtype=torch.float32, device=device)
    margin = _utils.empty(R, dtype=torch.float32, device=device)
    entropy = _utils.empty(R, dtype=torch.float32, device=device)
    if splits > 1:
        part_f = _utils.empty(R, splits, _PF, dtype=torch.float32, device=device)
        part_i = _utils.empty(R, splits, _PI, dtype=torch.int32, device=device)
    else:  # unused by the kernel when FINAL
        part_f, part_i = prob, token.view(torch.int32)
    if R > 0:
        _token_stats_kernel[(R, splits)](
            x3, x3.stride(0), x3.stride(1), x3.stride(2), L, V, chunk, splits,
            (1.0 / temperature) if sample else 1.0, int(seed),
            token, prob, margin, entropy, part_f, part_i,
            FINAL=splits == 1, SUPPRESS=tuple(suppress_ids), SAMPLE=sample, CONTIG=x3.stride(2) == 1,
            BLOCK=block, num_warps=_GPU_WARPS,
        )  # fmt: skip
        if splits > 1:
            _token_stats_combine_kernel[(R,)](
                part_f, part_i, token, prob, margin, entropy, splits,
                SAMPLE=sample, NS_P2=next_pow2(splits), num_warps=1,
            )  # fmt: skip
    return token.view(lead), prob.view(lead), margin.view(lead), entropy.view(lead)


def _aot_specs_token_stats():
    specs = []
    for dtype, ty in TORCH_TO_TRITON.items():
        for sample in (False, True):
            for final in (True, False):
                for suppress in ((), (126081, 126348)):
                    block = _GPU_BLOCK[dtype] // (2 if sample else 1)
                    specs.append(
                        AotSpec(
                            name=f"token_stats[{ty},sample={sample},final={final},suppress={len(suppress)}]",
                            kernel=_token_stats_kernel,
                            signature={
                                "x_ptr": f"*{ty}", "stride_b": "i64", "stride_l": "i64", "stride_v": "i32",
                                "L": "i32", "V": "i32", "chunk": "i32", "n_splits": "i32", "inv_t": "fp32", "seed": "i64",
                                "token_ptr": "*i64", "prob_ptr": "*fp32", "margin_ptr": "*fp32",
                                "entropy_ptr": "*fp32", "part_f_ptr": "*fp32", "part_i_ptr": "*i32",
                            },  # fmt: skip
                            constexprs={"FINAL": final, "SUPPRESS": suppress, "SAMPLE": sample, "CONTIG": True, "BLOCK": block},
                            num_warps=_GPU_WARPS,
                            # the models' logits: vocabularies (126464, 152064) and chunks are
                            # multiples of 16, rows start 16-byte aligned
                            aligned=("x_ptr", "stride_b", "stride_l", "V", "chunk", "token_ptr", "prob_ptr",
                                     "margin_ptr", "entropy_ptr", "part_f_ptr", "part_i_ptr"),  # fmt: skip
                        )
                    )
    for sample in (False, True):
        for ns in range(1, 7):
            specs.append(
                AotSpec(
                    name=f"token_stats_combine[sample={sample},NS_P2={2**ns}]",
                    kernel=_token_stats_combine_kernel,
                    signature={
                        "part_f_ptr": "*fp32", "part_i_ptr": "*i32", "token_ptr": "*i64",
                        "prob_ptr": "*fp32", "margin_ptr": "*fp32", "entropy_ptr": "*fp32", "n_splits": "i32",
                    },  # fmt: skip
                    constexprs={"SAMPLE": sample, "NS_P2": 2**ns},
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
            conf, decided, out, conf.stride(0), conf.stride(1), decided.stride(0), decided.stride(1),
            L, max_decided, W=window, BLOCK_L=block_l, num_warps=4,
        )  # fmt: skip
    return out


def _aot_specs_window():
    return [
        AotSpec(
            name=f"window_confidence[W={w}]",
            kernel=_window_confidence_kernel,
            signature={
                "conf_ptr": "*fp32", "dec_ptr": "*i1", "out_ptr": "*fp32", "stride_cb": "i32",
                "stride_cl": "i32", "stride_db": "i32", "stride_dl": "i32", "L": "i32", "max_decided": "i32",
            },  # fmt: skip
            constexprs={"W": w, "BLOCK_L": _window_block_l(w)},
            num_warps=4,
            main=w <= 4,
        )
        for w in (2, 3, 4, 8, 16)
    ]


def aot_specs():
    return _aot_specs_token_stats() + _aot_specs_window()
