"""The decoding loop: every published policy on one loop, on the kernels or on the references.

The policy's control logic (a *scheduler*, on the host) decides per step and per row which canvas
window the row forwards, what it reads from and writes to the KV cache, and where commits may
happen; it keeps its state as arrays over rows, and its plan for a step is one small integer
vector per row (window, suffix tail, cache rows, written blocks, commit and force regions, k,
rule, fill, step), shipped to the device in one copy. The index tables are built there from it,
and the batch runs as one step on the device::

    tokens = x.gather(windows)                      # ragged per-row windows, padded
    logits = model(tokens, positions, cache=..., cache_len=..., kv_len=..., write=..., key_start=pad,
                   logits_index=active rows)        # attention / refresh_kv_cache ops inside
    stats  = token_stats(logits)                    # one fused pass over the vocabulary
    commit(x, stats, state, rule, active_start=..., ...)   # one fused launch per distinct rule

A step has no host sync; between steps the loop reads the canvas back once (a few KB) to drive
the schedulers. Rows that are done (or out of forwards) leave the batch when the
cache can drop rows (no cache, or a dataclass of batch-first tensors such as the project's KV
cache); otherwise they reach the model with ``kv_len == 0``, ``cache_len == 0`` and no cache
write. With ``cuda_graph=True`` the device part of a step (index tables included) is captured once
per padded shape bucket and replayed. Because a row's computation depends only on that row, a
batch of ragged prompts (left-padded to a common, block-aligned length and masked with
``key_start``) gives every row exactly the tokens it gets alone; at temperature > 0 too, since each
logits row samples with a key derived from the row's own seed, forward index and position.

Model protocol: what ``generate`` needs from a model is written down, as code and prose, in
:mod:`dllm_kernels.models.protocol` (:class:`dllm_kernels.models.DiffusionLM` implements it;
:class:`dllm_kernels.models.HFModelAdapter` runs a Hugging-Face-style callable on the uncached
policies).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import check_tensor
from ._schedule import num_transfer_schedule
from ._seeds import resolve_seed
from ._validate import MaxNFEError, check_canvas_length, check_generate_args, mix_seed, row_seeds
from .commit import CommitState, commit_unchecked as _commit_unchecked
from .confidence import token_stats_unchecked as _token_stats_unchecked
from .models.protocol import CacheWrite, model_device
from .policies import FIRST_TOKEN_RULE, Policy, resolve_policy
from .policy_aliases import public_aliases


@dataclass
class GenerateResult:
    """Output of :func:`generate`.

    tokens: ``[B, P + gen_length]`` the final canvas; row b's prompt sits left-padded by
        ``pad[b]`` positions (filled with the pad id) so that the generation region starts at
        the block-aligned ``gen_start = P`` for every row.
    nfe: ``[B]`` int64, model forwards per row, counted as the policy's paper counts them.
    commit_step: ``[B, P + gen_length]`` int32, the row's step (0-based forward index) at which
        each position received its final token; -1 for prompt and padding.
    pad: ``[B]`` int64 left padding per row.
    gen_start: first position of the generation region.
    """

    tokens: torch.Tensor
    nfe: torch.Tensor
    commit_step: torch.Tensor
    pad: torch.Tensor
    gen_start: int

    @property
    def generated(self) -> torch.Tensor:
        """``[B, gen_length]`` the generation region."""
        return self.tokens[:, self.gen_start :]

    def tokens_until_eos(self, eos_id: int) -> torch.Tensor:
        """``[B]`` int64: generated tokens up to and including the first EOS, per row (all of the
        region when it holds no EOS)."""
        is_eos = self.generated == eos_id
        n = torch.full((is_eos.shape[0],), is_eos.shape[1], dtype=torch.long, device=is_eos.device)
        return torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, n)

    def tokens_per_forward(self, eos_id: int) -> torch.Tensor:
        """``[B]`` float64: tokens per forward (TPF) as d3LLM counts them, per row:
        :meth:`tokens_until_eos` divided by the row's NFE."""
        return self.tokens_until_eos(eos_id).double() / self.nfe.double()


# ------------------------------------------------------------------------------------------------
# schedulers: the per-row control logic of the published decoders (host side)
# ------------------------------------------------------------------------------------------------


