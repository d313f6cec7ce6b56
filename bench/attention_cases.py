"""The attention benchmark's candidates, importable without a GPU (tests/test_bench_cases.py
checks that they compute the same output, so the benchmark compares equal work).

Every candidate takes ``(q, k, v, k_cache, v_cache)`` in the model's ``[B, L, H, D]`` layout and
returns ``[B, Lq, Hq, D]``. The baselines do what the public dLLM decoders do every step and
layer: concatenate the cache with the new K/V (a copy of the whole cache), then attend with SDPA
or FlexAttention on ``[B, H, L, D]`` views; the concatenation is part of their timed work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import dllm_kernels as dk


def kernel(q, k, v, k_cache=None, v_cache=None):
    return dk.attention(q, k, v, k_cache=k_cache, v_cache=v_cache, backend="triton")


def concat_kv(k, v, k_cache, v_cache):
    """``torch.cat([cache, new], dim=1)``, as Fast-dLLM / d3LLM / Streaming-dLLM do each step."""
    if k_cache is None:
        return k, v
    return torch.cat([k_cache, k], dim=1), torch.cat([v_cache, v], dim=1)


def sdpa(backend: SDPBackend):
    """SDPA restricted to one backend on the concatenated K/V. GQA goes through ``enable_gqa``;
    if the backend refuses it (on the first GQA call, a warm-up outside any timing), the KV heads
    are repeated first instead, as HF's ``repeat_kv`` in Dream's code does. ``run.gqa`` records
    which."""

    def attend(q, kk, vv, native):
        G = q.shape[2] // kk.shape[1]
        if G > 1 and not native:
            kk, vv = kk.repeat_interleave(G, dim=1), vv.repeat_interleave(G, dim=1)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q.transpose(1, 2), kk, vv, enable_gqa=G > 1 and native)

    def run(q, k, v, k_cache=None, v_cache=None):
        kk, vv = concat_kv(k, v, k_cache, v_cache)
        kk, vv = kk.transpose(1, 2), vv.transpose(1, 2)  # [B, Hkv, L, D] views
        if q.shape[2] == kk.shape[1]:  # no GQA
            out = attend(q, kk, vv, native=True)
        elif run.gqa is None:
            try:
                out = attend(q, kk, vv, native=True)
                run.gqa = "native"
            except RuntimeError:
                out = attend(q, kk, vv, native=False)
                run.gqa = "repeat"
        else:
            out = attend(q, kk, vv, native=run.gqa == "native")
        return out.transpose(1, 2)

    run.gqa = None
    return run


def flex(compiled: bool = True):
    """FlexAttention (no mask: every key is valid) on the concatenated K/V, native GQA."""
    from torch.nn.attention.flex_attention import flex_attention

    fn = torch.compile(flex_attention, dynamic=False) if compiled else flex_attention

    def run(q, k, v, k_cache=None, v_cache=None):
        kk, vv = concat_kv(k, v, k_cache, v_cache)
        G = q.shape[2] // kk.shape[2]
        out = fn(q.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2), enable_gqa=G > 1)
        return out.transpose(1, 2)

    return run


def gpu_candidates() -> dict:
    return {
        "triton": kernel,
        "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
        "sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),
        "flex_compiled": flex(compiled=True),
    }


def kv_bytes(k, k_cache) -> int:
    """K and V bytes the step must read: cache rows plus new rows (uniform lengths here)."""
    n = (k.numel() if k is not None else 0) + (k_cache.numel() if k_cache is not None else 0)
    ref = k if k is not None else k_cache
    return 2 * n * ref.element_size()


def flops(q, k, k_cache) -> float:
    """4 * B * Hq * Lq * keys * D (two matmuls, non-causal)."""
    B, Lq, Hq, D = q.shape
    keys = (k.shape[1] if k is not None else 0) + (k_cache.shape[1] if k_cache is not None else 0)
    return 4.0 * B * Hq * Lq * keys * D
