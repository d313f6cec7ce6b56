"""SGLang plugin: ``DllmKernelsGemma4Renoise`` against SGLang 0.5.23's own ``Gemma4Renoise``.

Needs ``sglang`` as tests/test_sglang.py does (``CI=true`` on a CPU machine: required, fails
without it; elsewhere skipped).

Randomness: SGLang draws the sample (an exponential race) and the renoise tokens (``randint``)
from a per-request ``torch.Generator``; our kernels draw them from Philox streams keyed by (seed,
position, step), which cannot reproduce that stream. Exactness is therefore tested with the draws
held fixed: SGLang's ``_sample_denoiser`` returns our sample and its ``randint`` returns sentinels
(-1 - position), which reveal its accepted set; the sentinels are then replaced by our renoise
tokens, so both sides carry the same canvas into the next step. Per step and row: the accepted
sets (ours: the commit's count and the positions holding the sample), the canvases (the argmax
canvas once converged), the done flags and the soft embeddings (fp32 tables: within 2e-5 * max|E|
of SGLang's ``probabilities @ E``, absolute) agree. The laws are tested separately by chi-square
(critical values at p = 1e-4): our renoise tokens are uniform, our samples follow SGLang's
``softmax(logits / T)`` at the schedule's temperature.
"""

import functools
from types import SimpleNamespace

import pytest
import torch
from sglang_helpers import server_args as sglang_server_args, sglang_imports

with sglang_imports():
    from sglang.srt.dllm.algorithm import algo_name_to_cls, gemma4_renoise as sglang_gemma, get_algorithm_cls
    from sglang.srt.plugins import load_plugins

assert "Gemma4Renoise" in algo_name_to_cls, sorted(algo_name_to_cls)

from dllm_kernels.integrations import sglang as plugin  # noqa: E402
from dllm_kernels.policies.published import DIFFUSION_GEMMA, GEMMA4_RENOISE  # noqa: E402

Gemma4Renoise = sglang_gemma.Gemma4Renoise
OURS = plugin.DllmKernelsGemma4Renoise
CHI2_CRIT_1E4 = {9: 33.72, 15: 44.26}  # chi-square critical values at p = 1e-4 (df -> value)


def config(block_size, algorithm_config=None, fdfo=False):
    return SimpleNamespace(
        algorithm="Gemma4Renoise",
        block_size=block_size,
        mask_id=-1,  # DiffusionGemma's (DllmConfig): no MASK token
        algorithm_config=dict(algorithm_config or {}),
        first_done_first_out_mode=fdfo,
        capture_input_preparation=False,
    )


def batch(B, blk, rids=None):
    """The fields of SGLang's ForwardBatch that the algorithm reads."""
    return SimpleNamespace(
        batch_size=B,
        input_ids=torch.zeros(B * blk, dtype=torch.int64),
        rids=rids if rids is not None else [f"req-{i}" for i in range(B)],
        dllm_input_preparation_state=None,
        input_embeds=None,
        forward_mode=SimpleNamespace(is_dllm_extend=lambda: True),
        mark_forward_metadata_ready=lambda **kw: None,
    )


def embedding(V, D, g, scale=2.5):
    return SimpleNamespace(weight=torch.randn(V, D, generator=g), embed_scale=scale)


def pair(blk, V, D, opts, g, backend="reference"):
    ours = OURS(config(blk, {**opts, "backend": backend}))
    theirs = Gemma4Renoise(config(blk, opts))
    emb = embedding(V, D, g)
    for algo in (ours, theirs):
        algo.vocab_size, algo.embed_tokens = V, emb
    return ours, theirs


