"""The shipped default model loads, is small, and solves held-out problems with vanilla decoding."""

import json

import torch

from dllm_kernels.addition import default_model
from dllm_kernels.addition.default import DEFAULT_MODEL_DIR
from dllm_kernels.addition.evaluate import evaluate_vanilla
from dllm_kernels.addition.task import AdditionTask


def test_shipped_files_are_small_and_consistent():
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size < 4 * 2**20
    model, tokenizer, task = default_model(attn_impl="sdpa")
    assert task == AdditionTask()
    c = model.config
    assert (c.vocab_size, c.mask_id, c.eos_id) == (15, tokenizer.mask_id, tokenizer.eos_id)
    assert not c.logit_shift and c.head_dim == 64  # LLaDA-style; a head_dim the attention kernel takes
    record = json.loads((DEFAULT_MODEL_DIR / "training.json").read_text())
    assert record["heldout"]["exact_match_percent"] >= 95.0


def test_shipped_model_solves_heldout_problems():
    model, tokenizer, task = default_model(attn_impl="sdpa")
    acc = evaluate_vanilla(model, task, task.heldout(64, seed=7), tokenizer)
    assert acc.accuracy >= 90.0  # 97-99% expected; 64 problems keep the test fast


@torch.no_grad()
def test_library_attention_path_matches_sdpa():
    model, tokenizer, task = default_model(attn_impl="ops")
    sdpa, _, _ = default_model(attn_impl="sdpa")
    prompt, target = task.encode(task.heldout(4, seed=3), tokenizer)
    x = torch.cat([prompt, torch.where(torch.rand(target.shape) < 0.5, model.config.mask_id, target)], 1)
    torch.testing.assert_close(model(x), sdpa(x), atol=1e-4, rtol=0)
