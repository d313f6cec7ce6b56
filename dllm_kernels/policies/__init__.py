"""Decoding policies as data: the published decoders are settings of one loop.

- :mod:`.base`: the :class:`Policy` record, its checks, the cache modes and schedulers;
- :mod:`.published`: one section per published decoder (LLaDA, Fast-dLLM, Streaming-dLLM,
  R2-dLLM, d3LLM, Fast-dLLM v2, SDAR, DiffusionGemma) and per serving rule, holding every fact
  about it once: its constructor's defaults, the public repo's option names, the SGLang
  algorithm's options, the evaluation sweeps;
- :mod:`.aliases`: the public option names applied once, by :func:`resolve_policy`.

Every number can be overridden: ``generate(model, prompt, policy="fast_dllm", threshold=0.8)``.
"""

from .aliases import POLICY_FIELD_RENAMES, public_aliases, resolve_policy
from .base import CACHE_MODES, FIRST_TOKEN_RULE, SCHEDULERS, Policy, strict_threshold
from .published import (
    DECODERS,
    POLICIES,
    RULE_VARIANTS,
    SERVING,
    SERVING_RULES,
    Alias,
    Decoder,
    ServingRule,
    SGLangAlgorithm,
    compiled_rules,
    d3llm,
    d3llm_dream,
    diffusion_gemma,
    fast_dllm,
    fast_dllm_v2,
    markdown_table,
    r2,
    sdar,
    sglang_algorithms,
    streaming,
    sweeps,
    vanilla,
)

__all__ = [
    "CACHE_MODES",
    "DECODERS",
    "FIRST_TOKEN_RULE",
    "POLICIES",
    "POLICY_FIELD_RENAMES",
    "RULE_VARIANTS",
    "SCHEDULERS",
    "SERVING",
    "SERVING_RULES",
    "Alias",
    "Decoder",
    "Policy",
    "SGLangAlgorithm",
    "ServingRule",
    "compiled_rules",
    "d3llm",
    "d3llm_dream",
    "diffusion_gemma",
    "fast_dllm",
    "fast_dllm_v2",
    "markdown_table",
    "public_aliases",
    "r2",
    "resolve_policy",
    "sdar",
    "sglang_algorithms",
    "streaming",
    "strict_threshold",
    "sweeps",
    "vanilla",
]
