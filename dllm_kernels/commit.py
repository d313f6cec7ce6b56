"""Public op ``commit``: every commit rule of a dLLM decoding step in one launch (DESIGN.md 1.2).

Validates its inputs, picks a backend (see :mod:`dllm_kernels.backend`) and runs either the
Triton kernel, registered as a ``torch.library`` custom op that mutates the canvas and the state
in place (so it traces under ``torch.compile`` and is captured by CUDA graphs), or the PyTorch
reference. Also exports LLaDA's step schedule, :func:`num_transfer_schedule`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from . import reference
from ._checks import check_tensor
from ._schedule import num_transfer_schedule
from ._types import MAX_COMMIT_POSITIONS, CommitRule, CommitState, TokenStats
from .backend import resolve_backend

INDEX_DTYPES = (torch.int32, torch.int64)
_STATE_DTYPES = {
    "commit_step": torch.int32,
    "last_id": torch.int64,
    "count": torch.int32,
    "conf_sum": torch.float32,
    "conf_max": torch.float32,
}

__all__ = ["commit", "num_transfer_schedule"]


def _fields(obj) -> list:
    """A dataclass's field values in order, shallow (``dataclasses.astuple`` deep-copies tensors)."""
    return [getattr(obj, f.name) for f in dataclasses.fields(obj)]


# ------------------------------------------------------------------------------------------------
# custom op (the Triton path); the kernels module is imported on first use, so that
# TRITON_INTERPRET can still be set after `import dllm_kernels`
# ------------------------------------------------------------------------------------------------


@torch.library.custom_op(
    "dllm_kernels::commit", mutates_args=("x", "commit_step", "last_id", "count", "conf_sum", "conf_max")
)
def _commit_op(
    x: torch.Tensor,
    token: torch.Tensor,
    prob: torch.Tensor,
    entropy: torch.Tensor,
    commit_step: torch.Tensor,
    last_id: torch.Tensor,
    count: torch.Tensor,
    conf_sum: torch.Tensor,
    conf_max: torch.Tensor,
    active_start: torch.Tensor,
    active_end: torch.Tensor,
    step: torch.Tensor,
    mask_id: int,
    num_transfer: Optional[torch.Tensor],
    force_start: Optional[torch.Tensor],
    force_end: Optional[torch.Tensor],
    stats_offset: Optional[torch.Tensor],
    base: str,
    threshold: float,
    alpha: float,
    suffix_window: int,
    entropy_threshold: float,
    entropy_strict: bool,
    commit_best: bool,
    spatial_window: int,
    spatial_max_decided: int,
    spatial_threshold: float,
    token_cluster: bool,
    cluster_min_len: int,
    temporal_steps: int,
    temporal_threshold: float,
    temporal_agg: str,
) -> torch.Tensor:
    from .kernels import commit as kernels

    rule = CommitRule(
        base, threshold, alpha, suffix_window, entropy_threshold, entropy_strict, commit_best, spatial_window,
        spatial_max_decided, spatial_threshold, token_cluster, cluster_min_len, temporal_steps,
        temporal_threshold, temporal_agg,
    )  # fmt: skip
    state = CommitState(commit_step, last_id, count, conf_sum, conf_max)
    return kernels.commit(x, token, prob, entropy, state, rule, active_start, active_end, step, mask_id,
                          num_transfer, force_start, force_end, stats_offset)  # fmt: skip


@_commit_op.register_fake
def _(x, *args):
    return x.new_empty(x.shape[0], dtype=torch.int32)


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------


