"""Helpers shared by the launchers: interpreter detection, device facts, AOT specs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import triton

from dllm_kernels._env import interpreter_enabled

# Decided once, like Triton itself decides at decoration time whether @triton.jit builds an
# InterpretedFunction: the launchers pick interpreter-friendly meta-parameters (few programs,
# large blocks) only when the kernels really are interpreted.
IS_INTERPRET = interpreter_enabled()


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


TORCH_TO_TRITON = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
