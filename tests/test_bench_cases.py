"""The benchmarks compare equal work: the candidates of each benchmark compute the same result."""

import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))

from token_stats_cases import CANDIDATES  # noqa: E402


def test_token_stats_candidates_agree(device):
    x = (torch.randn(4, 3000) * 3).to(device=device, dtype=torch.bfloat16)
    ref = CANDIDATES["reference_eager"](x.cpu())
    for name, fn in CANDIDATES.items():
        got = [t.cpu() for t in fn(x)]
        assert torch.equal(got[0], ref[0]), name
        for g, r in zip(got[1:], ref[1:]):
            torch.testing.assert_close(g.float(), r.float(), atol=1e-5, rtol=1e-5, msg=name)


def _attention_inputs(device, Hq=4, Hkv=2):
    q = torch.randn(2, 8, Hq, 64, device=device)
    k, v, kc, vc = (torch.randn(2, n, Hkv, 64, device=device) for n in (8, 8, 20, 20))
    return q, k, v, kc, vc


@pytest.mark.parametrize("heads", [(4, 2), (2, 2)], ids=["gqa", "mha"])
def test_attention_candidates_agree(device, heads):
    """The SDPA baselines (math backend on the CPU; cuDNN / flash on the GPU) on the concatenated
    K/V compute the kernel's output, prefix-cache step and prefill alike."""
    from attention_cases import kernel, sdpa
    from torch.nn.attention import SDPBackend

    backends = [SDPBackend.MATH] if device == "cpu" else [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]
    q, k, v, kc, vc = _attention_inputs(device, *heads)
    for args in ((q, k, v, kc, vc), (q, k, v)):
        want = kernel(*args)
        for backend in backends:
            torch.testing.assert_close(sdpa(backend)(*args), want, atol=1e-5, rtol=1e-5, msg=str(backend))


def test_flex_candidate_agrees(device):
    """FlexAttention on the concatenated K/V (eager on the CPU, compiled on the GPU)."""
    from attention_cases import flex, kernel

    args = _attention_inputs(device)
    torch.testing.assert_close(flex(compiled=device != "cpu")(*args), kernel(*args), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rope", [False, True], ids=["copy", "rope"])
def test_refresh_candidates_agree(device, rope):
    """The index_copy_ baseline writes the kernel's caches, bit for bit."""
    from refresh_cases import CANDIDATES

    B, Lmax, H, D, bs = 2, 64, 2, 64, 8
    k_new, v_new = (torch.randn(B, 40, H, D, device=device).half() for _ in range(2))
    block_ids = torch.tensor([[2, 5, 3], [4, 6, 7]], device=device)
    new_start = torch.tensor([16, 24], device=device)
    cos = sin = None
    if rope:
        angles = torch.rand(40, D, device=device) * 10
        cos, sin = angles.cos(), angles.sin()
    results = {}
    for name, fn in CANDIDATES.items():
        caches = tuple(torch.full((B, Lmax, H, D), float("nan"), device=device).half() for _ in range(2))
        fn(*caches, k_new, v_new, block_ids, bs, new_start, cos, sin)
        results[name] = caches
    ref = results.pop("triton")
    for name, caches in results.items():
        for got, want in zip(caches, ref):
            assert torch.equal(got.view(torch.int16), want.view(torch.int16)), name
