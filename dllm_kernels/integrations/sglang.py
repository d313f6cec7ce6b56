"""SGLang plugin: dLLM decoding algorithms built on :func:`~dllm_kernels.token_stats` + :func:`~dllm_kernels.commit`.

SGLang (``sglang>=0.5.23,<0.6``) picks a dLLM decoding algorithm by class name
(``--dllm-algorithm NAME``, options from ``--dllm-algorithm-config FILE.yaml``) in
``sglang.srt.dllm.algorithm.algo_name_to_cls``. Installing ``dllm-kernels`` registers
:func:`register` in the entry-point group ``sglang.srt.plugins``; SGLang's ``load_plugins()``
(engine, server CLIs, scheduler processes) calls it, and it adds the classes below. Each class's
``step`` runs one ``token_stats`` pass over the block's logits and one ``commit`` launch, writes
the new tokens into ``forward_batch.input_ids`` in place (same tensor: CUDA-graph safe), keeps
per-request state in device tensors and syncs with the host once, for the done list that SGLang
asks for.

Algorithms and their YAML options (the library's own names; defaults in brackets):

- ``DllmKernelsLowConfidence``: exact drop-in of SGLang's ``LowConfidence``: commit the masked
  positions with ``prob > threshold`` [0.95] (strict), else the most confident one.
- ``DllmKernelsJointThreshold``: exact drop-in of SGLang's ``JointThreshold`` (LLaDA2.1): the same
  mask-to-token rule with ``threshold`` [0.5], plus token editing of the block's earlier commits
  with ``prob > edit_threshold`` [0.0]; ``max_post_edit_steps`` [16] edit-only steps once the block
  has no mask; ``penalty_lambda`` [0.0] subtracted from the logit of each position's left
  neighbour's token. (``vectorized_decoding``, an SGLang switch between two equivalent paths, is
  accepted and ignored.)
- ``DllmKernelsJointThresholdInDel``: exact drop-in of SGLang's ``JointThresholdInDel``
  (LLaDA2.2): JointThreshold's ``threshold`` [0.5], ``edit_threshold`` [0.0] and
  ``max_post_edit_steps`` [16] (a cumulative budget), plus DELETE / SPLIT tokens that remove a
  position or expand it to ``[MASK, old token]`` (the ``block_edit`` op); token ids from the
  checkpoint (see :func:`indel_token_ids`). Its commit is computed with device tensor ops, not
  the ``commit`` op (see the class).
- ``DllmKernelsFastDllm``: Fast-dLLM threshold: ``prob >= threshold`` [0.9] plus the best.
- ``DllmKernelsStreamingDllm``: Streaming-dLLM dynamic threshold
  ``threshold * (1 - alpha * (1 - r_mask))``, ``threshold`` [0.9], ``alpha`` [0.3]; r_mask is the
  masked fraction of the block's generation region (SGLang forwards no suffix).
- ``DllmKernelsD3LLM``: d3LLM entropy rule: ``H <= entropy_threshold`` [0.5] (``<`` if
  ``entropy_strict`` [false]), plus the lowest-entropy position if ``commit_best`` [true].
- ``DllmKernelsR2Dllm``: R2-dLLM: threshold [0.9], then windows (``spatial_window`` [3],
  ``spatial_max_decided`` [1], ``spatial_threshold`` [0.8]), token clusters (``token_cluster``
  [true], ``cluster_min_len`` [2]) and temporal stability (``temporal_steps`` [3],
  ``temporal_threshold`` [0.8], ``temporal_agg`` [last]); the per-position streaks live in device
  tensors carried in SGLang's per-request ``states`` across FDFO rounds and dropped (by SGLang)
  when the request finishes.
- ``DllmKernelsGemma4Renoise``: SGLang's ``Gemma4Renoise`` (DiffusionGemma, a uniform-state model
  without MASK) on ``token_stats`` + ``commit`` (``renoise``) + ``soft_embedding``, with SGLang's
  own nested options (``sampler_config.entropy_bound`` [0.1], ``temperature_schedule.{t_min,
  t_max}`` [0.4, 0.8], ``stopping_config.{confidence_threshold, stability_threshold}`` [0.005, 1],
  ``max_denoising_steps`` [48], ``seed`` [null], ``use_temperature_table`` [true]); see the class.
  Registered beside :data:`ALGORITHMS` as :data:`UNIFORM_STATE_ALGORITHMS` (with a hook around
  ``DllmConfig.from_server_args``, which requires the name ``Gemma4Renoise`` for DiffusionGemma).

Every algorithm also takes ``backend`` [auto] (``auto`` | ``triton`` | ``reference``). SGLang
itself reads ``block_size`` and ``capture_input_preparation`` from the same file; any other key
is an error naming it.

MASK proposals: SGLang's logits cover the whole vocabulary, the MASK id included, and its classes
take the plain argmax, so a position may "commit" MASK; the commit op never commits an invalid
proposal (see :func:`~dllm_kernels.commit`). The two drop-ins reproduce SGLang's outcome exactly
on the device (no host sync): a MASK written into a masked position is a no-op on the canvas, but
it still counts for SGLang's fallback and done flags. ``LowConfidence`` and ``JointThreshold``
pass SGLang's own fallback position (``argmax`` / ``topk`` of the masked confidences, over every
proposal) as a one-position force region, so a step whose best position proposes MASK commits
only its valid threshold passers; ``JointThreshold`` counts a row with masks as "changed" (SGLang
always selects a position there) and re-masks each editable position whose MASK proposal has
``prob > edit_threshold`` (SGLang's edit writes it), which the commit op's edit leaves alone. The
seeds' rules (``DllmKernelsFastDllm``, ``DllmKernelsStreamingDllm``, ``DllmKernelsD3LLM``,
``DllmKernelsR2Dllm``) are the library's own rules, served as ``dllm_kernels.generate`` runs them:
``token_stats`` suppresses the MASK id (its logit counts as ``-inf``, the statistics are those of
the other tokens), so every step commits at least one position and a block finishes within
SGLang's ``block_size`` steps. (The published Fast-dLLM and Streaming-dLLM code takes the plain
argmax too; a MASK argmax there is a wasted step, never a different token.)

Regions: a request's block is ``[prompt tail | generation]``. SGLang's ``dllm_prompt_mask`` (when
set) marks the prompt tail, a prefix of the block (``position < prompt length``); its length is
where the commit region starts. Without it the region is the whole block (the prompt tail holds no
MASK; JointThreshold never edits it because only positions that were MASK when the request's
block started carry a commit step).
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

import sglang
import torch
from sglang.srt.dllm.algorithm.base import DllmAlgorithm

from .._types import (
    MAX_COMMIT_POSITIONS,
    MAX_SPATIAL_WINDOW,
    TEMPORAL_AGGS,
    CommitRule,
    CommitState,
    RenoiseState,
    TokenStats,
)
from ..backend import BACKENDS
from ..block_edit import MAX_BLOCK_EDIT, block_edit
from ..commit import commit
from ..confidence import token_stats
from ..policies import SGLangAlgorithm, sglang_algorithms
from ..policies.published import GEMMA4_RENOISE, GEMMA4_RENOISE_SECTIONS
from ..soft_embedding import merge_soft_embedding, soft_embedding, soft_embedding_partial

SUPPORTED_SGLANG = ">=0.5.23,<0.6"
SUPPORTED_ARCHITECTURES = ("LLaDA2MoeModelLM", "SDARForCausalLM", "SDARMoeForCausalLM")
SGLANG_KEYS = frozenset({"block_size", "capture_input_preparation"})  # read by SGLang's DllmConfig
_STATE_FIELDS = ("commit_step", "last_id", "count", "conf_sum", "conf_max")

__all__ = ["ALGORITHMS", "SUPPORTED_SGLANG", "UNIFORM_STATE_ALGORITHMS", "register"]


def _version_tuple(v: str) -> tuple:
    """``"0.5.23.post1"`` -> ``(0, 5, 23)``: the leading number of each of the first three parts."""
    return tuple(int(m.group()) if (m := re.match(r"\d+", p)) else 0 for p in v.split(".")[:3])


def check_sglang_version(version: str | None = None) -> None:
    """Raise ``RuntimeError`` if the installed SGLang lies outside ``SUPPORTED_SGLANG``."""
    version = sglang.__version__ if version is None else version
    if not (0, 5, 23) <= _version_tuple(version) < (0, 6):
        raise RuntimeError(
            f"dllm_kernels.integrations.sglang supports sglang{SUPPORTED_SGLANG} (the dLLM algorithm API "
            f"changed between releases), got sglang {version}"
        )


# ------------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------------


def _number(algo, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{algo}: option {name} must be a finite number, got {v!r}")
    return float(v)


def _int(low, high):
    def check(algo, name, v):
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise ValueError(f"{algo}: option {name} must be an int in [{low}, {high}], got {v!r}")
        return v

    return check


def _bool(algo, name, v):
    if not isinstance(v, bool):
        raise ValueError(f"{algo}: option {name} must be true or false, got {v!r}")
    return v


def _choice(values):
    def check(algo, name, v):
        if v not in values:
            raise ValueError(f"{algo}: option {name} must be one of {list(values)}, got {v!r}")
        return v

    return check


def _check_block_size(algo, block_size):
    """SGLang's ``DllmConfig.block_size`` (the algorithm config file's): an int the commit kernel can hold."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not (1 <= block_size <= MAX_COMMIT_POSITIONS):
        raise ValueError(f"{algo}: block_size must be an int in [1, {MAX_COMMIT_POSITIONS}], got {block_size!r}")


