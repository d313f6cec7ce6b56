"""commit: hand-worked cases of every rule (answers written out), guarantees, schedule, errors.

Every case runs on both backends: the Triton kernel (interpreter on CPU) and the reference.
Rows are written as lists; M is the mask id; positions are 0-based canvas positions.
"""

import dataclasses

import pytest
import torch
from helpers import commit_region

import dllm_kernels as dk
from dllm_kernels import CommitRule, CommitState, TokenStats
from dllm_kernels.commit import _rule_args, pack_rows

M = 9
NO_FORCE = ([0], [0])  # an empty force region: the rules alone decide
ONLY_RULES = dict(threshold=0.99, commit_best=False)  # a base rule that commits nothing here


@pytest.fixture(params=["triton", "reference"])
def backend(request):
    return request.param


def f32(v):
    return torch.tensor(v, dtype=torch.float32)


def run(
    backend,
    device,
    x,
    token=None,
    prob=None,
    entropy=None,
    rule=CommitRule(),
    *,
    region=None,
    force=None,
    k=None,
    offset=None,
    state=None,
    step=0,
):
    """One commit on rows given as lists; stats default to the whole canvas. Returns the new
    canvas as lists, the counts as a list and the state (on the CPU)."""
    x = torch.tensor(x, dtype=torch.int64, device=device)
    B, L = x.shape
    token = torch.arange(10, 10 + L).repeat(B, 1) if token is None else torch.tensor(token)
    Ls = token.shape[1]
    prob = torch.full((B, Ls), 0.5) if prob is None else f32(prob)
    entropy = torch.full((B, Ls), 1.0) if entropy is None else f32(entropy)
    stats = TokenStats(*(t.to(device) for t in (token, prob, prob, entropy)))
    region = ([0] * B, [L] * B) if region is None else region

    def idx(v):
        return torch.tensor(v, dtype=torch.int64, device=device)

    kw = dict(active_start=idx(region[0]), active_end=idx(region[1]), mask_id=M, step=step)
    if force is not None:
        kw.update(
            force_start=idx(force[0] * B if len(force[0]) < B else force[0]),
            force_end=idx(force[1] * B if len(force[1]) < B else force[1]),
        )
    if k is not None:
        kw["num_transfer"] = idx(k)
    if offset is not None:
        kw["stats_offset"] = idx(offset)
    if state is None:
        state = CommitState.new(x)
    else:
        state = CommitState(*(getattr(state, f.name).to(device, copy=True) for f in dataclasses.fields(state)))
    counts = dk.commit(x, stats, state, rule, backend=backend, **kw)
    state = CommitState(*(getattr(state, f.name).cpu() for f in dataclasses.fields(state)))
    return x.cpu().tolist(), counts.cpu().tolist(), state


def committed(before, after):
    """Positions of each row that changed."""
    return [[i for i, (a, b) in enumerate(zip(r0, r1)) if a != b] for r0, r1 in zip(before, after)]


# ---- rule 1: top-k ------------------------------------------------------------------------


def test_topk_ties_go_to_the_lowest_position(backend, device):
    x = [[M, M, M, M, M, 3]] * 4
    prob = [[0.5, 0.9, 0.9, 0.7, 0.2, 1.0]] * 4  # position 5 is not masked: never a candidate
    new, counts, _ = run(backend, device, x, prob=prob, rule=CommitRule(base="topk"), k=[2, 1, 4, 9])
    assert committed(x, new) == [[1, 2], [1], [0, 1, 2, 3], [0, 1, 2, 3, 4]]
    assert counts == [2, 1, 4, 5]  # k = 9 commits the 5 masked positions
    assert new[0] == [M, 11, 12, M, M, 3]


def test_signed_zeros_tie(backend, device):
    x = [[M, M, M]]
    new, _, _ = run(backend, device, x, prob=[[-0.0, 0.0, -0.0]], rule=CommitRule(threshold=0.9))
    assert committed(x, new) == [[0]]  # -0.0 == +0.0: the lowest position is the best


def test_topk_tie_at_the_kth_place(backend, device):
    x = [[M, M, M, M]]
    new, _, _ = run(backend, device, x, prob=[[0.8, 0.9, 0.8, 0.8]], rule=CommitRule(base="topk"), k=[2])
    assert committed(x, new) == [[0, 1]]


def test_topk_zero_commits_only_through_forced_progress(backend, device):
    x = [[M, M, M]]
    prob = [[0.2, 0.6, 0.4]]
    rule = CommitRule(base="topk", commit_best=False)
    assert committed(x, run(backend, device, x, prob=prob, rule=rule, k=[0], force=NO_FORCE)[0]) == [[]]
    assert committed(x, run(backend, device, x, prob=prob, rule=rule, k=[0])[0]) == [[1]]


# ---- rule 2: threshold ----------------------------------------------------------------------


