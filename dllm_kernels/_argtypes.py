"""argparse types of the command-line tools: an explicit bad value is an error, never a default.

Each raises :class:`argparse.ArgumentTypeError`, which argparse reports as one line naming the
option (``argument --gen-length: must be a positive integer, got '0'``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _float(text, "a finite number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    value = _float(text, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def run_command(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace, list[str]], int],
    argv: list[str] | None,
) -> int:
    """A stand-alone command's ``main``: parse ``argv`` (default ``sys.argv[1:]``) with the options
    of ``add_arguments`` and call ``run(args, command)``, ``command`` the command line as typed
    (``prog`` then the arguments), for the run's record."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(ap)
    command = [prog, *(sys.argv[1:] if argv is None else argv)]
    return run(ap.parse_args(argv), command)
