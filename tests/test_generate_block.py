"""Block-diffusion decoding (policies ``fast_dllm_v2`` and ``sdar``, the ``block_causal``
scheduler) on a tiny block-causal model: kernels == references, a ragged batch == its rows alone,
bucketed (padded) steps == unpadded, the cache written once per block by a forward of that block,
and the arguments checked. Fidelity to the published decoders: tests/test_fidelity_block.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dllm_kernels import generate
from dllm_kernels.decode.generate import _generate
from dllm_kernels.models import DiffusionLM, tiny

V = 32
EOS, EOT, MASK = V - 2, V - 3, V - 1


def block_model(backend="reference", *, bs=4, shift=False, attn_impl="sdpa"):
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny(vocab_size=V, logit_shift=shift), block_size=bs)
    m = DiffusionLM(cfg, backend=backend, attn_impl=attn_impl)
    with torch.no_grad():
        m.lm_head.weight.mul_(7.0)  # sharper predictions: thresholds are crossed, blocks take several steps
    return m.eval()


# (policy, block length, the model's logit shift, overrides)
CASES = [
    ("sdar", 4, False, {"stop_ids": (EOS,)}),
    ("sdar", 4, False, {"remasking": "low_confidence_static", "stop_ids": ()}),
    ("sdar", 4, False, {"remasking": "sequential", "stop_ids": ()}),
    ("fast_dllm_v2", 8, True, {"sub_block": 4, "stop_ids": (EOS,), "stop_fill": EOT}),
    ("fast_dllm_v2", 8, True, {"sub_block": 2, "threshold": 0.5, "stop_ids": (), "stop_fill": EOT}),
]
IDS = [f"{p}-{'-'.join(str(v) for v in kw.values())}" for p, _, _, kw in CASES]
# ragged prompts, none of exactly one block (Fast-dLLM v2 rejects those), some with complete blocks
PROMPTS = [[3, 4, 5], [7, 1, 2, 9, 4, 4, 2, 6, 1], [5] * 12, [9, 8, 7, 6, 5, 4, 3, 2, 1, 2, 3, 4, 5, 6, 7, 8, 1]]


def _run(m, prompts, policy, bs, kw, **extra):
    return generate(m, prompts, policy=policy, gen_length=4 * bs, block_length=bs, backend="reference", **kw, **extra)


def _row(out, b):
    f = int(out.first[b])
    return out.tokens[b, f:], out.commit_step[b, f:], int(out.nfe[b])


def _assert_rows_equal(a, b, ra=0, rb=0):
    ta, ca, na = _row(a, ra)
    tb, cb, nb = _row(b, rb)
    assert torch.equal(ta, tb) and torch.equal(ca, cb) and na == nb


@pytest.mark.parametrize("policy, bs, shift, kw", CASES, ids=IDS)
def test_batch_rows_match_single_rows(policy, bs, shift, kw):
    m = block_model(bs=bs, shift=shift)
    prompts = [p for p in PROMPTS if len(p) != bs]
    batch = _run(m, prompts, policy, bs, kw)
    assert not (batch.tokens[:, batch.gen_start :] == MASK).all()
    for b, p in enumerate(prompts):
        _assert_rows_equal(batch, _run(m, [p], policy, bs, kw), b, 0)
        f = int(batch.first[b])
        assert int(batch.pad[b]) % bs == 0 and f == int(batch.pad[b]) + len(p)
        assert batch.tokens[b, int(batch.pad[b]) : f].tolist() == p


@pytest.mark.parametrize("policy, bs, shift, kw", CASES, ids=IDS)
def test_kernels_match_references(policy, bs, shift, kw):
    """The loop's ops and the model's ops on the Triton interpreter == the references, exactly."""
    prompts = [PROMPTS[0], PROMPTS[2]]
    ref = _run(block_model("reference", bs=bs, shift=shift), prompts, policy, bs, kw)
    m = block_model("triton", bs=bs, shift=shift, attn_impl="ops")
    got = generate(m, prompts, policy=policy, gen_length=4 * bs, block_length=bs, backend="triton", **kw)
    for b in range(len(prompts)):
        _assert_rows_equal(got, ref, b, b)


def assert_bucketed_matches_unpadded(m, prompts, policy, bs, kw):
    """Every step padded to its shape bucket (what CUDA-graph replay needs) decodes each row as
    the unpadded steps do."""
    plain = _run(m, prompts, policy, bs, kw)
    padded = _generate(
        m,
        prompts,
        policy=policy,
        gen_length=4 * bs,
        block_length=bs,
        temperature=0.0,
        seed=None,
        backend="reference",
        max_nfe=10000,
        progress=False,
        buckets=True,
        capture=False,
        **kw,
    )
    for b in range(len(prompts)):
        _assert_rows_equal(padded, plain, b, b)


@pytest.mark.parametrize("policy, bs, shift, kw", CASES, ids=IDS)
def test_bucketed_steps_match_unpadded(policy, bs, shift, kw):
    assert_bucketed_matches_unpadded(
        block_model(bs=bs, shift=shift), [p for p in PROMPTS if len(p) != bs], policy, bs, kw
    )


class _Recorder:
    """Wraps a model and records, per forward, the rows' forwarded positions and written blocks."""

    def __init__(self, model):
        self.m, self.config, self.calls = model, model.config, []

    def new_cache(self, B, L):
        return self.m.new_cache(B, L)

    def parameters(self):
        return self.m.parameters()

    def __call__(self, tokens, positions, **kw):
        kv_len, write = kw["kv_len"], kw["write"]
        rows = []
        for b in range(tokens.shape[0]):
            n = int(kv_len[b])
            ids = [] if write is None else [i for i in write.block_ids[b].tolist() if i >= 0]
            rows.append((positions[b, :n].tolist(), tokens[b, :n].tolist(), ids, int(kw["cache_len"][b])))
        self.calls.append(rows)
        return self.m(tokens, positions, **kw)


