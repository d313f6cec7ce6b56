"""Decoding policies as data: the published decoders are settings of one loop.

A :class:`Policy` says how a step's forward is laid out (cache mode, suffix pruning), how blocks
are scheduled (one at a time, or d3LLM's pipelined multi-block), and which commit rule runs
(:class:`dllm_kernels.commit.CommitRule`). The named constructors carry the published defaults;
every number can be overridden: ``generate(model, prompt, policy="fast_dllm", threshold=0.8)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ._validate import check_policy_numbers
from .commit import CommitRule

CACHE_MODES = ("none", "prefix", "dual", "delayed")
SCHEDULERS = ("blocks", "multi_block")
# Dream's first forward of a block (``ar_first_token``): one token, at the block's first position
FIRST_TOKEN_RULE = CommitRule(base="topk")


@dataclass(frozen=True)
class Policy:
    """One decoding policy.

    Attributes:
        name: label used in tables.
        rule: the commit rule of every step (:class:`CommitRule`).
        scheduler: ``"blocks"``: one block at a time, forwards until it is complete (or exactly
            ``steps_per_block`` forwards); ``"multi_block"``: d3LLM's pipelined blocks.
        cache: ``"none"``: every forward sees the whole canvas; ``"prefix"`` (Fast-dLLM): a block's
            first forward is full and fills the cache, later ones forward the block and everything
            after it against the cached prefix; ``"dual"`` (Fast-dLLM): later forwards see only the
            block, against the cached prefix and (stale) suffix; ``"delayed"`` (d3LLM): completed
            blocks enter the cache ``cache_delay`` steps after completing, with a full refresh
            forward every ``refresh_interval`` steps and while a block stabilises. Unlike the
            published code, whose concatenated cache can hold a position twice after a refresh
            while two blocks stabilise, the cache is indexed by position (tests/fidelity/README.md).
        steps_per_block: > 0: LLaDA's fixed schedule, exactly this many forwards per block, each
            committing its share of the block's masks (needs ``rule.base == "topk"``); 0 with
            "topk" means one token per step (``block_length`` steps).
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
        d3_stale_candidates: d3LLM quirk, on by default for fidelity: the candidates of a step are
            the masks before that step's early-stop fill, so a position filled with EOS can still
            take a proposal in the same step (the next step's fill overwrites it again).
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
        if self.steps_per_block and self.rule.base != "topk":
            raise ValueError(f"policy {self.name}: steps_per_block needs the 'topk' rule")
        check_policy_numbers(self)
        if self.suffix_window is not None and (self.suffix_window < 0 or self.cache == "dual"):
            raise ValueError(f"policy {self.name}: suffix_window must be >= 0 and needs cache 'none' or 'prefix'")

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


def vanilla(steps_per_block: int = 0, suppress_eos: bool = False, confidence_eos_eot_inf: bool = False) -> Policy:
    """LLaDA: no cache, a fixed number of forwards per block, top-k lowest-confidence remasking
    (``steps_per_block=0``: one token per forward)."""
    return Policy(
        "vanilla",
        CommitRule(base="topk", commit_best=False),
        steps_per_block=steps_per_block,
        suppress_eos=suppress_eos,
        confidence_eos_eot_inf=confidence_eos_eot_inf,
    )


def fast_dllm(threshold: float = 0.9, cache: str = "prefix", skip_idle_forward: bool = False) -> Policy:
    """Fast-dLLM: commit ``{argmax} ∪ {prob >= threshold}`` with a prefix (or dual, or no) cache.

    With a cache, by default every forward the published code runs is run and counted, including
    the cached forward after a block's first forward that found the block complete
    (:attr:`Policy.idle_forward`); ``skip_idle_forward=True`` moves on to the next block instead
    (same tokens, fewer forwards)."""
    return Policy(
        "fast_dllm",
        CommitRule(base="threshold", threshold=threshold),
        cache=cache,
        idle_forward=cache in ("prefix", "dual") and not skip_idle_forward,
    )


def streaming(threshold: float = 0.9, alpha: float = 0.3, window: int = 96, early_exit: bool = True) -> Policy:
    """Streaming-dLLM: prefix cache, suffix pruned to ``window`` positions + the last one, dynamic
    threshold ``tau0 * (1 - alpha * (1 - r_mask))`` after a block's first forward, early exit."""
    return Policy(
        "streaming",
        CommitRule(base="dynamic", threshold=threshold, alpha=alpha, suffix_window=window),
        cache="prefix",
        block_start_rule=CommitRule(base="threshold", threshold=threshold),
        suffix_window=window,
        early_exit=early_exit,
    )


def r2(
    threshold: float = 0.9,
    window: int = 3,
    max_decided: int = 1,
    spatial_threshold: float = 0.8,
    token_cluster: bool = True,
    temporal_steps: int = 3,
    temporal_threshold: float = 0.8,
    temporal_agg: str = "last",
    cache: str = "dual",
    cluster_min_len: int = 2,
) -> Policy:
    """R2-dLLM: Fast-dLLM's threshold, then confidence-cluster windows, token clusters and temporal
    stability, on the dual cache."""
    return Policy(
        "r2",
        CommitRule(
            base="threshold",
            threshold=threshold,
            spatial_window=window,
            spatial_max_decided=max_decided,
            spatial_threshold=spatial_threshold,
            token_cluster=token_cluster,
            temporal_steps=temporal_steps,
            temporal_threshold=temporal_threshold,
            temporal_agg=temporal_agg,
            cluster_min_len=cluster_min_len,
        ),
        cache=cache,
    )


def d3llm(
    threshold: float = 0.5,
    strict: bool = False,
    commit_best: bool = True,
    block_add_threshold: float = 0.1,
    decoded_token_threshold: float = 0.95,
    cache: str = "delayed",
    cache_delay: int = 2,
    refresh_interval: int = 3,
    early_stop: bool = True,
) -> Policy:
    """d3LLM (LLaDA settings): entropy commit over all added blocks, pipelined multi-block
    decoding, delayed cache with periodic refresh, early stop."""
    return Policy(
        "d3llm",
        CommitRule(base="entropy", entropy_threshold=threshold, entropy_strict=strict, commit_best=commit_best),
        scheduler="multi_block",
        cache=cache,
        early_stop=early_stop,
        block_add_threshold=block_add_threshold,
        decoded_token_threshold=decoded_token_threshold,
        cache_delay=cache_delay,
        refresh_interval=refresh_interval,
    )


def d3llm_dream(**overrides) -> Policy:
    """d3LLM's Dream settings: strict ``H < 0.4``, no global lowest-H commit, cache delay 1, no
    periodic refresh."""
    kw = dict(threshold=0.4, strict=True, commit_best=False, cache_delay=1, refresh_interval=10000)
    return dataclasses.replace(d3llm(**{**kw, **overrides}), name="d3llm_dream")


POLICIES = {
    "vanilla": vanilla,
    "fast_dllm": fast_dllm,
    "streaming": streaming,
    "r2": r2,
    "d3llm": d3llm,
    "d3llm_dream": d3llm_dream,
}


# rule variants reachable by a constructor argument that are compiled ahead of time besides
# every policy's defaults: label -> (policy, overrides)
RULE_VARIANTS = {"r2_mean": ("r2", {"temporal_agg": "mean"})}

# rules launched outside generate() that are compiled ahead of time too: the SGLang plugin's
# LowConfidence (strict threshold 0.95, its own fallback as the force region) and JointThreshold
# (LLaDA2.1: strict threshold 0.5, i.e. the next fp32 above it, plus token editing);
# dllm_kernels.integrations.sglang builds both from their YAML options
SERVING_RULES = {
    "low_confidence": CommitRule(threshold=0.95000005, commit_best=False),  # SGLang's LowConfidence
    "llada21_edit": CommitRule(threshold=0.50000006, commit_best=False, token_edit=True),
}


def compiled_rules() -> dict[str, CommitRule]:
    """The commit rules compiled ahead of time (``python -m dllm_kernels.kernels._aot``), one entry
    per distinct rule: every rule that every policy of :data:`POLICIES` launches at its defaults,
    also with Dream's ``ar_first_token`` (labels ``name``, ``name.block_start``, ``first_token``),
    the :data:`RULE_VARIANTS` and the :data:`SERVING_RULES`."""
    policies = {name: make() for name, make in POLICIES.items()}
    policies.update({label: POLICIES[name](**kw) for label, (name, kw) in RULE_VARIANTS.items()})
    out: dict[str, CommitRule] = {}
    for name, p in policies.items():
        for q in (p, dataclasses.replace(p, ar_first_token=True)):
            for role, rule in q.launched_rules().items():
                label = {"main": name, "first_token": "first_token"}.get(role, f"{name}.{role}")
                if rule not in out.values():
                    out[label] = rule
    out.update({label: rule for label, rule in SERVING_RULES.items() if rule not in out.values()})
    return out


def resolve_policy(
    policy: str | Policy, *, gen_length: int | None = None, block_length: int | None = None, **overrides
) -> Policy:
    """A named policy with its constructor's keyword overrides, or a :class:`Policy` as is
    (then ``overrides`` replace its fields). The public repos' option names are accepted as
    aliases (:mod:`dllm_kernels.policy_aliases`); ``gen_length`` / ``block_length`` turn LLaDA's
    total ``steps`` into ``steps_per_block``."""
    from .policy_aliases import public_aliases

    overrides = public_aliases(policy, overrides, gen_length=gen_length, block_length=block_length)
    if isinstance(policy, Policy):
        return dataclasses.replace(policy, **overrides) if overrides else policy
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; known: {sorted(POLICIES)}")
    try:
        return POLICIES[policy](**overrides)
    except TypeError as e:  # an unknown keyword; the policy's own checks already name it
        raise TypeError(str(e) if str(e).startswith(f"policy {policy}:") else f"policy {policy!r}: {e}") from None
