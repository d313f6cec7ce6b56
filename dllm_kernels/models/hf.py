"""The public checkpoint formats of LLaDA-8B (``GSAI-ML/LLaDA-8B-*``), Dream-7B
(``Dream-org/Dream-v0-*-7B``), Fast-dLLM v2 (``Efficient-Large-Model/Fast_dLLM_v2_{1.5B,7B}``),
SDAR (``JetLM/SDAR-*-Chat``) and plain Qwen2 / Qwen3 layouts: their config.json mapped to
:class:`ModelConfig`, their parameter names mapped to :class:`DiffusionLM`'s, and loading them
from a local directory. (Their tokenizers:
:mod:`dllm_kernels.models.tokenizer`; tiny random checkpoints in these formats:
:mod:`dllm_kernels.models.tiny_checkpoints`.)

A checkpoint directory holds ``config.json`` and the weights, either one ``model.safetensors`` or
shards listed by ``model.safetensors.index.json`` (``{"metadata": {"total_size": bytes},
"weight_map": {tensor name: shard file}}``). ``config.json["model_type"]`` says whose parameter
names the shards use: ``"llada"`` (OLMo-style ``model.transformer.blocks.{i}.ff_proj``...),
``"Dream"``, ``"Fast_dLLM_Qwen"`` (Fast-dLLM v2), ``"qwen2"`` (Qwen2-style
``model.layers.{i}.self_attn.q_proj``...), ``"sdar"``, ``"qwen3"`` (the same plus
``self_attn.q_norm`` / ``k_norm``) or ``"dllm_kernels"`` (our own names,
:mod:`dllm_kernels.models.checkpoint`). Every key, name, shape and special token id, with
its source, is in ``FORMATS.md`` beside this file. Nothing here touches the network.
"""

from __future__ import annotations

import pathlib

import torch

from .checkpoint import MODEL_TYPE as NATIVE, _read_json, load_checkpoint, open_safetensors
from .config import ModelConfig
from .tokenizer import load_tokenizer
from .transformer import DiffusionLM, rope_tables

LLADA, DREAM = "llada", "Dream"  # config.json "model_type" of the two releases
FAST_DLLM_V2, SDAR = "Fast_dLLM_Qwen", "sdar"  # ... of Fast-dLLM v2 and SDAR
QWEN2, QWEN3 = "qwen2", "qwen3"  # ... of transformers' Qwen2 / Qwen2.5 and Qwen3 checkpoints
_QWEN2_LAYOUT = (DREAM, FAST_DLLM_V2, QWEN2)  # Qwen2 parameter names, q/k/v biases
_QWEN3_LAYOUT = (SDAR, QWEN3)  # Qwen3 parameter names, q/k RMSNorm, no biases
GENERATION_CONFIG = "generation_config.json"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

