"""dllm_kernels.compat: the peers' helper signatures, backed by the kernels."""

import pytest
import torch

from dllm_kernels.compat import get_num_transfer_tokens, get_transfer_index, get_transfer_index_entropy


def peers_num_transfer_tokens(mask_index, steps):
    """LLaDA's get_num_transfer_tokens, as written in the public repos (loop over rows)."""
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base, remainder = mask_num // steps, mask_num % steps
    out = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        out[i, : remainder[i]] += 1
    return out


def test_num_transfer_tokens_matches_llada():
    mask = torch.rand(6, 33) < 0.6
    for steps in (1, 4, 7, 32):
        assert torch.equal(get_num_transfer_tokens(mask, steps), peers_num_transfer_tokens(mask, steps))


def _case(device, B=3, L=20, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, L, V, generator=g) * 4).to(device)
    x = torch.randint(0, V - 1, (B, L), generator=g).to(device)
    mask_index = (torch.rand(B, L, generator=g) < 0.6).to(device)
    mask_index[:, 15:] = False  # positions after the block, as the peers restrict them
    return logits, x, mask_index


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_threshold_rule(device, backend):
    logits, x, mask = _case(device)
    x0, ti = get_transfer_index(logits, 0.0, "low_confidence", mask, x, None, threshold=0.7, backend=backend)
    p = torch.softmax(logits.double().cpu(), -1)
    conf, tok = p.max(-1)
    conf = torch.where(mask.cpu(), conf, -1.0)
    expect = (conf >= 0.7) | (torch.arange(20)[None] == conf.argmax(-1, keepdim=True))
    assert torch.equal(ti.cpu(), expect & mask.cpu())
    assert torch.equal(x0.cpu(), torch.where(mask.cpu(), tok, x.cpu()))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_topk_rule(device, backend):
    logits, x, mask = _case(device, seed=1)
    k = torch.tensor([[2], [0], [5]], device=device)
    _, ti = get_transfer_index(logits, 0.0, "low_confidence", mask, x, k, backend=backend)
    p = torch.softmax(logits.double().cpu(), -1).max(-1).values
    p = torch.where(mask.cpu(), p, -1.0)
    for b, kb in enumerate([2, 0, 5]):
        top = set(p[b].topk(kb).indices.tolist()) if kb else set()
        assert set(ti[b].nonzero().flatten().tolist()) == top


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_entropy_rule(device, backend):
    logits, x, mask = _case(device, seed=2)
    _, ti = get_transfer_index_entropy(logits, 0.0, "low_confidence", mask, x, None, 1.0, backend=backend)
    p = torch.softmax(logits.double().cpu(), -1)
    h = -(p * torch.log(p + 1e-12)).sum(-1)
    h = torch.where(mask.cpu(), h, float("inf"))
    expect = ((h <= 1.0) | (torch.arange(20)[None] == h.argmin(-1, keepdim=True))) & mask.cpu()
    assert torch.equal(ti.cpu(), expect)


def test_errors():
    logits, x, mask = _case("cpu")
    with pytest.raises(ValueError, match="low_confidence"):
        get_transfer_index(logits, 0.0, "random", mask, x, None, 0.9)
    with pytest.raises(ValueError, match="num_transfer_tokens"):
        get_transfer_index(logits, 0.0, "low_confidence", mask, x, None)
    with pytest.raises(ValueError, match="entropy_threshold"):
        get_transfer_index_entropy(logits, 0.0, "low_confidence", mask, x, None, None)
