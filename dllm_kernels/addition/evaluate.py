"""Evaluation on the synthetic task: every policy's accuracy-parallelism curve and d3LLM's AUP.

One evaluation point runs :func:`dllm_kernels.generate` with one policy setting over a held-out
set (batched, ragged batches are fine) and reports

* accuracy: exact match in % (:meth:`AdditionTask.exact_match`: the answer up to its first EOS);
* NFE: model forwards per problem, as the policy's paper counts them (``GenerateResult.nfe``);
* tokens per forward (TPF), d3LLM's definition: generated tokens up to and including the first
  EOS, divided by the NFE, averaged over the problems. Vanilla decoding decodes the EOS tail one
  token per forward too, so its TPF is below 1 on this task (answers fill ~1/3 of the region);
* tokens/s: the same tokens over the wall time of the whole set (on a CPU the kernels run on
  Triton's interpreter or the references: a CPU number, not a GPU one).

A sweep varies each policy's main knob (:data:`QUICK_SWEEPS`, :data:`FULL_SWEEPS`, from
:func:`dllm_kernels.policies.sweeps`): the threshold tau of Fast-dLLM, Streaming-dLLM and R2-dLLM,
d3LLM's entropy threshold, vanilla's forwards per block (one token per step, then two, four),
the block-diffusion policies' thresholds and the uniform-state policy's stopping test.
:func:`aup` scores each policy's curve with ``y_max`` the best accuracy over every model and
policy compared.
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..decode.generate import generate
from ..policies import resolve_policy, sweeps
from .task import AdditionTask, Problem

# policy -> its sweep: constructor overrides, from the most careful setting to the most parallel
# (each decoder's section of dllm_kernels.policies.published holds its sweep values)
QUICK_SWEEPS = sweeps("quick")
FULL_SWEEPS = sweeps("full")

# intra-op threads of an evaluation (torch.set_num_threads): the tiny model's ops are too small to
# split, so on a CPU extra threads mostly add synchronisation (quick sweep on a 2-core machine:
# 63 s with 1 thread, 74 s with 2, identical results; much worse when the cores are shared).
# Pass threads=None to keep torch's setting.
DEFAULT_THREADS = 1


@contextlib.contextmanager
def intra_op_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (None: unchanged), restoring the count after."""
    if n is None:
        yield
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive int or None, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# short names of the swept keywords in tables (d3LLM's "threshold" is an entropy threshold)
_SHORT = {
    "threshold": "thr",
    "spatial_threshold": "spatial",
    "temporal_threshold": "temporal",
    "steps_per_block": "steps/block",
    "stability_threshold": "stable",
    "confidence_threshold": "conf",
    "max_denoising_steps": "max_steps",
}


@dataclass(frozen=True)
class EvalRow:
    """One evaluation point: a model, a policy setting, and its scores over ``n`` problems."""

    model: str
    policy: str
    setting: str  # the policy's overrides, "k=v k=v" ("default" when none)
    accuracy: float  # exact match, %
    nfe: float  # mean forwards per problem
    tokens_per_forward: float  # d3LLM's TPF (module docstring)
    tokens_per_s: float  # wall clock of the whole set, this machine
    n: int


def decode_batches(
    model, task: AdditionTask, problems: Sequence[Problem], tokenizer, policy: str, batch_size: int, **overrides
):
    """Decode ``problems`` ``batch_size`` at a time on ``model``'s device with ``policy`` (and its
    constructor's ``overrides``; a uniform-state policy, random by nature, decodes with ``seed=0``
    unless ``overrides`` give one): yields ``(prompt, target, out)`` per batch, ``out`` the
    :func:`generate` result."""
    device = next(model.parameters()).device
    if resolve_policy(policy).scheduler == "uniform":  # random by nature: seed 0 unless given
        overrides.setdefault("seed", 0)
    for i in range(0, len(problems), batch_size):
        prompt, target = (t.to(device) for t in task.encode(list(problems[i : i + batch_size]), tokenizer))
        out = generate(
            model, prompt, policy=policy, gen_length=task.gen_length, block_length=task.block_length, **overrides
        )
        yield prompt, target, out


