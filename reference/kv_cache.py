"""Pure-PyTorch reference of the block-sparse KV-cache refresh, one listed block at a time.

Same name and signature as :func:`dllm_kernels.refresh_kv_cache` (minus ``backend``).
"""

from __future__ import annotations

import torch

from dllm_kernels._rope import rotate_half


def refresh_kv_cache(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    block_ids: torch.Tensor,
    block_size: int,
    *,
    new_start: torch.Tensor | None = None,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
) -> None:
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
    starts = [0] * B if new_start is None else new_start.tolist()
    for b, blocks in enumerate(block_ids.tolist()):
        for blk in blocks:
            if blk < 0:
                continue
            rows = torch.arange(blk * block_size, min((blk + 1) * block_size, Lmax), device=k_cache.device)
            src = rows - starts[b]
            keep = (src >= 0) & (src < Ln)
            k_cache[b, rows[keep]] = k_src[b, src[keep]]
            v_cache[b, rows[keep]] = v_new[b, src[keep]]
