"""Pure-PyTorch reference of the token-commit op (DESIGN.md 1.2), written for clarity.

Same name and signature as :func:`dllm_kernels.commit` (minus ``backend``; the types are the
public op's).

Every rule is a function of ``[B, L]`` boolean masks in canvas coordinates, applied in R2-dLLM's
order. The code is vectorised over the batch (no loop over rows, no ``.item()``), so the same
function serves as the eager and ``torch.compile`` baseline of the benchmark. Floats are
aggregated in fp32 in the kernel's operation order (window sums left to right, streak sums step
by step, correctly rounded divisions), so kernel and reference agree exactly.
"""

from __future__ import annotations

import math
import struct

import torch
import torch.nn.functional as F

from dllm_kernels._schedule import num_transfer_schedule
from dllm_kernels._types import ENTROPY_CAP, ENTROPY_FRAC_BITS, CommitState

from ._philox import philox_randint4x

__all__ = ["commit", "num_transfer_schedule"]


def _fp32(value: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-d fp32 tensor on ``like``'s device (a fill, never a host-to-device copy)."""
    return torch.full((), value, dtype=torch.float32, device=like.device)


def _rank(score: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Rank of every candidate by ``score`` descending, ties -> lowest index (rank 0 = best);
    non-candidates rank after all candidates."""
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    # a second stable sort moves the candidates, still in score order, to the front
    order = order.gather(1, torch.sort((~cand).gather(1, order).to(torch.uint8), dim=1, stable=True).indices)
    return order.argsort(dim=1)  # the inverse permutation: where each position stands in order


def _best(score: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """The candidate with the highest score in each row, ties -> lowest index (none in rows
    without candidates)."""
    pos = torch.arange(score.shape[1], device=score.device)
    top = torch.where(cand, score, float("-inf")).amax(dim=1, keepdim=True)
    first = torch.where(cand & (score == top), pos, score.shape[1]).amin(dim=1, keepdim=True)
    return cand & (pos == first)


def _shift_left(t: torch.Tensor, k: int, fill) -> torch.Tensor:
    """``t[:, i + k]`` at every ``i`` (``fill`` past the end)."""
    return F.pad(t, (0, k), value=fill)[:, k:] if k else t


def _shift_right(t: torch.Tensor, k: int, fill) -> torch.Tensor:
    """``t[:, i - k]`` at every ``i`` (``fill`` before the start)."""
    return F.pad(t, (k, 0), value=fill)[:, : t.shape[1]] if k else t


def _dynamic_threshold(rule, x, mask_id, pos, start, end) -> torch.Tensor:
    """Streaming-dLLM: tau_t = tau0 * (1 - alpha * (1 - r_mask)) per row, ``[B]`` fp32.

    r_mask = masks / positions over the active region and the kept suffix (the first W
    positions after the region, plus the canvas's last position), counted at step start.
    Evaluated as ``tau0 * (1 - (alpha * (n - n_mask)) / n)``, the kernel's fp32 order.
    """
    L = x.shape[1]
    suffix = (pos >= end) & ((pos < end + rule.suffix_window) | (pos == L - 1))
    counted = ((pos >= start) & (pos < end)) | suffix
    n = counted.sum(1)
    n_mask = (counted & (x == mask_id)).sum(1)
    q = (_fp32(rule.alpha, x) * (n - n_mask).float()) / n.clamp(min=1).float()
    return _fp32(rule.threshold, x) * (1.0 - q)


def _base_rule(rule, cand, conf, entropy, score, num_transfer, dynamic_tau) -> torch.Tensor:
    """Rules 1-4: top-k | threshold | dynamic threshold | entropy, plus the best candidate."""
    if rule.base == "topk":
        take = _rank(score, cand) < num_transfer.to(torch.int64).clamp(min=0)[:, None]
    elif rule.base == "threshold":
        take = conf >= _fp32(rule.threshold, conf)
    elif rule.base == "dynamic":
        take = conf >= dynamic_tau[:, None]
    elif rule.base == "entropy_bound":
        take = _entropy_bound_rule(rule, cand, entropy, score)
    elif rule.entropy_strict:
        take = entropy < _fp32(rule.entropy_threshold, entropy)
    else:
        take = entropy <= _fp32(rule.entropy_threshold, entropy)
    if rule.commit_best:
        take = take | _best(score, cand)
    return cand & take


def _fixed_entropy(entropy: torch.Tensor) -> torch.Tensor:
    """Entropies in fixed point, int64: ``floor(clamp(H, 0, ENTROPY_CAP) * 2**36)`` (exact for
    ``H >= 2**-13``); sums of them are exact and independent of the order of addition."""
    return torch.floor(entropy.clamp(0.0, ENTROPY_CAP) * float(2**ENTROPY_FRAC_BITS)).to(torch.int64)


def fixed_bound(value: float, ceil: bool = False) -> int:
    """A rule's entropy number in the units of :func:`_fixed_entropy`: ``floor`` (``ceil``) of
    ``fp32(value) * 2**36``, exact in Python integers (the kernel launcher computes the same)."""
    scaled = struct.unpack("f", struct.pack("f", value))[0] * 2**ENTROPY_FRAC_BITS
    return math.ceil(scaled) if ceil else math.floor(scaled)


def _entropy_bound_rule(rule, cand, entropy, score) -> torch.Tensor:
    """Base ``"entropy_bound"``: rank the candidates by entropy ascending (ties -> lowest index)
    and accept the candidates whose predecessors' entropies sum to ``<= entropy_bound`` (in fixed
    point, exactly); the first one always passes."""
    rank = _rank(score, cand)  # candidates first, in entropy order
    order = rank.argsort(dim=1)
    q = torch.where(cand, _fixed_entropy(entropy), 0).gather(1, order)
    before = (torch.cumsum(q, dim=1) - q).gather(1, rank)  # exclusive prefix sum, in canvas order
    return cand & (before <= fixed_bound(rule.entropy_bound))


def _spatial_rule(rule, undecided, conf, pos, start, end) -> torch.Tensor:
    """Rule 5, R2 confidence clusters: windows of W positions inside the active region, judged
    on the same state; a window with at most U decided positions, at least one undecided one
    and finite confidences there passes if the mean confidence of its undecided positions is
    >= tau_s. Every undecided position of a passing window commits."""
    W = rule.spatial_window
    total = torch.zeros_like(conf)  # per window start, summed left to right
    n_undecided = torch.zeros_like(pos.expand_as(conf))
    finite = torch.ones_like(undecided)
    for k in range(W):
        und_k, conf_k = _shift_left(undecided, k, False), _shift_left(conf, k, 0.0)
        total = total + torch.where(und_k, conf_k, 0.0)
        n_undecided = n_undecided + und_k
        finite = finite & (~und_k | conf_k.isfinite())
    inside = (pos >= start) & (pos + W <= end)
    mean = total / n_undecided.clamp(min=1).float()
    passes = inside & (W - n_undecided <= rule.spatial_max_decided) & (n_undecided > 0) & finite
    passes = passes & (mean >= _fp32(rule.spatial_threshold, conf))
    covered = torch.zeros_like(passes)
    for j in range(W):  # the windows starting at i - W + 1 .. i cover position i
        covered = covered | _shift_right(passes, j, False)
    return undecided & covered


def _token_cluster_rule(rule, live, token, conf, pos) -> torch.Tensor:
    """Rule 6, R2 token clusters: a maximal run of >= min_len adjacent still-masked positions
    with the same proposal whose max confidence is > tau_s commits its most confident position
    (ties -> lowest index)."""
    B, L = live.shape
    continues = live & _shift_right(live, 1, False) & (token == _shift_right(token, 1, -1))
    run = torch.cumsum(~continues, dim=1) + (torch.arange(B, device=pos.device) * (L + 1))[:, None]
    run_flat = run.view(-1)

    def per_run(values, reduce, init):
        out = torch.full((B * (L + 1),), init, dtype=values.dtype, device=values.device)
        return out.scatter_reduce_(0, run_flat, values.reshape(-1), reduce)[run]

    length = per_run(live.to(torch.int64), "sum", 0)
    best_conf = per_run(torch.where(live, conf, float("-inf")), "amax", float("-inf"))
    first_best = per_run(torch.where(live & (conf == best_conf), pos.expand(B, L), L), "amin", L)
    return (
        live
        & (pos == first_best)
        & (length >= rule.cluster_min_len)
        & (best_conf > _fp32(rule.spatial_threshold, conf))
    )


def _temporal_rule(rule, state: CommitState, active, token, conf) -> torch.Tensor:
    """Rule 7, R2 temporal stability: update the streak of every active position (same proposal
    as the streak: extend it; else restart it with this step), then commit where the streak has
    >= N steps and its aggregate (last | mean | max confidence) is >= tau_t."""
    same = state.last_id == token
    count = torch.where(same, state.count + 1, 1)
    total = torch.where(same, state.conf_sum + conf, conf)
    peak = torch.where(same, torch.maximum(state.conf_max, conf), conf)
    agg = {"last": conf, "mean": total / count.float(), "max": peak}[rule.temporal_agg]
    state.last_id.copy_(torch.where(active, token, state.last_id))
    state.count.copy_(torch.where(active, count, state.count))
    state.conf_sum.copy_(torch.where(active, total, state.conf_sum))
    state.conf_max.copy_(torch.where(active, peak, state.conf_max))
    return active & (count >= rule.temporal_steps) & (agg >= _fp32(rule.temporal_threshold, conf))


def _token_edit_rule(rule, region, x, mask_id: int, state: CommitState, token, conf) -> torch.Tensor:
    """Rule 9, LLaDA2.1 token editing: a position of the region that an earlier step committed
    (not masked at step start, ``commit_step >= 0``, so never the prompt) takes its proposal if
    the proposal differs and its confidence is > edit_threshold (strict)."""
    committed_before = region & (x != mask_id) & (state.commit_step >= 0)
    return committed_before & (token != x) & (conf > _fp32(rule.edit_threshold, conf))


def commit(
    x,
    stats,
    state,
    rule,
    *,
    active_start,
    active_end,
    mask_id,
    step,
    num_transfer=None,
    force_start=None,
    force_end=None,
    stats_offset=None,
    vocab_size=None,
    pinned=None,
    argmax=None,
    seed=None,
    renoise_state=None,
):
    """One decoding step's commit; see :func:`dllm_kernels.commit` for the contract.

    Updates ``x`` and ``state`` in place; returns int32 ``[B]``, the positions committed per row.
    """
    B, L = x.shape
    Ls = stats.token.shape[1]
    device = x.device
    pos = torch.arange(L, device=device)[None, :]  # [1, L]
    offset = (
        torch.zeros(B, 1, dtype=torch.int64, device=device) if stats_offset is None else stats_offset[:, None].long()
    )
    # the active region, clipped to the canvas and to the stats window (the public op rejects
    # regions outside them; unchecked device tensors are clipped, exactly as the kernel does)
    start = torch.maximum(active_start[:, None].long(), offset).clamp(min=0)
    end = torch.minimum(active_end[:, None].long(), offset + Ls).clamp(max=L)
    # the statistics in canvas coordinates; a NaN confidence reads as -inf, a NaN entropy as +inf
    col = (pos - offset).clamp(0, Ls - 1)
    token, conf, entropy = (f.gather(1, col) for f in (stats.token, stats.prob, stats.entropy))
    conf = torch.where(conf.isnan(), float("-inf"), conf)
    entropy = torch.where(entropy.isnan(), float("inf"), entropy)

    # candidates: masked at step start (any position with renoise), with a valid proposal, not pinned
    valid = (token >= 0) & (token != mask_id)
    if vocab_size is not None:
        valid = valid & (token < vocab_size)
    if pinned is not None:
        valid = valid & ~pinned
    region = (pos >= start) & (pos < end)
    score = -entropy if rule.base in ("entropy", "entropy_bound") else conf  # what "best" means: higher is better
    if rule.renoise:
        free = region if pinned is None else region & ~pinned
        arg = token if argmax is None else argmax.gather(1, col)
        live = start < end
        rs = renoise_state
        return _renoise(
            rule, x, state, rs, region & valid, free, token, arg, entropy, score, live, vocab_size, seed, step
        )
    cand = region & (x == mask_id) & valid

    dynamic_tau = _dynamic_threshold(rule, x, mask_id, pos, start, end) if rule.base == "dynamic" else None
    taken = _base_rule(rule, cand, conf, entropy, score, num_transfer, dynamic_tau)
    if rule.spatial_window > 0:
        taken = taken | _spatial_rule(rule, cand & ~taken, conf, pos, start, end)
    if rule.token_cluster:
        taken = taken | _token_cluster_rule(rule, cand & ~taken, token, conf, pos)
    if rule.temporal_steps > 0:
        taken = taken | _temporal_rule(rule, state, cand & ~taken, token, conf)

    # forced progress: the force region (clipped to the active region) gets its best candidate
    # if it has candidates and the rules committed none of them
    f_lo = start if force_start is None else torch.maximum(force_start[:, None].long(), start)
    f_hi = end if force_end is None else torch.minimum(force_end[:, None].long(), end)
    forced = cand & (pos >= f_lo) & (pos < f_hi)
    starved = ~(forced & taken).any(dim=1, keepdim=True)
    taken = taken | (_best(score, forced) & starved)
    edited = (
        _token_edit_rule(rule, region & valid, x, mask_id, state, token, conf)
        if rule.token_edit
        else torch.zeros_like(taken)
    )

    x.copy_(torch.where(taken | edited, token, x))
    if not isinstance(step, torch.Tensor):
        step = torch.full((), step, dtype=torch.int32, device=device)
    state.commit_step.copy_(torch.where(taken, step.to(torch.int32), state.commit_step))
    if rule.temporal_steps > 0:  # committed positions start with a fresh streak
        state.last_id.masked_fill_(taken, -1)
        state.count.masked_fill_(taken, 0)
        state.conf_sum.masked_fill_(taken, 0.0)
        state.conf_max.masked_fill_(taken, 0.0)
    return (taken | edited).sum(dim=1, dtype=torch.int32)


def _renoise(rule, x, state: CommitState, rs, cand, free, token, arg, entropy, score, live, vocab_size, seed, step):
    """The uniform-state rule (DiffusionGemma): every non-pinned region position is decided anew.

    The entropy-bound set of the candidates takes its proposals; every other free position a
    uniform random token ``r mod V`` with ``r`` 63 bits of Philox under the key ``seed[b]`` and
    the counter ``(position, steps[b])``. Each free position's argmax streak is extended or
    restarted; the row converges when every free position's streak is ``>= stability_steps`` and
    the mean entropy of the free positions is ``< confidence_threshold`` (fixed point), or when
    its step count reaches ``max_steps``; a converged row's free positions take the argmax and
    ``step`` as their ``commit_step``. Rows with an empty region are left untouched."""
    B, L = x.shape
    device = x.device
    pos = torch.arange(L, device=device)[None, :]
    taken = _entropy_bound_rule(rule, cand, entropy, score)
    steps = rs.steps.to(torch.int64)[:, None]
    c0, c1, _, _ = philox_randint4x(seed.to(torch.int64)[:, None], (steps << 32) | pos)
    noise = ((c1 & 0x7FFFFFFF) << 32 | c0) % vocab_size
    # argmax streaks and the convergence test
    same = rs.argmax == arg
    run = torch.where(same, rs.stable_steps.clamp(max=2**30 - 1) + 1, 1)
    n_free = free.sum(1)
    unstable = (free & (run < rule.stability_steps)).any(1)
    huge = (free & (entropy >= ENTROPY_CAP)).any(1)
    total = torch.where(free, _fixed_entropy(entropy), 0).sum(1)
    confident = (n_free > 0) & ~huge & (total < n_free * fixed_bound(rule.confidence_threshold, ceil=True))
    steps_after = rs.steps + 1
    converged = (~unstable & confident) | (steps_after >= rule.max_steps)
    done = free & converged[:, None]

    x.copy_(torch.where(free, torch.where(converged[:, None], arg, torch.where(taken, token, noise)), x))
    rs.argmax.copy_(torch.where(free, arg, rs.argmax))
    rs.stable_steps.copy_(torch.where(free, run, rs.stable_steps).to(torch.int32))
    rs.steps.copy_(torch.where(live[:, 0], steps_after, rs.steps))
    rs.converged.copy_(torch.where(live[:, 0], converged, rs.converged))
    if not isinstance(step, torch.Tensor):
        step = torch.full((), step, dtype=torch.int32, device=device)
    state.commit_step.copy_(torch.where(done, step.to(torch.int32), state.commit_step))
    return torch.where(converged, n_free, taken.sum(1)).to(torch.int32)
