"""refresh_kv_cache: the Triton kernel against the reference, bit for bit, on poisoned caches.

Caches start filled with NaN (and the rows a refresh must not touch keep their poison bits), so
both a missed write and a stray write are caught by a bitwise comparison.
"""

import pytest
import torch
from helpers import assert_bitwise_equal

import dllm_kernels as dk
from dllm_kernels import reference

GPU = pytest.mark.gpu


def poisoned_caches(B, Lmax, H, D, dtype, device):
    """Two caches of NaN, except a few finite rows so that 'left untouched' is visible too."""
    k = torch.full((B, Lmax, H, D), float("nan"), dtype=dtype, device=device)
    v = torch.full((B, Lmax, H, D), float("nan"), dtype=dtype, device=device)
    k[:, ::3] = torch.randn(B, len(range(0, Lmax, 3)), H, D).to(dtype=dtype, device=device)
    return k, v


def run_both(k_cache, v_cache, k_new, v_new, block_ids, block_size, **kw):
    """Refresh copies of the caches with both backends; return (kernel, reference) results."""
    got = (k_cache.clone(), v_cache.clone())
    dk.refresh_kv_cache(*got, k_new, v_new, block_ids, block_size, backend="triton", **kw)
    cpu = {n: t.cpu() for n, t in kw.items() if t is not None}
    ref = (k_cache.cpu().clone(), v_cache.cpu().clone())
    reference.refresh_kv_cache(*ref, k_new.cpu(), v_new.cpu(), block_ids.cpu(), block_size, **cpu)
    assert_bitwise_equal(got[0], ref[0], "k_cache")
    assert_bitwise_equal(got[1], ref[1], "v_cache")
    return ref


def dtype_id(d):
    return str(d).split(".")[-1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("D", [64, 128])
def test_copy_matches_reference(device, dtype, D):
    B, Lmax, H, bs = 3, 50, 2, 8
    k_cache, v_cache = poisoned_caches(B, Lmax, H, D, dtype, device)
    k_new = torch.randn(B, Lmax, H, D).to(dtype=dtype, device=device)
    v_new = torch.randn(B, Lmax, H, D).to(dtype=dtype, device=device)
    # row 0: two blocks and an empty slot; row 1: nothing; row 2: the last block (cut at Lmax = 50)
    ids = torch.tensor([[0, 4, -1], [-1, -1, -1], [6, 1, 3]], device=device)
    k_ref, v_ref = run_both(k_cache, v_cache, k_new, v_new, ids, bs)
    # exactly the listed rows changed, to the new rows
    for b, blocks in enumerate(ids.tolist()):
        listed = {r for blk in blocks if blk >= 0 for r in range(blk * bs, min((blk + 1) * bs, Lmax))}
        for r in range(Lmax):
            expect_k = k_new[b, r] if r in listed else k_cache[b, r]
            assert_bitwise_equal(k_ref[b, r], expect_k.cpu(), f"row {b}, {r}")
            assert_bitwise_equal(v_ref[b, r], (v_new if r in listed else v_cache)[b, r].cpu(), f"v row {b}, {r}")


def test_never_writes_past_lmax(device):
    """k_new longer than the cache (Ln > Lmax) and a last block cut by Lmax: rows past Lmax would
    land in the tail of the larger buffer the caches are views of; it stays poisoned."""
    B, Lmax, H, D, bs = 2, 20, 2, 64, 8
    k_buf, v_buf = poisoned_caches(B, Lmax + 8, H, D, torch.float16, device)
    k_cache, v_cache = k_buf[:, :Lmax], v_buf[:, :Lmax]
    tails = (k_buf[:, Lmax:].clone(), v_buf[:, Lmax:].clone())
    new = torch.randn(B, Lmax + 8, H, D).half().to(device)
    ids = torch.tensor([[2, -1], [0, 2]], device=device)
    dk.refresh_kv_cache(k_cache, v_cache, new, new, ids, bs, backend="triton")
    assert_bitwise_equal(k_buf[:, Lmax:], tails[0], "k buffer tail")
    assert_bitwise_equal(v_buf[:, Lmax:], tails[1], "v buffer tail")
    assert_bitwise_equal(k_cache[:, 16:20], new[:, 16:20], "last block, cut at Lmax")


def test_hand_worked(device):
    """Lmax 6, blocks of 2, block 2 listed: rows 4 and 5 take the new rows 4 and 5, nothing else."""
    k_cache = torch.zeros(1, 6, 1, 64, device=device)
    v_cache = torch.zeros(1, 6, 1, 64, device=device)
    new = torch.arange(1, 7, dtype=torch.float32, device=device)[None, :, None, None].repeat(1, 1, 1, 64)
    dk.refresh_kv_cache(k_cache, v_cache, new, -new, torch.tensor([[2]], device=device), 2, backend="triton")
    assert k_cache[0, :, 0, 0].tolist() == [0, 0, 0, 0, 5, 6]
    assert v_cache[0, :, 0, 0].tolist() == [0, 0, 0, 0, -5, -6]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=dtype_id)
