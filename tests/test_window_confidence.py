"""window_confidence (R2's spatial aggregation): kernel vs reference, and hand-worked cases."""

import pytest
import torch

import dllm_kernels as dk
from dllm_kernels import reference

NEG = float("-inf")


def both(conf, decided, window, max_decided):
    got = dk.window_confidence(conf, decided, window, max_decided, backend="triton")
    ref = reference.window_confidence(conf.cpu(), decided.cpu(), window, max_decided)
    # same summation order and correctly rounded division: bit-equal, not merely close
    assert torch.equal(got.cpu(), ref), (got, ref)
    return ref


def test_hand_worked(device):
    conf = torch.tensor([[0.9, 0.7, 0.95, 0.2, 0.85]], device=device)
    decided = torch.tensor([[False, False, True, False, False]], device=device)
    # windows [0,3): masked {0,1} mean 0.8; [1,4): {1,3} mean 0.45; [2,5): {3,4} mean 0.525
    out = both(conf, decided, 3, 1)
    c = conf.cpu()[0]  # fp32 arithmetic, as specified
    m01, m13, m34 = (c[0] + c[1]) / 2, (c[1] + c[3]) / 2, (c[3] + c[4]) / 2
    expect = torch.stack([m01, m01, torch.tensor(NEG), torch.maximum(m13, m34), m34])
    assert torch.equal(out[0], expect)
    assert out[0].tolist() == pytest.approx([0.8, 0.8, NEG, 0.525, 0.525])
    # with U = 0 every window holds the decided position 2 except none: all skipped
    assert torch.equal(both(conf, decided, 3, 0), torch.full((1, 5), NEG))


def test_window_edges_and_short_rows(device):
    conf = torch.tensor([[0.1, 0.2, 0.3, 0.4]], device=device)
    none = torch.zeros(1, 4, dtype=torch.bool, device=device)
    out = both(conf, none, 3, 1)
    # position 0 is covered only by the window [0,3); position 3 only by [1,4)
    c = conf.cpu()[0]
    assert out[0, 0] == (c[0] + c[1] + c[2]) / 3
    assert out[0, 3] == (c[1] + c[2] + c[3]) / 3
    assert out[0, 1] == torch.maximum((c[0] + c[1] + c[2]) / 3, (c[1] + c[2] + c[3]) / 3)
    # a row shorter than the window has no window at all
    assert torch.equal(both(conf[:, :2], none[:, :2], 3, 1), torch.full((1, 2), NEG))
    # window 1: each masked position is its own window
    assert torch.equal(both(conf, none, 1, 0).cpu(), conf.cpu())


def test_non_finite_confidence_skips_window(device):
    conf = torch.tensor([[0.9, NEG, 0.9, 0.9, 0.9]], device=device)
    decided = torch.zeros(1, 5, dtype=torch.bool, device=device)
    out = both(conf, decided, 3, 1)
    # only the window [2,5) is finite
    assert out.cpu()[0].tolist() == [NEG, NEG, pytest.approx(0.9), pytest.approx(0.9), pytest.approx(0.9)]
    # a non-finite confidence at a decided position does not matter
    decided[0, 1] = True
    out = both(conf, decided, 3, 1)
    assert torch.isfinite(out.cpu()[0, [0, 2, 3, 4]]).all()


@pytest.mark.parametrize("window, max_decided", [(2, 0), (3, 1), (4, 2), (5, 1)])
@pytest.mark.parametrize("L", [1, 8, 33, 300])
def test_random_rows_match_reference(device, window, max_decided, L):
    conf = torch.rand(3, L, device=device)
    decided = torch.rand(3, L, device=device) < 0.3
    both(conf, decided, window, max_decided)


def test_strided_inputs(device):
    big = torch.rand(4, 50, device=device)
    dec = torch.rand(4, 50, device=device) < 0.2
    both(big[::2, 5:37], dec[::2, 5:37], 3, 1)


@pytest.mark.parametrize(
    "conf, decided, kw, exc, match",
    [
        (
            torch.rand(2, 4, dtype=torch.float64),
            torch.zeros(2, 4, dtype=torch.bool),
            {},
            TypeError,
            "conf must have dtype float32",
        ),
        (torch.rand(4), torch.zeros(4, dtype=torch.bool), {}, ValueError, "conf must be 2-D"),
        (torch.rand(2, 4), torch.zeros(2, 4), {}, TypeError, "decided must have dtype bool"),
        (
            torch.rand(2, 4),
            torch.zeros(2, 5, dtype=torch.bool),
            {},
            ValueError,
            r"decided must have shape \[2, 4\], got \[2, 5\]",
        ),
        (torch.rand(2, 4), torch.zeros(2, 4, dtype=torch.bool), {"window": 0}, ValueError, "window must be an int in"),
        (torch.rand(2, 4), torch.zeros(2, 4, dtype=torch.bool), {"window": 40}, ValueError, "window must be an int in"),
        (
            torch.rand(2, 4),
            torch.zeros(2, 4, dtype=torch.bool),
            {"max_decided": -1},
            ValueError,
            "max_decided must be an int >= 0",
        ),
    ],
)
def test_bad_input(conf, decided, kw, exc, match):
    with pytest.raises(exc, match=match):
        dk.window_confidence(conf, decided, **kw)


def test_custom_op_registration(device):
    conf = torch.rand(2, 9, device=device)
    decided = torch.rand(2, 9, device=device) < 0.3
    torch.library.opcheck(torch.ops.dllm_kernels.window_confidence.default, (conf, decided, 3, 1))
