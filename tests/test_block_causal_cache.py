"""Fast-dLLM v2's sub-block cache (``fast_dllm_v2(sub_block_cache=True)``, its
``use_block_cache=True``) on the tiny block-causal model of tests/test_generate_block.py:
kernels == references, a ragged batch == its rows alone, bucketed (padded) steps == unpadded,
the forwards the published code runs (tests/fidelity/README.md, "Sub-blocks"), and the
arguments checked. Fidelity to the published decoder: tests/test_fidelity_block.py."""

from __future__ import annotations

import pytest
import torch
from test_generate_block import (
    EOS,
    EOT,
    MASK,
    PROMPTS,
    _assert_rows_equal,
    _Recorder,
    _run,
    assert_bucketed_matches_unpadded,
    block_model,
)

from dllm_kernels import generate
from dllm_kernels.policies import fast_dllm_v2, resolve_policy

BS = 8
# (overrides): sub-blocks of 4 with a stop, and at a low threshold; both run sub-block forwards
# on every prompt (3 to 11 of 22 to 38 forwards)
CASES = [
    {"sub_block": 4, "stop_ids": (EOS,), "stop_fill": EOT, "use_block_cache": True},
    {"sub_block": 4, "threshold": 0.5, "stop_ids": (), "stop_fill": EOT, "use_block_cache": True},
]
IDS = ["sub4-stop", "sub4-tau0.5"]
RAGGED = [p for p in PROMPTS if len(p) != BS]


@pytest.mark.parametrize("kw", CASES, ids=IDS)
def test_batch_rows_match_single_rows(kw):
    m = block_model(bs=BS, shift=True)
    batch = _run(m, RAGGED, "fast_dllm_v2", BS, kw)
    assert not (batch.tokens[:, batch.gen_start :] == MASK).all()
    for b, p in enumerate(RAGGED):
        _assert_rows_equal(batch, _run(m, [p], "fast_dllm_v2", BS, kw), b, 0)


@pytest.mark.parametrize("kw", CASES, ids=IDS)
def test_kernels_match_references(kw):
    """The loop's ops and the model's ops (cache writes of sub-blocks, attention of the cache
    alone) on the Triton interpreter == the references, exactly."""
    prompts = [PROMPTS[0], PROMPTS[2]]
    ref = _run(block_model("reference", bs=BS, shift=True), prompts, "fast_dllm_v2", BS, kw)
    m = block_model("triton", bs=BS, shift=True, attn_impl="ops")
    got = generate(m, prompts, policy="fast_dllm_v2", gen_length=4 * BS, block_length=BS, backend="triton", **kw)
    for b in range(len(prompts)):
        _assert_rows_equal(got, ref, b, b)


@pytest.mark.parametrize("kw", CASES, ids=IDS)
def test_bucketed_steps_match_unpadded(kw):
    assert_bucketed_matches_unpadded(block_model(bs=BS, shift=True), RAGGED, "fast_dllm_v2", BS, kw)


class _AttendRecorder(_Recorder):
    """Also records each forward's ``attend_new``."""

    def __call__(self, tokens, positions, **kw):
        out = super().__call__(tokens, positions, **kw)
        self.calls[-1] = [(*row, kw["attend_new"], kw["write"]) for row in self.calls[-1]]
        return out


def test_the_forwards_are_the_published_ones():
    """Batch 1, prompt of 17 (a prefill of two blocks, then a partial block): after the prefill,
    per block, a whole-block forward against the earlier blocks that also writes the block's rows;
    while the current sub-block's first position is committed, forwards of that sub-block alone
    that overwrite its rows and attend the cache to the block's end (no new rows: no mask); a
    whole-block forward again whenever a sub-block starts with a mask; the store forward. The
    rows' first forward attends ``[cache | new rows]`` (the prefill's block-causal mask)."""
    sub = 4
    kw = {"sub_block": sub, "stop_ids": (), "stop_fill": EOT, "use_block_cache": True}
    rec = _AttendRecorder(block_model(bs=BS, shift=True))
    prompt = PROMPTS[3]
    out = _run(rec, [prompt], "fast_dllm_v2", BS, kw)
    pad, nfe = int(out.pad[0]), int(out.nfe[0])
    assert len(rec.calls) == nfe
    canvas, step_of = out.tokens[0].tolist(), out.commit_step[0].tolist()  # by canvas position
    kinds, cached = [], None
    for i, ((pos, toks, ids, clen, attend_new, write),) in enumerate(rec.calls):
        if i == 0:  # the prefill: two blocks, block-causal, written
            assert pos == list(range(16)) and ids == [0, 1, 2, 3] and write.block_size == sub
            assert attend_new and clen == pad
            kinds.append("prefill")
            continue
        assert not attend_new  # the cache alone: the written rows are the forward's own
        blk = pos[0] // BS
        s = blk * BS
        assert clen == pad + s + BS  # the cache to the block's end
        # the canvas as this forward saw it: a position committed at a later step is still a mask
        seen = [canvas[pad + p] if step_of[pad + p] < i else MASK for p in pos]
        assert toks == seen
        if len(pos) == sub:  # a sub-block forward: its first position is committed, its rows written
            j = pos[0]
            assert cached == blk and j % sub == 0 and toks[0] != MASK and MASK in toks
            assert ids == [(pad + j) // sub]
            kinds.append("sub_block")
        elif MASK in toks[:BS]:  # a whole-block forward: the block's rows written
            assert pos == list(range(s, s + BS))
            assert ids == [(pad + s) // sub + r for r in range(BS // sub)]
            cached = blk
            kinds.append("block")
        else:  # the store forward (+ the next block's inherited position, but after the last block)
            assert pos == list(range(s, min(s + BS + 1, len(canvas) - pad)))
            assert ids == [(pad + s) // sub + r for r in range(BS // sub)]
            cached = None
            kinds.append("update")
    assert {"sub_block", "block", "update"} <= set(kinds)


def test_the_option_and_its_alias():
    assert resolve_policy("fast_dllm_v2", use_block_cache=True) == fast_dllm_v2(sub_block_cache=True)
    assert resolve_policy("fast_dllm_v2", use_block_cache=False) == fast_dllm_v2()
    assert not fast_dllm_v2().sub_block_cache
    with pytest.raises(ValueError, match="use_block_cache is the public name of sub_block_cache"):
        resolve_policy("fast_dllm_v2", use_block_cache=True, sub_block_cache=True)
    with pytest.raises(TypeError, match="sub_block_cache must be a bool"):
        fast_dllm_v2(sub_block_cache=1)
    m8 = block_model(bs=BS, shift=True)
    with pytest.raises(ValueError, match="sub_block"):
        generate(
            m8,
            [[1] * 3],
            policy="fast_dllm_v2",
            gen_length=16,
            block_length=BS,
            small_block_size=3,
            use_block_cache=True,
        )


@pytest.mark.gpu
@pytest.mark.parametrize("kw", CASES, ids=IDS)
def test_gpu_cuda_graph_replay_equals_eager(kw):
    """``cuda_graph=True`` (a graph per shape bucket and attention mode) gives the eager tokens,
    commit steps and NFE."""
    m = block_model("triton", bs=BS, shift=True, attn_impl="ops").cuda()
    args = dict(policy="fast_dllm_v2", gen_length=4 * BS, block_length=BS, backend="triton", **kw)
    eager = generate(m, RAGGED, **args)
    graphed = generate(m, RAGGED, cuda_graph=True, **args)
    assert torch.equal(graphed.tokens, eager.tokens) and torch.equal(graphed.commit_step, eager.commit_step)
    assert torch.equal(graphed.nfe, eager.nfe)
