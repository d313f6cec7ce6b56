"""Block-diffusion training of the tiny addition model (tiny shapes, a few steps) and the shipped
block-diffusion checkpoint (``assets/tiny-addition-bd``)."""

import dataclasses
import json
import math
import random

import pytest
import torch

from dllm_kernels.addition.task import AdditionTask, build_tokenizer
from dllm_kernels.addition.train import (
    TrainConfig,
    block_diffusion_loss,
    block_diffusion_noise,
    tiny_addition_config,
    train,
)
from dllm_kernels.models import DiffusionLM, ModelConfig, save_checkpoint

# prompt 10 tokens (canvas 0..9), generation 10..17; blocks of 4 by canvas position: 8..11 (holds
# the prompt's last 2 tokens and generation 10, 11), 12..15, 16..19 (generation 16, 17)
TASK = AdditionTask(n_digits=4, gen_length=8, block_length=4)
TOK = build_tokenizer()
P, G, BS = TASK.prompt_length, TASK.gen_length, 4
GEN_BLOCK = torch.arange(P, P + G) // BS  # block of each generation position: 2 2 3 3 3 3 4 4


def small_config(block_size=BS) -> ModelConfig:
    c = tiny_addition_config(TOK)
    return dataclasses.replace(c, d_model=32, n_layers=1, head_dim=16, ffn_dim=64, block_size=block_size)


def test_noise_masks_only_the_chosen_block_and_hides_later_ones():
    n = block_diffusion_noise(4000, P, G, BS, generator=torch.Generator().manual_seed(0))
    # replay the draws: position j, then t, then one uniform per generation position
    g = torch.Generator().manual_seed(0)
    j = torch.randint(G, (4000,), generator=g)
    p = (1 - 1e-3) * torch.rand(4000, generator=g) + 1e-3
    u = torch.rand(4000, G, generator=g)
    k = GEN_BLOCK[j][:, None]
    assert torch.equal(n.chosen, GEN_BLOCK[None, :] == k)
    assert torch.equal(n.later, GEN_BLOCK[None, :] > k)
    assert torch.equal(n.masked, n.chosen & (u < p[:, None]))
    torch.testing.assert_close(n.p_mask, p)
    earlier = GEN_BLOCK[None, :] < k
    assert not (n.masked & ~n.chosen).any() and not (earlier & (n.masked | n.later)).any()
    # a block is chosen in proportion to its generation positions: 2/8, 4/8, 2/8
    freq = torch.stack([(n.chosen[:, GEN_BLOCK == b].any(1)).float().mean() for b in (2, 3, 4)])
    torch.testing.assert_close(freq, torch.tensor([0.25, 0.5, 0.25]), atol=0.03, rtol=0)
    # the masked share of the chosen block follows p_mask
    share = n.masked.sum(1) / n.chosen.sum(1)
    assert abs(float((share - n.p_mask).mean())) < 0.02


class Stub(torch.nn.Module):
    """Logits are a parameter per (row, generation position): CE at every position is its own
    function, so the gradient shows which positions the loss reads. Records the canvas."""

    def __init__(self, B):
        super().__init__()
        self.config = small_config()
        self.logits = torch.nn.Parameter(torch.zeros(B, G, self.config.vocab_size))

    def forward(self, x, logits_index):
        self.canvas = x
        assert torch.equal(logits_index[0], torch.arange(P, P + G))
        return self.logits


def test_loss_reads_only_the_chosen_blocks_masked_positions():
    prompt, target = TASK.encode(TASK.sample(64, rng=random.Random(0)), TOK)
    model = Stub(64)
    loss = block_diffusion_loss(model, prompt, target, generator=torch.Generator().manual_seed(3))
    n = block_diffusion_noise(64, P, G, BS, generator=torch.Generator().manual_seed(3))
    # the canvas: prompt clean, earlier blocks clean, the chosen block masked where drawn, later blocks MASK
    mask_id = model.config.mask_id
    assert torch.equal(model.canvas[:, :P], prompt)
    assert torch.equal(model.canvas[:, P:], torch.where(n.masked | n.later, mask_id, target))
    assert n.masked.any() and (n.chosen & ~n.masked).any() and n.later.any()
    # uniform logits: CE = log V at every masked position, weighted 1 / (p_mask * |chosen block|)
    w = 1.0 / (n.p_mask[:, None] * n.chosen.sum(1, keepdim=True))
    expected = math.log(model.config.vocab_size) * (n.masked * w).sum() / 64
    torch.testing.assert_close(loss, expected.float())
    loss.backward()
    assert torch.equal(model.logits.grad.abs().sum(-1) > 0, n.masked)


