"""The public checkpoint formats of LLaDA-8B (``GSAI-ML/LLaDA-8B-*``) and Dream-7B
(``Dream-org/Dream-v0-*-7B``): loading them from a local directory, their tokenizers, and tiny
random checkpoints written in exactly those formats for tests.

A checkpoint directory holds ``config.json`` and the weights, either one ``model.safetensors`` or
shards listed by ``model.safetensors.index.json`` (``{"metadata": {"total_size": bytes},
"weight_map": {tensor name: shard file}}``). ``config.json["model_type"]`` says whose parameter
names the shards use: ``"llada"`` (OLMo-style ``model.transformer.blocks.{i}.ff_proj``...),
``"Dream"`` (Qwen2-style ``model.layers.{i}.self_attn.q_proj``...) or ``"dllm_kernels"`` (our own
names, :mod:`dllm_kernels.models.checkpoint`). Every key, name, shape and special token id, with
its source, is in ``FORMATS.md`` beside this file. Nothing here touches the network.
"""

from __future__ import annotations

import json
import math
import pathlib
from dataclasses import dataclass

import tokenizers
import torch
from safetensors.torch import save_file

from .checkpoint import MODEL_TYPE as NATIVE, load_checkpoint, open_safetensors
from .config import ModelConfig
from .transformer import DiffusionLM, rope_tables

LLADA, DREAM = "llada", "Dream"  # config.json "model_type" of the two releases
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

# config.json of GSAI-ML/LLaDA-8B-Instruct and Dream-org/Dream-v0-Instruct-7B (FORMATS.md), the
# templates of the tiny checkpoints and the test data of the real-size mapping.
LLADA_8B_CONFIG = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                 "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 4096,
    "embedding_dropout": 0.0, "embedding_size": 126464, "eos_token_id": 126081, "flash_attention": False,
    "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": 126336, "max_sequence_length": 4096, "mlp_hidden_size": 12288,
    "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": 32, "n_kv_heads": 32,
    "n_layers": 32, "pad_token_id": 126081, "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05,
    "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False,
    "transformers_version": "4.46.3", "use_cache": False, "vocab_size": 126464, "weight_tying": False,
}  # fmt: skip
DREAM_7B_CONFIG = {
    "architectures": ["DreamModel"], "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "mask_token_id": 151666,
    "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "Dream", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "pad_token_id": 151643, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.46.2", "use_cache": False, "use_sliding_window": False,
    "vocab_size": 152064,
}  # fmt: skip
# special tokens of the two tokenizers (content -> id); LLaDA's <|eot_id|> is not in its config.json
LLADA_SPECIAL_TOKENS = {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336,
                        "<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348}  # fmt: skip
DREAM_SPECIAL_TOKENS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                        "<|beginoftext|>": 151665, "<|mask|>": 151666}  # fmt: skip

# LLaDA config flags: the value our transformer implements (LLaDA-8B's); anything else is refused.
# block_type "sequential" would mean one fused att_proj [q|k|v] and a fused ff_proj [up|gate]
# (activation "swiglu"); "llama" means separate q/k/v_proj and ff_proj (gate) + up_proj.
_LLADA_FLAGS = {"block_type": "llama", "activation_type": "silu", "rope": True, "rope_full_precision": True,
                "alibi": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
                "attention_layer_norm": False, "input_emb_norm": False, "scale_logits": False,
                "include_bias": False, "block_group_size": 1}  # fmt: skip
_DREAM_FLAGS = {"hidden_act": "silu", "rope_scaling": None, "use_sliding_window": False}

