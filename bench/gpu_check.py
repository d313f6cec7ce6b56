"""The GPU check: every GPU claim of the library measured in one run of at most 8 minutes.

    bash scripts/gpu_check.sh             # on a CUDA machine (H100 / H200): results in bench/results/gpu-check.*
    bash scripts/gpu_check.sh --cpu       # the same driver on Triton's interpreter, tiny shapes (CI)
    python3 bench/gpu_check.py --help

Phases, in this order; the JSON is rewritten after each one, so a run cut short still returns
what it measured:

1. ``ceilings``: device-to-device copy bandwidth (bytes read + written) and the bf16 matmul rate
   on random data. Every later figure is also given as a fraction of what the card did in the same
   run (``ceilings_end`` measures them again at the end, to show drift).
2. ``tests``: ``pytest -m gpu`` (every kernel natively against its reference, CUDA-graph capture,
   the sync-free step), in a subprocess with a hard time budget and a per-test timeout.
3. ``token_stats``: 32 and 1024 rows of V = 126464 (bf16): the kernel, the eager reference, the
   decoders' own fp32 code (argmax, softmax, gather of the argmax' probability, as Fast-dLLM
   writes it) and ``torch.compile`` of that code (compiled once per shape, the compile timed).
   TB/s of logits read.
4. ``uniform_stats``: DiffusionGemma's sampler statistics (issue 21), canvas 256, B 1 / 4 / 8,
   V = 262144 (bf16): ``dllm_kernels.integrations.vllm.sample_row_stats`` vs vLLM 0.33's own
   Triton kernel (from vLLM when importable, else from its sampler file or wheel, else skipped
   with the reason: ``load_vllm_sampler``) vs vLLM's PyTorch form of the same statistics. TB/s of
   logits read, and the peak extra memory of each.
5. ``soft_embedding``: ``dllm_kernels.soft_embedding`` vs the engines' ``softmax(l / T)`` buffer in
   the table's dtype + matmul, same shapes, hidden 2816 (DiffusionGemma 26B-A4B's hidden size, an
   assumption): TFLOP/s of ``2 * rows * V * D`` as a fraction of the matmul rate, the peak extra
   memory of each (``torch.cuda.max_memory_allocated`` deltas) and an out-of-memory recorded as
   such (``oom``). Both phases have their own share of the budget (``*_budget_s``).
6. ``attention``: LLaDA (32/32 heads) and Dream (28/4) decode steps, B 8, 32 queries, 2048 cached
   + 32 new keys, head_dim 128: the kernel vs SDPA (flash, cuDNN) and compiled FlexAttention on
   the concatenated K/V (what the public decoders run). TB/s of K/V read.
7. ``refresh_commit``: ``refresh_kv_cache`` (TB/s of bytes moved) and ``commit`` (B 64): GPU time
   per call from a CUDA-graph replay, and host microseconds per eager call.
8. ``step``: ``generate`` on a model with LLaDA-8B's layer shape (``llada_8b_layer(2)``, random
   bf16 weights), kernel path vs the SDPA path of the public decoders, B 1 and 8: ms per forward.
9. ``ceilings_end``; then a markdown table and one PNG (skipped with a message without matplotlib).

Timing, the machine record and the JSON / PNG files come from the one harness
(``dllm_kernels/_bench.py`` through ``bench/harness.py``, imported after the checkout mapping below):
kernel times are ``do_bench_ms`` medians (CUDA events, L2 flushed before every call; 10 / 60 ms of
warm-up / repetitions, ``DO_BENCH``) with p20/p80, graph times ``graph_ms`` (``graph_calls`` calls
per CUDA graph), host times ``host_us``, the decoding step ``wall_ms``. Each phase is a function
``phase(run, rec)`` filling its JSON section ``rec`` (``PHASE_FUNCS``).

The CPU mode (``--cpu``) runs the same phases on Triton's interpreter with tiny shapes in
seconds: its numbers mean nothing, it only keeps this script from rotting (tests/test_gpu_check.py).

The driver runs from a plain checkout: it maps ``dllm_kernels.kernels`` -> ``kernels/`` and
``dllm_kernels.reference`` -> ``reference/`` itself, so no install (and no build backend) is needed.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.metadata
import importlib.util
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parents[1]
PHASES = (
    "ceilings",
    "tests",
    "token_stats",
    "uniform_stats",
    "soft_embedding",
    "attention",
    "refresh_commit",
    "step",
    "ceilings_end",
)
# the part names of the earlier per-part script, still accepted
PARTS = {
    "tests": "tests",
    "token_stats": "token_stats",
    "attention": "attention",
    "commit": "refresh_commit",
    "refresh": "refresh_commit",
    "generate": "step",
}


class _TreeFinder(importlib.abc.MetaPathFinder):
    """``dllm_kernels.kernels`` / ``.reference`` from the checkout's top-level folders (what the
    package-dir mapping of pyproject.toml does for an installed copy)."""

    MAP = {"dllm_kernels.kernels": ROOT / "kernels", "dllm_kernels.reference": ROOT / "reference"}

    def find_spec(self, name, path=None, target=None):
        d = self.MAP.get(name)
        if d is None:
            return None
        return importlib.util.spec_from_file_location(name, d / "__init__.py", submodule_search_locations=[str(d)])


def use_working_tree() -> None:
    """Import dllm_kernels from this checkout, whether or not a copy is installed."""
    if not any(isinstance(f, _TreeFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TreeFinder())
    for p in (str(ROOT / "bench"), str(ROOT)):
        if p not in sys.path:
            sys.path.insert(0, p)


# ------------------------------------------------------------------------------------------------
# shapes of each mode
# ------------------------------------------------------------------------------------------------

# every setting as (GPU value, CPU value): the CPU mode runs the same phases on Triton's
# interpreter with tiny shapes
MODES = {
    # GPU: the whole run (scripts/gpu_check.sh kills it at 480 s); CPU: a safety net only, the CPU
    # mode takes seconds of CPU time
    "budget_s": (450, 600),
    "tests_budget_s": (150, 60),
    "tests_per_test_timeout_s": (60, 60),
    "tests_workers": (4, 1),
    # CPU: collected and skipped without CUDA: the plumbing only
    "tests": (["tests"], ["tests/test_refresh_kv_cache.py"]),
    "copy_bytes": (1 << 30, 1 << 20),
    "matmul_n": (8192, 64),
    "dtype": ("bfloat16", "float32"),
    "token_stats_rows": ([32, 1024], [1, 2]),
    "vocab": (126464, 256),
    "attn": (
        {"B": 8, "Lq": 32, "cache": 2048, "D": 128, "models": {"llada": (32, 32), "dream": (28, 4)}},
        {"B": 1, "Lq": 4, "cache": 24, "D": 16, "models": {"llada": (2, 2), "dream": (4, 1)}},
    ),
    "refresh": (
        {"B": 8, "Lmax": 2048, "H": 32, "D": 128, "blocks": 8, "block": 32},
        {"B": 1, "Lmax": 32, "H": 2, "D": 16, "blocks": 2, "block": 4},
    ),
    "commit": (
        {"B": 64, "L": 1024, "block": 32, "policies": ["fast_dllm", "r2", "d3llm"]},
        {"B": 2, "L": 32, "block": 8, "policies": ["fast_dllm"]},
    ),
    "step": (
        {"layers": 2, "batches": [1, 8], "prompt": 256, "gen": 64, "block": 32, "policy": "fast_dllm", "repeats": 3},
        {"layers": None, "batches": [2], "prompt": 6, "gen": 2, "block": 2, "policy": "fast_dllm", "repeats": 1},
    ),
    # DiffusionGemma's sampler (issue 21): canvas 256, V 262144, bf16 logits. GPU budget from the
    # sizes: logits 128 / 512 / 1024 MiB (B 1 / 4 / 8); the kernels read them once (< 0.5 ms at
    # 3 TB/s), the PyTorch reference makes ~8 fp32 passes (~15 ms and ~14 GiB of temporaries at
    # B 8); do_bench is ~0.1 s per candidate and B, the Triton compiles ~5-10 s: ~20 s, 40 s given
    "uniform_stats": (
        {"canvas": 256, "batches": [1, 4, 8], "vocab": 262144, "seed": 1234},
        {"canvas": 4, "batches": [1, 2], "vocab": 256, "seed": 1234},
    ),
    "uniform_stats_budget_s": (40, 600),
    # the self-conditioning input softmax(l / T) @ E at DiffusionGemma 26B-A4B's hidden size (2816:
    # an assumption, not stated in the ecosystem notes). GPU budget: 2 * rows * V * D = 0.38 / 1.5
    # / 3.0 TFLOP (~0.6 / 2.2 / 4.5 ms at 700 TFLOP/s); the engines' path holds ~3 fp32 / bf16
    # [rows, V] buffers (~5 GiB at B 8); compile ~10 s: ~20 s, 40 s given
    "soft_embedding": (
        {"canvas": 256, "batches": [1, 4, 8], "vocab": 262144, "hidden": 2816, "temperature": 1.0},
        {"canvas": 4, "batches": [1, 2], "vocab": 256, "hidden": 32, "temperature": 1.0},
    ),
    "soft_embedding_budget_s": (40, 600),
    # the share of the card's memory vLLM leaves outside its default gpu_memory_utilization 0.9,
    # where the sampler's temporaries land (vllm#50699): each row says whether its peak fits
    "headroom_frac": (0.1, 0.1),
    # CPU: dynamo traces the same code; no C++ toolchain needed
    "compile_backend": ("inductor", "eager"),
    # calls captured per CUDA graph (replay time / calls)
    "graph_calls": (20, 1),
    "host_calls": (200, 1),
    # CPU: the one timed call is the first (GPU: a warm-up call first, its time kept)
    "warm": (True, False),
}
GPU_CONFIG = {key: gpu for key, (gpu, _) in MODES.items()}
CPU_CONFIG = {key: cpu for key, (_, cpu) in MODES.items()}


# ------------------------------------------------------------------------------------------------
# the run: its state, the budget, one measured row
# ------------------------------------------------------------------------------------------------

# do_bench settings of this run (ms of GPU time): shorter than triton's 25 / 100, to fit the budget
DO_BENCH = {"warmup": 10, "rep": 60}


@dataclass
class Run:
    """What the phases share: the settings of the mode, the document the JSON is written from, the
    start of the budget and the ceilings measured so far."""

    cfg: dict
    cpu: bool
    out: pathlib.Path
    only: list
    doc: dict
    t0: float = field(default_factory=time.monotonic)
    ceil: dict = field(default_factory=dict)
    # the end of the running phase's own share of the budget (``{phase}_budget_s``), if it has one
    phase_end: float | None = None

    @property
    def stem(self) -> str:
        return "cpu-check" if self.cpu else "gpu-check"

    @property
    def dev(self) -> str:
        return "cpu" if self.cpu else "cuda"

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.cfg["dtype"])

    def left(self) -> float:
        """Seconds left: of the whole run, or of the running phase's share if that ends first."""
        now = time.monotonic()
        left = self.cfg["budget_s"] - (now - self.t0)
        return left if self.phase_end is None else min(left, self.phase_end - now)

    def write(self) -> None:
        from harness import write_json

        write_json(self.out / f"{self.stem}.json", self.doc)


