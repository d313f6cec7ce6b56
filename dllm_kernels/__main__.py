"""Command line: ``python -m dllm_kernels <command>`` (also installed as ``dllm-kernels``).

One subcommand per job: ``demo``, ``generate``, ``eval``, ``distill``, ``train``, ``bench``
(``<command> --help`` lists its options). Without CUDA the Triton kernels run on Triton's CPU
interpreter (set before any kernel import).

Bad input ends the command with one line on stderr, ``dllm-kernels <command>: error: ...``, naming
the option or argument, and exit status 2 (1 for an unexpected failure); a decode that reaches
``max_nfe`` forwards with masks left (:class:`dllm_kernels.MaxNFEError`) is one line too, status 1;
``--debug`` shows the traceback instead. An explicit value is never replaced by a default: ``--gen-length 0`` is an
error, not "the default length".
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

from ._argtypes import nonnegative_float, positive_int

PROG = "dllm-kernels"


class CLIError(Exception):
    """Bad command-line input: printed as one line (no traceback), exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints the usage and exits; one line instead
        raise CLIError(f"{self.prog}: error: {message}")


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
        if not sep or not key:
            raise CLIError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.replace("-", "_")] = _value(val)
    return out


def _parse_problem(text: str, n_digits: int):
    """``--problem 'a+b'``: two non-negative integers of at most the task's ``n_digits`` digits."""
    from .addition.task import Problem

    m = re.fullmatch(r"\s*(\d+)\s*\+\s*(\d+)\s*", text)
    if m is None:
        raise CLIError(f"--problem expects 'a+b' with two non-negative integers, got {text!r}")
    a, b = m.group(1).lstrip("0") or "0", m.group(2).lstrip("0") or "0"
    if max(len(a), len(b)) > n_digits:
        raise CLIError(f"--problem: the model adds numbers of at most {n_digits} digits, got {text!r}")
    return Problem(int(a), int(b))


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint directory (LLaDA/Dream HF format or native); default: the embedded tiny addition model",
    )
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default: bfloat16 on cuda, float32 on cpu",
    )
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "reference"])


def _device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(name).type
    except RuntimeError as e:
        raise CLIError(f"--device: {' '.join(str(e).split())}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: no CUDA device on this machine")
    return name


def _load(args):
    """(model, tokenizer, task or None, device) for the model arguments: the task of the shipped
    model or of a ``--model`` directory holding a ``task.json``, else None."""
    import torch

    from .addition import default_model
    from .models import load_pretrained, load_tokenizer

    device = _device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
    try:
        if args.model is None or (pathlib.Path(args.model) / "task.json").is_file():
            # the shipped model, or a checkpoint of dllm_kernels train / distill (with its task)
            path = {} if args.model is None else {"path": args.model}
            model, tok, task = default_model(device=device, dtype=dtype, backend=args.backend, **path)
            return model, tok, task, device
        model = load_pretrained(args.model, device=device, dtype=dtype, backend=args.backend)
        return model, load_tokenizer(args.model), None, device
    except (OSError, ValueError, TypeError) as e:
        raise CLIError(f"--model {args.model or '(default)'}: {e}") from None


def cmd_generate(args) -> int:
    from . import generate
    from .policies import resolve_policy

    model, tok, task, _ = _load(args)
    try:
        policy = resolve_policy(args.policy, **_overrides(args.set))
    except (TypeError, ValueError) as e:
        raise CLIError(f"--set: {e}") from None
    gen_length = args.gen_length if args.gen_length is not None else (task.gen_length if task else 256)
    block_length = args.block_length if args.block_length is not None else (task.block_length if task else 32)
    if task is not None and args.prompt is None:
        problem = _parse_problem(args.problem, task.n_digits)
        prompt_text, expected = task.prompt(problem), task.answer(problem)
        print(
            f"problem  {problem.a} + {problem.b} = {problem.a + problem.b}   "
            f"(digits least significant first: prompt {prompt_text!r})"
        )
    else:
        prompt_text, expected = args.prompt or "", None
    try:
        ids = tok.encode(prompt_text)
    except Exception as e:  # the tokenizer's own error types
        raise CLIError(f"--prompt {prompt_text!r}: the tokenizer rejects it ({e})") from None
    out = generate(
        model,
        [ids],
        policy=policy,
        gen_length=gen_length,
        block_length=block_length,
        temperature=args.temperature,
        seed=args.seed,
        backend=args.backend,
        progress=args.progress or gen_length >= 128,
    )
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
        default_gen, default_block = task.gen_length, task.block_length
    else:
        rng = random.Random(args.seed)
        vocab = model.config.vocab_size // 2
        prompts = [[rng.randrange(vocab) for _ in range(args.prompt_length)] for _ in range(args.batch)]
        default_gen, default_block = 256, 32
    gen_length = args.gen_length if args.gen_length is not None else default_gen
    block_length = args.block_length if args.block_length is not None else default_block
    print(
        f"end-to-end decode benchmark on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), "
        f"batch {len(prompts)}, gen {gen_length}, block {block_length}"
    )
    if device == "cpu":
        print("(on a CPU the kernel path runs on Triton's interpreter: compare NFE and tokens per forward, not time)")
    benchmark.run(
        model,
        prompts,
        policies=args.policies,
        paths=args.paths,
        gen_length=gen_length,
        block_length=block_length,
        repeats=args.repeats,
        out=args.out,
    )
    return 0


