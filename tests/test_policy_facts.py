"""A published decoder's facts are written once (dllm_kernels/policies/published.py): the policy
constructors' defaults, the public repos' aliases, the SGLang algorithms' options and rules, the
evaluation sweeps and the compiled serving rules all agree with its records."""

import dataclasses
import inspect
import math
import os
import pathlib
import re
import sys

import pytest
import torch

from dllm_kernels import CommitRule
from dllm_kernels.addition import evaluate
from dllm_kernels.policies import (
    DECODERS,
    POLICIES,
    POLICY_FIELD_RENAMES,
    RULE_VARIANTS,
    SERVING,
    SERVING_RULES,
    Policy,
    markdown_table,
    resolve_policy,
    sglang_algorithms,
    strict_threshold,
    sweeps,
)


def test_every_decoder_has_its_constructor():
    assert list(POLICIES) == list(DECODERS)
    assert all(make.__name__ == name for name, make in POLICIES.items())


@pytest.mark.parametrize("name", [n for n in DECODERS if n != "d3llm_dream"])
def test_constructor_defaults_are_the_published_ones(name):
    params = inspect.signature(POLICIES[name]).parameters
    assert {k: p.default for k, p in params.items()} == dict(DECODERS[name].defaults)
    assert list(params) == list(DECODERS[name].defaults)  # the table lists them in signature order
    assert POLICIES[name]() == POLICIES[name](**DECODERS[name].defaults)


def test_d3llm_dream_defaults_are_the_published_ones():
    want = dataclasses.replace(POLICIES["d3llm"](**DECODERS["d3llm_dream"].defaults), name="d3llm_dream")
    assert POLICIES["d3llm_dream"]() == want
    assert set(DECODERS["d3llm_dream"].defaults) == set(DECODERS["d3llm"].defaults)
    rule = want.rule
    assert (rule.entropy_threshold, rule.entropy_strict, rule.commit_best) == (0.4, True, False)
    assert (want.cache_delay, want.refresh_interval) == (1, 10000)


def test_the_decoders_rules_take_their_numbers_from_the_table():
    # a constructor that ignored a keyword would build the same rule for two values of it
    for name, d in DECODERS.items():
        for key, value in d.defaults.items():
            if isinstance(value, float) and not isinstance(value, bool):
                other = POLICIES[name](**{key: value / 2})
                assert other != POLICIES[name](), (name, key)


def test_commit_rule_defaults_agree_with_the_published_decoders():
    # CommitRule's own defaults (dllm_kernels._types, imported before any policy module) are the
    # numbers of the decoder each rule comes from; the constructors pass every number explicitly
    rule, fast, r2, d3 = CommitRule(), DECODERS["fast_dllm"], DECODERS["r2"], DECODERS["d3llm"]
    assert rule.threshold == fast.defaults["threshold"]
    assert rule.entropy_threshold == d3.defaults["threshold"]
    assert rule.entropy_strict == d3.defaults["strict"] and rule.commit_best == d3.defaults["commit_best"]
    assert rule.spatial_max_decided == r2.defaults["max_decided"]
    for field in ("spatial_threshold", "temporal_threshold", "temporal_agg", "cluster_min_len"):
        assert getattr(rule, field) == r2.defaults[field], field


@pytest.mark.parametrize("name", list(DECODERS))
def test_aliases_target_the_constructor_keywords(name):
    d = DECODERS[name]
    keywords = set(d.defaults)
    for a in d.aliases:
        assert a.ours in keywords, a
        assert a.public == a.ours or a.public not in keywords, a  # a rename never shadows a keyword
        if a.convert is not None:
            assert a.note, a  # the docs table shows the value map
    policy_fields = {f.name for f in dataclasses.fields(Policy)}
    assert set(POLICY_FIELD_RENAMES.values()) <= policy_fields
    assert POLICY_FIELD_RENAMES == {
        "logits_eos_inf": "suppress_eos",
        "cache_delay_iter": "cache_delay",
        "small_block_size": "sub_block",
        "denoising_steps": "steps_per_block",
    }


@pytest.mark.parametrize("name", list(DECODERS))
def test_every_alias_is_applied_by_resolve_policy(name):
    # each plain rename, given the default of its target, builds the default policy
    for a in DECODERS[name].aliases:
        if a.public != a.ours:
            default = DECODERS[name].defaults[a.ours]
            assert resolve_policy(name, **{a.public: default}) == POLICIES[name](), a


