"""Backend selection shared by every public op, and :func:`register_op`, the one way an op's
launcher is wired as a ``torch.library`` custom op (every op of ``dllm_kernels::`` goes through it).

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


def eager_call(op: Callable, impl: Callable) -> Callable:
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


# every op registered through register_op, by name (``dllm_kernels::<name>``); tests/test_layering.py
# checks that no op of the namespace is wired another way
REGISTERED: dict[str, torch.library.CustomOpDef] = {}


def register_op(
    name: str,
    family: str,
    schema: str,
    *,
    fake: Callable,
    mutates_args: tuple[str, ...] = (),
    launch: Callable | None = None,
    encode: Callable | None = None,
    decode: Callable | None = None,
) -> Callable:
    """Wire one op: THE way every public op reaches its Triton launcher (DESIGN.md 2).

    Registers the custom op ``dllm_kernels::<name>`` with ``schema`` (written out once, with the
    ``(a!)`` annotations of the ``mutates_args``) and its fake implementation ``fake`` (called
    with the custom op's arguments), and returns the callable of :func:`eager_call`: the custom
    op while torch.compile traces, the launcher directly in eager mode.

    The launcher lives in ``dllm_kernels.kernels.<family>``, imported on the op's first call, so
    that ``TRITON_INTERPRET`` can still be set after ``import dllm_kernels`` (Triton reads it when
    it decorates the kernels); that is why ``schema`` is written out rather than inferred.

    ``launch(kernels, *args)`` runs the launcher of the module ``kernels`` with the returned
    callable's arguments; by default ``kernels.<name>(*args)``, i.e. the op's arguments are the
    launcher's. ``encode`` and ``decode`` are for an op whose Python arguments hold a value that a
    schema cannot type (commit's :class:`~dllm_kernels.CommitRule`): under torch.compile the call
    passes ``encode(*args)`` (typed schema arguments) to the custom op, whose implementation runs
    ``launch(kernels, *decode(*op_args))``; eager mode calls ``launch(kernels, *args)`` and
    neither. Without them the returned callable's arguments are the custom op's.
    """
    if (encode is None) != (decode is None):
        raise ValueError(f"register_op({name!r}): encode and decode must be given together")
    run = launch if launch is not None else (lambda kernels, *args: getattr(kernels, name)(*args))
    module = None

    def impl(*args):
        nonlocal module
        if module is None:
            module = importlib.import_module(f"{__package__}.kernels.{family}")
        return run(module, *args)

    op_impl = impl if decode is None else (lambda *op_args: impl(*decode(*op_args)))
    op = torch.library.custom_op(f"dllm_kernels::{name}", op_impl, mutates_args=mutates_args, schema=schema)
    op.register_fake(fake)
    REGISTERED[name] = op
    if encode is None:
        return eager_call(op, impl)
    return eager_call(lambda *args: op(*encode(*args)), impl)
