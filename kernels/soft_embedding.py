"""The soft embedding of a uniform-state dLLM step, fused: ``softmax(logits / T) @ E``.

DiffusionGemma-style models self-condition on the expected embedding of the previous step's
tempered distribution. The engines write the probabilities ``[rows, V]`` in the model dtype and
multiply them with the embedding (vLLM 0.33, whose sampler's ``[rows, V]`` fp32 temporaries are
its reported OOM, issue 50699); here the probabilities are never materialised. The kernel is FlashAttention-shaped,
with the vocabulary in the role of the keys and the embedding in the role of the values::

    for each vocabulary tile [BLOCK_V]:            (online softmax, pivot m in RAW logit units)
        m'  = max(m, max_v z)
        a   = exp((m - m') / T)                    rescales what was accumulated so far
        p   = exp((z - m') / T)                    [BLOCK_N, BLOCK_V], in registers only
        s   = a * s + sum_v p
        acc = a * acc + p @ E[tile, d-tile]        [BLOCK_N, BLOCK_D], fp32
    out = acc / s

Keeping the pivot in raw units and scaling only the differences by ``1 / T`` keeps T -> 0
finite: at ``T = 0`` (``1 / T = inf``) every entry below the maximum gets weight 0 and the
maximum weight ``exp(0) = 1``, so the result is the mean of the embedding rows of the maxima
(one-hot at a unique argmax), the softmax's limit. Memory traffic: the logits are read once per
``BLOCK_D`` slice of the output and ``E`` once per ``BLOCK_N`` rows (row blocks are the fastest
grid axis, so programs that read the same E tile run together and share it through L2); nothing
of size ``[rows, V]`` is written.

Extreme values (one definition for the kernel and the reference, as in ``token_stats``):

- ``NaN`` counts as ``-inf``; ``-inf`` entries get weight 0 (never ``exp(-inf - -inf)``).
- A row without a logit above ``-inf`` has no distribution: its output is all zeros.
- ``k`` entries of ``+inf`` share all the mass (the softmax's limit): the output is the mean of
  their embedding rows. Internally the pivot may be ``+inf``; ``z == m`` counts as ``exp(0)``.
- Differences ``(z - m) / T`` that overflow give ``-inf`` and weight 0.

The per-row state ``(acc [D], m, s, 1/T)`` merges exactly like the splits of FlashDecoding:
small row counts split the vocabulary across ``n_splits`` programs per row that write partial
states, merged by :func:`_soft_embedding_combine_kernel`; the same state, one per vocabulary
shard, is the tensor-parallel format (``soft_embedding_partial`` + ``merge_soft_embedding``):
``[*lead, D + 4]`` fp32 words ``acc_0 .. acc_{D-1}, m, s, 1/T, 0`` (the zero pads a row to a
multiple of 16 bytes when ``D`` is a multiple of 4).

Precision: fp32 accumulation. On the GPU the probabilities enter the tensor-core dot in E's dtype
(bf16/fp16, as FlashAttention's ``P @ V``); fp32 E uses an IEEE fp32 dot. Under the interpreter
both operands are upcast to fp32 (its bf16 ``tl.dot`` is wrong).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _utils
from ._utils import IS_INTERPRET, AotSpec, aot_signature, cdiv, check_launchable, next_pow2, programs_target

STATE_EXTRA = 4  # words after acc in a partial state: m, s, 1/T, 0
_MAX_SPLITS = 64
_FP32_MAX = float(torch.finfo(torch.float32).max)


@triton.jit
def _weight(b_x, b_m, b_it):
    """``exp((x - m) / T)`` with ``x == m`` as ``exp(0)`` (so ``+inf == +inf`` and ``1/T = inf``
    give 1, never NaN); ``x - m`` or its product with ``1/T`` overflowing to ``-inf`` gives 0."""
    return tl.exp(tl.where(b_x == b_m, 0.0, (b_x - b_m) * b_it))


@triton.jit(do_not_specialize=["L", "R", "V", "D", "chunk", "n_splits", "inv_t"])
def _soft_embedding_kernel(
    x_ptr,  # logits; element (b, l, v) at b * stride_b + l * stride_l + v * stride_v
    stride_b,
    stride_l,
    stride_v,
    e_ptr,  # E rows of this vocabulary (already offset by vocab_start); (v, d) at v * stride_ev + d * stride_ed
    stride_ev,
    stride_ed,
    t_ptr,  # [R] fp32 per-row temperatures (ROW_T)
    inv_t,  # 1 / T (not ROW_T; +inf for T = 0)
    out_ptr,  # FINAL: [R, D] output in its dtype, row stride stride_or; else fp32 states [R, n_splits, D + 4]
    stride_or,
    L,  # rows per batch entry (1 for 2-D logits)
    R,  # rows
    V,  # vocabulary entries
    D,  # embedding width
    chunk,  # vocabulary entries per split, a multiple of BLOCK_V
    n_splits,
    FINAL: tl.constexpr,  # write acc / s, else the partial state (acc, m, s, 1/T, 0)
    ROW_T: tl.constexpr,
    CONTIG: tl.constexpr,  # stride_v == 1
    E_CONTIG: tl.constexpr,  # stride_ed == 1
    UPCAST: tl.constexpr,  # fp32 dot operands (the interpreter, fp32 E)
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    STAGES: tl.constexpr,
):
    i_n, i_d, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] rows
    m_n = o_n < R
    o_n64 = o_n.to(tl.int64)
    p_row = x_ptr + (o_n64 // L) * stride_b + (o_n64 % L) * stride_l  # [BLOCK_N]
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    m_d = o_d < D
    o_lane = tl.arange(0, BLOCK_V)
    v_start = i_s * chunk
    v_end = tl.minimum(v_start + chunk, V)
    if ROW_T:
        b_it = tl.math.div_rn(1.0, tl.load(t_ptr + o_n, mask=m_n, other=1.0))  # [BLOCK_N]; T = 0 -> +inf
    else:
        b_it = tl.full([BLOCK_N], inv_t, tl.float32)

    b_m = tl.full([BLOCK_N], float("-inf"), tl.float32)  # pivot: largest raw logit so far
    b_s = tl.zeros([BLOCK_N], tl.float32)  # sum exp((z - m) / T)
    b_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)  # sum exp((z - m) / T) * E[v, d]
    p_et = e_ptr + v_start.to(tl.int64) * stride_ev  # row v_start of the table, then of each tile
    for v0 in tl.range(v_start, v_end, BLOCK_V, num_stages=STAGES):
        o_v = v0 + o_lane  # [BLOCK_V]
        m_v = o_v < v_end
        if CONTIG:
            p_x = p_row[:, None] + (v0 + o_lane[None, :])
        else:
            p_x = p_row[:, None] + (v0 + o_lane[None, :]).to(tl.int64) * stride_v
        b_z = tl.load(p_x, mask=m_n[:, None] & m_v[None, :], other=float("-inf")).to(tl.float32)  # [BN, BV]
        b_z = tl.where(b_z == b_z, b_z, float("-inf"))  # NaN counts as -inf
        b_mn = tl.maximum(b_m, tl.max(b_z, 1))  # [BLOCK_N]
        b_a = _weight(b_m, b_mn, b_it)  # [BLOCK_N]; 1 while the row has seen only -inf
        b_p = tl.where(b_z > float("-inf"), _weight(b_z, b_mn[:, None], b_it[:, None]), 0.0)  # [BN, BV]
        # [BV, BD] tile of the table: a scalar row pointer, 32-bit offsets inside the tile (64-bit
        # ones for a table with strided rows, e.g. a transposed view)
        if E_CONTIG:
            p_e = p_et + (o_lane[:, None] * stride_ev + o_d[None, :])
        else:
            p_e = p_et + (o_lane[:, None].to(tl.int64) * stride_ev + o_d[None, :].to(tl.int64) * stride_ed)
        b_e = tl.load(p_e, mask=m_v[:, None] & m_d[None, :], other=0.0)
        if UPCAST:
            b_pe = tl.dot(b_p, b_e.to(tl.float32), input_precision="ieee")
        else:
            b_pe = tl.dot(b_p.to(b_e.dtype), b_e)
        b_acc = b_acc * b_a[:, None] + b_pe  # [BN, BD]
        b_s = b_s * b_a + tl.sum(b_p, 1)
        b_m = b_mn
        p_et += BLOCK_V * stride_ev

    if FINAL:
        b_inv_s = tl.where(b_s > 0.0, 1.0 / b_s, 0.0)  # a row without a finite logit: zeros
        p_o = out_ptr + o_n64[:, None] * stride_or + o_d[None, :]
        tl.store(p_o, (b_acc * b_inv_s[:, None]).to(out_ptr.dtype.element_ty), mask=m_n[:, None] & m_d[None, :])
    else:
        p_st = out_ptr + (o_n64 * n_splits + i_s) * (D + 4)  # [BLOCK_N]
        tl.store(p_st[:, None] + o_d[None, :], b_acc, mask=m_n[:, None] & m_d[None, :])
        m_w = m_n & (i_d == 0)
        tl.store(p_st + D, b_m, mask=m_w)
        tl.store(p_st + D + 1, b_s, mask=m_w)
        tl.store(p_st + D + 2, b_it, mask=m_w)
        tl.store(p_st + D + 3, tl.zeros([BLOCK_N], tl.float32), mask=m_w)


@triton.jit(do_not_specialize=["D", "n_states", "stride_r", "stride_s", "stride_or"])
def _soft_embedding_combine_kernel(
    st_ptr,  # fp32 states; state (row r, j) starts at r * stride_r + j * stride_s, words (acc[D], m, s, 1/T, 0)
    stride_r,
    stride_s,
    n_states,
    D,
    out_ptr,  # FINAL: [R, D] in its dtype (row stride stride_or); else the merged state [R, D + 4] fp32
    stride_or,
    FINAL: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Merge the states of a row (vocabulary splits or shards) one after the other, online:
    ``M = max(m, m_j)``, ``s = a s + a_j s_j``, ``acc = a acc + a_j acc_j`` with ``a = exp((m -
    M) / T)``. ``1/T`` is the first state's (every shard of a row has the same temperature)."""
    i_r, i_d = tl.program_id(0), tl.program_id(1)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < D
    p_r = st_ptr + i_r.to(tl.int64) * stride_r
    it = tl.load(p_r + D + 2)
    m = float("-inf")
    s = 0.0
    b_acc = tl.zeros([BLOCK_D], tl.float32)
    p_j = p_r
    for _ in range(n_states):
        m_j = tl.load(p_j + D)
        mn = tl.maximum(m, m_j)
        a = _weight(m, mn, it)
        a_j = _weight(m_j, mn, it)
        s = s * a + tl.load(p_j + D + 1) * a_j
        b_acc = b_acc * a + tl.load(p_j + o_d, mask=m_d, other=0.0) * a_j
        m = mn
        p_j += stride_s
    if FINAL:
        inv_s = tl.where(s > 0.0, 1.0 / s, 0.0)
        tl.store(out_ptr + i_r.to(tl.int64) * stride_or + o_d, (b_acc * inv_s).to(out_ptr.dtype.element_ty), mask=m_d)
    else:
        p_o = out_ptr + i_r.to(tl.int64) * (D + 4)
        tl.store(p_o + o_d, b_acc, mask=m_d)
        if i_d == 0:
            tl.store(p_o + D, m)
            tl.store(p_o + D + 1, s)
            tl.store(p_o + D + 2, it)
            tl.store(p_o + D + 3, 0.0)


