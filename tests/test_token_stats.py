"""token_stats: the Triton kernel against the fp64 reference (interpreter on CPU, native on GPU)."""

import math

import pytest
import torch
from helpers import assert_stats_close

import dllm_kernels as dk
from dllm_kernels import reference
from dllm_kernels.kernels import confidence as kernels

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def peaked_logits(*shape, dtype=torch.float32, device="cpu", scale=3.0):
    """Logits shaped like a model's: noise plus one strongly preferred id per row."""
    x = torch.randn(*shape) * scale
    V = shape[-1]
    idx = torch.randint(0, V, shape[:-1])
    boost = torch.rand(shape[:-1]) * 12
    x.scatter_add_(-1, idx[..., None], boost[..., None])
    return x.to(dtype=dtype, device=device)


def run_both(x, **kw):
    got = dk.token_stats(x, backend="triton", **kw)
    ref = reference.token_stats(x.cpu(), **kw)
    return got, ref


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("V", [1, 7, 1000, 5003, 50257])
def test_matches_reference(device, dtype, V):
    x = peaked_logits(5, V, dtype=dtype, device=device)
    got, ref = run_both(x)
    assert_stats_close(got, ref)


@pytest.mark.parametrize("V", [126464, 152064], ids=["llada", "dream"])
def test_real_vocabularies(device, V):
    x = peaked_logits(2, 3, V, dtype=torch.bfloat16, device=device)
    got, ref = run_both(x)
    assert got.token.shape == (2, 3)
    assert_stats_close(got, ref)


@pytest.mark.parametrize("num_splits", [2, 3, 7])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_vocabulary_split_and_combine(device, num_splits, temperature):
    """The split-vocabulary path (used for small row counts on the GPU) gives the same answer,
    including when the vocabulary is not a multiple of the split size."""
    x = peaked_logits(4, 20001, device=device)
    got = kernels.token_stats(x, temperature, 11, (), num_splits=num_splits)
    ref = reference.token_stats(x.cpu(), temperature=temperature, seed=11)
    assert_stats_close(dk.TokenStats(*got), ref)


def test_all_equal_rows(device):
    V = 300
    x = torch.full((3, V), 2.5, device=device)
    got, ref = run_both(x)
    assert_stats_close(got, ref)
    assert got.token.tolist() == [0, 0, 0]
    torch.testing.assert_close(got.prob.cpu(), torch.full((3,), 1 / V), atol=1e-7, rtol=0)
    assert got.margin.cpu().abs().max().item() <= 1e-7
    torch.testing.assert_close(got.entropy.cpu(), torch.full((3,), math.log(V)), atol=2e-6, rtol=0)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_ties_resolve_to_lowest_index(device, num_splits):
    """Equal maxima in different lanes, loop iterations and vocabulary splits -> lowest id."""
    V = 40000
    x = torch.zeros(4, V)
    x[0, [17, 9000, 39999]] = 5.0  # several lanes / iterations
    x[1, [30000, 8192 + 3]] = 5.0  # same lane (index differs by the block size), later one first
    x[2, [25000, 20000]] = 7.0  # in different splits
    x[3, [V - 1]] = 1.0
    x = x.to(device)
    got = dk.TokenStats(*kernels.token_stats(x, 0.0, 0, (), num_splits=num_splits))
    assert got.token.tolist() == [17, 8195, 20000, V - 1]
    assert got.margin[:3].abs().max().item() == 0.0  # top-1 == top-2 when tied
    assert_stats_close(got, reference.token_stats(x.cpu()))


def test_neg_inf_entries_and_empty_rows(device):
    V = 2000
    x = torch.randn(4, V)
    x[0, ::2] = float("-inf")  # half the vocabulary impossible
    x[1, :] = float("-inf")
    x[1, 1234] = -3.0  # a single finite logit
    x[2, :] = float("-inf")  # no finite logit at all
    x[3, 1:] = float("-inf")
    x = x.to(device)
    got, ref = run_both(x)
    assert_stats_close(got, ref)
    assert got.token[1].item() == 1234 and got.prob[1].item() == 1.0 and got.entropy[1].item() == 0.0
    assert (got.token[2].item(), got.prob[2].item(), got.margin[2].item()) == (0, 0.0, 0.0)
    assert got.entropy[2].item() == float("inf")
    assert got.token[3].item() == 0 and got.margin[3].item() == 1.0


def test_suppress_ids(device):
    x = peaked_logits(3, 1000, device=device)
    top = x.argmax(-1).tolist()
    got, ref = run_both(x, suppress_ids=top + [999])
    assert_stats_close(got, ref)
    assert not set(got.token.tolist()) & set(top + [999])


