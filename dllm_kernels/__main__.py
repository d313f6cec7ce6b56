"""Command line: ``python -m dllm_kernels <command>`` (also installed as ``dllm-kernels``)."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dllm-kernels", description="Fused Triton kernels for dLLM decoding.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="token statistics of one decoding step on both backends, checked and timed")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--vocab", type=int, default=126464)

    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        return run(rows=args.rows, vocab=args.vocab)
    return 2


if __name__ == "__main__":
    sys.exit(main())
