"""The decoding loop: published behaviours on a scripted model, backend equality and batch
independence on a tiny transformer."""

import warnings

import pytest
import torch
from scripted import ScriptedConfig, ScriptedModel, confident_table

from dllm_kernels import CommitState, GenerateResult, generate
from dllm_kernels.decode import StepInputs, decode_step
from dllm_kernels.decode.generate import _generate
from dllm_kernels.models import DiffusionLM, tiny
from dllm_kernels.policies import POLICIES, Policy, resolve_policy

V, MASK, EOS = 16, 15, 14
CFG = ScriptedConfig(vocab_size=V, mask_id=MASK, eos_id=EOS)


def scripted(targets, confidences):
    """Positions 0..len-1 (RoPE positions = canvas positions for an unpadded prompt)."""
    return ScriptedModel(confident_table(targets, confidences, V), CFG)


def plain(n):
    """Targets that are neither EOS nor the mask."""
    return [p % 12 for p in range(n)]


def run(model, prompt_len, gen, block, policy, **kw):
    prompt = torch.arange(prompt_len)[None] % 10
    return generate(model, prompt, policy=policy, gen_length=gen, block_length=block, backend="reference", **kw)


# ------------------------------------------------------------------------------------------------
# published behaviours, worked out by hand on scripted logits
# ------------------------------------------------------------------------------------------------


def test_vanilla_commits_the_scheduled_count():
    P, gen, bs = 8, 16, 8
    conf = [0.5] * P + [0.30 + 0.01 * i for i in range(gen)]
    m = scripted(plain(P + gen), conf)
    out = run(m, P, gen, bs, "vanilla", steps_per_block=3)
    cs = out.commit_step[0, P:].tolist()
    # 8 masks over 3 steps: 3, 3, 2 per block; highest confidence first
    assert out.nfe.tolist() == [6]
    for blk in range(2):
        steps = cs[blk * bs : (blk + 1) * bs]
        assert sorted(steps) == [3 * blk] * 3 + [3 * blk + 1] * 3 + [3 * blk + 2] * 2
        assert steps[::-1] == sorted(steps)  # later positions are more confident: committed first
    assert out.generated.tolist() == [plain(P + gen)[P:]]


def test_vanilla_default_is_one_token_per_step():
    P, gen, bs = 8, 16, 8
    m = scripted(plain(P + gen), [0.5] * (P + gen))
    out = run(m, P, gen, bs, "vanilla")
    assert out.nfe.tolist() == [gen]
    assert sorted(out.commit_step[0, P:].tolist()) == list(range(gen))


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_threshold_commits_argmax_and_confident_only(cache):
    P, gen, bs = 8, 16, 8
    # block 0: positions 8..15 with three confident ones; block 1: all below tau
    conf = [0.5] * P + [0.95, 0.2, 0.91, 0.3, 0.905, 0.4, 0.25, 0.35] + [0.1 + 0.05 * i for i in range(8)]
    m = scripted(plain(P + gen), conf)
    out = run(m, P, gen, bs, "fast_dllm", cache=cache)
    cs = out.commit_step[0, P:].tolist()
    # step 0: the argmax and the two others >= 0.9; then one per step, most confident first
    assert cs[:8] == [0, 5, 0, 3, 0, 1, 4, 2]
    assert cs[8:] == [13, 12, 11, 10, 9, 8, 7, 6]
    assert out.nfe.tolist() == [14]
    for step in range(14):
        took = [p for p in range(gen) if cs[p] == step]
        below = [p for p in took if conf[P + p] < 0.9]
        assert len(below) <= 1  # only the step's argmax may be below tau


def test_streaming_forwards_see_block_window_and_last_position():
    P, gen, bs, W = 8, 32, 8, 4
    m = scripted(plain(P + gen), [0.5] * (P + gen))
    out = run(m, P, gen, bs, "streaming", window=W, alpha=0.0)
    L = P + gen
    for call in m.calls:
        (pos,) = call
        # block start: [0, e + W) + last; later: [s, e + W) + last (with the block's own start)
        assert pos[-1] == L - 1 or pos[-1] < L
        tail = pos[-1] == L - 1 and (len(pos) < 2 or pos[-2] != L - 2)
        body = pos[:-1] if tail else pos
        assert body == list(range(body[0], body[-1] + 1))
        s = body[0] if body[0] >= P else None
        if s is not None:
            assert (s - P) % bs == 0 and body[-1] + 1 == min(s + bs + W, L)
    assert out.nfe.item() == len(m.calls)