class Injected:
    """SGLang's module with its draws held fixed: ``_sample_denoiser`` returns the queued sample
    of each row in turn and ``torch.randint`` (inside ``step`` only) the sentinels ``-1 - pos``."""

    def __init__(self, monkeypatch):
        self.samples = []
        real = torch

        class Torch:
            def __getattr__(_, name):
                return getattr(real, name)

            @staticmethod
            def randint(high, size, *, device=None, generator=None):
                return -1 - real.arange(size[0], device=device)

        monkeypatch.setattr(sglang_gemma, "_sample_denoiser", lambda probabilities, generator: self.samples.pop(0))
        self.torch = Torch()
        self.monkeypatch = monkeypatch

    def step(self, theirs, fb, logits, states, samples):
        self.samples = list(samples)
        self.monkeypatch.setattr(sglang_gemma, "torch", self.torch)
        try:
            done = theirs.step(fb, logits, states)
        finally:
            self.monkeypatch.setattr(sglang_gemma, "torch", torch)
        assert not self.samples  # one sample per active row, all used
        return done


def recording(monkeypatch):
    """Our commit's returned counts, per call."""
    counts = []
    real = plugin.commit

    def commit(*args, **kwargs):
        out = real(*args, **kwargs)
        counts.append(out.clone())
        return out

    monkeypatch.setattr(plugin, "commit", commit)
    return counts


def random_logits(g, B, blk, V, base, stable_rows):
    """Peaked rows (entropies around the bound: varied accepted sets); ``stable_rows`` repeat
    ``base`` with a tiny jitter (their argmax is stable and their entropy ~0: they converge)."""
    scale = torch.rand(B, blk, 1, generator=g) * 12
    z = torch.randn(B, blk, V, generator=g) * scale
    z[stable_rows] = base[stable_rows] + 1e-3 * torch.randn(B, blk, V, generator=g)[stable_rows]
    return z.float()


def drive(monkeypatch, blk, V, D, B, opts, steps, seed, backend="reference"):
    g = torch.Generator().manual_seed(seed)
    ours, theirs = pair(blk, V, D, opts, g, backend)
    inj = Injected(monkeypatch)
    counts = recording(monkeypatch)
    fb_o, fb_t = batch(B, blk), batch(B, blk)
    s_o, s_t = ours.init_step_state(fb_o), theirs.init_step_state(fb_t)
    for a, b in zip(s_o, s_t):
        assert torch.equal(a["current"], b["current"])  # the same initial canvas (SGLang's generator)
    ours._write_input_ids(fb_o, s_o)
    theirs._write_input_ids(fb_t, s_t)
    base = torch.zeros(B, blk, V)
    base[..., 0] = 40.0
    base += torch.randn(B, blk, V, generator=g)
    stable_rows = torch.arange(B) % 3 == 0
    seen = {"accepted": 0, "renoised": 0, "converged": 0}
    for n in range(steps):
        logits = random_logits(g, B, blk, V, base, stable_rows)
        active = [b for b in range(B) if not s_o[b]["finished"]]
        if active:
            steps_now = torch.stack([s["steps"] for s in s_o])
            seeds = torch.stack([s["seed"] for s in s_o])
            sample = ours.statistics(logits, steps_now, seeds)[0].token
        else:
            sample = torch.zeros(B, blk, dtype=torch.int64)
        before = len(counts)
        d_o = ours.step(fb_o, logits.reshape(-1, V).clone(), s_o)
        d_t = inj.step(theirs, fb_t, logits.reshape(-1, V).clone(), s_t, [sample[b] for b in active])
        assert d_o == d_t, f"step {n}"
        x_o = fb_o.input_ids.view(B, blk)
        for b in active:
            cur = s_t[b]["current"]
            if d_t[b]:  # converged: the argmax canvas, no self-conditioning
                assert torch.equal(cur, logits[b].argmax(dim=-1)), (n, b)
                assert torch.equal(x_o[b], cur)
                assert s_o[b]["self_conditioning"] is None and s_t[b]["self_conditioning"] is None
                seen["converged"] += 1
                continue
            selected = cur >= 0  # SGLang's accepted set: the sample there, our sentinels elsewhere
            assert int(counts[before][b]) == int(selected.sum()), (n, b)
            assert torch.equal(cur[selected], x_o[b][selected]), (n, b)  # ours holds the sample there
            assert torch.equal(sample[b][selected], x_o[b][selected])
            assert selected.any()  # the lowest entropy always commits
            seen["accepted"] += int(selected.sum())
            seen["renoised"] += int((~selected).sum())
            cur[~selected] = x_o[b][~selected]  # the same renoise tokens on both sides from here on
            soft_o, soft_t = s_o[b]["self_conditioning"], s_t[b]["self_conditioning"]
            scale = float(ours.embed_tokens.weight.abs().max()) * ours.embed_tokens.embed_scale
            torch.testing.assert_close(soft_o, soft_t, rtol=0, atol=2e-5 * scale)
        theirs._write_input_ids(fb_t, s_t)
        assert torch.equal(fb_o.input_ids, fb_t.input_ids), f"step {n}"
        if all(d_o):
            return n + 1, seen
    return steps, seen