def test_llada_steps_need_the_geometry_once():
    assert resolve_policy("vanilla", steps=8, gen_length=32, block_length=8) == POLICIES["vanilla"](steps_per_block=2)
    with pytest.raises(ValueError, match="steps.*gen_length"):
        resolve_policy("vanilla", steps=8)


def test_eval_sweeps_come_from_the_table():
    for which, table in (("quick", evaluate.QUICK_SWEEPS), ("full", evaluate.FULL_SWEEPS)):
        want = {n: [dict(kw) for kw in getattr(d, f"{which}_sweep")] for n, d in DECODERS.items()}
        assert table == {n: points for n, points in want.items() if points}
        assert list(table) == [n for n in want if want[n]]
        assert sweeps(which) == table and sweeps(which) is not table  # fresh copies
        for name, points in table.items():
            assert points, name
            for kw in points:
                assert set(kw) <= set(DECODERS[name].defaults), (name, kw)
                POLICIES[name](**kw)  # a valid setting
    with pytest.raises(ValueError, match="which"):
        sweeps("medium")


def test_rule_variants_come_from_the_table():
    assert RULE_VARIANTS == {"r2_mean": ("r2", {"temporal_agg": "mean"})}
    for name, kw in RULE_VARIANTS.values():
        assert POLICIES[name](**kw).rule != POLICIES[name]().rule


@pytest.mark.parametrize("value", [0.95, 0.5, 0.0, 0.9, 1e-30, -0.5, 1.0])
def test_strict_threshold_is_the_next_fp32(value):
    t = strict_threshold(value)
    f32 = torch.tensor(value, dtype=torch.float32)
    assert torch.tensor(t, dtype=torch.float32).item() == t  # an fp32 number
    assert t > f32.item()
    # nothing in fp32 lies between fp32(value) and t: c >= t exactly when c > fp32(value)
    below = torch.nextafter(torch.tensor(t, dtype=torch.float32), torch.tensor(-math.inf)).item()
    assert below == f32.item()


def test_serving_rules_are_the_sglang_rules_at_their_defaults():
    assert set(SERVING_RULES) == {"low_confidence", "llada21_edit", "llada22_indel"}
    low, joint = SERVING_RULES["low_confidence"], SERVING_RULES["llada21_edit"]
    assert low == CommitRule(threshold=strict_threshold(0.95), commit_best=False)
    assert joint == CommitRule(threshold=strict_threshold(0.5), commit_best=False, token_edit=True)
    assert SERVING_RULES["llada22_indel"] == joint  # InDel's thresholds at their defaults are JointThreshold's
    for s in SERVING.values():
        assert SERVING_RULES[s.name] == s.sglang.rule(s.sglang.options)


def test_markdown_table_lists_every_fact():
    text = markdown_table()
    rows = text.strip().splitlines()
    assert len(rows) == 2 + len(DECODERS) + len(SERVING)
    assert all(r.count("|") == rows[0].count("|") for r in rows)
    for name, d in DECODERS.items():
        row = next(r for r in rows if r.startswith(f"| `{name}` |"))
        for key, value in d.defaults.items():
            assert f"`{key}={value!r}`" in row, (name, key)
        for a in d.aliases:
            assert f"`{a.public}`" in row
        if d.sglang:
            assert d.sglang.name in row and all(f"`{k}=" in row for k in d.sglang.options)
    for s in SERVING.values():
        assert s.sglang.name in text


# ------------------------------------------------------------------------------------------------
# the SGLang plugin (needs sglang; tests/test_sglang.py decides whether it is required)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sglang_plugin():
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "stubs"))
    import torchvision_stub

    torchvision_stub.install()
    environ = dict(os.environ)
    try:
        from sglang.srt.dllm.algorithm.joint_threshold import JointThreshold
        from sglang.srt.dllm.algorithm.joint_threshold_indel import JointThresholdInDel
        from sglang.srt.dllm.algorithm.low_confidence import LowConfidence

        from dllm_kernels.integrations import sglang as plugin
    except ImportError as exc:
        pytest.skip(f"sglang is not installed ({exc})")
    finally:  # importing sglang points Triton's caches at its own folders: undo
        os.environ.clear()
        os.environ.update(environ)
    return plugin, {
        "DllmKernelsLowConfidence": LowConfidence,
        "DllmKernelsJointThreshold": JointThreshold,
        "DllmKernelsJointThresholdInDel": JointThresholdInDel,
    }


