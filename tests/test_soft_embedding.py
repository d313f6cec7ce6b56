"""soft_embedding: the fused ``softmax(logits / T) @ E`` kernel against its fp64 reference (awkward
shapes, strides, dtypes, temperatures, NaN/inf rows), that no ``[rows, V]`` buffer is allocated,
the vocabulary splits and the tensor-parallel partial/merge pair, the custom ops under
torch.compile, and the validation errors."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dllm_kernels as dk
from dllm_kernels import reference
from dllm_kernels.kernels import soft_embedding as kernels

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
EXTRA = 4  # words after acc in a partial state

# Tolerances, stated once. fp32 tables: fp32 accumulation vs fp64, relative to the output's
# magnitude. bf16/fp16 tables (FlashAttention's criterion): at most twice the error of the
# engines' path (fp32 softmax, probabilities cast to the table's dtype, matmul in it), plus one
# ulp of the table's dtype at the output's magnitude for the final cast (a full ulp: Triton's
# interpreter truncates fp32 -> bf16 casts instead of rounding them to nearest).
FP32_RTOL = 1e-5
EPS = {BF16: torch.finfo(BF16).eps, F16: torch.finfo(F16).eps}


def engine_path(x, E, T, vocab_start=0):
    """What vLLM computes, with this op's edge semantics: the probabilities (the fp64 reference
    of the op with an identity table) in fp32, cast to the table's dtype, then a matmul in it."""
    V = x.shape[-1]
    p = reference.soft_embedding(x, torch.eye(V, dtype=torch.float64), temperature=T).float()
    return (p.to(E.dtype) @ E[vocab_start : vocab_start + V]).to(E.dtype)


def oracle(x, E, T, vocab_start=0):
    """The fp64 reference of the same op (the reference computes in fp64, cast to E's dtype)."""
    return reference.soft_embedding(x, E.to(torch.float64), temperature=T, vocab_start=vocab_start)


def assert_soft_close(got, x, E, T, vocab_start=0):
    """``got`` against the fp64 oracle with the stated tolerances; never NaN."""
    ref = oracle(x.cpu(), E.cpu(), T.cpu() if isinstance(T, torch.Tensor) else T, vocab_start)
    assert got.shape == ref.shape, f"shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert got.dtype == E.dtype, f"dtype {got.dtype} != {E.dtype}"
    g = got.cpu().to(torch.float64)
    assert not g.isnan().any(), "NaN in kernel output"
    err = (g - ref).abs().max().item() if g.numel() else 0.0
    scale = ref.abs().max().item() if g.numel() else 0.0
    if E.dtype == F32:
        assert err <= FP32_RTOL * (1 + scale), f"max abs error {err:.3g} > {FP32_RTOL} * (1 + {scale:.3g})"
        return
    Tc = T.cpu() if isinstance(T, torch.Tensor) else T
    err_engine = (engine_path(x.cpu(), E.cpu(), Tc, vocab_start).to(torch.float64) - ref).abs().max().item()
    bound = 2 * err_engine + EPS[E.dtype] * scale
    assert err <= bound, f"max abs error {err:.3g} > 2 * {err_engine:.3g} (engine path) + {EPS[E.dtype]} * {scale:.3g}"


def make(N, V, D, x_dtype, e_dtype, device, scale=3.0):
    x = (torch.randn(N, V) * scale).to(x_dtype).to(device)
    E = torch.randn(V, D).to(e_dtype).to(device)
    return x, E


def temperature_of(kind, lead, device):
    if kind == "row":  # per-row temperatures, one of them tiny and one 0 (the argmax limit)
        t = torch.rand(lead) * 1.5 + 0.1
        t.view(-1)[0] = 1e-10
        if t.numel() > 2:
            t.view(-1)[2] = 0.0
        return t.to(device)
    return kind