@pytest.mark.parametrize("S", [0, 1, 2])
def test_step_parity_with_draws_held_fixed(monkeypatch, S):
    opts = {
        "max_denoising_steps": 7,
        "sampler_config": {"entropy_bound": 0.3},
        "temperature_schedule": {"t_min": 0.3, "t_max": 0.9},
        "stopping_config": {"confidence_threshold": 0.01, "stability_threshold": S},
    }
    n, seen = drive(monkeypatch, blk=16, V=48, D=8, B=7, opts=opts, steps=10, seed=S)
    assert n == 7  # the random rows run to max_denoising_steps
    assert seen["accepted"] > 7 * 4 and seen["renoised"] > 0 and seen["converged"] >= 3  # every case was hit


def test_step_parity_defaults(monkeypatch):
    n, seen = drive(monkeypatch, blk=8, V=40, D=4, B=4, opts={"max_denoising_steps": 5}, steps=6, seed=5)
    assert n == 5 and seen["converged"] >= 2


def test_step_parity_triton(monkeypatch):
    """The kernels (Triton's interpreter on the CPU) in the same loop: a small case."""
    opts = {"max_denoising_steps": 3, "sampler_config": {"entropy_bound": 0.3}}
    n, seen = drive(monkeypatch, blk=4, V=24, D=4, B=2, opts=opts, steps=3, seed=7, backend="triton")
    assert n == 3 and seen["accepted"] > 0


def test_backends_draw_the_same_tokens():
    """Triton and the reference: the same samples, renoise tokens, states and soft embeddings."""
    g = torch.Generator().manual_seed(3)
    blk, V, B = 4, 24, 2
    emb = embedding(V, 4, g)
    runs = []
    logits = [torch.randn(B * blk, V, generator=g) * 4 for _ in range(3)]
    for backend in ("triton", "reference"):
        algo = OURS(config(blk, {"backend": backend, "max_denoising_steps": 3}))
        algo.vocab_size, algo.embed_tokens = V, emb
        fb = batch(B, blk)
        states = algo.init_step_state(fb)
        out = []
        for z in logits:
            out.append((algo.step(fb, z.clone(), states), fb.input_ids.clone()))
            out.append([s["self_conditioning"] for s in states])
        runs.append(out)
    for a, b in zip(*runs):
        if isinstance(a, tuple):
            assert a[0] == b[0] and torch.equal(a[1], b[1])
        else:
            for u, v in zip(a, b):
                assert (u is None) == (v is None)
                if u is not None:
                    torch.testing.assert_close(u, v, rtol=0, atol=1e-5 * float(emb.weight.abs().max()) * 2.5)


# ---- laws ------------------------------------------------------------------------------------------


def _chi2(observed, expected):
    return float(((observed.double() - expected) ** 2 / expected).sum())


