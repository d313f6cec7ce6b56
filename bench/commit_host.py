"""Host time per ``commit`` call on the CPU with the Triton launcher stubbed out: validation plus
the custom op's dispatch, i.e. what a GPU step pays on the host around the launch. CPU time of
this process (``time.process_time``, through the harness's ``host_us``), so the load of a shared
machine does not count.

    python bench/commit_host.py

Runs against older versions of the ops too (where validation was ``_validate`` and there was no
unchecked entry), which is how the before/after figures of the packed custom op were taken; a
checkout older than the harness (``dllm_kernels/_bench.py``) needs that file copied in.
"""

import os
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # the custom op path on CPU tensors (the launcher is stubbed)

import torch  # noqa: E402
from harness import host_us  # noqa: E402  (bench/, beside this file)

import dllm_kernels as dk  # noqa: E402
import dllm_kernels.kernels.commit as kernels  # noqa: E402
from dllm_kernels import CommitRule, CommitState, TokenStats  # noqa: E402

ops = sys.modules["dllm_kernels.commit"]  # the module (dk.commit is the function)
MASK = 63


def _stub(x, *args, **kwargs):
    return torch.zeros(x.shape[0], dtype=torch.int32)


def _us(fn, n=2000) -> float:
    return host_us(fn, calls=n, warmup=n // 10, clock=time.process_time)


def main():
    torch.set_num_threads(1)
    kernels.commit = _stub
    rule = CommitRule(spatial_window=3, token_cluster=True, temporal_steps=3)
    for B in (1, 8, 64):
        L, Ls = 160, 32
        x = torch.full((B, L), MASK)
        stats = TokenStats(
            torch.zeros(B, Ls, dtype=torch.int64), torch.rand(B, Ls), torch.rand(B, Ls), torch.rand(B, Ls)
        )
        state = CommitState.new(x)
        s, e, off = torch.full((B,), 128), torch.full((B,), 160), torch.full((B,), 128)
        step = torch.zeros((), dtype=torch.int32)
        kw = dict(active_start=s, active_end=e, mask_id=MASK, step=step, stats_offset=off, force_start=s, force_end=e)
        full = _us(lambda: dk.commit(x, stats, state, rule, backend="triton", **kw))
        if hasattr(ops, "_validate"):  # before the packed op
            val = _us(lambda: ops._validate("commit", x, stats, state, rule, s, e, MASK, step, None, s, e, off))
        else:

            def validate():
                assert ops._valid_fast(x, stats, state, rule, (s, e, s, e, off, None), MASK, step, None)
                ops._check_values("commit", L, Ls, ops.pack_rows(s, e, force_start=s, force_end=e, stats_offset=off))

            val = _us(validate)
        line = f"B={B}: public commit {full:.0f} us, of which validation {val:.0f} us"
        unchecked_entry = getattr(ops, "commit_unchecked", None) or getattr(ops, "_commit_unchecked", None)
        if unchecked_entry is not None:  # _commit_unchecked before it was documented as commit_unchecked
            rows = ops.pack_rows(s, e, force_start=s, force_end=e, stats_offset=off)
            unchecked = _us(lambda: unchecked_entry(x, stats, state, rule, rows, step, MASK, backend="triton"))
            line += f"; unchecked {unchecked:.0f} us"
        print(line)
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
