"""commit: the Triton kernel against the reference over random multi-step decoding runs.

Each run decodes ragged rows block by block (different prompt lengths, some rows finishing
early or complete from the start) with random statistics that make every rule fire: few distinct
proposals (runs, streaks), confidences and entropies drawn partly from a small set of values
(ties, thresholds hit exactly). After every step, kernel and reference must agree exactly on x,
the whole state and the counts, and the guarantees of the op must hold.
"""

import copy
import dataclasses
import zlib

import pytest
import torch

import dllm_kernels as dk
from dllm_kernels import CommitRule, CommitState, TokenStats
from dllm_kernels.policies import POLICIES, compiled_rules

MASK = 99
PAD = 98  # the canvas after a row's generation region
PROBS = [0.3, 0.5, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99]  # thresholds of the rules below, and ties
ENTROPIES = [0.05, 0.2, 0.4, 0.5, 0.7, 1.5]

FEATURE_RULES = {  # each switch and number of the rules on its own, at canvas-sized numbers
    "topk": CommitRule(base="topk"),
    "threshold": CommitRule(),
    "threshold_no_best": CommitRule(threshold=0.85, commit_best=False),
    "dynamic": CommitRule(base="dynamic", alpha=0.6, suffix_window=5),
    "entropy": CommitRule(base="entropy"),
    "entropy_strict": CommitRule(base="entropy", entropy_threshold=0.4, entropy_strict=True, commit_best=False),
    "spatial": CommitRule(threshold=0.99, commit_best=False, spatial_window=3),
    "spatial_w4_u2": CommitRule(
        threshold=0.99, commit_best=False, spatial_window=4, spatial_max_decided=2, spatial_threshold=0.75
    ),
    "token_cluster": CommitRule(threshold=0.99, commit_best=False, token_cluster=True),
    "token_cluster_len3": CommitRule(
        threshold=0.99, commit_best=False, token_cluster=True, cluster_min_len=3, spatial_threshold=0.75
    ),
    "temporal_last": CommitRule(threshold=0.99, commit_best=False, temporal_steps=2),
    "temporal_mean": CommitRule(threshold=0.99, commit_best=False, temporal_steps=3, temporal_agg="mean"),
    "temporal_max": CommitRule(
        threshold=0.99, commit_best=False, temporal_steps=2, temporal_agg="max", temporal_threshold=0.9
    ),
    "streaming_w8": CommitRule(base="dynamic", alpha=0.3, suffix_window=8),
}
# and every rule the policies launch (the list the AOT compile check compiles), where not above;
# the uniform-state (renoise) rules decode no masks: tests/test_commit_uniform.py runs them
RULES = {
    **FEATURE_RULES,
    **{n: r for n, r in compiled_rules().items() if r not in FEATURE_RULES.values() and not r.renoise},
}
# two active blocks, the first one forced
MULTI_BLOCK = {n for n in RULES if n in POLICIES and POLICIES[n]().scheduler == "multi_block"}
BATCHES = [1, 3, 8]
BLOCKS = [8, 32, 33]
LAYOUTS = ["block", "canvas", "suffix"]  # stats of the block, of the canvas, of [block start, L)


def _cases():
    """Every rule on three (B, block length, stats layout) combinations, rotated so that the
    rules together cover every pair of batch size and block length."""
    for i, name in enumerate(RULES):
        for j in range(3):
            B, block, layout = BATCHES[j], BLOCKS[(i + j) % 3], LAYOUTS[(i + 2 * j) % 3]
            if name in MULTI_BLOCK:
                layout = "canvas"
            yield pytest.param(name, B, block, layout, id=f"{name}-B{B}-block{block}-{layout}")


