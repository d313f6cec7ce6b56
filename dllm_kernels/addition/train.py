"""Training of the tiny masked-diffusion model: LLaDA's objective on the addition task, block
diffusion, or a uniform-state (DiffusionGemma-like) objective with self-conditioning.

``python -m dllm_kernels.addition.train`` trains the shipped default from scratch (7 minutes on the
project's 2-core AVX512-BF16 CPU when its neighbours are quiet), evaluates it on the held-out set
with vanilla decoding and writes ``dllm_kernels/addition/assets/tiny-addition/`` (or ``--out``).

Objective (LLaDA SFT, ``ML-GSAI/LLaDA`` GUIDELINES.md). Per sequence draw ``t ~ U(0, 1)`` and
``p_mask = (1 - eps) t + eps`` (eps = 1e-3 keeps 1/t finite); mask every token of the generation
region (the answer and its EOS tail) independently with probability ``p_mask``; never mask the
prompt; run the bidirectional model on the noisy canvas and take the cross-entropy of the masked
positions, each divided by ``p_mask`` (the 1/t weight that makes the loss an upper bound of the
negative log-likelihood) and by the length of its row's generation region, summed and divided by
the batch size. Every row's generation region has the same length ``gen_length`` here, so that
is ``sum(CE / p_mask) / (batch * gen_length)``.

Block diffusion (``--block-size N``, :attr:`TrainConfig.block_size`). The model gets
``ModelConfig.block_size = N``: block-causal attention, blocks of N positions counted from canvas
position 0 (the convention of SDAR's and Fast-dLLM v2's generate functions, so the first
generation block also holds the prompt's last ``prompt_length % N`` tokens). The objective is
BD3-LM's (Arriola et al. 2025, "Block Diffusion", arXiv 2503.09573, ``kuleshov-group/bd3lms``):
the sum over blocks of the masked-diffusion loss of block b given the clean blocks before it.
BD3-LM, SDAR and Fast-dLLM v2 evaluate every block in one forward of a noisy+clean concatenation
with a custom mask; here it is estimated with one block per sample instead, which needs nothing
but the model's own block-causal mask (:func:`block_diffusion_noise`): pick a generation position
j uniformly and take its block k (so a block is chosen in proportion to its generation
positions); blocks before k are clean (the prompt always is); the generation positions of block k
are masked independently with probability ``p_mask = (1 - eps) t + eps``, ``t ~ U(0, 1)``; the
blocks after k are all MASK (as the canvas of a block decoder shows them; the block-causal mask
hides them from block k anyway, a test checks the loss does not depend on them). The loss
(:func:`block_diffusion_loss`) is the cross-entropy of block k's masked positions, each divided by
``p_mask`` and by the number of block k's generation positions, averaged over the batch: in
expectation over j and the masks, the per-token block-diffusion bound ``sum_i CE_i / gen_length``,
normalised as LLaDA's loss above. ``--init DIR`` starts from a trained checkpoint's weights (the
shipped block-diffusion model is adapted from the bidirectional one, as Fast-dLLM v2 adapts
Qwen2.5: ``python -m dllm_kernels train --block-size 8 --init
dllm_kernels/addition/assets/tiny-addition``, see its training.json for the exact command).

Uniform state (``--objective uniform --block-size N``, :attr:`TrainConfig.objective`). The model
gets ``ModelConfig.uniform_state = True``, block-causal attention over blocks of N positions as
above and DiffusionGemma's self-conditioning MLP (``self_conditioning_size``, :attr:`TrainConfig.
self_conditioning_size`). The noise (:func:`uniform_state_noise`) is the block-diffusion draw
above (position j, its block k, ``t ~ U(0, 1)``, ``p = (1 - eps) t + eps``, one uniform per
generation position, in that order from the generator), then one token per generation position
drawn uniformly from ``[0, vocab_size)`` (the law of the uniform policy's renoise): blocks before k
are clean (the prompt always is), each generation position of block k is replaced by its drawn
token independently with probability ``p`` (a draw may equal the clean token), every position of
the later blocks is replaced (hidden by the block-causal mask anyway; a test checks the loss does
not depend on them). Then, per row, a self-conditioning coin ``c ~ Bernoulli(1/2)`` and a
temperature ``T ~ U(0.4, 0.8)`` (the range of the inference schedule). The loss
(:func:`uniform_state_loss`) is the mean over the batch of the mean cross-entropy of the clean
tokens at ALL generation positions of block k, replaced or not (a uniform-state model must also
keep or correct the positions it is shown; no 1/t weight), on a forward whose self-conditioning
signal is, as DiffusionGemma trains it: for rows with ``c = 1``, ``soft_embedding(logits, E, T)``
of a first forward without gradient and with a zero signal, at block k's generation positions,
zeros elsewhere (prompt, earlier and later blocks); zeros for rows with ``c = 0``. ``E`` is the
input-embedding matrix (``model.embed_weight``). ``--init DIR`` may name a checkpoint without the
self-conditioning MLP (the shipped block-diffusion model): every other parameter is loaded, the
MLP alone is freshly initialised, its ``down_proj`` at zero (always, also without ``--init``), so
that training starts from the initial model up to the MLP's weightless RMSNorm of the embeddings.
The shipped uniform-state model (``assets/tiny-addition-us``) is adapted from the block-diffusion
one that way; its training.json has the exact command. Its held-out accuracy is measured with
``generate(policy="diffusion_gemma")``; training also reports :func:`uniform_monitor`, a plain
argmax denoiser, on a few held-out problems.

Optimisation: AdamW (weight decay on matrices only), linear warm-up then cosine decay to
``min_lr_ratio`` of the peak, gradient clipping at norm 1, matmuls autocast to bf16 (fp32
master weights, fp32 loss). Everything random comes from ``seed``: the problems (a
``random.Random``), the mask ratios and masks (a ``torch.Generator``) and the initialisation
(``torch.manual_seed``), so a run on one machine with one thread count is reproducible bit for
bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import platform
import random
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._argtypes import nonnegative_int, positive_float, positive_int, run_command
from ..decode.generate import generate
from ..models import DiffusionLM, ModelConfig, save_checkpoint
from ..models.checkpoint import load_checkpoint
from ..soft_embedding import soft_embedding
from .default import DEFAULT_BLOCK_DIFFUSION_DIR, DEFAULT_MODEL_DIR, DEFAULT_UNIFORM_STATE_DIR, default_model
from .evaluate import evaluate_vanilla
from .task import PAD, AdditionTask, build_tokenizer


def tiny_addition_config(tokenizer) -> ModelConfig:
    """The shipped model: 4 layers, d_model 128, 2 heads of 64 (the smallest head dim with GPU tiles
    of its own), SwiGLU 384, LLaDA-style (no logit shift, no GQA, untied head): 0.86 M parameters."""
    return ModelConfig(
        vocab_size=tokenizer.backend.get_vocab_size(),
        d_model=128,
        n_layers=4,
        n_heads=2,
        n_kv_heads=2,
        head_dim=64,
        ffn_dim=384,
        mask_id=tokenizer.mask_id,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.special_ids[PAD],
        max_seq_len=128,
    )


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """What training and distillation (:class:`~dllm_kernels.addition.distill.DistillConfig`)
    share: ``steps`` AdamW steps (``lr``, ``betas``) on batches of ``batch_size`` problems,
    gradients clipped at norm ``grad_clip``, ``threads`` CPU threads, everything random drawn from
    ``seed``; ``bf16`` autocasts the matmuls to bf16 (1.6x faster on AVX512-BF16 CPUs; use
    ``--no-bf16`` on others)."""

    steps: int
    lr: float
    batch_size: int = 128
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    bf16: bool = True

    @classmethod
    def add_arguments(cls, ap: argparse.ArgumentParser) -> None:
        """The command-line options of the shared settings, defaulting to ``cls``'s values."""
        d = cls()
        ap.add_argument("--steps", type=positive_int, default=d.steps)
        ap.add_argument("--batch-size", type=positive_int, default=d.batch_size)
        ap.add_argument("--lr", type=positive_float, default=d.lr)
        ap.add_argument("--seed", type=int, default=d.seed)
        ap.add_argument("--threads", type=positive_int, default=d.threads)
        ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=d.bf16)

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        """The config of parsed options: every field that ``args`` holds, the defaults elsewhere."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


OBJECTIVES = ("masked", "uniform")
SELF_CONDITIONING_PROB = 0.5  # share of rows trained on a self-conditioning signal
SOFT_TEMPERATURES = (0.4, 0.8)  # range of T of the soft embedding (the inference schedule's t_min, t_max)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(OptimConfig):
    """Training (module docstring): ``warmup_steps`` of linear warm-up, cosine decay to
    ``min_lr_ratio`` of the peak, AdamW ``weight_decay`` on matrices, LLaDA's ``mask_eps``.
    ``block_size``: train a block-diffusion model with blocks of this many positions (None: the
    bidirectional masked-diffusion model); ``init``: a checkpoint directory whose weights the
    model starts from (None: a fresh initialisation from ``seed``). ``objective``: ``"masked"``
    (LLaDA's, or block diffusion with ``block_size``) or ``"uniform"`` (uniform state, needs
    ``block_size``; the model gets a self-conditioning MLP of ``self_conditioning_size``)."""

    steps: int = 1000
    lr: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    mask_eps: float = 1e-3
    block_size: int | None = None
    init: str | None = None
    objective: str = "masked"
    self_conditioning_size: int = 128

    def __post_init__(self):
        if self.block_size is not None and (isinstance(self.block_size, bool) or self.block_size < 1):
            raise ValueError(f"block_size must be a positive int or None, got {self.block_size!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "uniform" and self.block_size is None:
            raise ValueError("objective 'uniform' needs block_size (a block-causal uniform-state model)")
        sc = self.self_conditioning_size
        if isinstance(sc, bool) or not isinstance(sc, int) or sc < 1:
            raise ValueError(f"self_conditioning_size must be a positive int, got {sc!r}")


def masked_diffusion_loss(
    model: DiffusionLM, prompt: torch.Tensor, target: torch.Tensor, *, generator: torch.Generator, eps: float = 1e-3
) -> torch.Tensor:
    """LLaDA's loss (module docstring) of one batch: ``prompt [B, P]``, ``target [B, G]`` int64.
    The mask draws come from the CPU ``generator`` (same draws on every device)."""
    B, P = prompt.shape
    G = target.shape[1]
    t = torch.rand(B, generator=generator).to(target.device)
    p_mask = ((1 - eps) * t + eps)[:, None].expand(B, G)  # [B, G]
    masked = torch.rand(B, G, generator=generator).to(target.device) < p_mask  # [B, G]
    noisy = torch.where(masked, model.config.mask_id, target)
    answer_rows = torch.arange(P, P + G, device=target.device).expand(B, G)
    logits = model(torch.cat([prompt, noisy], 1), logits_index=answer_rows)  # [B, G, V]
    ce = F.cross_entropy(logits[masked].float(), target[masked], reduction="none")
    return (ce / p_mask[masked]).sum() / (B * G)


@dataclass(frozen=True)
class BlockNoise:
    """One batch's block-diffusion noise (:func:`block_diffusion_noise`), every field over the
    generation region: ``chosen [B, G]`` the positions of each row's chosen block, ``masked
    [B, G]`` those of them that are masked, ``later [B, G]`` the positions of later blocks (shown
    as MASK), ``p_mask [B]`` the row's mask probability."""

    chosen: torch.Tensor
    masked: torch.Tensor
    later: torch.Tensor
    p_mask: torch.Tensor


