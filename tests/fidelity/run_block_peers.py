"""Run the published block-diffusion decoders (Fast-dLLM v2, SDAR) on seeded tiny checkpoints.

Not a test (no peer code is ever part of this repository): it writes
``tests/fidelity/data/block_tiny_peers.json``, the ground truth that the ``fast_dllm_v2`` and
``sdar`` policies of ``dllm_kernels.generate`` are compared with. README.md here ("Block
diffusion") is the spec of what the peers compute, with file:line references.

One file, two roles (as ``run_peers.py``):

- the driver (this project's venv): writes the tiny checkpoints with
  :func:`dllm_kernels.models.write_tiny_checkpoint` (seeded: anyone re-creates them bit for bit),
  encodes the prompts, runs one worker per peer, runs our model for the model check, and writes
  the JSON;
- the worker (``--worker``, a venv with the peers' pinned ``transformers``): copies the peer's
  own remote-code modeling files next to the checkpoint in a temporary directory, loads it with
  ``AutoModelForCausalLM.from_pretrained(trust_remote_code=True)`` in fp32 on the CPU, and runs
  the peer's decoder on every prompt.

Usage::

    .venv/bin/python tests/fidelity/run_block_peers.py --peers /path/to/peers \\
        --python /path/to/peer-venv/bin/python

``--peers`` (or ``$DLLM_BLOCK_PEERS``) holds the checkouts, named: ``Fast-dLLM``
(NVlabs/Fast-dLLM: ``v2/generation_functions.py``), ``DualDiffusion`` (Satgoy152/DualDiffusion:
a copy of the Hub's ``Fast_dLLM_v2_7B`` remote code, which is not on GitHub upstream) and
``SDAR`` (JetAstra/SDAR: ``generate.py`` and ``training/model/SDAR-4B-Chat/``). ``PINNED`` lists
the commits the committed JSON was made with.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from run_peers import _commit, _sha256, cli  # this directory: the script's sys.path[0]

PINNED = {
    "Fast-dLLM": "6cf27228858eb57c445e1fad764003543e72a0db",
    "DualDiffusion": "189fa7a74a83119647dad36b24363cc4e89370ab",  # the first version of its modeling.py copy
    "SDAR": "c2041a8333333d685f6e15122c84f60f51f85ebd",
}
# remote-code files copied next to the checkpoint (checkout-relative), per peer
REMOTE_CODE = {
    "fast_dllm_v2": (
        "DualDiffusion",
        ["FastDLLM-inferencing/Fast_dLLM_v2_7B/modeling.py", "FastDLLM-inferencing/Fast_dLLM_v2_7B/configuration.py"],
    ),
    "sdar": (
        "SDAR",
        [
            "training/model/SDAR-4B-Chat/modeling_sdar.py",
            "training/model/SDAR-4B-Chat/configuration_sdar.py",
            "training/model/SDAR-4B-Chat/fused_linear_diffusion_cross_entropy.py",
        ],
    ),
}
DECODER = {"fast_dllm_v2": ("Fast-dLLM", "v2/generation_functions.py"), "sdar": ("SDAR", "generate.py")}
# the command line (run_peers.cli): $DLLM_BLOCK_PEERS, the JSON it writes by default, what --ckpt and --only name
CLI = dict(env="DLLM_BLOCK_PEERS", out="block_tiny_peers.json", ckpt="tiny checkpoints", only="formats")

# Tiny checkpoints at the releases' vocabulary sizes (so the special ids are the releases':
# Fast-dLLM v2 mask 151665, <|im_end|> 151645, <|endoftext|> 151643; SDAR mask 151669), 2 layers
# of 4 query / 2 KV heads of 16. head_scale / attn_scale as in run_peers.py: a random model that
# is confident at some positions and not at others.
_TINY = dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=512, n_shards=2, seed=0)
CHECKPOINTS = {
    "fast_dllm_v2": dict(_TINY, vocab_size=152064, head_scale=8.0, attn_scale=3.0),
    "sdar": dict(_TINY, vocab_size=151936, head_dim=16, head_scale=8.0, attn_scale=3.0),
}
# 23, 58 and 64 tokens: inside the first 32-block; across it (prefill of one block, then a
# partial block); exactly two blocks (prefill + first token from the prefill's last logits).
# For SDAR's 4-blocks: remainders 3, 2 and 0.
PROMPTS = [
    "The capital of France is",
    "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return",
    "Q: 1+1=?\nA: 2\nQ: 2 + 3 = ?\nA: 5\nQ: 3 + 4 = ?\nA: 7\nQ: 9+10 = ?\nA:",
]
PROMPT_LENGTHS = [23, 58, 64]
FD = dict(mask=151665, stop=151645, pad=151643)  # Fast-dLLM v2: |<MASK>|, <|im_end|>, <|endoftext|>
SDAR = dict(mask=151669, stops=[151645, 151643])  # generation_config.json eos_token_id (generate.py L272-276)

# Fast-dLLM v2 batch_sample: eval.py's defaults (bd_size 32, small_block_size 8, threshold 0.9,
# use_block_cache False; v2/eval.py L56-62), max_new_tokens 64 instead of 2048
FD_EVAL = dict(block_size=32, small_block_size=8, max_new_tokens=64, threshold=0.9, use_block_cache=False)
# SDAR block_diffusion_generate: block 4, 4 denoising steps (the script defaults, generate.py
# L217-233), gen_length 32 instead of 20480
SDAR_BASE = dict(gen_length=32, block_length=4, denoising_steps=4, top_k=0, top_p=1.0)
STOP_FD, STOP_SDAR = 57078, [35923, 50388]
# (name, checkpoint, kwargs, batched): batched = all prompts in one ragged call
RUNS = [
    ("fdv2_threshold", "fast_dllm_v2", FD_EVAL, False),
    ("fdv2_threshold_block_cache", "fast_dllm_v2", dict(FD_EVAL, use_block_cache=True), False),
    ("fdv2_threshold1", "fast_dllm_v2", dict(FD_EVAL, threshold=1.0), False),
    ("fdv2_threshold_ragged_batch", "fast_dllm_v2", FD_EVAL, True),
    ("fdv2_threshold_block_cache_ragged_batch", "fast_dllm_v2", dict(FD_EVAL, use_block_cache=True), True),
    # a stop token that the model does commit (the real ones are never proposed): prompt 0
    # commits 57078 in its second block, the others never; batch 1 (all rows finished: no cache
    # update forward) and ragged (the finished row is padded after its stop, then dropped). A
    # stop in the first block of a call without prefill crashes batch_sample (README).
    ("fdv2_threshold_stop", "fast_dllm_v2", dict(FD_EVAL, stop_token=STOP_FD), False),
    ("fdv2_threshold_stop_ragged_batch", "fast_dllm_v2", dict(FD_EVAL, stop_token=STOP_FD), True),
    (
        "sdar_dynamic",
        "sdar",
        dict(SDAR_BASE, remasking_strategy="low_confidence_dynamic", confidence_threshold=0.85),
        False,
    ),
    (
        "sdar_dynamic_t09",
        "sdar",
        dict(SDAR_BASE, remasking_strategy="low_confidence_dynamic", confidence_threshold=0.9),
        False,
    ),
    ("sdar_static", "sdar", dict(SDAR_BASE, remasking_strategy="low_confidence_static"), False),
    ("sdar_sequential", "sdar", dict(SDAR_BASE, remasking_strategy="sequential"), False),
    # stop ids that the model does commit: 35923 (prompt 0's 9th block), 50388 (prompt 1)
    (
        "sdar_dynamic_stop",
        "sdar",
        dict(
            SDAR_BASE,
            remasking_strategy="low_confidence_dynamic",
            confidence_threshold=0.85,
            stopping_criteria_idx=STOP_SDAR,
        ),
        False,
    ),
]
CHECK_LENGTH = 96  # the model check: prompt 1 (58 tokens) + masks to 96 (three 32-blocks)


# ----------------------------------------------------------------------------------------------
# worker (peer venv): torch, transformers and one peer's code only


class Recorder:
    """Counts forwards and records, per row and generated position, the 1-based index of the
    forward whose logits committed it. ``observe(tokens, start)`` is called at every forward
    with the canvas as that forward sees it (``tokens[b, j]`` at position ``start + j``): a
    position that was a mask (or unseen) at the previous forward and holds a token now was
    committed by the previous forward. ``finish(rows)`` diffs the returned canvas the same way
    (commits of the last forward). A committed position that later changes is counted in
    ``padded`` if it became ``pad`` (Fast-dLLM v2 pads a finished row after its stop token; the
    position keeps its commit step), else in ``rewrites`` (never expected). ``kinds`` keeps, per
    forward, ``[start, length, kind]``."""

    def __init__(self, prompt_lengths: list[int], mask: int, stop: int | None = None, pad: int | None = None):
        self.plen, self.mask, self.stop, self.pad = list(prompt_lengths), mask, stop, pad
        self.rows = list(range(len(prompt_lengths)))  # original row of each live batch row
        self.canvas = [dict() for _ in prompt_lengths]  # position -> token (generated region)
        self.step = [dict() for _ in prompt_lengths]
        self.rewrites = [0 for _ in prompt_lengths]
        self.padded = [0 for _ in prompt_lengths]
        self.forwards, self.kinds = 0, []

    def _take(self, r: int, tokens: list[int], start: int, step: int) -> None:
        for j, t in enumerate(tokens):
            p = start + j
            if p < self.plen[r]:
                continue
            old = self.canvas[r].get(p, self.mask)
            if t != self.mask and old == self.mask:
                self.step[r][p] = step
            elif t != old and old != self.mask:
                if t == self.pad:
                    self.padded[r] += 1
                else:
                    self.rewrites[r] += 1
            self.canvas[r][p] = t

    def observe(self, tokens, start: int, kind: str) -> None:
        if tokens.shape[0] < len(self.rows):  # Fast-dLLM drops finished rows at a block's end
            done = [r for r in self.rows if self.stop in self.canvas[r].values()]
            if len(self.rows) - len(done) != tokens.shape[0]:
                raise RuntimeError("cannot tell which rows were dropped")
            self.rows = [r for r in self.rows if r not in done]
        for b, r in enumerate(self.rows):
            self._take(r, tokens[b].tolist(), start, self.forwards)
        self.forwards += 1
        self.kinds.append([start, int(tokens.shape[1]), kind])

    def finish(self, r: int, row: list[int]) -> dict:
        self._take(r, row, 0, self.forwards)
        n = len(row) - self.plen[r]
        gen = row[self.plen[r] :]
        return {
            "tokens": gen,
            "commit_step": [self.step[r].get(self.plen[r] + i, -1) for i in range(n)],
            "canvas_tracked": all(self.canvas[r].get(self.plen[r] + i, self.mask) == t for i, t in enumerate(gen))
            and max(self.canvas[r], default=-1) < len(row),
            "rewrites": self.rewrites[r],
            "padded": self.padded[r],
        }


def _full_canvas(torch, ids):
    """The whole ``x_t`` a Fast-dLLM v2 forward slices its input from (``x_t[:, -32:]``,
    ``x_t[:, start:end]``, ``input_ids[:, :n]``), and the slice's start position."""
    L = ids.stride(0)
    if ids.stride(1) != 1 or ids.storage_offset() >= L:
        raise RuntimeError("the forward's input is not a column slice of a contiguous canvas")
    full = torch.empty(0, dtype=ids.dtype).set_(ids.untyped_storage(), 0, (ids.shape[0], L), (L, 1))
    return full, ids.storage_offset()