DTYPES = [(F32, F32), (BF16, BF16), (F16, F16), (F32, BF16)]
SHAPES = [(1, 37, 20), (3, 100, 48), (5, 1030, 24), (2, 70, 300)]  # V, D not multiples of the tiles


@pytest.mark.parametrize("x_dtype,e_dtype", DTYPES)
@pytest.mark.parametrize("N,V,D", SHAPES)
@pytest.mark.parametrize("T", [1e-10, 0.4, 1.0, "row"])
def test_matches_reference(device, x_dtype, e_dtype, N, V, D, T):
    x, E = make(N, V, D, x_dtype, e_dtype, device)
    T = temperature_of(T, (N,), device)
    got = dk.soft_embedding(x, E, temperature=T, backend="triton")
    assert_soft_close(got, x, E, T)
    # the reference backend is the oracle cast to the table's dtype
    ref = dk.soft_embedding(x.cpu(), E.cpu(), temperature=T.cpu() if isinstance(T, torch.Tensor) else T)
    assert ref.dtype == e_dtype and torch.equal(ref, oracle(x.cpu(), E.cpu(), ref_t(T)).to(e_dtype))


def ref_t(T):
    return T.cpu() if isinstance(T, torch.Tensor) else T


@pytest.mark.parametrize("T", [0.0, 0.5, "row"])
def test_rescale_across_tiles(device, T):
    """Maxima that grow from tile to tile (the interpreter's tiles are 1024 wide, the GPU's 32):
    every tile rescales what the earlier ones accumulated."""
    V = 2100
    x = torch.randn(3, V) * 2
    x[0, [5, 1500, 2090]] = torch.tensor([10.0, 11.0, 11.5])  # the maximum moves twice
    x[1, :1024] = float("-inf")  # the first tile holds no finite logit
    x[1, 2099] = 4.0
    x[2, 2050] = 30.0  # the last tile dominates
    x, E = x.to(device), torch.randn(V, 24, device=device)
    T = temperature_of(T, (3,), device)
    assert_soft_close(dk.soft_embedding(x, E, temperature=T, backend="triton"), x, E, T)


def test_reference_is_the_engines_formula():
    """For finite logits and T > 0 the reference is torch.softmax(logits.float() / T) @ E.float()."""
    x = torch.randn(4, 300) * 4
    E = torch.randn(300, 16)
    t = torch.tensor([0.3, 1.0, 2.5, 0.05])
    for T in (0.7, t):
        tt = T[:, None] if isinstance(T, torch.Tensor) else T
        plain = torch.softmax(x.float() / tt, dim=-1) @ E.float()
        torch.testing.assert_close(reference.soft_embedding(x, E, temperature=T), plain, atol=2e-6, rtol=1e-5)


def test_strided_inputs_and_3d_logits(device):
    """A slice of a larger [B, L, V'] tensor, a vocabulary stride of 2, a table with strided
    columns (a transposed view) and per-row temperatures shaped [B, L]."""
    B, L, V, D = 2, 3, 90, 40
    big = torch.randn(B, 7, 2 * V + 5, device=device) * 2
    x = big[:, 2 : 2 + L, 1 : 1 + 2 * V : 2]  # [B, L, V], stride_v == 2
    assert x.stride(-1) == 2
    Et = torch.randn(D, V + 10, device=device).to(BF16)
    E = Et.t()  # [V + 10, D], stride (1, V + 10)
    T = (torch.rand(B, L) + 0.2).to(device)
    got = dk.soft_embedding(x, E, temperature=T, vocab_start=7, backend="triton")
    assert got.shape == (B, L, D)
    assert_soft_close(got, x, E, T, vocab_start=7)
    got_c = dk.soft_embedding(x.contiguous(), E.contiguous(), temperature=T, vocab_start=7, backend="triton")
    assert_soft_close(got_c, x, E, T, vocab_start=7)


