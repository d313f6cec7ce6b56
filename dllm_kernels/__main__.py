"""Command line: ``python -m dllm_kernels <command>`` (also installed as ``dllm-kernels``).

Without CUDA the Triton kernels run on Triton's CPU interpreter (set before any kernel import).
"""

from __future__ import annotations

import argparse
import pathlib
import sys


def _value(text: str):
    """``--set`` values: int, float, bool, None or string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, val = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        out[key.replace("-", "_")] = _value(val)
    return out


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint directory (LLaDA/Dream HF format or native); "
                   "default: the embedded tiny addition model")  # fmt: skip
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on cuda, float32 on cpu")  # fmt: skip
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "reference"])


def _load(args):
    """(model, tokenizer, task or None, device) for the model arguments."""
    import torch

    from .models import default_model, load_pretrained, load_tokenizer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
    if args.model is None:
        model, tok, task = default_model(device=device, dtype=dtype, backend=args.backend)
        return model, tok, task, device
    model = load_pretrained(args.model, device=device, dtype=dtype, backend=args.backend)
    return model, load_tokenizer(args.model), None, device


def cmd_generate(args) -> int:
    from . import generate
    from .task import Problem

    model, tok, task, _ = _load(args)
    gen_length = args.gen_length or (task.gen_length if task else 256)
    block_length = args.block_length or (task.block_length if task else 32)
    if task is not None and args.prompt is None:
        a, b = (int(v) for v in args.problem.split("+"))
        problem = Problem(a, b)
        prompt_text, expected = task.prompt(problem), task.answer(problem)
        print(f"problem  {a} + {b} = {a + b}   (digits least significant first: prompt {prompt_text!r})")
    else:
        prompt_text, expected = args.prompt or "", None
    ids = tok.encode(prompt_text)
    out = generate(model, [ids], policy=args.policy, gen_length=gen_length, block_length=block_length,
                   temperature=args.temperature, seed=args.seed, backend=args.backend,
                   progress=args.progress or gen_length >= 128, **_overrides(args.set))  # fmt: skip
    ids = out.generated[0].tolist()
    if tok.eos_id in ids:  # the answer ends at the first EOS (the rest of the region is EOS too)
        ids = ids[: ids.index(tok.eos_id) + 1]
    text = tok.decode(ids)
    # tokens per forward as d3LLM counts it: generated tokens up to the first EOS, per forward
    print(f"policy   {args.policy}   NFE {out.nfe.item()}   tokens per forward {len(ids) / out.nfe.item():.2f}")
    print(f"output   {text!r}")
    if expected is not None:
        print(f"expected {expected!r}   -> {'correct' if text == expected else 'WRONG'}")
    return 0


def cmd_bench(args) -> int:
    import random

    import torch

    from . import benchmark

    model, tok, task, device = _load(args)
    if task is not None:
        problems = task.heldout(args.batch, seed=args.seed)
        prompts = [tok.encode(task.prompt(p)) for p in problems]
        gen_length, block_length = task.gen_length, task.block_length
    else:
        rng = random.Random(args.seed)
        prompts = [[rng.randrange(model.config.vocab_size // 2) for _ in range(args.prompt_length)] for _ in range(args.batch)]
        gen_length, block_length = args.gen_length or 256, args.block_length or 32
    print(f"end-to-end decode benchmark on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), "
          f"batch {len(prompts)}, gen {gen_length}, block {block_length}")  # fmt: skip
    if device == "cpu":
        print("(on a CPU the kernel path runs on Triton's interpreter: compare NFE and tokens per forward, not time)")
    benchmark.run(model, prompts, policies=args.policies, paths=args.paths, gen_length=gen_length,
                  block_length=block_length, repeats=args.repeats, out=args.out)  # fmt: skip
    return 0


def cmd_eval(args) -> int:
    import torch

    from . import eval as ev
    from .models.default import DEFAULT_DISTILLED_DIR, default_model

    torch.set_num_threads(args.threads)
    model, tok, task, device = _load(args)
    if task is None:
        raise SystemExit("eval: --model must be a checkpoint written by dllm_kernels.train or .distill (task.json)")
    models = {args.label: model}
    default = [DEFAULT_DISTILLED_DIR] if args.model is None and DEFAULT_DISTILLED_DIR.is_dir() else []
    for path in default if args.compare is None else args.compare:
        models[pathlib.Path(path).name] = default_model(device=device, dtype=model.lm_head.weight.dtype,
                                                        backend=args.backend, path=path)[0]  # fmt: skip
    n = args.problems or (1000 if args.full else 64)
    sweeps = ev.FULL_SWEEPS if args.full else ev.QUICK_SWEEPS
    sweeps = {p: s for p, s in sweeps.items() if p in args.policies}
    problems = task.heldout(n, seed=args.seed)
    print(f"evaluating {', '.join(models)} on {n} held-out addition problems ({'full' if args.full else 'quick'} sweep, "
          f"{device}); TPF = tokens up to EOS per forward, tok/s = this machine")  # fmt: skip
    print(ev.HEADER)
    rows = ev.sweep(models, task, problems, tok, sweeps, batch_size=args.batch, backend=args.backend, log=print,
                    threads=args.threads)  # fmt: skip
    print()
    print(ev.format_aup(ev.aup_table(rows)))
    if args.out:
        meta = {"command": " ".join(["python -m dllm_kernels", *sys.argv[1:]]), "device": device, "seed": args.seed}
        paths = ev.write_results(rows, args.out, name=args.name, meta=meta)
        print("wrote " + ", ".join(map(str, paths)))
    return 0


def main(argv=None) -> int:
    from ._env import use_interpreter_without_gpu
    from .policies import POLICIES

    use_interpreter_without_gpu()
    parser = argparse.ArgumentParser(prog="dllm-kernels", description="Fused Triton kernels for dLLM decoding.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="token statistics of one decoding step on both backends, checked and timed")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--vocab", type=int, default=126464)

    p = sub.add_parser("generate", help="decode one prompt with a policy and print the text and NFE")
    _add_model_args(p)
    p.add_argument("--prompt", default=None, help="prompt text (default model: use --problem instead)")
    p.add_argument("--problem", default="98765+43210", help="default model: the addition to solve, 'a+b'")
    p.add_argument("--policy", default="fast_dllm", choices=sorted(POLICIES))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="policy option, e.g. --set threshold=0.8 --set cache=dual (repeatable)")  # fmt: skip
    p.add_argument("--gen-length", type=int, default=None)
    p.add_argument("--block-length", type=int, default=None)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--progress", action="store_true", help="show a progress bar")

    p = sub.add_parser("bench", help="end-to-end decode benchmark of every policy: NFE, tokens/forward, tokens/s")
    _add_model_args(p)
    p.add_argument("--policies", nargs="+", default=["vanilla", "fast_dllm", "streaming", "r2", "d3llm"],
                   choices=sorted(POLICIES))  # fmt: skip
    p.add_argument("--paths", nargs="+", default=["kernels", "reference"], choices=["kernels", "reference", "sdpa"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--prompt-length", type=int, default=128, help="random prompts for a --model checkpoint")
    p.add_argument("--gen-length", type=int, default=None)
    p.add_argument("--block-length", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the table as JSON")

    p = sub.add_parser("eval", help="every policy's accuracy / NFE / tokens per forward sweep and d3LLM's AUP")
    _add_model_args(p)
    p.add_argument("--full", action="store_true", help="1000 problems and the full threshold sweeps (minutes)")
    p.add_argument("--problems", type=int, default=None, help="held-out problems (default 64, --full 1000)")
    p.add_argument("--policies", nargs="+", default=["vanilla", "fast_dllm", "streaming", "r2", "d3llm"],
                   choices=["vanilla", "fast_dllm", "streaming", "r2", "d3llm"])  # fmt: skip
    p.add_argument("--compare", nargs="*", default=None, metavar="DIR",
                   help="more checkpoints on the same sweep (default: the shipped distilled one; --compare alone: none)")  # fmt: skip
    p.add_argument("--label", default="base", help="name of --model in the tables")
    p.add_argument("--out", default=None, help="write NAME.md, NAME.json and NAME.png (accuracy vs TPF) here")
    p.add_argument("--name", default="eval")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=1234, help="held-out set seed")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (1: fastest for the tiny model)")

    sub.add_parser("distill", help="d3LLM-style trajectory distillation of the embedded model (distill --help)")

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["distill"]:  # its own parser (dllm_kernels.distill.main)
        from .distill import main as distill_main

        return distill_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        return run(rows=args.rows, vocab=args.vocab)
    return {"generate": cmd_generate, "bench": cmd_bench, "eval": cmd_eval}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
