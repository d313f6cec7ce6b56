"""Public attention op of a dLLM decoding step: ``attention``.

The query block attends bidirectionally (or, with ``block_size``, block-causally among the
forwarded rows) to ``[cache rows | new K/V rows]`` without concatenating them in memory (see
:mod:`dllm_kernels.kernels.attention` for the algorithm). Validation, backend dispatch, and a
``torch.library`` custom op with a fake implementation, so the op traces under ``torch.compile``
and is captured by CUDA graphs (ragged lengths are read on the device only).
"""

from __future__ import annotations

import math

import torch

from . import reference
from ._checks import (
    FLOAT_DTYPES,
    check_head_dim,
    check_int_tensor,
    check_kv_pair,
    check_last_dim_contiguous,
    check_tensor,
)
from .backend import register_op, resolve_backend

_attention_op = register_op(
    "attention",
    "attention",
    "(Tensor q, Tensor? k, Tensor? v, Tensor? k_cache, Tensor? v_cache, Tensor? cache_len, Tensor? kv_len, "
    "Tensor? key_start, float scale, int? block_size=None, Tensor? block_origin=None) -> Tensor",
    fake=lambda q, *args: q.new_empty(q.shape),
)


def attention(
    q: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    *,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
    cache_len: torch.Tensor | None = None,
    kv_len: torch.Tensor | None = None,
    key_start: torch.Tensor | None = None,
    scale: float | None = None,
    block_size: int | None = None,
    block_origin: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of a query block over a KV cache and the new K/V, unconcatenated: bidirectional,
    or block-causal among the forwarded rows (``block_size``).

    Row ``b`` attends to one logical key sequence: cache rows ``0 .. cache_len[b]-1`` (logical
    indices ``0 .. cache_len[b]-1``) followed by new rows ``0 .. kv_len[b]-1`` (logical indices
    ``cache_len[b] ..``); keys with logical index ``< key_start[b]`` are ignored. The softmax runs
    over all of them together, with no causal mask. Positions matter only through RoPE, which the
    model applies before this op, so a Streaming-dLLM pruned suffix is just a shorter set of new
    keys (block + first W suffix positions + the last position, rotated at their own positions).

    Block-causal (``block_size``; block-diffusion models: SDAR, Fast-dLLM v2). The queries are the
    forwarded rows themselves (``Lq == Lk``): query row ``i`` and new row ``i`` are one token, at
    logical index ``cache_len[b] + i``. Blocks are counted from the logical index
    ``block_origin[b]`` (default ``key_start[b]``, else 0)::

        block(i) = floor((cache_len[b] + i - block_origin[b]) / block_size)

    and new row ``j`` is hidden from query row ``i`` when ``block(j) > block(i)`` (the cache rows
    and rows of the same or earlier blocks are attended as above, bidirectionally). A model whose
    forwarded rows sit at consecutive positions ``p0[b] + i`` and whose blocks are
    ``position // block_size`` passes ``block_origin = cache_len - p0`` (any int, negative
    allowed); only ``block_origin`` modulo ``block_size`` matters. Key tiles of later blocks than
    a query tile's last row are skipped, not masked.

    Modes: prefix cache (``k, v`` and ``k_cache, v_cache``); dual cache (only the cache: the
    block's rows were just written into it, e.g. by :func:`refresh_kv_cache`); prefill / no cache
    (only ``k, v``; ``Lq == Lk`` up to 4096 and beyond).

    Args:
        q: ``[B, Lq, Hq, D]`` queries, fp16/bf16/fp32, D in :data:`HEAD_DIMS` (16, 32, 64, 128).
        k, v: ``[B, Lk, Hkv, D]`` new keys/values (q's dtype and device), or both None.
            ``Hq % Hkv == 0`` (GQA: query head ``h`` reads KV head ``h // (Hq // Hkv)``).
        k_cache, v_cache: ``[B, Lmax, Hkv, D]`` cache, or both None. At least one K/V pair is given.
        cache_len: int32/int64 ``[B]`` on q's device, values in ``[0, Lmax]``: cache rows
            ``[0, cache_len[b])`` are keys (default: all ``Lmax``). Needs a cache.
        kv_len: int32/int64 ``[B]``, values in ``[0, Lk]``: new rows ``[0, kv_len[b])`` are keys
            (default ``Lk``). Needs ``k``.
        key_start: int32/int64 ``[B]``, values ``>= 0``: left padding; keys with logical index
            below it are ignored (pass the pad length in prefill and in prefix-cache mode alike).
        scale: softmax scale, default ``1 / sqrt(D)``.
        block_size: int >= 1, or None (bidirectional). Needs ``k, v`` with ``Lk == Lq``.
        block_origin: int32/int64 ``[B]`` on q's device, values in the int32 range: the logical
            index where block 0 of row ``b`` starts. Needs ``block_size``.
        backend: ``"auto"`` | ``"triton"`` | ``"reference"`` (see :mod:`dllm_kernels.backend`).

    Every tensor may be a strided view (e.g. heads sliced out of a fused QKV projection, or a
    ``[B, H, L, D]`` tensor transposed to ``[B, L, H, D]``) as long as its last dimension has
    stride 1; no copy is made. Length values are checked when the length tensors live on the CPU;
    on the GPU they are never read by the host (no sync) and the kernel clamps them into range.

    Returns:
        ``[B, Lq, Hq, D]`` in q's dtype (contiguous). A query row without any valid key gets 0.

    Precision: fp32 accumulation and online softmax (FlashAttention-2); P is rounded to the value
    dtype before ``P V`` as in FlashAttention. fp32 inputs use 3xTF32 dots on the GPU (``tf32x3``:
    close to fp32 accuracy, not plain TF32).
    """
    op = "attention"
    check_tensor(op, "q", q, ndim=4, dtypes=FLOAT_DTYPES)
    B, Lq, Hq, D = q.shape
    check_head_dim(op, "q", D)
    check_last_dim_contiguous(op, "q", q)
    kw = dict(B=B, D=D, dtype=q.dtype, device=q.device, like="q")
    check_kv_pair(op, ("k", "v"), k, v, **kw)
    check_kv_pair(op, ("k_cache", "v_cache"), k_cache, v_cache, **kw)
    if k is None and k_cache is None:
        raise ValueError(f"{op}: give the new keys (k, v), a cache (k_cache, v_cache), or both; got neither")
    if k is not None and k_cache is not None and k.shape[2] != k_cache.shape[2]:
        raise ValueError(
            f"{op}: k and k_cache must have the same number of KV heads, got {k.shape[2]} and {k_cache.shape[2]}"
        )
    Hkv = (k if k is not None else k_cache).shape[2]
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"{op}: q's heads ({Hq}) must be a multiple of the KV heads ({Hkv})")
    for name, t, given, high in (
        ("cache_len", cache_len, k_cache is not None, k_cache.shape[1] if k_cache is not None else 0),
        ("kv_len", kv_len, k is not None, k.shape[1] if k is not None else 0),
        ("key_start", key_start, True, None),
    ):
        if t is None:
            continue
        if not given:
            needs = "k_cache" if name == "cache_len" else "k"
            raise ValueError(f"{op}: {name} needs {needs}, which is None")
        check_int_tensor(op, name, t, shape=(B,), device=q.device, low=0, high=high)
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"{op}: block_size must be a positive int or None, got {block_size!r}")
        if k is None:
            raise ValueError(f"{op}: block_size needs the forwarded rows' keys k, which is None")
        if k.shape[1] != Lq:
            raise ValueError(
                f"{op}: block_size needs one new K/V row per query row (Lk == Lq), got Lk {k.shape[1]} and Lq {Lq}"
            )
    if block_origin is not None:
        if block_size is None:
            raise ValueError(f"{op}: block_origin needs block_size, which is None")
        check_int_tensor(op, "block_origin", block_origin, shape=(B,), device=q.device, low=-(2**31), high=2**31 - 1)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{op}: scale must be a finite number, got {scale!r}")
    kwargs = dict(k_cache=k_cache, v_cache=v_cache, cache_len=cache_len, kv_len=kv_len, key_start=key_start)
    kwargs.update(block_size=block_size, block_origin=block_origin)
    if resolve_backend(backend, q.device, op) == "reference":
        return reference.attention(q, k, v, scale=float(scale), **kwargs)
    return _attention_op(
        q, k, v, k_cache, v_cache, cache_len, kv_len, key_start, float(scale), block_size, block_origin
    )
