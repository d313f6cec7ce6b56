"""Tiny random checkpoints written in exactly the public LLaDA / Dream / Fast-dLLM v2 / SDAR /
Qwen2 / Qwen3 formats (config.json keys, parameter names, shards and index, tokenizer and
generation-config files): test and demo helpers."""

from __future__ import annotations

import json
import math
import pathlib
from dataclasses import dataclass

import torch
from safetensors.torch import save_file

from .config import ModelConfig
from .hf import (
    DREAM,
    DREAM_7B_CONFIG,
    DREAM_SPECIAL_TOKENS,
    FAST_DLLM_V2,
    FAST_DLLM_V2_7B_CONFIG,
    FAST_DLLM_V2_SPECIAL_TOKENS,
    GENERATION_CONFIG,
    INDEX,
    LLADA,
    LLADA_8B_CONFIG,
    LLADA_SPECIAL_TOKENS,
    QWEN2,
    QWEN2_1_5B_CONFIG,
    QWEN3,
    QWEN3_1_7B_CONFIG,
    QWEN_SPECIAL_TOKENS,
    SDAR,
    SDAR_4B_CONFIG,
    SDAR_SPECIAL_TOKENS,
    SINGLE,
    config_from_hf,
    hf_parameter_names,
)
from .tokenizer import _byte_alphabet, _byte_level_bpe
from .transformer import DiffusionLM

_TINY_MERGES = ["Ġ t", "h e", "Ġt he", "i n"]  # a few merges, so that encoding exercises BPE


@dataclass(frozen=True)
class TinyCheckpoint:
    """What a tiny writer produced: the directory, the :class:`ModelConfig` its config.json maps
    to, and its fp32 tensors under :class:`DiffusionLM`'s parameter names."""

    path: pathlib.Path
    config: ModelConfig
    state: dict[str, torch.Tensor]

    def model(self, **kwargs) -> DiffusionLM:
        """A :class:`DiffusionLM` built directly from the written tensors (the oracle of a load)."""
        model = DiffusionLM(self.config, **kwargs)
        model.load_state_dict(self.state)
        return model.eval()


def _special_ids(real: dict[str, int], real_vocab: int, vocab_size: int, first_free: int) -> dict[str, int]:
    """The release's special-token ids at the real vocabulary size, else packed right after the
    tiny base vocabulary in the release's order."""
    if vocab_size == real_vocab:
        return dict(real)
    if vocab_size < first_free + len(real):
        raise ValueError(
            f"vocab_size must be >= {first_free + len(real)} (byte-level base vocabulary + "
            f"{len(real)} special tokens) or exactly {real_vocab}, got {vocab_size}"
        )
    return {t: first_free + k for k, t in enumerate(real)}


def _base_vocab() -> dict[str, int]:
    vocab = {c: i for i, c in enumerate(_byte_alphabet())}
    for m in _TINY_MERGES:
        vocab["".join(m.split())] = len(vocab)
    return vocab