def test_later_blocks_are_invisible_to_the_chosen_block():
    # the loss leaves later blocks as MASK; under the block-causal mask their content cannot
    # change the logits of the chosen block or of anything before it
    torch.manual_seed(0)
    model = DiffusionLM(small_config(), attn_impl="sdpa").eval()
    prompt, target = TASK.encode(TASK.sample(4, rng=random.Random(1)), TOK)
    shown = torch.cat([prompt, torch.full_like(target, model.config.mask_id)], 1)
    for k in (2, 3):
        later = torch.cat([torch.zeros(P, dtype=torch.bool), GEN_BLOCK > k])
        upto = (P + (GEN_BLOCK <= k).sum()).item()
        with torch.no_grad():
            a = model(shown)[:, :upto]
            b = model(torch.where(later, torch.cat([prompt, target], 1), shown))[:, :upto]
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        with torch.no_grad():  # ...while a bidirectional model would see them
            bidir = DiffusionLM(small_config(None), attn_impl="sdpa").eval()
            bidir.load_state_dict(model.state_dict())
            assert not torch.allclose(
                bidir(shown)[:, :upto], bidir(torch.where(later, torch.cat([prompt, target], 1), shown))[:, :upto]
            )


def test_block_diffusion_training_smoke_and_init(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=8, lr=1e-3, warmup_steps=1, seed=2, threads=1, bf16=False, block_size=BS)
    model, hist = train(TASK, cfg, model_config=small_config(None), log_every=1, log=lambda s: None)
    assert model.config.block_size == BS and not model.training
    assert [h["step"] for h in hist] == [1, 2, 3] and all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in hist)
    again, _ = train(TASK, cfg, model_config=small_config(None), log_every=1, log=lambda s: None)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    # fine-tuning: cfg.init's shape and weights, block_size from cfg (here: back to bidirectional)
    save_checkpoint(model, tmp_path)
    tuned, _ = train(
        TASK, dataclasses.replace(cfg, init=str(tmp_path), block_size=None, lr=1e-9), log_every=1, log=lambda s: None
    )
    assert tuned.config == dataclasses.replace(model.config, block_size=None)
    for (name, a), b in zip(model.state_dict().items(), tuned.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_bad_block_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="block_size"):
        TrainConfig(block_size=0)
    prompt, target = TASK.encode(TASK.sample(2, rng=random.Random(0)), TOK)
    with pytest.raises(ValueError, match="block_size"):
        block_diffusion_loss(DiffusionLM(small_config(None)), prompt, target, generator=torch.Generator())
    with pytest.raises(ValueError, match="model_config or cfg.init"):
        train(TASK, TrainConfig(steps=1, init=str(tmp_path)), model_config=small_config())


def test_shipped_block_diffusion_model_decodes_heldout_problems():
    from dllm_kernels.addition import DEFAULT_BLOCK_DIFFUSION_DIR, default_model
    from dllm_kernels.addition.evaluate import evaluate_vanilla

    path = DEFAULT_BLOCK_DIFFUSION_DIR
    assert (path / "model.safetensors").stat().st_size < 4 * 2**20
    model, tok, task = default_model(attn_impl="sdpa", path=path)
    assert task == AdditionTask() and model.config.block_size == 8 and not model.config.logit_shift
    record = json.loads((path / "training.json").read_text())
    assert record["train_config"]["block_size"] == 8 and record["heldout"]["n"] == 1000
    assert "block-causal" in record["heldout"]["decoding"]
    # 64 problems keep it fast (100% of them expected); allow 10 points under the record (98.8% of 1000)
    acc = evaluate_vanilla(model, task, task.heldout(64, seed=7), tok)
    assert acc.n == 64 and acc.accuracy >= record["heldout"]["exact_match_percent"] - 10.0


@pytest.mark.parametrize(
    "argv, name",
    [
        (["train", "--block-size", "0"], "--block-size"),
        (["train", "--warmup-steps", "-1"], "--warmup-steps"),
        (["train", "--init", "/nonexistent/checkpoint"], "--init"),
    ],
)
def test_bad_train_options_are_one_line_errors(argv, name, capsys):
    from dllm_kernels.__main__ import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and name in err, err