def test_threshold_is_inclusive_and_adds_the_argmax(backend, device):
    below = torch.nextafter(f32(0.9), f32(0.0)).item()  # the fp32 just below 0.9
    x = [[M, M, M, M], [M, M, M, M]]
    prob = [[0.5, 0.9, below, 0.95], [0.1, 0.3, 0.3, 0.2]]
    new, counts, _ = run(backend, device, x, prob=prob, rule=CommitRule(threshold=0.9))
    # row 0: 0.9 hits tau exactly (>=), the fp32 below it does not; row 1: only the argmax,
    # the first of the two tied maxima
    assert committed(x, new) == [[1, 3], [1]]
    assert counts == [2, 1]
    rule = CommitRule(threshold=0.9, commit_best=False)
    assert committed(x, run(backend, device, x, prob=prob, rule=rule, force=NO_FORCE)[0]) == [[1, 3], []]


# ---- rule 3: dynamic threshold (Streaming-dLLM) -----------------------------------------------


def dynamic_tau(tau0, alpha, n, n_mask):
    """tau0 * (1 - alpha * (1 - n_mask / n)) in the op's fp32 order."""
    return (f32(tau0) * (1.0 - (f32(alpha) * f32(n - n_mask)) / f32(n))).item()


@pytest.mark.parametrize("last_masked", [True, False])
def test_dynamic_threshold_counts_region_and_kept_suffix(backend, device, last_masked):
    # region [2, 6) holds 2 masks; the kept suffix of W = 2 is positions 6, 7 (masked) plus the
    # canvas's last position 11 (masked or not); positions 8-10 are not counted
    x = [[1, 1, M, 4, M, 5, M, M, M, M, M, M if last_masked else 3]]
    n, n_mask = 4 + 3, 2 + 2 + int(last_masked)
    tau = dynamic_tau(0.9, 0.5, n, n_mask)
    assert tau == pytest.approx(0.9 * (1 - 0.5 * (1 - n_mask / n)), abs=1e-6)
    below = torch.nextafter(f32(tau), f32(0.0)).item()
    prob = [[0.0, 0.0, tau, 0.0, below, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]
    rule = CommitRule(base="dynamic", threshold=0.9, alpha=0.5, suffix_window=2, commit_best=False)
    new, _, _ = run(backend, device, x, prob=prob, rule=rule, region=([2], [6]), force=NO_FORCE)
    assert committed(x, new) == [[2]]  # tau_t hit exactly; nothing outside the region


def test_dynamic_threshold_whole_suffix_when_shorter_than_the_window(backend, device):
    # region [1, 3), suffix [3, 5) is shorter than W = 8: n = 4, n_mask = 1 + 2
    x = [[1, M, 2, M, M]]
    tau = dynamic_tau(0.9, 0.7, 4, 3)
    prob = [[0.0, tau, 0.0, 1.0, 1.0]]
    rule = CommitRule(base="dynamic", alpha=0.7, suffix_window=8, commit_best=False)
    assert committed(x, run(backend, device, x, prob=prob, rule=rule, region=([1], [3]), force=NO_FORCE)[0]) == [[1]]
    prob[0][1] = torch.nextafter(f32(tau), f32(0.0)).item()
    assert committed(x, run(backend, device, x, prob=prob, rule=rule, region=([1], [3]), force=NO_FORCE)[0]) == [[]]


# ---- rule 4: entropy (d3LLM) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "strict, tau, best, expect",
    [
        (False, 0.5, False, [0, 1]),  # H <= 0.5: the 0.5 hits exactly
        (True, 0.5, False, [1]),  # H < 0.5
        (True, 0.2, False, []),
        (True, 0.2, True, [1]),  # only the lowest H
    ],
)
def test_entropy_rule(backend, device, strict, tau, best, expect):
    x = [[M, M, M, M, 3]]
    entropy = [[0.5, 0.3, 0.6, 0.7, 0.0]]  # position 4 is decided: never a candidate
    rule = CommitRule(base="entropy", entropy_threshold=tau, entropy_strict=strict, commit_best=best)
    assert committed(x, run(backend, device, x, entropy=entropy, rule=rule, force=NO_FORCE)[0]) == [expect]


def test_entropy_best_ties_and_infinite_entropy(backend, device):
    x = [[M, M, M], [M, M, 3]]
    entropy = [[0.9, 0.3, 0.3], [float("inf"), float("inf"), 0.0]]
    rule = CommitRule(base="entropy", entropy_threshold=0.2)
    assert committed(x, run(backend, device, x, entropy=entropy, rule=rule, force=NO_FORCE)[0]) == [[1], [0]]


@pytest.mark.parametrize("llada", [True, False])
def test_d3llm_forced_progress_in_the_first_active_block(backend, device, llada):
    # two active blocks [0, 4) and [4, 8); only the second one has confident positions
    x = [[M] * 8]
    entropy = [[0.9, 0.8, 0.9, 0.95, 0.1, 0.9, 0.2, 0.9]]
    rule = (
        CommitRule(base="entropy", entropy_threshold=0.5)
        if llada
        else CommitRule(base="entropy", entropy_threshold=0.4, entropy_strict=True, commit_best=False)
    )
    new, counts, _ = run(backend, device, x, entropy=entropy, rule=rule, force=([0], [4]))
    assert committed(x, new) == [[1, 4, 6]]  # 1: the first block's lowest entropy, forced
    entropy[0][2] = 0.3  # now the first block commits by the rule: nothing is forced
    assert committed(x, run(backend, device, x, entropy=entropy, rule=rule, force=([0], [4]))[0]) == [[2, 4, 6]]


