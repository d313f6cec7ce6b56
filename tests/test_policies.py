"""Policies are the one source of the commit rules: the loop launches exactly the rules a policy
declares (:meth:`Policy.launched_rules`), and every declared rule has an ahead-of-time compiled
configuration (the list ``python -m dllm_kernels.aot`` compiles for sm_90a)."""

import dataclasses

import pytest
import torch
from scripted import ScriptedConfig, ScriptedModel, confident_table

import dllm_kernels.decode.step as loop  # the module that launches the commits
from dllm_kernels import aot, generate
from dllm_kernels.kernels import commit as kernels_commit
from dllm_kernels.policies import POLICIES

V, MASK, EOS = 16, 15, 14


def _variants(name):
    """The policy at its defaults, and with Dream's first-token rule where its scheduler has one."""
    p = POLICIES[name]()
    yield p
    if p.scheduler == "blocks":
        yield dataclasses.replace(p, ar_first_token=True)


# the uniform-state policy needs a uniform-state model: tests/test_generate_uniform.py checks its launches
@pytest.mark.parametrize("name", [n for n in POLICIES if POLICIES[n]().scheduler != "uniform"])
def test_the_loop_launches_exactly_the_declared_rules(monkeypatch, name):
    commit, launched = loop.commit_unchecked, []

    def spy(x, stats, state, rule, *args, **kw):
        launched.append(rule)
        return commit(x, stats, state, rule, *args, **kw)

    monkeypatch.setattr(loop, "commit_unchecked", spy)
    # confident positions and unsure ones (every third): blocks take several forwards
    table = confident_table([p % 12 for p in range(40)], [0.5 if p % 3 == 0 else 0.97 for p in range(40)], V)
    model = ScriptedModel(table, ScriptedConfig(vocab_size=V, mask_id=MASK, eos_id=EOS))
    for p in _variants(name):
        launched.clear()
        generate(model, torch.arange(8)[None] % 10, policy=p, gen_length=24, block_length=8, backend="reference")
        assert set(launched) == set(p.launched_rules().values()), p


def test_every_declared_rule_has_a_compiled_configuration():
    compiled = [
        s.constexprs
        for s in aot.all_specs()
        if s.kernel is kernels_commit._commit_kernel and s.main and s.constexprs["BLOCK"] == 32
    ]
    for name in POLICIES:
        for p in _variants(name):
            for role, rule in p.launched_rules().items():
                flags = kernels_commit._flags(rule)
                assert any(flags.items() <= c.items() for c in compiled), f"{name} {role}: {rule} is not compiled"
