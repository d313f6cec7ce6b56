"""The uniform-state scheduler and step (DiffusionGemma, policy ``diffusion_gemma``): no MASK; a
block's free positions start uniformly random and are re-noised until the block converges.

The canvas and the forwards are the block-causal ones (:mod:`.block_causal`): blocks aligned to
position 0, row b generating from ``first[b]`` inside its prompt's last block. Per row:

1. **prefill** (when the prompt has complete blocks): one forward writing their K/V;
2. per block: **denoise** forwards of the block against the cache of the completed blocks, each
   (:func:`uniform_step`) self-conditioned (``soft_embeds``: the previous forward's soft
   embedding of the block; zeros at the block's first forward and at prompt positions), then
   a tempered ``token_stats`` pass at ``T(n)`` (:attr:`~dllm_kernels.policies.Policy.temperatures`,
   ``n`` the block's step), an untempered one for the argmax, one ``commit`` of the ``renoise``
   rule (the block's prompt tokens ``pinned``), the soft embedding for the next forward; the
   step's one read-back carries each row's ``converged``;
3. once converged (the block holds its argmax canvas), one **store** forward writing its K/V;
   then, if the row's generated tokens hold EOS, every position after the first EOS becomes EOS
   and the row stops, else the next block. NFE counts every forward.

Randomness, every key a row's own (so a row decodes the same tokens in any batch), ``p`` the
position in the row's own sequence (canvas position minus its left padding), ``s`` the row seed
and :func:`~dllm_kernels._validate.mix_seed` ``M``: the initial token at ``p`` is
``M(s, 2**31 - 1, p) mod V``; the sample of step ``n`` at ``p`` uses the Philox key
``M(s, n, p)``; the renoise tokens of the row's block ``j`` (``p // block_length``) the commit
key ``M(s, 2**31 - 2, j)`` with the counter (position in the block, ``n``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .._types import CommitState, RenoiseState
from .._validate import mix_seed
from ..commit import commit_unchecked
from ..confidence import token_stats_unchecked
from ..policies import Policy
from ..soft_embedding import soft_embedding
from .canvas import Batch
from .plan import NCOL, Col, Geometry
from .runner import StepRunner
from .step import device_inputs, forward

CANVAS_TAG = 2**31 - 1  # mix_seed's step argument of the initial canvas
RENOISE_TAG = 2**31 - 2  # ... and of a block's renoise key


def temperature_table(policy: Policy, device) -> torch.Tensor:
    """fp32 ``[N + 1]``: ``T(n) = t_min + (t_max - t_min) * ((N - n) / N)`` (SGLang's
    ``Gemma4Renoise._temperature(N - n)``, ``N = rule.max_steps``) for ``n = 0..N``, in fp32
    (SGLang rounds its table to the logits' dtype)."""
    (t_min, t_max), N = policy.temperatures, policy.rule.max_steps
    return torch.tensor([t_min + (t_max - t_min) * ((N - n) / N) for n in range(N + 1)], dtype=torch.float32).to(device)


@dataclass
class UniformState:
    """The uniform step's per-row device state: the renoise rule's state over the current block
    (``[B, bs]``, block-local positions), a scratch commit state, the block's last soft embedding
    ``[B, bs, H]``, each row's first generated position ``[B]``, a 0-d step (the scratch's) and
    the :func:`temperature_table`."""

    renoise: RenoiseState
    scratch: CommitState
    soft: torch.Tensor
    first: torch.Tensor
    step0: torch.Tensor
    temps: torch.Tensor

    def select(self, index: torch.Tensor) -> UniformState:
        pick = lambda t: t.index_select(0, index)  # noqa: E731
        per = lambda s: type(s)(*(pick(getattr(s, f.name)) for f in dataclasses.fields(s)))  # noqa: E731
        return UniformState(
            per(self.renoise), per(self.scratch), pick(self.soft), pick(self.first), self.step0, self.temps
        )

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the step updates (to save and restore around a graph's warm-up)."""
        return [getattr(self.renoise, f.name) for f in dataclasses.fields(self.renoise)] + [self.soft]


@dataclass
class UniformBatch(Batch):
    """A :class:`~.canvas.Batch` with the rows' :class:`UniformState`."""

    u: UniformState | None = None

    def select(self, index: torch.Tensor) -> UniformBatch:
        b = super().select(index)
        return UniformBatch(**{f.name: getattr(b, f.name) for f in dataclasses.fields(Batch)}, u=self.u.select(index))


def uniform_batch(model, policy: Policy, batch: Batch, geo: Geometry, first: np.ndarray) -> UniformBatch:
    """The batch with its generated positions (from ``first[b]``) drawn uniformly at random (the
    key in the module docstring) and a fresh :class:`UniformState`."""
    x, V = batch.x, model.config.vocab_size
    B, L = x.shape
    first_t = torch.from_numpy(np.asarray(first, np.int64)).to(x.device)
    pos = torch.arange(L, device=x.device)[None, :]
    noise = mix_seed(batch.seeds[:, None], CANVAS_TAG, (pos - batch.pad[:, None]).clamp_min(0)) % V
    x.copy_(torch.where(pos >= first_t[:, None], noise, x))
    block = x[:, : geo.bs]
    weight = model.embed_weight
    u = UniformState(
        renoise=RenoiseState.new(block),
        scratch=CommitState.new(block),
        soft=weight.new_zeros(B, geo.bs, weight.shape[1]),
        first=first_t,
        step0=torch.zeros((), dtype=torch.int32, device=x.device),
        temps=temperature_table(policy, x.device),
    )
    return UniformBatch(**{f.name: getattr(batch, f.name) for f in dataclasses.fields(Batch)}, u=u)


class UniformRows:
    """The uniform scheduler on the host (arrays over rows), :class:`.block_causal.BlockCausalRows`'
    forwards with convergence in place of masks: ``plan`` reads each row's ``converged`` (the
    read-back's second slot). ``finished``: the caller's rows that ended (converged last block
    or EOS), for the ``max_nfe`` check."""

    reads_commits = True  # the read-back's second slot: converged, per row

    def __init__(self, policy: Policy, geo: Geometry, pad: np.ndarray, first: np.ndarray):
        self.g, self.rules = geo, [policy.rule]
        self.pad = np.asarray(pad, np.int64)
        self.first = np.asarray(first, np.int64)
        B = len(self.first)
        self.k = self.first // geo.bs  # the row's current block
        self.prefill = self.k * geo.bs > self.pad
        self.ran = np.zeros(B, bool)  # the row denoised its current block
        self.nfe = np.zeros(B, np.int64)
        self.done = self.k * geo.bs >= geo.L
        self.rows = np.arange(B)
        self.finished = self.done.copy()

    def select(self, keep: np.ndarray) -> None:
        """Keep only the rows ``keep``."""
        for name in ("pad", "first", "k", "prefill", "ran", "nfe", "done", "rows"):
            setattr(self, name, getattr(self, name)[keep])

    def decoded(self) -> np.ndarray:
        """``[B]`` each row's positions of the generation region (from ``P``) in converged blocks
        (all of them once the row is done): the progress bar's count."""
        g = self.g
        return np.where(self.done, g.L - g.P, np.clip(self.k * g.bs - g.P, 0, g.L - g.P))

    def plan(self, x: np.ndarray, converged: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, ...]:
        """``x`` the canvas ``[B, L]``, ``converged`` ``[B, L]`` (each row's flag, broadcast),
        ``live`` the rows below ``max_nfe``; returns the ``[B, NCOL]`` plan, the rows that
        forward and the rows with a fill (an EOS stop)."""
        g, B = self.g, x.shape[0]
        bs, L = g.bs, g.L
        out = np.zeros((B, NCOL), np.int64)
        out[:, Col.FILL] = L
        fwd = live & ~self.done
        s = np.minimum(self.k, L // bs - 1) * bs
        pre = fwd & self.prefill
        store = fwd & ~pre & self.ran & (converged[:, 0] != 0)
        den = fwd & ~pre & ~store
        a, c = np.where(pre, self.pad, s), np.where(pre, s, s + bs)
        out[:, Col.FWD] = fwd
        out[:, Col.WIN_START], out[:, Col.WIN_END], out[:, Col.CACHE_LEN] = a * fwd, c * fwd, a * fwd
        out[:, Col.WRITE_START] = np.where(pre, self.pad // bs, np.where(store, self.k, 0))
        out[:, Col.WRITE_END] = np.where(pre, self.k, np.where(store, self.k + 1, 0))
        out[:, Col.ACTIVE_START], out[:, Col.ACTIVE_END] = a * fwd, np.where(den, s + bs, a) * fwd
        self.nfe += fwd
        np.copyto(out[:, Col.STEP], self.nfe - 1, where=fwd)
        self.prefill &= ~pre
        self.ran |= den
        if store.any():  # the stop check, on the converged canvas
            pos = np.arange(L)[None, :]
            hit = (x == g.eos) & (pos >= self.first[:, None]) & (pos < (s + bs)[:, None])
            stop = store & hit.any(1)
            out[stop, Col.FILL] = hit.argmax(1)[stop]
            self.k += store
            self.ran &= ~store
            self.done |= stop | (store & (self.k * bs >= L))
            self.finished[self.rows[self.done]] = True
        return out, fwd, out[:, Col.FILL] < L


def uniform_step(
    model, x, state, pad, cache, inp, plan, u: UniformState, seeds, *, rule, backend, key_start=None, conditioned=True
):
    """One batched uniform-state step on the device (no host sync; capturable): the forwards of
    the ``[B, NCOL]`` plan (:func:`~.step.device_inputs` ``inp``), and for the rows whose commit
    region is non-empty (a block ``[s, s + bs)``, denoising) the renoise step of the module
    docstring. Updates ``x``, ``state.commit_step`` (a converged block: the forward's ``STEP``),
    ``u`` and the cache in place; returns ``u.renoise.converged``. ``seeds``: ``[B]`` int64 row
    seeds; ``conditioned``: the model takes ``soft_embeds`` (False: none passed, none computed)."""
    col = plan.unbind(1)
    s, den = col[Col.ACTIVE_START], col[Col.ACTIVE_END] > col[Col.ACTIVE_START]
    rows, bs = x.shape[0], u.soft.shape[1]
    blk = s[:, None] + torch.arange(bs, device=x.device)[None, :]  # [B, bs] the block's positions
    rs = u.renoise
    fresh = den & rs.converged  # a row starting a new block (its last one converged)
    rs.argmax.masked_fill_(fresh[:, None], -1)
    rs.stable_steps.masked_fill_(fresh[:, None], 0)
    rs.steps.masked_fill_(fresh, 0)
    rs.converged.masked_fill_(fresh, False)
    n = rs.steps.long()  # the row's step in its block
    pinned = blk < u.first[:, None]
    tokens = x.gather(1, inp.idx)
    Lq, Lo = tokens.shape[1], inp.logits_index.shape[1]
    soft_in = None
    if Lo >= bs and conditioned:  # some row may denoise: its window is its block, from forwarded row 0
        keep = ((den & (n > 0))[:, None] & ~pinned)[..., None]
        soft_in = F.pad(torch.where(keep, u.soft, 0).to(u.soft.dtype), (0, 0, 0, Lq - bs))
    logits = forward(model, tokens, inp, pad, cache, key_start, soft_embeds=soft_in)
    if Lo < bs:  # a step of prefill and store forwards only
        return rs.converged
    logits = logits[:, :bs]
    V = logits.shape[-1]
    temp = u.temps[n.clamp(max=u.temps.shape[0] - 1)][:, None].expand(rows, bs).contiguous()
    sample_keys = mix_seed(seeds[:, None], n[:, None], blk - pad[:, None])
    sample = token_stats_unchecked(logits, temp, sample_keys, (), backend, tempered=True)
    top = token_stats_unchecked(logits, 0.0, 0, (), backend).token
    cur = x.gather(1, blk)
    zero, end = torch.zeros_like(s), torch.where(den, bs, 0)
    table = torch.stack([zero, end, zero, end, zero, zero])
    key = mix_seed(seeds, RENOISE_TAG, (s - pad).clamp_min(0) // bs)
    commit_unchecked(
        cur,
        sample,
        u.scratch,
        rule,
        table,
        u.step0,
        V,
        vocab_size=V,
        pinned=pinned,
        argmax=top,
        seed=key,
        renoise_state=rs,
        backend=backend,
    )
    x.scatter_(1, blk, cur)
    done = (den & rs.converged)[:, None] & ~pinned
    step = col[Col.STEP][:, None].to(state.commit_step.dtype)
    state.commit_step.scatter_(1, blk, torch.where(done, step, state.commit_step.gather(1, blk)))
    if conditioned:
        u.soft.copy_(soft_embedding(logits, model.embed_weight, temperature=temp, backend=backend))
    return rs.converged


class UniformRunner(StepRunner):
    """:class:`~.runner.StepRunner` running :func:`uniform_step` (the plan's one copy, the shape
    buckets, the eager and CUDA-graph paths, the one read-back: the canvas and ``converged``)."""

    def __init__(self, model, batch: UniformBatch, geo: Geometry, opts):
        super().__init__(model, batch, geo, opts)
        self.u, self.rule = batch.u, opts.policy.rule
        # a config that declares no self-conditioning (self_conditioning_size None) gets no soft_embeds
        self.conditioned = getattr(model.config, "self_conditioning_size", 0) is not None

    def _body(self, x, state, Lq, Lo, nw, rules, post_fill: bool, inp=None, *, attend_new: bool = True):
        # (every uniform forward attends its own rows: attend_new is the base runner's switch)
        if inp is None:
            inp = device_inputs(self.plan_dev, Lq, Lo, nw, (), self.geo, self.cache is not None, False)
        self.last_inp = inp
        converged = uniform_step(
            self.model,
            x,
            state,
            self.pad,
            self.cache,
            inp,
            self.plan_dev,
            self.u,
            self.seeds,
            rule=self.rule,
            backend=self.opts.backend,
            key_start=self.key_start,
            conditioned=self.conditioned,
        )
        return converged[:, None].expand(x.shape)

    def _record(self, Lq, Lo, nw, rules, attend_new: bool = True):
        """As the base class's; the warm-up's updates of the uniform state are undone."""
        saved = [t.clone() for t in self.u.tensors()]
        graph = super()._record(Lq, Lo, nw, rules, attend_new)
        for t, v in zip(self.u.tensors(), saved):
            t.copy_(v)
        return graph
