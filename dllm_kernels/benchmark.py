"""End-to-end decoding benchmark: every policy on one model, kernel path vs reference path.

Reports per policy and path: NFE (forwards per sequence), tokens per forward (generated tokens up
to the first EOS, per forward, as d3LLM counts them), wall time per step and tokens per second.
The times are wall-clock medians over repeats (``_bench.wall_ms``: synchronised around every call
on a GPU); on a CPU the kernel path runs on Triton's interpreter, so only NFE and tokens per
forward are meaningful there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ._bench import wall_ms, write_json
from .decode.generate import generate
from .policies import POLICIES

# the block-diffusion policies (scheduler "block_causal") need a block-causal model, the uniform-state
# one (scheduler "uniform") a uniform-state model: not by default
DEFAULT_POLICIES = tuple(n for n, make in POLICIES.items() if make().scheduler not in ("block_causal", "uniform"))

# the three ways of running the same loop (model attention path, loop ops backend)
PATHS = {
    "kernels": ("ops", "triton"),  # the library's Triton kernels everywhere
    "reference": ("ops", "reference"),  # the library's PyTorch references everywhere
    "sdpa": ("sdpa", "reference"),  # what the public repos run: concat + torch SDPA, eager post-processing
}


@dataclass
class BenchRow:
    policy: str
    path: str
    batch: int
    nfe: float  # mean forwards per sequence
    tokens_per_forward: float
    ms_per_step: float
    tokens_per_s: float


def bench_policy(
    model,
    prompts,
    policy: str,
    path: str,
    *,
    gen_length: int,
    block_length: int,
    repeats: int = 3,
    overrides: dict | None = None,
) -> BenchRow:
    """Time ``generate`` of one policy on one path (the model is switched to the path in place)."""
    attn_impl, backend = PATHS[path]
    model.attn_impl, model.backend = attn_impl, backend
    cuda = next(model.parameters()).device.type == "cuda"
    result = {}

    def run():
        result["out"] = generate(
            model,
            prompts,
            policy=policy,
            gen_length=gen_length,
            block_length=block_length,
            backend=backend,
            **(overrides or {}),
        )

    t = wall_ms(run, repeats=repeats, cuda=cuda)["ms"] / 1e3  # median seconds
    out = result["out"]
    nfe = out.nfe.double()
    eos = model.config.eos_id
    toks = out.tokens_until_eos(eos).double()
    steps = int(out.nfe.max())  # the batch runs until its slowest row is done
    return BenchRow(
        policy,
        path,
        len(prompts),
        nfe.mean().item(),
        out.tokens_per_forward(eos).mean().item(),
        1e3 * t / max(steps, 1),
        toks.sum().item() / t,
    )


def run(
    model,
    prompts,
    *,
    policies=DEFAULT_POLICIES,
    paths=("kernels", "reference"),
    gen_length=64,
    block_length=16,
    repeats=3,
    out: str | None = None,
    printer=print,
) -> list[BenchRow]:
    rows = []
    printer(HEADER)
    for policy in policies:
        for path in paths:
            rows.append(
                bench_policy(
                    model, prompts, policy, path, gen_length=gen_length, block_length=block_length, repeats=repeats
                )
            )
            printer(format_row(rows[-1]))
    printer(format_speedups(rows))
    if out:
        write_json(out, [asdict(r) for r in rows])
    return rows


HEADER = f"{'policy':<12} {'path':<10} {'B':>3} {'NFE':>7} {'tok/fwd':>8} {'ms/step':>9} {'tok/s':>9}"


def format_row(r: BenchRow) -> str:
    return (
        f"{r.policy:<12} {r.path:<10} {r.batch:>3} {r.nfe:>7.1f} {r.tokens_per_forward:>8.2f} "
        f"{r.ms_per_step:>9.2f} {r.tokens_per_s:>9.1f}"
    )


def format_speedups(rows: list[BenchRow]) -> str:
    lines = ["kernel path speedup over the other paths (ms/step ratio):"]
    for r in rows:
        if r.path == "kernels":
            continue
        k = next((q for q in rows if q.policy == r.policy and q.path == "kernels" and q.batch == r.batch), None)
        if k:
            lines.append(f"  {r.policy:<12} vs {r.path:<10} {r.ms_per_step / k.ms_per_step:6.2f}x")
    return "\n".join(lines)