def test_partial_recompute_window(device, dtype):
    """k_new holds positions [new_start, new_start + Ln) only (a d3LLM-style refresh from a
    position on); listed rows without a source row are masked, i.e. left as they were."""
    B, Lmax, H, D, bs, Ln = 2, 64, 2, 64, 8, 20
    k_cache, v_cache = poisoned_caches(B, Lmax, H, D, dtype, device)
    k_new = torch.randn(B, Ln, H, D).to(dtype=dtype, device=device)
    v_new = torch.randn(B, Ln, H, D).to(dtype=dtype, device=device)
    new_start = torch.tensor([16, 44], device=device)
    # row 0: blocks 2..4 = rows 16..39, source rows 0..23 (rows 36..39 have none); row 1: block 7
    # = rows 56..63 (sources 12..19) and block 5 = rows 40..47 (rows 40..43 have none)
    ids = torch.tensor([[2, 3, 4], [7, 5, -1]], device=device)
    k_ref, _ = run_both(k_cache, v_cache, k_new, v_new, ids, bs, new_start=new_start)
    assert_bitwise_equal(k_ref[0, 16:36], k_new[0, :20].cpu(), "row 0 window")
    assert_bitwise_equal(k_ref[0, 36:40], k_cache[0, 36:40].cpu(), "row 0 beyond the source")
    assert_bitwise_equal(k_ref[1, 40:44], k_cache[1, 40:44].cpu(), "row 1 before the source")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=dtype_id)