def test_streaming_early_exit_fills_eos():
    P, gen, bs = 8, 32, 8
    targets = plain(P + gen)
    targets[P + 3] = EOS  # block 0 holds an EOS
    m = scripted(targets, [0.99] * (P + gen))
    out = run(m, P, gen, bs, "streaming")
    g = out.generated[0].tolist()
    assert g[3] == EOS and g[bs:] == [EOS] * (gen - bs)
    assert out.nfe.tolist() == [1]  # block 0 completed in one forward, then the sequence stopped
    assert (out.commit_step[0, P + bs :] == 0).all()


def test_streaming_early_exits_at_different_steps_in_a_batch():
    """Row 0 (prompt 8) meets EOS in block 0 and exits while row 1 (prompt 5, shifted by its
    padding) still decodes block 1: each row gets what it gets alone."""
    P, gen, bs = 8, 32, 8
    targets = plain(P + gen)
    targets[P + 6] = EOS  # row 0: generated position 6; row 1: position 9
    m = scripted(targets, [0.99] * (P + gen))
    prompts = [list(range(8)), list(range(5))]
    kw = dict(policy="streaming", gen_length=gen, block_length=bs, backend="reference")
    batch = generate(m, prompts, **kw)
    assert batch.nfe.tolist() == [1, 2]
    for b, p in enumerate(prompts):
        alone = generate(m, [p], **kw)
        assert torch.equal(batch.tokens[b], alone.tokens[0]) and batch.nfe[b] == alone.nfe[0]
        assert torch.equal(batch.commit_step[b], alone.commit_step[0])


def test_d3llm_adds_a_block_at_ten_percent():
    P, gen, bs = 8, 24, 8
    # entropy high everywhere (nothing passes H <= 0.5); block 1 is more confident than block 0
    conf = [0.5] * P + [0.30] * 8 + [0.40 - 0.01 * i for i in range(8)] + [0.2] * 8
    m = scripted(plain(P + gen), conf)
    out = run(m, P, gen, bs, "d3llm", cache="none", early_stop=False)
    cs = out.commit_step[0, P:].tolist()
    # step 0: only block 0 exists -> its lowest-entropy (first) position; block 1 is then added
    # (1/8 >= 10%) and its positions win the global lowest-H commit; the first fully active block
    # (block 0) gets a forced commit whenever the global pick falls elsewhere
    assert cs[0] == 0
    assert cs[8] == 1 and cs[1] == 1


def test_d3llm_delayed_cache_schedule():
    """Every block completes in the forward after it is added (all entropies low), so the delayed
    cache's choices alternate, as worked out by hand from d3LLM's generate_multi_block_kv_cache:
    step 0 full forward without cache; step 1 appends the prompt block (completed 2 steps ago),
    a full forward writing from 0; step 2 block 1 is stabilising (completed, not yet cached): full
    refresh; step 3 appends block 1: forward from the cache length 8; then refresh, append from
    16, refresh, append from 24."""
    P, gen, bs = 8, 64, 8
    m = scripted(plain(P + gen), [0.99] * (P + gen))
    out = run(m, P, gen, bs, "d3llm")
    assert out.nfe.tolist() == [8] and len(m.calls) == 8
    assert [call[0][0] for call in m.calls] == [0, 0, 0, 8, 0, 16, 0, 24]  # first position forwarded
    assert all(call[0][-1] == P + gen - 1 for call in m.calls)  # always up to the canvas end
    assert out.commit_step[0, P:].tolist() == [s for s in range(8) for _ in range(bs)]


def test_policies_are_data():
    assert set(POLICIES) >= {"vanilla", "fast_dllm", "streaming", "r2", "d3llm"}
    p = resolve_policy("fast_dllm", threshold=0.7)
    assert isinstance(p, Policy) and p.rule.threshold == 0.7
    with pytest.raises(ValueError, match="unknown policy"):
        resolve_policy("greedy")
    with pytest.raises(TypeError, match="policy 'r2'"):
        resolve_policy("r2", not_a_knob=1)


