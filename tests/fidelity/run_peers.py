"""Run the public dLLM decoders on one tiny LLaDA checkpoint and record what they produce.

Not a test (no peer code is ever part of this repository): it writes the JSON under
``tests/fidelity/data/`` that the project's policies are compared with. See README.md here.

One file, two roles:

- the driver (this project's venv): writes the tiny checkpoint with
  :func:`dllm_kernels.models.write_tiny_llada` (seeded, so anyone re-creates it bit for bit),
  encodes the prompts with its tokenizer, runs one worker per peer, and writes the JSON;
- the worker (``--worker``, a venv with the peers' pinned ``transformers``): imports one peer's
  own modeling code and generate functions, loads the checkpoint with that code in fp32 on the
  CPU, and runs the calls listed in ``RUNS`` on every prompt.

Usage::

    .venv/bin/python tests/fidelity/run_peers.py --peers /path/to/peers \\
        --python /path/to/peer-venv/bin/python --out tests/fidelity/data/llada_tiny_peers.json

``--peers`` (or ``$DLLM_PEERS``) holds the checkouts: ``LLaDA`` (ML-GSAI/LLaDA), ``Fast-dLLM``
(NVlabs/Fast-dLLM), ``R2-dLLM`` (GATECH-EIC/R2-dLLM), ``Streaming-dLLM``
(xiaoshideta/Streaming-dLLM), ``d3LLM`` (hao-ai-lab/d3LLM).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

# The checkpoint: LLaDA's real vocabulary and special ids (the peers hard-code EOS 126081 and
# EoT 126348), tiny otherwise. head_scale / attn_scale make a random model confident at some
# positions and not at others, with proposals that depend on the position and its neighbours:
# about a quarter of the masked positions of a fresh block have max probability >= 0.9.
CHECKPOINT = dict(
    vocab_size=126464,
    d_model=64,
    n_layers=2,
    n_heads=4,
    ffn_dim=128,
    max_seq_len=512,
    n_shards=2,
    seed=0,
    head_scale=8.0,
    attn_scale=3.0,
)
PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "Q: 1 + 1 = ?\nA:"]
MASK, EOS = 126336, 126081
GEN, BLOCK = 96, 32  # three blocks of the usual size
# the command line (cli): $DLLM_PEERS, the JSON it writes by default, what --ckpt and --only name
CLI = dict(env="DLLM_PEERS", out="llada_tiny_peers.json", ckpt="tiny checkpoint", only="peers")

# where each peer's code lives inside its checkout: (sys.path entries, generate module file)
PEERS = {
    # the official generate() runs on LLaDA's HF modeling code, of which Fast-dLLM ships a copy
    # (the official repo has none); only the forward without cache is used
    "LLaDA": (["LLaDA", "Fast-dLLM/llada"], "LLaDA/generate.py"),
    "Fast-dLLM": (["Fast-dLLM/llada"], "Fast-dLLM/llada/generate.py"),
    "R2-dLLM": (["R2-dLLM/llada"], "R2-dLLM/llada/generate.py"),
    "Streaming-dLLM": (["Streaming-dLLM/LLaDA-1.5"], "Streaming-dLLM/LLaDA-1.5/generate.py"),
    "d3LLM": (["d3LLM"], "d3LLM/d3llm/d3llm_LLaDA/d3llm_llada_generate_util.py"),
}
R2_SCRIPTS = dict(
    threshold=0.9,
    confidence_cluster_size=3,
    spatial_threshold=0.8,
    confidence_cluster_unmasked=1,
    token_cluster="confidence",
    temporal_steps=3,
    temporal_threshold=0.8,
    temporal_eval="last",
)
D3LLM_EVAL = dict(
    steps=GEN,
    max_new_tokens=GEN,
    block_size=BLOCK,
    threshold=0.5,
    block_add_threshold=0.1,
    decoded_token_threshold=0.95,
    eos_token_id=EOS,
    early_stop=True,
)
# LLaDA's generate() arguments (one token per step), which the other peers' calls extend
LLADA = dict(steps=GEN, gen_length=GEN, block_length=BLOCK)
FAST = dict(LLADA, threshold=0.9)
# (name, peer, function, keyword arguments besides model and prompt); temperature 0 everywhere
RUNS = [
    ("llada_vanilla_k1", "LLaDA", "generate", LLADA),
    ("llada_vanilla_k4", "LLaDA", "generate", dict(LLADA, steps=GEN // 4)),
    ("llada_vanilla_k1_eos_eot_conf_inf", "LLaDA", "generate", dict(LLADA, confidence_eos_eot_inf=True)),
    ("fast_dllm_threshold", "Fast-dLLM", "generate", FAST),
    ("fast_dllm_prefix_cache", "Fast-dLLM", "generate_with_prefix_cache", FAST),
    ("fast_dllm_dual_cache", "Fast-dLLM", "generate_with_dual_cache", FAST),
    (
        "streaming_prefix_cache",
        "Streaming-dLLM",
        "generate_with_prefix_cache",
        dict(FAST, steps=GEN // BLOCK, window_size=32, confidence_alpha=0.3, eos_id=EOS),
    ),
    ("r2_dual_cache_scripts", "R2-dLLM", "generate_with_dual_cache", dict(LLADA, **R2_SCRIPTS)),
    ("r2_dual_cache_function_defaults", "R2-dLLM", "generate_with_dual_cache", LLADA),
    ("d3llm_multi_block", "d3LLM", "generate_multi_block", D3LLM_EVAL),
    (
        "d3llm_multi_block_kv_cache",
        "d3LLM",
        "generate_multi_block_kv_cache",
        dict(D3LLM_EVAL, cache_delay_iter=2, refresh_interval=3),
    ),
]


# ----------------------------------------------------------------------------------------------
# worker (peer venv): torch, transformers and one peer's code only


class CommitRecorder:
    """Counts the model's forwards and records, per canvas position, the 1-based index of the
    forward whose logits unmasked it. A forward pre-hook: the first forward of every decoder
    receives the canvas ``x`` (or ``x[:, :n]``, Streaming's pruned view), whose storage is
    aliased as the whole canvas; each later forward (and ``finish``) diffs it against the
    previous snapshot. Positions filled without a forward (EOS fills of early stops) are
    attributed to the last forward before them."""

    def __init__(self, torch, length: int):
        self.torch, self.length = torch, length
        self.forwards, self.canvas, self.snapshot, self.step = 0, None, None, None

    def hook(self, module, args, kwargs):
        ids = args[0] if args else kwargs["input_ids"]
        if self.canvas is None:
            if ids.storage_offset() != 0 or ids.untyped_storage().nbytes() < self.length * ids.element_size():
                raise RuntimeError("the first forward does not receive the canvas")
            self.canvas = self.torch.empty(0, dtype=ids.dtype).set_(ids.untyped_storage(), 0, (1, self.length))
            self.snapshot = self.canvas.clone()
            self.step = self.torch.full((self.length,), -1, dtype=self.torch.long)
        else:
            self.diff()
        self.forwards += 1

    def diff(self):
        new = (self.snapshot[0] == MASK) & (self.canvas[0] != MASK)
        self.step[new] = self.forwards
        self.snapshot = self.canvas.clone()


def worker(peer: str, peers: pathlib.Path, ckpt: str, prompts: list[list[int]], out: str) -> None:
    import torch

    torch.set_num_threads(1)
    paths, module_file = PEERS[peer]
    sys.path[:0] = [str(peers / p) for p in paths]
    spec = importlib.util.spec_from_file_location(f"peer_{peer.replace('-', '_')}", peers / module_file)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    modeling = sys.modules.get("utils.utils_LLaDA.model.modeling_llada") or importlib.import_module(
        "model.modeling_llada"
    )
    model, info = modeling.LLaDAModelLM.from_pretrained(ckpt, torch_dtype=torch.float32, output_loading_info=True)
    model.eval()
    if any(info.values()):
        raise RuntimeError(f"{peer}: the checkpoint does not load cleanly: {info}")
    with torch.no_grad():  # the model check: a full forward of prompt 0 + masks
        x = torch.tensor([prompts[0] + [MASK] * GEN])
        # Streaming's model needs explicit position ids (it prunes the suffix with original positions)
        pos = {"position_ids": torch.arange(x.shape[1])[None]} if peer == "Streaming-dLLM" else {}
        p = torch.softmax(model(x, **pos).logits.double(), -1)[0]
        check = {"argmax": p.argmax(-1).tolist(), "max_prob": p.max(-1).values.tolist()}
    results = {}
    for name, run_peer, fn, kwargs in RUNS:
        if run_peer != peer:
            continue
        rows = []
        for prompt in prompts:
            rec = CommitRecorder(torch, len(prompt) + GEN)
            handle = model.register_forward_pre_hook(rec.hook, with_kwargs=True)
            t0 = time.perf_counter()
            result = getattr(gen, fn)(model, torch.tensor([prompt]), temperature=0.0, mask_id=MASK, **kwargs)
            x, nfe = result if isinstance(result, tuple) else (result, None)  # the official generate() returns x
            seconds = time.perf_counter() - t0
            handle.remove()
            rec.diff()
            rows.append(
                {
                    "tokens": x[0, len(prompt) :].tolist(),
                    "nfe": nfe if nfe is None else int(nfe),
                    "forwards": rec.forwards,
                    "commit_step": rec.step[len(prompt) :].tolist(),
                    "canvas_tracked": bool(torch.equal(rec.canvas, x)),
                    "seconds": round(seconds, 2),
                }
            )
        results[name] = {"peer": peer, "function": fn, "kwargs": kwargs, "per_prompt": rows}
    pathlib.Path(out).write_text(json.dumps({"model_check": check, "runs": results}))


# ----------------------------------------------------------------------------------------------
# driver (this project's venv)


def _commit(repo: pathlib.Path) -> str | None:
    r = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def _sha256(path: pathlib.Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


def driver(args) -> dict:
    import torch

    from dllm_kernels.models import load_pretrained, load_tokenizer, write_tiny_llada

    peers = pathlib.Path(args.peers)
    ckpt = pathlib.Path(args.ckpt or tempfile.mkdtemp(prefix="llada_tiny_"))
    write_tiny_llada(ckpt, **CHECKPOINT)
    tok = load_tokenizer(ckpt)
    prompts = [tok.encode(p) for p in PROMPTS]
    model = load_pretrained(ckpt, attn_impl="sdpa")
    with torch.no_grad():
        p = torch.softmax(model(torch.tensor([prompts[0] + [MASK] * GEN])).double(), -1)[0]
    ours = {"argmax": p.argmax(-1).tolist(), "max_prob": p.max(-1).values.tolist()}
    doc = {
        "checkpoint": {"writer": "dllm_kernels.models.write_tiny_llada", "kwargs": CHECKPOINT, "sha256": _sha256(ckpt)},
        "prompts": [{"text": t, "ids": ids} for t, ids in zip(PROMPTS, prompts)],
        "gen_length": GEN,
        "block_length": BLOCK,
        "mask_id": MASK,
        "dtype": "float32",
        "device": "cpu",
        "model_check": {"ours": ours},
        "peers": {},
        "runs": {},
    }
    for peer in args.only or PEERS:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [
                args.python,
                __file__,
                "--worker",
                peer,
                "--peers",
                str(peers),
                "--ckpt",
                str(ckpt),
                "--prompts",
                json.dumps(prompts),
                "--worker-out",
                out.name,
            ]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                print(f"{peer}: FAILED\n{r.stderr[-3000:]}", file=sys.stderr)
                doc["peers"][peer] = {"commit": _commit(peers / peer), "error": r.stderr[-3000:]}
                continue
            got = json.loads(pathlib.Path(out.name).read_text())
        doc["peers"][peer] = {"commit": _commit(peers / peer)}
        doc["model_check"][peer] = got["model_check"]
        doc["runs"].update(got["runs"])
        print(f"{peer}: {len(got['runs'])} runs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return doc


def cli(argv, doc: str, names, worker, driver, *, env: str, out: str, ckpt: str, only: str) -> None:
    """The command line of this script and of ``run_block_peers.py`` (``doc``: the script's
    docstring): ``--worker NAME`` (in the peers' venv) runs ``worker(name, peers, ckpt, prompts,
    worker_out)``; without it ``driver(args)`` returns the JSON document, written to ``--out``
    (default ``data/<out>``). ``names``: the choices of ``--only`` and ``--worker``; ``env``: the
    variable that may give ``--peers``; ``ckpt`` / ``only``: what ``--ckpt`` / ``--only`` name."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--peers", default=os.environ.get(env), help="directory of the peer checkouts")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the peers' venv")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "data" / out))
    ap.add_argument("--ckpt", help=f"where to write the {ckpt} (default: a temporary directory)")
    ap.add_argument("--only", nargs="*", choices=list(names), help=f"run these {only} only")
    ap.add_argument("--worker", choices=list(names), help=argparse.SUPPRESS)
    ap.add_argument("--prompts", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.peers:
        ap.error(f"give --peers or set {env}")
    if args.worker:
        worker(args.worker, pathlib.Path(args.peers), args.ckpt, json.loads(args.prompts), args.worker_out)
        return
    doc = driver(args)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")


def main(argv=None) -> None:
    cli(argv, __doc__, PEERS, worker, driver, **CLI)


if __name__ == "__main__":
    main()
