"""The uniform-state (DiffusionGemma-like) training objective with self-conditioning, its training
monitor and ``--objective uniform`` (tiny shapes, a few steps)."""

import dataclasses
import json
import math
import random

import pytest
import torch
from test_addition_bd import BS, GEN_BLOCK, TASK, TOK, G, P  # the same tiny task and blocks

from dllm_kernels.addition import train as train_mod
from dllm_kernels.addition.task import AdditionTask
from dllm_kernels.addition.train import (
    TrainConfig,
    block_diffusion_noise,
    tiny_addition_config,
    train,
    uniform_monitor,
    uniform_state_loss,
    uniform_state_noise,
)
from dllm_kernels.models import DiffusionLM, ModelConfig, load_checkpoint, save_checkpoint
from dllm_kernels.reference import soft_embedding

V = TOK.backend.get_vocab_size()


def small_config(block_size=BS, sc=16) -> ModelConfig:
    c = tiny_addition_config(TOK)
    return dataclasses.replace(
        c,
        d_model=32,
        n_layers=1,
        head_dim=16,
        ffn_dim=64,
        block_size=block_size,
        uniform_state=sc is not None,
        self_conditioning_size=sc,
    )


def test_noise_replaces_only_the_chosen_block_uniformly():
    N = 4000
    n = uniform_state_noise(N, P, G, BS, V, generator=torch.Generator().manual_seed(0))
    # replay: the block-diffusion draws, then the tokens, then the coin and T per row
    g = torch.Generator().manual_seed(0)
    b = block_diffusion_noise(N, P, G, BS, generator=g)
    tokens = torch.randint(V, (N, G), generator=g)
    coin = torch.rand(N, generator=g) < 0.5
    temp = 0.4 + 0.4 * torch.rand(N, generator=g)
    assert torch.equal(n.chosen, b.chosen) and torch.equal(n.noised, b.masked) and torch.equal(n.later, b.later)
    assert torch.equal(n.tokens, tokens) and torch.equal(n.self_cond, coin)
    torch.testing.assert_close(n.p, b.p_mask)
    torch.testing.assert_close(n.temperature, temp)
    # applied to a clean target: earlier blocks untouched, the chosen block replaced where drawn, later all random
    target = torch.full((N, G), 5)
    noisy = n.apply(target)
    assert torch.equal(noisy, torch.where(n.noised | n.later, tokens, target))
    earlier = GEN_BLOCK[None, :] < (GEN_BLOCK[None, :] * n.chosen).amax(1, keepdim=True)
    assert torch.equal(noisy[earlier], target[earlier]) and earlier.any()
    assert not (n.noised & ~n.chosen).any()
    # the replacement rate follows p, the tokens are uniform over [0, V) (MASK and the rest included)
    share = n.noised.sum(1) / n.chosen.sum(1)
    assert abs(float((share - n.p).mean())) < 0.02
    assert int(tokens.min()) == 0 and int(tokens.max()) == V - 1
    counts = torch.bincount(tokens.flatten(), minlength=V).float()
    assert float((counts / counts.mean() - 1).abs().max()) < 0.1
    assert abs(float(coin.float().mean()) - 0.5) < 0.03
    assert float(temp.min()) >= 0.4 and float(temp.max()) <= 0.8


class Stub(torch.nn.Module):
    """Logits are a parameter per (row, generation position); records each forward's canvas, signal
    and grad mode. A self-conditioning size in its config, so the loss runs the two-pass branch."""

    def __init__(self, B, sc=16):
        super().__init__()
        self.config = small_config(sc=sc)
        self.logits = torch.nn.Parameter(torch.randn(B, G, V, generator=torch.Generator().manual_seed(5)))
        self.embed_weight = torch.randn(V, self.config.d_model, generator=torch.Generator().manual_seed(6))
        self.calls = []

    def forward(self, x, logits_index, soft_embeds=None):
        assert torch.equal(logits_index[0], torch.arange(P, P + G))
        self.calls.append((x, soft_embeds, torch.is_grad_enabled()))
        assert x.shape[0] == self.logits.shape[0]  # every row or none takes the first pass here
        return self.logits