# config.json of GSAI-ML/LLaDA-8B-Instruct and Dream-org/Dream-v0-Instruct-7B (FORMATS.md), the
# templates of the tiny checkpoints and the test data of the real-size mapping.
LLADA_8B_CONFIG = {
    "activation_type": "silu",
    "alibi": False,
    "alibi_bias_max": 8.0,
    "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0,
    "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True,
    "auto_map": {
        "AutoConfig": "configuration_llada.LLaDAConfig",
        "AutoModel": "modeling_llada.LLaDAModelLM",
        "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
    },
    "bias_for_layer_norm": False,
    "block_group_size": 1,
    "block_type": "llama",
    "d_model": 4096,
    "embedding_dropout": 0.0,
    "embedding_size": 126464,
    "eos_token_id": 126081,
    "flash_attention": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "init_cutoff_factor": None,
    "init_device": "meta",
    "init_fn": "mitchell",
    "init_std": 0.02,
    "input_emb_norm": False,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "mask_token_id": 126336,
    "max_sequence_length": 4096,
    "mlp_hidden_size": 12288,
    "mlp_ratio": 4,
    "model_type": "llada",
    "multi_query_attention": None,
    "n_heads": 32,
    "n_kv_heads": 32,
    "n_layers": 32,
    "pad_token_id": 126081,
    "precision": "amp_bf16",
    "residual_dropout": 0.0,
    "rms_norm_eps": 1e-05,
    "rope": True,
    "rope_full_precision": True,
    "rope_theta": 500000.0,
    "scale_logits": False,
    "transformers_version": "4.46.3",
    "use_cache": False,
    "vocab_size": 126464,
    "weight_tying": False,
}
# Qwen2.5-7B's architecture, kept by both 7B releases built on it: Dream-7B and Fast_dLLM_v2_7B
_QWEN25_7B_CONFIG = {
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_window_layers": 28,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_sliding_window": False,
    "vocab_size": 152064,
}
DREAM_7B_CONFIG = {
    **_QWEN25_7B_CONFIG,
    "architectures": ["DreamModel"],
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "eos_token_id": 151643,
    "mask_token_id": 151666,
    "max_position_embeddings": 131072,
    "model_type": "Dream",
    "pad_token_id": 151643,
    "transformers_version": "4.46.2",
    "use_cache": False,
}
# special tokens of the two tokenizers (content -> id); LLaDA's <|eot_id|> is not in its config.json
LLADA_SPECIAL_TOKENS = {
    "<|startoftext|>": 126080,
    "<|endoftext|>": 126081,
    "<|mdm_mask|>": 126336,
    "<|start_header_id|>": 126346,
    "<|end_header_id|>": 126347,
    "<|eot_id|>": 126348,
}
DREAM_SPECIAL_TOKENS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|beginoftext|>": 151665,
    "<|mask|>": 151666,
}

