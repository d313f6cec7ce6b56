"""Drop-in replacements for the helpers the public dLLM repositories call every step.

LLaDA, Fast-dLLM, Streaming-dLLM, R2-dLLM and d3LLM share ``get_num_transfer_tokens`` and
``get_transfer_index`` (d3LLM adds ``get_transfer_index_entropy``); switching such a codebase to
the fused kernels is a one-line import change::

    from dllm_kernels.compat import get_num_transfer_tokens, get_transfer_index

Differences from the originals, by design: confidences are fp32 statistics of one fused pass
(the originals use fp64 softmax), ties resolve to the lowest position, sampling at temperature
> 0 draws Gumbel noise from the kernels' seeded Philox stream (the same distribution as the
originals' ``torch.rand``, not the same numbers), and no host sync happens (the originals loop
over rows with ``torch.topk`` and ``.item()``-style indexing).
"""

from __future__ import annotations

import torch

from ._schedule import num_transfer_schedule
from .commit import CommitRule, CommitState, commit
from .confidence import token_stats

# commit() needs a canvas whose masks are exactly the candidates: a private two-token canvas
_CANDIDATE, _OTHER = 0, 1


def get_num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's schedule: ``[B, steps]`` int64, ``m // steps`` per step and one more in the first
    ``m % steps`` steps, m being each row's number of masked positions."""
    return num_transfer_schedule(mask_index.sum(dim=1), steps)


def _transfer(logits, temperature, mask_index, x, rule: CommitRule, num_transfer, backend):
    stats = token_stats(logits, temperature=temperature, backend=backend)
    B, L = mask_index.shape
    canvas = torch.where(mask_index, _CANDIDATE, _OTHER).to(torch.int64)
    state = CommitState.new(canvas)
    zeros = torch.zeros(B, dtype=torch.int64, device=x.device)
    full = torch.full((B,), L, dtype=torch.int64, device=x.device)
    commit(
        canvas,
        stats,
        state,
        rule,
        active_start=zeros,
        active_end=full,
        mask_id=_CANDIDATE,
        step=0,
        num_transfer=num_transfer,
        force_start=zeros,
        force_end=zeros,
        backend=backend,
    )
    x0 = torch.where(mask_index, stats.token, x)
    return x0, state.commit_step == 0


def get_transfer_index(
    logits: torch.Tensor,
    temperature: float,
    remasking: str,
    mask_index: torch.Tensor,
    x: torch.Tensor,
    num_transfer_tokens: torch.Tensor | None,
    threshold: float | None = None,
    *,
    backend: str = "auto",
):
    """Fast-dLLM's ``get_transfer_index``: ``(x0, transfer_index)``, both ``[B, L]``.

    With ``threshold``: commit the most confident masked position and every masked position with
    probability ``>= threshold``; without: the ``num_transfer_tokens[:, 0]``-style per-row count
    (a ``[B]`` or ``[B, 1]`` tensor) of most confident masked positions. ``remasking`` must be
    ``"low_confidence"`` (the confidence is the proposal's probability).
    """
    if remasking != "low_confidence":
        raise ValueError(f"get_transfer_index: only remasking='low_confidence' is fused, got {remasking!r}")
    if threshold is not None:
        rule, k = CommitRule(base="threshold", threshold=float(threshold)), None
    else:
        if num_transfer_tokens is None:
            raise ValueError("get_transfer_index: num_transfer_tokens is needed without a threshold")
        rule, k = CommitRule(base="topk", commit_best=False), num_transfer_tokens.reshape(-1).to(torch.int64)
    return _transfer(logits, temperature, mask_index, x, rule, k, backend)


def get_transfer_index_entropy(
    logits: torch.Tensor,
    temperature: float,
    remasking: str,
    mask_index: torch.Tensor,
    x: torch.Tensor,
    num_transfer_tokens: torch.Tensor | None,
    entropy_threshold: float | None = None,
    *,
    backend: str = "auto",
):
    """d3LLM's ``get_transfer_index_entropy`` (LLaDA): commit the lowest-entropy masked position
    and every masked position with entropy ``<= entropy_threshold`` (``num_transfer_tokens`` is
    unused, as in d3LLM when a threshold is given)."""
    if remasking != "low_confidence":
        raise ValueError(f"get_transfer_index_entropy: only remasking='low_confidence' is fused, got {remasking!r}")
    if entropy_threshold is None:  # d3LLM always passes one (999.0 when its own threshold is unset)
        raise ValueError("get_transfer_index_entropy: entropy_threshold is required")
    rule = CommitRule(base="entropy", entropy_threshold=float(entropy_threshold), commit_best=True)
    return _transfer(logits, temperature, mask_index, x, rule, None, backend)
