"""The decoding loop (:func:`generate`): every published policy on one loop, on the kernels or on the references.

The policy's control logic (a *scheduler*, on the host) decides per step and per row which canvas
window the row forwards, what it reads from and writes to the KV cache, and where commits may
happen; it keeps its state as arrays over rows, and its plan for a step is one small integer
vector per row (window, suffix tail, cache rows, written blocks, commit and force regions, k,
rule, fill, step), shipped to the device in one copy. The index tables are built there from it,
and the batch runs as one step on the device::

    tokens = x.gather(windows)                      # ragged per-row windows, padded
    logits = model(tokens, positions, cache=..., cache_len=..., kv_len=..., write=..., key_start=pad,
                   logits_index=active rows)        # attention / refresh_kv_cache ops inside
    stats  = token_stats(logits)                    # one fused pass over the vocabulary
    commit(x, stats, state, rule, active_start=..., ...)   # one fused launch per distinct rule

A step has no host sync; between steps the loop reads the canvas back once (a few KB) to drive
the schedulers. Rows that are done (or out of forwards) leave the batch when the
cache can drop rows (no cache, or a dataclass of batch-first tensors such as the project's KV
cache); otherwise they reach the model with ``kv_len == 0``, ``cache_len == 0`` and no cache
write. With ``cuda_graph=True`` the device part of a step (index tables included) is captured once
per padded shape bucket and replayed. Because a row's computation depends only on that row, a
batch of ragged prompts (left-padded to a common, block-aligned length and masked with
``key_start``) gives every row exactly the tokens it gets alone; at temperature > 0 too, since each
logits row samples with a key derived from the row's own seed, forward index and position.

Model protocol: what ``generate`` needs from a model is written down, as code and prose, in
:mod:`dllm_kernels.models.protocol` (:class:`dllm_kernels.models.DiffusionLM` implements it;
:class:`dllm_kernels.models.HFModelAdapter` runs a Hugging-Face-style callable on the uncached
policies).

Modules: :mod:`.generate` (``generate``, its result and error; validation and policy resolution,
once per call), :mod:`.plan` (the step plan's columns, :class:`~.plan.Col`; the canvas
:class:`~.plan.Geometry`), :mod:`.blocks`, :mod:`.multi_block` and :mod:`.block_causal` (the
schedulers; the last one for block-diffusion models, whose completed blocks form an exact cache),
:mod:`.uniform` (the uniform-state scheduler and step: DiffusionGemma, no MASK, re-noised blocks),
:mod:`.step` (the device step), :mod:`.runner` (the eager and CUDA-graph step runners),
:mod:`.canvas` (the canvas, the batch's rows and their compaction).
"""

# ``generate`` itself is imported from its module, ``dllm_kernels.decode.generate`` (or as
# ``dllm_kernels.generate``): bound here, the function would hide the module of the same name
# (``import dllm_kernels.decode.generate as m`` would give the function, and a monkeypatch of
# ``"dllm_kernels.decode.generate.X"`` would land on it silently)
from .generate import GenerateResult, MaxNFEError
from .step import StepInputs, decode_step

__all__ = ["GenerateResult", "MaxNFEError", "StepInputs", "decode_step"]
