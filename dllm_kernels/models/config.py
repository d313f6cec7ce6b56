"""Model configuration of the transformer: the LLaDA/Dream (bidirectional) and the Qwen2/Qwen3
block-diffusion (Fast-dLLM v2, SDAR) layouts."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and special tokens of a masked-diffusion transformer.

    LLaDA-8B: 32 layers, d_model 4096, 32/32 heads of 128, FFN 12288, vocab 126464, RoPE theta
    500000, no biases, logits not shifted. Dream-7B: 28 layers, d_model 3584, 28/4 heads of 128,
    FFN 18944, vocab 152064, RoPE theta 1e6, QKV biases, logits shifted by one position.

    Block-diffusion models (Fast-dLLM v2 on Qwen2.5, SDAR on Qwen3) set ``block_size``: their
    attention is causal across blocks of ``block_size`` positions and bidirectional inside a
    block (None: bidirectional everywhere, LLaDA/Dream). ``qk_norm``: Qwen3's RMSNorm over
    ``head_dim`` on every query and key head, before RoPE (SDAR).

    Uniform-state models (DiffusionGemma-like) set ``uniform_state``: the model denoises
    uniformly random tokens (no MASK at inference; ``mask_id`` stays, unused by the uniform
    policy). ``self_conditioning_size``: hidden size of the self-conditioning MLP that adds the
    previous step's soft embedding to the input embeddings (None: the model has none).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    mask_id: int
    eos_id: int
    eot_id: int | None = None  # LLaDA's <|eot_id|>; suppressed together with EOS where asked
    pad_id: int | None = None
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    qkv_bias: bool = False
    logit_shift: bool = False  # Dream: position i is predicted by the hidden state at i - 1
    tie_embeddings: bool = False
    max_seq_len: int = 4096
    qk_norm: bool = False  # Qwen3 / SDAR: RMSNorm over head_dim on q and k, before RoPE
    block_size: int | None = None  # block-causal attention over blocks of this size (None: bidirectional)
    uniform_state: bool = False  # a uniform-state denoiser (DiffusionGemma-like): no MASK at inference
    self_conditioning_size: int | None = None  # hidden size of the self-conditioning MLP (None: none)

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        for name in ("mask_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} {getattr(self, name)} outside the vocabulary [0, {self.vocab_size})")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size must be a positive int or None, got {self.block_size}")
        sc = self.self_conditioning_size
        if sc is not None and (isinstance(sc, bool) or not isinstance(sc, int) or sc < 1):
            raise ValueError(f"self_conditioning_size must be a positive int or None, got {sc!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def llada_8b() -> ModelConfig:
    """LLaDA-8B, read from its published config.json and special tokens
    (:data:`dllm_kernels.models.hf.LLADA_8B_CONFIG`), without a pad id."""
    from .hf import LLADA_8B_CONFIG, LLADA_SPECIAL_TOKENS, config_from_hf

    return dataclasses.replace(config_from_hf(LLADA_8B_CONFIG, LLADA_SPECIAL_TOKENS), pad_id=None)


def dream_7b() -> ModelConfig:
    """Dream-7B, read from its published config.json and special tokens
    (:data:`dllm_kernels.models.hf.DREAM_7B_CONFIG`), at a 2048-position context."""
    from .hf import DREAM_7B_CONFIG, DREAM_SPECIAL_TOKENS, config_from_hf

    return dataclasses.replace(config_from_hf(DREAM_7B_CONFIG, DREAM_SPECIAL_TOKENS), max_seq_len=2048)


def llada_8b_layer(n_layers: int = 2) -> ModelConfig:
    """LLaDA-8B's layer shape (32 heads x 128, d_model 4096, vocab 126464) with few layers,
    for the GPU step benchmark."""
    return dataclasses.replace(llada_8b(), n_layers=n_layers)


def tiny(
    vocab_size: int = 64, *, logit_shift: bool = False, n_kv_heads: int = 2, qkv_bias: bool = False
) -> ModelConfig:
    """A test-sized model (2 layers, d_model 32, 4 query heads of 16)."""
    return ModelConfig(
        vocab_size=vocab_size,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=n_kv_heads,
        head_dim=16,
        ffn_dim=64,
        mask_id=vocab_size - 1,
        eos_id=vocab_size - 2,
        eot_id=vocab_size - 3,
        qkv_bias=qkv_bias,
        logit_shift=logit_shift,
        max_seq_len=512,
    )
