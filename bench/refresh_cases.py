"""The refresh benchmark's candidates, importable without a GPU (tests/test_bench_cases.py checks
that they write the same caches, so the benchmark compares equal work).

Every candidate takes ``(k_cache, v_cache, k_new, v_new, block_ids, block_size, new_start, cos,
sin)`` and updates the caches in place. The baseline is the PyTorch equivalent: row indices from
the block ids on the device (no sync), ``index_select`` of the source rows, RoPE in fp32 on them,
and ``index_copy_`` into the flattened caches. It assumes every slot holds a block whose rows
all have a source row, which is what the benchmark passes.
"""

from __future__ import annotations

import torch

import dllm_kernels as dk
from dllm_kernels.reference.kv_cache import rotate_half


def kernel(k_cache, v_cache, k_new, v_new, block_ids, block_size, new_start, cos=None, sin=None):
    dk.refresh_kv_cache(
        k_cache,
        v_cache,
        k_new,
        v_new,
        block_ids,
        block_size,
        new_start=new_start,
        rope_cos=cos,
        rope_sin=sin,
        backend="triton",
    )


def torch_index_copy(k_cache, v_cache, k_new, v_new, block_ids, block_size, new_start, cos=None, sin=None):
    B, Lmax, H, D = k_cache.shape
    Ln = k_new.shape[1]
    rows = (block_ids[:, :, None] * block_size + torch.arange(block_size, device=block_ids.device)).view(B, -1)
    src = rows - new_start[:, None]
    batch = torch.arange(B, device=rows.device)[:, None]
    dst_flat, src_flat = (batch * Lmax + rows).view(-1), (batch * Ln + src).view(-1)
    k_rows = k_new.reshape(B * Ln, H, D).index_select(0, src_flat)
    if cos is not None:
        c = cos.expand(B, Ln, D).reshape(B * Ln, 1, D).index_select(0, src_flat).float()
        s = sin.expand(B, Ln, D).reshape(B * Ln, 1, D).index_select(0, src_flat).float()
        k32 = k_rows.float()
        k_rows = (k32 * c + rotate_half(k32) * s).to(k_cache.dtype)
    k_cache.view(B * Lmax, H, D).index_copy_(0, dst_flat, k_rows)
    v_cache.view(B * Lmax, H, D).index_copy_(0, dst_flat, v_new.reshape(B * Ln, H, D).index_select(0, src_flat))


CANDIDATES = {"triton": kernel, "torch_index_copy": torch_index_copy}


def bytes_moved(k_cache, block_ids, block_size, rope: bool) -> int:
    """Listed rows of K and V read once and written once, plus the cos/sin rows when rotating."""
    B, _, H, D = k_cache.shape
    rows = block_ids.numel() * block_size
    moved = 2 * 2 * rows * H * D * k_cache.element_size()
    return moved + (2 * rows * D * 4 if rope else 0)
