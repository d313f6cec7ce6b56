"""Public confidence ops: ``token_stats`` and ``window_confidence``.

Each op validates its inputs, picks a backend (see :mod:`dllm_kernels.backend`) and runs either
the Triton kernel, registered as a ``torch.library`` custom op with a fake implementation (so it
traces under ``torch.compile`` and is captured by CUDA graphs), or the PyTorch reference.
"""

from __future__ import annotations

import math

import torch

from . import reference
from ._checks import FLOAT_DTYPES, check_int_list, check_tensor
from ._seeds import resolve_seed
from ._types import TokenStats
from .backend import resolve_backend

MAX_SUPPRESS_IDS = 16  # each id costs one compare per logit inside the kernel
MAX_WINDOW = 16


# ------------------------------------------------------------------------------------------------
# custom ops (the Triton path); the kernels module is imported on first use, so that
# TRITON_INTERPRET can still be set after `import dllm_kernels`
# ------------------------------------------------------------------------------------------------


@torch.library.custom_op("dllm_kernels::token_stats", mutates_args=())
def _token_stats_op(
    logits: torch.Tensor, temperature: float, seed: int, suppress_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from .kernels import confidence as kernels

    return kernels.token_stats(logits, temperature, seed, tuple(suppress_ids))


@_token_stats_op.register_fake
def _(logits, temperature, seed, suppress_ids):
    lead = logits.shape[:-1]
    return (
        logits.new_empty(lead, dtype=torch.int64),
        logits.new_empty(lead, dtype=torch.float32),
        logits.new_empty(lead, dtype=torch.float32),
        logits.new_empty(lead, dtype=torch.float32),
    )


@torch.library.custom_op("dllm_kernels::window_confidence", mutates_args=())
def _window_confidence_op(conf: torch.Tensor, decided: torch.Tensor, window: int, max_decided: int) -> torch.Tensor:
    from .kernels import confidence as kernels

    return kernels.window_confidence(conf, decided, window, max_decided)


@_window_confidence_op.register_fake
def _(conf, decided, window, max_decided):
    return conf.new_empty(conf.shape, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------
# public functions
# ------------------------------------------------------------------------------------------------


def token_stats(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    seed: int | None = None,
    suppress_ids=None,
    backend: str = "auto",
) -> TokenStats:
    """Fused per-position statistics over the vocabulary, in one read of the logits.

    Args:
        logits: ``[N, V]`` or ``[B, L, V]``, fp32/fp16/bf16, any strides (e.g. a slice
            ``logits[:, s:e]`` of a larger tensor; no copy is made). Entries must be finite or
            ``-inf``.
        temperature: 0 proposes ``argmax(logits)`` (ties -> lowest id); T > 0 samples by
            Gumbel-max, ``argmax(logits / T + g)`` with ``g = -log(-log(U))``, which draws from
            ``softmax(logits / T)`` (LLaDA's ``add_gumbel_noise`` rule).
        seed: Philox seed for T > 0 (``0 <= seed < 2**63``); ``None`` draws one from torch's
            default generator. Uniform ``U`` of row ``r`` (flattened), id ``v`` is
            ``tl.rand(seed, r * V + v)``, so a seed fixes the sample on every backend.
        suppress_ids: up to 16 token ids whose logits count as ``-inf`` (e.g. EOS/EoT at early
            steps); a sequence of ints or a 1-D integer CPU tensor.
        backend: ``"auto"`` | ``"triton"`` | ``"reference"`` (see :mod:`dllm_kernels.backend`).

    Returns:
        :class:`TokenStats` ``(token, prob, margin, entropy)`` of shape ``logits.shape[:-1]``:
        int64 token; fp32 ``prob = softmax(logits)[token]``, ``margin = p_top1 - p_top2`` and
        ``entropy = -sum p log p`` (natural log), all of the untempered softmax. A row without a
        finite logit gives token 0, prob 0, margin 0, entropy +inf.

    Precision: fp32 accumulation with an online softmax; prob/margin within ~4e-6 absolute and
    entropy within ~1e-5 * (1 + H) of an fp64 computation; the token is exact at T = 0.
    """
    op = "token_stats"
    check_tensor(op, "logits", logits, ndim=(2, 3), dtypes=FLOAT_DTYPES)
    V = logits.shape[-1]
    if V < 1:
        raise ValueError(f"{op}: logits must have a non-empty vocabulary dimension, got shape {tuple(logits.shape)}")
    ids = () if suppress_ids is None else check_int_list(op, "suppress_ids", suppress_ids, low=0, high=V)
    if len(ids) > MAX_SUPPRESS_IDS:
        raise ValueError(f"{op}: at most {MAX_SUPPRESS_IDS} suppress_ids are supported, got {len(ids)}")
    ids = tuple(sorted(set(ids)))
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"{op}: temperature must be a finite number >= 0, got {temperature!r}")
    temperature = float(temperature)
    if temperature > 0.0:
        seed = resolve_seed(seed)
        if not 0 <= seed < 2**63:
            raise ValueError(f"{op}: seed must lie in [0, 2**63), got {seed}")
    else:
        seed = 0
    if resolve_backend(backend, logits.device, op) == "reference":
        return reference.token_stats(logits, temperature=temperature, seed=seed, suppress_ids=ids)
    return TokenStats(*_token_stats_op(logits, temperature, seed, list(ids)))


def window_confidence(
    conf: torch.Tensor, decided: torch.Tensor, window: int = 3, max_decided: int = 1, *, backend: str = "auto"
) -> torch.Tensor:
    """R2-dLLM's confidence-cluster score (DESIGN.md 1.2, rule 5) of every position.

    Windows of ``window`` consecutive positions slide over each row with stride 1. A window
    qualifies if it holds at most ``max_decided`` decided positions, at least one undecided one,
    and finite confidences at its undecided positions; its score is the mean confidence of its
    undecided positions (fp32, summed left to right, correctly rounded division).

    Args:
        conf: ``[B, L]`` fp32 confidences (e.g. ``TokenStats.prob`` of a block).
        decided: ``[B, L]`` bool, True where the position is no longer masked.
        window: window length W (1..16; R2's default 3).
        max_decided: U, the most decided positions a window may hold (R2's default 1).

    Returns:
        ``[B, L]`` fp32: for each undecided position the max score over the qualifying windows
        that contain it, ``-inf`` where there is none and at decided positions. Rule 5 commits the
        undecided positions with score ``>= tau_s``.
    """
    op = "window_confidence"
    check_tensor(op, "conf", conf, ndim=2, dtypes=(torch.float32,))
    check_tensor(op, "decided", decided, dtypes=(torch.bool,), device=conf.device, shape=tuple(conf.shape))
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"{op}: window must be an int in [1, {MAX_WINDOW}], got {window!r}")
    if isinstance(max_decided, bool) or not isinstance(max_decided, int) or max_decided < 0:
        raise ValueError(f"{op}: max_decided must be an int >= 0, got {max_decided!r}")
    if resolve_backend(backend, conf.device, op) == "reference":
        return reference.window_confidence(conf, decided, window, max_decided)
    return _window_confidence_op(conf, decided, window, max_decided)
