"""Fidelity to the published decoders: each policy reproduces, token for token, the tokens, NFE
and commit order that the public repositories' own generate functions produced (with their own
modeling code, fp32, batch 1) on one seeded tiny LLaDA checkpoint in the real format.

The peers' outputs were recorded by ``tests/fidelity/run_peers.py`` (see its README for the
commits, calls and quirks) into ``tests/fidelity/data/llada_tiny_peers.json``; this test rebuilds
the same checkpoint (checked by sha256) and runs ``dllm_kernels.generate``. By default it checks
the third prompt of every run; ``DLLM_FIDELITY_ALL=1`` checks all three.
"""

import hashlib
import json
import os
import pathlib

import pytest
import torch

import dllm_kernels as dk
from dllm_kernels.models import load_pretrained, write_tiny_llada
from dllm_kernels.policies import Policy, d3llm, fast_dllm, r2, streaming, vanilla

DATA = json.loads((pathlib.Path(__file__).parent / "fidelity" / "data" / "llada_tiny_peers.json").read_text())

# peer run -> the policy that reproduces it
POLICIES = {
    "llada_vanilla_k1": vanilla(),
    "llada_vanilla_k4": vanilla(steps_per_block=8),
    "llada_vanilla_k1_eos_eot_conf_inf": vanilla(confidence_eos_eot_inf=True),
    "fast_dllm_threshold": fast_dllm(cache="none"),
    "fast_dllm_prefix_cache": fast_dllm(cache="prefix"),
    "fast_dllm_dual_cache": fast_dllm(cache="dual"),
    "r2_dual_cache_scripts": r2(),
    # R2's function with its own defaults: every R2 rule off, LLaDA's fixed schedule on the dual cache
    "r2_dual_cache_function_defaults": Policy(
        "r2_defaults", dk.CommitRule(base="topk", commit_best=False), cache="dual", steps_per_block=32
    ),
    "streaming_prefix_cache": streaming(window=32, alpha=0.3),
    "d3llm_multi_block": d3llm(cache="none"),
    "d3llm_multi_block_kv_cache": d3llm(cache="delayed", cache_delay=2, refresh_interval=3),
}
PROMPTS = range(3) if os.environ.get("DLLM_FIDELITY_ALL") == "1" else [2]


def test_every_recorded_run_is_covered():
    assert set(DATA["runs"]) == set(POLICIES)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llada")
    write_tiny_llada(path, **DATA["checkpoint"]["kwargs"])
    for name, digest in DATA["checkpoint"]["sha256"].items():
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == digest, (
            f"{name} differs from the recorded checkpoint"
        )
    return load_pretrained(path, attn_impl="sdpa", backend="reference")


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("run", sorted(POLICIES))
def test_reproduces_peer(model, run, prompt):
    rec = DATA["runs"][run]["per_prompt"][prompt]
    out = dk.generate(
        model,
        [DATA["prompts"][prompt]["ids"]],
        policy=POLICIES[run],
        gen_length=DATA["gen_length"],
        block_length=DATA["block_length"],
        backend="reference",
    )
    assert out.generated[0].tolist() == rec["tokens"]
    assert out.nfe.item() == (rec["nfe"] if rec["nfe"] is not None else rec["forwards"])
    # the peers record the 1-based forward that unmasked each position; ours is 0-based
    assert (out.commit_step[0, out.gen_start :] + 1).tolist() == rec["commit_step"]


# ------------------------------------------------------------------------------------------------
# Fast-dLLM's idle forward, worked out by hand from the published code on a scripted model
# ------------------------------------------------------------------------------------------------

V_S, MASK_S, EOS_S = 16, 15, 14


def _sure_model(n):
    """A scripted model sure (0.99) of every position, no EOS: every block completes in the
    forward that first sees it."""
    from scripted import ScriptedConfig, ScriptedModel, confident_table

    return ScriptedModel(
        confident_table([p % 12 for p in range(n)], [0.99] * n, V_S),
        ScriptedConfig(vocab_size=V_S, mask_id=MASK_S, eos_id=EOS_S),
    )


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("skip", [False, True])
def test_fast_dllm_idle_forward_after_a_block_completes(cache, skip):
    """Fast-dLLM's ``generate_with_prefix_cache`` / ``generate_with_dual_cache`` (the paper's
    code, the commit of the recorded runs) run per block one full forward (``nfe += 1``), then a
    do-while loop: a cached forward (``nfe += 1``: ``x[:, s:]`` against the prefix cache, or
    ``x[:, s:e]`` against the dual cache), its commit, then the test for masks. A block that the
    full forward completes therefore costs 2 forwards, the second committing nothing: 3 blocks ->
    NFE 6, block j committed at forward 2j. ``skip_idle_forward`` moves on: NFE 3, block j at
    forward j. The tokens are the same."""
    P, gen, bs = 8, 24, 8
    L = P + gen
    m = _sure_model(L)
    out = dk.generate(
        m,
        torch.arange(P)[None] % 10,
        policy="fast_dllm",
        cache=cache,
        skip_idle_forward=skip,
        gen_length=gen,
        block_length=bs,
        backend="reference",
    )
    assert out.generated[0].tolist() == [p % 12 for p in range(P, L)]
    per_block = 1 if skip else 2
    assert out.nfe.tolist() == [3 * per_block] and len(m.calls) == 3 * per_block
    assert out.commit_step[0, P:].tolist() == [per_block * j for j in range(3) for _ in range(bs)]
    for j in range(3):
        s = P + j * bs
        calls = m.calls[per_block * j : per_block * (j + 1)]
        assert calls[0] == [list(range(L))]  # the block's full forward
        if not skip:  # the idle cached forward
            assert calls[1] == [list(range(s, L if cache == "prefix" else s + bs))]


@pytest.mark.parametrize(
    "policy, kw",
    [
        ("fast_dllm", dict(cache="none")),
        ("r2", {}),
        ("streaming", dict(window=8)),
        ("vanilla", dict(steps_per_block=1)),
    ],
)
def test_no_idle_forward_where_the_published_loop_tests_first(policy, kw):
    """Fast-dLLM's ``generate`` (no cache) tests after each forward; R2-dLLM's
    ``generate_with_dual_cache``, Streaming-dLLM's ``generate_with_prefix_cache`` test before
    each cached forward; LLaDA runs exactly ``steps_per_block``: one forward per block here."""
    P, gen, bs = 8, 24, 8
    m = _sure_model(P + gen)
    out = dk.generate(
        m, torch.arange(P)[None] % 10, policy=policy, gen_length=gen, block_length=bs, backend="reference", **kw
    )
    assert out.nfe.tolist() == [3] and len(m.calls) == 3
    assert out.commit_step[0, P:].tolist() == [j for j in range(3) for _ in range(bs)]
