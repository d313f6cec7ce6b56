"""Validation of ``generate``'s arguments and of :class:`~dllm_kernels.policies.Policy` numbers,
done once per call, up front, each error one line naming the argument (the loop itself then runs
unchecked), and the overflow-free per-row, per-step sampling seed (:func:`mix_seed`)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from .backend import BACKENDS

SEED_LIMIT = 2**63  # token_stats seeds lie in [0, 2**63)


def is_int(v) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_int(op: str, name: str, v, *, low: int | None = None, high: int | None = None) -> int:
    """``v`` must be an int (bools rejected) in ``[low, high)``; returns it as a Python int."""
    if not is_int(v):
        raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__} {v!r}")
    v = int(v)
    if (low is not None and v < low) or (high is not None and v >= high):
        lo = "-inf" if low is None else low
        raise ValueError(f"{op}: {name} must be an int in [{lo}, {'inf' if high is None else high}), got {v}")
    return v


def check_real(op: str, name: str, v, *, low: float | None = None) -> float:
    """``v`` must be a finite real number (bools rejected), ``>= low``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{op}: {name} must be a number, got {type(v).__name__} {v!r}")
    v = float(v)
    if not math.isfinite(v) or (low is not None and v < low):
        raise ValueError(f"{op}: {name} must be a finite number{f' >= {low}' if low is not None else ''}, got {v}")
    return v


def check_policy_numbers(policy) -> None:
    """The integer fields of a :class:`Policy` (its rule checks its own numbers)."""
    op = f"policy {policy.name}"
    check_int(op, "steps_per_block", policy.steps_per_block, low=0, high=2**31)
    check_int(op, "cache_delay", policy.cache_delay, low=0, high=2**31)
    check_int(op, "refresh_interval", policy.refresh_interval, low=1)
    if policy.suffix_window is not None:
        check_int(op, "suffix_window", policy.suffix_window, low=0, high=2**31)
    check_real(op, "block_add_threshold", policy.block_add_threshold)
    check_real(op, "decoded_token_threshold", policy.decoded_token_threshold)
    for name in (
        "ar_first_token",
        "early_exit",
        "early_stop",
        "suppress_eos",
        "confidence_eos_eot_inf",
        "d3_stale_candidates",
    ):
        if not isinstance(getattr(policy, name), bool):
            raise TypeError(f"{op}: {name} must be a bool, got {getattr(policy, name)!r}")


def check_generate_args(
    model, policy, *, gen_length, block_length, temperature, seed, max_nfe, backend, progress
) -> None:
    """Everything ``generate`` can check before building the canvas (the prompt is checked by the
    canvas builder, the canvas length against ``max_seq_len`` by :func:`check_canvas_length`)."""
    op = "generate"
    cfg = getattr(model, "config", None)
    missing = [a for a in ("vocab_size", "mask_id", "eos_id") if not hasattr(cfg, a)]
    if missing or not callable(model):
        raise TypeError(
            f"{op}: model must be callable with a config holding vocab_size, mask_id, eos_id "
            f"(dllm_kernels.models.DiffusionModel); missing {missing or ['__call__']}"
        )
    gen_length = check_int(op, "gen_length", gen_length, low=1)
    block_length = check_int(op, "block_length", block_length, low=1)
    if gen_length % block_length:
        raise ValueError(f"{op}: gen_length ({gen_length}) must be a multiple of block_length ({block_length})")
    check_real(op, "temperature", temperature, low=0.0)
    check_seed_arg(seed)
    check_int(op, "max_nfe", max_nfe, low=1)
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(progress, bool):
        raise TypeError(f"{op}: progress must be a bool, got {progress!r}")
    if policy.cache != "none" and not callable(getattr(model, "new_cache", None)):
        raise ValueError(
            f"{op}: policy {policy.name!r} uses cache={policy.cache!r} but the model has no new_cache "
            "(an uncached model, e.g. HFModelAdapter): pass cache='none' where the policy has one"
        )


