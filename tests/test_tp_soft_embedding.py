"""Tensor-parallel soft embedding over a real collective (torch.distributed, gloo, 2 CPU
processes): each rank holds a vocabulary shard of the logits and of the embedding table
(vLLM's VocabParallelEmbedding), computes soft_embedding_partial, the ranks all-gather the
[rows, D + 4] states and merge them; every rank gets soft_embedding of the whole vocabulary."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dllm_kernels as dk
from dllm_kernels import reference

WORLD = 2
BOUNDS = ((0, 41), (41, 97))  # uneven shards of a 97-word vocabulary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, port, x, E, t, out_dir):
    os.environ["TRITON_INTERPRET"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        a, b = BOUNDS[rank]
        x_shard, e_shard = x[..., a:b].clone(), E[a:b].clone()  # what the rank holds
        results = {}
        for name, temperature in (("scalar", 0.6), ("zero", 0.0), ("row", t)):
            for backend in ("triton", "reference"):
                part = dk.soft_embedding_partial(x_shard, e_shard, temperature=temperature, backend=backend)
                gathered = [torch.empty_like(part) for _ in range(WORLD)]
                dist.all_gather(gathered, part)  # gloo has no all_gather_into_tensor
                results[name, backend] = dk.merge_soft_embedding(gathered, out_dtype=E.dtype, backend=backend)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gloo_all_gather_of_partial_states(tmp_path):
    x = torch.randn(2, 3, 97) * 3
    x[0, 1, [5, 90]] = 12.0  # a tie at the maximum across the ranks (T = 0: the mean of both rows)
    x[1, 0, :41] = float("-inf")  # rank 0 holds no finite logit of this row
    x[1, 2, :] = float("nan")  # no distribution: zeros
    E = torch.randn(97, 24)
    t = torch.rand(2, 3) + 0.2
    mp.start_processes(
        _rank_main, args=(_free_port(), x, E, t, str(tmp_path)), nprocs=WORLD, join=True, start_method="spawn"
    )
    want = {
        name: reference.soft_embedding(x, E, temperature=T) for name, T in (("scalar", 0.6), ("zero", 0.0), ("row", t))
    }
    assert torch.equal(want["zero"][1, 2], torch.zeros(24))
    torch.testing.assert_close(want["zero"][0, 1], (E[5] + E[90]) / 2)
    for rank in range(WORLD):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        assert len(results) == 6
        for (name, backend), got in results.items():
            assert got.shape == (2, 3, 24) and got.dtype == torch.float32
            torch.testing.assert_close(got, want[name], atol=1e-5, rtol=1e-5, msg=f"{name} on {backend}, rank {rank}")