# ------------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------------

# GPU tiles: 64 rows (a wgmma's M) x 32 vocabulary entries x 128 embedding columns per
# iteration at 8 warps (149 registers), 16 rows (a dot's smallest M) at 4 warps (107) when there
# are few rows, the vocabulary then split across programs. 128 columns: the softmax of a tile is
# recomputed for every column tile of the output, so narrower tiles cost exps (measured by
# compiling: 64 x 64 x 128 at 4 warps spills).
_GPU_BLOCK_V = 32
_GPU_BLOCK_D = 128
_GPU_STAGES = 2
_COMBINE_BLOCK_D = 256
# The interpreter costs per tl op and program, not per element: few, big tiles.
_INTERPRET_BLOCK_V = 1024
_INTERPRET_BLOCK_D = 256


def _block_n(R: int) -> int:
    return 64 if R > 64 else 16


def _warps(block_n: int) -> int:
    return 8 if block_n == 64 else 4


def _config(R: int, V: int, D: int, device: torch.device):
    """(BLOCK_N, BLOCK_V, BLOCK_D, n_splits) of a launch."""
    if IS_INTERPRET:
        return 16, min(_INTERPRET_BLOCK_V, max(16, next_pow2(V))), min(_INTERPRET_BLOCK_D, max(16, next_pow2(D))), 1
    bn = _block_n(R)
    programs = cdiv(R, bn) * cdiv(D, _GPU_BLOCK_D)
    # at least four tiles per split; no more splits than needed to fill the GPU
    splits = max(1, min(_MAX_SPLITS, programs_target(device) // programs, cdiv(V, 4 * _GPU_BLOCK_V)))
    return bn, _GPU_BLOCK_V, _GPU_BLOCK_D, splits


def _launch(logits, embed, temperature, temperatures, out, *, final, num_splits):
    """Run the kernel over ``logits`` (``[N, V]`` or ``[B, L, V]``) and ``embed`` (``[V, D]``, the
    logits' own rows) into ``out``: ``[R, D]`` (``final``) or the merged state ``[R, D + 4]``."""
    V, D = embed.shape
    x3 = logits if logits.dim() == 3 else logits.unsqueeze(0)  # a view: no copy
    L = x3.shape[1]
    R = x3.shape[0] * L
    if R == 0 or D == 0:
        return
    device = logits.device
    bn, bv, bd, splits = _config(R, V, D, device)
    if num_splits is not None:
        splits = max(1, min(int(num_splits), _MAX_SPLITS, cdiv(V, bv)))
    chunk = cdiv(cdiv(V, splits), bv) * bv
    splits = cdiv(V, chunk)
    row_t = temperatures is not None
    # 1 / T as an fp32 kernel argument: +inf at T = 0 and where it overflows fp32 (the same limit)
    inv_t = 1.0 / temperature if temperature > 0.0 else float("inf")
    inv_t = inv_t if inv_t <= _FP32_MAX else float("inf")
    t = _utils.dense(temperatures.reshape(R)) if row_t else out
    direct = splits == 1  # the kernel writes `out` itself, else partial states for the combine
    dst = out if direct else _utils.empty(R, splits, D + STATE_EXTRA, dtype=torch.float32, device=device)
    _soft_embedding_kernel[(cdiv(R, bn), cdiv(D, bd), splits)](
        x3,
        x3.stride(0),
        x3.stride(1),
        x3.stride(2),
        embed,
        embed.stride(0),
        embed.stride(1),
        t,
        inv_t,
        dst,
        dst.stride(0),
        L,
        R,
        V,
        D,
        chunk,
        splits,
        FINAL=direct and final,
        ROW_T=row_t,
        CONTIG=x3.stride(2) == 1,
        E_CONTIG=embed.stride(1) == 1,
        UPCAST=IS_INTERPRET or embed.dtype == torch.float32,
        BLOCK_N=bn,
        BLOCK_V=bv,
        BLOCK_D=bd,
        STAGES=_GPU_STAGES,
        num_warps=_warps(bn),
    )
    if splits > 1:
        W = D + STATE_EXTRA
        _combine(dst, splits * W, W, splits, D, out, final=final)


def _combine(states, stride_r, stride_s, n_states, D, out, *, final):
    """Merge ``n_states`` states per row (state (r, j) at word ``r * stride_r + j * stride_s``)
    into ``out``: ``[R, D]`` (``final``) or a merged state ``[R, D + 4]``."""
    R = out.shape[0]
    bd = min(_INTERPRET_BLOCK_D if IS_INTERPRET else _COMBINE_BLOCK_D, max(16, next_pow2(D)))
    _soft_embedding_combine_kernel[(R, cdiv(D, bd))](
        states, stride_r, stride_s, n_states, D, out, out.stride(0), FINAL=final, BLOCK_D=bd, num_warps=2
    )


def soft_embedding(
    logits: torch.Tensor,
    embed: torch.Tensor,
    temperature: float,
    temperatures: torch.Tensor | None = None,
    vocab_start: int = 0,
    num_splits: int | None = None,
    final: bool = True,
) -> torch.Tensor:
    """Launch the fused soft embedding. Inputs are assumed validated by the public op.

    ``embed`` is the whole table ``[V_E, D]``; the logits' entry ``v`` pairs with its row
    ``vocab_start + v``. ``temperatures`` (fp32, the logits' row shape) overrides the scalar
    ``temperature`` (0 = the argmax limit). Returns ``[*lead, D]`` in ``embed``'s dtype, or
    (``final=False``) the merged state ``[*lead, D + 4]``: see :func:`soft_embedding_partial`.
    ``num_splits`` overrides the vocabulary split heuristic (tests use it for the combine path).
    """
    check_launchable("soft_embedding" if final else "soft_embedding_partial", logits, embed)
    lead, V = logits.shape[:-1], logits.shape[-1]
    D = embed.shape[1]
    W, dtype = (D, embed.dtype) if final else (D + STATE_EXTRA, torch.float32)
    out = _utils.empty(lead.numel(), W, dtype=dtype, device=logits.device)
    _launch(
        logits, embed[vocab_start : vocab_start + V], temperature, temperatures, out, final=final, num_splits=num_splits
    )
    return out.view(*lead, W)


def soft_embedding_partial(logits, embed, temperature, temperatures=None, vocab_start=0, num_splits=None):
    """The merged state ``[*lead, D + 4]`` (fp32 ``acc, m, s, 1/T, 0``) of a vocabulary shard:
    :func:`soft_embedding` with ``final=False``."""
    return soft_embedding(logits, embed, temperature, temperatures, vocab_start, num_splits, final=False)


def merge_soft_embedding(states: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Merge ``[S, *lead, D + 4]`` states (one per shard) into ``[*lead, D]`` of ``out_dtype``."""
    check_launchable("merge_soft_embedding", states)
    S, lead, W = states.shape[0], states.shape[1:-1], states.shape[-1]
    D = W - STATE_EXTRA
    R = lead.numel()
    st = states.reshape(S, R, W)
    if st.stride(-1) != 1:
        st = st.contiguous()
    out = _utils.empty(R, D, dtype=out_dtype, device=states.device)
    if R > 0 and D > 0:
        _combine(st, st.stride(1), st.stride(0), S, D, out, final=True)
    return out.view(*lead, D)


# ------------------------------------------------------------------------------------------------
# ahead-of-time compilation (kernels/_aot.py)
# ------------------------------------------------------------------------------------------------


def aot_specs():
    """The configurations the launchers pick on the GPU, for the (logits, table) dtype pairs of
    the engines: bf16/bf16, fp16/fp16, fp32/fp32 and fp32 logits with a bf16 table; both row
    tiles, scalar and per-row temperatures, final output and partial state; and the combine."""
    specs = []
    pairs = (("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32"), ("fp32", "bf16"))
    for x_ty, e_ty in pairs:
        for bn in (16, 64):
            for row_t in (False, True):
                for final in (True, False):
                    out_ty = e_ty if final else "fp32"
                    specs.append(
                        AotSpec(
                            name=f"soft_embedding[{x_ty},E={e_ty},BLOCK_N={bn},row_t={row_t},final={final}]",
                            kernel=_soft_embedding_kernel,
                            signature=aot_signature(
                                _soft_embedding_kernel,
                                {
                                    "x_ptr": f"*{x_ty}",
                                    "e_ptr": f"*{e_ty}",
                                    "t_ptr": "*fp32",
                                    "out_ptr": f"*{out_ty}",
                                    "stride_b stride_l stride_ev stride_or": "i64",
                                    "inv_t": "fp32",
                                    "L R V D chunk n_splits": "i32",
                                },
                            ),
                            # unit strides: the JIT specialises integer arguments equal to 1
                            constexprs={
                                "stride_v": 1,
                                "stride_ed": 1,
                                "FINAL": final,
                                "ROW_T": row_t,
                                "CONTIG": True,
                                "E_CONTIG": True,
                                "UPCAST": e_ty == "fp32",
                                "BLOCK_N": bn,
                                "BLOCK_V": _GPU_BLOCK_V,
                                "BLOCK_D": _GPU_BLOCK_D,
                                "STAGES": _GPU_STAGES,
                            },
                            num_warps=_warps(bn),
                            num_stages=_GPU_STAGES,
                            # 64 rows run 8 warps: one program per SM at any count in (128, 255]
                            # (65536 registers), the tensor-core tile of attention's kind, so the
                            # budget there is the hardware's 255 (the fp32-table path with per-row
                            # temperatures takes 204); 16 rows at 4 warps keep 3 programs per SM
                            max_registers=255 if bn == 64 else 168,
                            # rows of the models' logits and tables start 16-byte aligned
                            # (vocabularies and widths are multiples of 16)
                            aligned=("x_ptr", "stride_b", "stride_l", "e_ptr", "stride_ev", "out_ptr", "stride_or"),
                        )
                    )
    types = {"st_ptr": "*fp32", "stride_r stride_s stride_or": "i64", "n_states D": "i32"}
    for ty, final in (("fp32", True), ("bf16", True), ("fp16", True), ("fp32", False)):
        signature = aot_signature(_soft_embedding_combine_kernel, {**types, "out_ptr": f"*{ty}"})
        constexprs = {"FINAL": final, "BLOCK_D": _COMBINE_BLOCK_D}
        name = f"soft_embedding_combine[{ty},final={final}]"
        specs.append(AotSpec(name, _soft_embedding_combine_kernel, signature, constexprs, num_warps=2))
    return specs
