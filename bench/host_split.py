"""A decoding step's host work, separated from the kernels' compute (CPU benchmark, batch 1 and 64).

    .venv/bin/python bench/host_split.py [--repeats 3] [--batches 1 64] [--out bench/results/host_split.json]

On a CPU, ``bench/host_step.py``'s per-step time holds the "device" work too: on the stubbed path
the references stand in for the Triton kernels, and at B = 64 their compute (the token statistics
over ``64 x Lo x V`` logits, the commit over ``64 x L`` positions) dominates the step and evicts
the caches that the host code then runs on. Here every policy runs twice on host_step's nearly
free model, stubbed path (launchers and all the loop's host code, as on a GPU):

1. ``record``: the stubbed launches and the model run and their outputs are kept;
2. ``replay`` (timed): the same ``generate`` call, in which the launches return the recorded
   outputs (``commit`` copies the recorded canvas and state in place) and the model returns a
   zero tensor of its logits' shape. Every host step runs exactly as before (same plans, shapes,
   launches, index tables; the final canvas is checked against the record), but the
   kernels' and the model's compute is gone.

Reported per step: ``host_us``: the replay's wall time minus the time inside the replayed
launches and the model (the host cost of the GPU path; the loop's own small tensor ops, which a
GPU runs asynchronously, still count on the CPU, so an upper bound); ``ops``: the operators the
host dispatches (a ``TorchDispatchMode`` count, views left out; a launch counts once, what
its launcher does is not seen), i.e. the launches a GPU step issues. Equal op counts at B = 1 and B = 64 mean that
the dispatch work does not grow with the batch.

``graph_host_us``: the host work of a step on the CUDA-graph path (``generate(cuda_graph=True)``),
where the step's device work (``StepRunner._body``: index tables, forward, statistics, commits)
is one graph replay. Capture needs CUDA, so the bucketed path (the shapes the graphs are captured
at) runs with ``_body`` recorded once and then replayed as a graph would: the canvas, the commit
state and the returned positions it left are put in place (checked against the record: same
tokens, same steps). The figure is the wall time outside ``_body`` per step: the planner, the one
plan copy, bucket selection, the read-back, the loop's bookkeeping and ``generate``'s setup spread
over the steps. The replay call itself (a few µs on a GPU) is not included and not measured.
``graph_ops``: the operators dispatched outside ``_body`` per step (they run on the host with
graphs too). One intra-op thread.

The policies are ``host_step.POLICIES``: the masked ones, the block-causal ``sdar`` and
``fast_dllm_v2`` (default and ``use_block_cache=True``) and the uniform-state ``diffusion_gemma``
(whose step also launches ``soft_embedding``, replayed like ``token_stats``, and whose runner's
``UniformRunner._body`` the graph path's clock stands in for too). ``host_step.json`` has no peer
row for the last four: their peer ratios are None ("-").
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time
from collections import Counter

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import host_step as hs  # noqa: E402  (bench/, beside this file; sets TRITON_INTERPRET)
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from dllm_kernels.decode.generate import _generate  # noqa: E402
from dllm_kernels.decode.runner import StepRunner  # noqa: E402
from dllm_kernels.decode.uniform import UniformRunner  # noqa: E402


class _OpCount(TorchDispatchMode):
    """Counts the operators dispatched while active (inside one, nothing is seen), views (which
    launch nothing) left out; none while ``paused``."""

    def __init__(self):
        super().__init__()
        self.n = Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and not self.paused:
            self.n[str(func)] += 1
        return func(*args, **(kwargs or {}))


class _BodyClock:
    """Stands in for :meth:`dllm_kernels.decode.runner.StepRunner._body` and
    :meth:`dllm_kernels.decode.uniform.UniformRunner._body` (the device work that a CUDA graph
    replays): ``record`` runs it and keeps what it changes (the canvas', the commit state's and
    a uniform runner's state's changed positions and values, the returned positions), ``replay``
    writes those positions instead of running it, touching little host memory, as a graph
    replay would (timed apart: ``inside``; an op counter is paused meanwhile), ``pass`` runs it;
    ``calls``: the steps."""

    def __init__(self):
        self.impls = {cls: cls.__dict__["_body"] for cls in (StepRunner, UniformRunner)}
        self.mode, self.tape, self.pos = "pass", [], 0
        self.inside, self.inside_cpu, self.count, self.calls = 0.0, 0.0, None, 0
        for cls, impl in self.impls.items():
            cls._body = self._wrap(impl)

    def _wrap(self, impl):
        clock = self

        def body(runner, x, state, *args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            clock.calls += 1
            if clock.count is not None:
                clock.count.paused = True
            try:
                if clock.mode == "pass":
                    return impl(runner, x, state, *args, **kwargs)
                tensors = [x] + _fields(state)
                u = getattr(runner, "u", None)  # a UniformRunner's state (renoise, scratch, soft embedding)
                if u is not None:
                    tensors += _fields(u.renoise) + _fields(u.scratch) + [u.soft]
                if clock.mode == "record":  # keep what changed: (flat positions, values) per tensor
                    before = [t.clone() for t in tensors]
                    out = impl(runner, x, state, *args, **kwargs)
                    changes = []
                    for t, b in zip(tensors, before):
                        at = (t != b).flatten().nonzero().flatten()
                        changes.append((at, t.flatten()[at]))
                    clock.tape.append((changes, None if out is None else out.clone()))
                    return out
                changes, out = clock.tape[clock.pos]
                clock.pos += 1
                for t, (at, values) in zip(tensors, changes):
                    t.view(-1)[at] = values
                return out
            finally:
                if clock.count is not None:
                    clock.count.paused = False
                clock.inside += time.perf_counter() - t0
                clock.inside_cpu += time.process_time() - c0

        return body

    def start(self, mode: str):
        self.mode, self.pos, self.inside, self.inside_cpu, self.calls = mode, 0, 0.0, 0.0, 0
        if mode == "record":
            self.tape = []

    def restore(self):
        for cls, impl in self.impls.items():
            cls._body = impl


def _fields(state) -> list[torch.Tensor]:
    """The tensors of a state dataclass (``CommitState``, ``RenoiseState``), in field order."""
    return [getattr(state, f) for f in type(state).__dataclass_fields__]


class _Replay:
    """The stubbed launchers and the model, recording their outputs or replaying them."""

    def __init__(self):
        from dllm_kernels.kernels import commit as kc, confidence as kt, soft_embedding as ks

        self.kc, self.kt, self.ks = kc, kt, ks
        self.token_stats_impl, self.commit_impl, self.soft_impl = kt.token_stats, kc.commit, ks.soft_embedding
        self.tapes: dict[str, list] = {"token_stats": [], "commit": [], "soft_embedding": []}
        self.mode, self.pos, self.inside = "record", Counter(), 0.0
        self.count: _OpCount | None = None  # a replayed launch counts as one operator
        kt.token_stats, kc.commit, ks.soft_embedding = self.token_stats, self.commit, self.soft_embedding

    def restore(self):
        self.kt.token_stats, self.kc.commit, self.ks.soft_embedding = (
            self.token_stats_impl,
            self.commit_impl,
            self.soft_impl,
        )

    def start(self, mode: str):
        self.mode, self.pos, self.inside = mode, Counter(), 0.0
        if mode == "record":
            self.tapes = {"token_stats": [], "commit": [], "soft_embedding": []}

    def _next(self, name):
        i = self.pos[name]
        self.pos[name] += 1
        if self.count is not None:  # the launch itself; what the stand-in does is not counted
            self.count.n[f"launch {name}"] += 1
            self.count.paused = True
        return self.tapes[name][i]

    def _done(self, t0):
        if self.count is not None:
            self.count.paused = False
        self.inside += time.perf_counter() - t0

    def token_stats(self, logits, *args, **kwargs):
        if self.mode == "record":
            out = self.token_stats_impl(logits, *args, **kwargs)
            self.tapes["token_stats"].append(tuple(t.clone() for t in out))
            return out
        t0 = time.perf_counter()
        out = tuple(t.clone() for t in self._next("token_stats"))
        self._done(t0)
        return out

    def soft_embedding(self, logits, *args, **kwargs):
        if self.mode == "record":
            out = self.soft_impl(logits, *args, **kwargs)
            self.tapes["soft_embedding"].append(out.clone())
            return out
        t0 = time.perf_counter()
        out = self._next("soft_embedding").clone()
        self._done(t0)
        return out

    def commit(self, x, token, prob, entropy, state, *args, **kwargs):
        # the launcher's arguments after state: rule, rows, step, mask_id, vocab_size, pinned,
        # argmax, seed, renoise_state (the renoise rule's state, updated too)
        renoise = args[8] if len(args) > 8 else kwargs.get("renoise_state")
        fields = _fields(state) + ([] if renoise is None else _fields(renoise))
        if self.mode == "record":
            n = self.commit_impl(x, token, prob, entropy, state, *args, **kwargs)
            self.tapes["commit"].append((x.clone(), [t.clone() for t in fields], n.clone()))
            return n
        t0 = time.perf_counter()
        x_after, fields_after, n = self._next("commit")
        x.copy_(x_after)
        for t, v in zip(fields, fields_after):
            t.copy_(v)
        n = n.clone()
        self._done(t0)
        return n


class _ReplayModel(hs.FreeModel):
    """host_step's model; in replay it returns zeros of its logits' shape."""

    def __init__(self, replay: _Replay, policy: str):
        super().__init__(hs.PROMPT + hs.GEN, policy=policy)
        self.replay = replay

    def __call__(self, tokens, positions, *, logits_index=None, **kw):
        if self.replay.mode == "record":
            return super().__call__(tokens, positions, logits_index=logits_index, **kw)
        t0 = time.perf_counter()
        self.calls += 1
        out = torch.zeros(*logits_index.shape, hs.V)
        self.replay.inside += time.perf_counter() - t0
        return out


def _run(model, name: str, B: int, buckets: bool):
    policy, kw = hs.POLICIES[name]
    prompt = torch.arange(B * hs.PROMPT).reshape(B, hs.PROMPT) % (hs.V - 2)
    seed = hs.gen_seed(policy)
    args = dict(temperature=0.0, seed=seed, max_nfe=10000, progress=False, buckets=buckets, capture=False)
    return lambda: _generate(
        model, prompt, policy=policy, gen_length=hs.GEN, block_length=hs.BLOCK, backend="triton", **args, **kw
    )


def _ops_per_step(run, steps, clock: _BodyClock | _Replay | None = None) -> float:
    """Operators dispatched per step by ``run()``; with ``clock``, none inside what it stands in
    for (``_body``; a replayed launch counts once)."""
    count = _OpCount()
    if clock is not None:
        clock.count = count
    with count:
        run()
    if clock is not None:
        clock.count = None
    return round(sum(count.n.values()) / steps(), 2)


def measure(replay: _Replay, clock: _BodyClock, name: str, B: int, repeats: int) -> dict:
    """One policy at batch B: the eager step's host work (launches and model replayed), and the
    host work around ``_body`` on the bucketed path, with ``_body`` replayed as a CUDA graph
    would (what a step costs the host then, less the replay call itself). Medians per step over
    ``repeats`` replays after one warm-up."""
    model = _ReplayModel(replay, hs.POLICIES[name][0])
    run = _run(model, name, B, buckets=False)
    replay.start("record")
    want = run().tokens
    host, walls = [], []
    for _ in range(repeats + 1):  # the first replay warms up
        replay.start("replay")
        model.calls = 0
        t0 = time.perf_counter()
        got = run().tokens
        wall = time.perf_counter() - t0
        if not torch.equal(got, want):
            raise RuntimeError(f"{name} B={B}: the replay diverged from the recorded run")
        walls.append(wall / model.calls)
        host.append((wall - replay.inside) / model.calls)
    replay.start("replay")
    model.calls = 0
    ops = _ops_per_step(run, lambda: model.calls, replay)
    steps = model.calls

    run = _run(hs.FreeModel(hs.PROMPT + hs.GEN, policy=hs.POLICIES[name][0]), name, B, buckets=True)
    replay.start("record")  # the launches run
    clock.start("record")
    if not torch.equal(run().tokens, want):
        raise RuntimeError(f"{name} B={B}: the bucketed path's tokens differ")
    graph, graph_cpu = [], []
    for _ in range(repeats + 1):
        clock.start("replay")
        t0, c0 = time.perf_counter(), time.process_time()
        got = run().tokens
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if not torch.equal(got, want) or clock.calls != steps:
            raise RuntimeError(f"{name} B={B}: the replayed steps diverged from the recorded run")
        graph.append((wall - clock.inside) / steps)
        graph_cpu.append((cpu - clock.inside_cpu) / steps)
    clock.start("replay")
    graph_ops = _ops_per_step(run, lambda: clock.calls, clock)
    clock.start("pass")
    med = [round(statistics.median(t[1:]) * 1e6, 1) for t in (host, walls, graph, graph_cpu)]
    return dict(
        name=name,
        B=B,
        steps=steps,
        host_us_per_step=med[0],
        replay_us_per_step=med[1],
        ops_per_step=ops,
        graph_host_us_per_step=med[2],
        graph_host_cpu_us_per_step=med[3],  # the same in this process's CPU time (less disturbed by others)
        graph_ops_per_step=graph_ops,
    )


def peer_us(path) -> dict:
    """``{policy row: the peer function's B=1 µs per step}`` from ``bench/host_step.py``'s JSON
    (its peer rows: wall time, essentially the peer's host work on the free model); {} without
    the file or its peer rows."""
    try:
        doc = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {
        r["name"]: r["us_per_step"]
        for r in doc.get("rows", [])
        if r.get("path") == "peer" and r.get("B") == 1 and "us_per_step" in r
    }


def ratios(rows: list[dict], peers: dict) -> dict:
    """Per policy: our host time at B=1 over the peer's (eager and graph path; target <= 0.5) and
    ours at B=64 over ours at B=1 (target <= 1.5)."""
    us = {(r["name"], r["B"]): r for r in rows}
    out = {}
    for name in dict.fromkeys(r["name"] for r in rows):
        one, big, peer, r = us.get((name, 1)), us.get((name, 64)), peers.get(name), {}
        for key, label in (("host_us_per_step", "eager"), ("graph_host_us_per_step", "graph")):
            if one and peer:
                r[f"{label}_B1/peer_B1"] = round(one[key] / peer, 2)
                r[f"met_{label}_B1"] = r[f"{label}_B1/peer_B1"] <= 0.5
            if one and big:
                r[f"{label}_B64/B1"] = round(big[key] / one[key], 2)
                r[f"met_{label}_B64"] = r[f"{label}_B64/B1"] <= 1.5
        if r:
            out[name] = r
    return out


def markdown(doc: dict) -> str:
    """The README's table: peer B=1 µs per step, ours (eager host work, graph path host work)
    per B, ops per step and the ratios to the targets."""
    us = {(r["name"], r["B"]): r for r in doc["rows"]}
    peers, rat = doc.get("peer_us_per_step_B1", {}), doc.get("ratios", {})
    lines = [
        "| policy | peer B=1 | eager ops/step B=1, B=64 | eager host B=1 | B=64 | eager B=1 / peer "
        "| graph ops/step B=1, B=64 | graph host B=1 | B=64 | graph B=1 / peer | graph B=64 / B=1 |",
        "|---|" + "---:|" * 10,
    ]
    for name in dict.fromkeys(r["name"] for r in doc["rows"]):
        one, big, r = us.get((name, 1), {}), us.get((name, 64), {}), rat.get(name, {})
        cells = [
            round(peers[name]) if name in peers else "-",
            f"{one.get('ops_per_step', '-')}, {big.get('ops_per_step', '-')}",
            round(one["host_us_per_step"]) if one else "-",
            round(big["host_us_per_step"]) if big else "-",
            r.get("eager_B1/peer_B1", "-"),
            f"{one.get('graph_ops_per_step', '-')}, {big.get('graph_ops_per_step', '-')}",
            round(one["graph_host_us_per_step"]) if one else "-",
            round(big["graph_host_us_per_step"]) if big else "-",
            r.get("graph_B1/peer_B1", "-"),
            r.get("graph_B64/B1", "-"),
        ]
        lines.append(f"| {name} | " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--policies", nargs="+", default=list(hs.POLICIES), choices=list(hs.POLICIES))
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "host_split.json"))
    ap.add_argument(
        "--peers-json",
        default=str(pathlib.Path(__file__).parent / "results" / "host_step.json"),
        help="bench/host_step.py's results, for the peers' B=1 figures (run it first)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    hs._stub_kernels()
    replay, clock = _Replay(), _BodyClock()
    load_before = os.getloadavg()
    peers = peer_us(args.peers_json)
    rows = []
    try:
        for name in args.policies:
            for B in args.batches:
                r = measure(replay, clock, name, B, args.repeats)
                rows.append(r)
                print(
                    f"{name:16s} B={B:3d} steps={r['steps']:4d} host {r['host_us_per_step']:8.1f} us/step "
                    f"(replay {r['replay_us_per_step']:8.1f}) ops/step {r['ops_per_step']:6.2f}; graph path: host "
                    f"{r['graph_host_us_per_step']:7.1f} us/step (CPU time {r['graph_host_cpu_us_per_step']:7.1f}), "
                    f"ops/step {r['graph_ops_per_step']:6.2f}",
                    flush=True,
                )
    finally:
        replay.restore()
        clock.restore()
    meta = dict(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        repeats=args.repeats,
        path="stubbed",
        cpu_count=os.cpu_count(),
        load_average=[round(v, 2) for v in (*load_before[:1], *os.getloadavg()[:1])],  # 1-min, before / after
        # each row's generate policy and keywords; the block-causal and uniform rows decode
        # host_step's model as a block-diffusion / uniform-state one (host_step.model_config)
        policies={name: dict(policy=hs.POLICIES[name][0], kw=hs.POLICIES[name][1]) for name in args.policies},
        no_peer_row=[name for name in args.policies if name not in peers],
    )
    meta["peers_from"] = args.peers_json if peers else f"none ({args.peers_json}: no peer rows)"
    doc = dict(meta=meta, rows=rows, peer_us_per_step_B1=peers, ratios=ratios(rows, peers))
    pathlib.Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
