"""Seed drawing, the one definition: a sampling op or the loop given ``seed=None`` draws its seed
here."""

from __future__ import annotations

import torch

SEED_BOUND = 2**62  # drawn seeds lie in [0, SEED_BOUND); a seed plus a step count stays below 2**63


def resolve_seed(seed):
    """``seed`` as an int; ``None`` draws one from torch's default CPU generator (no device sync);
    a tensor of per-row seeds passes through."""
    if seed is None:
        return int(torch.randint(0, SEED_BOUND, (1,)).item())
    return seed if isinstance(seed, torch.Tensor) else int(seed)
