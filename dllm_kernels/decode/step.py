"""One batched decoding step on the device: the index tables built from the plan
(:func:`device_inputs`) and the step itself (:func:`decode_step`: forward, token statistics,
commits; no host sync, capturable in a CUDA graph).

The loop's two ops are called here, and only here, through their unchecked entries
(:func:`generate` validated everything once per call).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..commit import commit_unchecked
from ..confidence import token_stats_unchecked
from ..models.protocol import CacheWrite
from .plan import Col, Geometry

# the commit op's packed per-row table (commit.ROW_FIELDS order: active start/end, force
# start/end, stats offset, k), as plan columns
_COMMIT_ROW_COLUMNS = [
    int(c) for c in (Col.ACTIVE_START, Col.ACTIVE_END, Col.FORCE_START, Col.FORCE_END, Col.ACTIVE_START, Col.K)
]


@dataclass
class StepInputs:
    """Device tensors of one batched decoding step (see :func:`decode_step`). Row b forwards the
    canvas positions ``idx[b, :kv_len[b]]``; ``groups`` holds one entry per distinct commit rule:
    ``(rule, rows)``, ``rows`` the ``[6, B]`` table of :func:`dllm_kernels.commit.pack_rows`
    (active start/end, force start/end, stats offset, k), rows outside the group having empty
    regions."""

    idx: torch.Tensor  # [B, Lq] canvas positions forwarded (padded)
    kv_len: torch.Tensor  # [B]
    cache_len: torch.Tensor | None  # [B] cache rows attended
    write: CacheWrite | None
    logits_index: torch.Tensor  # [B, Lo] forwarded rows whose logits feed the commit
    stats_offset: torch.Tensor  # [B] canvas position of logits row 0
    fill_after: torch.Tensor | None  # [B] d3LLM early stop seen by the forward only (L = none)
    groups: list


def device_inputs(
    plan: torch.Tensor,
    Lq: int,
    Lo: int,
    nw: int | None,
    rules,
    geo: Geometry,
    cached: bool,
    stale: bool,
    unit: int | None = None,
) -> StepInputs:
    """Build a step's index tables on the device from its ``[B, NCOL]`` plan (no host work that
    grows with the batch): ``Lq`` forwarded columns, ``Lo`` logits columns, ``nw`` written blocks
    (None: no cache write), one commit group per rule of ``rules`` (a list of (rule id, rule));
    ``cached``: the model has a cache; ``stale``: the forward sees the step's early-stop fill;
    ``unit``: positions per written block (None: ``geo.bs``; Fast-dLLM v2's sub-block cache
    writes sub-blocks)."""
    col = plan.unbind(1)
    a, c, tail, s = col[Col.WIN_START], col[Col.WIN_END], col[Col.TAIL], col[Col.ACTIVE_START]
    n = c - a
    kv_len = n + tail
    j = torch.arange(Lq, device=plan.device)[None, :]
    # the window [a, c), then the canvas's last position where ``tail`` (column n < Lq, written
    # per row); padding reads position 0
    idx = torch.where(j < n[:, None], a[:, None] + j, 0)
    at = n.clamp(max=Lq - 1)[:, None]
    idx.scatter_(1, at, torch.where(tail[:, None] > 0, geo.L - 1, idx.gather(1, at)))
    jo = torch.arange(Lo, device=plan.device)[None, :]
    logits_index = torch.minimum((s - a)[:, None] + jo, (kv_len - 1).clamp_min(0)[:, None]).clamp_min(0)
    write = None
    if cached and nw is not None:
        jw = torch.arange(nw, device=plan.device)[None, :]
        w0, w1 = col[Col.WRITE_START], col[Col.WRITE_END]
        ids = torch.where(jw < (w1 - w0)[:, None], w0[:, None] + jw, -1)
        write = CacheWrite(ids, geo.bs if unit is None else unit, new_start=a)
    fwd = col[Col.FWD] > 0
    table = plan[:, _COMMIT_ROW_COLUMNS].T
    groups = [(rule, torch.where((fwd & (col[Col.RULE] == rid))[None, :], table, 0)) for rid, rule in rules]
    return StepInputs(
        idx=idx,
        kv_len=kv_len,
        cache_len=col[Col.CACHE_LEN] if cached else None,
        write=write,
        logits_index=logits_index,
        stats_offset=s,
        fill_after=torch.where(fwd, col[Col.FILL], geo.L) if stale else None,
        groups=groups,
    )


def forward(model, tokens, inp: StepInputs, pad, cache, key_start=None, *, attend_new: bool = True, **extra):
    """The step's model call (:mod:`dllm_kernels.models.protocol`): ``tokens [B, Lq]`` at the
    canvas positions ``inp.idx`` (RoPE positions: minus the row's left padding), against the
    cache as ``inp`` lays it out; ``key_start`` None: ``pad``; ``extra``: more protocol keywords
    (a uniform-state model's ``soft_embeds``)."""
    return model(
        tokens,
        (inp.idx - pad[:, None]).clamp_min(0),
        cache=cache,
        cache_len=inp.cache_len,
        kv_len=inp.kv_len,
        attend_new=attend_new,
        write=inp.write,
        key_start=pad if key_start is None else key_start,
        logits_index=inp.logits_index,
        **extra,
    )


def decode_step(
    model,
    x,
    state,
    pad,
    cache,
    inp: StepInputs,
    step,
    *,
    mask_id: int,
    eos_id: int,
    eot_id=None,
    attend_new: bool = True,
    temperature: float = 0.0,
    seed: int | torch.Tensor = 0,
    suppress_ids=None,
    confidence_eos_eot_inf: bool = False,
    backend: str = "auto",
    commits: bool = True,
    key_start: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """One batched decoding step on the device: forward, token statistics, commits.

    No host sync and no host-to-device copy happen here (``step`` may be a 0-d device tensor),
    so a step with fixed shapes can be captured in a CUDA graph and replayed. Updates ``x``,
    ``state`` and the cache in place; returns the ``[B, L]`` positions the commit rules took
    (``commits=False``: None, sparing a copy of ``state.commit_step``).
    The inputs are not validated (:func:`generate` checks its arguments once per call):
    ``seed`` is an int in ``[0, 2**63)`` or an int64 ``[B, Lo]`` tensor (one seed per logits
    row, see :func:`dllm_kernels.token_stats`). ``key_start``: ``[B]`` the first key (logical
    index) each row attends; None: ``pad``.
    """
    before = state.commit_step.clone() if commits else None
    tokens = x.gather(1, inp.idx)
    if inp.fill_after is not None:  # d3LLM: the forward sees this step's early-stop fill
        tokens = torch.where(inp.idx > inp.fill_after[:, None], eos_id, tokens)
    logits = forward(model, tokens, inp, pad, cache, key_start, attend_new=attend_new)
    ids = tuple(sorted(set(suppress_ids or ())))
    stats = token_stats_unchecked(logits, float(temperature), seed if temperature > 0 else 0, ids, backend)
    if confidence_eos_eot_inf:  # LLaDA: EOS / EoT proposals get confidence 0
        eos_or_eot = (stats.token == eos_id) | (stats.token == (eot_id if eot_id is not None else eos_id))
        stats = stats._replace(prob=torch.where(eos_or_eot, 0.0, stats.prob))
    if not isinstance(step, torch.Tensor):
        step = torch.full((), step, dtype=torch.int64, device=x.device)
    for rule, rows in inp.groups:  # one launch per distinct rule
        commit_unchecked(x, stats, state, rule, rows, step, mask_id, backend=backend)
    return state.commit_step != before if commits else None
