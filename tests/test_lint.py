"""House rules as tooling: ``ruff check`` (and, once the tree is formatted, ``ruff format --check``)
with the configuration in pyproject.toml, over the whole repository.

Rules with findings in files that were being edited elsewhere when ruff was configured are in
:data:`PENDING_RULES`: the tree is checked without them, and the files already clean with every
rule (and formatted) are checked in full. After ``ruff check --fix .`` and ``ruff format .`` over
the merged tree (and the ``# fmt: skip`` markers removed), empty :data:`PENDING_RULES` and set
:data:`FORMAT_CHECK`.
"""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ruff") is None, reason="ruff is not installed (pip install -e '.[test]' installs it)"
)

# E501: lines over 120 characters (mostly behind `# fmt: skip`); the others: auto-fixable imports,
# annotations and two unused names in tests
PENDING_RULES = ("E501", "F401", "F841", "I001", "B007", "B008", "UP033", "UP035", "UP037", "UP045")
# checked with every selected rule already
CLEAN_FILES = (
    "dllm_kernels/__init__.py",
    "dllm_kernels/__main__.py",
    "dllm_kernels/_argtypes.py",
    "dllm_kernels/models/checkpoint.py",
    "tests/test_cli.py",
    "tests/test_docs.py",
    "tests/test_lint.py",
)
FORMAT_CHECK = False


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check_tree():
    r = _ruff("check", "--no-cache", "--output-format", "concise", "--ignore", ",".join(PENDING_RULES), ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_check_clean_files():
    r = _ruff("check", "--no-cache", "--output-format", "concise", *CLEAN_FILES)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_clean_files():
    r = _ruff("format", "--check", "--no-cache", *CLEAN_FILES)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(not FORMAT_CHECK, reason="the tree is formatted once after the merge (ruff format .)")
def test_ruff_format():
    r = _ruff("format", "--check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout + r.stderr
