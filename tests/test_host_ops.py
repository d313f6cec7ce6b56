"""The host work of a decoding step does not grow with the batch: ``generate`` dispatches the same
operators per step at batch 1 and batch 6 for every policy (bench/host_split.py's counter), on a
model whose logits depend on the position only (every row decodes alike)."""

import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))

import host_split  # noqa: E402
import host_step  # noqa: E402

import dllm_kernels as dk  # noqa: E402

PROMPT, GEN, BLOCK = 16, 32, 8


def ops(policy: str, kw: dict, B: int):
    model = host_step.FreeModel(PROMPT + GEN)
    prompt = torch.arange(B * PROMPT).reshape(B, PROMPT) % (host_step.V - 2)
    count = host_split._OpCount()
    with count:
        out = dk.generate(model, prompt, policy=policy, gen_length=GEN, block_length=BLOCK, backend="reference", **kw)
    assert (out.generated != host_step.MASK).all()
    return count.n, model.calls


@pytest.mark.parametrize("name", list(host_step.POLICIES))
def test_ops_per_step_do_not_grow_with_the_batch(name):
    policy, kw = host_step.POLICIES[name]
    (one, steps_one), (six, steps_six) = ops(policy, kw, 1), ops(policy, kw, 6)
    assert steps_one == steps_six > 0
    assert six == one, {op: (one[op], six[op]) for op in set(one) | set(six) if one[op] != six[op]}
