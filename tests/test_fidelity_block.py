"""The recorded block-diffusion peers (Fast-dLLM v2 ``batch_sample``, SDAR
``block_diffusion_generate``): the JSON written by ``tests/fidelity/run_block_peers.py``.

Here: the record's self-consistency (each decoder's rules, read off the recorded commit steps),
the checkpoints the writer reproduces (sha256), and our model against the peers' model check.
The comparison with ``dllm_kernels.generate`` uses :func:`recorded_calls` and
:func:`recorded_checkpoint` below. ``DLLM_BLOCK_PEERS`` + ``DLLM_BLOCK_PEERS_PYTHON`` (the peer
checkouts and their venv, see tests/fidelity/README.md) re-run the peers and compare with the
record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

DATA_PATH = pathlib.Path(__file__).parent / "fidelity" / "data" / "block_tiny_peers.json"
DATA = json.loads(DATA_PATH.read_text())
MASK = {"fast_dllm_v2": 151665, "sdar": 151669}
PAD = 151643  # Fast-dLLM v2's pad (the tokenizer's <|endoftext|>)
FORMAT_OF_PEER = {"Fast-dLLM": "fast_dllm_v2", "SDAR": "sdar"}


@dataclasses.dataclass(frozen=True)
class RecordedCall:
    """One call of a peer decoder: ``prompts`` (token ids, one per batch row; a ragged batch
    when ``batched``), the call's ``kwargs`` as passed (block sizes, threshold, strategy, mask
    and stop ids), and per row the record: ``tokens`` (everything after the row's prompt, as
    returned), ``commit_step`` (per such position, the 1-based forward whose logits committed
    it; -1: never), ``forwards`` (the call's model forwards)."""

    run: str
    fmt: str
    peer: str
    kwargs: dict
    batched: bool
    prompts: list
    rows: list


def recorded_calls(fmt: str | None = None) -> list[RecordedCall]:
    """Every recorded call (of checkpoint format ``fmt``: ``"fast_dllm_v2"`` or ``"sdar"``;
    None: all): one per prompt for the batch-1 runs, one for each ragged-batch run."""
    prompts = [p["ids"] for p in DATA["prompts"]]
    out = []
    for name, run in sorted(DATA["runs"].items()):
        f = FORMAT_OF_PEER[run["peer"]]
        if fmt is not None and f != fmt:
            continue
        rows = run["per_prompt"]
        groups = [list(range(len(prompts)))] if run["batched"] else [[i] for i in range(len(prompts))]
        for g in groups:
            out.append(
                RecordedCall(
                    name, f, run["peer"], run["kwargs"], run["batched"], [prompts[i] for i in g], [rows[i] for i in g]
                )
            )
    return out


def recorded_checkpoint(fmt: str, path) -> pathlib.Path:
    """Write the recorded tiny checkpoint of ``fmt`` to ``path`` and check every file's sha256."""
    from dllm_kernels.models import write_tiny_checkpoint

    rec = DATA["checkpoints"][fmt]
    path = pathlib.Path(path)
    write_tiny_checkpoint(path, rec["model_type"], **rec["kwargs"])
    got = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}
    assert got == rec["sha256"], f"the {fmt} checkpoint differs from the recorded one"
    return path


