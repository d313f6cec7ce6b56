"""The one benchmark harness: how every number of the project is timed, which machine it came
from, and how it is written. Used by the ``bench`` subcommand (``dllm_kernels/benchmark.py``) and,
through ``bench/harness.py``, by the pytest microbenchmarks, ``bench/gpu_check.py`` and
``bench/commit_host.py``. It lives in the package because the installed subcommand cannot import
the repository's ``bench/`` folder; it imports nothing else of the package (torch and triton only
inside the functions that need them).

Timers. Each of the first three returns ``{"ms": median, "ms_p20": ..., "ms_p80": ...}``:

- :func:`do_bench_ms`: GPU time of a call, ``triton.testing.do_bench`` (CUDA events, L2 flushed
  before every call); ``warmup`` / ``rep`` are milliseconds of GPU time, as do_bench counts them.
- :func:`wall_ms`: wall-clock time of whole calls (``perf_counter``), synchronised before and
  after each call on CUDA, over ``repeats`` calls after ``warmup`` untimed ones (a decoding loop,
  or any call on a CPU, where do_bench does not apply).
- :func:`graph_ms`: GPU time per call without the host: ``calls`` calls captured in one CUDA graph,
  its replay timed by :func:`do_bench_ms`, divided by ``calls``.
- :func:`host_us`: host microseconds per call to issue ``calls`` calls (no sync between them).

Quantiles interpolate linearly between order statistics (as ``torch.quantile``, which do_bench
uses), so ``wall_ms``'s median equals ``statistics.median``.

Records and files: :func:`machine` (date, versions, GPU, commit, and the copy bandwidth of the run
where it was measured), :func:`write_json` (atomic; NaN and inf become null), :func:`add_speedups`,
:func:`plot_bars` and :func:`pyplot` (matplotlib, or the reason there is none).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import platform
import subprocess
import time

QUANTILES = (0.5, 0.2, 0.8)  # reported as ms, ms_p20, ms_p80
ROOT = pathlib.Path(__file__).resolve().parents[1]  # the checkout, for the commit of the record


# ------------------------------------------------------------------------------------------------
# timers
# ------------------------------------------------------------------------------------------------


def sync(cuda: bool) -> None:
    """Wait for the GPU (nothing when ``cuda`` is false)."""
    if cuda:
        import torch

        torch.cuda.synchronize()


def quantile(values, q: float) -> float:
    """The ``q`` quantile of ``values``, linear between order statistics (``torch.quantile``)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("quantile: values is empty")
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _summary(ms_values) -> dict:
    p50, p20, p80 = (quantile(ms_values, q) for q in QUANTILES)
    return {"ms": p50, "ms_p20": p20, "ms_p80": p80}


def do_bench_ms(fn, *, warmup: int = 25, rep: int = 100) -> dict:
    """Median and p20/p80 of ``fn`` in milliseconds: ``triton.testing.do_bench`` (CUDA events, L2
    flushed before every call; ``warmup`` and ``rep`` in ms, triton's defaults)."""
    from triton.testing import do_bench

    p50, p20, p80 = do_bench(fn, warmup=warmup, rep=rep, quantiles=list(QUANTILES))
    return {"ms": p50, "ms_p20": p20, "ms_p80": p80}


