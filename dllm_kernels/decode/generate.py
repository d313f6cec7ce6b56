""":func:`generate`, its result and its error: the arguments validated and the policy resolved once
per call, then the loop (plan on the host, one step on the device, one read-back per step)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .._seeds import resolve_seed
from .._validate import MaxNFEError, check_canvas_length, check_generate_args, row_seeds
from ..commit import CommitState
from ..models.protocol import model_device
from ..policies import Policy, resolve_policy
from .block_causal import BlockCausalRows
from .blocks import BlockRows
from .canvas import Batch, Compaction, build_canvas, ship_index
from .multi_block import MultiBlockRows
from .plan import Geometry
from .runner import StepOptions, StepRunner
from .uniform import UniformRows, UniformRunner, uniform_batch

__all__ = ["GenerateResult", "MaxNFEError", "generate"]


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
    first: block-causal policies (``sdar``, ``fast_dllm_v2``) and ``diffusion_gemma`` only, else
        None: ``[B]`` int64 each row's first generated position. Their blocks are aligned to the
        model's position 0, so row b's prompt starts at ``pad[b]`` (a whole number of blocks) and
        its generation right after the prompt, inside the prompt's last block: the positions
        ``[first[b], gen_start)`` are generated too (the published decoders generate them), and
        :attr:`generated` starts at ``first[b]``.
    """

    tokens: torch.Tensor
    nfe: torch.Tensor
    commit_step: torch.Tensor
    pad: torch.Tensor
    gen_start: int
    first: torch.Tensor | None = None

    @property
    def generated(self) -> torch.Tensor:
        """``[B, gen_length]`` the generation region: each row's first ``gen_length`` generated
        positions (from ``gen_start``, or from ``first[b]`` for the block-causal policies)."""
        if self.first is None:
            return self.tokens[:, self.gen_start :]
        width = self.tokens.shape[1] - self.gen_start
        index = self.first[:, None] + torch.arange(width, device=self.tokens.device)
        return self.tokens.gather(1, index)

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
            ``"streaming"``, ``"r2"``, ``"d3llm"``, ``"d3llm_dream"``, the block-diffusion ``"sdar"``,
            ``"fast_dllm_v2"``, the uniform-state ``"diffusion_gemma"``) or a :class:`Policy`;
            ``overrides`` go to the named policy's constructor (e.g. ``threshold=0.8``); the public
            repos' option names are accepted too (each decoder's section of
            :mod:`dllm_kernels.policies.published`).
        gen_length, block_length: the generation region and its block size
            (``gen_length % block_length == 0``).
        temperature, seed: proposal sampling (:func:`dllm_kernels.token_stats`); 0 = argmax.
            ``seed``: an int in ``[0, 2**63)`` that every row uses, or a sequence of one such
            int per prompt; ``None`` draws one int. Each logits row samples with its own seed
            :func:`dllm_kernels._validate.mix_seed` ``(row seed, row's forward index, position
            in the row's sequence)``, derived on the device, so a row gets the same tokens in
            any batch as alone with its seed, at every temperature. ``diffusion_gemma`` (a
            uniform-state model, ``config.uniform_state``): its schedule sets the temperature
            (``temperature`` must be 0) and ``seed`` keys the initial canvas, the samples and
            the renoise tokens (:mod:`dllm_kernels.decode.uniform`).
        backend: backend of the loop's ops (``token_stats``, ``commit``).
        max_nfe: safety bound on forwards per row (d3LLM's loop uses 10000); a row that reaches
            it with masks left raises :class:`dllm_kernels.MaxNFEError` (partial result on
            its ``result``).
        progress: show a progress bar (tqdm) over the generated tokens.
        cuda_graph: capture each step (index tables, forward, statistics, commits) in a CUDA
            graph, one per padded shape bucket (powers of two), and replay it: the host then
            launches one graph per step. Needs a model on a CUDA device. Padding to a bucket
            changes no token.

    Returns:
        :class:`GenerateResult` (tokens, nfe, commit_step, pad, gen_start).
    """
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
    """:func:`generate` with ``cuda_graph`` split in two: ``buckets`` pads every step to its shape
    bucket (what graph replay needs; on any device, so that the CPU tests check that padding
    changes nothing), ``capture`` also records and replays CUDA graphs."""
    # every argument is checked here, once (the public option names mapped once, by
    # resolve_policy); the loop below runs unchecked
    if not isinstance(policy, (str, Policy)):
        raise TypeError(f"generate: policy must be a policy name or a Policy, got {type(policy).__name__}")
    pol = resolve_policy(policy, gen_length=gen_length, block_length=block_length, **overrides)
    device = model_device(model)
    if capture and device.type != "cuda":
        raise ValueError(f"generate: cuda_graph needs a model on a CUDA device, got {device}")
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
    uniform = pol.scheduler == "uniform"
    _check_uniform(cfg, pol, temperature)
    block_causal = pol.scheduler == "block_causal" or uniform  # the uniform canvas is the block-causal one
    if block_causal:
        _check_block_causal(cfg, pol, block_length)
    x, pad, P, lengths = build_canvas(prompt, gen_length, block_length, cfg, device, block_causal=block_causal)
    check_canvas_length(model, P - int(pad.min()), gen_length)
    B, L = x.shape
    # the fill token of early stops: EOS, or a block-causal policy's stop_fill (Fast-dLLM v2's pad)
    fill = pol.stop_fill if block_causal and pol.stop_fill is not None else cfg.eos_id
    mask = cfg.vocab_size if uniform else cfg.mask_id  # uniform: no MASK (the commit's invalid id: none)
    geo = Geometry(P=P, L=L, bs=block_length, mask=mask, eos=fill, eot=getattr(cfg, "eot_id", None))
    first = key_start = None
    if block_causal:
        # Fast-dLLM v2's quirk, kept for fidelity: a prompt of exactly one block is never forwarded
        # (no prefill, decoding starts at block 1 without a cache), so it is never attended either
        hidden = (lengths == block_length) & pol.inherit_first_token
        if bool(hidden.any()):
            key_start = pad + (hidden * block_length).to(device)
        pad_host = (P - -(-lengths // block_length) * block_length).numpy()  # = pad, without a device read
        first = pad_host + lengths.numpy()
        sched = (UniformRows if uniform else BlockCausalRows)(pol, geo, pad_host, first)
    elif pol.scheduler == "multi_block":
        sched = MultiBlockRows(pol, geo, B)
    else:
        sched = BlockRows(pol, geo, B)
    temperature = float(temperature)
    seeds = row_seeds(seed, B, lambda: resolve_seed(None)) if temperature > 0 or uniform else [0] * B
    batch = Batch(
        x=x,
        state=CommitState.new(x),
        pad=pad,
        cache=model.new_cache(B, L) if pol.cache != "none" else None,
        seeds=torch.tensor(seeds, dtype=torch.int64).to(device),
        key_start=key_start,
    )
    if uniform:
        batch = uniform_batch(model, pol, batch, geo, first)
    opts = StepOptions(
        policy=pol,
        rules=tuple(sched.rules),
        # the mask token is never a proposal: committing it would leave the position masked forever
        suppress=tuple(sorted({cfg.mask_id} | ({cfg.eos_id} if pol.suppress_eos else set()))),
        backend=backend,
        temperature=temperature,
        buckets=buckets,
        capture=capture,
        commits=sched.reads_commits,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=B * gen_length, desc=f"generate[{pol.name}]", unit="tok")
    try:
        out = _loop(model, batch, sched, geo, opts, max_nfe, bar, UniformRunner if uniform else StepRunner)
    finally:
        if bar is not None:
            bar.close()
    result = GenerateResult(
        tokens=out.x,
        nfe=torch.tensor(out.nfe, dtype=torch.int64, device=device),
        commit_step=out.commit_step,
        pad=pad,
        gen_start=P,
        first=None if first is None else torch.from_numpy(first).to(device),
    )
    stuck = []
    if uniform:
        stuck = np.flatnonzero(~sched.finished & (out.nfe >= max_nfe)).tolist()
    elif (out.nfe >= max_nfe).any():
        stuck = ((out.x[:, P:] == cfg.mask_id).any(1) & (result.nfe >= max_nfe)).nonzero().flatten().tolist()
    if stuck:
        raise MaxNFEError(
            f"generate: rows {stuck[:8]} reached max_nfe ({max_nfe}) {'unconverged' if uniform else 'with masks left'} "
            "(the partial result is on this error's .result)",
            result,
        )
    return result


def _check_uniform(cfg, pol: Policy, temperature) -> None:
    """A uniform-state policy needs a uniform-state model (``config.uniform_state``) and the
    reverse; its schedule sets the temperature."""
    uniform, model_uniform = pol.scheduler == "uniform", bool(getattr(cfg, "uniform_state", False))
    if uniform and not model_uniform:
        raise ValueError(
            f"generate: policy {pol.name!r} decodes uniform-state models (config.uniform_state), but the "
            "model is a masked-diffusion one; pass a masked-diffusion policy"
        )
    if model_uniform and not uniform:
        raise ValueError(
            f"generate: policy {pol.name!r} decodes masked-diffusion models, but the model is uniform-state "
            "(config.uniform_state); pass policy='diffusion_gemma'"
        )
    if uniform and temperature != 0:
        raise ValueError(
            f"generate: temperature must be 0 with policy {pol.name!r} (its schedule t_min, t_max sets it), "
            f"got {temperature}"
        )


def _check_block_causal(cfg, pol: Policy, block_length: int) -> None:
    """A block-causal policy needs a model whose attention is block-causal over ``block_length``
    and one token per denoising step."""
    if not hasattr(cfg, "block_size"):  # a protocol model that does not declare its attention
        return _check_block_causal_steps(pol, block_length)
    size = cfg.block_size
    if size != block_length:
        raise ValueError(
            f"generate: policy {pol.name!r} decodes blocks of block_length={block_length}, but the model's "
            f"attention is {'bidirectional' if size is None else f'block-causal over blocks of {size}'} "
            "(config.block_size); pass block_length=config.block_size with a block-diffusion model"
        )
    _check_block_causal_steps(pol, block_length)


def _check_block_causal_steps(pol: Policy, block_length: int) -> None:
    if pol.steps_per_block not in (0, block_length):
        raise ValueError(
            f"generate: policy {pol.name!r} needs steps_per_block ({pol.steps_per_block}) == block_length "
            f"({block_length}): one token per denoising step, the only ratio whose published rules are reproduced"
        )
    if pol.sub_block and block_length % pol.sub_block:
        raise ValueError(
            f"generate: policy {pol.name!r}: block_length ({block_length}) must be a multiple of sub_block "
            f"({pol.sub_block})"
        )


def _loop(
    model, batch: Batch, sched, geo: Geometry, opts: StepOptions, max_nfe: int, bar, runner_cls=StepRunner
) -> Compaction:
    """Decode until every row is done or out of forwards; returns the rows' final canvas, commit
    steps and NFE. Per step: one read-back (the canvas, and the last commits if the scheduler
    reads them), the scheduler's plan on the host, one batched step on the device (``runner_cls``:
    :class:`~.runner.StepRunner`, or :class:`~.uniform.UniformRunner`)."""
    runner = runner_cls(model, batch, geo, opts)
    out = Compaction(batch)
    finished_tokens = 0
    committed = torch.zeros_like(batch.x, dtype=torch.bool) if opts.commits else None
    while True:
        # the one sync per step (without commits to read, on the CPU a view of x: read before the step)
        host = runner.read_back(committed)
        plan, fwd, fill = sched.plan(host[0], None if committed is None else host[1], sched.nfe < max_nfe)
        gone = ~(fwd | fill)  # done, or out of forwards: idle from now on
        if out.wanted(gone):
            keep, drop = np.flatnonzero(~gone), np.flatnonzero(gone)
            if bar is not None:
                finished_tokens += int(_decoded(sched, host[0], geo)[drop].sum())
            out.retire(batch, drop, sched.nfe)
            host, plan, fwd, fill = host[:, keep], plan[keep], fwd[keep], fill[keep]
            if not len(keep):
                if bar is not None:
                    bar.n = finished_tokens
                    bar.refresh()
                break
            keep_t = ship_index(keep, batch.x.device)
            batch = batch.select(keep_t)
            committed = None if committed is None else committed.index_select(0, keep_t)
            sched.select(keep)
            runner = runner_cls(model, batch, geo, opts)
        if bar is not None:
            bar.n = finished_tokens + int(_decoded(sched, host[0], geo).sum())
            bar.refresh()
        if not (fwd.any() or fill.any()):
            break
        committed = runner.step(plan, fwd, fill, getattr(sched, "attend_new", None))
    out.finish(batch, sched.nfe)
    return out


def _decoded(sched, x: np.ndarray, geo: Geometry) -> np.ndarray:
    """``[B]`` the progress bar's decoded positions of each row of the host canvas ``x``: its
    generation region's non-MASK positions, or the scheduler's own count (``sched.decoded``: a
    uniform-state canvas holds no MASK)."""
    if hasattr(sched, "decoded"):
        return sched.decoded()
    return (x[:, geo.P :] != geo.mask).sum(1)
