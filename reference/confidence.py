"""Pure-PyTorch references of the confidence ops, written for clarity (fp64 where it matters).

Same names and signatures as the public ops in ``dllm_kernels`` (minus ``backend``; the types are
the public ops'); they are the oracle of every kernel test.
"""

from __future__ import annotations

import torch

from dllm_kernels._seeds import resolve_seed
from dllm_kernels._types import TokenStats

from ._philox import philox_uniform

_INT_MAX = 2**31 - 1
_U_MIN = 2.0**-32  # uniforms of exactly 0 are raised to this, so the Gumbel noise is finite
_U_MIN_VLLM = 1e-20  # vLLM 0.33's clamp (noise="vllm")
_T0 = 1e-10  # the temperature of a T = 0 row's tempered statistics (vLLM 0.33's clamp)
PARTIAL_WORDS = 8  # fp32 (m, s, u, v2, gumbel score, its logit), int32 (argmax id, sampled id)


def _allowed_bits(allowed: torch.Tensor, n_rows: int, ids: torch.Tensor) -> torch.Tensor:
    """``[R, V]`` bool: bit ``id % 32`` of word ``id // 32`` of each row's int32 bitmask."""
    words = allowed.reshape(n_rows, allowed.shape[-1]).cpu().to(torch.int64)  # sign-extended: bit 31 too
    return ((words[:, ids >> 5] >> (ids & 31)) & 1).bool()


def _clean_logits(logits: torch.Tensor, vocab_start: int, suppress_ids, allowed=None) -> torch.Tensor:
    """``[R, V]`` fp64 logits with NaN, the suppressed (global) ids and the ids not allowed by the
    bitmask set to -inf."""
    V = logits.shape[-1]
    z = logits.reshape(-1, V).to(torch.float64)
    z = torch.where(torch.isnan(z), float("-inf"), z)
    local = [i - vocab_start for i in (suppress_ids or ()) if 0 <= i - vocab_start < V]
    if local:
        z[:, local] = float("-inf")
    if allowed is not None:
        ids = vocab_start + torch.arange(V, dtype=torch.int64)
        z = torch.where(_allowed_bits(allowed, z.shape[0], ids), z, float("-inf"))
    return z


def _inverse_temperatures(temperature, n_rows: int, noise: str):
    """``(inv, hot, inv_stat)`` per row, ``[R]`` each: the fp32 ``1 / T`` of the sampling scores,
    whether the row samples, and the ``1 / T`` of tempered statistics (T = 0 taken as 1e-10).

    A float T gives the kernel's host-side ``fp32(1 / T)``; a tensor is read as fp32 and divided
    in fp32 (correctly rounded, as the kernel's ``div_rn`` and, on the CPU, vLLM's ``/``)."""
    one = torch.tensor(1.0, dtype=torch.float32)
    if isinstance(temperature, torch.Tensor):
        t = temperature.reshape(n_rows).cpu().to(torch.float32)
        floor = t.clamp(min=_T0) if noise == "vllm" else torch.where(t > 0, t, torch.tensor(_T0, dtype=torch.float32))
        inv = one / floor
        return inv, t > 0, inv
    inv0 = one / torch.tensor(_T0, dtype=torch.float32)
    hot = temperature > 0.0
    inv = torch.tensor(1.0 / temperature if hot else 1.0, dtype=torch.float32)
    return inv.expand(n_rows), torch.full((n_rows,), hot), (inv if hot else inv0).expand(n_rows)


