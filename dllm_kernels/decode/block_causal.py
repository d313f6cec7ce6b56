"""The block-causal scheduler (block-diffusion models: SDAR): the completed blocks form an exact KV
cache, every row of the batch at once (host side).

The canvas (:func:`~dllm_kernels.decode.canvas.build_canvas` with ``block_causal=True``) aligns
canvas blocks to the model's position blocks: row b's prompt starts at ``pad[b]`` (whole blocks)
and its generation at ``first[b]``, right after the prompt, inside the prompt's last block. Per
row, the forwards are those of SDAR's ``block_diffusion_generate`` (tests/fidelity/README.md):

1. **prefill** (when the prompt has complete blocks): one forward of them, block-causal, writing
   their K/V; it commits nothing and counts as a forward;
2. per block, from the one holding ``first[b]``: **denoise** forwards of the block alone against
   the cache of the earlier blocks (no cache write), each committing by the policy's rule, at
   most ``steps_per_block``; the block's prompt tokens (first block) are forwarded with it;
3. once the block has no mask, one **store** forward of the block that writes its K/V (commits
   nothing, counts as a forward); then, if the row's generated tokens hold a stop id, the row
   stops (its later positions stay masks), else the next block.

The cache is indexed by canvas position and each block is written once, by a forward of exactly
that block against the completed blocks: the same K/V as the published code's appended cache.

Fast-dLLM v2's sub-block cache (``Policy.sub_block_cache``, its ``use_block_cache=True``) keeps
the block's own cache in the block's cache rows: a denoising forward of the whole block (the
block's first, and any while the current sub-block's first position is a mask) also writes the
block; the others forward only the current sub-block, overwrite its rows and attend the cache up
to the block's end, with no mask. Those forwards attend the cache alone (write first, then
attend: ``attend_new=False``), and so do the whole-block and store forwards after a row's first
forward (the same keys as ``[cache | new rows]``); a row's first forward (a prefill of several
blocks needs the block-causal mask among its rows) attends ``[cache | new rows]`` as without the
sub-block cache. Every row of a batch forwards at every step until it is done, so a step's rows
are all at their first forward or none is: :attr:`BlockCausalRows.attend_new` is the step's.
Writes then count sub-blocks (``write_unit``).
"""

from __future__ import annotations

import numpy as np

from ..policies import Policy
from .plan import NCOL, Col, Geometry


def write_unit(policy: Policy, bs: int) -> int:
    """The positions per cache block of the plan's WRITE columns: the block, or with
    ``sub_block_cache`` the sub-block (a sub-block forward writes its own rows)."""
    return (policy.sub_block or bs) if policy.sub_block_cache else bs


