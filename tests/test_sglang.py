"""SGLang plugin (dllm_kernels.integrations.sglang) against SGLang's own code.

Needs ``sglang`` (installed without its CUDA dependencies by scripts/bootstrap.sh from
tests/sglang-cpu.txt) and, on a machine without torchvision, the inert stub of
tests/stubs/torchvision_stub.py. Whether a missing SGLang fails or skips this file:
``DLLM_KERNELS_REQUIRE_SGLANG=1`` / ``0`` decides; unset, it is required when ``CI=true`` on a
machine without CUDA (the CPU CI, where bootstrap installs it) and skipped elsewhere (the offline
GPU image has no sglang).

What runs: entry-point discovery through SGLang's ``load_plugins()``; token-for-token parity
of our LowConfidence and JointThreshold with SGLang's classes on random batches (B 1..16, blocks 4
and 32, ragged masks, prompt masks, ties, MASK argmaxes), on both backends (Triton under the
interpreter on the CPU); the seeds' rules against independent formulas; SGLang's own ``run`` loop (synchronous and
first-done-first-out) driving our classes through a scripted model runner.
"""

import pathlib
from types import SimpleNamespace

import pytest
import torch
from sglang_helpers import (
    ScriptedRunner,
    batch,
    fdfo_rounds,
    fresh_blocks,
    sglang_imports,
    step_done_in_a_cuda_graph,
)

with sglang_imports():
    from sglang.srt.dllm.algorithm import algo_name_to_cls, get_algorithm_cls
    from sglang.srt.dllm.algorithm.joint_threshold import JointThreshold
    from sglang.srt.dllm.algorithm.low_confidence import LowConfidence
    from sglang.srt.plugins import load_plugins

# import_algorithms() swallows import errors: an empty registry would make every test vacuous
assert "LowConfidence" in algo_name_to_cls and "JointThreshold" in algo_name_to_cls, sorted(algo_name_to_cls)

from dllm_kernels.integrations import sglang as plugin  # noqa: E402

V = 12
MASK = 7


@pytest.fixture(params=["triton", "reference"])
def backend(request):
    return request.param


def sizes(backend, blk):
    """(largest batch, cases, steps): the whole range on the reference; on the Triton
    interpreter (about 30 ms per logits row in token_stats) a few rows per step."""
    if backend == "reference" or torch.cuda.is_available():
        return 16, 10, 4
    return (3, 3, 2) if blk <= 8 else (1, 2, 2)


def config(block_size, algorithm_config=None, fdfo=False, mask_id=MASK):
    return SimpleNamespace(
        block_size=block_size,
        mask_id=mask_id,
        algorithm_config=dict(algorithm_config or {}),
        first_done_first_out_mode=fdfo,
        delete_token_id=9,  # read by DllmKernelsJointThresholdInDel only (tests/test_sglang_indel.py)
        split_token_id=10,
    )


def random_case(g, B, blk, *, prompt: bool):
    """A flat canvas with ragged masks, an optional prefix prompt mask (whose positions may even
    hold MASK), and a generator of logits with ties (rounded values, duplicated rows)."""
    ids = torch.randint(0, V, (B, blk), generator=g)
    ids[ids == MASK] = 0
    ratio = torch.rand(B, 1, generator=g) * 1.2
    ids[torch.rand(B, blk, generator=g) < ratio] = MASK
    pm = None
    if prompt:
        plen = torch.randint(0, blk + 1, (B,), generator=g)
        pm = torch.arange(blk)[None, :] < plen[:, None]
        literal = pm & (torch.rand(B, blk, generator=g) < 0.2)
        ids[literal] = MASK
    return ids.reshape(-1), pm


def random_logits(g, N):
    scale = [0.5, 2.0, 6.0][int(torch.randint(0, 3, (1,), generator=g))]
    z = torch.round(torch.randn(N, V, generator=g) * scale * 2) / 2  # ties inside rows
    dup = torch.rand(N, generator=g) < 0.3  # identical rows: confidence ties across positions
    z[dup] = z[torch.randint(0, N, (N,), generator=g)[dup]]
    return z.float()