@pytest.mark.parametrize("num_splits,D", [(2, 24), (3, 24), (3, 300)])
@pytest.mark.parametrize("T", [0.0, 0.6, "row"])
def test_vocabulary_splits(device, num_splits, D, T):
    """The split path (partial states per split, merged by the combine kernel) equals the op,
    also with several column tiles (D = 300: the interpreter's tiles are 256 wide)."""
    x, E = make(3, 2500, D, F32, F32, device)
    T = temperature_of(T, (3,), device)
    t_scalar, t_row = (1.0, T) if isinstance(T, torch.Tensor) else (T, None)
    got = kernels.soft_embedding(x, E, t_scalar, t_row, 0, num_splits)
    assert_soft_close(got, x, E, T)
    part = kernels.soft_embedding_partial(x, E, t_scalar, t_row, 0, num_splits)
    assert_states_close(part, reference.soft_embedding_partial(x.cpu(), E.cpu(), temperature=ref_t(T)))


def extreme_logits(device):
    """Rows: -inf entries; all -inf; NaN entries; all NaN; one +inf; two +inf; finfo extremes;
    ties at the maximum."""
    V = 50
    x = torch.randn(8, V) * 2
    x[0, ::3] = float("-inf")
    x[1, :] = float("-inf")
    x[2, 1::4] = float("nan")
    x[2, int(x[2].nan_to_num(float("-inf")).argmax())] = float("nan")  # NaN at the would-be maximum
    x[3, :] = float("nan")
    x[4, 17] = float("inf")
    x[5, [3, 40]] = float("inf")
    x[6, :25] = torch.finfo(torch.float32).min
    x[6, 30] = torch.finfo(torch.float32).max
    x[7, [8, 33]] = 9.0  # a tie at the maximum
    return x.to(device)


@pytest.mark.parametrize("T", [0.0, 1e-10, 0.5, 1.0, "row"])
@pytest.mark.parametrize("e_dtype", [F32, BF16])
def test_nan_and_inf_rows(device, T, e_dtype):
    x = extreme_logits(device)
    E = torch.randn(x.shape[-1], 12).to(e_dtype).to(device)
    T = temperature_of(T, (8,), device)
    got = dk.soft_embedding(x, E, temperature=T, backend="triton")
    assert_soft_close(got, x, E, T)
    ref = dk.soft_embedding(x.cpu(), E.cpu(), temperature=ref_t(T))
    Ef = E.cpu().float()
    # hand-checked rows: no distribution -> zeros; +inf entries share all the mass
    for g in (got.cpu().float(), ref.float()):
        assert torch.equal(g[1], torch.zeros(12)) and torch.equal(g[3], torch.zeros(12))
        torch.testing.assert_close(g[4], Ef[17], atol=1e-6, rtol=0)
        torch.testing.assert_close(g[5], (Ef[3] + Ef[40]) / 2, atol=EPS.get(e_dtype, 1e-6), rtol=0)
        torch.testing.assert_close(g[6], Ef[30], atol=1e-6, rtol=0)  # finfo.max dominates at every T
    # NaN counts as -inf: the same as the row with -inf in place of NaN
    clean = torch.where(x.isnan(), float("-inf"), x)
    assert_soft_close(dk.soft_embedding(clean, E, temperature=T, backend="triton"), x, E, T)


def test_zero_temperature_is_the_argmax_limit(device):
    """T -> 0 stays finite: T = 0, 1e-10, 1e-30 and a subnormal T give the embedding row of the
    argmax (the mean of the rows of tied maxima), for bf16 logits too."""
    x = (torch.randn(4, 300) * 3).to(BF16)
    x[3, [10, 200]] = 20.0
    E = torch.randn(300, 16)
    x, E = x.to(device), E.to(device)
    want = E.cpu()[x.cpu().float().argmax(-1)]
    want[3] = (E.cpu()[10] + E.cpu()[200]) / 2
    for T in (0.0, 1e-10, 1e-30, 1e-40, torch.tensor([0.0, 1e-10, 1e-38, 0.0], device=device)):
        for backend in ("triton", "reference"):
            got = dk.soft_embedding(x, E, temperature=T, backend=backend).cpu()
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