class BlockCausalRows:
    """SDAR's block-diffusion loop, step for step, for every row at once (arrays over rows).

    ``pad``: ``[B]`` left padding (whole blocks), ``first``: ``[B]`` each row's first generated
    position. Per row: the current block ``k`` (canvas blocks), the denoising forwards run in it
    ``i``, whether the prefill is still to run, the NFE and whether the row is done."""

    reads_commits = False
    # the last plan's attention: None, the policy's ([cache | new rows]); False: the cache alone
    attend_new: bool | None = None

    def __init__(self, policy: Policy, geo: Geometry, pad: np.ndarray, first: np.ndarray):
        self.p, self.g = policy, geo
        bs, spb = geo.bs, policy.steps_per_block or geo.bs
        self.write_unit = write_unit(policy, bs)
        self.rules = [policy.rule]
        self.pad = np.asarray(pad, np.int64)
        self.first = np.asarray(first, np.int64)
        B = len(self.first)
        self.k = self.first // bs  # the block holding the first generated position
        self.prefill = self.k * bs > self.pad  # the prompt has complete blocks
        if policy.inherit_first_token:  # Fast-dLLM v2: none for a prompt of exactly one block (a quirk)
            self.prefill &= self.first - self.pad != bs
        self.i = np.zeros(B, np.int64)
        self.cached = np.zeros(B, bool)  # sub_block_cache: the current block's rows are cached
        self.nfe = np.zeros(B, np.int64)
        self.done = self.k * bs >= geo.L  # nothing to generate
        # SDAR's get_num_transfer_tokens(block_length, steps): bs // spb, one more for the first
        # bs % spb steps (indexed by the block-local step); one column more for safety
        self.schedule = np.array([bs // spb + (j < bs % spb) for j in range(spb)] + [0], np.int64)
        self.stops = np.array(sorted(set(policy.stop_ids)), np.int64)

    def select(self, keep: np.ndarray) -> None:
        """Keep only the rows ``keep`` (the others left the batch)."""
        for name in ("pad", "first", "k", "prefill", "i", "cached", "nfe", "done"):
            setattr(self, name, getattr(self, name)[keep])

    def plan(self, x: np.ndarray, _committed: np.ndarray | None, live: np.ndarray) -> tuple[np.ndarray, ...]:
        """As :meth:`.blocks.BlockRows.plan`: ``x`` the canvas ``[B, L]``, ``live`` the rows below
        ``max_nfe``; returns the ``[B, NCOL]`` plan, the rows that forward and the rows with a
        fill (a Fast-dLLM v2 stop)."""
        p, g, B = self.p, self.g, x.shape[0]
        bs, L = g.bs, g.L
        out = np.zeros((B, NCOL), np.int64)
        out[:, Col.FILL] = L
        fwd = live & ~self.done
        if not fwd.any():
            return out, fwd, np.zeros(B, bool)
        rows = np.arange(B)
        kc = np.minimum(self.k, L // bs - 1)
        s = kc * bs
        is_mask = x[rows[:, None], s[:, None] + np.arange(bs)[None, :]] == g.mask
        has_mask = is_mask.any(1)
        pre = fwd & self.prefill
        denoise = fwd & ~pre & has_mask
        store = fwd & ~pre & ~has_mask
        if store.any() and p.stop_fill is not None:  # Fast-dLLM v2: a finished row stops here
            pos = np.arange(L)[None, :]
            hit = np.isin(x, self.stops) & (pos >= self.first[:, None]) & (pos < (s + bs)[:, None])
            finished = store & (hit & (pos % bs != 0)).any(1)  # an inherited stop id does not count
            if finished.any():
                out[finished, Col.FILL] = hit.argmax(1)[finished]
                out[finished, Col.STEP] = self.nfe[finished] - 1
                self.done |= finished
                fwd, store = fwd & ~finished, store & ~finished
        # the commit region: the first sub-block with a mask (its first mask with
        # commit_in_order), the inherited position, or none
        sub = p.sub_block or bs
        j0 = s + is_mask.argmax(1) // sub * sub
        first_mask = s + is_mask.argmax(1)
        # sub_block_cache: the forwards of the current sub-block alone, against the block's cache
        alone = denoise & self.cached & (x[rows, j0] != g.mask) if p.sub_block_cache else np.zeros(B, bool)
        # the window: the prompt's complete blocks (prefill), the current block or sub-block;
        # with inherit_first_token a prefill ending at a block boundary and a store forward also
        # forward the next position, whose logits (the block's last row, unshifted) commit it
        a = np.where(pre, self.pad, np.where(alone, j0, s))
        c = np.where(pre, s, np.where(alone, j0 + sub, s + bs))
        inherit = (pre & (self.first == s)) | store if p.inherit_first_token else np.zeros(B, bool)
        inherit &= c < L
        act_s = np.where(denoise, np.where(p.commit_in_order, first_mask, j0), np.where(inherit, c, a))
        act_e = np.where(denoise, np.where(p.commit_in_order, first_mask + 1, np.minimum(j0 + sub, s + bs)), a)
        act_e = np.where(inherit, c + 1, act_e)
        topk = p.rule.base == "topk"
        force = (denoise & (not topk)) | inherit
        out[fwd, Col.FWD] = 1
        out[:, Col.WIN_START], out[:, Col.WIN_END] = a * fwd, (c + inherit) * fwd
        out[:, Col.CACHE_LEN] = a * fwd  # every cache row before the window (padding: key_start)
        out[:, Col.WRITE_START] = np.where(pre, self.pad // bs, np.where(store, kc, 0))
        out[:, Col.WRITE_END] = np.where(pre, kc, np.where(store, kc + 1, 0))
        if p.sub_block_cache:
            self._sub_block_cache(out, fwd, pre, denoise, alone, kc, j0)
        out[:, Col.ACTIVE_START], out[:, Col.ACTIVE_END] = act_s * fwd, act_e * fwd
        out[:, Col.FORCE_START], out[:, Col.FORCE_END] = np.where(force, act_s, 0), np.where(force, act_e, 0)
        out[:, Col.K] = np.where(denoise & topk, self.schedule[np.minimum(self.i, len(self.schedule) - 1)], 0)
        self.nfe += fwd
        np.copyto(out[:, Col.STEP], self.nfe - 1, where=fwd)
        # the state after this step's forwards
        self.prefill &= ~pre
        self.i += denoise
        self.cached |= denoise
        if store.any():
            stop = np.zeros(B, bool)
            if p.stop_fill is None:  # SDAR: the stop check after the block's store forward
                gen = np.arange(L)[None, :] >= self.first[:, None]
                stop = store & (np.isin(x, self.stops) & gen).any(1)
            self.k += store
            self.i[store] = 0
            self.cached &= ~store
            self.done |= stop | (store & (self.k * bs >= L))
        return out, fwd, out[:, Col.FILL] < L

    def _sub_block_cache(self, out, fwd, pre, denoise, alone, kc, j0) -> None:
        """The plan's cache columns with the sub-block cache (before ``nfe`` counts this step):
        the writes in sub-blocks of ``write_unit`` (a whole-block denoising forward also writes
        its block, a sub-block forward its sub-block) and, after the rows' first forward, the
        cache alone attended up to the block's end."""
        bs, u = self.g.bs, self.write_unit
        r = bs // u
        whole = denoise & ~alone
        out[:, Col.WRITE_START] = np.where(alone, j0 // u, np.where(whole, kc, out[:, Col.WRITE_START]) * r)
        out[:, Col.WRITE_END] = np.where(alone, j0 // u + 1, np.where(whole, kc + 1, out[:, Col.WRITE_END]) * r)
        first = self.nfe[fwd] == 0
        if first.any() and not first.all():  # every row forwards at every step until it is done
            raise RuntimeError("BlockCausalRows: rows at their first forward and later ones in one step")
        self.attend_new = None if first.any() else False
        if self.attend_new is False:
            if (pre & fwd).any():
                raise RuntimeError("BlockCausalRows: a prefill after a row's first forward")
            out[:, Col.CACHE_LEN] = (kc + 1) * bs * fwd  # the cache alone, to the block's end
        elif alone.any():
            raise RuntimeError("BlockCausalRows: a sub-block forward at a row's first forward")
