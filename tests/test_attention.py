"""attention: the Triton kernel against the fp32 reference (interpreter on CPU, native on GPU).

Low-precision outputs are held to FlashAttention's criterion (tests/helpers.py): at most twice the
error of PyTorch doing the same math in the inputs' dtype. Cache rows past ``cache_len`` and new
rows past ``kv_len`` are filled with NaN, so a kernel that reads them fails.
"""

import pytest
import torch
from helpers import assert_attention_close

import dllm_kernels as dk
from dllm_kernels import reference
from dllm_kernels.kernels import attention as kernels
from dllm_kernels.reference.attention import attention_lowp

# bf16 is checked on the GPU only: the interpreter's fp32 -> bf16 cast truncates instead of
# rounding, so its bf16 numbers are not the GPU's
CPU_DTYPES = [torch.float32, torch.float16]
GPU = pytest.mark.gpu


def make_inputs(
    B, Lq, Hq, Hkv, D, *, Lk=0, Lmax=0, cache_len=None, kv_len=None, key_start=None, dtype=torch.float32, device="cpu"
):
    """Random q / k / v / caches; rows past the valid lengths are NaN. Lengths are lists or None."""
    kw = {}

    def kv(L, valid):
        t = torch.randn(2, B, L, Hkv, D)
        if valid is not None:
            for b, n in enumerate(valid):
                t[:, b, n:] = float("nan")
        return t.to(dtype=dtype, device=device).unbind(0)

    q = torch.randn(B, Lq, Hq, D).to(dtype=dtype, device=device)
    k = v = None
    if Lk:
        k, v = kv(Lk, kv_len)
    if Lmax:
        kw["k_cache"], kw["v_cache"] = kv(Lmax, cache_len)
    for name, vals in (("cache_len", cache_len), ("kv_len", kv_len), ("key_start", key_start)):
        if vals is not None:
            kw[name] = torch.tensor(vals, device=device)
    return q, k, v, kw


def launch(q, k, v, kw, **opts):
    """The Triton launcher directly (no public-op checks), scale 0.125, on ``make_inputs``' tensors."""
    return kernels.attention(
        q, k, v, kw["k_cache"], kw["v_cache"], kw["cache_len"], kw["kv_len"], kw.get("key_start"), 0.125, **opts
    )


def check(q, k, v, **kw):
    """Kernel (public op) vs the fp32 reference, under the FlashAttention criterion."""
    got = dk.attention(q, k, v, backend="triton", **kw)
    assert_attention_close(got, reference.attention(q, k, v, **kw), attention_lowp(q, k, v, **kw))
    return got


def check_prefix_case(case, D, dtype, device):
    """:func:`check` on the inputs of a :data:`PREFIX_CASES` row's values at head dim ``D``."""
    B, Lq, Hq, Hkv, Lk, Lmax, cache_len, kv_len, key_start = case
    q, k, v, kw = make_inputs(
        B,
        Lq,
        Hq,
        Hkv,
        D,
        Lk=Lk,
        Lmax=Lmax,
        cache_len=cache_len,
        kv_len=kv_len,
        key_start=key_start,
        dtype=dtype,
        device=device,
    )
    check(q, k, v, **kw)


def dtype_id(d):
    return str(d).split(".")[-1]


# (B, Lq, Hq, Hkv, Lk, Lmax, cache_len, kv_len, key_start): ragged, empty and awkward lengths
PREFIX_CASES = [
    pytest.param(2, 8, 4, 2, 20, 40, [0, 33], [20, 7], None, id="ragged-cache0-gqa2"),
    pytest.param(3, 5, 7, 1, 13, 21, [21, 4, 17], None, [0, 2, 30], id="gqa7-keystart"),
    pytest.param(1, 32, 2, 2, 97, 70, [70], [97], [5], id="block+suffix"),
]


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("D", [16, 64, 128])
@pytest.mark.parametrize("B, Lq, Hq, Hkv, Lk, Lmax, cache_len, kv_len, key_start", PREFIX_CASES)
def test_prefix_cache(device, dtype, D, B, Lq, Hq, Hkv, Lk, Lmax, cache_len, kv_len, key_start):
    check_prefix_case((B, Lq, Hq, Hkv, Lk, Lmax, cache_len, kv_len, key_start), D, dtype, device)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("cache_len", [None, [50, 0, 19]], ids=["full", "ragged"])
def test_dual_cache_only(device, dtype, cache_len):
    """k = v = None: the block's rows were written into the cache, which alone is attended."""
    q, _, _, kw = make_inputs(3, 8, 4, 4, 64, Lmax=50, cache_len=cache_len, dtype=dtype, device=device)
    check(q, None, None, **kw)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("key_start", [None, [0, 9]], ids=["no-pad", "left-pad"])