@pytest.fixture(scope="module")
def block_checkpoints(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Both recorded checkpoints, written once per module (sha256-checked)."""
    root = tmp_path_factory.mktemp("block_peers")
    return {fmt: recorded_checkpoint(fmt, root / fmt) for fmt in DATA["checkpoints"]}


# ------------------------------------------------------------------------------------------------
# the record


def _commits_per_forward(row, forwards):
    n = [0] * (forwards + 1)
    for s in row["commit_step"]:
        if s > 0:
            n[s] += 1
    return n


def test_record_covers_both_peers_and_every_prompt():
    assert set(DATA["checkpoints"]) == {"fast_dllm_v2", "sdar"}
    assert {r["peer"] for r in DATA["runs"].values()} == {"Fast-dLLM", "SDAR"}
    assert any(r["batched"] for r in DATA["runs"].values())
    for name, run in DATA["runs"].items():
        assert len(run["per_prompt"]) == len(DATA["prompts"]), name
    for peer in DATA["peers"].values():
        assert peer["commit"] is not None and peer["commit"].startswith(peer["pinned"])


def test_prompts_are_the_tokenizers_encoding(block_checkpoints):
    from dllm_kernels.models import load_tokenizer

    for path in block_checkpoints.values():
        tok = load_tokenizer(path)
        assert [tok.encode(p["text"]) for p in DATA["prompts"]] == [p["ids"] for p in DATA["prompts"]]


def test_stop_runs_stop():
    """The ``*_stop*`` runs pass a stop id that the model commits (for some prompts); the other
    runs never commit one."""
    for name, run in DATA["runs"].items():
        kw = run["kwargs"]
        stops = [kw["stop_token"]] if "stop_token" in kw else kw["stopping_criteria_idx"]
        hit = [any(t in stops for t in row["tokens"]) for row in run["per_prompt"]]
        assert any(hit) == ("stop" in name), name


@pytest.mark.parametrize("call", recorded_calls(), ids=lambda c: f"{c.run}-{len(c.prompts[0])}")
def test_rows_are_self_consistent(call):
    mask = MASK[call.fmt]
    for row in call.rows:
        assert row["canvas_tracked"] and row["rewrites"] == 0
        assert row["padded"] == 0 or call.fmt == "fast_dllm_v2"
        assert row["nfe"] is None  # neither decoder returns one: the hook's count is the NFE
        assert len(row["tokens"]) == len(row["commit_step"])
        assert row["forwards"] == call.rows[0]["forwards"]
        for t, s in zip(row["tokens"], row["commit_step"]):
            assert (t == mask) == (s == -1)
            assert -1 <= s <= row["forwards"] and s != 0
    kinds = call.rows[0]["forward_kinds"]
    assert len(kinds) == call.rows[0]["forwards"]


@pytest.mark.parametrize("call", recorded_calls("fast_dllm_v2"), ids=lambda c: f"{c.run}-{len(c.prompts[0])}")
def test_fast_dllm_v2_rules(call):
    """Read off the record: the canvas ends at ``(max_new_tokens // 32 + max(seq_len) // 32) *
    32`` plus the next block's inherited first token, unless the row committed its stop token:
    then it ends with its block (+ a pad if the batch ran the update forward), padded after the
    first stop; sub-blocks of 8 are committed strictly in order; every denoising forward
    commits at least one position of the row that still has masks (all rows, batch 1), an
    update forward at most one (the inherited token); at threshold 1 exactly one."""
    kw = call.kwargs
    bs, sbs = kw["block_size"], kw["small_block_size"]
    n_blocks = kw["max_new_tokens"] // bs + max(len(p) for p in call.prompts) // bs
    kinds = call.rows[0]["forward_kinds"]
    stopped = 0
    for prompt, row in zip(call.prompts, call.rows):
        assert MASK[call.fmt] not in row["tokens"]  # every block it reached completes
        stop = kw["stop_token"]
        if stop in row["tokens"]:
            stopped += 1
            end = len(prompt) + len(row["tokens"])
            assert end % bs in (0, 1) and end <= n_blocks * bs + 1
            first = row["tokens"].index(stop)
            assert all(t == PAD for t in row["tokens"][first + 1 :])
            # padded: seen as a token by a later forward, then padded (a position that the
            # block's last forward committed is padded before any forward sees it)
            assert 0 < row["padded"] <= len(row["tokens"]) - first - 1 - (end % bs)
        else:
            assert len(prompt) + len(row["tokens"]) == n_blocks * bs + 1
            assert row["padded"] == 0
        steps = [None] * len(prompt) + row["commit_step"]
        for b0 in range(0, n_blocks * bs, bs):  # sub-blocks in order
            subs = [[s for s in steps[b0 + k : b0 + k + sbs] if s is not None] for k in range(0, bs, sbs)]
            subs = [sub for sub in subs if sub]
            for a, b in zip(subs, subs[1:]):
                assert max(a) < min(b), "a sub-block is committed before the previous one is done"
        n = _commits_per_forward(row, row["forwards"])
        for f, (_, _, kind) in enumerate(kinds):  # commit step f + 1 is forward f
            if kind == "update":
                assert n[f + 1] <= 1
            elif not call.batched:
                assert n[f + 1] >= 1 and (n[f + 1] == 1 or kw["threshold"] < 1)
    # the last block's cache update gives the appended token; none once every row has stopped
    assert (kinds[-1][2] == "update") == (stopped < len(call.rows))
    if not kw["use_block_cache"]:
        assert {k for _, _, k in kinds} <= {"update", "block"}


@pytest.mark.parametrize("call", recorded_calls("sdar"), ids=lambda c: f"{c.run}-{len(c.prompts[0])}")
def test_sdar_rules(call):
    """Read off the record: blocks of 4 from position 0, the canvas padded to whole blocks;
    each block ends with a store forward that commits nothing; blocks are committed in order;
    at most ``denoising_steps`` denoising forwards per block; static and sequential commit
    exactly one token per step (block 4 / 4 steps), sequential left to right."""
    kw = call.kwargs
    bl = kw["block_length"]
    (prompt,), (row,) = call.prompts, call.rows
    total = -(-(len(prompt) + kw["gen_length"]) // bl) * bl
    assert len(prompt) + len(row["tokens"]) == total
    kinds = row["forward_kinds"]
    n = _commits_per_forward(row, row["forwards"])
    denoise_in_block = {}
    for f, (start, length, kind) in enumerate(kinds):  # commit step f + 1 is forward f
        if f == 0 and len(prompt) >= bl:  # the prefill of the prompt's complete blocks
            assert [start, length, kind] == [0, len(prompt) // bl * bl, "store"]
        else:
            assert start % bl == 0 and length == bl
        if kind == "store":
            assert n[f + 1] == 0
        else:
            assert n[f + 1] >= 1
            denoise_in_block[start] = denoise_in_block.get(start, 0) + 1
            if kw["remasking_strategy"] in ("low_confidence_static", "sequential"):
                assert n[f + 1] == 1
    assert max(denoise_in_block.values()) <= kw["denoising_steps"]
    stops = [i for i, t in enumerate(row["tokens"]) if t in kw["stopping_criteria_idx"]]
    if stops:  # the break after the stop's block: every later position stays a mask
        end = -(-(len(prompt) + stops[0] + 1) // bl) * bl
        assert all(s == -1 for s in row["commit_step"][end - len(prompt) :])
        assert all(s > 0 for s in row["commit_step"][: end - len(prompt)])
    steps = [None] * len(prompt) + row["commit_step"]
    for b0 in range(0, total - bl, bl):
        a = [s for s in steps[b0 : b0 + bl] if s is not None and s > 0]
        b = [s for s in steps[b0 + bl : b0 + 2 * bl] if s is not None and s > 0]
        if a and b:
            assert max(a) < min(b)
        if kw["remasking_strategy"] == "sequential":
            assert a == sorted(a)


# ------------------------------------------------------------------------------------------------
# our model against the peers' model check


@pytest.mark.parametrize("fmt", ["fast_dllm_v2", "sdar"])
def test_our_model_matches_the_peer_model_check(block_checkpoints, fmt):
    """The record: the peers' logits vs ours on prompt 1 + masks (one forward, no cache),
    Fast-dLLM v2 identical to the last bit, SDAR within fp32 reassociation (its attention calls
    SDPA with ``enable_gqa`` and a boolean mask). Here: ours again, against the recorded peer
    argmax and max probability."""
    from dllm_kernels.models import load_pretrained

    check = DATA["model_check"][fmt]
    assert check["argmax_equal"] and check["max_abs_logit_diff"] < 1e-4
    if fmt == "fast_dllm_v2":
        assert check["bitwise_equal"]
    model = load_pretrained(block_checkpoints[fmt], attn_impl="sdpa", backend="reference")
    prompt = DATA["prompts"][DATA["model_check"]["prompt"]]["ids"]
    x = torch.tensor([prompt + [MASK[fmt]] * (DATA["model_check"]["length"] - len(prompt))])
    with torch.no_grad():
        p = torch.softmax(model(x)[0].double(), -1)
    assert p.argmax(-1).tolist() == check["argmax"]
    torch.testing.assert_close(
        p.max(-1).values, torch.tensor(check["max_prob"], dtype=torch.float64), atol=1e-5, rtol=0
    )


# ------------------------------------------------------------------------------------------------
# re-running the peers, where their source and venv are available


@pytest.mark.skipif(
    not (os.environ.get("DLLM_BLOCK_PEERS") and os.environ.get("DLLM_BLOCK_PEERS_PYTHON")),
    reason="DLLM_BLOCK_PEERS / DLLM_BLOCK_PEERS_PYTHON not set (peer checkouts and venv)",
)
def test_peers_reproduce_the_record(tmp_path):
    out = tmp_path / "block.json"
    script = pathlib.Path(__file__).parent / "fidelity" / "run_block_peers.py"
    cmd = [sys.executable, str(script), "--peers", os.environ["DLLM_BLOCK_PEERS"]]
    cmd += ["--python", os.environ["DLLM_BLOCK_PEERS_PYTHON"], "--out", str(out)]
    subprocess.run(cmd, check=True)
    new = json.loads(out.read_text())

    def strip(doc):
        for run in doc["runs"].values():
            for row in run["per_prompt"]:
                row.pop("seconds")
        return doc

    assert strip(new) == strip(json.loads(DATA_PATH.read_text()))


# ------------------------------------------------------------------------------------------------
# generate against the record: the policies fast_dllm_v2 and sdar decode what the peers decoded

BLOCK_CACHE_RUNS = {"fdv2_threshold_block_cache", "fdv2_threshold_block_cache_ragged_batch"}
# the peer's sub-block cache couples the rows of a batch (below); that call is checked apart
COUPLED_RUNS = {"fdv2_threshold_block_cache_ragged_batch"}
# the calls checked by default (one prompt per batch-1 run, every ragged call); DLLM_FIDELITY_ALL=1: every call
_ALL = os.environ.get("DLLM_FIDELITY_ALL") == "1"


def generate_call(model, call: RecordedCall, backend: str = "reference", buckets: bool = False):
    """Run ``generate`` as the peer call ``call`` ran: the peer's own argument names (the policies'
    aliases), the geometry that ends every row where the peer's canvas ends (Fast-dLLM v2:
    ``(max_new_tokens // bs + max(seq_len) // bs) * bs``, less the appended token; SDAR: whole
    blocks after ``gen_length``)."""
    from dllm_kernels.decode.generate import _generate

    kw = call.kwargs
    common = dict(temperature=0.0, seed=None, backend=backend, max_nfe=10000, progress=False)
    if call.fmt == "fast_dllm_v2":
        bs, longest = kw["block_size"], max(len(p) for p in call.prompts)
        gen = kw["max_new_tokens"] + (longest // bs - -(-longest // bs)) * bs
        opts = {k: kw[k] for k in ("threshold", "small_block_size", "stop_token", "use_block_cache")}
        policy = "fast_dllm_v2"
    else:
        bs, gen = kw["block_length"], kw["gen_length"]
        opts = {k: kw[k] for k in ("remasking_strategy", "denoising_steps", "stopping_criteria_idx")}
        if "confidence_threshold" in kw:
            opts["confidence_threshold"] = kw["confidence_threshold"]
        policy = "sdar"
    return _generate(
        model,
        call.prompts,
        policy=policy,
        gen_length=gen,
        block_length=bs,
        buckets=buckets,
        capture=False,
        **common,
        **opts,
    )


def _ranks(steps):
    order = sorted(set(steps))
    return [order.index(s) for s in steps]


def check_against_record(call: RecordedCall, out) -> None:
    """Per row: the tokens after the prompt equal the peer's where both canvases have them (ours
    ends where the peer's ends, less Fast-dLLM v2's appended token; a Fast-dLLM v2 row that
    stopped is the pad beyond); at batch 1 the commit steps equal the peer's (1-based) and the
    NFE its forwards; in a ragged batch, whose forwards the peer counts per call (the batch waits
    for its slowest row), the order of the commits, up to the first stop, is the peer's."""
    L = out.tokens.shape[1]
    for b, row in enumerate(call.rows):
        f = int(out.first[b])
        ours, peer = out.tokens[b, f:].tolist(), row["tokens"]
        steps = [s + 1 if s >= 0 else -1 for s in out.commit_step[b, f:].tolist()]
        n = min(len(ours), len(peer))
        assert ours[:n] == peer[:n], (call.run, b)
        stops = [call.kwargs["stop_token"]] if call.fmt == "fast_dllm_v2" else call.kwargs["stopping_criteria_idx"]
        stopped = any(t in stops for t in peer)
        if call.fmt == "fast_dllm_v2" and not stopped:
            # the last update forward appends past the canvas; in a ragged batch the peer's rows
            # all end at the longest row's end, ours (as alone) gen_length after their own prompt
            assert len(peer) == len(ours) + 1 + int(out.pad[b] - out.pad.min()), (call.run, b)
        elif call.fmt == "fast_dllm_v2":
            assert all(t == PAD for t in ours[n:])
        else:
            assert len(ours) == len(peer) and f + len(ours) == L
        if not call.batched:
            assert steps[:n] == row["commit_step"][:n], (call.run, b)
            assert int(out.nfe[b]) == row["forwards"], (call.run, b)
        else:
            end = next((i + 1 for i, t in enumerate(peer[:n]) if t in stops), n)
            assert _ranks(steps[:end]) == _ranks(row["commit_step"][:end]), (call.run, b)