# ------------------------------------------------------------------------------------------------
# a tiny transformer: backends agree token for token; rows of a batch are independent
# ------------------------------------------------------------------------------------------------


def sharp_tiny_model(backend, attn_impl="ops"):
    torch.manual_seed(0)
    m = DiffusionLM(tiny(vocab_size=32), backend=backend, attn_impl=attn_impl)
    with torch.no_grad():
        m.lm_head.weight.mul_(7.0)  # sharper predictions: thresholds are crossed, blocks take several steps
    return m.eval()


POLICY_CASES = [
    ("vanilla", {}),
    ("fast_dllm", {"cache": "none"}),
    ("fast_dllm", {"cache": "prefix"}),
    ("fast_dllm", {"cache": "dual"}),
    ("streaming", {"window": 8}),
    ("r2", {}),
    ("d3llm", {"cache": "none"}),
    ("d3llm", {}),
]


@pytest.mark.parametrize(
    "policy, kw", POLICY_CASES, ids=[f"{p}-{'-'.join(map(str, k.values()))}" for p, k in POLICY_CASES]
)
def test_batch_rows_match_single_rows(policy, kw):
    m = sharp_tiny_model("reference", attn_impl="sdpa")
    prompts = [[3, 4, 5], [7, 1, 2, 9, 4, 4, 2], [5] * 12]
    batch = generate(m, prompts, policy=policy, gen_length=24, block_length=8, backend="reference", **kw)
    for b, p in enumerate(prompts):
        alone = generate(m, [p], policy=policy, gen_length=24, block_length=8, backend="reference", **kw)
        assert torch.equal(batch.generated[b], alone.generated[0]), (b, batch.generated[b], alone.generated[0])
        assert batch.nfe[b] == alone.nfe[0]
        assert torch.equal(batch.commit_step[b, batch.gen_start :], alone.commit_step[0, alone.gen_start :])


@pytest.mark.parametrize("pad_id", [None, 11])
def test_ragged_prompts_are_left_padded_to_a_block_multiple(pad_id):
    cfg = ScriptedConfig(vocab_size=V, mask_id=MASK, eos_id=EOS, pad_id=pad_id)
    prompts = [[3, 4, 5], [7, 1, 2, 9, 4], [5]]
    for prompt in (prompts, [torch.tensor(p, dtype=torch.int32) for p in prompts]):
        out = generate(
            ScriptedModel(confident_table(plain(24), [0.99] * 24, V), cfg),
            prompt,
            policy="vanilla",
            gen_length=8,
            block_length=4,
        )
        assert out.gen_start == 8 and out.pad.tolist() == [5, 3, 7]
        fill = EOS if pad_id is None else pad_id
        assert out.tokens[:, :8].tolist() == [[fill] * (8 - len(p)) + p for p in prompts]


class _Shapes:
    """A model wrapper that records the shape of every call: (rows, forwarded width, logits width)."""

    def __init__(self, model):
        self.model, self.widths = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, tokens, *args, **kw):
        self.widths.append((*tokens.shape, kw["logits_index"].shape[1]))
        return self.model(tokens, *args, **kw)


@pytest.mark.parametrize("policy, kw", [("fast_dllm", {"cache": "dual"}), ("r2", {}), ("d3llm", {})])
def test_done_rows_leave_the_forward(policy, kw):
    """A row that is done is no longer forwarded: step t forwards exactly the rows that run more
    than t forwards (the rows finish at different steps here), with the tokens they get alone
    (test_batch_rows_match_single_rows)."""
    m = _Shapes(sharp_tiny_model("reference", attn_impl="sdpa"))
    out = generate(
        m,
        [[3, 4, 5], [7, 1, 2, 9, 4, 4, 2], [5] * 12, [1]],
        policy=policy,
        gen_length=24,
        block_length=8,
        backend="reference",
        **kw,
    )
    nfe = out.nfe.tolist()
    assert len(set(nfe)) > 1
    assert [b for b, _, _ in m.widths] == [sum(n > t for n in nfe) for t in range(max(nfe))]


