"""House rules as tooling: ``ruff check`` and ``ruff format --check`` over the whole repository,
with the configuration in pyproject.toml (line length 120; rules E, W, F, I, B, UP). Fix a
failure with ``ruff check --fix .`` and ``ruff format .``."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ruff") is None, reason="ruff is not installed (pip install -e '.[test]' installs it)"
)


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check():
    r = _ruff("check", "--no-cache", "--output-format", "concise", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format():
    r = _ruff("format", "--check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_format_skip_markers():
    """The code is formatted as ruff formats it: no line opts out."""
    marker = "# fmt: " + "skip"
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in ROOT.rglob("*.py")
        if not {".venv", "build"} & set(p.relative_to(ROOT).parts)
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if marker in line
    ]
    assert not hits, hits