def _fidelity_calls(fmt):
    calls = [c for c in recorded_calls(fmt) if c.run not in COUPLED_RUNS]
    return [c for c in calls if _ALL or c.batched or len(c.prompts[0]) == len(DATA["prompts"][2]["ids"])]


@pytest.fixture(scope="module")
def block_models(block_checkpoints):
    from dllm_kernels.models import load_pretrained

    return {fmt: load_pretrained(p, attn_impl="sdpa", backend="reference") for fmt, p in block_checkpoints.items()}


@pytest.mark.parametrize(
    "call", _fidelity_calls(None), ids=lambda c: f"{c.run}-{'batch' if c.batched else len(c.prompts[0])}"
)
def test_generate_reproduces_peer(block_models, call):
    """``generate`` with the policy ``fast_dllm_v2`` or ``sdar`` and the peer's own arguments
    decodes the peer's tokens, in the peer's order, with its forwards (reference backend)."""
    check_against_record(call, generate_call(block_models[call.fmt], call))


def test_block_cache_record_is_not_the_plain_one():
    """The sub-block cache runs (``use_block_cache=True``, reproduced above at batch 1) run
    sub-block forwards and commit other tokens than the plain runs (the stale rows of the other
    sub-blocks), so reproducing them checks the sub-block forward's attention."""
    assert BLOCK_CACHE_RUNS == {n for n, r in DATA["runs"].items() if r["kwargs"].get("use_block_cache")}
    plain, cached = DATA["runs"]["fdv2_threshold"], DATA["runs"]["fdv2_threshold_block_cache"]
    assert any(a["tokens"] != b["tokens"] for a, b in zip(plain["per_prompt"], cached["per_prompt"]))
    for row in cached["per_prompt"]:
        assert {k for _, _, k in row["forward_kinds"]} == {"block", "sub_block", "update"}


