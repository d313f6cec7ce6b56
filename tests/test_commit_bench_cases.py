"""The commit benchmark compares equal work: every candidate gives the same result on its cases."""

import dataclasses
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))

from commit_cases import CANDIDATES, POLICIES, copy_case, make_case  # noqa: E402


@pytest.mark.parametrize("policy", list(POLICIES))
def test_commit_candidates_agree(device, policy):
    case = make_case(3, 128, 32, policy, device)
    want = copy_case(case)
    counts = CANDIDATES["reference_eager"](want)
    assert counts.sum() > 0  # the case commits something
    for name, fn in CANDIDATES.items():
        got = copy_case(case)
        assert torch.equal(fn(got).cpu(), counts.cpu()), name
        assert torch.equal(got["x"].cpu(), want["x"].cpu()), name
        for f in dataclasses.fields(got["state"]):
            assert torch.equal(getattr(got["state"], f.name).cpu(), getattr(want["state"], f.name).cpu()), (
                name,
                f.name,
            )