def check_canvas_length(model, longest_prompt: int, gen_length: int) -> None:
    """The longest prompt plus ``gen_length`` must fit the model's positions (``max_seq_len``)."""
    limit = getattr(model.config, "max_seq_len", None)
    if limit is not None and longest_prompt + gen_length > limit:
        raise ValueError(
            f"generate: the longest prompt ({longest_prompt}) + gen_length ({gen_length}) exceeds the "
            f"model's max_seq_len ({limit})"
        )


def check_seed_arg(seed) -> None:
    """``generate``'s ``seed``: None, an int in ``[0, 2**63)``, or a sequence of such ints (one
    per prompt; the count is checked by :func:`row_seeds`)."""
    op = "generate"
    if seed is None or is_int(seed):
        if seed is not None:
            check_int(op, "seed", seed, low=0, high=SEED_LIMIT)
        return
    if isinstance(seed, (str, bytes)) or not (isinstance(seed, Sequence) or hasattr(seed, "tolist")):
        raise TypeError(f"{op}: seed must be an int or a sequence of ints (one per prompt), got {type(seed).__name__}")
    values = seed.tolist() if hasattr(seed, "tolist") else list(seed)
    if not isinstance(values, list):  # a 0-d array or tensor
        values = [values]
    for i, v in enumerate(values):
        check_int(op, f"seed[{i}]", v, low=0, high=SEED_LIMIT)


def row_seeds(seed, B: int, draw) -> list[int]:
    """The B rows' seeds (``seed`` already checked by :func:`check_seed_arg`): an int is every
    row's, a sequence must hold exactly B, ``None`` calls ``draw()`` once for every row."""
    if seed is None:
        return [draw()] * B
    if is_int(seed):
        return [int(seed)] * B
    values = seed.tolist() if hasattr(seed, "tolist") else list(seed)
    if len(values) != B:
        raise ValueError(f"generate: seed holds {len(values)} seeds for {B} prompts (give one int, or one per prompt)")
    return [int(v) for v in values]


_M31 = 2**31 - 1
_ROUND_KEYS = (0x3C6EF372, 0x1B873593, 0x5851F42D)  # < 2**31: XOR keeps the halves in [0, 2**31)


def _mix31(a):
    """A bijection of ``[0, 2**31)`` (xor-shifts and multiplications by odd constants mod 2**31,
    every product below 2**58)."""
    a = ((a >> 16) ^ a) * 0x045D9F3B & _M31
    a = ((a >> 16) ^ a) * 0x045D9F3B & _M31
    return (a >> 16) ^ a


def mix_seed(seed, step, pos):
    """The sampling seed of one logits row of the decoding loop: ``seed ^ F(step, pos)``.

    ``seed`` is the row's seed in ``[0, 2**63)``, ``step`` the row's 0-based forward index and
    ``pos`` the position in the row's own sequence (canvas position minus its left padding);
    both are taken mod ``2**31``. ``F`` is a 3-round Feistel network over two 31-bit halves
    (round function :func:`_mix31`), so it is a bijection of ``[0, 2**62)``: one row never
    reuses a key, and rows with different seeds collide only by chance (the key then feeds
    ``token_stats``' Philox stream). Every intermediate stays below ``2**62`` (no int64
    overflow, no negative value) and the result lies in ``[0, 2**63)``. Works alike on Python
    ints and int64 tensors (the loop computes it on the device, broadcasting its arguments)."""
    left, right = step & _M31, pos & _M31
    for k in _ROUND_KEYS:
        left, right = right, left ^ _mix31(right ^ k)
    return seed ^ ((left << 31) | right)


class MaxNFEError(RuntimeError):
    """``generate`` reached ``max_nfe`` forwards on a row that still holds masks. ``result`` holds
    the partial :class:`~dllm_kernels.decode.GenerateResult` (masks left in place)."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result