@pytest.mark.parametrize("coin", [False, True], ids=["zero-signal", "self-conditioned"])
def test_loss_is_the_mean_ce_of_the_chosen_block_with_both_signal_branches(coin, monkeypatch):
    B = 16
    prompt, target = TASK.encode(TASK.sample(B, rng=random.Random(0)), TOK)
    draw = uniform_state_noise
    noise = {}

    def forced(*args, **kwargs):  # every row takes the branch under test
        noise["n"] = dataclasses.replace(draw(*args, **kwargs), self_cond=torch.full((B,), coin))
        return noise["n"]

    monkeypatch.setattr(train_mod, "uniform_state_noise", forced)
    model = Stub(B)
    n = draw(B, P, G, BS, V, generator=torch.Generator().manual_seed(3))
    model.canvas_rows = torch.cat([prompt, n.apply(target)], 1)
    loss = uniform_state_loss(model, prompt, target, generator=torch.Generator().manual_seed(3))
    n = noise["n"]
    ce = torch.nn.functional.cross_entropy(model.logits.detach().flatten(0, 1), target.flatten(), reduction="none")
    expected = ((ce.view(B, G) * n.chosen).sum(1) / n.chosen.sum(1)).mean()
    torch.testing.assert_close(loss, expected)
    # ALL the chosen block's positions are read, replaced or not, and nothing else
    loss.backward()
    assert torch.equal(model.logits.grad.abs().sum(-1) > 0, n.chosen)
    assert (n.chosen & ~n.noised).any() and (n.chosen & n.noised).any()
    last_canvas, signal, grad = model.calls[-1]
    assert grad and torch.equal(last_canvas, model.canvas_rows)
    if not coin:
        assert len(model.calls) == 1 and torch.equal(signal, torch.zeros(B, P + G, model.config.d_model))
        return
    assert len(model.calls) == 2
    first_canvas, first_signal, first_grad = model.calls[0]
    assert first_signal is None and not first_grad and torch.equal(first_canvas, model.canvas_rows)
    temps = n.temperature[:, None].expand(B, G).contiguous()
    soft = soft_embedding(model.logits.detach(), model.embed_weight, temperature=temps)
    want = torch.zeros(B, P + G, model.config.d_model)
    want[:, P:] = soft * n.chosen[:, :, None]
    torch.testing.assert_close(signal, want, atol=1e-5, rtol=1e-5)
    assert (signal[:, P:][~n.chosen] == 0).all() and (signal[:, :P] == 0).all()


@pytest.mark.parametrize("sc", [16, None], ids=["self-conditioned", "no-mlp"])
def test_loss_does_not_depend_on_later_blocks(sc, monkeypatch):
    torch.manual_seed(0)
    model = DiffusionLM(small_config(sc=sc), attn_impl="sdpa").eval()
    prompt, target = TASK.encode(TASK.sample(32, rng=random.Random(1)), TOK)
    draw = uniform_state_noise

    def noise(redraw_later):  # every row self-conditioned; optionally the later blocks re-drawn
        def patched(*args, **kwargs):
            n = draw(*args, **kwargs)
            other = torch.randint(V, n.tokens.shape, generator=torch.Generator().manual_seed(9))
            tokens = torch.where(n.later, other, n.tokens) if redraw_later else n.tokens
            return dataclasses.replace(n, tokens=tokens, self_cond=torch.ones_like(n.self_cond))

        return patched

    def loss(redraw_later):
        monkeypatch.setattr(train_mod, "uniform_state_noise", noise(redraw_later))
        with torch.no_grad():
            return uniform_state_loss(model, prompt, target, generator=torch.Generator().manual_seed(4))

    n = draw(32, P, G, BS, V, generator=torch.Generator().manual_seed(4))
    other = torch.randint(V, n.tokens.shape, generator=torch.Generator().manual_seed(9))
    assert (n.later & (other != n.tokens)).any()
    torch.testing.assert_close(loss(True), loss(False), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="block_size"):
        uniform_state_loss(DiffusionLM(small_config(None)), prompt, target, generator=torch.Generator())


