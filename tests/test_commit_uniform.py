"""commit: the entropy-bound base rule, the uniform-state (renoise) rule of DiffusionGemma,
pinned positions on every rule, and the convergence state.

Oracles: hand-worked answers; vLLM 0.33's sort/cumsum/cummax/scatter acceptance formula and its
phase-6 history/convergence logic (``_compiled_sample_step``) and SGLang 0.5.23's
``Gemma4Renoise`` stability test, transcribed below in plain torch; the renoise tokens' law by a
chi-square test (an engine's ``torch.randint`` stream cannot be reproduced). Kernel (interpreter
on CPU) == reference exactly, on every output and every state field.
"""

import dataclasses

import pytest
import torch
from test_vllm import vllm_eb_mask

import dllm_kernels as dk
from dllm_kernels import CommitRule, CommitState, RenoiseState, TokenStats, _types
from dllm_kernels.commit import _rule_args, pack_rows
from dllm_kernels.kernels import _utils
from dllm_kernels.policies.published import DIFFUSION_GEMMA, UNIFORM_STATE_RULES, compiled_rules

M = 1_000_003  # mask id outside every vocabulary used here (uniform-state models have no MASK)
BACKENDS = ("triton", "reference")
EB = CommitRule(base="entropy_bound", entropy_bound=0.1)
RENOISE = CommitRule(base="entropy_bound", entropy_bound=0.1, renoise=True)


def _clone_state(state, device="cpu"):
    """A copy of a CommitState or a (CommitState, RenoiseState) pair on ``device``."""
    if isinstance(state, tuple):
        return tuple(_clone_state(s, device) for s in state)
    return type(state)(*(t.to(device, copy=True) for t in dataclasses.astuple(state)))


def _new(x):
    return CommitState.new(x), RenoiseState.new(x)


def _commit(backend, device, x, stats, state, rule, start, end, **kw):
    """One commit on copies (moved to ``device``); ``state`` a CommitState or, for renoise, a
    (CommitState, RenoiseState) pair. Returns (counts, x, state) on the CPU."""
    x = x.to(device, copy=True)
    state = _clone_state(state, device)
    stats = TokenStats(*(t.to(device) for t in stats))
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    if isinstance(state, tuple):
        kw["renoise_state"] = state[1]
    counts = dk.commit(
        x,
        stats,
        state[0] if isinstance(state, tuple) else state,
        rule,
        active_start=torch.as_tensor(start, device=device),
        active_end=torch.as_tensor(end, device=device),
        mask_id=M,
        backend=backend,
        **{"step": 0, **kw},
    )
    return counts.cpu(), x.cpu(), _clone_state(state)


def _fields(state):
    states = state if isinstance(state, tuple) else (state,)
    return {f"{type(s).__name__}.{f.name}": getattr(s, f.name) for s in states for f in dataclasses.fields(s)}


def _both(device, x, stats, state, rule, start, end, **kw):
    """Kernel and reference, asserted equal on the counts, the canvas and every state field."""
    got = _commit("triton", device, x, stats, state, rule, start, end, **kw)
    want = _commit("reference", "cpu", x, stats, state, rule, start, end, **kw)
    assert torch.equal(got[0], want[0]), (got[0], want[0])
    assert torch.equal(got[1], want[1])
    want_fields = _fields(want[2])
    for name, t in _fields(got[2]).items():
        assert torch.equal(t, want_fields[name]), name
    return want


def _stats(token, entropy, prob=None):
    token = torch.as_tensor(token, dtype=torch.int64)
    entropy = torch.as_tensor(entropy, dtype=torch.float32)
    prob = torch.full(entropy.shape, 0.5) if prob is None else torch.as_tensor(prob, dtype=torch.float32)
    return TokenStats(token, prob, prob, entropy)


def test_layering_copies_agree():
    assert _utils.ENTROPY_FRAC_BITS == _types.ENTROPY_FRAC_BITS
    assert _utils.ENTROPY_CAP == _types.ENTROPY_CAP


