"""Public op ``commit``: every commit rule of a dLLM decoding step in one launch (DESIGN.md 1.2).

Validates its inputs, picks a backend (see :mod:`dllm_kernels.backend`) and runs either the
Triton kernel, registered as a ``torch.library`` custom op that mutates the canvas and the state
in place (so it traces under ``torch.compile`` and is captured by CUDA graphs), or the PyTorch
reference. Also exports LLaDA's step schedule, :func:`num_transfer_schedule`.

Non-finite statistics, defined once for both backends: a NaN confidence counts as ``-inf`` and a
NaN entropy as ``+inf`` (never passing a threshold, ranked below every other value), infinities
compare as IEEE numbers, and forced progress still picks among all candidates, so every step of
a region with candidates commits at least one position whatever floats the statistics hold.
Masked positions whose proposal is negative, the MASK id, or ``>= vocab_size`` are never
committed (they are no candidates).
"""

from __future__ import annotations

import dataclasses

import torch

from . import reference
from ._checks import check_tensor
from ._schedule import num_transfer_schedule
from ._types import (
    COMMIT_BASES,
    MAX_COMMIT_POSITIONS,
    TEMPORAL_AGGS,
    CommitRule,
    CommitState,
    RenoiseState,
    TokenStats,
)
from .backend import register_op, resolve_backend

INDEX_DTYPES = (torch.int32, torch.int64)
_STATE_DTYPES = {
    "commit_step": torch.int32,
    "last_id": torch.int64,
    "count": torch.int32,
    "conf_sum": torch.float32,
    "conf_max": torch.float32,
}
# RenoiseState's fields: dtype, per position (True) or per row
_RENOISE_DTYPES = {
    "argmax": (torch.int64, True),
    "stable_steps": (torch.int32, True),
    "steps": (torch.int32, False),
    "converged": (torch.bool, False),
}

__all__ = ["commit", "num_transfer_schedule", "pack_rows"]


def _fields(obj) -> list:
    """A dataclass's field values in order, shallow (``dataclasses.astuple`` deep-copies tensors)."""
    return [getattr(obj, f.name) for f in dataclasses.fields(obj)]


# The per-row vectors travel as one packed table ``rows [len(ROW_FIELDS), B]`` (see pack_rows).
ROW_FIELDS = ("active_start", "active_end", "force_start", "force_end", "stats_offset", "num_transfer")
_NO_VOCAB = -1  # vocab_size not given: no upper bound on proposal ids


