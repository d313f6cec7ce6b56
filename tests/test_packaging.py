"""The product layout maps kernels/ and reference/ into the package, for every kind of install."""

import pathlib
import subprocess
import sys
import zipfile

import pytest

import dllm_kernels
import dllm_kernels.kernels
import dllm_kernels.reference

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_subpackages_come_from_the_top_level_folders():
    # an editable install (or a source checkout) imports the repository's own files
    if pathlib.Path(dllm_kernels.__file__).resolve().parents[1] == ROOT:
        assert pathlib.Path(dllm_kernels.kernels.__file__).resolve().parent == ROOT / "kernels"
        assert pathlib.Path(dllm_kernels.reference.__file__).resolve().parent == ROOT / "reference"


@pytest.mark.slow
def test_wheel_contains_the_same_modules(tmp_path):
    """A regular (wheel) install ships the same module files under dllm_kernels/."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("dllm_kernels-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder, package in (
        ("dllm_kernels", "dllm_kernels"),
        ("kernels", "dllm_kernels/kernels"),
        ("reference", "dllm_kernels/reference"),
    ):
        for f in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in f.parts:
                expected.add(f"{package}/{f.relative_to(ROOT / folder).as_posix()}")
    expected |= {
        f"dllm_kernels/addition/assets/tiny-addition/{f}"
        for f in ("config.json", "model.safetensors", "tokenizer.json")
    }
    missing = expected - names
    assert not missing, f"missing from the wheel: {sorted(missing)}"


def test_uninstalled_checkout_says_to_install(tmp_path):
    """The repository on sys.path without the install's mapping of kernels/ and reference/ (the
    editable finder removed): ``import dllm_kernels`` names the fix instead of a circular import."""
    code = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import dllm_kernels\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: dllm_kernels is imported from a source checkout that is not installed")
    assert "pip install -e ." in last and "circular" not in r.stderr