# ---- rule 5: R2 spatial windows ---------------------------------------------------------------


def test_spatial_window_after_the_base_rule(backend, device):
    x = [[M] * 6]
    prob = [[0.95, 0.85, 0.8, 0.3, 0.2, 0.2]]
    # base: 0 (0.95 >= 0.9). Windows of 3 on that state: [0,3) has 1 decided and masked {1, 2},
    # mean 0.825 >= 0.8: commits 1 and 2; [1,4) mean 0.65, [2,5) 0.43, [3,6) 0.23 fail
    rule = CommitRule(threshold=0.9, commit_best=False, spatial_window=3)
    assert committed(x, run(backend, device, x, prob=prob, rule=rule, force=NO_FORCE)[0]) == [[0, 1, 2]]


def test_spatial_mean_hits_the_threshold_exactly(backend, device):
    x = [[M, M, M]]
    rule = CommitRule(**ONLY_RULES, spatial_window=2, spatial_threshold=0.8)
    # (0.8 + 0.8) / 2 == 0.8 in fp32: >= passes; the window [1, 3) has mean 0.45
    new, _, _ = run(backend, device, x, prob=[[0.8, 0.8, 0.1]], rule=rule, force=NO_FORCE)
    assert committed(x, new) == [[0, 1]]


@pytest.mark.parametrize("max_decided, expect", [(1, [3, 4]), (2, [0, 3, 4])])
def test_spatial_windows_with_too_many_decided_positions_are_skipped(backend, device, max_decided, expect):
    x = [[M, 3, 3, M, M]]
    # [0,3) and [1,4) hold 2 decided positions; [2,5) holds 1 and masked {3, 4} with mean 0.9
    rule = CommitRule(**ONLY_RULES, spatial_window=3, spatial_max_decided=max_decided)
    new, _, _ = run(backend, device, x, prob=[[0.9, 0.0, 0.0, 0.9, 0.9]], rule=rule, force=NO_FORCE)
    assert committed(x, new) == [expect]


def test_spatial_windows_stay_inside_the_region(backend, device):
    # region [2, 7): windows start at 2, 3, 4 only. [4,7) has mean (0.1+0.9+0.9)/3 < 0.8; a
    # window [5,8) crossing the edge would pass, and so would [0,3) on the left
    x = [[M] * 10]
    prob = [[1.0, 1.0, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 1.0, 1.0]]
    rule = CommitRule(**ONLY_RULES, spatial_window=3)
    new, counts, _ = run(backend, device, x, prob=prob, rule=rule, region=([2], [7]), force=NO_FORCE)
    assert committed(x, new) == [[]] and counts == [0]
    # with the region [2, 8) the window [5, 8) is inside and passes
    new, _, _ = run(backend, device, x, prob=prob, rule=rule, region=([2], [8]), force=NO_FORCE)
    assert committed(x, new) == [[5, 6, 7]]


def test_spatial_windows_are_judged_on_one_state(backend, device):
    # U = 0: [0,2) and [1,3) pass on the step's state and both apply; judging [1,3) after
    # applying [0,2) would skip it (position 1 decided) and leave position 2
    x = [[M, M, M, M]]
    rule = CommitRule(**ONLY_RULES, spatial_window=2, spatial_max_decided=0)
    new, _, _ = run(backend, device, x, prob=[[0.9, 0.9, 0.9, 0.1]], rule=rule, force=NO_FORCE)
    assert committed(x, new) == [[0, 1, 2]]


@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_spatial_non_finite_confidence_skips_its_windows(backend, device, bad):
    # [0,3) and [1,4) hold the non-finite confidence (+inf would pass them, were they judged);
    # an entropy base rule that commits nothing leaves position 1 masked
    x = [[M, M, M, M, M]]
    rule = CommitRule(base="entropy", entropy_threshold=0.0, commit_best=False, spatial_window=3)
    new, _, _ = run(backend, device, x, prob=[[0.9, bad, 0.9, 0.9, 0.9]], rule=rule, force=NO_FORCE)
    assert committed(x, new) == [[2, 3, 4]]