def _config(algorithm_config=None):
    from types import SimpleNamespace

    return SimpleNamespace(
        block_size=8,
        mask_id=7,
        algorithm_config=dict(algorithm_config or {}),
        first_done_first_out_mode=False,
        delete_token_id=9,  # read by the InDel algorithms only
        split_token_id=10,
    )


def test_sglang_options_come_from_the_table(sglang_plugin):
    plugin, _ = sglang_plugin
    facts = sglang_algorithms()
    assert sorted(cls.__name__ for cls in plugin.ALGORITHMS) == sorted(facts)
    for cls in plugin.ALGORITHMS:
        a = facts[cls.__name__]
        assert cls.FACTS is a
        assert list(cls.OPTIONS) == [*a.options, "backend"], cls.__name__
        assert {k: v[0] for k, v in cls.OPTIONS.items()} == {**a.options, "backend": "auto"}, cls.__name__
        assert cls(_config()).commit_rule == a.rule(a.options)
    for d in DECODERS.values():
        if d.sglang is not None:
            for option, keyword in d.sglang.keywords.items():
                assert d.sglang.options[option] == d.defaults[keyword], (d.name, option)


def test_sglang_rules_are_the_policies_rules(sglang_plugin):
    plugin, _ = sglang_plugin
    rule = {cls.__name__: cls(_config()).commit_rule for cls in plugin.ALGORITHMS}
    assert rule["DllmKernelsFastDllm"] == POLICIES["fast_dllm"]().rule
    assert rule["DllmKernelsD3LLM"] == POLICIES["d3llm"]().rule
    assert rule["DllmKernelsR2Dllm"] == POLICIES["r2"]().rule
    # SGLang forwards no suffix: Streaming-dLLM's rule without its suffix window
    assert rule["DllmKernelsStreamingDllm"] == dataclasses.replace(POLICIES["streaming"]().rule, suffix_window=0)
    assert rule["DllmKernelsLowConfidence"] == SERVING_RULES["low_confidence"]
    assert rule["DllmKernelsJointThreshold"] == SERVING_RULES["llada21_edit"]
    assert rule["DllmKernelsJointThresholdInDel"] == SERVING_RULES["llada22_indel"]
    strict = plugin.DllmKernelsLowConfidence(_config({"threshold": 0.8})).commit_rule
    assert strict.threshold == strict_threshold(0.8)


def test_serving_defaults_are_sglangs_own(sglang_plugin):
    _, sglang_classes = sglang_plugin
    for s in SERVING.values():
        theirs = sglang_classes[s.sglang.name](_config())
        for option, default in s.sglang.options.items():
            assert getattr(theirs, option) == default, (s.name, option)
        # and no option of SGLang's class is missing: every algorithm_config key its __init__ reads
        source = inspect.getsource(type(theirs).__init__)
        read = set(re.findall(r"algorithm_config\.get\(\s*\"(\w+)\"", source))
        assert read == set(s.sglang.options), (s.name, read)


def test_gemma4renoise_record_is_sglangs(sglang_plugin):
    """GEMMA4_RENOISE (options, defaults, YAML sections) against SGLang's Gemma4Renoise: its
    defaults by instantiating it, every key its __init__ reads by its source, and the plugin's
    class built from the record."""
    from types import SimpleNamespace

    from sglang.srt.dllm.algorithm.gemma4_renoise import Gemma4Renoise

    from dllm_kernels.policies.published import DIFFUSION_GEMMA, GEMMA4_RENOISE, GEMMA4_RENOISE_SECTIONS

    plugin, _ = sglang_plugin
    cfg = SimpleNamespace(
        block_size=8, mask_id=-1, algorithm_config={}, first_done_first_out_mode=False, capture_input_preparation=False
    )
    theirs = Gemma4Renoise(cfg)
    for option, default in GEMMA4_RENOISE.options.items():
        assert getattr(theirs, option) == default, option
    source = inspect.getsource(Gemma4Renoise.__init__)
    top = set(re.findall(r"algorithm_config\.get\(\s*\"(\w+)\"", source))
    sections = set(re.findall(r"section\(\s*\"(\w+)\"", source))
    nested = {
        "sampler_config": set(re.findall(r"sampler_config\.get\(\s*\"(\w+)\"", source)),
        "temperature_schedule": set(re.findall(r"temperature_config\.get\(\s*\"(\w+)\"", source)),
        "stopping_config": set(re.findall(r"stopping_config\.get\(\s*\"(\w+)\"", source)),
    }
    assert sections == set(nested)
    assert set().union(*nested.values()) | top == set(GEMMA4_RENOISE.options)
    for option, (section, flat) in GEMMA4_RENOISE_SECTIONS.items():
        assert option in nested[section], option
        assert (option in top) == flat, option
    for option in GEMMA4_RENOISE.options:
        if option not in GEMMA4_RENOISE_SECTIONS:
            assert option in top and all(option not in keys for keys in nested.values()), option
    # the commit rule is DiffusionGemma's, whose options are the same names
    assert set(DIFFUSION_GEMMA.options) <= set(GEMMA4_RENOISE.options)
    assert all(GEMMA4_RENOISE.options[k] == v for k, v in DIFFUSION_GEMMA.options.items())
    ours = plugin.DllmKernelsGemma4Renoise(cfg)
    assert ours.FACTS is GEMMA4_RENOISE
    assert ours.commit_rule == DIFFUSION_GEMMA.rule(DIFFUSION_GEMMA.options)
    for option, default in GEMMA4_RENOISE.options.items():
        assert getattr(ours, option) == default, option


