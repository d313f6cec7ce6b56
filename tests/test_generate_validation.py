"""generate() rejects bad arguments up front with one-line errors naming the argument, and never
returns masks silently (issue 16, item 6)."""

import pytest
import torch

from dllm_kernels import generate
from dllm_kernels.decode import MaxNFEError
from dllm_kernels.models import DiffusionLM, tiny


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DiffusionLM(tiny(vocab_size=32), backend="reference", attn_impl="sdpa").eval()


def run(model, prompt=((1, 2, 3),), **kw):
    args = dict(policy="fast_dllm", gen_length=16, block_length=8, backend="reference")
    args.update(kw)
    return generate(model, [list(p) for p in prompt] if isinstance(prompt, tuple) else prompt, **args)


BAD = [
    # (overrides, error type, text the one-line message must contain)
    (dict(policy="d3llm", refresh_interval=0), ValueError, "refresh_interval"),
    (dict(policy="d3llm", cache_delay=-1), ValueError, "cache_delay"),
    (dict(policy="d3llm", cache_delay=1.0), TypeError, "cache_delay"),
    (dict(policy="vanilla", steps_per_block=-1), ValueError, "steps_per_block"),
    (dict(policy="vanilla", steps_per_block=2.5), TypeError, "steps_per_block"),
    (dict(policy="vanilla", steps_per_block=True), TypeError, "steps_per_block"),
    (dict(policy="streaming", window=-2), ValueError, "suffix_window"),
    (dict(gen_length=8.0), TypeError, "gen_length"),
    (dict(gen_length=True), TypeError, "gen_length"),
    (dict(gen_length=0), ValueError, "gen_length"),
    (dict(gen_length=12), ValueError, "gen_length"),
    (dict(block_length=8.0), TypeError, "block_length"),
    (dict(block_length=False), TypeError, "block_length"),
    (dict(gen_length=512), ValueError, "max_seq_len"),
    (dict(max_nfe=0), ValueError, "max_nfe"),
    (dict(max_nfe=True), TypeError, "max_nfe"),
    (dict(max_nfe=5.0), TypeError, "max_nfe"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=True), TypeError, "seed"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=2**63), ValueError, "seed"),
    (dict(temperature=-0.5), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=True), TypeError, "temperature"),
    (dict(backend="cuda"), ValueError, "backend"),
    (dict(progress=1), TypeError, "progress"),
    (dict(policy=3), TypeError, "policy"),
    (dict(prompt=[[1, -2, 3]]), ValueError, "prompt"),
    (dict(prompt=[[1, 32]]), ValueError, "prompt"),
    (dict(prompt=torch.tensor([[1, 2**40]])), ValueError, "prompt"),
    (dict(prompt=[[1.5, 2.0]]), TypeError, "prompt"),
    (dict(prompt=[[True, False]]), TypeError, "prompt"),
    (dict(prompt=[[]]), ValueError, "prompt"),
]


@pytest.mark.parametrize("kw, err, name", BAD, ids=[f"{k}={v!r}" for kw, _, _ in BAD for k, v in list(kw.items())[-1:]])
def test_bad_argument_is_rejected_naming_it(model, kw, err, name):
    kw = dict(kw)
    prompt = kw.pop("prompt", ((1, 2, 3),))
    with pytest.raises(err, match=name) as e:
        run(model, prompt, **kw)
    assert "\n" not in str(e.value)


def test_prompt_plus_gen_length_fits_max_seq_len_exactly(model):
    # the longest prompt's last position is len + gen_length - 1 = max_seq_len - 1: accepted; a
    # shorter prompt padded to the same canvas does not count
    out = run(model, [[1] * 8, [2] * 3], gen_length=504, block_length=8, policy="fast_dllm", threshold=0.0)
    assert out.tokens.shape == (2, 512)
    with pytest.raises(ValueError, match="max_seq_len"):
        run(model, [[1] * 9], gen_length=504, block_length=8)


def test_max_nfe_reached_with_masks_left_raises_with_the_partial_result(model):
    with pytest.raises(MaxNFEError, match="max_nfe") as e:
        run(model, policy="vanilla", max_nfe=3)
    partial = e.value.result
    assert isinstance(e.value, RuntimeError)
    assert int(partial.nfe.max()) == 3
    assert (partial.generated == model.config.mask_id).any()


def test_max_nfe_reached_exactly_when_done_returns(model):
    full = run(model, policy="vanilla")  # one token per forward: 16 forwards
    assert int(full.nfe[0]) == 16
    again = run(model, policy="vanilla", max_nfe=16)
    assert torch.equal(again.tokens, full.tokens)


@pytest.mark.parametrize("seed", [2**63 - 1, 2**63 - 2])
def test_largest_seeds_sample_every_step(model, seed):
    a = run(model, temperature=1.0, seed=seed, policy="vanilla")
    b = run(model, temperature=1.0, seed=seed, policy="vanilla")
    assert int(a.nfe[0]) == 16  # past step 2, where seed + step used to overflow
    assert torch.equal(a.tokens, b.tokens)
