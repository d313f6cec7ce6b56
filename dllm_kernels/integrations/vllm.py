"""vLLM 0.33 drop-ins for the DiffusionGemma sampler, built on :func:`~dllm_kernels.token_stats`.

vLLM 0.33 (``vllm>=0.33,<0.34``) samples DiffusionGemma's canvas with
``vllm.model_executor.models.diffusion_gemma_sampler.sample_row_stats`` (one Triton pass per row:
argmax, Gumbel-max sample, entropy of the tempered softmax, optionally the softmax itself) and then
accepts positions by an entropy bound inside ``diffusion_gemma._compiled_sample_step``. This module
gives both with vLLM's signatures:

- :func:`sample_row_stats`: ``(argmax, sample, entropy, probs | None)``, argmax and sample
  IDENTICAL to vLLM's kernel (the same Philox keying ``tl.rand(seed, row * V + v)``, the same
  fp32 score ``x * (1 / max(T, 1e-10)) + g * (T > 0)``, the same ``U >= 1e-20`` clamp:
  ``token_stats_partial(..., noise="vllm")``), entropy within ``1e-5 * (1 + H)``.
- :func:`entropy_bound_mask`: the acceptance ``_compiled_sample_step`` computes with
  ``sort``/``cumsum``/``cummax``/``scatter``, as the exact rank-and-prefix-sum rule.
- :func:`register`: the ``vllm.general_plugins`` entry point that installs
  :func:`sample_row_stats` in place of vLLM's (see its docstring for exactly what it patches).

The probabilities (``probs_dtype`` not None) are what vLLM feeds to its self-conditioning matmul
``probs @ embed_weight``; :func:`dllm_kernels.soft_embedding` computes ``softmax(logits / T) @ E``
in one pass without the ``[rows, V]`` probs buffer (the buffer behind vllm#50699's OOM), so a
model built on this library calls that instead and passes ``probs_dtype=None`` here. When asked
for, the probs are computed here by PyTorch ops (``exp((x - m) / T) / s`` from the pass's own
``m`` and ``s``, vLLM's formula), not by a kernel.
"""

from __future__ import annotations

import logging

import torch

from ..confidence import token_stats_partial

logger = logging.getLogger(__name__)

VLLM_SPEC = ">=0.33,<0.34"  # the vLLM versions whose sampler these functions reproduce
SAMPLER_MODULE = "vllm.model_executor.models.diffusion_gemma_sampler"
_INT_MAX = 2**31 - 1


