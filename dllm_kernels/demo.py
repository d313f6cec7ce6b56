"""``python -m dllm_kernels demo``: token statistics of one decoding step on both backends."""

from __future__ import annotations

import time

import torch

from ._env import use_interpreter_without_gpu


def realistic_logits(rows: int, vocab: int, *, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    """Logits shaped like a dLLM's over one block: broad noise plus one preferred token per row
    whose lead varies from hopeless to near-certain, so that every statistic varies."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g) * 2.0
    lead = torch.linspace(0.0, 18.0, rows)
    best = torch.randint(0, vocab, (rows,), generator=g)
    x[torch.arange(rows), best] += lead
    return x.to(dtype=dtype, device=device)


def _time(fn, device: str, repeat: int) -> float:
    """Median wall time in ms (CUDA: synchronised)."""
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def run(rows: int = 32, vocab: int = 126464) -> int:
    interpreted = use_interpreter_without_gpu()
    import dllm_kernels as dk

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16
    x = realistic_logits(rows, vocab, dtype=dtype, device=device)
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU (Triton interpreter)"
    print(f"token_stats on {rows} x {vocab} {str(dtype)[6:]} logits (one LLaDA block), {where}")

    kern = dk.token_stats(x, backend="triton")
    ref = dk.token_stats(x, backend="reference")
    token_equal = torch.equal(kern.token.cpu(), ref.token.cpu())
    errs = {
        f: (getattr(kern, f).cpu() - getattr(ref, f).cpu()).abs().max().item() for f in ("prob", "margin", "entropy")
    }
    ok = token_equal and errs["prob"] <= 4e-6 and errs["margin"] <= 4e-6 and errs["entropy"] <= 2e-4
    print(
        f"  agreement: tokens {'identical' if token_equal else 'DIFFER'}; max |diff| "
        + ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
        + ("  -> OK" if ok else "  -> MISMATCH")
    )

    repeat = 20 if device == "cuda" else 3
    t_kernel = _time(lambda: dk.token_stats(x, backend="triton"), device, repeat)
    t_ref = _time(lambda: dk.token_stats(x, backend="reference"), device, repeat)
    print(
        f"  triton kernel: {t_kernel:9.3f} ms"
        + ("  (interpreted on CPU: correctness, not speed)" if interpreted else "")
    )
    print(f"  reference    : {t_ref:9.3f} ms  (PyTorch, fp64)")
    print("  row  token      prob    margin   entropy")
    for r in list(range(0, rows, max(1, rows // 6)))[:6]:
        print(
            f"  {r:>3} {kern.token[r].item():>6} {kern.prob[r].item():9.4f} {kern.margin[r].item():9.4f} "
            f"{kern.entropy[r].item():9.4f}"
        )
    return 0 if ok else 1
