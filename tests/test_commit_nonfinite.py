"""commit on non-finite statistics and invalid proposals: the semantics documented in
``dllm_kernels.commit`` (NaN confidence = -inf, NaN entropy = +inf, infinities compared as IEEE
numbers, forced progress among all candidates; invalid proposals are no candidates), worked out
by hand on both backends, plus a randomized kernel == reference check on mixtures of NaN, +-inf
and finite values for every rule, with the progress guarantee.
"""

import dataclasses

import pytest
import torch
from helpers import commit_region

import dllm_kernels as dk
from dllm_kernels import CommitRule, CommitState, TokenStats

M = 9
NAN, INF = float("nan"), float("inf")
NO_BEST = dict(commit_best=False)


@pytest.fixture(params=["triton", "reference"])
def backend(request):
    return request.param


def run(backend, device, token, prob=None, rule=CommitRule(), *, entropy=None, x=None, k=None, vocab_size=None):
    """One commit over a fully masked single-row canvas; returns (committed positions, count)."""
    L = len(token)
    x = torch.full((1, L), M, dtype=torch.int64, device=device) if x is None else torch.tensor([x], device=device)
    prob = [0.5] * L if prob is None else prob
    entropy = [1.0] * L if entropy is None else entropy
    t = torch.tensor([token], dtype=torch.int64)
    p, h = torch.tensor([prob], dtype=torch.float32), torch.tensor([entropy], dtype=torch.float32)
    stats = TokenStats(*(v.to(device) for v in (t, p, p, h)))
    state = CommitState.new(x)
    before = x.clone()
    kw = dict(active_start=torch.tensor([0], device=device), active_end=torch.tensor([L], device=device))
    if k is not None:
        kw["num_transfer"] = torch.tensor([k], device=device)
    counts = dk.commit(x, stats, state, rule, mask_id=M, step=0, vocab_size=vocab_size, backend=backend, **kw)
    taken = (x != before)[0].nonzero().flatten().tolist()
    return taken, counts.item()


def test_nan_confidence_never_passes_and_ranks_last(backend, device):
    assert run(backend, device, [1, 2, 3, 4], [NAN, 0.95, 0.5, NAN]) == ([1], 1)
    assert run(backend, device, [1, 2, 3, 4], [NAN, 0.5, 0.7, NAN], CommitRule(**NO_BEST)) == ([2], 1)  # forced


def test_all_nan_confidence_still_commits_the_first_candidate(backend, device):
    # the d3LLM-style all-NaN step (an fp16 LM-head overflow): forced progress takes the first
    assert run(backend, device, [1, 2, 3], [NAN] * 3) == ([0], 1)
    assert run(backend, device, [1, 2, 3], [NAN] * 3, CommitRule(**NO_BEST)) == ([0], 1)
    assert run(backend, device, [1, 2, 3], [NAN] * 3, x=[5, M, M]) == ([1], 1)


def test_infinite_confidence_passes_and_ranks_first(backend, device):
    assert run(backend, device, [1, 2, 3], [0.5, INF, -INF], CommitRule(**NO_BEST)) == ([1], 1)
    assert run(backend, device, [1, 2, 3], [-INF, 0.1, -INF], CommitRule(threshold=0.0)) == ([1], 1)
    # -inf ties with NaN; ties go to the lowest position
    assert run(backend, device, [1, 2, 3], [-INF, NAN, -INF], CommitRule(**NO_BEST)) == ([0], 1)


def test_topk_ranks_nan_last(backend, device):
    rule = CommitRule(base="topk")
    assert run(backend, device, [1, 2, 3, 4], [NAN, 0.2, 0.7, NAN], rule, k=2) == ([1, 2], 2)
    assert run(backend, device, [1, 2, 3, 4], [NAN, 0.2, 0.7, NAN], rule, k=3) == ([0, 1, 2], 3)
    assert run(backend, device, [1, 2, 3, 4], [NAN, INF, 0.7, NAN], rule, k=1) == ([1], 1)


