"""The benchmarks' harness in bench/: the package's one harness (``dllm_kernels._bench``: timers,
machine record, JSON and charts; its docstring says how each number is timed) plus what only the
pytest benchmarks need: the results folder, a writer per results file and the synchronising
wrapper that ``benchmark.pedantic`` times (so ``--benchmark-json`` / ``--benchmark-compare`` keep
working).

Kernel times are ``do_bench_ms`` medians (L2 flushed before every call) with the p20/p80 quantiles;
``graph_ms`` replays 20 calls captured in a CUDA graph (GPU time without the host).
"""

from __future__ import annotations

import pathlib

import torch

from dllm_kernels._bench import (  # noqa: F401  (re-exported for bench/)
    add_speedups,
    do_bench_ms,
    error_line,
    graph_ms,
    host_us,
    jsonable,
    machine,
    plot_bars,
    pyplot,
    save_figure,
    try_graph_ms,
    wall_ms,
    write_json,
)

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def synchronised(fn):
    """``fn`` followed by a CUDA synchronisation (what pytest-benchmark's wall clock can time)."""

    def run():
        fn()
        torch.cuda.synchronize()

    return run


def write_results(name: str, rows: list[dict], notes: str = "") -> pathlib.Path:
    """bench/results/NAME.json: the machine record, the notes and the rows."""
    return write_json(RESULTS / f"{name}.json", {"machine": machine(), "notes": notes, "results": rows})


def plot_results(name: str, rows: list[dict], x: str, y: str, group: str, ylabel: str) -> pathlib.Path | None:
    """bench/results/NAME.png: one grouped bar chart (skipped when matplotlib is missing)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    return plot_bars(RESULTS / f"{name}.png", rows, x=x, y=y, group=group, ylabel=ylabel, title=name)


def results_writer(name: str, rows: list[dict], *, notes: str, speedup: dict, plot: dict):
    """An autouse module fixture that, after the module's benchmarks, adds the speedups
    (:func:`add_speedups` keywords) to ``rows`` and writes them (:func:`write_results`) and their
    chart (:func:`plot_results` keywords). Assign it to a module-level name."""
    import pytest

    @pytest.fixture(scope="module", autouse=True)
    def _write():
        yield
        if rows:
            add_speedups(rows, **speedup)
            write_results(name, rows, notes=notes)
            plot_results(name, rows, **plot)

    return _write


def kernel_results_writer(name: str, rows: list[dict], *, x: str, y: str, ylabel: str, notes: str):
    """:func:`results_writer` for a benchmark of one kernel (``impl == "triton"``) against other
    implementations (``impl``) at each value of ``x``: the kernel's speedup over each candidate at
    the same ``x`` (``triton_speedup``), and ``y`` plotted over ``x`` per implementation."""
    return results_writer(
        name,
        rows,
        notes=notes,
        speedup=dict(group="impl", base="triton", time="ms", same=(x,), out="triton_speedup"),
        plot=dict(x=x, y=y, group="impl", ylabel=ylabel),
    )