def test_prefill(device, dtype, key_start):
    """No cache, Lq == Lk: the prompt's forward goes through the same op."""
    q, k, v, kw = make_inputs(2, 75, 4, 2, 64, Lk=75, key_start=key_start, dtype=dtype, device=device)
    check(q, k, v, **kw)


@pytest.mark.parametrize("num_splits", [2, 3, 8])
def test_split_keys_and_combine(device, num_splits):
    """The flash-decoding path (key range split across programs, then an LSE combine) on ragged
    rows, with splits that hold no key for some rows (cache_len 0, key_start past a split)."""
    q, k, v, kw = make_inputs(
        3, 6, 4, 2, 64, Lk=21, Lmax=45, cache_len=[45, 0, 30], kv_len=[21, 9, 0], key_start=[0, 3, 40], device=device
    )
    got = launch(q, k, v, kw, num_splits=num_splits, block_n=16)
    ref = reference.attention(q.cpu(), k.cpu(), v.cpu(), scale=0.125, **{n: t.cpu() for n, t in kw.items()})
    assert_attention_close(got, ref, ref)


@pytest.mark.parametrize("block_n", [16, 32])
def test_tiles_and_tails(device, block_n):
    """Full key tiles without masks, then a masked tail, in both the cache and the new part."""
    q, k, v, kw = make_inputs(2, 3, 2, 2, 64, Lk=37, Lmax=50, cache_len=[48, 17], kv_len=[37, 16], device=device)
    got = launch(q, k, v, kw, block_n=block_n)
    ref = reference.attention(q.cpu(), k.cpu(), v.cpu(), scale=0.125, **{n: t.cpu() for n, t in kw.items()})
    assert_attention_close(got, ref, ref)


# decode steps with the query heads of a KV group packed into one tile: GQA 7:1 (Dream's ratio,
# 32 x 7 = 224 rows in one 256-row tile) and MHA (LLaDA: 32 rows), ragged cache and new lengths
PACKED_CASES = [
    pytest.param(2, 32, 7, 1, id="gqa7-32q"),
    pytest.param(2, 32, 14, 2, id="gqa7-2kv-32q"),
    pytest.param(2, 32, 3, 3, id="mha-32q"),
]


@pytest.mark.parametrize("num_splits", [None, 2], ids=["one-split", "split2"])
@pytest.mark.parametrize("B, Lq, Hq, Hkv", PACKED_CASES)
def test_packed_query_heads(device, B, Lq, Hq, Hkv, num_splits):
    q, k, v, kw = make_inputs(
        B,
        Lq,
        Hq,
        Hkv,
        64,
        Lk=Lq,
        Lmax=40,
        cache_len=[40, 9],
        kv_len=[Lq, 5],
        key_start=[0, 2],
        dtype=torch.float16,
        device=device,
    )
    got = launch(q, k, v, kw, num_splits=num_splits, block_n=16)
    assert_attention_close(
        got, reference.attention(q, k, v, scale=0.125, **kw), attention_lowp(q, k, v, scale=0.125, **kw)
    )


H200_PROGRAMS = 4 * 132  # programs_target on an H100 / H200 (132 SMs)


def _kv_bytes_read(plan, B, Hkv, keys, D, elem=2):
    """K/V bytes one call reads: every query tile of a (batch entry, KV head) streams its keys."""
    return plan.n_m * B * Hkv * keys * D * 2 * elem


