"""The commit benchmark's cases and candidates, importable without a GPU (a CPU test checks that
every candidate does the same work on the same case).

A case is one decoding step of a batch of ragged rows (DESIGN.md 1): prompts of a quarter to a
half of the canvas, the active block right after the prompt, half of its positions decided.
Policies with block decoding get the statistics of the block (``stats_offset`` = block start);
d3LLM gets the statistics of the whole canvas, two active blocks and the first one forced.

Every proposal is one valid id (``PROPOSAL``; a proposal equal to the mask id is never committed),
so the first call commits and later repetitions of a timed call find fewer masks. The kernel's
control flow and the reference's op sequence do not depend on which positions commit, so each
repetition does the same loads and reductions (fewer stores); every candidate is timed on its own
copy of the case through the same sequence of states, so the comparison stays equal work.
"""

from __future__ import annotations

import copy

import torch

import dllm_kernels as dk
from dllm_kernels import CommitState, TokenStats, reference
from dllm_kernels.policies import POLICIES as _POLICIES

MASK = 126336  # LLaDA's mask id
PROPOSAL = 42  # every position's proposal
BENCHED = ("fast_dllm", "r2", "d3llm")
POLICIES = {  # rule, multi_block: the policies' own main rules at their defaults
    name: (p.rule, p.scheduler == "multi_block") for name, p in ((n, _POLICIES[n]()) for n in BENCHED)
}


def make_case(B: int, L: int, block: int, policy: str, device, seed: int = 0) -> dict:
    """Arguments of one ``commit`` call (x and state are fresh tensors each time)."""
    rule, multi_block = POLICIES[policy]
    g = torch.Generator().manual_seed(seed)
    span = 2 * block if multi_block else block
    start = torch.randint(L // 4, L // 2, (B,), generator=g).clamp(max=L - span)
    end = start + span
    x = torch.randint(0, 1000, (B, L), generator=g)
    pos = torch.arange(L)
    gen = pos >= start[:, None]
    x[gen & ((pos >= end[:, None]) | (torch.rand(B, L, generator=g) < 0.5))] = MASK
    width = L if multi_block else block
    kw = dict(active_start=start, active_end=end, mask_id=MASK, step=torch.tensor(3))
    if multi_block:
        kw.update(force_start=start, force_end=start + block)
    else:
        kw["stats_offset"] = start
    stats = TokenStats(
        torch.full((B, width), PROPOSAL, dtype=torch.int64),
        torch.rand(B, width, generator=g) * 0.3 + 0.7,
        torch.rand(B, width, generator=g),
        torch.rand(B, width, generator=g),
    )
    case = dict(x=x, stats=stats, state=CommitState.new(x), rule=rule, **kw)
    return {k: _to(v, device) for k, v in case.items()}


def _to(v, device):
    if isinstance(v, torch.Tensor):
        return v.to(device)
    if isinstance(v, TokenStats):
        return TokenStats(*(t.to(device) for t in v))
    if isinstance(v, CommitState):
        return CommitState(*(t.to(device) for t in (v.commit_step, v.last_id, v.count, v.conf_sum, v.conf_max)))
    return v


def copy_case(case: dict) -> dict:
    """The case with its own canvas and state (what a call mutates)."""
    return {**case, "x": case["x"].clone(), "state": copy.deepcopy(case["state"])}


def kernel(case: dict) -> torch.Tensor:
    c = dict(case)
    return dk.commit(c.pop("x"), c.pop("stats"), c.pop("state"), c.pop("rule"), backend="triton", **c)


def reference_eager(case: dict) -> torch.Tensor:
    c = dict(case)
    return reference.commit(c.pop("x"), c.pop("stats"), c.pop("state"), c.pop("rule"), **c)


CANDIDATES = {"triton": kernel, "reference_eager": reference_eager}


def compiled_candidates() -> dict:
    return {"reference_compiled": torch.compile(reference_eager)}