_BACKEND = ("auto", _choice(BACKENDS))


def parse_options(algo: str, given, spec: dict) -> dict:
    """The options of ``algo`` from the YAML dict ``given``: every key of ``spec``
    (``name -> (default, checker)``), defaults filled in; an unknown key or a bad value raises a
    ``ValueError`` naming it."""
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise ValueError(f"{algo}: --dllm-algorithm-config must hold a mapping, got {type(given).__name__}")
    unknown = sorted(str(k) for k in given if k not in spec and k not in SGLANG_KEYS)
    if unknown:
        raise ValueError(
            f"{algo}: unknown option {unknown[0]!r} in --dllm-algorithm-config (known: {', '.join(sorted(spec))}; "
            f"SGLang's own: {', '.join(sorted(SGLANG_KEYS))})"
        )
    return {name: check(algo, name, given.get(name, default)) for name, (default, check) in spec.items()}


# each option's checker; the options' names and defaults are the decoders' facts
# (dllm_kernels.policies.published: Decoder.sglang, ServingRule.sglang)
_CHECKS = {
    "threshold": _number,
    "alpha": _number,
    "entropy_threshold": _number,
    "entropy_strict": _bool,
    "commit_best": _bool,
    "spatial_window": _int(0, MAX_SPATIAL_WINDOW),
    "spatial_max_decided": _int(0, 2**31 - 1),
    "spatial_threshold": _number,
    "token_cluster": _bool,
    "cluster_min_len": _int(1, 2**31 - 1),
    "temporal_steps": _int(0, 2**31 - 1),
    "temporal_threshold": _number,
    "temporal_agg": _choice(TEMPORAL_AGGS),
    "edit_threshold": _number,
    "max_post_edit_steps": _int(0, 2**31 - 1),
    "penalty_lambda": _number,
    "vectorized_decoding": _bool,
}


def options_of(facts: SGLangAlgorithm) -> dict:
    """An algorithm's ``OPTIONS`` (``name -> (default, checker)``): its published options and
    defaults (``facts``, from :func:`dllm_kernels.policies.sglang_algorithms`), then ``backend``."""
    return {name: (default, _CHECKS[name]) for name, default in facts.options.items()} | {"backend": _BACKEND}


# ------------------------------------------------------------------------------------------------
# per-request state: row i of a batch of device tensors
# ------------------------------------------------------------------------------------------------


class RowState:
    """One request's state: row ``index`` of ``tensors`` (a dict of ``[B, ...]`` device tensors).
    SGLang's FDFO loop carries these objects across rounds in ``states``; ``step`` stacks the rows
    of a new batch on the device (no host sync) and points each state at its row of the result."""

    __slots__ = ("tensors", "index")

    def __init__(self, tensors: dict, index: int):
        self.tensors = tensors
        self.index = index

    def row(self, name: str) -> torch.Tensor:
        return self.tensors[name][self.index]


def _batch_of(states: list[Any], batch_size: int) -> dict:
    """The batched tensors of ``states`` (those of their common batch if the states are its rows
    in order, as in SGLang's synchronous loop; else stacked, and the states re-pointed)."""
    if len(states) != batch_size or not all(isinstance(s, RowState) for s in states):
        raise ValueError(f"step: states must hold one RowState per request ({batch_size}), got {states!r:.200}")
    first = states[0].tensors
    same = all(s.tensors is first and s.index == i for i, s in enumerate(states))
    if same and next(iter(first.values())).shape[0] == batch_size:
        return first
    tensors = {name: torch.stack([s.row(name) for s in states]) for name in first}
    states[:] = [RowState(tensors, i) for i in range(batch_size)]
    return tensors


# ------------------------------------------------------------------------------------------------
# the algorithms
# ------------------------------------------------------------------------------------------------