def drive(ours, theirs, ids, pm, g, steps, make_logits=random_logits):
    """Run both algorithms step by step on their own copies of the canvas, the same logits each
    step; tokens and done flags must agree after every step. Returns the number of steps run."""
    B = ids.numel() // ours.block_size
    fb_ours, fb_theirs = batch(ids.clone(), pm, B), batch(ids.clone(), pm, B)
    s_ours, s_theirs = ours.init_step_state(fb_ours), theirs.init_step_state(fb_theirs)
    ids_obj = fb_ours.input_ids
    edits = 0
    for n in range(steps):
        logits = make_logits(g, B * ours.block_size)
        before = fb_theirs.input_ids.clone()
        d_theirs = theirs.step(fb_theirs, logits.clone(), s_theirs)
        edits += int(((before != MASK) & (fb_theirs.input_ids != before)).sum())
        d_ours = ours.step(fb_ours, logits.clone(), s_ours)
        assert fb_ours.input_ids is ids_obj  # written in place
        assert torch.equal(fb_ours.input_ids, fb_theirs.input_ids), f"step {n}"
        assert d_ours == d_theirs, f"step {n}"
        if all(d_theirs):
            return n + 1, edits
    return steps, edits


# ---- discovery ---------------------------------------------------------------------------------


def test_entry_point_registers_every_algorithm():
    from importlib.metadata import entry_points

    eps = [
        ep for ep in entry_points(group="sglang.srt.plugins") if ep.value == "dllm_kernels.integrations.sglang:register"
    ]
    assert len(eps) == 1, "dllm-kernels is not installed with its entry point (pip install -e .)"
    load_plugins()
    for cls in plugin.ALGORITHMS:
        assert get_algorithm_cls(cls.__name__) is cls
    assert get_algorithm_cls("LowConfidence") is LowConfidence  # SGLang's own stay


def test_version_range():
    plugin.check_sglang_version()  # the installed one
    for bad in ("0.5.6", "0.5.22", "0.6.0"):
        with pytest.raises(RuntimeError, match="sglang>=0.5.23,<0.6"):
            plugin.check_sglang_version(bad)


# ---- parity with SGLang's classes ---------------------------------------------------------------


@pytest.mark.parametrize("blk", [4, 32])
def test_low_confidence_parity(backend, blk):
    g = torch.Generator().manual_seed(blk)
    steps = 0
    max_b, cases, n_steps = sizes(backend, blk)
    for case in range(cases):
        B = int(torch.randint(1, max_b + 1, (1,), generator=g))
        ids, pm = random_case(g, B, blk, prompt=case % 2 == 0)
        threshold = [0.95, 0.5, 0.3][case % 3]
        opts = {"threshold": threshold}
        ours = plugin.DllmKernelsLowConfidence(config(blk, {**opts, "backend": backend}))
        theirs = LowConfidence(config(blk, opts))
        steps += drive(ours, theirs, ids, pm, g, steps=n_steps)[0]
    assert steps >= cases


def mask_heavy_logits(g, N):
    """Logits whose argmax is MASK at about half the positions (often the most confident one)."""
    z = random_logits(g, N)
    boost = torch.rand(N, generator=g) < 0.5
    z[boost, MASK] = z[boost].max(dim=1).values + torch.rand(int(boost.sum()), generator=g) * 4
    return z


@pytest.mark.parametrize("name", ["LowConfidence", "JointThreshold"])
def test_mask_proposals_parity(backend, name):
    """SGLang's argmax may be MASK: a no-op commit that still blocks its fallback and keeps the
    request running, and (JointThreshold) an edit that re-masks a committed position."""
    blk = 8
    max_b = 4 if sizes(backend, blk)[0] == 16 else 2
    g = torch.Generator().manual_seed(21)
    edits = 0
    for case in range(4 if max_b == 4 else 2):
        B = int(torch.randint(1, max_b + 1, (1,), generator=g))
        ids, pm = random_case(g, B, blk, prompt=case % 2 == 0)
        if name == "LowConfidence":
            opts = {"threshold": [0.5, 0.9][case % 2]}
            ours, theirs = plugin.DllmKernelsLowConfidence, LowConfidence
        else:
            opts = {"threshold": [0.5, 0.9][case % 2], "edit_threshold": 0.3, "max_post_edit_steps": 2}
            ours, theirs = plugin.DllmKernelsJointThreshold, JointThreshold
        edits += drive(
            ours(config(blk, {**opts, "backend": backend})),
            theirs(config(blk, opts)),
            ids,
            pm,
            g,
            steps=4 if max_b == 4 else 2,
            make_logits=mask_heavy_logits,
        )[1]
    if name == "JointThreshold":
        assert edits > 0


