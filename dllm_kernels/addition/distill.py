"""Trajectory distillation of the tiny addition model: d3LLM's pseudo-trajectory fine-tuning and
an R2-style variant.

``python -m dllm_kernels distill`` (or ``python -m dllm_kernels.addition.distill``) records teacher
trajectories with the shipped model, fine-tunes a copy on them and writes it as a checkpoint
directory (default ``dllm_kernels/addition/assets/tiny-addition-d3/``) with a ``distill.json`` record.

What d3LLM does (``hao-ai-lab/d3LLM`` ``d3llm_LLaDA/distill_*``), and what is implemented here:

1. Teacher trajectories. d3LLM decodes its training prompts with the teacher itself, vanilla
   LLaDA (one token per step, low confidence first), keeps the correct answers (retrying at a
   small temperature) and saves the canvas of every step. Here: :func:`record_trajectories` runs
   :func:`dllm_kernels.generate` on training-split problems and keeps, per correct answer, its
   tokens and ``commit_step`` (the step at which each position got its token): the canvas of
   step s is the answer with every position of ``commit_step >= s`` masked, so the order is the
   whole trajectory. No retries (the teacher is right on ~100% of the problems).
2. Pseudo-trajectory samples (:func:`pseudo_trajectory_masks`). Per sample pick a block k
   uniformly, draw a mask ratio ``r ~ U(r_prog, 0.8)`` with ``r_prog`` rising linearly from 0 to
   0.8 over training (progressive noise), and take the teacher's state inside the block after
   ``floor((1 - r) * block_length)`` of its tokens were committed: the positions it committed
   last are masked (d3LLM's trajectory step ``block_start + int((1 - r) * bs)``). Earlier blocks
   are shown whole (the teacher had finished them), later blocks are all MASK.
3. Loss (:func:`distill_loss`): ``(CE(masked) + CE(complement) + 2 * H) / 4``: token-mean
   cross-entropy on the masked positions; the same on a second canvas whose block shows the
   masked positions and masks the others (dParallel's complementary mask, so every position of
   the block gets a gradient); and the entropy of ``softmax(logits / 0.5)`` on the masked
   positions the model already predicts correctly (pushing their confidence up, which is what
   lets threshold and entropy decoders commit them earlier).

Differences from d3LLM, all because the model and task are tiny: full fine-tuning in fp32 with
bf16 autocast instead of LoRA r=256; a fixed block length (the task's 8) instead of the
progressive window 16 -> 32; a constant learning rate of AdamW as d3LLM but 1e-4 (d3LLM: 2e-5
on LoRA); a fixed number of steps over resampled trajectories instead of 6 epochs.

R2-style variant (``--variant r2``). R2-dLLM publishes no training code; its README says the
redundancy-aware SFT "aligns the model with efficient decoding trajectories". The interpretation
here: the teacher trajectories come from the efficient R2 decoder itself (``policy="r2"``, its
defaults), only those that reach the correct answer are kept, and the model is fine-tuned with
the same pseudo-trajectory objective on *their* order. A state of such a trajectory masks all
positions committed at or after one step together (several per step), so the model is trained
on exactly the canvases an efficient decoder visits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._argtypes import nonnegative_float, positive_int, run_command
from ..models import save_checkpoint
from .default import DEFAULT_DISTILLED_DIR, DEFAULT_MODEL_DIR, default_model
from .evaluate import decode_batches
from .task import AdditionTask, Problem
from .train import OptimConfig

# the teacher policy of each variant
TEACHERS = {"d3": ("vanilla", {}), "r2": ("r2", {})}


@dataclass
class Trajectories:
    """Correct teacher decodings: ``prompt [N, P]``, ``tokens [N, G]`` (the answers), ``order
    [N, G]`` int64, the teacher's 0-based step at which each generated position was committed."""

    prompt: torch.Tensor
    tokens: torch.Tensor
    order: torch.Tensor

    def __len__(self) -> int:
        return self.prompt.shape[0]


