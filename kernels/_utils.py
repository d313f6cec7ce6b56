"""Helpers shared by the launchers: interpreter detection, device facts, AOT specs, and the
facts the kernels share with the public layer.

The kernel layer imports nothing from ``dllm_kernels`` outside ``dllm_kernels.kernels``
(tests/test_layering.py): what it needs from above is handed in (the commit rules to compile,
see ``dllm_kernels.aot``) or stated here and checked against the public layer's copy by that
test (the interpreter switch, ``HEAD_DIMS``, ``MAX_COMMIT_POSITIONS``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import triton


def interpreter_enabled() -> bool:
    """``TRITON_INTERPRET`` set to 1, true, on or yes (any case), as Triton reads it; the kernel
    layer's copy of ``dllm_kernels._env.interpreter_enabled`` (tests/test_layering.py)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# Decided once, like Triton itself decides at decoration time whether @triton.jit builds an
# InterpretedFunction: the launchers pick interpreter-friendly meta-parameters (few programs,
# large blocks) only when the kernels really are interpreted.
IS_INTERPRET = interpreter_enabled()

# head dims the attention kernels take (16 and 32 run on the D=64 tiles); = dllm_kernels._types.HEAD_DIMS
HEAD_DIMS = (16, 32, 64, 128)
# the commit kernel holds a row's region in one tile of at most this many positions;
# = dllm_kernels._types.MAX_COMMIT_POSITIONS
MAX_COMMIT_POSITIONS = 8192
# base "entropy_bound"'s fixed-point entropies; = dllm_kernels._types.ENTROPY_FRAC_BITS / ENTROPY_CAP
ENTROPY_FRAC_BITS = 36
ENTROPY_CAP = 8192.0


class CommitRule(Protocol):
    """What the commit launcher reads of a rule (``dllm_kernels.CommitRule`` satisfies it)."""

    base: str
    threshold: float
    alpha: float
    suffix_window: int
    entropy_threshold: float
    entropy_strict: bool
    commit_best: bool
    spatial_window: int
    spatial_max_decided: int
    spatial_threshold: float
    token_cluster: bool
    cluster_min_len: int
    temporal_steps: int
    temporal_threshold: float
    temporal_agg: str
    token_edit: bool
    edit_threshold: float
    entropy_bound: float
    renoise: bool
    confidence_threshold: float
    stability_steps: int
    max_steps: int


class CommitState(Protocol):
    """What the commit launcher reads of a state (``dllm_kernels.CommitState`` satisfies it)."""

    commit_step: torch.Tensor
    last_id: torch.Tensor
    count: torch.Tensor
    conf_sum: torch.Tensor
    conf_max: torch.Tensor


class RenoiseState(Protocol):
    """What the commit launcher reads of a renoise state (``dllm_kernels.RenoiseState``)."""

    argmax: torch.Tensor
    stable_steps: torch.Tensor
    steps: torch.Tensor
    converged: torch.Tensor


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def programs_target(device: torch.device) -> int:
    """Programs to launch so that a bandwidth-bound kernel fills the GPU (a few per SM)."""
    if device.type != "cuda":
        return 1
    return 4 * num_sms(device.index if device.index is not None else torch.cuda.current_device())


def check_launchable(op: str, *tensors: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors under the interpreter."""
    for t in tensors:
        if t.device.type == "cuda" or (t.device.type == "cpu" and IS_INTERPRET):
            continue
        raise ValueError(
            f"{op}: the Triton kernel needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 "
            f"set before dllm_kernels.kernels is imported; got a tensor on {t.device}"
        )


def dense(t: torch.Tensor | None) -> torch.Tensor | None:
    """A per-row ``[B]`` vector as the kernels read it (``ptr + b``): contiguous. Such vectors are
    often views of a larger packed table; copying B elements beats a stride argument per vector."""
    return None if t is None else t.contiguous()


def empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate a kernel output. Launchers call it as ``_utils.empty`` so that the tests can
    replace it with a poisoning allocator (NaN / -1 filled) and catch unwritten elements."""
    return torch.empty(*shape, dtype=dtype, device=device)


@dataclass(frozen=True)
class AotSpec:
    """One configuration a launcher can pick, for ahead-of-time compilation in CI.

    ``signature`` maps every non-constexpr argument to its Triton type (``*fp32``, ``i32``, ...);
    ``constexprs`` gives the compile-time values. ``main`` configurations must not spill.
    """

    name: str
    kernel: Callable[..., Any]
    signature: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    main: bool = True
    enable_fp_fusion: bool = True  # False where a kernel must round like unfused PyTorch ops
    # arguments assumed divisible by 16 (pointers: 16-byte aligned), as the JIT specializes them
    # for the tensors and strides the launcher is meant for; without this every tile element
    # gets its own 64-bit address and the register counts mean nothing
    aligned: tuple[str, ...] = ()
    # registers per thread a main configuration may use: the default leaves room for 3 programs
    # of 4 warps per SM (bandwidth-bound kernels); kernels whose shared memory allows one program
    # per SM anyway (attention) declare more
    max_registers: int = 168


def aot_signature(kernel: Any, types: dict[str, str]) -> dict[str, str]:
    """An :class:`AotSpec` signature from ``types``, space-separated argument names -> their
    Triton type: every named argument of ``kernel`` with its type, in the kernel's argument
    order. A name that is no argument of ``kernel``, or is named twice, is an error."""
    sig = {}
    for names, ty in types.items():
        for name in names.split():
            if name not in kernel.arg_names or name in sig:
                raise ValueError(f"aot_signature: {name!r} is no argument of the kernel, or is named twice")
            sig[name] = ty
    return {name: sig[name] for name in kernel.arg_names if name in sig}


TORCH_TO_TRITON = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