@pytest.mark.parametrize("W, U", [(2, 0), (3, 1), (4, 2)])
def test_spatial_rule_is_window_confidence(W, U):
    """Rule 5 commits exactly the undecided positions of the region whose window_confidence
    score is >= tau_s (the reference of both ops, on a region inside a longer canvas)."""
    g = torch.Generator().manual_seed(W)
    for _ in range(10):
        L, s, e = 24, 3, 20
        x = torch.where(torch.rand(1, L, generator=g) < 0.3, 1, M)
        prob = torch.rand(1, L, generator=g) * 0.5 + 0.5
        rule = CommitRule(threshold=2.0, commit_best=False, spatial_window=W, spatial_max_decided=U)
        region = dict(active_start=torch.tensor([s]), active_end=torch.tensor([e]))
        x1 = x.clone()
        dk.reference.commit(
            x1,
            TokenStats(torch.full((1, L), 7), prob, prob, prob),
            CommitState.new(x),
            rule,
            mask_id=M,
            step=0,
            force_start=torch.tensor([0]),
            force_end=torch.tensor([0]),
            **region,
        )
        score = dk.reference.window_confidence(prob[:, s:e], x[:, s:e] != M, W, U)
        assert torch.equal(x1[:, s:e] != x[:, s:e], score >= 0.8)
        assert torch.equal(x1[:, :s], x[:, :s]) and torch.equal(x1[:, e:], x[:, e:])


# ---- rule 6: R2 token clusters ----------------------------------------------------------------


def test_token_clusters(backend, device):
    x = [[M] * 8]
    token = [[5, 5, 5, 6, 6, 7, 7, 7]]
    prob = [[0.7, 0.9, 0.9, 0.85, 0.6, 0.5, 0.6, 0.7]]
    # runs: [0,3) of 5 with max 0.9 at 1 and 2 -> 1 (lowest); [3,5) of 6, max 0.85 -> 3;
    # [5,8) of 7, max 0.7 <= 0.8 -> none
    rule = CommitRule(**ONLY_RULES, token_cluster=True)
    new, counts, _ = run(backend, device, x, token, prob, rule=rule, force=NO_FORCE)
    assert committed(x, new) == [[1, 3]] and counts == [2]
    assert new[0][1] == 5 and new[0][3] == 6


def test_token_cluster_max_must_exceed_the_threshold(backend, device):
    x = [[M, M]]
    rule = CommitRule(**ONLY_RULES, token_cluster=True, spatial_threshold=0.8)
    assert committed(x, run(backend, device, x, [[5, 5]], [[0.8, 0.7]], rule=rule, force=NO_FORCE)[0]) == [[]]


def test_token_clusters_break_at_decided_positions_and_region_edges(backend, device):
    # region [1, 7): runs inside it are [1,3) (position 3 is decided) and [4,6); position 6 is
    # alone (7 is outside the region), so is position 0's 5 left of the region
    x = [[M, M, M, 3, M, M, M, M]]
    token = [[5, 5, 5, 5, 5, 5, 6, 6]]
    prob = [[0.99, 0.85, 0.7, 0.0, 0.9, 0.95, 0.9, 0.99]]
    rule = CommitRule(**ONLY_RULES, token_cluster=True)
    new, _, _ = run(backend, device, x, token, prob, rule=rule, region=([1], [7]), force=NO_FORCE)
    assert committed(x, new) == [[1, 5]]


def test_token_cluster_min_len(backend, device):
    x = [[M] * 5]
    rule = CommitRule(**ONLY_RULES, token_cluster=True, cluster_min_len=3)
    new, _, _ = run(backend, device, x, [[5, 5, 6, 6, 6]], [[0.9, 0.9, 0.85, 0.9, 0.7]], rule=rule, force=NO_FORCE)
    assert committed(x, new) == [[3]]


# ---- rule 7: R2 temporal stability ------------------------------------------------------------

STREAK_STEPS = [  # (proposals, confidences) of three steps at three masked positions
    ([5, 5, 5], [0.9, 0.9, 0.5]),
    ([5, 6, 5], [0.85, 0.95, 0.6]),
    ([5, 6, 5], [0.8, 0.95, 0.95]),
]


@pytest.mark.parametrize("agg, expect", [("last", [0, 2]), ("mean", [0]), ("max", [0, 2])])
def test_temporal_stability(backend, device, agg, expect):
    # after step 2: position 0 has a streak of 3 with confidences 0.9, 0.85, 0.8 (last 0.8 hits
    # tau_t exactly, mean 0.85, max 0.9); position 1 changed proposal at step 1 (streak 2);
    # position 2 has 0.5, 0.6, 0.95 (mean 0.683 < 0.8)
    rule = CommitRule(**ONLY_RULES, temporal_steps=3, temporal_threshold=0.8, temporal_agg=agg)
    x, state = [[M, M, M]], None
    for step, (token, prob) in enumerate(STREAK_STEPS):
        new, counts, state = run(backend, device, x, [token], [prob], rule=rule, force=NO_FORCE, state=state, step=step)
        if step < 2:
            assert new == x and counts == [0]
            x = new
    assert committed(x, new) == [expect]
    assert state.commit_step.tolist() == [[2 if i in expect else -1 for i in range(3)]]
    c = [[f32(p[i]) for _, p in STREAK_STEPS] for i in range(3)]
    streak = {  # (last_id, count, sum, max) without a commit
        0: (5, 3, c[0][0] + c[0][1] + c[0][2], c[0][0]),
        1: (6, 2, c[1][1] + c[1][2], c[1][1]),
        2: (5, 3, c[2][0] + c[2][1] + c[2][2], c[2][2]),
    }
    for i in range(3):
        want = (-1, 0, 0.0, 0.0) if i in expect else streak[i]
        got = (state.last_id[0, i].item(), state.count[0, i].item(), state.conf_sum[0, i], state.conf_max[0, i])
        assert got[:2] == want[:2] and got[2] == want[2] and got[3] == want[3], (i, got, want)


