"""The public repos' option names are aliases of the policies' keywords: one test per alias, and
an alias given with the name it stands for is an error."""

import pytest
import torch

from dllm_kernels import generate
from dllm_kernels.policies import public_aliases, resolve_policy

# (policy, public keywords, our keywords): both must build the same Policy
ALIASES = [
    ("vanilla", {"logits_eos_inf": True}, {"suppress_eos": True}),
    ("vanilla", {"remasking": "low_confidence"}, {}),
    ("fast_dllm", {"use_cache": False}, {"cache": "none"}),
    ("fast_dllm", {"use_cache": True}, {"cache": "prefix"}),
    ("fast_dllm", {"use_cache": True, "dual_cache": True}, {"cache": "dual"}),
    ("fast_dllm", {"dual_cache": True}, {"cache": "dual"}),
    ("fast_dllm", {"use_cache": True, "dual_cache": False}, {"cache": "prefix"}),
    ("r2", {"use_cache": False}, {"cache": "none"}),
    ("streaming", {"window_size": 32}, {"window": 32}),
    ("streaming", {"confidence_alpha": 0.6}, {"alpha": 0.6}),
    ("streaming", {"use_cache": True}, {}),
    ("r2", {"confidence_cluster_size": 5}, {"window": 5}),
    ("r2", {"confidence_cluster_unmasked": 2}, {"max_decided": 2}),
    ("r2", {"token_cluster": "confidence"}, {"token_cluster": True}),
    ("r2", {"token_cluster": None}, {"token_cluster": False}),
    ("r2", {"token_cluster": "none"}, {"token_cluster": False}),
    ("r2", {"token_cluster_size": 3}, {"cluster_min_len": 3}),
    ("r2", {"temporal_eval": "ave"}, {"temporal_agg": "mean"}),
    ("r2", {"temporal_eval": "max"}, {"temporal_agg": "max"}),
    ("r2", {"temporal_eval": "last"}, {"temporal_agg": "last"}),
    ("r2", {"temporal_agg": "ave"}, {"temporal_agg": "mean"}),
    ("d3llm", {"cache_delay_iter": 1}, {"cache_delay": 1}),
    ("d3llm_dream", {"cache_delay_iter": 3}, {"cache_delay": 3}),
]


@pytest.mark.parametrize("policy, public, ours", ALIASES, ids=[f"{p}-{'-'.join(k)}" for p, k, _ in ALIASES])
def test_alias_builds_the_same_policy(policy, public, ours):
    # an alias the resolver did not consume would reach the constructor and raise TypeError
    assert resolve_policy(policy, **public) == resolve_policy(policy, **ours)


def test_aliases_on_a_policy_instance():
    base = resolve_policy("d3llm")
    assert resolve_policy(base, cache_delay_iter=5).cache_delay == 5
    assert resolve_policy(resolve_policy("vanilla"), logits_eos_inf=True).suppress_eos


def test_llada_total_steps_become_steps_per_block():
    assert public_aliases("vanilla", {"steps": 8}, gen_length=32, block_length=8) == {"steps_per_block": 2}
    with pytest.raises(ValueError, match="steps.*multiple"):
        public_aliases("vanilla", {"steps": 6}, gen_length=32, block_length=8)
    with pytest.raises(ValueError, match="steps.*gen_length"):
        resolve_policy("vanilla", steps=8)


def test_llada_steps_through_generate():
    from dllm_kernels.models import DiffusionLM, tiny

    torch.manual_seed(0)
    m = DiffusionLM(tiny(vocab_size=32), backend="reference", attn_impl="sdpa").eval()
    kw = dict(policy="vanilla", gen_length=16, block_length=8, backend="reference")
    a = generate(m, [[1, 2, 3]], steps=8, **kw)
    b = generate(m, [[1, 2, 3]], steps_per_block=4, **kw)
    assert torch.equal(a.tokens, b.tokens) and int(a.nfe[0]) == 8 == int(b.nfe[0])


CONFLICTS = [
    ("streaming", {"window_size": 32, "window": 64}, "window_size"),
    ("streaming", {"confidence_alpha": 0.3, "alpha": 0.3}, "confidence_alpha"),
    ("r2", {"confidence_cluster_size": 3, "window": 3}, "confidence_cluster_size"),
    ("r2", {"temporal_eval": "ave", "temporal_agg": "mean"}, "temporal_eval"),
    ("d3llm", {"cache_delay_iter": 2, "cache_delay": 2}, "cache_delay_iter"),
    ("vanilla", {"logits_eos_inf": True, "suppress_eos": True}, "logits_eos_inf"),
    ("fast_dllm", {"use_cache": True, "cache": "prefix"}, "use_cache"),
    ("fast_dllm", {"use_cache": False, "dual_cache": True}, "dual_cache"),
    ("streaming", {"use_cache": False}, "prefix cache"),
]


@pytest.mark.parametrize("policy, kw, name", CONFLICTS, ids=[f"{p}-{'-'.join(k)}" for p, k, _ in CONFLICTS])
def test_alias_with_its_target_is_an_error(policy, kw, name):
    with pytest.raises(ValueError, match=name):
        resolve_policy(policy, **kw)


@pytest.mark.parametrize(
    "policy, kw, name",
    [
        ("r2", {"token_cluster": "mid"}, "token_cluster"),
        ("r2", {"token_cluster": "random"}, "token_cluster"),
        ("vanilla", {"remasking": "random"}, "remasking"),
        ("fast_dllm", {"factor": 1.0}, "factor"),
        ("fast_dllm", {"steps": 256}, "steps"),
        ("fast_dllm", {"use_cache": 1}, "use_cache"),
    ],
)
def test_public_values_without_an_equivalent_are_errors(policy, kw, name):
    with pytest.raises((ValueError, TypeError), match=name):
        resolve_policy(policy, **kw)
