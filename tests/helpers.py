"""Shared test helpers: the stated tolerances, in one place."""

import torch

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
        assert bad.numel() == 0, f"token mismatch at {bad[:5].tolist()}: {g_tok[tuple(bad[0])]} vs {r_tok[tuple(bad[0])]}"
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
