"""Shared test helpers: the stated tolerances, in one place."""

import torch

import dllm_kernels as dk

# token_stats: fp32 accumulation of upcast inputs vs an fp64 reference (any input dtype, since
# fp16/bf16 values upcast exactly). prob and margin: absolute; entropy: absolute * (1 + H).
STATS_ATOL = {"prob": 4e-6, "margin": 4e-6}
ENTROPY_RTOL = 1e-5


def assert_stats_close(got, ref, *, exact_token=True):
    """Compare two TokenStats: exact tokens, stated tolerances for the floats, no NaN anywhere."""
    for name, g, r in zip(("token", "prob", "margin", "entropy"), got, ref):
        assert g.shape == r.shape, f"{name}: shape {tuple(g.shape)} != {tuple(r.shape)}"
        assert g.dtype == r.dtype, f"{name}: dtype {g.dtype} != {r.dtype}"
        assert not (g.dtype.is_floating_point and g.isnan().any()), f"{name}: NaN in kernel output"
    g_tok, r_tok = got.token.cpu(), ref.token.cpu()
    if exact_token:
        bad = (g_tok != r_tok).nonzero()
        assert bad.numel() == 0, (
            f"token mismatch at {bad[:5].tolist()}: {g_tok[tuple(bad[0])]} vs {r_tok[tuple(bad[0])]}"
        )
    for name in ("prob", "margin"):
        g, r = getattr(got, name).cpu(), getattr(ref, name).cpu()
        err = (g - r).abs().max().item() if g.numel() else 0.0
        assert err <= STATS_ATOL[name], f"{name}: max abs error {err:.3g} > {STATS_ATOL[name]}"
    g, r = got.entropy.cpu(), ref.entropy.cpu()
    fin = torch.isfinite(r)
    assert torch.equal(torch.isfinite(g), fin), "entropy: finiteness differs"
    if fin.any():
        err = ((g[fin] - r[fin]).abs() / (1 + r[fin])).max().item()
        assert err <= ENTROPY_RTOL, f"entropy: max error {err:.3g} * (1 + H) > {ENTROPY_RTOL}"


# attention, fp32 inputs: fp32 accumulation in another order (online softmax, exp2) than the
# fp32 reference; outputs are convex combinations of V rows of size ~1.
ATTN_FP32_ATOL = 1e-5


def assert_attention_close(got, ref, lowp):
    """FlashAttention's criterion for a low-precision kernel: its max error against the fp32
    reference ``ref`` is at most twice that of ``lowp``, the same math done by PyTorch in the
    inputs' dtype, plus twice the dtype's rounding noise at the output's magnitude. fp32 inputs
    (where ``lowp`` is the reference itself) are held to ``ATTN_FP32_ATOL``. NaN always fails."""
    assert got.shape == ref.shape, f"shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert got.dtype == ref.dtype, f"dtype {got.dtype} != {ref.dtype}"
    got, ref_lp, lowp = got.cpu(), ref.cpu(), lowp.cpu()
    assert not got.isnan().any(), "NaN in kernel output"
    err = (got.float() - ref_lp.float()).abs().max().item() if got.numel() else 0.0
    if got.dtype == torch.float32:
        assert err <= ATTN_FP32_ATOL, f"max abs error {err:.3g} > {ATTN_FP32_ATOL}"
        return
    err_pt = (lowp.float() - ref_lp.float()).abs().max().item() if got.numel() else 0.0
    noise = 2 * (ref_lp + 0.3 - 0.3 - ref_lp).abs().max().item() if got.numel() else 0.0
    assert err <= 2 * err_pt + noise, f"max abs error {err:.3g} > 2 * {err_pt:.3g} (PyTorch {got.dtype}) + {noise:.3g}"


def assert_bitwise_equal(got, ref, name=""):
    """Exact equality of the bits (NaN poison included), for copies and scatters."""
    assert got.shape == ref.shape and got.dtype == ref.dtype, (
        f"{name}: {got.shape}/{got.dtype} vs {ref.shape}/{ref.dtype}"
    )
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[got.element_size()]
    bad = (got.cpu().view(ints) != ref.cpu().view(ints)).nonzero()
    assert bad.numel() == 0, f"{name}: {bad.shape[0]} elements differ, first at {bad[0].tolist()}"


def commit_region(x, stats, state, rule, start, end, *, mask_id, step, **kw):
    """``dk.commit`` over the per-row regions ``[start, end)`` (host tensors, moved to ``x``'s device)."""
    dev = x.device
    return dk.commit(
        x, stats, state, rule, active_start=start.to(dev), active_end=end.to(dev), mask_id=mask_id, step=step, **kw
    )