def test_fully_suppressed_except_one(device):
    V = 17
    x = torch.randn(2, V, device=device)
    keep = 11
    got, ref = run_both(x, suppress_ids=[i for i in range(V) if i != keep])
    assert_stats_close(got, ref)
    assert got.token.tolist() == [keep, keep]
    assert got.prob.tolist() == [1.0, 1.0] and got.margin.tolist() == [1.0, 1.0]
    assert got.entropy.tolist() == [0.0, 0.0]


def test_strided_inputs(device):
    """Slices of larger tensors are read in place: row strides, a batch slice, a column stride."""
    big = peaked_logits(3, 12, 3000, dtype=torch.float16, device=device)
    views = {
        "block slice": big[:, 4:9],  # [B, L, V] with the full tensor's strides
        "every other row": big[:, ::2],
        "vocab prefix": big[1, :, :2500],  # row stride 3000, V 2500
        "vocab strided": big[0].transpose(0, 1).contiguous().transpose(0, 1),  # stride_v = 12
    }
    for name, x in views.items():
        assert not x.is_contiguous() or name == "vocab strided" and x.stride(-1) != 1
        got, ref = run_both(x)
        assert_stats_close(got, ref)


def test_shapes(device):
    x = peaked_logits(2, 3, 64, device=device)
    got = dk.token_stats(x, backend="triton")
    assert [t.shape for t in got] == [torch.Size([2, 3])] * 4
    assert got.token.dtype == torch.int64 and got.prob.dtype == torch.float32
    empty = dk.token_stats(torch.zeros(0, 64, device=device), backend="triton")
    assert [t.shape for t in empty] == [torch.Size([0])] * 4
    flat = dk.token_stats(x.reshape(6, 64), backend="triton")
    assert torch.equal(flat.token, got.token.reshape(6))


# ------------------------------------------------------------------------------------------------
# sampling at temperature > 0
# ------------------------------------------------------------------------------------------------


def test_sampling_matches_reference_stream(device):
    """Kernel and reference draw the same Philox uniforms, so they propose the same tokens."""
    x = peaked_logits(6, 3001, scale=1.0, device=device)
    got, ref = run_both(x, temperature=0.7, seed=1234)
    assert_stats_close(got, ref)


def test_sampling_is_seeded(device):
    x = torch.zeros(16, 50, device=device)
    a = dk.token_stats(x, temperature=1.0, seed=5, backend="triton").token
    b = dk.token_stats(x, temperature=1.0, seed=5, backend="triton").token
    c = dk.token_stats(x, temperature=1.0, seed=6, backend="triton").token
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


SAMPLING_LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, float("-inf")])


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampling_same_tokens_as_reference(device, temperature):
    """Same seed, same tokens as the reference over many rows; with the reference's
    distribution test below this pins the kernel's sampled distribution."""
    x = SAMPLING_LOGITS.expand(96, 8).contiguous().to(device)
    got, ref = run_both(x, temperature=temperature, seed=2024)
    assert torch.equal(got.token.cpu(), ref.token)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.gpu)])
def test_sampled_distribution(temperature, backend):
    """Frequencies over many rows (independent Philox offsets) follow softmax(logits / T):
    Pearson chi-square below the 0.999 quantile (fixed seed, so not flaky)."""
    n = 4000
    x = SAMPLING_LOGITS.expand(n, 8).contiguous().to("cuda" if backend == "triton" else "cpu")
    tok = dk.token_stats(x, temperature=temperature, seed=99, backend=backend).token.cpu()
    counts = torch.bincount(tok, minlength=8).double()
    assert counts[-1] == 0  # -inf is never sampled
    expected = torch.softmax(SAMPLING_LOGITS.double() / temperature, 0)[:-1] * n
    chi2 = ((counts[:-1] - expected) ** 2 / expected).sum().item()
    assert chi2 < 22.46, f"chi2 = {chi2:.1f} with 6 degrees of freedom (0.999 quantile 22.46)"


def test_sampling_stats_are_of_the_untempered_softmax(device):
    x = peaked_logits(4, 500, device=device)
    got = dk.token_stats(x, temperature=1.5, seed=3, backend="triton")
    p = torch.softmax(x.double().cpu(), -1)
    torch.testing.assert_close(got.prob.cpu().double(), p.gather(-1, got.token.cpu()[:, None])[:, 0], atol=4e-6, rtol=0)


# ------------------------------------------------------------------------------------------------
# dispatch, registration, errors
# ------------------------------------------------------------------------------------------------