def new_run(args) -> Run:
    cfg = dict(CPU_CONFIG if args.cpu else GPU_CONFIG)
    if args.budget is not None:
        cfg["budget_s"] = args.budget
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from harness import jsonable

    doc = {"mode": "cpu" if args.cpu else "gpu", "config": jsonable(cfg), "machine": {}, "phases": {}}
    return Run(cfg, args.cpu, out, args.phases or list(PHASES), doc)


def run_phase(run: Run, name: str, fn) -> None:
    """``fn(run, rec)`` fills ``rec`` (the phase's JSON section); the JSON is rewritten after it."""
    from harness import error_line

    if name not in run.only:
        return
    rec = {"status": "running", "rows": []}
    run.doc["phases"][name] = rec
    print(f"== {name} ({run.left():.0f} s of the budget left)", flush=True)
    t = time.monotonic()
    share = run.cfg.get(f"{name}_budget_s")
    if share is not None:
        rec["budget_s"] = share
        run.phase_end = t + share
    try:
        fn(run, rec)
        rec["status"] = "ok" if rec["status"] == "running" else rec["status"]
    except Exception as e:  # noqa: BLE001 - a broken phase must not cost the later ones
        rec["status"] = "error"
        rec["error"] = error_line(e, 500)
        print(f"   {name} failed: {rec['error']}", flush=True)
    finally:
        run.phase_end = None
    rec["seconds"] = time.monotonic() - t
    run.write()


