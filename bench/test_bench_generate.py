"""End-to-end decoding steps on an H100-class GPU: every policy, three paths over the same loop.

    pytest bench/test_bench_generate.py --benchmark-json bench/results/generate_pytest.json

The model has LLaDA-8B's layer shape (32 heads x 128, d_model 4096, vocab 126464) with 2 layers
and random bf16 weights, so a step costs what the attention, statistics and commit work of the
real model cost per layer, without the 8B download. The paths (``dllm_kernels.benchmark.PATHS``):

* ``kernels``: the library's Triton kernels (attention, KV refresh, token statistics, commit);
* ``reference``: the library's PyTorch references of the same ops;
* ``sdpa``: what the public decoders run: K/V concatenated per step, torch SDPA, eager
  post-processing.

The paths do the same work per step but may commit different tokens (bf16 ties), so the metric is
the median wall time of ``generate`` per step (host scheduling included: it is part of the loop),
not per sequence. Writes bench/results/generate.json (+ .png).
"""

import pytest
import torch
from harness import results_writer, synchronised

from dllm_kernels import generate
from dllm_kernels.benchmark import DEFAULT_POLICIES, PATHS
from dllm_kernels.models import DiffusionLM, llada_8b_layer

PROMPT, GEN, BLOCK = 256, 128, 32
_rows: list[dict] = []


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = DiffusionLM(llada_8b_layer(2)).to(torch.bfloat16).eval()
    return m


_write = results_writer(
    "generate",
    _rows,
    notes=f"llada_8b_layer(2) bf16 random weights; prompt ~{PROMPT} (ragged), gen {GEN}, "
    f"block {BLOCK}; ms/step = median generate time / steps",
    speedup=dict(group="path", base="kernels", time="ms_per_step", same=("shape",), out="kernels_speedup"),
    plot=dict(x="shape", y="ms_per_step", group="path", ylabel="ms per decoding step"),
)


def _prompts(B, vocab):
    g = torch.Generator().manual_seed(B)
    return [torch.randint(0, vocab - 2, (PROMPT - 8 * b,), generator=g).tolist() for b in range(B)]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("policy", DEFAULT_POLICIES)
@pytest.mark.parametrize("B", [1, 8])
def test_generate(benchmark, model, B, policy, path):
    model.attn_impl, model.backend = PATHS[path]
    prompts = _prompts(B, model.config.vocab_size)

    def run():
        return generate(model, prompts, policy=policy, gen_length=GEN, block_length=BLOCK, backend=model.backend)

    out = run()  # compile / warm up
    benchmark.pedantic(synchronised(run), rounds=3, warmup_rounds=0)
    seconds = benchmark.stats.stats.median
    steps = int(out.nfe.max())  # the batch steps until its slowest row is done
    tokens = out.tokens_until_eos(model.config.eos_id).sum().item()
    row = {
        "policy": policy,
        "path": path,
        "B": B,
        "shape": f"{policy} B{B}",
        "steps": steps,
        "ms_per_step": 1e3 * seconds / steps,
        "tokens_per_s": tokens / seconds,
    }
    _rows.append(row)
    benchmark.extra_info.update(row)