def block_diffusion_noise(
    batch: int, prompt_length: int, gen_length: int, block_size: int, *, generator: torch.Generator, eps: float = 1e-3
) -> BlockNoise:
    """Draw the block-diffusion noise of ``batch`` rows (module docstring) on the CPU from
    ``generator``: a generation position j per row (its block, counted in canvas positions from
    0, is the chosen one), then ``t`` per row, then one uniform per generation position."""
    if block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size}")
    j = torch.randint(gen_length, (batch,), generator=generator)
    t = torch.rand(batch, generator=generator)
    u = torch.rand(batch, gen_length, generator=generator)
    p_mask = (1 - eps) * t + eps
    block = torch.div(torch.arange(prompt_length, prompt_length + gen_length), block_size, rounding_mode="floor")
    k = block[j][:, None]  # [B, 1] the chosen block
    chosen = block[None, :] == k
    return BlockNoise(chosen, chosen & (u < p_mask[:, None]), block[None, :] > k, p_mask)


def block_diffusion_loss(
    model: DiffusionLM, prompt: torch.Tensor, target: torch.Tensor, *, generator: torch.Generator, eps: float = 1e-3
) -> torch.Tensor:
    """The block-diffusion loss (module docstring) of one batch: ``prompt [B, P]``, ``target
    [B, G]`` int64, ``model.config.block_size`` set. The noise comes from the CPU ``generator``
    (:func:`block_diffusion_noise`)."""
    block_size = model.config.block_size
    if block_size is None:
        raise ValueError("block_diffusion_loss: the model has no block_size (a bidirectional model)")
    B, P = prompt.shape
    G = target.shape[1]
    noise = block_diffusion_noise(B, P, G, block_size, generator=generator, eps=eps)
    chosen, masked, later, p_mask = (x.to(target.device) for x in dataclasses.astuple(noise))
    noisy = torch.where(masked | later, model.config.mask_id, target)
    answer_rows = torch.arange(P, P + G, device=target.device).expand(B, G)
    logits = model(torch.cat([prompt, noisy], 1), logits_index=answer_rows)  # [B, G, V]
    ce = F.cross_entropy(logits[masked].float(), target[masked], reduction="none")
    weight = 1.0 / (p_mask[:, None] * chosen.sum(1, keepdim=True))  # [B, 1]: 1/t and 1/|block|
    return (ce * weight.expand(B, G)[masked]).sum() / B