def budget_spent(run: Run, rec: dict, row: dict) -> bool:
    """When the budget is spent: the row is appended as skipped and the phase marked partial."""
    if run.left() >= 0:
        return False
    rec["rows"].append({**row, "error": "skipped: time budget spent"})  # the phase's share or the run's
    rec["status"] = "partial"
    return True


def first_call_s(run: Run, fn) -> float:
    """Seconds of one synchronised call (the first one: compile / warm-up)."""
    from harness import wall_ms

    return wall_ms(fn, repeats=1, cuda=not run.cpu)["ms"] / 1e3


def time_ms(run: Run, fn) -> dict:
    """GPU: do_bench median and p20/p80 (ms); CPU: one call's wall time (the interpreter's times
    mean nothing anyway)."""
    from harness import do_bench_ms, wall_ms

    return wall_ms(fn, repeats=1, cuda=False) if run.cpu else do_bench_ms(fn, **DO_BENCH)


def measure(
    run: Run, rec: dict, row: dict, fn, *, bytes_: int | None = None, flops: int | None = None, memory: bool = False
) -> dict:
    """Time ``fn`` (a first call outside the timing compiles / warms it; its time is kept as
    ``first_call_s``) and append the row, or an ``error`` row if the candidate refuses (``oom``:
    True when it ran out of GPU memory). ``bytes_`` / ``flops``: also TB/s / TFLOP/s and their
    fraction of the copy / matmul rate of this run; ``memory``: also ``peak_extra_bytes``."""
    import torch
    from harness import error_line

    if budget_spent(run, rec, row):
        return rec["rows"][-1]
    try:
        if run.cfg["warm"]:
            row["first_call_s"] = first_call_s(run, fn)
        row.update(time_ms(run, fn))
        if memory:
            row["peak_extra_bytes"] = peak_extra_bytes(run, fn)
    except Exception as e:  # noqa: BLE001 - e.g. an SDPA backend that refuses the shape
        row["error"] = error_line(e, 300)
        if isinstance(e, torch.OutOfMemoryError):
            row["oom"] = True
            torch.cuda.empty_cache()
        rec["rows"].append(row)
        print(f"   {row.get('case')} {row.get('impl')}: {row['error']}", flush=True)
        return row
    if bytes_ is not None:
        row["bytes"] = bytes_
        row["TBps"] = bytes_ / (row["ms"] * 1e-3) / 1e12
        if run.ceil.get("copy_TBps"):
            row["frac_copy"] = row["TBps"] / run.ceil["copy_TBps"]
    if flops is not None:
        row["flops"] = flops
        row["TFLOPs"] = flops / (row["ms"] * 1e-3) / 1e12
        if run.ceil.get("matmul_TFLOPs"):
            row["frac_matmul"] = row["TFLOPs"] / run.ceil["matmul_TFLOPs"]
    rec["rows"].append(row)
    extra = f" {row['TBps']:.3f} TB/s" if "TBps" in row else ""
    extra += f" {row['TFLOPs']:.1f} TFLOP/s" if "TFLOPs" in row else ""
    if row.get("peak_extra_bytes") is not None:
        extra += f", peak extra {row['peak_extra_bytes'] / 2**20:.0f} MiB"
    print(f"   {row.get('case', '')} {row.get('impl', '')}: {row['ms'] * 1e3:.1f} us{extra}", flush=True)
    return row


def peak_extra_bytes(run: Run, fn) -> int | None:
    """Bytes of GPU memory one call of ``fn`` allocates at its peak above what was allocated before
    it (``torch.cuda.max_memory_allocated`` delta; its outputs included); None on a CPU."""
    import torch

    if run.cpu:
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def graph_and_host(run: Run, row: dict, fn, *, capture: bool) -> None:
    """``host_us``: host microseconds per eager call; ``graph_us`` (when ``capture``): GPU
    microseconds per call replayed from a CUDA graph (None on a CPU or when capture fails)."""
    from harness import host_us, try_graph_ms

    if "error" in row:
        return
    row["host_us"] = host_us(fn, calls=run.cfg["host_calls"], cuda=not run.cpu)
    if not capture:
        return
    row["graph_us"] = None
    if not run.cpu:
        ms, err = try_graph_ms(fn, calls=run.cfg["graph_calls"], **DO_BENCH)
        if ms is not None:
            row["graph_us"] = ms * 1e3
        if err is not None:
            row["graph_error"] = err


def speedups(rows: list[dict], kernel_impl: str) -> None:
    """Each candidate's time over the kernel's at the same case (> 1: the kernel is faster)."""
    from harness import add_speedups

    add_speedups(rows, group="impl", base=kernel_impl, time="ms", same=("case",), out="kernel_speedup")


# ------------------------------------------------------------------------------------------------
# the phases: each fills its JSON section ``rec``
# ------------------------------------------------------------------------------------------------


def ceilings(run: Run, rec: dict, *, first: bool = True) -> None:
    import torch

    n = run.cfg["copy_bytes"] // 2
    src = torch.randn(n, device=run.dev).to(torch.bfloat16)
    dst = torch.empty_like(src)
    case = {"case": f"copy {2 * n / 2**20:.0f} MiB", "impl": "torch copy_"}
    copy = measure(run, rec, case, lambda: dst.copy_(src), bytes_=4 * n)
    src = dst = None  # free the memory before the next case
    m = run.cfg["matmul_n"]
    dt = torch.float32 if run.cpu else torch.bfloat16
    a, b = torch.randn(m, m, device=run.dev, dtype=dt), torch.randn(m, m, device=run.dev, dtype=dt)
    mm = measure(run, rec, {"case": f"matmul {m}^3 {str(dt).split('.')[-1]}", "impl": "torch mm"}, lambda: a @ b)
    if "ms" in mm:
        mm["TFLOPs"] = 2 * m**3 / (mm["ms"] * 1e-3) / 1e12
    if first:
        run.ceil = {"copy_TBps": copy.get("TBps"), "matmul_TFLOPs": mm.get("TFLOPs")}
        rec["copy_TBps"], rec["matmul_TFLOPs"] = run.ceil["copy_TBps"], run.ceil["matmul_TFLOPs"]
        run.doc["machine"]["copy_TBps"] = run.ceil["copy_TBps"]


def ceilings_end(run: Run, rec: dict) -> None:
    ceilings(run, rec, first=False)


