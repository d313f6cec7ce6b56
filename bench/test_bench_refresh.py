"""refresh_kv_cache on an H100-class GPU: TB/s of the bytes moved, vs the torch index_copy_
equivalent.

    pytest bench/test_bench_refresh.py --benchmark-json bench/results/refresh_pytest.json

Writes bench/results/refresh_kv_cache.json (+ .png). Target (DESIGN.md 6): >= 2.5 TB/s on the
bytes moved (listed K/V rows read once and written once, plus cos/sin rows with RoPE).
"""

import pytest
import torch
from harness import do_bench_ms, kernel_results_writer, synchronised
from refresh_cases import CANDIDATES, bytes_moved

MODELS = {"llada": 32, "dream": 4}  # KV heads, head_dim 128
D, LMAX, BLOCK = 128, 4096, 32
DTYPE = torch.bfloat16
_rows: list[dict] = []


NOTES = f"{DTYPE} D={D} Lmax={LMAX} block={BLOCK}; TB/s = bytes moved / median time"
_write = kernel_results_writer("refresh_kv_cache", _rows, x="shape", y="TBps", ylabel="TB/s moved", notes=NOTES)


@pytest.mark.parametrize("impl", list(CANDIDATES))
@pytest.mark.parametrize("rope", [False, True], ids=["copy", "rope"])
@pytest.mark.parametrize("nb", [1, 8, 32], ids=lambda n: f"{n}blocks")
@pytest.mark.parametrize("B", [1, 8, 32])
@pytest.mark.parametrize("model", MODELS)
def test_refresh(benchmark, model, B, nb, rope, impl):
    H = MODELS[model]
    k_cache, v_cache = (torch.randn(B, LMAX, H, D, device="cuda", dtype=DTYPE) for _ in range(2))
    k_new, v_new = (torch.randn(B, LMAX, H, D, device="cuda", dtype=DTYPE) for _ in range(2))
    # nb distinct blocks per row, spread over the canvas (a d3LLM refresh of stale blocks)
    block_ids = torch.stack([torch.randperm(LMAX // BLOCK, device="cuda")[:nb] for _ in range(B)])
    new_start = torch.zeros(B, dtype=torch.int64, device="cuda")
    cos = sin = None
    if rope:
        angles = torch.rand(LMAX, D, device="cuda") * 100
        cos, sin = angles.cos(), angles.sin()
    args = (k_cache, v_cache, k_new, v_new, block_ids, BLOCK, new_start, cos, sin)
    fn = CANDIDATES[impl]
    fn(*args)  # compile / warm up
    t = do_bench_ms(lambda: fn(*args))
    moved = bytes_moved(k_cache, block_ids, BLOCK, rope)
    row = {
        "impl": impl,
        "model": model,
        "B": B,
        "blocks": nb,
        "rope": rope,
        "shape": f"{model} B{B} {nb}blk {'rope' if rope else 'copy'}",
        **t,
        "bytes": moved,
        "TBps": moved / (t["ms"] * 1e-3) / 1e12,
    }
    _rows.append(row)
    benchmark.extra_info.update(row)
    benchmark.pedantic(synchronised(lambda: fn(*args)), rounds=20, warmup_rounds=3)
