"""scripts/gpu_check.sh in its CPU mode (the same driver, bench/gpu_check.py, on Triton's
interpreter with tiny shapes), so the one-command GPU check cannot rot between GPU sessions: every
phase runs and lands in the JSON with finite numbers, and the markdown table and the PNG are
written. The numbers themselves mean nothing on the interpreter and are not checked."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402

KERNEL_IMPLS = {"kernel", "triton", "kernels"}


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def no_nan(c):
        raise AssertionError(f"non-finite constant {c} in the JSON")

    doc = json.loads((out / "cpu-check.json").read_text(), parse_constant=no_nan)
    return out, doc, proc.stdout


def test_every_phase_ran_in_order(cpu_run):
    _, doc, _ = cpu_run
    assert doc["mode"] == "cpu"
    assert list(doc["phases"]) == list(gpu_check.PHASES)
    assert {n: p["status"] for n, p in doc["phases"].items()} == dict.fromkeys(gpu_check.PHASES, "ok")


def test_rows_are_measured_with_finite_numbers(cpu_run):
    _, doc, _ = cpu_run
    for name, phase in doc["phases"].items():
        if name == "tests":
            continue
        rows = phase["rows"]
        assert rows, name
        for r in rows:
            if "error" in r:  # e.g. SDPA's flash / cuDNN backends do not exist on a CPU
                assert r["impl"] not in KERNEL_IMPLS, (name, r)
                continue
            for key, v in r.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    assert math.isfinite(v) and v >= 0, (name, key, r)
            assert r["ms"] > 0, (name, r)
            if "bytes" in r:
                assert r["TBps"] > 0, (name, r)
        # every bandwidth figure is also a fraction of the copy rate measured in the same run
        if name in ("token_stats", "uniform_stats", "attention"):
            assert all("frac_copy" in r for r in rows if "TBps" in r), name
            assert {r["impl"] for r in rows if "error" not in r} >= {"kernel"}
    assert doc["phases"]["ceilings"]["copy_TBps"] > 0 and doc["phases"]["ceilings"]["matmul_TFLOPs"] > 0


def test_cases_cover_the_issue(cpu_run):
    _, doc, _ = cpu_run
    ph = doc["phases"]
    impls = lambda name: {r["impl"] for r in ph[name]["rows"]}  # noqa: E731
    assert impls("token_stats") == {"kernel", "reference_eager", "fast_dllm_fp32", "fast_dllm_fp32_compiled"}
    baselines = {"sdpa_flash", "sdpa_cudnn", "flex_compiled"}
    assert impls("attention") == {"kernel", *baselines, *(f"{b}_prejoined" for b in baselines)}
    assert {r["model"] for r in ph["attention"]["rows"]} == {"llada", "dream"}
    assert {r["op"] for r in ph["refresh_commit"]["rows"]} == {"refresh_kv_cache", "commit"}
    assert all("host_us" in r for r in ph["refresh_commit"]["rows"])
    assert impls("step") == {"kernels", "sdpa"}
    assert len({r["rows"] for r in ph["token_stats"]["rows"]}) == 2


def test_uniform_stats_phase(cpu_run):
    """Issue 21: sample_row_stats vs vLLM's kernel (or the reason it was not timed) vs the PyTorch
    form, at every batch, as TB/s of logits read and a fraction of this run's copy rate."""
    _, doc, _ = cpu_run
    u = doc["phases"]["uniform_stats"]
    cfg = gpu_check.CPU_CONFIG["uniform_stats"]
    assert gpu_check.GPU_CONFIG["uniform_stats"] == {"canvas": 256, "batches": [1, 4, 8], "vocab": 262144, "seed": 1234}
    assert u["budget_s"] == gpu_check.CPU_CONFIG["uniform_stats_budget_s"]
    rows = u["rows"]
    assert {(r["B"], r["impl"]) for r in rows} == {
        (B, impl) for B in cfg["batches"] for impl in ("kernel", "vllm_kernel", "torch_reference")
    }
    for r in rows:
        assert r["rows"] == r["B"] * cfg["canvas"] and r["V"] == cfg["vocab"]
        if r["impl"] == "vllm_kernel" and u["vllm_kernel"] is None:  # no vLLM, no wheel: the reason
            assert r["error"] == f"skipped: {u['vllm_skipped']}" and "vLLM not importable" in r["error"]
            continue
        assert "error" not in r, r
        assert r["bytes"] == r["rows"] * r["V"] * 4  # CPU mode: fp32 logits, read once
        assert r["frac_copy"] > 0 and "peak_extra_bytes" in r and r["peak_extra_bytes"] is None  # no GPU
        assert r["kernel_speedup"] > 0
    if u["vllm_kernel"] is not None:
        src = u["vllm_kernel"]  # the wheel's member, the sampler file (bootstrap's), or vLLM itself
        assert gpu_check.VLLM_SAMPLER_PATH in src or src.endswith("vllm_diffusion_gemma_sampler.py") or "vllm " in src


