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
        if name in ("token_stats", "attention"):
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
    measured = [t for name, t in targets.items() if not name.startswith("commit")]
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