@pytest.mark.parametrize("vectorized", [False, True])
@pytest.mark.parametrize("blk", [4, 32])
def test_joint_threshold_parity(backend, blk, vectorized):
    max_b, cases, n_steps = sizes(backend, blk)
    if max_b < 16 and vectorized:
        pytest.skip("SGLang's two paths agree (reference runs both); the interpreter runs one")
    g = torch.Generator().manual_seed(100 + blk)
    edits = 0
    for case in range(cases + 2 if max_b == 16 else cases):
        B = int(torch.randint(1, max_b + 1, (1,), generator=g))
        ids, pm = random_case(g, B, blk, prompt=case % 2 == 0)
        opts = {
            "threshold": [0.5, 0.9][case % 2],
            "edit_threshold": [0.0, 0.6, 0.3][case % 3],
            "max_post_edit_steps": [2, 0, 16][case % 3],
            "penalty_lambda": [0.0, 1.5][(case // 2) % 2],
        }
        ours = plugin.DllmKernelsJointThreshold(config(blk, {**opts, "backend": backend}))
        theirs = JointThreshold(config(blk, {**opts, "vectorized_decoding": vectorized}))
        edits += drive(
            ours, theirs, ids, pm, g, steps=min(ours.max_steps(blk), 3 * n_steps if max_b == 16 else n_steps + 1)
        )[1]
    assert edits > 0  # the cases exercise token editing


def test_joint_threshold_edits_and_budget_by_hand():
    # block 4, prompt tail of 1: [p | a | M | M]; proposals [9, 5, 6, 6]
    ours = plugin.DllmKernelsJointThreshold(
        config(4, {"threshold": 0.9, "edit_threshold": 0.5, "max_post_edit_steps": 1, "backend": "reference"})
    )
    fb = batch(torch.tensor([1, 2, MASK, MASK]), torch.tensor([[True, False, False, False]]), 1)
    states = ours.init_step_state(fb)
    z = torch.full((4, V), -5.0)
    z[0, 9] = z[1, 5] = z[2, 6] = 5.0  # confident proposals: p = 1 / (1 + 11 e^-10) ~ 0.9995
    z[3, 6] = -3.0  # position 3 unsure: p = 1 / (1 + 11 e^-2) ~ 0.40 < 0.9, it waits
    assert ours.step(fb, z.clone(), states) == [False]
    assert fb.input_ids.tolist() == [1, 5, 6, MASK]  # 1 edited (2 -> 5), 2 committed; prompt kept
    z[3, 6] = 5.0
    z[2, 8] = 6.0  # position 2 now proposes 8: p = e / (e + 1 + 10 e^-11) ~ 0.73 > 0.5
    assert ours.step(fb, z.clone(), states) == [False]
    assert fb.input_ids.tolist() == [1, 5, 8, 6]  # 3 committed, 2 edited (6 -> 8)
    assert ours.step(fb, z.clone(), states) == [True]  # no mask and nothing differs: done
    assert fb.input_ids.tolist() == [1, 5, 8, 6]
    # the edit budget: with max_post_edit_steps 1, one mask-free step may edit, the next ends it
    fb = batch(torch.tensor([1, 2, MASK, MASK]), torch.tensor([[True, False, False, False]]), 1)
    states = ours.init_step_state(fb)
    five, six = torch.full((4, V), -5.0), torch.full((4, V), -5.0)
    five[:, 5] = six[:, 6] = 5.0
    assert ours.step(fb, five.clone(), states) == [False]  # both masks commit, 2 -> 5 edited
    assert fb.input_ids.tolist() == [1, 5, 5, 5]
    assert ours.step(fb, six.clone(), states) == [False]  # mask-free step 1 <= 1: edits
    assert fb.input_ids.tolist() == [1, 6, 6, 6]
    assert ours.step(fb, five.clone(), states) == [True]  # step 2 > 1: done, no edit
    assert fb.input_ids.tolist() == [1, 6, 6, 6]


# ---- the seeds' rules against independent formulas ----------------------------------------------


def _oracle_stats(logits, B, blk):
    """The seeds' statistics as the library's loop takes them: MASK is never proposed (its logit
    counts as -inf; the other tokens' softmax)."""
    logits = logits.double().clone()
    logits[:, MASK] = -float("inf")
    p = torch.softmax(logits, dim=-1)
    conf, tok = p.max(dim=-1)
    H = -(p * torch.log(p + 1e-12)).sum(-1)
    return tok.view(B, blk), conf.view(B, blk), H.view(B, blk)


def _oracle(name, opts, ids, logits, B, blk, start):
    """Fast-dLLM: {argmax} | {c >= tau} (argmax over the tokens other than MASK); Streaming:
    tau_t = tau0 (1 - alpha (1 - r_mask)); d3LLM: {argmin H} | {H <= tau_H}; all among the masked
    positions after the prompt tail."""
    tok, conf, H = _oracle_stats(logits, B, blk)
    x = ids.view(B, blk).clone()
    region = torch.arange(blk)[None, :] >= start[:, None]
    cand = region & (x == MASK)
    if name == "DllmKernelsD3LLM":
        score, take = -H, H <= opts["entropy_threshold"]
    else:
        tau = torch.full((B, 1), opts["threshold"], dtype=torch.float64)
        if name == "DllmKernelsStreamingDllm":
            r_mask = cand.sum(1, keepdim=True) / region.sum(1, keepdim=True).clamp(min=1)
            tau = tau * (1 - opts["alpha"] * (1 - r_mask))
        score, take = conf, conf >= tau
    best = torch.where(cand, score, -float("inf")).argmax(dim=1)
    take = cand & (take | (torch.arange(blk)[None, :] == best[:, None]))
    return torch.where(take, tok, x).view(-1)


@pytest.mark.parametrize(
    "name, opts",
    [
        ("DllmKernelsFastDllm", {"threshold": 0.7}),
        ("DllmKernelsStreamingDllm", {"threshold": 0.9, "alpha": 0.5}),
        ("DllmKernelsD3LLM", {"entropy_threshold": 1.2}),
    ],
)
def test_seed_rules_match_their_formulas(backend, name, opts):
    g = torch.Generator().manual_seed(7)
    cls = getattr(plugin, name)
    changed = 0
    for case in range(6 if sizes(backend, 4)[0] == 16 else 4):
        blk = [4, 32][case % 2]
        max_b = sizes(backend, blk)[0]
        B = int(torch.randint(1, max_b + 1, (1,), generator=g))
        ids, pm = random_case(g, B, blk, prompt=case % 3 != 0)
        logits = torch.randn(B * blk, V, generator=g) * 3  # continuous: no decision within ulps
        algo = cls(config(blk, {**opts, "backend": backend}))
        fb = batch(ids.clone(), pm, B)
        start = pm.sum(1) if pm is not None else torch.zeros(B, dtype=torch.int64)
        done = algo.step(fb, logits.clone(), algo.init_step_state(fb))
        expect = _oracle(name, opts, ids, logits, B, blk, start)
        assert torch.equal(fb.input_ids, expect)
        masked_after = (ids.view(B, blk) == MASK) & (torch.arange(blk)[None, :] >= start[:, None])
        assert done == (~masked_after.any(1)).tolist()
        changed += int((fb.input_ids != ids).sum())
    assert changed > 0


# ---- SGLang's run loop drives our classes --------------------------------------------------------


def scripted_runner(blk, sharp=4.0):
    """The scripted model runner (tests/sglang_helpers.py); it never proposes MASK (a request
    would never finish)."""
    return ScriptedRunner(blk, V, sharp=sharp, never=MASK)


def _blocks(g, n, blk):
    return fresh_blocks(*random_case(g, n, blk, prompt=True), MASK)


PAIRS = [
    ("DllmKernelsLowConfidence", LowConfidence, {"threshold": 0.6}),
    ("DllmKernelsJointThreshold", JointThreshold, {"threshold": 0.6, "max_post_edit_steps": 3}),
]


@pytest.mark.parametrize("pair", PAIRS)
def test_sglang_sync_run_loop(backend, pair):
    ours_cls, theirs_cls = getattr(plugin, pair[0]), pair[1]
    blk, B = (8, 5) if sizes(backend, 8)[0] == 16 else (4, 2)
    g = torch.Generator().manual_seed(3)
    ids, pm = _blocks(g, B, blk)
    results = []
    for cls, opts in ((ours_cls, {"backend": backend}), (theirs_cls, {})):
        runner = scripted_runner(blk)
        fb = batch(ids.reshape(-1).clone(), pm.clone(), B)
        _, tokens, accept, states, _ = cls(config(blk, {**pair[2], **opts})).run(runner, fb)
        results.append(([t.tolist() for t in tokens], runner.forwards, accept, states))
    assert results[0] == results[1]
    assert results[0][1] > 2  # several denoising forwards


@pytest.mark.parametrize("pair", PAIRS)
def test_sglang_fdfo_run_loop(backend, pair):
    ours_cls, theirs_cls = getattr(plugin, pair[0]), pair[1]
    blk, B, n = (8, 4, 7) if sizes(backend, 8)[0] == 16 else (4, 2, 3)
    g = torch.Generator().manual_seed(5)
    blocks, pms = _blocks(g, n, blk)
    out = []
    for cls, opts in ((ours_cls, {"backend": backend}), (theirs_cls, {})):
        algo = cls(config(blk, {**pair[2], **opts}, fdfo=True))
        out.append(fdfo_rounds(algo, scripted_runner(blk), blocks, pms, B, perm_seed=1))
    assert out[0] == out[1]
    assert len(out[0]) == n


def test_r2_state_survives_fdfo_rounds(backend):
    """R2's streaks are carried in SGLang's states across FDFO rounds in reshuffled batches: the
    result equals each request decoded alone, and differs when the states are dropped."""
    blk, n, B = (8, 5, 3) if sizes(backend, 8)[0] == 16 else (6, 2, 2)
    g = torch.Generator().manual_seed(9)
    blocks, pms = _blocks(g, n, blk)
    opts = {
        "threshold": 0.99,
        "spatial_window": 0,
        "token_cluster": False,
        "temporal_steps": 2,
        "temporal_threshold": 0.3,
        "backend": backend,
    }
    algo = plugin.DllmKernelsR2Dllm(config(blk, opts, fdfo=True))
    mixed = fdfo_rounds(algo, scripted_runner(blk, sharp=1.5), blocks, pms, B=B, perm_seed=2)
    alone = {}
    for i in range(n):
        r = fdfo_rounds(algo, scripted_runner(blk, sharp=1.5), blocks[i : i + 1], pms[i : i + 1], B=1, perm_seed=0)
        alone[i] = r[0]
    assert {i: t for i, (t, _) in mixed.items()} == {i: t for i, (t, _) in alone.items()}

    class Forgetful(plugin.DllmKernelsR2Dllm):
        def run(self, model_runner, forward_batch, algo_states=None):
            return super().run(model_runner, forward_batch, None)  # drops the carried states

    forgetful = fdfo_rounds(
        Forgetful(config(blk, opts, fdfo=True)), scripted_runner(blk, sharp=1.5), blocks, pms, B=B, perm_seed=2
    )
    assert sum(r for _, r in forgetful.values()) > sum(r for _, r in mixed.values())  # streaks save rounds


def test_every_algorithm_runs_the_sync_loop(backend):
    blk, B = (8, 3) if sizes(backend, 8)[0] == 16 else (4, 1)
    g = torch.Generator().manual_seed(11)
    ids, pm = _blocks(g, B, blk)
    for cls in plugin.ALGORITHMS:
        fb = batch(ids.reshape(-1).clone(), pm, B)
        ids_obj = fb.input_ids
        _, tokens, _, _, _ = cls(config(blk, {"backend": backend})).run(scripted_runner(blk), fb)
        assert fb.input_ids is ids_obj
        assert all(MASK not in t[int(p.sum()) :].tolist() for t, p in zip(fb.input_ids.view(B, blk), pm))
        assert len(tokens) == B


# ---- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, opts, match",
    [
        ("DllmKernelsLowConfidence", {"treshold": 0.9}, "unknown option 'treshold'"),
        ("DllmKernelsLowConfidence", {"threshold": "high"}, "option threshold must be a finite number"),
        ("DllmKernelsJointThreshold", {"max_post_edit_steps": -1}, "option max_post_edit_steps must be an int"),
        ("DllmKernelsR2Dllm", {"temporal_agg": "median"}, "option temporal_agg must be one of"),
        ("DllmKernelsD3LLM", {"entropy_strict": 1}, "option entropy_strict must be true or false"),
        ("DllmKernelsFastDllm", {"backend": "cuda"}, "option backend must be one of"),
        ("DllmKernelsR2Dllm", {"spatial_window": 5}, "option spatial_window .* exceeds the block size 4"),
    ],
)
def test_bad_options(cls, opts, match):
    with pytest.raises(ValueError, match=match):
        getattr(plugin, cls)(config(4, opts))


def test_sglang_keys_are_accepted():
    plugin.DllmKernelsLowConfidence(config(4, {"block_size": 4, "capture_input_preparation": False}))


def test_unsupported_model_and_block():
    with pytest.raises(ValueError, match="mask_id must be a token id"):
        plugin.DllmKernelsLowConfidence(config(4, mask_id=-1))  # DiffusionGemma's
    with pytest.raises(ValueError, match="block_size must be an int in"):
        plugin.DllmKernelsLowConfidence(config(0))
    for cls in plugin.ALGORITHMS:  # DllmConfig.from_server_args rejects other architectures by this
        assert "DiffusionGemmaForBlockDiffusion" not in cls.supported_architectures
        assert "LLaDA2MoeModelLM" in cls.supported_architectures


def test_wrong_logits_shape():
    algo = plugin.DllmKernelsLowConfidence(config(4, {"backend": "reference"}))
    fb = batch(torch.full((8,), MASK), None, 2)
    with pytest.raises(ValueError, match=r"full_logits must have shape \[8, V\]"):
        algo.step(fb, torch.zeros(4, V), [None, None])
    fb.input_ids = torch.full((6,), MASK)
    with pytest.raises(ValueError, match=r"input_ids must have shape \[8\]"):
        algo.step(fb, torch.zeros(8, V), [None, None])


def test_ci_pins_a_supported_sglang():
    pins = (pathlib.Path(__file__).resolve().parent / "sglang-cpu.txt").read_text().split()
    (pin,) = [p for p in pins if p.startswith("sglang==")]
    plugin.check_sglang_version(pin.split("==")[1])


# ---- GPU: the step's device work replays in a CUDA graph ------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["DllmKernelsLowConfidence", "DllmKernelsJointThreshold", "DllmKernelsR2Dllm"])
def test_step_done_replays_in_a_cuda_graph(name):
    B, blk = 4, 32
    g = torch.Generator().manual_seed(0)
    ids, pm = random_case(g, B, blk, prompt=True)
    logits = (torch.randn(B * blk, V, generator=g) * 3).cuda()
    algo = getattr(plugin, name)(config(blk, {"backend": "triton"}))
    run = step_done_in_a_cuda_graph(algo, ids, pm, B, logits)
    (fb_eager, _, done_eager), (fb, _, done) = run.eager, run.replayed
    assert fb.input_ids is run.captured_ids
    assert torch.equal(fb.input_ids, fb_eager.input_ids)
    assert torch.equal(done, done_eager)
