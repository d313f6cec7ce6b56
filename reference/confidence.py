"""Pure-PyTorch references of the confidence ops, written for clarity (fp64 where it matters).

Same names and signatures as the public ops in ``dllm_kernels`` (minus ``backend``); they are the
oracle of every kernel test.
"""

from __future__ import annotations

import torch

from dllm_kernels._seeds import resolve_seed
from dllm_kernels._types import TokenStats

from ._philox import philox_uniform


def token_stats(logits: torch.Tensor, *, temperature: float = 0.0, seed: int | None = None, suppress_ids=None) -> TokenStats:
    """Proposal token, its probability, the top-1/top-2 margin and the entropy of each row.

    See :func:`dllm_kernels.token_stats` for the contract. Statistics are computed in fp64 from
    the upcast logits; the Gumbel scores at temperature > 0 use the kernel's Philox stream and
    its fp32 arithmetic (``z * (1 / T) - log(-log(U))``), so the proposals agree.
    """
    lead, V = logits.shape[:-1], logits.shape[-1]
    z = logits.reshape(-1, V).to(torch.float64)
    if suppress_ids:
        z[:, list(suppress_ids)] = float("-inf")
    valid = z.max(dim=-1).values > float("-inf")  # rows holding at least one finite logit

    if temperature > 0.0:
        rows = torch.arange(z.shape[0], dtype=torch.int64)[:, None]
        u = philox_uniform(resolve_seed(seed), rows * V + torch.arange(V, dtype=torch.int64))
        inv_t = torch.tensor(1.0 / temperature, dtype=torch.float32)
        scores = z.to(torch.float32) * inv_t - torch.log(-torch.log(u))
        token = scores.argmax(dim=-1)  # first index among ties
    else:
        token = z.argmax(dim=-1)  # first index among ties

    p = torch.softmax(z, dim=-1)
    prob = p.gather(-1, token[:, None])[:, 0]
    top = torch.cat([p, torch.zeros_like(p[:, :1])], dim=-1).topk(2, dim=-1).values
    margin = top[:, 0] - top[:, 1]
    entropy = -torch.xlogy(p, p).sum(dim=-1)

    token = torch.where(valid, token, 0)
    prob = torch.where(valid, prob, 0.0).float()
    margin = torch.where(valid, margin, 0.0).float()
    entropy = torch.where(valid, entropy, float("inf")).float()
    return TokenStats(token.view(lead), prob.view(lead), margin.view(lead), entropy.view(lead))


def window_confidence(conf: torch.Tensor, decided: torch.Tensor, window: int, max_decided: int) -> torch.Tensor:
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