def pack_rows(
    active_start: torch.Tensor,
    active_end: torch.Tensor,
    *,
    force_start: torch.Tensor | None = None,
    force_end: torch.Tensor | None = None,
    stats_offset: torch.Tensor | None = None,
    num_transfer: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-row vectors of :func:`commit` as one contiguous table ``[6, B]`` whose rows
    follow :data:`ROW_FIELDS` (int64, or int32 if every vector is int32); defaults filled in
    (force region = active region, offset 0, k 0). One stack on the device (no host sync); a
    loop that keeps the table builds it once."""
    zeros = None
    if stats_offset is None or num_transfer is None:
        zeros = torch.zeros_like(active_start)
    return torch.stack(
        (
            active_start,
            active_end,
            active_start if force_start is None else force_start,
            active_end if force_end is None else force_end,
            zeros if stats_offset is None else stats_offset,
            zeros if num_transfer is None else num_transfer,
        )
    )


# The rule travels to the custom op as typed values, never as text: one ``Scalar[] rule`` list
# of every CommitRule field in dataclass order (ints as ints, bools as bools, floats as floats,
# the two string switches as their index in COMMIT_BASES / TEMPORAL_AGGS), then the MASK id and
# the vocabulary bound (-1: none). A Scalar list keeps each value's type, also through
# torch.compile, so the rebuilt rule gives the launcher the same Triton specialisations. Derived
# from the dataclass, so a new CommitRule field of one of these types needs no change here. One
# list rather than one argument per field on purpose: a custom op's dispatch costs some 5-10 us
# of host time per argument (torch >= 2.12 fills the schema's defaults at a cost that grows with
# the square of the argument count).
_RULE_FIELDS = tuple((f.name, f.type) for f in dataclasses.fields(CommitRule))
_CHOICES = {"base": COMMIT_BASES, "temporal_agg": TEMPORAL_AGGS}  # the str fields, by index
if {t for _, t in _RULE_FIELDS} - {int, float, bool, str} or {n for n, t in _RULE_FIELDS if t is str} != set(_CHOICES):
    raise TypeError("commit: a CommitRule field of a type the custom op cannot carry; extend _rule_args")


def _rule_args(rule: CommitRule, mask_id: int, vocab_size: int | None) -> tuple[list]:
    """The custom op's ``(rule,)`` argument: the typed values of ``rule``, the MASK id and the
    vocabulary bound. A float field that holds an int (``threshold=1``) travels as that int."""
    values = [_CHOICES[name].index(v) if kind is str else v for (name, kind), v in zip(_RULE_FIELDS, _fields(rule))]
    return (values + [mask_id, _NO_VOCAB if vocab_size is None else vocab_size],)


_RULES: dict = {}  # typed values -> (rule, mask_id, vocab_size); rules are few


def _rule_of(values) -> tuple[CommitRule, int, int | None]:
    """The inverse of :func:`_rule_args`."""
    key = tuple((type(v), v) for v in values)  # 1 and 1.0 are different rules to Triton (i32 / fp32)
    got = _RULES.get(key)
    if got is None:
        *fields, mask_id, vocab_size = values
        kw = {name: _CHOICES[name][v] if kind is str else v for (name, kind), v in zip(_RULE_FIELDS, fields)}
        got = _RULES[key] = (CommitRule(**kw), mask_id, None if vocab_size == _NO_VOCAB else vocab_size)
    return got


# ------------------------------------------------------------------------------------------------
# custom op (the Triton path), wired by backend.register_op: torch.compile traces the custom op,
# eager mode calls the launcher with the CommitRule itself (no encoding). Six arguments on
# purpose: a custom op's dispatch costs host time per argument (see _rule_args), so the
# statistics and the state travel as tensor lists, the per-row vectors as one table
# (pack_rows) and the rule with its scalars as one Scalar list.
# ------------------------------------------------------------------------------------------------


def _commit_launch(
    kernels, x, token, prob, entropy, state, rows, step, rule, mask_id, vocab_size, extras=None, renoise_state=None
):
    return kernels.commit(
        x,
        token,
        prob,
        entropy,
        state,
        rule,
        rows,
        step,
        mask_id,
        _NO_VOCAB if vocab_size is None else vocab_size,
        *(extras or (None, None, None)),
        renoise_state,
    )


def _commit_encode(
    x, token, prob, entropy, state, rows, step, rule, mask_id, vocab_size, extras=None, renoise_state=None
):
    # stats: token, prob, entropy, then (pinned, argmax, seed) if any is given; state: the
    # CommitState's fields, then the RenoiseState's if given
    stats = [token, prob, entropy] + ([] if extras is None else list(extras))
    fields = _fields(state) + ([] if renoise_state is None else _fields(renoise_state))
    return (x, stats, fields, rows, step, *_rule_args(rule, mask_id, vocab_size))


_N_STATE = len(dataclasses.fields(CommitState))


def _commit_decode(x, stats, state, rows, step, rule):
    rule, mask_id, vocab_size = _rule_of(rule)
    extras = tuple(stats[3:]) if len(stats) > 3 else None
    rs = RenoiseState(*state[_N_STATE:]) if len(state) > _N_STATE else None
    return (x, *stats[:3], CommitState(*state[:_N_STATE]), rows, step, rule, mask_id, vocab_size, extras, rs)


_commit_op = register_op(
    "commit",
    "commit",
    "(Tensor(a0!) x, Tensor?[] stats, Tensor(a2!)[] state, Tensor rows, Tensor step, Scalar[] rule) -> Tensor",
    fake=lambda x, *args: x.new_empty(x.shape[0], dtype=torch.int32),
    mutates_args=("x", "state"),
    launch=_commit_launch,
    encode=_commit_encode,
    decode=_commit_decode,
)


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------


def _check_values(op, L, Ls, rows):
    """Range checks of the per-row integers (the packed table of :func:`pack_rows`). They need
    the values on the host, so they run only for CPU tensors outside torch.compile; CUDA tensors
    are never read back (that would be a host sync): there the kernel clips the regions to the
    canvas and the stats window instead."""
    lo, hi, f_lo, f_hi, off, k = rows.tolist()
    if (
        min(lo, default=0) >= 0
        and max(hi, default=0) <= L
        and min(f_lo, default=0) >= 0
        and max(f_hi, default=0) <= L
        and min(off, default=0) >= 0
        and max(off, default=0) <= L
        and min(k, default=0) >= 0
        and all(a <= b for a, b in zip(lo, hi))
        and all(a <= b for a, b in zip(f_lo, f_hi))
        and all(a == b or o <= a and b <= o + Ls for a, b, o in zip(lo, hi, off))
    ):
        return  # the common case in a few builtin passes; else find the first bad row
    per_row = list(zip(lo, hi, f_lo, f_hi, off, k))
    for b, (lo, hi, f_lo, f_hi, o, k) in enumerate(per_row):
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
        if not 0 <= f_lo <= f_hi <= L:
            raise ValueError(
                f"{op}: the force region must satisfy 0 <= force_start <= force_end <= L = {L}, "
                f"got [{f_lo}, {f_hi}) in row {b}"
            )
        if k < 0:
            raise ValueError(f"{op}: num_transfer must be >= 0, got {k} in row {b}")


def _is_int(v, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v < high


def _valid_fast(x, stats, state, rule, vectors, mask_id, step, vocab_size, extras, renoise_state) -> bool:
    """True if the inputs pass every check of :func:`_validate_slow`, which runs only when this
    says no and then raises the precise error (one pass of attribute reads instead of 16
    check_tensor calls on the common path)."""
    try:
        if not isinstance(x, torch.Tensor) or x.dtype != torch.int64 or x.dim() != 2:
            return False
        shape, device = x.shape, x.device
        if not isinstance(stats, tuple) or len(stats) != 4:
            return False
        token, prob, _, entropy = stats
        if not isinstance(token, torch.Tensor) or token.dtype != torch.int64 or token.dim() != 2:
            return False
        s_shape, s_stride = token.shape, token.stride()
        if s_shape[0] != shape[0] or s_shape[1] < 1 or token.device != device:
            return False
        for t in (prob, entropy):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.shape != s_shape:
                return False
            if t.stride() != s_stride or t.device != device:
                return False
        if not isinstance(state, CommitState):
            return False
        for t, dtype in zip(_fields(state), _STATE_DTYPES.values()):
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.shape != shape:
                return False
            if not t.is_contiguous() or t.device != device:
                return False
        if not isinstance(rule, CommitRule) or not _is_int(mask_id, 0, 2**63):
            return False
        pinned, argmax, seed = extras
        if pinned is not None:
            if not isinstance(pinned, torch.Tensor) or pinned.dtype != torch.bool or pinned.shape != shape:
                return False
            if not pinned.is_contiguous() or pinned.device != device:
                return False
        if rule.renoise:
            if vocab_size is None or not isinstance(renoise_state, RenoiseState) or seed is None:
                return False
            for t, (dtype, per_position) in zip(_fields(renoise_state), _RENOISE_DTYPES.values()):
                if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.device != device:
                    return False
                if t.shape != (shape if per_position else shape[:1]) or not t.is_contiguous():
                    return False
            if argmax is not None:
                if not isinstance(argmax, torch.Tensor) or argmax.dtype != torch.int64 or argmax.shape != s_shape:
                    return False
                if argmax.stride() != s_stride or argmax.device != device:
                    return False
            if isinstance(seed, torch.Tensor):
                if seed.dtype != torch.int64 or seed.shape != shape[:1] or seed.device != device:
                    return False
            elif not _is_int(seed, -(2**63), 2**63):
                return False
        if vocab_size is not None and not _is_int(vocab_size, 1, 2**63):
            return False
        if isinstance(step, torch.Tensor):
            if step.dim() != 0 or step.dtype not in INDEX_DTYPES or step.device != device:
                return False
        elif not _is_int(step, 0, 2**31):
            return False
        active_start, active_end, force_start, force_end, stats_offset, num_transfer = vectors
        for t in vectors:
            if t is None:
                continue
            if not isinstance(t, torch.Tensor) or t.dtype not in INDEX_DTYPES or t.dim() != 1:
                return False
            if t.shape[0] != shape[0] or t.device != device:
                return False
        if active_start is None or active_end is None or (force_start is None) != (force_end is None):
            return False
        return rule.base != "topk" or num_transfer is not None
    except Exception:  # anything unexpected: let the slow path name it
        return False


def _validate_slow(op, x, stats, state, rule, vectors, mask_id, step, vocab_size, extras, renoise_state) -> None:
    """Every structural check, one at a time, each raising a one-line error naming the argument."""
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
    pinned, argmax, seed = extras
    if pinned is not None:
        check_tensor(op, "pinned", pinned, dtypes=(torch.bool,), device=device, shape=(B, L))
        if not pinned.is_contiguous():
            raise ValueError(f"{op}: pinned must be contiguous")
    if rule.renoise:
        if vocab_size is None:
            raise ValueError(f"{op}: rule.renoise needs vocab_size (random tokens are drawn from [0, vocab_size))")
        if not isinstance(renoise_state, RenoiseState):
            raise TypeError(
                f"{op}: rule.renoise needs renoise_state, a RenoiseState (see RenoiseState.new), "
                f"got {type(renoise_state).__name__}"
            )
        for name, (dtype, per_position) in _RENOISE_DTYPES.items():
            t = check_tensor(
                op,
                f"renoise_state.{name}",
                getattr(renoise_state, name),
                dtypes=(dtype,),
                device=device,
                shape=(B, L) if per_position else (B,),
            )
            if not t.is_contiguous():
                raise ValueError(f"{op}: renoise_state.{name} must be contiguous")
        if seed is None:
            raise ValueError(f"{op}: rule.renoise needs seed (an int, or int64 [B] per-row seeds)")
        if isinstance(seed, torch.Tensor):
            check_tensor(op, "seed", seed, dtypes=(torch.int64,), device=device, shape=(B,))
        elif not _is_int(seed, -(2**63), 2**63):
            raise ValueError(f"{op}: seed must be an int in [-2**63, 2**63) or an int64 [B] tensor, got {seed!r}")
        if argmax is not None:
            check_tensor(op, "argmax", argmax, dtypes=(torch.int64,), device=device, shape=(B, Ls))
            if argmax.stride() != stats.token.stride():
                raise ValueError(
                    f"{op}: argmax must have the strides of stats.token {stats.token.stride()}, got {argmax.stride()}"
                )
    if not _is_int(mask_id, 0, 2**63):
        raise ValueError(f"{op}: mask_id must be an int in [0, 2**63), got {mask_id!r}")
    if vocab_size is not None and not _is_int(vocab_size, 1, 2**63):
        raise ValueError(f"{op}: vocab_size must be None or an int in [1, 2**63), got {vocab_size!r}")
    if isinstance(step, torch.Tensor):
        check_tensor(op, "step", step, ndim=0, dtypes=INDEX_DTYPES, device=device)
    elif not _is_int(step, 0, 2**31):
        raise ValueError(f"{op}: step must be an int in [0, 2**31) or a 0-d int tensor on {device}, got {step!r}")
    for name, t in zip(ROW_FIELDS, vectors):
        if t is not None or name in ("active_start", "active_end"):
            check_tensor(op, name, t, dtypes=INDEX_DTYPES, device=device, shape=(B,))
    if rule.base == "topk" and vectors[5] is None:
        raise ValueError(f"{op}: rule.base 'topk' needs num_transfer (k per row, e.g. from num_transfer_schedule)")
    if (vectors[2] is None) != (vectors[3] is None):
        raise ValueError(f"{op}: force_start and force_end must be given together")


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
    vocab_size: int | None = None,
    pinned: torch.Tensor | None = None,
    argmax: torch.Tensor | None = None,
    seed: int | torch.Tensor | None = None,
    renoise_state: RenoiseState | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Commit the masked positions that a decoding step's rules select; updates ``x`` and
    ``state`` in place, in one kernel launch, without a host sync.

    Let the candidates of row b be the positions ``p`` in ``[active_start[b], active_end[b])``
    with ``x[b, p] == mask_id`` at step start and a valid proposal ``stats.token`` (``>= 0``,
    ``!= mask_id`` and, if ``vocab_size`` is given, ``< vocab_size``); ``c`` their confidence
    ``stats.prob``, ``H`` their ``stats.entropy``. A masked position with an invalid proposal is
    never committed: it is no candidate of any rule (it still counts as a MASK in rule 3's
    ``r_mask``); neither is a ``pinned`` position, which no rule ever writes. Thresholds are
    rounded to fp32, like the statistics they are compared with. "Best" means the highest ``c``
    (the lowest ``H`` for bases ``"entropy"`` and ``"entropy_bound"``), ties -> lowest position.
    The rules run in R2-dLLM's order, each on the positions still masked after the previous ones:

    1. base ``"topk"`` (LLaDA): the ``min(k, #candidates)`` best, ``k = num_transfer[b]``.
    2. base ``"threshold"`` (Fast-dLLM): every candidate with ``c >= threshold``.
    3. base ``"dynamic"`` (Streaming-dLLM): every candidate with ``c >= tau_t``,
       ``tau_t = threshold * (1 - alpha * (1 - r_mask))`` in fp32, evaluated as
       ``threshold * (1 - (alpha * (n - n_mask)) / n)``; ``r_mask = n_mask / n`` counts the
       MASKs at step start over the active region plus the kept suffix: the first
       ``suffix_window`` positions after ``active_end`` and the canvas's last position.
    4. base ``"entropy"`` (d3LLM): every candidate with ``H <= entropy_threshold``
       (``H < entropy_threshold`` if ``entropy_strict``, Dream).
    4b. base ``"entropy_bound"`` (EB-sampler, DiffusionGemma): rank the candidates by ``H``
       ascending (ties -> lowest position); a candidate commits if the ``H`` of the candidates
       ranked strictly before it sum to ``<= entropy_bound``, so the first always commits. The
       sum is exact, in fixed point: ``H`` is taken as ``floor(clamp(H, 0, 8192) * 2**36) /
       2**36`` (exact for ``H >= 2**-13``; ``+inf`` / NaN count as 8192, above every bound) and
       the bound as ``fp32(entropy_bound)``. Without ties this is vLLM's / SGLang's
       ``cumsum(sorted H) - sorted H <= bound`` (whose fp32 rounding differs by ~1 ulp of the
       sum); with ties their ``torch.sort`` order is unspecified on CUDA, ours is by position.
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
    9. Token editing (``token_edit``, LLaDA2.1): every position of the active region that an
       earlier step committed (not masked at step start and ``state.commit_step >= 0``; prompt
       positions keep -1 and are never edited) whose proposal differs from ``x`` and whose
       ``c`` is ``> edit_threshold`` (strict) takes its proposal. Its ``commit_step`` keeps the
       step that first committed it; it counts in the returned number.

    Non-finite statistics (any float values are accepted; both backends agree exactly): a NaN
    ``c`` reads as ``-inf`` and a NaN ``H`` as ``+inf``, everywhere (so NaN never passes a
    threshold, never makes a spatial window or token cluster pass, and ranks below every other
    value, ties -> lowest position); ``+-inf`` compare as IEEE numbers (``c = +inf`` passes every
    threshold, a window holding a non-finite ``c`` never passes). Rule 8 still picks among all
    candidates, so a step whose statistics are all NaN commits the force region's first
    candidate: the progress guarantee holds for any float input.

    A committed position takes its proposal in ``x`` and ``step`` in ``state.commit_step``.
    Nothing outside the active region is read from the statistics or written; tokens are never
    re-masked; a row with an empty region or no candidates is left untouched.

    Uniform-state decoding (``rule.renoise``, base ``"entropy_bound"``; DiffusionGemma, as
    vLLM 0.33's and SGLang 0.5.23's samplers): there is no MASK; the free positions (the active
    region minus ``pinned``) are decided anew every step, rules 5-9 do not apply. The
    candidates are the free positions with a valid proposal (``stats.token``, the sample;
    ``mask_id`` only invalidates one id: pass one outside the vocabulary); rule 4b's set takes
    its proposals and every other free position a uniform random token ``r mod vocab_size``,
    ``r`` 63 bits of Philox 4x32-10 under the key ``seed[b]`` at the counter ``(position,
    renoise_state.steps[b])`` (the same in any batch). ``renoise_state`` then records each free
    position's argmax streak (``argmax``, default ``stats.token``), counts the row's step and
    sets ``converged[b]``: every free position's streak is ``>= stability_steps`` and the mean
    ``H`` of the free positions is ``< confidence_threshold`` (fixed point as in 4b: the sum
    ``< n * ceil(fp32(c) * 2**36)``, never with an ``H >= 8192`` / NaN, never over no positions),
    or the row's step count reaches ``max_steps``. A converged row's free positions take the
    argmax instead, and ``step`` as their ``commit_step`` (nothing else sets ``commit_step``).
    The count returned is the accepted positions, or the free ones when the row converged.
    Unlike the engines, pinned positions neither rank, nor count in the mean, nor in the
    stability test, nor take the argmax.

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
        vocab_size: if given, proposals ``>= vocab_size`` are invalid (see the candidates);
            required by ``rule.renoise`` (random tokens lie in ``[0, vocab_size)``).
        pinned: bool ``[B, L]`` (contiguous), positions no rule may change (infill seeds,
            vLLM's ``diffusion_pinned``); none by default.
        argmax: int64 ``[B, Ls]`` in the stats' layout, the argmax of each position's
            distribution (``rule.renoise`` only; default ``stats.token``, right at temperature 0).
        seed: int or int64 ``[B]`` per-row seeds of the renoise tokens (``rule.renoise`` only).
        renoise_state: :class:`RenoiseState` (``RenoiseState.new(x)`` before the first step;
            ``rule.renoise`` only), updated in place.
        backend: ``"auto"`` | ``"triton"`` | ``"reference"``.

    Returns:
        int32 ``[B]``: the number of positions committed in each row (= newly unmasked), plus
        the edited ones with ``token_edit``.

    Range checks of the integer tensors (regions inside the canvas and the stats window,
    ``num_transfer >= 0``) run when they are on the CPU (outside ``torch.compile``); on a GPU
    they are not read back (no sync): the kernel clips the regions to the canvas and the stats
    window, and a negative k counts as 0. The custom op ``dllm_kernels::commit`` takes the rule's
    fields, the MASK id and the vocabulary bound as one typed list (``Scalar[] rule``) and the
    per-row vectors as one table (:func:`pack_rows`); a decoding loop that validated its inputs
    once may call :func:`dllm_kernels.commit.commit_unchecked` directly.
    """
    op = "commit"
    vectors = (active_start, active_end, force_start, force_end, stats_offset, num_transfer)
    extras = (pinned, argmax, seed)
    if not _valid_fast(x, stats, state, rule, vectors, mask_id, step, vocab_size, extras, renoise_state):
        _validate_slow(op, x, stats, state, rule, vectors, mask_id, step, vocab_size, extras, renoise_state)
    stats = TokenStats(*stats)
    rows = pack_rows(
        active_start,
        active_end,
        force_start=force_start,
        force_end=force_end,
        stats_offset=stats_offset,
        num_transfer=num_transfer,
    )
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        _check_values(op, x.shape[1], stats.token.shape[1], rows)
    if not isinstance(step, torch.Tensor):
        step = torch.full((), step, dtype=torch.int32, device=x.device)
    if not rule.renoise:
        argmax = seed = renoise_state = None  # only the uniform-state rule reads them
    elif not isinstance(seed, torch.Tensor):
        seed = torch.full((x.shape[0],), seed, dtype=torch.int64, device=x.device)
    return commit_unchecked(
        x,
        stats,
        state,
        rule,
        rows,
        step,
        mask_id,
        vocab_size=vocab_size,
        pinned=pinned,
        argmax=argmax,
        seed=seed,
        renoise_state=renoise_state,
        backend=backend,
    )


def commit_unchecked(
    x: torch.Tensor,
    stats: TokenStats,
    state: CommitState,
    rule: CommitRule,
    rows: torch.Tensor,
    step: torch.Tensor,
    mask_id: int,
    *,
    vocab_size: int | None = None,
    pinned: torch.Tensor | None = None,
    argmax: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
    renoise_state: RenoiseState | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`commit` without validation: the documented internal entry of a decoding loop that
    validated its inputs once per call (``dllm_kernels.decode.step.decode_step`` calls it every step).

    ``rows`` is the int32/int64 ``[6, B]`` table of :func:`pack_rows` (contiguous, or it is
    copied), ``step`` a 0-d int32/int64 tensor on ``x``'s device, ``seed`` (renoise) an int64
    ``[B]`` tensor; the rest as in :func:`commit`.
    Wrong input here is undefined behaviour of the kernel (clipped regions at best), not an
    error. Not part of the public API (``dllm_kernels.__all__``); its signature changes only
    with :func:`commit`'s."""
    if resolve_backend(backend, x.device, "commit") == "reference":
        regions = dict(zip(ROW_FIELDS, rows.unbind(0)))
        return reference.commit(
            x,
            stats,
            state,
            rule,
            mask_id=mask_id,
            step=step,
            vocab_size=vocab_size,
            pinned=pinned,
            argmax=argmax,
            seed=seed,
            renoise_state=renoise_state,
            **regions,
        )
    if min(x.shape[1], stats.token.shape[1]) > MAX_COMMIT_POSITIONS:
        raise ValueError(
            f"commit: the Triton kernel holds a row's region in one tile of at most {MAX_COMMIT_POSITIONS} "
            f"positions; got a canvas of {x.shape[1]} and stats of {stats.token.shape[1]} columns "
            f"(use backend='reference', or stats of a shorter window)"
        )
    extras = None if pinned is None and argmax is None and seed is None else (pinned, argmax, seed)
    return _commit_op(
        x, stats.token, stats.prob, stats.entropy, state, rows, step, rule, mask_id, vocab_size, extras, renoise_state
    )
