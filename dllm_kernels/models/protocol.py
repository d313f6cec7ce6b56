"""What :func:`dllm_kernels.generate` needs from a model: the model protocol, as code.

:class:`dllm_kernels.models.DiffusionLM` implements it; a user brings another model by
implementing the same few members (or, for a Hugging-Face-style callable without a cache, by
wrapping it in :class:`dllm_kernels.models.HFModelAdapter`). Type checkers can verify a model
against :class:`DiffusionModel`; ``isinstance(model, DiffusionModel)`` checks the members exist.

The contract, everything a model has to honour:

* **Config.** ``model.config`` has ``vocab_size``, ``mask_id`` and ``eos_id``; optionally
  ``eot_id`` (LLaDA's ``<|eot_id|>``), ``pad_id`` (the left-padding token; EOS when absent or
  None) and ``max_seq_len`` (longest canvas the model's positions cover; ``generate`` rejects a
  longer ``prompt + gen_length`` up front when it is given).
* **Device.** ``generate`` builds the canvas on ``model.device`` when the model has that attribute
  (not None), else on the device of its first parameter (``model.parameters()``), else on the CPU.
* **Cache.** ``model.new_cache(batch, max_len)`` returns an opaque object that the loop passes back
  to every forward of one ``generate`` call. Only policies with a cache (``Policy.cache`` other
  than ``"none"``) call it; a model without ``new_cache`` runs the uncached policies only, and
  ``generate`` names ``cache`` in its error for the others.
* **Forward.** ``model(tokens, positions, *, cache, cache_len, kv_len, attend_new, write,
  key_start, logits_index) -> logits [B, Lo, V]`` (any float dtype):

  - ``tokens [B, Lq]`` int64: the forwarded canvas tokens of each row, ragged rows padded on the
    right; ``kv_len [B]``: row b's real forwarded rows are ``[0, kv_len[b])``. The padding rows
    must never be attended as keys; their own outputs are ignored.
  - **Rows that are done** (a finished sequence in a batch that is still decoding) arrive with
    ``kv_len == 0``; their logits are ignored (a model may skip them).
  - ``positions [B, Lq]``: RoPE position of each forwarded row, the canvas position minus the
    row's left padding (so a prompt gets the positions it gets alone). Streaming-dLLM's pruned
    suffix keeps its original, non-contiguous positions.
  - **Left padding.** Prompts of different lengths are left-padded to a common block-aligned
    length with the pad id (``config.pad_id``, EOS if None). ``key_start [B]``: keys whose
    *logical* index (cache row j -> j, forwarded row j -> ``cache_len[b] + j``) lies before
    ``key_start[b]`` must be ignored: they are the padding. A model that ignores ``key_start``
    decodes single prompts correctly but lets a padded row see its padding.
  - ``cache_len [B]`` (None without a cache): attend cache rows ``[0, cache_len)``;
    ``attend_new``: also attend the forwarded rows themselves (False: Fast-dLLM's dual cache,
    which writes the block first and then attends the cache alone).
  - ``write`` (:class:`CacheWrite` or None): before attending, write the forwarded rows' K/V of
    the listed canvas blocks into the cache.
  - ``logits_index [B, Lo]``: the forwarded rows whose logits to return, in that order (a model
    with shifted logits, like Dream, shifts within the forwarded window: row i from the hidden
    state of row i - 1, row 0 from itself).

  An uncached model (``cache`` is None for every call) may ignore ``cache_len``, ``attend_new``
  and ``write``.
* **Uniform-state models** (DiffusionGemma-like, no MASK at inference) set
  ``config.uniform_state = True``; the uniform policy forwards them the extra keyword
  ``soft_embeds [B, Lq, d_model]`` (the self-conditioning signal of each forwarded row,
  ``softmax(prev_logits / T) @ model.embed_weight``, zeros at the first step) and reads
  ``model.embed_weight [V, d_model]``, the input-embedding matrix that the signal multiplies.
  Such a model is decoded only by the uniform-state policy (``diffusion_gemma``,
  :mod:`dllm_kernels.decode.uniform`: ``soft_embeds`` also zero at prompt positions and at
  every forward that is not a denoising step), and that policy only decodes such a model; a
  ``config.block_size`` must equal ``block_length``; a config whose ``self_conditioning_size``
  is None declares no self-conditioning and gets no ``soft_embeds``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class CacheWrite:
    """Which rows of a forward enter the cache: the blocks ``block_ids [B, nb]`` (-1 = none) of
    ``block_size`` canvas positions; forwarded row j of row b is canvas position
    ``new_start[b] + j`` (``new_start`` [B], None = 0)."""

    block_ids: torch.Tensor
    block_size: int
    new_start: torch.Tensor | None = None


@runtime_checkable
class DiffusionModelConfig(Protocol):
    """The config members ``generate`` reads (``eot_id``, ``pad_id``, ``max_seq_len``: optional)."""

    vocab_size: int
    mask_id: int
    eos_id: int


@runtime_checkable
class DiffusionModel(Protocol):
    """An uncached-capable masked-diffusion model (see the module docstring for the contract)."""

    config: Any

    def __call__(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        *,
        cache: Any = None,
        cache_len: torch.Tensor | None = None,
        kv_len: torch.Tensor | None = None,
        attend_new: bool = True,
        write: CacheWrite | None = None,
        key_start: torch.Tensor | None = None,
        logits_index: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


@runtime_checkable
class CachedDiffusionModel(DiffusionModel, Protocol):
    """A model that also runs the cached policies: it creates the loop's cache."""

    def new_cache(self, batch: int, max_len: int) -> Any: ...


def model_device(model) -> torch.device:
    """The device ``generate`` puts the canvas on: ``model.device``, else the first parameter's,
    else the CPU."""
    if getattr(model, "device", None) is not None:
        return torch.device(model.device)
    if hasattr(model, "parameters"):
        return next((t.device for t in model.parameters()), torch.device("cpu"))
    return torch.device("cpu")
