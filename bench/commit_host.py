"""Host time per ``commit`` call on the CPU, the Triton kernel stubbed out: validation plus the
custom op's dispatch, i.e. what a GPU step pays on the host before the launch. CPU time of this
process (``time.process_time``), so a shared machine's load does not count.

    python bench/commit_host.py
"""
import os, sys, time
os.environ["TRITON_INTERPRET"] = "1"
import torch
torch.set_num_threads(1)
import dllm_kernels as dk
cm = sys.modules["dllm_kernels.commit"]
from dllm_kernels._types import CommitRule, CommitState, TokenStats
import dllm_kernels.kernels.commit as kc

def stub(x, *a, **k):
    return torch.zeros(x.shape[0], dtype=torch.int32)
kc.commit = stub

def bench(fn, n=2000):
    for _ in range(200): fn()
    t = time.process_time()
    for _ in range(n): fn()
    return (time.process_time() - t) / n * 1e6

for B in (1, 8, 64):
    L, Ls, V = 160, 32, 64
    x = torch.full((B, L), 63); stats = TokenStats(torch.zeros(B, Ls, dtype=torch.int64), torch.rand(B, Ls), torch.rand(B, Ls), torch.rand(B, Ls))
    st = CommitState.new(x); rule = CommitRule(spatial_window=3, token_cluster=True, temporal_steps=3)
    s = torch.full((B,), 128); e = torch.full((B,), 160); off = torch.full((B,), 128); step = torch.zeros((), dtype=torch.int32)
    kw = dict(active_start=s, active_end=e, mask_id=63, step=step, stats_offset=off, force_start=s, force_end=e)
    full = bench(lambda: dk.commit(x, stats, st, rule, backend="triton", **kw))
    if hasattr(cm, "_validate"):
        val = bench(lambda: cm._validate("commit", x, stats, st, rule, s, e, 63, step, None, s, e, off))
    else:
        def v():
            assert cm._valid_fast(x, stats, st, rule, (s, e, s, e, off, None), 63, step, None)
            cm._check_values("commit", L, Ls, cm.pack_rows(s, e, force_start=s, force_end=e, stats_offset=off))
        val = bench(v)
    line = f"B={B}: public commit (stubbed kernel) {full:.0f} us, of which validation {val:.0f} us"
    if hasattr(cm, "_commit_unchecked"):
        rows = cm.pack_rows(s, e, force_start=s, force_end=e, stats_offset=off)
        unc = bench(lambda: cm._commit_unchecked(x, stats, st, rule, rows, step, 63, backend="triton"))
        line += f"; unchecked {unc:.0f} us"
    print(line)
print(torch.__version__)
