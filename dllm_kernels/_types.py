"""Result types shared by the public API, the Triton launchers and the references."""

from typing import NamedTuple

import torch


class TokenStats(NamedTuple):
    """Per-position statistics of one softmax over the vocabulary.

    All fields have the leading shape of the logits (``[N]`` or ``[B, L]``).

    token:   int64, the proposal: ``argmax(logits)`` at temperature 0 (ties -> lowest id),
             ``argmax(logits / T + gumbel)`` at temperature T > 0.
    prob:    fp32, ``softmax(logits)[token]`` (the max probability at temperature 0).
    margin:  fp32, ``p_top1 - p_top2`` of ``softmax(logits)`` (0 when the two largest tie).
    entropy: fp32, ``-sum(p * log p)`` of ``softmax(logits)``, natural log.
    """

    token: torch.Tensor
    prob: torch.Tensor
    margin: torch.Tensor
    entropy: torch.Tensor
