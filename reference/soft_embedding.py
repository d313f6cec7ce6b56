"""Pure-PyTorch reference of the soft embedding, ``softmax(logits / T) @ E``, in fp64.

Same names and signatures as the public ops in ``dllm_kernels`` (minus ``backend``). For finite
logits and ``T > 0`` this is ``torch.softmax(logits.float() / T, -1) @ E.float()`` (what the
engines compute, there with a ``[rows, V]`` probability buffer), written with the kernel's edge
semantics: the pivot is the row's largest raw logit and only differences are divided by T, so
T = 0 is the argmax limit (the mean of the embedding rows of the maxima); NaN counts as -inf; a
row without a logit above -inf gives zeros; ``+inf`` entries share all the mass.
"""

from __future__ import annotations

import torch

STATE_EXTRA = 4  # words after acc in a partial state: m, s, 1/T, 0


def _state(logits, embed_weight, temperature, vocab_start):
    """fp64 ``(acc [R, D], m [R], s [R], inv_t [R])`` of the rows of ``logits`` over their ids."""
    V = logits.shape[-1]
    z = logits.reshape(-1, V).to(torch.float64)
    z = torch.where(torch.isnan(z), float("-inf"), z)
    E = embed_weight[vocab_start : vocab_start + V].to(torch.float64)
    if isinstance(temperature, torch.Tensor):
        t = temperature.reshape(-1, 1).to(torch.float64)
    else:
        t = torch.full((z.shape[0], 1), float(temperature), dtype=torch.float64, device=z.device)
    m = z.max(dim=-1, keepdim=True).values
    # z == m (a +inf maximum too) weighs exp(0); T = 0 divides the other differences into -inf
    d = torch.where(z == m, 0.0, (z - m) / t)
    p = torch.where(z > float("-inf"), torch.exp(d), 0.0)  # [R, V]: the reference may hold it
    return p @ E, m[:, 0], p.sum(dim=-1), (1.0 / t)[:, 0]


def soft_embedding(logits, embed_weight, *, temperature, vocab_start=0):
    """``softmax(logits / temperature) @ embed_weight[vocab_start : vocab_start + V]`` per row.

    See :func:`dllm_kernels.soft_embedding` for the contract. Computed in fp64 (the
    probabilities ``[rows, V]`` are materialised here, the oracle's privilege), cast to
    ``embed_weight``'s dtype.
    """
    lead = logits.shape[:-1]
    acc, _, s, _ = _state(logits, embed_weight, temperature, vocab_start)
    out = torch.where(s[:, None] > 0, acc / torch.where(s > 0, s, 1.0)[:, None], 0.0)
    return out.to(embed_weight.dtype).view(*lead, embed_weight.shape[1])


def soft_embedding_partial(logits_shard, embed_shard, *, temperature, vocab_start=0):
    """The state of a vocabulary shard that :func:`merge_soft_embedding` merges exactly.

    ``[*lead, D + 4]`` fp32: ``acc = sum_v exp((z_v - m) / T) E[v]`` (``D`` words), then the
    shard's largest logit ``m`` (``-inf`` if none is above ``-inf``), ``s = sum_v exp((z_v - m) /
    T)`` and ``1 / T`` (``+inf`` at T = 0), and a 0.
    """
    lead, D = logits_shard.shape[:-1], embed_shard.shape[1]
    acc, m, s, inv_t = _state(logits_shard, embed_shard, temperature, vocab_start)
    words = torch.cat([acc, m[:, None], s[:, None], inv_t[:, None], torch.zeros_like(s)[:, None]], dim=-1)
    return words.to(torch.float32).view(*lead, D + STATE_EXTRA)


def merge_soft_embedding(partials, *, out_dtype=torch.float32):
    """Merge the states of a vocabulary's shards (a sequence of ``[*lead, D + 4]`` tensors or one
    ``[S, *lead, D + 4]`` tensor) into ``[*lead, D]`` of ``out_dtype``, in fp64: the states move
    onto the common pivot ``M = max m_j`` with ``a_j = exp((m_j - M) / T)`` (``m_j == M`` weighs
    1), ``out = sum a_j acc_j / sum a_j s_j``; zeros where no shard has a logit above -inf."""
    P = partials if isinstance(partials, torch.Tensor) else torch.stack(list(partials))
    lead, W = P.shape[1:-1], P.shape[-1]
    D = W - STATE_EXTRA
    f = P.reshape(P.shape[0], -1, W).to(torch.float64)
    acc, m, s, inv_t = f[..., :D], f[..., D], f[..., D + 1], f[0, :, D + 2]
    M = m.max(dim=0).values
    a = torch.exp(torch.where(m == M, 0.0, (m - M) * inv_t))  # [S, R]
    s_all = (a * s).sum(dim=0)
    acc_all = (a[..., None] * acc).sum(dim=0)
    out = torch.where(s_all[:, None] > 0, acc_all / torch.where(s_all > 0, s_all, 1.0)[:, None], 0.0)
    return out.to(out_dtype).view(*lead, D)
