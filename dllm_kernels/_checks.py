"""Input validation helpers: every error names the argument, what was expected and what came."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ._types import HEAD_DIMS

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return "/".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    op: str,
    name: str,
    t,
    *,
    ndim: int | Sequence[int] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
    shape: Sequence[int | None] | None = None,
) -> torch.Tensor:
    """Check type, rank, dtype, device and (partial) shape of ``t``; ``None`` in shape = any."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{op}: {name} must be {want}, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must have dtype {_names(dtypes)}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} must be on {device} (like the other inputs), got {t.device}")
    if shape is not None:
        ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
        if not ok:
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{op}: {name} must have shape {want}, got {list(t.shape)}")
    return t


def check_int_list(op: str, name: str, values, *, low: int, high: int) -> tuple[int, ...]:
    """Normalise a sequence of ints (or a CPU integer tensor) and check ``low <= v < high``."""
    if isinstance(values, torch.Tensor):
        if values.device.type != "cpu" or values.dtype.is_floating_point or values.dim() > 1:
            raise TypeError(
                f"{op}: {name} must be a sequence of ints or a 1-D integer CPU tensor, "
                f"got a {values.dim()}-D {values.dtype} tensor on {values.device}"
            )
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{op}: {name} must be a sequence of ints, got {type(values).__name__}")
    values = list(values)
    bad_types = [v for v in values if isinstance(v, bool) or not isinstance(v, (int,)) and not hasattr(v, "__index__")]
    if bad_types:
        raise TypeError(f"{op}: {name} must hold ints, got {bad_types[:3]}")
    out = tuple(int(v) for v in values)
    bad = [v for v in out if not low <= v < high]
    if bad:
        raise ValueError(f"{op}: {name} must lie in [{low}, {high}), got {bad}")
    return out


INT_DTYPES = (torch.int32, torch.int64)


def check_int_tensor(
    op: str,
    name: str,
    t,
    *,
    shape: Sequence[int | None],
    device: torch.device,
    low: int,
    high: int | None = None,
) -> torch.Tensor:
    """An int32/int64 tensor of ``shape`` on ``device`` whose values lie in ``[low, high]``.

    Values are only read when they are already on the host (CPU tensors, outside of tracing):
    reading a CUDA tensor would cost a device sync on the hot path and break graph capture, so
    kernels that take such tensors clamp the values they read instead.
    """
    check_tensor(op, name, t, dtypes=INT_DTYPES, device=device, shape=shape)
    if t.device.type == "cpu" and t.numel() and not torch.compiler.is_compiling():
        lo, hi = int(t.min()), int(t.max())
        if lo < low or (high is not None and hi > high):
            want = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise ValueError(f"{op}: {name} values must lie in {want}, got min {lo} and max {hi}")
    return t


def check_last_dim_contiguous(op: str, name: str, t: torch.Tensor) -> None:
    """Kernels index the last dimension with unit stride (any other strides are fine)."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{op}: {name} must have a contiguous last dimension (stride 1; any other strides are "
            f"fine), got strides {tuple(t.stride())}"
        )


def check_no_internal_overlap(op: str, name: str, t: torch.Tensor) -> None:
    """An output written in place must not have elements sharing memory (a stride-0, expanded
    dimension, or strides that fold the tensor onto itself): a write through one element would
    silently change others. Checked from shape and strides only (no data read), in eager calls
    only: dynamo cannot trace ``torch._debug_has_internal_overlap``, so while ``torch.compile``
    traces the op (``torch.compiler.is_compiling()``) the check is skipped and a compiled caller
    must pass non-overlapping outputs itself."""
    if torch.compiler.is_compiling():
        return
    if torch._debug_has_internal_overlap(t) == 1:  # 1: MemOverlap.Yes (2: too hard to tell)
        raise ValueError(
            f"{op}: {name} must not overlap itself in memory (it is written in place), got shape "
            f"{list(t.shape)} and strides {tuple(t.stride())}: pass a tensor with its own storage, e.g. .clone()"
        )


def check_head_dim(op: str, name: str, D: int) -> None:
    """An attention head dim (``name``'s last dimension) the kernels are built for."""
    if D not in HEAD_DIMS:
        raise ValueError(f"{op}: head dim ({name}.shape[-1]) must be one of {HEAD_DIMS}, got {D}")


def check_kv_pair(op: str, names: tuple[str, str], k, v, *, B: int, D: int, dtype, device, like: str) -> None:
    """``k`` and ``v`` are both None, or both ``[B, L, H, D]`` with ``like``'s dtype and device and
    the same shape, each with a unit-stride last dimension."""
    if (k is None) != (v is None):
        raise ValueError(f"{op}: {names[0]} and {names[1]} must be given together, got only {names[k is None]}")
    if k is None:
        return
    for name, t in zip(names, (k, v)):
        check_tensor(op, name, t, ndim=4, device=device)
        if t.dtype != dtype:
            raise TypeError(f"{op}: {name} must have {like}'s dtype {dtype}, got {t.dtype}")
        check_tensor(op, name, t, shape=(B, None, None, D))
        check_last_dim_contiguous(op, name, t)
    check_tensor(op, names[1], v, shape=tuple(k.shape))
