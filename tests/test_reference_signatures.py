"""Every reference has its public op's signature minus ``backend`` (DESIGN.md 2): the same
parameter names, kinds and defaults, so that a test calls either with the same arguments.
Annotations are not compared: the references leave the types to the public op."""

import inspect

import pytest

import dllm_kernels as dk
from dllm_kernels import reference


def _parameters(fn) -> list[tuple]:
    params = inspect.signature(fn).parameters.values()
    return [(p.name, p.kind, p.default) for p in params if p.name != "backend"]


@pytest.mark.parametrize("name", reference.__all__)
def test_reference_has_the_public_signature(name):
    assert _parameters(getattr(reference, name)) == _parameters(getattr(dk, name))