def _check_values(op, x, Ls, active_start, active_end, num_transfer, force_start, force_end, stats_offset):
    """Range checks of the per-row integers. They need the values on the host, so they run only
    for CPU tensors outside torch.compile; CUDA tensors are never read back (that would be a host
    sync): there the kernel clips the regions to the canvas and the stats window instead."""
    L = x.shape[1]
    s, e = active_start.tolist(), active_end.tolist()
    off = [0] * len(s) if stats_offset is None else stats_offset.tolist()
    for b, (lo, hi, o) in enumerate(zip(s, e, off)):
        if not 0 <= lo <= hi <= L:
            raise ValueError(
                f"{op}: the active region must satisfy 0 <= active_start <= active_end <= L = {L}, "
                f"got [{lo}, {hi}) in row {b}"
            )
        if not 0 <= o <= L:
            raise ValueError(f"{op}: stats_offset must lie in [0, L = {L}], got {o} in row {b}")
        if lo < hi and not o <= lo <= hi <= o + Ls:
            raise ValueError(
                f"{op}: the active region [{lo}, {hi}) of row {b} must lie inside the stats window "
                f"[{o}, {o + Ls}) (stats_offset + stats columns)"
            )
    if force_start is not None:
        for b, (lo, hi) in enumerate(zip(force_start.tolist(), force_end.tolist())):
            if not 0 <= lo <= hi <= L:
                raise ValueError(
                    f"{op}: the force region must satisfy 0 <= force_start <= force_end <= L = {L}, "
                    f"got [{lo}, {hi}) in row {b}"
                )
    if num_transfer is not None:
        bad = [(b, k) for b, k in enumerate(num_transfer.tolist()) if k < 0]
        if bad:
            raise ValueError(f"{op}: num_transfer must be >= 0, got {bad[0][1]} in row {bad[0][0]}")


def _validate(op, x, stats, state, rule, active_start, active_end, mask_id, step, num_transfer, force_start,
              force_end, stats_offset) -> TokenStats:  # fmt: skip
    check_tensor(op, "x", x, ndim=2, dtypes=(torch.int64,))
    B, L = x.shape
    device = x.device
    if not isinstance(stats, tuple) or len(stats) != 4:
        raise TypeError(f"{op}: stats must be a TokenStats (token, prob, margin, entropy), got {type(stats).__name__}")
    stats = TokenStats(*stats)
    check_tensor(op, "stats.token", stats.token, ndim=2, dtypes=(torch.int64,), device=device, shape=(B, None))
    Ls = stats.token.shape[1]
    if Ls < 1:
        raise ValueError(f"{op}: stats must have at least one column, got shape {list(stats.token.shape)}")
    for name in ("prob", "entropy"):
        t = getattr(stats, name)
        check_tensor(op, f"stats.{name}", t, dtypes=(torch.float32,), device=device, shape=(B, Ls))
        if t.stride() != stats.token.stride():
            raise ValueError(
                f"{op}: stats.{name} must have the strides of stats.token {stats.token.stride()}, got "
                f"{t.stride()} (pass contiguous statistics, e.g. the output of token_stats)"
            )
    if not isinstance(state, CommitState):
        raise TypeError(f"{op}: state must be a CommitState (see CommitState.new), got {type(state).__name__}")
    for name, dtype in _STATE_DTYPES.items():
        t = check_tensor(op, f"state.{name}", getattr(state, name), dtypes=(dtype,), device=device, shape=(B, L))
        if not t.is_contiguous():
            raise ValueError(f"{op}: state.{name} must be contiguous")
    if not isinstance(rule, CommitRule):
        raise TypeError(f"{op}: rule must be a CommitRule, got {type(rule).__name__}")
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or not 0 <= mask_id < 2**63:
        raise ValueError(f"{op}: mask_id must be an int in [0, 2**63), got {mask_id!r}")
    if isinstance(step, torch.Tensor):
        check_tensor(op, "step", step, ndim=0, dtypes=INDEX_DTYPES, device=device)
    elif isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**31:
        raise ValueError(f"{op}: step must be an int in [0, 2**31) or a 0-d int tensor on {device}, got {step!r}")
    for name, t in (("active_start", active_start), ("active_end", active_end), ("num_transfer", num_transfer),
                    ("force_start", force_start), ("force_end", force_end), ("stats_offset", stats_offset)):  # fmt: skip
        if t is not None:
            check_tensor(op, name, t, dtypes=INDEX_DTYPES, device=device, shape=(B,))
    if rule.base == "topk" and num_transfer is None:
        raise ValueError(f"{op}: rule.base 'topk' needs num_transfer (k per row, e.g. from num_transfer_schedule)")
    if (force_start is None) != (force_end is None):
        raise ValueError(f"{op}: force_start and force_end must be given together")
    if device.type == "cpu" and not torch.compiler.is_compiling():
        _check_values(op, x, Ls, active_start, active_end, num_transfer, force_start, force_end, stats_offset)
    return stats


