"""Public LLaDA / Dream checkpoint formats: tiny checkpoints in the real format load back into the
model they were written from, the real-size config.json files map to the presets, tokenizers round
trip, and malformed directories fail with errors that name the problem."""

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dllm_kernels.models import (
    dream_7b,
    llada_8b,
    load_pretrained,
    load_tokenizer,
    save_checkpoint,
    write_tiny_dream,
    write_tiny_llada,
)
from dllm_kernels.models.hf import (
    DREAM_7B_CONFIG,
    DREAM_SPECIAL_TOKENS,
    LLADA_8B_CONFIG,
    LLADA_SPECIAL_TOKENS,
    config_from_hf,
)

WRITERS = {"llada": write_tiny_llada, "dream": write_tiny_dream}
INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{(format, n_shards): TinyCheckpoint}, written once for the module."""
    return {
        (fmt, n): w(tmp_path_factory.mktemp(f"{fmt}{n}"), n_shards=n, seed=n)
        for fmt, w in WRITERS.items()
        for n in (1, 2)
    }


@pytest.mark.parametrize("n_shards", [1, 2], ids=["single", "sharded"])
@pytest.mark.parametrize("fmt", ["llada", "dream"])
@torch.no_grad()
def test_round_trip_logits(tiny, fmt, n_shards):
    ck = tiny[fmt, n_shards]
    files = {p.name for p in ck.path.iterdir()}
    assert (INDEX in files) == (n_shards > 1) and ("model.safetensors" in files) == (n_shards == 1)
    model = load_pretrained(ck.path, attn_impl="sdpa")
    assert model.config == ck.config
    x = torch.randint(0, ck.config.vocab_size, (2, 11))
    assert torch.equal(model(x), ck.model(attn_impl="sdpa")(x))


@torch.no_grad()
def test_kv_heads_default_per_release_and_grouped_llada_round_trips(tiny, tmp_path):
    """n_kv_heads defaults to n_heads for LLaDA (as LLaDA-8B) and to 2 for Dream; a grouped
    LLaDA checkpoint (config.json's n_kv_heads) loads to the written model."""
    assert (tiny["llada", 1].config.n_heads, tiny["llada", 1].config.n_kv_heads) == (4, 4)
    assert (tiny["dream", 1].config.n_heads, tiny["dream", 1].config.n_kv_heads) == (4, 2)
    ck = write_tiny_llada(tmp_path, n_layers=1, n_kv_heads=2, n_shards=1)
    assert json.loads((tmp_path / "config.json").read_text())["n_kv_heads"] == 2
    model = load_pretrained(tmp_path, attn_impl="sdpa")
    assert model.config == ck.config and ck.config.n_kv_heads == 2
    x = torch.randint(0, ck.config.vocab_size, (2, 7))
    assert torch.equal(model(x), ck.model(attn_impl="sdpa")(x))


def _tensor_names(path):
    if (path / INDEX).exists():
        return set(json.loads((path / INDEX).read_text())["weight_map"])
    return set(load_file(path / "model.safetensors"))


def test_llada_tensor_names_and_shards(tiny):
    """The names of GSAI-ML/LLaDA-8B-Instruct (OLMo style, untied ff_out head), spelled out here."""
    ck = tiny["llada", 2]
    block = ["attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out"]
    want = {f"model.transformer.{n}.weight" for n in ("wte", "ln_f", "ff_out")}
    want |= {f"model.transformer.blocks.{i}.{n}.weight" for i in range(2) for n in block}
    assert _tensor_names(ck.path) == want
    index = json.loads((ck.path / INDEX).read_text())
    assert set(index["weight_map"].values()) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in ck.state.values())
    # the SwiGLU operand order: ff_proj is the activated (gate) projection, up_proj the linear one
    shard = load_file(ck.path / index["weight_map"]["model.transformer.blocks.0.ff_proj.weight"])
    assert torch.equal(shard["model.transformer.blocks.0.ff_proj.weight"], ck.state["layers.0.gate_proj.weight"])


def test_dream_tensor_names(tiny):
    """The names of Dream-org/Dream-v0-Instruct-7B (Qwen2 style, q/k/v biases, untied lm_head)."""
    ck = tiny["dream", 1]
    layer = [
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "self_attn.o_proj.weight",
        *(f"self_attn.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")),
        *(f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
    ]
    want = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    want |= {f"model.layers.{i}.{n}" for i in range(2) for n in layer}
    assert _tensor_names(ck.path) == want


def test_real_size_configs_map_to_presets():
    # config.json says what the presets leave out: LLaDA pads with EOS, Dream's RoPE covers 131072 positions
    assert config_from_hf(LLADA_8B_CONFIG, LLADA_SPECIAL_TOKENS) == dataclasses.replace(llada_8b(), pad_id=126081)
    assert config_from_hf(DREAM_7B_CONFIG, DREAM_SPECIAL_TOKENS) == dataclasses.replace(dream_7b(), max_seq_len=131072)