def tests(run: Run, rec: dict) -> None:
    cfg = run.cfg
    budget = max(10.0, min(cfg["tests_budget_s"], run.left() - 60))
    args = ["-m", "gpu", "-v", "-rfE", "-p", "no:cacheprovider", *cfg["tests"]]
    if importlib.util.find_spec("pytest_timeout"):
        args += [f"--timeout={cfg['tests_per_test_timeout_s']}"]
    if cfg["tests_workers"] > 1 and importlib.util.find_spec("xdist"):  # one GPU, several processes
        args += ["-n", str(cfg["tests_workers"]), "--dist", "loadfile"]
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--pytest", *args]
    log = run.out / f"{run.stem}-tests.log"
    rec["command"] = "pytest " + " ".join(args)
    rec["budget_s"] = budget
    t = time.monotonic()
    with open(log, "w") as f:
        # its own session, so that a timeout ends the xdist workers too (not only pytest)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            rc = None
        except Terminated:  # the global timeout: what finished still counts
            rec["counts"] = _pytest_counts(log.read_text(errors="replace"))
            raise
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text(errors="replace")
    rec["returncode"] = rc
    rec["timed_out"] = rc is None
    rec["wall_s"] = time.monotonic() - t
    # per-test lines (-v), so a run cut by the budget still counts what it finished
    rec["counts"] = _pytest_counts(text)
    rec["summary"] = _pytest_summary(text)
    rec["failures"] = [ln for ln in text.splitlines() if ln.startswith(("FAILED ", "ERROR "))][:40]
    rec["log"] = log.name
    if rc is None:
        rec["status"] = "partial"
    elif rc not in (0, 5):  # 5: nothing collected
        rec["status"] = "failed"
    print(f"   {rec['summary'] or rec['counts']} (rc {rc}, {rec['wall_s']:.0f} s, log {log})", flush=True)


def token_stats(run: Run, rec: dict) -> None:
    import token_stats_cases as tsc
    import torch

    V = run.cfg["vocab"]
    for rows in run.cfg["token_stats_rows"]:
        x = (torch.randn(rows, V, device=run.dev) * 3).to(run.dtype)
        nbytes = x.numel() * x.element_size()
        compiled = torch.compile(fast_dllm_fp32, dynamic=False, backend=run.cfg["compile_backend"])
        cands = {
            "kernel": lambda: tsc.kernel(x),
            "reference_eager": lambda: tsc.reference_fp64(x),
            "fast_dllm_fp32": lambda: fast_dllm_fp32(x),
            "fast_dllm_fp32_compiled": lambda: compiled(x),
        }
        base = {"case": f"{rows}x{V} {run.cfg['dtype']}", "rows": rows, "V": V}
        for impl, fn in cands.items():
            measure(run, rec, {**base, "impl": impl}, fn, bytes_=nbytes)
        speedups(rec["rows"], "kernel")
        x = None  # free the memory before the next case


# vLLM 0.33's sampler file: searched in this order when vLLM itself is not importable (the GPU image
# has no vLLM; the wheel is ~0.5 GB, so a GPU session carries the one file, which git ignores and
# scripts/fetch_vllm_sampler.py (run by scripts/bootstrap.sh on a CPU machine) writes:
#   unzip -p vllm-0.33.0-*.whl vllm/model_executor/models/diffusion_gemma_sampler.py \
#       > bench/vllm_diffusion_gemma_sampler.py
SAMPLER_MODULE = "vllm.model_executor.models.diffusion_gemma_sampler"
VLLM_SAMPLER_PATH = "vllm/model_executor/models/diffusion_gemma_sampler.py"
VLLM_SAMPLER_FILES = ("$VLLM_SAMPLER", "bench/vllm_diffusion_gemma_sampler.py")
VLLM_WHEELS = ("$VLLM_WHEEL", "bench/vllm-0.33.*.whl", "/work/wheels/vllm-0.33.0-*.whl")


def _first_file(patterns) -> pathlib.Path | None:
    import glob

    for pat in patterns:
        pat = os.environ.get(pat[1:], "") if pat.startswith("$") else str(ROOT / pat)
        for f in sorted(glob.glob(pat)) if pat else []:
            if os.path.isfile(f):
                return pathlib.Path(f)
    return None


def load_vllm_sampler():
    """``(module, where)``: vLLM's ``diffusion_gemma_sampler`` (its ``sample_row_stats`` Triton
    kernel), from vLLM when importable, else from the sampler file or a vLLM 0.33 wheel
    (``VLLM_SAMPLER_FILES``, ``VLLM_WHEELS``) with a stub ``vllm.triton_utils`` present only while
    the file executes; ``(None, reason)`` when there is none."""
    import tempfile
    import types
    import zipfile

    from harness import error_line

    if importlib.util.find_spec("vllm") is not None:
        try:
            mod = importlib.import_module(SAMPLER_MODULE)
            return mod, f"vllm {importlib.metadata.version('vllm')} ({SAMPLER_MODULE})"
        except Exception as e:  # noqa: BLE001 - another vLLM version: say so, time without it
            return None, f"vLLM is importable but {SAMPLER_MODULE} is not: {error_line(e, 200)}"
    source = _first_file(VLLM_SAMPLER_FILES)
    where = str(source)
    if source is None:
        wheel = _first_file(VLLM_WHEELS)
        if wheel is None:
            return None, (
                "vLLM not importable and no sampler file or wheel found "
                f"({', '.join(VLLM_SAMPLER_FILES + VLLM_WHEELS)})"
            )
        # outside the results folder (its files are copied out and committed); kept for the
        # process: Triton reads a kernel's source when it is decorated
        source = pathlib.Path(tempfile.mkdtemp(prefix="gpu-check-vllm-")) / "diffusion_gemma_sampler.py"
        with zipfile.ZipFile(wheel) as zf:
            source.write_bytes(zf.read(VLLM_SAMPLER_PATH))
        where = f"{wheel.name}:{VLLM_SAMPLER_PATH}"
    import triton
    import triton.language as tl

    stub = types.ModuleType("vllm")
    stub.__path__ = []
    utils = types.ModuleType("vllm.triton_utils")
    utils.tl, utils.triton = tl, triton
    sys.modules.update({"vllm": stub, "vllm.triton_utils": utils})
    try:
        spec = importlib.util.spec_from_file_location("vllm_diffusion_gemma_sampler", source)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        for name in ("vllm", "vllm.triton_utils"):
            sys.modules.pop(name, None)
    return mod, where