# config.json of Efficient-Large-Model/Fast_dLLM_v2_7B and of JetLM's SDAR-4B-Chat (FORMATS.md;
# "layer_types" is the 7B's list of 28 "full_attention" entries, one per layer)
FAST_DLLM_V2_7B_CONFIG = {
    **_QWEN25_7B_CONFIG,
    "architectures": ["Fast_dLLM_QwenForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration.Fast_dLLM_QwenConfig",
        "AutoModel": "modeling.Fast_dLLM_QwenModel",
        "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM",
    },
    "bd_size": 32,
    "conplemenrary_mask": True,  # sic
    "eos_token_id": 151645,
    "layer_types": ["full_attention"] * 28,
    "max_position_embeddings": 32768,
    "model_type": "Fast_dLLM_Qwen",
    "pad_token_id": 151645,
    "transformers_version": "4.53.1",
    "use_cache": True,
}
SDAR_4B_CONFIG = {
    "architectures": ["SDARForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_sdar.SDARConfig",
        "AutoModel": "modeling_sdar.SDARModel",
        "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
    },
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_implementation": "flex_attention",
    "bos_token_id": 151643,
    "debug": False,
    "eos_token_id": 151643,
    "block_size": 4,
    "mask_token_id": 151669,
    "ep_size": 1,
    "fuse_cross_entropy": True,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2560,
    "initializer_range": 0.02,
    "intermediate_size": 9728,
    "max_position_embeddings": 32768,
    "max_window_layers": 36,
    "micro_forward": False,
    "model_type": "sdar",
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "skip_checkpoint": False,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.52.4",
    "use_cache": False,
    "use_deepep": False,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
# transformers' Qwen2.5-1.5B-Instruct and Qwen3-1.7B config.json (the bases of Fast_dLLM_v2_1.5B
# and SDAR-1.7B-Chat; FORMATS.md says what was checked)
QWEN2_1_5B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 1536,
    "initializer_range": 0.02,
    "intermediate_size": 8960,
    "max_position_embeddings": 32768,
    "max_window_layers": 21,
    "model_type": "qwen2",
    "num_attention_heads": 12,
    "num_hidden_layers": 28,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
QWEN3_1_7B_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 6144,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
# special tokens (content -> id) the loaders read; all four share Qwen's <|endoftext|>/<|im_*|>.
# Fast-dLLM v2's mask is "|<MASK>|" (sic, tokenizer only); SDAR's "<|MASK|>" (also config.json
# mask_token_id); a plain Qwen2/Qwen3 checkpoint has none: an A2D conversion adds "<|MASK|>".
_QWEN_CHAT = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
FAST_DLLM_V2_SPECIAL_TOKENS = {**_QWEN_CHAT, "|<MASK>|": 151665}
SDAR_SPECIAL_TOKENS = {**_QWEN_CHAT, "<|MASK|>": 151669}
QWEN_SPECIAL_TOKENS = {**_QWEN_CHAT, "<|MASK|>": 151669}
MASK_TOKENS = ("<|MASK|>", "|<MASK>|", "<|mask|>", "<|mdm_mask|>")  # where config.json has no mask id

# LLaDA config flags: the value our transformer implements (LLaDA-8B's); anything else is refused.
# block_type "sequential" would mean one fused att_proj [q|k|v] and a fused ff_proj [up|gate]
# (activation "swiglu"); "llama" means separate q/k/v_proj and ff_proj (gate) + up_proj.
_LLADA_FLAGS = {
    "block_type": "llama",
    "activation_type": "silu",
    "rope": True,
    "rope_full_precision": True,
    "alibi": False,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "attention_layer_norm": False,
    "input_emb_norm": False,
    "scale_logits": False,
    "include_bias": False,
    "block_group_size": 1,
}
_DREAM_FLAGS = {"hidden_act": "silu", "rope_scaling": None, "use_sliding_window": False}
_QWEN2_FLAGS = _DREAM_FLAGS
_QWEN3_FLAGS = {**_DREAM_FLAGS, "attention_bias": False}

# our per-layer module -> theirs; top-level module -> theirs
_LAYER_PREFIX = {LLADA: "model.transformer.blocks.", **dict.fromkeys(_QWEN2_LAYOUT + _QWEN3_LAYOUT, "model.layers.")}
_LAYER_NAMES = {
    LLADA: {
        "attn_norm": "attn_norm",
        "q_proj": "q_proj",
        "k_proj": "k_proj",
        "v_proj": "v_proj",
        "o_proj": "attn_out",
        "mlp_norm": "ff_norm",
        "gate_proj": "ff_proj",
        "up_proj": "up_proj",
        "down_proj": "ff_out",
    },
    DREAM: {
        "attn_norm": "input_layernorm",
        "q_proj": "self_attn.q_proj",
        "k_proj": "self_attn.k_proj",
        "v_proj": "self_attn.v_proj",
        "o_proj": "self_attn.o_proj",
        "mlp_norm": "post_attention_layernorm",
        "gate_proj": "mlp.gate_proj",
        "up_proj": "mlp.up_proj",
        "down_proj": "mlp.down_proj",
    },
}
_LAYER_NAMES.update(dict.fromkeys(_QWEN2_LAYOUT[1:], _LAYER_NAMES[DREAM]))
_LAYER_NAMES.update(
    dict.fromkeys(_QWEN3_LAYOUT, {**_LAYER_NAMES[DREAM], "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"})
)
_TOP_NAMES = {
    LLADA: {"embed": "model.transformer.wte", "norm": "model.transformer.ln_f", "lm_head": "model.transformer.ff_out"},
    **dict.fromkeys(
        _QWEN2_LAYOUT + _QWEN3_LAYOUT, {"embed": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head"}
    ),
}


# ----------------------------------------------------------------------------------------------
# config.json -> ModelConfig


def _require(config: dict, key: str, fmt: str):
    if key not in config:
        raise ValueError(f"{fmt} config.json: missing key {key!r}")
    return config[key]


def _check_flags(config: dict, flags: dict, fmt: str) -> None:
    """LLaDA's flags must be present (its code defaults are GPT-2's: a sequential block, no RoPE);
    Dream's defaults (DreamConfig's) are the supported values."""
    for key, want in flags.items():
        got = _require(config, key, fmt) if fmt == LLADA else config.get(key, want)
        if got != want:
            raise ValueError(
                f"{fmt} config.json: {key}={got!r} is not supported (the {fmt} architecture here "
                f"implements {key}={want!r})"
            )


def _head_dim(d_model: int, n_heads: int, fmt: str) -> int:
    if d_model % n_heads:
        raise ValueError(f"{fmt} config.json: the model width {d_model} is not a multiple of the {n_heads} heads")
    return d_model // n_heads


def _stop_ids(config: dict, generation_config: dict | None, fmt: str) -> tuple[int, int | None]:
    """``(eos_id, eot_id)``: config.json's ``eos_token_id`` (the first, if a list), and the first
    other stop id of its list or of ``generation_config.json``'s ``eos_token_id`` (None: none)."""
    eos = _require(config, "eos_token_id", fmt)
    ids = list(eos) if isinstance(eos, list) else [eos]
    gen = (generation_config or {}).get("eos_token_id")
    ids += gen if isinstance(gen, list) else [] if gen is None else [gen]
    return ids[0], next((i for i in ids[1:] if i != ids[0]), None)


def _mask_id(config: dict, special_tokens: dict[str, int], fmt: str) -> int:
    """config.json's ``mask_token_id`` (SDAR), else the tokenizer's mask token (Fast-dLLM v2's
    ``|<MASK>|``, an A2D conversion's ``<|MASK|>``)."""
    if config.get("mask_token_id") is not None:
        return config["mask_token_id"]
    found = next((special_tokens[t] for t in MASK_TOKENS if t in special_tokens), None)
    if found is None:
        raise ValueError(
            f"{fmt} config.json: no mask_token_id, and no tokenizer mask token ({', '.join(MASK_TOKENS)}) "
            "was given: a masked-diffusion model needs a mask id"
        )
    return found


def _qwen_fields(config: dict, fmt: str, d: int, nh: int) -> dict:
    """The :class:`ModelConfig` fields that Dream's and the Qwen formats' config.json spell alike
    (Qwen2's keys and defaults), given the width ``d`` and the ``nh`` query heads."""
    return dict(
        vocab_size=_require(config, "vocab_size", fmt),
        d_model=d,
        n_layers=_require(config, "num_hidden_layers", fmt),
        n_heads=nh,
        n_kv_heads=config.get("num_key_value_heads") or nh,
        ffn_dim=_require(config, "intermediate_size", fmt),
        pad_id=config.get("pad_token_id"),
        rope_theta=float(config.get("rope_theta", 10000.0)),
        rms_eps=config.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        max_seq_len=config.get("max_position_embeddings", 32768),
    )


def _qwen_config(config: dict, special_tokens: dict[str, int], generation_config: dict | None) -> ModelConfig:
    """The Qwen2-layout (Fast-dLLM v2, Qwen2) and Qwen3-layout (SDAR, Qwen3) formats."""
    fmt = config["model_type"]
    qwen3 = fmt in _QWEN3_LAYOUT
    _check_flags(config, _QWEN3_FLAGS if qwen3 else _QWEN2_FLAGS, fmt)
    if any(t != "full_attention" for t in config.get("layer_types") or ()):
        raise ValueError(f"{fmt} config.json: layer_types other than 'full_attention' are not supported")
    d, nh = _require(config, "hidden_size", fmt), _require(config, "num_attention_heads", fmt)
    head_dim = _require(config, "head_dim", fmt) if qwen3 else config.get("head_dim") or _head_dim(d, nh, fmt)
    if fmt == FAST_DLLM_V2:
        block_size = _require(config, "bd_size", fmt)
    elif fmt == SDAR:
        block_size = config.get("block_size", 4)  # SDAR's generate.py / SGLang default
    else:  # a plain Qwen checkpoint: bidirectional (A2D), unless it names a block size
        block_size = config.get("block_size") or config.get("bd_size")
    eos, eot = _stop_ids(config, generation_config, fmt)
    return ModelConfig(
        **_qwen_fields(config, fmt, d, nh),
        head_dim=head_dim,
        mask_id=_mask_id(config, special_tokens, fmt),
        eos_id=eos,
        eot_id=eot,
        qkv_bias=not qwen3,  # Qwen2Attention hard-codes q/k/v biases; Qwen3's follow attention_bias
        logit_shift=fmt == FAST_DLLM_V2,  # Fast-dLLM v2's generate shifts; SDAR's does not
        qk_norm=qwen3,
        block_size=block_size,
    )


def config_from_hf(
    config: dict, special_tokens: dict[str, int] | None = None, generation_config: dict | None = None
) -> ModelConfig:
    """Map a LLaDA, Dream, Fast-dLLM v2, SDAR, Qwen2 or Qwen3 ``config.json`` (as a dict) to
    :class:`ModelConfig`.

    Args:
        config: the parsed ``config.json``; ``model_type`` picks the format.
        special_tokens: the tokenizer's special tokens (content -> id), the source of LLaDA's
            ``<|eot_id|>`` (not in its config.json) and of the mask id where config.json has none
            (Fast-dLLM v2); None = none.
        generation_config: the parsed ``generation_config.json`` (None: absent); the Qwen formats
            take a second stop id (``eot_id``) from its ``eos_token_id`` list.
    """
    fmt = config.get("model_type")
    special_tokens = special_tokens or {}
    if fmt in _QWEN2_LAYOUT[1:] + _QWEN3_LAYOUT:
        return _qwen_config(config, special_tokens, generation_config)
    if fmt == LLADA:
        _check_flags(config, _LLADA_FLAGS, fmt)
        if config.get("bias_for_layer_norm"):
            raise ValueError("llada config.json: bias_for_layer_norm=True is not supported (RMSNorm has no bias)")
        d, nh = _require(config, "d_model", fmt), _require(config, "n_heads", fmt)
        n_kv = config.get("n_kv_heads")
        if n_kv is None:  # LLaDA's effective_n_kv_heads
            n_kv = 1 if config.get("multi_query_attention") else nh
        return ModelConfig(
            vocab_size=_require(config, "embedding_size", fmt) or _require(config, "vocab_size", fmt),
            d_model=d,
            n_layers=_require(config, "n_layers", fmt),
            n_heads=nh,
            n_kv_heads=n_kv,
            head_dim=_head_dim(d, nh, fmt),
            ffn_dim=config.get("mlp_hidden_size") or config.get("mlp_ratio", 4) * d,
            mask_id=_require(config, "mask_token_id", fmt),
            eos_id=_require(config, "eos_token_id", fmt),
            eot_id=special_tokens.get("<|eot_id|>"),
            pad_id=config.get("pad_token_id"),
            rope_theta=float(config.get("rope_theta", 10000.0)),
            rms_eps=config.get("rms_norm_eps", 1e-5),
            qkv_bias=bool(config.get("include_qkv_bias")),
            logit_shift=False,
            tie_embeddings=_require(config, "weight_tying", fmt),
            max_seq_len=_require(config, "max_sequence_length", fmt),
        )
    if fmt == DREAM:
        _check_flags(config, _DREAM_FLAGS, fmt)
        d, nh = _require(config, "hidden_size", fmt), _require(config, "num_attention_heads", fmt)
        head_dim = _head_dim(d, nh, fmt)
        return ModelConfig(
            **_qwen_fields(config, fmt, d, nh),
            head_dim=head_dim,
            mask_id=_require(config, "mask_token_id", fmt),
            eos_id=_require(config, "eos_token_id", fmt),
            qkv_bias=True,
            logit_shift=True,  # DreamAttention hard-codes q/k/v biases; DreamModel's logits are shifted
        )
    known = ", ".join(repr(f) for f in (LLADA, DREAM, FAST_DLLM_V2, SDAR, QWEN2, QWEN3, NATIVE))
    raise ValueError(f"config.json: model_type {fmt!r} is not one of {known}")


def hf_parameter_names(fmt: str, model: DiffusionLM) -> dict[str, str]:
    """``{our parameter name: the release's tensor name}`` for every tensor a ``fmt`` checkpoint of
    ``model``'s config holds (a tied LM head is not stored)."""
    names = {}
    for ours in model.state_dict():
        if ours == "lm_head.weight" and model.config.tie_embeddings:
            continue
        parts = ours.split(".")
        if parts[0] == "layers":  # layers.{i}.{module}.{weight|bias}
            names[ours] = f"{_LAYER_PREFIX[fmt]}{parts[1]}.{_LAYER_NAMES[fmt][parts[2]]}.{parts[3]}"
        else:  # {embed|norm|lm_head}.weight
            names[ours] = f"{_TOP_NAMES[fmt][parts[0]]}.{parts[1]}"
    return names


# ----------------------------------------------------------------------------------------------
# loading


def _few(names) -> str:
    names = sorted(names)
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _read_tensors(path: pathlib.Path, expected: set[str], device) -> dict[str, torch.Tensor]:
    """The ``expected`` tensors of a single-file or sharded checkpoint; strict about missing,
    unexpected and misplaced tensors."""
    if (path / INDEX).is_file():
        index = _read_json(path / INDEX)
        if not isinstance(index.get("weight_map"), dict):
            raise ValueError(f"{path / INDEX}: no 'weight_map' object")
        weight_map = index["weight_map"]
    elif (path / SINGLE).is_file():
        with open_safetensors(path / SINGLE) as f:
            weight_map = dict.fromkeys(f.keys(), SINGLE)
    else:
        raise FileNotFoundError(f"{path}: neither {INDEX} nor {SINGLE}")
    missing, unexpected = expected - weight_map.keys(), weight_map.keys() - expected
    if missing or unexpected:
        raise ValueError(
            f"{path}: the tensors do not match config.json: missing [{_few(missing)}], unexpected [{_few(unexpected)}]"
        )
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        if not (path / shard).is_file():
            raise FileNotFoundError(f"{path}: shard {shard} listed in {INDEX} does not exist")
        wanted = {n for n, s in weight_map.items() if s == shard}
        with open_safetensors(path / shard, device) as f:
            absent = wanted - set(f.keys())
            if absent:
                raise ValueError(f"{path / shard}: {INDEX} places [{_few(absent)}] here but the shard lacks them")
            tensors.update((n, f.get_tensor(n)) for n in wanted)
    return tensors


def load_pretrained(path, *, device="cpu", dtype=torch.float32, backend="auto", attn_impl="ops") -> DiffusionLM:
    """Load a LLaDA, Dream, Fast-dLLM v2, SDAR, Qwen2, Qwen3 or native checkpoint directory
    (format from ``config.json``).

    Args:
        path: directory with ``config.json`` and ``model.safetensors`` or
            ``model.safetensors.index.json`` + shards; its tokenizer files (if any) supply LLaDA's
            ``<|eot_id|>`` id and Fast-dLLM v2's mask id, its ``generation_config.json`` (if any)
            a second stop id of the Qwen formats.
        device, dtype: where and in which dtype the parameters live (tensors are read straight to
            ``device``; an 8B model in bf16 never exists in fp32).
        backend, attn_impl: passed to :class:`DiffusionLM`.

    Raises:
        FileNotFoundError: no config.json, no weights, or a shard listed in the index is absent.
        ValueError: unknown model_type, an unsupported architecture flag, or tensors that do not
            match the config (missing, unexpected, misplaced or of the wrong shape).
    """
    path = pathlib.Path(path)
    hf = _read_json(path / "config.json")
    fmt = hf.get("model_type")
    if fmt == NATIVE:
        return load_checkpoint(path, device=device, dtype=dtype, backend=backend, attn_impl=attn_impl)
    has_tokenizer = (path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()
    generation = _read_json(path / GENERATION_CONFIG) if (path / GENERATION_CONFIG).is_file() else None
    config = config_from_hf(hf, load_tokenizer(path).special_ids if has_tokenizer else None, generation)
    with torch.device("meta"):  # shapes only: the parameters come from the checkpoint
        model = DiffusionLM(config, backend=backend, attn_impl=attn_impl)
    names = hf_parameter_names(fmt, model)
    tensors = _read_tensors(path, set(names.values()), device)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    for ours, theirs in names.items():
        if tensors[theirs].shape != shapes[ours]:
            raise ValueError(
                f"{path}: tensor {theirs} has shape {list(tensors[theirs].shape)}, config.json implies "
                f"{list(shapes[ours])}"
            )
    state = {ours: tensors[theirs].to(dtype) for ours, theirs in names.items()}
    if config.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.rope_cos, model.rope_sin = rope_tables(config, device)
    return model.eval()
