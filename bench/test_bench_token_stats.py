"""token_stats throughput on an H100-class GPU: GB/s of logits read, vs eager and compiled PyTorch.

    pytest bench/test_bench_token_stats.py --benchmark-json bench/results/token_stats_pytest.json

Writes bench/results/token_stats.json (+ .png). Targets (DESIGN.md 6): >= 2.4 TB/s at >= 1024
rows, >= 1.5 TB/s at 32 rows, >= 10x the eager reference and >= 2.5x its torch.compile.
"""

import pytest
import torch
from harness import do_bench_ms, kernel_results_writer, synchronised, write_results
from token_stats_cases import CANDIDATES, compiled_candidates

import dllm_kernels as dk

torch._dynamo.config.cache_size_limit = 1000  # one compile per shape; never the eager fallback

VOCAB = 126464
ROWS = [32, 256, 1024, 2048]
_rows: list[dict] = []


NOTES = f"V={VOCAB} bf16 logits; GB/s = logits bytes read / median time"
_write = kernel_results_writer("token_stats", _rows, x="rows", y="GBps", ylabel="GB/s of logits read", notes=NOTES)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize(
    "impl", ["triton", "reference_eager", "reference_compiled", "peer_fp32_eager", "peer_fp32_compiled"]
)
def test_token_stats(benchmark, impl, rows):
    x = torch.randn(rows, VOCAB, device="cuda", dtype=torch.bfloat16) * 3
    fn = {**CANDIDATES, **compiled_candidates()}[impl] if "compiled" in impl else CANDIDATES[impl]
    fn(x)  # compile / warm up
    t = do_bench_ms(lambda: fn(x))
    gbps = x.numel() * x.element_size() / (t["ms"] * 1e-3) / 1e9
    row = {"impl": impl, "rows": rows, "V": VOCAB, **t, "GBps": gbps}
    _rows.append(row)
    benchmark.extra_info.update(row)
    benchmark.pedantic(synchronised(lambda: fn(x)), rounds=20, warmup_rounds=3)


_extra: list[dict] = []


@pytest.fixture(scope="module")
def _write_extra():
    yield
    if _extra:
        write_results(
            "token_stats_sampling_tp",
            _extra,
            notes=f"V={VOCAB} bf16; sampling with an int seed vs per-row seeds; one TP shard's "
            "token_stats_partial (V / world) and the merge of world states",
        )


@pytest.mark.parametrize("rows", [32, 1024])
@pytest.mark.parametrize("impl", ["sample_int_seed", "sample_row_seeds", "tp_shard_of_8", "tp_merge_of_8"])
def test_token_stats_sampling_and_tp(benchmark, _write_extra, impl, rows):
    from token_stats_cases import kernel_sample_int_seed, kernel_sample_row_seeds, shard_bounds

    x = torch.randn(rows, VOCAB, device="cuda", dtype=torch.bfloat16) * 3
    seeds = torch.arange(rows, device="cuda") * 7919 + 1
    a, b = shard_bounds(VOCAB, 8)[0]
    parts = torch.stack([dk.token_stats_partial(x[:, a:b], a, vocab_size=VOCAB)] * 8)
    fn = {
        "sample_int_seed": lambda: kernel_sample_int_seed(x),
        "sample_row_seeds": lambda: kernel_sample_row_seeds(x, seeds),
        "tp_shard_of_8": lambda: dk.token_stats_partial(x[:, a:b], a, vocab_size=VOCAB),
        "tp_merge_of_8": lambda: dk.merge_token_stats(parts),
    }[impl]
    fn()
    t = do_bench_ms(fn)
    read = (
        x[:, a:b].numel() * 2
        if impl == "tp_shard_of_8"
        else parts.numel() * 4
        if impl == "tp_merge_of_8"
        else x.numel() * 2
    )
    row = {"impl": impl, "rows": rows, "V": VOCAB, **t, "GBps": read / (t["ms"] * 1e-3) / 1e9}
    _extra.append(row)
    benchmark.extra_info.update(row)
    benchmark.pedantic(synchronised(fn), rounds=20, warmup_rounds=3)