@dataclass(frozen=True)
class UniformNoise:
    """One batch's uniform-state noise (:func:`uniform_state_noise`) over the generation region:
    ``chosen [B, G]`` each row's chosen block, ``noised [B, G]`` its positions that get a random
    token, ``later [B, G]`` the positions of later blocks (all random), ``p [B]`` the row's
    replacement probability, ``tokens [B, G]`` the random tokens drawn (used where noised or
    later), ``self_cond [B]`` the rows trained with a self-conditioning signal and
    ``temperature [B]`` their soft embedding's T."""

    chosen: torch.Tensor
    noised: torch.Tensor
    later: torch.Tensor
    p: torch.Tensor
    tokens: torch.Tensor
    self_cond: torch.Tensor
    temperature: torch.Tensor

    def apply(self, target: torch.Tensor) -> torch.Tensor:
        """The noisy generation region of clean ``target [B, G]``."""
        tokens = self.tokens.to(target.device)
        return torch.where((self.noised | self.later).to(target.device), tokens, target)


def uniform_state_noise(
    batch: int,
    prompt_length: int,
    gen_length: int,
    block_size: int,
    vocab_size: int,
    *,
    generator: torch.Generator,
    eps: float = 1e-3,
) -> UniformNoise:
    """Draw the uniform-state noise of ``batch`` rows (module docstring) on the CPU from
    ``generator``: :func:`block_diffusion_noise`'s draws, then a token in ``[0, vocab_size)`` per
    generation position, then the self-conditioning coin and temperature per row."""
    block = block_diffusion_noise(batch, prompt_length, gen_length, block_size, generator=generator, eps=eps)
    tokens = torch.randint(vocab_size, (batch, gen_length), generator=generator)
    self_cond = torch.rand(batch, generator=generator) < SELF_CONDITIONING_PROB
    lo, hi = SOFT_TEMPERATURES
    temperature = lo + (hi - lo) * torch.rand(batch, generator=generator)
    return UniformNoise(block.chosen, block.masked, block.later, block.p_mask, tokens, self_cond, temperature)


