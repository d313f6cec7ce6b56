"""Shared pieces of the SGLang test files (tests/test_sglang*.py): importing SGLang, and the
fields of its ForwardBatch, model runner and first-done-first-out scheduler that they drive.

Whether a missing SGLang fails or skips a test file: ``DLLM_KERNELS_REQUIRE_SGLANG=1`` / ``0``
decides; unset, it is required when ``CI=true`` on a machine without CUDA (the CPU CI, where
bootstrap installs it from tests/sglang-cpu.txt) and skipped elsewhere.
"""

import contextlib
import os
import pathlib
import sys
from types import SimpleNamespace

import pytest
import torch


def sglang_required() -> bool:
    flag = os.environ.get("DLLM_KERNELS_REQUIRE_SGLANG")
    if flag is not None:
        return flag not in ("", "0")
    return os.environ.get("CI") == "true" and not torch.cuda.is_available()


@contextlib.contextmanager
def sglang_imports():
    """Wrap a test file's SGLang imports: the inert torchvision stub first; a failed import fails
    the file where SGLang is required and skips it elsewhere; the environment is restored after
    (importing sglang points Triton's and others' caches at its own folders: undo for the other
    test files)."""
    stubs = str(pathlib.Path(__file__).resolve().parent / "stubs")
    if stubs not in sys.path:
        sys.path.insert(0, stubs)
    import torchvision_stub

    torchvision_stub.install()
    environ = dict(os.environ)
    try:
        yield
    except ImportError as exc:
        if sglang_required():
            raise ImportError(
                f"sglang is required here (CI on a CPU machine; see tests/sglang-cpu.txt): {exc}"
            ) from exc
        pytest.skip(f"sglang is not installed ({exc}); CI installs it", allow_module_level=True)
    finally:
        os.environ.clear()
        os.environ.update(environ)


def batch(input_ids, prompt_mask, B):
    """The fields of SGLang's ForwardBatch that the algorithms read."""
    return SimpleNamespace(batch_size=B, input_ids=input_ids, dllm_prompt_mask=prompt_mask)


def fresh_blocks(ids, pm, mask_id):
    """A fresh request's blocks from a random case (``ids`` flat, ``pm`` [n, blk]): the prompt
    tail, then MASKs; prompt positions holding MASK get token 1."""
    ids = ids.view(pm.shape)
    ids[~pm] = mask_id
    ids[pm & (ids == mask_id)] = 1
    return ids, pm


class ScriptedRunner:
    """``model_runner.forward``: logits that are a fixed function of each position and its left
    neighbour's token (so a request's decisions do not depend on its batch-mates), counting
    forwards. ``never`` (a token id or None): a token the model never proposes."""

    def __init__(self, blk, V, *, seed=0, sharp, never=None):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(blk, V, V, generator=g) * sharp  # [position, token at left, vocab]
        self.bias = torch.randn(blk, V, generator=g) * sharp
        if never is not None:
            self.bias[:, never] = -50.0
        self.blk, self.V = blk, V
        self.forwards = 0

    def forward(self, forward_batch, pp_proxy_tensors=None):
        self.forwards += 1
        x = forward_batch.input_ids.view(-1, self.blk)
        left = torch.cat([x[:, :1], x[:, :-1]], dim=1)  # [B, blk]
        logits = self.bias[None] + self.table[torch.arange(self.blk)[None, :], left]  # [B, blk, V]
        return SimpleNamespace(
            logits_output=SimpleNamespace(full_logits=logits.reshape(-1, self.V).float()), can_run_graph=False
        )


def fdfo_rounds(algo, runner, blocks, pms, B, perm_seed):
    """Drive SGLang's FDFO ``run`` like its scheduler: each round a batch of up to B unfinished
    requests (shuffled, new ones joining as others finish) carrying their states; returns every
    request's final tokens and the round it finished in."""
    g = torch.Generator().manual_seed(perm_seed)
    n = blocks.shape[0]
    canvas = {i: blocks[i].clone() for i in range(n)}
    states = {i: None for i in range(n)}
    finished, waiting, rounds = {}, list(range(n)), 0
    while waiting and rounds < 200:
        rounds += 1
        live = waiting[:B]
        live = [live[j] for j in torch.randperm(len(live), generator=g).tolist()]
        fb = batch(torch.cat([canvas[i] for i in live]), torch.stack([pms[i] for i in live]), len(live))
        _, tokens, accept, states_out, _ = algo.run(runner, fb, [states[i] for i in live])
        for j, i in enumerate(live):
            canvas[i] = torch.tensor(tokens[j])
            states[i] = states_out[j]
            if accept[j]:
                assert states_out[j] is None  # SGLang drops a finished request's state
                finished[i] = (tokens[j], rounds)
                waiting.remove(i)
    return finished


def server_args(algorithm, config=None, *, model_path):
    """The fields of SGLang's ServerArgs that ``DllmConfig.from_server_args`` reads: an algorithm
    (and its config file) for a model path; no FDFO, no revision, no cap on running requests."""
    defaults = dict(dllm_fdfo=False, revision=None, max_running_requests=None)
    return SimpleNamespace(dllm_algorithm=algorithm, dllm_algorithm_config=config, model_path=model_path, **defaults)


def step_done_in_a_cuda_graph(algo, ids, pm, B, logits):
    """``algo.step_done`` on fresh GPU copies of the canvas (``ids`` flat, ``pm``): once eagerly,
    once to warm up (compiles the kernels, makes the constants), then captured in a CUDA graph and
    replayed. Returns ``eager`` and ``replayed`` as (forward batch, states, done) and
    ``captured_ids``, the replayed batch's ``input_ids`` tensor at capture."""

    def fresh():
        fb = batch(ids.clone().cuda(), pm.cuda(), B)
        return fb, algo.init_step_state(fb)

    fb_eager, st_eager = fresh()
    done_eager = algo.step_done(fb_eager, logits.clone(), st_eager).clone()
    fb_warm, st_warm = fresh()
    algo.step_done(fb_warm, logits.clone(), st_warm)
    fb, st = fresh()
    static_logits = logits.clone()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        done = algo.step_done(fb, static_logits, st)
    captured_ids = fb.input_ids
    graph.replay()
    torch.cuda.synchronize()
    return SimpleNamespace(eager=(fb_eager, st_eager, done_eager), replayed=(fb, st, done), captured_ids=captured_ids)