def test_renoise_tokens_are_uniform():
    """Flat logits (every entropy ~log V > bound): all but one position per row is renoised.
    Chi-square of their tokens at V = 10 (df 9) < the 1e-4 critical value, and of consecutive
    steps' pairs at one position over 4 classes (df 15): independent across steps."""
    blk, V, B, steps = 64, 10, 16, 12
    algo = OURS(config(blk, {"backend": "reference", "max_denoising_steps": 100}))
    algo.vocab_size, algo.embed_tokens = V, embedding(V, 2, torch.Generator().manual_seed(0))
    fb = batch(B, blk)
    states = algo.init_step_state(fb)
    g = torch.Generator().manual_seed(1)
    canv = []
    for _ in range(steps):
        z = torch.randn(B * blk, V, generator=g) * 0.01
        algo.step(fb, z, states)
        canv.append(fb.input_ids.view(B, blk).clone())
    tokens = torch.stack(canv)  # [steps, B, blk]; one accepted (sampled) token per row and step
    counts = torch.bincount(tokens.flatten(), minlength=V)
    assert _chi2(counts, tokens.numel() / V) < CHI2_CRIT_1E4[9]
    pairs = (tokens[:-1] % 4) * 4 + tokens[1:] % 4  # V = 10 mod 4 is not uniform: expected from counts
    p4 = torch.bincount(tokens.flatten() % 4, minlength=4).double() / tokens.numel()
    expected = torch.outer(p4, p4).flatten() * pairs.numel()
    assert _chi2(torch.bincount(pairs.flatten(), minlength=16), expected) < CHI2_CRIT_1E4[15]


def test_samples_follow_the_tempered_softmax():
    """Every position of every row has one distribution (V = 16); our samples at step n (T =
    SGLang's schedule) against SGLang's ``softmax(logits / T)``: chi-square (df 15) < the 1e-4
    critical value at two steps (two temperatures); and the positions of a row are not one draw."""
    blk, V, B = 128, 16, 32
    algo = OURS(config(blk, {"backend": "reference", "max_denoising_steps": 4}))
    algo.vocab_size = V
    z = torch.linspace(-2.0, 1.5, V)
    logits = z.expand(B, blk, V).contiguous()
    seeds = torch.arange(B, dtype=torch.int64) * 1_000_003 + 17
    for n in (0, 3):
        steps = torch.full((B,), n, dtype=torch.int32)
        stats, top, temps = algo.statistics(logits, steps, seeds)
        T = algo._temperature(4 - n)
        assert torch.all(temps == torch.tensor(T, dtype=torch.float32))
        probs, entropies, argmax = sglang_gemma._denoiser_statistics(logits, logits.new_tensor([T] * B))
        torch.testing.assert_close(stats.entropy, entropies, rtol=1e-5, atol=1e-5)
        assert torch.equal(top, argmax)
        observed = torch.bincount(stats.token.flatten(), minlength=V)
        assert _chi2(observed, probs[0, 0].double() * stats.token.numel()) < CHI2_CRIT_1E4[15]
        assert len({tuple(r.tolist()) for r in stats.token}) == B  # rows differ
        assert all(len(set(r.tolist())) > 4 for r in stats.token)  # positions differ within a row


# ---- options, registration, loop ---------------------------------------------------------------------


