"""Differential fuzzing: every op's Triton kernel (the interpreter on CPU) against its reference on
random in-contract shapes and values, extreme finite values included, with guard regions around
every output.

Guards: kernel outputs that the launchers allocate (``_utils.empty``) come from a guarded
allocator, a view into the middle of a larger buffer whose interior is poisoned (NaN / -1, so an
unwritten element fails the comparison) and whose margins hold a sentinel that must survive the
call; in-place outputs (commit's canvas and state, refresh_kv_cache's caches) are views into
larger sentinel-filled buffers, checked likewise.

Seeded: case ``i`` of an op always draws the same inputs. CI runs ``DLLM_FUZZ_CASES`` cases per op
(default 8, a few seconds per op on the interpreter); set it higher for a long run, e.g.
``DLLM_FUZZ_CASES=300 pytest tests/test_fuzz.py``.
"""

import dataclasses
import os
import zlib

import pytest
import torch
from helpers import assert_attention_close, assert_bitwise_equal, assert_stats_close

import dllm_kernels as dk
from dllm_kernels import CommitRule, CommitState, TokenStats, reference
from dllm_kernels.kernels import _utils
from dllm_kernels.reference.attention import attention_lowp

CASES = int(os.environ.get("DLLM_FUZZ_CASES", "8"))
GUARD = 64  # elements of sentinel on each side of an allocated output
FLOATS = (torch.float32, torch.float16, torch.bfloat16)

# ---- guarded allocations ----------------------------------------------------------------------


def _sentinel(dtype):
    return 12345 if not dtype.is_floating_point else 1088.0  # exact in every float dtype


def _poison(dtype):
    return -1 if not dtype.is_floating_point else float("nan")


class GuardedAllocator:
    """Replaces ``_utils.empty``: each allocation is the poisoned middle of a sentinel buffer."""

    def __init__(self):
        self.buffers = []

    def __call__(self, *shape, dtype, device):
        n = 1
        for s in shape:
            n *= s
        buf = torch.full((n + 2 * GUARD,), _sentinel(dtype), dtype=dtype, device=device)
        buf[GUARD : GUARD + n] = _poison(dtype)
        self.buffers.append((buf, n))
        return buf[GUARD : GUARD + n].view(*shape)

    def check(self):
        for buf, n in self.buffers:
            s = _sentinel(buf.dtype)
            assert (buf[:GUARD] == s).all() and (buf[GUARD + n :] == s).all(), "a kernel wrote outside its output"


@pytest.fixture
def guarded(monkeypatch):
    alloc = GuardedAllocator()
    monkeypatch.setattr(_utils, "empty", alloc)
    yield alloc
    alloc.check()


def guarded_view(shape, dtype, device, *, fill, contiguous=True):
    """A tensor of ``shape`` filled with ``fill``, living inside a larger sentinel buffer: the
    middle of a flat buffer (contiguous) or a window of a padded buffer (strided rows). Returns
    (view, buffer, mask of the view's elements in the buffer)."""
    if contiguous:
        n = 1
        for s in shape:
            n *= s
        buf = torch.full((n + 2 * GUARD,), _sentinel(dtype), dtype=dtype, device=device)
        inside = torch.zeros(buf.shape, dtype=torch.bool, device=device)
        inside[GUARD : GUARD + n] = True
        view = buf[GUARD : GUARD + n].view(shape)
    else:  # pad every dimension by 1 on both sides, except the last (kept unit-stride) by 2
        pad = [2] * (len(shape) - 1) + [4]
        buf = torch.full([s + p for s, p in zip(shape, pad)], _sentinel(dtype), dtype=dtype, device=device)
        idx = tuple(slice(1, 1 + s) for s in shape[:-1]) + (slice(2, 2 + shape[-1]),)
        inside = torch.zeros(buf.shape, dtype=torch.bool, device=device)
        inside[idx] = True
        view = buf[idx]
    view.copy_(fill)
    return view, buf, inside


def assert_guards(buf, inside, name):
    s = _sentinel(buf.dtype)
    assert (buf[~inside] == s).all(), f"{name}: a kernel wrote outside its output"


def _gen(op: str, i: int) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(op.encode()) + i)


def _choice(g, seq):
    return seq[int(torch.randint(0, len(seq), (), generator=g))]