def test_block_cache_ragged_batch_decodes_each_row_as_alone(block_models):
    """The peer decides per batch whether a forward runs the whole block (the sub-block's first
    position is a mask in *any* row), so its ragged call refreshes a row's block cache when another
    row needs it and commits other tokens for prompts 1 and 2 than the same peer at batch 1 (the
    record). ``generate`` decodes each row as alone: every row's tokens and commit steps are the
    peer's at batch 1, and row 0, which no other row's forwards changed, also the ragged call's."""
    (call,) = [c for c in recorded_calls("fast_dllm_v2") if c.run in COUPLED_RUNS]
    alone = DATA["runs"]["fdv2_threshold_block_cache"]["per_prompt"]
    assert call.rows[0]["tokens"][: len(alone[0]["tokens"])] == alone[0]["tokens"]
    for b in (1, 2):
        n = len(alone[b]["tokens"])
        assert call.rows[b]["tokens"][:n] != alone[b]["tokens"]
    out = generate_call(block_models["fast_dllm_v2"], call)
    check_against_record(dataclasses.replace(call, prompts=call.prompts[:1], rows=call.rows[:1]), out)
    for b, row in enumerate(alone):
        f = int(out.first[b])
        ours = out.tokens[b, f:].tolist()
        steps = [s + 1 if s >= 0 else -1 for s in out.commit_step[b, f:].tolist()]
        # the peer's batch-1 canvas, less its appended token, lies inside the ragged call's
        n = min(len(ours), len(row["tokens"]))
        assert n >= len(row["tokens"]) - 1 and ours[:n] == row["tokens"][:n] and steps[:n] == row["commit_step"][:n], b


# the shortest recorded call of each decoder (a stop after two blocks), on the kernels
_KERNEL_CALLS = [
    c for c in recorded_calls() if c.run in ("sdar_dynamic_stop", "fdv2_threshold_stop") and len(c.prompts[0]) == 58
]


@pytest.mark.slow
@pytest.mark.parametrize("call", _KERNEL_CALLS, ids=lambda c: c.run)
def test_generate_reproduces_peer_on_the_kernels(block_checkpoints, call):
    """The same on the Triton kernels (the interpreter on the CPU): the loop's ops and the model's."""
    from dllm_kernels.models import load_pretrained

    model = load_pretrained(block_checkpoints[call.fmt], attn_impl="ops", backend="triton")
    check_against_record(call, generate_call(model, call, backend="triton"))


def test_kernel_calls_are_found():
    assert {c.run for c in _KERNEL_CALLS} == {"sdar_dynamic_stop", "fdv2_threshold_stop"}
