"""The host work of a decoding step does not grow with the batch: ``generate`` dispatches the same
operators per step at batch 1 and batch 6 for every policy (bench/host_split.py's counter), on a
model whose logits depend on the position only (every row decodes alike; host_step's free model,
configured for the policy's scheduler: block-causal, uniform-state)."""

import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))

import host_split  # noqa: E402
import host_step  # noqa: E402

import dllm_kernels as dk  # noqa: E402

PROMPT, GEN, BLOCK = 16, 64, host_step.BLOCK  # the free model's block-causal configs use its BLOCK


def ops(policy: str, kw: dict, B: int):
    # its config fits the policy's scheduler; a block-causal canvas runs up to a block past the region
    model = host_step.FreeModel(PROMPT + GEN + BLOCK, policy=policy)
    prompt = torch.arange(B * PROMPT).reshape(B, PROMPT) % (host_step.V - 2)
    count = host_split._OpCount()
    run = dict(gen_length=GEN, block_length=BLOCK, backend="reference", seed=host_step.gen_seed(policy))
    with count:
        out = dk.generate(model, prompt, policy=policy, **run, **kw)
    assert (out.generated != host_step.MASK).all()
    return count.n, model.calls


@pytest.mark.parametrize("name", list(host_step.POLICIES))
def test_ops_per_step_do_not_grow_with_the_batch(name):
    policy, kw = host_step.POLICIES[name]
    (one, steps_one), (six, steps_six) = ops(policy, kw, 1), ops(policy, kw, 6)
    assert steps_one == steps_six > 0
    assert six == one, {op: (one[op], six[op]) for op in set(one) | set(six) if one[op] != six[op]}
