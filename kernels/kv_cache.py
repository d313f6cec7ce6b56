"""Block-sparse, in-place refresh of a KV cache with recomputed rows.

d3LLM's delayed cache rebuilds the whole cache on every refresh, and Fast-dLLM's dual cache
overwrites the active block through a boolean ``replace_position`` mask; both only need the rows
of a few blocks. Here one program copies a tile of (row, head) pairs of one listed block from
``k_new / v_new`` into the caches, optionally rotating K (RoPE, HF ``rotate_half`` convention)
on the way::

    cache[b, r] = new[b, r - new_start[b]]    for r in [blk * block_size, (blk + 1) * block_size)

Memory traffic: exactly the listed rows (read once from ``*_new``, written once into the caches,
plus ``cos/sin`` rows when rotating); slots with ``blk = -1`` cost one scalar load; no other cache
row is touched. Rows past ``Lmax`` and rows whose source ``r - new_start[b]`` falls outside
``[0, Ln)`` are masked, i.e. left as they were.

RoPE is computed in fp32 with separate roundings (FMA contraction disabled), in the reference's
op order ``k * cos + rotate_half(k) * sin``, so the result is bit-equal to the reference's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import IS_INTERPRET, TORCH_TO_TRITON, AotSpec, cdiv, check_launchable, dense, next_pow2


@triton.jit(do_not_specialize=["Ln", "Lmax", "nb", "block_size"])
def _refresh_kv_cache_kernel(
    kc_ptr,  # [B, Lmax, Hkv, D] key cache (written)
    vc_ptr,  # [B, Lmax, Hkv, D] value cache (written)
    kn_ptr,  # [B, Ln, Hkv, D] recomputed keys
    vn_ptr,  # [B, Ln, Hkv, D] recomputed values
    ids_ptr,  # [B, nb] int block indices, negative = empty slot
    new_start_ptr,  # [B] int, canvas position of k_new row 0 (NEW_START)
    cos_ptr,  # [B, Ln, D] (batch stride may be 0) (ROPE)
    sin_ptr,  # [B, Ln, D] (ROPE)
    stride_kcb,
    stride_kcl,
    stride_kch,
    stride_vcb,
    stride_vcl,
    stride_vch,
    stride_knb,
    stride_knl,
    stride_knh,
    stride_vnb,
    stride_vnl,
    stride_vnh,
    stride_ib,
    stride_in,
    stride_cb,
    stride_cl,
    stride_sb,
    stride_sl,
    Hkv,
    Ln,
    Lmax,
    nb,  # block slots per batch entry
    block_size,
    NEW_START: tl.constexpr,
    ROPE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_RH: tl.constexpr,  # (row, head) pairs per program
):
    i_bj, i_t = tl.program_id(0), tl.program_id(1)
    i_b = i_bj // nb
    i_b64 = i_b.to(tl.int64)
    blk = tl.load(ids_ptr + i_b64 * stride_ib + (i_bj % nb) * stride_in).to(tl.int64)
    ns = 0
    if NEW_START:
        ns = tl.load(new_start_ptr + i_b).to(tl.int64)

    # tile = BLOCK_RH consecutive (row of the block, head) pairs, heads fastest
    o_f = i_t * BLOCK_RH + tl.arange(0, BLOCK_RH)
    o_rb = o_f // Hkv
    o_h = o_f % Hkv
    o_row = blk * block_size + o_rb  # [BLOCK_RH] int64 cache row
    o_src = o_row - ns  # its row in k_new / v_new
    m_f = (blk >= 0) & (o_rb < block_size) & (o_row < Lmax) & (o_src >= 0) & (o_src < Ln)

    p_kc = kc_ptr + i_b64 * stride_kcb + o_row * stride_kcl + o_h * stride_kch  # [BLOCK_RH]
    p_vc = vc_ptr + i_b64 * stride_vcb + o_row * stride_vcl + o_h * stride_vch
    p_kn = kn_ptr + i_b64 * stride_knb + o_src * stride_knl + o_h * stride_knh
    p_vn = vn_ptr + i_b64 * stride_vnb + o_src * stride_vnl + o_h * stride_vnh

    o_d = tl.arange(0, HEAD_DIM)
    m_2d = m_f[:, None]
    b_v = tl.load(p_vn[:, None] + o_d[None, :], mask=m_2d)  # [BLOCK_RH, HEAD_DIM]
    tl.store(p_vc[:, None] + o_d[None, :], b_v, mask=m_2d)
    if ROPE:
        # out = k * cos + rotate_half(k) * sin, rotate_half(k) = cat(-k[D/2:], k[:D/2]), in fp32
        HALF: tl.constexpr = HEAD_DIM // 2
        o_e = tl.arange(0, HALF)
        p_c = cos_ptr + i_b64 * stride_cb + o_src * stride_cl  # [BLOCK_RH]
        p_s = sin_ptr + i_b64 * stride_sb + o_src * stride_sl
        b_k1 = tl.load(p_kn[:, None] + o_e[None, :], mask=m_2d).to(tl.float32)  # [BLOCK_RH, HALF]
        b_k2 = tl.load(p_kn[:, None] + HALF + o_e[None, :], mask=m_2d).to(tl.float32)
        b_c1 = tl.load(p_c[:, None] + o_e[None, :], mask=m_2d).to(tl.float32)
        b_c2 = tl.load(p_c[:, None] + HALF + o_e[None, :], mask=m_2d).to(tl.float32)
        b_s1 = tl.load(p_s[:, None] + o_e[None, :], mask=m_2d).to(tl.float32)
        b_s2 = tl.load(p_s[:, None] + HALF + o_e[None, :], mask=m_2d).to(tl.float32)
        b_o1 = b_k1 * b_c1 + (-b_k2) * b_s1
        b_o2 = b_k2 * b_c2 + b_k1 * b_s2
        ty = kc_ptr.dtype.element_ty
        tl.store(p_kc[:, None] + o_e[None, :], b_o1.to(ty), mask=m_2d)
        tl.store(p_kc[:, None] + HALF + o_e[None, :], b_o2.to(ty), mask=m_2d)
    else:
        b_k = tl.load(p_kn[:, None] + o_d[None, :], mask=m_2d)  # [BLOCK_RH, HEAD_DIM]
        tl.store(p_kc[:, None] + o_d[None, :], b_k, mask=m_2d)


# ------------------------------------------------------------------------------------------------
# launcher
# ------------------------------------------------------------------------------------------------

# 4096 elements of K and of V per program (8 KiB each in fp16/bf16), 4 warps. Not tuned on a GPU.
_GPU_ELEMS = 4096
_GPU_WARPS = 4


def _block_rh(D: int, rows_heads: int) -> int:
    if IS_INTERPRET:  # few, large programs
        return min(next_pow2(rows_heads), 256)
    return _GPU_ELEMS // D


def refresh_kv_cache(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    block_ids: torch.Tensor,
    block_size: int,
    new_start: torch.Tensor | None,
    rope_cos: torch.Tensor | None,
    rope_sin: torch.Tensor | None,
) -> None:
    """Launch the refresh. Inputs are assumed validated by the public op (``rope_cos/sin``
    already expanded to ``[B, Ln, D]``, last dims contiguous)."""
    present = [t for t in (k_cache, v_cache, k_new, v_new, block_ids, new_start, rope_cos, rope_sin) if t is not None]
    check_launchable("refresh_kv_cache", *present)
    new_start = dense(new_start)
    B, Lmax, Hkv, D = k_cache.shape
    Ln = k_new.shape[1]
    nb = block_ids.shape[1]
    if B * nb == 0 or Lmax == 0 or Ln == 0 or Hkv == 0:
        return
    span = min(block_size, Lmax)  # rows of one block inside the cache: the rest is never written
    block_rh = _block_rh(D, span * Hkv)
    grid = (B * nb, cdiv(span * Hkv, block_rh))
    if grid[0] >= 2**31 or grid[1] >= 2**16:
        raise ValueError(
            f"refresh_kv_cache: launch grid {grid} exceeds the GPU's limits (2**31 - 1, 65535): "
            f"B * block slots = {B} * {nb}, block rows x KV heads = {span} x {Hkv}; "
            "refresh fewer or smaller blocks per call"
        )
    rope = rope_cos is not None
    cos, sin = (rope_cos, rope_sin) if rope else (k_new, k_new)  # never read without ROPE
    _refresh_kv_cache_kernel[grid](
        k_cache,
        v_cache,
        k_new,
        v_new,
        block_ids,
        k_new if new_start is None else new_start,
        cos,
        sin,
        *k_cache.stride()[:3],
        *v_cache.stride()[:3],
        *k_new.stride()[:3],
        *v_new.stride()[:3],
        *block_ids.stride(),
        *(cos.stride()[:2] if rope else (0, 0)),
        *(sin.stride()[:2] if rope else (0, 0)),
        Hkv,
        Ln,
        Lmax,
        nb,
        block_size,
        NEW_START=new_start is not None,
        ROPE=rope,
        HEAD_DIM=D,
        BLOCK_RH=block_rh,
        num_warps=_GPU_WARPS,
        enable_fp_fusion=not rope,
    )


def aot_specs():
    specs = []
    strides = [f"stride_{t}{d}" for t in ("kc", "vc", "kn", "vn") for d in ("b", "l", "h")]
    strides += ["stride_ib", "stride_in", "stride_cb", "stride_cl", "stride_sb", "stride_sl"]
    pointers = ["kc_ptr", "vc_ptr", "kn_ptr", "vn_ptr", "cos_ptr", "sin_ptr"]
    for ty in TORCH_TO_TRITON.values():
        for D in (64, 128):
            for rope in (False, True):
                specs.append(
                    AotSpec(
                        name=f"refresh_kv_cache[{ty},D={D},rope={rope}]",
                        kernel=_refresh_kv_cache_kernel,
                        signature={
                            "kc_ptr": f"*{ty}",
                            "vc_ptr": f"*{ty}",
                            "kn_ptr": f"*{ty}",
                            "vn_ptr": f"*{ty}",
                            "ids_ptr": "*i64",
                            "new_start_ptr": "*i64",
                            "cos_ptr": "*fp32",
                            "sin_ptr": "*fp32",
                            **{s: "i32" for s in strides},
                            "Hkv": "i32",
                            "Ln": "i32",
                            "Lmax": "i32",
                            "nb": "i32",
                            "block_size": "i32",
                        },
                        constexprs={"NEW_START": True, "ROPE": rope, "HEAD_DIM": D, "BLOCK_RH": _GPU_ELEMS // D},
                        num_warps=_GPU_WARPS,
                        enable_fp_fusion=not rope,
                        aligned=tuple(pointers + [s for s in strides if s not in ("stride_ib", "stride_in")]),
                    )
                )
    return specs