def test_options_are_sglangs():
    opts = {
        "max_denoising_steps": 12,
        "sampler_config": {"entropy_bound": 0.2},
        "temperature_schedule": {"t_min": 0.1},
        "t_max": 0.7,  # SGLang's top-level fallback
        "stopping_config": {"stability_threshold": 3},
        "confidence_threshold": 0.02,
        "seed": 5,
        "use_temperature_table": False,
    }
    ours, theirs = OURS(config(8, opts)), Gemma4Renoise(config(8, opts))
    for name in GEMMA4_RENOISE.options:
        assert getattr(ours, name) == getattr(theirs, name), name
    defaults_o, defaults_t = OURS(config(8)), Gemma4Renoise(config(8))
    for name, value in GEMMA4_RENOISE.options.items():
        assert getattr(defaults_o, name) == getattr(defaults_t, name) == value, name
    assert defaults_o.commit_rule == DIFFUSION_GEMMA.rule(DIFFUSION_GEMMA.options)
    assert ours.commit_rule.stability_steps == 4 and ours.commit_rule.max_steps == 12


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"max_denoising_steps": 0}, "max_denoising_steps must be at least 1"),
        ({"sampler_config": {"entropy_bound": 0}}, "entropy_bound must be positive"),
        ({"temperature_schedule": {"t_min": 0.9}}, "temperature_schedule must satisfy"),
        ({"stopping_config": {"stability_threshold": -1}}, "invalid stopping_config"),
        ({"seed": "x"}, "seed must be an integer"),
        ({"sampler_config": 3}, "sampler_config must be a mapping"),
    ],
)
def test_bad_options_as_sglang(opts, match):
    for cls in (OURS, Gemma4Renoise):
        with pytest.raises(ValueError, match=match):
            cls(config(8, opts))


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"entropy_bound": 0.2}, r"unknown option 'entropy_bound' .*SGLang reads it from sampler_config only"),
        ({"sampler_config": {"bound": 0.2}}, "unknown option 'bound' in sampler_config"),
        ({"temprature_schedule": {}}, "unknown option 'temprature_schedule'"),
        ({"backend": "cuda"}, "option backend must be one of"),
    ],
)
def test_unknown_options(opts, match):
    with pytest.raises(ValueError, match=match):
        OURS(config(8, opts))


def test_entry_point_registers_it_and_the_config_hook():
    load_plugins()
    assert get_algorithm_cls(OURS.__name__) is OURS
    assert get_algorithm_cls("Gemma4Renoise") is Gemma4Renoise
    assert OURS not in plugin.ALGORITHMS and OURS in plugin.UNIFORM_STATE_ALGORITHMS
    assert OURS.supported_architectures == Gemma4Renoise.supported_architectures
    for attr in ("requires_separate_context_encoding", "required_attention_backend", "reuse_forward_metadata"):
        assert getattr(OURS, attr) == getattr(Gemma4Renoise, attr), attr
    from sglang.srt.plugins.hook_registry import HookRegistry

    assert any(h is plugin.gemma_config for _, h, _ in HookRegistry._hooks.get(plugin.GEMMA_CONFIG_TARGET, ()))


def test_config_hook_builds_gemma4renoises_config():
    """SGLang's DllmConfig.from_server_args requires the name Gemma4Renoise for DiffusionGemma: the
    hook runs it under that name (as SGLang's resolving view reads it) and names ours in it."""
    from sglang.srt.arg_groups.overrides import resolving_view

    seen = []

    def original(server_args):
        seen.append(resolving_view(server_args).dllm_algorithm)
        return SimpleNamespace(algorithm=resolving_view(server_args).dllm_algorithm)

    args = SimpleNamespace(dllm_algorithm=OURS.__name__, model_path="m")
    assert plugin.gemma_config(original, args).algorithm == OURS.__name__
    assert seen == ["Gemma4Renoise"]
    other = SimpleNamespace(dllm_algorithm="LowConfidence")
    assert plugin.gemma_config(original, other).algorithm == "LowConfidence"
    assert plugin.gemma_config(lambda a: None, args) is None


class ScriptedModel:
    """``model_runner``: logits a fixed function of each position's token, the self-conditioning
    recorded; a canvas converges when the argmax is a fixed point."""

    def __init__(self, blk, V, D, g):
        self.table = torch.randn(V, V, generator=g) * 3
        self.table[torch.arange(V), torch.arange(V) % 5] += 30.0  # peaked: argmax = token % 5
        self.emb = embedding(V, D, g)
        self.blk, self.V = blk, V
        self.signals = []
        self.model_config = SimpleNamespace(hf_config=SimpleNamespace(text_config=SimpleNamespace(vocab_size=V)))
        self.model = SimpleNamespace(
            get_input_embeddings=lambda: self.emb,
            prepare_dllm_input_embeds=lambda ids, signal: self.signals.append(signal) or ids,
        )

    def forward(self, forward_batch, pp_proxy_tensors=None):
        logits = self.table[forward_batch.input_ids]
        return SimpleNamespace(logits_output=SimpleNamespace(full_logits=logits.float()), can_run_graph=False)


