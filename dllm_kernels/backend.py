"""Backend selection shared by every public op.

``backend="auto"`` runs the Triton kernel on CUDA tensors and the PyTorch reference otherwise;
``"triton"`` forces the kernel (on CPU tensors this needs Triton's interpreter, i.e.
``TRITON_INTERPRET=1`` set before ``dllm_kernels.kernels`` is imported); ``"reference"`` forces
the reference.
"""

from __future__ import annotations

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
