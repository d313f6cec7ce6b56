"""diffusers: ``DllmKernelsEntropyBoundScheduler`` against diffusers 0.42.1's ``EntropyBoundScheduler``.

Needs ``diffusers`` (pure Python; tests/sglang-cpu.txt pins it, installed with ``--no-deps``: its
dependencies come with transformers). Whether a missing diffusers fails or skips this file
follows tests/test_sglang.py: ``DLLM_KERNELS_REQUIRE_SGLANG=1`` / ``0`` decides; unset, it is
required when ``CI=true`` on a machine without CUDA.

Randomness: diffusers samples with ``torch.multinomial`` from ``generator``; ours is Gumbel-max on
the kernels' Philox stream. Exactness is tested with the draws held fixed: diffusers'
``torch.multinomial`` returns our sample and its ``torch.randint`` the renoise tokens ours drew
(replayed from a copy of the generator). Then ``prev_sample``, ``accepted_index``,
``sampled_tokens`` and ``pred_logits`` are equal and ``sampled_probs`` within 1e-5 (absolute).
The sample's law: chi-square (df 15) against ``softmax(logits / T)`` below its p = 1e-4 critical
value.
"""

import os

import pytest
import torch


def _required() -> bool:
    flag = os.environ.get("DLLM_KERNELS_REQUIRE_SGLANG")
    if flag is not None:
        return flag not in ("", "0")
    return os.environ.get("CI") == "true" and not torch.cuda.is_available()


try:
    from diffusers import EntropyBoundScheduler
    from diffusers.schedulers import scheduling_entropy_bound as theirs_module
except ImportError as exc:
    if _required():
        raise ImportError(f"diffusers is required here (CI on a CPU machine; see tests/sglang-cpu.txt): {exc}") from exc
    pytest.skip(f"diffusers is not installed ({exc}); CI installs it", allow_module_level=True)

from dllm_kernels.integrations.diffusers import _SEED_MASK, DllmKernelsEntropyBoundScheduler  # noqa: E402

CHI2_CRIT_1E4_DF15 = 44.26


def ours_of(config, backend):
    s = DllmKernelsEntropyBoundScheduler.from_config(config)
    s.backend = backend
    return s


def held_fixed(monkeypatch, sample_tokens, random_tokens):
    """diffusers' module with ``torch.multinomial`` / ``torch.randint`` returning the given draws."""
    real = torch

    class Torch:
        def __getattr__(_, name):
            return getattr(real, name)

        @staticmethod
        def multinomial(probs, num_samples, generator=None):
            return sample_tokens.reshape(-1, 1)

        @staticmethod
        def randint(*args, **kwargs):
            return random_tokens

    monkeypatch.setattr(theirs_module, "torch", Torch())


def random_logits(g, B, L, V):
    scale = torch.rand(B, L, 1, generator=g) * 14  # entropies from ~0 to ~log V: varied accepted sets
    return (torch.randn(B, L, V, generator=g) * scale).float()


@pytest.mark.parametrize(
    "backend, B, L, V, cases", [("reference", 4, 32, 50, 8), ("triton", 2, 8, 24, 2)], ids=["reference", "triton"]
)
def test_step_equals_diffusers_with_draws_held_fixed(monkeypatch, backend, B, L, V, cases):
    g = torch.Generator().manual_seed(0)
    sizes = []
    for case in range(cases):
        bound = [0.1, 0.5, 2.0][case % 3]
        theirs = EntropyBoundScheduler(entropy_bound=bound, t_min=0.3, t_max=0.9, num_inference_steps=10)
        ours = ours_of(theirs.config, backend)
        theirs.set_timesteps(6)
        ours.set_timesteps(6)
        timestep = case % 6
        logits = random_logits(g, B, L, V)
        canvas = torch.randint(0, V, (B, L), generator=g)
        gen = torch.Generator().manual_seed(100 + case)
        replay = torch.Generator().manual_seed(100 + case)
        out = ours.step(logits.clone(), timestep, canvas, generator=gen)
        torch.randint(0, _SEED_MASK, (1,), generator=replay)  # ours drew its Philox key first
        random_tokens = torch.randint(0, V, (B, L), generator=replay)
        held_fixed(monkeypatch, out.sampled_tokens, random_tokens)
        want = theirs.step(logits.clone(), timestep, canvas, generator=torch.Generator().manual_seed(1))
        assert torch.equal(out.accepted_index, want.accepted_index), case
        assert torch.equal(out.prev_sample, want.prev_sample), case
        assert torch.equal(out.sampled_tokens, want.sampled_tokens)
        assert torch.equal(out.pred_logits, want.pred_logits)
        torch.testing.assert_close(out.sampled_probs, want.sampled_probs, rtol=0, atol=1e-5)
        assert out.accepted_index.any(dim=1).all()  # the lowest entropy always commits
        sizes += out.accepted_index.sum(dim=1).tolist()
        tup = ours.step(
            logits.clone(), timestep, canvas, generator=torch.Generator().manual_seed(100 + case), return_dict=False
        )
        assert all(torch.equal(a, b) for a, b in zip(tup, (out.prev_sample, out.accepted_index, out.sampled_tokens)))
    assert len(set(sizes)) > 2  # the accepted sets varied in size