# ------------------------------------------------------------------------------------------------
# the entropy bound: hand-worked
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_entropy_bound_hand_worked(backend, device):
    # ascending: p1 0.01, p3 0.03, p4 0.04, p0 0.05, p2 0.2; sums before: 0, .01, .04, .08, .13
    x = torch.full((1, 5), M)
    stats = _stats([[10, 11, 12, 13, 14]], [[0.05, 0.01, 0.2, 0.03, 0.04]])
    n, out, _ = _commit(backend, device, x, stats, CommitState.new(x), EB, [0], [5])
    assert out.tolist() == [[10, 11, M, 13, 14]] and n.tolist() == [4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_entropy_bound_lowest_always_accepted(backend, device):
    # the lowest entropy passes even above the bound (nothing ranks before it); the next does not
    x = torch.full((1, 3), M)
    stats = _stats([[10, 11, 12]], [[5.0, 3.0, 4.0]])
    n, out, _ = _commit(backend, device, x, stats, CommitState.new(x), EB, [0], [3])
    assert out.tolist() == [[M, 11, M]] and n.tolist() == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_entropy_bound_ties_rank_by_position(backend, device):
    # equal entropies rank by position: sums before p0, p1, p2 = 0, 0.06, 0.12 -> p0, p1 pass
    # (vLLM's torch.sort is not stable on CUDA: with ties it may accept another pair)
    x = torch.full((1, 3), M)
    stats = _stats([[10, 11, 12]], [[0.06, 0.06, 0.06]])
    n, out, _ = _commit(backend, device, x, stats, CommitState.new(x), EB, [0], [3])
    assert out.tolist() == [[10, 11, M]] and n.tolist() == [2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_entropy_bound_ranks_only_candidates(backend, device):
    # p0 is committed already (not a candidate: its 0.0 entropy neither ranks nor counts), p1 has
    # an invalid proposal: the candidates p2 (0.09), p3 (0.02): sums 0.02 / 0 -> both pass
    x = torch.tensor([[7, M, M, M]])
    stats = _stats([[10, -1, 12, 13]], [[0.0, 0.0, 0.09, 0.02]])
    n, out, _ = _commit(backend, device, x, stats, CommitState.new(x), EB, [0], [4])
    assert out.tolist() == [[7, M, 12, 13]] and n.tolist() == [2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_entropy_bound_nan_and_inf(backend, device):
    # NaN reads as +inf: ranked last; a +inf ranked before a position exceeds any bound
    x = torch.full((1, 4), M)
    rule = dataclasses.replace(EB, entropy_bound=4096.0)
    stats = _stats([[10, 11, 12, 13]], [[1.0, float("inf"), 2.0, float("nan")]])
    n, out, _ = _commit(backend, device, x, stats, CommitState.new(x), rule, [0], [4])
    # ascending: p0 1.0, p2 2.0, p1 inf, p3 nan = inf (tie: by position): sums before 0, 1, 3 and
    # >= 8192 (an infinite entropy counts as the cap, 8192, above every bound) -> p3 is rejected
    assert out.tolist() == [[10, 11, 12, M]] and n.tolist() == [3]


# ------------------------------------------------------------------------------------------------
# the entropy bound: vLLM's formula and random batches
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("L", [17, 64, 256])
@pytest.mark.parametrize("bound", [0.1, 0.5, 2.0])
def test_entropy_bound_equals_vllm_formula(device, L, bound):
    """Without ties (continuous random entropies) both backends accept exactly vLLM's set, in the
    masked form and in the uniform-state form (vocabulary of 2**40: a random token equals the
    proposal with probability 2**-40, so ``x == token`` marks the accepted positions)."""
    g = torch.Generator().manual_seed(L)
    B = 3
    entropy = torch.rand(B, L, generator=g) ** 3 * (4 * bound / L**0.5)
    assert all(len(set(r)) == L for r in entropy.tolist())  # no ties
    token = torch.randint(0, 2**40, (B, L), generator=g)
    stats = _stats(token, entropy)
    want = vllm_eb_mask(entropy, bound)
    assert 0 < want.sum() < B * L  # the bound bites
    x = torch.full((B, L), M)
    rule = dataclasses.replace(EB, entropy_bound=bound)
    n, out, _ = _both(device, x, stats, CommitState.new(x), rule, [0] * B, [L] * B)
    assert torch.equal(out == token, want) and torch.equal(n, want.sum(1).int())
    rule = dataclasses.replace(RENOISE, entropy_bound=bound)
    kw = dict(seed=torch.tensor([1, 2, 3]), vocab_size=2**40)
    n, out, _ = _both(device, x, stats, _new(x), rule, [0] * B, [L] * B, **kw)
    assert torch.equal(out == token, want) and torch.equal(n, want.sum(1).int())


def _random_case(g, B, L, V, masked_frac=0.7, nonfinite=True):
    x = torch.randint(0, V, (B, L), generator=g)
    x[torch.rand(B, L, generator=g) < masked_frac] = M
    token = torch.randint(-1, V + 1, (B, L), generator=g)  # a few invalid proposals
    entropy = torch.rand(B, L, generator=g) ** 2 * 0.2
    entropy[torch.rand(B, L, generator=g) < 0.1] = 0.01  # ties
    if nonfinite:
        entropy[torch.rand(B, L, generator=g) < 0.05] = float("nan")
        entropy[torch.rand(B, L, generator=g) < 0.03] = float("inf")
    prob = torch.rand(B, L, generator=g)
    return x, _stats(token, entropy, prob)


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize(
    "rule",
    [
        EB,
        dataclasses.replace(EB, entropy_bound=0.0, commit_best=False),
        dataclasses.replace(EB, spatial_window=3, token_cluster=True, temporal_steps=2),
        dataclasses.replace(EB, token_edit=True, edit_threshold=0.3),
    ],
    ids=["eb", "eb0", "eb_r2", "eb_edit"],
)
def test_entropy_bound_kernel_equals_reference(device, B, rule):
    g = torch.Generator().manual_seed(B)
    L, V = 40, 6
    x, stats = _random_case(g, B, L, V)
    start = torch.randint(0, 10, (B,), generator=g)
    end = torch.minimum(start + torch.randint(0, 35, (B,), generator=g), torch.tensor(L))
    state = CommitState.new(x)
    state.commit_step[x != M] = 0  # token editing may edit those
    for step in range(3):
        _, x, state = _both(device, x, stats, state, rule, start, end, step=step, vocab_size=V)


# ------------------------------------------------------------------------------------------------
# renoise
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("pinned", [False, True])
def test_renoise_kernel_equals_reference_over_steps(device, B, pinned):
    """Ragged regions (one empty), invalid proposals, NaN / inf entropies, a separate argmax,
    several steps fed back: every output and state field agrees exactly."""
    g = torch.Generator().manual_seed(10 + B)
    L, V = 48, 5
    x, stats = _random_case(g, B, L, V, masked_frac=0.0)
    start = torch.tensor([3, 0, 10][:B])
    end = torch.tensor([40, 48, 10][:B])
    pin = (torch.rand(B, L, generator=g) < 0.25) if pinned else None
    state = _new(x)
    rule = dataclasses.replace(RENOISE, stability_steps=2, max_steps=6, confidence_threshold=0.08)
    seed = torch.tensor([5, 2**62 + 7, -3][:B])
    for step in range(7):
        argmax = torch.randint(0, 2, (B, L), generator=g)  # a small alphabet: streaks happen
        kw = dict(step=step, vocab_size=V, seed=seed, argmax=argmax, pinned=pin)
        x_before = x
        n, x, state = _both(device, x, stats, state, rule, start, end, **kw)
        if pinned:
            assert torch.equal(x[pin], x_before[pin])
        region = (torch.arange(L) >= start[:, None]) & (torch.arange(L) < end[:, None])
        assert torch.equal(x[~region], x_before[~region])
        assert ((x[region] >= 0) & (x[region] < V)).all()
    assert state[1].steps.tolist() == [7, 7, 0][:B]  # the empty region's row is untouched
    assert state[1].converged.tolist() == [True, True, False][:B]  # the step cap


def test_renoise_accepts_proposals_and_converges_to_argmax(device):
    """Hand-worked: the accepted positions take the sample, the rest random tokens; once stable
    and confident the region holds the argmax canvas and commit_step records the step."""
    x = torch.full((1, 4), M)
    sample = torch.tensor([[1, 2, 3, 4]])
    argmax = torch.tensor([[5, 6, 7, 8]])
    rule = dataclasses.replace(RENOISE, stability_steps=2, confidence_threshold=0.05, max_steps=10)
    state = _new(x)
    kw = dict(seed=7, vocab_size=2**40, argmax=argmax)
    # step 0: entropies .01 .2 .02 .3 -> accepted p0 (0), p2 (.01), p1 (.03 <= .1); not p3 (.23)
    stats = _stats(sample, [[0.01, 0.2, 0.02, 0.3]])
    n, x, state = _both(device, x, stats, state, rule, [0], [4], step=0, **kw)
    assert x[0, :3].tolist() == [1, 2, 3] and x[0, 3] != 4 and n.tolist() == [3]
    rs = state[1]
    assert rs.argmax.tolist() == argmax.tolist() and rs.stable_steps.tolist() == [[1, 1, 1, 1]]
    assert rs.steps.tolist() == [1] and rs.converged.tolist() == [False]
    # step 1: stable (streaks 2) but the mean entropy .1325 >= .05: not confident
    n, x, state = _both(device, x, stats, state, rule, [0], [4], step=1, **kw)
    assert state[1].converged.tolist() == [False] and state[1].stable_steps.tolist() == [[2, 2, 2, 2]]
    assert state[0].commit_step.tolist() == [[-1, -1, -1, -1]]  # nothing final before convergence
    # step 2: confident (mean .01) and stable: the argmax canvas, commit_step = 2, count 4
    stats = _stats(sample, [[0.01, 0.01, 0.01, 0.01]])
    n, x, state = _both(device, x, stats, state, rule, [0], [4], step=2, **kw)
    assert x.tolist() == argmax.tolist() and n.tolist() == [4]
    assert state[1].converged.tolist() == [True] and state[0].commit_step.tolist() == [[2, 2, 2, 2]]


def test_renoise_batch_equals_single(device):
    """A row's random tokens depend on its seed, its step count and the position only."""
    g = torch.Generator().manual_seed(3)
    B, L, V = 3, 32, 1000
    x, stats = _random_case(g, B, L, V, masked_frac=0.0, nonfinite=False)
    seed = torch.tensor([11, 12, 13])
    kw = dict(vocab_size=V, seed=seed)
    _, batch, _ = _both(device, x, stats, _new(x), RENOISE, [0] * B, [L] * B, **kw)
    for b in range(B):
        row = TokenStats(*(t[b : b + 1] for t in stats))
        kw = dict(vocab_size=V, seed=seed[b : b + 1])
        _, single, _ = _both(device, x[b : b + 1], row, _new(x[b : b + 1]), RENOISE, [0], [L], **kw)
        assert torch.equal(single[0], batch[b])


# chi-square critical values at significance 1e-4 (the tests are deterministic: fixed seeds)
CHI2_CRIT_1E4 = {9: 33.72, 15: 44.26}


def _chi2(counts):
    expected = counts.sum() / counts.numel()
    return float(((counts.double() - expected) ** 2 / expected).sum())


def _renoised(backend, device, V, B, L, steps):
    """Tokens of ``steps`` renoise steps where only the lowest-entropy position is accepted."""
    x = torch.zeros(B, L, dtype=torch.int64)
    entropy = torch.full((B, L), 1.0)
    entropy[:, 0] = 0.5  # accepted (rank 0); every other position is renoised
    stats = _stats(torch.zeros(B, L, dtype=torch.int64), entropy)
    rule = dataclasses.replace(RENOISE, entropy_bound=0.0, max_steps=10**6)
    state = _new(x)
    out = []
    for step in range(steps):
        kw = dict(step=step, vocab_size=V, seed=torch.arange(B) * 7919 + 1)
        _, x, state = _commit(backend, device, x, stats, state, rule, [0] * B, [L] * B, **kw)
        out.append(x[:, 1:].clone())
    return torch.stack(out)  # [steps, B, L - 1]


def test_renoise_tokens_are_uniform():
    """Chi-square over 64k draws at V = 10 (df 9) and over 16 equal bins of V = 262144 (df 15),
    and of consecutive steps' pairs at V = 4 (df 15, independence across steps): every statistic
    below its 1e-4 critical value."""
    tokens = _renoised("reference", "cpu", 10, 16, 257, 16)
    assert tokens.min() >= 0 and tokens.max() < 10
    assert _chi2(torch.bincount(tokens.flatten(), minlength=10)) < CHI2_CRIT_1E4[9]
    V = 262144
    tokens = _renoised("reference", "cpu", V, 16, 257, 16)
    assert tokens.min() >= 0 and tokens.max() < V
    assert _chi2(torch.bincount(tokens.flatten() * 16 // V, minlength=16)) < CHI2_CRIT_1E4[15]
    tokens = _renoised("reference", "cpu", 4, 16, 257, 16)
    pairs = tokens[:-1] * 4 + tokens[1:]
    assert _chi2(torch.bincount(pairs.flatten(), minlength=16)) < CHI2_CRIT_1E4[15]


def test_renoise_tokens_kernel_equals_reference(device):
    want = _renoised("reference", "cpu", 262144, 3, 65, 3)
    got = _renoised("triton", device, 262144, 3, 65, 3)
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------------
# convergence vs vLLM's phase 6 and SGLang's stability test
# ------------------------------------------------------------------------------------------------


def _vllm_converged(argmaxes, entropies, ST, c, max_steps):
    """vLLM 0.33 ``_compiled_sample_step`` phases 3, 5 and 6 for denoise steps of one canvas
    (every row a request in its denoise phase): the circular history of ST argmax canvases,
    ``stable = all history rows equal``, ``converged = (stable & mean H < c & hist_len >= ST)
    | step >= max_steps``. Returns the flags per step, ``[steps, B]``."""
    B, L = argmaxes[0].shape
    history = torch.zeros(B, ST, L, dtype=torch.int64)
    hist_len = torch.zeros(B, dtype=torch.int64)
    step = torch.zeros(B, dtype=torch.int64)
    out = []
    for argmax_tokens, token_entropy in zip(argmaxes, entropies):
        confident = token_entropy.mean(dim=-1) < c
        step = step + 1
        write_pos = hist_len % ST
        for i in range(ST):
            history[:, i] = torch.where((write_pos == i)[:, None], argmax_tokens, history[:, i])
        hist_len = hist_len + 1
        ref = history[:, 0]
        mismatch = torch.zeros(B, dtype=torch.int32)
        for h in range(1, ST):
            mismatch = mismatch + (ref != history[:, h]).sum(dim=-1).int()
        stable = mismatch == 0
        out.append((stable & confident & (hist_len >= ST)) | (step >= max_steps))
    return torch.stack(out)


def _sglang_finished(argmaxes, entropies, S, c, max_steps):
    """SGLang 0.5.23 ``Gemma4Renoise.step``'s per-request stopping test (history list of S)."""
    B = argmaxes[0].shape[0]
    out = []
    histories, remaining = [[] for _ in range(B)], [max_steps] * B
    for argmax_tokens, token_entropy in zip(argmaxes, entropies):
        confident = token_entropy.mean(dim=-1) < c
        flags = []
        for b in range(B):
            argmax, history = argmax_tokens[b], histories[b]
            if S == 0:
                stable = True
            elif len(history) == S:
                stable = bool(all(torch.equal(h, argmax) for h in history))
            else:
                stable = False
            history.append(argmax)
            if len(history) > S:
                history.pop(0)
            remaining[b] -= 1
            flags.append((stable and bool(confident[b])) or remaining[b] == 0)
        out.append(torch.tensor(flags))
    return torch.stack(out)


@pytest.mark.parametrize("ST", [1, 2, 3])
@pytest.mark.parametrize("max_steps", [5, 100])
def test_convergence_matches_vllm_and_sglang(device, ST, max_steps):
    """Argmax canvases over a 2-token alphabet (streaks form and break) and entropies whose mean
    crosses the threshold; each row stops at its first convergence (its region then empty, as a
    loop would), and every flag up to it matches vLLM's, and SGLang's with S = ST - 1."""
    g = torch.Generator().manual_seed(ST * 1000 + max_steps)
    B, L, V, steps, c = 3, 6, 2, 12, 0.05
    argmaxes = [torch.randint(0, V, (B, L), generator=g) for _ in range(steps)]
    for s in range(1, steps):  # mostly repeat the previous canvas: stability is reachable
        keep = torch.rand(B, 1, generator=g) < 0.7
        argmaxes[s] = torch.where(keep, argmaxes[s - 1], argmaxes[s])
    # mean entropy per step: far from c on either side (no fixed-point vs fp32 borderline)
    means = torch.rand(steps, B, generator=g) * 0.1
    means = torch.where((means - c).abs() < 0.01, means + 0.02, means)
    entropies = [means[s][:, None] * (0.5 + torch.rand(B, L, generator=g)) for s in range(steps)]
    entropies = [e * (means[s][:, None] / e.mean(1, keepdim=True)) for s, e in enumerate(entropies)]
    want = _vllm_converged(argmaxes, entropies, ST, c, max_steps)
    # up to each row's first convergence (after it the engines leave the denoise phase)
    first = torch.cumsum(torch.cumsum(want.int(), 0), 0) <= 1
    sglang = _sglang_finished(argmaxes, entropies, ST - 1, c, max_steps)
    assert torch.equal(want[first], sglang[first])
    rule = dataclasses.replace(RENOISE, stability_steps=ST, confidence_threshold=c, max_steps=max_steps)
    x = torch.zeros(B, L, dtype=torch.int64)
    state = _new(x)
    live = torch.ones(B, dtype=torch.bool)
    for s in range(steps):
        stats = _stats(torch.zeros(B, L, dtype=torch.int64), entropies[s])
        end = torch.where(live, L, 0)
        kw = dict(step=s, vocab_size=V, seed=3, argmax=argmaxes[s])
        _, x, state = _both(device, x, stats, state, rule, [0] * B, end, **kw)
        for b in range(B):
            if live[b]:
                assert bool(state[1].converged[b]) == bool(want[s, b]), (s, b)
                if want[s, b]:
                    assert torch.equal(x[b], argmaxes[s][b])
        live &= ~state[1].converged
    assert want.any()  # some row converged


# ------------------------------------------------------------------------------------------------
# pinned positions on every rule
# ------------------------------------------------------------------------------------------------

PIN_RULES = {
    "topk": CommitRule(base="topk"),
    "threshold": CommitRule(threshold=0.5),
    "dynamic": CommitRule(base="dynamic", threshold=0.8, alpha=0.5, suffix_window=2),
    "entropy": CommitRule(base="entropy", entropy_threshold=0.05),
    "entropy_bound": EB,
    "r2": CommitRule(threshold=0.95, spatial_window=3, token_cluster=True, temporal_steps=2, temporal_agg="mean"),
    "edit": CommitRule(threshold=0.5, commit_best=False, token_edit=True, edit_threshold=0.2),
}


@pytest.mark.parametrize("name", list(PIN_RULES))
def test_pinned_positions_are_never_touched(device, name):
    """commit(pinned=P) never changes a pinned position of x or the state, and equals a commit
    whose proposals at P are invalid (a pinned position is no candidate of any rule), exactly."""
    rule = PIN_RULES[name]
    g = torch.Generator().manual_seed(len(name))
    B, L, V = 3, 24, 5
    x, stats = _random_case(g, B, L, V, masked_frac=0.6, nonfinite=False)
    pin = torch.rand(B, L, generator=g) < 0.3
    start, end = torch.tensor([0, 4, 7]), torch.tensor([24, 20, 7])
    state = CommitState.new(x)
    state.commit_step[x != M] = 0
    invalid = stats._replace(token=torch.where(pin, -1, stats.token))
    kw = dict(vocab_size=V, num_transfer=torch.tensor([3, 2, 1]))
    total = 0
    for step in range(3):
        n, x_new, new_state = _both(device, x, stats, state, rule, start, end, step=step, pinned=pin, **kw)
        twin = _both(device, x, invalid, state, rule, start, end, step=step, **kw)
        assert torch.equal(n, twin[0]) and torch.equal(x_new, twin[1])
        assert torch.equal(x_new[pin], x[pin])
        for f in dataclasses.fields(CommitState):
            a, b = getattr(new_state, f.name), getattr(state, f.name)
            assert torch.equal(a, getattr(twin[2], f.name)), f.name
            if a.shape == pin.shape:
                assert torch.equal(a[pin], b[pin]), f.name
        x, state = x_new, new_state
        total += int(n.sum())
    assert total > 0  # the rule did commit


# ------------------------------------------------------------------------------------------------
# the published record, the rule's checks, the custom op
# ------------------------------------------------------------------------------------------------


def test_diffusion_gemma_record():
    rule = UNIFORM_STATE_RULES["diffusion_gemma"]
    assert DIFFUSION_GEMMA.options == {
        "entropy_bound": 0.1,
        "confidence_threshold": 0.005,
        "stability_threshold": 1,
        "max_denoising_steps": 48,
    }
    # SGLang's stability_threshold S = 1 previous step; vLLM's ST = S + 1 (the current included)
    assert rule == CommitRule(
        base="entropy_bound",
        entropy_bound=0.1,
        renoise=True,
        confidence_threshold=0.005,
        stability_steps=2,
        max_steps=48,
    )
    assert compiled_rules()["diffusion_gemma"] == rule


def test_sglang_gemma4renoise_defaults():
    """The record's options are SGLang's own defaults (read from its source: importing the
    algorithm needs CUDA-only modules)."""
    import importlib.util
    import pathlib

    spec = importlib.util.find_spec("sglang")
    if spec is None:
        pytest.skip("sglang is not installed")
    path = pathlib.Path(spec.origin).parent / "srt" / "dllm" / "algorithm" / "gemma4_renoise.py"
    if not path.exists():
        pytest.skip(f"this sglang has no Gemma4Renoise ({path})")
    src = path.read_text()
    o = DIFFUSION_GEMMA.options
    assert f'algorithm_config.get("max_denoising_steps", {o["max_denoising_steps"]})' in src
    assert f'sampler_config.get("entropy_bound", {o["entropy_bound"]})' in src
    assert f'algorithm_config.get("confidence_threshold", {o["confidence_threshold"]})' in src
    assert f'algorithm_config.get("stability_threshold", {o["stability_threshold"]})' in src


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(renoise=True), "base must be 'entropy_bound' with renoise=True"),
        (dict(base="entropy_bound", renoise=True, temporal_steps=2), "temporal_steps must be 0 with renoise"),
        (dict(base="entropy_bound", renoise=True, token_edit=True), "token_edit must be False with renoise"),
        (dict(entropy_bound=-0.1), r"entropy_bound must be a number in \[0, 4096\]"),
        (dict(confidence_threshold=1e5), r"confidence_threshold must be a number in \[0, 4096\]"),
        (dict(stability_steps=0), r"stability_steps must be an int in \[1, 2\*\*31\)"),
        (dict(max_steps=0), r"max_steps must be an int in \[1, 2\*\*31\)"),
        (dict(renoise=1), "renoise must be a bool"),
    ],
)
def test_rule_checks(kw, msg):
    with pytest.raises(ValueError, match=msg):
        CommitRule(**kw)


def test_commit_argument_errors():
    x = torch.zeros(2, 4, dtype=torch.int64)
    stats = _stats(torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, 4))
    ok = dict(active_start=torch.tensor([0, 0]), active_end=torch.tensor([4, 4]), mask_id=M, step=0)
    state, rs = _new(x)
    full = dict(vocab_size=9, seed=1, renoise_state=rs)
    cases = [
        (dict(full, vocab_size=None), "rule.renoise needs vocab_size"),
        (dict(full, seed=None), "rule.renoise needs seed"),
        (dict(full, renoise_state=None), "rule.renoise needs renoise_state, a RenoiseState"),
        (dict(full, renoise_state=dataclasses.replace(rs, steps=rs.argmax)), r"renoise_state.steps must have dtype"),
        (dict(full, renoise_state=dataclasses.replace(rs, converged=rs.converged[:1])), "renoise_state.converged"),
        (dict(full, seed=torch.tensor([1, 2], dtype=torch.int32)), "seed must have dtype int64"),
        (dict(full, argmax=torch.zeros(2, 3, dtype=torch.int64)), r"argmax must have shape \[2, 4\]"),
        (dict(full, pinned=torch.zeros(2, 4, dtype=torch.int64)), "pinned must have dtype bool"),
        (dict(full, pinned=torch.zeros(4, 2, dtype=torch.bool).t()), "pinned must be contiguous"),
    ]
    for kw, msg in cases:
        with pytest.raises((ValueError, TypeError), match=msg):
            dk.commit(x, stats, state, RENOISE, **ok, **kw)
    # the masked rules ignore seed, argmax and renoise_state
    dk.commit(x, stats, state, EB, **ok, seed=None, argmax=torch.zeros(1), renoise_state=object())


def test_custom_op_and_compile_with_extras(device):
    B, L = 2, 8
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (B, L), generator=g).to(device)
    state, rs = _new(x)
    stats = [t.to(device) for t in (torch.randint(0, 5, (B, L), generator=g), torch.rand(B, L), torch.rand(B, L))]
    extras = [torch.rand(B, L, generator=g).to(device) < 0.3, torch.randint(0, 5, (B, L)).to(device)]
    extras.append(torch.tensor([1, 2], device=device))
    rows = pack_rows(torch.tensor([0, 2], device=device), torch.tensor([8, 6], device=device))
    fields = list(dataclasses.astuple(state)) + list(dataclasses.astuple(rs))
    args = (x, stats + extras, fields, rows, torch.tensor(1, device=device))
    torch.library.opcheck(torch.ops.dllm_kernels.commit.default, (*args, *_rule_args(RENOISE, M, 5)))

    kw = dict(mask_id=M, step=1, vocab_size=5, seed=7)

    def step(x, stats, state, rs, s, e, pinned, argmax, backend="triton"):
        extra = dict(pinned=pinned, argmax=argmax, renoise_state=rs)
        return dk.commit(x, stats, state, RENOISE, active_start=s, active_end=e, backend=backend, **extra, **kw)

    st = TokenStats(stats[0], stats[1], stats[1], stats[2])
    x_ref, (state_ref, rs_ref) = x.clone(), _clone_state((state, rs), device)
    s, e = rows[0], rows[1]
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    counts = compiled(x, st, state, rs, s, e, extras[0], extras[1])
    want = step(x_ref, st, state_ref, rs_ref, s, e, extras[0], extras[1], backend="reference")
    assert torch.equal(counts, want) and torch.equal(x, x_ref)
    got, ref = _fields((state, rs)), _fields((state_ref, rs_ref))
    for name in got:
        assert torch.equal(got[name], ref[name]), name
