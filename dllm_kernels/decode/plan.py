"""A step's plan (the one int64 ``[B, NCOL]`` matrix the host ships to the device per step) and the
canvas geometry of a :func:`~dllm_kernels.decode.generate` call.

The schedulers (:mod:`.blocks`, :mod:`.multi_block`) write one plan row per batch row; it is the
only thing that crosses to the device per step, in one copy, and the forward's index tables are
built from it there (:func:`dllm_kernels.decode.step.device_inputs`). The columns are read by name,
through :class:`Col`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class Col(enum.IntEnum):
    """The columns of a step's plan, one int64 row per batch row. A row that does not forward is
    all zero but for ``FILL`` and ``STEP``. Positions are canvas columns; block numbers count
    blocks of the canvas from 0 (the cache is written block by block).

    ================ ==========================================================================================
    ``FWD``          1: the row forwards this step, 0: it does not
    ``WIN_START``    first canvas position of the forwarded window ``[WIN_START, WIN_END)``
    ``WIN_END``      end of the forwarded window
    ``TAIL``         1: the canvas's last position is forwarded after the window (Streaming-dLLM's
                     suffix window keeps it), 0: not
    ``CACHE_LEN``    KV-cache rows the forward attends (0 without a cache read)
    ``WRITE_START``  first block written to the KV cache, ``[WRITE_START, WRITE_END)``
    ``WRITE_END``    end of the written blocks (``WRITE_START == WRITE_END``: no write)
    ``ACTIVE_START`` first position the commit rule may take; logits row 0 is this position
    ``ACTIVE_END``   end of the commit region ``[ACTIVE_START, ACTIVE_END)``
    ``FORCE_START``  forced-progress region ``[FORCE_START, FORCE_END)`` (at least one commit
    ``FORCE_END``    there per step; empty: none)
    ``K``            the commit count of a ``topk`` step (LLaDA's schedule; Dream's first token: 1)
    ``RULE``         the commit rule's index in the scheduler's ``rules``
    ``FILL``         every position after it becomes EOS this step (an early stop); ``L``: none
    ``STEP``         the row's forward index (0-based), recorded in ``commit_step``
    ================ ==========================================================================================
    """

    FWD = 0
    WIN_START = 1
    WIN_END = 2
    TAIL = 3
    CACHE_LEN = 4
    WRITE_START = 5
    WRITE_END = 6
    ACTIVE_START = 7
    ACTIVE_END = 8
    FORCE_START = 9
    FORCE_END = 10
    K = 11
    RULE = 12
    FILL = 13
    STEP = 14


NCOL = len(Col)

# The step's extents as one matrix product over the plan's columns WIN_START..ACTIVE_END (the
# columns of a row that does not forward are zero, so are its extents):
#   forwarded columns = (WIN_END - WIN_START) + TAIL
#   logits rows       = ACTIVE_END - ACTIVE_START
#   written blocks    = WRITE_END - WRITE_START
_EXTENT_TERMS = {
    0: {Col.WIN_END: 1, Col.TAIL: 1, Col.WIN_START: -1},
    1: {Col.ACTIVE_END: 1, Col.ACTIVE_START: -1},
    2: {Col.WRITE_END: 1, Col.WRITE_START: -1},
}
_EXTENT_COLUMNS = slice(int(Col.WIN_START), int(Col.ACTIVE_END) + 1)  # the columns the terms read
_EXTENT = np.zeros((_EXTENT_COLUMNS.stop - _EXTENT_COLUMNS.start, 3), np.int64)
for _j, _terms in _EXTENT_TERMS.items():
    for _c, _v in _terms.items():
        _EXTENT[_c - _EXTENT_COLUMNS.start, _j] = _v


def step_extents(plan: np.ndarray) -> tuple[int, int, int]:
    """The widest extents of a step over its rows: ``(Lq, Lo, nw)``, the forwarded columns
    (window + tail), the logits rows (the commit region) and the written cache blocks."""
    Lq, Lo, nw = (plan[:, _EXTENT_COLUMNS] @ _EXTENT).max(0).tolist()
    return Lq, Lo, nw


@dataclass(frozen=True)
class Geometry:
    """The canvas of one :func:`~dllm_kernels.decode.generate` call and its special token ids."""

    P: int  # block-aligned start of the generation region (the padded prompt length)
    L: int  # canvas length, P + gen_length
    bs: int  # block length
    mask: int  # mask token id
    eos: int  # EOS id (the fill token of early stops)
    eot: int | None = None  # LLaDA's end-of-turn id, if the model has one

    @property
    def nb(self) -> int:
        """The number of generation blocks."""
        return (self.L - self.P) // self.bs