def test_real_special_ids_at_real_vocab(tmp_path):
    """At the release's vocabulary size the tiny checkpoint uses the release's special ids."""
    ck = write_tiny_llada(tmp_path, vocab_size=126464, d_model=8, n_heads=2, ffn_dim=16, n_layers=1)
    assert (ck.config.mask_id, ck.config.eos_id, ck.config.eot_id) == (126336, 126081, 126348)
    tok = load_tokenizer(tmp_path)
    assert tok.special_ids == LLADA_SPECIAL_TOKENS
    assert tok.encode("a<|mdm_mask|><|eot_id|>") == [tok.encode("a")[0], 126336, 126348]


@pytest.mark.parametrize("fmt", ["llada", "dream"])
def test_tokenizer_round_trip(tiny, fmt):
    ck = tiny[fmt, 1]
    tok = load_tokenizer(ck.path)
    text = "the tiny model, in Zürich\n<|endoftext|>  x"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text.replace("<|endoftext|>", "")
    assert ids[-4] == tok.eos_id == ck.config.eos_id
    assert tok.mask_id == ck.config.mask_id and tok.encode("<|mdm_mask|>" if fmt == "llada" else "<|mask|>") == [
        tok.mask_id
    ]
    assert len(tok.encode(" the")) == 1  # a merge applies
    assert tok.eot_id == (ck.config.eot_id if fmt == "llada" else tok.special_ids["<|im_end|>"])


def test_dtype_and_native_format(tiny, tmp_path):
    model = load_pretrained(tiny["dream", 2].path, dtype=torch.bfloat16, attn_impl="sdpa")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rope_cos.dtype == torch.float32 and not model.rope_cos.is_meta
    save_checkpoint(model, tmp_path)
    native = load_pretrained(tmp_path, attn_impl="sdpa")
    assert native.config == model.config


def _drop_tensor(path):
    index = json.loads((path / INDEX).read_text())
    name = "model.transformer.blocks.1.up_proj.weight"
    shard = path / index["weight_map"].pop(name)
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard)
    (path / INDEX).write_text(json.dumps(index))


def _add_tensor(path):
    index = json.loads((path / INDEX).read_text())
    index["weight_map"]["model.transformer.blocks.0.q_norm.weight"] = "model-00001-of-00002.safetensors"
    (path / INDEX).write_text(json.dumps(index))


def _misplace_tensor(path):
    index = json.loads((path / INDEX).read_text())
    index["weight_map"]["model.transformer.wte.weight"] = "model-00002-of-00002.safetensors"
    (path / INDEX).write_text(json.dumps(index))


def _shrink_ffn(path):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "mlp_hidden_size": 48}))


def _edit_config(**changes):
    def edit(path):
        config = json.loads((path / "config.json").read_text())
        config.update(changes)
        (path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))

    return edit


MALFORMED = {
    "no config": (lambda p: (p / "config.json").unlink(), FileNotFoundError, "no config.json"),
    "bad json": (lambda p: (p / "config.json").write_text("{"), ValueError, "not valid JSON"),
    "unknown model_type": (_edit_config(model_type="llama"), ValueError, "model_type 'llama' is not one of"),
    "fused block": (_edit_config(block_type="sequential"), ValueError, "block_type='sequential' is not supported"),
    "flag missing": (_edit_config(rope=None), ValueError, "missing key 'rope'"),
    "no weights": (lambda p: [f.unlink() for f in p.glob("model*")], FileNotFoundError, "neither"),
    "missing shard": (
        lambda p: (p / "model-00002-of-00002.safetensors").unlink(),
        FileNotFoundError,
        "shard model-00002-of-00002.safetensors listed",
    ),
    "missing tensor": (_drop_tensor, ValueError, r"missing \[model.transformer.blocks.1.up_proj.weight\]"),
    "unexpected tensor": (_add_tensor, ValueError, r"unexpected \[model.transformer.blocks.0.q_norm.weight\]"),
    "misplaced tensor": (_misplace_tensor, ValueError, "places \\[model.transformer.wte.weight\\] here"),
    "wrong shape": (
        _shrink_ffn,
        ValueError,
        "blocks.0.ff_proj.weight has shape \\[64, 32\\], config.json implies \\[48, 32\\]",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_directory(tiny, tmp_path, case):
    mutate, error, message = MALFORMED[case]
    path = shutil.copytree(tiny["llada", 2].path, tmp_path / "ckpt")
    mutate(path)
    with pytest.raises(error, match=message):
        load_pretrained(path, attn_impl="sdpa")


def test_tiny_writer_is_deterministic(tmp_path):
    """The peer-fidelity data is keyed to a checkpoint that must be re-creatable bit for bit."""
    kwargs = dict(seed=3, head_scale=8.0, attn_scale=3.0)
    a, b = write_tiny_llada(tmp_path / "a", **kwargs), write_tiny_llada(tmp_path / "b", **kwargs)
    for file in a.path.iterdir():
        assert file.read_bytes() == (b.path / file.name).read_bytes(), file.name
    c = write_tiny_llada(tmp_path / "c", **{**kwargs, "seed": 4})
    assert not torch.equal(a.state["embed.weight"], c.state["embed.weight"])