# ------------------------------------------------------------------------------------------------
# public function
# ------------------------------------------------------------------------------------------------


def commit(
    x: torch.Tensor,
    stats: TokenStats,
    state: CommitState,
    rule: CommitRule,
    *,
    active_start: torch.Tensor,
    active_end: torch.Tensor,
    mask_id: int,
    step,
    num_transfer: torch.Tensor | None = None,
    force_start: torch.Tensor | None = None,
    force_end: torch.Tensor | None = None,
    stats_offset: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Commit the masked positions that a decoding step's rules select; updates ``x`` and
    ``state`` in place, in one kernel launch, without a host sync.

    Let the candidates of row b be the positions ``p`` in ``[active_start[b], active_end[b])``
    with ``x[b, p] == mask_id`` at step start; ``c`` their confidence ``stats.prob``, ``H`` their
    ``stats.entropy``, and their proposal ``stats.token``. Thresholds are rounded to fp32, like
    the statistics they are compared with. "Best" means the highest ``c`` (the lowest ``H`` for
    base ``"entropy"``), ties -> lowest position. The rules run in R2-dLLM's order, each on the
    positions still masked after the previous ones:

    1. base ``"topk"`` (LLaDA): the ``min(k, #candidates)`` best, ``k = num_transfer[b]``.
    2. base ``"threshold"`` (Fast-dLLM): every candidate with ``c >= threshold``.
    3. base ``"dynamic"`` (Streaming-dLLM): every candidate with ``c >= tau_t``,
       ``tau_t = threshold * (1 - alpha * (1 - r_mask))`` in fp32, evaluated as
       ``threshold * (1 - (alpha * (n - n_mask)) / n)``; ``r_mask = n_mask / n`` counts the
       MASKs at step start over the active region plus the kept suffix: the first
       ``suffix_window`` positions after ``active_end`` and the canvas's last position.
    4. base ``"entropy"`` (d3LLM): every candidate with ``H <= entropy_threshold``
       (``H < entropy_threshold`` if ``entropy_strict``, Dream).
       With ``commit_best`` (any base), the best candidate also commits (Fast-dLLM's and
       Streaming's argmax, d3LLM-LLaDA's lowest entropy).
    5. R2 spatial windows (``spatial_window = W > 0``): windows of W consecutive positions inside
       the active region (stride 1), all judged on the state after rules 1-4. A window with at
       most ``spatial_max_decided`` non-masked positions, at least one masked one and finite
       ``c`` at those passes if the mean ``c`` of its masked positions (fp32, summed left to
       right, correctly rounded division) is ``>= spatial_threshold``; every masked position of
       a passing window commits (same semantics as :func:`window_confidence`).
    6. R2 token clusters (``token_cluster``): a maximal run of ``>= cluster_min_len`` adjacent
       still-masked positions with the same proposal whose max ``c`` is ``> spatial_threshold``
       (strict) commits its most confident position (ties -> lowest position).
    7. R2 temporal stability (``temporal_steps = N > 0``): every candidate still masked updates
       its streak in ``state``: if its proposal equals ``last_id``, ``count += 1``,
       ``conf_sum += c``, ``conf_max = max(conf_max, c)``; else ``last_id = proposal``,
       ``count = 1``, ``conf_sum = conf_max = c`` (the count includes this step). It commits if
       ``count >= N`` and the aggregate (``"last"``: c, ``"mean"``: conf_sum / count,
       ``"max"``: conf_max) is ``>= temporal_threshold``. Every committed candidate's streak is
       reset (``last_id = -1``, zeros). With N = 0 the streak tensors are not touched.
    8. Forced progress: if the force region ``[force_start, force_end)`` (default: the active
       region; clipped to it) holds candidates and rules 1-7 committed none of them, its best
       candidate commits (d3LLM: the first fully active block). So every step commits at least
       one position of a region that still has masks.

    A committed position takes its proposal in ``x`` and ``step`` in ``state.commit_step``.
    Nothing outside the active region is read from the statistics or written; tokens are never
    re-masked; a row with an empty region or no candidates is left untouched.

    Args:
        x: ``[B, L]`` int64 canvas (any strides), updated in place.
        stats: :class:`TokenStats` of ``[B, Ls]`` tensors (``token``, ``prob`` and ``entropy``
            with one common layout; ``margin`` is unused); column j of row b describes canvas
            position ``stats_offset[b] + j``.
        state: :class:`CommitState` (``CommitState.new(x)`` before the first step).
        rule: :class:`CommitRule`; its switches are compile-time flags of the kernel.
        active_start, active_end: int32/int64 ``[B]``; the active region ``[start, end)`` of each
            row (ragged; ``start == end`` leaves the row untouched). Must lie inside the canvas
            and the stats window.
        mask_id: the MASK token id.
        step: int, or a 0-d int32/int64 tensor on ``x``'s device, stored into ``commit_step``.
            An int costs one extra (fill) launch; a loop under graph capture passes a device
            tensor that it increments, and the step is then the op's only launch.
        num_transfer: int32/int64 ``[B]``, k of base ``"topk"`` (required there, ignored else);
            see :func:`num_transfer_schedule`.
        force_start, force_end: int32/int64 ``[B]``, the force region of rule 8 (both or none).
        stats_offset: int32/int64 ``[B]``, canvas position of each row's stats column 0
            (default 0).
        backend: ``"auto"`` | ``"triton"`` | ``"reference"``.

    Returns:
        int32 ``[B]``: the number of positions committed in each row (= newly unmasked).

    Range checks of the integer tensors (regions inside the canvas and the stats window,
    ``num_transfer >= 0``) run when they are on the CPU (outside ``torch.compile``); on a GPU
    they are not read back (no sync): the kernel clips the regions to the canvas and the stats
    window, and a negative k counts as 0.
    """
    op = "commit"
    stats = _validate(op, x, stats, state, rule, active_start, active_end, mask_id, step, num_transfer,
                      force_start, force_end, stats_offset)  # fmt: skip
    if not isinstance(step, torch.Tensor):
        step = torch.full((), step, dtype=torch.int32, device=x.device)
    if resolve_backend(backend, x.device, op) == "reference":
        return reference.commit(
            x, stats, state, rule, active_start=active_start, active_end=active_end, mask_id=mask_id, step=step,
            num_transfer=num_transfer, force_start=force_start, force_end=force_end, stats_offset=stats_offset,
        )  # fmt: skip
    if min(x.shape[1], stats.token.shape[1]) > MAX_COMMIT_POSITIONS:
        raise ValueError(
            f"{op}: the Triton kernel holds a row's region in one tile of at most {MAX_COMMIT_POSITIONS} "
            f"positions; got a canvas of {x.shape[1]} and stats of {stats.token.shape[1]} columns "
            f"(use backend='reference', or stats of a shorter window)"
        )
    return _commit_op(
        x, stats.token, stats.prob, stats.entropy, *_fields(state), active_start, active_end, step,
        mask_id, num_transfer, force_start, force_end, stats_offset, *_fields(rule),
    )  # fmt: skip
