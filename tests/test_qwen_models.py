"""The Qwen2 / Qwen3 layouts and the block-diffusion checkpoints (Fast-dLLM v2, SDAR): tiny writers
in the published formats, loading, a naive re-implementation, the block-causal mask and the exact
``[cache | block]`` step.

Tolerance: fp32 everywhere; logits of two fp32 computations of the same math (different
association orders) agree within ``atol = rtol = 1e-4`` (the logits are O(1) to O(10))."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors import safe_open

from dllm_kernels.models import CacheWrite, DiffusionLM, load_pretrained, write_tiny_checkpoint
from dllm_kernels.models.hf import (
    FAST_DLLM_V2_7B_CONFIG,
    FAST_DLLM_V2_SPECIAL_TOKENS,
    QWEN3_1_7B_CONFIG,
    SDAR_4B_CONFIG,
    SDAR_SPECIAL_TOKENS,
    config_from_hf,
    hf_parameter_names,
)

TOL = dict(atol=1e-4, rtol=1e-4)
FORMATS = ["qwen2", "qwen3", "fast_dllm_v2", "sdar"]
QWEN3_LAYOUT = ("qwen3", "sdar")
# what each format's config must map to (tiny sizes; special ids packed after the 260-token base
# vocabulary in the order <|endoftext|> 260, <|im_start|> 261, <|im_end|> 262, mask 263)
EXPECTED = {
    "qwen2": dict(qkv_bias=True, qk_norm=False, logit_shift=False, block_size=None, tie_embeddings=True),
    "qwen3": dict(qkv_bias=False, qk_norm=True, logit_shift=False, block_size=None, tie_embeddings=True),
    "fast_dllm_v2": dict(qkv_bias=True, qk_norm=False, logit_shift=True, block_size=32, tie_embeddings=False),
    "sdar": dict(qkv_bias=False, qk_norm=True, logit_shift=False, block_size=4, tie_embeddings=False),
}
STOPS = {  # (mask, eos, eot): config.json's eos first, generation_config.json's other stop second
    "qwen2": (263, 262, 260),
    "qwen3": (263, 262, 260),
    "fast_dllm_v2": (263, 262, 260),  # mask from the tokenizer's |<MASK>| (config.json has none)
    "sdar": (263, 260, 262),  # mask from config.json's mask_token_id
}


def _write(tmp_path, fmt, **kw):
    # head_dim 16 (the attention op's smallest); Qwen3: 4 heads of 16 on d_model 32 (explicit
    # head_dim != d_model / heads), Qwen2: 2 heads of 16 (head_dim = d_model / heads); GQA in both
    qwen3 = fmt in QWEN3_LAYOUT
    kw.setdefault("head_dim", 16 if qwen3 else None)
    kw.setdefault("n_heads", 4 if qwen3 else 2)
    kw.setdefault("n_kv_heads", 2 if qwen3 else 1)
    kw.setdefault("seed", 3)
    return write_tiny_checkpoint(tmp_path / fmt, fmt, **kw)


def _tensors(path) -> dict[str, torch.Tensor]:
    """Every tensor of a written checkpoint, by its stored name."""
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out.update((n, f.get_tensor(n)) for n in f.keys())
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n_shards", [1, 2])
def test_load_round_trip(tmp_path, fmt, n_shards):
    ckpt = _write(tmp_path, fmt, n_shards=n_shards)
    model = load_pretrained(ckpt.path)
    assert model.config == ckpt.config
    for key, want in EXPECTED[fmt].items():
        assert getattr(model.config, key) == want, key
    c = model.config
    assert (c.mask_id, c.eos_id, c.eot_id) == STOPS[fmt]
    assert c.head_dim == 16 and c.n_heads == 2 * c.n_kv_heads
    oracle = ckpt.model()
    tokens = torch.randint(0, c.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(tokens), oracle(tokens))


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameter_names_cover_the_checkpoint(tmp_path, fmt):
    ckpt = _write(tmp_path, fmt)
    stored = set(_tensors(ckpt.path))
    with torch.device("meta"):
        names = hf_parameter_names({"fast_dllm_v2": "Fast_dLLM_Qwen"}.get(fmt, fmt), DiffusionLM(ckpt.config)).values()
    assert stored == set(names)  # every written tensor consumed, none missing
    layer = "model.layers.1.self_attn."
    assert {f"{layer}{p}_proj.weight" for p in "qkvo"} <= stored
    biases = {f"{layer}{p}_proj.bias" for p in "qkv"}
    norms = {f"{layer}q_norm.weight", f"{layer}k_norm.weight"}
    if fmt in QWEN3_LAYOUT:  # Qwen3: q/k norms, no biases at all
        assert norms <= stored and not any(n.endswith(".bias") for n in stored)
    else:  # Qwen2: q/k/v biases, none on o_proj, no norms
        assert biases <= stored and f"{layer}o_proj.bias" not in stored and not norms & stored
    assert ("lm_head.weight" in stored) == (not EXPECTED[fmt]["tie_embeddings"])
    assert {"model.embed_tokens.weight", "model.norm.weight", "model.layers.0.mlp.gate_proj.weight"} <= stored
    shapes = {n: t.shape for n, t in _tensors(ckpt.path).items()}
    c = ckpt.config
    assert shapes[f"{layer}q_proj.weight"] == (c.n_heads * 16, 32)
    assert shapes[f"{layer}k_proj.weight"] == (c.n_kv_heads * 16, 32)
    hd = c.head_dim
    if fmt in QWEN3_LAYOUT:
        assert shapes[f"{layer}q_norm.weight"] == (hd,)


def test_loader_is_strict_about_the_tensors(tmp_path):
    from safetensors.torch import save_file

    ckpt = _write(tmp_path, "sdar", n_shards=1)
    tensors = _tensors(ckpt.path)
    tensors.pop("model.layers.0.self_attn.k_norm.weight")
    save_file(tensors, str(ckpt.path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \[model.layers.0.self_attn.k_norm.weight\]"):
        load_pretrained(ckpt.path)


# ------------------------------------------------------------------------------------------------
# a naive re-implementation from the checkpoint files (their names, their config.json)


def _naive_logits(path, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Qwen2 / Qwen3 decoder in plain fp32 PyTorch, one query position at a time, straight from the
    checkpoint's tensors and config.json: block-causal (``block(key) <= block(query)`` by position)
    where the config names a block size, bidirectional otherwise; Fast-dLLM v2's logits shifted."""
    cfg = json.loads((path / "config.json").read_text())
    w = _tensors(path)
    fmt = cfg["model_type"]
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg.get("head_dim") or cfg["hidden_size"] // H
    eps, theta = cfg["rms_norm_eps"], float(cfg["rope_theta"])
    bs = cfg.get("bd_size") or cfg.get("block_size")

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    def rope(x, pos):  # x [H, D] at one position, HF rotate_half convention
        freqs = pos * theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
        cos, sin = torch.cat([freqs.cos(), freqs.cos()]).float(), torch.cat([freqs.sin(), freqs.sin()]).float()
        return x * cos + torch.cat([-x[:, D // 2 :], x[:, : D // 2]], -1) * sin

    out = []
    for toks, pos in zip(tokens, positions.tolist(), strict=True):
        h = w["model.embed_tokens.weight"][toks]  # [L, d]
        L = len(pos)
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = rms(h, w[p + "input_layernorm.weight"])
            q = lin(x, p + "self_attn.q_proj").view(L, H, D)
            k = lin(x, p + "self_attn.k_proj").view(L, Hkv, D)
            v = lin(x, p + "self_attn.v_proj").view(L, Hkv, D)
            if p + "self_attn.q_norm.weight" in w:
                q, k = rms(q, w[p + "self_attn.q_norm.weight"]), rms(k, w[p + "self_attn.k_norm.weight"])
            q = torch.stack([rope(q[t], pos[t]) for t in range(L)])
            k = torch.stack([rope(k[t], pos[t]) for t in range(L)])
            o = torch.zeros(L, H, D)
            for t in range(L):  # one query position at a time
                keys = [j for j in range(L) if bs is None or pos[j] // bs <= pos[t] // bs]
                for head in range(H):
                    g = head // (H // Hkv)
                    s = torch.stack([q[t, head] @ k[j, g] for j in keys]) / math.sqrt(D)
                    o[t, head] = (s.softmax(0)[:, None] * v[keys, g]).sum(0)
            h = h + lin(o.reshape(L, H * D), p + "self_attn.o_proj")
            x = rms(h, w[p + "post_attention_layernorm.weight"])
            act = torch.nn.functional.silu(lin(x, p + "mlp.gate_proj")) * lin(x, p + "mlp.up_proj")
            h = h + lin(act, p + "mlp.down_proj")
        h = rms(h, w["model.norm.weight"])
        logits = h @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T
        if fmt == "Fast_dLLM_Qwen":
            logits = torch.cat([logits[:1], logits[:-1]])
        out.append(logits)
    return torch.stack(out)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("attn_impl", ["ops", "sdpa"])
def test_forward_matches_naive_reimplementation(tmp_path, fmt, attn_impl):
    # block 4 for both block-diffusion formats: a 10-row window spans three blocks
    ckpt = _write(tmp_path, fmt, block_size=4 if fmt in ("fast_dllm_v2", "sdar") else None, attn_scale=2.0)
    model = load_pretrained(ckpt.path, attn_impl=attn_impl)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, model.config.vocab_size, (2, 10), generator=g)
    positions = torch.stack([torch.arange(10), torch.arange(3, 13)])  # row 1: blocks start mid-window
    with torch.no_grad():
        got = model(tokens, positions)
    torch.testing.assert_close(got, _naive_logits(ckpt.path, tokens, positions), **TOL)


# ------------------------------------------------------------------------------------------------
# the block-causal mask and the exact [cache | block] step


@pytest.mark.parametrize("attn_impl", ["ops", "sdpa"])
def test_block_causal_mask(tmp_path, attn_impl):
    ckpt = _write(tmp_path, "sdar", attn_scale=2.0)  # block 4
    model = load_pretrained(ckpt.path, attn_impl=attn_impl)
    tokens = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = model(tokens)
        for j in range(12):  # change token j: rows of earlier blocks keep their logits exactly
            t = tokens.clone()
            t[0, j] = (t[0, j] + 1) % 300
            diff = (model(t) - base).abs().amax(-1)[0]  # [12]
            blk = j // 4
            assert torch.equal(diff[: blk * 4], torch.zeros(blk * 4)), j
            assert bool((diff[blk * 4 :] > 0).all()), j  # its own block (both ways) and later ones
    # blocks follow the positions: the same 4 rows at positions 2..5 straddle two blocks
    with torch.no_grad():
        t2 = tokens[:, :4].clone()
        pos = torch.arange(2, 6)[None]
        a = model(t2, pos)
        t2[0, 3] = (t2[0, 3] + 1) % 300  # position 5, block 1: rows at positions 2, 3 (block 0) unchanged
        b = model(t2, pos)
    assert torch.equal(a[0, :2], b[0, :2]) and not torch.equal(a[0, 2], b[0, 2])


@pytest.mark.parametrize("fmt", ["fast_dllm_v2", "sdar"])
@pytest.mark.parametrize("attn_impl", ["ops", "sdpa"])
def test_cached_block_step_equals_full_block_causal_forward(tmp_path, fmt, attn_impl):
    """Completed blocks form an exact KV cache: prefill the first blocks into the cache, then
    forward each later block against ``[cache | block]`` (writing it after, as SDAR's store_kv
    pass); every block's logits equal the full block-causal forward's rows of that block."""
    bs, n_blocks, B = 4, 4, 2
    ckpt = _write(tmp_path, fmt, block_size=bs, attn_scale=2.0)
    model = load_pretrained(ckpt.path, attn_impl=attn_impl)
    # compare hidden-state rows one to one: the window shift of Fast-dLLM v2 is a separate matter
    model.config = dataclasses.replace(model.config, logit_shift=False)
    L = bs * n_blocks
    tokens = torch.randint(0, model.config.vocab_size, (B, L), generator=torch.Generator().manual_seed(4))
    pos = torch.arange(L).expand(B, L)
    with torch.no_grad():
        full = model(tokens, pos)
        cache = model.new_cache(B, L)
        prefill = 2 * bs  # the prompt's complete blocks
        model(
            tokens[:, :prefill],
            pos[:, :prefill],
            cache=cache,
            cache_len=torch.zeros(B, dtype=torch.long),
            write=CacheWrite(torch.arange(2).expand(B, 2), bs),
        )
        for b in range(2, n_blocks):
            rows = slice(b * bs, (b + 1) * bs)
            clen = torch.full((B,), b * bs)
            step = model(tokens[:, rows], pos[:, rows], cache=cache, cache_len=clen)
            torch.testing.assert_close(step, full[:, rows], atol=1e-5, rtol=1e-5)
            # the same step through the library's unmasked [cache | new rows] attention op (the
            # model read as bidirectional: within one block there is nothing to mask)
            bidir = DiffusionLM(dataclasses.replace(model.config, block_size=None), attn_impl="ops")
            bidir.load_state_dict(model.state_dict())
            torch.testing.assert_close(
                bidir(tokens[:, rows], pos[:, rows], cache=cache, cache_len=clen), full[:, rows], atol=1e-5, rtol=1e-5
            )
            new_start = torch.full((B,), b * bs)
            model(  # store the completed block
                tokens[:, rows],
                pos[:, rows],
                cache=cache,
                cache_len=clen,
                write=CacheWrite(torch.full((B, 1), b), bs, new_start=new_start),
            )


def test_fast_dllm_v2_shift_within_the_window(tmp_path):
    ckpt = _write(tmp_path, "fast_dllm_v2", block_size=4)
    model = load_pretrained(ckpt.path)
    unshifted = DiffusionLM(dataclasses.replace(model.config, logit_shift=False))
    unshifted.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 300, (1, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = model(tokens), unshifted(tokens)
    assert torch.equal(a[:, 1:], b[:, :-1]) and torch.equal(a[:, 0], b[:, 0])


def test_block_causal_sdpa_path_is_differentiable(tmp_path):
    ckpt = _write(tmp_path, "fast_dllm_v2", block_size=4)
    model = load_pretrained(ckpt.path, attn_impl="sdpa").train()
    tokens = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(6))
    model(tokens).logsumexp(-1).sum().backward()
    assert model.layers[0].q_proj.bias.grad is not None and torch.isfinite(model.layers[0].q_proj.bias.grad).all()


# ------------------------------------------------------------------------------------------------
# the real configs and the errors


def test_real_configs():
    gen = {"eos_token_id": [151645, 151643]}
    v2 = config_from_hf(FAST_DLLM_V2_7B_CONFIG, FAST_DLLM_V2_SPECIAL_TOKENS, gen)
    assert (v2.mask_id, v2.eos_id, v2.eot_id, v2.pad_id, v2.block_size) == (151665, 151645, 151643, 151645, 32)
    shape = (v2.d_model, v2.n_layers, v2.n_heads, v2.n_kv_heads, v2.head_dim, v2.ffn_dim)
    assert shape == (3584, 28, 28, 4, 128, 18944)
    assert v2.qkv_bias and v2.logit_shift and not v2.qk_norm and v2.vocab_size == 152064
    sdar = config_from_hf(SDAR_4B_CONFIG, SDAR_SPECIAL_TOKENS, gen)
    assert (sdar.mask_id, sdar.eos_id, sdar.eot_id, sdar.block_size) == (151669, 151643, 151645, 4)
    assert (sdar.d_model, sdar.n_heads, sdar.n_kv_heads, sdar.head_dim, sdar.ffn_dim) == (2560, 32, 8, 128, 9728)
    assert sdar.qk_norm and not sdar.qkv_bias and not sdar.logit_shift and sdar.rope_theta == 1e6
    q3 = config_from_hf(QWEN3_1_7B_CONFIG, SDAR_SPECIAL_TOKENS, gen)  # an A2D tokenizer's <|MASK|>
    assert (q3.mask_id, q3.block_size, q3.tie_embeddings, q3.head_dim) == (151669, None, True, 128)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="mask"):  # Fast-dLLM v2's mask id lives in its tokenizer
        config_from_hf(FAST_DLLM_V2_7B_CONFIG)
    with pytest.raises(ValueError, match="attention_bias"):
        config_from_hf({**SDAR_4B_CONFIG, "attention_bias": True})
    with pytest.raises(ValueError, match="layer_types"):
        config_from_hf({**FAST_DLLM_V2_7B_CONFIG, "layer_types": ["sliding_attention"]}, FAST_DLLM_V2_SPECIAL_TOKENS)
    with pytest.raises(ValueError, match="model_type must be one of"):
        write_tiny_checkpoint(tmp_path / "x", "qwen4")
    with pytest.raises(ValueError, match="block_size"):
        write_tiny_checkpoint(tmp_path / "x", "qwen2", block_size=4)
    with pytest.raises(ValueError, match="head_dim"):
        write_tiny_checkpoint(tmp_path / "x", "fast_dllm_v2", head_dim=16)
    with pytest.raises(ValueError, match="block_size"):
        dataclasses.replace(config_from_hf(SDAR_4B_CONFIG), block_size=0)
