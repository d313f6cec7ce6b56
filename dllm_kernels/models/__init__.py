"""Masked-diffusion transformers (LLaDA/Dream bidirectional; Qwen2 / Qwen3 block-diffusion layouts of
Fast-dLLM v2 and SDAR), their configs and checkpoints."""

from .adapter import AdapterConfig, HFModelAdapter
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig, dream_7b, llada_8b, llada_8b_layer, tiny
from .hf import load_pretrained
from .protocol import CachedDiffusionModel, CacheWrite, DiffusionModel, DiffusionModelConfig, model_device
from .tiny_checkpoints import TinyCheckpoint, write_tiny_checkpoint, write_tiny_dream, write_tiny_llada
from .tokenizer import Tokenizer, load_tokenizer
from .transformer import ATTN_IMPLS, DiffusionLM, KVCache

__all__ = [
    "ATTN_IMPLS",
    "AdapterConfig",
    "CacheWrite",
    "CachedDiffusionModel",
    "DiffusionLM",
    "DiffusionModel",
    "DiffusionModelConfig",
    "HFModelAdapter",
    "KVCache",
    "ModelConfig",
    "TinyCheckpoint",
    "Tokenizer",
    "dream_7b",
    "llada_8b",
    "llada_8b_layer",
    "load_checkpoint",
    "load_pretrained",
    "load_tokenizer",
    "model_device",
    "save_checkpoint",
    "tiny",
    "write_tiny_checkpoint",
    "write_tiny_dream",
    "write_tiny_llada",
]
