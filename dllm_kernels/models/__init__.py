"""LLaDA/Dream-architecture masked-diffusion transformer, its configs and checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig, dream_7b, llada_8b, llada_8b_layer, tiny
from .transformer import ATTN_IMPLS, CacheWrite, DiffusionLM, KVCache

__all__ = ["ATTN_IMPLS", "CacheWrite", "DiffusionLM", "KVCache", "ModelConfig", "dream_7b", "llada_8b",
           "llada_8b_layer", "load_checkpoint", "save_checkpoint", "tiny"]  # fmt: skip
