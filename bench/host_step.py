"""Host time per decoding step of ``generate``, every policy, batch 1, 8 and 64 (CPU benchmark).

    .venv/bin/python bench/host_step.py [--repeats 3] [--out bench/results/host_step.json]

The model is nearly free: its logits are a fixed table indexed by position (vocabulary 64), so a
step's time is the loop's own work: planning the step on the host, shipping it, building the
index tables, the token statistics and the commit. Shapes: prompt 256, 128 new tokens, blocks of
32. Two paths:

* ``reference``: the ops' PyTorch references (``backend="reference"``), what the CPU default runs;
* ``stubbed``: the Triton path (custom ops, validation) with the Triton launches replaced by the
  references (the interpreter would dominate otherwise), i.e. the host cost the GPU path pays
  plus the small reference compute.

The metric is the median over ``--repeats`` runs of wall time / loop steps (forwards). On a CPU
the "device" work runs on the host too, so these are upper bounds of the host time. The public
repositories' own generate functions are not available in this repository (no peer code ships
here), so the peers' column is skipped. One intra-op thread.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import time
from dataclasses import dataclass

os.environ.setdefault("TRITON_INTERPRET", "1")  # the stubbed path dispatches to "triton" on CPU tensors

import torch  # noqa: E402

import dllm_kernels as dk  # noqa: E402
from dllm_kernels import reference  # noqa: E402
from dllm_kernels.commit import _commit_unchecked  # noqa: E402

V, MASK, EOS = 64, 63, 62
PROMPT, GEN, BLOCK = 256, 128, 32
POLICIES = {
    "vanilla": ("vanilla", {}),
    "fast_dllm prefix": ("fast_dllm", dict(cache="prefix")),
    "fast_dllm dual": ("fast_dllm", dict(cache="dual")),
    "streaming": ("streaming", {}),
    "r2": ("r2", {}),
    "d3llm delayed": ("d3llm", {}),
}


@dataclass
class _Config:
    vocab_size: int = V
    mask_id: int = MASK
    eos_id: int = EOS
    eot_id: int | None = None
    pad_id: int | None = None


class FreeModel:
    """Logits = a fixed table row per RoPE position: about a third of the positions confident
    (0.95), the rest spread (0.3-0.6), proposals never EOS or the mask."""

    def __init__(self, n_positions: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        conf = torch.where(
            torch.rand(n_positions, generator=g) < 0.35, 0.95, 0.3 + 0.3 * torch.rand(n_positions, generator=g)
        )
        target = torch.randint(0, V - 2, (n_positions,), generator=g)
        table = torch.log((1 - conf) / (V - 1))[:, None].expand(n_positions, V).clone()
        table[torch.arange(n_positions), target] = torch.log(conf)
        self.table, self.config, self.calls = table, _Config(), 0

    def new_cache(self, batch, max_len):
        return None

    def __call__(self, tokens, positions, *, logits_index=None, **_):
        self.calls += 1
        return self.table[positions.gather(1, logits_index)]


def _stub_kernels():
    """Replace the Triton launches by the references (same results)."""
    from dllm_kernels.kernels import commit as kc, confidence as kt

    def token_stats(logits, temperature, seed, suppress_ids):
        return tuple(reference.token_stats(logits, temperature=temperature, seed=seed, suppress_ids=list(suppress_ids)))

    def commit(x, token, prob, entropy, state, rule, rows, step, mask_id, vocab_size):
        stats = dk.TokenStats(token, prob, torch.zeros_like(prob), entropy)
        vocab = None if vocab_size < 0 else vocab_size  # the launcher's "no bound" is -1
        return _commit_unchecked(x, stats, state, rule, rows, step, mask_id, vocab_size=vocab, backend="reference")

    kt.token_stats, kc.commit = token_stats, commit


def measure(path: str, policy: str, kw: dict, B: int, repeats: int) -> dict:
    model = FreeModel(PROMPT + GEN)
    prompt = torch.arange(B * PROMPT).reshape(B, PROMPT) % (V - 2)
    backend = "reference" if path == "reference" else "triton"
    times, steps, out = [], None, None
    for _ in range(repeats + 1):  # the first run warms up
        model.calls = 0
        t0 = time.perf_counter()
        out = dk.generate(model, prompt, policy=policy, gen_length=GEN, block_length=BLOCK, backend=backend, **kw)
        times.append(time.perf_counter() - t0)
        steps = model.calls
    per_step = statistics.median(times[1:]) / steps
    return dict(
        path=path,
        policy=policy,
        kw=kw,
        B=B,
        steps=steps,
        nfe_mean=float(out.nfe.float().mean()),
        us_per_step=round(per_step * 1e6, 1),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "host_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    _stub_kernels()
    rows = []
    for path in ("stubbed", "reference"):
        for name, (policy, kw) in POLICIES.items():
            for B in args.batches:
                r = measure(path, policy, kw, B, args.repeats)
                r["name"] = name
                rows.append(r)
                print(
                    f"{path:9s} {name:16s} B={B:3d} steps={r['steps']:4d} {r['us_per_step']:9.1f} us/step", flush=True
                )
    meta = dict(
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        python=platform.python_version(),
        threads=torch.get_num_threads(),
        shapes=dict(vocab=V, prompt=PROMPT, gen=GEN, block=BLOCK),
        repeats=args.repeats,
        peers="skipped: the public repositories' generate functions are not available locally",
    )
    pathlib.Path(args.out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