class _Allocations(TorchDispatchMode):
    """Bytes of every new storage an aten op creates (in-place ops and views excluded: under the
    interpreter, Triton stages the kernel's arguments through set_/copy_ of existing tensors)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inplace = func._schema.name.endswith("_") or any(a.is_write for a in func._schema.arguments if a.alias_info)
        if not inplace:
            seen = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                    self.sizes.append((str(func), t.untyped_storage().nbytes()))
        return out


@pytest.mark.parametrize("num_splits", [None, 2])
def test_no_rows_by_vocabulary_buffer(device, num_splits):
    """The kernel path never allocates a [rows, V] buffer (not even in bf16): every storage it
    creates is smaller than rows * V * 2 bytes. The same detector sees the reference's."""
    N, V, D = 3, 3000, 8
    x, E = make(N, V, D, F32, BF16, device)
    limit = N * V * 2
    with _Allocations() as rec:
        kernels.soft_embedding(x, E, 0.5, None, 0, num_splits)
        kernels.soft_embedding_partial(x, E, 0.5, None, 0, num_splits)
    assert rec.sizes, "the detector saw no allocation (the outputs at least)"
    big = [s for s in rec.sizes if s[1] >= limit]
    assert not big, f"allocations of at least rows * V * 2 bytes: {big}"
    with _Allocations() as rec_ref:
        dk.soft_embedding(x, E, temperature=0.5, backend="reference")
    assert max(s[1] for s in rec_ref.sizes) >= N * V * 4, "the detector misses the reference's probabilities"


# ------------------------------------------------------------------------------------------------
# tensor-parallel partial states
# ------------------------------------------------------------------------------------------------


def assert_states_close(got, ref):
    """Kernel vs reference states [*, D + 4]: maxima and 1/T exact (up to fp32 division), sums
    and acc to fp32 accumulation."""
    assert got.shape == ref.shape and got.dtype == ref.dtype == F32
    W = got.shape[-1]
    D = W - EXTRA
    g, r = got.cpu().reshape(-1, W), ref.cpu().reshape(-1, W)
    assert not g.isnan().any(), "NaN in a kernel state"
    assert torch.equal(g[:, D], r[:, D]), "m differs"
    torch.testing.assert_close(g[:, D + 2], r[:, D + 2], rtol=2e-7, atol=0)  # 1/T (inf == inf)
    assert torch.equal(g[:, D + 3], torch.zeros_like(g[:, D + 3]))
    torch.testing.assert_close(g[:, D + 1], r[:, D + 1], rtol=2e-6, atol=0)
    s = r[:, D + 1 : D + 2].clamp_min(1.0)
    torch.testing.assert_close(g[:, :D] / s, r[:, :D] / s, rtol=0, atol=FP32_RTOL * (1 + r[:, :D].abs().max().item()))


def shard_bounds(V, n):
    """n contiguous shards of [0, V) of growing width."""
    w = torch.arange(1, n + 1, dtype=torch.float64)
    cuts = [0] + [int(c) for c in (w.cumsum(0) / w.sum() * V).round().tolist()]
    return list(zip(cuts[:-1], cuts[1:]))