@torch.no_grad()
def evaluate(
    model,
    task: AdditionTask,
    problems: Sequence[Problem],
    tokenizer,
    policy: str = "vanilla",
    *,
    batch_size: int = 256,
    backend: str = "auto",
    label: str = "model",
    threads: int | None = DEFAULT_THREADS,
    **overrides,
) -> EvalRow:
    """Decode ``problems`` with ``policy`` (and its constructor's ``overrides``) and score them.

    Args:
        model: a :class:`~dllm_kernels.models.DiffusionLM` trained on ``task``'s canvas layout.
        problems: held-out problems (:meth:`AdditionTask.heldout`).
        batch_size: problems per :func:`generate` call.
        backend: the loop ops' backend (``"auto"``: Triton on CUDA tensors, references on CPU).
        label: the model's name in the returned row.
        threads: intra-op threads while decoding (:data:`DEFAULT_THREADS`; None: torch's setting).
    Returns:
        :class:`EvalRow`.
    """
    if not problems:
        raise ValueError("evaluate: problems must not be empty")
    eos = model.config.eos_id
    correct, nfe, tpf, tokens = 0, 0.0, 0.0, 0
    with intra_op_threads(threads):
        t0 = time.perf_counter()
        for _, target, out in decode_batches(
            model, task, problems, tokenizer, policy, batch_size, backend=backend, **overrides
        ):
            toks = out.tokens_until_eos(eos)
            correct += int(task.exact_match(out.generated, target, eos).sum())
            nfe += out.nfe.sum().item()
            tpf += out.tokens_per_forward(eos).sum().item()
            tokens += int(toks.sum())
        seconds = time.perf_counter() - t0
    n = len(problems)
    setting = " ".join(
        f"{_SHORT.get(k, k)}={v:g}" if isinstance(v, float) else f"{_SHORT.get(k, k)}={v}" for k, v in overrides.items()
    )
    return EvalRow(label, policy, setting or "default", 100.0 * correct / n, nfe / n, tpf / n, tokens / seconds, n)


@dataclass(frozen=True)
class Accuracy:
    accuracy: float  # exact match, in %
    n: int


def evaluate_vanilla(
    model, task: AdditionTask, problems: Sequence[Problem], tokenizer, *, batch_size: int = 256
) -> Accuracy:
    """Exact-match accuracy (%) of LLaDA's vanilla decoding (one token per forward) on ``problems``."""
    row = evaluate(model, task, problems, tokenizer, "vanilla", batch_size=batch_size)
    return Accuracy(row.accuracy, row.n)


def fits(model, policy: str) -> bool:
    """Whether ``policy`` decodes ``model``: a uniform-state model (``config.uniform_state``) runs
    the uniform-state policy (``diffusion_gemma``) only, and only it runs that policy; the
    block-causal policies (``sdar``, ``fast_dllm_v2``) need a block-causal model
    (``config.block_size``), which runs those and the uncached full-canvas policy (``vanilla``)
    only; a bidirectional model runs every other policy."""
    pol = resolve_policy(policy)
    uniform_model = bool(getattr(model.config, "uniform_state", False))
    if pol.scheduler == "uniform" or uniform_model:
        return pol.scheduler == "uniform" and uniform_model
    block_model = getattr(model.config, "block_size", None) is not None
    if pol.scheduler == "block_causal":
        return block_model
    return not block_model or (pol.cache == "none" and pol.scheduler == "blocks")


def sweep(
    models: dict,
    task: AdditionTask,
    problems: Sequence[Problem],
    tokenizer,
    sweeps: dict = QUICK_SWEEPS,
    *,
    batch_size: int = 256,
    backend: str = "auto",
    log=None,
    threads: int | None = DEFAULT_THREADS,
) -> list[EvalRow]:
    """:func:`evaluate` every model of ``models`` (name -> model) at every point of ``sweeps``
    (policy -> list of override dicts) whose policy :func:`fits` the model; ``log`` gets each row
    as it is measured; ``threads``: intra-op threads (:data:`DEFAULT_THREADS`, None: torch's
    setting)."""
    rows = []
    for label, model in models.items():
        for policy, settings in sweeps.items():
            if not fits(model, policy):
                continue
            for overrides in settings:
                rows.append(
                    evaluate(
                        model,
                        task,
                        problems,
                        tokenizer,
                        policy,
                        batch_size=batch_size,
                        backend=backend,
                        label=label,
                        threads=threads,
                        **overrides,
                    )
                )
                if log:
                    log(format_row(rows[-1]))
    return rows


def aup(points: Sequence[tuple[float, float]], y_max: float, *, alpha: float = 3.0, y_min_offset: float = 5.0) -> float:
    """d3LLM's AUP ("accuracy under parallelism", ``hao-ai-lab/d3LLM`` ``AUP_leaderboard/aup_utils.py``).

    Args:
        points: ``(rho, y)`` pairs of one method on one task: rho = parallelism (tokens per
            forward), y = accuracy in %.
        y_max: the best accuracy over all methods compared on that task (the weight's reference).

    With the points sorted by rho (ascending, stable) and ``y_1`` the accuracy at the smallest rho,
    the points with ``y < y_1 - y_min_offset`` are dropped and, with
    ``W(y) = min(exp(-alpha (1 - y / y_max)), 1)``,

        AUP = rho_1 y_1 + sum_{i >= 2} (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2

    (the first term is not weighted; one point at rho = 1 scores its accuracy). The d3LLM code
    also asserts that the last point passes the filter; here such a point is dropped like any
    other, so a sweep that ends in a collapse still gets a score.
    """
    if not points:
        raise ValueError("points must hold at least one (rho, accuracy) pair")
    if not y_max > 0:
        raise ValueError(f"y_max must be positive, got {y_max}")
    pts = sorted(points, key=lambda p: p[0])
    y1 = pts[0][1]
    pts = [p for p in pts if p[1] >= y1 - y_min_offset]

    def weighted(y):
        return y * min(math.exp(-alpha * (1 - y / y_max)), 1.0)

    score = pts[0][0] * pts[0][1]
    for (r_prev, y_prev), (r, y) in zip(pts, pts[1:]):
        score += 0.5 * (r - r_prev) * (weighted(y) + weighted(y_prev))
    return score