def uniform_state_loss(
    model: DiffusionLM, prompt: torch.Tensor, target: torch.Tensor, *, generator: torch.Generator, eps: float = 1e-3
) -> torch.Tensor:
    """The uniform-state loss (module docstring) of one batch: ``prompt [B, P]``, ``target [B, G]``
    int64, ``model.config.block_size`` set. The noise comes from the CPU ``generator``
    (:func:`uniform_state_noise`); a model without self-conditioning gets no signal (one forward)."""
    c = model.config
    if c.block_size is None:
        raise ValueError("uniform_state_loss: the model has no block_size (a bidirectional model)")
    B, P = prompt.shape
    G = target.shape[1]
    noise = uniform_state_noise(B, P, G, c.block_size, c.vocab_size, generator=generator, eps=eps)
    chosen = noise.chosen.to(target.device)
    canvas = torch.cat([prompt, noise.apply(target)], 1)
    answer_rows = torch.arange(P, P + G, device=target.device).expand(B, G)
    soft = None
    if c.self_conditioning_size is not None:
        soft = torch.zeros(B, P + G, c.d_model, device=target.device)
        rows = noise.self_cond.nonzero().flatten().to(target.device)
        if rows.numel():
            with torch.no_grad():  # DiffusionGemma's first pass: zero signal, no gradient
                first = model(canvas[rows], logits_index=answer_rows[rows]).float()  # [R, G, V]
                temps = noise.temperature.to(target.device)[rows, None].expand(-1, G).contiguous()
                s = soft_embedding(first, model.embed_weight.detach().float(), temperature=temps, backend="reference")
            soft[rows, P:] = s * chosen[rows, :, None]
    logits = model(canvas, logits_index=answer_rows, soft_embeds=soft)  # [B, G, V]
    ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none").view(B, G)
    return ((ce * chosen).sum(1) / chosen.sum(1)).mean()