def test_a_commit_by_an_earlier_rule_resets_the_streak(backend, device):
    rule = CommitRule(threshold=0.9, commit_best=False, temporal_steps=3)
    _, _, state = run(backend, device, [[M, M]], [[5, 5]], [[0.5, 0.5]], rule=rule, force=NO_FORCE)
    assert state.count.tolist() == [[1, 1]]
    new, _, state = run(backend, device, [[M, M]], [[5, 5]], [[0.95, 0.5]], rule=rule, force=NO_FORCE, state=state)
    assert new == [[5, M]]
    assert state.last_id.tolist() == [[-1, 5]] and state.count.tolist() == [[0, 2]]


def test_without_the_temporal_rule_the_streaks_are_not_touched(backend, device):
    state = CommitState.new(torch.zeros(1, 3, dtype=torch.int64))
    state.count.fill_(7)
    _, _, state = run(backend, device, [[M, M, M]], prob=[[0.95, 0.5, 0.5]], state=state)
    assert state.count.tolist() == [[7, 7, 7]] and state.last_id.tolist() == [[-1, -1, -1]]


# ---- forced progress, untouched rows, bookkeeping ---------------------------------------------


def test_forced_progress(backend, device):
    x = [[M, M, M, M, M, M]]
    prob = [[0.3, 0.6, 0.4, 0.95, 0.5, 0.7]]
    rule = CommitRule(threshold=0.9, commit_best=False)
    # nothing crosses 0.9 in [0, 3): its best (1) is forced; 3 commits by the rule
    assert committed(x, run(backend, device, x, prob=prob, rule=rule, force=([0], [3]))[0]) == [[1, 3]]
    # the force region already got a commit from the rule: nothing more
    assert committed(x, run(backend, device, x, prob=prob, rule=rule, force=([2], [5]))[0]) == [[3]]
    # a force region reaching outside the active region [0, 3) is clipped to it
    assert committed(x, run(backend, device, x, prob=prob, rule=rule, region=([0], [3]), force=([1], [6]))[0]) == [[1]]
    # a force region without masks forces nothing
    x2 = [[M, M, M, 4, 4, M]]
    assert committed(x2, run(backend, device, x2, prob=prob, rule=rule, force=([3], [5]))[0]) == [[]]


def test_complete_and_empty_rows_are_untouched(backend, device):
    x = [[1, 2, 3, M], [1, M, M, M], [M, M, M, M]]
    # row 0: region [0, 3) has no mask; row 1: empty region; row 2: a normal row
    new, counts, state = run(backend, device, x, prob=[[0.99] * 4] * 3, region=([0, 2, 0], [3, 2, 4]))
    assert new[:2] == x[:2] and counts[:2] == [0, 0]
    assert counts[2] == 4 and state.commit_step[:2].eq(-1).all()


@pytest.mark.parametrize("step", [7, "tensor"])
def test_commit_step_records_the_step(backend, device, step):
    step_arg = torch.tensor(8, device=device) if step == "tensor" else step
    _, _, state = run(backend, device, [[M, 1, M]], prob=[[0.95, 0.0, 0.5]], step=step_arg)
    want = 8 if step == "tensor" else 7
    assert state.commit_step.tolist() == [[want, -1, -1]]


def test_stats_offset_maps_columns_to_positions(backend, device):
    # stats of 4 columns starting at position 3 (row 0) and 1 (row 1)
    x = [[1, 1, 1, M, M, M, 1], [1, M, M, 1, 1, 1, 1]]
    token, prob = [[20, 21, 22, 23], [30, 31, 32, 33]], [[0.1, 0.95, 0.2, 0.3], [0.95, 0.96, 0.1, 0.1]]
    new, _, _ = run(backend, device, x, token, prob, region=([3, 1], [7, 3]), offset=[3, 1])
    assert new == [[1, 1, 1, M, 21, M, 1], [1, 30, 31, 1, 1, 1, 1]]


def test_strided_canvas_is_updated_in_place(device):
    big = torch.full((2, 12), M, dtype=torch.int64, device=device)
    x = big[:, 1::2]  # [2, 6], stride 2
    stats = TokenStats(
        *(
            t.to(device)
            for t in (torch.arange(12).view(2, 6), torch.full((2, 6), 0.95), torch.zeros(2, 6), torch.zeros(2, 6))
        )
    )
    region = dict(active_start=torch.tensor([0, 2], device=device), active_end=torch.tensor([6, 4], device=device))
    dk.commit(x, stats, CommitState.new(x), CommitRule(), mask_id=M, step=0, backend="triton", **region)
    assert big[:, 0::2].eq(M).all()
    assert big[0, 1::2].tolist() == [0, 1, 2, 3, 4, 5] and big[1, 1::2].tolist() == [M, M, 8, 9, M, M]