def test_soft_embedding_phase(cpu_run):
    """Issue 21: soft_embedding vs the engines' probs buffer + matmul, as TFLOP/s of the matmul it
    replaces over this run's matmul rate, with each one's peak extra memory (None on a CPU)."""
    _, doc, _ = cpu_run
    se = doc["phases"]["soft_embedding"]
    cfg = gpu_check.CPU_CONFIG["soft_embedding"]
    assert gpu_check.GPU_CONFIG["soft_embedding"]["hidden"] == 2816 and se["hidden"] == cfg["hidden"]
    assert gpu_check.GPU_CONFIG["soft_embedding"]["vocab"] == 262144
    rows = se["rows"]
    assert {(r["B"], r["impl"]) for r in rows} == {
        (B, impl) for B in cfg["batches"] for impl in ("kernel", "engines_probs_matmul")
    }
    matmul = doc["phases"]["ceilings"]["matmul_TFLOPs"]
    for r in rows:
        assert "error" not in r, r
        assert r["rows"] == r["B"] * cfg["canvas"] and r["flops"] == 2 * r["rows"] * cfg["vocab"] * cfg["hidden"]
        assert math.isclose(r["frac_matmul"], r["TFLOPs"] / matmul)
        assert "peak_extra_bytes" in r and r["peak_extra_bytes"] is None and "oom" not in r
    assert "| soft_embedding | B2 canvas 4 V 256 D 32 float32 | kernel |" in (cpu_run[0] / "cpu-check.md").read_text()


def test_vllm_kernel_without_vllm(monkeypatch, tmp_path):
    """No vLLM, no sampler file, no wheel: the reason, naming where it looked. With the sampler
    file: vLLM's module, its stub ``vllm`` gone from ``sys.modules`` once the file has run."""
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(gpu_check, "VLLM_SAMPLER_FILES", ("$GPU_CHECK_TEST_NONE",))
    monkeypatch.setattr(gpu_check, "VLLM_WHEELS", (str(tmp_path / "vllm-*.whl"),))
    mod, why = gpu_check.load_vllm_sampler()
    assert mod is None and why.startswith("vLLM not importable") and "vllm-*.whl" in why
    f = tmp_path / "sampler.py"
    f.write_text("from vllm.triton_utils import tl, triton\n\ndef sample_row_stats(*a):\n    return tl, triton\n")
    monkeypatch.setenv("GPU_CHECK_TEST_NONE", str(f))
    mod, where = gpu_check.load_vllm_sampler()
    assert where == str(f) and mod.sample_row_stats()[0].__name__ == "triton.language"
    assert "vllm" not in sys.modules and "vllm.triton_utils" not in sys.modules


def test_phase_budget_share_and_oom(tmp_path):
    """A phase's own share of the budget: once spent, its rows are skipped and it is partial, and
    the later phases get the run's budget again; an out-of-memory candidate is an ``oom`` row."""
    import torch

    cfg = {**gpu_check.CPU_CONFIG, "budget_s": 100, "soft_embedding_budget_s": 0}
    run = gpu_check.Run(cfg, True, tmp_path, ["uniform_stats", "soft_embedding"], {"phases": {}})

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def phase(run, rec):
        gpu_check.measure(run, rec, {"case": "a", "impl": "engines"}, oom)
        gpu_check.measure(run, rec, {"case": "a", "impl": "kernel"}, lambda: None)

    gpu_check.run_phase(run, "uniform_stats", phase)  # has a share of 600 s: the run's 100 s bind
    rec = run.doc["phases"]["uniform_stats"]
    assert rec["status"] == "ok" and rec["budget_s"] == 600
    assert rec["rows"][0]["oom"] is True and rec["rows"][0]["error"].startswith("OutOfMemoryError: CUDA out of")
    assert "error" not in rec["rows"][1] and rec["rows"][1]["ms"] > 0
    gpu_check.run_phase(run, "soft_embedding", phase)  # a share of 0 s: nothing runs
    rec = run.doc["phases"]["soft_embedding"]
    assert rec["status"] == "partial"
    assert [r["error"] for r in rec["rows"]] == ["skipped: time budget spent"] * 2
    assert run.phase_end is None and 90 < run.left() <= 100
    assert json.loads((tmp_path / "cpu-check.json").read_text())["phases"]["soft_embedding"]["status"] == "partial"