@torch.no_grad()
def uniform_monitor(
    model: DiffusionLM, task: AdditionTask, problems, tokenizer, *, max_steps: int = 16, seed: int = 0
) -> float:
    """Exact match (%) of a plain argmax denoiser with self-conditioning, a training monitor (not
    the uniform policy): the generation region starts uniformly random (from ``seed``); block by
    block (blocks of ``config.block_size`` from canvas position 0), up to ``max_steps`` forwards
    of the canvas up to the block's end, each replacing the block's generation positions by the
    argmax and feeding the block's soft embedding at ``T`` from 0.8 down to 0.4 (zeros elsewhere,
    as in training) to the next forward; a block ends early once no argmax changes."""
    was_training = model.training
    model.eval()
    c = model.config
    device = model.embed_weight.device
    prompt, target = (t.to(device) for t in task.encode(list(problems), tokenizer))
    B, P = prompt.shape
    G = target.shape[1]
    g = torch.Generator().manual_seed(seed)
    canvas = torch.cat([prompt, torch.randint(c.vocab_size, (B, G), generator=g).to(device)], 1)
    sc = c.self_conditioning_size is not None
    lo_t, hi_t = SOFT_TEMPERATURES
    for start in range(P, P + G):
        if start != P and start % c.block_size:
            continue
        end = min(P + G, (start // c.block_size + 1) * c.block_size)
        soft = torch.zeros(B, end, c.d_model, device=device) if sc else None
        for step in range(max_steps):
            logits = model(
                canvas[:, :end],
                soft_embeds=soft,
                logits_index=torch.arange(start, end, device=device)[None].expand(B, -1),
            )
            new = logits.argmax(-1)
            stable = torch.equal(new, canvas[:, start:end])
            canvas[:, start:end] = new
            if stable:
                break
            if sc:
                temp = hi_t - (hi_t - lo_t) * step / max(1, max_steps - 1)
                soft[:, start:end] = torch.softmax(logits.float() / temp, -1) @ model.embed_weight.float()
    model.train(was_training)
    return 100.0 * int(task.exact_match(canvas[:, P:], target, c.eos_id).sum()) / B


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    task: AdditionTask,
    cfg: TrainConfig,
    *,
    model_config: ModelConfig | None = None,
    device: str = "cpu",
    log_every: int = 100,
    log=print,
    monitor_problems: int = 100,
) -> tuple[DiffusionLM, list[dict]]:
    """Train a model on ``task``'s training split (a fresh one, or ``cfg.init``'s weights; with
    ``cfg.block_size`` the block-diffusion objective on a block-causal model, else LLaDA's; with
    ``cfg.objective == "uniform"`` the uniform-state one); ``model_config``: the fresh model's
    shape (default :func:`tiny_addition_config`; its ``block_size`` is replaced by
    ``cfg.block_size``, and for the uniform objective ``uniform_state`` and
    ``self_conditioning_size`` by True and ``cfg.self_conditioning_size``). Returns the model in
    eval mode and the history: every ``log_every`` steps ``{"step", "loss" (mean since the last
    record), "lr", "wall_seconds", "cpu_seconds"}`` (CPU time of all threads: on a shared machine
    the wall time depends on the neighbours, the CPU time much less), for the uniform objective
    also ``"monitor_exact_match"``: :func:`uniform_monitor` on ``monitor_problems`` held-out
    problems (0: not recorded)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    tokenizer = build_tokenizer()
    if cfg.init is not None:
        if model_config is not None:
            raise ValueError("train: pass model_config or cfg.init, not both (init sets the shape)")
        start = load_checkpoint(cfg.init, attn_impl="sdpa")  # fp32 master weights
        model_config = start.config
    uniform = cfg.objective == "uniform"
    shape = dataclasses.replace(model_config or tiny_addition_config(tokenizer), block_size=cfg.block_size)
    if uniform:
        shape = dataclasses.replace(shape, uniform_state=True, self_conditioning_size=cfg.self_conditioning_size)
    model = DiffusionLM(shape, attn_impl="sdpa")
    if model.self_conditioning is not None:  # a fresh MLP adds nothing at first
        torch.nn.init.zeros_(model.self_conditioning.down_proj.weight)
    if cfg.init is not None:
        _load_init(model, start, cfg.init)
    model.to(device)
    if uniform:
        objective = uniform_state_loss
        monitor = task.heldout(monitor_problems, seed=MONITOR_SEED) if monitor_problems else None
    else:
        objective = masked_diffusion_loss if cfg.block_size is None else block_diffusion_loss
        monitor = None
    groups = [
        {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},  # norms
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    history, running = [], 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    model.train()
    for step in range(1, cfg.steps + 1):
        prompt, target = (t.to(device) for t in task.encode(task.sample(cfg.batch_size, rng=rng), tokenizer))
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = objective(model, prompt, target, generator=gen, eps=cfg.mask_eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        running += loss.item()
        if step % log_every == 0 or step == cfg.steps:
            record = {
                "step": step,
                "loss": running / (step % log_every or log_every),
                "lr": sched.get_last_lr()[0],
                "wall_seconds": time.perf_counter() - wall,
                "cpu_seconds": time.process_time() - cpu,
            }
            if monitor is not None:  # not counted in the training times
                w0, c0 = time.perf_counter(), time.process_time()
                record["monitor_exact_match"] = uniform_monitor(model, task, monitor, tokenizer)
                wall, cpu = wall + time.perf_counter() - w0, cpu + time.process_time() - c0
            history.append(record)
            running = 0.0
            log(" ".join(f"{k} {v:.4g}" for k, v in record.items()))
    return model.eval(), history


MONITOR_SEED = 4321  # held-out problems of the training monitor


def _load_init(model: DiffusionLM, start: DiffusionLM, path) -> None:
    """``start``'s weights into ``model``; only a self-conditioning MLP that ``model`` has and
    ``start`` lacks may stay as initialised (module docstring)."""
    missing, unexpected = model.load_state_dict(start.state_dict(), strict=False)
    fresh = start.self_conditioning is None
    missing = [k for k in missing if not (fresh and k.startswith("self_conditioning."))]
    if missing or unexpected:
        raise ValueError(
            f"--init {path}: checkpoint does not fit the model: missing {missing}, unexpected {unexpected}"
        )


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``python -m dllm_kernels train`` (and of this module's :func:`main`)."""
    d = TrainConfig()
    ap.add_argument(
        "--out",
        type=pathlib.Path,
        default=None,
        help=f"default: {DEFAULT_MODEL_DIR}, with --block-size {DEFAULT_BLOCK_DIFFUSION_DIR}, "
        f"with --objective uniform {DEFAULT_UNIFORM_STATE_DIR}",
    )
    TrainConfig.add_arguments(ap)
    ap.add_argument("--warmup-steps", type=nonnegative_int, default=d.warmup_steps)
    ap.add_argument(
        "--block-size",
        type=positive_int,
        default=None,
        help="train a block-diffusion model (block-causal attention, blocks of this many positions)",
    )
    ap.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=d.objective,
        help="masked: LLaDA's (block diffusion with --block-size); uniform: uniform-state with "
        "self-conditioning (needs --block-size)",
    )
    ap.add_argument(
        "--self-conditioning-size",
        type=positive_int,
        default=d.self_conditioning_size,
        help="hidden size of the self-conditioning MLP (--objective uniform)",
    )
    ap.add_argument(
        "--init",
        default=None,
        metavar="DIR",
        help="start from this checkpoint's weights (fine-tune; a missing self-conditioning MLP starts fresh)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--heldout", type=positive_int, default=1000, help="held-out problems for the final accuracy")
    ap.add_argument("--heldout-seed", type=int, default=1234)