def vllm_reference_torch(logits, temps, canvas_len: int):
    """vLLM 0.33's ``sample_row_stats_reference`` (its PyTorch form of the statistics, ``probs_dtype``
    None), transcribed: fp32 scaled logits, ``torch.rand`` noise, log-softmax, entropy, argmaxes."""
    import torch

    temp = temps.repeat_interleave(canvas_len).float()[:, None]
    scaled = logits.float() / temp.clamp(min=1e-10)
    u = torch.rand_like(scaled).clamp(min=1e-20)
    noisy = scaled + (-torch.log(-torch.log(u))) * (temp > 0).float()
    log_probs = scaled.log_softmax(dim=-1)
    probs = log_probs.exp()
    entropy = -torch.where(probs > 0, probs * log_probs, 0.0).sum(dim=-1)
    return scaled.argmax(dim=-1), noisy.argmax(dim=-1), entropy


def uniform_stats(run: Run, rec: dict) -> None:
    """``sample_row_stats`` (ours, vLLM's signature) vs vLLM's own kernel vs the PyTorch form, at
    DiffusionGemma's canvas: TB/s of logits read (no probs written: ``probs_dtype`` None)."""
    import torch

    from dllm_kernels.integrations import vllm as dkv

    u = run.cfg["uniform_stats"]
    vllm_mod, where = load_vllm_sampler()
    rec["vllm_kernel"] = where if vllm_mod is not None else None
    if vllm_mod is None:
        rec["vllm_skipped"] = where
        print(f"   vllm_kernel skipped: {where}", flush=True)
    V, canvas, seed = u["vocab"], u["canvas"], u["seed"]
    for B in u["batches"]:
        rows = B * canvas
        x = (torch.randn(rows, V, device=run.dev) * 3).to(run.dtype)
        temps = torch.linspace(0.5, 1.0, B, device=run.dev)
        nbytes = x.numel() * x.element_size()
        cands = {
            # on a CPU sample_row_stats runs the library's reference (no backend argument)
            "kernel": lambda: dkv.sample_row_stats(x, temps, canvas, seed, None),
            "vllm_kernel": vllm_mod and (lambda: vllm_mod.sample_row_stats(x, temps, canvas, seed, None)),
            "torch_reference": lambda: vllm_reference_torch(x, temps, canvas),
        }
        base = {"case": f"B{B} canvas {canvas} V {V} {run.cfg['dtype']}", "B": B, "rows": rows, "V": V}
        for impl, fn in cands.items():
            if fn is None:
                rec["rows"].append({**base, "impl": impl, "error": f"skipped: {where}"})
                continue
            measure(run, rec, {**base, "impl": impl}, fn, bytes_=nbytes, memory=True)
        x = temps = None  # free the memory before the next case
        if not run.cpu:
            torch.cuda.empty_cache()
    speedups(rec["rows"], "kernel")


def engines_soft_embedding(logits, embed, temperature: float):
    """The engines' self-conditioning input: fp32 softmax, probabilities cast to the table's dtype
    (a ``[rows, V]`` buffer), matmul in it."""
    import torch

    return torch.softmax(logits.float() / temperature, dim=-1).to(embed.dtype) @ embed


def soft_embedding(run: Run, rec: dict) -> None:
    """``soft_embedding`` vs the engines' probs buffer + matmul at DiffusionGemma's canvas and
    vocabulary: TFLOP/s of ``2 * rows * V * D`` as a fraction of the matmul rate of this run, and
    the peak extra memory of each (an OOM recorded as such)."""
    import torch

    import dllm_kernels as dk

    s = run.cfg["soft_embedding"]
    V, D, canvas, T = s["vocab"], s["hidden"], s["canvas"], s["temperature"]
    rec["hidden"] = D
    rec["hidden_note"] = "DiffusionGemma 26B-A4B's hidden size: assumed (not in the ecosystem notes)"
    embed = (torch.randn(V, D, device=run.dev) * 0.02).to(run.dtype)
    if not run.cpu:
        free, total = torch.cuda.mem_get_info()
        rec.update(free_bytes=free, total_bytes=total, headroom_bytes=int(run.cfg["headroom_frac"] * total))
    for B in s["batches"]:
        rows = B * canvas
        x = (torch.randn(rows, V, device=run.dev) * 3).to(run.dtype)
        flops = 2 * rows * V * D
        cands = {
            "kernel": lambda: dk.soft_embedding(x, embed, temperature=T, backend="triton"),
            "engines_probs_matmul": lambda: engines_soft_embedding(x, embed, T),
        }
        base = {"case": f"B{B} canvas {canvas} V {V} D {D} {run.cfg['dtype']}", "B": B, "rows": rows, "V": V, "D": D}
        # what a [rows, V] probability buffer in the table's dtype alone takes
        probs_bytes = rows * V * embed.element_size()
        for impl, fn in cands.items():
            row = measure(run, rec, {**base, "impl": impl}, fn, flops=flops, memory=True)
            if row.get("peak_extra_bytes") is not None:
                row["peak_extra_of_probs"] = row["peak_extra_bytes"] / probs_bytes
                row["fits_headroom"] = row["peak_extra_bytes"] <= rec["headroom_bytes"]
        x = None  # free the memory before the next case
        if not run.cpu:
            torch.cuda.empty_cache()
    speedups(rec["rows"], "kernel")