def test_block_diffusion_decoders_are_the_published_ones():
    """tests/fidelity/README.md: Fast-dLLM v2's batch_sample (eval.py: threshold 0.9, small block
    8, stop_token 151645, pad 151643; commit c > tau strictly) and SDAR's block_diffusion_generate
    (the script's dynamic remasking, tau 0.85 strict, 4 denoising steps, the release's stop ids)."""
    from dllm_kernels.policies import fast_dllm_v2, sdar, strict_threshold

    v2 = fast_dllm_v2()
    assert (v2.scheduler, v2.cache, v2.sub_block, v2.inherit_first_token) == ("block_causal", "blocks", 8, True)
    assert (v2.stop_ids, v2.stop_fill) == ((151645,), 151643)
    assert v2.rule == CommitRule(base="threshold", threshold=strict_threshold(0.9))
    assert resolve_policy("fast_dllm_v2", small_block_size=8, stop_token=151645, use_block_cache=False) == v2
    s = sdar()
    assert (s.scheduler, s.cache, s.steps_per_block, s.stop_ids) == ("block_causal", "blocks", 0, (151645, 151643))
    assert s.rule == CommitRule(base="threshold", threshold=strict_threshold(0.85)) and not s.commit_in_order
    static = resolve_policy("sdar", remasking_strategy="low_confidence_static")
    assert static.rule == CommitRule(base="topk", commit_best=False) and not static.commit_in_order
    assert resolve_policy("sdar", remasking_strategy="sequential").commit_in_order
    assert resolve_policy("sdar", stopping_criteria_idx=None).stop_ids == ()
    assert resolve_policy("sdar", denoising_steps=0, confidence_threshold=0.85) == s
    with pytest.raises(ValueError, match="remasking"):
        sdar(remasking="entropy_bounded")


def test_diffusion_gemma_is_sglangs_gemma4renoise():
    """The uniform-state policy: its defaults are SGLang's Gemma4Renoise options (GEMMA4_RENOISE),
    its rule DIFFUSION_GEMMA's at them, its schedule (t_min, t_max); bad numbers are one-line errors."""
    from dllm_kernels.policies.published import DIFFUSION_GEMMA, GEMMA4_RENOISE

    p = POLICIES["diffusion_gemma"]()
    defaults = DECODERS["diffusion_gemma"].defaults
    assert all(GEMMA4_RENOISE.options[k] == v for k, v in defaults.items())
    assert set(DIFFUSION_GEMMA.options) < set(defaults)
    assert (p.scheduler, p.cache, p.temperatures) == ("uniform", "blocks", (0.4, 0.8))
    assert p.rule == DIFFUSION_GEMMA.rule(DIFFUSION_GEMMA.options) and p.rule.renoise
    assert p.launched_rules() == {"main": p.rule}
    other = POLICIES["diffusion_gemma"](stability_threshold=2, max_denoising_steps=7)
    assert (other.rule.stability_steps, other.rule.max_steps) == (3, 7)
    with pytest.raises(ValueError, match="temperatures"):
        POLICIES["diffusion_gemma"](t_min=0.5, t_max=0.4)
    with pytest.raises(ValueError, match="max_denoising_steps"):
        POLICIES["diffusion_gemma"](max_denoising_steps=0)
    with pytest.raises(ValueError, match="uniform scheduler and a renoise rule"):
        Policy("x", p.rule, scheduler="block_causal", cache="blocks")
    with pytest.raises(ValueError, match="temperatures belong"):
        dataclasses.replace(POLICIES["sdar"](), temperatures=(0.4, 0.8))
