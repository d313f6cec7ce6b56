"""Attention on an H100-class GPU: decode steps (effective K/V read TB/s) and prefill (TFLOP/s),
against SDPA (cuDNN, flash) and compiled FlexAttention on the concatenated equivalent.

    pytest bench/test_bench_attention.py --benchmark-json bench/results/attention_pytest.json
    pytest bench/test_bench_attention.py -k "decode and llada"      # a subset

Writes bench/results/attention_decode.json and attention_prefill.json (+ .png). Targets
(DESIGN.md 6): decode >= 2.5 TB/s effective K/V read and >= 1.1x the best baseline; prefill
>= 400 TFLOP/s. Decode steps: the block (32 queries, 32 new keys) or the block plus a pruned
Streaming-dLLM suffix (64 positions + the last: 97 queries and new keys) against a prefix cache;
uniform cache lengths, so the baselines need no mask.
"""

import pytest
import torch
from attention_cases import flops, gpu_candidates, kv_bytes
from harness import add_speedups, do_bench_ms, plot_results, synchronised, write_results

torch._dynamo.config.cache_size_limit = 1000  # one FlexAttention compile per shape, never the eager fallback
torch._dynamo.config.recompile_limit = 1000

MODELS = {"llada": (32, 32), "dream": (28, 4)}  # (query heads, KV heads), head_dim 128
D = 128
DTYPE = torch.bfloat16
IMPLS = ["triton", "sdpa_cudnn", "sdpa_flash", "flex_compiled"]
_rows = {"attention_decode": [], "attention_prefill": []}
_candidates = {}


@pytest.fixture(scope="module", autouse=True)
def _write():
    yield
    keys = {"attention_decode": ("model", "B", "Lq", "cache"), "attention_prefill": ("model", "B", "S")}
    for name, rows in _rows.items():
        if not rows:
            continue
        # the kernel's speedup over each candidate at the same shape
        add_speedups(rows, group="impl", base="triton", time="ms", same=keys[name], out="triton_speedup")
        metric = "TBps" if name == "attention_decode" else "TFLOPs"
        write_results(
            name,
            rows,
            notes=f"{DTYPE} D={D}; decode: TB/s = cache + new K/V bytes / median time; "
            "prefill: TFLOP/s = 4 B Hq S^2 D / median time",
        )
        plot_results(name, [r for r in rows if metric in r], x="shape", y=metric, group="impl", ylabel=metric)


def candidate(impl):
    if not _candidates:
        _candidates.update(gpu_candidates())
    return _candidates[impl]


def measure(impl, name, row, args, metric):
    fn = candidate(impl)
    try:
        fn(*args)  # compile / warm up; a backend may refuse the shape
    except RuntimeError as e:
        _rows[name].append({**row, "impl": impl, "error": str(e).splitlines()[0]})
        pytest.skip(f"{impl}: {e}")
    t = do_bench_ms(lambda: fn(*args))
    out = {**row, "impl": impl, **t, **metric(t["ms"]), "gqa": getattr(fn, "gqa", None) or "native"}
    _rows[name].append(out)
    return fn, out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cache", [512, 1024, 2048, 4096])
@pytest.mark.parametrize("Lq", [32, 97], ids=["block", "block+suffix"])
@pytest.mark.parametrize("B", [1, 8, 32])
@pytest.mark.parametrize("model", MODELS)
def test_decode(benchmark, model, B, Lq, cache, impl):
    Hq, Hkv = MODELS[model]
    q = torch.randn(B, Lq, Hq, D, device="cuda", dtype=DTYPE)
    k, v = (torch.randn(B, Lq, Hkv, D, device="cuda", dtype=DTYPE) for _ in range(2))
    kc, vc = (torch.randn(B, cache, Hkv, D, device="cuda", dtype=DTYPE) for _ in range(2))
    args = (q, k, v, kc, vc)
    row = {"model": model, "B": B, "Lq": Lq, "cache": cache, "shape": f"{model} B{B} q{Lq} c{cache}"}
    nbytes = kv_bytes(k, kc)
    fn, out = measure(impl, "attention_decode", row, args, lambda ms: {"TBps": nbytes / (ms * 1e-3) / 1e12})
    benchmark.extra_info.update(out)
    benchmark.pedantic(synchronised(lambda: fn(*args)), rounds=20, warmup_rounds=3)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("S", [1024, 2048, 4096])
@pytest.mark.parametrize("model", MODELS)
def test_prefill(benchmark, model, S, impl):
    Hq, Hkv = MODELS[model]
    B = 8192 // S
    q = torch.randn(B, S, Hq, D, device="cuda", dtype=DTYPE)
    k, v = (torch.randn(B, S, Hkv, D, device="cuda", dtype=DTYPE) for _ in range(2))
    args = (q, k, v)
    row = {"model": model, "B": B, "S": S, "shape": f"{model} B{B} S{S}"}
    work = flops(q, k, None)
    fn, out = measure(impl, "attention_prefill", row, args, lambda ms: {"TFLOPs": work / (ms * 1e-3) / 1e12})
    benchmark.extra_info.update(out)
    benchmark.pedantic(synchronised(lambda: fn(*args)), rounds=10, warmup_rounds=2)