def _uniforms(seed, n_rows: int, ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The kernel's Philox uniforms ``[R, V]`` for global ``ids``: ``rand(seed, row * vocab_size +
    id)`` for an int seed, ``rand(seed[row], id)`` for per-row seeds."""
    if isinstance(seed, torch.Tensor):
        return philox_uniform(seed.reshape(-1, 1).cpu(), ids[None, :])
    rows = torch.arange(n_rows, dtype=torch.int64)[:, None]
    return philox_uniform(seed, rows * vocab_size + ids[None, :])


def _gumbel_choice(z: torch.Tensor, u: torch.Tensor, inv: torch.Tensor, hot: torch.Tensor, noise: str = "dllm"):
    """(index, score) of the Gumbel-max sample of each row of fp64 logits ``z``.

    ``noise="dllm"``: scores are the kernel's fp32 ``z * (1 / T) - log(-log U)``, ``+inf`` for a
    ``+inf`` logit, the raw logit in rows that do not sample (``hot`` False); every entry above
    ``-inf`` is a candidate (even if its score overflowed to ``-inf``); ties go to the lowest
    index. Rows without a candidate give index 0 and score ``-inf``.

    ``noise="vllm"``: vLLM 0.33's fp32 ``z * inv + g * hot`` with ``g = -log(-log max(U,
    1e-20))``; only scores above ``-inf`` are candidates (index ``2**31 - 1`` where none is).
    """
    z32 = z.to(torch.float32)
    inv = inv.to(torch.float32)[:, None]
    if noise == "vllm":
        g = -torch.log(-torch.log(u.clamp_min(_U_MIN_VLLM)))
        scores = z32 * inv + g * hot.to(torch.float32)[:, None]
        best = scores.max(dim=-1, keepdim=True).values
        index = (scores == best).to(torch.int8).argmax(dim=-1)
        return torch.where(best[:, 0] > float("-inf"), index, _INT_MAX), best[:, 0]
    scores = z32 * inv - torch.log(-torch.log(u.clamp_min(_U_MIN)))
    scores = torch.where(z32 == float("inf"), float("inf"), scores)
    scores = torch.where(hot[:, None], scores, z32)
    valid = z > float("-inf")
    key = torch.where(valid, scores, float("-inf"))
    best = key.max(dim=-1, keepdim=True).values
    index = (valid & (key == best)).to(torch.int8).argmax(dim=-1)  # first candidate holding the max
    return index, best[:, 0]


def _distances(z: torch.Tensor, m: torch.Tensor, inv_stat) -> torch.Tensor:
    """``(z - m) * inv_stat`` in fp64 (``inv_stat`` ``[R, 1]`` or None for untempered), 0 where
    ``z == m`` (a ``+inf`` maximum too)."""
    d = torch.where(z == m, 0.0, z - m)
    return d if inv_stat is None else d * inv_stat


def _softmax(z: torch.Tensor, m: torch.Tensor, inv_stat=None) -> torch.Tensor:
    """softmax of fp64 logits ``z * inv_stat`` with row maxima ``m [R, 1]``, in which ``+inf``
    entries share all the mass (the softmax's limit)."""
    e = torch.exp(_distances(z, m, inv_stat))
    return e / e.sum(dim=-1, keepdim=True)


def token_stats(logits, *, temperature=0.0, seed=None, suppress_ids=None, allowed=None, tempered=False, noise="dllm"):
    """Proposal token, its probability, the top-1/top-2 margin and the entropy of each row.

    See :func:`dllm_kernels.token_stats` for the contract (NaN / inf semantics included).
    Statistics are computed in fp64 from the upcast logits (``tempered``: of ``softmax((z - m) *
    inv)`` with the kernel's fp32 ``inv``); the Gumbel scores at temperature > 0 use the kernel's
    Philox stream and its fp32 arithmetic (``z * (1 / T) - log(-log U)``), so the proposals agree.
    """
    lead, V = logits.shape[:-1], logits.shape[-1]
    z = _clean_logits(logits.cpu(), 0, suppress_ids, allowed)
    R = z.shape[0]
    m = z.max(dim=-1).values
    valid = m > float("-inf")  # rows holding at least one logit above -inf
    inv, hot, inv_stat = _inverse_temperatures(temperature, R, noise)

    if isinstance(temperature, torch.Tensor) or temperature > 0.0:
        u = _uniforms(resolve_seed(seed), R, torch.arange(V, dtype=torch.int64), V)
        token, _ = _gumbel_choice(z, u, inv, hot, noise)
        token = torch.where(token == _INT_MAX, 0, token)
    else:
        token = z.argmax(dim=-1)  # first index among ties

    inv64 = inv_stat.to(torch.float64)[:, None] if tempered else None
    p = _softmax(z, m[:, None], inv64)
    prob = p.gather(-1, token[:, None])[:, 0]
    # the two largest probabilities: the largest, then the largest of the others and 0 (one
    # occurrence of the largest set to 0; the second is 0 for a vocabulary of one)
    p1, i1 = p.max(dim=-1)
    margin = p1 - p.scatter(-1, i1[:, None], 0.0).amax(dim=-1)
    entropy = -torch.xlogy(p, p).sum(dim=-1)

    device = logits.device
    token = torch.where(valid, token, 0).to(device)
    prob = torch.where(valid, prob, 0.0).float().to(device)
    margin = torch.where(valid, margin, 0.0).float().to(device)
    entropy = torch.where(valid, entropy, float("inf")).float().to(device)
    return TokenStats(token.view(lead), prob.view(lead), margin.view(lead), entropy.view(lead))


def token_stats_partial(
    logits_shard,
    vocab_start,
    *,
    temperature=0.0,
    seed=None,
    suppress_ids=None,
    vocab_size=None,
    allowed=None,
    tempered=False,
    noise="dllm",
):
    """The per-row state of a vocabulary shard that :func:`merge_token_stats` merges exactly.

    See :func:`dllm_kernels.token_stats_partial`. Computed in fp64 and stored as the kernel's
    8 words per row: fp32 ``(m, s, u, v2, gs, gz)`` = the shard's largest logit, ``sum exp(d)``,
    ``sum exp(d) * d`` with ``d = z - m`` (``tempered``: ``(z - m) / T``), its second largest
    logit, the best Gumbel score and its logit; then int32 ``(i1, gi)`` = the global ids of the
    largest logit (lowest on ties) and of the sample, ``2**31 - 1`` where the shard has no logit
    above -inf. Rows that do not sample (T = 0) repeat ``(m, m, i1)`` in the sampling words.
    ``allowed`` is the bitmask of the whole vocabulary (global ids).
    """
    lead, V = logits_shard.shape[:-1], logits_shard.shape[-1]
    z = _clean_logits(logits_shard.cpu(), vocab_start, suppress_ids, allowed)
    R = z.shape[0]
    ids = vocab_start + torch.arange(V, dtype=torch.int64)
    vocab_size = vocab_start + V if vocab_size is None else vocab_size
    m = z.max(dim=-1).values
    valid = m > float("-inf")
    inv, hot, inv_stat = _inverse_temperatures(temperature, R, noise)
    d = _distances(z, m[:, None], inv_stat.to(torch.float64)[:, None] if tempered else None)
    e = torch.where(valid[:, None], torch.exp(d), 0.0)
    s = e.sum(dim=-1)
    u = (e * torch.where(e > 0, d, 0.0)).sum(dim=-1)
    top = z.argmax(dim=-1)  # first index among ties
    i1 = torch.where(valid, ids[top], _INT_MAX)
    v2 = z.scatter(-1, top[:, None], float("-inf")).max(dim=-1).values
    if isinstance(temperature, torch.Tensor) or temperature > 0.0:
        u_noise = _uniforms(resolve_seed(seed), R, ids, vocab_size)
        idx, gs = _gumbel_choice(z, u_noise, inv, hot, noise)
        found = valid & (idx != _INT_MAX)
        idx = torch.where(found, idx, 0)
        gi = torch.where(found, ids[idx], _INT_MAX)
        gz = torch.where(found, z.gather(-1, idx[:, None])[:, 0], float("-inf"))
        if noise != "vllm":  # rows that do not sample hold their argmax's words
            gs, gz, gi = torch.where(hot, gs, m), torch.where(hot, gz, m), torch.where(hot, gi, i1)
    else:
        gs, gz, gi = m, m, i1
    words = torch.stack([t.to(torch.float32) for t in (m, s, u, v2, gs, gz)], dim=-1)
    ints = torch.stack([i1, gi], dim=-1).to(torch.int32).view(torch.float32)
    out = torch.cat([words, ints], dim=-1).to(logits_shard.device)
    return out.view(*lead, PARTIAL_WORDS)


def merge_token_stats(partials, *, temperature=0.0, tempered=False):
    """Merge the partial states of the shards of a vocabulary into the statistics of the whole.

    ``partials``: a sequence of ``[*lead, 8]`` tensors from :func:`token_stats_partial` (any
    order), or one ``[S, *lead, 8]`` tensor. The merge is done in fp64: the states move onto the
    common pivot ``m = max m_j`` (``a_j = exp(d_j)``, ``d_j = m_j - m``, or ``(m_j - m) / T`` for
    ``tempered`` states, ``s = sum a_j s_j``, ``u = sum a_j (u_j + s_j d_j)``), the token is the
    lowest id holding the largest logit (temperature 0) or the largest Gumbel score (T > 0), and
    the statistics follow as in :func:`token_stats`.
    """
    P = partials if isinstance(partials, torch.Tensor) else torch.stack(list(partials))
    lead, device = P.shape[1:-1], P.device
    P = P.reshape(P.shape[0], -1, PARTIAL_WORDS).cpu()
    R = P.shape[1]
    f = P.to(torch.float64)
    ids = P.contiguous().view(torch.int32)[..., 6:8].to(torch.int64)
    b_m, b_s, b_u, b_v2, b_gs, b_gz = f.unbind(-1)[:6]
    b_i1, b_gi = ids.unbind(-1)
    ninf = float("-inf")
    inv = _inverse_temperatures(temperature, R, "dllm")[2].to(torch.float64) if tempered else None

    m = b_m.max(dim=0).values
    valid = m > ninf
    pivot = torch.where(valid, m, 0.0)
    b_piv = torch.where(b_m > ninf, b_m, pivot)
    b_d = torch.where(b_piv == pivot, 0.0, b_piv - pivot)
    if inv is not None:
        b_d = b_d * inv
    b_a = torch.exp(b_d)
    s = (b_a * b_s).sum(dim=0)
    u = (b_a * b_u + b_s * torch.where(b_a > 0, b_a * b_d, 0.0)).sum(dim=0)
    i1 = torch.where(b_m == m, b_i1, _INT_MAX).min(dim=0).values
    is_top = (b_m == m) & (b_i1 == i1)
    v2 = torch.maximum(b_v2.max(dim=0).values, torch.where(is_top, ninf, b_m).max(dim=0).values)
    gs = b_gs.max(dim=0).values
    gi = torch.where(b_gs == gs, b_gi, _INT_MAX).min(dim=0).values
    gz = torch.where((b_gs == gs) & (b_gi == gi), b_gz, ninf).max(dim=0).values

    def rel(x):  # exp((x - pivot) [/ T]), 1 where x equals the (possibly +inf) pivot
        d = torch.where(x == pivot, 0.0, x - pivot)
        return torch.exp(d if inv is None else d * inv)

    s_safe = torch.where(valid, s, 1.0)
    token = torch.where(valid & (gi != _INT_MAX), gi, 0)
    prob = torch.where(valid, rel(gz) / s_safe, 0.0)
    margin = torch.where(valid, (1.0 - rel(v2)) / s_safe, 0.0)
    entropy = torch.where(valid, (torch.log(s_safe) - u / s_safe).clamp_min(0.0), float("inf"))
    out = [t.to(device) for t in (token, prob.float(), margin.float(), entropy.float())]
    return TokenStats(*(t.view(lead) for t in out))


def window_confidence(conf, decided, window=3, max_decided=1):
    """R2-dLLM's spatial aggregation (DESIGN.md 1.2, rule 5) as a per-position score.

    Windows of ``window`` consecutive positions slide over each row with stride 1. A window
    qualifies if it holds at most ``max_decided`` decided positions, at least one undecided one,
    and only finite confidences at its undecided positions. Its score is the mean confidence of
    its undecided positions (fp32, summed left to right). Each undecided position gets the max
    score over the qualifying windows that contain it; positions without one, and decided
    positions, get -inf. Rule 5 commits exactly the positions whose score is >= tau_s.
    """
    B, L = conf.shape
    device = conf.device
    out = torch.full((B, L), float("-inf"), dtype=torch.float32)
    conf = conf.float().cpu()
    decided = decided.bool().cpu()
    for b in range(B):
        for w in range(0, L - window + 1):
            span = range(w, w + window)
            masked = [i for i in span if not decided[b, i]]
            if len(span) - len(masked) > max_decided or not masked:
                continue
            if not all(torch.isfinite(conf[b, i]) for i in masked):
                continue
            total = torch.zeros((), dtype=torch.float32)
            for i in masked:
                total = total + conf[b, i]
            mean = total / len(masked)
            for i in masked:
                out[b, i] = torch.maximum(out[b, i], mean)
    return out.to(device)