def cmd_eval(args) -> int:
    import torch

    from .addition import evaluate as ev
    from .addition.default import (
        DEFAULT_BLOCK_DIFFUSION_DIR,
        DEFAULT_DISTILLED_DIR,
        DEFAULT_UNIFORM_STATE_DIR,
        default_model,
    )

    torch.set_num_threads(args.threads)
    model, tok, task, device = _load(args)
    if task is None:
        raise CLIError("--model: eval needs a checkpoint written by dllm_kernels train or distill (with task.json)")
    models = {args.label: model}
    shipped = (DEFAULT_DISTILLED_DIR, DEFAULT_BLOCK_DIFFUSION_DIR, DEFAULT_UNIFORM_STATE_DIR)
    default = [d for d in shipped if d.is_dir()] if args.model is None else []
    for path in default if args.compare is None else args.compare:
        try:
            models[pathlib.Path(path).name] = default_model(
                device=device, dtype=model.lm_head.weight.dtype, backend=args.backend, path=path
            )[0]
        except (OSError, ValueError, TypeError) as e:
            raise CLIError(f"--compare {path}: {e}") from None
    n = args.problems if args.problems is not None else (1000 if args.full else 64)
    sweeps = ev.FULL_SWEEPS if args.full else ev.QUICK_SWEEPS
    # a policy without a sweep of its own (d3llm_dream) is evaluated at its published setting
    if args.policies is None:  # every policy with a sweep that fits one of the models
        sweeps = {p: v for p, v in sweeps.items() if any(ev.fits(m, p) for m in models.values())}
    else:
        sweeps = {p: sweeps.get(p, [{}]) for p in args.policies}
    unfit = [p for p in sweeps if not any(ev.fits(m, p) for m in models.values())]
    if unfit:
        raise CLIError(
            f"--policies: {', '.join(unfit)} fit none of the models ({', '.join(models)}): block-causal policies "
            "need a block-diffusion checkpoint (config block_size), diffusion_gemma a uniform-state one "
            "(config uniform_state), the others a bidirectional one or vanilla"
        )
    problems = task.heldout(n, seed=args.seed)
    kind = "full" if args.full else "quick"
    print(
        f"evaluating {', '.join(models)} on {n} held-out addition problems ({kind} sweep, {device}); "
        "TPF = tokens up to EOS per forward, tok/s = this machine"
    )
    print(ev.HEADER)
    rows = ev.sweep(
        models,
        task,
        problems,
        tok,
        sweeps,
        batch_size=args.batch,
        backend=args.backend,
        log=print,
        threads=args.threads,
    )
    print()
    print(ev.format_aup(ev.aup_table(rows)))
    if args.out:
        meta = {"command": " ".join(["python -m dllm_kernels", *args.argv]), "device": device, "seed": args.seed}
        paths = ev.write_results(rows, args.out, name=args.name, meta=meta)
        print("wrote " + ", ".join(map(str, paths)))
    return 0


def cmd_demo(args) -> int:
    from .demo import run

    return run(rows=args.rows, vocab=args.vocab)


def cmd_train(args) -> int:
    from .addition.train import run

    return run(args, command=["python -m dllm_kernels", *args.argv])


