"""The decoding loop: every published policy on one loop, on the kernels or on the references.

Each row of a batch runs its own copy of the policy's control logic (a *scheduler*, on the host),
which decides per step which canvas window the row forwards, what it reads from and writes to the
KV cache, and where commits may happen. The batch then runs as one step on the device::

    tokens = x.gather(windows)                      # ragged per-row windows, padded
    logits = model(tokens, positions, cache=..., cache_len=..., kv_len=..., write=..., key_start=pad,
                   logits_index=active rows)        # attention / refresh_kv_cache ops inside
    stats  = token_stats(logits)                    # one fused pass over the vocabulary
    commit(x, stats, state, rule, active_start=..., ...)   # one fused launch per distinct rule

A step has no host sync; between steps the loop reads the canvas back once (a few KB) to drive
the schedulers. Because a row's computation depends only on that row, a batch of ragged prompts
(left-padded to a common, block-aligned length and masked with ``key_start``) gives every row
exactly the tokens it gets alone (at temperature 0).

Model protocol: what ``generate`` needs from a model is written down, as code and prose, in
:mod:`dllm_kernels.models.protocol` (:class:`dllm_kernels.models.DiffusionLM` implements it;
:class:`dllm_kernels.models.HFModelAdapter` runs a Hugging-Face-style callable on the uncached
policies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._checks import check_tensor
from ._schedule import num_transfer_schedule
from ._seeds import resolve_seed
from ._validate import MaxNFEError, check_canvas_length, check_generate_args, step_seed
from .commit import CommitRule, CommitState, commit
from .confidence import token_stats
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


@dataclass
class _RowStep:
    """One row's share of a batched step (canvas positions throughout)."""

    step: int  # the row's 0-based forward index, written to commit_step
    forward: bool = True  # False: no forward this step (a fill only)
    window: tuple[int, int] = (0, 0)  # forwarded contiguous canvas window [a, c)
    tail: bool = False  # also forward the canvas's last position (Streaming-dLLM)
    cache_len: int = 0  # cache rows [0, cache_len) attended
    write: tuple[int, int] | None = None  # canvas blocks [b0, b1) written into the cache
    active: tuple[int, int] = (0, 0)  # commit candidates: masked positions in [s, e)
    force: tuple[int, int] | None = None  # region that must get a commit
    rule: CommitRule | None = None
    num_transfer: int = 0  # k of the "topk" rule
    fill_after: int | None = None  # early stop: positions after this one become EOS


# ------------------------------------------------------------------------------------------------
# schedulers: the per-row control logic of the published decoders (host side)
# ------------------------------------------------------------------------------------------------