class Oracle(torch.nn.Module):
    """Logits peaked at a fixed generation region (``answer``) at every forwarded generation
    position, whatever the canvas; records the forwarded lengths."""

    def __init__(self, answer, config):
        super().__init__()
        self.config, self.answer, self.lengths = config, answer, []
        self.w = torch.nn.Parameter(torch.zeros(()))

    @property
    def embed_weight(self):
        return torch.eye(V, self.config.d_model)

    def forward(self, x, *, logits_index, soft_embeds=None):
        assert soft_embeds is not None and soft_embeds.shape == (*x.shape, self.config.d_model)
        self.lengths.append(x.shape[1])
        return 10.0 * torch.nn.functional.one_hot(self.answer[logits_index - P], V).float()


def test_monitor_denoises_block_by_block():
    problem = TASK.sample(1, rng=random.Random(2))
    _, target = TASK.encode(problem, TOK)
    model = Oracle(target[0], small_config())
    assert uniform_monitor(model, TASK, problem * 3, TOK) == 100.0
    # blocks end at canvas 12, 16, 18: one forward sets the block, the next finds it stable
    assert model.lengths == [12, 12, 16, 16, 18, 18]
    wrong = target[0].clone()
    wrong[0] = (wrong[0] + 1) % V
    assert uniform_monitor(Oracle(wrong, small_config()), TASK, problem, TOK) == 0.0


