"""Process-level setup for the command-line tools."""

import os

import torch


def use_interpreter_without_gpu() -> bool:
    """Without CUDA, run the Triton kernels on Triton's CPU interpreter.

    Must run before ``dllm_kernels.kernels`` is first imported (the ops import it lazily).
    Returns True when the interpreter is in use.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