@pytest.mark.parametrize("policy, bs, shift, kw", [CASES[0], CASES[3]], ids=[IDS[0], IDS[3]])
def test_each_block_is_written_once_by_a_forward_of_that_block(policy, bs, shift, kw):
    """Every forward but the prefill runs one block (+ the next position, Fast-dLLM v2's inherited
    token) against a cache of exactly the blocks before it; every block reaches the cache once,
    complete (no mask), written by the prefill or by a forward of that block alone."""
    rec = _Recorder(block_model(bs=bs, shift=shift))
    prompt = PROMPTS[3]  # 17 tokens: a prefill of complete blocks, then a partial block
    out = _run(rec, [prompt], policy, bs, kw)
    pad = int(out.pad[0])
    written = []
    for i, ((pos, toks, ids, clen),) in enumerate(rec.calls):
        if i == 0:  # the prefill: the prompt's complete blocks, written
            assert pos == list(range(len(prompt) // bs * bs)) and ids == [pad // bs + j for j in range(len(pos) // bs)]
        else:
            blk = pos[0] // bs
            assert pos[0] % bs == 0 and pos[:bs] == list(range(pos[0], pos[0] + bs)) and len(pos) <= bs + 1
            assert clen == pad + pos[0]  # the cache: every earlier block (the padding ignored)
            assert ids in ([], [pad // bs + blk])
            if ids:
                assert MASK not in toks[:bs]
        written += ids
    assert len(written) == len(set(written))
    assert written == list(range(pad // bs, pad // bs + len(written)))
    assert len(rec.calls) == int(out.nfe[0])


def test_the_arguments_are_checked():
    m = block_model(bs=4)
    with pytest.raises(ValueError, match="block_length=8.*block-causal over blocks of 4"):
        generate(m, [[1, 2, 3]], policy="sdar", gen_length=16, block_length=8)
    bidirectional = DiffusionLM(tiny(vocab_size=V)).eval()
    with pytest.raises(ValueError, match="bidirectional"):
        generate(bidirectional, [[1, 2, 3]], policy="sdar", gen_length=16, block_length=4)
    with pytest.raises(ValueError, match="steps_per_block"):
        generate(m, [[1, 2, 3]], policy="sdar", gen_length=16, block_length=4, denoising_steps=2)
    with pytest.raises(ValueError, match="remasking"):
        generate(m, [[1, 2, 3]], policy="sdar", gen_length=16, block_length=4, remasking_strategy="entropy_bounded")
    m8 = block_model(bs=8, shift=True)
    with pytest.raises(ValueError, match="sub_block"):
        generate(m8, [[1] * 3], policy="fast_dllm_v2", gen_length=16, block_length=8, small_block_size=3)


def test_a_stop_ends_the_row_as_published():
    """SDAR: the stop's block is stored, later positions stay masks; Fast-dLLM v2: no update
    forward, every position after the first stop becomes the fill, dated as committed."""
    m = block_model(bs=4)
    free = _run(m, [PROMPTS[0]], "sdar", 4, {"stop_ids": ()})
    toks, steps, nfe = _row(free, 0)
    stop = toks[5].item()  # a token of the second generated block
    first = toks.tolist().index(stop)
    out = _run(m, [PROMPTS[0]], "sdar", 4, {"stop_ids": (stop,)})
    t2, s2, n2 = _row(out, 0)
    end = -(-(int(out.first[0]) + first + 1) // 4) * 4 - int(out.first[0])
    assert torch.equal(t2[:end], toks[:end]) and (t2[end:] == MASK).all() and (s2[end:] == -1).all()
    assert n2 < nfe
    m8 = block_model(bs=8, shift=True)
    kw = {"stop_fill": EOT}
    free = _run(m8, [PROMPTS[0]], "fast_dllm_v2", 8, {**kw, "stop_ids": ()})
    toks, steps, nfe = _row(free, 0)
    j = next(i for i in range(len(toks)) if (int(free.first[0]) + i) % 8 != 0 and i > 6)
    stop = toks[j].item()
    first = toks.tolist().index(stop)
    out = _run(m8, [PROMPTS[0]], "fast_dllm_v2", 8, {**kw, "stop_ids": (stop,)})
    t2, s2, n2 = _row(out, 0)
    assert torch.equal(t2[: first + 1], toks[: first + 1]) and (t2[first + 1 :] == EOT).all()
    end = -(-(int(out.first[0]) + first + 1) // 8) * 8 - int(out.first[0])
    assert torch.equal(s2[:end], steps[:end])  # the padded positions keep their commit steps
    assert n2 < nfe


def test_fast_dllm_v2_never_sees_a_prompt_of_one_block():
    """The published quirk, kept: a prompt of exactly one block gets no prefill and decoding
    starts at block 1 without a cache, so the prompt is never attended: any two such prompts
    decode the same tokens, alone or in a ragged batch (where the other rows see their prompts)."""
    m = block_model(bs=8, shift=True)
    kw = {"stop_ids": ()}
    a = _run(m, [[1, 2, 3, 4, 5, 6, 7, 8]], "fast_dllm_v2", 8, kw)
    b = _run(m, [[9, 9, 9, 9, 9, 9, 9, 9]], "fast_dllm_v2", 8, kw)
    _assert_rows_equal(a, b)
    c = _run(m, [[9, 8, 7, 6, 5, 4, 3, 2, 1]], "fast_dllm_v2", 8, kw)
    assert not torch.equal(_row(a, 0)[0], _row(c, 0)[0][1:])
    batch = _run(m, [[9, 8, 7, 6, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6, 7, 8]], "fast_dllm_v2", 8, kw)
    _assert_rows_equal(batch, c, 0, 0)
    _assert_rows_equal(batch, a, 1, 0)


@pytest.mark.gpu
@pytest.mark.parametrize("policy, bs, shift, kw", CASES, ids=IDS)
def test_gpu_cuda_graph_replay_equals_eager(policy, bs, shift, kw):
    """``cuda_graph=True`` (each step captured once per shape bucket and replayed) gives the eager
    tokens, commit steps and NFE."""
    prompts = [p for p in PROMPTS if len(p) != bs]
    m = block_model("triton", bs=bs, shift=shift, attn_impl="ops").cuda()
    args = dict(policy=policy, gen_length=4 * bs, block_length=bs, backend="triton", **kw)
    eager = generate(m, prompts, **args)
    graphed = generate(m, prompts, cuda_graph=True, **args)
    assert torch.equal(graphed.tokens, eager.tokens) and torch.equal(graphed.commit_step, eager.commit_step)
    assert torch.equal(graphed.nfe, eager.nfe)
