"""Training of the tiny masked-diffusion model: LLaDA's objective on the addition task.

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

from .._argtypes import positive_float, positive_int, run_command
from ..models import DiffusionLM, ModelConfig, save_checkpoint
from .default import DEFAULT_MODEL_DIR, default_model
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


@dataclass(frozen=True, kw_only=True)
class TrainConfig(OptimConfig):
    """Training from scratch (module docstring): ``warmup_steps`` of linear warm-up, cosine decay
    to ``min_lr_ratio`` of the peak, AdamW ``weight_decay`` on matrices, LLaDA's ``mask_eps``."""

    steps: int = 1000
    lr: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    mask_eps: float = 1e-3


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
) -> tuple[DiffusionLM, list[dict]]:
    """Train a fresh model on ``task``'s training split; returns it in eval mode and the history:
    every ``log_every`` steps ``{"step", "loss" (mean since the last record), "lr",
    "wall_seconds", "cpu_seconds"}`` (CPU time of all threads: on a shared machine the wall time
    depends on the neighbours, the CPU time much less)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    tokenizer = build_tokenizer()
    model = DiffusionLM(model_config or tiny_addition_config(tokenizer), attn_impl="sdpa").to(device)
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
            loss = masked_diffusion_loss(model, prompt, target, generator=gen, eps=cfg.mask_eps)
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
            history.append(record)
            running = 0.0
            log(" ".join(f"{k} {v:.4g}" for k, v in record.items()))
    return model.eval(), history


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``python -m dllm_kernels train`` (and of this module's :func:`main`)."""
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_MODEL_DIR)
    TrainConfig.add_arguments(ap)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--heldout", type=positive_int, default=1000, help="held-out problems for the final accuracy")
    ap.add_argument("--heldout-seed", type=int, default=1234)


def main(argv=None) -> int:
    """Train the tiny model, write it as a checkpoint directory (fp16 weights, tokenizer.json,
    task.json, training.json), reload it and report its held-out vanilla accuracy."""
    return run_command("python -m dllm_kernels.addition.train", main.__doc__, add_arguments, run, argv)


def run(args: argparse.Namespace, command: list[str]) -> int:
    """:func:`main` on parsed options (``command``: the command line recorded in training.json)."""
    task = AdditionTask()
    cfg = TrainConfig.from_args(args)
    model, history = train(task, cfg, device=args.device)
    last = history[-1]
    print(f"trained {cfg.steps} steps: {last['wall_seconds']:.0f} s wall, {last['cpu_seconds']:.0f} s CPU time")

    # what is shipped is what is evaluated: the fp16 weights, written and loaded back
    args.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model.half(), args.out)
    build_tokenizer().backend.save(str(args.out / "tokenizer.json"))
    task.save(args.out / "task.json")
    model, tokenizer, task = default_model(device=args.device, attn_impl="sdpa", path=args.out)
    t0 = time.perf_counter()
    acc = evaluate_vanilla(model, task, task.heldout(args.heldout, seed=args.heldout_seed), tokenizer)
    print(f"held-out exact match, vanilla decoding: {acc.accuracy:.2f}% of {acc.n} ({time.perf_counter() - t0:.0f} s)")
    record = {
        "command": " ".join(command),
        "train_config": dataclasses.asdict(cfg),
        "task": dataclasses.asdict(task),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_wall_seconds": round(last["wall_seconds"], 1),
        "train_cpu_seconds": round(last["cpu_seconds"], 1),
        "final_loss": last["loss"],
        "heldout": {
            "n": acc.n,
            "seed": args.heldout_seed,
            "decoding": "vanilla: 1 token per step, low confidence",
            "exact_match_percent": acc.accuracy,
        },
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


if __name__ == "__main__":
    sys.exit(main())