# A step's plan: one int64 row of these columns per batch row (all zero for a row that does not
# forward, except the fill and the step). It is the only thing that crosses to the device per
# step; the forward's index tables are built from it there (:func:`_device_inputs`).
_FWD, _A, _C, _TAIL, _CLEN, _W0, _W1, _S, _E, _FS, _FE, _K, _RULE, _FILL, _STEP = range(15)
_NCOL = 15
# plan[:, _A : _E + 1] @ _EXTENT: per row, the forwarded columns (window + tail), the logits rows
# and the written blocks of its step
_EXTENT = np.zeros((_E + 1 - _A, 3), np.int64)
_EXTENT[np.array([_C, _TAIL, _A, _E, _S, _W1, _W0]) - _A, [0, 0, 0, 1, 1, 2, 2]] = [1, 1, -1, 1, -1, 1, -1]


class _BlockRows:
    """One block at a time (LLaDA vanilla, Fast-dLLM, Streaming-dLLM, R2-dLLM), every row of the
    batch at once (arrays over rows): a block's first forward (full with a cache), then forwards
    until it has no mask (or exactly ``steps_per_block``), then the next block. With
    ``idle_forward`` (Fast-dLLM's cached loops) the block is tested only after its second
    forward."""

    reads_commits = False  # plan() does not read the last step's commits

    def __init__(self, policy: Policy, geo: _Geometry, B: int):
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
        """``[2 nb, _RULE + 1]`` the plan's columns ``_FWD`` to ``_RULE`` of a forwarding row in
        block k, row ``2 k + first`` (first: the block's first forward). They change only at
        block boundaries, so :meth:`plan` looks them up; ``_K`` holds Dream's first-token 1 (the
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
        return np.stack([np.ones(n, np.int64), a, c, tail, clen, w0, w1, s, ae, fs, fe, kk, start], 1)

    def plan(self, x: np.ndarray, _committed: np.ndarray | None, live: np.ndarray) -> tuple[np.ndarray, ...]:
        """``x``: the canvas ``[B, L]``; ``live``: rows below ``max_nfe``. Returns the ``[B, _NCOL]``
        plan (rows with neither a forward nor a fill are all zero), the rows that forward and the
        rows with a fill (bool ``[B]``)."""
        p, g, B = self.p, self.g, x.shape[0]
        if self._base is None or len(self._base) != B:
            self._base = np.zeros((B, _NCOL), np.int64)
            self._base[:, _FILL] = g.L
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
                out[stop, _FILL] = g.P + (self.k[stop] + 1) * g.bs - 1
                out[stop, _STEP] = self.nfe[stop] - 1
            nxt = complete & ~stop
            self.k[nxt] += 1
            self.i[nxt] = 0
            self.done |= nxt & (self.k == g.nb)
            self._kc, self._cols = np.minimum(self.k, g.nb - 1), None
            fwd = act & ~self.done
        if not fwd.any():
            return out, fwd, out[:, _FILL] < g.L
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
        np.multiply(cols, fwd[:, None], out=out[:, : _RULE + 1])  # rows that do not forward: zero
        if self.spb:
            kk = self.schedule[rows, self.i]
            if p.ar_first_token:
                kk = np.where(self.i == 0, 1, kk)
            np.multiply(kk, fwd, out=out[:, _K])
        self.nfe += fwd
        self.i += fwd
        np.copyto(out[:, _STEP], self.nfe - 1, where=fwd)
        return out, fwd, out[:, _FILL] < g.L


class _MultiBlockRows:
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

    def __init__(self, policy: Policy, geo: _Geometry, B: int):
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
        """As :meth:`_BlockRows.plan`; ``committed``: the positions the last step's commit rules
        took (fills excluded)."""
        p, g, B = self.p, self.g, x.shape[0]
        n = g.nb + 1
        out = np.zeros((B, _NCOL), np.int64)
        out[:, _FILL] = g.L
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
            return out, act, out[:, _FILL] < g.L
        self.nfe[act] += 1
        nfe = self.nfe
        out[act, _STEP] = nfe[act] - 1

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
                    out[stop, _FILL] = fill[stop]
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
        cols = np.stack(
            [np.ones(B, np.int64), a, np.full(B, g.L), np.zeros(B, np.int64), clen, w0, w1, s, active_end, fs, fe], 1
        )
        out[act, : _FE + 1] = cols[act]
        fwd_fill = act & has_eos
        out[fwd_fill, _FILL] = fill[fwd_fill]
        # rows that ended without a forward keep their NFE but emit nothing (the published count)
        ended = ~act & ~(out[:, _FILL] < g.L)
        out[ended, _STEP] = 0
        return out, act, out[:, _FILL] < g.L

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


# ------------------------------------------------------------------------------------------------
# the batched loop
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    P: int  # block-aligned start of the generation region
    L: int  # canvas length
    bs: int  # block length
    mask: int
    eos: int
    eot: int | None = None

    @property
    def nb(self) -> int:
        return (self.L - self.P) // self.bs

    def block(self, k: int) -> tuple[int, int]:
        return self.P + k * self.bs, self.P + (k + 1) * self.bs


def _canvas(prompt, gen_length: int, block_length: int, config, device):
    """Left-pad the prompts to a common block-aligned length and append the masks (a fixed number
    of tensor ops whatever the batch; a list prompt is read row by row once)."""
    if isinstance(prompt, torch.Tensor):
        check_tensor("generate", "prompt", prompt, ndim=2)
        if prompt.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"generate: prompt must be an integer tensor, got {prompt.dtype}")
        rect = tokens = prompt.cpu().to(torch.int64)
        lengths = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.int64)
        tokens = tokens.flatten()
    else:
        rect, rows = None, []
        for r in prompt:
            t = torch.as_tensor(r)
            bad_dtype = t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool
            if t.dim() != 1 or (t.numel() and bad_dtype):
                raise TypeError(
                    f"generate: prompt must hold 1-D integer token id sequences, got {t.dtype} {list(t.shape)}"
                )
            rows.append(t.cpu().to(torch.int64))
        lengths = torch.tensor([len(t) for t in rows], dtype=torch.int64)
        tokens = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
    if not len(lengths) or bool((lengths == 0).any()):
        raise ValueError("generate: every prompt needs at least one token")
    bad = tokens[(tokens < 0) | (tokens >= config.vocab_size)]
    if len(bad):
        raise ValueError(f"generate: prompt token ids must lie in [0, {config.vocab_size}), got {bad[:5].tolist()}")
    B = len(lengths)
    P = -(-int(lengths.max()) // block_length) * block_length
    pad_id = config.pad_id if getattr(config, "pad_id", None) is not None else config.eos_id
    pad = P - lengths
    x = torch.full((B, P + gen_length), config.mask_id, dtype=torch.int64)
    x[:, :P] = pad_id
    if rect is not None:  # rows of one length: one block
        x[:, P - rect.shape[1] : P] = rect
    else:  # token i of the concatenation belongs to row b and goes to column pad[b] + (its index in b)
        row = torch.repeat_interleave(torch.arange(B), lengths)
        first = torch.cumsum(lengths, 0) - lengths
        x[row, pad[row] + torch.arange(len(tokens)) - first[row]] = tokens
    return x.to(device), pad.to(device), P


@torch.no_grad()
def generate(
    model,
    prompt,
    *,
    policy: str | Policy = "fast_dllm",
    gen_length: int = 256,
    block_length: int = 32,
    temperature: float = 0.0,
    seed: int | Sequence[int] | None = None,
    backend: str = "auto",
    max_nfe: int = 10000,
    progress: bool = False,
    cuda_graph: bool = False,
    **overrides,
) -> GenerateResult:
    """Decode ``gen_length`` tokens after each prompt with a published policy.

    Args:
        model: a :class:`dllm_kernels.models.DiffusionLM` or any model following
            :mod:`dllm_kernels.models.protocol`. Its own ops run on its own ``backend``.
        prompt: ``[B, Lp]`` integer tensor, or a list of B token sequences of different lengths
            (left-padded to a common length rounded up to ``block_length``).
        policy: a name of :data:`dllm_kernels.policies.POLICIES` (``"vanilla"``, ``"fast_dllm"``,
            ``"streaming"``, ``"r2"``, ``"d3llm"``, ``"d3llm_dream"``) or a :class:`Policy`;
            ``overrides`` go to the named policy's constructor (e.g. ``threshold=0.8``); the public
            repos' option names are accepted too (:mod:`dllm_kernels.policy_aliases`).
        gen_length, block_length: the generation region and its block size
            (``gen_length % block_length == 0``).
        temperature, seed: proposal sampling (:func:`dllm_kernels.token_stats`); 0 = argmax.
            ``seed``: an int in ``[0, 2**63)`` that every row uses, or a sequence of one such
            int per prompt; ``None`` draws one int. Each logits row samples with its own seed
            :func:`dllm_kernels._validate.mix_seed` ``(row seed, row's forward index, position
            in the row's sequence)``, derived on the device, so a row gets the same tokens in
            any batch as alone with its seed, at every temperature.
        backend: backend of the loop's ops (``token_stats``, ``commit``).
        max_nfe: safety bound on forwards per row (d3LLM's loop uses 10000); a row that reaches
            it with masks left raises :class:`dllm_kernels.loop.MaxNFEError` (partial result on
            its ``result``).
        progress: show a progress bar (tqdm) over the generated tokens.
        cuda_graph: capture each step (index tables, forward, statistics, commits) in a CUDA
            graph, one per padded shape bucket (powers of two), and replay it: the host then
            launches one graph per step. Needs a model on a CUDA device. Padding to a bucket
            changes no token.

    Returns:
        :class:`GenerateResult` (tokens, nfe, commit_step, pad, gen_start).
    """
    # every argument is checked here, once; the loop below runs unchecked
    if not isinstance(policy, (str, Policy)):
        raise TypeError(f"generate: policy must be a policy name or a Policy, got {type(policy).__name__}")
    overrides = public_aliases(policy, overrides, gen_length=gen_length, block_length=block_length)
    if cuda_graph and model_device(model).type != "cuda":
        raise ValueError(f"generate: cuda_graph needs a model on a CUDA device, got {model_device(model)}")
    return _generate(
        model,
        prompt,
        policy=policy,
        gen_length=gen_length,
        block_length=block_length,
        temperature=temperature,
        seed=seed,
        backend=backend,
        max_nfe=max_nfe,
        progress=progress,
        buckets=bool(cuda_graph),
        capture=bool(cuda_graph),
        **overrides,
    )


def _generate(
    model,
    prompt,
    *,
    policy,
    gen_length,
    block_length,
    temperature,
    seed,
    backend,
    max_nfe,
    progress,
    buckets: bool,
    capture: bool,
    **overrides,
) -> GenerateResult:
    """:func:`generate` after its alias mapping; ``buckets`` pads every step to its shape bucket
    (what graph replay needs; on any device, so that the CPU tests check padding changes
    nothing), ``capture`` also records and replays CUDA graphs."""
    pol = resolve_policy(policy, **overrides)
    check_generate_args(
        model,
        pol,
        gen_length=gen_length,
        block_length=block_length,
        temperature=temperature,
        seed=seed,
        max_nfe=max_nfe,
        backend=backend,
        progress=progress,
    )
    cfg = model.config
    device = model_device(model)
    x, pad, P = _canvas(prompt, gen_length, block_length, cfg, device)
    check_canvas_length(model, P - int(pad.min()), gen_length)
    pad0 = pad
    B, L = x.shape
    geo = _Geometry(P=P, L=L, bs=block_length, mask=cfg.mask_id, eos=cfg.eos_id, eot=getattr(cfg, "eot_id", None))
    state = CommitState.new(x)
    sched = _MultiBlockRows(pol, geo, B) if pol.scheduler == "multi_block" else _BlockRows(pol, geo, B)
    cache = model.new_cache(B, L) if pol.cache != "none" else None
    # the mask token is never a proposal: committing it would leave the position masked forever
    suppress = tuple(sorted({cfg.mask_id} | ({cfg.eos_id} if pol.suppress_eos else set())))
    temperature = float(temperature)
    seeds = row_seeds(seed, B, lambda: resolve_seed(None)) if temperature > 0 else [0] * B
    seeds = torch.tensor(seeds, dtype=torch.int64).to(device)

    def runner_for(x, state, pad, cache, seeds):  # the step runner of the batch's current rows
        return _StepRunner(
            model,
            x,
            state,
            pad,
            cache,
            pol,
            geo,
            sched.rules,
            suppress,
            backend,
            buckets,
            capture,
            temperature,
            seeds,
            commits=sched.reads_commits,
        )

    runner = runner_for(x, state, pad, cache, seeds)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=B * gen_length, desc=f"generate[{pol.name}]", unit="tok")
    finished_tokens = 0
    committed = torch.zeros_like(x, dtype=torch.bool) if sched.reads_commits else None
    # rows that are done leave the batch (a row's tokens do not depend on its place in the batch,
    # at any temperature) when the model's cache can drop rows: the final canvas and commit
    # steps are kept here, ``rows`` maps the batch's rows to the caller's
    out_x, out_step, out_nfe, rows = x, state.commit_step, np.zeros(B, np.int64), np.arange(B)
    compact = _select_rows(cache, None) is not False
    if compact:
        out_x, out_step = x.clone(), state.commit_step.clone()
    while True:
        # the one sync per step (without commits to read, on the CPU a view of x: read before the step)
        host = runner.read_back(committed)
        plan, fwd, fill = sched.plan(host[0], None if committed is None else host[1], sched.nfe < max_nfe)
        gone = ~(fwd | fill)  # done, or out of forwards: idle from now on
        if compact and gone.any() and 8 * gone.sum() >= len(rows):
            keep, drop = np.flatnonzero(~gone), np.flatnonzero(gone)
            if bar is not None:
                finished_tokens += int((host[0][drop, P:] != cfg.mask_id).sum())
            drop_t, orig_t = _ship_index(drop, device), _ship_index(rows[drop], device)
            out_x.index_copy_(0, orig_t, x.index_select(0, drop_t))
            out_step.index_copy_(0, orig_t, state.commit_step.index_select(0, drop_t))
            out_nfe[rows[drop]] = sched.nfe[drop]
            rows, host, plan, fwd, fill = rows[keep], host[:, keep], plan[keep], fwd[keep], fill[keep]
            if not len(rows):
                break
            keep_t = _ship_index(keep, device)
            x, pad, seeds = (t.index_select(0, keep_t) for t in (x, pad, seeds))
            committed = None if committed is None else committed.index_select(0, keep_t)
            state = CommitState(*(t.index_select(0, keep_t) for t in _fields(state)))
            cache = _select_rows(cache, keep_t)
            sched.select(keep)
            runner = runner_for(x, state, pad, cache, seeds)
        if bar is not None:
            bar.n = finished_tokens + int((host[0][:, P:] != cfg.mask_id).sum())
            bar.refresh()
        if not (fwd.any() or fill.any()):
            break
        committed = runner.step(plan, fwd, fill)
    if bar is not None:
        bar.close()
    if len(rows):
        if compact:
            rows_t = _ship_index(rows, device)
            out_x.index_copy_(0, rows_t, x)
            out_step.index_copy_(0, rows_t, state.commit_step)
        out_nfe[rows] = sched.nfe
    nfe = torch.tensor(out_nfe, dtype=torch.int64, device=device)
    result = GenerateResult(tokens=out_x, nfe=nfe, commit_step=out_step, pad=pad0, gen_start=P)
    stuck = []
    if (out_nfe >= max_nfe).any():
        stuck = ((out_x[:, P:] == cfg.mask_id).any(1) & (nfe >= max_nfe)).nonzero().flatten().tolist()
    if stuck:
        raise MaxNFEError(
            f"generate: rows {stuck[:8]} reached max_nfe ({max_nfe}) with masks left "
            "(the partial result is on this error's .result)",
            result,
        )
    return result


def _ship_index(a: np.ndarray, device) -> torch.Tensor:
    """An index array to the device without a host sync (pinned, asynchronous)."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def _select_rows(cache, index: torch.Tensor | None):
    """The cache of the batch rows ``index``: ``None`` stays None; a dataclass whose fields are
    tensors or lists of tensors with the batch first (the project's KV cache) is indexed; any
    other cache cannot drop rows (False). ``index=None`` only asks whether it can."""
    if cache is None:
        return None
    if not dataclasses.is_dataclass(cache) or isinstance(cache, type):
        return False
    values = [getattr(cache, f.name) for f in dataclasses.fields(cache)]
    if not all(
        isinstance(v, torch.Tensor) or (isinstance(v, list) and all(isinstance(t, torch.Tensor) for t in v))
        for v in values
    ):
        return False
    if index is None:
        return True

    def pick(v):
        return v.index_select(0, index) if isinstance(v, torch.Tensor) else [t.index_select(0, index) for t in v]

    return dataclasses.replace(cache, **{f.name: pick(v) for f, v in zip(dataclasses.fields(cache), values)})


def _fill_eos(x, commit_step, fill_after: torch.Tensor, step, eos: int, keep: torch.Tensor | None = None):
    """Every position after ``fill_after[b]`` of row b becomes EOS (except where ``keep``);
    positions whose token changes record ``step`` (an int, or ``[B, 1]`` per row)."""
    after = torch.arange(x.shape[1], device=x.device)[None, :] > fill_after[:, None]
    if keep is not None:
        after &= ~keep
    new = torch.where(after, eos, x)
    commit_step.copy_(torch.where(new != x, step, commit_step))
    x.copy_(new)


@dataclass
class StepInputs:
    """Device tensors of one batched decoding step (see :func:`decode_step`). Row b forwards the
    canvas positions ``idx[b, :kv_len[b]]``; ``groups`` holds one entry per distinct commit rule:
    ``(rule, rows)``, ``rows`` the ``[6, B]`` table of :func:`dllm_kernels.commit.pack_rows`
    (active start/end, force start/end, stats offset, k), rows outside the group having empty
    regions."""

    idx: torch.Tensor  # [B, Lq] canvas positions forwarded (padded)
    kv_len: torch.Tensor  # [B]
    cache_len: torch.Tensor | None  # [B] cache rows attended
    write: CacheWrite | None
    logits_index: torch.Tensor  # [B, Lo] forwarded rows whose logits feed the commit
    stats_offset: torch.Tensor  # [B] canvas position of logits row 0
    fill_after: torch.Tensor | None  # [B] d3LLM early stop seen by the forward only (L = none)
    groups: list


def _bucket(n: int, cap: int) -> int:
    """The padded size of a dimension of ``n``: the next power of two, at most ``max(n, cap)``."""
    return max(n, min(1 << (n - 1).bit_length(), cap))


def _device_inputs(
    plan: torch.Tensor, Lq: int, Lo: int, nw: int | None, rules, geo: _Geometry, cached: bool, stale: bool
) -> StepInputs:
    """Build a step's index tables on the device from its ``[B, _NCOL]`` plan (no host work that
    grows with the batch): ``Lq`` forwarded columns, ``Lo`` logits columns, ``nw`` written blocks
    (None: no cache write), one commit group per rule of ``rules`` (a list of (rule id, rule))."""
    col = plan.unbind(1)
    a, c, tail, s = col[_A], col[_C], col[_TAIL], col[_S]
    n = c - a
    kv_len = n + tail
    j = torch.arange(Lq, device=plan.device)[None, :]
    # the window [a, c), then the canvas's last position where ``tail`` (column n < Lq, written
    # per row); padding reads position 0
    idx = torch.where(j < n[:, None], a[:, None] + j, 0)
    at = n.clamp(max=Lq - 1)[:, None]
    idx.scatter_(1, at, torch.where(tail[:, None] > 0, geo.L - 1, idx.gather(1, at)))
    jo = torch.arange(Lo, device=plan.device)[None, :]
    logits_index = torch.minimum((s - a)[:, None] + jo, (kv_len - 1).clamp_min(0)[:, None]).clamp_min(0)
    write = None
    if cached and nw is not None:
        jw = torch.arange(nw, device=plan.device)[None, :]
        w0, w1 = col[_W0], col[_W1]
        write = CacheWrite(torch.where(jw < (w1 - w0)[:, None], w0[:, None] + jw, -1), geo.bs, new_start=a)
    fwd = col[_FWD] > 0
    # the commit op's packed per-row table (commit.ROW_FIELDS order), one per rule
    table = plan[:, [_S, _E, _FS, _FE, _S, _K]].T
    groups = [(rule, torch.where((fwd & (col[_RULE] == rid))[None, :], table, 0)) for rid, rule in rules]
    return StepInputs(
        idx=idx,
        kv_len=kv_len,
        cache_len=col[_CLEN] if cached else None,
        write=write,
        logits_index=logits_index,
        stats_offset=s,
        fill_after=torch.where(fwd, col[_FILL], geo.L) if stale else None,
        groups=groups,
    )


def decode_step(
    model,
    x,
    state,
    pad,
    cache,
    inp: StepInputs,
    step,
    *,
    mask_id: int,
    eos_id: int,
    eot_id=None,
    attend_new: bool = True,
    temperature: float = 0.0,
    seed: int | torch.Tensor = 0,
    suppress_ids=None,
    confidence_eos_eot_inf: bool = False,
    backend: str = "auto",
    commits: bool = True,
) -> torch.Tensor | None:
    """One batched decoding step on the device: forward, token statistics, commits.

    No host sync and no host-to-device copy happen here (``step`` may be a 0-d device tensor),
    so a step with fixed shapes can be captured in a CUDA graph and replayed. Updates ``x``,
    ``state`` and the cache in place; returns the ``[B, L]`` positions the commit rules took
    (``commits=False``: None, sparing a copy of ``state.commit_step``).
    The inputs are not validated (:func:`generate` checks its arguments once per call):
    ``seed`` is an int in ``[0, 2**63)`` or an int64 ``[B, Lo]`` tensor (one seed per logits
    row, see :func:`dllm_kernels.token_stats`).
    """
    before = state.commit_step.clone() if commits else None
    tokens = x.gather(1, inp.idx)
    if inp.fill_after is not None:  # d3LLM: the forward sees this step's early-stop fill
        tokens = torch.where(inp.idx > inp.fill_after[:, None], eos_id, tokens)
    positions = (inp.idx - pad[:, None]).clamp_min(0)
    logits = model(
        tokens,
        positions,
        cache=cache,
        cache_len=inp.cache_len,
        kv_len=inp.kv_len,
        attend_new=attend_new,
        write=inp.write,
        key_start=pad,
        logits_index=inp.logits_index,
    )
    ids = tuple(sorted(set(suppress_ids or ())))
    stats = _token_stats_unchecked(logits, float(temperature), seed if temperature > 0 else 0, ids, backend)
    if confidence_eos_eot_inf:  # LLaDA: EOS / EoT proposals get confidence 0
        eos_or_eot = (stats.token == eos_id) | (stats.token == (eot_id if eot_id is not None else eos_id))
        stats = stats._replace(prob=torch.where(eos_or_eot, 0.0, stats.prob))
    if not isinstance(step, torch.Tensor):
        step = torch.full((), step, dtype=torch.int64, device=x.device)
    for rule, rows in inp.groups:  # one launch per distinct rule
        _commit_unchecked(x, stats, state, rule, rows, step, mask_id, backend=backend)
    return state.commit_step != before if commits else None


class _StepRunner:
    """Runs the batched steps of one :func:`generate` call: ships each step's plan to the device
    in one copy, builds the index tables there and runs :func:`decode_step`; with ``buckets`` the
    shapes are padded to powers of two, with ``capture`` each bucket's step is recorded once in a
    CUDA graph and replayed; ``commits``: the steps return the positions the commit rules took
    (else None)."""

    def __init__(
        self,
        model,
        x,
        state,
        pad,
        cache,
        pol: Policy,
        geo: _Geometry,
        rules,
        suppress,
        backend,
        buckets: bool,
        capture: bool,
        temperature: float = 0.0,
        seeds: torch.Tensor | None = None,
        *,
        commits: bool = True,
    ):
        self.model, self.x, self.state, self.pad, self.cache = model, x, state, pad, cache
        self.temperature, self.seeds = temperature, seeds  # seeds: [B] int64 row seeds (T > 0)
        self.pol, self.geo, self.suppress, self.backend = pol, geo, suppress, backend
        self.rules = list(enumerate(rules))
        self.buckets, self.capture, self.commits = buckets or capture, capture, commits
        # d3LLM: a forwarding row's early-stop fill lands after the commit (the forward sees it)
        self.stale = pol.d3_stale_candidates and pol.early_stop
        self.plan_dev = torch.zeros(x.shape[0], _NCOL, dtype=torch.int64, device=x.device)
        self.host = self.plan_dev.cpu().pin_memory() if x.device.type == "cuda" else None
        # on a GPU the canvas (and the commits) come back into one reused pinned buffer
        rows = (2 if commits else 1, *x.shape)
        self.readback = torch.empty(rows, dtype=x.dtype, pin_memory=True) if self.host is not None else None
        self.graphs: dict = {}
        self.shapes: dict = {}  # the step's (Lq, Lo, nw) extents -> its (bucketed) shapes
        self.last_cols = self.last_inp = None  # eager: the last step's plan (less the step) and tables
        self.pool = None

    def read_back(self, committed: torch.Tensor | None) -> np.ndarray:
        """The step's one sync: ``[1, B, L]`` the canvas, or ``[2, B, L]`` with the last step's
        commits (without commits to read, on the CPU a view of the canvas)."""
        x = self.x
        src = x[None] if committed is None else torch.stack([x, committed.to(x.dtype)])
        if self.readback is None:
            return src.cpu().numpy()
        return self.readback.copy_(src).numpy()

    def _ship(self, plan: np.ndarray) -> torch.Tensor:
        """The step's only host-to-device copy (pinned, asynchronous on a GPU)."""
        if self.host is None:
            self.plan_dev.copy_(torch.from_numpy(plan))
        else:
            # reusing the pinned buffer is safe: the canvas read-back of this step waited for the
            # previous step's copy
            self.host.copy_(torch.from_numpy(plan))
            self.plan_dev.copy_(self.host, non_blocking=True)
        return self.plan_dev

    def step(self, plan: np.ndarray, fwd: np.ndarray, fill: np.ndarray) -> torch.Tensor | None:
        """Run one batched step; returns the ``[B, L]`` positions the commit rules took (None
        without ``commits``)."""
        geo, x, state = self.geo, self.x, self.state
        dev = self._ship(plan)
        if (fill & ~fwd if self.stale else fill).any():  # fills that the commit must see: before the forward
            # a fill-only step may carry an earlier step number than the batch's forwards (a
            # Streaming-dLLM early exit is dated by the forward that completed the block)
            now = dev[:, _FILL] if not self.stale else torch.where(dev[:, _FWD] > 0, geo.L, dev[:, _FILL])
            _fill_eos(x, state.commit_step, now, dev[:, _STEP : _STEP + 1], geo.eos)
        if not fwd.any():
            return torch.zeros_like(x, dtype=torch.bool) if self.commits else None
        # the widest window, logits range and cache write over the rows (rows that do not forward
        # have zero extents)
        Lq, Lo, nw = (plan[:, _A : _E + 1] @ _EXTENT).max(0).tolist()
        key = (Lq, Lo, nw)
        shape = self.shapes.get(key)
        if shape is None:
            Lq, Lo = max(1, Lq), max(1, Lo)
            nw = nw if self.cache is not None and nw > 0 else None
            if self.buckets:
                Lq, Lo = _bucket(Lq, geo.L), _bucket(Lo, geo.L)
                nw = None if nw is None else _bucket(nw, geo.L // geo.bs)
            shape = self.shapes[key] = (Lq, Lo, nw)
        if self.buckets:
            rules = self.rules  # a fixed set of launches per bucket
        else:
            rules = [self.rules[i] for i in np.unique(plan[fwd, _RULE])]
        Lq, Lo, nw = key = shape
        if not self.capture:
            # a plan equal to the last step's but for the step number has the last step's index
            # tables (a block's later forwards)
            cols, last = plan[:, :_STEP], self.last_cols
            inp = self.last_inp if last is not None and (cols == last).all() else None
            self.last_cols = cols
            return self._body(x, state, Lq, Lo, nw, rules, self.stale and bool((fill & fwd).any()), inp)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self._record(Lq, Lo, nw, rules)
        graph[0].replay()
        return graph[1]

    def _body(self, x, state, Lq, Lo, nw, rules, post_fill: bool, inp: StepInputs | None = None) -> torch.Tensor | None:
        """The device work of a step (no host sync, no copy: capturable); ``inp``: the index
        tables when they are the last step's (built from the plan otherwise)."""
        geo, pol, plan = self.geo, self.pol, self.plan_dev
        if inp is None:
            inp = _device_inputs(plan, Lq, Lo, nw, rules, geo, self.cache is not None, self.stale)
        self.last_inp = inp
        step = torch.where(plan[:, _FWD] > 0, plan[:, _STEP], 0).amax()
        seed = 0
        if self.temperature > 0:  # logits row (b, j) is position stats_offset[b] + j of row b
            pos = inp.stats_offset[:, None] - self.pad[:, None] + torch.arange(Lo, device=plan.device)[None, :]
            seed = mix_seed(self.seeds[:, None], plan[:, _STEP : _STEP + 1], pos.clamp_min(0))
        committed = decode_step(
            self.model,
            x,
            state,
            self.pad,
            self.cache,
            inp,
            step,
            mask_id=geo.mask,
            eos_id=geo.eos,
            eot_id=geo.eot,
            attend_new=pol.cache != "dual",
            temperature=self.temperature,
            seed=seed,
            suppress_ids=self.suppress,
            confidence_eos_eot_inf=pol.confidence_eos_eot_inf,
            backend=self.backend,
            commits=self.commits,
        )
        if self.stale and post_fill:  # d3LLM: the fill lands after the commit, sparing this step's commits
            _fill_eos(x, state.commit_step, inp.fill_after, step, geo.eos, keep=state.commit_step == step)
        return committed

    def _record(self, Lq, Lo, nw, rules):
        """Capture one bucket's step. The warm-up (compilation, autotuning, allocator) runs on
        copies of the canvas and the state; its cache writes are the ones the step makes."""
        x, state = self.x, self.state
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._body(
                x.clone(),
                CommitState(*(t.clone() for t in _fields(state))),
                Lq,
                Lo,
                nw,
                rules,
                post_fill=self.stale,
            )
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            committed = self._body(x, state, Lq, Lo, nw, rules, post_fill=self.stale)
        return graph, committed


def _fields(obj) -> list:
    return [getattr(obj, f.name) for f in dataclasses.fields(obj)]
