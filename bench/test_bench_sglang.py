"""The SGLang plugin's decoding step against SGLang's own, on a CUDA GPU with sglang installed.

    pytest bench/test_bench_sglang.py --benchmark-json bench/results/sglang_pytest.json

One dLLM denoising step after the forward: SGLang's ``LowConfidence`` / ``JointThreshold``
(``vectorized_decoding`` true: its batched path, the faster one) against ours
(``DllmKernelsLowConfidence`` / ``DllmKernelsJointThreshold``: ``token_stats`` + ``commit``) at
B = 1, 8, 32 requests, block 32, fp32 logits over LLaDA2's vocabulary. SGLang declares LLaDA2
(``LLaDA2MoeModelLM``, mask id 156895) without a config class of its own: the vocabulary size is
read from its config of the Ling 2.x ("Bailing") family whose tokenizer LLaDA2 uses,
``BailingHybridConfig().vocab_size`` (157184).

``ms``: eager ``step`` (the done list's host sync included, as SGLang calls it), each call
restoring the canvas and the per-request state first (the same copies for both). ``graph_ms``:
the step's device work replayed in a CUDA graph (ours: ``step_done``; SGLang's JointThreshold:
its ``joint_threshold_update_step_vectorized``; SGLang's LowConfidence ends in ``.tolist()`` and
cannot be captured: None). Writes bench/results/sglang.json. No results are committed yet: this
project's machines had no GPU when it was written.
"""

from types import SimpleNamespace

import pytest
import torch
from harness import do_bench_ms, try_graph_ms, write_results

try:  # a full SGLang install (the GPU image of this project has none: then skipped)
    from sglang.srt.configs.bailing_hybrid import BailingHybridConfig
    from sglang.srt.dllm.algorithm.joint_threshold import JointThreshold, joint_threshold_update_step_vectorized
    from sglang.srt.dllm.algorithm.low_confidence import LowConfidence

    from dllm_kernels.integrations.sglang import DllmKernelsJointThreshold, DllmKernelsLowConfidence
except ImportError as exc:
    pytest.skip(f"needs sglang>=0.5.23,<0.6 with its dependencies ({exc})", allow_module_level=True)

BATCH = [1, 8, 32]
BLOCK = 32
MASK_ID = 156895  # LLaDA2MoeModelLM in SGLang's DllmConfig
VOCAB = BailingHybridConfig().vocab_size
PAIRS = {
    "LowConfidence": (LowConfidence, DllmKernelsLowConfidence, {"threshold": 0.95}),
    "JointThreshold": (JointThreshold, DllmKernelsJointThreshold, {"threshold": 0.5, "edit_threshold": 0.9}),
}
_rows: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def _write():
    assert MASK_ID < VOCAB
    yield
    if _rows:
        write_results("sglang", _rows, notes=f"block {BLOCK}, vocab {VOCAB}, fp32 logits; half the block masked")


def _case(B):
    g = torch.Generator(device="cuda").manual_seed(B)
    ids = torch.randint(0, 1000, (B, BLOCK), device="cuda", generator=g)
    ids[:, BLOCK // 2 :] = MASK_ID
    prompt = torch.zeros(B, BLOCK, dtype=torch.bool, device="cuda")
    prompt[:, :4] = True
    logits = torch.randn(B * BLOCK, VOCAB, device="cuda", generator=g) * 4
    return ids.view(-1), prompt, logits


@pytest.mark.parametrize("B", BATCH)
@pytest.mark.parametrize("impl", ["sglang", "dllm_kernels"])
@pytest.mark.parametrize("algo", list(PAIRS))
def test_step(benchmark, algo, impl, B):
    theirs, ours, opts = PAIRS[algo]
    cls = theirs if impl == "sglang" else ours
    extra = {"vectorized_decoding": True} if impl == "sglang" and algo == "JointThreshold" else {}
    config = SimpleNamespace(
        block_size=BLOCK, mask_id=MASK_ID, algorithm_config={**opts, **extra}, first_done_first_out_mode=False
    )
    alg = cls(config)
    ids0, prompt, logits = _case(B)
    fb = SimpleNamespace(batch_size=B, input_ids=ids0.clone(), dllm_prompt_mask=prompt, positions=None)
    states0 = alg.init_step_state(fb)

    def eager():
        fb.input_ids.copy_(ids0)
        alg.step(fb, logits, alg.init_step_state(fb))

    eager()
    t = do_bench_ms(eager)
    graph = None
    if impl == "dllm_kernels":
        alg.step_done(fb, logits, states0)  # every device constant exists before capture
        committed0 = states0[0].tensors["commit_step"].clone()

        def device_step():
            fb.input_ids.copy_(ids0)
            if algo == "JointThreshold":  # a fresh request state each replay, like SGLang's below
                states0[0].tensors["finished"].zero_()
                states0[0].tensors["post_edit_steps"].zero_()
                states0[0].tensors["commit_step"].copy_(committed0)
            alg.step_done(fb, logits, states0)

        graph = try_graph_ms(device_step)[0]
    elif algo == "JointThreshold":
        shared = states0[0]
        graph = try_graph_ms(
            lambda: (
                fb.input_ids.copy_(ids0),
                joint_threshold_update_step_vectorized(
                    fb.input_ids,
                    logits,
                    shared["prompt_masks"],
                    shared["finished"].zero_(),
                    shared["post_edit_steps"].zero_(),
                    MASK_ID,
                    BLOCK,
                    0.5,
                    0.9,
                    16,
                    0.0,
                ),
            )
        )[0]
    _rows.append(
        {
            "algo": algo,
            "impl": impl,
            "B": B,
            "block": BLOCK,
            "vocab": VOCAB,
            **t,
            "us": t["ms"] * 1e3,
            "graph_ms": graph,
        }
    )
    benchmark.pedantic(eager, rounds=5, iterations=1)
