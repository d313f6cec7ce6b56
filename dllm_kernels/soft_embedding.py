"""Public soft-embedding ops: ``soft_embedding`` and its tensor-parallel pair
``soft_embedding_partial`` + ``merge_soft_embedding`` (tensor parallelism: DESIGN.md 4).

Each op validates its inputs, picks a backend (see :mod:`dllm_kernels.backend`) and runs either
the Triton kernel, registered as a ``torch.library`` custom op with a fake implementation (so it
traces under ``torch.compile`` and is captured by CUDA graphs), or the PyTorch reference.
"""

from __future__ import annotations

import math

import torch

from . import reference
from ._checks import FLOAT_DTYPES, check_tensor
from .backend import register_op, resolve_backend

STATE_EXTRA = 4  # words after acc in a partial state: m, s, 1/T, 0
MAX_MERGE = 1024  # partial states merge_soft_embedding reduces per row

_soft_embedding_op = register_op(
    "soft_embedding",
    "soft_embedding",
    "(Tensor logits, Tensor embed, float temperature, Tensor? temperatures, SymInt vocab_start) -> Tensor",
    fake=lambda logits, embed, *args: logits.new_empty((*logits.shape[:-1], embed.shape[1]), dtype=embed.dtype),
)
_soft_embedding_partial_op = register_op(
    "soft_embedding_partial",
    "soft_embedding",
    "(Tensor logits, Tensor embed, float temperature, Tensor? temperatures, SymInt vocab_start) -> Tensor",
    fake=lambda logits, embed, *args: logits.new_empty(
        (*logits.shape[:-1], embed.shape[1] + STATE_EXTRA), dtype=torch.float32
    ),
)
_merge_soft_embedding_op = register_op(
    "merge_soft_embedding",
    "soft_embedding",
    "(Tensor states, ScalarType out_dtype) -> Tensor",
    fake=lambda states, out_dtype: states.new_empty(
        (*states.shape[1:-1], states.shape[-1] - STATE_EXTRA), dtype=out_dtype
    ),
)


def _check_inputs(op: str, names: tuple[str, str], logits, embed, temperature, vocab_start):
    """Validate logits/embedding/temperature/vocab_start; returns ``(temperature float,
    temperatures tensor or None)``."""
    check_tensor(op, names[0], logits, ndim=(2, 3), dtypes=FLOAT_DTYPES)
    V = logits.shape[-1]
    if V < 1:
        raise ValueError(
            f"{op}: {names[0]} must have a non-empty vocabulary dimension, got shape {tuple(logits.shape)}"
        )
    check_tensor(op, names[1], embed, ndim=2, dtypes=FLOAT_DTYPES, device=logits.device)
    if embed.shape[1] < 1:
        raise ValueError(f"{op}: {names[1]} must have at least one column, got shape {tuple(embed.shape)}")
    if isinstance(vocab_start, bool) or not isinstance(vocab_start, int) or vocab_start < 0:
        raise ValueError(f"{op}: vocab_start must be an int >= 0, got {vocab_start!r}")
    if vocab_start + V > embed.shape[0]:
        raise ValueError(
            f"{op}: vocab_start + {names[0]}.shape[-1] ({vocab_start} + {V}) exceeds the {embed.shape[0]} rows "
            f"of {names[1]}"
        )
    if isinstance(temperature, torch.Tensor):
        lead = list(logits.shape[:-1])
        check_tensor(op, "temperature", temperature, dtypes=(torch.float32,), device=logits.device, shape=lead)
        if temperature.device.type == "cpu" and temperature.numel() and not torch.compiler.is_compiling():
            bad = ~(torch.isfinite(temperature) & (temperature >= 0))
            if bad.any():
                raise ValueError(
                    f"{op}: temperature values must be finite and >= 0, got {temperature[bad].flatten()[0].item()}"
                )
        return 1.0, temperature
    bad_type = isinstance(temperature, bool) or not isinstance(temperature, (int, float))
    if bad_type or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(
            f"{op}: temperature must be a finite number >= 0 or an fp32 tensor of the logits' row shape, "
            f"got {temperature!r}"
        )
    return float(temperature), None


def _run(op: str, names: tuple[str, str], logits, embed, temperature, vocab_start: int, backend: str):
    """Validate, then run ``op`` (``"soft_embedding"`` or ``"soft_embedding_partial"``): the
    reference function of that name, or its registered op."""
    temperature, temperatures = _check_inputs(op, names, logits, embed, temperature, vocab_start)
    if resolve_backend(backend, logits.device, op) == "reference":
        t = temperatures if temperatures is not None else temperature
        return getattr(reference, op)(logits, embed, temperature=t, vocab_start=vocab_start)
    kernel_op = _soft_embedding_op if op == "soft_embedding" else _soft_embedding_partial_op
    return kernel_op(logits, embed, temperature, temperatures, vocab_start)


