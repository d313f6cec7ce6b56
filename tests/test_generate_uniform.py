"""Uniform-state decoding (policy ``diffusion_gemma``, the ``uniform`` scheduler) on a tiny
self-conditioned block-causal model: kernels == references, a ragged batch == its rows alone,
seeds, pinned prompts, the renoise law, convergence and NFE, the arguments checked; and every
denoising step against a plain-PyTorch transcription of SGLang's ``Gemma4Renoise`` step on the
same logits (the sample keys, renoise keys and temperatures as documented in
:mod:`dllm_kernels.decode.uniform`)."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch
from torch import nn

from dllm_kernels import MaxNFEError, generate
from dllm_kernels._validate import mix_seed
from dllm_kernels.decode.generate import _generate
from dllm_kernels.decode.uniform import CANVAS_TAG, RENOISE_TAG
from dllm_kernels.models import DiffusionLM, tiny
from dllm_kernels.policies import POLICIES
from dllm_kernels.policies.published import DIFFUSION_GEMMA
from dllm_kernels.reference import soft_embedding as ref_soft_embedding, token_stats as ref_token_stats
from dllm_kernels.reference._philox import philox_randint4x

V, BS = 32, 4
EOS = tiny(vocab_size=V).eos_id
PROMPTS = [[3, 4, 5], [7, 1, 2, 9, 4, 4], [5] * 9]
FAST = {"max_denoising_steps": 3, "confidence_threshold": 1.0}  # blocks converge in a few steps


class Recorder(nn.Module):
    """A tiny uniform-state ``DiffusionLM`` (block-causal, self-conditioned) that records every
    forward's tokens, positions, soft embeddings, logits and logits rows."""

    def __init__(self, bs=BS, seed=0, sharp=7.0, self_conditioning_size=48):
        super().__init__()
        torch.manual_seed(seed)
        cfg = dataclasses.replace(
            tiny(vocab_size=V), block_size=bs, uniform_state=True, self_conditioning_size=self_conditioning_size
        )
        self.lm = DiffusionLM(cfg, backend="reference", attn_impl="sdpa").eval()
        with torch.no_grad():
            self.lm.lm_head.weight.mul_(sharp)
        self.config, self.calls = cfg, []

    @property
    def embed_weight(self):
        return self.lm.embed_weight

    def new_cache(self, batch, max_len):
        return self.lm.new_cache(batch, max_len)

    def forward(self, tokens, positions, **kw):
        logits = self.lm(tokens, positions, **kw)
        soft = kw.get("soft_embeds")
        self.calls.append((tokens.clone(), positions.clone(), soft, logits.clone(), kw["logits_index"].clone()))
        return logits


class SelfConditioned(nn.Module):
    """A protocol model (not a ``DiffusionLM``): the uniform-state members on a tiny block-causal
    ``DiffusionLM`` without them: ``config.uniform_state``, ``embed_weight`` and ``soft_embeds``
    (a projection added to the input embedding). Records as :class:`Recorder`."""

    def __init__(self, bs=BS, seed=0, sharp=7.0, conditioning=4.0):
        super().__init__()
        torch.manual_seed(seed)
        cfg = dataclasses.replace(tiny(vocab_size=V), block_size=bs)
        self.lm = DiffusionLM(cfg, backend="reference", attn_impl="sdpa").eval()
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        with torch.no_grad():
            self.lm.lm_head.weight.mul_(sharp)
            self.proj.weight.mul_(conditioning)
        fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "self_conditioning_size"}
        self.config = types.SimpleNamespace(**{**fields, "uniform_state": True})  # a protocol model's config
        self._soft, self.calls = None, []
        self.lm.embed.register_forward_hook(self._add)

    def _add(self, module, args, out):
        if self._soft is None:
            return out
        soft = self._soft if out.dim() == 3 else self._soft[self._real]  # the CPU path packs the real rows
        return out + self.proj(soft)

    @property
    def embed_weight(self):
        return self.lm.embed.weight

    def new_cache(self, batch, max_len):
        return self.lm.new_cache(batch, max_len)

    def forward(self, tokens, positions, *, soft_embeds=None, **kw):
        self._soft = soft_embeds
        self._real = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < kw["kv_len"][:, None]
        try:
            logits = self.lm(tokens, positions, **kw)
        finally:
            self._soft = None
        self.calls.append((tokens.clone(), positions.clone(), soft_embeds, logits.clone(), kw["logits_index"].clone()))
        return logits


