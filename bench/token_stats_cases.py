"""The token-statistics benchmark's candidates, importable without a GPU (tests check that every
candidate computes the same statistics, so the comparison is between equal work)."""

from __future__ import annotations

import torch

import dllm_kernels as dk
from dllm_kernels import reference


def peer_fp32_eager(logits: torch.Tensor):
    """What the public decoders do per step, in fp32: softmax, max, top-2, entropy (5+ ops)."""
    p = torch.softmax(logits.float(), dim=-1)
    top = p.topk(2, dim=-1)
    token = top.indices[..., 0]
    prob = top.values[..., 0]
    margin = top.values[..., 0] - top.values[..., 1]
    entropy = -(p * torch.log(p + 1e-12)).sum(-1)
    return token, prob, margin, entropy


def reference_fp64(logits: torch.Tensor):
    return tuple(reference.token_stats(logits))


def kernel(logits: torch.Tensor):
    return tuple(dk.token_stats(logits, backend="triton"))


CANDIDATES = {
    "triton": kernel,
    "reference_eager": reference_fp64,
    "peer_fp32_eager": peer_fp32_eager,
}


def compiled_candidates() -> dict:
    return {
        "reference_compiled": torch.compile(reference_fp64, dynamic=False),
        "peer_fp32_compiled": torch.compile(peer_fp32_eager, dynamic=False),
    }


# sampling at T > 0: an int seed (uniforms keyed by row * V + id) vs per-row seeds (keyed by the
# row's own seed and the id), what the decoding loop passes per canvas position
def kernel_sample_int_seed(logits: torch.Tensor):
    return tuple(dk.token_stats(logits, temperature=0.8, seed=1234, backend="triton"))


def kernel_sample_row_seeds(logits: torch.Tensor, seeds: torch.Tensor):
    return tuple(dk.token_stats(logits, temperature=0.8, seed=seeds, backend="triton"))


def shard_bounds(V: int, world: int) -> list[tuple[int, int]]:
    step = -(-V // world)
    return [(a, min(a + step, V)) for a in range(0, V, step)]


def kernel_tp(logits: torch.Tensor, world: int, backend: str = "triton"):
    """The tensor-parallel path on one device: every rank's token_stats_partial over its vocabulary
    shard (run one after the other here; in a TP run each rank runs one), then the merge of the
    gathered 8-word states."""
    V = logits.shape[-1]
    parts = [
        dk.token_stats_partial(logits[..., a:b], a, vocab_size=V, backend=backend) for a, b in shard_bounds(V, world)
    ]
    return tuple(dk.merge_token_stats(parts, backend=backend))