def _random_state(config: ModelConfig, seed: int, head_scale: float, attn_scale: float) -> dict[str, torch.Tensor]:
    """Seeded fp32 tensors (deterministic across machines: one CPU generator, fixed order):
    norms near 1, projections ~ N(0, 1/fan_in), embeddings ~ N(0, 1), biases ~ N(0, 0.1^2).

    Two knobs make a random model behave less like noise. ``head_scale``: the LM head is
    ~ N(0, head_scale^2 / d_model), so the logits of a normalised state have std ``head_scale``
    (larger: confident, max probabilities near 1). ``attn_scale`` multiplies q/k/o_proj: sharper,
    RoPE-position-dependent attention whose output outweighs the token's own embedding, so that
    masked positions propose different tokens that depend on their decoded neighbours. A tied LM
    head is the embedding (``head_scale`` does not apply)."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in DiffusionLM(config).state_dict().items()}
    state = {}
    for name, shape in shapes.items():
        x = torch.randn(shape, generator=g)
        if name.endswith("norm.weight"):
            x = 1 + 0.1 * x
        elif name.endswith(".bias"):
            x = 0.1 * x
        elif name == "lm_head.weight":
            x = x * head_scale / math.sqrt(config.d_model)
        elif name != "embed.weight":
            x = x / math.sqrt(shape[1])
            if name.endswith(("q_proj.weight", "k_proj.weight", "o_proj.weight")):
                x = x * attn_scale
        state[name] = x
    if config.tie_embeddings:  # one tensor, stored once (the embedding), as in a tied release
        state["lm_head.weight"] = state["embed.weight"]
    return state


def _write_weights(path: pathlib.Path, fmt: str, ckpt: TinyCheckpoint, n_shards: int) -> None:
    """The tensors under the release's names: ``model.safetensors`` (n_shards == 1), or
    ``model-0000k-of-0000n.safetensors`` shards filled in module order and the index."""
    with torch.device("meta"):
        names = hf_parameter_names(fmt, DiffusionLM(ckpt.config))
    tensors = [(theirs, ckpt.state[ours].contiguous()) for ours, theirs in names.items()]
    if n_shards == 1:
        save_file(dict(tensors), str(path / SINGLE), metadata={"format": "pt"})
        return
    total = sum(t.numel() * t.element_size() for _, t in tensors)
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n_shards)]
    done = 0
    for name, t in tensors:  # shard k takes the tensors that start in its 1/n of the bytes
        shards[min(done * n_shards // total, n_shards - 1)][name] = t
        done += t.numel() * t.element_size()
    if not all(shards):
        raise ValueError(f"n_shards={n_shards} leaves a shard empty for {len(tensors)} tensors")
    weight_map = {}
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file(shard, str(path / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _write_json(file: pathlib.Path, obj: dict) -> None:
    file.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class _Release:
    """What a tiny writer takes from a release: its config.json and special tokens, the
    config.json keys that each size argument sets, the special token behind each token-id key,
    the default ``n_kv_heads`` (None: ``n_heads``), the tokenizer files (``"json"``:
    ``tokenizer.json``; ``"vocab"``: ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json``),
    and its ``generation_config.json`` (None: none written)."""

    config: dict
    special_tokens: dict[str, int]
    size_keys: dict[str, tuple[str, ...]]
    token_keys: dict[str, str]
    n_kv_heads: int | None
    tokenizer: str = "json"
    generation: dict | None = None


_QWEN_SIZE_KEYS = {
    "d_model": ("hidden_size",),
    "n_layers": ("num_hidden_layers", "max_window_layers"),
    "n_heads": ("num_attention_heads",),
    "n_kv_heads": ("num_key_value_heads",),
    "ffn_dim": ("intermediate_size",),
    "vocab_size": ("vocab_size",),
    "max_seq_len": ("max_position_embeddings",),
}
_QWEN3_SIZE_KEYS = {**_QWEN_SIZE_KEYS, "head_dim": ("head_dim",)}
_CHAT_TOKEN_KEYS = {"bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>"}
# generation_config.json: eos_token_id [<|im_end|>, <|endoftext|>], pad <|endoftext|>
_CHAT_GENERATION = {
    "bos_token_id": "<|endoftext|>",
    "eos_token_id": ["<|im_end|>", "<|endoftext|>"],
    "pad_token_id": "<|endoftext|>",
}


_RELEASES = {
    LLADA: _Release(
        LLADA_8B_CONFIG,
        LLADA_SPECIAL_TOKENS,
        size_keys={
            "d_model": ("d_model",),
            "n_layers": ("n_layers",),
            "n_heads": ("n_heads",),
            "n_kv_heads": ("n_kv_heads",),
            "ffn_dim": ("mlp_hidden_size",),
            "vocab_size": ("vocab_size", "embedding_size"),
            "max_seq_len": ("max_sequence_length",),
        },
        token_keys={"mask_token_id": "<|mdm_mask|>", "eos_token_id": "<|endoftext|>", "pad_token_id": "<|endoftext|>"},
        n_kv_heads=None,  # LLaDA-8B: no grouped-query attention
    ),
    DREAM: _Release(
        DREAM_7B_CONFIG,
        DREAM_SPECIAL_TOKENS,
        size_keys=_QWEN_SIZE_KEYS,  # Dream-7B's config.json uses Qwen2's keys
        token_keys={
            "mask_token_id": "<|mask|>",
            **dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id"), "<|endoftext|>"),
        },
        n_kv_heads=2,  # grouped, as Dream-7B (28 heads, 4 KV heads)
        tokenizer="vocab",
    ),
    FAST_DLLM_V2: _Release(
        FAST_DLLM_V2_7B_CONFIG,
        FAST_DLLM_V2_SPECIAL_TOKENS,
        size_keys={**_QWEN_SIZE_KEYS, "block_size": ("bd_size",)},
        token_keys={**_CHAT_TOKEN_KEYS, "pad_token_id": "<|im_end|>"},
        n_kv_heads=2,
        tokenizer="vocab",  # vocab.json + merges.txt + tokenizer_config.json (Qwen2Tokenizer)
        generation={
            **_CHAT_GENERATION,
            "do_sample": True,
            "repetition_penalty": 1.05,
            "temperature": 0.7,
            "top_k": 20,
            "top_p": 0.8,
            "transformers_version": "4.53.1",
        },
    ),
    SDAR: _Release(
        SDAR_4B_CONFIG,
        SDAR_SPECIAL_TOKENS,
        size_keys={**_QWEN3_SIZE_KEYS, "block_size": ("block_size",)},
        token_keys={"bos_token_id": "<|endoftext|>", "eos_token_id": "<|endoftext|>", "mask_token_id": "<|MASK|>"},
        n_kv_heads=2,
        generation={
            **_CHAT_GENERATION,
            "do_sample": True,
            "temperature": 0.6,
            "top_k": 20,
            "top_p": 0.95,
            "transformers_version": "4.51.0",
        },
    ),
    QWEN2: _Release(
        QWEN2_1_5B_CONFIG,
        QWEN_SPECIAL_TOKENS,
        size_keys=_QWEN_SIZE_KEYS,
        token_keys=_CHAT_TOKEN_KEYS,
        n_kv_heads=2,
        generation=_CHAT_GENERATION,
    ),
    QWEN3: _Release(
        QWEN3_1_7B_CONFIG,
        QWEN_SPECIAL_TOKENS,
        size_keys=_QWEN3_SIZE_KEYS,
        token_keys=_CHAT_TOKEN_KEYS,
        n_kv_heads=2,
        generation=_CHAT_GENERATION,
    ),
}
_ALIASES = {"fast_dllm_v2": FAST_DLLM_V2}


def write_tiny_checkpoint(
    path,
    model_type: str,
    *,
    vocab_size: int = 320,
    d_model: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    ffn_dim: int = 64,
    max_seq_len: int = 256,
    n_shards: int = 2,
    seed: int = 0,
    head_scale: float = 1.0,
    attn_scale: float = 1.0,
    head_dim: int | None = None,
    block_size: int | None = None,
) -> TinyCheckpoint:
    """A random checkpoint in the format of the release whose config.json ``model_type`` is
    ``model_type`` (``"llada"``: GSAI-ML/LLaDA-8B-Instruct; ``"Dream"``:
    Dream-org/Dream-v0-Instruct-7B; ``"Fast_dLLM_Qwen"``, alias ``"fast_dllm_v2"``:
    Efficient-Large-Model/Fast_dLLM_v2_7B; ``"sdar"``: JetLM/SDAR-4B-Chat; ``"qwen2"``:
    Qwen2.5-1.5B-Instruct; ``"qwen3"``: Qwen3-1.7B), tiny; :func:`write_tiny_llada` and
    :func:`write_tiny_dream` say what those two write.

    The Qwen formats: Qwen2 / Qwen3 parameter names (q/k/v biases; q/k norms), a
    ``generation_config.json`` whose ``eos_token_id`` list is ``[<|im_end|>, <|endoftext|>]``,
    the tokenizer files of the release (Fast-dLLM v2: ``vocab.json`` + ``merges.txt`` +
    ``tokenizer_config.json`` with ``|<MASK>|``; SDAR, Qwen2, Qwen3: ``tokenizer.json``; Qwen2 and
    Qwen3 get an A2D ``<|MASK|>`` token, since a plain Qwen checkpoint has no mask).
    ``head_dim`` (None: ``d_model // n_heads``) is written by the Qwen3-layout formats, which
    have the key, and must be ``d_model // n_heads`` elsewhere; ``block_size`` (None: the
    release's, 32 / 4) sets Fast-dLLM v2's ``bd_size`` and SDAR's ``block_size`` and is refused
    by the formats without such a key.

    ``config.json`` holds all of the release's keys with the tiny sizes; the weights are written
    under the release's names (``n_shards`` > 1: shards + ``model.safetensors.index.json``; 1:
    ``model.safetensors``); the tokenizer is a byte-level BPE with the release's special tokens,
    at the release's ids when ``vocab_size`` is the release's, else right after the 260-token
    base vocabulary. ``n_kv_heads`` None: LLaDA's ``n_heads``, Dream's 2. ``head_scale`` and
    ``attn_scale`` shape the random weights (:func:`_random_state`); the output is a
    deterministic function of the arguments.
    """
    model_type = _ALIASES.get(model_type, model_type)
    if model_type not in _RELEASES:
        raise ValueError(f"model_type must be one of {sorted(_RELEASES) + sorted(_ALIASES)}, got {model_type!r}")
    release = _RELEASES[model_type]
    path = pathlib.Path(path)
    base = _base_vocab()
    special = _special_ids(release.special_tokens, release.config["vocab_size"], vocab_size, len(base))
    if n_kv_heads is None:
        n_kv_heads = release.n_kv_heads or n_heads
    if head_dim is None:
        head_dim = d_model // n_heads
    elif "head_dim" not in release.size_keys and head_dim * n_heads != d_model:
        raise ValueError(f"head_dim must be d_model // n_heads in the {model_type} format (no head_dim key)")
    if block_size is not None and "block_size" not in release.size_keys:
        raise ValueError(f"block_size: the {model_type} format has no block size key")
    sizes = dict(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        ffn_dim=ffn_dim,
        vocab_size=vocab_size,
        max_seq_len=max_seq_len,
        head_dim=head_dim,
        block_size=block_size,
    )
    hf = dict(release.config)
    for size, keys in release.size_keys.items():
        if sizes[size] is not None:
            hf.update(dict.fromkeys(keys, sizes[size]))
    hf.update({key: special[token] for key, token in release.token_keys.items()})
    if "layer_types" in hf:  # Fast-dLLM v2: one entry per layer
        hf["layer_types"] = ["full_attention"] * n_layers
    generation = None
    if release.generation is not None:
        ids = lambda v: [special[t] for t in v] if isinstance(v, list) else special.get(v, v)  # noqa: E731
        generation = {k: ids(v) if k.endswith("token_id") else v for k, v in release.generation.items()}
    path.mkdir(parents=True, exist_ok=True)
    config = config_from_hf(hf, special, generation)
    ckpt = TinyCheckpoint(path, config, _random_state(config, seed, head_scale, attn_scale))
    _write_json(path / "config.json", hf)
    if generation is not None:
        _write_json(path / GENERATION_CONFIG, generation)
    _write_weights(path, model_type, ckpt, n_shards)
    _write_tokenizer(path, model_type, base, special, max_seq_len)
    return ckpt


def write_tiny_llada(path, **sizes) -> TinyCheckpoint:
    """A random LLaDA checkpoint in the format of GSAI-ML/LLaDA-8B-Instruct, tiny (``sizes``: the
    keyword arguments of :func:`write_tiny_checkpoint`; ``n_kv_heads`` defaults to ``n_heads``).

    Writes ``config.json`` (all of LLaDA-8B's keys, tiny sizes), the weights under LLaDA's names
    and a byte-level BPE ``tokenizer.json`` with LLaDA's six special tokens. At ``vocab_size``
    126464 the special ids are LLaDA's own (mask 126336, EOS 126081, EoT 126348: the ids the
    public decoders hard-code); otherwise they follow the 260-token base vocabulary.
    """
    return write_tiny_checkpoint(path, LLADA, **sizes)


def write_tiny_dream(path, **sizes) -> TinyCheckpoint:
    """A random Dream checkpoint in the format of Dream-org/Dream-v0-Instruct-7B, tiny (``sizes``:
    the keyword arguments of :func:`write_tiny_checkpoint`; ``n_kv_heads`` defaults to 2).

    Writes ``config.json`` (Dream-7B's keys, tiny sizes), the weights under Dream's names and
    Dream's tokenizer files: ``vocab.json`` + ``merges.txt`` (a byte-level BPE) and
    ``tokenizer_config.json`` whose ``added_tokens_decoder`` holds the special tokens (at Dream's
    ids when ``vocab_size`` is 152064, else right after the base vocabulary, as in Dream).
    """
    return write_tiny_checkpoint(path, DREAM, **sizes)


def _write_tokenizer(path: pathlib.Path, fmt: str, base: dict[str, int], special: dict[str, int], max_seq_len: int):
    """A ``tokenizer.json`` (LLaDA, SDAR, Qwen2, Qwen3), or ``vocab.json`` + ``merges.txt`` +
    ``tokenizer_config.json`` (Dream, Fast-dLLM v2): the byte-level BPE ``base`` +
    :data:`_TINY_MERGES`, ``special``."""
    if _RELEASES[fmt].tokenizer == "json":
        _write_json(path / "tokenizer.json", _byte_level_bpe(base, _TINY_MERGES, special))
    else:
        (path / "vocab.json").write_text(json.dumps(base, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_TINY_MERGES) + "\n", encoding="utf-8")
        added = {
            str(i): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t, i in special.items()
        }
        eos = "<|endoftext|>"
        if fmt == FAST_DLLM_V2:  # Qwen2.5-Instruct's tokenizer_config.json plus the mask token
            _write_json(
                path / "tokenizer_config.json",
                {
                    "add_bos_token": False,
                    "add_prefix_space": False,
                    "added_tokens_decoder": added,
                    "additional_special_tokens": ["|<MASK>|"],
                    "bos_token": None,
                    "clean_up_tokenization_spaces": False,
                    "eos_token": "<|im_end|>",
                    "errors": "replace",
                    "model_max_length": max_seq_len,
                    "pad_token": eos,
                    "split_special_tokens": False,
                    "tokenizer_class": "Qwen2Tokenizer",
                    "unk_token": None,
                },
            )
            return
        _write_json(
            path / "tokenizer_config.json",
            {
                "added_tokens_decoder": added,
                "bos_token": "<|beginoftext|>",
                "eos_token": eos,
                "pad_token": eos,
                "mask_token": "<|mask|>",
                "unk_token": None,
                "errors": "replace",
                "split_special_tokens": False,
                "clean_up_tokenization_spaces": False,
                "model_max_length": max_seq_len,
                "tokenizer_class": "DreamTokenizer",
                "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
            },
        )