@pytest.mark.parametrize("Hq, Hkv, block_m", [(32, 32, 32), (28, 4, 256)], ids=["llada", "dream"])
def test_decode_plan_reads_kv_once(Hq, Hkv, block_m):
    """The GPU launch plan at the models' decode shape (B 8, 32 queries, 2048 cached + 32 new
    keys), computed without a GPU: one query tile per (batch entry, KV head), so each K/V byte is
    read once, and a tile at least 7/8 full (before packing: LLaDA 32 of 64 rows, Dream two
    128-row tiles, i.e. K/V read twice)."""
    B, Lq, D, keys = 8, 32, 128, 2048 + 32
    plan = kernels._plan(B, Lq, Hq, Hkv, D, keys, torch.bfloat16, programs=H200_PROGRAMS, interpret=False)
    assert plan.tiles.block_m == block_m and plan.n_m == 1
    assert Lq * (Hq // Hkv) / plan.tiles.block_m >= 7 / 8
    assert _kv_bytes_read(plan, B, Hkv, keys, D) == B * Hkv * keys * D * 2 * 2
    assert plan.splits > 1 and plan.splits * plan.chunk >= keys


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("Lq, Hq, Hkv", [(1, 4, 4), (32, 32, 32), (32, 28, 4), (97, 28, 4), (48, 6, 1), (7, 8, 8)])
@pytest.mark.parametrize("keys", [64, 300, 4096])
def test_gpu_plans_are_compiled_configurations(D, Lq, Hq, Hkv, keys):
    """Every tile the launcher picks on a GPU is one that tests/test_compile_sm90.py compiles
    (same tile and SPLIT flag), including the 256-row tile, which exists only with SPLIT."""
    compiled = {
        (
            s.constexprs["HEAD_DIM"],
            s.constexprs["BLOCK_M"],
            s.constexprs["BLOCK_N"],
            s.num_warps,
            s.num_stages,
            s.constexprs["SPLIT"],
        )
        for s in kernels.aot_specs()
        if s.name.startswith("attention_fwd[bf16")
    }
    for B in (1, 8, 64):
        plan = kernels._plan(B, Lq, Hq, Hkv, D, keys, torch.bfloat16, programs=H200_PROGRAMS, interpret=False)
        t = plan.tiles
        assert (D, t.block_m, t.block_n, t.num_warps, t.num_stages, plan.splits > 1) in compiled, plan


def test_rows_without_keys_are_zero(device):
    q, k, v, kw = make_inputs(
        3, 4, 2, 1, 64, Lk=6, Lmax=8, cache_len=[0, 8, 3], kv_len=[0, 6, 2], key_start=[0, 14, 2], device=device
    )
    got = check(q, k, v, **kw)
    # row 0 has no key at all, row 1 skips all 14 of its keys; row 2 keeps 3
    assert torch.equal(got[:2].cpu(), torch.zeros_like(got[:2].cpu()))
    assert got[2].abs().sum() > 0


def test_same_as_attending_the_concatenation(device):
    """The cache + new keys give the same result as one concatenated key tensor (what the peers
    build every step), to fp32 rounding."""
    q, k, v, kw = make_inputs(2, 8, 4, 2, 64, Lk=12, Lmax=30, device=device)
    split = dk.attention(q, k, v, **kw, backend="triton")
    cat_k = torch.cat([kw["k_cache"], k], dim=1)
    cat_v = torch.cat([kw["v_cache"], v], dim=1)
    joined = dk.attention(q, cat_k, cat_v, backend="triton")
    torch.testing.assert_close(split, joined, atol=1e-6, rtol=1e-5)


def test_scale(device):
    q, k, v, kw = make_inputs(1, 4, 2, 2, 64, Lk=9, Lmax=5, device=device)
    check(q, k, v, scale=0.3, **kw)


def test_strided_views(device):
    """Heads sliced out of a fused QKV projection, a [B, H, L, D] cache transposed to
    [B, L, H, D], a larger allocated cache, and a batch-broadcast (stride 0) cache: no copies."""
    B, L, H, D = 2, 9, 4, 64
    qkv = torch.randn(B, L, 3 * H, D, device=device)
    q, k, v = qkv[:, :, :H], qkv[:, :, H : 2 * H], qkv[:, :, 2 * H :]
    k_bhld = torch.randn(B, H, 40, D, device=device)
    k_cache = k_bhld.transpose(1, 2)[:, :31]  # [B, 31, H, D], strides of a [B, H, 40, D] tensor
    v_cache = torch.randn(1, 31, H, D, device=device).expand(B, -1, -1, -1)
    assert not q.is_contiguous() and not k_cache.is_contiguous() and v_cache.stride(0) == 0
    check(q, k, v, k_cache=k_cache, v_cache=v_cache, cache_len=torch.tensor([31, 12], device=device))


def test_strided_lengths(device):
    """Per-row lengths as columns of one packed [B, 3] table (how generate ships them)."""
    q, k, v, kw = make_inputs(
        3, 4, 2, 1, 64, Lk=9, Lmax=12, cache_len=[3, 12, 0], kv_len=[9, 2, 5], key_start=[0, 4, 1], device=device
    )
    names = ("cache_len", "kv_len", "key_start")
    columns = torch.stack([kw[n] for n in names], 1).unbind(1)
    assert all(c.stride(0) == 3 for c in columns)
    check(q, k, v, k_cache=kw["k_cache"], v_cache=kw["v_cache"], **dict(zip(names, columns)))


def test_int32_lengths(device):
    q, k, v, kw = make_inputs(2, 4, 2, 2, 64, Lk=7, Lmax=10, cache_len=[3, 10], kv_len=[7, 1], device=device)
    kw = {n: (t.int() if t.dtype == torch.int64 else t) for n, t in kw.items()}
    check(q, k, v, **kw)


def test_public_head_dims_are_the_compiled_ones():
    from dllm_kernels._types import HEAD_DIMS

    assert {s.constexprs["HEAD_DIM"] for s in kernels.aot_specs()} == set(HEAD_DIMS)


def test_empty_query_block(device):
    q, k, v, kw = make_inputs(2, 0, 2, 2, 64, Lk=5, device=device)
    assert dk.attention(q, k, v, backend="triton").shape == (2, 0, 2, 64)


def test_reference_is_softmax_attention():
    """The oracle itself, on a case small enough to write out: one query, two keys."""
    q = torch.zeros(1, 1, 1, 64)
    q[..., 0] = 8.0
    k = torch.zeros(1, 2, 1, 64)
    k[0, 1, 0, 0] = 1.0  # scores: 0 and 8 / sqrt(64) = 1
    v = torch.stack([torch.full((64,), 1.0), torch.full((64,), 3.0)])[None, :, None]
    p1 = torch.sigmoid(torch.tensor(1.0))  # softmax([0, 1])[1]
    out = reference.attention(q, k, v)
    torch.testing.assert_close(out[0, 0, 0], torch.full((64,), 1.0 + 2.0 * p1.item()))
    # the same key given as a one-row cache followed by one new row
    out2 = reference.attention(q, k[:, 1:], v[:, 1:], k_cache=k[:, :1], v_cache=v[:, :1])
    torch.testing.assert_close(out2, out)


def test_backend_auto_and_reference_agree(device):
    q, k, v, kw = make_inputs(2, 4, 2, 2, 64, Lk=7, Lmax=9, cache_len=[9, 2], device=device)
    ref = dk.attention(q, k, v, backend="reference", **kw)
    torch.testing.assert_close(dk.attention(q, k, v, backend="auto", **kw), ref, atol=1e-5, rtol=1e-5)


def test_custom_op_registration(device):
    q, k, v, kw = make_inputs(
        2, 4, 4, 2, 64, Lk=6, Lmax=9, cache_len=[9, 4], kv_len=[6, 3], key_start=[0, 1], device=device
    )
    args = (q, k, v, kw["k_cache"], kw["v_cache"], kw["cache_len"], kw["kv_len"], kw["key_start"], 0.125)
    torch.library.opcheck(torch.ops.dllm_kernels.attention.default, args)
    q, k, v, _ = make_inputs(1, 33, 2, 2, 64, Lk=33, device=device)  # prefill
    torch.library.opcheck(torch.ops.dllm_kernels.attention.default, (q, k, v, None, None, None, None, None, 0.125))


def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.zeros(*shape, dtype=dtype, device=device)


Q = _t(2, 4, 4, 64)
KV = _t(2, 6, 2, 64)
C = _t(2, 9, 2, 64)


@pytest.mark.parametrize(
    "args, kw, exc, match",
    [
        ((_t(2, 4, 64), KV, KV), {}, ValueError, "q must be 4-D"),
        ((Q.long(), KV, KV), {}, TypeError, "q must have dtype float32/float16/bfloat16"),
        (
            (_t(2, 4, 4, 96), _t(2, 6, 2, 96), _t(2, 6, 2, 96)),
            {},
            ValueError,
            r"head dim \(q.shape\[-1\]\) must be one of \(16, 32, 64, 128\), got 96",
        ),
        (
            (Q, _t(2, 6, 2, 128), _t(2, 6, 2, 128)),
            {},
            ValueError,
            r"k must have shape \[2, \*, \*, 64\], got \[2, 6, 2, 128\]",
        ),
        ((Q, _t(3, 6, 2, 64), _t(3, 6, 2, 64)), {}, ValueError, r"k must have shape \[2, \*, \*, 64\]"),
        ((Q, KV, _t(2, 5, 2, 64)), {}, ValueError, r"v must have shape \[2, 6, 2, 64\], got \[2, 5, 2, 64\]"),
        ((Q, KV.half(), KV.half()), {}, TypeError, "k must have q's dtype torch.float32, got torch.float16"),
        ((Q, KV.to("meta"), KV.to("meta")), {}, ValueError, "k must be on cpu"),
        ((Q, KV, None), {}, ValueError, "k and v must be given together, got only k"),
        ((Q,), {}, ValueError, "give the new keys"),
        (
            (Q, _t(2, 6, 3, 64), _t(2, 6, 3, 64)),
            {},
            ValueError,
            r"q's heads \(4\) must be a multiple of the KV heads \(3\)",
        ),
        ((Q, KV, KV), {"k_cache": _t(2, 9, 4, 64), "v_cache": _t(2, 9, 4, 64)}, ValueError, "same number of KV heads"),
        ((Q, KV, KV), {"k_cache": C}, ValueError, "k_cache and v_cache must be given together"),
        (
            (Q, KV, KV),
            {"k_cache": C, "v_cache": C, "cache_len": torch.tensor([9, 10])},
            ValueError,
            r"cache_len values must lie in \[0, 9\], got min 9 and max 10",
        ),
        (
            (Q, KV, KV),
            {"k_cache": C, "v_cache": C, "cache_len": torch.tensor([-1, 3])},
            ValueError,
            r"cache_len values must lie in \[0, 9\]",
        ),
        (
            (Q, KV, KV),
            {"k_cache": C, "v_cache": C, "cache_len": torch.tensor([1, 3, 4])},
            ValueError,
            r"cache_len must have shape \[2\], got \[3\]",
        ),
        (
            (Q, KV, KV),
            {"k_cache": C, "v_cache": C, "cache_len": torch.tensor([1.0, 3.0])},
            TypeError,
            "cache_len must have dtype int32/int64",
        ),
        ((Q, KV, KV), {"kv_len": torch.tensor([7, 1])}, ValueError, r"kv_len values must lie in \[0, 6\]"),
        ((Q, KV, KV), {"cache_len": torch.tensor([1, 1])}, ValueError, "cache_len needs k_cache, which is None"),
        (
            (Q, None, None),
            {"k_cache": C, "v_cache": C, "kv_len": torch.tensor([1, 1])},
            ValueError,
            "kv_len needs k, which is None",
        ),
        ((Q, KV, KV), {"key_start": torch.tensor([-2, 0])}, ValueError, "key_start values must lie in >= 0"),
        ((Q, KV, KV), {"scale": float("nan")}, ValueError, "scale must be a finite number"),
        ((Q, _t(2, 6, 64, 2).transpose(2, 3), KV), {}, ValueError, "k must have a contiguous last dimension"),
        ((Q, KV, KV), {"backend": "cuda"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_input(args, kw, exc, match):
    with pytest.raises(exc, match=match):
        dk.attention(*args, **kw)


# ------------------------------------------------------------------------------------------------
# GPU: bf16, the models' full decode and prefill shapes, CUDA-graph capture
# ------------------------------------------------------------------------------------------------


@GPU
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("Hq, Hkv", [(32, 32), (28, 4)], ids=["llada", "dream"])
@pytest.mark.parametrize("Lq", [32, 97], ids=["block", "block+suffix"])
def test_gpu_decode_shapes(dtype, Hq, Hkv, Lq):
    B, Lmax = 4, 1024
    q, k, v, kw = make_inputs(
        B,
        Lq,
        Hq,
        Hkv,
        128,
        Lk=Lq,
        Lmax=Lmax,
        cache_len=[1024, 0, 517, 800],
        kv_len=[Lq, Lq, Lq - 5, 1],
        key_start=[0, 0, 3, 100],
        dtype=dtype,
        device="cuda",
    )
    check(q, k, v, **kw)


@GPU
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("L", [1024, 4096])
def test_gpu_prefill(dtype, D, L):
    q, k, v, kw = make_inputs(1, L, 8, 4, D, Lk=L, key_start=[17], dtype=dtype, device="cuda")
    check(q, k, v, **kw)


@GPU
def test_gpu_bf16_small_shapes():
    for args in PREFIX_CASES:
        check_prefix_case(args.values, 128, torch.bfloat16, "cuda")


@GPU
def test_gpu_cuda_graph_capture():
    """No host sync anywhere: the op is captured in a CUDA graph and replays with new lengths."""
    q, k, v, kw = make_inputs(2, 32, 28, 4, 128, Lk=32, Lmax=512, dtype=torch.bfloat16, device="cuda")
    cache_len = torch.tensor([512, 100], device="cuda")
    dk.attention(q, k, v, cache_len=cache_len, **kw)  # warm up (compile) outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dk.attention(q, k, v, cache_len=cache_len, **kw)
    cache_len.copy_(torch.tensor([7, 300]))
    graph.replay()
    ref = reference.attention(q, k, v, cache_len=cache_len, **kw)
    assert_attention_close(out, ref, attention_lowp(q, k, v, cache_len=cache_len, **kw))
