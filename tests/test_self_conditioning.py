"""Self-conditioning of uniform-state models (DiffusionGemma's gated MLP of the previous step's soft
embedding): the formula, None == zeros, ragged rows, the cache, the checkpoint, the errors."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from dllm_kernels.models import CacheWrite, DiffusionLM, load_checkpoint, save_checkpoint, tiny

IMPLS = ["sdpa", "ops"]
TOL = dict(atol=2e-5, rtol=0)
SC_NAMES = {
    "self_conditioning.pre_norm.weight",
    "self_conditioning.gate_proj.weight",
    "self_conditioning.up_proj.weight",
    "self_conditioning.down_proj.weight",
}


def make(impl="sdpa", block_size=None):
    torch.manual_seed(0)
    config = dataclasses.replace(tiny(), uniform_state=True, self_conditioning_size=48, block_size=block_size)
    m = DiffusionLM(config, attn_impl=impl, backend="auto").eval()
    with torch.no_grad():  # a pre-norm weight that is not all ones, so the test sees it
        m.self_conditioning.pre_norm.weight.uniform_(0.5, 1.5)
    return m


def soft(m, B, L, seed=1):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(B, L, m.config.vocab_size, generator=g) / 0.6, -1)
    return probs @ m.embed_weight.detach()


def rms(x, w=None, eps=1e-5):
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x if w is None else x * w


@torch.no_grad()
def test_signal_is_diffusion_gemmas_gated_mlp():
    """Against vLLM's DiffusionGemmaSelfConditioning written out: the embedding the first layer sees."""
    m = make()
    x = torch.randint(0, m.config.vocab_size, (2, 12))
    s = soft(m, 2, 12)
    sc = m.self_conditioning
    seen = []
    hook = m.layers[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    m(x, soft_embeds=s)
    hook.remove()
    u = rms(s, sc.pre_norm.weight)
    signal = (F.gelu(u @ sc.gate_proj.weight.T, approximate="tanh") * (u @ sc.up_proj.weight.T)) @ sc.down_proj.weight.T
    want = rms(m.embed(x) + signal)  # post_norm: no weight
    torch.testing.assert_close(seen[0], want, atol=1e-5, rtol=1e-5)
    assert m.embed_weight is m.embed.weight and m.embed_weight.shape == (m.config.vocab_size, m.config.d_model)


@pytest.mark.parametrize("impl", IMPLS)
@torch.no_grad()
def test_none_is_zeros_and_the_signal_matters(impl):
    m = make(impl)
    x = torch.randint(0, m.config.vocab_size, (2, 16))
    none = m(x)
    assert torch.equal(none, m(x, soft_embeds=torch.zeros(2, 16, m.config.d_model)))
    assert torch.equal(none, m(x, soft_embeds=torch.zeros(2, 16, m.config.d_model, dtype=torch.float64)))
    assert not torch.allclose(none, m(x, soft_embeds=soft(m, 2, 16)), atol=1e-3)


@pytest.mark.parametrize("block_size", [None, 4], ids=["bidirectional", "block-causal"])
@pytest.mark.parametrize("impl", IMPLS)
@torch.no_grad()
def test_ragged_rows_match_single_rows(impl, block_size, monkeypatch):
    from dllm_kernels.models import transformer

    m = make(impl, block_size)
    B, L = 3, 12
    x = torch.randint(0, m.config.vocab_size, (B, L))
    s = soft(m, B, L)
    n = torch.tensor([12, 7, 0])
    rag = m(x, soft_embeds=s, kv_len=n)
    for b in range(2):
        alone = m(x[b : b + 1, : n[b]], soft_embeds=s[b : b + 1, : n[b]])
        torch.testing.assert_close(rag[b, : n[b]], alone[0], **TOL)
    # the CPU packing of the real rows gives exactly the padded layout's values
    monkeypatch.setattr(transformer, "_real_rows", lambda *args: None)
    padded = m(x, soft_embeds=s, kv_len=n)
    for b in range(2):
        assert torch.equal(rag[b, : n[b]], padded[b, : n[b]])


@pytest.mark.parametrize("block_size", [None, 4], ids=["bidirectional", "block-causal"])
@pytest.mark.parametrize("impl", IMPLS)
@torch.no_grad()
def test_cached_forward_matches_uncached(impl, block_size):
    m = make(impl, block_size)
    B, L, bs, s0 = 2, 16, 4, 8
    x = torch.randint(0, m.config.vocab_size, (B, L))
    s = soft(m, B, L)
    full = m(x, soft_embeds=s)
    cache = m.new_cache(B, L)
    zero = torch.zeros(B, dtype=torch.long)
    filled = m(x, cache=cache, cache_len=zero, write=CacheWrite(torch.arange(L // bs).expand(B, -1), bs), soft_embeds=s)
    torch.testing.assert_close(filled, full, **TOL)
    pos = torch.arange(s0, L).expand(B, -1)
    step = m(x[:, s0:], pos, cache=cache, cache_len=torch.full((B,), s0), soft_embeds=s[:, s0:])
    torch.testing.assert_close(step, full[:, s0:], **TOL)


def test_checkpoint_round_trip(tmp_path):
    m = make()
    save_checkpoint(m, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["uniform_state"] is True and config["self_conditioning_size"] == 48
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert SC_NAMES <= set(f.keys())
        assert not any(k.startswith("self_conditioning.post_norm") for k in f.keys())
    loaded = load_checkpoint(tmp_path, attn_impl="sdpa")
    assert loaded.config == m.config
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randint(0, m.config.vocab_size, (2, 10))
    with torch.no_grad():
        assert torch.equal(loaded(x, soft_embeds=soft(m, 2, 10)), m(x, soft_embeds=soft(m, 2, 10)))


def test_models_without_self_conditioning_are_unchanged(tmp_path):
    torch.manual_seed(0)
    m = DiffusionLM(tiny(), attn_impl="sdpa")
    assert m.self_conditioning is None and not any(k.startswith("self_conditioning") for k in m.state_dict())
    assert not m.config.uniform_state and m.config.self_conditioning_size is None
    # a config.json written before the fields existed loads with the defaults
    save_checkpoint(m, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["uniform_state"], config["self_conditioning_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(tmp_path).config == m.config


def test_errors():
    torch.manual_seed(0)
    plain = DiffusionLM(tiny(), attn_impl="sdpa")
    x = torch.randint(0, 60, (2, 6))
    with pytest.raises(ValueError, match=r"^soft_embeds: this model has no self-conditioning"):
        plain(x, soft_embeds=torch.zeros(2, 6, 32))
    m = make()
    for bad in (torch.zeros(2, 5, 32), torch.zeros(2, 6, 31), torch.zeros(2, 6, 32, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"^soft_embeds must be a float tensor of shape \[2, 6, 32\]"):
            m(x, soft_embeds=bad)
    with pytest.raises(ValueError, match="self_conditioning_size must be a positive int or None"):
        dataclasses.replace(tiny(), self_conditioning_size=0)
