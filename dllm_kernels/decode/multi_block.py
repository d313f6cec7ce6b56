"""d3LLM's scheduler: pipelined multi-block decoding, for every row of the batch at once (host side)."""

from __future__ import annotations

import numpy as np

from ..policies import Policy
from .plan import NCOL, Col, Geometry


class MultiBlockRows:
    """d3LLM's pipelined multi-block decoding (``generate_multi_block``) and its delayed KV cache
    (``generate_multi_block_kv_cache``), step for step, every row of the batch at once (arrays
    over rows and blocks), including the bookkeeping the published code keeps (block mask counts
    decremented by commits, clamped at 0 only in the cached variant; an NFE counted for
    iterations that end the loop without a forward).

    Block 0 is the prompt ``[0, P)``, block ``i >= 1`` the generation block ``[P + (i-1) bs,
    P + i bs)``; a row holds the blocks ``[0, next)``. Per block: the scheduler's mask count,
    ``active`` ("fully activated": receives forced progress), ``done_at`` (the NFE at which it
    was first seen complete, -1 for none; delayed cache) and ``cached``."""

    reads_commits = True  # plan() counts the last step's commits per block

    def __init__(self, policy: Policy, geo: Geometry, B: int):
        self.p, self.g = policy, geo
        self.kv = policy.cache == "delayed"
        self.rules = [policy.rule]
        n = geo.nb + 1
        self.start = np.array([0] + [geo.P + i * geo.bs for i in range(geo.nb)], np.int64)
        self.end = np.array([geo.P] + [geo.P + (i + 1) * geo.bs for i in range(geo.nb)], np.int64)
        self.total = np.array([max(geo.P, 1)] + [geo.bs] * geo.nb, np.float64)
        self.mask = np.zeros((B, n), np.int64)
        self.mask[:, 1] = geo.bs  # block 1 starts fully masked
        self.active = np.zeros((B, n), bool)
        self.active[:, 0] = True
        self.active[:, 1] = 1.0 >= policy.decoded_token_threshold
        self.done_at = np.full((B, n), -1, np.int64)
        if self.kv:
            self.done_at[:, 0] = 0
        self.cached = np.zeros((B, n), bool)
        self.next = np.full(B, 2, np.int64)  # blocks [0, next) exist
        self.nfe = np.zeros(B, np.int64)
        self.cache_length = np.zeros(B, np.int64)
        self.has_cache = np.zeros(B, bool)
        self.done = np.zeros(B, bool)
        self.pending = np.zeros(B, bool)  # the last step forwarded: its commits are still to count

    _ARRAYS = ("mask", "active", "done_at", "cached", "next", "nfe", "cache_length", "has_cache", "done", "pending")

    def select(self, keep: np.ndarray) -> None:
        """Keep only the rows ``keep`` (the others left the batch)."""
        for name in self._ARRAYS:
            setattr(self, name, getattr(self, name)[keep])

    def _progress(self) -> np.ndarray:
        """``[B, nb + 1]`` each block's decoded fraction, ``1 - mask / total`` (float64, as the
        published code computes it in Python floats)."""
        return 1 - self.mask / self.total

    def plan(self, x: np.ndarray, committed: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, ...]:
        """As :meth:`.blocks.BlockRows.plan`; ``committed``: the positions the last step's commit rules
        took (fills excluded)."""
        p, g, B = self.p, self.g, x.shape[0]
        n = g.nb + 1
        out = np.zeros((B, NCOL), np.int64)
        out[:, Col.FILL] = g.L
        act = live & ~self.done
        exists = np.arange(n)[None, :] < self.next[:, None]  # [B, n]

        # the published bookkeeping: subtract the last step's commits from the block counts
        upd = act & self.pending
        if upd.any():
            cnt = np.zeros((B, n), np.int64)
            cnt[:, 1:] = committed[:, g.P :].reshape(B, g.nb, g.bs).sum(2)
            sel = upd[:, None] & exists & (cnt > 0) & (np.arange(n) > 0)[None, :]
            if self.kv:
                self.mask = np.where(sel, np.maximum(0, self.mask - cnt), self.mask)
            else:
                self.mask = np.where(sel & (self.mask > 0), self.mask - cnt, self.mask)
            self.pending &= ~upd

        finished = act & ~(x[:, g.P :] == g.mask).any(1) & (self.next > g.nb)
        self.done |= finished
        act &= ~finished
        if not act.any():
            return out, act, out[:, Col.FILL] < g.L
        self.nfe[act] += 1
        nfe = self.nfe
        out[act, Col.STEP] = nfe[act] - 1

        fill = np.full(B, -1, np.int64)
        has_eos = np.zeros(B, bool)
        xe = x
        if p.early_stop:
            is_eos = x[:, g.P :] == g.eos
            has_eos = act & is_eos.any(1)
            if has_eos.any():
                fill = np.where(has_eos, g.P + is_eos.argmax(1), -1)
                pos = np.arange(g.L)[None, :]
                xe = np.where(has_eos[:, None] & (pos > fill[:, None]), g.eos, x)
                after = has_eos[:, None] & exists & (self.start[None, :] > fill[:, None]) & (np.arange(n) > 0)
                zero = after & (self.mask != 0)
                self.mask[zero], self.active[zero] = 0, True
                straddle = has_eos[:, None] & exists & (self.start[None, :] <= fill[:, None])
                straddle &= (self.end[None, :] > fill[:, None]) & (np.arange(n) > 0)
                m = ((xe[:, g.P :] == g.mask) & (pos[:, g.P :] <= fill[:, None])).reshape(B, g.nb, g.bs).sum(2)
                m = np.concatenate([np.zeros((B, 1), np.int64), m], 1)
                change = straddle & (m != self.mask)
                self.mask[change] = m[change]
                self.active |= change & (m == 0)
                # every block that starts after the fill is added at once, complete
                grow = has_eos & (self.next <= g.nb) & (g.P + (self.next - 1) * g.bs > fill)
                add = grow[:, None] & (np.arange(n)[None, :] >= self.next[:, None])
                self.mask[add], self.active[add] = 0, True
                if self.kv:
                    self.done_at[add] = np.broadcast_to(nfe[:, None], add.shape)[add]
                    self.cached[add] = True
                self.next = np.where(grow, n, self.next)
                exists = np.arange(n)[None, :] < self.next[:, None]
                stop = has_eos & ~(xe[:, g.P :] == g.mask).any(1)
                if stop.any():
                    self.done |= stop
                    out[stop, Col.FILL] = fill[stop]
                    act &= ~stop

        # activation by the predecessor's progress (progress reads the counts only)
        prog = self._progress()
        self.active[:, 1:] |= act[:, None] & exists[:, 1:] & (prog[:, :-1] >= p.decoded_token_threshold)
        # a new block when the last one is far enough (not after an EOS)
        rows = np.arange(B)
        last = self.next - 1
        lp = prog[rows, last]
        new = act & (self.next <= g.nb) & ~has_eos & (self.next > 1)
        new &= (lp >= p.block_add_threshold) | (self.mask[rows, last] == 0)
        if new.any():
            nb_i = np.minimum(self.next, g.nb)
            cnt = (xe[:, g.P :].reshape(B, g.nb, g.bs) == g.mask).sum(2)[rows, nb_i - 1]
            r = rows[new]
            self.mask[r, nb_i[new]] = cnt[new]
            self.active[r, nb_i[new]] = lp[new] >= p.decoded_token_threshold
            self.next = self.next + new
            exists = np.arange(n)[None, :] < self.next[:, None]
        # the rightmost block that is active or has masks bounds the commit region
        cand = exists & (self.active | (self.mask > 0))
        cand[:, 0] = True
        right = n - 1 - cand[:, ::-1].argmax(1)
        empty = act & (right == 0)
        self.done |= empty
        act &= ~empty
        active_end = self.end[right]
        forced = exists & self.active & (self.mask > 0)
        forced[:, 0] = False
        has_force = forced.any(1)
        fi = forced.argmax(1)
        fs, fe = np.where(has_force, self.start[fi], 0), np.where(has_force, self.end[fi], 0)

        a, clen, w0, w1 = np.zeros(B, np.int64), np.zeros(B, np.int64), np.zeros(B, np.int64), np.zeros(B, np.int64)
        if self.kv and act.any():
            a, clen, w0, w1, stop = self._delayed_cache_forward(act, active_end, exists)
            self.done |= stop
            act &= ~stop
        self.pending |= act
        s = np.maximum(g.P, a)
        cols = np.zeros((B, Col.FORCE_END + 1), np.int64)  # the window always ends at the canvas's end
        cols[:, Col.FWD], cols[:, Col.WIN_START], cols[:, Col.WIN_END] = 1, a, g.L
        cols[:, Col.CACHE_LEN], cols[:, Col.WRITE_START], cols[:, Col.WRITE_END] = clen, w0, w1
        cols[:, Col.ACTIVE_START], cols[:, Col.ACTIVE_END] = s, active_end
        cols[:, Col.FORCE_START], cols[:, Col.FORCE_END] = fs, fe
        out[act, : Col.FORCE_END + 1] = cols[act]
        fwd_fill = act & has_eos
        out[fwd_fill, Col.FILL] = fill[fwd_fill]
        # rows that ended without a forward keep their NFE but emit nothing (the published count)
        ended = ~act & ~(out[:, Col.FILL] < g.L)
        out[ended, Col.STEP] = 0
        return out, act, out[:, Col.FILL] < g.L

    def _delayed_cache_forward(self, act, active_end, exists):
        """d3LLM's choice among (a) append completed blocks, (b) read the cache, (c) refresh by a
        full forward, (d) full forward without cache, for the rows ``act``. Returns the window
        start, the cache rows read, the written blocks [w0, w1) and the rows that stop. The scan
        for completed blocks loops over the block index (vectorised over rows), so its host work
        grows with the number of blocks, not with the batch."""
        p, g, B = self.p, self.g, act.shape[0]
        n = g.nb + 1
        nfe, cl = self.nfe, self.cache_length.copy()
        going = act.copy()
        last_end = np.full(B, -1, np.int64)  # end of the last block appended this step
        for i in range(n):  # in block order, up to the first block that is not ready
            look = going & exists[:, i] & (self.end[i] > cl)
            going &= ~(look & (self.mask[:, i] != 0))
            look &= self.mask[:, i] == 0
            self.done_at[look & (self.done_at[:, i] < 0), i] = nfe[look & (self.done_at[:, i] < 0)]
            delay = nfe - self.done_at[:, i]
            app = look & (delay >= p.cache_delay) & ~self.cached[:, i]
            self.cached[app, i] = True
            last_end[app] = self.end[i]
            going &= ~(look & (delay < p.cache_delay))
        update = np.where(last_end >= 0, last_end - cl, 0)
        stab = exists & (self.mask == 0) & (self.done_at >= 0) & ~self.cached
        big = np.iinfo(np.int64).max
        start = np.minimum(cl, np.where(stab | (exists & (self.mask > 0)), self.start[None, :], big).min(1))
        stop = act & (start >= active_end)
        act = act & ~stop
        has_stab = stab.any(1)
        last_stab = n - 1 - stab[:, ::-1].argmax(1)
        appd = act & (update > 0)
        read = act & ~appd & self.has_cache & ~has_stab & (nfe % p.refresh_interval != 0)
        refresh = act & ~appd & ~read & self.has_cache
        bs = g.bs
        a = np.where(appd, cl, np.where(read, start, 0))
        clen = np.where(appd | read, cl, 0)
        refresh_pos = np.where(has_stab, self.start[last_stab], cl)
        w0 = np.where(appd, cl // bs, 0)
        w1 = np.where(appd, (cl + update) // bs, np.where(refresh, refresh_pos // bs, 0))
        self.cache_length = np.where(appd, cl + update, cl)
        self.has_cache |= appd
        return a, clen, w0, w1, stop
