"""The block scheduler: one block at a time, for every row of the batch at once (host side)."""

from __future__ import annotations

import numpy as np
import torch

from .._schedule import num_transfer_schedule
from ..policies import FIRST_TOKEN_RULE, Policy
from .plan import NCOL, Col, Geometry


class BlockRows:
    """One block at a time (LLaDA vanilla, Fast-dLLM, Streaming-dLLM, R2-dLLM), every row of the
    batch at once (arrays over rows): a block's first forward (full with a cache), then forwards
    until it has no mask (or exactly ``steps_per_block``), then the next block. With
    ``idle_forward`` (Fast-dLLM's cached loops) the block is tested only after its second
    forward."""

    reads_commits = False  # plan() does not read the last step's commits

    def __init__(self, policy: Policy, geo: Geometry, B: int):
        self.p, self.g = policy, geo
        self.spb = policy.steps_per_block or (geo.bs if policy.rule.base == "topk" else 0)
        self.min_forwards = 2 if policy.idle_forward else 1
        self.k = np.zeros(B, np.int64)  # current block
        self.i = np.zeros(B, np.int64)  # forwards run in the current block
        self.nfe = np.zeros(B, np.int64)
        self.done = np.zeros(B, bool)
        # per row, the k of each step of the block; a last column of 0 for rows past it
        self.schedule = np.zeros((B, self.spb + 1), np.int64)
        start = FIRST_TOKEN_RULE if policy.ar_first_token else policy.block_start_rule
        self.rules = [policy.rule] + ([start] if start is not None and start != policy.rule else [])
        self._table = self._columns()
        self._base = self._rows = None  # the empty plan and the row numbers, per batch size
        self._kc = np.zeros(B, np.int64)  # the block index, clamped to the last block
        self._cols = None  # the rows' table columns while no block starts (None: look them up)

    def select(self, keep: np.ndarray) -> None:
        """Keep only the rows ``keep`` (the others left the batch)."""
        self.k, self.i, self.nfe, self.done, self.schedule, self._kc = (
            a[keep] for a in (self.k, self.i, self.nfe, self.done, self.schedule, self._kc)
        )
        self._cols = None

    def _columns(self) -> np.ndarray:
        """``[2 nb, Col.RULE + 1]`` the plan's columns ``FWD`` to ``RULE`` of a forwarding row in
        block k, row ``2 k + first`` (first: the block's first forward). They change only at
        block boundaries, so :meth:`plan` looks them up; ``K`` holds Dream's first-token 1 (the
        LLaDA schedule's count is added per step)."""
        p, g = self.p, self.g
        k = np.repeat(np.arange(g.nb, dtype=np.int64), 2)
        first = np.tile(np.array([False, True]), g.nb)
        n = len(k)
        s = g.P + k * g.bs
        e = s + g.bs
        cache, zero = p.cache, np.zeros(n, np.int64)
        if cache == "dual":
            a, c, tail = np.where(first, 0, s), np.where(first, g.L, e), zero
        else:
            a = np.where(first, 0, s) if cache == "prefix" else zero
            if p.suffix_window is None:
                c, tail = np.full(n, g.L), zero
            else:  # the block, the first W positions after it, and the canvas's last position
                c, tail = np.minimum(e + p.suffix_window, g.L), (g.L - e > p.suffix_window).astype(np.int64)
        clen = {"none": zero, "prefix": np.where(first, 0, s), "dual": np.full(n, g.L)}[cache]
        w0 = w1 = zero
        if cache == "prefix":  # a block's first forward caches the prefix its later forwards read
            w1 = np.where(first, s // g.bs, 0)
        elif cache == "dual":
            w0, w1 = np.where(first, 0, s // g.bs), np.where(first, g.L // g.bs, e // g.bs)
        start = first & (len(self.rules) > 1)
        ae = np.where(first & p.ar_first_token, s + 1, e)  # Dream: the block's first position only
        kk = (first & p.ar_first_token).astype(np.int64)
        # LLaDA's schedule decides the count of a "topk" step (it may be 0 when a block holds fewer
        # masks than steps); every other rule guarantees progress in the block
        topk = np.array([r.base == "topk" for r in self.rules])[start.astype(np.int64)]
        fs, fe = np.where(topk, 0, s), np.where(topk, 0, ae)
        out = np.zeros((n, Col.RULE + 1), np.int64)
        out[:, Col.FWD], out[:, Col.WIN_START], out[:, Col.WIN_END], out[:, Col.TAIL] = 1, a, c, tail
        out[:, Col.CACHE_LEN], out[:, Col.WRITE_START], out[:, Col.WRITE_END] = clen, w0, w1
        out[:, Col.ACTIVE_START], out[:, Col.ACTIVE_END], out[:, Col.FORCE_START], out[:, Col.FORCE_END] = s, ae, fs, fe
        out[:, Col.K], out[:, Col.RULE] = kk, start
        return out

    def plan(self, x: np.ndarray, _committed: np.ndarray | None, live: np.ndarray) -> tuple[np.ndarray, ...]:
        """``x``: the canvas ``[B, L]``; ``live``: rows below ``max_nfe``. Returns the ``[B, NCOL]``
        plan (rows with neither a forward nor a fill are all zero), the rows that forward and the
        rows with a fill (bool ``[B]``)."""
        p, g, B = self.p, self.g, x.shape[0]
        if self._base is None or len(self._base) != B:
            self._base = np.zeros((B, NCOL), np.int64)
            self._base[:, Col.FILL] = g.L
            self._rows = np.arange(B)
        out, rows = self._base.copy(), self._rows
        act = live & ~self.done
        if self.spb:
            complete = act & (self.i >= self.spb)  # spb > 0: also a forward in the block
        else:
            blk = x[:, g.P :].reshape(B, g.nb, g.bs)[rows, self._kc]
            complete = act & (self.i >= self.min_forwards) & ~(blk == g.mask).any(1)
        fwd = act
        if complete.any():  # a block boundary
            stop = np.zeros(B, bool)
            if p.early_exit:  # Streaming-dLLM: EOS in a completed block
                stop = complete & (x[:, g.P :].reshape(B, g.nb, g.bs)[rows, self._kc] == g.eos).any(1)
                self.done |= stop
                out[stop, Col.FILL] = g.P + (self.k[stop] + 1) * g.bs - 1
                out[stop, Col.STEP] = self.nfe[stop] - 1
            nxt = complete & ~stop
            self.k[nxt] += 1
            self.i[nxt] = 0
            self.done |= nxt & (self.k == g.nb)
            self._kc, self._cols = np.minimum(self.k, g.nb - 1), None
            fwd = act & ~self.done
        if not fwd.any():
            return out, fwd, out[:, Col.FILL] < g.L
        cols = self._cols
        if cols is None:  # the columns change at a block's first forward and at the one after it
            first = self.i == 0
            cols = self._table[2 * self._kc + first]
            new = fwd & first
            if not new.any():
                self._cols = cols
            elif self.spb:  # LLaDA: m masks over spb steps, the first m % spb get one more
                m = (x[:, g.P :].reshape(B, g.nb, g.bs)[rows, self._kc] == g.mask).sum(1)[new]
                self.schedule[new, : self.spb] = num_transfer_schedule(torch.from_numpy(m), self.spb).numpy()
        np.multiply(cols, fwd[:, None], out=out[:, : Col.RULE + 1])  # rows that do not forward: zero
        if self.spb:
            kk = self.schedule[rows, self.i]
            if p.ar_first_token:
                kk = np.where(self.i == 0, 1, kk)
            np.multiply(kk, fwd, out=out[:, Col.K])
        self.nfe += fwd
        self.i += fwd
        np.copyto(out[:, Col.STEP], self.nfe - 1, where=fwd)
        return out, fwd, out[:, Col.FILL] < g.L