def test_gpu_memory_fields_render(cpu_run, tmp_path):
    """What only a GPU run fills (peak memory, the headroom, an out-of-memory row), rendered from
    the CPU run's document with those fields set: the target is judged, the table and the PNG
    written."""
    _, doc, _ = cpu_run
    doc = json.loads(json.dumps(doc))
    se = doc["phases"]["soft_embedding"]
    se.update(total_bytes=80 * 2**30, headroom_bytes=8 * 2**30)
    big = max(r["B"] for r in se["rows"])
    for r in se["rows"]:
        probs = r["rows"] * r["V"] * 2
        r["peak_extra_bytes"] = probs // 64 if r["impl"] == "kernel" else 5 * probs
        r["peak_extra_of_probs"] = r["peak_extra_bytes"] / probs
        r["fits_headroom"] = r["impl"] == "kernel"
        if r["impl"] != "kernel" and r["B"] == big:
            r.update(error="OutOfMemoryError: CUDA out of memory.", oom=True)
            del r["fits_headroom"]
    targets = {t["target"]: t for t in gpu_check.check_targets(doc)}
    t = targets[f"soft_embedding B{big}: peak extra memory < 10% of a [rows, V] probs buffer"]
    assert t["met"] is True and t["value"] == 1 / 64
    md = gpu_check.render_markdown({**doc, "targets": list(targets.values())})
    assert "| OutOfMemoryError: CUDA out of memory. (OOM) |" in md
    assert f"engines_probs_matmul B{big} OOM" in md and f"kernel B{big} yes" in md and "8.0 GiB of 80" in md
    kernel = next(r for r in se["rows"] if r["impl"] == "kernel" and r["B"] == big)
    assert f"| {kernel['peak_extra_bytes'] / 2**20:.1f} |" in md
    msg = gpu_check.render_png(doc, tmp_path / "g.png")
    assert msg is None or "matplotlib" in msg


def test_tests_phase_ran_pytest(cpu_run):
    out, doc, _ = cpu_run
    t = doc["phases"]["tests"]
    assert t["returncode"] in (0, 5) and not t["timed_out"]
    assert "-m gpu" in t["command"]
    assert "skipped" in t["summary"] or "deselected" in t["summary"]
    # the per-test count (what a run cut by the budget still reports) agrees with pytest's summary
    assert f"{t['counts'].get('skipped', 0)} skipped" in t["summary"] and t["counts"].get("skipped", 0) > 0
    assert (out / t["log"]).exists()


def test_markdown_and_png(cpu_run):
    out, doc, stdout = cpu_run
    md = (out / "cpu-check.md").read_text()
    assert "| phase | case | impl |" in md
    for name in gpu_check.PHASES:
        if name != "tests":
            assert f"| {name} |" in md, name
    assert "GPU tests" in md
    # the issue's targets judged from the run's own numbers (CUDA-graph times do not exist on a CPU)
    targets = {t["target"]: t for t in doc["targets"]}
    assert all(f"- {name}: " in md for name in targets)
    # CUDA-graph times and GPU memory do not exist on a CPU
    measured = [t for name, t in targets.items() if not name.startswith(("commit", "soft_embedding"))]
    assert [t["met"] for name, t in targets.items() if name.startswith("soft_embedding")] == [None]
    assert len(measured) == 2 * 3 + 2 * 2 + 1 and all(t["met"] is not None for t in measured)
    assert md.strip() in stdout  # the table ends the run's output
    if doc.get("png"):
        assert (out / doc["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib" in doc["png_skipped"]


def test_runs_from_the_checkout_without_an_install():
    """The GPU image has no build backend: the driver maps dllm_kernels.kernels / .reference to
    the checkout's kernels/ and reference/ itself. Checked with this venv's editable-install
    finder removed, so only the driver's mapping can resolve them."""
    code = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path\n"
        "                    if not str(getattr(f, '__module__', '')).startswith('__editable__')]\n"
        "sys.path_hooks[:] = [h for h in sys.path_hooks if '__editable__' not in repr(h)]\n"
        f"sys.path.insert(0, {str(ROOT / 'bench')!r})\n"
        "import gpu_check\n"
        "gpu_check.use_working_tree()\n"
        "import dllm_kernels, dllm_kernels.kernels.attention as a, dllm_kernels.reference as r\n"
        "print(dllm_kernels.__file__, a.__file__, r.__file__, sep='\\n')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [pathlib.Path(p) for p in proc.stdout.split()]
    assert files == [
        ROOT / "dllm_kernels" / "__init__.py",
        ROOT / "kernels" / "attention.py",
        ROOT / "reference" / "__init__.py",
    ]