@pytest.mark.parametrize("n_shards", [1, 2, 3])
@pytest.mark.parametrize("T", [0.0, 0.7, "row"])
def test_merged_shards_equal_the_whole(device, n_shards, T):
    x = extreme_logits(device)
    x = torch.cat([x, torch.randn(2, x.shape[-1], device=device)])  # rows 8, 9: ordinary
    x[9, [2, 47]] = 6.0  # a tie across shards
    N, V = x.shape
    E = torch.randn(V, 20, device=device)
    T = temperature_of(T, (N,), device)
    bounds = shard_bounds(V, n_shards)
    parts, ref_parts = [], []
    for a, b in bounds:
        # a rank's own slice of the table, and the whole table addressed by vocab_start
        p = dk.soft_embedding_partial(x[:, a:b], E[a:b], temperature=T, backend="triton")
        q = dk.soft_embedding_partial(x[:, a:b], E, temperature=T, vocab_start=a, backend="triton")
        r = reference.soft_embedding_partial(x[:, a:b].cpu(), E[a:b].cpu(), temperature=ref_t(T))
        assert p.shape == (N, 20 + EXTRA)
        assert_states_close(p, r)
        assert torch.equal(p, q)
        parts.append(p)
        ref_parts.append(r)
    merged = dk.merge_soft_embedding(parts, backend="triton")
    assert_soft_close(merged, x, E, T)
    assert_soft_close(dk.merge_soft_embedding(ref_parts, backend="reference"), x, E, T)
    # any order, a stacked tensor, another output dtype
    rev = dk.merge_soft_embedding(torch.stack(parts[::-1]), out_dtype=BF16, backend="triton")
    assert rev.dtype == BF16
    ref = oracle(x.cpu(), E.cpu(), ref_t(T))  # of the fp32 table: one cast to bf16 at the end
    assert (rev.cpu().double() - ref).abs().max() <= EPS[BF16] * ref.abs().max()


def test_merge_of_3d_states(device):
    x = torch.randn(2, 3, 64, device=device)
    E = torch.randn(64, 10, device=device).to(F16)
    parts = [
        dk.soft_embedding_partial(x[..., a:b], E[a:b], temperature=0.9, backend="triton")
        for a, b in ((0, 30), (30, 64))
    ]
    assert parts[0].shape == (2, 3, 10 + EXTRA)
    got = dk.merge_soft_embedding(parts, out_dtype=F16, backend="triton")
    assert got.shape == (2, 3, 10)
    assert_soft_close(got, x, E, 0.9)


# ------------------------------------------------------------------------------------------------
# custom ops, torch.compile, validation
# ------------------------------------------------------------------------------------------------


def test_custom_op_registration(device):
    x, E = make(3, 40, 16, BF16, BF16, device)
    t = torch.rand(3, device=device) + 0.5
    ops = torch.ops.dllm_kernels
    torch.library.opcheck(ops.soft_embedding.default, (x, E, 0.5, None, 0))
    torch.library.opcheck(ops.soft_embedding.default, (x[:, :30], E, 1.0, t, 5))
    torch.library.opcheck(ops.soft_embedding_partial.default, (x, E, 0.0, None, 0))
    parts = torch.stack([dk.soft_embedding_partial(x, E, temperature=0.5, backend="triton")] * 2)
    torch.library.opcheck(ops.merge_soft_embedding.default, (parts, BF16))


