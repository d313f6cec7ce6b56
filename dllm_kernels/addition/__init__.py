"""The project's tiny-model application: a masked-diffusion model trained on long addition, and its
block-diffusion and uniform-state adaptations.

``task`` (the synthetic task and its tokenizer), ``train`` (LLaDA's objective, block diffusion,
uniform state with self-conditioning), ``distill``
(d3LLM / R2-style trajectory distillation), ``evaluate`` (every policy's accuracy-parallelism
curve and AUP) and ``default`` (the shipped checkpoints under ``assets/``). It builds on the
library (:mod:`dllm_kernels.models`, :func:`dllm_kernels.generate`); nothing in the library
imports it.
"""

from .default import (
    DEFAULT_BLOCK_DIFFUSION_DIR,
    DEFAULT_DISTILLED_DIR,
    DEFAULT_MODEL_DIR,
    DEFAULT_UNIFORM_STATE_DIR,
    default_model,
)
from .task import AdditionTask, Problem

__all__ = [
    "DEFAULT_BLOCK_DIFFUSION_DIR",
    "DEFAULT_DISTILLED_DIR",
    "DEFAULT_MODEL_DIR",
    "DEFAULT_UNIFORM_STATE_DIR",
    "AdditionTask",
    "Problem",
    "default_model",
]
