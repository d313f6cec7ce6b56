"""Pure-PyTorch reference of the block-sparse KV-cache refresh: every listed block's rows as one
indexed copy.

Same name and signature as :func:`dllm_kernels.refresh_kv_cache` (minus ``backend``; the types are
the public op's).
"""

from __future__ import annotations

import torch

from dllm_kernels._rope import rotate_half


def refresh_kv_cache(
    k_cache, v_cache, k_new, v_new, block_ids, block_size, *, new_start=None, rope_cos=None, rope_sin=None
):
    """Overwrite, in place, the cache rows of the listed blocks with the matching new rows.

    For each row ``b`` and each ``blk >= 0`` in ``block_ids[b]``, cache rows
    ``r in [blk * block_size, min((blk + 1) * block_size, Lmax))`` whose source row
    ``j = r - new_start[b]`` lies in ``[0, Ln)`` become ``k_new[b, j]`` (rotated, when
    ``rope_cos/rope_sin`` are given, as ``k * cos + rotate_half(k) * sin`` in fp32, then cast) and
    ``v_new[b, j]``. Nothing else is written.
    """
    B, Lmax = k_cache.shape[:2]
    Ln = k_new.shape[1]
    k_src = k_new
    if rope_cos is not None:
        cos = rope_cos.float().expand(B, Ln, -1)[:, :, None, :]  # [B, Ln, 1, D]
        sin = rope_sin.float().expand(B, Ln, -1)[:, :, None, :]
        k32 = k_new.float()
        k_src = (k32 * cos + rotate_half(k32) * sin).to(k_cache.dtype)
    # every (row, listed block, offset in the block) at once: cache row r = blk * block_size + i
    # takes source row r - new_start[b] where both exist (a block listed twice writes the same
    # values twice)
    span = min(block_size, Lmax)
    blk = block_ids.long()[:, :, None]  # [B, nb, 1]
    rows = blk * block_size + torch.arange(span, device=k_cache.device)  # [B, nb, span]
    start = 0 if new_start is None else new_start.long()[:, None, None]
    src = rows - start
    keep = (blk >= 0) & (rows < Lmax) & (src >= 0) & (src < Ln)
    b = torch.arange(B, device=k_cache.device)[:, None, None].expand_as(rows)[keep]
    k_cache[b, rows[keep]] = k_src[b, src[keep]]
    v_cache[b, rows[keep]] = v_new[b, src[keep]]
