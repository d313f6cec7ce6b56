"""Internal op ``block_edit``: the structural edit of LLaDA2.2's InDel decoding on the device.

SGLang 0.5.23's ``JointThresholdInDel`` lets a step write a DELETE token (the position is
removed, the block shifts left and is padded with MASK) or a SPLIT token (the position becomes
``[MASK, old token]``, the rest shifts right and what passes the block's end is dropped); a
marker per position (SGLang's ``is_orig_mask``) moves with its token, a created MASK gets
``False``. SGLang rebuilds each such row in a Python loop; this op does it for every row at once
with a prefix sum over the block and one scatter (Triton kernel: ``kernels/block_edit.py``;
reference: ``reference/block_edit.py``), no host sync. Used by
``dllm_kernels.integrations.sglang.DllmKernelsJointThresholdInDel``.
"""

from __future__ import annotations

import torch

from ._checks import check_tensor
from .backend import register_op, resolve_backend
from .reference.block_edit import block_edit as _reference

__all__ = ["MAX_BLOCK_EDIT", "block_edit"]

MAX_BLOCK_EDIT = 2048  # positions per row (one program holds a row); = kernels/block_edit.py's

_block_edit_op = register_op(
    "block_edit",
    "block_edit",
    "(Tensor x, Tensor old, Tensor marker, Tensor delete, Tensor split, SymInt mask_id) -> (Tensor, Tensor)",
    fake=lambda x, old, marker, delete, split, mask_id: (torch.empty_like(x), torch.empty_like(marker)),
)


def block_edit(
    x: torch.Tensor,
    old: torch.Tensor,
    marker: torch.Tensor,
    delete: torch.Tensor,
    split: torch.Tensor,
    *,
    mask_id: int,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Delete and split positions of each row of a block; returns new ``(tokens, marker)``.

    Per row, position ``i`` is dropped if ``delete[i]``; else, if ``split[i]``, it becomes the
    two positions ``[mask_id, old[i]]`` with markers ``[False, marker[i]]``; else it stays
    ``x[i]`` with ``marker[i]``. The pieces are laid out left to right from position 0 (an
    exclusive prefix sum of the widths 0 / 2 / 1), then truncated to ``L`` (what a split pushes
    past the end is dropped) or padded with ``mask_id`` and ``False``: exactly SGLang's
    ``JointThresholdInDel._apply_edit_operations`` (whose prompt positions are never flagged).

    Args:
        x: int64 ``[B, L]``, the block after the step's writes (``L <= 2048``).
        old: int64 ``[B, L]``, the block before them (a SPLIT keeps ``old[i]``).
        marker: bool ``[B, L]``, carried with the tokens (SGLang: "this position was a MASK of
            the original block").
        delete, split: bool ``[B, L]``; a position flagged both is deleted.
        mask_id: the MASK token id (int >= 0).
        backend: ``"auto"`` | ``"triton"`` | ``"reference"`` (see :mod:`dllm_kernels.backend`).

    Returns:
        ``(tokens int64 [B, L], marker bool [B, L])``, new tensors.
    """
    op = "block_edit"
    check_tensor(op, "x", x, ndim=2, dtypes=(torch.int64,))
    B, L = x.shape
    if L > MAX_BLOCK_EDIT:
        raise ValueError(f"{op}: x has {L} positions per row, more than {MAX_BLOCK_EDIT}")
    check_tensor(op, "old", old, dtypes=(torch.int64,), device=x.device, shape=(B, L))
    for name, t in (("marker", marker), ("delete", delete), ("split", split)):
        check_tensor(op, name, t, dtypes=(torch.bool,), device=x.device, shape=(B, L))
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or not 0 <= mask_id < 2**31:
        raise ValueError(f"{op}: mask_id must be an int in [0, 2**31), got {mask_id!r}")
    if resolve_backend(backend, x.device, op) == "reference":
        return _reference(x, old, marker, delete, split, mask_id=mask_id)
    return _block_edit_op(x, old, marker, delete, split, mask_id)