class KernelAlgorithm(DllmAlgorithm):
    """Base of the algorithms: options, checks, statistics and the commit of one step.

    Subclasses set ``FACTS`` (their published options and rule, :class:`SGLangAlgorithm`) and
    ``OPTIONS = options_of(FACTS)`` (``name -> (default, checker)``); stateful ones set
    ``STATEFUL`` (they keep a :class:`CommitState` per request).
    """

    supported_architectures = SUPPORTED_ARCHITECTURES
    FACTS: SGLangAlgorithm
    OPTIONS: dict = {}
    STATEFUL = False
    SUPPRESS_MASK = True  # token_stats never proposes MASK (the seeds' rules); False: SGLang's plain argmax

    def __init__(self, config):
        super().__init__(config)
        algo = type(self).__name__
        self.options = parse_options(algo, getattr(config, "algorithm_config", None), self.OPTIONS)
        _check_block_size(algo, self.block_size)
        if isinstance(self.mask_id, bool) or not isinstance(self.mask_id, int) or self.mask_id < 0:
            raise ValueError(
                f"{algo}: mask_id must be a token id >= 0, got {self.mask_id!r} (models without a MASK token, "
                f"e.g. DiffusionGemma, are not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        self.backend = self.options["backend"]
        self.commit_rule = self.rule(self.options)
        if self.commit_rule.spatial_window > self.block_size:
            raise ValueError(
                f"{algo}: option spatial_window ({self.commit_rule.spatial_window}) exceeds the block size "
                f"{self.block_size}"
            )
        self._cache: dict = {}

    def rule(self, options: dict) -> CommitRule:
        """The commit rule of the parsed ``options`` (the published builder, ``FACTS.rule``)."""
        return self.FACTS.rule(options)

    # -- helpers (no host sync) ----------------------------------------------------------------

    def _const(self, key, make):
        """Small device constants (positions, block ends, the step index), made once per shape."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _canvas(self, forward_batch, full_logits):
        """``input_ids`` as the ``[B, block]`` canvas the commit updates in place, and the
        statistics of ``full_logits`` as ``[B, block]`` tensors."""
        algo = type(self).__name__
        B, blk = forward_batch.batch_size, self.block_size
        ids = forward_batch.input_ids
        if not isinstance(ids, torch.Tensor) or tuple(ids.shape) != (B * blk,):
            raise ValueError(
                f"{algo}: forward_batch.input_ids must have shape [{B * blk}] (batch {B} x block "
                f"{blk}), got {list(getattr(ids, 'shape', []))}"
            )
        if not isinstance(full_logits, torch.Tensor) or full_logits.dim() != 2 or full_logits.shape[0] != B * blk:
            raise ValueError(
                f"{algo}: full_logits must have shape [{B * blk}, V] (batch {B} x block {blk}, "
                f"request-major), got {list(getattr(full_logits, 'shape', []))}"
            )
        if not full_logits.dtype.is_floating_point:
            raise TypeError(f"{algo}: full_logits must be a float tensor, got {full_logits.dtype}")
        if full_logits.device != ids.device:
            raise ValueError(f"{algo}: full_logits on {full_logits.device}, input_ids on {ids.device}")
        x = ids.view(B, blk)
        if x.dtype != torch.int64:
            x = x.long()  # a copy, written back by _finish
        suppress = [self.mask_id] if self.SUPPRESS_MASK and self.mask_id < full_logits.shape[1] else None
        stats = token_stats(full_logits, suppress_ids=suppress, backend=self.backend)
        return x, TokenStats(*(t.view(B, blk) for t in stats))

    def _finish(self, forward_batch, x):
        ids = forward_batch.input_ids
        if x.data_ptr() != ids.data_ptr():
            ids.copy_(x.view(-1))

    def _prompt_len(self, forward_batch, B, device) -> torch.Tensor:
        """Where each request's commit region starts: the length of its prompt tail in the block."""
        pm = forward_batch.dllm_prompt_mask
        if pm is None:
            return self._const(("zeros", B, device), lambda: torch.zeros(B, dtype=torch.int64, device=device))
        if tuple(pm.shape) != (B, self.block_size) or pm.dtype != torch.bool:
            raise ValueError(
                f"{type(self).__name__}: forward_batch.dllm_prompt_mask must be bool [{B}, "
                f"{self.block_size}], got {pm.dtype} {list(pm.shape)}"
            )
        return pm.sum(dim=1)

    def _positions(self, device):
        return self._const(("pos", device), lambda: torch.arange(self.block_size, device=device))

    def _block_end(self, B, device):
        return self._const(
            ("end", B, device), lambda: torch.full((B,), self.block_size, dtype=torch.int64, device=device)
        )

    def _step_index(self, device):
        return self._const(("step", device), lambda: torch.zeros((), dtype=torch.int32, device=device))

    def _force(self, masked, stats):
        """The force region ``(force_start, force_end)`` of the commit (``None``: the active region)."""
        return None, None

    def _fresh_state(self, x) -> dict:
        return {f: getattr(CommitState.new(x), f) for f in _STATE_FIELDS}

    # -- SGLang's interface --------------------------------------------------------------------

    def init_step_state(self, forward_batch) -> list[Any]:
        if not self.STATEFUL:
            return [None] * forward_batch.batch_size
        B = forward_batch.batch_size
        x = forward_batch.input_ids.view(B, self.block_size)
        tensors = self._fresh_state(x)
        return [RowState(tensors, i) for i in range(B)]

    def step(self, forward_batch, full_logits: torch.Tensor, states: list[Any]) -> list[bool]:
        """SGLang's step: :meth:`step_done`, then the done list (the step's one host sync)."""
        return self.step_done(forward_batch, full_logits, states).tolist()

    def step_done(self, forward_batch, full_logits: torch.Tensor, states: list[Any]) -> torch.Tensor:
        """Commit this step's positions of every request, in place, without a host sync (CUDA-graph
        capturable once the shapes have been seen); returns bool ``[B]`` on the device:
        ``done[b]``: request b had no MASK left in its region when this forward ran (so the forward
        saw its final tokens)."""
        B = forward_batch.batch_size
        x, stats = self._canvas(forward_batch, full_logits)
        device = x.device
        start = self._prompt_len(forward_batch, B, device)
        masked = (x == self.mask_id) & (self._positions(device) >= start[:, None])
        done = ~masked.any(dim=1)
        if self.STATEFUL:
            state = CommitState(**{f: _batch_of(states, B)[f] for f in _STATE_FIELDS})
        else:  # the rule reads no state: one scratch state per batch size
            state = self._const(("scratch", B, device), lambda: CommitState.new(x))
        force_start, force_end = self._force(masked, stats)
        commit(
            x,
            stats,
            state,
            self.commit_rule,
            active_start=start,
            active_end=self._block_end(B, device),
            mask_id=self.mask_id,
            step=self._step_index(device),
            force_start=force_start,
            force_end=force_end,
            backend=self.backend,
        )
        self._finish(forward_batch, x)
        return done


class DllmKernelsLowConfidence(KernelAlgorithm):
    """SGLang's ``LowConfidence`` on the kernels: ``prob > threshold`` (strict) among the masked
    positions, else the most confident one (ties -> lowest position); a MASK proposal is a no-op
    that still counts as selected (module doc)."""

    FACTS = sglang_algorithms()["DllmKernelsLowConfidence"]
    OPTIONS = options_of(FACTS)
    SUPPRESS_MASK = False

    def _force(self, masked, stats):
        # SGLang's fallback: torch.argmax of the masked confidences over every proposal (MASK
        # included). It has the row's top confidence, so it passes the threshold iff any position
        # does; forced only if it holds a valid proposal (a MASK there commits nothing, as in SGLang)
        best = torch.argmax(torch.where(masked, stats.prob, float("-inf")), dim=1)
        return best, best + 1


class DllmKernelsFastDllm(KernelAlgorithm):
    """Fast-dLLM's threshold rule: ``prob >= threshold`` plus the most confident position."""

    FACTS = sglang_algorithms()["DllmKernelsFastDllm"]
    OPTIONS = options_of(FACTS)


class DllmKernelsStreamingDllm(KernelAlgorithm):
    """Streaming-dLLM's dynamic threshold over the block's generation region."""

    FACTS = sglang_algorithms()["DllmKernelsStreamingDllm"]
    OPTIONS = options_of(FACTS)


class DllmKernelsD3LLM(KernelAlgorithm):
    """d3LLM's entropy rule within the block."""

    FACTS = sglang_algorithms()["DllmKernelsD3LLM"]
    OPTIONS = options_of(FACTS)


class DllmKernelsR2Dllm(KernelAlgorithm):
    """R2-dLLM: threshold, confidence windows, token clusters and temporal stability; the streaks
    are per-request device state."""

    STATEFUL = True
    FACTS = sglang_algorithms()["DllmKernelsR2Dllm"]
    OPTIONS = options_of(FACTS)


class DllmKernelsJointThreshold(KernelAlgorithm):
    """SGLang's ``JointThreshold`` (LLaDA2.1) on the kernels: mask-to-token with
    ``prob > threshold`` (else the most confident masked position), token-to-token edits of the
    block's earlier commits with ``prob > edit_threshold`` (the commit op's ``token_edit``), and
    SGLang's termination: a request is done after a step that selects nothing (no mask and no
    edit), or once it has spent ``max_post_edit_steps`` steps without a mask (the step past the
    budget changes nothing). MASK proposals as SGLang: no-op commits, re-masking edits (module doc).
    Per-request state (commit steps, edit budget, finished flag, prompt length) stays on the device."""

    STATEFUL = True
    FACTS = sglang_algorithms()["DllmKernelsJointThreshold"]
    OPTIONS = options_of(FACTS)
    SUPPRESS_MASK = False

    def max_steps(self, block_size: int) -> int:
        return block_size + self.options["max_post_edit_steps"] + 1

    def init_step_state(self, forward_batch) -> list[Any]:
        B = forward_batch.batch_size
        x = forward_batch.input_ids.view(B, self.block_size)
        device = x.device
        tensors = self._fresh_state(x)
        # the block's tokens after the prompt tail that exist already count as committed (editable)
        prompt = self._prompt_mask(forward_batch)
        tensors["commit_step"].masked_fill_(~prompt & (x != self.mask_id), 0)
        tensors["start"] = self._prompt_len(forward_batch, B, device).clone()
        tensors["finished"] = torch.zeros(B, dtype=torch.bool, device=device)
        tensors["post_edit_steps"] = torch.zeros(B, dtype=torch.int32, device=device)
        return [RowState(tensors, i) for i in range(B)]

    def step_done(self, forward_batch, full_logits: torch.Tensor, states: list[Any]) -> torch.Tensor:
        B, blk = forward_batch.batch_size, self.block_size
        penalty = self.options["penalty_lambda"]
        if (
            penalty > 0
            and isinstance(full_logits, torch.Tensor)
            and full_logits.dim() == 2
            and full_logits.shape[0] == B * blk
        ):
            # SGLang's repetition penalty, in place: the logit of each position's left neighbour's
            # token drops by penalty_lambda
            prev = forward_batch.input_ids.view(B, blk)[:, :-1].long()
            full_logits.view(B, blk, -1)[:, 1:, :].scatter_(
                2,
                prev.unsqueeze(-1),
                torch.full_like(prev.unsqueeze(-1), -penalty, dtype=full_logits.dtype),
                reduce="add",
            )
        x, stats = self._canvas(forward_batch, full_logits)
        device = x.device
        t = _batch_of(states, B)
        start, finished, post_edit = t["start"], t["finished"], t["post_edit_steps"]
        masked = (x == self.mask_id) & (self._positions(device) >= start[:, None])
        has_mask = masked.any(dim=1)
        no_mask = ~finished & ~has_mask
        post_edit.add_(no_mask.to(torch.int32))
        spent = no_mask & (post_edit > self.options["max_post_edit_steps"])
        finished |= spent
        eligible = ~finished
        end = torch.where(eligible, self._block_end(B, device), start)  # others: an empty region
        state = CommitState(**{f: t[f] for f in _STATE_FIELDS})
        # SGLang forces its fallback position with torch.topk, whose choice among exactly tied
        # confidences is the op's own (not always the lowest position): the same call picks it
        # here, and the commit's force region [best, best + 1) commits it when no masked position
        # passes the threshold (it has the row's top confidence: it passes iff any does)
        conf = torch.where(masked, stats.prob, float("-inf"))
        best = torch.topk(conf, k=1, dim=1).indices.squeeze(1)
        # (a best position that proposes MASK is no candidate: nothing is forced, as in SGLang)
        changed = commit(
            x,
            stats,
            state,
            self.commit_rule,
            active_start=start,
            active_end=end,
            mask_id=self.mask_id,
            step=self._step_index(device),
            force_start=best,
            force_end=best + 1,
            backend=self.backend,
        )
        # SGLang's edit writes a MASK proposal too (the commit op edits to valid proposals only):
        # an editable position (the op's: committed earlier, not masked at step start) re-masks
        remask = (stats.token == self.mask_id) & (stats.prob > self.options["edit_threshold"]) & ~masked
        remask &= (state.commit_step >= 0) & eligible[:, None]
        x.masked_fill_(remask, self.mask_id)
        # SGLang selects a position in every row with a mask, so only a mask-free row with no edit
        # (valid or re-masking) finishes here
        finished |= eligible & ~has_mask & (changed == 0) & ~remask.any(dim=1)
        self._finish(forward_batch, x)
        return finished


class DllmKernelsJointThresholdInDel(KernelAlgorithm):
    """SGLang's ``JointThresholdInDel`` (LLaDA2.2: JointThreshold with structural edits) on the
    device: the same tokens, DELETE/SPLIT edits, ``is_orig_mask`` markers, done flags, post-edit
    budget and update counts as SGLang's class, with no host sync but the done list.

    One step, per request (SGLang's ``step``, vectorised over the batch):

    - statistics: the plain argmax and its probability (``token_stats``), and the argmax without
      MASK/DELETE/SPLIT (a second ``token_stats`` pass with those suppressed; the argmax without
      MASK alone is the best of that token, DELETE and SPLIT);
    - the cumulative post-edit budget (a step whose block holds no *original* mask spends one),
      the final cleanup (budget spent, or ``max_post_edit_steps`` 0 and the last original masks
      selected, or more than ``block_size + max_post_edit_steps`` updates);
    - mask-to-token: at least ``1 + created masks`` transfers while original masks remain (the
      ``prob > threshold`` positions if they are enough, else SGLang's ``torch.topk`` of that
      many, called the same way so that its choice among tied confidences is the op's own), an
      original mask's MASK proposal replaced by the best other token first; all masks once no
      original mask remains or in the final cleanup (whose writes never hold MASK, DELETE or
      SPLIT); token-to-token edits ``prob > edit_threshold`` elsewhere after the prompt;
    - the anti-loop guard: if the block's input equals the input of an earlier step of the
      request (SGLang's ``seen_input_keys``; here every earlier input block, kept in a device
      tensor ``[B, block_size + max_post_edit_steps, block_size]``), the least confident changing
      position takes its best token not yet written there (SGLang's ``sampled_history``: every
      token any step wrote at that position index, a device tensor of the same size);
    - the writes, then DELETE/SPLIT through :func:`dllm_kernels.block_edit.block_edit` (a
      prefix sum and a scatter over each row; rows without DELETE/SPLIT pass unchanged).

    Done: a request is done after a step that selects nothing, or after its final cleanup if that
    changed no token (else after the next forward, which persists the cleaned block).
    ``delete_token_id`` / ``split_token_id`` come from SGLang's ``DllmConfig`` (the checkpoint's
    ``config.json``, see :func:`register`).
    """

    STATEFUL = True
    FACTS = sglang_algorithms()["DllmKernelsJointThresholdInDel"]
    OPTIONS = options_of(FACTS)
    SUPPRESS_MASK = False

    def __init__(self, config):
        super().__init__(config)
        algo = type(self).__name__
        self.max_post_edit_steps = self.options["max_post_edit_steps"]
        self.max_regular_update_steps = self.block_size + self.max_post_edit_steps
        self.delete_token_id = getattr(config, "delete_token_id", None)
        self.split_token_id = getattr(config, "split_token_id", None)
        if self.delete_token_id is None or self.split_token_id is None:
            raise RuntimeError(
                f"JointThresholdInDel requires delete_token_id and split_token_id, "
                f"got delete_token_id={self.delete_token_id}, "
                f"split_token_id={self.split_token_id}"
            )
        for name in ("delete_token_id", "split_token_id"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{algo}: {name} must be a token id >= 0, got {v!r}")
        if len({self.mask_id, self.delete_token_id, self.split_token_id}) != 3:
            raise ValueError(
                f"{algo}: mask_id, delete_token_id and split_token_id must be distinct, got {self.mask_id}, "
                f"{self.delete_token_id}, {self.split_token_id}"
            )
        if self.block_size > MAX_BLOCK_EDIT:
            raise ValueError(f"{algo}: block_size must be <= {MAX_BLOCK_EDIT} (block_edit), got {self.block_size}")
        if self.max_regular_update_steps * self.block_size > 2**24:
            raise ValueError(
                f"{algo}: option max_post_edit_steps ({self.max_post_edit_steps}) is too large: the anti-loop "
                f"history holds (block_size + max_post_edit_steps) * block_size <= 2**24 tokens per request"
            )

    def max_steps(self, block_size: int) -> int:
        # regular updates, one final cleanup update, one forward that persists the cleaned block
        return block_size + self.max_post_edit_steps + 2

    def init_step_state(self, forward_batch) -> list[Any]:
        B, blk = forward_batch.batch_size, self.block_size
        x = forward_batch.input_ids.view(B, blk)
        device = x.device
        prompt = forward_batch.dllm_prompt_mask
        if prompt is None:  # SGLang's: the contiguous non-MASK prefix
            prompt = (x != self.mask_id).cumprod(dim=1).bool()
        elif tuple(prompt.shape) != (B, blk) or prompt.dtype != torch.bool:
            raise ValueError(
                f"{type(self).__name__}: forward_batch.dllm_prompt_mask must be bool [{B}, {blk}], got "
                f"{prompt.dtype} {list(prompt.shape)}"
            )
        K = self.max_regular_update_steps
        tensors = {
            "prompt": prompt.clone(),
            "prompt_len": prompt.sum(dim=1),
            "is_orig_mask": ~prompt & (x == self.mask_id),
            "post_edit_steps": torch.zeros(B, dtype=torch.int64, device=device),
            "num_update_steps": torch.zeros(B, dtype=torch.int64, device=device),
            "finished": torch.zeros(B, dtype=torch.bool, device=device),
            # seen_input_keys: the input block of each update step (slot = update index)
            "seen": torch.zeros(B, K, blk, dtype=torch.int64, device=device),
            "seen_valid": torch.zeros(B, K, dtype=torch.bool, device=device),
            # sampled_history: the token each update step wrote at each position index (-1: none)
            "sampled": torch.full((B, blk, K), -1, dtype=torch.int64, device=device),
        }
        return [RowState(tensors, i) for i in range(B)]

    def _topk(self, conf, k, need):
        """Row b: the positions ``torch.topk(conf[b], k[b])`` picks, where ``need[b]`` (else
        none). One batched ``torch.topk`` per possible k: the op's own choice among tied
        confidences, as SGLang's per-row call makes it."""
        sel = torch.zeros_like(need[:, None].expand_as(conf))
        for kk in range(1, conf.shape[1] + 1):
            idx = torch.topk(conf, kk, dim=1).indices
            hit = torch.zeros_like(sel).scatter_(1, idx, True)
            sel = torch.where((need & (k == kk))[:, None], hit, sel)
        return sel

    def step_done(self, forward_batch, full_logits: torch.Tensor, states: list[Any]) -> torch.Tensor:
        B, blk = forward_batch.batch_size, self.block_size
        MASK, DEL, SPL = self.mask_id, self.delete_token_id, self.split_token_id
        x, stats = self._canvas(forward_batch, full_logits)
        V = full_logits.shape[1]
        if max(MASK, DEL, SPL) >= V:
            raise ValueError(
                f"{type(self).__name__}: mask_id, delete_token_id and split_token_id ({MASK}, {DEL}, {SPL}) must "
                f"be < the logits' vocabulary {V}"
            )
        device = x.device
        t = _batch_of(states, B)
        prompt, plen, orig_marker, finished = t["prompt"], t["prompt_len"], t["is_orig_mask"], t["finished"]
        pos = self._positions(device)
        rows = self._const(("rows", B, device), lambda: torch.arange(B, device=device))
        logits = full_logits.view(B, blk, V)
        x_in = x.clone()
        active = ~finished
        tok, p = stats.token.clone(), stats.prob.clone()
        # the best token other than MASK/DELETE/SPLIT; the best other than MASK is the best of it,
        # DELETE and SPLIT (equal logits: the lowest id, as torch.argmax)
        clean = token_stats(full_logits, suppress_ids=[MASK, DEL, SPL], backend=self.backend).token.view(B, blk)
        cands = torch.stack((clean, torch.full_like(clean, DEL), torch.full_like(clean, SPL)), dim=2)
        cand_logit = logits.gather(2, cands)  # [B, blk, 3]
        top = cand_logit.amax(dim=2, keepdim=True)
        no_mask = torch.where(cand_logit == top, cands, V).amin(dim=2)

        mask_index = ~prompt & (x_in == MASK)
        orig = orig_marker & mask_index
        n_orig, n_total = orig.sum(dim=1), mask_index.sum(dim=1)
        n_created = n_total - n_orig
        t["num_update_steps"] += active
        t["post_edit_steps"] += active & (n_orig == 0)
        npe = self.max_post_edit_steps
        final = t["num_update_steps"] > self.max_regular_update_steps
        if npe > 0:
            final = final | (t["post_edit_steps"] >= npe)
        else:
            final = final | (n_orig == 0)

        # an original mask whose proposal is MASK takes the best other token (not in the cleanup);
        # its probability under the full softmax: p(MASK) * exp(logit - logit(MASK))
        fallback = ~final[:, None] & orig & (tok == MASK)
        l_mask = logits[:, :, MASK].double()
        l_no = logits.gather(2, no_mask[:, :, None])[:, :, 0].double()
        p_no = (p.double() * torch.exp(l_no - l_mask)).float()
        tok = torch.where(fallback, no_mask, tok)
        p = torch.where(fallback, p_no, p)

        # mask to token
        conf = torch.where(mask_index, p, float("-inf"))
        required = 1 + n_created
        high = (conf > self.options["threshold"]) & mask_index
        enough = high.sum(dim=1) >= required
        k = torch.minimum(required, n_total)
        picked = self._topk(conf, k, ~final & (n_orig > 0) & ~enough)
        m2t = torch.where((n_orig > 0)[:, None], torch.where(enough[:, None], high, picked), mask_index)
        m2t = torch.where(final[:, None], mask_index, m2t)
        if npe == 0:  # the update that selects the last original masks is the final cleanup
            last = (n_orig > 0) & ~(orig & ~m2t).any(dim=1)
            final = final | last
            m2t = torch.where(last[:, None], mask_index, m2t)
        # token to token
        edit = ~mask_index & ~prompt & (p > self.options["edit_threshold"]) & (x_in != tok)
        transfer = (m2t | edit) & active[:, None]
        wrote = transfer.any(dim=1)
        quiet = active & ~wrote  # selects nothing: finished, done now
        writing = active & wrote

        # the final cleanup writes no MASK, DELETE or SPLIT
        scrub = final[:, None] & transfer & ((tok == MASK) | (tok == DEL) | (tok == SPL))
        tok = torch.where(scrub, clean, tok)

        # anti-loop guard: an input block seen before changes its least confident changing position
        # to its best token not yet written there (nor MASK at an original mask)
        seen = ((t["seen"] == x_in[:, None, :]).all(dim=2) & t["seen_valid"]).any(dim=1)
        changing = transfer & (tok != x_in)
        chosen = torch.where(changing, p, float("inf")).argmin(dim=1)  # [B]
        row = torch.cat((logits[rows, chosen], logits.new_zeros(B, 1)), dim=1)  # [B, V + 1]
        history = t["sampled"][rows, chosen]  # [B, K]
        row.scatter_(1, torch.where(history >= 0, history, V), float("-inf"))
        row[:, MASK] = torch.where(orig[rows, chosen], float("-inf"), row[:, MASK])
        resampled = row[:, :V].argmax(dim=1)
        guard = writing & seen & ~final & changing.any(dim=1)
        tok_chosen = tok.gather(1, chosen[:, None])[:, 0]
        tok.scatter_(1, chosen[:, None], torch.where(guard, resampled, tok_chosen)[:, None])

        # record this update's input block and writes (slot = update index; the cleanup's are
        # never read again, and its slot may lie past the end)
        slot = t["num_update_steps"] - 1
        record = writing & (slot < self.max_regular_update_steps)
        slot = slot.clamp(0, self.max_regular_update_steps - 1)
        t["seen"][rows, slot] = torch.where(record[:, None], x_in, t["seen"][rows, slot])
        t["seen_valid"][rows, slot] |= record
        cur = t["sampled"][rows[:, None], pos[None, :], slot[:, None]]  # [B, blk]
        t["sampled"][rows[:, None], pos[None, :], slot[:, None]] = torch.where(transfer & record[:, None], tok, cur)

        # the writes, then DELETE / SPLIT in the rows that wrote one (after the prompt)
        block = torch.where(transfer, tok, x_in)
        indel = (transfer & ((tok == DEL) | (tok == SPL))).any(dim=1)
        changed = (transfer & (tok != x_in)).any(dim=1)
        region = indel[:, None] & (pos[None, :] >= plen[:, None])
        block = torch.where(indel[:, None] & ~region, x_in, block)  # SGLang copies the prompt back
        new_x, new_marker = block_edit(
            block,
            x_in,
            orig_marker,
            region & (block == DEL),
            region & (block == SPL),
            mask_id=MASK,
            backend=self.backend,
        )
        x.copy_(new_x)
        orig_marker.copy_(new_marker)

        done = finished | quiet | (writing & final & ~changed)
        finished |= quiet | (writing & final)
        self._finish(forward_batch, x)
        return done


ALGORITHMS = (
    DllmKernelsLowConfidence,
    DllmKernelsJointThreshold,
    DllmKernelsFastDllm,
    DllmKernelsStreamingDllm,
    DllmKernelsD3LLM,
    DllmKernelsR2Dllm,
    DllmKernelsJointThresholdInDel,
)


INDEL_CONFIG_TARGET = "sglang.srt.dllm.config.DllmConfig.from_server_args"


def indel_token_ids(config, server_args, *args, **kwargs):
    """SGLang hook (after ``DllmConfig.from_server_args``): SGLang reads the checkpoint's
    ``delete_token_id`` / ``split_token_id`` only for an algorithm named ``JointThresholdInDel``;
    this reads them the same way (``config.json``, or ``--json-model-override-args``) for
    ``DllmKernelsJointThresholdInDel``, with SGLang's checks and errors."""
    if config is None or config.algorithm != DllmKernelsJointThresholdInDel.__name__:
        return config
    if config.delete_token_id is not None and config.split_token_id is not None:
        return config
    from sglang.srt.arg_groups.overrides import resolving_view
    from sglang.srt.configs.model_config import ModelConfig

    cfg = resolving_view(server_args)
    model_config = ModelConfig.from_server_args(server_args, model_path=cfg.model_path, model_revision=cfg.revision)
    ids = {name: getattr(model_config.hf_config, name, None) for name in ("delete_token_id", "split_token_id")}
    if None in ids.values():
        override_example = '{"delete_token_id": 156930, "split_token_id": 156931}'
        raise RuntimeError(
            f"{config.algorithm} is not supported for checkpoint {cfg.model_path!r}: the checkpoint must declare "
            "both delete_token_id and split_token_id. Use a checkpoint with explicit Insert/Delete support. If you "
            "are certain this checkpoint was trained for Insert/Delete decoding, declare the correct token IDs in "
            f"config.json or pass them with `--json-model-override-args '{override_example}'`. Use the token IDs "
            "defined by your checkpoint."
        )
    vocab_size = model_config.vocab_size
    for name, token_id in ids.items():
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise ValueError(f"{name} must be an integer token ID, got {token_id!r}")
        if not 0 <= token_id < vocab_size:
            raise ValueError(f"{name} must be within the model vocabulary [0, {vocab_size}), got {token_id}")
    config.delete_token_id, config.split_token_id = ids["delete_token_id"], ids["split_token_id"]
    return config


# ------------------------------------------------------------------------------------------------
# uniform-state decoding: DiffusionGemma
# ------------------------------------------------------------------------------------------------

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as an int64: odd, so (n + 1) * it is distinct per n
_SEED_MASK = 2**63 - 1
_RENOISE_FIELDS = ("current", "argmax", "stable_steps", "steps", "converged", "seed")


def _gemma_options(algo: str, given) -> dict:
    """Gemma4Renoise's ``algorithm_config`` (SGLang's nesting: ``sampler_config``,
    ``temperature_schedule``, ``stopping_config``; see ``GEMMA4_RENOISE_SECTIONS``) as the flat
    options of :data:`~dllm_kernels.policies.published.GEMMA4_RENOISE`, ``backend`` added;
    SGLang's checks and messages, an unknown key an error naming it."""
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise ValueError("Gemma4Renoise configuration must be a mapping")
    sections = {}
    for name in sorted({s for s, _ in GEMMA4_RENOISE_SECTIONS.values()}):
        value = given.get(name) or {}
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping")
        known = {k for k, (s, _) in GEMMA4_RENOISE_SECTIONS.items() if s == name}
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise ValueError(f"{algo}: unknown option {unknown[0]!r} in {name} (known: {', '.join(sorted(known))})")
        sections[name] = value
    top = {k for k in GEMMA4_RENOISE.options if GEMMA4_RENOISE_SECTIONS.get(k, ("", True))[1]} | {"backend"}
    unknown = sorted(str(k) for k in given if k not in top and k not in sections and k not in SGLANG_KEYS)
    if unknown:
        where = GEMMA4_RENOISE_SECTIONS.get(unknown[0], (None,))[0]
        hint = f" (SGLang reads it from {where} only)" if where else ""
        raise ValueError(
            f"{algo}: unknown option {unknown[0]!r} in --dllm-algorithm-config{hint} (known: "
            f"{', '.join(sorted(top | set(sections)))}; SGLang's own: {', '.join(sorted(SGLANG_KEYS))})"
        )
    out = {}
    for name, default in GEMMA4_RENOISE.options.items():
        section, flat = GEMMA4_RENOISE_SECTIONS.get(name, ("", True))
        fallback = given.get(name, default) if flat else default
        out[name] = sections[section].get(name, fallback) if section else fallback
    out["backend"] = _BACKEND[1](algo, "backend", given.get("backend", "auto"))
    steps, bound = out["max_denoising_steps"], out["entropy_bound"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError("max_denoising_steps must be at least 1")
    for name in ("entropy_bound", "t_min", "t_max", "confidence_threshold"):
        _number(algo, name, out[name])
    if bound <= 0:
        raise ValueError("entropy_bound must be positive")
    if out["t_min"] < 0 or out["t_max"] <= out["t_min"]:
        raise ValueError("temperature_schedule must satisfy 0 <= t_min < t_max")
    s = out["stability_threshold"]
    if isinstance(s, bool) or not isinstance(s, int) or s < 0 or out["confidence_threshold"] < 0:
        raise ValueError("invalid stopping_config")
    if out["seed"] is not None and (isinstance(out["seed"], bool) or not isinstance(out["seed"], int)):
        raise ValueError("seed must be an integer")
    _bool(algo, "use_temperature_table", out["use_temperature_table"])
    return out


class DllmKernelsGemma4Renoise(KernelAlgorithm):
    """SGLang's ``Gemma4Renoise`` (DiffusionGemma's uniform-state sampler) on the kernels.

    Options: SGLang's ``algorithm_config``, the same keys, nesting, defaults and checks
    (:data:`~dllm_kernels.policies.published.GEMMA4_RENOISE`), plus ``backend``. One step, for
    the rows not finished yet (per request: its step ``n`` from 0, ``T = t_min + (t_max - t_min)
    * (max_denoising_steps - n) / max_denoising_steps``, SGLang's schedule):

    - one tempered ``token_stats`` pass (per-row T): the sample from ``softmax(logits / T)`` and
      its entropies; one ``T = 0`` pass: the argmax;
    - one ``commit`` launch (base ``"entropy_bound"``, ``renoise``): the positions whose
      lower-entropy predecessors sum to ``<= entropy_bound`` take the sample, the others a
      uniform random token; the argmax streaks, the step count and the convergence test (argmax
      equal to the previous ``stability_threshold`` steps' and mean entropy
      ``< confidence_threshold``, or ``max_denoising_steps`` steps); a converged row takes the
      argmax canvas;
    - the done list, the step's one host sync (SGLang's too);
    - if a row goes on: ``soft_embedding`` (``softmax(logits / T) @ E``, times the embedding's
      ``embed_scale``), the next forward's self-conditioning, as SGLang's ``prepare_inputs``
      feeds it (zeros for finished rows).

    Randomness: the initial canvas is SGLang's (``randint`` of a ``torch.Generator`` seeded with
    the request's seed: ``seed``, else the blake2b of its rid); the sample and the renoise tokens
    are the kernels' Philox streams keyed by that seed, the position and the step (the sample's
    key ``seed + (n * block + position + 1) * 0x9E3779B97F4A7C15 mod 2**63``), not SGLang's
    per-request generator stream: the same laws, other draws.
    """

    supported_architectures = ("DiffusionGemmaForBlockDiffusion",)
    requires_separate_context_encoding = True
    required_attention_backend = "triton"
    reuse_forward_metadata = True
    supported_attention_backends = ("triton", "fa4")
    capture_input_preparation = True
    FACTS = GEMMA4_RENOISE
    OPTIONS = {}  # nested options: _gemma_options

    def __init__(self, config):
        DllmAlgorithm.__init__(self, config)
        algo = type(self).__name__
        self.options = _gemma_options(algo, getattr(config, "algorithm_config", None))
        _check_block_size(algo, self.block_size)
        o = self.options
        self.backend = o["backend"]
        self.max_denoising_steps = o["max_denoising_steps"]
        self.entropy_bound = o["entropy_bound"]
        self.t_min, self.t_max = o["t_min"], o["t_max"]
        self.confidence_threshold = o["confidence_threshold"]
        self.stability_threshold = o["stability_threshold"]
        self.seed = o["seed"]
        self.use_temperature_table = o["use_temperature_table"]
        self.commit_rule = self.FACTS.rule(o)
        self.use_graph_input_preparation = getattr(config, "capture_input_preparation", False)
        self.vocab_size = None
        self.embed_tokens = None
        self._cache = {}

    # -- SGLang's launch-time and request checks are Gemma4Renoise's --------------------------

    @classmethod
    def configure_server_args(cls, server_args) -> None:
        from sglang.srt.dllm.algorithm.gemma4_renoise import Gemma4Renoise

        Gemma4Renoise.configure_server_args.__func__(cls, server_args)

    @classmethod
    def validate_request(cls, req):
        from sglang.srt.dllm.algorithm.gemma4_renoise import Gemma4Renoise

        return Gemma4Renoise.validate_request.__func__(cls, req)

    def run(self, model_runner, forward_batch, algo_states=None):
        if not forward_batch.forward_mode.is_dllm_extend():
            if forward_batch.input_ids.numel() == 0:
                return None, [], None, None, False
            out = model_runner.forward(forward_batch, pp_proxy_tensors=None)
            return out.logits_output, [], None, None, out.can_run_graph
        self.vocab_size = model_runner.model_config.hf_config.text_config.vocab_size
        self.embed_tokens = model_runner.model.get_input_embeddings()
        return DllmAlgorithm.run(self, model_runner, forward_batch, algo_states)

    def _block_start_list(self, forward_batch) -> list[int]:
        return [0] * forward_batch.batch_size

    def max_steps(self, block_size: int) -> int:
        return self.max_denoising_steps

    def _temperature(self, step: int) -> float:
        """SGLang's schedule at its step counter ``step`` (``max_denoising_steps`` down to 1)."""
        return self.t_min + (self.t_max - self.t_min) * (step / self.max_denoising_steps)

    def _request_seed(self, forward_batch, index: int) -> int:
        if self.seed is not None:
            return self.seed
        rid = forward_batch.rids[index] if getattr(forward_batch, "rids", None) else str(index)
        return int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=8).digest(), "little")

    def init_step_state(self, forward_batch) -> list[Any]:
        if self.vocab_size is None:
            raise ValueError(f"{type(self).__name__}: vocab_size is unset (run() reads it from the model)")
        device = forward_batch.input_ids.device
        blk = self.block_size
        states = []
        for index in range(forward_batch.batch_size):
            seed = self._request_seed(forward_batch, index)
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)
            current = torch.randint(self.vocab_size, (blk,), device=device, generator=generator)
            states.append(
                {
                    "step": self.max_denoising_steps,  # SGLang's counter (prepare_inputs reads it)
                    "current": current,
                    "argmax": torch.full((blk,), -1, dtype=torch.int64, device=device),
                    "stable_steps": torch.zeros(blk, dtype=torch.int32, device=device),
                    "steps": torch.zeros((), dtype=torch.int32, device=device),
                    "converged": torch.zeros((), dtype=torch.bool, device=device),
                    "seed": torch.tensor(seed & _SEED_MASK, dtype=torch.int64, device=device),
                    "self_conditioning": None,
                    "finished": False,
                }
            )
        return states

    def _write_input_ids(self, forward_batch, states) -> None:
        torch.stack([s["current"] for s in states], out=forward_batch.input_ids.view(len(states), self.block_size))

    @torch.no_grad()
    def prepare_inputs(self, model_runner, forward_batch, states) -> None:
        """SGLang's ``Gemma4Renoise.prepare_inputs``: the canvas into ``input_ids`` (FDFO, or the
        first step), the self-conditioning signal (zeros for rows without one) into
        ``dllm_input_preparation_state``, the input embeddings unless the graph prepares them."""
        if self.fdfo or all(s["step"] == self.max_denoising_steps for s in states):
            self._write_input_ids(forward_batch, states)
        signals = [s["self_conditioning"] for s in states]
        signal = next((v for v in signals if v is not None), None)
        if signal is not None or self.use_graph_input_preparation:
            weight = self.embed_tokens.weight
            zero = self._const(
                ("zero", weight.device, weight.dtype, weight.shape[-1]),
                lambda: weight.new_zeros(self.block_size, weight.shape[-1]),
            )
            shape = (len(states) * self.block_size, weight.shape[-1])
            batched = forward_batch.dllm_input_preparation_state
            if batched is None or batched.shape != shape:
                batched = weight.new_empty(shape)
            torch.stack([zero if v is None else v for v in signals], out=batched.view(len(states), self.block_size, -1))
            forward_batch.dllm_input_preparation_state = batched
            signal = batched
        if self.use_graph_input_preparation:
            forward_batch.input_embeds = None
        else:
            forward_batch.input_embeds = model_runner.model.prepare_dllm_input_embeds(forward_batch.input_ids, signal)

    @staticmethod
    def prepare_graph_inputs(model, input_ids, state):
        return model.prepare_dllm_input_embeds(input_ids, state)

    def _temperatures(self, steps: torch.Tensor, dtype) -> torch.Tensor:
        """fp32 ``[B]``: SGLang's temperature (rounded to the logits' dtype, as its table) at each
        row's step ``n`` (SGLang's counter ``max_denoising_steps - n``), by a device lookup."""
        device = steps.device
        table = self._const(
            ("temps", device, dtype),
            lambda: torch.tensor(
                [self._temperature(self.max_denoising_steps - n) for n in range(self.max_denoising_steps + 1)],
                dtype=dtype,
                device=device,
            ).float(),
        )
        return table[steps.long().clamp(max=self.max_denoising_steps)]

    def _sample_seeds(self, seed: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """int64 ``[B, block]``: the Philox key of each position's sample at the row's step."""
        pos = self._positions(seed.device)
        n = steps.long()[:, None] * self.block_size + pos[None, :] + 1
        return (seed[:, None] + n * _GOLDEN) & _SEED_MASK

    def statistics(self, logits: torch.Tensor, steps: torch.Tensor, seed: torch.Tensor):
        """The step's statistics of ``logits [B, block, V]`` at the rows' steps ``n`` (int
        ``[B]``) and seeds (int64 ``[B]``): the tempered :class:`TokenStats` (``token``: the
        sample), the argmax ``[B, block]`` and the temperatures ``[B, block]`` fp32."""
        B, blk = logits.shape[:2]
        temps = self._temperatures(steps, logits.dtype)[:, None].expand(B, blk).contiguous()
        sample = token_stats(
            logits, temperature=temps, seed=self._sample_seeds(seed, steps), tempered=True, backend=self.backend
        )
        top = token_stats(logits, backend=self.backend).token
        return sample, top, temps

    def soft_embeddings(self, logits: torch.Tensor, temps: torch.Tensor) -> torch.Tensor:
        """``softmax(logits / T) @ E * embed_scale`` of each position (SGLang's
        ``_soft_embeddings``); a vocabulary-parallel embedding (``tp_size > 1``) merges the ranks'
        ``soft_embedding_partial`` states after an all-gather (SGLang all-reduces its matmul)."""
        emb = self.embed_tokens
        weight = emb.weight
        tp = getattr(emb, "tp_size", 1)
        if tp > 1 and getattr(emb, "shard_indices", None) is not None:
            from sglang.srt.distributed import tensor_model_parallel_all_gather

            shard = emb.shard_indices
            start, end = shard.org_vocab_start_index, shard.org_vocab_end_index
            part = soft_embedding_partial(
                logits[..., start:end], weight[: end - start], temperature=temps, backend=self.backend
            )
            gathered = tensor_model_parallel_all_gather(part.unsqueeze(0).contiguous(), dim=0)
            soft = merge_soft_embedding(gathered, out_dtype=weight.dtype, backend=self.backend)
        else:
            soft = soft_embedding(logits, weight, temperature=temps, backend=self.backend)
        scale = torch.as_tensor(emb.embed_scale, dtype=weight.dtype, device=weight.device)
        return soft * scale

    def step(self, forward_batch, full_logits: torch.Tensor, states: list[Any]) -> list[bool]:
        algo = type(self).__name__
        B, blk, V = forward_batch.batch_size, self.block_size, self.vocab_size
        if len(states) != B:
            raise ValueError(f"{algo}: states must hold one state per request ({B}), got {len(states)}")
        if not isinstance(full_logits, torch.Tensor) or tuple(full_logits.shape) != (B * blk, V):
            raise ValueError(
                f"{algo}: full_logits must have shape [{B * blk}, {V}] (batch {B} x block {blk}, vocabulary), "
                f"got {list(getattr(full_logits, 'shape', []))}"
            )
        if all(s["finished"] for s in states):
            self._write_input_ids(forward_batch, states)
            return [True] * B
        logits = full_logits.view(B, blk, V)
        device = logits.device
        t = {f: torch.stack([s[f] for s in states]) for f in _RENOISE_FIELDS}
        finished = t["converged"].clone()  # a row is finished once it converged (then left untouched)
        x = t["current"]
        rs = RenoiseState(t["argmax"], t["stable_steps"], t["steps"], t["converged"])
        cs = self._const(("scratch", B, device), lambda: CommitState.new(x))
        steps = rs.steps.clone()  # this step's n, before the commit counts it
        sample, top, temps = self.statistics(logits, steps, t["seed"])
        zeros = self._const(("zeros", B, device), lambda: torch.zeros(B, dtype=torch.int64, device=device))
        commit(
            x,
            sample,
            cs,  # (the renoise rule reads none of it; a converged row's commit_step is written)
            self.commit_rule,
            active_start=zeros,
            active_end=torch.where(finished, zeros, self._block_end(B, device)),
            mask_id=V,  # no MASK: an id outside the vocabulary
            step=self._step_index(device),
            vocab_size=V,
            argmax=top,
            seed=t["seed"],
            renoise_state=rs,
            backend=self.backend,
        )
        done = (finished | rs.converged).tolist()  # the step's one host sync
        soft = None if all(done) else self.soft_embeddings(logits, temps)
        for b, s in enumerate(states):
            if s["finished"]:
                continue
            for f in _RENOISE_FIELDS:
                s[f] = t[f][b]
            s["step"] -= 1
            s["finished"] = done[b]
            s["self_conditioning"] = None if done[b] else soft[b]
        self._write_input_ids(forward_batch, states)
        return done


UNIFORM_STATE_ALGORITHMS = (DllmKernelsGemma4Renoise,)
GEMMA_CONFIG_TARGET = INDEL_CONFIG_TARGET  # DllmConfig.from_server_args


class _AlgorithmAlias:
    """``server_args`` read with ``dllm_algorithm`` = ``name`` (also through SGLang's
    ``resolving_view``), everything else delegated."""

    def __init__(self, server_args, name: str):
        object.__setattr__(self, "_server_args", server_args)
        object.__setattr__(self, "_name", name)

    def __getattr__(self, key):
        server_args = object.__getattribute__(self, "_server_args")
        name = object.__getattribute__(self, "_name")
        if key == "dllm_algorithm":
            return name
        if key == "_resolved_overrides":
            return [*(getattr(server_args, key, None) or ()), ("dllm_kernels", {"dllm_algorithm": name})]
        return getattr(server_args, key)

    def __setattr__(self, key, value):
        setattr(object.__getattribute__(self, "_server_args"), key, value)


def gemma_config(original, server_args, *args, **kwargs):
    """SGLang hook (around ``DllmConfig.from_server_args``): SGLang requires the algorithm named
    ``Gemma4Renoise`` for ``DiffusionGemmaForBlockDiffusion``; for ``--dllm-algorithm
    DllmKernelsGemma4Renoise`` this builds the config as for ``Gemma4Renoise`` (its checks and
    block size) and names ours in it."""
    from sglang.srt.arg_groups.overrides import resolving_view

    ours = DllmKernelsGemma4Renoise.__name__
    if resolving_view(server_args).dllm_algorithm != ours:
        return original(server_args, *args, **kwargs)
    config = original(_AlgorithmAlias(server_args, "Gemma4Renoise"), *args, **kwargs)
    if config is not None:
        config.algorithm = ours
    return config


def register() -> None:
    """Entry point (group ``sglang.srt.plugins``): add :data:`ALGORITHMS` to SGLang's registry, so
    that ``--dllm-algorithm DllmKernelsLowConfidence`` (etc.) finds them, and hook
    :func:`indel_token_ids` after ``DllmConfig.from_server_args``."""
    check_sglang_version()
    from sglang.srt.dllm.algorithm import algo_name_to_cls
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for cls in ALGORITHMS + UNIFORM_STATE_ALGORITHMS:
        algo_name_to_cls[cls.__name__] = cls
    if not any(hook is indel_token_ids for _, hook, _ in HookRegistry._hooks.get(INDEL_CONFIG_TARGET, ())):
        HookRegistry.register(INDEL_CONFIG_TARGET, indel_token_ids, HookType.AFTER)
    if not any(hook is gemma_config for _, hook, _ in HookRegistry._hooks.get(GEMMA_CONFIG_TARGET, ())):
        HookRegistry.register(GEMMA_CONFIG_TARGET, gemma_config, HookType.AROUND)