def _stage(ckpt: pathlib.Path, peers: pathlib.Path, fmt: str, tmp: pathlib.Path) -> pathlib.Path:
    """A temporary model directory: the checkpoint's files plus the release's remote code."""
    repo, files = REMOTE_CODE[fmt]
    d = tmp / f"{fmt}_model"
    d.mkdir()
    for f in ckpt.iterdir():
        (d / f.name).symlink_to(f.resolve())
    for f in files:
        shutil.copy(peers / repo / f, d / pathlib.Path(f).name)
    return d


def _flash_attn_shim(tmp: pathlib.Path) -> None:
    """SDAR's modeling file imports ``flash_attn`` (CUDA only) unconditionally: its RMSNorm calls
    ``flash_attn.ops.triton.layer_norm.rms_norm_fn`` and its eval attention calls
    ``flash_attn_func`` when the mask is all ones. This CPU stand-in computes the same math: the
    RMSNorm of the file's own commented-out reference (modeling_sdar.py L369-375, fp32) and
    non-causal softmax attention with GQA through ``F.scaled_dot_product_attention`` (what the
    file's own prefill branch calls, L587-595)."""
    root = tmp / "shim" / "flash_attn"
    (root / "ops" / "triton").mkdir(parents=True)
    (root / "__init__.py").write_text(
        "import torch.nn.functional as F\n\n"
        "def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):\n"
        "    assert not causal and dropout_p == 0.0 and not kwargs\n"
        "    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),\n"
        "                                       is_causal=False, scale=softmax_scale, enable_gqa=True)\n"
        "    return o.transpose(1, 2)\n"
    )
    (root / "ops" / "__init__.py").write_text("")
    (root / "ops" / "triton" / "__init__.py").write_text("")
    (root / "ops" / "triton" / "layer_norm.py").write_text(
        "import torch\n\n"
        "def rms_norm_fn(x, weight, bias=None, eps=1e-6, **kwargs):\n"
        "    assert bias is None and not kwargs\n"
        "    dtype = x.dtype\n"
        "    h = x.to(torch.float32)\n"
        "    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)\n"
        "    return weight * h.to(dtype)\n"
    )
    sys.path.insert(0, str(tmp / "shim"))