@dataclasses.dataclass
class Run:
    """A ragged batch being decoded: row b has a prompt of prompt[b] tokens and gen[b] blocks."""

    x: torch.Tensor
    prompt: list
    gen: list
    block: int

    @classmethod
    def new(cls, B: int, block: int, g: torch.Generator, max_prompt: int | None = None) -> "Run":
        prompt = torch.randint(1, max_prompt or 2 * block, (B,), generator=g).tolist()
        gen = [(b % 3) for b in range(B)] if B > 1 else [2]  # 0, 1 or 2 blocks: rows finish early
        L = max(p + n * block for p, n in zip(prompt, gen)) + 3
        x = torch.full((B, L), PAD, dtype=torch.int64)
        for b in range(B):
            x[b, : prompt[b]] = torch.randint(0, 4, (prompt[b],), generator=g)
            x[b, prompt[b] : prompt[b] + gen[b] * block] = MASK
            if b % 4 == 3:  # a row that starts half decoded
                span = x[b, prompt[b] : prompt[b] + gen[b] * block]
                span[torch.rand(span.shape, generator=g) < 0.5] = 5
        return cls(x, prompt, gen, block)

    def regions(self, multi_block: bool):
        """Active region per row: its first block with masks (plus the next block when
        multi_block) and the force region (that first block); empty once the row is done."""
        start, end, f_start, f_end = [], [], [], []
        for b, (p, n) in enumerate(zip(self.prompt, self.gen)):
            blocks = [(p + i * self.block, p + (i + 1) * self.block) for i in range(n)]
            todo = [i for i, (s, e) in enumerate(blocks) if (self.x[b, s:e] == MASK).any()]
            if not todo:
                done = p + n * self.block
                start.append(done), end.append(done), f_start.append(done), f_end.append(done)
                continue
            i = todo[0]
            last = min(i + 1, n - 1) if multi_block else i
            start.append(blocks[i][0]), end.append(blocks[last][1])
            f_start.append(blocks[i][0]), f_end.append(blocks[i][1])
        return start, end, f_start, f_end


def random_stats(run: Run, width: int, offset: list, prev_token, g: torch.Generator):
    """Statistics of ``width`` columns per row (column j = position offset[b] + j). Proposals
    keep last step's value with probability 0.7 (streaks) and repeat their left neighbour often
    (runs); half of the confidences come from PROBS (ties, thresholds hit exactly). Returns the
    stats, and the proposals and confidences of every canvas position ([B, L])."""
    B, L = run.x.shape
    token = torch.randint(0, 3, (B, L), generator=g)
    token = torch.where(torch.rand(B, L, generator=g) < 0.5, token.roll(1, 1), token)
    if prev_token is not None:
        token = torch.where(torch.rand(B, L, generator=g) < 0.7, prev_token, token)
    pick = torch.tensor(PROBS)[torch.randint(0, len(PROBS), (B, L), generator=g)]
    prob = torch.where(torch.rand(B, L, generator=g) < 0.5, pick, torch.rand(B, L, generator=g))
    pick = torch.tensor(ENTROPIES)[torch.randint(0, len(ENTROPIES), (B, L), generator=g)]
    entropy = torch.where(torch.rand(B, L, generator=g) < 0.5, pick, torch.rand(B, L, generator=g) * 2)
    entropy[torch.rand(B, L, generator=g) < 0.03] = float("inf")  # a row without finite logits
    # the columns of the stats window (positions past the canvas get arbitrary values)
    cols = (torch.tensor(offset)[:, None] + torch.arange(width)).clamp(max=L - 1)
    stats = TokenStats(token.gather(1, cols), prob.gather(1, cols), prob.gather(1, cols), entropy.gather(1, cols))
    return stats, token, prob


def check_guarantees(x0, x1, st0, st1, counts, region, force, step, rule, token, prob):
    """The op's promises for one step (CPU tensors; proposals are never the mask id here).
    ``token``, ``prob``: each canvas position's proposal and confidence (token editing)."""
    L = x0.shape[1]
    pos = torch.arange(L)
    inside = (pos >= torch.tensor(region[0])[:, None]) & (pos < torch.tensor(region[1])[:, None])
    newly = (x0 == MASK) & (x1 != MASK)
    # token editing: exactly the positions committed by an earlier step (not the prompt) inside
    # the region whose valid proposal differs and has conf > edit_threshold (fp32) take it
    editable = inside & (x0 != MASK) & (st0.commit_step >= 0) & (token >= 0) & (token != MASK) & (token != x0)
    edit = torch.zeros_like(editable)
    if rule.token_edit:
        edit = editable & (prob > torch.tensor(rule.edit_threshold, dtype=torch.float32))
    edited = (x0 != MASK) & (x1 != x0)
    assert not (x1[newly | edited] == MASK).any(), "a position was re-masked"
    assert torch.equal(edited, edit), "a position changed without being committed or edited (overwrite)"
    assert torch.equal(x1[edited], token[edited]), "an edited position does not hold its proposal"
    assert not (newly & ~inside).any(), "a position outside the active region was committed"
    assert torch.equal(counts, (newly | edited).sum(1, dtype=torch.int32)), "counts != newly unmasked + edited"
    assert torch.equal(st1.commit_step, torch.where(newly, step, st0.commit_step))
    untouched = ~(inside & (x0 == MASK))  # streaks live at the candidates only
    for name in ("last_id", "count", "conf_sum", "conf_max"):
        assert torch.equal(getattr(st1, name)[untouched], getattr(st0, name)[untouched]), (
            f"{name} changed off the candidates"
        )
    forced = inside & (pos >= torch.tensor(force[0])[:, None]) & (pos < torch.tensor(force[1])[:, None])
    starved = ((x0 == MASK) & forced).any(1) & ~(newly & forced).any(1)
    assert not starved.any(), f"rows {starved.nonzero().flatten().tolist()} made no progress in their force region"


