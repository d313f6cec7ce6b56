"""Pure-PyTorch reference of the decoding-step attention: plain math, one batch row at a time.

Same name and signature as :func:`dllm_kernels.attention` (minus ``backend``; the types are the
public op's). It builds each
row's key sequence explicitly (``cat(cache[:cache_len], new[:kv_len])[key_start:]``) and computes
``softmax(q k^T * scale) v`` with matmuls and ``torch.softmax``, never SDPA, so it is an
independent oracle. ``attention`` computes in fp32; ``attention_lowp`` runs the same math in the
inputs' dtype, the "PyTorch low-precision path" whose error bounds the kernel's in the tests.
"""

from __future__ import annotations

import math

import torch


def _row_lengths(lengths: torch.Tensor | None, default: int, B: int) -> list[int]:
    return [default] * B if lengths is None else [int(n) for n in lengths.tolist()]


def _attention(
    q, k, v, *, k_cache=None, v_cache=None, cache_len=None, kv_len=None, key_start=None, scale=None, dtype
) -> torch.Tensor:
    B, Lq, Hq, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    Lmax = k_cache.shape[1] if k_cache is not None else 0
    Lk = k.shape[1] if k is not None else 0
    cl = _row_lengths(cache_len, Lmax, B)
    kl = _row_lengths(kv_len, Lk, B)
    ks = _row_lengths(key_start, 0, B)
    out = torch.zeros(B, Lq, Hq, D, dtype=dtype, device=q.device)
    for b in range(B):
        keys, values = [], []
        if k_cache is not None:
            keys.append(k_cache[b, : cl[b]])
            values.append(v_cache[b, : cl[b]])
        if k is not None:
            keys.append(k[b, : kl[b]])
            values.append(v[b, : kl[b]])
        kb = torch.cat(keys)[max(ks[b], 0) :].to(dtype)  # [N, Hkv, D]: the row's valid keys
        vb = torch.cat(values)[max(ks[b], 0) :].to(dtype)
        if kb.shape[0] == 0:
            continue  # no valid key: output 0
        G = Hq // kb.shape[1]
        kb = kb.repeat_interleave(G, dim=1).transpose(0, 1)  # [Hq, N, D]
        vb = vb.repeat_interleave(G, dim=1).transpose(0, 1)
        qb = q[b].to(dtype).transpose(0, 1)  # [Hq, Lq, D]
        p = torch.softmax((qb @ kb.transpose(1, 2)) * scale, dim=-1)  # [Hq, Lq, N]
        out[b] = (p @ vb).transpose(0, 1)
    return out


def attention(
    q, k=None, v=None, *, k_cache=None, v_cache=None, cache_len=None, kv_len=None, key_start=None, scale=None
):
    """Bidirectional attention over ``[cache rows | new rows]``, in fp32, returned in q's dtype.

    See :func:`dllm_kernels.attention` for the contract: row ``b`` attends to cache rows
    ``[0, cache_len[b])`` then new rows ``[0, kv_len[b])``, minus the first ``key_start[b]`` of
    that sequence; a query row without any valid key gets 0.
    """
    kw = dict(k_cache=k_cache, v_cache=v_cache, cache_len=cache_len, kv_len=kv_len, key_start=key_start, scale=scale)
    return _attention(q, k, v, dtype=torch.float32, **kw).to(q.dtype)


def attention_lowp(q, k=None, v=None, **kwargs):
    """:func:`attention`'s math (same arguments) run in q's dtype, matmuls and softmax included:
    its error against the fp32 result is what FlashAttention's test criterion allows a kernel twice."""
    return _attention(q, k, v, dtype=q.dtype, **kwargs)