# our per-layer module -> theirs; top-level module -> theirs
_LAYER_PREFIX = {LLADA: "model.transformer.blocks.", DREAM: "model.layers."}
_LAYER_NAMES = {
    LLADA: {"attn_norm": "attn_norm", "q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "attn_out",
            "mlp_norm": "ff_norm", "gate_proj": "ff_proj", "up_proj": "up_proj", "down_proj": "ff_out"},
    DREAM: {"attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
            "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj", "mlp_norm": "post_attention_layernorm",
            "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj"},
}  # fmt: skip
_TOP_NAMES = {
    LLADA: {"embed": "model.transformer.wte", "norm": "model.transformer.ln_f", "lm_head": "model.transformer.ff_out"},
    DREAM: {"embed": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head"},
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
            raise ValueError(f"{fmt} config.json: {key}={got!r} is not supported (the {fmt} architecture here "
                             f"implements {key}={want!r})")  # fmt: skip


def _head_dim(d_model: int, n_heads: int, fmt: str) -> int:
    if d_model % n_heads:
        raise ValueError(f"{fmt} config.json: the model width {d_model} is not a multiple of the {n_heads} heads")
    return d_model // n_heads


def config_from_hf(config: dict, special_tokens: dict[str, int] | None = None) -> ModelConfig:
    """Map a LLaDA or Dream ``config.json`` (as a dict) to :class:`ModelConfig`.

    Args:
        config: the parsed ``config.json``; ``model_type`` picks the format.
        special_tokens: the tokenizer's special tokens (content -> id), the source of LLaDA's
            ``<|eot_id|>`` (not in its config.json); None = no EoT id.
    """
    fmt = config.get("model_type")
    special_tokens = special_tokens or {}
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
            d_model=d, n_layers=_require(config, "n_layers", fmt), n_heads=nh, n_kv_heads=n_kv,
            head_dim=_head_dim(d, nh, fmt), ffn_dim=config.get("mlp_hidden_size") or config.get("mlp_ratio", 4) * d,
            mask_id=_require(config, "mask_token_id", fmt), eos_id=_require(config, "eos_token_id", fmt),
            eot_id=special_tokens.get("<|eot_id|>"), pad_id=config.get("pad_token_id"),
            rope_theta=float(config.get("rope_theta", 10000.0)), rms_eps=config.get("rms_norm_eps", 1e-5),
            qkv_bias=bool(config.get("include_qkv_bias")), logit_shift=False,
            tie_embeddings=_require(config, "weight_tying", fmt), max_seq_len=_require(config, "max_sequence_length", fmt),
        )  # fmt: skip
    if fmt == DREAM:
        _check_flags(config, _DREAM_FLAGS, fmt)
        d, nh = _require(config, "hidden_size", fmt), _require(config, "num_attention_heads", fmt)
        return ModelConfig(
            vocab_size=_require(config, "vocab_size", fmt), d_model=d,
            n_layers=_require(config, "num_hidden_layers", fmt), n_heads=nh,
            n_kv_heads=config.get("num_key_value_heads") or nh, head_dim=_head_dim(d, nh, fmt),
            ffn_dim=_require(config, "intermediate_size", fmt), mask_id=_require(config, "mask_token_id", fmt),
            eos_id=_require(config, "eos_token_id", fmt), pad_id=config.get("pad_token_id"),
            rope_theta=float(config.get("rope_theta", 10000.0)), rms_eps=config.get("rms_norm_eps", 1e-6),
            qkv_bias=True, logit_shift=True,  # DreamAttention hard-codes q/k/v biases; DreamModel's logits are shifted
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_seq_len=config.get("max_position_embeddings", 32768),
        )  # fmt: skip
    raise ValueError(f"config.json: model_type {fmt!r} is not one of {LLADA!r}, {DREAM!r}, {NATIVE!r}")


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


def _read_json(file: pathlib.Path) -> dict:
    if not file.is_file():
        raise FileNotFoundError(f"{file.parent}: no {file.name} (not a checkpoint directory?)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None


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
        raise ValueError(f"{path}: the tensors do not match config.json: missing [{_few(missing)}], "
                         f"unexpected [{_few(unexpected)}]")  # fmt: skip
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
    """Load a LLaDA, Dream or native checkpoint directory (format from ``config.json``).

    Args:
        path: directory with ``config.json`` and ``model.safetensors`` or
            ``model.safetensors.index.json`` + shards; its tokenizer files (if any) supply LLaDA's
            ``<|eot_id|>`` id.
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
    config = config_from_hf(hf, load_tokenizer(path).special_ids if has_tokenizer else None)
    with torch.device("meta"):  # shapes only: the parameters come from the checkpoint
        model = DiffusionLM(config, backend=backend, attn_impl=attn_impl)
    names = hf_parameter_names(fmt, model)
    tensors = _read_tensors(path, set(names.values()), device)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    for ours, theirs in names.items():
        if tensors[theirs].shape != shapes[ours]:
            raise ValueError(f"{path}: tensor {theirs} has shape {list(tensors[theirs].shape)}, config.json implies "
                             f"{list(shapes[ours])}")  # fmt: skip
    state = {ours: tensors[theirs].to(dtype) for ours, theirs in names.items()}
    if config.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.rope_cos, model.rope_sin = rope_tables(config, device)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# tokenizers

# Qwen2's pre-tokenizer regex (Dream's tokenization_dream.py: PRETOKENIZE_REGEX)
_QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
_ROLE_TOKENS = {"mask": ("<|mdm_mask|>", "<|mask|>"), "eos": ("<|endoftext|>",),
                "bos": ("<|startoftext|>", "<|beginoftext|>"), "eot": ("<|eot_id|>", "<|im_end|>")}  # fmt: skip


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order (``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _byte_level_bpe(vocab: dict[str, int], merges: list[str], special: dict[str, int]) -> dict:
    """A ``tokenizers`` JSON document of a Qwen2-style byte-level BPE (NFC, regex split, byte
    level) whose special tokens sit at the given ids (they enter the model vocab too, which is
    what makes ``tokenizers`` keep ids that do not follow the vocab contiguously)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for t, i in sorted(special.items(), key=lambda kv: kv[1])]  # fmt: skip
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": _QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
            byte_level]},
        "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {**vocab, **special}, "merges": merges},
    }  # fmt: skip


