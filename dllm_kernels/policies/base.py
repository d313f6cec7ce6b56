"""The :class:`Policy` record and its checks: what the loop needs to know about a decoder.

A :class:`Policy` says how a step's forward is laid out (cache mode, suffix pruning), how blocks
are scheduled (one at a time, or d3LLM's pipelined multi-block), and which commit rule runs
(:class:`dllm_kernels.commit.CommitRule`). The published decoders' settings live in
:mod:`dllm_kernels.policies.published`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import check_policy_numbers
from ..commit import CommitRule

CACHE_MODES = ("none", "prefix", "dual", "delayed", "blocks")
SCHEDULERS = ("blocks", "multi_block", "block_causal", "uniform")
# Dream's first forward of a block (``ar_first_token``): one token, at the block's first position
FIRST_TOKEN_RULE = CommitRule(base="topk")


@dataclass(frozen=True)
class Policy:
    """One decoding policy.

    Attributes:
        name: label used in tables.
        rule: the commit rule of every step (:class:`CommitRule`).
        scheduler: ``"blocks"``: one block at a time, forwards until it is complete (or exactly
            ``steps_per_block`` forwards); ``"multi_block"``: d3LLM's pipelined blocks;
            ``"block_causal"`` (block-diffusion models, SDAR): blocks aligned to position 0, the
            prompt's complete blocks prefilled in one forward, then per block denoising forwards
            of the block alone against the cache of the completed blocks, and one *store*
            forward of the completed block that writes its K/V (it commits nothing and counts
            as a forward, as the published code counts it); ``"uniform"`` (uniform-state models,
            DiffusionGemma; :mod:`dllm_kernels.decode.uniform`): the same blocks, forwards and
            cache, but no MASK: a block's free positions start uniformly random and every
            denoising forward re-decides them all (the ``renoise`` rule, at the temperature of
            ``temperatures``) until the rule reports the block converged.
        cache: ``"none"``: every forward sees the whole canvas; ``"prefix"`` (Fast-dLLM): a block's
            first forward is full and fills the cache, later ones forward the block and everything
            after it against the cached prefix; ``"dual"`` (Fast-dLLM): later forwards see only the
            block, against the cached prefix and (stale) suffix; ``"delayed"`` (d3LLM): completed
            blocks enter the cache ``cache_delay`` steps after completing, with a full refresh
            forward every ``refresh_interval`` steps and while a block stabilises. Unlike the
            published code, whose concatenated cache can hold a position twice after a refresh
            while two blocks stabilise, the cache is indexed by position (tests/fidelity/README.md);
            ``"blocks"`` (the ``block_causal`` scheduler): the completed blocks, each written
            once, by the forward of that block alone (block-causal attention makes it exact);
            the ``block_causal`` and ``uniform`` schedulers' cache.
        steps_per_block: > 0: LLaDA's fixed schedule, exactly this many forwards per block, each
            committing its share of the block's masks (needs ``rule.base == "topk"``); 0 with
            "topk" means one token per step (``block_length`` steps). ``block_causal``: SDAR's
            ``denoising_steps``, the most denoising forwards per block, with the schedule
            ``get_num_transfer_tokens(block_length, steps)``; it must equal ``block_length``
            (one token per step: the only ratio whose published rules are reproduced here); 0:
            the same for SDAR, and for Fast-dLLM v2 no cap (forwards until the block is
            complete, which its rule's forced argmax guarantees within ``block_length``).
        idle_forward: Fast-dLLM's published cached loops (``generate_with_prefix_cache`` /
            ``generate_with_dual_cache``) run one cached forward after a block's first (full)
            forward before they test the block for masks, so a block that its first forward
            completes costs 2 forwards (the second commits nothing, its NFE counts). True runs and
            counts that forward; False moves on after the first (the saving:
            ``fast_dllm(skip_idle_forward=True)``). Streaming-dLLM, R2-dLLM and LLaDA test before
            every forward, so they never run one.
        block_start_rule: the rule at a block's first forward (Streaming-dLLM: the plain
            threshold); None = ``rule``.
        ar_first_token: a block's first forward commits only the block's first position
            (Fast-dLLM / Streaming-dLLM for Dream's shifted logits).
        suffix_window: Streaming-dLLM's pruning W: forwards see the block, the first W positions
            after it and the canvas's last position (with their original positions). None = off.
        early_exit: Streaming-dLLM: when a block completes and holds EOS, every later position
            becomes EOS and the sequence stops.
        early_stop: d3LLM: at every step, everything after the first EOS of the generation region
            becomes EOS (also already decoded tokens); blocks after it count as complete.
        block_add_threshold / decoded_token_threshold: d3LLM multi-block: a new block is added
            once the last one is this far decoded; a block becomes fully active (forced progress)
            once its predecessor is this far decoded.
        cache_delay / refresh_interval: d3LLM delayed cache (see ``cache``).
        suppress_eos: LLaDA's ``logits_eos_inf``: EOS is never proposed.
        confidence_eos_eot_inf: LLaDA's option of that name: an EOS or EoT proposal gets
            confidence 0 (it is committed only when nothing else is left to pick).
        commit_in_order: ``block_causal`` (SDAR's ``sequential`` remasking): a step commits the
            block's first masked position (left to right), with the ``topk`` rule and k = 1.
        stop_ids: ``block_causal``: a row whose generated tokens hold one of these ids stops at
            the end of that block (SDAR's ``stopping_criteria_idx``, Fast-dLLM v2's
            ``stop_token``); see ``stop_fill``.
        stop_fill: ``block_causal``: None (SDAR): the stopped row's block still gets its store
            forward and its later positions stay the mask id; a token id (Fast-dLLM v2's pad): the
            row stops without the store forward and every position after its first stop id
            becomes this id. Fast-dLLM v2 ignores a stop id inherited by a block's first
            position (``inherit_first_token``) when deciding that a row is finished.
        sub_block: ``block_causal``: a step commits only inside the block's first sub-block of
            this size that holds a mask (Fast-dLLM v2's ``small_block_size``); 0: the block.
        inherit_first_token: ``block_causal`` (Fast-dLLM v2): the store forward of a block (and a
            prefill that ends at a block boundary) also forwards the next block's first position
            and commits there the argmax of the block's last row (the model's logits unshifted),
            so each block after the first starts with one committed token. Its prefill runs
            only for a prompt longer than a block: a prompt of exactly one block is, as
            published, never forwarded nor attended (decoding starts at block 1).
        sub_block_cache: ``block_causal`` (Fast-dLLM v2's ``use_block_cache=True``): a block's
            forward writes its K/V as the block's cache rows; while the current sub-block's first
            position is committed, later forwards run only that sub-block, overwrite its rows and
            attend the cache up to the block's end with no mask (the other sub-blocks' rows as of
            the last whole-block forward). A whole-block forward runs at the block's first
            forward and whenever that first position is still a mask.
        d3_stale_candidates: d3LLM quirk, on by default for fidelity: the candidates of a step are
            the masks before that step's early-stop fill, so a position filled with EOS can still
            take a proposal in the same step (the next step's fill overwrites it again).
        temperatures: ``uniform`` only (there required): ``(t_min, t_max)``, the sampling
            temperature schedule ``T(n) = t_min + (t_max - t_min) * (N - n) / N`` at a block's
            denoising step ``n`` (from 0; ``N = rule.max_steps``), SGLang's ``Gemma4Renoise``
            schedule; ``0 <= t_min <= t_max``, ``t_max > 0``.
    """

    name: str
    rule: CommitRule
    scheduler: str = "blocks"
    cache: str = "none"
    steps_per_block: int = 0
    idle_forward: bool = False
    block_start_rule: CommitRule | None = None
    ar_first_token: bool = False
    suffix_window: int | None = None
    early_exit: bool = False
    early_stop: bool = False
    block_add_threshold: float = 1.0
    decoded_token_threshold: float = 1.0
    cache_delay: int = 2
    refresh_interval: int = 3
    suppress_eos: bool = False
    confidence_eos_eot_inf: bool = False
    d3_stale_candidates: bool = True
    commit_in_order: bool = False
    stop_ids: tuple[int, ...] = ()
    stop_fill: int | None = None
    sub_block: int = 0
    inherit_first_token: bool = False
    sub_block_cache: bool = False
    temperatures: tuple[float, float] | None = None

    def __post_init__(self):
        if self.cache not in CACHE_MODES:
            raise ValueError(f"policy {self.name}: cache must be one of {CACHE_MODES}, got {self.cache!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"policy {self.name}: scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.cache == "delayed" and self.scheduler != "multi_block":
            raise ValueError(f"policy {self.name}: the delayed cache belongs to the multi_block scheduler")
        if self.scheduler == "multi_block" and self.cache in ("prefix", "dual"):
            raise ValueError(f"policy {self.name}: multi_block decoding uses cache 'none' or 'delayed'")
        if self.idle_forward and (self.scheduler != "blocks" or self.cache not in ("prefix", "dual")):
            raise ValueError(
                f"policy {self.name}: idle_forward belongs to the blocks scheduler with a prefix or dual cache"
            )
        if (self.scheduler in ("block_causal", "uniform")) != (self.cache == "blocks"):
            raise ValueError(
                f"policy {self.name}: the block_causal and uniform schedulers and cache 'blocks' go together"
            )
        if (self.scheduler == "uniform") != self.rule.renoise:
            raise ValueError(f"policy {self.name}: the uniform scheduler and a renoise rule go together")
        self._check_temperatures()
        if not isinstance(self.commit_in_order, bool):
            raise TypeError(f"policy {self.name}: commit_in_order must be a bool, got {self.commit_in_order!r}")
        if self.commit_in_order and (self.scheduler != "block_causal" or self.rule.base != "topk"):
            raise ValueError(f"policy {self.name}: commit_in_order belongs to block_causal with the 'topk' rule")
        if not isinstance(self.stop_ids, tuple) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_ids
        ):
            raise TypeError(f"policy {self.name}: stop_ids must be a tuple of token ids, got {self.stop_ids!r}")
        if self.scheduler != "block_causal" and (
            self.stop_ids or self.stop_fill is not None or self.sub_block or self.inherit_first_token
        ):
            raise ValueError(
                f"policy {self.name}: stop_ids, stop_fill, sub_block and inherit_first_token belong to "
                "the block_causal scheduler"
            )
        if self.stop_fill is not None and (not isinstance(self.stop_fill, int) or self.stop_fill < 0):
            raise TypeError(f"policy {self.name}: stop_fill must be a token id or None, got {self.stop_fill!r}")
        if not isinstance(self.sub_block, int) or isinstance(self.sub_block, bool) or self.sub_block < 0:
            raise ValueError(f"policy {self.name}: sub_block must be an int >= 0, got {self.sub_block!r}")
        if not isinstance(self.inherit_first_token, bool):
            raise TypeError(f"policy {self.name}: inherit_first_token must be a bool, got {self.inherit_first_token!r}")
        if not isinstance(self.sub_block_cache, bool):
            raise TypeError(f"policy {self.name}: sub_block_cache must be a bool, got {self.sub_block_cache!r}")
        if self.sub_block_cache and self.scheduler != "block_causal":
            raise ValueError(f"policy {self.name}: sub_block_cache belongs to the block_causal scheduler")
        if self.steps_per_block and self.rule.base != "topk" and self.scheduler != "block_causal":
            raise ValueError(f"policy {self.name}: steps_per_block needs the 'topk' rule")
        check_policy_numbers(self)
        if self.suffix_window is not None and (self.suffix_window < 0 or self.cache == "dual"):
            raise ValueError(f"policy {self.name}: suffix_window must be >= 0 and needs cache 'none' or 'prefix'")

    def _check_temperatures(self) -> None:
        t = self.temperatures
        if self.scheduler != "uniform":
            if t is not None:
                raise ValueError(f"policy {self.name}: temperatures belong to the uniform scheduler")
            return
        ok = isinstance(t, tuple) and len(t) == 2
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in t)
        if not ok or not 0 <= t[0] <= t[1] or t[1] <= 0:
            raise ValueError(
                f"policy {self.name}: temperatures must be (t_min, t_max), 0 <= t_min <= t_max, t_max > 0, got {t!r}"
            )

    def launched_rules(self) -> dict[str, CommitRule]:
        """Every commit rule the loop launches for this policy, by role: ``"main"`` (every step but
        a block's first forward where one of the others is set), ``"first_token"`` (a block's
        first forward with ``ar_first_token``) or else ``"block_start"`` (``block_start_rule``);
        the multi-block scheduler runs ``rule`` only."""
        rules = {"main": self.rule}
        if self.scheduler == "blocks" and self.ar_first_token:
            rules["first_token"] = FIRST_TOKEN_RULE
        elif self.scheduler == "blocks" and self.block_start_rule is not None:
            rules["block_start"] = self.block_start_rule
        return rules


def strict_threshold(threshold: float) -> float:
    """The fp32 number ``t'`` (the next fp32 above ``fp32(threshold)``) with ``c >= t'`` exactly
    when ``c > fp32(threshold)`` for every fp32 ``c``: a strict ``>`` threshold (SGLang's) as the
    commit op's ``>=``."""
    t = torch.tensor(threshold, dtype=torch.float32)
    return torch.nextafter(t, torch.tensor(math.inf, dtype=torch.float32)).item()