def test_num_transfer_schedule():
    # LLaDA's get_num_transfer_tokens: m // s per step, the first m % s steps one more
    got = dk.num_transfer_schedule(torch.tensor([32, 5, 0, 3]), 4)
    assert got.dtype == torch.int64
    assert got.tolist() == [[8, 8, 8, 8], [2, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]]


# ---- registration, compile, bad input ---------------------------------------------------------


def _op_args(device, rule):
    x = torch.full((2, 8), M, dtype=torch.int64, device=device)
    x[0, :3] = 1
    state = CommitState.new(x)
    g = torch.Generator().manual_seed(0)
    stats = [torch.randint(0, 3, (2, 8), generator=g), torch.rand(2, 8, generator=g), torch.rand(2, 8, generator=g)]
    idx = [torch.tensor(v, device=device) for v in ([3, 0], [8, 5])]
    return (
        x,
        [t.to(device) for t in stats],
        list(dataclasses.astuple(state)),
        pack_rows(*idx),
        torch.tensor(1, device=device),
        *_rule_args(rule, M, None),
    )


def test_custom_op_registration(device):
    rule = CommitRule(spatial_window=3, token_cluster=True, temporal_steps=2)
    torch.library.opcheck(torch.ops.dllm_kernels.commit.default, _op_args(device, rule))


def test_compiles_without_graph_breaks(device):
    def decode_step(x, stats, state, s, e, step):
        return dk.commit(
            x,
            stats,
            state,
            CommitRule(temporal_steps=2),
            active_start=s,
            active_end=e,
            mask_id=M,
            step=step,
            backend="triton",
        )

    args = _op_args(device, CommitRule())
    x, stats, state = args[0], TokenStats(args[1][0], args[1][1], args[1][1], args[1][2]), CommitState(*args[2])
    x_ref, state_ref = x.clone(), CommitState(*(t.clone() for t in args[2]))
    compiled = torch.compile(decode_step, backend="aot_eager", fullgraph=True)
    s, e = args[3][0], args[3][1]
    counts = compiled(x, stats, state, s, e, args[4])
    want = dk.commit(
        x_ref,
        stats,
        state_ref,
        CommitRule(temporal_steps=2),
        active_start=s,
        active_end=e,
        mask_id=M,
        step=args[4],
        backend="reference",
    )
    assert torch.equal(counts, want) and torch.equal(x, x_ref)
    for f in dataclasses.fields(state):
        assert torch.equal(getattr(state, f.name), getattr(state_ref, f.name))


def _bad_inputs():
    x = torch.full((2, 6), M, dtype=torch.int64)
    st = TokenStats(torch.zeros(2, 6, dtype=torch.int64), torch.zeros(2, 6), torch.zeros(2, 6), torch.zeros(2, 6))
    state = CommitState.new(x)
    s, e = torch.tensor([0, 1]), torch.tensor([6, 4])
    ok = dict(x=x, stats=st, state=state, rule=CommitRule(), active_start=s, active_end=e, mask_id=M, step=0)
    bad_state = CommitState(*(t.clone() for t in dataclasses.astuple(state)))
    bad_state.count = torch.zeros(2, 5, dtype=torch.int32)
    wrong = [
        ({"x": x.int()}, TypeError, "x must have dtype int64"),
        ({"x": x[0]}, ValueError, "x must be 2-D"),
        ({"stats": st[:3]}, TypeError, "stats must be a TokenStats"),
        (
            {"stats": st._replace(token=st.token[:1])},
            ValueError,
            r"stats.token must have shape \[2, \*\], got \[1, 6\]",
        ),
        ({"stats": st._replace(prob=st.prob.half())}, TypeError, "stats.prob must have dtype float32"),
        ({"stats": st._replace(entropy=torch.zeros(6, 2).t())}, ValueError, "stats.entropy must have the strides"),
        ({"state": dataclasses.astuple(state)}, TypeError, "state must be a CommitState"),
        ({"state": bad_state}, ValueError, r"state.count must have shape \[2, 6\], got \[2, 5\]"),
        ({"rule": "threshold"}, TypeError, "rule must be a CommitRule"),
        ({"mask_id": -1}, ValueError, "mask_id must be an int"),
        ({"mask_id": True}, ValueError, "mask_id must be an int"),
        ({"step": -1}, ValueError, "step must be an int"),
        ({"step": torch.tensor([1])}, ValueError, "step must be 0-D"),
        ({"step": torch.tensor(1.0)}, TypeError, "step must have dtype int32/int64"),
        ({"active_start": s.float()}, TypeError, "active_start must have dtype int32/int64"),
        ({"active_end": torch.tensor([6, 4, 4])}, ValueError, r"active_end must have shape \[2\], got \[3\]"),
        (
            {"active_end": torch.tensor([7, 4])},
            ValueError,
            r"0 <= active_start <= active_end <= L = 6, got \[0, 7\) in row 0",
        ),
        ({"active_start": torch.tensor([0, 5])}, ValueError, r"got \[5, 4\) in row 1"),
        (
            {"stats": TokenStats(*(t[:, :3] for t in st))},
            ValueError,
            r"region \[0, 6\) of row 0 must lie inside the stats window \[0, 3\)",
        ),
        (
            {"stats_offset": torch.tensor([0, 3])},
            ValueError,
            r"region \[1, 4\) of row 1 must lie inside the stats window \[3, 9\)",
        ),
        ({"stats_offset": torch.tensor([0, 7])}, ValueError, "stats_offset must lie in"),
        ({"rule": CommitRule(base="topk")}, ValueError, "rule.base 'topk' needs num_transfer"),
        (
            {"rule": CommitRule(base="topk"), "num_transfer": torch.tensor([1, -1])},
            ValueError,
            "num_transfer must be >= 0, got -1 in row 1",
        ),
        ({"force_start": s}, ValueError, "force_start and force_end must be given together"),
        ({"force_start": s, "force_end": torch.tensor([7, 4])}, ValueError, "force region must satisfy"),
        ({"backend": "cuda"}, ValueError, "backend must be one of"),
    ]
    for change, exc, match in wrong:
        yield pytest.param({**ok, **change}, exc, match, id=match[:40])


