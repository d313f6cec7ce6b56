"""Run a Hugging-Face-style callable (``model(input_ids).logits``, no cache) under ``generate``.

The LLaDA and Dream remote-code models (``AutoModel.from_pretrained(..., trust_remote_code=True)``)
take the whole canvas and return logits for every position; they have no KV cache and no way to
hide left padding other than an attention mask whose format differs per model. The adapter
implements :mod:`dllm_kernels.models.protocol` for them, so every *uncached* policy runs on them
unchanged (``vanilla``, ``fast_dllm`` with ``cache="none"``, ``r2`` with ``cache="none"``,
``d3llm`` with ``cache="none"``; the cached ones are refused by ``generate`` with an error naming
``cache``, and Streaming-dLLM, whose pruned suffix needs position ids, has no uncached variant):

* each row's left padding is cut off before the call (rows of equal padding share one call), so
  the model sees exactly the tokens of the prompt alone, with positions ``0..n-1``, and needs no
  attention mask;
* rows that are done (``kv_len == 0``) are not forwarded;
* ``logit_shift=True`` applies Dream's shift (``logits = cat([l[:, :1], l[:, :-1]], 1)``) to the
  model's raw logits, as the Dream generation code does (``config.logit_shift`` by default, else
  False: LLaDA).

The adapter reads ``kv_len`` and ``key_start`` on the host (one small sync per forward), so unlike
:class:`dllm_kernels.models.DiffusionLM` its step is not CUDA-graph capturable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .protocol import model_device


@dataclass(frozen=True)
class AdapterConfig:
    """The protocol's config for an adapted model (see :mod:`dllm_kernels.models.protocol`)."""

    vocab_size: int
    mask_id: int
    eos_id: int
    eot_id: int | None = None
    pad_id: int | None = None
    max_seq_len: int | None = None
    logit_shift: bool = False


# our config name -> the names a Hugging Face config uses for it (LLaDA / Dream remote code)
_HF_NAMES = {
    "vocab_size": ("vocab_size",),
    "mask_id": ("mask_token_id", "mask_id"),
    "eos_id": ("eos_token_id", "eos_id"),
    "pad_id": ("pad_token_id", "pad_id"),
    "max_seq_len": ("max_sequence_length", "max_position_embeddings", "max_seq_len"),
    "eot_id": ("eot_id",),
    "logit_shift": ("logit_shift",),
}


class HFModelAdapter:
    """Wrap ``model`` (called as ``model(input_ids)``, returning ``.logits [B, n, V]`` or a tensor)
    for :func:`dllm_kernels.generate`'s uncached policies.

    Args:
        model: the callable.
        vocab_size, mask_id, eos_id, pad_id, eot_id, max_seq_len, logit_shift: override what is
            read from ``model.config`` (Hugging Face names: ``vocab_size``, ``mask_token_id``,
            ``eos_token_id``, ``pad_token_id``, ``max_sequence_length`` /
            ``max_position_embeddings``); ``vocab_size``, ``mask_id`` and ``eos_id`` are required.
            ``vocab_size`` is the logits' last dimension.
        device: where ``generate`` builds the canvas (default: ``model.device``, else the first
            parameter's device, else the CPU).
    """

    def __init__(self, model, *, device=None, **config):
        unknown = set(config) - set(_HF_NAMES)
        if unknown:
            raise TypeError(f"HFModelAdapter: unknown config keyword(s) {sorted(unknown)}; known: {sorted(_HF_NAMES)}")
        if not callable(model):
            raise TypeError(f"HFModelAdapter: model must be callable, got {type(model).__name__}")
        hf = getattr(model, "config", None)
        values = {}
        for ours, names in _HF_NAMES.items():
            v = config.get(ours)
            for n in names if v is None else ():
                v = getattr(hf, n, None)
                if v is not None:
                    break
            if isinstance(v, (list, tuple)):
                raise ValueError(f"HFModelAdapter: the model's config gives several {ours} values {v}; pass {ours}=...")
            if v is not None:
                values[ours] = v
        missing = [k for k in ("vocab_size", "mask_id", "eos_id") if k not in values]
        if missing:
            raise ValueError(f"HFModelAdapter: {', '.join(missing)} not found in model.config; pass them as keywords")
        self.model = model
        self.config = AdapterConfig(**values)
        self.device = torch.device(device) if device is not None else model_device(model)

    def __call__(
        self,
        tokens,
        positions,
        *,
        cache=None,
        cache_len=None,
        kv_len=None,
        attend_new=True,
        write=None,
        key_start=None,
        logits_index=None,
    ) -> torch.Tensor:
        """The protocol's forward (:mod:`dllm_kernels.models.protocol`) without a cache."""
        if cache is not None or write is not None or cache_len is not None:
            raise ValueError("HFModelAdapter: the wrapped model has no KV cache; run a policy with cache='none'")
        B, Lq = tokens.shape
        n = [Lq] * B if kv_len is None else kv_len.tolist()
        start = [0] * B if key_start is None else key_start.tolist()
        if logits_index is None:
            logits_index = torch.arange(Lq, device=tokens.device).expand(B, Lq)
        groups: dict[tuple[int, int], list[int]] = {}
        for b in range(B):
            if n[b] > 0:  # rows that are done arrive with kv_len == 0
                groups.setdefault((start[b], n[b]), []).append(b)
        out = None
        for (s, e), rows in groups.items():
            sel = torch.tensor(rows, device=tokens.device)
            if not torch.equal(positions[sel, s:e], torch.arange(e - s, device=tokens.device).expand(len(rows), -1)):
                raise ValueError(
                    "HFModelAdapter: the wrapped model takes no position ids: it needs whole canvases "
                    "(an uncached policy without suffix pruning)"
                )
            res = self.model(tokens[sel, s:e])
            logits = getattr(res, "logits", res)
            if logits.shape[:2] != (len(rows), e - s):
                raise ValueError(
                    f"HFModelAdapter: the model returned logits of shape {tuple(logits.shape)} for "
                    f"input_ids of shape {(len(rows), e - s)}"
                )
            if self.config.logit_shift:  # Dream: position i is predicted by the hidden state at i - 1
                logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)
            rows_idx = (logits_index[sel] - s).clamp(0, e - s - 1)
            got = logits.gather(1, rows_idx[:, :, None].expand(-1, -1, logits.shape[-1]))
            if out is None:
                out = torch.zeros(B, logits_index.shape[1], logits.shape[-1], dtype=logits.dtype, device=logits.device)
            out[sel] = got
        if out is None:  # every row is done
            out = torch.zeros(B, logits_index.shape[1], self.config.vocab_size, device=tokens.device)
        return out
