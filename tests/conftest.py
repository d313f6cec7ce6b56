"""Test setup: without CUDA the Triton kernels run on Triton's CPU interpreter.

TRITON_INTERPRET must be set before any kernel module is imported (Triton decides at decoration
time whether @triton.jit builds an interpreted function), hence at the very top of this file.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (CPU-only machine: kernels are tested on the interpreter)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> str:
    """Where kernel tests run: the GPU if there is one, else the CPU through the interpreter."""
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def poison_kernel_outputs(monkeypatch):
    """Every buffer a launcher allocates starts as NaN (floats) or -1 (ints), so an element the
    kernel forgets to write fails the comparison instead of passing by luck."""
    from dllm_kernels.kernels import _utils

    def poisoned(*shape, dtype, device):
        t = torch.empty(*shape, dtype=dtype, device=device)
        if dtype.is_floating_point:
            return t.fill_(float("nan"))
        if dtype == torch.bool:
            return t.fill_(True)
        return t.fill_(-1)

    monkeypatch.setattr(_utils, "empty", poisoned)
