"""Tensor-parallel vocabulary statistics: token_stats_partial on shards + merge_token_stats equals
token_stats on the whole vocabulary (exact tokens, the stated float tolerances), kernel and
reference alike, and over a real collective (torch.distributed, gloo, 2 and 4 CPU processes)."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import assert_stats_close

import dllm_kernels as dk
from dllm_kernels import reference
from dllm_kernels.kernels import confidence as kernels

WORDS = 8


def shard_bounds(V, n, uneven=False):
    """n contiguous shards of [0, V); uneven ones of growing width."""
    if not uneven:
        step = math.ceil(V / n)
        cuts = [min(i * step, V) for i in range(n + 1)]
    else:
        w = torch.arange(1, n + 1, dtype=torch.float64)
        cuts = [0] + [int(c) for c in (w.cumsum(0) / w.sum() * V).round().tolist()]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def sharded(x, bounds, backend, **kw):
    V = x.shape[-1]
    return [dk.token_stats_partial(x[..., a:b], a, vocab_size=V, backend=backend, **kw) for a, b in bounds]


def assert_partials_equal(got, ref):
    """Kernel vs reference partial states: ids and maxima exact, sums to fp32 accumulation."""
    assert got.shape == ref.shape and got.dtype == ref.dtype == torch.float32
    g, r = got.cpu().reshape(-1, WORDS), ref.cpu().reshape(-1, WORDS)
    assert torch.equal(g.view(torch.int32)[:, 6:], r.view(torch.int32)[:, 6:]), "ids differ"
    for w in (0, 3, 5):  # m, v2, sampled logit: selections, exact (inf == inf)
        assert torch.equal(g[:, w], r[:, w]), f"word {w} differs"
    torch.testing.assert_close(g[:, 1], r[:, 1], rtol=2e-6, atol=0)  # s >= 1 where the shard is valid
    torch.testing.assert_close(g[:, 2], r[:, 2], rtol=2e-6, atol=2e-5 * (1 + r[:, 1].abs().max().item()))  # u
    torch.testing.assert_close(g[:, 4], r[:, 4], rtol=1e-6, atol=1e-6)  # Gumbel score (fp32, log ulps)


def logits(shape, device, scale=2.0):
    x = torch.randn(*shape) * scale
    return x.to(device)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("n_shards,uneven", [(1, False), (2, False), (3, True), (5, True)])
def test_merged_equals_unsharded(device, n_shards, uneven, temperature):
    V = 3001
    x = logits((2, 3, V), device)
    whole = dk.token_stats(x, temperature=temperature, seed=7, backend="triton")
    ref_whole = reference.token_stats(x.cpu(), temperature=temperature, seed=7)
    bounds = shard_bounds(V, n_shards, uneven)
    parts = sharded(x, bounds, "triton", temperature=temperature, seed=7)
    ref_parts = sharded(x.cpu(), bounds, "reference", temperature=temperature, seed=7)
    for p, r in zip(parts, ref_parts):
        assert p.shape == (2, 3, WORDS)
        assert_partials_equal(p, r)
    merged = dk.merge_token_stats(parts, backend="triton")
    assert_stats_close(merged, ref_whole)
    assert torch.equal(merged.token, whole.token)
    assert_stats_close(dk.merge_token_stats(ref_parts, backend="reference"), ref_whole)
    # the order of the shards does not matter; a stacked tensor is accepted
    rev = dk.merge_token_stats(torch.stack(parts[::-1]), backend="triton")
    assert torch.equal(rev.token, merged.token)
    assert_stats_close(rev, ref_whole)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_partial_with_vocabulary_splits(device, num_splits):
    """A shard wide enough for the split path gives the same partial state."""
    V = 9000
    x = logits((3, V), device)
    for t, seed in ((0.0, 0), (0.6, 99), (0.6, torch.tensor([5, 6, 7], device=device))):
        got = kernels.token_stats_partial(x[:, 1000:], 1000, V, t, seed, (), num_splits=num_splits)
        seed_ref = seed.cpu() if isinstance(seed, torch.Tensor) else seed
        ref = reference.token_stats_partial(x[:, 1000:].cpu(), 1000, temperature=t, seed=seed_ref, vocab_size=V)
        assert_partials_equal(got, ref)


def test_ties_across_shards_go_to_the_lowest_global_id(device):
    V = 1200
    x = torch.zeros(4, V)
    x[0, [900, 250, 600]] = 5.0  # the max in three shards
    x[1, [1199, 800]] = 3.0
    x[2, :] = float("-inf")
    x[2, [1000, 10]] = 1.0  # shard 0 and shard 3
    x[3, [399, 400]] = 2.0  # both sides of a shard boundary
    x = x.to(device)
    bounds = shard_bounds(V, 3)  # [0, 400), [400, 800), [800, 1200)
    for backend in ("triton", "reference"):
        merged = dk.merge_token_stats(sharded(x, bounds, backend)[::-1], backend=backend)
        assert merged.token.tolist() == [250, 800, 10, 399]
        assert merged.margin.tolist() == [0.0, 0.0, 0.0, 0.0]
        assert_stats_close(merged, reference.token_stats(x.cpu()))


@pytest.mark.parametrize("temperature", [0.0, 1.1])
def test_suppress_ids_row_seeds_and_extreme_values(device, temperature):
    """Global suppress ids, per-row seeds, +inf / NaN / empty shards merge like the whole row."""
    V = 2000
    x = logits((5, V), device)
    x[0, 1500] = float("inf")
    x[1, :1000] = float("-inf")  # shard 0 (and 1) without a finite logit
    x[1, 1000:1500] = float("nan")
    x[2, [3, 1999]] = float("inf")
    x[3, :] = float("-inf")
    x[4, :1000] = torch.finfo(torch.float32).min
    suppress = [int(x[4].argmax()), 17, 1999]
    seeds = torch.tensor([3, 1, 4, 1, 5], device=device)
    bounds = shard_bounds(V, 4, uneven=True)
    ref_whole = reference.token_stats(x.cpu(), temperature=temperature, seed=seeds.cpu(), suppress_ids=suppress)
    for backend in ("triton", "reference"):
        s = seeds if backend == "triton" else seeds.cpu()
        xx = x if backend == "triton" else x.cpu()
        parts = sharded(xx, bounds, backend, temperature=temperature, seed=s, suppress_ids=suppress)
        merged = dk.merge_token_stats(parts, backend=backend)
        assert_stats_close(merged, ref_whole)
    assert ref_whole.token[0].item() == 1500 and ref_whole.token[2].item() == 3
    assert ref_whole.entropy[3].item() == float("inf")


def test_sampled_token_equals_the_full_vocabulary_sample(device):
    """Noise keyed by the global id: every shard count gives the unsharded sample, row by row."""
    V = 700
    x = logits((12, V), device, scale=0.3)  # flat rows: the sample is mostly noise
    whole = dk.token_stats(x, temperature=1.0, seed=123, backend="triton").token
    assert whole.unique().numel() > 6
    for n in (2, 7):
        parts = sharded(x, shard_bounds(V, n, uneven=True), "triton", temperature=1.0, seed=123)
        assert torch.equal(dk.merge_token_stats(parts, backend="triton").token, whole)


def test_custom_op_registration(device):
    x = logits((2, 3, 100), device)
    torch.library.opcheck(torch.ops.dllm_kernels.token_stats_partial.default, (x, 100, 300, 0.0, 0, [150]))
    torch.library.opcheck(torch.ops.dllm_kernels.token_stats_partial.default, (x, 0, 300, 0.5, 3, []))
    parts = torch.stack(
        [dk.token_stats_partial(x, 0, backend="triton"), dk.token_stats_partial(x, 100, backend="triton")]
    )
    torch.library.opcheck(torch.ops.dllm_kernels.merge_token_stats.default, (parts,))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda x: dk.token_stats_partial(x, -1), ValueError, "vocab_start must be an int >= 0"),
        (lambda x: dk.token_stats_partial(x, 1.0), ValueError, "vocab_start must be an int"),
        (
            lambda x: dk.token_stats_partial(x, 5, vocab_size=12),
            ValueError,
            r"vocab_start \+ shard width \(5 \+ 10\) exceeds vocab_size 12",
        ),
        (lambda x: dk.token_stats_partial(x, 0, vocab_size=True), ValueError, "vocab_size must be an int"),
        (
            lambda x: dk.token_stats_partial(x, 0, temperature=1.0, vocab_size=10),
            ValueError,
            "seed must be given at temperature > 0",
        ),
        (lambda x: dk.token_stats_partial(x, 0, temperature=1.0, seed=3), ValueError, "vocab_size is required"),
        (
            lambda x: dk.token_stats_partial(x, 0, vocab_size=10, suppress_ids=[10]),
            ValueError,
            "suppress_ids must lie in",
        ),
        (
            lambda x: dk.token_stats_partial(x, 0, temperature=1e-40, seed=1, vocab_size=10),
            ValueError,
            "temperature must be 0",
        ),
        (lambda x: dk.token_stats_partial(x.long(), 0), TypeError, "logits_shard must have dtype"),
        (lambda x: dk.merge_token_stats([]), ValueError, "at least one state"),
        (
            lambda x: dk.merge_token_stats(torch.zeros(2, 4, 7)),
            ValueError,
            r"partials must have shape \[S >= 1, \*lead, 8\]",
        ),
        (
            lambda x: dk.merge_token_stats(torch.zeros(2, 4, 8, dtype=torch.float64)),
            TypeError,
            "partials must have dtype float32",
        ),
        (
            lambda x: dk.merge_token_stats([torch.zeros(2, 8), torch.zeros(3, 8)]),
            ValueError,
            r"partials\[1\] must have shape",
        ),
        (lambda x: dk.merge_token_stats(torch.zeros(1025, 2, 8)), ValueError, "at most 1024 partial states"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(torch.randn(2, 10))


# ------------------------------------------------------------------------------------------------
# a real collective: gloo on the CPU
# ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, x, cases, out_dir):
    """One rank: for each case ``(key, backend, partial kwargs, merge kwargs)``, the partial
    state of its (uneven) vocabulary shard, all-gathered and merged; saves the merged
    statistics by key."""
    os.environ["TRITON_INTERPRET"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        V = x.shape[-1]
        a, b = shard_bounds(V, world, uneven=True)[rank]
        results = {}
        for key, backend, partial_kw, merge_kw in cases:
            part = dk.token_stats_partial(x[..., a:b], a, vocab_size=V, backend=backend, **partial_kw)
            gathered = [torch.empty_like(part) for _ in range(world)]
            dist.all_gather(gathered, part)  # gloo has no all_gather_into_tensor
            results[key] = tuple(dk.merge_token_stats(gathered, backend=backend, **merge_kw))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_gloo_all_gather_of_partials(world, tmp_path):
    """Each rank holds one (uneven) vocabulary shard; the ranks all-gather their 8-word states,
    merge them, and every rank gets token_stats of the whole vocabulary (argmax on the kernel,
    sampling on the reference backend)."""
    V = 97
    x = logits((2, 3, V), "cpu")
    x[0, 1, [5, 90]] = 9.0  # a tie across ranks
    cases = [(T, backend, dict(temperature=T, seed=2024), {}) for T, backend in ((0.0, "triton"), (0.7, "reference"))]
    mp.start_processes(
        _rank_main, args=(world, _free_port(), x, cases, str(tmp_path)), nprocs=world, join=True, start_method="spawn"
    )
    for rank in range(world):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for temperature, got in results.items():
            assert_stats_close(dk.TokenStats(*got), reference.token_stats(x, temperature=temperature, seed=2024))


def test_benchmark_tp_case_computes_token_stats(device):
    """bench/token_stats_cases.kernel_tp (the TP benchmark's work) equals token_stats."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
    from token_stats_cases import kernel_tp

    x = logits((3, 1000), device)
    assert_stats_close(dk.TokenStats(*kernel_tp(x, 3)), reference.token_stats(x.cpu()))


@pytest.mark.parametrize("world", [2, 3])
def test_gloo_all_gather_of_tempered_partials(world, tmp_path):
    """Tempered statistics at per-row temperatures (T = 0 rows included) under an allowed-token
    bitmask of the whole vocabulary: the merged states over gloo equal the unsharded op."""
    V = 101
    x = logits((2, 3, V), "cpu")
    x[0, 1, [5, 90]] = 9.0  # a tie across ranks
    temps = torch.tensor([[0.0, 0.5, 1.3], [0.2, 0.0, 2.0]])
    allow = torch.rand(2, 3, V) > 0.3
    allow[1, 2] = False  # nothing allowed
    words = torch.zeros(2, 3, 4 * 32, dtype=torch.int64)
    words[..., :V] = allow.long()
    words = (words.view(2, 3, 4, 32) << torch.arange(32)).sum(-1)
    mask = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    kw = dict(temperature=temps, seed=77, allowed=mask, tempered=True)
    cases = [(backend, backend, kw, dict(temperature=temps, tempered=True)) for backend in ("triton", "reference")]
    mp.start_processes(
        _rank_main, args=(world, _free_port(), x, cases, str(tmp_path)), nprocs=world, join=True, start_method="spawn"
    )
    whole = dk.token_stats(x, temperature=temps, seed=77, allowed=mask, tempered=True, backend="reference")
    assert whole.entropy[1, 2].item() == math.inf
    for rank in range(world):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for got in results.values():
            assert_stats_close(dk.TokenStats(*got), whole)