def test_auto_backend_uses_reference_on_cpu(monkeypatch):
    calls = []
    real = reference.token_stats
    monkeypatch.setattr(reference, "token_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    dk.token_stats(torch.randn(2, 10), backend="auto")
    assert calls == [1]
    dk.token_stats(torch.randn(2, 10), backend="triton")
    assert calls == [1]


def test_backends_agree_on_defaults(device):
    x = peaked_logits(3, 777, device=device)
    assert_stats_close(dk.token_stats(x, backend="triton"), dk.token_stats(x.cpu(), backend="reference"))


def test_custom_op_registration(device):
    """Schema, fake implementation and tracing of the custom op (torch.library.opcheck)."""
    x = peaked_logits(2, 3, 100, device=device)
    torch.library.opcheck(torch.ops.dllm_kernels.token_stats.default, (x, 0.0, 0, [5]))
    torch.library.opcheck(torch.ops.dllm_kernels.token_stats.default, (x, 0.5, 7, []))


def test_traces_under_torch_compile(device):
    x = peaked_logits(2, 100, device=device)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def f(logits):
        s = dk.token_stats(logits, suppress_ids=(3,), backend="triton")
        return s.token, s.prob * 2

    tok, p2 = f(x)
    ref = reference.token_stats(x.cpu(), suppress_ids=(3,))
    assert torch.equal(tok.cpu(), ref.token)
    torch.testing.assert_close(p2.cpu(), ref.prob * 2, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "make, kwargs, exc, match",
    [
        (lambda: torch.randn(10), {}, ValueError, "logits must be 2-D or 3-D, got shape"),
        (lambda: torch.randn(2, 2, 2, 2), {}, ValueError, "logits must be 2-D or 3-D"),
        (lambda: torch.randint(0, 5, (2, 10)), {}, TypeError, "logits must have dtype float32/float16/bfloat16, got torch.int64"),
        (lambda: torch.randn(2, 10, dtype=torch.float64), {}, TypeError, "got torch.float64"),
        (lambda: [[1.0, 2.0]], {}, TypeError, "logits must be a torch.Tensor, got list"),
        (lambda: torch.randn(2, 0), {}, ValueError, "non-empty vocabulary"),
        (lambda: torch.randn(2, 10), {"suppress_ids": [3, 10]}, ValueError, r"suppress_ids must lie in \[0, 10\), got \[10\]"),
        (lambda: torch.randn(2, 10), {"suppress_ids": [-1]}, ValueError, "suppress_ids must lie in"),
        (lambda: torch.randn(2, 10), {"suppress_ids": [1.5]}, TypeError, "suppress_ids must hold ints"),
        (lambda: torch.randn(2, 10), {"suppress_ids": "abc"}, (TypeError, ValueError), "suppress_ids"),
        (lambda: torch.randn(2, 100), {"suppress_ids": list(range(17))}, ValueError, "at most 16 suppress_ids"),
        (lambda: torch.randn(2, 10), {"temperature": -1.0}, ValueError, "temperature must be a finite number >= 0"),
        (lambda: torch.randn(2, 10), {"temperature": float("nan")}, ValueError, "temperature"),
        (lambda: torch.randn(2, 10), {"temperature": 1.0, "seed": -3}, ValueError, "seed must lie in"),
        (lambda: torch.randn(2, 10), {"backend": "cuda"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_input(make, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dk.token_stats(make(), **kwargs)


def test_triton_backend_on_cpu_without_interpreter(monkeypatch):
    import dllm_kernels.backend as backend

    monkeypatch.setattr(backend, "interpreter_enabled", lambda: False)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors.*TRITON_INTERPRET=1"):
        dk.token_stats(torch.randn(2, 10), backend="triton")


# ------------------------------------------------------------------------------------------------
# GPU only
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_rows_times_vocab_beyond_int32():
    """rows x V > 2**31 elements: row offsets must be computed in int64."""
    V = 126464
    rows = 2**31 // V + 64
    x = torch.empty(rows, V, dtype=torch.bfloat16, device="cuda")
    x.normal_(0, 3)
    got = dk.token_stats(x)
    tail = slice(rows - 96, rows)
    ref = reference.token_stats(x[tail].cpu())
    assert_stats_close(dk.TokenStats(*(t[tail] for t in got)), ref)


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 32, 256, 1024])
def test_gpu_heuristic_configs(rows):
    """The launcher's GPU split heuristic over the row counts the benchmark uses."""
    x = peaked_logits(rows, 126464, dtype=torch.bfloat16, device="cuda")
    for t in (0.0, 0.9):
        got = dk.token_stats(x, temperature=t, seed=1)
        assert_stats_close(got, reference.token_stats(x.cpu(), temperature=t, seed=1))


@pytest.mark.gpu
def test_cuda_graph_capture():
    x = peaked_logits(32, 126464, dtype=torch.bfloat16, device="cuda")
    dk.token_stats(x)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = dk.token_stats(x)
    x.copy_(peaked_logits(32, 126464, dtype=torch.bfloat16, device="cuda"))
    g.replay()
    assert_stats_close(dk.TokenStats(*out), reference.token_stats(x.cpu()))