@pytest.mark.parametrize(
    "policy, kw", POLICY_CASES, ids=[f"{p}-{'-'.join(map(str, k.values()))}" for p, k in POLICY_CASES]
)
def test_triton_and_reference_backends_agree(device, policy, kw):
    prompts = [[3, 4, 5, 6], [7, 1, 2, 9, 4, 4]]
    outs = []
    for backend in ("triton", "reference"):
        m = sharp_tiny_model(backend).to(device if backend == "triton" else "cpu")
        outs.append(generate(m, prompts, policy=policy, gen_length=16, block_length=8, backend=backend, **kw))
    tri, ref = outs
    assert torch.equal(tri.tokens.cpu(), ref.tokens)
    assert torch.equal(tri.nfe.cpu(), ref.nfe)
    assert torch.equal(tri.commit_step.cpu(), ref.commit_step)


@pytest.mark.parametrize(
    "policy, kw", POLICY_CASES, ids=[f"{p}-{'-'.join(map(str, k.values()))}" for p, k in POLICY_CASES]
)
def test_bucket_padding_changes_no_token(policy, kw):
    """The shapes a CUDA graph is captured for (every step padded to a power of two: forwarded
    width, logits width, written blocks; every commit rule launched) give the tokens, NFE and
    commit steps of the unpadded loop. Blocks of 6 make the widths non-powers of two."""
    prompts = [[3, 4, 5], [7, 1, 2, 9, 4, 4, 2]]
    args = dict(
        policy=policy,
        gen_length=18,
        block_length=6,
        temperature=0.0,
        seed=None,
        backend="reference",
        max_nfe=10000,
        progress=False,
        **kw,
    )
    runs = []
    for buckets in (False, True):
        m = _Shapes(sharp_tiny_model("reference", attn_impl="sdpa"))
        runs.append((_generate(m, prompts, buckets=buckets, capture=False, **args), m.widths))
    (plain, w_plain), (padded, w_padded) = runs
    assert torch.equal(plain.tokens, padded.tokens)
    assert torch.equal(plain.nfe, padded.nfe)
    assert torch.equal(plain.commit_step, padded.commit_step)
    assert len(w_plain) == len(w_padded) and w_plain != w_padded  # the padding was exercised


def test_cuda_graph_needs_a_gpu_model():
    m = sharp_tiny_model("reference", attn_impl="sdpa")
    for t in (0.0, 0.5):  # any temperature: the per-step seeds are device tensors
        with pytest.raises(ValueError, match="cuda_graph needs a model on a CUDA device"):
            generate(m, [[1, 2]], policy="vanilla", gen_length=8, block_length=8, cuda_graph=True, temperature=t)


# ------------------------------------------------------------------------------------------------
# GPU: a decoding step is sync-free and CUDA-graph capturable; the loop syncs once per step
# ------------------------------------------------------------------------------------------------


def _vanilla_step_inputs(B, P, L, block, device):
    """The fixed-shape inputs of a LLaDA vanilla step in the first block (no cache): forward the
    whole canvas, commit k = 1 token among the block's masks."""
    full = lambda v: torch.full((B,), v, device=device)  # noqa: E731
    rule = resolve_policy("vanilla").rule
    return StepInputs(
        idx=torch.arange(L, device=device).expand(B, L),
        kv_len=full(L),
        cache_len=None,
        write=None,
        logits_index=torch.arange(P, P + block, device=device).expand(B, block),
        stats_offset=full(P),
        fill_after=None,
        groups=[(rule, torch.stack([full(P), full(P + block), full(0), full(0), full(P), full(1)]))],
    )


