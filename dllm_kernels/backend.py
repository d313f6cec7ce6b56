"""Backend selection shared by every public op, and the registration of a launcher as the
custom op that runs it.

``backend="auto"`` runs the Triton kernel on CUDA tensors and the PyTorch reference otherwise;
``"triton"`` forces the kernel (on CPU tensors this needs Triton's interpreter, i.e.
``TRITON_INTERPRET=1`` set before ``dllm_kernels.kernels`` is imported); ``"reference"`` forces
the reference.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from ._env import interpreter_enabled

BACKENDS = ("auto", "triton", "reference")


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    """Return ``"triton"`` or ``"reference"`` for an op whose tensors live on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return "reference"
    if backend == "auto":
        return "triton" if device.type == "cuda" else "reference"
    if device.type == "cuda" or (device.type == "cpu" and interpreter_enabled()):
        return "triton"
    raise ValueError(
        f"{op}: backend='triton' needs CUDA tensors, or CPU tensors with Triton's interpreter "
        f"(TRITON_INTERPRET=1 set before dllm_kernels.kernels is imported); got tensors on {device}"
    )


def eager_call(op: torch.library.CustomOpDef, impl: Callable) -> Callable:
    """``op`` while torch.compile traces (its fake implementation gives the shapes), ``impl``,
    the op's own function, called directly otherwise (DESIGN.md 2).

    A custom op's eager dispatch runs in Python (the autograd wrapper, the guard that keeps
    dynamo out, the schema's defaults): some 20-40 µs of host time per call, about what the rest
    of a decoding step's host work costs, and it buys nothing in eager mode (the ops have no
    autograd formula). Both paths run the same launcher.
    """

    def call(*args):
        return op(*args) if torch.compiler.is_compiling() else impl(*args)

    return call


def launcher_op(
    family: str, launcher: str, schema: str, *, fake: Callable, mutates_args: tuple[str, ...] = ()
) -> Callable:
    """Register the launcher ``dllm_kernels.kernels.<family>.<launcher>`` as the custom op
    ``dllm_kernels::<launcher>`` with the fake implementation ``fake``; the op's arguments are
    the launcher's positional arguments (DESIGN.md 2). Returns the callable of
    :func:`eager_call`: the op under torch.compile, the launcher itself in eager mode.

    The kernels module is imported on the op's first call, so that ``TRITON_INTERPRET`` can
    still be set after ``import dllm_kernels`` (Triton reads it when it decorates the kernels);
    that is why ``schema`` is written out rather than inferred from the launcher's annotations.
    """

    def launch(*args):
        return getattr(importlib.import_module(f"{__package__}.kernels.{family}"), launcher)(*args)

    op = torch.library.custom_op(f"dllm_kernels::{launcher}", launch, mutates_args=mutates_args, schema=schema)
    op.register_fake(fake)
    return eager_call(op, launch)