def test_nan_entropy_reads_as_infinite(backend, device):
    rule = CommitRule(base="entropy", entropy_threshold=0.5)
    assert run(backend, device, [1, 2, 3], entropy=[NAN, 0.3, NAN], rule=rule) == ([1], 1)
    assert run(backend, device, [1, 2, 3], entropy=[NAN, 2.0, NAN], rule=rule) == ([1], 1)  # best: lowest H
    assert run(backend, device, [1, 2, 3], entropy=[NAN, NAN, NAN], rule=rule) == ([0], 1)
    assert run(backend, device, [1, 2, 3], entropy=[INF, -INF, NAN], rule=rule) == ([1], 1)
    strict = CommitRule(base="entropy", entropy_threshold=0.4, entropy_strict=True, commit_best=False)
    assert run(backend, device, [1, 2, 3], entropy=[NAN, NAN, 0.1], rule=strict) == ([2], 1)


def test_token_cluster_ignores_nan_in_its_run(backend, device):
    rule = CommitRule(threshold=0.99, commit_best=False, token_cluster=True)
    assert run(backend, device, [5, 5, 5, 7], [NAN, 0.9, 0.85, 0.1], rule) == ([1], 1)
    # a run of NaN alone never passes: forced progress takes the best valid value
    assert run(backend, device, [5, 5, 7], [NAN, NAN, 0.1], rule) == ([2], 1)


def test_spatial_windows_with_nan_never_pass(backend, device):
    rule = CommitRule(threshold=0.99, commit_best=False, spatial_window=2, spatial_max_decided=0)
    assert run(backend, device, [1, 2, 3, 4], [0.9, NAN, 0.95, 0.95], rule) == ([2, 3], 2)


@pytest.mark.parametrize("vocab_size, expect", [(None, [2, 3]), (10, [3]), (21, [2, 3])])
def test_invalid_proposals_are_never_committed(backend, device, vocab_size, expect):
    token = [-1, M, 20, 3]
    assert run(backend, device, token, [0.99] * 4, vocab_size=vocab_size) == (expect, len(expect))


def test_invalid_proposals_get_no_forced_commit(backend, device):
    assert run(backend, device, [-5, M], [0.99, 0.99]) == ([], 0)
    # forced progress goes to the best valid candidate even when an invalid one ranks higher
    assert run(backend, device, [-5, 4, M], [0.99, 0.1, 0.99], CommitRule(**NO_BEST)) == ([1], 1)
    assert run(backend, device, [-5, 4, 1, 2], [0.99, 0.1, 0.2, 0.3], CommitRule(base="topk"), k=2) == ([2, 3], 2)


def test_invalid_proposals_still_count_as_masks_for_the_dynamic_threshold(backend, device):
    # 4 positions, all masked: r_mask = 1 -> tau_t = tau0 = 0.9 (with alpha 0.5); had the invalid
    # position counted as unmasked, tau_t = 0.9 * (1 - 0.5 / 4) = 0.7875 would take position 2
    rule = CommitRule(base="dynamic", threshold=0.9, alpha=0.5, commit_best=False)
    assert run(backend, device, [-1, 2, 3, 4], [0.99, 0.95, 0.8, 0.1], rule) == ([1], 1)


RULES = {
    "topk": CommitRule(base="topk"),
    "threshold": CommitRule(),
    "dynamic": CommitRule(base="dynamic", alpha=0.5, suffix_window=3),
    "d3llm_llada": CommitRule(base="entropy"),
    "d3llm_dream": CommitRule(base="entropy", entropy_threshold=0.4, entropy_strict=True, commit_best=False),
    "r2_last": CommitRule(spatial_window=3, token_cluster=True, temporal_steps=2, commit_best=False),
    "r2_mean": CommitRule(spatial_window=2, token_cluster=True, temporal_steps=2, temporal_agg="mean"),
    "r2_max": CommitRule(spatial_window=3, token_cluster=True, temporal_steps=2, temporal_agg="max", commit_best=False),
}


