"""The published decoders, one section each: every fact about a decoder is written here once.

A section holds a :class:`Decoder` record (the constructor's defaults, the public repo's option
names accepted as aliases, the SGLang algorithm's option names and defaults, the evaluation
sweeps) and the policy constructor, whose defaults are read from that record. The serving rules
(SGLang's ``LowConfidence`` and LLaDA2.1's ``JointThreshold``) have a :class:`ServingRule` record
each. What other modules used to spell out is derived from these records at the bottom of this
file: :data:`POLICIES`, :data:`RULE_VARIANTS`, :data:`SERVING_RULES`, :func:`compiled_rules`;
``dllm_kernels.integrations.sglang`` builds its ``OPTIONS`` and rules from :attr:`Decoder.sglang`,
``dllm_kernels.addition.evaluate`` its sweeps from :attr:`Decoder.quick_sweep` /
:attr:`Decoder.full_sweep`, and :func:`dllm_kernels.policies.public_aliases` applies
:attr:`Decoder.aliases`. :func:`markdown_table` renders the records for the docs.

Every number can be overridden: ``generate(model, prompt, policy="fast_dllm", threshold=0.8)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._validate import check_int
from ..commit import CommitRule
from .base import Policy, strict_threshold


@dataclass(frozen=True, eq=False)
class Alias:
    """A public repo's keyword accepted in place of one of ours: ``public`` is renamed to ``ours``
    (both given: an error), then ``convert(label, value)``, if set, maps a public value of
    ``ours`` (given under either name) to ours or raises naming it."""

    public: str
    ours: str
    convert: Callable[[str, Any], Any] | None = None
    note: str = ""  # the value map, for the docs table


@dataclass(frozen=True, eq=False)
class SGLangAlgorithm:
    """A decoding algorithm of the SGLang plugin (``dllm_kernels.integrations.sglang``).

    ``options``: YAML option -> default, in order (``backend`` is every algorithm's own, added by
    the plugin); ``keywords``: option -> the policy constructor's keyword whose default it takes;
    ``rule``: the :class:`CommitRule` of the parsed options."""

    name: str
    options: Mapping[str, Any]
    rule: Callable[[Mapping[str, Any]], CommitRule]
    keywords: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _sglang(name: str, defaults: Mapping[str, Any], rule, **keywords: str) -> SGLangAlgorithm:
    """An algorithm whose options (``option=keyword``) default to the policy's ``defaults``."""
    return SGLangAlgorithm(name, {opt: defaults[kw] for opt, kw in keywords.items()}, rule, keywords)


@dataclass(frozen=True, eq=False)
class Decoder:
    """One published decoder: the facts its constructor, aliases, SGLang algorithm and evaluation
    sweeps are derived from.

    Attributes:
        name: the policy's name (``generate(..., policy=name)``).
        title / repo: the paper's name and its public code.
        defaults: the constructor's keywords and their defaults, in signature order.
        aliases: the public repo's keywords that are plain renames (with an optional value map).
        adapt: ``adapt(label, overrides, gen_length, block_length)`` applies the public options
            that are no plain rename (in place); ``alias_notes`` describes them for the docs.
        sglang: the SGLang plugin's algorithm for this decoder's rule (None: none).
        quick_sweep / full_sweep: the evaluation's constructor overrides, from the most careful
            setting to the most parallel.
        variants: label -> overrides: rules reachable by a constructor argument that are compiled
            ahead of time besides the defaults' (:data:`RULE_VARIANTS`).
    """

    name: str
    title: str
    repo: str
    defaults: Mapping[str, Any]
    aliases: tuple[Alias, ...] = ()
    adapt: Callable[[str, dict, int | None, int | None], None] | None = None
    alias_notes: tuple[tuple[str, str], ...] = ()  # (public, ours), markdown
    sglang: SGLangAlgorithm | None = None
    quick_sweep: tuple[Mapping[str, Any], ...] = ()
    full_sweep: tuple[Mapping[str, Any], ...] = ()
    variants: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class ServingRule:
    """A rule launched by a serving engine rather than by ``generate``, compiled ahead of time
    (:data:`SERVING_RULES`: its rule at the algorithm's default options)."""

    name: str
    title: str
    sglang: SGLangAlgorithm


# ------------------------------------------------------------------------------------------------
# shared public options
# ------------------------------------------------------------------------------------------------

_CACHE_FLAGS = ("use_cache", "dual_cache")


def _pop_cache_flags(label: str, out: dict) -> tuple[bool, bool] | None:
    """Fast-dLLM's ``use_cache`` / ``dual_cache`` booleans, removed from ``out``; None if absent."""
    if not any(k in out for k in _CACHE_FLAGS):
        return None
    flags = {k: out.pop(k) for k in _CACHE_FLAGS if k in out}
    for k, v in flags.items():
        if not isinstance(v, bool):
            raise TypeError(f"{label}: {k} must be a bool, got {v!r}")
    if "cache" in out:
        raise ValueError(f"{label}: {'/'.join(flags)} are the public spelling of cache; pass one of them, not both")
    return flags.get("use_cache", True), flags.get("dual_cache", False)