def attention(run: Run, rec: dict) -> None:
    import attention_cases as ac
    import torch
    from torch.nn.attention import SDPBackend

    torch._dynamo.config.cache_size_limit = 1000  # one FlexAttention compile per shape, never the eager fallback
    torch._dynamo.config.recompile_limit = 1000
    a = run.cfg["attn"]
    B, Lq, cache, D = a["B"], a["Lq"], a["cache"], a["D"]
    for model, (Hq, Hkv) in a["models"].items():
        q = torch.randn(B, Lq, Hq, D, device=run.dev, dtype=run.dtype)
        k, v = (torch.randn(B, Lq, Hkv, D, device=run.dev, dtype=run.dtype) for _ in range(2))
        kc, vc = (torch.randn(B, cache, Hkv, D, device=run.dev, dtype=run.dtype) for _ in range(2))
        args = (q, k, v, kc, vc)
        cands = {
            "kernel": ac.kernel,
            "sdpa_flash": ac.sdpa(SDPBackend.FLASH_ATTENTION),
            "sdpa_cudnn": ac.sdpa(SDPBackend.CUDNN_ATTENTION),
            # compiled per shape: a fresh torch.compile per model shape, its compile timed
            "flex_compiled": ac.flex(compiled=not run.cpu),
        }
        base = {"case": f"{model} B{B} q{Lq} c{cache}+{Lq}", "model": model, "Hq": Hq, "Hkv": Hkv}
        nbytes = ac.kv_bytes(k, kc)
        for impl, fn in cands.items():
            row = measure(run, rec, {**base, "impl": impl}, lambda: fn(*args), bytes_=nbytes)
            if getattr(fn, "gqa", None):
                row["gqa"] = fn.gqa
        # the baselines again on K/V joined beforehand: the attention alone, without the
        # per-step torch.cat that the decoders pay (same shapes: no recompile)
        joined = (q, torch.cat([kc, k], 1), torch.cat([vc, v], 1), None, None)
        for impl, fn in cands.items():
            if impl != "kernel":
                measure(run, rec, {**base, "impl": f"{impl}_prejoined"}, lambda: fn(*joined), bytes_=nbytes)
        q = k = v = kc = vc = joined = None  # free the memory before the next case
    speedups(rec["rows"], "kernel")


