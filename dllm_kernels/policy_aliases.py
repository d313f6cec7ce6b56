"""The public repos' option names, accepted as aliases of the policies' keywords.

``generate(model, prompt, policy="streaming", window_size=96, confidence_alpha=0.3)`` runs what
Streaming-dLLM's scripts call with those names. Each alias maps to one keyword of the named
policy's constructor (:data:`dllm_kernels.policies.POLICIES`), some with a value map:

========================== =============================== ======================================
policy                     public name (repo)              ours
========================== =============================== ======================================
vanilla                    ``steps`` (LLaDA, total)        ``steps_per_block = steps // blocks``
vanilla                    ``logits_eos_inf`` (LLaDA)      ``suppress_eos``
vanilla                    ``remasking="low_confidence"``  (the only rule; ``"random"`` rejected)
fast_dllm, r2              ``use_cache``, ``dual_cache``   ``cache``: "none" / "prefix" / "dual"
streaming                  ``window_size``                 ``window``
streaming                  ``confidence_alpha``            ``alpha``
streaming                  ``use_cache=True``              (prefix cache, the only one)
r2                         ``confidence_cluster_size``     ``window``
r2                         ``confidence_cluster_unmasked`` ``max_decided``
r2                         ``token_cluster="confidence"``  ``token_cluster=True`` (None/"none": False)
r2                         ``token_cluster_size``          ``cluster_min_len``
r2                         ``temporal_eval``               ``temporal_agg``; value ``"ave"`` = "mean"
d3llm, d3llm_dream         ``cache_delay_iter``            ``cache_delay``
========================== =============================== ======================================

Names the repos share with us (``threshold``, ``spatial_threshold``, ``temporal_steps``,
``temporal_threshold``, ``refresh_interval``, ``block_add_threshold``, ``decoded_token_threshold``,
``early_stop``, ``confidence_eos_eot_inf``) need no alias. An alias given together with the name it
stands for is an error, as is a public value this library does not implement (R2's "mid" and
"random" token clusters, LLaDA's random remasking, Fast-dLLM's ``factor`` rule).
"""

from __future__ import annotations

from ._validate import check_int

# policy -> {public name: our keyword} (plain renames)
RENAMES = {
    "vanilla": {"logits_eos_inf": "suppress_eos"},
    "streaming": {"window_size": "window", "confidence_alpha": "alpha"},
    "r2": {
        "confidence_cluster_size": "window",
        "confidence_cluster_unmasked": "max_decided",
        "token_cluster_size": "cluster_min_len",
        "temporal_eval": "temporal_agg",
    },
    "d3llm": {"cache_delay_iter": "cache_delay"},
    "d3llm_dream": {"cache_delay_iter": "cache_delay"},
}
# aliases accepted on a Policy instance (then the names are Policy fields)
POLICY_FIELD_RENAMES = {"logits_eos_inf": "suppress_eos", "cache_delay_iter": "cache_delay"}
TEMPORAL_AGG_VALUES = {"ave": "mean"}  # R2's temporal_eval value -> ours
_CACHE_FLAGS = ("use_cache", "dual_cache")
_UNSUPPORTED = {"factor": "Fast-dLLM's factor rule is not implemented; use threshold"}


def public_aliases(policy, overrides: dict, *, gen_length: int | None = None, block_length: int | None = None) -> dict:
    """``overrides`` with every public option name of ``policy`` (a name or a Policy) replaced by
    ours (see the module docstring). ``gen_length`` / ``block_length`` turn LLaDA's total ``steps``
    into ``steps_per_block``. Raises ValueError on an alias given with its target, or on a public
    value without an equivalent here."""
    out = dict(overrides)
    name = policy if isinstance(policy, str) else None
    label = f"policy {policy!r}" if name else f"policy {getattr(policy, 'name', policy)!r}"
    renames = RENAMES.get(name, {}) if name else POLICY_FIELD_RENAMES

    for key, why in _UNSUPPORTED.items():
        if key in out:
            raise ValueError(f"{label}: {key}: {why}")
    for alias, ours in renames.items():
        if alias in out:
            if ours in out:
                raise ValueError(f"{label}: {alias} is the public name of {ours}; pass one of them, not both")
            out[ours] = out.pop(alias)
    if name == "r2":
        if "temporal_agg" in out:
            out["temporal_agg"] = TEMPORAL_AGG_VALUES.get(out["temporal_agg"], out["temporal_agg"])
        tc = out.get("token_cluster")
        if tc is None and "token_cluster" in out or tc in ("none", "None"):
            out["token_cluster"] = False
        elif tc == "confidence":
            out["token_cluster"] = True
        elif isinstance(tc, str):
            raise ValueError(
                f"{label}: token_cluster must be a bool or 'confidence' (R2's 'mid' and 'random' "
                f"variants are not implemented), got {tc!r}"
            )
    if name in ("fast_dllm", "r2", "streaming") and any(k in out for k in _CACHE_FLAGS):
        _cache_flags(label, name, out)
    if name == "vanilla":
        remasking = out.pop("remasking", "low_confidence")
        if remasking != "low_confidence":
            raise ValueError(f"{label}: remasking must be 'low_confidence' (the only rule here), got {remasking!r}")
        if "steps" in out:
            if "steps_per_block" in out:
                raise ValueError(f"{label}: steps (LLaDA's total) and steps_per_block both given; pass one of them")
            out["steps_per_block"] = _steps_per_block(label, out.pop("steps"), gen_length, block_length)
    elif name is not None and "steps" in out:
        raise ValueError(f"{label}: steps (LLaDA's fixed schedule) has no effect on a threshold/entropy rule; drop it")
    return out


def _cache_flags(label: str, name: str, out: dict) -> None:
    """Fast-dLLM's ``use_cache`` / ``dual_cache`` booleans -> our ``cache`` mode."""
    flags = {k: out.pop(k) for k in _CACHE_FLAGS if k in out}
    for k, v in flags.items():
        if not isinstance(v, bool):
            raise TypeError(f"{label}: {k} must be a bool, got {v!r}")
    if "cache" in out:
        raise ValueError(f"{label}: {'/'.join(flags)} are the public spelling of cache; pass one of them, not both")
    use, dual = flags.get("use_cache", True), flags.get("dual_cache", False)
    if name == "streaming":
        if not use or dual:
            raise ValueError(f"{label}: Streaming-dLLM runs on the prefix cache only (use_cache=True, no dual_cache)")
        return
    if dual and not use:
        raise ValueError(f"{label}: dual_cache=True contradicts use_cache=False")
    out["cache"] = "dual" if dual else ("prefix" if use else "none")


def _steps_per_block(label: str, steps, gen_length, block_length) -> int:
    steps = check_int(label, "steps", steps, low=1)
    if gen_length is None or block_length is None:
        raise ValueError(
            f"{label}: steps (LLaDA's total over gen_length) needs gen_length and block_length: "
            "pass it to generate, or use steps_per_block"
        )
    blocks = max(1, gen_length // block_length) if isinstance(gen_length, int) and isinstance(block_length, int) else 1
    if steps % blocks:
        raise ValueError(f"{label}: steps ({steps}) must be a multiple of the number of blocks ({blocks}), as in LLaDA")
    return steps // blocks
