"""Evaluation on the synthetic task: exact-match accuracy, parallelism, and d3LLM's AUP score.

:func:`vanilla_decode` is a minimal LLaDA decoder kept here for monitoring the training and
testing the shipped checkpoint until the library's ``dllm_kernels.generate`` lands; it is not
the decoding loop of the library and implements one policy only (LLaDA's ``generate`` with
``steps == gen_length``, temperature 0, ``remasking="low_confidence"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .models import DiffusionLM
from .task import AdditionTask, Problem


@torch.no_grad()
def vanilla_decode(model: DiffusionLM, prompt: torch.Tensor, *, gen_length: int, block_length: int) -> torch.Tensor:
    """LLaDA vanilla decoding, one token per step: the canvas ``[prompt | MASK * gen_length]`` is
    decoded block by block; every step runs the model on the whole canvas (no cache) and commits,
    per row, the still-masked position of the current block whose argmax has the highest
    probability (ties: the lowest position). ``gen_length`` forwards in all.

    Args:
        prompt: ``[B, P]`` int64 prompt ids (all rows the same length).
    Returns:
        ``[B, gen_length]`` int64 generated ids.
    """
    mask_id = model.config.mask_id
    B, P = prompt.shape
    x = torch.cat([prompt, prompt.new_full((B, gen_length), mask_id)], 1)
    rows = torch.arange(B, device=x.device)
    for start in range(P, P + gen_length, block_length):
        end = start + block_length
        block = torch.arange(start, end, device=x.device).expand(B, block_length)
        for _ in range(block_length):
            prob, token = model(x, logits_index=block).float().softmax(-1).max(-1)  # [B, block]
            conf = torch.where(x[:, start:end] == mask_id, prob, -math.inf)
            j = conf.argmax(-1)
            x[rows, start + j] = token[rows, j]
    return x[:, P:]


@dataclass(frozen=True)
class Accuracy:
    accuracy: float  # exact match, in %
    n: int


@torch.no_grad()
def evaluate_vanilla(model: DiffusionLM, task: AdditionTask, problems: Sequence[Problem], tokenizer, *,
                     batch_size: int = 256) -> Accuracy:  # fmt: skip
    """Exact-match accuracy (%) of :func:`vanilla_decode` on ``problems``."""
    device = model.lm_head.weight.device
    correct = 0
    for i in range(0, len(problems), batch_size):
        prompt, target = (t.to(device) for t in task.encode(list(problems[i : i + batch_size]), tokenizer))
        out = vanilla_decode(model, prompt, gen_length=task.gen_length, block_length=task.block_length)
        correct += int(task.exact_match(out, target, model.config.eos_id).sum())
    return Accuracy(100.0 * correct / len(problems), len(problems))


def aup(points: Sequence[tuple[float, float]], y_max: float, *, alpha: float = 3.0, y_min_offset: float = 5.0) -> float:
    """d3LLM's AUP ("accuracy under parallelism", ``hao-ai-lab/d3LLM`` ``AUP_leaderboard/aup_utils.py``).

    Args:
        points: ``(rho, y)`` pairs of one method on one task: rho = parallelism (tokens per
            forward), y = accuracy in %.
        y_max: the best accuracy over all methods compared on that task (the weight's reference).

    With the points sorted by rho (ascending, stable) and ``y_1`` the accuracy at the smallest rho,
    the points with ``y < y_1 - y_min_offset`` are dropped and, with
    ``W(y) = min(exp(-alpha (1 - y / y_max)), 1)``,

        AUP = rho_1 y_1 + sum_{i >= 2} (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2

    (the first term is not weighted; one point at rho = 1 scores its accuracy). The d3LLM code
    also asserts that the last point passes the filter; here such a point is dropped like any
    other, so a sweep that ends in a collapse still gets a score.
    """
    if not points:
        raise ValueError("points must hold at least one (rho, accuracy) pair")
    if not y_max > 0:
        raise ValueError(f"y_max must be positive, got {y_max}")
    pts = sorted(points, key=lambda p: p[0])
    y1 = pts[0][1]
    pts = [p for p in pts if p[1] >= y1 - y_min_offset]

    def weighted(y):
        return y * min(math.exp(-alpha * (1 - y / y_max)), 1.0)

    score = pts[0][0] * pts[0][1]
    for (r_prev, y_prev), (r, y) in zip(pts, pts[1:]):
        score += 0.5 * (r - r_prev) * (weighted(y) + weighted(y_prev))
    return score
