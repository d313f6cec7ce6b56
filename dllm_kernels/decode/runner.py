"""Runs the batched steps of one :func:`~dllm_kernels.decode.generate` call: the plan's one copy to
the device, the shape buckets, the eager and the CUDA-graph paths, and the step's one read-back."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .._types import CommitRule
from .._validate import mix_seed
from ..commit import CommitState
from ..policies import Policy
from .block_causal import write_unit
from .canvas import Batch, fill_eos
from .plan import NCOL, Col, Geometry, step_extents
from .step import StepInputs, decode_step, device_inputs


@dataclass(frozen=True)
class StepOptions:
    """What every step of one :func:`~dllm_kernels.decode.generate` call runs with.

    policy: the resolved policy. rules: the scheduler's commit rules; a plan row's ``RULE``
    column indexes them. suppress: token ids never proposed (the mask id, and EOS where the
    policy suppresses it). backend: the ops' backend. temperature: proposal sampling (0:
    argmax). buckets: pad every step's shapes to their bucket (what graph replay needs; on any
    device, so that the CPU tests check that padding changes nothing). capture: also record and
    replay CUDA graphs, one per bucket. commits: the steps return the positions the commit rules
    took (the scheduler reads them)."""

    policy: Policy
    rules: tuple[CommitRule, ...]
    suppress: tuple[int, ...]
    backend: str
    temperature: float
    buckets: bool
    capture: bool
    commits: bool

    @property
    def stale(self) -> bool:
        """d3LLM: a forwarding row's early-stop fill lands after the commit (the forward sees it)."""
        return self.policy.d3_stale_candidates and self.policy.early_stop


def _bucket(n: int, cap: int) -> int:
    """The padded size of a dimension of ``n``: the next power of two, at most ``max(n, cap)``."""
    return max(n, min(1 << (n - 1).bit_length(), cap))


