"""Sampling (temperature > 0) in the decoding loop: per-row seeds, batch == single at every
temperature, reproducibility, the seed argument's validation and the per-step seed mixing."""

import pytest
import torch
from test_generate import POLICY_CASES, sharp_tiny_model

from dllm_kernels import generate
from dllm_kernels._validate import _M31, mix_seed
from dllm_kernels.decode.generate import _generate

PROMPTS = [[3, 4, 5], [7, 1, 2, 9, 4, 4, 2, 6, 1], [5] * 12]  # padded to 8 or 16 alone: ragged
SEEDS = [11, 2**63 - 1, 0]
T = 2.0  # soft enough that the seed decides tokens on the sharpened tiny model


def _ids(cases):
    return [f"{p}-{'-'.join(map(str, k.values()))}" for p, k in cases]


def _same(batch, b, alone):
    assert torch.equal(batch.generated[b].cpu(), alone.generated[0].cpu()), (b, batch.generated[b], alone.generated[0])
    assert int(batch.nfe[b]) == int(alone.nfe[0])
    assert torch.equal(batch.commit_step[b, batch.gen_start :].cpu(), alone.commit_step[0, alone.gen_start :].cpu())


@pytest.mark.parametrize("policy, kw", POLICY_CASES, ids=_ids(POLICY_CASES))
def test_seeded_batch_rows_match_single_rows(policy, kw):
    m = sharp_tiny_model("reference", attn_impl="sdpa")
    args = dict(policy=policy, gen_length=16, block_length=8, temperature=T, backend="reference", **kw)
    batch = generate(m, PROMPTS, seed=SEEDS, **args)
    for b, p in enumerate(PROMPTS):
        _same(batch, b, generate(m, [p], seed=SEEDS[b], **args))
    again = generate(m, PROMPTS, seed=SEEDS, **args)
    assert torch.equal(again.tokens, batch.tokens) and torch.equal(again.nfe, batch.nfe)
    # the seed matters: other seeds change some row (the test above would pass with no sampling)
    other = generate(m, PROMPTS, seed=[s ^ 1 for s in SEEDS], **args)
    assert not torch.equal(other.tokens, batch.tokens)


TRITON_CASES = [("vanilla", {}), ("fast_dllm", {"cache": "dual"}), ("d3llm", {})]


@pytest.mark.parametrize("policy, kw", TRITON_CASES, ids=_ids(TRITON_CASES))
def test_seeded_batch_rows_match_single_rows_triton(device, policy, kw):
    m = sharp_tiny_model("triton").to(device)
    prompts, seeds = PROMPTS[:2], SEEDS[:2]
    args = dict(policy=policy, gen_length=8, block_length=8, temperature=T, backend="triton", **kw)
    batch = generate(m, prompts, seed=seeds, **args)
    for b, p in enumerate(prompts):
        _same(batch, b, generate(m, [p], seed=seeds[b], **args))
    assert torch.equal(generate(m, prompts, seed=seeds, **args).tokens, batch.tokens)


def test_an_int_seed_is_every_rows_seed():
    m = sharp_tiny_model("reference", attn_impl="sdpa")
    args = dict(policy="fast_dllm", gen_length=16, block_length=8, temperature=T, backend="reference")
    out = generate(m, [PROMPTS[1]] * 3, seed=7, **args)
    assert torch.equal(out.tokens, generate(m, [PROMPTS[1]] * 3, seed=[7, 7, 7], **args).tokens)
    assert (out.tokens == out.tokens[:1]).all()
    assert not (generate(m, [PROMPTS[1]] * 3, seed=[7, 8, 9], **args).tokens == out.tokens[:1]).all()


@pytest.mark.parametrize(
    "seed, err, msg",
    [
        ([1, 2], ValueError, "seed holds 2 seeds for 3 prompts"),
        ([1, -1, 2], ValueError, r"seed\[1\] must be an int in \[0, 9223372036854775808\)"),
        ([1, 2**63, 2], ValueError, r"seed\[1\] must be an int in"),
        ([1, 2.0, 3], TypeError, r"seed\[1\] must be an int"),
        ([1, True, 3], TypeError, r"seed\[1\] must be an int"),
        ({1, 2, 3}, TypeError, "seed must be an int or a sequence of ints"),
        ("123", TypeError, "seed must be an int or a sequence of ints"),
        (1.5, TypeError, "seed must be an int or a sequence of ints"),
    ],
)
def test_bad_seeds_are_one_line_errors(seed, err, msg):
    m = sharp_tiny_model("reference", attn_impl="sdpa")
    with pytest.raises(err, match=msg):
        generate(m, PROMPTS, seed=seed, temperature=T, gen_length=8, block_length=8, backend="reference")


def test_seed_sequences_of_any_kind():
    m = sharp_tiny_model("reference", attn_impl="sdpa")
    args = dict(policy="vanilla", gen_length=8, block_length=8, temperature=T, backend="reference")
    want = generate(m, PROMPTS, seed=SEEDS, **args).tokens
    for seed in (tuple(SEEDS), torch.tensor(SEEDS)):
        assert torch.equal(generate(m, PROMPTS, seed=seed, **args).tokens, want)


def test_mix_seed_is_overflow_free_and_matches_python_ints():
    seeds = torch.tensor([0, 1, 12345, 2**62, 2**63 - 1], dtype=torch.int64)[:, None, None]
    steps = torch.tensor([0, 1, 2, 2**31 - 1, 10**6], dtype=torch.int64)[None, :, None]
    pos = torch.arange(0, 64, dtype=torch.int64)[None, None, :]
    got = mix_seed(seeds, steps, pos)
    assert got.dtype == torch.int64 and (got >= 0).all()
    want = [
        [[mix_seed(s, t, p) for p in range(64)] for t in steps.flatten().tolist()] for s in seeds.flatten().tolist()
    ]
    assert got.tolist() == want
    assert all(0 <= v < 2**63 for v in got.flatten().tolist())
    # one row never reuses a key: (step, position) -> key is injective (a Feistel bijection)
    grid = mix_seed(5, torch.arange(300)[:, None], torch.arange(300)[None, :])
    assert grid.unique().numel() == grid.numel()
    # step and position are taken mod 2**31; the seed's 63 bits all reach the key
    assert mix_seed(9, 2**31 + 3, 4) == mix_seed(9, 3, 4) and mix_seed(9, 3, 4) != mix_seed(9, 4, 3)
    assert mix_seed(2**62, 3, 4) == mix_seed(0, 3, 4) ^ 2**62 and _M31 == 2**31 - 1


@pytest.mark.parametrize(
    "policy, kw", [("fast_dllm", {"cache": "dual"}), ("d3llm", {})], ids=["fast_dllm-dual", "d3llm"]
)
def test_bucket_padding_changes_no_sampled_token(policy, kw):
    """The padded shapes a CUDA graph replays (wider logits windows: more seed columns) sample the
    tokens of the unpadded loop."""
    args = dict(policy=policy, gen_length=18, block_length=6, temperature=T, seed=SEEDS, backend="reference")
    args.update(max_nfe=10000, progress=False, **kw)
    m = sharp_tiny_model("reference", attn_impl="sdpa")
    plain, padded = (_generate(m, PROMPTS, buckets=b, capture=False, **args) for b in (False, True))
    assert torch.equal(plain.tokens, padded.tokens) and torch.equal(plain.nfe, padded.nfe)
    assert torch.equal(plain.commit_step, padded.commit_step)
