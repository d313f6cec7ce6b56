"""Triton's ``tl.rand`` (Philox 4x32-10) re-implemented with int64 torch ops.

The reference samplers draw exactly the uniforms the Triton kernels draw for the same
``(seed, offset)``, so a reference run and a kernel run with the same seed propose the same
tokens (up to ties within the last ulp of ``log``).
"""

import torch

_M32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57


def _mul32(a: int, b: torch.Tensor):
    """(hi, lo) 32-bit halves of the 64-bit product of a constant and uint32 values in int64."""
    p_lo = (a & 0xFFFF) * b  # < 2**48
    p_hi = (a >> 16) * b  # < 2**48
    t = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2**49
    return (p_hi >> 16) + (t >> 32), t & _M32


def _philox_4x32_10(c0: torch.Tensor, c1: torch.Tensor, seed: int | torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Philox 4x32-10 of the counter ``(c0, c1, 0, 0)`` (uint32 values in int64 tensors of one
    shape) under the 64-bit key ``seed`` (an int, or an int64 tensor of that shape): the four
    uint32 words, as int64 tensors."""
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(10):
        hi_b, lo_b = _mul32(_ROUND_B, c2)
        hi_a, lo_a = _mul32(_ROUND_A, c0)
        c0, c2, c1, c3 = hi_b ^ c1 ^ k0, hi_a ^ c3 ^ k1, lo_b, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def philox_uniform(seed: int | torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``tl.rand(seed, offset)`` for an int64 ``offset`` tensor: fp32 uniforms in [0, 1).

    ``seed`` is an int or an integer tensor broadcastable against ``offset`` (one seed per
    element, e.g. ``[R, 1]`` per-row seeds against ``[1, V]`` ids); its 64 bits are the key, as
    ``tl.rand`` casts the seed to uint64.
    """
    offset = offset.to(torch.int64)
    c0, c1 = offset & _M32, (offset >> 32) & _M32
    if isinstance(seed, torch.Tensor):
        seed = seed.to(torch.int64)
        c0, seed = torch.broadcast_tensors(c0, seed)
        c1 = c1.expand_as(c0)
    c0 = _philox_4x32_10(c0, c1, seed)[0]
    x = torch.where(c0 >= 2**31, c0 - 2**32, c0)  # bitcast to int32
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def philox_randint4x(seed: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tl.randint4x(seed, offset)``: Philox 4x32-10 of the counter ``(offset mod 2**32,
    offset >> 32, 0, 0)`` under the key ``seed`` (64 bits), as four int64 tensors of uint32
    values. ``seed`` and ``offset`` are integer tensors that broadcast against each other."""
    offset = offset.to(torch.int64)
    seed = seed.to(torch.int64)
    c0, seed = torch.broadcast_tensors(offset & _M32, seed)
    c1 = ((offset >> 32) & _M32).expand_as(c0)
    return _philox_4x32_10(c0, c1, seed)
