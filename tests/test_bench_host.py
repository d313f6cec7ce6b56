"""bench/host_step.py's peer column: the adapter that drives the public decoders' generate
functions on the free model (``bench/peers_host.py``), and, when the peers' checkouts are at
``$DLLM_PEERS``, a toy run of each peer function against our policy (same tokens, same NFE)."""

import json
import os
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))

import host_step  # noqa: E402
import peers_host  # noqa: E402

import dllm_kernels as dk  # noqa: E402

V = 5


@pytest.fixture
def model():
    table = torch.arange(12 * V, dtype=torch.float32).reshape(12, V)  # row p identifies position p
    return peers_host.PeerModel(table, layers=3)


def _positions(out):
    return (out.logits[..., 0] / V).long().tolist()


def test_full_forward_and_its_cache(model):
    x = torch.zeros(2, 10, dtype=torch.long)
    out = model(x)
    assert _positions(out) == [list(range(10))] * 2 and out.past_key_values is None
    out = model(x, use_cache=True)
    kv = out.past_key_values
    assert len(kv) == 3 and all(k.shape == v.shape == (2, 1, 10, 1) for k, v in kv)
    out.logits[0, 0, 0] = -1.0  # a fresh tensor: the table is untouched
    assert model.table[0, 0] == 0 and model.calls == 2


def test_prefix_cache_continues_at_its_length(model):
    """Fast-dLLM's prefix cache: the peer slices every layer to the block start and forwards the rest."""
    kv = [
        tuple(t[:, :, :6] for t in pair)
        for pair in model(torch.zeros(1, 10, dtype=torch.long), use_cache=True).past_key_values
    ]
    out = model(torch.zeros(1, 4, dtype=torch.long), past_key_values=kv, use_cache=True)
    assert _positions(out) == [[6, 7, 8, 9]] and peers_host.cache_length(out.past_key_values) == 10


def test_dual_cache_forwards_the_replaced_positions(model):
    kv = model(torch.zeros(1, 10, dtype=torch.long), use_cache=True).past_key_values
    replace = torch.zeros(1, 10, dtype=torch.bool)
    replace[:, 4:7] = True
    out = model(torch.zeros(1, 3, dtype=torch.long), past_key_values=kv, use_cache=True, replace_position=replace)
    assert _positions(out) == [[4, 5, 6]] and out.past_key_values is kv  # rewritten in place
    with pytest.raises(ValueError, match="4 tokens forwarded at 3 positions"):
        model(torch.zeros(1, 4, dtype=torch.long), past_key_values=kv, replace_position=replace)


def test_position_ids_after_the_cache(model):
    """Streaming-dLLM: ``position_ids`` hold the pruned canvas' original positions, cache included."""
    pos = torch.tensor([[0, 1, 2, 3, 4, 9, 11]])
    kv = model(torch.zeros(1, 7, dtype=torch.long), use_cache=True, position_ids=pos).past_key_values
    kv = [tuple(t[:, :, :3] for t in pair) for pair in kv]
    out = model(torch.zeros(1, 4, dtype=torch.long), past_key_values=kv, use_cache=True, position_ids=pos)
    assert _positions(out) == [[3, 4, 9, 11]]


class _Dynamic:
    """What the adapter reads of a ``transformers`` ``DynamicCache``."""

    def __init__(self, n):
        self.n = n

    def get_seq_length(self):
        return self.n


def test_cache_position_and_update_kvcache(model):
    """d3LLM: positions from ``cache_position``; ``update_kvcache=n`` appends n positions, 0 none."""
    out = model(torch.zeros(1, 5, dtype=torch.long), use_cache=True, update_kvcache=3, cache_position=torch.arange(5))
    assert _positions(out) == [[0, 1, 2, 3, 4]] and peers_host.cache_length(out.past_key_values) == 3
    past = _Dynamic(3)
    kw = dict(past_key_values=past, use_cache=True, cache_position=torch.arange(3, 9))
    assert (
        peers_host.cache_length(model(torch.zeros(1, 6, dtype=torch.long), update_kvcache=4, **kw).past_key_values) == 7
    )
    out = model(torch.zeros(1, 6, dtype=torch.long), update_kvcache=0, **kw)
    assert _positions(out) == [[3, 4, 5, 6, 7, 8]] and out.past_key_values is past


def test_bad_table_and_layers():
    with pytest.raises(ValueError, match="table"):
        peers_host.PeerModel(torch.zeros(4))
    with pytest.raises(ValueError, match="layers"):
        peers_host.PeerModel(torch.zeros(4, 2), layers=0)