def _run(m, prompts, backend="reference", gen_length=3 * BS, **kw):
    kw = {**FAST, **kw}
    return generate(m, prompts, policy="diffusion_gemma", gen_length=gen_length, block_length=BS, backend=backend, **kw)


def _row(out, b):
    f = int(out.first[b])
    return out.tokens[b, f:], out.commit_step[b, f:], int(out.nfe[b])


def _same_row(a, b, ra=0, rb=0):
    return all(torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v for u, v in zip(_row(a, ra), _row(b, rb)))


MODELS = {"lm": Recorder, "protocol": SelfConditioned}


@pytest.mark.parametrize("model", list(MODELS))
def test_kernels_equal_references(model):
    m = MODELS[model]()
    ref = _run(m, PROMPTS, seed=[1, 2, 3], gen_length=BS)
    tri = _run(m, PROMPTS, backend="triton", seed=[1, 2, 3], gen_length=BS)
    assert torch.equal(ref.tokens, tri.tokens) and torch.equal(ref.commit_step, tri.commit_step)
    assert torch.equal(ref.nfe, tri.nfe)


def test_batch_rows_match_single_rows_and_buckets():
    m = Recorder()
    seeds = [11, 12, 13]
    batch = _run(m, PROMPTS, seed=seeds, gen_length=2 * BS)
    assert len(set(batch.nfe.tolist())) > 1  # the rows progress independently
    for b, p in enumerate(PROMPTS):
        assert _same_row(batch, _run(m, [p], seed=seeds[b], gen_length=2 * BS), b, 0), b
    kw = dict(policy="diffusion_gemma", gen_length=2 * BS, block_length=BS, temperature=0.0, backend="reference")
    padded = _generate(m, PROMPTS, seed=seeds, max_nfe=10000, progress=False, buckets=True, capture=False, **kw, **FAST)
    assert torch.equal(padded.tokens, batch.tokens) and torch.equal(padded.nfe, batch.nfe)


def test_seeds():
    m = Recorder()
    a, b = _run(m, PROMPTS, seed=5, gen_length=BS), _run(m, PROMPTS, seed=5, gen_length=BS)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.nfe, b.nfe)
    c = _run(m, PROMPTS, seed=6, gen_length=BS)
    assert not torch.equal(a.tokens, c.tokens)
    d = _run(m, PROMPTS, gen_length=BS)  # seed=None draws one
    assert d.tokens.shape == a.tokens.shape


def test_pinned_prompt_and_renoise_law():
    m = Recorder()
    out = _run(m, PROMPTS, seed=3, max_denoising_steps=4, confidence_threshold=0.0)
    for b, p in enumerate(PROMPTS):
        assert out.tokens[b, int(out.first[b]) - len(p) : int(out.first[b])].tolist() == p
        assert (out.commit_step[b, : int(out.first[b])] == -1).all()
    # every forward of a row alone: its prompt's last (partial) block is forwarded unchanged
    m.calls.clear()
    _run(m, [PROMPTS[1]], seed=3, max_denoising_steps=4, confidence_threshold=0.0)
    for tokens, positions, *_ in m.calls:
        assert ((tokens >= 0) & (tokens < V)).all()
        if int(positions[0, 0]) == 4:
            assert tokens[0, :2].tolist() == [4, 4]
    assert sum(int(p[0, 0]) == 4 for _, p, *_ in m.calls) == 5  # 4 denoising forwards and the store
    # the initial canvas is uniform over [0, V): the documented key, checked on a long canvas
    seed = 7
    keys = mix_seed(torch.tensor(seed), CANVAS_TAG, torch.arange(4096)) % V
    counts = torch.bincount(keys, minlength=V).double()
    assert ((counts - 128) ** 2 / 128).sum() < 70  # chi-square, 31 degrees of freedom (p ~ 1e-4)
    m.calls.clear()
    _run(m, [[3, 4, 5]], seed=seed, max_denoising_steps=1)
    first = m.calls[0][0][0]
    assert first[3:].tolist() == keys[3:4].tolist()  # the block's free position, from the key


