"""Shared benchmark helpers: GPU timing, machine facts, results files.

Kernel times are ``triton.testing.do_bench`` medians (L2 flushed before every call) with the
p20/p80 quantiles; pytest-benchmark's own table comes from ``benchmark.pedantic`` on a
synchronising wrapper, so ``--benchmark-json`` and ``--benchmark-compare`` keep working.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import platform
import subprocess

import pytest
import torch

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def do_bench_ms(fn, warmup: int = 25, rep: int = 100) -> dict:
    """Median and p20/p80 of ``fn`` in milliseconds (CUDA events, L2 flushed)."""
    from triton.testing import do_bench

    p50, p20, p80 = do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
    return {"ms": p50, "ms_p20": p20, "ms_p80": p80}


def graph_ms(fn) -> float | None:
    """Median milliseconds of ``fn`` replayed from a CUDA graph, or None if it cannot be captured."""
    from triton.testing import do_bench_cudagraph

    try:
        return do_bench_cudagraph(fn, rep=20, quantiles=[0.5, 0.2, 0.8])[0]
    except RuntimeError:  # not capturable
        return None


def synchronised(fn):
    def run():
        fn()
        torch.cuda.synchronize()

    return run


def machine() -> dict:
    import triton

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sms=props.multi_processor_count, cuda=torch.version.cuda)
        try:
            q = "name,driver_version,clocks.max.sm,clocks.max.mem,power.limit"
            out = subprocess.run(
                ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
            )
            info["nvidia_smi"] = out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def write_results(name: str, rows: list[dict], notes: str = "") -> pathlib.Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "notes": notes, "results": rows}, indent=2) + "\n")
    return path


def add_speedups(rows: list[dict], *, group: str, base: str, time: str, same: tuple[str, ...], out: str) -> None:
    """Set ``row[out]`` to the row's ``time`` over that of the row of group ``base`` (e.g. the
    Triton kernel) with the same ``same`` keys; None where there is none or no time."""
    for r in rows:
        b = next((t for t in rows if t[group] == base and all(t[k] == r[k] for k in same)), None)
        r[out] = r[time] / b[time] if b and r.get(time) else None


def results_writer(name: str, rows: list[dict], *, notes: str, speedup: dict, plot: dict):
    """An autouse module fixture that, after the module's benchmarks, adds the speedups
    (:func:`add_speedups` keywords) to ``rows`` and writes them (:func:`write_results`) and their
    chart (:func:`plot_bars` keywords). Assign it to a module-level name."""

    @pytest.fixture(scope="module", autouse=True)
    def _write():
        yield
        if rows:
            add_speedups(rows, **speedup)
            write_results(name, rows, notes=notes)
            plot_bars(name, rows, **plot)

    return _write


def plot_bars(name: str, rows: list[dict], x: str, y: str, group: str, ylabel: str) -> pathlib.Path | None:
    """One grouped bar chart per results file (skipped when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    xs = sorted({r[x] for r in rows}, key=str)
    groups = list(dict.fromkeys(r[group] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(groups), 1)
    for j, g in enumerate(groups):
        vals = [next((r[y] for r in rows if r[x] == xv and r[group] == g), 0.0) for xv in xs]
        ax.bar([i + j * width for i in range(len(xs))], vals, width, label=g)
    ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(xs))], [str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