def test_sglang_run_loop_drives_it():
    """SGLang's own synchronous loop (DllmAlgorithm._run_sync) with our class: it converges to
    the model's fixed point, in place, and feeds soft embeddings after the first step."""
    blk, V, B = 8, 20, 3
    runner = ScriptedModel(blk, V, 4, torch.Generator().manual_seed(0))
    algo = OURS(config(blk, {"backend": "reference", "max_denoising_steps": 10}))
    fb = batch(B, blk)
    ids = fb.input_ids
    _, tokens, _, _, _ = algo.run(runner, fb)
    assert fb.input_ids is ids and len(tokens) == B
    assert runner.signals[0] is None  # first forward: no self-conditioning
    assert runner.signals[1] is not None and tuple(runner.signals[1].shape) == (B * blk, 4)
    out = fb.input_ids.view(B, blk)
    assert torch.equal(out, out % 5)  # the argmax canvas of a converged row is the fixed point
    assert len(runner.signals) < 10


class MixedModel(ScriptedModel):
    """Inputs below V // 2 give peaked logits (argmax token % 5); the others spread ones: a
    request converges once its canvas lands among the peaked tokens, after a varying number of
    steps."""

    def __init__(self, blk, V, D, g):
        super().__init__(blk, V, D, g)
        self.table[V // 2 :] = torch.randn(V - V // 2, V, generator=g) * 1.5


def _alone_and_batched(fdfo):
    blk, V, n = 8, 20, 4
    runner = MixedModel(blk, V, 4, torch.Generator().manual_seed(1))
    opts = {"backend": "reference", "max_denoising_steps": 12}
    alone = {}
    for i in range(n):
        algo = OURS(config(blk, opts))
        fb = batch(1, blk, rids=[f"r{i}"])
        _, tokens, _, _, _ = algo.run(runner, fb)
        alone[f"r{i}"] = tokens[0].clone()
    if not fdfo:
        algo = OURS(config(blk, opts))
        fb = batch(n, blk, rids=[f"r{i}" for i in range(n)])
        _, tokens, _, _, _ = algo.run(runner, fb)
        return alone, {f"r{i}": t for i, t in enumerate(tokens)}, None
    # SGLang's first-done-first-out loop: one forward per round, finished requests leave and new
    # ones join with fresh states; the carried states go back in
    algo = OURS(config(blk, opts, fdfo=True))
    waiting, running, out, rounds = [f"r{i}" for i in range(n)], [], {}, 0
    while waiting or running:
        if waiting and len(running) < 3:
            running.append((waiting.pop(0), None))
        fb = batch(len(running), blk, rids=[rid for rid, _ in running])
        _, tokens, accepted, states, _ = algo.run(runner, fb, [s for _, s in running])
        rounds += 1
        nxt = []
        for (rid, _), tok, acc, st in zip(running, tokens, accepted, states):
            if st is None:
                assert acc == blk
                out[rid] = torch.tensor(tok)
            else:
                nxt.append((rid, st))
        running = nxt
    return alone, out, rounds


def test_a_request_decodes_the_same_alone_batched_and_fdfo():
    """The draws are keyed by (request seed, position, step), so a request's tokens do not depend
    on its batch-mates, in the synchronous loop and in SGLang's first-done-first-out loop (requests
    joining and leaving between rounds, states carried)."""
    alone, batched, _ = _alone_and_batched(fdfo=False)
    assert all(torch.equal(alone[k], batched[k]) for k in alone)
    alone, fdfo, rounds = _alone_and_batched(fdfo=True)
    assert all(torch.equal(alone[k], fdfo[k]) for k in alone), (alone, fdfo)
    assert rounds > 4
    assert len({tuple(t.tolist()) for t in alone.values()}) == len(alone)


def test_soft_embeddings_of_a_vocabulary_parallel_embedding(monkeypatch):
    """tp_size 2: rank 0's shard state, all-gathered (here: with rank 1's, computed alike) and
    merged, equals the unsharded soft embedding (SGLang all-reduces its sharded matmul)."""
    import sglang.srt.distributed as dist

    g = torch.Generator().manual_seed(4)
    B, blk, V, D, split = 2, 4, 30, 6, 13
    weight = torch.randn(V, D, generator=g)
    logits = torch.randn(B, blk, V, generator=g) * 3
    temps = torch.rand(B, blk, generator=g) + 0.3
    algo = OURS(config(blk, {"backend": "reference"}))

    def shard(start, end):
        pad = torch.randn(3, D, generator=g)  # a rank's table may hold padding rows past its shard
        return SimpleNamespace(
            weight=torch.cat([weight[start:end], pad]),
            embed_scale=1.5,
            tp_size=2,
            shard_indices=SimpleNamespace(org_vocab_start_index=start, org_vocab_end_index=end),
        )

    algo.embed_tokens = shard(split, V)
    states = {}

    def all_gather(part, dim):
        assert dim == 0 and part.shape[0] == 1
        states.setdefault("parts", []).append(part)
        return part if len(states["parts"]) == 1 else torch.cat([part, states["parts"][0]])

    monkeypatch.setattr(dist, "tensor_model_parallel_all_gather", all_gather)
    algo.soft_embeddings(logits, temps)  # rank 1: records its state (its own gather is just it)
    algo.embed_tokens = shard(0, split)
    got = algo.soft_embeddings(logits, temps)  # rank 0: gathers [rank 0, rank 1]
    want = torch.softmax(logits.double() / temps[..., None].double(), dim=-1) @ weight.double() * 1.5
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5 * float(weight.abs().max()) * 1.5)


