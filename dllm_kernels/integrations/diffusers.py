"""diffusers: ``EntropyBoundScheduler`` (DiffusionGemma's sampler) with its step on the kernels.

``DiffusionGemmaPipeline`` (diffusers 0.42) denoises each canvas with ``scheduler.step`` and
self-conditions the next forward on the step's ``pred_logits``. :class:`DllmKernelsEntropyBoundScheduler`
subclasses diffusers' ``EntropyBoundScheduler`` (same config, ``set_timesteps``, ``step``
signature and output class) and runs its step as one tempered :func:`~dllm_kernels.token_stats`
pass (the sample of ``softmax(logits / T)``, its probability and the entropies) and one
:func:`~dllm_kernels.commit` launch (base ``"entropy_bound"``: the positions whose lower-entropy
predecessors sum to ``<= entropy_bound``; the first always). Swap it into a pipeline::

    from dllm_kernels.integrations.diffusers import DllmKernelsEntropyBoundScheduler

    pipe.scheduler = DllmKernelsEntropyBoundScheduler.from_config(pipe.scheduler.config)

Outputs, as diffusers' (``EntropyBoundSchedulerOutput``): ``prev_sample`` (the sample where
accepted, a uniform random token elsewhere), ``accepted_index``, ``sampled_tokens``,
``sampled_probs`` (the sample's probability under ``softmax(logits / T)``, fp32 within ~4e-6)
and ``pred_logits`` (``model_output / T``, computed as diffusers does: the same tensor values).
The temperature schedule is diffusers': ``T = t_min + (t_max - t_min) * (N - timestep) / N``.

Randomness: diffusers draws the sample with ``torch.multinomial`` and the renoise tokens with
``torch.randint``, both from ``generator``. Here the sample is Gumbel-max on the kernels' Philox
stream, keyed per position by one int64 drawn from ``generator`` each step (no host sync); the
renoise tokens are ``torch.randint`` from ``generator`` as in diffusers. Same laws, other draws:
with a seeded generator a run is reproducible, but not token-for-token diffusers'.
"""

from __future__ import annotations

import torch
from diffusers.schedulers.scheduling_entropy_bound import EntropyBoundScheduler, EntropyBoundSchedulerOutput

from .._types import CommitRule, CommitState, TokenStats
from ..commit import commit
from ..confidence import token_stats

__all__ = ["DllmKernelsEntropyBoundScheduler"]

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as an int64: odd, so (n + 1) * it is distinct per n
_SEED_MASK = 2**63 - 1


class DllmKernelsEntropyBoundScheduler(EntropyBoundScheduler):
    """diffusers' ``EntropyBoundScheduler`` whose ``step`` runs ``token_stats`` + ``commit``
    (module doc). ``backend``: the kernels' backend (``"auto"`` | ``"triton"`` | ``"reference"``),
    a class attribute (not part of the scheduler's saved config)."""

    backend = "auto"

    def temperature(self, timestep) -> float:
        """diffusers' annealed temperature at ``timestep``."""
        fraction = (self.num_inference_steps - int(timestep)) / self.num_inference_steps
        return self.config.t_min + (self.config.t_max - self.config.t_min) * fraction

    def draw(self, model_output: torch.Tensor, temperature: float, generator: torch.Generator | None):
        """The step's sample: :class:`TokenStats` of ``softmax(model_output / temperature)``
        (``token`` the sample, ``prob`` its probability, ``entropy``) at per-position Philox keys
        derived from one int64 drawn from ``generator``."""
        lead = model_output.shape[:-1]
        device = model_output.device
        gen_device = generator.device if generator is not None else device
        key = torch.randint(0, _SEED_MASK, (1,), generator=generator, device=gen_device).to(device)
        n = torch.arange(1, lead.numel() + 1, device=device, dtype=torch.int64).view(lead)
        seeds = (key + n * _GOLDEN) & _SEED_MASK
        temps = torch.full(lead, temperature, dtype=torch.float32, device=device)
        return token_stats(model_output, temperature=temps, seed=seeds, tempered=True, backend=self.backend)

    def accept(self, stats: TokenStats, entropy_bound: float, vocab_size: int) -> torch.Tensor:
        """bool ``[B, L]``: the entropy-bound accepted set of ``stats`` (one ``commit`` launch on a
        canvas of ``vocab_size``, an id outside the vocabulary, that marks the free positions)."""
        B, L = stats.token.shape
        x = torch.full((B, L), vocab_size, dtype=torch.int64, device=stats.token.device)
        rule = CommitRule(base="entropy_bound", entropy_bound=entropy_bound, commit_best=False)
        zeros = torch.zeros(B, dtype=torch.int64, device=x.device)
        commit(
            x,
            stats,
            CommitState.new(x),
            rule,
            active_start=zeros,
            active_end=torch.full_like(zeros, L),
            mask_id=vocab_size,
            step=0,
            backend=self.backend,
        )
        return x != vocab_size

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.LongTensor,
        *,
        entropy_bound: float | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """diffusers' ``EntropyBoundScheduler.step`` (same arguments and outputs) on the kernels."""
        if entropy_bound is None:
            entropy_bound = float(self.config.entropy_bound)
        if not isinstance(model_output, torch.Tensor) or model_output.dim() != 3:
            raise ValueError(
                f"step: model_output must be [batch, block_length, vocab_size] logits, got "
                f"{list(getattr(model_output, 'shape', []))}"
            )
        if not isinstance(sample, torch.Tensor) or tuple(sample.shape) != tuple(model_output.shape[:2]):
            raise ValueError(
                f"step: sample must have shape {list(model_output.shape[:2])} (model_output's batch and block), "
                f"got {list(getattr(sample, 'shape', []))}"
            )
        temperature = self.temperature(timestep)
        stats = self.draw(model_output, temperature, generator)
        accepted_index = self.accept(stats, entropy_bound, model_output.shape[-1])
        pred_logits = model_output / temperature  # diffusers' self-conditioning input, as it computes it
        random_tokens = torch.randint(
            low=0, high=model_output.shape[-1], size=sample.shape, device=sample.device, generator=generator
        )
        prev_sample = torch.where(accepted_index, stats.token, random_tokens)
        if not return_dict:
            return prev_sample, accepted_index, stats.token, stats.prob, pred_logits
        return EntropyBoundSchedulerOutput(
            prev_sample=prev_sample,
            accepted_index=accepted_index,
            sampled_tokens=stats.token,
            sampled_probs=stats.prob,
            pred_logits=pred_logits,
        )