@pytest.mark.parametrize("gen, block, steps", [(128, 32, (128, 4)), (16, 8, (16, 2))])
def test_call_kwargs_rescale_the_fidelity_runs(gen, block, steps):
    vanilla = peers_host.call_kwargs("llada_vanilla_k1", gen, block, 63, 62, 40)
    assert vanilla == dict(steps=steps[0], gen_length=gen, block_length=block, temperature=0.0, mask_id=63)
    s = peers_host.call_kwargs("streaming_prefix_cache", gen, block, 63, 62, 40)
    assert (s["steps"], s["eos_id"], s["window_size"], s["threshold"]) == (steps[1], 62, 40, 0.9)
    d3 = peers_host.call_kwargs("d3llm_multi_block_kv_cache", gen, block, 63, 62, 40)
    assert (d3["max_new_tokens"], d3["block_size"], d3["eos_token_id"], d3["cache_delay_iter"]) == (gen, block, 62, 2)


def test_load_with_stubbed_modeling_and_restored_imports(tmp_path):
    """A stand-in checkout whose generate module imports the modeling package as the peers do:
    it loads, and afterwards neither the stubs nor the peer's path remain."""
    root = tmp_path / "peers"
    for peer, (_, module_file) in peers_host.PEERS.items():
        (root / module_file).parent.mkdir(parents=True, exist_ok=True)
        (root / module_file).write_text(
            "from model.modeling_llada import LLaDAModelLM\n"
            "from utils.utils_LLaDA.model.modeling_llada import LLaDAModelLM\n"
            f"def generate(model, prompt, **kw):\n    return prompt.flip(1), {peer!r}\n"
        )
    assert peers_host.available(str(root)) == (root, "")
    path = list(sys.path)
    mod = peers_host.load(root, "d3LLM")
    assert peers_host.load(root, "d3LLM") is mod and mod.generate(None, torch.tensor([[1, 2]]))[1] == "d3LLM"
    assert sys.path == path and "model.modeling_llada" not in sys.modules and "utils.utils_LLaDA" not in sys.modules
    got, why = peers_host.available(str(tmp_path))
    assert got is None and "missing LLaDA" in why
    assert peers_host.available(None)[0] is None


def test_ratios_and_table():
    rows = [
        dict(path="reference", name="r2", B=1, us_per_step=100.0),
        dict(path="reference", name="r2", B=64, us_per_step=160.0),
        dict(path="peer", name="r2", B=1, us_per_step=250.0, peer="R2-dLLM", function="generate_with_dual_cache"),
        dict(path="peer", name="r2", B=8, peer="R2-dLLM", function="generate_with_dual_cache", error="batch 1 only"),
        dict(path="stubbed", name="vanilla", B=1, us_per_step=90.0),
    ]
    got = host_step.ratios(rows)
    assert got == {
        "reference": {"r2": {"ours_B1/peer_B1": 0.4, "met_B1": True, "ours_B64/ours_B1": 1.6, "met_B64": False}}
    }
    line = next(x for x in host_step.markdown(dict(rows=rows, ratios=got)).splitlines() if x.startswith("| r2"))
    assert (
        line == "| r2 | R2-dLLM `generate_with_dual_cache` | 250 | n/a | - | - | - | 100 | - | 160 | -, 0.4 | -, 1.6 |"
    )


def test_host_split_ratios_and_table(tmp_path):
    """host_split's targets: the host work at B=1 over the peer's B=1 time (from host_step's
    JSON), B=64 over B=1, for the eager and the graph path."""
    import host_split

    doc = dict(rows=[dict(path="peer", name="r2", B=1, us_per_step=200.0), dict(path="stubbed", name="r2", B=1)])
    (tmp_path / "host_step.json").write_text(json.dumps(doc))
    peers = host_split.peer_us(tmp_path / "host_step.json")
    assert peers == {"r2": 200.0} and host_split.peer_us(tmp_path / "missing.json") == {}
    keys = ("name", "B", "host_us_per_step", "ops_per_step", "graph_host_us_per_step", "graph_ops_per_step")
    rows = [
        dict(zip(keys, values))
        for values in (
            ("r2", 1, 300.0, 37.5, 80.0, 1.5),
            ("r2", 64, 330.0, 37.5, 128.0, 1.5),
            ("vanilla", 1, 50.0, 40.0, 20.0, 1),
        )
    ]
    got = host_split.ratios(rows, peers)
    assert got == {
        "r2": {
            "eager_B1/peer_B1": 1.5,
            "met_eager_B1": False,
            "eager_B64/B1": 1.1,
            "met_eager_B64": True,
            "graph_B1/peer_B1": 0.4,
            "met_graph_B1": True,
            "graph_B64/B1": 1.6,
            "met_graph_B64": False,
        }
    }
    table = host_split.markdown(dict(rows=rows, peer_us_per_step_B1=peers, ratios=got)).splitlines()
    assert table[2] == "| r2 | 200 | 37.5, 37.5 | 300 | 330 | 1.5 | 1.5, 1.5 | 80 | 128 | 0.4 | 1.6 |"
    assert table[3] == "| vanilla | - | 40.0, - | 50 | - | - | 1, - | 20 | - | - | - |"