@pytest.mark.gpu
def test_gpu_decode_step_is_sync_free_and_graph_capturable():
    B, P, block, V = 2, 8, 8, 32
    L = P + block
    m = sharp_tiny_model("triton").cuda()
    cfg = m.config
    x0 = torch.randint(0, V - 4, (B, L), device="cuda")
    x0[:, P:] = cfg.mask_id
    pad = torch.zeros(B, dtype=torch.int64, device="cuda")
    inp = _vanilla_step_inputs(B, P, L, block, "cuda")
    kw = dict(mask_id=cfg.mask_id, eos_id=cfg.eos_id, backend="triton")

    # eager, under the sync debug mode that turns every host sync into an error
    x_e, st_e = x0.clone(), CommitState.new(x0)
    decode_step(m, x_e.clone(), CommitState.new(x0), pad, None, inp, 0, **kw)  # compile outside the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        for s in range(block):
            decode_step(m, x_e, st_e, pad, None, inp, torch.tensor(s, device="cuda"), **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert (x_e[:, P:] != cfg.mask_id).all()
    assert all(sorted(r) == list(range(block)) for r in st_e.commit_step[:, P:].tolist())  # one per step

    # captured once, replayed with a device-side step counter
    x_g, st_g = x0.clone(), CommitState.new(x0)
    step = torch.zeros((), dtype=torch.int32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up allocator and autotuning on a copy
        decode_step(m, x_g.clone(), CommitState.new(x0), pad, None, inp, step, **kw)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_step(m, x_g, st_g, pad, None, inp, step, **kw)
    for s in range(block):
        step.fill_(s)
        graph.replay()
    assert torch.equal(x_g, x_e)
    assert torch.equal(st_g.commit_step, st_e.commit_step)


@pytest.mark.gpu
@pytest.mark.parametrize("policy, kw", [("fast_dllm", {"cache": "dual"}), ("d3llm", {})])
def test_gpu_generate_syncs_once_per_step(policy, kw):
    """The loop reads the canvas back once per step and nothing else in a step waits for the GPU:
    two generation lengths differ in host syncs exactly as they differ in steps (setup and the
    final read-back cost the same in both)."""
    m = sharp_tiny_model("triton").cuda()
    prompts = [[3, 4, 5, 6], [7, 1, 2, 9, 4, 4]]

    def syncs_and_steps(gen_length):
        generate(m, prompts, policy=policy, gen_length=gen_length, block_length=8, backend="triton", **kw)  # compile
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = generate(m, prompts, policy=policy, gen_length=gen_length, block_length=8, backend="triton", **kw)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing" in str(w.message) for w in caught), int(out.nfe.max())

    (s16, n16), (s32, n32) = syncs_and_steps(16), syncs_and_steps(32)
    assert n32 > n16
    assert s32 - s16 == n32 - n16, f"{s16} syncs for {n16} steps, {s32} syncs for {n32} steps"


def test_tokens_per_forward_counts_up_to_the_first_eos():
    """d3LLM's TPF: generated tokens up to and including the first EOS (all without one) / NFE."""
    eos = 7
    tokens = torch.tensor([[1, 1, 5, 7, 5, 5], [1, 1, 5, 5, 5, 5], [1, 1, 7, 5, 7, 7]])
    out = GenerateResult(
        tokens,
        torch.tensor([4, 2, 1]),
        torch.zeros_like(tokens, dtype=torch.int32),
        torch.zeros(3, dtype=torch.long),
        gen_start=2,
    )
    assert out.tokens_until_eos(eos).tolist() == [2, 4, 1]
    assert out.tokens_per_forward(eos).tolist() == [0.5, 2.0, 1.0]


@pytest.mark.gpu
@pytest.mark.parametrize(
    "policy, kw", POLICY_CASES, ids=[f"{p}-{'-'.join(map(str, k.values()))}" for p, k in POLICY_CASES]
)
@pytest.mark.parametrize("temperature, seed", [(0.0, None), (1.5, [3, 2**63 - 1])])
def test_gpu_cuda_graph_replay_equals_eager(policy, kw, temperature, seed, monkeypatch):
    """``cuda_graph=True`` gives the eager tokens (sampling too: the per-row, per-step seeds are
    derived on the device inside the graph); each step with a forward is one graph replay, and
    the model runs only while a bucket is recorded (warm-up + capture)."""
    prompts = [[3, 4, 5, 6], [7, 1, 2, 9, 4, 4]]
    args = dict(
        policy=policy, gen_length=24, block_length=8, backend="triton", temperature=temperature, seed=seed, **kw
    )
    eager_model = _Shapes(sharp_tiny_model("triton").cuda())
    eager = generate(eager_model, prompts, **args)
    replays = []
    replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda g: (replays.append(1), replay(g))[1])
    graph_model = _Shapes(sharp_tiny_model("triton").cuda())
    graphed = generate(graph_model, prompts, cuda_graph=True, **args)
    assert torch.equal(graphed.tokens, eager.tokens)
    assert torch.equal(graphed.nfe, eager.nfe)
    assert torch.equal(graphed.commit_step, eager.commit_step)
    assert len(replays) == len(eager_model.widths)  # one graph per step
    assert len(graph_model.widths) % 2 == 0 and len(set(graph_model.widths)) <= len(graph_model.widths) // 2
