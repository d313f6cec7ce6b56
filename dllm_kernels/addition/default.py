"""The embedded default model: the project's tiny masked-diffusion model trained on the addition
task (:mod:`dllm_kernels.addition.task`), shipped under ``dllm_kernels/addition/assets/`` so that
nothing needs downloading or training. Trained by ``python -m dllm_kernels.addition.train`` (see
that module). Beside it: its d3LLM-distilled copy (:data:`DEFAULT_DISTILLED_DIR`) and its
block-diffusion adaptation (:data:`DEFAULT_BLOCK_DIFFUSION_DIR`) and the uniform-state
(DiffusionGemma-like, self-conditioned) adaptation of that one (:data:`DEFAULT_UNIFORM_STATE_DIR`),
loaded with ``default_model(path=...)``."""

from __future__ import annotations

import pathlib

import torch

from ..models.checkpoint import load_checkpoint
from ..models.tokenizer import Tokenizer, load_tokenizer
from ..models.transformer import DiffusionLM
from .task import AdditionTask

DEFAULT_MODEL_DIR = pathlib.Path(__file__).resolve().parent / "assets" / "tiny-addition"
# the same model after d3LLM-style trajectory distillation (python -m dllm_kernels.addition.distill)
DEFAULT_DISTILLED_DIR = DEFAULT_MODEL_DIR.with_name("tiny-addition-d3")
# the same model adapted to block diffusion (block-causal attention, blocks of 8 positions):
# python -m dllm_kernels train --block-size 8 --init <DEFAULT_MODEL_DIR>, see its training.json
DEFAULT_BLOCK_DIFFUSION_DIR = DEFAULT_MODEL_DIR.with_name("tiny-addition-bd")
# the block-diffusion model adapted to uniform-state denoising with self-conditioning:
# python -m dllm_kernels train --objective uniform --block-size 8 --init <DEFAULT_BLOCK_DIFFUSION_DIR>
DEFAULT_UNIFORM_STATE_DIR = DEFAULT_MODEL_DIR.with_name("tiny-addition-us")


def default_model(
    *, device="cpu", dtype=torch.float32, backend="auto", attn_impl="ops", path=DEFAULT_MODEL_DIR
) -> tuple[DiffusionLM, Tokenizer, AdditionTask]:
    """``(model, tokenizer, task)`` of the shipped checkpoint (or of a checkpoint directory
    written by ``python -m dllm_kernels.addition.train``): the model in eval mode on ``device`` in
    ``dtype``, its tokenizer, and the task with the canvas layout (``prompt_length``,
    ``gen_length``, ``block_length``) it was trained and is evaluated on."""
    path = pathlib.Path(path)
    model = load_checkpoint(path, device=device, dtype=dtype, backend=backend, attn_impl=attn_impl)
    return model, load_tokenizer(path), AdditionTask.load(path / "task.json")