NEW_SCHEDULERS = ["sdar", "fast_dllm_v2", "fast_dllm_v2 block cache", "diffusion_gemma"]


@pytest.fixture
def split(monkeypatch):
    """host_split on tiny shapes (prompt 16, 16 new tokens, blocks of 8), the launchers stubbed
    by the references and wrapped by its replay, the runners' ``_body`` by its clock; all
    restored afterwards."""
    import host_split

    from dllm_kernels.kernels import commit as kc, confidence as kt, soft_embedding as ks

    for name, value in (("PROMPT", 16), ("GEN", 16), ("BLOCK", 8)):
        monkeypatch.setattr(host_step, name, value)
    for module, fn in ((kt, "token_stats"), (kc, "commit"), (ks, "soft_embedding")):
        monkeypatch.setattr(module, fn, getattr(module, fn))  # undone after the replay's restore
    host_step._stub_kernels()
    replay, clock = host_split._Replay(), host_split._BodyClock()
    yield host_split, replay, clock
    replay.restore()
    clock.restore()


@pytest.mark.parametrize("name", NEW_SCHEDULERS)
def test_host_split_replay_reproduces_the_record(split, name):
    """The eager replay (launches and model replayed, the model's logits zeros) gives the
    recorded canvas and NFE, every recorded launch replayed once: the uniform step's two
    ``token_stats``, one ``commit`` and one ``soft_embedding`` per denoising forward."""
    host_split, replay, _ = split
    policy = host_step.POLICIES[name][0]
    model = host_split._ReplayModel(replay, policy)
    run = host_split._run(model, name, 2, buckets=False)
    replay.start("record")
    want = run()
    replay.start("replay")
    got = run()
    assert torch.equal(got.tokens, want.tokens) and got.nfe.tolist() == want.nfe.tolist()
    taped = {k: len(v) for k, v in replay.tapes.items() if v}
    assert taped == dict(replay.pos) and taped["commit"] > 0
    if policy == "diffusion_gemma":
        assert taped == dict(commit=taped["commit"], token_stats=2 * taped["commit"], soft_embedding=taped["commit"])
    else:
        assert "soft_embedding" not in taped


@pytest.mark.parametrize("name", NEW_SCHEDULERS)
def test_host_split_ops_per_step_do_not_grow_with_the_batch(split, name):
    """The block-causal and uniform schedulers: the same operators per step at batch 1 and 3,
    eager and on the graph path (``measure`` itself checks the replays against the record)."""
    host_split, replay, clock = split
    one, three = (host_split.measure(replay, clock, name, B, repeats=1) for B in (1, 3))
    assert one["steps"] == three["steps"] > 2
    assert one["ops_per_step"] == three["ops_per_step"] > one["graph_ops_per_step"] == three["graph_ops_per_step"]


# ------------------------------------------------------------------------------------------------
# the peers' own code, when present (not in CI: no peer code is part of this repository)
# ------------------------------------------------------------------------------------------------

PEERS_DIR, WHY = peers_host.available(os.environ.get("DLLM_PEERS"))


@pytest.mark.skipif(PEERS_DIR is None, reason=f"peers' checkouts not available: {WHY}")
@pytest.mark.parametrize("row", list(peers_host.ROWS))
def test_peer_matches_our_policy_on_the_free_model(row):
    """Prompt 8, two blocks of 8: the peer function and our policy give the same tokens and NFE."""
    P, gen, block = 8, 16, 8
    ours_model = host_step.FreeModel(P + gen)
    prompt = torch.arange(P)[None] % 10
    policy, kw = host_step.POLICIES[row]
    ours = dk.generate(ours_model, prompt, policy=policy, gen_length=gen, block_length=block, backend="reference", **kw)
    peer = peers_host.PeerModel(ours_model.table)
    tokens, nfe = peers_host.run(PEERS_DIR, row, peer, prompt, host_step.peer_kwargs(row, gen, block))
    assert tokens.tolist() == ours.generated.tolist()
    assert peer.calls == ours_model.calls == ours.nfe.item() and nfe in (None, peer.calls)