def cmd_distill(args) -> int:
    from .addition.distill import run

    return run(args, command=["python -m dllm_kernels", *args.argv])


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each sets ``args.run`` to its ``cmd_*`` function."""
    from .addition.distill import add_arguments as distill_arguments
    from .addition.train import add_arguments as train_arguments
    from .benchmark import DEFAULT_POLICIES
    from .policies import POLICIES

    policies = sorted(POLICIES)
    debug = _Parser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on an error, show the traceback instead of one line",
    )
    parser = _Parser(prog=PROG, description="Fused Triton kernels for dLLM decoding.", parents=[debug])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[debug])
        p.set_defaults(run=run)
        return p

    p = command("demo", cmd_demo, "token statistics of one decoding step on both backends, checked and timed")
    p.add_argument("--rows", type=positive_int, default=32)
    p.add_argument("--vocab", type=positive_int, default=126464)

    p = command("generate", cmd_generate, "decode one prompt with a policy and print the text and NFE")
    _add_model_args(p)
    p.add_argument("--prompt", default=None, help="prompt text (default model: use --problem instead)")
    p.add_argument("--problem", default="98765+43210", help="default model: the addition to solve, 'a+b'")
    p.add_argument("--policy", default="fast_dllm", choices=policies)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="policy option, e.g. --set threshold=0.8 --set cache=dual (repeatable)",
    )
    p.add_argument("--gen-length", type=positive_int, default=None, help="default: the task's, else 256")
    p.add_argument("--block-length", type=positive_int, default=None, help="default: the task's, else 32")
    p.add_argument("--temperature", type=nonnegative_float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--progress", action="store_true", help="show a progress bar")

    p = command("eval", cmd_eval, "every policy's accuracy / NFE / tokens per forward sweep and d3LLM's AUP")
    _add_model_args(p)
    p.add_argument("--full", action="store_true", help="1000 problems and the full threshold sweeps (minutes)")
    p.add_argument("--problems", type=positive_int, default=None, help="held-out problems (default 64, --full 1000)")
    p.add_argument(
        "--policies",
        nargs="+",
        default=None,
        choices=policies,
        help="default: those with a sweep that fit one of the models",
    )
    p.add_argument(
        "--compare",
        nargs="*",
        default=None,
        metavar="DIR",
        help="more checkpoints on the same sweep (default: the shipped distilled, block-diffusion and "
        "uniform-state ones; --compare alone: none)",
    )
    p.add_argument("--label", default="base", help="name of --model in the tables")
    p.add_argument("--out", default=None, help="write NAME.md, NAME.json and NAME.png (accuracy vs TPF) here")
    p.add_argument("--name", default="eval")
    p.add_argument("--batch", type=positive_int, default=256)
    p.add_argument("--seed", type=int, default=1234, help="held-out set seed")
    p.add_argument("--threads", type=positive_int, default=1, help="intra-op threads (1: fastest for the tiny model)")

    p = command("distill", cmd_distill, "d3LLM-style trajectory distillation of the embedded model")
    distill_arguments(p)

    p = command(
        "train",
        cmd_train,
        "train the tiny addition model (from scratch, or fine-tune with --init; block diffusion with --block-size) "
        "and write its checkpoint",
    )
    train_arguments(p)

    p = command("bench", cmd_bench, "end-to-end decode benchmark of every policy: NFE, tokens/forward, tokens/s")
    _add_model_args(p)
    p.add_argument("--policies", nargs="+", default=list(DEFAULT_POLICIES), choices=policies)
    p.add_argument("--paths", nargs="+", default=["kernels", "reference"], choices=["kernels", "reference", "sdpa"])
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--repeats", type=positive_int, default=1)
    p.add_argument("--prompt-length", type=positive_int, default=128, help="random prompts for a --model checkpoint")
    p.add_argument("--gen-length", type=positive_int, default=None, help="default: the task's, else 256")
    p.add_argument("--block-length", type=positive_int, default=None, help="default: the task's, else 32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the table as JSON")
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv=None) -> int:
    """Run one command; returns its exit status (bad input: one line on stderr, status 2)."""
    from ._env import keep_freed_memory, use_interpreter_without_gpu

    use_interpreter_without_gpu()  # before anything imports the kernels
    keep_freed_memory()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        return args.run(args)
    except Exception as e:
        if getattr(args, "debug", False):
            raise
        # argparse's messages carry their prefix; the library's checks (ValueError / TypeError
        # naming the argument) and file errors are bad input too; anything else is unexpected
        prefix = "" if args is None else f"{PROG} {args.command}: error: "
        if isinstance(e, (CLIError, ValueError, TypeError, OSError)):
            print(prefix + _one_line(e), file=sys.stderr)
            return 2
        from ._validate import MaxNFEError

        if isinstance(e, MaxNFEError):  # the decode failed (no bad input): no traceback hint
            print(prefix + _one_line(e), file=sys.stderr)
            return 1
        print(f"{prefix}{type(e).__name__}: {_one_line(e)} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
