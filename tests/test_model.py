"""The LLaDA/Dream-architecture model: cache modes and left padding agree with a plain forward."""

import pytest
import torch

from dllm_kernels.models import CacheWrite, DiffusionLM, load_checkpoint, save_checkpoint, tiny

IMPLS = ["sdpa", "ops"]
TOL = dict(atol=2e-5, rtol=0)


def make(shift, impl, device="cpu"):
    torch.manual_seed(0)
    return DiffusionLM(tiny(logit_shift=shift, qkv_bias=shift), attn_impl=impl, backend="auto").to(device).eval()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shift", [False, True], ids=["llada", "dream"])
@torch.no_grad()
def test_cache_modes_match_full_forward(impl, shift):
    m = make(shift, impl)
    B, L, bs, s, e = 2, 24, 8, 8, 16
    x = torch.randint(0, m.config.vocab_size, (B, L))
    full = m(x)
    cache = m.new_cache(B, L)
    zero = torch.zeros(B, dtype=torch.long)
    filled = m(x, cache=cache, cache_len=zero, write=CacheWrite(torch.arange(L // bs).expand(B, -1), bs))
    torch.testing.assert_close(filled, full, **TOL)
    # Dream's shift is applied inside the forwarded window: its first row is the window's own
    first = 1 if shift else 0
    # prefix cache: forward x[:, s:] against cache rows [0, s)
    pre = m(x[:, s:], torch.arange(s, L).expand(B, -1), cache=cache, cache_len=torch.full((B,), s))
    torch.testing.assert_close(pre[:, first:], full[:, s + first :], **TOL)
    # dual cache: overwrite the block's rows, then attend the whole cache only
    blk = m(
        x[:, s:e],
        torch.arange(s, e).expand(B, -1),
        cache=cache,
        cache_len=torch.full((B,), L),
        attend_new=False,
        write=CacheWrite(torch.full((B, 1), s // bs), bs, new_start=torch.full((B,), s)),
    )
    torch.testing.assert_close(blk[:, first:], full[:, s + first : e], **TOL)
    # logits of a sub-range only
    torch.testing.assert_close(m(x, logits_index=torch.arange(5, 9).expand(B, -1)), full[:, 5:9], **TOL)
    # ragged windows: row 1 forwards fewer real rows; padding rows are not keys
    n = torch.tensor([L - s, L - s - 5])
    rag = m(x[:, s:], torch.arange(s, L).expand(B, -1), cache=cache, cache_len=torch.full((B,), s), kv_len=n)
    torch.testing.assert_close(rag[0, first:], full[0, s + first :], **TOL)
    alone = m(
        x[1:, s : L - 5],
        torch.arange(s, L - 5)[None],
        cache=type(cache)([k[1:] for k in cache.k], [v[1:] for v in cache.v]),
        cache_len=torch.tensor([s]),
    )
    torch.testing.assert_close(rag[1, : L - s - 5], alone[0], **TOL)


@pytest.mark.parametrize("impl", IMPLS)
@torch.no_grad()
def test_left_padding_matches_unpadded_row(impl):
    m = make(False, impl)
    L, pad = 20, 3
    x = torch.randint(0, m.config.vocab_size, (1, L))
    alone = m(x)
    xp = torch.cat([torch.full((1, pad), m.config.mask_id), x], 1)
    pos = (torch.arange(L + pad) - pad).clamp_min(0)[None]
    padded = m(xp, pos, key_start=torch.tensor([pad]))
    torch.testing.assert_close(padded[:, pad:], alone, **TOL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shift", [False, True], ids=["llada", "dream"])
@torch.no_grad()
def test_cpu_forward_skips_padding_rows_exactly(impl, shift, monkeypatch):
    """On the CPU the per-token layers run on the rows before kv_len only: the real rows' logits and
    cache writes are exactly those of the padded forward (rows that are done: kv_len 0)."""
    from dllm_kernels.models import transformer

    m = make(shift, impl)
    B, L, bs = 3, 16, 8
    x = torch.randint(0, m.config.vocab_size, (B, L))
    kw = dict(
        cache_len=torch.tensor([8, 3, 0]),
        kv_len=torch.tensor([16, 9, 0]),
        key_start=torch.tensor([0, 2, 0]),
        write=CacheWrite(torch.tensor([[1], [1], [-1]]), bs, new_start=torch.full((B,), 8)),
        logits_index=torch.tensor([[0, 5, 15], [0, 4, 8], [0, 0, 0]]),
    )
    results = []
    for packed in (True, False):
        if not packed:
            monkeypatch.setattr(transformer, "_real_rows", lambda *args: None)
        cache = m.new_cache(B, 24)
        for t in cache.k + cache.v:
            t.copy_(torch.randn(t.shape, generator=torch.Generator().manual_seed(1)))
        logits = m(x, torch.arange(8, 8 + L).expand(B, -1), cache=cache, **kw)
        results.append((logits[:2], [t[:2] for t in cache.k + cache.v]))
    (got, got_cache), (want, want_cache) = results
    assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(got_cache, want_cache))


def test_checkpoint_round_trip(tmp_path):
    m = make(True, "sdpa")
    save_checkpoint(m, tmp_path)
    m2 = load_checkpoint(tmp_path, attn_impl="sdpa")
    x = torch.randint(0, m.config.vocab_size, (2, 10))
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert m2.config == m.config


def test_bad_attn_impl():
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        DiffusionLM(tiny(), attn_impl="flash")