def _int(g, lo, hi):
    """An int in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


# ---- token_stats ------------------------------------------------------------------------------

TS_KINDS = ("normal", "peaked", "extreme", "ties", "masked", "min_tile")


def _token_stats_params():
    for i in range(CASES * 2):  # cheap op: twice the cases
        kind = TS_KINDS[i % len(TS_KINDS)]
        yield pytest.param(i, kind, id=f"{i}-{kind}")


def _logits(g, kind, dtype):
    fin = torch.finfo(dtype)
    N = _int(g, 1, 4)
    if kind == "min_tile":  # one whole interpreter tile (8192 entries) of finfo.min, then values
        V = 8192 + _int(g, 1, 300)
        x = torch.randn(N, V, generator=g) * 3
        x[:, :8192] = torch.finfo(torch.float32).min
        return x  # fp32: the defect is fp32 overflow
    V = _choice(g, (1, 2, 3, 17, 64, 300, 1000))
    x = torch.randn(N, V, generator=g) * _choice(g, (0.01, 1.0, 8.0, 60.0))
    if kind == "peaked":
        x[torch.arange(N), torch.randint(0, V, (N,), generator=g)] += 25
    elif kind == "extreme":  # the dtype's largest finite values, both signs, and huge gaps
        sel = torch.rand(N, V, generator=g)
        x = torch.where(sel < 0.2, fin.max, x)
        x = torch.where((sel >= 0.2) & (sel < 0.4), fin.min, x)
        x = torch.where((sel >= 0.4) & (sel < 0.5), fin.max / 3, x)
    elif kind == "ties":
        x = torch.randint(0, 3, (N, V), generator=g).float()
    elif kind == "masked":  # a common way to mask logits: the dtype's min, not the whole row
        keep = torch.rand(N, V, generator=g) < 0.3
        keep[:, 0] = True
        x = torch.where(keep, x, fin.min)
    return x.to(dtype)


@pytest.mark.parametrize("i, kind", list(_token_stats_params()))
def test_token_stats(guarded, i, kind):
    g = _gen("token_stats", i)
    dtype = torch.float32 if kind == "min_tile" else _choice(g, FLOATS)
    x = _logits(g, kind, dtype)
    if _int(g, 0, 1) and x.shape[0] > 1:  # a strided row view of a larger tensor
        x = torch.cat([x, x], 1)[:, : x.shape[1]]
    kw = {}
    if _int(g, 0, 3) == 0:
        kw.update(temperature=_choice(g, (0.5, 1.0, 3.0)), seed=_int(g, 0, 2**31))
    if _int(g, 0, 3) == 0 and x.shape[1] > 2:
        kw["suppress_ids"] = (0, x.shape[1] - 1)
    got = dk.token_stats(x, backend="triton", **kw)
    ref = reference.token_stats(x, **kw)
    assert_stats_close(got, ref)


# ---- window_confidence ------------------------------------------------------------------------


@pytest.mark.parametrize("i", range(CASES))
def test_window_confidence(guarded, i):
    g = _gen("window_confidence", i)
    B, L = _int(g, 1, 4), _int(g, 1, 40)
    window, max_decided = _int(g, 1, 16), _int(g, 0, 4)
    values = torch.tensor([0.0, 0.5, 0.8, 1.0, 3.4e38, -3.4e38, 1e-38, float("inf"), float("-inf")])
    conf = torch.where(
        torch.rand(B, L, generator=g) < 0.6,
        torch.rand(B, L, generator=g),
        values[torch.randint(0, len(values), (B, L), generator=g)],
    )
    decided = torch.rand(B, L, generator=g) < _choice(g, (0.0, 0.3, 0.7))
    got = dk.window_confidence(conf, decided, window, max_decided, backend="triton")
    want = reference.window_confidence(conf, decided, window, max_decided)
    assert_bitwise_equal(got, want, "window_confidence")


# ---- commit -----------------------------------------------------------------------------------

M = 7  # the mask id


def _rule(g) -> CommitRule:
    base = _choice(g, ("topk", "threshold", "dynamic", "entropy"))
    return CommitRule(
        base=base,
        threshold=_choice(g, (0.0, 0.5, 0.9, 1.0)),
        alpha=_choice(g, (0.0, 0.3, 0.7)),
        suffix_window=_int(g, 0, 6),
        entropy_threshold=_choice(g, (0.0, 0.4, 0.5, 2.0)),
        entropy_strict=bool(_int(g, 0, 1)),
        commit_best=bool(_int(g, 0, 1)),
        spatial_window=_choice(g, (0, 0, 2, 3, 5, 16)),
        spatial_max_decided=_int(g, 0, 3),
        spatial_threshold=_choice(g, (0.5, 0.8)),
        token_cluster=bool(_int(g, 0, 1)),
        cluster_min_len=_int(g, 1, 3),
        temporal_steps=_choice(g, (0, 0, 1, 2, 3)),
        temporal_threshold=_choice(g, (0.5, 0.8)),
        temporal_agg=_choice(g, ("last", "mean", "max")),
    )


@pytest.mark.parametrize("i", range(CASES * 2))
def test_commit(guarded, i):
    """Three steps of a random rule over ragged rows; the canvas is a strided window of a sentinel
    buffer and the state a contiguous slice of one; statistics mix NaN, +-inf, extreme and ordinary
    values and invalid proposals."""
    g = _gen("commit", i)
    rule = _rule(g)
    B, L = _int(g, 1, 5), _int(g, 1, 48)
    x0 = torch.where(torch.rand(B, L, generator=g) < 0.7, M, torch.randint(0, 5, (B, L), generator=g))
    start = torch.randint(0, L + 1, (B,), generator=g)
    end = torch.minimum(start + torch.randint(0, L + 1, (B,), generator=g), torch.tensor(L))
    layout = _choice(g, ("canvas", "window"))
    if layout == "window":  # stats of [offset, offset + Ls) covering the region
        off = start.clone()
        Ls = max(1, int((end - start).max()))
        off = torch.minimum(off, torch.tensor(L - Ls)).clamp(min=0)
    else:
        off, Ls = torch.zeros(B, dtype=torch.int64), L
    f_start = torch.minimum(start + torch.randint(0, 3, (B,), generator=g), end)
    f_end = torch.minimum(f_start + torch.randint(0, 8, (B,), generator=g), end)
    kw = dict(
        active_start=start,
        active_end=end,
        stats_offset=off,
        mask_id=M,
        num_transfer=torch.randint(0, 4, (B,), generator=g),
    )
    if _int(g, 0, 1):
        kw.update(force_start=f_start, force_end=f_end)
    if _int(g, 0, 1):
        kw["vocab_size"] = _int(g, 2, 6)
    special = torch.tensor([float("nan"), float("inf"), float("-inf"), 3.4e38, -3.4e38, 0.0, 1.0])

    runs = {}
    for backend in ("triton", "reference"):
        x, xbuf, xin = guarded_view((B, L), torch.int64, "cpu", fill=x0, contiguous=False)
        fields = {}
        for f in dataclasses.fields(CommitState):
            t = getattr(CommitState.new(x0), f.name)
            fields[f.name] = guarded_view((B, L), t.dtype, "cpu", fill=t)
        runs[backend] = (x, xbuf, xin, CommitState(*(v[0] for v in fields.values())), fields)
    for step in range(3):
        token = torch.randint(-1, 6, (B, Ls), generator=g)
        prob, ent = (
            torch.where(
                torch.rand(B, Ls, generator=g) < 0.2,
                special[torch.randint(0, len(special), (B, Ls), generator=g)],
                torch.rand(B, Ls, generator=g),
            )
            for _ in range(2)
        )
        stats = TokenStats(token, prob, prob, ent)
        before = runs["reference"][0].clone()
        out = {b: dk.commit(r[0], stats, r[3], rule, step=step, backend=b, **kw) for b, r in runs.items()}
        assert torch.equal(out["triton"], out["reference"]), f"step {step}: counts"
        (x_t, xb_t, xin, _, f_t), (x_r, _, _, _, f_r) = runs["triton"], runs["reference"]
        assert torch.equal(x_t, x_r), f"step {step}: x"
        assert_guards(xb_t, xin, "commit x")
        for name in f_t:
            assert_bitwise_equal(f_t[name][1], f_r[name][1], f"step {step}: state.{name} (with guards)")
            assert_guards(f_t[name][1], f_t[name][2], f"state.{name}")
        # guarantees: nothing invalid committed; progress in every row whose force region had candidates
        new = x_t[(before == M) & (x_t != M)]
        assert (new >= 0).all() and (new < kw.get("vocab_size", 6)).all(), "an invalid proposal was committed"
        pos = torch.arange(L)
        col = (pos - off[:, None]).clamp(0, Ls - 1)
        tok = token.gather(1, col)
        valid = (tok >= 0) & (tok != M) & (tok < kw.get("vocab_size", 2**62))
        lo = torch.maximum(kw.get("force_start", start), start)[:, None]
        hi = torch.minimum(kw.get("force_end", end), end)[:, None]
        had = (before == M) & valid & (pos >= lo) & (pos < hi)
        assert (out["triton"][had.any(1)] >= 1).all(), f"step {step}: a row with candidates committed nothing"


# ---- attention --------------------------------------------------------------------------------


@pytest.mark.parametrize("i", range(CASES))
def test_attention(guarded, i):
    g = _gen("attention", i)
    dtype = _choice(g, FLOATS)
    B, Lq, Hkv, D = _int(g, 1, 2), _int(g, 1, 6), _int(g, 1, 2), _choice(g, (64, 128))
    Hq = Hkv * _choice(g, (1, 2))
    scale_v = _choice(g, (0.1, 1.0, 4.0))
    mode = _choice(g, ("new", "cache", "both"))

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * scale_v).to(dtype)

    q = rnd(B, Lq, Hq, D)
    kw = {}
    k = v = None
    n_keys = torch.zeros(B, dtype=torch.int64)
    if mode in ("new", "both"):
        Lk = _int(g, 1, 12)
        k, v = rnd(B, Lk, Hkv, D), (rnd(B, Lk, Hkv, D) / scale_v).to(dtype)  # V rows of size ~1: the stated atol
        kv_len = torch.randint(1 if mode == "new" else 0, Lk + 1, (B,), generator=g)
        kw["kv_len"] = kv_len
        n_keys += kv_len
    if mode in ("cache", "both"):
        Lmax = _int(g, 1, 16)
        kw.update(k_cache=rnd(B, Lmax, Hkv, D), v_cache=(rnd(B, Lmax, Hkv, D) / scale_v).to(dtype))
        cache_len = torch.randint(1, Lmax + 1, (B,), generator=g)
        kw["cache_len"] = cache_len
        n_keys += cache_len
    kw["key_start"] = (torch.rand(B, generator=g) * n_keys).long()  # at least one key stays
    got = dk.attention(q, k, v, backend="triton", **kw)
    assert_attention_close(got, reference.attention(q, k, v, **kw), attention_lowp(q, k, v, **kw))


# ---- refresh_kv_cache -------------------------------------------------------------------------


@pytest.mark.parametrize("i", range(CASES))
def test_refresh_kv_cache(i):
    g = _gen("refresh_kv_cache", i)
    dtype = _choice(g, FLOATS)
    B, Lmax, H, D = _int(g, 1, 3), _int(g, 1, 40), _int(g, 1, 3), _choice(g, (64, 128))
    block_size = _choice(g, (1, 3, 8, 32, Lmax, Lmax + 5, 2**31 - 1))
    n_blocks = -(-Lmax // block_size)
    Ln = _int(g, 1, Lmax)
    fin = torch.finfo(dtype)
    new = torch.randn(2, B, Ln, H, D, generator=g) * _choice(g, (1.0, 1e3))
    new[torch.rand(new.shape, generator=g) < 0.05] = fin.max
    new[torch.rand(new.shape, generator=g) < 0.05] = fin.min
    k_new, v_new = new.to(dtype).unbind(0)
    ids = torch.randint(-1, n_blocks, (B, _int(g, 1, 4)), generator=g)
    kw = dict(new_start=torch.randint(0, Lmax + 1, (B,), generator=g))
    if _int(g, 0, 2) == 0:
        cs = torch.randn(2, Ln, D, generator=g)
        kw.update(rope_cos=cs[0], rope_sin=cs[1])
    poison = torch.full((B, Lmax, H, D), float("nan"), dtype=dtype)
    bufs = {}
    for backend in ("triton", "reference"):
        kc = guarded_view((B, Lmax, H, D), dtype, "cpu", fill=poison, contiguous=False)
        vc = guarded_view((B, Lmax, H, D), dtype, "cpu", fill=poison, contiguous=bool(i % 2))
        dk.refresh_kv_cache(kc[0], vc[0], k_new, v_new, ids, block_size, backend=backend, **kw)
        bufs[backend] = (kc, vc)
    for j, name in enumerate(("k_cache", "v_cache")):
        (_, buf_t, inside), (_, buf_r, _) = bufs["triton"][j], bufs["reference"][j]
        if name == "k_cache" and "rope_cos" in kw and dtype == torch.bfloat16 and buf_t.device.type == "cpu":
            # the interpreter's fp32 -> bf16 cast does not round to nearest even (bit-equality of
            # bf16 rotated keys is a GPU test): one bf16 ulp here, and at the top of the range
            # finfo.max on one side may be inf on the other
            a, b = buf_t.float(), buf_r.float()
            top = (a.abs() >= fin.max) & (b.abs() >= fin.max) & (a.sign() == b.sign())
            torch.testing.assert_close(a[~top], b[~top], rtol=2**-7, atol=0, equal_nan=True)
        else:
            assert_bitwise_equal(buf_t, buf_r, name)
        assert_guards(buf_t, inside, name)