@pytest.mark.parametrize("steps", [1, 3])
def test_convergence_and_nfe(steps):
    m = Recorder()
    with torch.no_grad():  # no EOS in a converged block (its argmax): no row stops early
        m.lm.lm_head.bias = nn.Parameter(torch.zeros(V))
        m.lm.lm_head.bias[EOS] = -1000.0
    # never confident: every block runs exactly max_denoising_steps forwards, then its store; a
    # prompt that ends inside a block adds one block to the gen_length / block_length
    out = _run(m, PROMPTS, seed=1, max_denoising_steps=steps, confidence_threshold=0.0)
    prefill = torch.tensor([len(p) >= BS for p in PROMPTS]).long()
    blocks = torch.tensor([3 + (len(p) % BS > 0) for p in PROMPTS])
    assert out.nfe.tolist() == (prefill + blocks * (steps + 1)).tolist()
    for b in range(3):
        f = int(out.first[b])
        # each block's free positions are dated by the forward that converged it
        pos = torch.arange(f, out.tokens.shape[1])
        dates = [out.commit_step[b, f:][pos // BS == k].unique().tolist() for k in range(f // BS, f // BS + blocks[b])]
        assert dates == [[int(prefill[b]) + k * (steps + 1) + steps - 1] for k in range(int(blocks[b]))]
    # always confident and no stability history: one denoising forward per block
    out = _run(m, PROMPTS, seed=1, max_denoising_steps=48, confidence_threshold=4096.0, stability_threshold=0)
    assert out.nfe.tolist() == (prefill + blocks * 2).tolist()


def test_eos_stops_the_row():
    m = Recorder()
    with torch.no_grad():
        m.lm.lm_head.bias = nn.Parameter(torch.zeros(V))
        m.lm.lm_head.bias[EOS] = 1000.0  # EOS wins everywhere: the block converges at once
    out = generate(
        m,
        [[3, 4, 5]],
        policy="diffusion_gemma",
        gen_length=3 * BS,
        block_length=BS,
        backend="reference",
        seed=0,
        max_denoising_steps=3,
        confidence_threshold=4096.0,
        stability_threshold=0,
    )
    f = int(out.first[0])
    gen = out.tokens[0, f:]
    assert (gen == EOS).any()
    e = int((gen == EOS).int().argmax())
    assert (gen[e:] == EOS).all()
    assert int(out.nfe[0]) == 2  # one denoising forward, one store forward: then the stop


def _sglang_step(logits, tokens_before, pinned, temp, sample_keys, renoise_key, n, bound, V):
    """SGLang's ``Gemma4Renoise.step`` for one row's block on ``logits [bs, V]`` (fp64), but with
    the documented draws: the sample (Philox keys ``sample_keys``), the renoise tokens (the
    commit's Philox at counter (position, n)). Entropies rank the free positions only.
    Returns the accepted-or-renoised canvas, the argmax canvas, the tempered entropies and the
    accepted set."""
    z = logits.double() / temp
    p = torch.softmax(z, -1)
    H = -(p * torch.log_softmax(z, -1)).sum(-1)
    sample = ref_token_stats(
        logits[None], temperature=torch.full((1, len(logits)), temp), seed=sample_keys[None], tempered=True
    ).token[0]
    free = ~pinned
    order = torch.argsort(torch.where(free, H, float("inf")), stable=True)
    Hs = H[order]
    accept_sorted = (torch.cumsum(Hs, 0) - Hs) <= bound
    accepted = torch.zeros_like(free)
    accepted[order] = accept_sorted
    accepted &= free
    pos = torch.arange(len(logits))
    c0, c1, _, _ = philox_randint4x(renoise_key.reshape(1), (torch.tensor(n) << 32) | pos)
    noise = ((c1 & 0x7FFFFFFF) << 32 | c0) % V
    out = torch.where(free, torch.where(accepted, sample, noise), tokens_before)
    return out, logits.argmax(-1), H, accepted


@pytest.mark.parametrize(
    "model, backend, favoured",
    [("lm", "reference", None), ("lm", "reference", 11), ("lm", "triton", None), ("protocol", "reference", None)],
    ids=["ref", "ref-fixed", "triton", "protocol"],
)
def test_steps_match_sglangs_rule(model, backend, favoured):
    """Every denoising forward of one row: the next forward's canvas is SGLang's step on this
    forward's logits (accepted: the sample; the rest: renoise; converged: the argmax), its
    ``soft_embeds`` is ``softmax(logits / T) @ E`` at SGLang's T(n) (zeros at the block's first
    step and at prompt positions), and convergence follows SGLang's stopping test. The tiny
    model's argmax keeps moving (every block runs all N steps, renoising); ``favoured``: a token
    the logits favour everywhere, so that every block converges at its second step."""
    m = MODELS[model]()
    with torch.no_grad():  # EOS never converges (no early stop); the favoured token always wins
        m.lm.lm_head.bias = nn.Parameter(torch.zeros(V))
        m.lm.lm_head.bias[EOS] = -1000.0
        if favoured is not None:
            m.lm.lm_head.bias[favoured] = 1000.0
    t_min, t_max, N, c, S, bound = 0.4, 0.8, 6, 4096.0, 1, 0.1
    seed, prompt = 9, [3, 4, 5, 6, 7]
    out = generate(
        m,
        [prompt],
        policy="diffusion_gemma",
        gen_length=2 * BS,
        block_length=BS,
        backend=backend,
        seed=seed,
        max_denoising_steps=N,
        confidence_threshold=c,
        stability_threshold=S,
        entropy_bound=bound,
    )
    calls = m.calls
    assert calls[0][2] is None and calls[0][0].shape[1] == BS  # the prefill of the prompt's complete block
    i, n, history = 1, 0, []
    blocks, early, renoised = 0, 0, 0
    E = m.embed_weight.detach()
    while i < len(calls):
        tokens, positions, soft, logits, _ = calls[i]
        s = int(positions[0, 0])
        pinned = torch.arange(s, s + BS) < len(prompt)
        assert soft is not None and soft.shape[1] == BS
        if n == 0:
            assert (soft == 0).all()
        temp = t_min + (t_max - t_min) * ((N - n) / N)
        temp = torch.tensor(temp, dtype=torch.float32).item()
        keys = mix_seed(torch.tensor(seed), n, torch.arange(s, s + BS))
        rkey = mix_seed(torch.tensor(seed), RENOISE_TAG, torch.tensor(s // BS))
        lg = logits[0, :BS]
        step, argmax, H, accepted = _sglang_step(lg, tokens[0, :BS], pinned, temp, keys, rkey, n, bound, V)
        stable = len(history) == S and all(torch.equal(h[~pinned], argmax[~pinned]) for h in history)
        history = (history + [argmax])[-S:]
        converged = (stable and H[~pinned].mean() < c) or n + 1 == N
        nxt_tokens, _, nxt_soft, _, _ = calls[i + 1]
        if converged:
            assert torch.equal(nxt_tokens[0, :BS], torch.where(pinned, tokens[0, :BS], argmax))
            assert nxt_soft is None  # the store forward
            blocks, early = blocks + 1, early + (n + 1 < N)
            i, n, history = i + 2, 0, []
            continue
        assert torch.equal(nxt_tokens[0, :BS], step), (i, n)
        renoised += int((~accepted & ~pinned).sum())
        want = ref_soft_embedding(lg[None], E, temperature=torch.full((1, BS), temp))[0]
        want = torch.where(pinned[:, None], 0.0, want)
        torch.testing.assert_close(nxt_soft[0, :BS], want, atol=1e-5, rtol=1e-5)
        i, n = i + 1, n + 1
    assert blocks == 3 and int(out.nfe[0]) == len(calls)  # the prompt's partial block, then two
    assert early == 3 if favoured is not None else early == 0 and renoised > 0


def test_a_model_without_self_conditioning_gets_no_soft_embeds():
    m = Recorder(self_conditioning_size=None)
    out = _run(m, PROMPTS[:2], seed=4, gen_length=BS)
    assert m.calls and all(soft is None for _, _, soft, _, _ in m.calls)
    assert ((out.tokens >= 0) & (out.tokens < V)).all()
    assert _same_row(out, _run(m, PROMPTS[1:2], seed=4, gen_length=BS), 1, 0)


def test_errors():
    m = Recorder()
    with pytest.raises(ValueError, match="temperature"):
        _run(m, PROMPTS, temperature=0.5)
    with pytest.raises(ValueError, match="policy 'fast_dllm'.*uniform_state"):
        generate(m, PROMPTS, policy="fast_dllm", gen_length=8, block_length=4)
    with pytest.raises(ValueError, match="block_length"):
        generate(m, PROMPTS, policy="diffusion_gemma", gen_length=16, block_length=8)
    masked = dataclasses.replace(tiny(vocab_size=V), block_size=BS)
    with pytest.raises(ValueError, match="policy 'diffusion_gemma'.*uniform_state"):
        generate(DiffusionLM(masked), PROMPTS, policy="diffusion_gemma", gen_length=8, block_length=4)
    with pytest.raises(MaxNFEError, match="max_nfe") as e:
        _run(m, PROMPTS, seed=0, max_nfe=2)
    assert e.value.result is not None and int(e.value.result.nfe.max()) == 2
    with pytest.raises(ValueError, match="temperatures"):
        generate(m, PROMPTS, policy="diffusion_gemma", gen_length=8, block_length=4, t_min=0.9, t_max=0.8)


def test_the_loop_launches_exactly_the_declared_rule(monkeypatch):
    import dllm_kernels.decode.uniform as loop

    commit, launched = loop.commit_unchecked, []

    def spy(x, stats, state, rule, *args, **kw):
        launched.append(rule)
        return commit(x, stats, state, rule, *args, **kw)

    monkeypatch.setattr(loop, "commit_unchecked", spy)
    m = Recorder()
    p = POLICIES["diffusion_gemma"](**FAST)
    generate(m, PROMPTS, policy=p, gen_length=2 * BS, block_length=BS, backend="reference", seed=0)
    assert launched and set(launched) == set(p.launched_rules().values()) == {p.rule}
    assert p.rule == DIFFUSION_GEMMA.rule({**DIFFUSION_GEMMA.options, **FAST})


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_equals_eager():
    """``cuda_graph=True`` (each step captured once per shape bucket and replayed; the warm-up's
    updates of the uniform state undone) gives the eager tokens, commit steps and NFE."""
    m = Recorder().cuda()
    m.lm.backend = "triton"
    args = dict(policy="diffusion_gemma", gen_length=3 * BS, block_length=BS, backend="triton", seed=[1, 2, 3], **FAST)
    eager = generate(m, PROMPTS, **args)
    graphed = generate(m, PROMPTS, cuda_graph=True, **args)
    assert torch.equal(graphed.tokens, eager.tokens) and torch.equal(graphed.commit_step, eager.commit_step)
    assert torch.equal(graphed.nfe, eager.nfe)


@pytest.mark.gpu
def test_gpu_generate_syncs_once_per_step():
    """One host sync per step (the read-back): two generation lengths differ in syncs exactly as
    they differ in steps."""
    import warnings

    m = Recorder().cuda()
    m.lm.backend = "triton"

    def syncs_and_steps(gen_length):
        args = dict(policy="diffusion_gemma", gen_length=gen_length, block_length=BS, backend="triton", seed=0)
        generate(m, PROMPTS, **args, **FAST)  # compile
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = generate(m, PROMPTS, **args, **FAST)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing" in str(w.message) for w in caught), int(out.nfe.max())

    (s1, n1), (s2, n2) = syncs_and_steps(2 * BS), syncs_and_steps(4 * BS)
    assert n2 > n1
    assert s2 - s1 == n2 - n1, f"{s1} syncs for {n1} steps, {s2} syncs for {n2} steps"


@pytest.mark.parametrize("policy", ["diffusion_gemma", "vanilla"])
def test_progress_bar_counts_decoded_positions(monkeypatch, policy):
    """``progress=True``: the bar starts at 0 and ends at every row's whole region, never going
    back; a uniform-state canvas (no MASK) counts its converged blocks."""
    import tqdm.auto

    seen = []

    class Bar:
        def __init__(self, total, **kw):
            self.total, self.n = total, 0

        def refresh(self):
            seen.append(self.n)

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    if policy == "vanilla":
        cfg = dataclasses.replace(tiny(vocab_size=V), block_size=BS)
        m, kw = DiffusionLM(cfg, backend="reference", attn_impl="sdpa").eval(), {}
    else:
        m, kw = Recorder(), dict(seed=1, **FAST)
    gen = 3 * BS
    generate(m, PROMPTS, policy=policy, gen_length=gen, block_length=BS, backend="reference", progress=True, **kw)
    assert seen[0] < len(PROMPTS) * gen and seen[-1] == len(PROMPTS) * gen
    assert all(a <= b for a, b in zip(seen, seen[1:]))
