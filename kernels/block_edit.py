"""Structural block edit (LLaDA2.2 InDel): delete positions / split them into ``[MASK, old]``.

One program per row holds the row's block (<= ``MAX_BLOCK_EDIT`` = 2048 positions) in one tile:
each position's width (0 deleted, 2 split, 1 kept), an exclusive prefix sum (``tl.cumsum``)
that says where it lands, and scattered stores. The stores of a row hit pairwise distinct
addresses (the pieces tile ``[0, total)``, the MASK padding ``[total, L)``), so their order does
not matter and every output element is written exactly once. Traffic: a few bytes per position;
the op is launch-bound.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _utils
from ._utils import AotSpec, aot_signature, check_launchable, next_pow2

__all__ = ["MAX_BLOCK_EDIT", "block_edit", "aot_specs"]

# the longest block one program holds without spilling (sm_90a, 8 warps); = dllm_kernels.block_edit.MAX_BLOCK_EDIT
MAX_BLOCK_EDIT = 2048


@triton.jit(do_not_specialize=["L", "mask_id"])
def _block_edit_kernel(
    x_ptr,  # [B, L] int64 tokens after the step's writes
    old_ptr,  # [B, L] int64 tokens before them (what a SPLIT keeps)
    marker_ptr,  # [B, L] uint8 (bool) per-position marker
    delete_ptr,  # [B, L] uint8 (bool)
    split_ptr,  # [B, L] uint8 (bool)
    out_ptr,  # [B, L] int64
    out_marker_ptr,  # [B, L] uint8
    L,
    mask_id,
    BLOCK: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    o_l = tl.arange(0, BLOCK)  # [BLOCK]
    m_l = o_l < L
    base = i_b * L
    b_del = tl.load(delete_ptr + base + o_l, mask=m_l, other=0) != 0
    b_split = (tl.load(split_ptr + base + o_l, mask=m_l, other=0) != 0) & ~b_del
    b_keep = m_l & ~b_del & ~b_split
    b_width = tl.where(b_keep, 1, tl.where(b_split & m_l, 2, 0)).to(tl.int32)  # [BLOCK]
    b_dest = tl.cumsum(b_width, axis=0) - b_width  # exclusive prefix sum: where position i lands
    total = tl.sum(b_width, axis=0)
    b_x = tl.load(x_ptr + base + o_l, mask=m_l, other=0)
    b_old = tl.load(old_ptr + base + o_l, mask=m_l, other=0)
    b_mark = tl.load(marker_ptr + base + o_l, mask=m_l, other=0)
    b_mask_tok = tl.zeros([BLOCK], dtype=tl.int64) + mask_id
    b_zero = tl.zeros([BLOCK], dtype=tl.uint8)
    # kept positions: x and its marker at dest
    m_keep = b_keep & (b_dest < L)
    tl.store(out_ptr + base + b_dest, b_x, mask=m_keep)
    tl.store(out_marker_ptr + base + b_dest, b_mark, mask=m_keep)
    # split positions: a created MASK (marker False) at dest, the old token with its marker after it
    m_split = b_split & m_l & (b_dest < L)
    tl.store(out_ptr + base + b_dest, b_mask_tok, mask=m_split)
    tl.store(out_marker_ptr + base + b_dest, b_zero, mask=m_split)
    m_split2 = b_split & m_l & (b_dest + 1 < L)
    tl.store(out_ptr + base + b_dest + 1, b_old, mask=m_split2)
    tl.store(out_marker_ptr + base + b_dest + 1, b_mark, mask=m_split2)
    # the shortened block's tail: MASK, marker False
    m_pad = m_l & (o_l >= total)
    tl.store(out_ptr + base + o_l, b_mask_tok, mask=m_pad)
    tl.store(out_marker_ptr + base + o_l, b_zero, mask=m_pad)


def _warps(block: int) -> int:
    """About 8 positions per thread (each holds a handful of int64 values)."""
    return min(32, max(1, block // 256))


def block_edit(
    x: torch.Tensor,
    old: torch.Tensor,
    marker: torch.Tensor,
    delete: torch.Tensor,
    split: torch.Tensor,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: ``x``/``old`` int64 ``[B, L]``, ``marker``/``delete``/``split`` bool ``[B, L]``;
    returns ``(tokens int64 [B, L], marker bool [B, L])``. Validation is the public op's."""
    check_launchable("block_edit", x, old, marker, delete, split)
    B, L = x.shape
    if L > MAX_BLOCK_EDIT:
        raise ValueError(f"block_edit: the block has {L} positions, more than one tile ({MAX_BLOCK_EDIT})")
    out = _utils.empty(B, L, dtype=torch.int64, device=x.device)
    out_marker = _utils.empty(B, L, dtype=torch.uint8, device=x.device)
    if B > 0 and L > 0:
        block = next_pow2(L)
        _block_edit_kernel[(B,)](
            x.contiguous(),
            old.contiguous(),
            marker.contiguous().view(torch.uint8),
            delete.contiguous().view(torch.uint8),
            split.contiguous().view(torch.uint8),
            out,
            out_marker,
            L,
            mask_id,
            BLOCK=block,
            num_warps=_warps(block),
        )
    return out, out_marker.view(torch.bool)


# ------------------------------------------------------------------------------------------------
# ahead-of-time compilation (kernels/_aot.py)
# ------------------------------------------------------------------------------------------------


def aot_specs():
    """The tiles of the engines' block sizes (SDAR 4, LLaDA2 32, up to 64), a middle one and the
    largest block one tile holds."""
    types = {
        "x_ptr old_ptr out_ptr": "*i64",
        "marker_ptr delete_ptr split_ptr out_marker_ptr": "*u8",
        "L mask_id": "i32",
    }
    signature = aot_signature(_block_edit_kernel, types)
    return [
        AotSpec(f"block_edit[BLOCK={b}]", _block_edit_kernel, signature, {"BLOCK": b}, _warps(b), num_stages=1)
        for b in (4, 32, 64, 256, MAX_BLOCK_EDIT)
    ]