def test_traces_under_torch_compile(device):
    x, E = make(2, 3 * 50, 16, F32, BF16, device)
    x = x.view(2, 3, 50)
    E = E[:60]
    t = (torch.rand(2, 3) + 0.5).to(device)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def f(logits, table, temps):
        a = dk.soft_embedding(logits, table, temperature=0.8, vocab_start=4, backend="triton")
        b = dk.soft_embedding(logits, table, temperature=temps, backend="triton")
        parts = [dk.soft_embedding_partial(logits, table, temperature=temps, backend="triton")]
        c = dk.merge_soft_embedding(parts, out_dtype=torch.float32, backend="triton")
        return a * 2, b, c

    a2, b, c = f(x, E, t)
    assert a2.shape == (2, 3, 16) and a2.dtype == BF16 and c.dtype == F32
    assert_soft_close(a2 / 2, x, E, 0.8, vocab_start=4)
    assert_soft_close(b, x, E, t)
    assert_soft_close(c.to(BF16), x, E, t)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda x, E: dk.soft_embedding(x[0], E, temperature=1.0), ValueError, "logits must be 2-D or 3-D"),
        (lambda x, E: dk.soft_embedding(x.long(), E, temperature=1.0), TypeError, "logits must have dtype"),
        (lambda x, E: dk.soft_embedding(x[:, :0], E, temperature=1.0), ValueError, "non-empty vocabulary"),
        (lambda x, E: dk.soft_embedding(x, E.double(), temperature=1.0), TypeError, "embed_weight must have dtype"),
        (lambda x, E: dk.soft_embedding(x, E[0], temperature=1.0), ValueError, "embed_weight must be 2-D"),
        (lambda x, E: dk.soft_embedding(x, E[:, :0], temperature=1.0), ValueError, "embed_weight must have at least"),
        (
            lambda x, E: dk.soft_embedding(x, E, temperature=1.0, vocab_start=3),
            ValueError,
            r"vocab_start \+ logits.shape\[-1\] \(3 \+ 10\) exceeds the 12 rows of embed_weight",
        ),
        (lambda x, E: dk.soft_embedding(x, E, temperature=1.0, vocab_start=-1), ValueError, "vocab_start must be"),
        (lambda x, E: dk.soft_embedding(x, E, temperature=1.0, vocab_start=True), ValueError, "vocab_start must be"),
        (lambda x, E: dk.soft_embedding(x, E, temperature=-0.5), ValueError, "temperature must be a finite number"),
        (lambda x, E: dk.soft_embedding(x, E, temperature=float("inf")), ValueError, "temperature must be"),
        (lambda x, E: dk.soft_embedding(x, E, temperature=True), ValueError, "temperature must be"),
        (lambda x, E: dk.soft_embedding(x, E, temperature=torch.ones(3)), ValueError, "temperature must have shape"),
        (
            lambda x, E: dk.soft_embedding(x, E, temperature=torch.ones(2, dtype=torch.float64)),
            TypeError,
            "temperature must have dtype float32",
        ),
        (
            lambda x, E: dk.soft_embedding(x, E, temperature=torch.tensor([1.0, float("nan")])),
            ValueError,
            "temperature values must be finite and >= 0",
        ),
        (
            lambda x, E: dk.soft_embedding(x, E, temperature=torch.tensor([1.0, -1.0])),
            ValueError,
            "temperature values must be finite",
        ),
        (lambda x, E: dk.soft_embedding(x, E, temperature=1.0, backend="cuda"), ValueError, "backend must be one of"),
        (
            lambda x, E: dk.soft_embedding_partial(x, E, temperature=1.0, vocab_start=5),
            ValueError,
            r"vocab_start \+ logits_shard.shape\[-1\] \(5 \+ 10\) exceeds the 12 rows of embed_shard",
        ),
        (lambda x, E: dk.soft_embedding_partial(x, [1.0], temperature=1.0), TypeError, "embed_shard must be a torch"),
        (lambda x, E: dk.merge_soft_embedding([]), ValueError, "at least one state"),
        (
            lambda x, E: dk.merge_soft_embedding([torch.zeros(2, 8), torch.zeros(3, 8)]),
            ValueError,
            r"partials\[1\] must have shape",
        ),
        (
            lambda x, E: dk.merge_soft_embedding(torch.zeros(2, 4, 8, dtype=torch.float64)),
            TypeError,
            "partials must have dtype float32",
        ),
        (lambda x, E: dk.merge_soft_embedding(torch.zeros(2, 4, 4)), ValueError, "D \\+ 4 >= 5 words"),
        (lambda x, E: dk.merge_soft_embedding(torch.zeros(2, 8)), ValueError, "partials must be 3-D or 4-D"),
        (lambda x, E: dk.merge_soft_embedding(torch.zeros(1025, 2, 8)), ValueError, "at most 1024 partial states"),
        (
            lambda x, E: dk.merge_soft_embedding(torch.zeros(2, 2, 8), out_dtype=torch.int32),
            TypeError,
            "out_dtype must be one of",
        ),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(torch.randn(2, 10), torch.randn(12, 6))