def refresh_commit(run: Run, rec: dict) -> None:
    import commit_cases as cc
    import refresh_cases as rc
    import torch

    r = run.cfg["refresh"]
    B, Lmax, H, D, nb, blk = r["B"], r["Lmax"], r["H"], r["D"], r["blocks"], r["block"]
    k_cache, v_cache, k_new, v_new = (torch.randn(B, Lmax, H, D, device=run.dev, dtype=run.dtype) for _ in range(4))
    block_ids = torch.stack([torch.randperm(Lmax // blk, device=run.dev)[:nb] for _ in range(B)])
    new_start = torch.zeros(B, dtype=torch.int64, device=run.dev)
    args = (k_cache, v_cache, k_new, v_new, block_ids, blk, new_start, None, None)
    moved = rc.bytes_moved(k_cache, block_ids, blk, rope=False)
    case = {"case": f"refresh B{B} {nb}x{blk} rows H{H}", "op": "refresh_kv_cache"}
    for impl, fn in rc.CANDIDATES.items():
        row = measure(run, rec, {**case, "impl": impl}, lambda: fn(*args), bytes_=moved)
        graph_and_host(run, row, lambda: fn(*args), capture=True)  # both candidates are sync-free
    k_cache = v_cache = k_new = v_new = None  # free the memory before the next case
    c = run.cfg["commit"]
    for policy in c["policies"]:
        data = cc.copy_case(cc.make_case(c["B"], c["L"], c["block"], policy, run.dev))
        case = {"case": f"commit {policy} B{c['B']} L{c['L']}", "op": "commit"}
        for impl, fn in cc.CANDIDATES.items():
            row = measure(run, rec, {**case, "impl": impl}, lambda: fn(data))
            # the reference syncs (a failed capture could leave the stream unusable): host time only
            graph_and_host(run, row, lambda: fn(data), capture=impl == "triton")
    speedups(rec["rows"], "triton")


def step(run: Run, rec: dict) -> None:
    import torch

    from dllm_kernels.benchmark import PATHS
    from dllm_kernels.models import DiffusionLM
    from dllm_kernels.models.config import llada_8b_layer, tiny

    s = run.cfg["step"]
    torch.manual_seed(0)
    cfg = llada_8b_layer(s["layers"]) if s["layers"] else tiny(64)
    with torch.device(run.dev):
        model = DiffusionLM(cfg).to(run.dtype).eval()
    # bytes every forward must read at least: the layers' weights and the LM head (the
    # embedding is a gather): a lower bound on a forward, as a fraction of the copy rate
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed" not in n)
    rec["weights_bytes"] = weights
    rec["model"] = {"layers": cfg.n_layers, "d_model": cfg.d_model, "heads": cfg.n_heads, "vocab": cfg.vocab_size}
    for B in s["batches"]:
        g = torch.Generator().manual_seed(B)
        prompts = [
            torch.randint(0, cfg.vocab_size - 8, (s["prompt"] - (b % 4),), generator=g).tolist() for b in range(B)
        ]
        for path in ("kernels", "sdpa"):
            row = {"case": f"{s['policy']} B{B} prompt {s['prompt']} gen {s['gen']}", "B": B, "impl": path}
            if not budget_spent(run, rec, row):
                model.attn_impl, model.backend = PATHS[path]
                step_row(run, rec, row, model, prompts, weights)
    speedups(rec["rows"], "kernels")


def step_row(run: Run, rec: dict, row: dict, model, prompts, weights: int) -> None:
    """Median wall time of ``generate`` over ``repeats`` calls, per forward of the batch."""
    from harness import wall_ms

    from dllm_kernels import generate

    s = run.cfg["step"]
    out = {}

    def decode():
        out["r"] = generate(
            model, prompts, policy=s["policy"], gen_length=s["gen"], block_length=s["block"], backend=model.backend
        )

    if run.cfg["warm"]:
        row["first_call_s"] = first_call_s(run, decode)  # warm up / compile
    seconds = wall_ms(decode, repeats=s["repeats"], cuda=not run.cpu)["ms"] / 1e3
    nfe = int(out["r"].nfe.max())
    row.update(seconds=seconds, forwards=nfe)
    row["ms"] = 1e3 * seconds / max(nfe, 1)
    if run.ceil.get("copy_TBps"):
        row["weights_floor_ms"] = weights / (run.ceil["copy_TBps"] * 1e12) * 1e3
        row["frac_floor"] = row["weights_floor_ms"] / row["ms"]
    rec["rows"].append(row)
    print(f"   {row['case']} {row['impl']}: {row['ms']:.2f} ms per forward ({nfe} forwards)", flush=True)


PHASE_FUNCS = {
    "ceilings": ceilings,
    "tests": tests,
    "token_stats": token_stats,
    "uniform_stats": uniform_stats,
    "soft_embedding": soft_embedding,
    "attention": attention,
    "refresh_commit": refresh_commit,
    "step": step,
    "ceilings_end": ceilings_end,
}


# ------------------------------------------------------------------------------------------------
# the whole run
# ------------------------------------------------------------------------------------------------


def report(run: Run) -> None:
    run.doc["targets"] = check_targets(run.doc)
    md = render_markdown(run.doc)
    (run.out / f"{run.stem}.md").write_text(md)
    png = run.out / f"{run.stem}.png"
    msg = render_png(run.doc, png)
    run.doc["png"] = png.name if msg is None else None
    if msg:
        print(msg, flush=True)
        run.doc["png_skipped"] = msg
    run.doc["total_s"] = time.monotonic() - run.t0
    run.write()
    print(md, flush=True)


def run_all(run: Run) -> int:
    """Every selected phase in order, then the report; 124 when the global timeout cut the run."""
    from harness import machine

    run.doc["machine"] = machine(cuda=not run.cpu)
    run.write()
    try:
        for name in PHASES:
            run_phase(run, name, PHASE_FUNCS[name])
    except Terminated:  # the wrapper's global timeout: keep what was measured
        for rec in run.doc["phases"].values():
            if rec["status"] == "running":
                rec["status"] = "cut"
        run.doc["cut"] = "terminated by the global timeout"
        report(run)
        return 124
    report(run)
    bad = [n for n, p in run.doc["phases"].items() if p["status"] in ("error", "failed")]
    return 1 if bad else 0


class Terminated(BaseException):
    """SIGTERM (scripts/gpu_check.sh's timeout): not an Exception, so no phase swallows it."""


def _on_sigterm(signum, frame):
    raise Terminated()


def fast_dllm_fp32(logits):
    """The decoders' own per-step code (Fast-dLLM's get_transfer_index at temperature 0, with the
    float32 softmax of LLaDA's current code and SGLang; Fast-dLLM itself uses float64): proposal,
    then the probability of the proposal. Less than token_stats computes (no margin, no entropy)."""
    import torch

    x0 = torch.argmax(logits, dim=-1)
    p = torch.softmax(logits.float(), dim=-1)
    x0_p = torch.gather(p, -1, x0[..., None])[..., 0]
    return x0, x0_p


_VERBOSE_LINE = re.compile(  # "path::test PASSED [ 25%]", or with xdist "[gw0] [ 10%] PASSED path::test"
    r"^(?:\[gw\d+\] \[\s*\d+%\] (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS) \S+::"
    r"|\S+::\S.* (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\s+\[\s*\d+%\])",
    re.M,
)


def _pytest_counts(text: str) -> dict:
    """Outcomes of the tests that finished, from pytest -v lines (there is no summary line when
    the budget cuts the run)."""
    counts: dict = {}
    for m in _VERBOSE_LINE.finditer(text):
        word = (m.group(1) or m.group(2)).lower()
        counts[word] = counts.get(word, 0) + 1
    return counts


def _pytest_summary(text: str) -> str:
    for line in reversed(text.splitlines()):
        s = line.strip().strip("=").strip()
        if any(w in s for w in (" passed", " failed", " skipped", " error", " deselected", "no tests ran")):
            return s
    return ""


# ------------------------------------------------------------------------------------------------
# markdown and plot
# ------------------------------------------------------------------------------------------------


def check_targets(doc: dict) -> list[dict]:
    """The issue's targets against this run's numbers (``met`` None: not measured)."""
    ph = doc.get("phases", {})
    out = []

    def rows(name, **kw):
        return [
            r
            for r in ph.get(name, {}).get("rows", [])
            if "error" not in r and all(r.get(k) == v for k, v in kw.items())
        ]

    def add(target, value, ok):
        out.append({"target": target, "value": value, "met": None if value is None else bool(ok(value))})

    ts = rows("token_stats")
    counts = sorted({r["rows"] for r in ts})
    for n in counts:
        k = next((r for r in ts if r["rows"] == n and r["impl"] == "kernel"), None)
        need = 0.8 if n == counts[-1] and len(counts) > 1 else 0.5
        add(f"token_stats {n} rows: >= {need:.0%} of copy", k and k.get("frac_copy"), lambda v, need=need: v >= need)
        for impl, x in (("fast_dllm_fp32", 10), ("fast_dllm_fp32_compiled", 3)):
            b = next((r for r in ts if r["rows"] == n and r["impl"] == impl), None)
            add(f"token_stats {n} rows: >= {x}x {impl}", b and b.get("kernel_speedup"), lambda v, x=x: v >= x)
    at = rows("attention")
    for model in dict.fromkeys(r["model"] for r in at):
        k = next((r for r in at if r["model"] == model and r["impl"] == "kernel"), None)
        add(f"attention {model}: >= 80% of copy on K/V", k and k.get("frac_copy"), lambda v: v >= 0.8)
        base = [
            r["kernel_speedup"]
            for r in at
            if r["model"] == model and r["impl"] != "kernel" and r.get("kernel_speedup") is not None
        ]
        add(f"attention {model}: >= 1.2x the best baseline", min(base) if base else None, lambda v: v >= 1.2)
    k = next((r for r in rows("refresh_commit", op="refresh_kv_cache", impl="triton")), None)
    add("refresh_kv_cache: >= 80% of copy", k and k.get("frac_copy"), lambda v: v >= 0.8)
    for r in rows("refresh_commit", op="commit", impl="triton"):
        add(f"{r['case']}: < 10 us per launch from a graph", r.get("graph_us"), lambda v: v < 10)
    se = rows("soft_embedding", impl="kernel")
    if se:
        k = max(se, key=lambda r: r["rows"])
        add(
            f"soft_embedding B{k['B']}: peak extra memory < 10% of a [rows, V] probs buffer",
            k.get("peak_extra_of_probs"),
            lambda v: v < 0.1,
        )
    return out


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def render_markdown(doc: dict) -> str:
    m = doc.get("machine", {})
    ph = doc.get("phases", {})
    c = ph.get("ceilings", {})
    lines = [
        f"# {'GPU' if doc['mode'] == 'gpu' else 'CPU-mode (interpreter: numbers meaningless)'} check",
        "",
        f"{m.get('gpu', 'CPU')}, torch {m.get('torch')}, triton {m.get('triton')}, "
        f"commit {m.get('commit')}, {m.get('date')}",
        "",
        f"Ceilings measured in this run: copy {_fmt(c.get('copy_TBps'), '.3f')} TB/s (read + write), "
        f"matmul {_fmt(c.get('matmul_TFLOPs'), '.1f')} TFLOP/s.",
        "",
    ]
    t = ph.get("tests")
    if t:
        lines += [
            f"GPU tests (`{t.get('command')}`): {t.get('summary') or t.get('error') or t.get('counts')} "
            f"(status {t['status']}, {_fmt(t.get('wall_s'), '.0f')} s)",
            "",
        ]
        lines += [f"- {f}" for f in t.get("failures", [])] + ([""] if t.get("failures") else [])
    lines += [
        "| phase | case | impl | median | TB/s | of ceiling | kernel speedup | graph us | host us | peak extra MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in PHASES:
        if name in ("tests",) or name not in ph:
            continue
        for r in ph[name]["rows"]:
            if "error" in r:
                oom = " (OOM)" if r.get("oom") else ""
                err = r["error"][:80] + oom
                lines.append(f"| {name} | {r.get('case', '')} | {r.get('impl', '')} | {err} | | | | | | |")
                continue
            med = f"{r['ms']:.3f} ms" if r["ms"] >= 1 else f"{r['ms'] * 1e3:.1f} us"
            tb = _fmt(r.get("TBps"), ".3f") or (f"{r['TFLOPs']:.0f} TFLOP/s" if "TFLOPs" in r else "")
            frac = r.get("frac_copy", r.get("frac_floor", r.get("frac_matmul")))
            peak = r.get("peak_extra_bytes")
            lines.append(
                f"| {name} | {r.get('case', '')} | {r.get('impl', '')} | {med} | {tb} "
                f"| {_fmt(frac and 100 * frac, '.0f')}"
                f"{'%' if frac else ''} | {_fmt(r.get('kernel_speedup'), '.2f')} | {_fmt(r.get('graph_us'), '.2f')} "
                f"| {_fmt(r.get('host_us'), '.1f')} | {_fmt(peak and peak / 2**20, '.1f')} |"
            )
        if ph[name].get("status") not in ("ok",):
            lines.append(
                f"| {name} | status: {ph[name].get('status')} {ph[name].get('error', '')[:100]} | | | | | | | | |"
            )
    lines += ["", "Targets (issues 15 and 21):", ""]
    for t in doc.get("targets", []):
        mark = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"- {t['target']}: {mark} ({_fmt(t['value'], '.3g') or '-'})")
    lines += [
        "",
        "of ceiling: TB/s over the copy rate of this run; soft_embedding rows: TFLOP/s over its (GPU: bf16) "
        "matmul rate; step rows: median ms per forward of `generate`, and the weights-read floor "
        "(layers + LM head at the copy rate) over it. kernel speedup: candidate time / kernel time. "
        "peak extra: `torch.cuda.max_memory_allocated` over what was allocated before one call "
        "(outputs included).",
    ]
    se = ph.get("soft_embedding")
    if se and se.get("headroom_bytes"):
        fits = ", ".join(
            f"{r['impl']} B{r['B']} " + ("OOM" if r.get("oom") else "yes" if r.get("fits_headroom") else "no")
            for r in se["rows"]
            if "fits_headroom" in r or r.get("oom")
        )
        lines += [
            "",
            f"soft_embedding: peak extra within vLLM's {doc['config']['headroom_frac']:.0%} headroom "
            f"({se['headroom_bytes'] / 2**30:.1f} GiB of {se['total_bytes'] / 2**30:.0f}): {fits}",
        ]
    u = ph.get("uniform_stats")
    if u:
        where = u.get("vllm_kernel") or f"not timed: {u.get('vllm_skipped')}"
        lines += ["", f"uniform_stats: vLLM's kernel from {where}"]
    return "\n".join(lines) + "\n"


def render_png(doc: dict, path: pathlib.Path) -> str | None:
    """One figure: TB/s of every bandwidth-bound candidate with the measured copy rate. Returns a
    message instead when matplotlib is missing."""
    from harness import pyplot, save_figure

    plt = pyplot()
    if isinstance(plt, str):
        return plt
    ph = doc.get("phases", {})
    c = ph.get("ceilings", {})
    # (phase, value key, axis label, ceiling line): bandwidth panels, then soft_embedding's rate
    specs = [(n, "TBps", "TB/s", c.get("copy_TBps"), "copy") for n in ("token_stats", "uniform_stats")]
    specs += [(n, "TBps", "TB/s", c.get("copy_TBps"), "copy") for n in ("attention", "refresh_commit")]
    specs += [("soft_embedding", "TFLOPs", "TFLOP/s", c.get("matmul_TFLOPs"), "matmul")]
    panels = [(spec, [r for r in ph[spec[0]]["rows"] if spec[1] in r]) for spec in specs if spec[0] in ph]
    panels = [(spec, rows) for spec, rows in panels if rows]
    if not panels:
        return "no bandwidth rows to plot: no PNG"
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, ((name, key, unit, ceiling, what), rows) in zip(axes[0], panels):
        labels = [f"{r['case']}\n{r['impl']}" for r in rows]
        ax.barh(
            range(len(rows)),
            [r[key] for r in rows],
            color=["C0" if r["impl"] in ("kernel", "triton") else "C7" for r in rows],
        )
        ax.set_yticks(range(len(rows)), labels, fontsize=6)
        ax.invert_yaxis()
        if ceiling:
            ax.axvline(ceiling, color="C3", ls="--", lw=1, label=f"{what} {ceiling:.2f} {unit}")
            ax.legend(fontsize=7)
        ax.set_xlabel(unit)
        ax.set_title(name)
    fig.suptitle(f"{doc.get('machine', {}).get('gpu', 'CPU mode (meaningless numbers)')}", fontsize=9)
    save_figure(plt, fig, path, dpi=110)
    return None


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--pytest"]:  # the tests phase: pytest on the working tree, same mapping
        use_working_tree()
        import pytest

        return pytest.main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on Triton's interpreter (CI)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder of the JSON / markdown / PNG")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 450 GPU, 600 CPU)")
    ap.add_argument("--phases", nargs="*", choices=PHASES, help="run only these phases")
    ap.add_argument(
        "parts",
        nargs="*",
        choices=[[]] + list(PARTS),
        metavar="PART",
        help=f"the older part names ({', '.join(PARTS)}): their phases, with the ceilings",
    )
    args = ap.parse_args(argv)
    if args.parts:
        args.phases = ["ceilings", *dict.fromkeys(PARTS[p] for p in args.parts), *(args.phases or [])]
    if args.cpu:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
    use_working_tree()
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu for the interpreter mode", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    return run_all(new_run(args))


if __name__ == "__main__":
    sys.exit(main())
