"""generate on non-finite logits (issue 16 item 4): one +inf logit per position (an fp16 LM-head
overflow) or NaN logits must not stall decoding. Before the commit op defined NaN confidences,
the reference path committed nothing on such steps and ran to max_nfe, returning masks."""

import pytest
import torch
from scripted import ScriptedConfig, ScriptedModel

import dllm_kernels as dk

V, MASK, EOS = 16, 15, 14
POLICIES = ["vanilla", "fast_dllm", "streaming", "r2", "d3llm"]


def _table(kind):
    table = torch.randn(64, V, generator=torch.Generator().manual_seed(0))
    if kind == "inf":
        table[:, 3] = float("inf")
    else:
        table[:] = float("nan")
    return table


@pytest.mark.parametrize("kind", ["inf", "nan"])
@pytest.mark.parametrize("policy", POLICIES)
def test_generate_finishes_on_non_finite_logits(device, policy, kind):
    outs = {}
    for backend in ("reference", "triton"):
        model = ScriptedModel(_table(kind).to(device), ScriptedConfig(vocab_size=V, mask_id=MASK, eos_id=EOS))
        out = dk.generate(
            model,
            torch.tensor([[1, 2, 3]], device=device),
            policy=policy,
            gen_length=16,
            block_length=8,
            backend=backend,
            max_nfe=200,
        )
        assert not (out.tokens == MASK).any(), f"{backend}: masks left"
        assert int(out.nfe.max()) <= 16, f"{backend}: {out.nfe.tolist()} forwards for 16 tokens"
        outs[backend] = out.tokens.cpu()
    assert torch.equal(outs["triton"], outs["reference"])
