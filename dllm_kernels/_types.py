"""Types shared by the public API, the Triton launchers and the references."""

import math
from dataclasses import dataclass, field, fields
from typing import NamedTuple, TypeVar

import torch


class TokenStats(NamedTuple):
    """Per-position statistics of one softmax over the vocabulary.

    All fields have the leading shape of the logits (``[N]`` or ``[B, L]``).

    token:   int64, the proposal: ``argmax(logits)`` at temperature 0 (ties -> lowest id),
             ``argmax(logits / T + gumbel)`` at temperature T > 0.
    prob:    fp32, ``softmax(logits)[token]`` (the max probability at temperature 0).
    margin:  fp32, ``p_top1 - p_top2`` of ``softmax(logits)`` (0 when the two largest tie).
    entropy: fp32, ``-sum(p * log p)`` of ``softmax(logits)``, natural log.

    NaN logits count as ``-inf``; a row without a logit above ``-inf`` gives token 0, prob 0,
    margin 0, entropy ``+inf``; ``k`` logits of ``+inf`` share all the mass (the lowest of their
    ids, prob ``1/k``, entropy ``log k``). :func:`dllm_kernels.merge_token_stats` of a sharded
    vocabulary's partial states returns the same statistics.
    """

    token: torch.Tensor
    prob: torch.Tensor
    margin: torch.Tensor
    entropy: torch.Tensor


COMMIT_BASES = ("topk", "threshold", "dynamic", "entropy", "entropy_bound")
TEMPORAL_AGGS = ("last", "mean", "max")
MAX_SPATIAL_WINDOW = 16
MAX_COMMIT_POSITIONS = 8192  # the Triton kernel holds a row's region in one tile of <= 8192 positions
# base "entropy_bound" sums entropies in fixed point: q(H) = floor(clamp(H, 0, ENTROPY_CAP) * 2**ENTROPY_FRAC_BITS)
# (exact for H >= 2**-13; a region's sum stays below 2**62); its bounds lie in [0, ENTROPY_BOUND_MAX]
ENTROPY_FRAC_BITS = 36
ENTROPY_CAP = 8192.0
ENTROPY_BOUND_MAX = 4096.0
# attention head dims; 16 and 32: small models (tests, tiny checkpoints), run on the D=64 tiles
HEAD_DIMS = (16, 32, 64, 128)


