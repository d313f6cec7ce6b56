"""``DllmKernelsJointThresholdInDel`` (LLaDA2.2 InDel) against SGLang 0.5.23's ``JointThresholdInDel``,
and the ``block_edit`` op (kernel vs reference, hand-worked edits).

SGLang is required as in tests/test_sglang.py: ``DLLM_KERNELS_REQUIRE_SGLANG=1`` / ``0`` decides;
unset, a missing SGLang fails the run when ``CI=true`` on a machine without CUDA and skips
elsewhere. What runs: step-by-step parity on random batches (tokens, ``is_orig_mask`` markers,
done flags, post-edit and update counts, finished flags; logits with ties, tied rows and boosted
MASK / DELETE / SPLIT proposals, so that deletions, splits, the final cleanup and the anti-loop
guard all occur, counted on SGLang's side), on both backends (Triton under the interpreter on
small batches); SGLang's own ``run`` loop, synchronous and first-done-first-out, driving both
classes through a scripted model runner; hand-worked DELETE / SPLIT cases; errors.
"""

import functools
from types import SimpleNamespace

import pytest
import torch
from sglang_helpers import (
    ScriptedRunner,
    batch,
    fdfo_rounds,
    fresh_blocks,
    server_args,
    sglang_imports,
    step_done_in_a_cuda_graph,
)

from dllm_kernels.block_edit import block_edit

with sglang_imports():
    from sglang.srt.dllm.algorithm import algo_name_to_cls, get_algorithm_cls
    from sglang.srt.dllm.algorithm.joint_threshold_indel import JointThresholdInDel
    from sglang.srt.plugins import load_plugins

# import_algorithms() swallows import errors: an empty registry would make every test vacuous
assert "JointThresholdInDel" in algo_name_to_cls, sorted(algo_name_to_cls)

from dllm_kernels.integrations import sglang as plugin  # noqa: E402

V, MASK, DEL, SPL = 12, 7, 9, 10
OURS = plugin.DllmKernelsJointThresholdInDel


@pytest.fixture(params=["triton", "reference"])
def backend(request):
    return request.param


def interpreted(backend) -> bool:
    return backend == "triton" and not torch.cuda.is_available()


def config(blk, algorithm_config=None, *, fdfo=False, delete=DEL, split=SPL):
    return SimpleNamespace(
        block_size=blk,
        mask_id=MASK,
        algorithm_config=dict(algorithm_config or {}),
        first_done_first_out_mode=fdfo,
        delete_token_id=delete,
        split_token_id=split,
    )