def test_samples_follow_the_tempered_softmax():
    """One distribution at every position (V = 16), 8192 draws at two timesteps: chi-square of our
    samples against diffusers' ``softmax(logits / T)`` < the 1e-4 critical value (df 15); the
    positions and the steps draw independently (they differ)."""
    B, L, V = 16, 512, 16
    s = ours_of(EntropyBoundScheduler(num_inference_steps=8).config, "reference")
    s.set_timesteps(8)
    logits = torch.linspace(-2.0, 1.5, V).expand(B, L, V).contiguous()
    gen = torch.Generator().manual_seed(0)
    draws = []
    for t in (0, 7):
        T = s.temperature(t)
        stats = s.draw(logits, T, gen)
        p = torch.softmax(logits[0, 0] / T, dim=-1).double()
        observed = torch.bincount(stats.token.flatten(), minlength=V).double()
        expected = p * stats.token.numel()
        assert float(((observed - expected) ** 2 / expected).sum()) < CHI2_CRIT_1E4_DF15
        torch.testing.assert_close(stats.prob, p[stats.token].float(), rtol=0, atol=1e-5)
        draws.append(stats.token)
    assert not torch.equal(draws[0], draws[1])
    assert len(set(draws[0][0].tolist())) > 8


def test_swap_into_a_pipeline_config():
    theirs = EntropyBoundScheduler(entropy_bound=0.25, t_max=0.7, t_min=0.2, num_inference_steps=12)
    ours = DllmKernelsEntropyBoundScheduler.from_config(theirs.config)
    assert isinstance(ours, EntropyBoundScheduler)
    for k in ("entropy_bound", "t_max", "t_min", "num_inference_steps"):
        assert ours.config[k] == theirs.config[k]
    import inspect

    assert inspect.signature(ours.step).parameters.keys() == inspect.signature(theirs.step).parameters.keys()


def test_bad_input():
    s = DllmKernelsEntropyBoundScheduler()
    with pytest.raises(ValueError, match="model_output must be"):
        s.step(torch.zeros(4, 8), 0, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="sample must have shape"):
        s.step(torch.zeros(1, 4, 8), 0, torch.zeros(1, 3, dtype=torch.int64))


# ---- the pipeline ------------------------------------------------------------------------------------


def _stub_pipeline(V=32, L=8):
    """``DiffusionGemmaPipeline`` around a stub model (logits a fixed function of each position's
    token, peaked: argmax = token % 5, every other token 20 logits below) and a stub processor."""
    from types import SimpleNamespace

    from diffusers import DiffusionGemmaPipeline
    from transformers import PretrainedConfig

    class TextConfig(PretrainedConfig):
        model_type = "stub"

        def __init__(self, **kw):
            super().__init__(**kw)
            self.vocab_size, self.num_hidden_layers, self.hidden_size, self.num_attention_heads = V, 1, 4, 1

    class Config(SimpleNamespace):
        def get_text_config(self, decoder=False):
            return self.text_config

    class Model(torch.nn.Module):
        device = torch.device("cpu")
        dtype = torch.float32

        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.table = torch.randn(V, V, generator=g) * 2
            self.table[torch.arange(V), torch.arange(V) % 5] += 20.0
            self.config = Config(canvas_length=L, text_config=TextConfig())
            self.model = SimpleNamespace(
                encoder=lambda **kw: None,
                decoder=SimpleNamespace(create_diffusion_decoder_attention_mask=lambda **kw: None),
            )
            self.self_conditioning = []

        def forward(self, decoder_input_ids, self_conditioning_logits=None, **kw):
            self.self_conditioning.append(self_conditioning_logits)
            return SimpleNamespace(logits=self.table[decoder_input_ids])

    class Processor:
        tokenizer = SimpleNamespace(eos_token_id=None)

        def apply_chat_template(self, messages, **kw):
            return {"input_ids": torch.ones(len(messages), 3, dtype=torch.long)}

    pipe = DiffusionGemmaPipeline(model=Model(), scheduler=EntropyBoundScheduler(), processor=Processor())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_swapped_into_the_pipeline_gives_its_output():
    """The documented swap, then the pipeline's own loop: with peaked logits the sample is the
    argmax on both sides and every position is accepted (no draw matters), so the pipeline returns
    the same sequences after the same number of forwards, and self-conditions on ``pred_logits``."""
    runs = []
    for swap in (False, True):
        pipe = _stub_pipeline()
        if swap:
            pipe.scheduler = DllmKernelsEntropyBoundScheduler.from_config(pipe.scheduler.config)
            pipe.scheduler.backend = "reference"
            assert type(pipe.scheduler) is DllmKernelsEntropyBoundScheduler
        out = pipe(
            prompt=["a", "b", "c"],
            gen_length=8,
            num_inference_steps=6,
            output_type="seq",
            generator=torch.Generator().manual_seed(0),
        )
        sc = pipe.model.self_conditioning
        assert sc[0] is None and sc[1] is not None and tuple(sc[1].shape) == (3, 8, 32)
        runs.append((out.sequences, len(sc)))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1] < 6
    assert torch.equal(runs[1][0], runs[1][0] % 5)  # the model's fixed point