def assert_same(kernel, ref, what):
    kernel = kernel.cpu()
    bad = (kernel != ref).nonzero()
    assert bad.numel() == 0, (
        f"{what} differs at {bad[:5].tolist()}: kernel {kernel[tuple(bad[0])]}, reference {ref[tuple(bad[0])]}"
    )


@pytest.mark.parametrize("name, B, block, layout", list(_cases()))
def test_multi_step_runs_match_reference(device, name, B, block, layout):
    check_run(device, name, B, block, layout)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["block", "canvas"])
@pytest.mark.parametrize("name", list(RULES))
def test_benchmark_sized_runs_match_reference(name, layout):
    """B = 64 rows, block 32, prompts up to ~900 tokens: canvas tiles of 1024 positions."""
    check_run("cuda", name, 64, 32, "canvas" if name in MULTI_BLOCK else layout, max_prompt=900)


def check_run(device, name, B, block, layout, max_prompt=None):
    rule = RULES[name]
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}-{B}-{block}-{layout}".encode()))
    run = Run.new(B, block, g, max_prompt)
    L = run.x.shape[1]
    state = CommitState.new(run.x)
    x_dev = run.x.to(device, copy=True)  # the kernel's own canvas and state (copies also on CPU)
    state_dev = CommitState(*(getattr(state, f.name).to(device, copy=True) for f in dataclasses.fields(state)))
    index_dtype = torch.int32 if B == 3 else torch.int64
    prev_token = None
    for step in range(6):
        start, end, f_start, f_end = run.regions(name in MULTI_BLOCK)
        if layout == "canvas":
            width, offset = L, [0] * B
        elif layout == "block":
            width, offset = block * (2 if name in MULTI_BLOCK else 1), [min(s, L - block) for s in start]
        else:
            width, offset = L - min(start), start
        stats, prev_token, prev_prob = random_stats(run, width, offset, prev_token, g)

        def idx(v):
            return torch.tensor(v, dtype=index_dtype)

        kw = dict(active_start=idx(start), active_end=idx(end), mask_id=MASK)
        if layout != "canvas":
            kw["stats_offset"] = idx(offset)
        if name in MULTI_BLOCK:
            kw.update(force_start=idx(f_start), force_end=idx(f_end))
        if rule.base == "topk":
            masks = (run.x == MASK).sum(1)
            kw["num_transfer"] = torch.randint(0, 4, (B,), generator=g).to(index_dtype).minimum(masks.to(index_dtype))

        x0, st0 = run.x.clone(), copy.deepcopy(state)
        counts = dk.commit(run.x, stats, state, rule, step=step, backend="reference", **kw)
        step_dev = torch.tensor(step, device=device) if step % 2 else step
        # the kernel gets its per-row vectors as columns of one packed table (strided views), as
        # generate ships them
        vectors = [k for k, v in kw.items() if isinstance(v, torch.Tensor)]
        packed = torch.stack([kw[k] for k in vectors], 1).to(device).unbind(1)
        counts_dev = dk.commit(
            x_dev,
            TokenStats(*(t.to(device) for t in stats)),
            state_dev,
            rule,
            step=step_dev,
            backend="triton",
            **{**kw, **dict(zip(vectors, packed))},
        )

        assert_same(counts_dev, counts, f"step {step}: counts")
        assert_same(x_dev, run.x, f"step {step}: x")
        for f in dataclasses.fields(state):
            assert_same(getattr(state_dev, f.name), getattr(state, f.name), f"step {step}: state.{f.name}")
        check_guarantees(
            x0, run.x, st0, state, counts, (start, end), (f_start, f_end), step, rule, prev_token, prev_prob
        )
