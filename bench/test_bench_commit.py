"""commit on an H100-class GPU: one launch per decoding step vs the eager and compiled reference.

    pytest bench/test_bench_commit.py --benchmark-json bench/results/commit_pytest.json

Writes bench/results/commit.json (+ .png). Target (the issue): one launch, under 10 us at B = 64
(block 32). ``ms`` is the do_bench median (L2 flushed, host launch included as far as the flush
does not hide it); ``graph_ms`` replays 20 calls captured in one CUDA graph (the harness's
``graph_ms``), i.e. GPU time per call without the host (None where a candidate cannot be captured).
"""

import pytest
import torch
from commit_cases import CANDIDATES, POLICIES, compiled_candidates, copy_case, make_case
from harness import add_speedups, do_bench_ms, plot_results, synchronised, try_graph_ms, write_results

torch._dynamo.config.cache_size_limit = 1000  # one compile per shape and rule; never the eager fallback

BATCH = [1, 8, 64]
LENGTHS = [256, 1024]
BLOCK = 32
_rows: list[dict] = []
_compiled: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _write():
    yield
    if _rows:
        # speedup of the kernel over each candidate at the same case
        add_speedups(_rows, group="impl", base="triton", time="ms", same=("policy", "B", "L"), out="triton_speedup")
        write_results(
            "commit",
            _rows,
            notes=f"block {BLOCK}; one valid proposal everywhere: the first call commits, repetitions repeat its loads",
        )
        for policy in POLICIES:
            rows = [dict(r, case=f"B{r['B']} L{r['L']}") for r in _rows if r["policy"] == policy]
            plot_results(f"commit_{policy}", rows, x="case", y="us", group="impl", ylabel="us per step (median)")


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("B", BATCH)
@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("impl", ["triton", "reference_eager", "reference_compiled"])
def test_commit(benchmark, impl, policy, B, L):
    if impl == "reference_compiled" and not _compiled:
        _compiled.update(compiled_candidates())
    fn = {**CANDIDATES, **_compiled}[impl]
    case = copy_case(make_case(B, L, BLOCK, policy, "cuda"))
    fn(case)  # compile / warm up
    t = do_bench_ms(lambda: fn(case))
    row = {
        "impl": impl,
        "policy": policy,
        "B": B,
        "L": L,
        "block": BLOCK,
        **t,
        "us": t["ms"] * 1e3,
        "graph_ms": try_graph_ms(lambda: fn(case))[0],
    }
    _rows.append(row)
    benchmark.extra_info.update(row)
    benchmark.pedantic(synchronised(lambda: fn(case)), rounds=20, warmup_rounds=3)