class Counting(JointThresholdInDel):
    """SGLang's class, counting what its steps did: DELETE and SPLIT tokens applied, and steps
    whose input block had been seen before (the anti-loop guard's trigger)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.counts = {"delete": 0, "split": 0, "repeat": 0, "cleanup_done_later": 0}

    def _apply_edit_operations(self, block_tokens, old_block_tokens, is_orig_mask, prompt_len):
        gen = block_tokens[prompt_len:]
        self.counts["delete"] += gen.count(self.delete_token_id)
        self.counts["split"] += gen.count(self.split_token_id)
        return super()._apply_edit_operations(block_tokens, old_block_tokens, is_orig_mask, prompt_len)

    def step(self, forward_batch, full_logits, states):
        blocks = forward_batch.input_ids.view(forward_batch.batch_size, self.block_size).tolist()
        for s, b in zip(states, blocks):
            self.counts["repeat"] += (not s["finished"]) and tuple(b) in s["seen_input_keys"]
        done = super().step(forward_batch, full_logits, states)
        self.counts["cleanup_done_later"] += sum(s["finished"] and not d for s, d in zip(states, done))
        return done


def random_case(g, B, blk, *, prompt):
    ids = torch.randint(0, V, (B, blk), generator=g)
    ids[(ids == MASK) | (ids == DEL) | (ids == SPL)] = 0
    ids[torch.rand(B, blk, generator=g) < torch.rand(B, 1, generator=g) * 1.2] = MASK
    pm = None
    if prompt:
        plen = torch.randint(0, blk + 1, (B,), generator=g)
        pm = torch.arange(blk)[None, :] < plen[:, None]
    return ids.reshape(-1), pm


def random_logits(g, N, n):
    """Rounded logits (ties inside rows), duplicated rows (ties across positions) and, at a
    third of the rows, a boost of MASK, DELETE or SPLIT (by step)."""
    z = torch.round(torch.randn(N, V, generator=g) * [0.5, 2.0, 6.0][n % 3] * 2) / 2
    dup = torch.rand(N, generator=g) < 0.3
    z[dup] = z[torch.randint(0, N, (N,), generator=g)[dup]]
    boost = torch.rand(N, generator=g) < 0.3
    z[boost, [DEL, SPL, MASK][n % 3]] += 3.0
    return z.float()


def assert_same_state(ours_states, theirs_states, where):
    for i, (o, s) in enumerate(zip(ours_states, theirs_states)):
        got = (o.row("post_edit_steps").item(), o.row("num_update_steps").item(), o.row("finished").item())
        assert got == (s["post_edit_steps"], s["num_update_steps"], s["finished"]), (where, i)
        assert torch.equal(o.row("is_orig_mask"), s["is_orig_mask"].bool()), (where, i)


def drive(ours, theirs, ids, pm, g, steps, device="cpu"):
    B = ids.numel() // ours.block_size
    ids, pm = ids.to(device), None if pm is None else pm.to(device)
    fb_o, fb_t = batch(ids.clone(), pm, B), batch(ids.clone(), pm, B)
    s_o, s_t = ours.init_step_state(fb_o), theirs.init_step_state(fb_t)
    ids_obj = fb_o.input_ids
    for n in range(steps):
        logits = random_logits(g, B * ours.block_size, n).to(device)
        d_t = theirs.step(fb_t, logits.clone(), s_t)
        d_o = ours.step(fb_o, logits.clone(), s_o)
        assert fb_o.input_ids is ids_obj  # written in place
        assert torch.equal(fb_o.input_ids, fb_t.input_ids), f"step {n}"
        assert d_o == d_t, f"step {n}"
        assert_same_state(s_o, s_t, f"step {n}")
        if all(d_t):
            return n + 1
    return steps


# ---- parity with SGLang's class ---------------------------------------------------------------


@pytest.mark.parametrize("blk", [4, 8, 32])
def test_parity_on_random_batches(backend, blk):
    g = torch.Generator().manual_seed(blk)
    small = interpreted(backend)
    if small and blk == 32:
        pytest.skip("the reference covers block 32; the interpreter runs blocks 4 and 8")
    cases, max_b = (3, 2) if small else (60, 6)
    counts, steps = {}, 0
    for case in range(cases):
        B = int(torch.randint(1, max_b + 1, (1,), generator=g))
        ids, pm = random_case(g, B, blk, prompt=case % 2 == 1)
        opts = {
            "threshold": [0.5, 0.9, 0.2][case % 3],
            "edit_threshold": [0.0, 0.5, 0.3][case % 3],
            "max_post_edit_steps": [2, 0, 16, 1][case % 4],
        }
        ours = OURS(config(blk, {**opts, "backend": backend}))
        theirs = Counting(config(blk, opts))
        steps += drive(ours, theirs, ids, pm, g, steps=4 if small else ours.max_steps(blk))
        counts = {k: counts.get(k, 0) + v for k, v in theirs.counts.items()}
    assert steps > cases
    if not small:  # the cases exercise every branch
        assert all(v > 0 for v in counts.values()), counts


# ---- SGLang's run loop drives both classes -------------------------------------------------------


def scripted_runner(blk, seed):
    """The scripted model runner (tests/sglang_helpers.py): DELETE and SPLIT are likely
    proposals at some positions."""
    return ScriptedRunner(blk, V, seed=seed, sharp=3.0)


def _blocks(g, n, blk):
    return fresh_blocks(*random_case(g, n, blk, prompt=True), MASK)


def test_sglang_sync_run_loop(backend):
    blk, B = (4, 2) if interpreted(backend) else (8, 6)
    g = torch.Generator().manual_seed(3)
    ids, pm = _blocks(g, B, blk)
    opts = {"threshold": 0.6, "max_post_edit_steps": 3}
    results, counts = [], None
    for seed in range(1 if interpreted(backend) else 4):
        for cls, extra in ((OURS, {"backend": backend}), (Counting, {})):
            runner = scripted_runner(blk, seed=seed)
            fb = batch(ids.reshape(-1).clone(), pm.clone(), B)
            algo = cls(config(blk, {**opts, **extra}))
            _, tokens, accept, states, _ = algo.run(runner, fb)
            results.append(([t.tolist() for t in tokens], runner.forwards, accept, states))
            if cls is Counting:
                counts = {k: (counts or {}).get(k, 0) + v for k, v in algo.counts.items()}
        assert results[-2] == results[-1], seed
        assert results[-1][1] > 2
    if not interpreted(backend):
        assert counts["delete"] + counts["split"] > 0, counts


def test_sglang_fdfo_run_loop(backend):
    blk, B, n = (4, 2, 3) if interpreted(backend) else (8, 3, 7)
    g = torch.Generator().manual_seed(5)
    blocks, pms = _blocks(g, n, blk)
    opts = {"threshold": 0.6, "max_post_edit_steps": 2}
    out = []
    for cls, extra in ((OURS, {"backend": backend}), (JointThresholdInDel, {})):
        algo = cls(config(blk, {**opts, **extra}, fdfo=True))
        out.append(fdfo_rounds(algo, scripted_runner(blk, seed=1), blocks, pms, B, perm_seed=1))
    assert out[0] == out[1]
    assert len(out[0]) == n


def test_entry_point_registers_the_class():
    load_plugins()
    assert get_algorithm_cls("DllmKernelsJointThresholdInDel") is OURS
    assert OURS in plugin.ALGORITHMS


# ---- hand-worked steps -----------------------------------------------------------------------------


def onehot(tokens, sharp=8.0):
    """Logits whose argmax at position i is ``tokens[i]`` with probability ~0.997."""
    z = torch.zeros(len(tokens), V)
    z[torch.arange(len(tokens)), torch.tensor(tokens)] = sharp
    return z


def _step(algo, fb, states, tokens):
    return algo.step(fb, onehot(tokens), states)


def test_delete_split_by_hand():
    # block 6, prompt tail [1]; generated [2, 3, 4, M, M]
    algo = OURS(config(6, {"threshold": 0.9, "edit_threshold": 0.5, "backend": "reference"}))
    fb = batch(torch.tensor([1, 2, 3, 4, MASK, MASK]), torch.tensor([[True] + [False] * 5]), 1)
    st = algo.init_step_state(fb)
    assert st[0].row("is_orig_mask").tolist() == [False, False, False, False, True, True]
    # one step: both original masks commit (5, 6), 3 -> DELETE and 4 -> SPLIT are edits (p > 0.5);
    # [1] [2] [] [MASK, 4] [5] [6]: the block keeps its 6 positions
    assert _step(algo, fb, st, [1, 2, DEL, SPL, 5, 6]) == [False]
    assert fb.input_ids.tolist() == [1, 2, MASK, 4, 5, 6]
    # markers move with their tokens: the created MASK is not original; 5 and 6 were original masks
    assert st[0].row("is_orig_mask").tolist() == [False, False, False, False, True, True]
    assert st[0].row("post_edit_steps").item() == 0
    # no original mask left: a post-edit step, in which every mask (the created one) transfers
    assert _step(algo, fb, st, [1, 2, 0, 4, 5, 6]) == [False]
    assert fb.input_ids.tolist() == [1, 2, 0, 4, 5, 6]
    assert st[0].row("post_edit_steps").item() == 1


def test_delete_at_block_end_and_several_in_one_step():
    algo = OURS(config(5, {"threshold": 0.9, "edit_threshold": 0.5, "backend": "reference"}))
    fb = batch(torch.tensor([1, 2, 3, 4, 5]), None, 1)  # no mask: the prompt is the whole block...
    fb.dllm_prompt_mask = torch.tensor([[True, False, False, False, False]])  # ...unless SGLang says so
    st = algo.init_step_state(fb)
    assert _step(algo, fb, st, [1, 2, 3, 4, DEL]) == [False]  # delete at the end: pad with MASK
    assert fb.input_ids.tolist() == [1, 2, 3, 4, MASK]
    assert st[0].row("is_orig_mask").tolist() == [False] * 5  # a created MASK
    fb = batch(torch.tensor([1, 2, 3, 4, 5]), torch.tensor([[True, False, False, False, False]]), 1)
    st = algo.init_step_state(fb)
    assert _step(algo, fb, st, [1, DEL, SPL, DEL, SPL]) == [False]  # several in one step
    assert fb.input_ids.tolist() == [1, MASK, 3, MASK, 5]


def test_split_at_last_position_drops_the_old_token():
    algo = OURS(config(4, {"threshold": 0.9, "edit_threshold": 0.5, "backend": "reference"}))
    fb = batch(torch.tensor([1, 2, 3, 4]), torch.tensor([[True, False, False, False]]), 1)
    st = algo.init_step_state(fb)
    assert _step(algo, fb, st, [1, 2, 3, SPL]) == [False]
    assert fb.input_ids.tolist() == [1, 2, 3, MASK]  # [M, 4] truncated to M
    fb = batch(torch.tensor([1, 2, 3, 4]), torch.tensor([[True, False, False, False]]), 1)
    st = algo.init_step_state(fb)
    assert _step(algo, fb, st, [1, SPL, 3, 4]) == [False]
    assert fb.input_ids.tolist() == [1, MASK, 2, 3]  # 4 falls off the end


# ---- block_edit: kernel vs reference, edges -------------------------------------------------------


def test_block_edit_by_hand():
    x = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    old = x + 10
    marker = torch.tensor([[1, 0, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1]]).bool()
    delete = torch.tensor([[0, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    split = torch.tensor([[0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 1]]).bool()  # delete wins where both
    for backend in ("reference", "triton"):
        tokens, flags = block_edit(x, old, marker, delete, split, mask_id=MASK, backend=backend)
        assert tokens.tolist() == [[1, MASK, 13, 4, 5, MASK], [MASK] * 6]
        assert flags.tolist() == [[True, False, True, False, True, False], [False] * 6]


@pytest.mark.parametrize("L", [1, 4, 31, 32, 64, 200])
def test_block_edit_kernel_matches_reference(L):
    g = torch.Generator().manual_seed(L)
    B = 5
    x = torch.randint(0, 1000, (B, L), generator=g)
    old = torch.randint(0, 1000, (B, L), generator=g)
    marker = torch.rand(B, L, generator=g) < 0.5
    rate = torch.tensor([0.0, 0.2, 0.5, 0.9, 0.3])[:, None]
    delete = torch.rand(B, L, generator=g) < rate
    split = torch.rand(B, L, generator=g) < rate.flip(0)
    ref = block_edit(x, old, marker, delete, split, mask_id=MASK, backend="reference")
    got = block_edit(x, old, marker, delete, split, mask_id=MASK, backend="triton")
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_block_edit_bad_input():
    x = torch.zeros(2, 4, dtype=torch.int64)
    b = torch.zeros(2, 4, dtype=torch.bool)
    with pytest.raises(TypeError, match="block_edit: marker must have dtype bool"):
        block_edit(x, x, x, b, b, mask_id=MASK)
    with pytest.raises(ValueError, match="block_edit: old must have shape"):
        block_edit(x, x[:, :3], b, b, b, mask_id=MASK)
    with pytest.raises(ValueError, match="block_edit: mask_id must be an int"):
        block_edit(x, x, b, b, b, mask_id=-1)


# ---- options and errors -------------------------------------------------------------------------------


def test_options_are_sglangs():
    assert list(OURS.OPTIONS) == ["threshold", "edit_threshold", "max_post_edit_steps", "backend"]
    ours, theirs = OURS(config(8)), JointThresholdInDel(config(8))
    for name in ("threshold", "edit_threshold", "max_post_edit_steps", "max_regular_update_steps"):
        assert getattr(ours, name, ours.options.get(name)) == getattr(theirs, name), name
    assert ours.max_steps(8) == theirs.max_steps(8)


@pytest.mark.parametrize("missing", [{"delete": None}, {"split": None}])
def test_missing_token_ids_fail_as_sglangs(missing):
    with pytest.raises(RuntimeError, match="requires delete_token_id and split_token_id") as theirs:
        JointThresholdInDel(config(4, **missing))
    with pytest.raises(RuntimeError) as ours:
        OURS(config(4, **missing))
    assert str(ours.value) == str(theirs.value)


def test_bad_options_and_ids():
    with pytest.raises(ValueError, match="option max_post_edit_steps must be an int"):
        OURS(config(4, {"max_post_edit_steps": -1}))
    with pytest.raises(ValueError, match="unknown option 'penalty_lambda'"):
        OURS(config(4, {"penalty_lambda": 0.5}))
    with pytest.raises(ValueError, match="must be distinct"):
        OURS(config(4, delete=MASK))
    algo = OURS(config(4, delete=V + 3, split=SPL))
    fb = batch(torch.full((4,), MASK), None, 1)
    with pytest.raises(ValueError, match="must be < the logits' vocabulary 12"):
        algo.step(fb, torch.zeros(4, V), algo.init_step_state(fb))


# ---- the token ids reach the class through SGLang's DllmConfig ----------------------------------------


@pytest.fixture
def fake_checkpoint(monkeypatch):
    """``DllmConfig.from_server_args`` with a LLaDA2 checkpoint's config (no files, no GPU):
    ``ModelConfig.from_server_args`` and ``resolving_view`` replaced where SGLang and the hook
    look them up; returns the hf_config to edit and the server_args maker."""
    import sglang.srt.arg_groups.overrides as overrides
    import sglang.srt.configs.model_config as model_config
    import sglang.srt.dllm.config as dllm_config

    hf = SimpleNamespace(architectures=["LLaDA2MoeModelLM"], delete_token_id=156930, split_token_id=156931)
    fake = SimpleNamespace(from_server_args=lambda *a, **k: SimpleNamespace(hf_config=hf, vocab_size=157184))
    for module in (dllm_config, model_config):
        monkeypatch.setattr(module, "ModelConfig", fake)
    for module in (dllm_config, overrides):
        monkeypatch.setattr(module, "resolving_view", lambda server_args: server_args)

    return hf, functools.partial(server_args, model_path="inclusionAI/LLaDA2.2-flash")


def test_token_ids_come_from_the_checkpoint(fake_checkpoint):
    from sglang.srt.dllm.config import DllmConfig
    from sglang.srt.plugins.hook_registry import HookRegistry

    hf, server_args = fake_checkpoint
    load_plugins()  # registers and applies the hook
    assert any(h is plugin.indel_token_ids for _, h, _ in HookRegistry._hooks[plugin.INDEL_CONFIG_TARGET])
    cfg = DllmConfig.from_server_args(server_args("DllmKernelsJointThresholdInDel"))
    assert (cfg.delete_token_id, cfg.split_token_id, cfg.block_size, cfg.mask_id) == (156930, 156931, 32, 156895)
    algo = OURS(cfg)
    assert (algo.delete_token_id, algo.split_token_id) == (156930, 156931)
    theirs = DllmConfig.from_server_args(server_args("JointThresholdInDel"))  # SGLang's own path, unchanged
    assert (theirs.delete_token_id, theirs.split_token_id) == (156930, 156931)
    other = DllmConfig.from_server_args(server_args("DllmKernelsJointThreshold"))
    assert (other.delete_token_id, other.split_token_id) == (None, None)
    del hf.split_token_id
    with pytest.raises(RuntimeError, match="must declare both delete_token_id and split_token_id"):
        DllmConfig.from_server_args(server_args("DllmKernelsJointThresholdInDel"))
    hf.split_token_id = 157184
    with pytest.raises(ValueError, match=r"split_token_id must be within the model vocabulary \[0, 157184\)"):
        DllmConfig.from_server_args(server_args("DllmKernelsJointThresholdInDel"))


# ---- GPU: both classes on CUDA tensors (SGLang's torch.topk there), and CUDA-graph replay -----------


@pytest.mark.gpu
@pytest.mark.parametrize("blk", [4, 32])
def test_parity_on_cuda(blk):
    g = torch.Generator().manual_seed(50 + blk)
    for case in range(20):
        B = int(torch.randint(1, 9, (1,), generator=g))
        ids, pm = random_case(g, B, blk, prompt=case % 2 == 1)
        opts = {"threshold": [0.5, 0.9][case % 2], "max_post_edit_steps": [2, 0, 16][case % 3]}
        ours = OURS(config(blk, {**opts, "backend": "triton"}))
        drive(ours, JointThresholdInDel(config(blk, opts)), ids, pm, g, ours.max_steps(blk), device="cuda")


@pytest.mark.gpu
def test_step_done_replays_in_a_cuda_graph():
    B, blk = 4, 32
    g = torch.Generator().manual_seed(0)
    ids, pm = random_case(g, B, blk, prompt=True)
    logits = random_logits(g, B * blk, 0).cuda()
    algo = OURS(config(blk, {"backend": "triton"}))
    run = step_done_in_a_cuda_graph(algo, ids, pm, B, logits)
    (fb_eager, st_eager, done_eager), (fb, st, done) = run.eager, run.replayed
    assert torch.equal(fb.input_ids, fb_eager.input_ids)
    assert torch.equal(done, done_eager)
    assert torch.equal(st[0].tensors["is_orig_mask"], st_eager[0].tensors["is_orig_mask"])