def soft_embedding(
    logits: torch.Tensor,
    embed_weight: torch.Tensor,
    *,
    temperature: float | torch.Tensor,
    vocab_start: int = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """The soft embedding ``softmax(logits / T) @ E`` of each row, without a ``[rows, V]`` buffer.

    Uniform-state dLLMs (DiffusionGemma) feed the expected embedding of the previous step's
    tempered distribution to the next forward (self-conditioning). The kernel is an online
    softmax over vocabulary tiles that accumulates ``p_tile @ E_tile`` in fp32, like
    FlashAttention; the engines' probability buffer (vLLM: ``[rows, V]`` in the model dtype,
    fp32 temporaries) is never written.

    Args:
        logits: ``[N, V]`` or ``[B, L, V]``, fp32/fp16/bf16, any strides.
        embed_weight: ``[V_E, D]`` fp32/fp16/bf16 on the logits' device, any strides; the
            logits' entry ``v`` pairs with row ``vocab_start + v`` (so a padded table, or the
            whole table with a shard's logits, needs no slicing).
        temperature: a number ``>= 0``, or an fp32 tensor shaped like ``logits.shape[:-1]`` (per
            row; values checked finite and ``>= 0`` on the CPU only, on the GPU that would
            sync). ``T = 0`` is the limit ``T -> 0``: the mean of the embedding rows of the
            row's maxima (one-hot at a unique argmax); the pivot is the raw logit maximum and
            only differences are scaled by ``1 / T``, so tiny T (the engines' 1e-10) stays
            finite.
        vocab_start: the embedding row of the logits' entry 0 (int >= 0; ``vocab_start + V <=
            V_E``).
        backend: ``"auto"`` | ``"triton"`` | ``"reference"`` (see :mod:`dllm_kernels.backend`).

    Returns:
        ``[*logits.shape[:-1], D]`` in ``embed_weight``'s dtype. Edge values as in
        :func:`token_stats`: NaN counts as ``-inf`` (weight 0); a row without a logit above
        ``-inf`` gives zeros; ``k`` entries of ``+inf`` share all the mass (the mean of their
        embedding rows).

    Precision: fp32 accumulation. fp32 tables: within ~1e-5 (relative to ``max |E|``) of an fp64
    computation. bf16/fp16 tables: the probabilities enter the tensor-core dot in the table's
    dtype (as FlashAttention's ``P @ V``), within twice the error of the engines' path (fp32
    softmax, probabilities cast to the table's dtype, matmul in it) plus one rounding of the
    output to the table's dtype. Under Triton's interpreter (CPU CI) both dot operands are fp32.
    """
    return _run("soft_embedding", ("logits", "embed_weight"), logits, embed_weight, temperature, vocab_start, backend)


def soft_embedding_partial(
    logits_shard: torch.Tensor,
    embed_shard: torch.Tensor,
    *,
    temperature: float | torch.Tensor,
    vocab_start: int = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`soft_embedding` of a vocabulary shard, as a per-row state that merges exactly.

    Under tensor parallelism the embedding is vocabulary-sharded (vLLM's
    ``VocabParallelEmbedding``): rank ``r`` holds the logits and the embedding rows of ids
    ``[start_r, end_r)``. Each rank computes this state, the ranks all-gather it
    (``(D + 4) * 4`` bytes per row) and :func:`merge_soft_embedding` of the gathered states
    equals :func:`soft_embedding` of the whole vocabulary (within its tolerances).

    Args:
        logits_shard: ``[N, V_shard]`` or ``[B, L, V_shard]`` as in :func:`soft_embedding`.
        embed_shard: ``[V_E, D]``; the shard's entry ``v`` pairs with row ``vocab_start + v``
            (0 for a rank's own slice of the table).
        temperature: as in :func:`soft_embedding`; every shard of a row must get the same.
        vocab_start: as in :func:`soft_embedding`.

    Returns:
        ``[*lead, D + 4]`` fp32: per row ``acc = sum_v exp((z_v - m) / T) E[v]`` (``D`` words,
        unnormalised), then ``m`` (the shard's largest logit, ``-inf`` if none is above
        ``-inf``), ``s = sum_v exp((z_v - m) / T)``, ``1 / T`` (``+inf`` at T = 0) and 0. Treat it
        as opaque: all-gather it and merge it.
    """
    names = ("logits_shard", "embed_shard")
    return _run("soft_embedding_partial", names, logits_shard, embed_shard, temperature, vocab_start, backend)


def merge_soft_embedding(partials, *, out_dtype: torch.dtype = torch.float32, backend: str = "auto") -> torch.Tensor:
    """Merge the :func:`soft_embedding_partial` states of a vocabulary's shards.

    Args:
        partials: a sequence of ``[*lead, D + 4]`` fp32 states (one per shard, any order, same
            shape and device), or one ``[S, *lead, D + 4]`` tensor (e.g. an all-gather's output
            viewed ``[world, *lead, D + 4]``); ``lead`` is ``[N]`` or ``[B, L]``; at most 1024
            shards.
        out_dtype: the output's dtype (fp32/fp16/bf16), e.g. the embedding's.
        backend: as in :func:`soft_embedding`.

    Returns:
        ``[*lead, D]`` of ``out_dtype``: :func:`soft_embedding` of the whole vocabulary.
    """
    op = "merge_soft_embedding"
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be one of float32/float16/bfloat16, got {out_dtype}")
    if isinstance(partials, (list, tuple)):
        if not partials:
            raise ValueError(f"{op}: partials must hold at least one state, got an empty sequence")
        for i, p in enumerate(partials):
            check_tensor(op, f"partials[{i}]", p, ndim=(2, 3), dtypes=(torch.float32,), device=partials[0].device)
            check_tensor(op, f"partials[{i}]", p, shape=tuple(partials[0].shape))
        partials = torch.stack(list(partials))
    else:
        check_tensor(op, "partials", partials, ndim=(3, 4), dtypes=(torch.float32,))
        if partials.shape[0] < 1:
            raise ValueError(f"{op}: partials must have shape [S >= 1, *lead, D + 4], got {list(partials.shape)}")
    if partials.shape[-1] < STATE_EXTRA + 1:
        raise ValueError(f"{op}: partials must have D + 4 >= 5 words per row, got shape {list(partials.shape)}")
    if partials.shape[0] > MAX_MERGE:
        raise ValueError(f"{op}: at most {MAX_MERGE} partial states per row are supported, got {partials.shape[0]}")
    if resolve_backend(backend, partials.device, op) == "reference":
        return reference.merge_soft_embedding(partials, out_dtype=out_dtype)
    return _merge_soft_embedding_op(partials, out_dtype)
