"""Public KV-cache op: ``refresh_kv_cache``, the block-sparse in-place update of the caches.

Validation, backend dispatch, and a ``torch.library`` custom op that declares the caches as
mutated (so ``torch.compile`` and CUDA graphs see the write). See
:mod:`dllm_kernels.kernels.kv_cache` for the kernel.
"""

from __future__ import annotations

import torch

from . import reference
from ._checks import (
    FLOAT_DTYPES,
    check_head_dim,
    check_int_tensor,
    check_kv_pair,
    check_last_dim_contiguous,
    check_no_internal_overlap,
    check_tensor,
)
from .backend import register_op, resolve_backend

_refresh_kv_cache_op = register_op(
    "refresh_kv_cache",
    "kv_cache",
    "(Tensor(a0!) k_cache, Tensor(a1!) v_cache, Tensor k_new, Tensor v_new, Tensor block_ids, SymInt block_size, "
    "Tensor? new_start, Tensor? rope_cos, Tensor? rope_sin) -> ()",
    fake=lambda *args: None,
    mutates_args=("k_cache", "v_cache"),
)


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
    backend: str = "auto",
) -> None:
    """Overwrite the cache rows of a few blocks with recomputed K/V, in place.

    d3LLM's delayed cache + refresh and Fast-dLLM's dual-cache block overwrite: for each row
    ``b`` and each listed block ``blk`` of ``block_ids[b]``, cache rows
    ``r in [blk * block_size, min((blk + 1) * block_size, Lmax))`` become ``k_new[b, r - new_start[b]]``
    and ``v_new[b, r - new_start[b]]``. Rows of blocks not listed are never read nor written.

    Args:
        k_cache, v_cache: ``[B, Lmax, Hkv, D]`` caches (fp16/bf16/fp32, D in ``HEAD_DIMS``: 16, 32,
            64, 128), updated in place.
        k_new, v_new: ``[B, Ln, Hkv, D]`` recomputed K/V (the caches' dtype and device); row ``j``
            of batch row ``b`` holds canvas position ``new_start[b] + j``.
        block_ids: int32/int64 ``[B, nb]``, block indices in ``[0, ceil(Lmax / block_size))``,
            ``-1`` = empty slot (rows may list different numbers of blocks). Listing a block twice
            writes the same values twice.
        block_size: rows per block, in ``[1, 2**31)``; the last block may be cut by ``Lmax`` (a
            block larger than the cache is one block: the launch covers ``min(block_size, Lmax)``
            rows per block).
        new_start: int32/int64 ``[B]`` in ``[0, Lmax]``, default zeros (full-canvas recomputes).
            Cache rows of a listed block whose position has no ``k_new`` row (``r - new_start[b]``
            outside ``[0, Ln)``) are left untouched: that is a caller error the op masks.
        rope_cos, rope_sin: optional ``[B, Ln, D]`` or ``[Ln, D]`` (fp32 or the caches' dtype):
            K is written rotated, ``k * cos + rotate_half(k) * sin`` with
            ``rotate_half(k) = cat(-k[..., D/2:], k[..., :D/2])`` (HF convention), computed in fp32
            and cast, for models that cache rotated keys. V is copied as is.
        backend: ``"auto"`` | ``"triton"`` | ``"reference"`` (see :mod:`dllm_kernels.backend`).

    All tensors may be strided views with a unit-stride last dimension; the caches must not
    overlap themselves in memory (a stride-0, expanded dimension is rejected: a write would land
    in every aliased row; checked in eager calls, not while ``torch.compile`` traces the op).
    Index values are checked when they live on the CPU; on the GPU they are never read by the host
    (no sync): negative ids are empty slots and rows outside the cache or the source are masked.

    Exactness: copies are bit-exact and the rotated keys are bit-equal to the reference's (fp32
    arithmetic with separate roundings, same op order).
    """
    op = "refresh_kv_cache"
    check_tensor(op, "k_cache", k_cache, ndim=4, dtypes=FLOAT_DTYPES)
    B, Lmax, Hkv, D = k_cache.shape
    check_head_dim(op, "k_cache", D)
    kw = dict(B=B, D=D, dtype=k_cache.dtype, device=k_cache.device, like="k_cache")
    check_kv_pair(op, ("k_cache", "v_cache"), k_cache, v_cache, **kw)
    check_no_internal_overlap(op, "k_cache", k_cache)
    check_no_internal_overlap(op, "v_cache", v_cache)
    check_kv_pair(op, ("k_new", "v_new"), k_new, v_new, **kw)
    if k_new.shape[2] != Hkv:
        raise ValueError(f"{op}: k_new must have the caches' {Hkv} KV heads, got {k_new.shape[2]}")
    Ln = k_new.shape[1]
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not 1 <= block_size < 2**31:
        raise ValueError(f"{op}: block_size must be an int in [1, 2**31), got {block_size!r}")
    n_blocks = -(-Lmax // block_size)
    check_tensor(op, "block_ids", block_ids, ndim=2)
    check_int_tensor(op, "block_ids", block_ids, shape=(B, None), device=k_cache.device, low=-1, high=n_blocks - 1)
    if new_start is not None:
        check_int_tensor(op, "new_start", new_start, shape=(B,), device=k_cache.device, low=0, high=Lmax)
    if (rope_cos is None) != (rope_sin is None):
        raise ValueError(f"{op}: rope_cos and rope_sin must be given together")
    if rope_cos is not None:
        rope_dtypes = (torch.float32,) if k_cache.dtype == torch.float32 else (torch.float32, k_cache.dtype)
        for name, t in (("rope_cos", rope_cos), ("rope_sin", rope_sin)):
            check_tensor(op, name, t, ndim=(2, 3), dtypes=rope_dtypes, device=k_cache.device)
            check_tensor(op, name, t, shape=(Ln, D) if t.dim() == 2 else (B, Ln, D))
            check_last_dim_contiguous(op, name, t)
        if rope_cos.dtype != rope_sin.dtype:
            raise TypeError(
                f"{op}: rope_cos and rope_sin must have the same dtype, got {rope_cos.dtype} and {rope_sin.dtype}"
            )
        rope_cos, rope_sin = rope_cos.expand(B, Ln, D), rope_sin.expand(B, Ln, D)  # views, no copy
    args = (k_cache, v_cache, k_new, v_new, block_ids, block_size)
    if resolve_backend(backend, k_cache.device, op) == "reference":
        reference.refresh_kv_cache(*args, new_start=new_start, rope_cos=rope_cos, rope_sin=rope_sin)
    else:
        _refresh_kv_cache_op(*args, new_start, rope_cos, rope_sin)