@pytest.mark.parametrize("rope_dtype", ["fp32", "cache"])
@pytest.mark.parametrize("batched", [False, True], ids=["cos[Ln,D]", "cos[B,Ln,D]"])
def test_rope_while_writing(device, dtype, rope_dtype, batched):
    B, Lmax, H, D, bs, Ln = 2, 40, 2, 64, 8, 24
    k_cache, v_cache = poisoned_caches(B, Lmax, H, D, dtype, device)
    k_new = torch.randn(B, Ln, H, D).to(dtype=dtype, device=device)
    v_new = torch.randn(B, Ln, H, D).to(dtype=dtype, device=device)
    pos = torch.arange(8, 8 + Ln, dtype=torch.float32)[:, None] * torch.rand(D // 2)  # [Ln, D/2]
    angles = torch.cat([pos, pos], dim=-1)
    cos, sin = angles.cos(), angles.sin()
    if batched:
        cos, sin = torch.stack([cos, cos.flip(0)]), torch.stack([sin, sin.flip(0)])
    rd = torch.float32 if rope_dtype == "fp32" else dtype
    cos, sin = cos.to(dtype=rd, device=device), sin.to(dtype=rd, device=device)
    ids = torch.tensor([[1, 3], [2, -1]], device=device)
    new_start = torch.tensor([8, 8], device=device)
    k_ref, v_ref = run_both(k_cache, v_cache, k_new, v_new, ids, bs, new_start=new_start, rope_cos=cos, rope_sin=sin)
    # the values are copied as they are; the keys are rotated: |rotated| = |k| per pair (d, d + D/2)
    assert_bitwise_equal(v_ref[0, 8:16], v_new[0, :8].cpu(), "v copied")
    k0 = k_new[0, :8].float().cpu()
    norm = k0[..., : D // 2] ** 2 + k0[..., D // 2 :] ** 2
    rot = k_ref[0, 8:16].float()
    torch.testing.assert_close(rot[..., : D // 2] ** 2 + rot[..., D // 2 :] ** 2, norm, rtol=1e-2, atol=1e-2)


def test_strided_views(device):
    """k_new / v_new sliced from a fused KV projection, caches allocated as [B, H, L, D]."""
    B, Lmax, H, D, bs = 2, 24, 2, 64, 4
    kv = torch.randn(B, Lmax, 2 * H, D, device=device)
    k_new, v_new = kv[:, :, :H], kv[:, :, H:]
    k_cache = torch.full((B, H, Lmax, D), float("nan"), device=device).transpose(1, 2)
    v_cache = torch.full((B, H, Lmax, D), float("nan"), device=device).transpose(1, 2)
    run_both(k_cache, v_cache, k_new, v_new, torch.tensor([[0, 5], [2, -1]], device=device), bs)


def test_strided_new_start(device):
    """new_start and block ids as slices of one packed table (how generate ships them)."""
    B, Lmax, H, D, bs, Ln = 2, 32, 1, 64, 4, 12
    k_cache, v_cache = poisoned_caches(B, Lmax, H, D, torch.float32, device)
    new = torch.randn(B, Ln, H, D, device=device)
    table = torch.tensor([[2, 3, 8], [6, -1, 24]], device=device)
    ids, new_start = table[:, :2], table[:, 2]
    assert new_start.stride(0) == 3
    run_both(k_cache, v_cache, new, -new, ids, bs, new_start=new_start)


def test_int32_ids_and_duplicates(device):
    B, Lmax, H, D, bs = 2, 16, 1, 64, 4
    k_cache, v_cache = poisoned_caches(B, Lmax, H, D, torch.float32, device)
    new = torch.randn(B, Lmax, H, D, device=device)
    ids = torch.tensor([[1, 1, 3], [0, 2, 0]], dtype=torch.int32, device=device)
    run_both(k_cache, v_cache, new, new, ids, bs, new_start=torch.zeros(B, dtype=torch.int32, device=device))


def test_block_size_not_a_power_of_two(device):
    k_cache, v_cache = poisoned_caches(2, 30, 3, 64, torch.float16, device)
    new = torch.randn(2, 30, 3, 64).half().to(device)
    run_both(k_cache, v_cache, new, new, torch.tensor([[0, 2], [1, -1]], device=device), 12)


def test_block_larger_than_the_cache(device):
    """A block of 2**31 - 1 rows is one block covering the cache: the launch covers the cache's
    rows only (the grid does not grow with block_size)."""
    k_cache, v_cache = poisoned_caches(2, 10, 2, 64, torch.float32, device)
    new = torch.randn(2, 6, 2, 64, device=device)
    ids = torch.tensor([[0], [-1]], device=device)
    run_both(k_cache, v_cache, new, new, ids, 2**31 - 1, new_start=torch.tensor([3, 0], device=device))


def test_launch_grid_beyond_the_gpu_limits_is_rejected(device, monkeypatch):
    from dllm_kernels.kernels import kv_cache as kernels

    monkeypatch.setattr(kernels, "_block_rh", lambda D, rows_heads: 1)  # one (row, head) per program
    k_cache = torch.zeros(1, 2**15, 2, 64, dtype=torch.float16, device=device)
    new = torch.zeros(1, 4, 2, 64, dtype=torch.float16, device=device)
    with pytest.raises(ValueError, match=r"launch grid \(1, 65536\) exceeds the GPU's limits"):
        dk.refresh_kv_cache(
            k_cache, k_cache.clone(), new, new, torch.tensor([[0]], device=device), 2**15, backend="triton"
        )


def test_custom_op_registration(device):
    k_cache, v_cache = torch.zeros(2, 16, 2, 64, device=device), torch.zeros(2, 16, 2, 64, device=device)
    new = torch.randn(2, 12, 2, 64, device=device)
    cos, sin = torch.rand(2, 12, 64, device=device), torch.rand(2, 12, 64, device=device)
    ids = torch.tensor([[1, -1], [2, 3]], device=device)
    start = torch.tensor([4, 4], device=device)
    args = (k_cache, v_cache, new, new, ids, 4, start, cos, sin)
    torch.library.opcheck(torch.ops.dllm_kernels.refresh_kv_cache.default, args)


def test_traces_under_torch_compile(device):
    """The whole op, validation included, compiles without a graph break (the in-place overlap
    check is skipped while dynamo traces) and writes what the reference writes."""
    k_cache, v_cache = poisoned_caches(2, 16, 2, 16, torch.float32, device)
    k_new, v_new = torch.randn(2, 8, 2, 16, device=device), torch.randn(2, 8, 2, 16, device=device)
    cos, sin = torch.rand(8, 16, device=device), torch.rand(8, 16, device=device)
    ids = torch.tensor([[1, -1], [2, 3]], device=device)
    start = torch.tensor([4, 8], device=device)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def refresh(k_cache, v_cache):
        dk.refresh_kv_cache(
            k_cache, v_cache, k_new, v_new, ids, 4, new_start=start, rope_cos=cos, rope_sin=sin, backend="triton"
        )
        return k_cache.nan_to_num().sum()

    got = (k_cache.clone(), v_cache.clone())
    refresh(*got)
    ref = (k_cache.cpu().clone(), v_cache.cpu().clone())
    reference.refresh_kv_cache(
        *ref, k_new.cpu(), v_new.cpu(), ids.cpu(), 4, new_start=start.cpu(), rope_cos=cos.cpu(), rope_sin=sin.cpu()
    )
    assert_bitwise_equal(got[0], ref[0], "k_cache")
    assert_bitwise_equal(got[1], ref[1], "v_cache")


def _t(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


C = _t(2, 16, 2, 64)
N = _t(2, 8, 2, 64)
IDS = torch.tensor([[0], [1]])


@pytest.mark.parametrize(
    "args, kw, exc, match",
    [
        (
            (_t(2, 16, 2, 96), _t(2, 16, 2, 96), _t(2, 8, 2, 96), _t(2, 8, 2, 96), IDS, 4),
            {},
            ValueError,
            r"head dim \(k_cache.shape\[-1\]\) must be one of",
        ),
        (
            (C, C.half(), N, N, IDS, 4),
            {},
            TypeError,
            "v_cache must have k_cache's dtype torch.float32, got torch.float16",
        ),
        ((C, C, N.half(), N.half(), IDS, 4), {}, TypeError, "k_new must have k_cache's dtype"),
        (
            (C, C, _t(2, 8, 3, 64), _t(2, 8, 3, 64), IDS, 4),
            {},
            ValueError,
            "k_new must have the caches' 2 KV heads, got 3",
        ),
        ((C, C, N, _t(2, 7, 2, 64), IDS, 4), {}, ValueError, r"v_new must have shape \[2, 8, 2, 64\]"),
        ((C, C, N, N, IDS, 0), {}, ValueError, r"block_size must be an int in \[1, 2\*\*31\), got 0"),
        ((C, C, N, N, IDS, 2**31), {}, ValueError, r"block_size must be an int in \[1, 2\*\*31\), got 2147483648"),
        ((C, C, N, N, IDS, 4.0), {}, ValueError, r"block_size must be an int in \[1, 2\*\*31\), got 4.0"),
        (
            (_t(1, 16, 2, 64).expand(2, 16, 2, 64), C, N, N, IDS, 4),
            {},
            ValueError,
            "k_cache must not overlap itself in memory",
        ),
        (
            (C, _t(2, 1, 2, 64).expand(2, 16, 2, 64), N, N, IDS, 4),
            {},
            ValueError,
            r"v_cache must not overlap itself in memory .* strides \(128, 0, 64, 1\)",
        ),
        (
            (C, C, N, N, torch.tensor([[0], [4]]), 4),
            {},
            ValueError,
            r"block_ids values must lie in \[-1, 3\], got min 0 and max 4",
        ),
        ((C, C, N, N, torch.tensor([[-2], [1]]), 4), {}, ValueError, r"block_ids values must lie in \[-1, 3\]"),
        ((C, C, N, N, torch.tensor([0, 1]), 4), {}, ValueError, "block_ids must be 2-D"),
        ((C, C, N, N, torch.tensor([[0.0], [1.0]]), 4), {}, TypeError, "block_ids must have dtype int32/int64"),
        (
            (C, C, N, N, IDS, 4),
            {"new_start": torch.tensor([0, 17])},
            ValueError,
            r"new_start values must lie in \[0, 16\]",
        ),
        ((C, C, N, N, IDS, 4), {"rope_cos": _t(8, 64)}, ValueError, "rope_cos and rope_sin must be given together"),
        (
            (C, C, N, N, IDS, 4),
            {"rope_cos": _t(9, 64), "rope_sin": _t(9, 64)},
            ValueError,
            r"rope_cos must have shape \[8, 64\], got \[9, 64\]",
        ),
        (
            (C, C, N, N, IDS, 4),
            {"rope_cos": _t(8, 64, dtype=torch.float16), "rope_sin": _t(8, 64, dtype=torch.float16)},
            TypeError,
            "rope_cos must have dtype float32",
        ),
        ((C, C, N, N, IDS.to("meta"), 4), {}, ValueError, "block_ids must be on cpu"),
        (
            (C, C, _t(2, 8, 64, 2).transpose(2, 3), N, IDS, 4),
            {},
            ValueError,
            "k_new must have a contiguous last dimension",
        ),
    ],
)
def test_bad_input(args, kw, exc, match):
    with pytest.raises(exc, match=match):
        dk.refresh_kv_cache(*args, **kw)


@GPU
def test_gpu_bf16_rope_is_exact():
    """bf16 with RoPE (the interpreter's fp32 -> bf16 cast truncates, so this runs on the GPU)."""
    B, Lmax, H, D, bs = 4, 512, 4, 128, 32
    k_cache, v_cache = poisoned_caches(B, Lmax, H, D, torch.bfloat16, "cuda")
    k_new = torch.randn(B, Lmax, H, D, dtype=torch.bfloat16, device="cuda")
    angles = torch.rand(Lmax, D, device="cuda") * 100
    ids = torch.randint(-1, Lmax // bs, (B, 6), device="cuda")
    run_both(k_cache, v_cache, k_new, k_new, ids, bs, rope_cos=angles.cos(), rope_sin=angles.sin())


@GPU
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
def test_gpu_model_shapes(dtype):
    B, Lmax, H, D, bs = 8, 4096, 32, 128, 32
    k_cache, v_cache = poisoned_caches(B, Lmax, H, D, dtype, "cuda")
    new = torch.randn(B, 1024, H, D, dtype=dtype, device="cuda")
    ids = torch.randint(-1, Lmax // bs, (B, 8), device="cuda")
    run_both(k_cache, v_cache, new, new, ids, bs, new_start=torch.randint(0, 3072, (B,), device="cuda"))


@GPU
def test_gpu_cuda_graph_capture():
    k_cache, v_cache = poisoned_caches(2, 256, 4, 128, torch.bfloat16, "cuda")
    new = torch.randn(2, 256, 4, 128, dtype=torch.bfloat16, device="cuda")
    ids = torch.tensor([[0, -1], [3, 4]], device="cuda")
    work = (k_cache.clone(), v_cache.clone())
    dk.refresh_kv_cache(*work, new, new, ids, 32)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dk.refresh_kv_cache(*work, new, new, ids, 32)
    work[0].copy_(k_cache)
    work[1].copy_(v_cache)
    ids.copy_(torch.tensor([[5, 1], [-1, 7]]))
    graph.replay()
    ref = (k_cache.clone(), v_cache.clone())
    reference.refresh_kv_cache(*ref, new, new, ids, 32)
    assert_bitwise_equal(work[0], ref[0], "k_cache")
    assert_bitwise_equal(work[1], ref[1], "v_cache")
