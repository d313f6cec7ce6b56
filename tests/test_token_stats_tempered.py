"""token_stats with per-row temperatures, tempered statistics and an allowed-token bitmask:
the kernel (interpreter on CPU, native on GPU) against the fp64 reference, and both against
independent formulas (softmax(z / T) in fp64, logits masked to -inf by hand)."""

import math

import pytest
import torch
from helpers import assert_stats_close

import dllm_kernels as dk
from dllm_kernels import reference
from dllm_kernels.kernels import confidence as kernels

BACKENDS = ["triton", "reference"]


def logits(*shape, device="cpu", scale=3.0):
    x = torch.randn(*shape) * scale
    idx = torch.randint(0, shape[-1], shape[:-1])
    x.scatter_add_(-1, idx[..., None], (torch.rand(shape[:-1]) * 8)[..., None])
    return x.to(device)


def bitmask(allow: torch.Tensor) -> torch.Tensor:
    """xgrammar's int32 layout of a bool ``[..., V]`` allow matrix: bit j of word w = id 32 w + j."""
    V = allow.shape[-1]
    W = -(-V // 32)
    padded = torch.zeros(*allow.shape[:-1], W * 32, dtype=torch.int64, device=allow.device)
    padded[..., :V] = allow.long()
    bits = padded.view(*allow.shape[:-1], W, 32) << torch.arange(32, device=allow.device)
    words = bits.sum(-1)  # < 2**32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def fp64_tempered(x, T, allow=None):
    """(argmax, prob of argmax, entropy) of softmax(x / max(T, 1e-10)) in fp64, written directly."""
    z = x.double().cpu()
    if allow is not None:
        z = z.masked_fill(~allow.cpu(), float("-inf"))
    T = torch.as_tensor(T, dtype=torch.float64).clamp(min=1e-10)
    while T.dim() < z.dim():
        T = T[..., None]
    p = torch.softmax(z / T, dim=-1)
    return p.argmax(-1), p.max(-1).values, -torch.xlogy(p, p).sum(-1)


# ------------------------------------------------------------------------------------------------
# tempered statistics
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 0.25, 0.7, 1.0, 3.0])
@pytest.mark.parametrize("num_splits", [None, 3])
def test_tempered_matches_reference(device, temperature, num_splits):
    x = logits(6, 2999, device=device)
    got = kernels.token_stats(x, temperature, 5, (), num_splits=num_splits, tempered=True)
    ref = reference.token_stats(x.cpu(), temperature=temperature, seed=5, tempered=True)
    assert_stats_close(dk.TokenStats(*got), ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tempered_statistics_are_those_of_softmax_over_t(device, backend):
    x = logits(4, 500, device=device)
    for T in (0.5, 2.0):
        st = dk.token_stats(x, temperature=0.0, tempered=False, backend=backend)
        # at T = 0 the token is the argmax, so prob is the max probability of the tempered softmax
        got = dk.token_stats(x, temperature=T, seed=1, tempered=True, backend=backend)
        _, _, ent = fp64_tempered(x, T)
        torch.testing.assert_close(got.entropy.cpu().double(), ent, atol=1e-5 * (1 + ent.max().item()), rtol=0)
        p = torch.softmax(x.double().cpu() / T, -1)
        torch.testing.assert_close(
            got.prob.cpu().double(), p.gather(-1, got.token.cpu()[:, None])[:, 0], atol=4e-6, rtol=0
        )
        assert not torch.equal(st.entropy, got.entropy)  # untempered differs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [0.0, 1e-8, 1e-20])
def test_tempered_statistics_stay_finite_as_t_goes_to_zero(device, backend, temperature):
    """The pivot stays the raw maximum: a unique maximum gives prob 1, margin 1, entropy 0;
    k tied maxima prob 1/k, margin 0, entropy log k; a row whose two largest logits are one fp32
    ulp apart still gives the limit (no 1e10-scaled logits that round alike)."""
    x = logits(3, 300, device=device)
    x[1, [7, 70, 170]] = x[1].max() + 1.0  # three tied maxima
    big = 1000.0
    x[2, 11] = big
    x[2, 12] = torch.nextafter(torch.tensor(big), torch.tensor(0.0)).item()  # one ulp below
    st = dk.token_stats(x, temperature=temperature, seed=3, tempered=True, backend=backend)
    assert torch.isfinite(st.entropy).all() and torch.isfinite(st.prob).all()
    assert st.token[1].item() == 7 and st.token[2].item() == 11
    torch.testing.assert_close(st.prob.cpu(), torch.tensor([1.0, 1 / 3, 1.0]))
    torch.testing.assert_close(st.margin.cpu(), torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(st.entropy.cpu(), torch.tensor([0.0, math.log(3), 0.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tempered_extreme_values(device, backend):
    """Same NaN / inf semantics as the untempered statistics (tests/test_token_stats.py)."""
    x = logits(4, 64, device=device)
    x[0] = float("-inf")  # no logit above -inf
    x[1, 3] = float("nan")
    x[1, :3] = float("-inf")
    x[2, [9, 40]] = float("inf")  # two +inf share the mass
    x[3, 5] = float("inf")
    for T in (0.0, 0.6):
        st = dk.token_stats(x, temperature=T, seed=2, tempered=True, backend=backend)
        assert st.token[0].item() == 0 and st.prob[0].item() == 0 and st.entropy[0].item() == math.inf
        assert st.token[2].item() == 9 and st.prob[2].item() == pytest.approx(0.5) and st.margin[2].item() == 0
        assert st.entropy[2].item() == pytest.approx(math.log(2), abs=1e-6)
        assert st.token[3].item() == 5 and st.prob[3].item() == 1.0 and st.entropy[3].item() == 0.0
        nan_free = x.clone()
        nan_free[1, 3] = float("-inf")
        ref = dk.token_stats(nan_free, temperature=T, seed=2, tempered=True, backend=backend)
        assert_stats_close(st, ref)


# ------------------------------------------------------------------------------------------------
# per-row temperatures
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tempered", [False, True])
@pytest.mark.parametrize("num_splits", [None, 2])
def test_row_temperatures_match_reference(device, tempered, num_splits):
    x = logits(3, 5, 1500, device=device)
    temps = torch.rand(3, 5) * 1.5
    temps[0, :2] = 0.0
    temps[2, 4] = 1e-9
    temps = temps.to(device)
    seed = torch.randint(0, 2**62, (3, 5)).to(device)
    for s in (77, seed):
        got = kernels.token_stats(x, temps, s, (), num_splits=num_splits, tempered=tempered)
        ref = reference.token_stats(
            x.cpu(), temperature=temps.cpu(), seed=s if isinstance(s, int) else s.cpu(), tempered=tempered
        )
        assert_stats_close(dk.TokenStats(*got), ref)
    # rows at T = 0 propose their argmax
    assert torch.equal(ref.token[0, :2], x[0, :2].cpu().argmax(-1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tempered", [False, True])
def test_row_temperature_equals_the_float_path(device, backend, tempered):
    """A tensor of an fp32-exact temperature gives the float path's tokens and statistics."""
    x = logits(4, 777, device=device)
    for T in (0.0, 0.5, 0.75, 2.0):
        a = dk.token_stats(x, temperature=T, seed=9, tempered=tempered, backend=backend)
        b = dk.token_stats(
            x, temperature=torch.full((4,), T, device=device), seed=9, tempered=tempered, backend=backend
        )
        for g, r in zip(a, b):
            assert torch.equal(g, r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_temperatures_keep_batch_equal_to_single(device, backend):
    """With per-row seeds and temperatures a row's result does not depend on its batch."""
    x = logits(6, 900, device=device)
    temps = torch.tensor([0.0, 0.3, 1.0, 0.0, 2.5, 0.9], device=device)
    seeds = torch.arange(100, 106, device=device)
    mask = bitmask(torch.rand(6, 900) > 0.2).to(device)
    batch = dk.token_stats(x, temperature=temps, seed=seeds, tempered=True, allowed=mask, backend=backend)
    for r in range(6):
        one = dk.token_stats(
            x[r : r + 1],
            temperature=temps[r : r + 1],
            seed=seeds[r : r + 1],
            tempered=True,
            allowed=mask[r : r + 1],
            backend=backend,
        )
        for g, o in zip(batch, one):
            assert torch.equal(g[r : r + 1], o)


# ------------------------------------------------------------------------------------------------
# allowed-token bitmask
# ------------------------------------------------------------------------------------------------


def test_bitmask_helper_layout():
    allow = torch.zeros(1, 70, dtype=torch.bool)
    allow[0, [0, 31, 32, 69]] = True
    words = bitmask(allow)
    assert words.shape == (1, 3) and words.dtype == torch.int32
    assert words.tolist() == [[1 | -(2**31), 1, 1 << 5]]


@pytest.mark.parametrize("V", [31, 32, 1000, 4133])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_allowed_matches_masking_by_hand(device, V, temperature):
    x = logits(5, V, device=device)
    allow = torch.rand(5, V) > 0.5
    allow[0] = False  # nothing allowed
    allow[1] = False
    allow[1, V - 1] = True  # only the last id (the top bit of a partial word)
    mask = bitmask(allow).to(device)
    by_hand = x.masked_fill(~allow.to(device), float("-inf"))
    for tempered in (False, True):
        got = dk.token_stats(x, temperature=temperature, seed=4, allowed=mask, tempered=tempered, backend="triton")
        ref = reference.token_stats(x.cpu(), temperature=temperature, seed=4, allowed=mask.cpu(), tempered=tempered)
        hand = reference.token_stats(by_hand.cpu(), temperature=temperature, seed=4, tempered=tempered)
        assert_stats_close(got, ref)
        assert_stats_close(ref, hand)
        # a row with nothing allowed is a row without a logit above -inf
        assert got.token[0].item() == 0 and got.prob[0].item() == 0 and got.margin[0].item() == 0
        assert got.entropy[0].item() == math.inf
        assert got.token[1].item() == V - 1 and got.prob[1].item() == 1.0


def test_allowed_with_splits_and_suppress(device):
    x = logits(2, 3, 5000, device=device)
    mask = bitmask(torch.rand(2, 3, 5000) > 0.3).to(device)
    got = kernels.token_stats(x, 0.9, 12, (17, 4000), num_splits=4, allowed=mask, tempered=True)
    ref = reference.token_stats(
        x.cpu(), temperature=0.9, seed=12, suppress_ids=(17, 4000), allowed=mask.cpu(), tempered=True
    )
    assert_stats_close(dk.TokenStats(*got), ref)


def test_custom_op_schema(device):
    x = logits(3, 100, device=device)
    temps = torch.tensor([0.0, 0.5, 1.0], device=device)
    mask = bitmask(torch.rand(3, 100) > 0.5).to(device)
    op = torch.ops.dllm_kernels.token_stats.default
    torch.library.opcheck(op, (x, 0.0, 3, [], None, temps, mask, True, False))
    torch.library.opcheck(op, (x, 0.0, 3, [], None, temps, None, False, True))
    part = torch.ops.dllm_kernels.token_stats_partial.default
    torch.library.opcheck(part, (x, 0, 100, 0.0, 3, [], None, temps, mask, True, False))
    parts = torch.stack(
        [dk.token_stats_partial(x, 0, temperature=temps, seed=3, tempered=True, vocab_size=100, backend="triton")]
    )
    torch.library.opcheck(torch.ops.dllm_kernels.merge_token_stats.default, (parts, 0.0, True, temps))


def test_traces_under_torch_compile(device):
    x = logits(2, 4, 300, device=device)
    temps = torch.rand(2, 4, device=device)
    mask = bitmask(torch.rand(2, 4, 300) > 0.4).to(device)

    def f(x, temps, mask):
        return dk.token_stats(x, temperature=temps, seed=5, allowed=mask, tempered=True, backend="triton")

    eager = f(x, temps, mask)
    compiled = torch.compile(f, backend="eager", fullgraph=True)(x, temps, mask)
    for g, r in zip(compiled, eager):
        assert torch.equal(g, r)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"temperature": torch.zeros(4, dtype=torch.float64)}, TypeError, "temperature tensor must have dtype float32"),
        ({"temperature": torch.zeros(3)}, ValueError, r"temperature tensor must have the rows' shape \[4\]"),
        ({"temperature": torch.tensor([0.0, -1.0, 0.0, 0.0])}, ValueError, "temperature values must be 0 or finite"),
        ({"temperature": torch.tensor([0.0, 1e-40, 0.0, 0.0])}, ValueError, "temperature values must be 0 or finite"),
        (
            {"temperature": torch.tensor([0.0, math.inf, 0.0, 0.0])},
            ValueError,
            "temperature values must be 0 or finite",
        ),
        ({"allowed": torch.zeros(4, 2, dtype=torch.int64)}, TypeError, "allowed must have dtype"),
        ({"allowed": torch.zeros(4, 3, dtype=torch.int32)}, ValueError, r"allowed must have ceil\(vocab / 32\) = 2"),
        ({"allowed": torch.zeros(3, 2, dtype=torch.int32)}, ValueError, r"allowed must have shape \[4, W\]"),
        ({"tempered": 1}, TypeError, "tempered must be a bool"),
        ({"noise": "torch"}, ValueError, "noise must be one of"),
    ],
)
def test_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dk.token_stats(torch.randn(4, 40), **kwargs)


def test_partial_bad_allowed():
    with pytest.raises(ValueError, match=r"allowed must have ceil\(vocab / 32\) = 4"):
        dk.token_stats_partial(torch.randn(2, 40), 60, vocab_size=100, allowed=torch.zeros(2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="allowed must have at least 4"):
        dk.token_stats_partial(torch.randn(2, 40), 60, allowed=torch.zeros(2, 3, dtype=torch.int32))


# ------------------------------------------------------------------------------------------------
# tensor-parallel vocabularies
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_sharded_tempered_row_temperatures_and_bitmask_merge_to_the_whole(device, backend):
    V = 1003
    x = logits(2, 4, V, device=device)
    x[0, 1, [10, 900]] = 30.0  # a tie across shards
    temps = torch.rand(2, 4, device=device)
    temps[1, 2] = 0.0
    allow = torch.rand(2, 4, V) > 0.3
    allow[1, 3] = False
    mask = bitmask(allow).to(device)
    bounds = [(0, 300), (300, 301), (301, 1003)]
    for tempered in (False, True):
        kw = dict(temperature=temps, seed=31, allowed=mask, tempered=tempered)
        parts = [dk.token_stats_partial(x[..., a:b], a, vocab_size=V, backend=backend, **kw) for a, b in bounds]
        merged = dk.merge_token_stats(parts[::-1], temperature=temps, tempered=tempered, backend=backend)
        whole = dk.token_stats(x, backend=backend, **kw)
        assert_stats_close(merged, whole)
        assert_stats_close(
            merged, reference.token_stats(x.cpu(), **{**kw, "temperature": temps.cpu(), "allowed": mask.cpu()})
        )
    # a float temperature, tempered
    parts = [dk.token_stats_partial(x[..., a:b], a, temperature=0.0, tempered=True, backend=backend) for a, b in bounds]
    merged = dk.merge_token_stats(torch.stack(parts), temperature=0.0, tempered=True, backend=backend)
    assert_stats_close(merged, dk.token_stats(x, temperature=0.0, tempered=True, backend=backend))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_inputs(device, dtype):
    """fp16/bf16 logits upcast exactly: the same tolerances with every new option at once."""
    x = logits(2, 3, 2000, device=device).to(dtype)
    temps = torch.tensor([[0.0, 0.4, 1.0], [1e-6, 2.0, 0.0]], device=device)
    mask = bitmask(torch.rand(2, 3, 2000) > 0.25).to(device)
    seeds = torch.arange(6, device=device).view(2, 3) * 1000
    kw = dict(temperature=temps, seed=seeds, allowed=mask, tempered=True)
    got = dk.token_stats(x, backend="triton", **kw)
    ref = reference.token_stats(x.cpu(), **{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    assert_stats_close(got, ref)


def test_sm90_loop_has_no_block_reduction_with_the_new_options():
    """The new specializations keep the per-lane loop: at most the 2 bar.sync of the cp.async
    hand-off per iteration (tests/test_token_stats.py checks the original ones)."""
    from test_token_stats import assert_loops_have_at_most_two_barriers

    assert_loops_have_at_most_two_barriers(
        [
            "token_stats[bf16,sample=False,row_seed=False,final=True,suppress=0,tempered,allowed]",
            "token_stats[bf16,sample=True,row_seed=True,final=True,suppress=0,row_temp,tempered]",
            "token_stats[bf16,sample=True,row_seed=False,final=False,suppress=0,row_temp,tempered,vllm]",
        ]
    )