def test_training_runs_from_an_init_without_self_conditioning(tmp_path):
    # a block-diffusion checkpoint (no MLP) -> a uniform-state model: the other weights loaded, down_proj 0
    torch.manual_seed(0)
    bd = DiffusionLM(small_config(sc=None), attn_impl="sdpa")
    save_checkpoint(bd, tmp_path / "bd")
    opt = dict(steps=2, batch_size=8, lr=1e-9, warmup_steps=1, seed=2, threads=1, bf16=False, block_size=BS)
    cfg = TrainConfig(**opt, objective="uniform", self_conditioning_size=16, init=str(tmp_path / "bd"))
    model, hist = train(TASK, cfg, log_every=1, log=lambda s: None, monitor_problems=4)
    assert model.config == small_config()
    assert [h["step"] for h in hist] == [1, 2] and all(math.isfinite(h["loss"]) for h in hist)
    assert all(0.0 <= h["monitor_exact_match"] <= 100.0 for h in hist)
    for name, a in bd.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], a, atol=1e-6, rtol=0, msg=name)
    assert float(model.self_conditioning.down_proj.weight.detach().abs().max()) < 1e-6
    again, _ = train(TASK, cfg, log_every=1, log=lambda s: None, monitor_problems=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    # a checkpoint with weights the new model lacks is refused (only a missing MLP starts fresh)
    with pytest.raises(
        ValueError, match=r"^--init ckpt: checkpoint does not fit the model: missing \[\], unexpected \['self_"
    ):
        train_mod._load_init(DiffusionLM(small_config(sc=None)), model, "ckpt")
    with pytest.raises(ValueError, match=r"^--init ckpt: .*missing \['lm_head.weight'\]"):
        plain = DiffusionLM(small_config(sc=None))
        train_mod._load_init(DiffusionLM(small_config()), _Without(plain, "lm_head.weight"), "ckpt")


class _Without(torch.nn.Module):
    """A model whose state dict lacks one tensor."""

    def __init__(self, model, name):
        super().__init__()
        self.model, self.name, self.self_conditioning = model, name, model.self_conditioning

    def state_dict(self):
        return {k: v for k, v in self.model.state_dict().items() if k != self.name}


def test_cli_trains_two_steps_and_writes_a_loadable_checkpoint(tmp_path, capsys):
    from dllm_kernels.__main__ import main

    torch.manual_seed(0)
    bd = DiffusionLM(dataclasses.replace(small_config(8, sc=None), n_layers=1), attn_impl="sdpa")
    save_checkpoint(bd, tmp_path / "bd")
    out = tmp_path / "us"
    argv = ["train", "--objective", "uniform", "--block-size", "8", "--init", str(tmp_path / "bd"), "--steps", "2"]
    argv += [
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--self-conditioning-size",
        "8",
        "--heldout",
        "4",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    model = load_checkpoint(out)
    assert model.config.uniform_state and model.config.self_conditioning_size == 8 and model.config.block_size == 8
    record = json.loads((out / "training.json").read_text())
    assert record["train_config"]["objective"] == "uniform" and record["monitor"]["n"] == 4
    assert record["heldout"]["n"] == 4 and 0 <= record["heldout"]["exact_match_percent"] <= 100
    assert "held-out exact match, diffusion_gemma" in capsys.readouterr().out


def test_existing_objectives_are_unchanged(monkeypatch):
    """The default objective is 'masked': LLaDA's loss, or block diffusion with block_size, on a model
    without self-conditioning; the uniform objective needs a block size."""
    assert TrainConfig().objective == "masked"
    used = []
    for name in ("masked_diffusion_loss", "block_diffusion_loss", "uniform_state_loss"):
        real = getattr(train_mod, name)
        monkeypatch.setattr(train_mod, name, lambda *a, _n=name, _r=real, **k: used.append(_n) or _r(*a, **k))
    cfg = TrainConfig(steps=1, batch_size=4, lr=1e-3, warmup_steps=1, threads=1, bf16=False)
    for block_size, objective, want in [
        (None, "masked", "masked_diffusion_loss"),
        (BS, "masked", "block_diffusion_loss"),
    ]:
        torch.manual_seed(0)
        c = dataclasses.replace(cfg, block_size=block_size, objective=objective)
        model, hist = train(TASK, c, model_config=small_config(None, sc=None), log=lambda s: None)
        assert used[-1] == want and "monitor_exact_match" not in hist[-1]
        assert model.self_conditioning is None and not model.config.uniform_state
    with pytest.raises(ValueError, match="objective 'uniform' needs block_size"):
        TrainConfig(objective="uniform")
    with pytest.raises(ValueError, match="objective must be one of"):
        TrainConfig(objective="gemma")
    with pytest.raises(ValueError, match="self_conditioning_size"):
        TrainConfig(self_conditioning_size=0)


def test_bad_uniform_options_are_one_line_errors(capsys):
    from dllm_kernels.__main__ import main

    assert main(["train", "--objective", "uniform"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "block_size" in err, err


def test_shipped_uniform_state_model():
    from dllm_kernels.addition import default_model
    from dllm_kernels.addition.default import DEFAULT_BLOCK_DIFFUSION_DIR, DEFAULT_UNIFORM_STATE_DIR

    path = DEFAULT_UNIFORM_STATE_DIR
    assert (path / "model.safetensors").stat().st_size < 4 * 2**20
    model, tok, task = default_model(attn_impl="sdpa", path=path)
    bd, _, _ = default_model(attn_impl="sdpa", path=DEFAULT_BLOCK_DIFFUSION_DIR)
    assert task == AdditionTask() and model.config.uniform_state and model.config.block_size == 8
    assert model.config == dataclasses.replace(bd.config, uniform_state=True, self_conditioning_size=128)
    record = json.loads((path / "training.json").read_text())
    assert record["train_config"]["objective"] == "uniform" and "--objective uniform" in record["command"]
    assert record["monitor"]["n"] == 1000
    # 64 problems keep it fast; allow 10 points under the recorded monitor (1000 problems)
    assert uniform_monitor(model, task, task.heldout(64, seed=7), tok) >= record["monitor"]["exact_match_percent"] - 10
