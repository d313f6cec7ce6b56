"""Pure-PyTorch reference of the decoding-step attention: plain math, per batch row.

Same name and signature as :func:`dllm_kernels.attention` (minus ``backend``; the types are the
public op's). It builds each
row's key sequence explicitly (``cat(cache[:cache_len], new[:kv_len])[key_start:]``) and computes
``softmax(q k^T * scale) v`` with matmuls and ``torch.softmax``, never SDPA, so it is an
independent oracle; with ``block_size`` an explicit ``[Lq, keys]`` mask hides the new rows of
later blocks. Rows with the same three lengths (and block phase) run together, as one
``torch.bmm`` batch of the per-row, per-head matrices. ``attention`` computes in fp32;
``attention_lowp`` runs the same math in the inputs' dtype, the "PyTorch low-precision path"
whose error bounds the kernel's in the tests.
"""

from __future__ import annotations

import math

import torch


def _row_lengths(lengths: torch.Tensor | None, default: int, B: int) -> list[int]:
    return [default] * B if lengths is None else [int(n) for n in lengths.tolist()]


def _block_phase(cache_len: list[int], origin: list[int], block_size: int | None) -> list[int]:
    """Per row, ``(cache_len - block_origin) mod block_size``: forwarded row ``j`` is in block
    ``(j + phase) // block_size`` up to a per-row constant (0 for every row without blocks)."""
    if block_size is None:
        return [0] * len(cache_len)
    return [(c - o) % block_size for c, o in zip(cache_len, origin)]


def _new_row_mask(Lq: int, n_new: int, phase: int, block_size: int, device) -> torch.Tensor:
    """``[Lq, n_new]`` bool: new row ``j`` is visible to query row ``i`` when its block is not
    later, ``(j + phase) // block_size <= (i + phase) // block_size``."""
    i = torch.arange(Lq, device=device)
    j = torch.arange(n_new, device=device)
    return (j[None, :] + phase) // block_size <= (i[:, None] + phase) // block_size


def _attention(
    q,
    k,
    v,
    *,
    k_cache=None,
    v_cache=None,
    cache_len=None,
    kv_len=None,
    key_start=None,
    scale=None,
    block_size=None,
    block_origin=None,
    dtype,
) -> torch.Tensor:
    B, Lq, Hq, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    Lmax = k_cache.shape[1] if k_cache is not None else 0
    Lk = k.shape[1] if k is not None else 0
    cl = _row_lengths(cache_len, Lmax, B)
    kl = _row_lengths(kv_len, Lk, B)
    ks = _row_lengths(key_start, 0, B)
    phase = _block_phase(cl, ks if block_origin is None else _row_lengths(block_origin, 0, B), block_size)
    out = torch.zeros(B, Lq, Hq, D, dtype=dtype, device=q.device)
    # rows with the same (cache_len, kv_len, key_start, block phase) have keys of one length and
    # one mask: they run as one batch of the same per-row matmuls and softmax (a row's result does
    # not depend on its group)
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for b, key in enumerate(zip(cl, kl, ks, phase)):
        groups.setdefault(key, []).append(b)
    for (n_cache, n_new, start, ph), rows in groups.items():
        idx = slice(None) if len(rows) == B else torch.tensor(rows, device=q.device)  # all rows: views
        keys, values = [], []
        if k_cache is not None:
            keys.append(k_cache[idx, :n_cache])
            values.append(v_cache[idx, :n_cache])
        if k is not None:
            keys.append(k[idx, :n_new])
            values.append(v[idx, :n_new])
        kb = torch.cat(keys, 1)[:, max(start, 0) :].to(dtype)  # [rows, N, Hkv, D]: the rows' valid keys
        vb = torch.cat(values, 1)[:, max(start, 0) :].to(dtype)
        if kb.shape[1] == 0:
            continue  # no valid key: output 0
        visible = None  # [Lq, N] with block_size: cache keys all visible, new rows block-causal
        if block_size is not None:
            cached = torch.ones(Lq, n_cache, dtype=torch.bool, device=q.device)
            visible = torch.cat([cached, _new_row_mask(Lq, n_new, ph, block_size, q.device)], 1)[:, max(start, 0) :]
        R, N, G = len(rows), kb.shape[1], Hq // kb.shape[2]
        # [rows * Hq, ., D] batches of per-head matrices, as torch.bmm runs them for one row
        if G > 1:
            kb, vb = kb.repeat_interleave(G, dim=2), vb.repeat_interleave(G, dim=2)
        kb = kb.transpose(1, 2).reshape(R * Hq, N, D)
        vb = vb.transpose(1, 2).reshape(R * Hq, N, D)
        qb = q[idx].to(dtype).transpose(1, 2).reshape(R * Hq, Lq, D)
        s = torch.bmm(qb, kb.transpose(1, 2)) * scale  # [rows * Hq, Lq, N]
        if visible is None:
            p = torch.softmax(s, dim=-1)
        else:  # a query row whose keys are all hidden gets 0 (not the NaN of an all -inf softmax)
            p = torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1)
            p = torch.where(visible.any(-1)[:, None], p, 0.0)
        out[idx] = torch.bmm(p, vb).view(R, Hq, Lq, D).transpose(1, 2)
    return out


def attention(
    q,
    k=None,
    v=None,
    *,
    k_cache=None,
    v_cache=None,
    cache_len=None,
    kv_len=None,
    key_start=None,
    scale=None,
    block_size=None,
    block_origin=None,
):
    """Attention over ``[cache rows | new rows]``, in fp32, returned in q's dtype.

    See :func:`dllm_kernels.attention` for the contract: row ``b`` attends to cache rows
    ``[0, cache_len[b])`` then new rows ``[0, kv_len[b])``, minus the first ``key_start[b]`` of
    that sequence, bidirectionally, or with ``block_size`` block-causally among the forwarded
    rows (new row ``j`` hidden from query row ``i`` when its block, counted from logical index
    ``block_origin[b]``, default ``key_start[b]``, is later); a query row without any valid key
    gets 0.
    """
    kw = dict(
        k_cache=k_cache,
        v_cache=v_cache,
        cache_len=cache_len,
        kv_len=kv_len,
        key_start=key_start,
        scale=scale,
        block_size=block_size,
        block_origin=block_origin,
    )
    return _attention(q, k, v, dtype=torch.float32, **kw).to(q.dtype)


def attention_lowp(q, k=None, v=None, **kwargs):
    """:func:`attention`'s math (same arguments) run in q's dtype, matmuls and softmax included:
    its error against the fp32 result is what FlashAttention's test criterion allows a kernel twice."""
    return _attention(q, k, v, dtype=q.dtype, **kwargs)
