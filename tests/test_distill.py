"""Trajectory distillation: the pseudo-trajectory masks built by hand from a known commit order,
the loss terms by hand, teacher recording, and a bit-identical repeat of a tiny distillation."""

import dataclasses
import math
import random

import pytest
import torch

from dllm_kernels import generate
from dllm_kernels.addition import default_model
from dllm_kernels.addition.distill import (
    DistillConfig,
    Trajectories,
    distill,
    distill_loss,
    pseudo_trajectory_masks,
    record_trajectories,
)
from dllm_kernels.addition.task import AdditionTask, build_tokenizer
from dllm_kernels.addition.train import tiny_addition_config
from dllm_kernels.models import DiffusionLM


def test_masks_are_the_positions_the_teacher_committed_last():
    bl = 4
    # two blocks of 4; row 0: vanilla-like (one commit per step), row 1: several commits per step
    order = torch.tensor([[2, 0, 3, 1, 6, 4, 7, 5], [0, 0, 1, 1, 2, 3, 3, 2]])
    # row 0, block 0, r = 0.5: floor(0.5 * 4) = 2 kept (steps 0, 1: positions 1, 3), 0 and 2 masked
    # row 1, block 1, r = 0.6: floor(0.4 * 4) = 1 kept -> cut at the 2nd smallest step (2): the
    #   positions of steps >= 2 are masked, i.e. all four (steps 2, 3, 3, 2), as in the teacher's canvas
    masked, shown, later = pseudo_trajectory_masks(order, torch.tensor([0, 1]), torch.tensor([0.5, 0.6]), bl)
    assert masked.int().tolist() == [[1, 0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]]
    assert shown.int().tolist() == [[0, 1, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]]
    assert later.int().tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0] * 8]
    # r = 0.8 (the largest): floor(0.2 * 4) = 0 kept, the whole block is masked
    masked, shown, _ = pseudo_trajectory_masks(order[:1], torch.tensor([1]), torch.tensor([0.8]), bl)
    assert masked.int().tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]] and not shown.any()
    # r = 0.1: floor(0.9 * 4) = 3 kept, only the last committed (step 7, position 6) is masked
    masked, shown, _ = pseudo_trajectory_masks(order[:1], torch.tensor([1]), torch.tensor([0.1]), bl)
    assert masked.int().tolist() == [[0, 0, 0, 0, 0, 0, 1, 0]] and shown.sum() == 3


class FixedLogits(torch.nn.Module):
    """Returns the same logits for every canvas (one row per canvas of the doubled batch) and
    records what it was run on."""

    def __init__(self, logits, mask_id):
        super().__init__()
        self.config = type("C", (), {"mask_id": mask_id})
        self.logits = logits
        self.seen = None

    def forward(self, x, logits_index):
        self.seen = x
        return self.logits


def test_loss_terms_by_hand():
    mask_id = 9
    prompt = torch.tensor([[5, 6]])
    tokens = torch.tensor([[0, 1, 2]])
    masked = torch.tensor([[True, True, False]])
    shown = torch.tensor([[False, False, True]])
    later = torch.tensor([[False, False, False]])
    # rows: first canvas (masked positions 0, 1 scored), second canvas (position 2 scored)
    lg = torch.tensor(
        [[[2.0, 0.0, 0.0], [1.0, 0.0, 3.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]]
    )
    model = FixedLogits(lg, mask_id)
    loss, terms = distill_loss(model, prompt, tokens, masked, shown, later)
    # the canvases: the block's masked positions, then its complement, hidden
    assert model.seen.tolist() == [[5, 6, 9, 9, 2], [5, 6, 0, 1, 9]]
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 2))  # position 0, target 0: predicted right
    ce1 = -math.log(1 / (math.e + 1 + math.exp(3)))  # position 1, target 1: predicted wrong (2)
    ce_comp = -math.log(math.e / (1 + 2 * math.e))  # position 2, target 2
    p = torch.tensor([4.0, 0.0, 0.0]).softmax(-1)  # position 0's logits / 0.5
    entropy = -(p * p.log()).sum().item()  # only position 0 is predicted correctly
    assert terms["ce"] == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    assert terms["ce_comp"] == pytest.approx(ce_comp, rel=1e-6)
    assert terms["entropy"] == pytest.approx(entropy, rel=1e-6)
    assert loss.item() == pytest.approx(((ce0 + ce1) / 2 + ce_comp + 2 * entropy) / 4, rel=1e-6)


def test_record_trajectories_keeps_correct_answers_with_their_order():
    model, tok, task = default_model(attn_impl="sdpa")
    problems = task.sample(6, rng=random.Random(3))
    traj = record_trajectories(model, task, problems, tok, "fast_dllm", threshold=0.5)
    prompt, target = task.encode(problems, tok)
    out = generate(model, prompt, policy="fast_dllm", gen_length=32, block_length=8, threshold=0.5)
    ok = task.exact_match(out.generated, target, tok.eos_id)
    assert len(traj) == int(ok.sum())
    assert torch.equal(traj.prompt, prompt[ok]) and torch.equal(traj.tokens, target[ok])
    assert torch.equal(traj.order, out.commit_step[ok, out.gen_start :].long())


def _tiny_distill(seed):
    task = AdditionTask(n_digits=2, gen_length=8, block_length=4)
    tok = build_tokenizer()
    torch.manual_seed(0)
    # the shipped model's vocabulary and special ids, shrunk
    config = dataclasses.replace(
        tiny_addition_config(tok), d_model=32, n_layers=1, head_dim=16, ffn_dim=32, max_seq_len=16
    )
    model = DiffusionLM(config, attn_impl="sdpa")
    start = [p.detach().clone() for p in model.parameters()]
    problems = task.sample(8, rng=random.Random(0))
    prompt, tokens = task.encode(problems, tok)
    order = torch.stack([torch.randperm(8, generator=torch.Generator().manual_seed(i)) for i in range(8)])
    traj = Trajectories(prompt, tokens, order)
    cfg = DistillConfig(steps=2, batch_size=4, seed=seed, threads=1)
    model, history = distill(model, task, traj, cfg, log_every=1, log=lambda s: None)
    return start, [p.detach() for p in model.parameters()], history


def test_tiny_distillation_is_deterministic():
    start, a, ha = _tiny_distill(seed=1)
    _, b, hb = _tiny_distill(seed=1)
    _, c, _ = _tiny_distill(seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    assert any(not torch.equal(x, y) for x, y in zip(a, start))  # it trained
    assert any(not torch.equal(x, y) for x, y in zip(a, c))  # the seed matters
    assert [h["r_prog"] for h in ha] == [0.0, 0.8]  # progressive mask ratio: 0 -> 0.8


def test_shipped_distilled_model_is_small_and_solves_heldout_problems():
    from dllm_kernels.addition.default import DEFAULT_DISTILLED_DIR
    from dllm_kernels.addition.evaluate import evaluate

    assert (DEFAULT_DISTILLED_DIR / "model.safetensors").stat().st_size < 4 * 2**20
    model, tok, task = default_model(attn_impl="sdpa", path=DEFAULT_DISTILLED_DIR)
    assert task == AdditionTask()
    row = evaluate(model, task, task.heldout(32, seed=7), tok, "fast_dllm", threshold=0.99)
    assert row.accuracy >= 90.0 and row.nfe < 32  # 99.6% and NFE 4.8 expected (README); 32 problems keep it fast
