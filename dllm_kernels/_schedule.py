"""LLaDA's step schedule, the one definition (the public op, the loop, compat and the reference
use it)."""

from __future__ import annotations

import torch


def num_transfer_schedule(mask_count: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's ``get_num_transfer_tokens``: how many positions each step of a block commits.

    ``m`` masks over ``steps`` steps: every step commits ``m // steps``, the first ``m % steps``
    steps one more. ``mask_count`` is an integer tensor ``[B]``; returns int64 ``[B, steps]``
    on its device (no host sync).
    """
    m = mask_count.to(torch.int64)[:, None]
    extra = torch.arange(steps, device=mask_count.device) < m % steps
    return m // steps + extra.to(torch.int64)