@torch.no_grad()
def record_trajectories(
    model,
    task: AdditionTask,
    problems: Sequence[Problem],
    tokenizer,
    policy: str = "vanilla",
    *,
    batch_size: int = 256,
    **overrides,
) -> Trajectories:
    """Decode ``problems`` with the teacher ``model`` and ``policy``; keep the correct ones."""
    keep = []
    for prompt, target, out in decode_batches(model, task, problems, tokenizer, policy, batch_size, **overrides):
        ok = task.exact_match(out.generated, target, model.config.eos_id)
        order = out.commit_step[:, out.gen_start :].long()
        keep.append((prompt[ok], out.generated[ok], order[ok]))
    return Trajectories(*(torch.cat(parts).cpu() for parts in zip(*keep)))


def pseudo_trajectory_masks(order: torch.Tensor, block: torch.Tensor, ratio: torch.Tensor, block_length: int):
    """The teacher's state inside one block per row (module docstring, step 2).

    Args:
        order: ``[B, G]`` teacher commit steps of the generation region.
        block: ``[B]`` int64 the block k of each row.
        ratio: ``[B]`` float mask ratio r in [0, 1).
    Returns:
        ``(masked, shown, later)`` bool ``[B, G]``: the block's positions the teacher committed
        last (step >= the step of its ``floor((1 - r) * block_length)``-th commit: ties are
        masked together, as in the teacher's canvas); the block's other positions; every
        position after the block.
    """
    B, G = order.shape
    pos = torch.arange(G, device=order.device)[None, :]
    start = (block * block_length)[:, None]
    in_block = (pos >= start) & (pos < start + block_length)  # [B, G]
    order_in_block = order.gather(1, start + torch.arange(block_length, device=order.device)[None, :])  # [B, bl]
    n_keep = ((1 - ratio) * block_length).floor().long().clamp(0, block_length - 1)  # [B]
    cut = order_in_block.sort(-1).values.gather(1, n_keep[:, None])  # [B, 1] first masked step
    masked = in_block & (order >= cut)
    return masked, in_block & ~masked, pos >= start + block_length


def distill_loss(
    model, prompt, tokens, masked, shown, later, *, entropy_weight: float = 2.0, entropy_temperature: float = 0.5
) -> tuple[torch.Tensor, dict]:
    """d3LLM's objective on one batch (module docstring, step 3); returns the loss and its terms.

    ``prompt [B, P]``, ``tokens [B, G]`` the teacher's answers, the masks of
    :func:`pseudo_trajectory_masks`. Both canvases run in one forward of ``2B`` rows.
    """
    mask_id = model.config.mask_id
    B, P = prompt.shape
    G = tokens.shape[1]
    first = torch.where(masked | later, mask_id, tokens)
    second = torch.where(shown | later, mask_id, tokens)  # complementary: the block's other half
    x = torch.cat([prompt, first], 1), torch.cat([prompt, second], 1)
    rows = torch.arange(P, P + G, device=tokens.device).expand(2 * B, G)
    logits = model(torch.cat(x), logits_index=rows).float()  # [2B, G, V]
    lm, lc = logits[:B][masked], logits[B:][shown]  # [n, V], [m, V]
    ce = F.cross_entropy(lm, tokens[masked])
    ce_comp = F.cross_entropy(lc, tokens[shown]) if lc.numel() else lc.sum()
    right = lm.argmax(-1) == tokens[masked]
    logp = (lm[right] / entropy_temperature).log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1).mean() if right.any() else lm.sum() * 0
    loss = (ce + ce_comp + entropy_weight * entropy) / (2 + entropy_weight)
    return loss, {"ce": ce.item(), "ce_comp": ce_comp.item(), "entropy": entropy.item()}


@dataclass(frozen=True, kw_only=True)
class DistillConfig(OptimConfig):
    """Distillation (module docstring): AdamW at a constant ``lr`` without weight decay, mask
    ratios rising to ``max_ratio``, the loss's entropy term weighted by ``entropy_weight``."""

    variant: str = "d3"  # "d3": vanilla teacher; "r2": the efficient R2 decoder as teacher
    problems: int = 2048  # training-split problems decoded by the teacher
    steps: int = 300
    lr: float = 1e-4
    max_ratio: float = 0.8
    entropy_weight: float = 2.0