@dataclass(frozen=True)
class Tokenizer:
    """A checkpoint's tokenizer: a ``tokenizers.Tokenizer`` and the ids of its special tokens."""

    backend: tokenizers.Tokenizer
    special_ids: dict[str, int]  # content -> id of every special added token

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added; special-token strings map to their ids)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _role(self, role: str) -> int | None:
        return next((self.special_ids[t] for t in _ROLE_TOKENS[role] if t in self.special_ids), None)

    @property
    def mask_id(self) -> int | None:  # <|mdm_mask|> (LLaDA) / <|mask|> (Dream)
        return self._role("mask")

    @property
    def eos_id(self) -> int | None:  # <|endoftext|>
        return self._role("eos")

    @property
    def bos_id(self) -> int | None:  # <|startoftext|> (LLaDA) / <|beginoftext|> (Dream)
        return self._role("bos")

    @property
    def eot_id(self) -> int | None:  # end of turn: <|eot_id|> (LLaDA) / <|im_end|> (Dream)
        return self._role("eot")


def load_tokenizer(path) -> Tokenizer:
    """The tokenizer of a checkpoint directory: ``tokenizer.json`` (LLaDA), or else Dream's
    ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json`` (its added tokens), read as the
    same Qwen2 byte-level BPE that Dream's ``DreamTokenizer`` implements."""
    path = pathlib.Path(path)
    if (path / "tokenizer.json").is_file():
        backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        lines = (path / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [m for i, m in enumerate(lines) if m.strip() and not (i == 0 and m.startswith("#version"))]
        added = _read_json(path / "tokenizer_config.json").get("added_tokens_decoder", {})
        special = {t["content"]: int(i) for i, t in added.items() if t.get("special")}
        doc = _byte_level_bpe(_read_json(path / "vocab.json"), merges, special)
        backend = tokenizers.Tokenizer.from_str(json.dumps(doc))
    else:
        raise FileNotFoundError(f"{path}: no tokenizer.json, nor vocab.json + merges.txt")
    special = {t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    return Tokenizer(backend, special)


# ----------------------------------------------------------------------------------------------
# tiny checkpoints in the real formats

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
        raise ValueError(f"vocab_size must be >= {first_free + len(real)} (byte-level base vocabulary + "
                         f"{len(real)} special tokens) or exactly {real_vocab}, got {vocab_size}")  # fmt: skip
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
    masked positions propose different tokens that depend on their decoded neighbours."""
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


def write_tiny_llada(path, *, vocab_size: int = 320, d_model: int = 32, n_layers: int = 2, n_heads: int = 4,
                     ffn_dim: int = 64, max_seq_len: int = 256, n_shards: int = 2, seed: int = 0,
                     head_scale: float = 1.0, attn_scale: float = 1.0) -> TinyCheckpoint:  # fmt: skip
    """A random LLaDA checkpoint in the format of GSAI-ML/LLaDA-8B-Instruct, tiny.

    Writes ``config.json`` (all of LLaDA-8B's keys, tiny sizes), the weights under LLaDA's names
    (``n_shards`` > 1: shards + ``model.safetensors.index.json``; 1: ``model.safetensors``) and a
    byte-level BPE ``tokenizer.json`` with LLaDA's six special tokens. At ``vocab_size`` 126464
    the special ids are LLaDA's own (mask 126336, EOS 126081, EoT 126348: the ids the public
    decoders hard-code); otherwise they follow the 260-token base vocabulary.
    ``head_scale`` and ``attn_scale`` shape the random weights (:func:`_random_state`); the
    output is a deterministic function of the arguments.
    """
    path = pathlib.Path(path)
    base = _base_vocab()
    special = _special_ids(LLADA_SPECIAL_TOKENS, LLADA_8B_CONFIG["vocab_size"], vocab_size, len(base))
    hf = {**LLADA_8B_CONFIG, "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_heads,
          "mlp_hidden_size": ffn_dim, "vocab_size": vocab_size, "embedding_size": vocab_size,
          "max_sequence_length": max_seq_len, "mask_token_id": special["<|mdm_mask|>"],
          "eos_token_id": special["<|endoftext|>"], "pad_token_id": special["<|endoftext|>"]}  # fmt: skip
    return _write_tiny(path, hf, special, n_shards, base, seed, head_scale, attn_scale)


def write_tiny_dream(path, *, vocab_size: int = 320, d_model: int = 32, n_layers: int = 2, n_heads: int = 4,
                     n_kv_heads: int = 2, ffn_dim: int = 64, max_seq_len: int = 256, n_shards: int = 2,
                     seed: int = 0, head_scale: float = 1.0, attn_scale: float = 1.0) -> TinyCheckpoint:  # fmt: skip
    """A random Dream checkpoint in the format of Dream-org/Dream-v0-Instruct-7B, tiny.

    Writes ``config.json`` (Dream-7B's keys, tiny sizes), the weights under Dream's names (shards +
    index, or one file) and Dream's tokenizer files: ``vocab.json`` + ``merges.txt`` (a byte-level
    BPE) and ``tokenizer_config.json`` whose ``added_tokens_decoder`` holds the special tokens (at
    Dream's ids when ``vocab_size`` is 152064, else right after the base vocabulary, as in Dream).
    """
    path = pathlib.Path(path)
    base = _base_vocab()
    special = _special_ids(DREAM_SPECIAL_TOKENS, DREAM_7B_CONFIG["vocab_size"], vocab_size, len(base))
    eos = special["<|endoftext|>"]
    hf = {**DREAM_7B_CONFIG, "hidden_size": d_model, "num_hidden_layers": n_layers, "max_window_layers": n_layers,
          "num_attention_heads": n_heads, "num_key_value_heads": n_kv_heads, "intermediate_size": ffn_dim,
          "vocab_size": vocab_size, "max_position_embeddings": max_seq_len, "mask_token_id": special["<|mask|>"],
          "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}  # fmt: skip
    return _write_tiny(path, hf, special, n_shards, base, seed, head_scale, attn_scale)


def _write_tiny(path, hf, special, n_shards, base, *init) -> TinyCheckpoint:
    path.mkdir(parents=True, exist_ok=True)
    fmt = hf["model_type"]
    config = config_from_hf(hf, special)
    ckpt = TinyCheckpoint(path, config, _random_state(config, *init))
    _write_json(path / "config.json", hf)
    _write_weights(path, fmt, ckpt, n_shards)
    if fmt == LLADA:
        _write_json(path / "tokenizer.json", _byte_level_bpe(base, _TINY_MERGES, special))
    else:
        (path / "vocab.json").write_text(json.dumps(base, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_TINY_MERGES) + "\n", encoding="utf-8")
        added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                          "special": True} for t, i in special.items()}  # fmt: skip
        eos = "<|endoftext|>"
        _write_json(path / "tokenizer_config.json", {
            "added_tokens_decoder": added, "bos_token": "<|beginoftext|>", "eos_token": eos, "pad_token": eos,
            "mask_token": "<|mask|>", "unk_token": None, "errors": "replace", "split_special_tokens": False,
            "clean_up_tokenization_spaces": False, "model_max_length": hf["max_position_embeddings"],
            "tokenizer_class": "DreamTokenizer",
            "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]}})  # fmt: skip
    return ckpt