class StepRunner:
    """Runs the batched steps of the rows of ``batch``: ships each step's plan to the device in one
    copy, builds the index tables there and runs :func:`~dllm_kernels.decode.step.decode_step`;
    with ``opts.buckets`` the shapes are padded to powers of two, with ``opts.capture`` each
    bucket's step is recorded once in a CUDA graph and replayed."""

    def __init__(self, model, batch: Batch, geo: Geometry, opts: StepOptions):
        self.model, self.x, self.state, self.pad, self.cache = model, batch.x, batch.state, batch.pad, batch.cache
        self.seeds = batch.seeds  # [B] int64 row seeds (used at temperature > 0)
        self.key_start = batch.key_start  # [B] first attended key (None: pad)
        self.geo, self.opts = geo, opts
        self.rules = list(enumerate(opts.rules))
        self.buckets, self.capture, self.commits = opts.buckets or opts.capture, opts.capture, opts.commits
        self.stale = opts.stale
        pol = opts.policy
        self.unit = write_unit(pol, geo.bs)  # positions per written cache block
        self.step_kwargs = dict(  # decode_step's options, the same every step
            mask_id=geo.mask,
            eos_id=geo.eos,
            eot_id=geo.eot,
            attend_new=pol.cache != "dual",
            temperature=opts.temperature,
            suppress_ids=opts.suppress,
            confidence_eos_eot_inf=pol.confidence_eos_eot_inf,
            backend=opts.backend,
            commits=opts.commits,
        )
        x = self.x
        self.plan_dev = torch.zeros(x.shape[0], NCOL, dtype=torch.int64, device=x.device)
        self.host = self.plan_dev.cpu().pin_memory() if x.device.type == "cuda" else None
        # on a GPU the canvas (and the commits) come back into one reused pinned buffer
        rows = (2 if self.commits else 1, *x.shape)
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

    def step(
        self, plan: np.ndarray, fwd: np.ndarray, fill: np.ndarray, attend_new: bool | None = None
    ) -> torch.Tensor | None:
        """Run one batched step of the ``[B, NCOL]`` plan (``fwd``, ``fill``: the rows that forward
        and those with a fill; ``attend_new``: the forward's, None: the policy's); returns the
        ``[B, L]`` positions the commit rules took (None without ``commits``)."""
        if attend_new is None:
            attend_new = self.step_kwargs["attend_new"]
        geo, x, state = self.geo, self.x, self.state
        dev = self._ship(plan)
        if (fill & ~fwd if self.stale else fill).any():  # fills that the commit must see: before the forward
            # a fill-only step may carry an earlier step number than the batch's forwards (a
            # Streaming-dLLM early exit is dated by the forward that completed the block)
            now = dev.select(1, Col.FILL)
            if self.stale:
                now = torch.where(dev.select(1, Col.FWD) > 0, geo.L, now)
            # a block-causal stop_fill (Fast-dLLM v2's pad) keeps the commit steps of committed positions
            redate = self.opts.policy.stop_fill is None
            fill_eos(x, state.commit_step, now, dev[:, Col.STEP : Col.STEP + 1], geo.eos, redate=redate)
        if not fwd.any():
            return torch.zeros_like(x, dtype=torch.bool) if self.commits else None
        # the widest window, logits range and cache write over the rows (rows that do not forward
        # have zero extents)
        key = step_extents(plan)
        shape = self.shapes.get(key)
        if shape is None:
            Lq, Lo, nw = key
            Lq, Lo = max(1, Lq), max(1, Lo)
            nw = nw if self.cache is not None and nw > 0 else None
            if self.buckets:
                Lq, Lo = _bucket(Lq, geo.L), _bucket(Lo, geo.L)
                nw = None if nw is None else _bucket(nw, geo.L // self.unit)
            shape = self.shapes[key] = (Lq, Lo, nw)
        if self.buckets:
            rules = self.rules  # a fixed set of launches per bucket
        else:
            rules = [self.rules[i] for i in np.unique(plan[fwd, Col.RULE])]
        Lq, Lo, nw = key = shape
        if not self.capture:
            # a plan equal to the last step's but for the step number has the last step's index
            # tables (a block's later forwards)
            cols, last = plan[:, : Col.STEP], self.last_cols
            inp = self.last_inp if last is not None and (cols == last).all() else None
            self.last_cols = cols
            post_fill = self.stale and bool((fill & fwd).any())
            return self._body(x, state, Lq, Lo, nw, rules, post_fill, inp, attend_new=attend_new)
        key = (*key, attend_new)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self._record(Lq, Lo, nw, rules, attend_new)
        graph[0].replay()
        return graph[1]

    def _body(
        self, x, state, Lq, Lo, nw, rules, post_fill: bool, inp: StepInputs | None = None, *, attend_new: bool
    ) -> torch.Tensor | None:
        """The device work of a step (no host sync, no copy: capturable); ``inp``: the index
        tables when they are the last step's (built from the plan otherwise)."""
        geo, plan = self.geo, self.plan_dev
        if inp is None:
            inp = device_inputs(plan, Lq, Lo, nw, rules, geo, self.cache is not None, self.stale, self.unit)
        self.last_inp = inp
        step_col = plan.select(1, Col.STEP)
        step = torch.where(plan.select(1, Col.FWD) > 0, step_col, 0).amax()
        seed = 0
        if self.opts.temperature > 0:  # logits row (b, j) is position stats_offset[b] + j of row b
            pos = inp.stats_offset[:, None] - self.pad[:, None] + torch.arange(Lo, device=plan.device)[None, :]
            seed = mix_seed(self.seeds[:, None], step_col[:, None], pos.clamp_min(0))
        committed = decode_step(
            self.model,
            x,
            state,
            self.pad,
            self.cache,
            inp,
            step,
            seed=seed,
            key_start=self.key_start,
            **{**self.step_kwargs, "attend_new": attend_new},
        )
        if self.stale and post_fill:  # d3LLM: the fill lands after the commit, sparing this step's commits
            fill_eos(x, state.commit_step, inp.fill_after, step, geo.eos, keep=state.commit_step == step)
        return committed

    def _record(self, Lq, Lo, nw, rules, attend_new: bool):
        """Capture one bucket's step. The warm-up (compilation, autotuning, allocator) runs on
        copies of the canvas and the state; its cache writes are the ones the step makes."""
        x, state = self.x, self.state
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._body(
                x.clone(),
                CommitState(*(getattr(state, f.name).clone() for f in dataclasses.fields(state))),
                Lq,
                Lo,
                nw,
                rules,
                post_fill=self.stale,
                attend_new=attend_new,
            )
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            committed = self._body(x, state, Lq, Lo, nw, rules, post_fill=self.stale, attend_new=attend_new)
        return graph, committed