class _BlockRow:
    """One block at a time (LLaDA vanilla, Fast-dLLM, Streaming-dLLM, R2-dLLM): a block's first
    forward (full with a cache), then forwards until it has no mask (or exactly
    ``steps_per_block``), then the next block."""

    def __init__(self, policy: Policy, geo: "_Geometry"):
        self.p, self.g = policy, geo
        self.spb = policy.steps_per_block or (geo.bs if policy.rule.base == "topk" else 0)
        self.k = 0  # current block
        self.i = 0  # forwards run in the current block
        self.nfe = 0
        self.schedule: list[int] = []
        self.done = False

    def plan(self, xrow: np.ndarray, _committed: np.ndarray) -> _RowStep | None:
        p, g = self.p, self.g
        if self.done:
            return None
        s, e = g.block(self.k)
        if self.i > 0 and ((self.i >= self.spb) if self.spb else not (xrow[s:e] == g.mask).any()):
            if p.early_exit and (xrow[s:e] == g.eos).any():  # Streaming-dLLM: EOS in a completed block
                self.done = True
                return _RowStep(step=self.nfe - 1, forward=False, fill_after=e - 1)
            self.k, self.i = self.k + 1, 0
            if self.k == g.nb:
                self.done = True
                return None
            s, e = g.block(self.k)
        first = self.i == 0
        if first and self.spb:  # LLaDA: m masks over spb steps, the first m % spb get one more
            m = int((xrow[s:e] == g.mask).sum())
            self.schedule = num_transfer_schedule(torch.tensor([m]), self.spb)[0].tolist()

        cache = p.cache
        if cache == "dual" and not first:
            window, tail = (s, e), False
        else:
            a = s if (cache == "prefix" and not first) else 0
            if p.suffix_window is None:
                window, tail = (a, g.L), False
            else:  # the block, the first W positions after it, and the canvas's last position
                window, tail = (a, min(e + p.suffix_window, g.L)), g.L - e > p.suffix_window
        cache_len = {"none": 0, "prefix": 0 if first else s, "dual": g.L}[cache]
        write = None
        if first and cache == "prefix":
            write = (0, s // g.bs)  # the prefix the block's later forwards read
        elif cache == "dual":
            write = (0, g.L // g.bs) if first else (s // g.bs, e // g.bs)

        rule = p.block_start_rule if (first and p.block_start_rule is not None) else p.rule
        active, k = (s, e), (self.schedule[self.i] if self.spb else 0)
        if first and p.ar_first_token:  # Dream: the block's first position, from the last clean token
            active, rule, k = (s, s + 1), FIRST_TOKEN_RULE, 1
        self.nfe += 1
        self.i += 1
        # LLaDA's schedule decides the count of a "topk" step (it may be 0 when a block holds fewer
        # masks than steps); every other rule guarantees progress in the block
        force = None if rule.base == "topk" else active
        return _RowStep(step=self.nfe - 1, window=window, tail=tail, cache_len=cache_len, write=write,
                        active=active, force=force, rule=rule, num_transfer=k)  # fmt: skip


@dataclass
class _Block:
    start: int
    end: int
    mask: int  # the scheduler's mask count (d3LLM's bookkeeping, see _MultiBlockRow)
    total: int
    active: bool  # "fully activated": receives forced progress
    done_at: int | None = None  # NFE at which it was first seen complete (delayed cache)
    cached: bool = False

    def progress(self) -> float:
        return 1 - self.mask / self.total


class _MultiBlockRow:
    """d3LLM's pipelined multi-block decoding (``generate_multi_block``) and its delayed KV cache
    (``generate_multi_block_kv_cache``), step for step, including the bookkeeping the published
    code keeps (block mask counts decremented by commits, clamped at 0 only in the cached
    variant; an NFE counted for iterations that end the loop without a forward)."""

    def __init__(self, policy: Policy, geo: "_Geometry"):
        self.p, self.g = policy, geo
        self.kv = policy.cache == "delayed"
        self.blocks = [_Block(0, geo.P, 0, max(geo.P, 1), True, done_at=0 if self.kv else None)]
        self.next = 1
        self.nfe = 0
        self.cache_length = 0
        self.has_cache = False
        self.done = False
        self.last_step: int | None = None
        self._add(np.full(geo.L, geo.mask), active=1.0 >= policy.decoded_token_threshold)

    def _add(self, xrow, active: bool, **kw):
        g = self.g
        s = g.P + (self.next - 1) * g.bs
        e = min(s + g.bs, g.L)
        mask = kw.pop("mask", int((xrow[s:e] == g.mask).sum()))
        self.blocks.append(_Block(s, e, mask, e - s, active, **kw))
        self.next += 1

    def plan(self, xrow: np.ndarray, committed: np.ndarray) -> _RowStep | None:
        """``committed``: the positions the last step's commit rules took (fills excluded)."""
        p, g = self.p, self.g
        if self.done:
            return None
        if self.last_step is not None:  # the published bookkeeping: subtract this step's commits
            for b in self.blocks[1:]:
                n = int(committed[b.start : b.end].sum())
                if self.kv and n:
                    b.mask = max(0, b.mask - n)
                elif not self.kv and n and b.mask > 0:
                    b.mask -= n
            self.last_step = None
        if not (xrow[g.P :] == g.mask).any() and self.next > g.nb:
            self.done = True
            return None
        self.nfe += 1
        step = self.nfe - 1

        fill, has_eos = None, False
        if p.early_stop:
            eos = np.flatnonzero(xrow[g.P :] == g.eos)
            if eos.size:
                fill, has_eos = g.P + int(eos[0]), True
                xrow = xrow.copy()
                xrow[fill + 1 :] = g.eos
                for b in self.blocks[1:]:
                    if b.start > fill:
                        if b.mask != 0:
                            b.mask, b.active = 0, True
                    elif b.end > fill:
                        m = int((xrow[b.start : fill + 1] == g.mask).sum())
                        if m != b.mask:
                            b.mask = m
                            b.active = b.active or m == 0
                while self.next <= g.nb and g.P + (self.next - 1) * g.bs > fill:
                    extra = dict(done_at=self.nfe, cached=True) if self.kv else {}
                    self._add(xrow, active=True, mask=0, **extra)
                if not (xrow[g.P :] == g.mask).any():
                    self.done = True
                    return _RowStep(step=step, forward=False, fill_after=fill)

        for prev, b in zip(self.blocks, self.blocks[1:]):  # activation by the predecessor's progress
            if not b.active and prev.progress() >= p.decoded_token_threshold:
                b.active = True
        last = self.blocks[-1]
        if self.next <= g.nb and not has_eos and len(self.blocks) > 1:
            if last.progress() >= p.block_add_threshold or last.mask == 0:
                self._add(xrow, active=last.progress() >= p.decoded_token_threshold)
        right = max(i for i, b in enumerate(self.blocks) if i == 0 or b.active or b.mask > 0)
        if right == 0:
            self.done = True
            return None
        active_end = self.blocks[right].end
        force = next(((b.start, b.end) for b in self.blocks[1:] if b.active and b.mask > 0), None)

        window, cache_len, write = (0, g.L), 0, None
        if self.kv:
            window, cache_len, write = self._delayed_cache_forward(active_end)
            if window is None:
                self.done = True
                return None
        self.last_step = step
        active = (max(g.P, window[0]), active_end)
        return _RowStep(step=step, window=window, cache_len=cache_len, write=write, active=active, force=force,
                        rule=p.rule, fill_after=fill)  # fmt: skip

    def _delayed_cache_forward(self, active_end: int):
        """d3LLM's choice among (a) append completed blocks, (b) read the cache, (c) refresh by a
        full forward, (d) full forward without cache."""
        p, g, nfe = self.p, self.g, self.nfe
        cache_length = self.cache_length
        to_cache = []
        for b in self.blocks:
            if b.end <= cache_length:
                continue
            if b.mask != 0:
                break
            if b.done_at is None:
                b.done_at = nfe
            delay = nfe - b.done_at
            if delay >= p.cache_delay and not b.cached:
                to_cache.append(b)
                b.cached = True
            elif delay < p.cache_delay:
                break
        update = to_cache[-1].end - cache_length if to_cache else 0
        stabilizing = [b for b in self.blocks if b.mask == 0 and b.done_at is not None and not b.cached]
        start = min([cache_length] + [b.start for b in stabilizing] + [b.start for b in self.blocks if b.mask > 0])
        if start >= active_end:
            return None, 0, None
        bs = g.bs
        if update > 0:  # (a)
            self.cache_length += update
            self.has_cache = True
            return (cache_length, g.L), cache_length, (cache_length // bs, (cache_length + update) // bs)
        if self.has_cache and not stabilizing and nfe % p.refresh_interval != 0:  # (b)
            return (start, g.L), cache_length, None
        if self.has_cache:  # (c) refresh: the full forward rebuilds the cache up to refresh_pos
            refresh_pos = stabilizing[-1].start if stabilizing else cache_length
            return (0, g.L), 0, (0, refresh_pos // bs)
        return (0, g.L), 0, None  # (d)


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
    """Left-pad the prompts to a common block-aligned length and append the masks."""
    if isinstance(prompt, torch.Tensor):
        check_tensor("generate", "prompt", prompt, ndim=2)
        if prompt.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"generate: prompt must be an integer tensor, got {prompt.dtype}")
        rows = [r.tolist() for r in prompt.cpu()]
    else:
        rows = []
        for r in prompt:
            t = torch.as_tensor(r)
            bad_dtype = t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool
            if t.dim() != 1 or (t.numel() and bad_dtype):
                raise TypeError(f"generate: prompt must hold 1-D integer token id sequences, got {t.dtype} {list(t.shape)}")
            rows.append(t.tolist())
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("generate: every prompt needs at least one token")
    bad = [t for r in rows for t in r if not 0 <= t < config.vocab_size]
    if bad:
        raise ValueError(f"generate: prompt token ids must lie in [0, {config.vocab_size}), got {bad[:5]}")
    P = -(-max(map(len, rows)) // block_length) * block_length
    pad_id = config.pad_id if getattr(config, "pad_id", None) is not None else config.eos_id
    x = torch.full((len(rows), P + gen_length), config.mask_id, dtype=torch.int64)
    pad = torch.tensor([P - len(r) for r in rows], dtype=torch.int64)
    for b, r in enumerate(rows):
        x[b, : pad[b]] = pad_id
        x[b, pad[b] : P] = torch.tensor(r)
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
    seed: int | None = None,
    backend: str = "auto",
    max_nfe: int = 10000,
    progress: bool = False,
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
            ``seed`` in ``[0, 2**63)``; the i-th batched forward uses ``(seed + i) mod 2**63``.
        backend: backend of the loop's ops (``token_stats``, ``commit``).
        max_nfe: safety bound on forwards per row (d3LLM's loop uses 10000); a row that reaches
            it with masks left raises :class:`dllm_kernels.loop.MaxNFEError` (partial result on
            its ``result``).
        progress: show a progress bar (tqdm) over the generated tokens.

    Returns:
        :class:`GenerateResult` (tokens, nfe, commit_step, pad, gen_start).
    """
    # every argument is checked here, once; the loop below runs unchecked
    if not isinstance(policy, (str, Policy)):
        raise TypeError(f"generate: policy must be a policy name or a Policy, got {type(policy).__name__}")
    overrides = public_aliases(policy, overrides, gen_length=gen_length, block_length=block_length)
    pol = resolve_policy(policy, **overrides)
    check_generate_args(model, pol, gen_length=gen_length, block_length=block_length, temperature=temperature,
                        seed=seed, max_nfe=max_nfe, backend=backend, progress=progress)  # fmt: skip
    cfg = model.config
    device = model_device(model)
    x, pad, P = _canvas(prompt, gen_length, block_length, cfg, device)
    check_canvas_length(model, P - int(pad.min()), gen_length)
    B, L = x.shape
    geo = _Geometry(P=P, L=L, bs=block_length, mask=cfg.mask_id, eos=cfg.eos_id, eot=getattr(cfg, "eot_id", None))
    state = CommitState.new(x)
    make = _MultiBlockRow if pol.scheduler == "multi_block" else _BlockRow
    rows = [make(pol, geo) for _ in range(B)]
    cache = model.new_cache(B, L) if pol.cache != "none" else None
    # the mask token is never a proposal: committing it would leave the position masked forever
    suppress = [cfg.mask_id] + ([cfg.eos_id] if pol.suppress_eos else [])
    base_seed = resolve_seed(seed) if (seed is None and temperature > 0) else (seed or 0)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=B * gen_length, desc=f"generate[{pol.name}]", unit="tok")
    iteration = 0
    committed = torch.zeros_like(x, dtype=torch.bool)
    while True:
        host = torch.stack([x, committed.to(x.dtype)]).cpu().numpy()  # the one sync per step
        if bar is not None:
            bar.n = int((host[0][:, P:] != cfg.mask_id).sum())
            bar.refresh()
        plans = [None if r.nfe >= max_nfe else r.plan(host[0][b], host[1][b]) for b, r in enumerate(rows)]
        if all(pl is None for pl in plans):
            break
        committed = _run_step(model, x, state, pad, cache, plans, pol, geo, temperature,
                              step_seed(base_seed, iteration), suppress, backend)  # fmt: skip
        iteration += 1
    if bar is not None:
        bar.close()
    nfe = torch.tensor([r.nfe for r in rows], dtype=torch.int64, device=device)
    result = GenerateResult(tokens=x, nfe=nfe, commit_step=state.commit_step, pad=pad, gen_start=P)
    stuck = ((x[:, P:] == cfg.mask_id).any(1) & (nfe >= max_nfe)).nonzero().flatten().tolist()
    if stuck:
        raise MaxNFEError(f"generate: rows {stuck[:8]} reached max_nfe ({max_nfe}) with masks left "
                          "(the partial result is on this error's .result)", result)  # fmt: skip
    return result


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
    ``(rule, active_start, active_end, force_start, force_end, num_transfer)``, rows outside the
    group having empty regions."""

    idx: torch.Tensor  # [B, Lq] canvas positions forwarded (padded)
    kv_len: torch.Tensor  # [B]
    cache_len: torch.Tensor | None  # [B] cache rows attended
    write: CacheWrite | None
    logits_index: torch.Tensor  # [B, Lo] forwarded rows whose logits feed the commit
    stats_offset: torch.Tensor  # [B] canvas position of logits row 0
    fill_after: torch.Tensor | None  # [B] d3LLM early stop seen by the forward only (L = none)
    groups: list


def _pack(columns: list[list[list[int]]], fills: list[int], device) -> list[torch.Tensor]:
    """Ship several ``[B, w_i]`` int tables (rows padded with ``fills[i]``) in one host-to-device
    copy (pinned, asynchronous)."""
    B = len(columns[0])
    widths = [max(1, max(len(r) for r in col)) for col in columns]
    host = torch.cat([torch.full((B, w), f, dtype=torch.int64) for w, f in zip(widths, fills)], 1)
    for col, off in zip(columns, torch.tensor([0] + widths).cumsum(0).tolist()):
        for b, r in enumerate(col):
            host[b, off : off + len(r)] = torch.tensor(r, dtype=torch.int64)
    if device.type == "cuda":
        host = host.pin_memory().to(device, non_blocking=True)
    else:
        host = host.to(device)
    return list(host.split(widths, dim=1))


def _step_inputs(fwd: list[_RowStep | None], geo: _Geometry, cached: bool, stale_fill: bool, device) -> StepInputs:
    none = (0, 0)
    windows = [list(range(*pl.window)) + ([geo.L - 1] if pl.tail else []) if pl else [] for pl in fwd]
    act = [pl.active if pl else none for pl in fwd]
    Lo = max(e - s for s, e in act) or 1
    logits_rows = [[min(max(s - pl.window[0] + j, 0), len(w) - 1) for j in range(Lo)] if pl else [0] * Lo
                   for pl, (s, e), w in zip(fwd, act, windows)]  # fmt: skip
    writes = [list(range(*pl.write)) if pl and pl.write else [] for pl in fwd]
    rules = list(dict.fromkeys(pl.rule for pl in fwd if pl))
    per_row = [[len(w), pl.cache_len if pl else 0, pl.window[0] if pl else 0, s,
                pl.fill_after if (pl and stale_fill and pl.fill_after is not None) else geo.L]
               + [v for r in rules for v in ((*pl.active, *(pl.force or none), pl.num_transfer) if pl and pl.rule == r else (0,) * 5)]
               for pl, w, (s, _) in zip(fwd, windows, act)]  # fmt: skip
    idx, logits_index, write_ids, scal = _pack([windows, logits_rows, writes, per_row], [0, 0, -1, 0], device)
    kv_len, cache_len, new_start, stats_offset, fill_after = scal[:, :5].unbind(1)
    groups = [(r, *scal[:, 5 + 5 * i : 10 + 5 * i].unbind(1)) for i, r in enumerate(rules)]
    write = None
    if cached and any(pl and pl.write for pl in fwd):
        write = CacheWrite(write_ids, geo.bs, new_start=new_start)
    return StepInputs(idx=idx, kv_len=kv_len, cache_len=cache_len if cached else None, write=write,
                      logits_index=logits_index, stats_offset=stats_offset,
                      fill_after=fill_after if stale_fill else None, groups=groups)  # fmt: skip


def decode_step(model, x, state, pad, cache, inp: StepInputs, step, *, mask_id: int, eos_id: int, eot_id=None,
                attend_new: bool = True, temperature: float = 0.0, seed: int = 0, suppress_ids=None,
                confidence_eos_eot_inf: bool = False, backend: str = "auto") -> torch.Tensor:  # fmt: skip
    """One batched decoding step on the device: forward, token statistics, commits.

    No host sync and no host-to-device copy happen here (``step`` may be a 0-d device tensor),
    so a step with fixed shapes can be captured in a CUDA graph and replayed. Updates ``x``,
    ``state`` and the cache in place; returns the ``[B, L]`` positions the commit rules took.
    """
    before = state.commit_step.clone()
    tokens = x.gather(1, inp.idx)
    if inp.fill_after is not None:  # d3LLM: the forward sees this step's early-stop fill
        tokens = torch.where(inp.idx > inp.fill_after[:, None], eos_id, tokens)
    positions = (inp.idx - pad[:, None]).clamp_min(0)
    logits = model(tokens, positions, cache=cache, cache_len=inp.cache_len, kv_len=inp.kv_len, attend_new=attend_new,
                   write=inp.write, key_start=pad, logits_index=inp.logits_index)  # fmt: skip
    stats = token_stats(logits, temperature=temperature, seed=seed, suppress_ids=suppress_ids, backend=backend)
    if confidence_eos_eot_inf:  # LLaDA: EOS / EoT proposals get confidence 0
        eos_or_eot = (stats.token == eos_id) | (stats.token == (eot_id if eot_id is not None else eos_id))
        stats = stats._replace(prob=torch.where(eos_or_eot, 0.0, stats.prob))
    for rule, a_s, a_e, f_s, f_e, k in inp.groups:  # one launch per distinct rule
        commit(x, stats, state, rule, active_start=a_s, active_end=a_e, mask_id=mask_id, step=step, num_transfer=k,
               force_start=f_s, force_end=f_e, stats_offset=inp.stats_offset, backend=backend)  # fmt: skip
    return state.commit_step != before


def _run_step(model, x, state, pad, cache, plans, pol: Policy, geo: _Geometry, temperature, seed, suppress, backend):
    """Run one batched step; returns the ``[B, L]`` positions the commit rules took."""
    device = x.device
    stale = pol.d3_stale_candidates
    fills = [pl.fill_after if pl is not None and pl.fill_after is not None else None for pl in plans]
    fwd = [pl if (pl is not None and pl.forward) else None for pl in plans]
    now = [f if f is not None and (not stale or fwd[b] is None) else geo.L for b, f in enumerate(fills)]
    if any(v < geo.L for v in now):  # fills that the commit must see: before the forward
        # a fill-only step may carry an earlier step number than the batch's forwards (a
        # Streaming-dLLM early exit is dated by the forward that completed the block)
        fill_now, fill_step = _pack([[[v] for v in now], [[pl.step if pl else 0] for pl in plans]], [geo.L, 0], device)
        _fill_eos(x, state.commit_step, fill_now[:, 0], fill_step, geo.eos)
    if not any(fwd):
        return torch.zeros_like(x, dtype=torch.bool)
    # every row forwards from the first iteration until it is done, so its forward index is the
    # iteration's: one step number serves the whole batch
    (step,) = {pl.step for pl in fwd if pl}
    inp = _step_inputs(fwd, geo, cache is not None, stale, device)
    committed = decode_step(model, x, state, pad, cache, inp, step, mask_id=geo.mask, eos_id=geo.eos, eot_id=geo.eot,
                            attend_new=pol.cache != "dual", temperature=temperature, seed=seed, suppress_ids=suppress,
                            confidence_eos_eot_inf=pol.confidence_eos_eot_inf, backend=backend)  # fmt: skip
    if stale and any(f is not None and fwd[b] is not None for b, f in enumerate(fills)):
        # d3LLM: the fill lands after the commit, sparing this step's commits
        _fill_eos(x, state.commit_step, inp.fill_after, step, geo.eos, keep=state.commit_step == step)
    return committed