def _cache_modes(label: str, out: dict, gen_length=None, block_length=None) -> None:
    """``use_cache`` / ``dual_cache`` -> ``cache``: "none" / "prefix" / "dual"."""
    flags = _pop_cache_flags(label, out)
    if flags is None:
        return
    use, dual = flags
    if dual and not use:
        raise ValueError(f"{label}: dual_cache=True contradicts use_cache=False")
    out["cache"] = "dual" if dual else ("prefix" if use else "none")


_CACHE_NOTES = (("`use_cache`, `dual_cache`", '`cache`: "none" / "prefix" / "dual"'),)


# ------------------------------------------------------------------------------------------------
# LLaDA (vanilla)
# ------------------------------------------------------------------------------------------------


def _llada_schedule(label: str, out: dict, gen_length, block_length) -> None:
    """LLaDA's ``remasking`` (low_confidence only) and total ``steps`` -> ``steps_per_block``."""
    remasking = out.pop("remasking", "low_confidence")
    if remasking != "low_confidence":
        raise ValueError(f"{label}: remasking must be 'low_confidence' (the only rule here), got {remasking!r}")
    if "steps" not in out:
        return
    if "steps_per_block" in out:
        raise ValueError(f"{label}: steps (LLaDA's total) and steps_per_block both given; pass one of them")
    steps = check_int(label, "steps", out.pop("steps"), low=1)
    if gen_length is None or block_length is None:
        raise ValueError(
            f"{label}: steps (LLaDA's total over gen_length) needs gen_length and block_length: "
            "pass it to generate, or use steps_per_block"
        )
    blocks = max(1, gen_length // block_length) if isinstance(gen_length, int) and isinstance(block_length, int) else 1
    if steps % blocks:
        raise ValueError(f"{label}: steps ({steps}) must be a multiple of the number of blocks ({blocks}), as in LLaDA")
    out["steps_per_block"] = steps // blocks


VANILLA = Decoder(
    name="vanilla",
    title="LLaDA",
    repo="ML-GSAI/LLaDA",
    defaults={"steps_per_block": 0, "suppress_eos": False, "confidence_eos_eot_inf": False},
    aliases=(Alias("logits_eos_inf", "suppress_eos"),),
    adapt=_llada_schedule,
    alias_notes=(
        ("`steps` (total)", "`steps_per_block = steps // blocks`"),
        ('`remasking="low_confidence"`', '(the only rule; `"random"` rejected)'),
    ),
    # forwards per block: one token per step, then two, four
    quick_sweep=({"steps_per_block": 4}, {"steps_per_block": 2}),
    full_sweep=tuple({"steps_per_block": k} for k in (0, 4, 2)),
)


def vanilla(
    steps_per_block: int = VANILLA.defaults["steps_per_block"],
    suppress_eos: bool = VANILLA.defaults["suppress_eos"],
    confidence_eos_eot_inf: bool = VANILLA.defaults["confidence_eos_eot_inf"],
) -> Policy:
    """LLaDA: no cache, a fixed number of forwards per block, top-k lowest-confidence remasking
    (``steps_per_block=0``: one token per forward)."""
    return Policy(
        "vanilla",
        CommitRule(base="topk", commit_best=False),
        steps_per_block=steps_per_block,
        suppress_eos=suppress_eos,
        confidence_eos_eot_inf=confidence_eos_eot_inf,
    )


# ------------------------------------------------------------------------------------------------
# Fast-dLLM
# ------------------------------------------------------------------------------------------------

_TAUS_QUICK = (0.99, 0.9, 0.7)
_TAUS_FULL = (0.999, 0.99, 0.95, 0.9, 0.8, 0.7)

_FAST_DLLM_DEFAULTS = {"threshold": 0.9, "cache": "prefix", "skip_idle_forward": False}
FAST_DLLM = Decoder(
    name="fast_dllm",
    title="Fast-dLLM",
    repo="NVlabs/Fast-dLLM",
    defaults=_FAST_DLLM_DEFAULTS,
    adapt=_cache_modes,
    alias_notes=_CACHE_NOTES,
    sglang=_sglang(
        "DllmKernelsFastDllm",
        _FAST_DLLM_DEFAULTS,
        lambda o: CommitRule(base="threshold", threshold=o["threshold"]),
        threshold="threshold",
    ),
    quick_sweep=tuple({"threshold": t} for t in _TAUS_QUICK),
    full_sweep=tuple({"threshold": t} for t in _TAUS_FULL),
)


def fast_dllm(
    threshold: float = FAST_DLLM.defaults["threshold"],
    cache: str = FAST_DLLM.defaults["cache"],
    skip_idle_forward: bool = FAST_DLLM.defaults["skip_idle_forward"],
) -> Policy:
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


# ------------------------------------------------------------------------------------------------
# Streaming-dLLM
# ------------------------------------------------------------------------------------------------


def _prefix_cache_only(label: str, out: dict, gen_length=None, block_length=None) -> None:
    """``use_cache=True`` (no ``dual_cache``): the prefix cache, the only one Streaming-dLLM has."""
    flags = _pop_cache_flags(label, out)
    if flags is not None and (not flags[0] or flags[1]):
        raise ValueError(f"{label}: Streaming-dLLM runs on the prefix cache only (use_cache=True, no dual_cache)")


_STREAMING_DEFAULTS = {"threshold": 0.9, "alpha": 0.3, "window": 96, "early_exit": True}
STREAMING = Decoder(
    name="streaming",
    title="Streaming-dLLM",
    repo="xiaoshideta/Streaming-dLLM",
    defaults=_STREAMING_DEFAULTS,
    aliases=(Alias("window_size", "window"), Alias("confidence_alpha", "alpha")),
    adapt=_prefix_cache_only,
    alias_notes=(("`use_cache=True`", "(prefix cache, the only one)"),),
    # SGLang forwards no suffix: the dynamic threshold's r_mask is over the block (suffix_window 0)
    sglang=_sglang(
        "DllmKernelsStreamingDllm",
        _STREAMING_DEFAULTS,
        lambda o: CommitRule(base="dynamic", threshold=o["threshold"], alpha=o["alpha"]),
        threshold="threshold",
        alpha="alpha",
    ),
    quick_sweep=tuple({"threshold": t} for t in _TAUS_QUICK),
    full_sweep=tuple({"threshold": t} for t in _TAUS_FULL),
)


def streaming(
    threshold: float = STREAMING.defaults["threshold"],
    alpha: float = STREAMING.defaults["alpha"],
    window: int = STREAMING.defaults["window"],
    early_exit: bool = STREAMING.defaults["early_exit"],
) -> Policy:
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


# ------------------------------------------------------------------------------------------------
# R2-dLLM
# ------------------------------------------------------------------------------------------------


def _r2_temporal_agg(label: str, value):
    """R2's ``temporal_eval`` value ``"ave"`` is our ``"mean"``."""
    return "mean" if value == "ave" else value


def _r2_token_cluster(label: str, value):
    """R2's ``token_cluster``: ``"confidence"`` -> True, None / ``"none"`` -> False."""
    if value is None or value in ("none", "None"):
        return False
    if value == "confidence":
        return True
    if isinstance(value, str):
        raise ValueError(
            f"{label}: token_cluster must be a bool or 'confidence' (R2's 'mid' and 'random' "
            f"variants are not implemented), got {value!r}"
        )
    return value


def _r2_sweep(*taus: float) -> tuple[dict, ...]:
    # R2-dLLM's spatial and temporal gates (0.8 by default) commit on their own, below tau: they
    # follow tau (at tau - 0.1) so that its curve spans careful to parallel too
    return tuple(
        {"threshold": t, "spatial_threshold": round(t - 0.1, 3), "temporal_threshold": round(t - 0.1, 3)} for t in taus
    )


_R2_DEFAULTS = {
    "threshold": 0.9,
    "window": 3,
    "max_decided": 1,
    "spatial_threshold": 0.8,
    "token_cluster": True,
    "temporal_steps": 3,
    "temporal_threshold": 0.8,
    "temporal_agg": "last",
    "cache": "dual",
    "cluster_min_len": 2,
}
# SGLang option (the CommitRule field) -> the constructor's keyword
_R2_RULE_FIELDS = {
    "threshold": "threshold",
    "spatial_window": "window",
    "spatial_max_decided": "max_decided",
    "spatial_threshold": "spatial_threshold",
    "token_cluster": "token_cluster",
    "cluster_min_len": "cluster_min_len",
    "temporal_steps": "temporal_steps",
    "temporal_threshold": "temporal_threshold",
    "temporal_agg": "temporal_agg",
}
R2 = Decoder(
    name="r2",
    title="R2-dLLM",
    repo="GATECH-EIC/R2-dLLM",
    defaults=_R2_DEFAULTS,
    aliases=(
        Alias("confidence_cluster_size", "window"),
        Alias("confidence_cluster_unmasked", "max_decided"),
        Alias("token_cluster", "token_cluster", _r2_token_cluster, '"confidence": True, None/"none": False'),
        Alias("token_cluster_size", "cluster_min_len"),
        Alias("temporal_eval", "temporal_agg", _r2_temporal_agg, '"ave" = "mean"'),
    ),
    adapt=_cache_modes,
    alias_notes=_CACHE_NOTES,
    sglang=_sglang(
        "DllmKernelsR2Dllm",
        _R2_DEFAULTS,
        lambda o: CommitRule(base="threshold", **{k: o[k] for k in _R2_RULE_FIELDS}),
        **_R2_RULE_FIELDS,
    ),
    quick_sweep=_r2_sweep(*_TAUS_QUICK),
    full_sweep=_r2_sweep(*_TAUS_FULL),
    variants={"r2_mean": {"temporal_agg": "mean"}},
)


def r2(
    threshold: float = R2.defaults["threshold"],
    window: int = R2.defaults["window"],
    max_decided: int = R2.defaults["max_decided"],
    spatial_threshold: float = R2.defaults["spatial_threshold"],
    token_cluster: bool = R2.defaults["token_cluster"],
    temporal_steps: int = R2.defaults["temporal_steps"],
    temporal_threshold: float = R2.defaults["temporal_threshold"],
    temporal_agg: str = R2.defaults["temporal_agg"],
    cache: str = R2.defaults["cache"],
    cluster_min_len: int = R2.defaults["cluster_min_len"],
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


# ------------------------------------------------------------------------------------------------
# d3LLM (LLaDA settings, and Dream's)
# ------------------------------------------------------------------------------------------------

_D3LLM_DEFAULTS = {
    "threshold": 0.5,
    "strict": False,
    "commit_best": True,
    "block_add_threshold": 0.1,
    "decoded_token_threshold": 0.95,
    "cache": "delayed",
    "cache_delay": 2,
    "refresh_interval": 3,
    "early_stop": True,
}
_D3LLM_ALIASES = (Alias("cache_delay_iter", "cache_delay"),)
D3LLM = Decoder(
    name="d3llm",
    title="d3LLM (LLaDA)",
    repo="hao-ai-lab/d3LLM",
    defaults=_D3LLM_DEFAULTS,
    aliases=_D3LLM_ALIASES,
    sglang=_sglang(
        "DllmKernelsD3LLM",
        _D3LLM_DEFAULTS,
        lambda o: CommitRule(
            base="entropy",
            entropy_threshold=o["entropy_threshold"],
            entropy_strict=o["entropy_strict"],
            commit_best=o["commit_best"],
        ),
        entropy_threshold="threshold",
        entropy_strict="strict",
        commit_best="commit_best",
    ),
    # the entropy threshold, from the most careful to the most parallel
    quick_sweep=tuple({"threshold": h} for h in (0.05, 0.2, 0.5)),
    full_sweep=tuple({"threshold": h} for h in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)),
)


def d3llm(
    threshold: float = D3LLM.defaults["threshold"],
    strict: bool = D3LLM.defaults["strict"],
    commit_best: bool = D3LLM.defaults["commit_best"],
    block_add_threshold: float = D3LLM.defaults["block_add_threshold"],
    decoded_token_threshold: float = D3LLM.defaults["decoded_token_threshold"],
    cache: str = D3LLM.defaults["cache"],
    cache_delay: int = D3LLM.defaults["cache_delay"],
    refresh_interval: int = D3LLM.defaults["refresh_interval"],
    early_stop: bool = D3LLM.defaults["early_stop"],
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


# Dream's settings: strict H < 0.4, no global lowest-H commit, cache delay 1, no periodic refresh
D3LLM_DREAM = Decoder(
    name="d3llm_dream",
    title="d3LLM (Dream)",
    repo="hao-ai-lab/d3LLM",
    defaults={
        **_D3LLM_DEFAULTS,
        "threshold": 0.4,
        "strict": True,
        "commit_best": False,
        "cache_delay": 1,
        "refresh_interval": 10000,
    },
    aliases=_D3LLM_ALIASES,
)


def d3llm_dream(**overrides) -> Policy:
    """d3LLM's Dream settings: strict ``H < 0.4``, no global lowest-H commit, cache delay 1, no
    periodic refresh."""
    return dataclasses.replace(d3llm(**{**D3LLM_DREAM.defaults, **overrides}), name="d3llm_dream")


# ------------------------------------------------------------------------------------------------
# SDAR (block diffusion)
# ------------------------------------------------------------------------------------------------

# generate.py's remasking strategies (L147-194) that are reproduced; "entropy_bounded" is broken as
# published (tests/fidelity/README.md) and rejected
SDAR_REMASKING = ("low_confidence_dynamic", "low_confidence_static", "sequential")


def _sdar_stop_ids(label: str, value):
    """SDAR's ``stopping_criteria_idx`` (a list of ids, or None: no stop) -> a tuple."""
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    return tuple(value)


_SDAR_DEFAULTS = {
    "remasking": "low_confidence_dynamic",
    "threshold": 0.85,
    # denoising_steps: 0 = block_length, one token per step (the script's 4 steps for blocks of 4;
    # the only ratio reproduced)
    "steps_per_block": 0,
    # the script's stop ids: the release's generation_config eos_token_id (<|im_end|>, <|endoftext|>)
    "stop_ids": (151645, 151643),
}
SDAR = Decoder(
    name="sdar",
    title="SDAR",
    repo="JetAstra/SDAR",
    defaults=_SDAR_DEFAULTS,
    aliases=(
        Alias("remasking_strategy", "remasking"),
        Alias("confidence_threshold", "threshold"),
        Alias("denoising_steps", "steps_per_block"),
        Alias("stopping_criteria_idx", "stop_ids", _sdar_stop_ids, "a list -> a tuple, None -> ()"),
    ),
    # the block-diffusion addition model's sweep: the static rule (one token per step), then tau
    quick_sweep=({"remasking": "low_confidence_static"}, {"threshold": 0.9}, {"threshold": 0.7}),
    full_sweep=({"remasking": "low_confidence_static"}, *({"threshold": t} for t in (0.95, 0.9, 0.85, 0.7))),
)


def sdar(
    remasking: str = SDAR.defaults["remasking"],
    threshold: float = SDAR.defaults["threshold"],
    steps_per_block: int = SDAR.defaults["steps_per_block"],
    stop_ids: tuple[int, ...] = SDAR.defaults["stop_ids"],
) -> Policy:
    """SDAR's ``block_diffusion_generate`` (greedy): block-causal decoding with the completed
    blocks as the exact KV cache (:attr:`Policy.scheduler` ``"block_causal"``), ``steps_per_block``
    denoising forwards at most per block (0 or ``block_length``: one token per step), and the
    remasking strategy ``remasking``:

    - ``"low_confidence_dynamic"``: every masked position with ``prob > threshold`` (strict),
      else the most confident one (``{argmax} ∪ {prob > threshold}`` at one token per step);
    - ``"low_confidence_static"``: the most confident masked position (``torch.topk``);
    - ``"sequential"``: the block's first masked position.

    Greedy means SDAR's T = 1 softmax with the multinomial draw replaced by its argmax: proposal
    ``argmax``, confidence ``softmax(logits)[argmax]`` (tests/fidelity/README.md)."""
    if remasking not in SDAR_REMASKING:
        raise ValueError(f"sdar: remasking must be one of {SDAR_REMASKING}, got {remasking!r}")
    if remasking == "low_confidence_dynamic":
        rule = CommitRule(base="threshold", threshold=strict_threshold(threshold))
    else:
        rule = CommitRule(base="topk", commit_best=False)
    return Policy(
        "sdar",
        rule,
        scheduler="block_causal",
        cache="blocks",
        steps_per_block=steps_per_block,
        commit_in_order=remasking == "sequential",
        stop_ids=tuple(stop_ids),
    )


# ------------------------------------------------------------------------------------------------
# Fast-dLLM v2 (block diffusion)
# ------------------------------------------------------------------------------------------------


def _fdv2_stop(label: str, value):
    """Fast-dLLM v2's ``stop_token`` (one id) -> ``stop_ids``."""
    return _sdar_stop_ids(label, value)


def _fdv2_options(label: str, out: dict, gen_length=None, block_length=None) -> None:
    """``use_block_cache`` -> ``sub_block_cache`` (a bool, not both)."""
    if "use_block_cache" in out:
        if "sub_block_cache" in out:
            raise ValueError(
                f"{label}: use_block_cache is the public name of sub_block_cache; pass one of them, not both"
            )
        out["sub_block_cache"] = out.pop("use_block_cache")


_FDV2_DEFAULTS = {
    "threshold": 0.9,
    "sub_block": 8,
    # batch_sample's stop_token (<|im_end|>) and the pad that follows it (the tokenizer's <|endoftext|>)
    "stop_ids": (151645,),
    "stop_fill": 151643,
    # eval.py's use_block_cache=False
    "sub_block_cache": False,
}
FAST_DLLM_V2 = Decoder(
    name="fast_dllm_v2",
    title="Fast-dLLM v2",
    repo="NVlabs/Fast-dLLM (v2/)",
    defaults=_FDV2_DEFAULTS,
    aliases=(
        Alias("small_block_size", "sub_block"),
        Alias("stop_token", "stop_ids", _fdv2_stop, "an id -> a one-id tuple"),
    ),
    adapt=_fdv2_options,
    alias_notes=(("`use_block_cache`", "`sub_block_cache`"),),
    # eval_script.sh's 1 (one token per step, the argmax), eval.py's 0.9, then lower
    quick_sweep=tuple({"threshold": t} for t in (1.0, 0.9, 0.7)),
    full_sweep=tuple({"threshold": t} for t in (1.0, *_TAUS_FULL)),
)


def fast_dllm_v2(
    threshold: float = FAST_DLLM_V2.defaults["threshold"],
    sub_block: int = FAST_DLLM_V2.defaults["sub_block"],
    stop_ids: tuple[int, ...] = FAST_DLLM_V2.defaults["stop_ids"],
    stop_fill: int | None = FAST_DLLM_V2.defaults["stop_fill"],
    sub_block_cache: bool = FAST_DLLM_V2.defaults["sub_block_cache"],
) -> Policy:
    """Fast-dLLM v2's ``batch_sample``: block-causal decoding with the
    completed blocks as the exact KV cache (:attr:`Policy.scheduler` ``"block_causal"``); each
    forward runs the whole block against it and commits inside the block's first sub-block of
    ``sub_block`` positions that holds a mask, ``{argmax} ∪ {prob > threshold}`` (strict; at
    threshold 1 one token per forward), on the model's token-shifted logits; a completed block's
    cache-update forward also commits the next block's first token (the block's last row,
    unshifted: :attr:`Policy.inherit_first_token`). A row that committed a stop id ends with its
    block, without the update forward, every later position becoming ``stop_fill``.
    ``sub_block_cache`` (its ``use_block_cache``): once the block's forward has cached the block,
    the forwards of a sub-block whose first position is committed run that sub-block alone
    against it (:attr:`Policy.sub_block_cache`)."""
    return Policy(
        "fast_dllm_v2",
        CommitRule(base="threshold", threshold=strict_threshold(threshold)),
        scheduler="block_causal",
        cache="blocks",
        sub_block=sub_block,
        inherit_first_token=True,
        stop_ids=tuple(stop_ids),
        stop_fill=stop_fill,
        sub_block_cache=sub_block_cache,
    )


# ------------------------------------------------------------------------------------------------
# serving rules (SGLang's own algorithms, reproduced exactly)
# ------------------------------------------------------------------------------------------------

# SGLang's LowConfidence: prob > threshold (strict, SGLang's fp32 comparison), else SGLang's
# own fallback position as the force region (no commit_best)
LOW_CONFIDENCE = ServingRule(
    name="low_confidence",
    title="SGLang LowConfidence",
    sglang=SGLangAlgorithm(
        "DllmKernelsLowConfidence",
        {"threshold": 0.95},
        lambda o: CommitRule(base="threshold", threshold=strict_threshold(o["threshold"]), commit_best=False),
    ),
)

# SGLang's JointThreshold (LLaDA2.1): the same strict mask-to-token threshold, plus token editing
# of the block's earlier commits with prob > edit_threshold
JOINT_THRESHOLD = ServingRule(
    name="llada21_edit",
    title="SGLang JointThreshold (LLaDA2.1)",
    sglang=SGLangAlgorithm(
        "DllmKernelsJointThreshold",
        {
            "threshold": 0.5,
            "edit_threshold": 0.0,
            "max_post_edit_steps": 16,
            "penalty_lambda": 0.0,
            "vectorized_decoding": False,
        },
        lambda o: CommitRule(
            base="threshold",
            threshold=strict_threshold(o["threshold"]),
            commit_best=False,
            token_edit=True,
            edit_threshold=o["edit_threshold"],
        ),
    ),
)


# SGLang's JointThresholdInDel (LLaDA2.2): JointThreshold's options (no penalty_lambda, no
# vectorized_decoding) with its defaults. Its commit is not the commit op's (one more transfer
# per created MASK, torch.topk's choice, MASK/DELETE/SPLIT writes, the final cleanup): the
# plugin computes the selection with device tensor ops and applies DELETE/SPLIT with the
# block_edit op. The rule below (JointThreshold's at these options) states its two thresholds.
JOINT_THRESHOLD_INDEL = ServingRule(
    name="llada22_indel",
    title="SGLang JointThresholdInDel (LLaDA2.2)",
    sglang=SGLangAlgorithm(
        "DllmKernelsJointThresholdInDel",
        {"threshold": 0.5, "edit_threshold": 0.0, "max_post_edit_steps": 16},
        lambda o: CommitRule(
            base="threshold",
            threshold=strict_threshold(o["threshold"]),
            commit_best=False,
            token_edit=True,
            edit_threshold=o["edit_threshold"],
        ),
    ),
)


# ------------------------------------------------------------------------------------------------
# uniform-state rules (engines' own samplers, compiled ahead of time; SGLang: GEMMA4_RENOISE below)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class UniformStateRule:
    """An engine's uniform-state sampler (no MASK token; rejected positions are re-noised), as the
    commit rule ``rule(options)`` of its default ``options`` (the engine's option names).

    ``engines``: engine -> where the numbers are read and how they map onto the rule's fields."""

    name: str
    title: str
    options: Mapping[str, Any]
    rule: Callable[[Mapping[str, Any]], CommitRule]
    engines: Mapping[str, str] = dataclasses.field(default_factory=dict)


# DiffusionGemma (DiffusionGemmaForBlockDiffusion): SGLang 0.5.23's Gemma4Renoise and vLLM 0.33's
# DiffusionGemma sampler. Both accept where the entropies ranked before a position sum to
# <= entropy_bound, re-noise the rest with randint(V), and stop when the argmax canvas is stable
# and the mean entropy is < confidence_threshold, or after max_denoising_steps. SGLang's
# stability_threshold S counts the previous steps that must equal the current argmax; vLLM passes
# S + 1 as its history length ST (the current step included): our stability_steps is ST = S + 1.
DIFFUSION_GEMMA = UniformStateRule(
    name="diffusion_gemma",
    title="DiffusionGemma renoise (SGLang Gemma4Renoise, vLLM DiffusionGemma sampler)",
    options={
        "entropy_bound": 0.1,
        "confidence_threshold": 0.005,
        "stability_threshold": 1,
        "max_denoising_steps": 48,
    },
    rule=lambda o: CommitRule(
        base="entropy_bound",
        entropy_bound=o["entropy_bound"],
        renoise=True,
        confidence_threshold=o["confidence_threshold"],
        stability_steps=o["stability_threshold"] + 1,
        max_steps=o["max_denoising_steps"],
    ),
    engines={
        "sglang": "Gemma4Renoise algorithm_config: sampler_config.entropy_bound, stopping_config."
        "{confidence_threshold, stability_threshold}, max_denoising_steps (defaults as options)",
        "vllm": "generation_config: sampler_config.entropy_bound, confidence_threshold, "
        "stability_threshold (+1 -> ST), max_denoising_steps (default 48)",
    },
)


# SGLang 0.5.23's Gemma4Renoise algorithm_config, served on the kernels by the plugin's
# DllmKernelsGemma4Renoise (dllm_kernels.integrations.sglang): its options and defaults, in the order
# SGLang's __init__ reads them, and (GEMMA4_RENOISE_SECTIONS) the YAML mapping each is read from
# first: SGLang reads entropy_bound from sampler_config only, t_min / t_max from
# temperature_schedule, confidence_threshold / stability_threshold from stopping_config, each of
# these four falling back to the top level; the others are top-level keys. The commit rule is
# DIFFUSION_GEMMA's (same option names). use_temperature_table is an SGLang switch between two
# equal temperature paths (accepted, no effect on the kernels' path).
GEMMA4_RENOISE = SGLangAlgorithm(
    "DllmKernelsGemma4Renoise",
    {
        "max_denoising_steps": DIFFUSION_GEMMA.options["max_denoising_steps"],
        "entropy_bound": DIFFUSION_GEMMA.options["entropy_bound"],
        "t_min": 0.4,
        "t_max": 0.8,
        "confidence_threshold": DIFFUSION_GEMMA.options["confidence_threshold"],
        "stability_threshold": DIFFUSION_GEMMA.options["stability_threshold"],
        "seed": None,
        "use_temperature_table": True,
    },
    DIFFUSION_GEMMA.rule,
)
# option -> (its YAML section, whether SGLang also reads it at the top level)
GEMMA4_RENOISE_SECTIONS = {
    "entropy_bound": ("sampler_config", False),
    "t_min": ("temperature_schedule", True),
    "t_max": ("temperature_schedule", True),
    "confidence_threshold": ("stopping_config", True),
    "stability_threshold": ("stopping_config", True),
}


# generate(policy="diffusion_gemma"): DiffusionGemma decoded by the loop (the uniform scheduler,
# dllm_kernels.decode.uniform), its defaults those of SGLang's Gemma4Renoise (GEMMA4_RENOISE), its
# rule DIFFUSION_GEMMA's
_DIFFUSION_GEMMA_KEYS = (
    "entropy_bound",
    "t_min",
    "t_max",
    "confidence_threshold",
    "stability_threshold",
    "max_denoising_steps",
)
DIFFUSION_GEMMA_DECODER = Decoder(
    name="diffusion_gemma",
    title="DiffusionGemma (uniform-state; SGLang Gemma4Renoise's step)",
    repo="diffusers DiffusionGemmaPipeline, vLLM diffusion_gemma, SGLang Gemma4Renoise",
    defaults={k: GEMMA4_RENOISE.options[k] for k in _DIFFUSION_GEMMA_KEYS},
    # the knobs that set its NFE are the stopping test's (the entropy bound changes little once the
    # model is confident): the stability history, then the mean-entropy threshold, then one step
    quick_sweep=({}, {"stability_threshold": 0}, {"stability_threshold": 0, "confidence_threshold": 0.05}),
    full_sweep=(
        {"stability_threshold": 2},
        {},
        {"stability_threshold": 0},
        {"stability_threshold": 0, "confidence_threshold": 0.02},
        {"stability_threshold": 0, "confidence_threshold": 0.05},
        {"max_denoising_steps": 1},
    ),
)


def diffusion_gemma(
    entropy_bound: float = DIFFUSION_GEMMA_DECODER.defaults["entropy_bound"],
    t_min: float = DIFFUSION_GEMMA_DECODER.defaults["t_min"],
    t_max: float = DIFFUSION_GEMMA_DECODER.defaults["t_max"],
    confidence_threshold: float = DIFFUSION_GEMMA_DECODER.defaults["confidence_threshold"],
    stability_threshold: int = DIFFUSION_GEMMA_DECODER.defaults["stability_threshold"],
    max_denoising_steps: int = DIFFUSION_GEMMA_DECODER.defaults["max_denoising_steps"],
) -> Policy:
    """DiffusionGemma's decoding (a uniform-state model: no MASK; :attr:`Policy.scheduler`
    ``"uniform"``, :mod:`dllm_kernels.decode.uniform`): blocks of ``block_length`` against the
    cache of the completed blocks; a block's free positions start uniformly random and each
    denoising forward (self-conditioned on the previous one's soft embedding) samples at the
    temperature ``t_min + (t_max - t_min) * (N - n) / N`` (step ``n`` of the block, ``N =
    max_denoising_steps``), keeps the entropy-bound set (``entropy_bound``) and re-noises the
    rest, until the argmax canvas is stable over ``stability_threshold`` previous steps with mean
    entropy ``< confidence_threshold``, or ``N`` steps: the block then holds the argmax canvas
    (the rule :data:`DIFFUSION_GEMMA`, SGLang's ``Gemma4Renoise`` step)."""
    check_int("diffusion_gemma", "max_denoising_steps", max_denoising_steps, low=1)
    check_int("diffusion_gemma", "stability_threshold", stability_threshold, low=0)
    options = {
        "entropy_bound": entropy_bound,
        "confidence_threshold": confidence_threshold,
        "stability_threshold": stability_threshold,
        "max_denoising_steps": max_denoising_steps,
    }
    return Policy(
        "diffusion_gemma",
        DIFFUSION_GEMMA.rule(options),
        scheduler="uniform",
        cache="blocks",
        temperatures=(t_min, t_max),
    )


# ------------------------------------------------------------------------------------------------
# derived tables
# ------------------------------------------------------------------------------------------------

DECODERS: dict[str, Decoder] = {
    d.name: d
    for d in (VANILLA, FAST_DLLM, STREAMING, R2, D3LLM, D3LLM_DREAM, FAST_DLLM_V2, SDAR, DIFFUSION_GEMMA_DECODER)
}
SERVING: dict[str, ServingRule] = {s.name: s for s in (LOW_CONFIDENCE, JOINT_THRESHOLD, JOINT_THRESHOLD_INDEL)}

POLICIES: dict[str, Callable[..., Policy]] = {
    f.__name__: f for f in (vanilla, fast_dllm, streaming, r2, d3llm, d3llm_dream, fast_dllm_v2, sdar, diffusion_gemma)
}

# rule variants reachable by a constructor argument that are compiled ahead of time besides
# every policy's defaults: label -> (policy, overrides)
RULE_VARIANTS = {label: (d.name, dict(kw)) for d in DECODERS.values() for label, kw in d.variants.items()}

# rules launched outside generate() that are compiled ahead of time too, at their default options
# (dllm_kernels.integrations.sglang builds them from their YAML options)
SERVING_RULES = {s.name: s.sglang.rule(s.sglang.options) for s in SERVING.values()}

# the engines' uniform-state samplers, compiled ahead of time at their default options
UNIFORM_STATE: dict[str, UniformStateRule] = {u.name: u for u in (DIFFUSION_GEMMA,)}
UNIFORM_STATE_RULES = {u.name: u.rule(u.options) for u in UNIFORM_STATE.values()}


def sglang_algorithms() -> dict[str, SGLangAlgorithm]:
    """Every SGLang algorithm of the plugin, by class name: the serving rules' and the decoders'."""
    algos = [s.sglang for s in SERVING.values()] + [d.sglang for d in DECODERS.values() if d.sglang]
    return {a.name: a for a in algos}


def sweeps(which: str = "quick") -> dict[str, list[dict]]:
    """The evaluation sweeps (``"quick"`` or ``"full"``): policy -> a fresh list of its overrides."""
    if which not in ("quick", "full"):
        raise ValueError(f"sweeps: which must be 'quick' or 'full', got {which!r}")
    out = {d.name: [dict(kw) for kw in getattr(d, f"{which}_sweep")] for d in DECODERS.values()}
    return {name: points for name, points in out.items() if points}


def compiled_rules() -> dict[str, CommitRule]:
    """The commit rules compiled ahead of time (``python -m dllm_kernels.aot``), one entry
    per distinct rule: every rule that every policy of :data:`POLICIES` launches at its defaults,
    also with Dream's ``ar_first_token`` (labels ``name``, ``name.block_start``, ``first_token``),
    the :data:`RULE_VARIANTS`, the :data:`SERVING_RULES` and the :data:`UNIFORM_STATE_RULES`."""
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
    out.update({label: rule for label, rule in UNIFORM_STATE_RULES.items() if rule not in out.values()})
    return out


def markdown_table() -> str:
    """A markdown table of every published decoder and serving rule: its defaults, the public
    repo's option names it accepts (public -> ours) and its SGLang algorithm with its options
    (``option=default``; ``(keyword)``: the policy keyword it follows). For the docs."""
    lines = [
        "| policy | decoder (code) | defaults | public names -> ours | SGLang algorithm: options |",
        "|---|---|---|---|---|",
    ]

    def sglang_cell(a: SGLangAlgorithm | None) -> str:
        if a is None:
            return "-"
        opts = ", ".join(
            f"`{k}={v!r}`" + (f" ({a.keywords[k]})" if a.keywords.get(k, k) != k else "") for k, v in a.options.items()
        )
        return f"`{a.name}`: {opts}"

    for d in DECODERS.values():
        defaults = ", ".join(f"`{k}={v!r}`" for k, v in d.defaults.items())
        aliases = [
            f"`{a.public}` -> `{a.ours}`" + (f" ({a.note})" if a.note else "")
            if a.public != a.ours
            else f"`{a.ours}`: {a.note}"
            for a in d.aliases
        ]
        aliases += [f"{public} -> {ours}" for public, ours in d.alias_notes]
        cells = [f"`{d.name}`", f"{d.title} ({d.repo})", defaults, "; ".join(aliases) or "-", sglang_cell(d.sglang)]
        lines.append(f"| {' | '.join(cells)} |")
    for s in SERVING.values():
        lines.append(f"| (serving) `{s.name}` | {s.title} | - | - | {sglang_cell(s.sglang)} |")
    return "\n".join(lines) + "\n"