def sample_row_stats(
    logits: torch.Tensor,
    temps: torch.Tensor,
    canvas_len: int,
    seed: int,
    probs_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """vLLM 0.33's ``sample_row_stats``: argmax, Gumbel-max sample, entropy and (optionally) softmax.

    Args:
        logits: ``[rows, V]`` fp32/fp16/bf16 (any row stride; the vocabulary contiguous or not).
        temps: ``[>= ceil(rows / canvas_len)]`` temperatures; row ``i`` uses
            ``temps[i // canvas_len]``. T = 0 is greedy (no noise; the statistics take T = 1e-10).
        canvas_len: rows per request.
        seed: the Philox seed (an int in ``[0, 2**63)``); row ``i``, id ``v`` draws
            ``tl.rand(seed, i * V + v)``, vLLM's stream.
        probs_dtype: None, or the dtype of the returned ``softmax(logits / T)``.

    Returns:
        ``(argmax, sample, entropy, probs)``: int64 ``[rows]`` argmax of the raw logits (lowest
        id on ties) and Gumbel-max sample, both equal to vLLM's kernel; fp32 ``[rows]`` entropy
        of the tempered softmax, ``log s - u / s`` unclamped as vLLM computes it (NaN for a row
        without a logit above ``-inf``, as vLLM's; such a row gives argmax and sample 0); and
        ``[rows, V]`` probs in ``probs_dtype`` or None.

    NaN logits count as ``-inf`` here (vLLM leaves them to ``tl.max``'s backend-dependent NaN
    handling). On CPU tensors without Triton's interpreter the reference backend runs: the same
    formulas in PyTorch, whose ``log`` may differ from Triton's in the last ulp, so a sample may
    differ where two scores tie to within that.
    """
    if not isinstance(canvas_len, int) or isinstance(canvas_len, bool) or canvas_len < 1:
        raise ValueError(f"sample_row_stats: canvas_len must be an int >= 1, got {canvas_len!r}")
    if not isinstance(temps, torch.Tensor) or temps.dim() != 1 or not temps.dtype.is_floating_point:
        raise TypeError("sample_row_stats: temps must be a 1-D floating-point tensor (one temperature per request)")
    rows, V = logits.shape
    device = logits.device
    if rows == 0:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        probs = torch.empty(0, V, dtype=probs_dtype, device=device) if probs_dtype is not None else None
        return empty, empty.clone(), torch.empty(0, dtype=torch.float32, device=device), probs
    if temps.shape[0] * canvas_len < rows:
        raise ValueError(
            f"sample_row_stats: temps has {temps.shape[0]} entries for {rows} rows of canvas_len {canvas_len}"
        )
    row_temps = temps.to(device=device, dtype=torch.float32).repeat_interleave(canvas_len)[:rows]
    state = token_stats_partial(
        logits, 0, temperature=row_temps, seed=seed, vocab_size=V, tempered=True, noise="vllm"
    )  # [rows, 8]: fp32 (m, s, u, v2, gs, gz), int32 (argmax id, sample id)
    ids = state.view(torch.int32)[:, 6:8].to(torch.int64)
    ids = torch.where(ids == _INT_MAX, 0, ids)  # vLLM: no score above -inf -> id 0
    m, s, u = state[:, 0], state[:, 1], state[:, 2]
    entropy = torch.log(s) - u / s
    probs = None
    if probs_dtype is not None:
        inv = 1.0 / row_temps.clamp(min=1e-10)
        x = logits.to(torch.float32)
        probs = (torch.exp((x - m[:, None]) * inv[:, None]) / s[:, None]).to(probs_dtype)
    return ids[:, 0].contiguous(), ids[:, 1].contiguous(), entropy, probs


def entropy_bound_mask(entropy: torch.Tensor, bound: float | torch.Tensor) -> torch.Tensor:
    """Entropy-bound acceptance (DiffusionGemma, SGLang ``EBSampling``): bool mask of ``entropy``'s shape.

    Along the last dimension, rank the positions by entropy (ascending; ties by index, lowest
    first) and accept position ``i`` iff the sum of the entropies ranked before it is ``<=
    bound``; the rank-0 position is always accepted. Sums are taken in fp64.

    vLLM 0.33 computes ``sort``; ``cumsum(sorted) - cummax(sorted) <= bound``; ``scatter``:
    for ascending finite entropies ``cummax`` is the entry itself, so this is the same rule up to
    fp32 rounding of ``(c + e) - e`` (a difference only when ``bound`` lies within that rounding of
    a prefix sum). On ties ``torch.sort`` (unstable) may rank tied positions in any order; with
    ``stable=True`` vLLM's formula ranks them by index, which is the order used here. Entropies
    must not be NaN; a ``+inf`` entropy (a row without a logit above ``-inf``) is accepted when
    the sum before it is within the bound (vLLM's ``inf - inf`` gives NaN and rejects it).

    Args:
        entropy: ``[..., L]`` floating point.
        bound: a float >= 0, or a tensor broadcastable to ``[..., 1]`` (per row).
    """
    if not isinstance(entropy, torch.Tensor) or not entropy.dtype.is_floating_point or entropy.dim() < 1:
        raise TypeError("entropy_bound_mask: entropy must be a floating-point tensor with at least 1 dimension")
    if not isinstance(bound, torch.Tensor) and (isinstance(bound, bool) or not bound >= 0):
        raise ValueError(f"entropy_bound_mask: bound must be a number >= 0 or a tensor, got {bound!r}")
    if entropy.shape[-1] == 0:
        return torch.zeros_like(entropy, dtype=torch.bool)
    e = entropy.to(torch.float64)
    order = torch.sort(e, dim=-1, stable=True).indices
    ranked = e.gather(-1, order)
    # the exclusive prefix sums, in fp64
    before = torch.cat([torch.zeros_like(ranked[..., :1]), torch.cumsum(ranked, dim=-1)[..., :-1]], dim=-1)
    bound = bound.to(torch.float64) if isinstance(bound, torch.Tensor) else float(bound)
    accept = before <= bound
    accept[..., 0] = True
    return torch.zeros_like(accept).scatter_(-1, order, accept)


def register() -> None:
    """The ``vllm.general_plugins`` entry point: install :func:`sample_row_stats` into vLLM 0.33.

    What it patches, exactly: the attribute ``sample_row_stats`` of the module
    ``vllm.model_executor.models.diffusion_gemma_sampler`` (imported here; it needs only
    ``vllm.triton_utils``), and, if ``vllm.model_executor.models.diffusion_gemma`` is already
    imported, the name ``sample_row_stats`` it bound from there (its step calls it by that name;
    imported later, it binds the patched function itself). Nothing else: the entropy-bound mask,
    renoise and history of ``_compiled_sample_step`` stay vLLM's. Idempotent (vLLM loads general
    plugins once per process, in several processes).

    Without vLLM installed it logs one line and does nothing. With a vLLM outside
    ``>=0.33,<0.34`` it raises ``RuntimeError`` with a one-line message: vLLM calls general
    plugins unguarded, so that stops the engine; to run another vLLM with dllm-kernels installed,
    leave this plugin out with vLLM's ``VLLM_PLUGINS`` (a comma-separated allowlist of plugin
    names).
    """
    import importlib
    import importlib.metadata
    import sys

    try:
        version = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        logger.info("dllm_kernels vLLM plugin: vllm is not installed, nothing patched")
        return
    parts = version.split(".")
    if len(parts) < 2 or parts[0] != "0" or parts[1] != "33":
        raise RuntimeError(
            f"dllm_kernels vLLM plugin supports vllm{VLLM_SPEC} (DiffusionGemma's 0.33 sampler), found vllm {version}"
        )
    sampler = importlib.import_module(SAMPLER_MODULE)
    sampler.sample_row_stats = sample_row_stats
    model = sys.modules.get("vllm.model_executor.models.diffusion_gemma")
    if model is not None:
        model.sample_row_stats = sample_row_stats
    logger.info("dllm_kernels vLLM plugin: patched %s.sample_row_stats (vllm %s)", SAMPLER_MODULE, version)