@pytest.mark.parametrize("kwargs, exc, match", list(_bad_inputs()))
def test_bad_input(kwargs, exc, match):
    kwargs = dict(kwargs)
    with pytest.raises(exc, match=match):
        dk.commit(kwargs.pop("x"), kwargs.pop("stats"), kwargs.pop("state"), kwargs.pop("rule"), **kwargs)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"base": "top-k"}, "base must be one of"),
        ({"threshold": float("nan")}, "threshold must be a finite number"),
        ({"alpha": "0.3"}, "alpha must be a finite number"),
        ({"spatial_window": 17}, r"spatial_window must be an int in \[0, 16\]"),
        ({"cluster_min_len": 0}, "cluster_min_len must be an int in"),
        ({"temporal_steps": 2.0}, "temporal_steps must be an int in"),
        ({"temporal_agg": "ave"}, "temporal_agg must be one of"),
        ({"commit_best": 1}, "commit_best must be a bool"),
        ({"token_edit": "yes"}, "token_edit must be a bool"),
        ({"edit_threshold": float("inf")}, "edit_threshold must be a finite number"),
    ],
)
def test_bad_rule(change, match):
    with pytest.raises(ValueError, match=match):
        CommitRule(**change)


def test_rows_longer_than_a_tile_need_the_reference():
    x = torch.full((1, 8193), M, dtype=torch.int64)
    stats = TokenStats(torch.zeros_like(x), torch.zeros(1, 8193), torch.zeros(1, 8193), torch.zeros(1, 8193))
    kw = dict(active_start=torch.tensor([0]), active_end=torch.tensor([8]), mask_id=M, step=0)
    with pytest.raises(ValueError, match="one tile of at most 8192 positions"):
        dk.commit(x, stats, CommitState.new(x), CommitRule(), backend="triton", **kw)
    assert dk.commit(x, stats, CommitState.new(x), CommitRule(), backend="reference", **kw).tolist() == [1]


def test_rule_is_hashable():
    assert len({CommitRule(), CommitRule(), CommitRule(base="entropy")}) == 2


# ---- GPU only -------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_graph_capture_matches_reference():
    """One decoding step captured in a CUDA graph and replayed: the step index lives on the
    device, the replays decode further, and the result equals the reference step by step."""
    B, L = 8, 64
    g = torch.Generator().manual_seed(0)
    x = torch.full((B, L), M, dtype=torch.int64)
    token, prob = torch.randint(0, 3, (B, L), generator=g), torch.rand(B, L, generator=g)
    stats = TokenStats(token, prob, prob, prob)
    rule = CommitRule(spatial_window=3, token_cluster=True, temporal_steps=2)
    s, e = torch.randint(0, 16, (B,), generator=g), torch.randint(32, L, (B,), generator=g)
    x_ref, state_ref = x.clone(), CommitState.new(x)
    xd, state = x.cuda(), CommitState.new(x.cuda())
    statsd, sd, ed = TokenStats(*(t.cuda() for t in stats)), s.cuda(), e.cuda()
    step = torch.zeros((), dtype=torch.int32, device="cuda")
    kw = dict(active_start=sd, active_end=ed, mask_id=M, step=step, backend="triton")
    dk.commit(xd.clone(), statsd, CommitState.new(xd), rule, **kw)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        counts = dk.commit(xd, statsd, state, rule, **kw)
        step += 1
    for i in range(4):
        graph.replay()
        want = dk.commit(
            x_ref, stats, state_ref, rule, active_start=s, active_end=e, mask_id=M, step=i, backend="reference"
        )
        assert torch.equal(counts.cpu(), want) and torch.equal(xd.cpu(), x_ref)
        for f in dataclasses.fields(state):
            assert torch.equal(getattr(state, f.name).cpu(), getattr(state_ref, f.name))


