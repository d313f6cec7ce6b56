"""The benchmark compares equal work: every token_stats candidate computes the same statistics."""

import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))

from token_stats_cases import CANDIDATES  # noqa: E402


def test_token_stats_candidates_agree(device):
    x = (torch.randn(4, 3000) * 3).to(device=device, dtype=torch.bfloat16)
    ref = CANDIDATES["reference_eager"](x.cpu())
    for name, fn in CANDIDATES.items():
        got = [t.cpu() for t in fn(x)]
        assert torch.equal(got[0], ref[0]), name
        for g, r in zip(got[1:], ref[1:]):
            torch.testing.assert_close(g.float(), r.float(), atol=1e-5, rtol=1e-5, msg=name)