@dataclass(frozen=True)
class AUPRow:
    model: str
    policy: str
    aup: float
    y_max: float  # the reference accuracy (best over every row compared)
    best_tpf: float | None  # the most parallel point within 1 accuracy point of y_max (None: no such point)
    points: int


def aup_table(rows: Sequence[EvalRow]) -> list[AUPRow]:
    """AUP of every (model, policy) curve in ``rows``, ``y_max`` the best accuracy of all rows."""
    y_max = max(r.accuracy for r in rows)
    out = []
    for key in dict.fromkeys((r.model, r.policy) for r in rows):
        curve = [r for r in rows if (r.model, r.policy) == key]
        near = [r.tokens_per_forward for r in curve if r.accuracy >= y_max - 1.0]
        score = aup([(r.tokens_per_forward, r.accuracy) for r in curve], y_max)
        out.append(AUPRow(*key, score, y_max, max(near, default=None), len(curve)))
    return out


# ------------------------------------------------------------------------------------------------
# reporting: text table, markdown + JSON files, the accuracy-parallelism plot
# ------------------------------------------------------------------------------------------------

HEADER = f"{'model':<16} {'policy':<15} {'setting':<36} {'acc %':>6} {'NFE':>6} {'TPF':>5} {'tok/s':>8}"


def format_row(r: EvalRow) -> str:
    return (
        f"{r.model:<16} {r.policy:<15} {r.setting:<36} {r.accuracy:>6.1f} {r.nfe:>6.2f} "
        f"{r.tokens_per_forward:>5.2f} {r.tokens_per_s:>8.0f}"
    )


def _tpf(v: float | None) -> str:
    return "none" if v is None else f"{v:.2f}"


def format_aup(table: Sequence[AUPRow]) -> str:
    lines = [
        f"AUP (alpha 3, y_max {table[0].y_max:.1f} = best accuracy of all rows; TPF@-1 = the most parallel "
        "point within 1 point of y_max)",
        f"{'model':<16} {'policy':<15} {'AUP':>7} {'TPF@-1':>7}",
    ]
    lines += [f"{a.model:<16} {a.policy:<15} {a.aup:>7.1f} {_tpf(a.best_tpf):>7}" for a in table]
    return "\n".join(lines)


def markdown(rows: Sequence[EvalRow], table: Sequence[AUPRow]) -> str:
    n = rows[0].n
    out = [
        f"Held-out problems: {n}. TPF = tokens up to the first EOS / NFE (d3LLM). tokens/s: CPU wall clock.",
        "",
        "| model | policy | AUP | most parallel TPF within 1 pt of y_max |",
        "|---|---|---:|---:|",
    ]
    out += [f"| {a.model} | {a.policy} | {a.aup:.1f} | {_tpf(a.best_tpf)} |" for a in table]
    out += [
        "",
        "| model | policy | setting | accuracy % | NFE | TPF | tokens/s (CPU) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    out += [
        f"| {r.model} | {r.policy} | {r.setting} | {r.accuracy:.1f} | {r.nfe:.2f} | {r.tokens_per_forward:.2f} "
        f"| {r.tokens_per_s:.0f} |"
        for r in rows
    ]
    return "\n".join(out) + "\n"


def plot(rows: Sequence[EvalRow], path) -> None:
    """Accuracy against TPF: one panel per policy, one curve per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(r.policy for r in rows))
    models = list(dict.fromkeys(r.model for r in rows))
    cols = min(3, len(policies))
    nrows = -(-len(policies) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False, sharey=True)
    for ax, p in zip(axes.flat, policies):
        for i, m in enumerate(models):
            curve = sorted((r for r in rows if (r.model, r.policy) == (m, p)), key=lambda r: r.tokens_per_forward)
            ax.plot(
                [r.tokens_per_forward for r in curve],
                [r.accuracy for r in curve],
                "-o",
                color=f"C{i}",
                label=m,
                markersize=4,
            )
        ax.set_title(p, fontsize=10)
        ax.set_xlabel("tokens per forward (up to EOS)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("exact match %", fontsize=8)
    for ax in list(axes.flat)[len(policies) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Addition task, {rows[0].n} held-out problems: accuracy against parallelism", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(rows: Sequence[EvalRow], out, *, name: str = "eval", meta: dict | None = None) -> list[pathlib.Path]:
    """``{name}.md``, ``{name}.json`` and ``{name}.png`` under ``out``; returns their paths."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = aup_table(rows)
    paths = [out / f"{name}.md", out / f"{name}.json", out / f"{name}.png"]
    paths[0].write_text(markdown(rows, table))
    record = {**(meta or {}), "rows": [asdict(r) for r in rows], "aup": [asdict(a) for a in table]}
    paths[1].write_text(json.dumps(record, indent=2) + "\n")
    plot(rows, paths[2])
    return paths