# ---- rule 9: token editing (LLaDA2.1) -----------------------------------------------------

EDIT = CommitRule(threshold=0.99, commit_best=False, token_edit=True, edit_threshold=0.6)


def test_token_edit_replaces_earlier_commits_whose_proposal_differs(backend, device):
    # positions 0-1 prompt (commit_step -1), 2-5 committed at step 1, 6-7 masked
    x = [[1, 2, 3, 4, 5, 6, M, M]]
    state = CommitState.new(torch.tensor(x))
    state.commit_step[:, 2:6] = 1
    token = [[7, 7, 3, 8, 8, 8, 8, 8]]  # differs at 0, 1 (prompt), 3, 4, 5; equal at 2
    prob = [[0.9, 0.9, 0.9, 0.6, 0.61, 0.9, 0.5, 0.5]]  # 3: exactly the threshold (strict: no edit)
    new, counts, st = run(backend, device, x, token=token, prob=prob, rule=EDIT, state=state, force=NO_FORCE, step=4)
    assert new == [[1, 2, 3, 4, 8, 8, M, M]]  # edits at 4 and 5 only
    assert counts == [2]
    assert st.commit_step.tolist() == [[-1, -1, 1, 1, 1, 1, -1, -1]]  # edits keep their first step


def test_token_edit_skips_this_steps_commits_and_outside_the_region(backend, device):
    x = [[M, 5, 5, M, 5]]
    state = CommitState.new(torch.tensor(x))
    state.commit_step[:, [1, 2, 4]] = 0
    token = [[6, 6, 6, 6, 6]]
    prob = [[0.95, 0.9, 0.9, 0.2, 0.9]]
    # region [0, 4): position 0 commits this step (base rule), 1 and 2 are edited, 4 lies outside
    new, counts, st = run(
        backend,
        device,
        x,
        token=token,
        prob=prob,
        rule=dataclasses.replace(EDIT, threshold=0.9),
        region=([0], [4]),
        state=state,
        force=NO_FORCE,
        step=3,
    )
    assert new == [[6, 6, 6, M, 5]]
    assert counts == [3]
    assert st.commit_step.tolist() == [[3, 0, 0, -1, 0]]


def test_token_edit_with_forced_progress_and_without_masks(backend, device):
    x = [[4, M, M], [4, 4, 4]]
    state = CommitState.new(torch.tensor(x))
    state.commit_step[0, 0] = 0
    state.commit_step[1] = 0
    token = [[5, 7, 7], [4, 5, 4]]
    prob = [[0.7, 0.3, 0.4], [0.7, 0.7, 0.7]]
    new, counts, _ = run(backend, device, x, token=token, prob=prob, rule=EDIT, state=state)
    assert new == [[5, M, 7], [4, 5, 4]]  # row 0: edit + forced best; row 1: one edit, no masks
    assert counts == [2, 1]


def test_token_edit_off_leaves_committed_tokens(backend, device):
    x = [[4, M]]
    state = CommitState.new(torch.tensor(x))
    state.commit_step[0, 0] = 0
    new, counts, _ = run(backend, device, x, token=[[5, 6]], prob=[[1.0, 1.0]], rule=CommitRule(), state=state)
    assert new == [[4, 6]] and counts == [1]


@pytest.mark.parametrize("seed", range(3))
def test_token_edit_kernel_matches_reference_on_random_rows(device, seed):
    g = torch.Generator().manual_seed(seed)
    B, L = 6, 24
    x = torch.randint(0, 4, (B, L), generator=g)
    x[torch.rand(B, L, generator=g) < 0.4] = M
    state = CommitState.new(x)
    state.commit_step[:] = torch.where((x != M) & (torch.rand(B, L, generator=g) < 0.7), 2, -1).int()
    token = torch.randint(0, 4, (B, L), generator=g)
    prob = torch.rand(B, L, generator=g)
    prob[:, ::5] = 0.5  # exactly at the edit threshold
    start = torch.randint(0, 6, (B,), generator=g)
    end = torch.randint(18, L + 1, (B,), generator=g)
    rule = CommitRule(threshold=0.7, token_edit=True, edit_threshold=0.5)
    outs = []
    for backend in ("triton", "reference"):
        xb, st = (
            x.clone().to(device),
            CommitState(*(getattr(state, f.name).clone().to(device) for f in dataclasses.fields(state))),
        )
        stats = TokenStats(token.to(device), prob.to(device), prob.to(device), prob.to(device))
        counts = commit_region(xb, stats, st, rule, start, end, mask_id=M, step=5, backend=backend)
        outs.append((xb.cpu(), counts.cpu(), st.commit_step.cpu()))
    for got, ref in zip(outs[0], outs[1]):
        assert torch.equal(got, ref)
    assert ((outs[1][0] != x) & (x != M)).any()  # the case edits something
