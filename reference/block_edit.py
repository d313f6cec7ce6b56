"""Pure-PyTorch reference of the structural block edit (LLaDA2.2 InDel), written for clarity.

Same name and signature as :func:`dllm_kernels.block_edit.block_edit` (minus ``backend``).
Vectorised over the batch (no loop over rows or positions): each position's width (0 deleted,
2 split, 1 kept), its exclusive prefix sum (where it lands) and one scatter.
"""

from __future__ import annotations

import torch

__all__ = ["block_edit"]


def block_edit(x, old, marker, delete, split, *, mask_id):
    """Delete / split positions of every row of ``x [B, L]``; returns ``(tokens, marker)``.

    Position i of a row is dropped if ``delete[i]``, expanded to ``[mask_id, old[i]]`` (markers
    ``[False, marker[i]]``) if ``split[i]`` (and not ``delete[i]``), else kept as ``x[i]`` with
    ``marker[i]``; the kept pieces are laid out left to right, truncated to ``L`` and padded with
    ``mask_id`` / ``False``.
    """
    B, L = x.shape
    device = x.device
    split = split & ~delete
    width = torch.where(delete, 0, torch.where(split, 2, 1)).to(torch.int64)  # [B, L]
    dest = torch.cumsum(width, dim=1) - width  # exclusive prefix sum: where position i lands
    out = torch.full((B, L + 2), mask_id, dtype=x.dtype, device=device)  # 2 spare columns: the overflow
    out_m = torch.zeros((B, L + 2), dtype=torch.bool, device=device)
    keep = ~delete & ~split
    # kept positions: x at dest; split positions: MASK at dest (already there), old at dest + 1
    first = torch.where(keep & (dest < L), dest, L + 1)  # off the block: the overflow column
    second = torch.where(split & (dest + 1 < L), dest + 1, L + 1)
    out.scatter_(1, first, torch.where(keep, x, mask_id))
    out_m.scatter_(1, first, keep & marker)
    out.scatter_(1, second, torch.where(split, old, mask_id))
    out_m.scatter_(1, second, split & marker)
    # positions from the row's total width on hold no piece: the MASK / False they started with
    return out[:, :L], out_m[:, :L]