def test_dllm_config_from_server_args_through_the_hook(monkeypatch, tmp_path):
    """SGLang's own ``DllmConfig.from_server_args`` (a DiffusionGemma checkpoint's config, no files:
    ``ModelConfig.from_server_args`` replaced) with the hook applied by ``load_plugins()``: our
    name passes SGLang's required-algorithm check, gets Gemma4Renoise's block size, MASK id and
    flags, and the YAML's nested options reach our class; other names are unchanged."""
    import sglang.srt.dllm.config as dllm_config
    from sglang.srt.dllm.algorithm import get_algorithm
    from sglang.srt.dllm.config import DllmConfig

    hf = SimpleNamespace(architectures=["DiffusionGemmaForBlockDiffusion"], canvas_length=32)
    fake = SimpleNamespace(from_server_args=lambda *a, **k: SimpleNamespace(hf_config=hf, vocab_size=1000))
    monkeypatch.setattr(dllm_config, "ModelConfig", fake)
    load_plugins()
    yaml = tmp_path / "gemma.yaml"
    yaml.write_text("max_denoising_steps: 20\nsampler_config:\n  entropy_bound: 0.25\n")

    server_args = functools.partial(sglang_server_args, model_path="google/diffusion-gemma")

    cfg = DllmConfig.from_server_args(server_args(OURS.__name__, str(yaml)))
    theirs = DllmConfig.from_server_args(server_args("Gemma4Renoise", str(yaml)))
    assert cfg.algorithm == OURS.__name__ and theirs.algorithm == "Gemma4Renoise"
    for field in ("algorithm_config", "block_size", "mask_id", "requires_separate_context_encoding"):
        assert getattr(cfg, field) == getattr(theirs, field), field
    assert (cfg.block_size, cfg.mask_id, cfg.capture_input_preparation) == (32, -1, True)
    algo = get_algorithm(cfg)
    assert type(algo) is OURS and (algo.max_denoising_steps, algo.entropy_bound) == (20, 0.25)
    with pytest.raises(ValueError, match="requires the Gemma4Renoise diffusion algorithm"):
        DllmConfig.from_server_args(server_args("DllmKernelsLowConfidence"))
