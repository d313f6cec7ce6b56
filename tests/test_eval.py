"""AUP (hand-worked cases) and the monitoring vanilla decoder (scripted model)."""

import math

import pytest
import torch

from dllm_kernels.eval import aup, vanilla_decode
from dllm_kernels.models import tiny


def test_aup_single_point_is_the_accuracy():
    assert aup([(1.0, 80.0)], y_max=90.0) == 80.0


def test_aup_two_points_by_hand():
    # W(80) = 1 (y = y_max); W(78) = exp(-3 (1 - 78/80)) = exp(-0.075) = 0.9277434863
    # AUP = 1 * 80 + 1/2 (3 - 1) (78 * 0.9277434863 + 80 * 1) = 80 + 72.3639919 + 80
    assert aup([(3.0, 78.0), (1.0, 80.0)], y_max=80.0) == pytest.approx(232.3639919, abs=1e-6)


def test_aup_drops_points_below_y1_minus_5():
    # sorted: (1, 80) (2, 76) (3, 79) (4, 74); y_1 = 80, so (4, 74) < 75 is dropped.
    # W(76) = exp(-0.15) = 0.8607079764, W(79) = exp(-0.0375) = 0.9631944177
    # AUP = 80 + 1/2 (76 W(76) + 80) + 1/2 (79 W(79) + 76 W(76))
    #     = 80 + 1/2 (65.4138062 + 80) + 1/2 (76.0923590 + 65.4138062) = 223.4599857
    pts = [(1.0, 80.0), (4.0, 74.0), (2.0, 76.0), (3.0, 79.0)]
    assert aup(pts, y_max=80.0) == pytest.approx(223.4599857, abs=1e-6)
    assert aup(pts, y_max=80.0) == aup(pts[:1] + pts[2:], y_max=80.0)


def test_aup_weight_is_capped_at_one_and_y1_unweighted():
    # y_max below the points' accuracy: W = 1, the trapezoid of the raw accuracies
    assert aup([(1.0, 50.0), (2.0, 50.0)], y_max=40.0) == pytest.approx(50.0 + 50.0)
    # the first term is not weighted even when y_1 < y_max
    assert aup([(2.0, 40.0)], y_max=80.0) == 80.0


def test_aup_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        aup([], y_max=1.0)
    with pytest.raises(ValueError, match="y_max"):
        aup([(1.0, 1.0)], y_max=0.0)


class Scripted(torch.nn.Module):
    """Canvas position i proposes token ``i % 10`` with a probability that grows with
    ``(7 * i) % 11`` (distinct within any 4 consecutive positions), so the commit order inside a
    block is known; records every canvas it is run on."""

    def __init__(self):
        super().__init__()
        self.config = tiny(vocab_size=16)
        self.lm_head = torch.nn.Linear(1, 1)
        self.seen = []

    def forward(self, x, logits_index):
        self.seen.append(x.clone())
        pos = logits_index[0]
        logits = torch.zeros(x.shape[0], len(pos), 16)
        logits[:, torch.arange(len(pos)), pos % 10] = ((7 * pos) % 11 + 1).float()
        return logits


def test_vanilla_decode_commits_one_most_confident_token_per_step():
    m = Scripted()
    P, G, bl = 5, 8, 4
    prompt = torch.arange(2 * P).view(2, P) % 10
    out = vanilla_decode(m, prompt, gen_length=G, block_length=bl)
    assert out.tolist() == [[(P + i) % 10 for i in range(G)]] * 2
    assert len(m.seen) == G  # one forward per token
    mask = m.config.mask_id
    for step, x in enumerate(m.seen):
        assert torch.equal(x[:, :P], prompt)  # the prompt is never touched
        blk, k = divmod(step, bl)
        masked = (x[:, P:] == mask).sum(-1)
        assert masked.tolist() == [G - step] * 2
        # the k positions committed so far in this block are its k most confident ones
        pos = torch.arange(P + blk * bl, P + (blk + 1) * bl)
        order = pos[torch.argsort((7 * pos) % 11, descending=True, stable=True)]
        assert (x[0, order[:k]] != mask).all() and (x[0, order[k:]] == mask).all()
