"""The benchmark harness (dllm_kernels/_bench.py, and bench/harness.py over it) on the CPU: the
statistics, the host timer's arithmetic, the machine record, the JSON / PNG writers and the
speedup rows. Its CUDA timers (do_bench, graph replay) run only in the GPU check."""

import json
import math
import pathlib
import statistics
import sys
import time

import pytest
import torch

from dllm_kernels import _bench

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import harness  # noqa: E402


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_quantiles_are_torch_quantile_and_the_median(n):
    values = torch.rand(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64).tolist()
    for q in (0.0, 0.2, 0.5, 0.8, 1.0):
        assert _bench.quantile(values, q) == pytest.approx(
            torch.quantile(torch.tensor(values, dtype=torch.float64), q).item(), abs=1e-12
        )
    assert _bench.quantile(values, 0.5) == pytest.approx(statistics.median(values), abs=1e-15)
    with pytest.raises(ValueError, match="values"):
        _bench.quantile([], 0.5)


def test_wall_ms_counts_warmup_and_repeats():
    calls = []
    t = _bench.wall_ms(lambda: calls.append(time.sleep(0.001)), repeats=5, warmup=2, cuda=False)
    assert len(calls) == 7
    assert set(t) == {"ms", "ms_p20", "ms_p80"}
    assert 1.0 <= t["ms_p20"] <= t["ms"] <= t["ms_p80"]
    with pytest.raises(ValueError, match="repeats"):
        _bench.wall_ms(lambda: None, repeats=0, cuda=False)


def test_host_us_is_clock_time_per_call():
    ticks = iter([10.0, 12.0])  # the clock is read once before and once after the timed calls
    calls = []
    us = _bench.host_us(lambda: calls.append(1), calls=4, warmup=3, clock=lambda: next(ticks))
    assert us == pytest.approx(0.5e6) and len(calls) == 7
    with pytest.raises(ValueError, match="calls"):
        _bench.host_us(lambda: None, calls=0)


def test_machine_record():
    m = _bench.machine(cuda=False, copy_TBps=2.5)
    assert m["torch"] == torch.__version__ and m["copy_TBps"] == 2.5
    assert {"date", "triton", "python", "interpreter", "commit"} <= set(m) and "gpu" not in m
    assert "copy_TBps" not in _bench.machine(cuda=False)


def test_write_json_is_strict_json(tmp_path):
    path = _bench.write_json(tmp_path / "sub" / "r.json", {"a": (1, float("nan")), 2: math.inf, "t": torch.int64})

    def no_constant(c):
        raise AssertionError(c)

    assert json.loads(path.read_text(), parse_constant=no_constant) == {"a": [1, None], "2": None, "t": "torch.int64"}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left


def test_add_speedups():
    rows = [
        {"impl": "triton", "case": "a", "ms": 2.0},
        {"impl": "eager", "case": "a", "ms": 6.0},
        {"impl": "eager", "case": "b", "ms": 1.0},  # no kernel row for b
        {"impl": "eager", "case": "a", "error": "refused"},  # no time: no speedup
    ]
    _bench.add_speedups(rows, group="impl", base="triton", time="ms", same=("case",), out="x")
    assert [r.get("x", "absent") for r in rows] == [1.0, 3.0, None, "absent"]


def test_bench_results_writers(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    rows = [{"impl": i, "n": n, "GBps": float(n + k)} for k, i in enumerate(["triton", "eager"]) for n in (1, 2)]
    doc = json.loads(harness.write_results("demo", rows, notes="n").read_text())
    assert doc["results"] == rows and doc["notes"] == "n" and doc["machine"]["torch"] == torch.__version__
    png = harness.plot_results("demo", rows, x="n", y="GBps", group="impl", ylabel="GB/s")
    assert png == tmp_path / "demo.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the capture fails only without CUDA")
def test_try_graph_ms_reports_a_failed_capture():
    ms, err = _bench.try_graph_ms(lambda: None)
    assert ms is None and err.startswith("RuntimeError: ") and "CUDA" in err
