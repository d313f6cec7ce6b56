"""The public decoders' own generate functions on ``host_step``'s nearly free model (CPU benchmark).

``bench/host_step.py --peers DIR`` (or ``$DLLM_PEERS``, as for ``tests/fidelity/run_peers.py``)
times, beside ``generate``, the function that each policy reproduces, from the peer's own source:

======================  ==================================================================
our row                 the peer's call (``tests/fidelity/run_peers.py``'s ``RUNS`` entry)
======================  ==================================================================
vanilla                 LLaDA ``generate`` (``llada_vanilla_k1``: one token per forward)
fast_dllm prefix        Fast-dLLM ``generate_with_prefix_cache(threshold=0.9)``
fast_dllm dual          Fast-dLLM ``generate_with_dual_cache(threshold=0.9)``
streaming               Streaming-dLLM ``generate_with_prefix_cache(threshold=0.9, confidence_alpha=0.3)``
r2                      R2-dLLM ``generate_with_dual_cache`` with the scripts' settings
d3llm delayed           d3LLM ``generate_multi_block_kv_cache(cache_delay_iter=2, refresh_interval=3)``
======================  ==================================================================

The keyword arguments are the fidelity runs' (``RUNS``), rescaled to this benchmark's shapes
(``steps``, lengths, EOS id) and, for Streaming-dLLM, with ``window_size`` set to our
``streaming()`` default so that both sides prune the suffix alike (the fidelity run used 32).

``DIR`` holds checkouts named ``LLaDA``, ``Fast-dLLM``, ``Streaming-dLLM``, ``R2-dLLM`` and
``d3LLM`` at the commits of ``tests/fidelity/README.md``. From GitHub::

    git clone https://github.com/ML-GSAI/LLaDA DIR/LLaDA && git -C DIR/LLaDA checkout b7e6c35
    # likewise NVlabs/Fast-dLLM 24cc59e, xiaoshideta/Streaming-dLLM c4320c2,
    # GATECH-EIC/R2-dLLM 6d06bb2, hao-ai-lab/d3LLM e5bfcac

From a bare mirror whose large binary blobs are absent, check out the Python files only::

    git clone -q -n MIRROR DIR/LLaDA && git -C DIR/LLaDA sparse-checkout set --no-cone '*.py' \\
        && git -C DIR/LLaDA checkout -q b7e6c35

No peer code is part of this repository; it is imported from ``DIR`` at run time.

What the peers need besides their generate module is provided as follows, in this process only:

* their modeling packages (``model.modeling_llada``; d3LLM's ``utils.utils_LLaDA.model``), which
  they import at module level but which a free model never runs, are empty stub modules put into
  ``sys.modules`` while the generate module loads (and removed afterwards);
* ``transformers`` is the installed one (their generate modules import ``AutoTokenizer`` and
  d3LLM's loop builds a real ``transformers.cache_utils.DynamicCache`` on each refresh);
* the model is :class:`PeerModel`: the same logits as ``host_step.FreeModel`` (a fixed table row
  per RoPE position), behind the call forms the peers use, with a cheap but consistent KV cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import pathlib
import sys
import types

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fidelity"))

from run_peers import GEN as RUNS_GEN, PEERS, RUNS, _commit  # noqa: E402

# our host_step row -> the fidelity run of the peer function it reproduces
ROWS = {
    "vanilla": "llada_vanilla_k1",
    "fast_dllm prefix": "fast_dllm_prefix_cache",
    "fast_dllm dual": "fast_dllm_dual_cache",
    "streaming": "streaming_prefix_cache",
    "r2": "r2_dual_cache_scripts",
    "d3llm delayed": "d3llm_multi_block_kv_cache",
}
RUNS_BY_NAME = {name: (peer, fn, kw) for name, peer, fn, kw in RUNS}
# the modeling modules the peers import at module level (stubbed: a free model never runs them)
_STUBS = ("model", "model.modeling_llada", "utils", "utils.utils_LLaDA", "utils.utils_LLaDA.model")
_STUBS += ("utils.utils_LLaDA.model.modeling_llada",)


class PeerModel:
    """The peers' view of a model, on a logits table indexed by position (``[positions, V]``).

    Call forms (read from the peers' generate functions and modeling code):

    * ``model(x)`` / ``model(x, use_cache=True)``: positions ``0 .. L-1``, or the prefix cache's
      length onwards when ``past_key_values`` is given (Fast-dLLM's prefix cache);
    * ``replace_position=`` (``[B, canvas]`` bool, the dual cache): the positions marked there;
    * ``position_ids=`` (Streaming-dLLM: the original positions of the pruned canvas, cache
      included): ``position_ids[:, past : past + L]``;
    * ``cache_position=`` (d3LLM): those positions; ``update_kvcache=n`` appends the first ``n``
      positions to the cache.

    The result has ``.logits`` (``[B, L, V]``, a fresh tensor, as ``host_step.FreeModel`` gathers
    it) and ``.past_key_values``: ``layers`` ``(k, v)`` pairs of ``[B, 1, length, 1]`` zeros whose
    length is what the real model's cache would hold, so the peers' own cache code (slicing per
    layer, d3LLM's ``DynamicCache`` rebuild) runs as it does on a real model. The pairs of one
    length are built once and reused. ``calls`` counts the forwards.
    """

    device = torch.device("cpu")

    def __init__(self, table: torch.Tensor, layers: int = 32):
        if table.dim() != 2:
            raise ValueError(f"table must be [positions, V], got shape {tuple(table.shape)}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.table, self.layers, self.calls = table, layers, 0
        self._kv: dict[tuple[int, int], list] = {}

    def cache(self, batch: int, length: int) -> list:
        """``layers`` ``(k, v)`` pairs of ``[batch, 1, length, 1]``."""
        kv = self._kv.get((batch, length))
        if kv is None:
            z = torch.zeros(batch, 1, length, 1)
            kv = self._kv[(batch, length)] = [(z, z)] * self.layers
        return kv

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        *,
        past_key_values=None,
        use_cache=False,
        replace_position=None,
        position_ids=None,
        cache_position=None,
        update_kvcache=None,
    ):
        self.calls += 1
        B, L = input_ids.shape
        past = cache_length(past_key_values)
        if replace_position is not None:
            pos = replace_position[0].nonzero()[:, 0]
        elif cache_position is not None:
            pos = cache_position
        elif position_ids is not None:
            pos = position_ids[0, past : past + L]
        else:
            pos = torch.arange(past, past + L)
        if pos.shape != (L,):
            raise ValueError(f"{L} tokens forwarded at {pos.shape[0]} positions")
        kv = None
        if use_cache:
            if replace_position is not None or update_kvcache == 0:  # rows rewritten in place / unchanged
                kv = past_key_values
            else:
                kv = self.cache(B, past + (L if update_kvcache is None else update_kvcache))
        return types.SimpleNamespace(logits=self.table[pos.expand(B, L)], past_key_values=kv)


def cache_length(past) -> int:
    """Positions held by a cache: ``None``, a sequence of per-layer ``(k, v)`` or a ``DynamicCache``."""
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return past.get_seq_length()
    return past[0][0].shape[-2]


@contextlib.contextmanager
def _peer_imports(paths: list[pathlib.Path]):
    """The peer's directories on ``sys.path`` and the modeling stubs in ``sys.modules``, undone after."""
    saved = {name: sys.modules.get(name) for name in _STUBS}
    path = list(sys.path)
    for name in _STUBS:
        stub = sys.modules[name] = types.ModuleType(name)
        stub.LLaDAModelLM = None
        stub.__path__ = []  # a package, so that the submodule stubs import
    sys.path[:0] = [str(p) for p in paths]
    try:
        yield
    finally:
        sys.path[:] = path
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


_LOADED: dict[tuple[pathlib.Path, str], types.ModuleType] = {}


def load(peers: pathlib.Path, peer: str) -> types.ModuleType:
    """Import one peer's generate module from its checkout under ``peers`` (once per process)."""
    key = (pathlib.Path(peers), peer)
    if key not in _LOADED:
        paths, module_file = PEERS[peer]
        spec = importlib.util.spec_from_file_location(f"peer_{peer.replace('-', '_')}", key[0] / module_file)
        mod = importlib.util.module_from_spec(spec)
        with _peer_imports([key[0] / p for p in paths]):
            spec.loader.exec_module(mod)
        _LOADED[key] = mod
    return _LOADED[key]


def call_kwargs(run: str, gen: int, block: int, mask_id: int, eos_id: int, window: int) -> dict:
    """The fidelity run's keyword arguments at this benchmark's shapes: ``steps`` scaled with the
    generation length (the same tokens per step; at least one per block, a multiple of the block
    count, as the peers assert), lengths, mask and EOS ids replaced, Streaming-dLLM's
    ``window_size`` set to ``window``."""
    kw = dict(RUNS_BY_NAME[run][2])
    blocks = gen // block
    kw["steps"] = max(1, -(-kw["steps"] * gen // RUNS_GEN // blocks)) * blocks
    for key, value in (("gen_length", gen), ("max_new_tokens", gen), ("block_length", block), ("block_size", block)):
        if key in kw:
            kw[key] = value
    for key in ("eos_id", "eos_token_id"):
        if key in kw:
            kw[key] = eos_id
    if "window_size" in kw:
        kw["window_size"] = window
    return dict(kw, temperature=0.0, mask_id=mask_id)


def available(peers: str | None) -> tuple[pathlib.Path | None, str]:
    """The peers' directory if every checkout is there, else ``None`` and why not."""
    if not peers:
        return None, "no peers directory (--peers DIR or DLLM_PEERS)"
    root = pathlib.Path(peers)
    missing = [p for p, (_, f) in PEERS.items() if not (root / f).is_file()]
    if missing:
        return None, f"{root}: missing {', '.join(missing)}"
    return root, ""


def commits(peers: pathlib.Path) -> dict[str, str | None]:
    return {p: _commit(peers / p) for p in PEERS}


def run(peers: pathlib.Path, row: str, model: PeerModel, prompt: torch.Tensor, kwargs: dict):
    """One call of the peer function of ``row``: (generated tokens ``[B, gen]``, NFE or ``None``)."""
    peer, fn, _ = RUNS_BY_NAME[ROWS[row]]
    out = getattr(load(peers, peer), fn)(model, prompt, **kwargs)
    x, nfe = out if isinstance(out, tuple) else (out, None)  # LLaDA's generate returns x only
    return x[:, prompt.shape[1] :], nfe