def distill(model, task: AdditionTask, traj: Trajectories, cfg: DistillConfig, *, log_every: int = 50, log=print):
    """Fine-tune ``model`` in place on ``traj``; returns it in eval mode and the history."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)
    device = next(model.parameters()).device
    history, running = [], {}
    wall, cpu = time.perf_counter(), time.process_time()
    model.train()
    for step in range(cfg.steps):
        r_prog = cfg.max_ratio * step / max(1, cfg.steps - 1)
        idx = torch.randint(len(traj), (cfg.batch_size,), generator=gen)
        block = torch.randint(task.num_blocks, (cfg.batch_size,), generator=gen)
        ratio = r_prog + (cfg.max_ratio - r_prog) * torch.rand(cfg.batch_size, generator=gen)
        masks = pseudo_trajectory_masks(traj.order[idx], block, ratio, task.block_length)
        batch = [t.to(device) for t in (traj.prompt[idx], traj.tokens[idx], *masks)]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss, terms = distill_loss(model, *batch, entropy_weight=cfg.entropy_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        for k, v in {"loss": loss.item(), **terms}.items():
            running[k] = running.get(k, 0.0) + v
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            n = (step % log_every) + 1
            record = {
                "step": step + 1,
                "r_prog": round(r_prog, 3),
                **{k: v / n for k, v in running.items()},
                "wall_seconds": time.perf_counter() - wall,
                "cpu_seconds": time.process_time() - cpu,
            }
            history.append(record)
            running = {}
            log(" ".join(f"{k} {v:.4g}" for k, v in record.items()))
    return model.eval(), history


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``python -m dllm_kernels distill`` (and of this module's :func:`main`)."""
    d = DistillConfig()
    ap.add_argument("--variant", default=d.variant, choices=sorted(TEACHERS))
    ap.add_argument("--teacher", type=pathlib.Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--out", type=pathlib.Path, default=None, help=f"default: {DEFAULT_DISTILLED_DIR} (d3 variant)")
    ap.add_argument("--problems", type=positive_int, default=d.problems)
    ap.add_argument("--entropy-weight", type=nonnegative_float, default=d.entropy_weight)
    DistillConfig.add_arguments(ap)


def main(argv=None) -> int:
    """Record teacher trajectories with the shipped model, distill a copy, write it (fp16) with
    the tokenizer, task.json and distill.json."""
    return run_command("python -m dllm_kernels distill", main.__doc__, add_arguments, run, argv)


def run(args: argparse.Namespace, command: list[str]) -> int:
    """:func:`main` on parsed options (``command``: the command line recorded in distill.json)."""
    if args.out is None:
        args.out = (
            DEFAULT_DISTILLED_DIR if args.variant == "d3" else DEFAULT_DISTILLED_DIR.with_name("tiny-addition-r2")
        )
    cfg = DistillConfig.from_args(args)

    torch.set_num_threads(cfg.threads)
    model, tok, task = default_model(attn_impl="sdpa", path=args.teacher)
    policy, overrides = TEACHERS[cfg.variant]
    t0 = time.perf_counter()
    problems = task.sample(cfg.problems, rng=random.Random(cfg.seed), split="train")
    traj = record_trajectories(model, task, problems, tok, policy, **overrides)
    teacher_s = time.perf_counter() - t0
    print(f"teacher {policy}: {len(traj)} of {cfg.problems} trajectories correct ({teacher_s:.0f} s)")
    model, history = distill(model, task, traj, cfg)

    args.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model.half(), args.out)
    tok.backend.save(str(args.out / "tokenizer.json"))
    task.save(args.out / "task.json")
    record = {
        "command": " ".join(command),
        "config": dataclasses.asdict(cfg),
        "teacher": {
            "checkpoint": args.teacher.name,
            "policy": policy,
            "overrides": overrides,
            "problems": cfg.problems,
            "correct": len(traj),
            "seconds": round(teacher_s, 1),
        },
        "history": history,
    }
    (args.out / "distill.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