@pytest.mark.parametrize("name", list(RULES))
def test_backends_agree_on_non_finite_statistics(device, name):
    """Three steps over 6 ragged rows whose statistics mix NaN, +-inf, huge and ordinary values:
    identical canvas, state and counts; every row with candidates commits at least one."""
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    rule = RULES[name]
    B, L = 6, 12
    x = torch.full((B, L), M, dtype=torch.int64)
    x[torch.rand(B, L, generator=g) < 0.3] = 1
    state = CommitState.new(x)
    runs = {
        "reference": (x.clone(), state),
        "triton": (x.to(device), CommitState(*(t.to(device, copy=True) for t in dataclasses.astuple(state)))),
    }
    start = torch.randint(0, 4, (B,), generator=g)
    end = torch.maximum(start, torch.randint(4, L + 1, (B,), generator=g))
    values = torch.tensor([NAN, INF, -INF, 3e38, -3e38, 0.0, 0.5, 0.9, 0.95, 1.0])
    for step in range(3):
        token = torch.randint(0, 3, (B, L), generator=g)
        token[torch.rand(B, L, generator=g) < 0.1] = -1
        prob, ent = (values[torch.randint(0, len(values), (B, L), generator=g)] for _ in range(2))
        k = torch.randint(0, 3, (B,), generator=g)
        out = {}
        for backend, (xb, st) in runs.items():
            dev = xb.device
            stats = TokenStats(*(t.to(dev) for t in (token, prob, prob, ent)))
            cand = (
                (
                    (xb == M)
                    & (stats.token >= 0)
                    & (torch.arange(L, device=dev) >= start.to(dev)[:, None])
                    & (torch.arange(L, device=dev) < end.to(dev)[:, None])
                )
                .any(1)
                .cpu()
            )
            counts = commit_region(
                xb, stats, st, rule, start, end, mask_id=M, step=step, num_transfer=k.to(dev), backend=backend
            )
            assert (counts.cpu()[cand] >= 1).all(), f"{backend}: a row with candidates committed nothing"
            out[backend] = counts.cpu()
        assert torch.equal(out["triton"], out["reference"])
        assert torch.equal(runs["triton"][0].cpu(), runs["reference"][0])
        for f in dataclasses.fields(CommitState):
            a, b = getattr(runs["triton"][1], f.name).cpu(), getattr(runs["reference"][1], f.name)
            assert torch.equal(a, b) or (
                a.is_floating_point() and torch.allclose(a, b, equal_nan=True, rtol=0, atol=0)
            ), f.name


# ---- the custom op's packed arguments and the unchecked entry ----------------------------------


def test_rule_args_round_trip_every_rule_field():
    from dllm_kernels.commit import _rule_args, _rule_of

    for rule in RULES.values():
        for vocab in (None, 126464):
            assert _rule_of(*_rule_args(rule, 126336, vocab)) == (rule, 126336, vocab)


def test_custom_op_takes_few_arguments():
    """torch fills a custom op's defaults per call at a cost that grows with the square of the
    argument count; the rule's fields must never become arguments again."""
    assert len(torch.ops.dllm_kernels.commit.default._schema.arguments) <= 8


def test_unchecked_entry_equals_the_public_op(backend, device):
    from dllm_kernels.commit import commit_unchecked as _commit_unchecked, pack_rows

    g = torch.Generator().manual_seed(3)
    B, L = 3, 10
    x = torch.full((B, L), M, dtype=torch.int64)
    stats = TokenStats(
        torch.randint(0, 4, (B, L), generator=g),
        torch.rand(B, L, generator=g),
        torch.rand(B, L),
        torch.rand(B, L, generator=g),
    )
    s, e = torch.tensor([0, 2, 5]), torch.tensor([10, 6, 5])
    k = torch.tensor([2, 1, 0], dtype=torch.int32)
    rule = CommitRule(base="topk", spatial_window=2, temporal_steps=2)
    a, b = x.to(device, copy=True), x.to(device, copy=True)
    st_a, st_b = CommitState.new(a), CommitState.new(b)
    stats_d = TokenStats(*(t.to(device) for t in stats))
    want = commit_region(a, stats_d, st_a, rule, s, e, mask_id=M, step=1, num_transfer=k.to(device), backend=backend)
    rows = pack_rows(s.to(device), e.to(device), num_transfer=k.to(device))
    got = _commit_unchecked(b, stats_d, st_b, rule, rows, torch.tensor(1, device=device), M, backend=backend)
    assert torch.equal(got, want) and torch.equal(a, b)
    for f in dataclasses.fields(CommitState):
        assert torch.equal(getattr(st_a, f.name), getattr(st_b, f.name))


@pytest.mark.parametrize("vocab_size", [0, -3, 2.0, True])
def test_bad_vocab_size(vocab_size):
    x = torch.full((1, 4), M, dtype=torch.int64)
    stats = TokenStats(torch.zeros(1, 4, dtype=torch.int64), torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"vocab_size must be None or an int in \[1, 2\*\*63\)"):
        dk.commit(
            x,
            stats,
            CommitState.new(x),
            CommitRule(),
            active_start=torch.tensor([0]),
            active_end=torch.tensor([4]),
            mask_id=M,
            step=0,
            vocab_size=vocab_size,
        )
