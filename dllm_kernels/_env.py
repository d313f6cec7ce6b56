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


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed memory instead of handing it back to the OS at every free.

    A forward's activations (a few MB each at the evaluation's batch of 64) lie above malloc's
    mmap threshold, so by default each one is mapped, zero-filled by the kernel page by page and
    unmapped again: on this project's 2-core VM the ``eval`` command spent a quarter of its time
    in the kernel (38 s -> 25 s with this setting at a load average of 1.5, identical results).
    Sets ``M_MMAP_THRESHOLD`` to 32 MiB (its maximum) and ``M_TRIM_THRESHOLD`` to 1 GiB for this
    process, so the memory stays at its peak. For the command-line tools; returns False where there is no glibc
    ``mallopt`` (nothing changed).
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
    mmap_set = mallopt(M_MMAP_THRESHOLD, 32 << 20)
    trim_set = mallopt(M_TRIM_THRESHOLD, 1 << 30)
    return bool(mmap_set and trim_set)
