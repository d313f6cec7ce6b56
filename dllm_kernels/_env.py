"""The interpreter switch (the one reading of ``TRITON_INTERPRET``) and process-level setup for
the command-line tools."""

import os

import torch


def interpreter_enabled() -> bool:
    """True when Triton kernels run on Triton's CPU interpreter: ``TRITON_INTERPRET`` set to 1,
    true, on or yes (any case), as Triton itself reads it."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def use_interpreter_without_gpu() -> bool:
    """Without CUDA, run the Triton kernels on Triton's CPU interpreter.

    Must run before ``dllm_kernels.kernels`` is first imported (the ops import it lazily).
    Returns True when the interpreter is in use.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return interpreter_enabled()