def wall_ms(fn, *, repeats: int, cuda: bool, warmup: int = 0) -> dict:
    """Median and p20/p80 wall-clock milliseconds of ``repeats`` calls of ``fn`` after ``warmup``
    untimed ones; on CUDA the GPU is synchronised before and after every timed call."""
    if repeats < 1:
        raise ValueError(f"wall_ms: repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(cuda)
        t0 = time.perf_counter()
        fn()
        sync(cuda)
        times.append((time.perf_counter() - t0) * 1e3)
    return _summary(times)


def host_us(fn, *, calls: int, cuda: bool = False, warmup: int = 0, clock=time.perf_counter) -> float:
    """Host microseconds per call: ``clock`` time to issue ``calls`` calls of ``fn`` (after
    ``warmup`` untimed ones), the GPU synchronised before and after the batch only. ``clock``:
    ``time.perf_counter`` (wall) or ``time.process_time`` (this process's CPU time, which the load
    of a shared machine disturbs less)."""
    if calls < 1:
        raise ValueError(f"host_us: calls must be >= 1, got {calls}")
    for _ in range(warmup):
        fn()
    sync(cuda)
    t0 = clock()
    for _ in range(calls):
        fn()
    t1 = clock()
    sync(cuda)
    return (t1 - t0) / calls * 1e6


def graph_ms(fn, *, calls: int = 20, warmup: int = 10, rep: int = 60) -> float:
    """GPU milliseconds per call of ``fn`` without the host: ``calls`` calls captured in one CUDA
    graph, the median of its replays (:func:`do_bench_ms` with ``warmup`` / ``rep``) over ``calls``.
    Raises what the capture raises when ``fn`` cannot be captured (see :func:`try_graph_ms`)."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()  # warm up on a side stream, as torch.cuda.graphs asks
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    return do_bench_ms(g.replay, warmup=warmup, rep=rep)["ms"] / calls


def try_graph_ms(fn, **kw) -> tuple[float | None, str | None]:
    """:func:`graph_ms`, or ``(None, "Error: message")`` for a call that cannot be captured."""
    try:
        return graph_ms(fn, **kw), None
    except Exception as e:  # noqa: BLE001 - whatever the capture refuses
        return None, error_line(e, 200)


def error_line(e: BaseException, limit: int = 300) -> str:
    """``"TypeName: first line of the message"``, at most ``limit`` characters (for JSON rows)."""
    return f"{type(e).__name__}: {e}".splitlines()[0][:limit]


# ------------------------------------------------------------------------------------------------
# the machine record
# ------------------------------------------------------------------------------------------------


def machine(*, cuda: bool | None = None, copy_TBps: float | None = None) -> dict:
    """Where the numbers come from: UTC date, torch / triton / python versions, whether Triton's
    interpreter ran, on CUDA (default: when available) the GPU's name, SMs, memory, CUDA version
    and ``nvidia-smi``'s clocks; the checkout's commit; ``copy_TBps`` when the run measured it."""
    import torch
    import triton

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
    }
    if torch.cuda.is_available() if cuda is None else cuda:
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, sms=p.multi_processor_count, memory_gib=p.total_memory / 2**30, cuda=torch.version.cuda)
        q = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu"
        info["nvidia_smi"] = _command(["nvidia-smi", f"--query-gpu={q}", "--format=csv"])
    info["commit"] = _command(["git", "rev-parse", "--short", "HEAD"])
    if copy_TBps is not None:
        info["copy_TBps"] = copy_TBps
    return info


def _command(argv) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------------
# results: JSON, speedups, charts
# ------------------------------------------------------------------------------------------------


def jsonable(x):
    """``x`` with tuples as lists, keys as strings, NaN / inf as None and anything else as str."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def write_json(path, doc) -> pathlib.Path:
    """Write ``jsonable(doc)`` to ``path`` atomically (a temporary file, then a rename), so that a
    run killed mid-write leaves the previous file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(doc), indent=2) + "\n")
    tmp.replace(path)
    return path


def add_speedups(rows: list[dict], *, group: str, base: str, time: str, same: tuple[str, ...], out: str) -> None:
    """Set ``row[out]`` to the row's ``time`` over that of the row of group ``base`` (e.g. the
    Triton kernel) with the same ``same`` keys (> 1: the base is faster); None where there is no
    such row or it has no time. Rows without ``time`` (failed ones) get no ``out``."""
    for r in rows:
        if r.get(time) is None:
            continue
        b = next((t for t in rows if t.get(group) == base and all(t.get(k) == r.get(k) for k in same)), None)
        r[out] = r[time] / b[time] if b is not None and b.get(time) else None


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or a message saying why there is no chart."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable: no PNG"
    return plt


def save_figure(plt, fig, path, dpi: int) -> pathlib.Path:
    path = pathlib.Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_bars(path, rows: list[dict], *, x: str, y: str, group: str, ylabel: str, title: str) -> pathlib.Path | None:
    """One grouped bar chart of ``rows`` (``y`` per ``x``, one bar per ``group``) at ``path``;
    None when matplotlib is missing."""
    plt = pyplot()
    if isinstance(plt, str):
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
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path, dpi=120)