def main(argv=None) -> int:
    """Train (or with --init fine-tune) the tiny model, write it as a checkpoint directory (fp16
    weights, tokenizer.json, task.json, training.json), reload it and report its held-out vanilla
    accuracy."""
    return run_command("python -m dllm_kernels.addition.train", main.__doc__, add_arguments, run, argv)


def run(args: argparse.Namespace, command: list[str]) -> int:
    """:func:`main` on parsed options (``command``: the command line recorded in training.json)."""
    task = AdditionTask()
    cfg = TrainConfig.from_args(args)
    if args.out is None:
        if cfg.objective == "uniform":
            args.out = DEFAULT_UNIFORM_STATE_DIR
        else:
            args.out = DEFAULT_MODEL_DIR if cfg.block_size is None else DEFAULT_BLOCK_DIFFUSION_DIR
    if cfg.init is not None and not (pathlib.Path(cfg.init) / "config.json").is_file():
        raise ValueError(f"--init {cfg.init}: no config.json (not a checkpoint directory?)")
    model, history = train(task, cfg, device=args.device, log_every=max(1, min(100, cfg.steps // 10)))
    last = history[-1]
    print(f"trained {cfg.steps} steps: {last['wall_seconds']:.0f} s wall, {last['cpu_seconds']:.0f} s CPU time")

    # what is shipped is what is evaluated: the fp16 weights, written and loaded back
    args.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model.half(), args.out)
    build_tokenizer().backend.save(str(args.out / "tokenizer.json"))
    task.save(args.out / "task.json")
    model, tokenizer, task = default_model(device=args.device, attn_impl="sdpa", path=args.out)
    t0 = time.perf_counter()
    extra = {}
    if cfg.objective == "uniform":
        heldout, extra = _uniform_heldout(model, task, tokenizer, args)
    else:
        acc = evaluate_vanilla(model, task, task.heldout(args.heldout, seed=args.heldout_seed), tokenizer)
        print(
            f"held-out exact match, vanilla decoding: {acc.accuracy:.2f}% of {acc.n} ({time.perf_counter() - t0:.0f} s)"
        )
        heldout = {
            "n": acc.n,
            "seed": args.heldout_seed,
            "decoding": "vanilla: 1 token per step, low confidence"
            + (
                ""
                if cfg.block_size is None
                else f", blocks of {task.block_length} from the generation start; every step forwards the whole "
                f"canvas and the model applies its block-causal mask (blocks of {cfg.block_size} positions from 0)"
            ),
            "exact_match_percent": acc.accuracy,
        }
    record = {
        "command": " ".join(command),
        "train_config": dataclasses.asdict(cfg),
        "task": dataclasses.asdict(task),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_wall_seconds": round(last["wall_seconds"], 1),
        "train_cpu_seconds": round(last["cpu_seconds"], 1),
        "final_loss": last["loss"],
        "heldout": heldout,
        **extra,
        "machine": {
            "device": args.device,
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
        },
        "history": history,
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


UNIFORM_POLICY = "diffusion_gemma"


def _uniform_heldout(model, task: AdditionTask, tokenizer, args) -> tuple[dict | None, dict]:
    """The held-out record of a uniform-state model: ``generate(policy="diffusion_gemma")`` exact
    match, and the :func:`uniform_monitor` on ``args.heldout`` problems."""
    problems = task.heldout(args.heldout, seed=args.heldout_seed)
    t0 = time.perf_counter()
    monitor = uniform_monitor(model, task, problems, tokenizer)
    print(f"held-out exact match, argmax monitor: {monitor:.2f}% of {len(problems)} ({time.perf_counter() - t0:.0f} s)")
    extra = {
        "monitor": {
            "n": len(problems),
            "seed": args.heldout_seed,
            "decoding": "uniform_monitor (train.py): argmax denoising with self-conditioning from a uniformly "
            "random canvas, blocks of the model's block_size from position 0, <= 16 forwards per block",
            "exact_match_percent": monitor,
        }
    }
    t0 = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(problems), 256):
            prompt, target = (t.to(args.device) for t in task.encode(problems[i : i + 256], tokenizer))
            out = generate(
                model, prompt, policy=UNIFORM_POLICY, gen_length=task.gen_length, block_length=8, seed=args.heldout_seed
            )
            correct += int(task.exact_match(out.generated, target, model.config.eos_id).sum())
    acc = 100.0 * correct / len(problems)
    print(f"held-out exact match, {UNIFORM_POLICY}: {acc:.2f}% of {len(problems)} ({time.perf_counter() - t0:.0f} s)")
    heldout = {
        "n": len(problems),
        "seed": args.heldout_seed,
        "decoding": f"generate(policy={UNIFORM_POLICY!r}, block_length=8, seed={args.heldout_seed})",
        "exact_match_percent": acc,
    }
    return heldout, extra


if __name__ == "__main__":
    sys.exit(main())
