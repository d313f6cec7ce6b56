"""RoPE helpers shared by the model and the references (HF's rotate_half convention)."""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HF's RoPE helper: ``cat(-x[..., D/2:], x[..., :D/2])``."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