@dataclass(frozen=True)
class CommitRule:
    """The commit rules of one decoding step and their numbers (DESIGN.md 1.2); hashable.

    The switches (``base``, ``entropy_strict``, ``commit_best``, ``spatial_window > 0``,
    ``token_cluster``, ``temporal_steps > 0``, ``temporal_agg``, ``token_edit``, ``renoise``) become
    compile-time flags of the kernel; the thresholds are runtime fp32 numbers (rounded to fp32 like
    the statistics they are compared with). See :func:`dllm_kernels.commit` for what each rule does.

    The defaults are each rule's number in the decoder it comes from (Fast-dLLM's threshold,
    d3LLM's entropy threshold, R2-dLLM's gates); the published decoders' settings live in
    ``dllm_kernels/policies/published.py``, whose constructors pass every number explicitly
    (this module is imported before any policy module; tests/test_policy_facts.py checks the two
    agree).
    """

    # "topk" (LLaDA) | "threshold" (Fast-dLLM) | "dynamic" (Streaming) | "entropy" (d3LLM)
    # | "entropy_bound" (EB-sampler / DiffusionGemma)
    base: str = "threshold"
    threshold: float = 0.9  # tau (threshold) / tau0 (dynamic): commit prob >= tau
    alpha: float = 0.0  # dynamic: tau_t = tau0 * (1 - alpha * (1 - r_mask))
    suffix_window: int = 0  # dynamic: kept suffix = first W positions after active_end + the last position
    entropy_threshold: float = 0.5  # entropy: commit H <= tau_H (H < tau_H when strict)
    entropy_strict: bool = False  # True: H < tau_H (Dream); False: H <= tau_H (LLaDA)
    commit_best: bool = True  # always commit the best masked position of the active region
    spatial_window: int = 0  # R2 window W (0 = off)
    spatial_max_decided: int = 1  # R2 U: windows with more decided positions are skipped
    spatial_threshold: float = 0.8  # R2 tau_s: window mean >= tau_s; token-cluster max > tau_s
    token_cluster: bool = False  # R2 token clusters
    cluster_min_len: int = 2  # shortest run that forms a token cluster
    temporal_steps: int = 0  # R2 N (0 = off)
    temporal_threshold: float = 0.8  # R2 tau_t: aggregate >= tau_t
    temporal_agg: str = "last"  # "last" | "mean" | "max"
    token_edit: bool = False  # LLaDA2.1 token editing of already committed positions
    edit_threshold: float = 0.0  # token_edit: a committed position takes a differing proposal if prob > this (strict)
    # base "entropy_bound": accept a candidate if the entropies ranked before it (ascending) sum to <= this
    entropy_bound: float = 0.1
    renoise: bool = False  # uniform-state model (DiffusionGemma): the rest of the region gets random tokens
    confidence_threshold: float = 0.005  # renoise: a row converges when its mean entropy is < this (and stable)
    stability_steps: int = 2  # renoise: ... and every position's argmax is unchanged for this many steps (vLLM's ST)
    max_steps: int = 48  # renoise: a row converges after this many steps whatever its statistics

    def __post_init__(self):
        def fail(name, want):
            raise ValueError(f"CommitRule: {name} must be {want}, got {getattr(self, name)!r}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if self.base not in COMMIT_BASES:
            fail("base", f"one of {COMMIT_BASES}")
        if self.temporal_agg not in TEMPORAL_AGGS:
            fail("temporal_agg", f"one of {TEMPORAL_AGGS}")
        for name in (
            "threshold",
            "alpha",
            "entropy_threshold",
            "spatial_threshold",
            "temporal_threshold",
            "edit_threshold",
            "entropy_bound",
            "confidence_threshold",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                fail(name, "a finite number")
        for name in ("entropy_strict", "commit_best", "token_cluster", "token_edit", "renoise"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "a bool")
        for name, low in (
            ("suffix_window", 0),
            ("spatial_max_decided", 0),
            ("cluster_min_len", 1),
            ("temporal_steps", 0),
            ("stability_steps", 1),
            ("max_steps", 1),
        ):
            v = getattr(self, name)
            if not is_int(v) or v < low or v >= 2**31:
                fail(name, f"an int in [{low}, 2**31)")
        if not is_int(self.spatial_window) or not 0 <= self.spatial_window <= MAX_SPATIAL_WINDOW:
            fail("spatial_window", f"an int in [0, {MAX_SPATIAL_WINDOW}]")
        for name in ("entropy_bound", "confidence_threshold"):
            if not 0 <= getattr(self, name) <= ENTROPY_BOUND_MAX:
                fail(name, f"a number in [0, {ENTROPY_BOUND_MAX:g}]")
        if self.renoise:
            if self.base != "entropy_bound":
                fail("base", "'entropy_bound' with renoise=True")
            for name in ("spatial_window", "temporal_steps"):
                if getattr(self, name):
                    fail(name, "0 with renoise=True (a masked-model rule)")
            for name in ("token_cluster", "token_edit"):
                if getattr(self, name):
                    fail(name, "False with renoise=True (a masked-model rule)")


def _fresh(fill, dtype: torch.dtype, per_row: bool = False):
    """A state field whose value on a fresh canvas is ``fill`` of ``dtype``, shaped ``[B, L]``
    (``[B]`` if ``per_row``); read by :meth:`_CanvasState.new`."""
    return field(metadata={"fresh": (fill, dtype, per_row)})


_S = TypeVar("_S", bound="_CanvasState")


class _CanvasState:
    """Base of the state dataclasses that the loop creates per canvas with :meth:`new`."""

    @classmethod
    def new(cls: type[_S], x: torch.Tensor) -> _S:
        """The state of a fresh canvas ``x [B, L]``: every field at its initial value."""
        values = {}
        for f in fields(cls):
            fill, dtype, per_row = f.metadata["fresh"]
            shape = tuple(x.shape[:1] if per_row else x.shape)
            values[f.name] = torch.full(shape, fill, dtype=dtype, device=x.device)
        return cls(**values)


@dataclass
class CommitState(_CanvasState):
    """Per-position decoding state that :func:`dllm_kernels.commit` updates in place.

    All fields are contiguous ``[B, L]`` tensors on the canvas's device.

    commit_step: int32, the step at which the loop committed the position; -1 before (and for
                 the prompt).
    last_id:     int64, R2 temporal rule: the proposal of the previous steps' streak; -1 = none.
    count:       int32, length of that streak (consecutive steps with the same proposal).
    conf_sum:    fp32, sum of the streak's confidences.
    conf_max:    fp32, max of the streak's confidences.
    """

    commit_step: torch.Tensor = _fresh(-1, torch.int32)  # nothing committed
    last_id: torch.Tensor = _fresh(-1, torch.int64)  # no streaks
    count: torch.Tensor = _fresh(0, torch.int32)
    conf_sum: torch.Tensor = _fresh(0.0, torch.float32)
    conf_max: torch.Tensor = _fresh(0.0, torch.float32)


@dataclass
class RenoiseState(_CanvasState):
    """The uniform-state rule's (``CommitRule(renoise=True)``) state on the device, which
    :func:`dllm_kernels.commit` updates in place: the argmax stability and convergence test of
    vLLM's / SGLang's DiffusionGemma sampler. Contiguous tensors on the canvas's device.

    argmax:       int64 ``[B, L]``, the latest step's argmax at each position; -1 = none.
    stable_steps: int32 ``[B, L]``, consecutive steps (the latest included) whose argmax was
                  ``argmax`` (saturates at 2**30). vLLM keeps a ring of ST argmax canvases and calls
                  a row stable when all ST rows are equal (after ST steps): that holds exactly when
                  every position's streak is ``>= ST`` (L counters instead of ST x L tokens).
    steps:        int32 ``[B]``, the steps run on the row: the step cap's counter and the renoise
                  stream's step.
    converged:    bool ``[B]``, the row converged at its latest step (its region then holds the
                  argmax canvas); the loop reads it to stop the row.
    """

    argmax: torch.Tensor = _fresh(-1, torch.int64)  # no history
    stable_steps: torch.Tensor = _fresh(0, torch.int32)
    steps: torch.Tensor = _fresh(0, torch.int32, per_row=True)  # no steps
    converged: torch.Tensor = _fresh(False, torch.bool, per_row=True)  # nothing converged