def _load_module(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # transformers' @auto_docstring looks the class's file up there
    spec.loader.exec_module(mod)
    return mod


def worker(fmt: str, peers: pathlib.Path, ckpt: str, prompts: list[list[int]], out: str) -> None:
    import types

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"{fmt}_peer_"))
    try:
        if fmt == "sdar":
            _flash_attn_shim(tmp)
        model_dir = _stage(pathlib.Path(ckpt), peers, fmt, tmp)
        model, info = AutoModelForCausalLM.from_pretrained(
            model_dir, trust_remote_code=True, torch_dtype=torch.float32, output_loading_info=True
        )
        model.eval()
        if any(info.values()):
            raise RuntimeError(f"{fmt}: the checkpoint does not load cleanly: {info}")
        repo, file = DECODER[fmt]
        gen = _load_module(f"peer_{fmt}_decoder", peers / repo / file)
        torch.save(_model_check(torch, model, fmt, prompts), out + ".logits.pt")  # [L, V]: too big for JSON
        runs = _run_fast_dllm_v2(torch, types, model, gen, prompts) if fmt == "fast_dllm_v2" else None
        if fmt == "sdar":
            runs = _run_sdar(torch, model, gen, prompts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pathlib.Path(out).write_text(json.dumps({"runs": runs}))


def _model_check(torch, model, fmt, prompts):
    """Logits of one full forward without cache: prompt 1 + masks to CHECK_LENGTH, block-causal
    from position 0 (Fast-dLLM v2: its ``eval_mask``; SDAR: generate.py's mask and position ids)
    and, for Fast-dLLM v2, shifted by one as ``batch_sample`` does (L105)."""
    mask = FD["mask"] if fmt == "fast_dllm_v2" else SDAR["mask"]
    x = torch.tensor([prompts[1] + [mask] * (CHECK_LENGTH - len(prompts[1]))])
    with torch.no_grad():
        if fmt == "fast_dllm_v2":
            logits = model(input_ids=x).logits
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        else:
            bl = model.config.block_size
            nb = CHECK_LENGTH // bl
            m = torch.tril(torch.ones(nb, nb)).repeat_interleave(bl, 0).repeat_interleave(bl, 1)[None]
            logits = model(x, attention_mask=m, position_ids=torch.arange(CHECK_LENGTH)[None]).logits
    return logits[0].contiguous()


def _run_fast_dllm_v2(torch, types, model, gen, prompts):
    # eval.py binds batch_sample to the model (L86) and calls it as mdm_sample (L266-277)
    model.mdm_sample = types.MethodType(gen.Fast_dLLM_QwenForCausalLM.batch_sample, model)
    tokenizer = types.SimpleNamespace(pad_token_id=FD["pad"])  # batch_sample reads only this
    results = {}
    for name, fmt, kwargs, batched in RUNS:
        if fmt != "fast_dllm_v2":
            continue
        groups = [list(range(len(prompts)))] if batched else [[i] for i in range(len(prompts))]
        rows = [None] * len(prompts)
        for group in groups:
            ps = [prompts[i] for i in group]
            stop = kwargs.get("stop_token", FD["stop"])
            rec = Recorder([len(p) for p in ps], FD["mask"], stop, FD["pad"])

            def hook(module, args, kw, rec=rec):  # the inner Fast_dLLM_QwenModel: batch_sample calls self.forward
                ids = kw["input_ids"] if "input_ids" in kw else args[0]
                full, start = _full_canvas(torch, ids)
                if kw.get("update_past_key_values"):
                    kind = "update"
                elif kw.get("block_past_key_values") is not None:
                    kind = "sub_block"
                else:
                    kind = "block"
                rec.observe(full, 0, kind)
                rec.kinds[-1][:2] = [start, int(ids.shape[1])]

            handle = model.model.register_forward_pre_hook(hook, with_kwargs=True)
            # eval.py L228-248: right-pad with the mask id to the longest prompt; min_len, seq_len
            width = max(len(p) for p in ps)
            x = torch.tensor([p + [FD["mask"]] * (width - len(p)) for p in ps])
            t0 = time.perf_counter()
            out = model.mdm_sample(
                x,
                tokenizer=tokenizer,
                min_len=min(len(p) for p in ps),
                seq_len=torch.tensor([len(p) for p in ps]),
                **dict(dict(mask_id=FD["mask"], stop_token=FD["stop"]), **kwargs),
            )
            seconds = time.perf_counter() - t0
            handle.remove()
            for b, i in enumerate(group):
                row = rec.finish(b, out[b].tolist())
                rows[i] = dict(row, nfe=None, forwards=rec.forwards, seconds=round(seconds, 2))
                if batched:
                    rows[i]["forward_kinds"] = rec.kinds if b == 0 else "see row 0"
                else:
                    rows[i]["forward_kinds"] = rec.kinds
        results[name] = {
            "peer": "Fast-dLLM",
            "function": "v2/generation_functions.py:Fast_dLLM_QwenForCausalLM.batch_sample",
            "kwargs": dict(dict(mask_id=FD["mask"], stop_token=FD["stop"], temperature=0.0, top_p=0.95), **kwargs),
            "batched": batched,
            "per_prompt": rows,
        }
    return results


def _run_sdar(torch, model, gen, prompts):
    # generate.py samples with torch.multinomial at every temperature and divides the logits by
    # the temperature (L35-43): T = 0 is not runnable. Greedy = T 1 (probabilities unchanged,
    # x0_p = softmax(logits)[x0]) with the draw replaced by its T -> 0 limit, the argmax.
    torch.multinomial = lambda probs, num_samples, **kw: probs.argmax(-1, keepdim=True)
    results = {}
    for name, fmt, kwargs, _ in RUNS:
        if fmt != "sdar":
            continue
        rows = []
        for prompt in prompts:
            rec = Recorder([len(prompt)], SDAR["mask"])

            def hook(module, args, kw, rec=rec):
                ids = args[0] if args else kw["input_ids"]
                start = int(kw["position_ids"][0, 0])
                rec.observe(ids, start, "store" if kw.get("store_kv") else "denoise")

            handle = model.register_forward_pre_hook(hook, with_kwargs=True)
            t0 = time.perf_counter()
            x = gen.block_diffusion_generate(
                model,
                prompt={"input_ids": torch.tensor([prompt])},
                mask_id=SDAR["mask"],
                temperature=1.0,
                **dict(dict(stopping_criteria_idx=SDAR["stops"]), **kwargs),
            )
            seconds = time.perf_counter() - t0
            handle.remove()
            row = rec.finish(0, x[0].tolist())
            rows.append(dict(row, nfe=None, forwards=rec.forwards, forward_kinds=rec.kinds, seconds=round(seconds, 2)))
        results[name] = {
            "peer": "SDAR",
            "function": "generate.py:block_diffusion_generate",
            "kwargs": dict(dict(mask_id=SDAR["mask"], stopping_criteria_idx=SDAR["stops"], temperature=1.0), **kwargs),
            "sampler": "torch.multinomial replaced by argmax (greedy)",
            "batched": False,
            "per_prompt": rows,
        }
    return results


# ----------------------------------------------------------------------------------------------
# driver (this project's venv)


def _ours(ckpt: pathlib.Path, prompt: list[int]):
    import torch

    from dllm_kernels.models import load_pretrained

    model = load_pretrained(ckpt, attn_impl="sdpa")
    x = torch.tensor([prompt + [model.config.mask_id] * (CHECK_LENGTH - len(prompt))])
    with torch.no_grad():
        return model(x)[0]


def _compare(torch, ours, theirs) -> dict:
    po, pt = torch.softmax(ours.double(), -1), torch.softmax(theirs.double(), -1)
    return {
        "max_abs_logit_diff": float((ours - theirs).abs().max()),
        "bitwise_equal": bool(torch.equal(ours, theirs)),
        "argmax_equal": bool(torch.equal(po.argmax(-1), pt.argmax(-1))),
        "max_abs_prob_diff": float((po.max(-1).values - pt.max(-1).values).abs().max()),
        "argmax": pt.argmax(-1).tolist(),
        "max_prob": pt.max(-1).values.tolist(),
    }


def driver(args) -> dict:
    import torch

    from dllm_kernels.models import load_tokenizer, write_tiny_checkpoint

    peers = pathlib.Path(args.peers)
    root = pathlib.Path(args.ckpt or tempfile.mkdtemp(prefix="block_tiny_"))
    doc = {
        "checkpoints": {},
        "prompts": [],
        "dtype": "float32",
        "device": "cpu",
        "model_check": {"length": CHECK_LENGTH, "prompt": 1},
        "peers": {name: {"commit": _commit(peers / name), "pinned": pin} for name, pin in PINNED.items()},
        "runs": {},
    }
    for fmt in args.only or list(CHECKPOINTS):
        ckpt = root / fmt
        write_tiny_checkpoint(ckpt, fmt, **CHECKPOINTS[fmt])
        tok = load_tokenizer(ckpt)
        prompts = [tok.encode(p) for p in PROMPTS]
        if [len(p) for p in prompts] != PROMPT_LENGTHS:
            raise RuntimeError(f"prompt lengths {[len(p) for p in prompts]} != {PROMPT_LENGTHS}")
        if doc["prompts"] and [p["ids"] for p in doc["prompts"]] != prompts:
            raise RuntimeError("the two tokenizers encode the prompts differently")
        doc["prompts"] = [{"text": t, "ids": ids} for t, ids in zip(PROMPTS, prompts)]
        doc["checkpoints"][fmt] = {
            "writer": "dllm_kernels.models.write_tiny_checkpoint",
            "model_type": fmt,
            "kwargs": CHECKPOINTS[fmt],
            "sha256": _sha256(ckpt),
        }
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [args.python, __file__, "--worker", fmt, "--peers", str(peers), "--ckpt", str(ckpt)]
            cmd += ["--prompts", json.dumps(prompts), "--worker-out", out.name]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"{fmt}: the worker FAILED\n{r.stderr[-5000:]}")
            got = json.loads(pathlib.Path(out.name).read_text())
            theirs = torch.load(out.name + ".logits.pt")
            os.unlink(out.name + ".logits.pt")
        print(f"{fmt}: {len(got['runs'])} runs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        cmp = _compare(torch, _ours(ckpt, prompts[1]), theirs)
        doc["model_check"][fmt] = cmp
        print(f"{fmt}: model check max |logit diff| {cmp['max_abs_logit_diff']:.3g}", file=sys.stderr)
        doc["runs"].update(got["runs"])
    return doc


def main(argv=None) -> None:
    cli(argv, __doc__, CHECKPOINTS, worker, driver, **CLI)


if __name__ == "__main__":
    main()
