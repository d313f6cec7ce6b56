"""attention's block-causal option (``block_size``, ``block_origin``): the kernel (interpreter on
CPU) against the reference, the reference against a dense masked SDPA written from the docstring's
rule, and the block-diffusion model's ``attn_impl="ops"`` path (this op) against its masked SDPA
path, logits within the stated tolerance and ``generate`` tokens exactly.
"""

import dataclasses
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import ATTN_FP32_ATOL, assert_attention_close
from test_attention import make_inputs
from test_generate_block import CASES, IDS, MASK, PROMPTS, block_model

import dllm_kernels as dk
from dllm_kernels import generate, reference
from dllm_kernels.kernels import attention as kernels
from dllm_kernels.models import DiffusionLM, load_pretrained, transformer as tr
from dllm_kernels.models.protocol import CacheWrite
from dllm_kernels.models.tiny_checkpoints import write_tiny_checkpoint
from dllm_kernels.reference.attention import attention_lowp

CPU_DTYPES = [torch.float32, torch.float16]
# the model's two attention paths on fp32 weights: the same math in another order (the op's
# reference or the kernel's online softmax vs torch SDPA)
MODEL_TOL = dict(atol=1e-5, rtol=1e-5)


def dense_masked_sdpa(q, k, v, *, k_cache=None, v_cache=None, cache_len=None, kv_len=None, key_start=None, **kw):
    """The docstring's rule as a dense ``[B, Lq, Lmax + Lk]`` mask over the concatenated keys, run
    by torch SDPA in fp32 (rows without a visible key: 0)."""
    block_size, origin = kw["block_size"], kw.get("block_origin")
    B, Lq, Hq, D = q.shape
    Lmax = 0 if k_cache is None else k_cache.shape[1]
    Lk = k.shape[1]
    cl = torch.full((B,), Lmax) if cache_len is None else cache_len.long().cpu()
    kl = torch.full((B,), Lk) if kv_len is None else kv_len.long().cpu()
    ks = torch.zeros(B, dtype=torch.long) if key_start is None else key_start.long().cpu()
    org = ks if origin is None else origin.long().cpu()
    jc, jn, i = torch.arange(Lmax)[None, None, :], torch.arange(Lk)[None, None, :], torch.arange(Lq)[None, :, None]
    logical_new = cl[:, None, None] + jn  # [B, 1, Lk]
    blk = lambda logical: torch.div(logical - org[:, None, None], block_size, rounding_mode="floor")  # noqa: E731
    ok_cache = (jc < cl[:, None, None]) & (jc >= ks[:, None, None])  # [B, 1, Lmax]
    ok_new = (jn < kl[:, None, None]) & (logical_new >= ks[:, None, None])
    ok_new = ok_new & (blk(logical_new) <= blk(cl[:, None, None] + i))  # [B, Lq, Lk]
    ok = torch.cat([ok_cache.expand(B, Lq, Lmax), ok_new], 2)
    keys = [t for t in (k_cache, k) if t is not None]
    vals = [t for t in (v_cache, v) if t is not None]
    kk, vv = torch.cat(keys, 1).float(), torch.cat(vals, 1).float()
    kk = torch.where(ok.any(1)[:, :, None, None], kk, 0.0)  # rows past the lengths hold NaN
    vv = torch.where(ok.any(1)[:, :, None, None], vv, 0.0)
    G = Hq // kk.shape[2]
    kk, vv = kk.repeat_interleave(G, 2).transpose(1, 2), vv.repeat_interleave(G, 2).transpose(1, 2)
    o = F.scaled_dot_product_attention(q.float().transpose(1, 2), kk, vv, attn_mask=ok[:, None], scale=kw.get("scale"))
    o = torch.where(ok.any(-1)[:, None, :, None], o, 0.0).transpose(1, 2)
    return o.to(q.dtype)


# (B, Lq, Hq, Hkv, Lmax, cache_len, kv_len, key_start, block_size, block_origin): ragged lengths,
# left padding, blocks not aligned with the key tiles (16 keys in the tests below), GQA, rows
# whose only keys are hidden or padding, and origins far from the keys (negative too)
CASES_OP = [
    (1, 8, 2, 2, 0, None, None, None, 4, None),  # two whole blocks, no cache
    (2, 13, 4, 2, 9, [9, 3], [13, 7], [0, 2], 5, None),  # blocks from key_start
    (3, 19, 4, 1, 12, [12, 0, 5], [19, 11, 4], [2, 0, 7], 3, [-4, 6, 1000]),  # explicit origins
    (2, 37, 2, 2, 5, [5, 0], [37, 30], [0, 20], 7, [1, -9]),  # key_start past early rows: empty rows
    (2, 10, 4, 4, 6, [6, 6], [10, 9], None, 1, None),  # block 1: causal
    (1, 21, 2, 1, 0, None, None, None, 64, None),  # one block: bidirectional
]


def _inputs(case, D, dtype, device):
    B, Lq, Hq, Hkv, Lmax, cl, kl, ks, bs, org = case
    q, k, v, kw = make_inputs(
        B, Lq, Hq, Hkv, D, Lk=Lq, Lmax=Lmax, cache_len=cl, kv_len=kl, key_start=ks, dtype=dtype, device=device
    )
    kw = {**{n: kw.get(n) for n in ("k_cache", "v_cache", "cache_len", "kv_len", "key_start")}, "block_size": bs}
    if org is not None:
        kw["block_origin"] = torch.tensor(org, device=device)
    return q, k, v, kw


@pytest.mark.parametrize("case", CASES_OP)
def test_reference_is_the_dense_masked_rule(case):
    q, k, v, kw = _inputs(case, 16, torch.float32, "cpu")
    got = reference.attention(q, k, v, **kw)
    torch.testing.assert_close(got, dense_masked_sdpa(q, k, v, **kw), atol=ATTN_FP32_ATOL, rtol=0)
    assert not got.isnan().any()


@pytest.mark.parametrize("num_splits", [None, 3])
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES_OP)
def test_kernel_matches_reference(device, dtype, case, num_splits):
    """16-key tiles (block sizes 1, 3, 5, 7 straddle them), splits that hold only hidden keys
    for some rows."""
    q, k, v, kw = _inputs(case, 16, dtype, device)
    args = (q, k, v, kw["k_cache"], kw["v_cache"], kw["cache_len"], kw["kv_len"], kw["key_start"], 0.125)
    got = kernels.attention(*args, kw["block_size"], kw.get("block_origin"), num_splits=num_splits, block_n=16)
    ref_kw = dict(kw, scale=0.125)
    assert_attention_close(got, reference.attention(q, k, v, **ref_kw), attention_lowp(q, k, v, **ref_kw))


def test_public_op_and_reference_backend(device):
    q, k, v, kw = _inputs(CASES_OP[2], 64, torch.float32, device)
    got = dk.attention(q, k, v, backend="triton", **kw)
    assert_attention_close(got, dk.attention(q, k, v, backend="reference", **kw), reference.attention(q, k, v, **kw))
    # only block_origin mod block_size matters
    shifted = dict(kw, block_origin=kw["block_origin"] + 3 * kw["block_size"])
    torch.testing.assert_close(dk.attention(q, k, v, backend="triton", **shifted), got, atol=0, rtol=0)


def test_later_blocks_of_a_query_tile_are_skipped(device):
    """Two query tiles (70 rows x 4 heads of a KV head = 280 packed rows; 256-row tiles under the
    interpreter): the first tile's last row is row 63, block 7 of 8 rows, so new rows 64.. are
    never read by it. Poisoned with NaN there, the first tile's rows stay exact (a visited tile
    would give 0 * NaN); the second tile's rows read them, so they are not compared."""
    B, Lq, Hq, Hkv, D, bs = 1, 70, 4, 1, 16, 8
    q, k, v, _ = make_inputs(B, Lq, Hq, Hkv, D, Lk=Lq, device=device)
    ref = reference.attention(q, k, v, block_size=bs)
    kn, vn = k.clone(), v.clone()
    kn[:, 64:], vn[:, 64:] = float("nan"), float("nan")
    got = kernels.attention(q, kn, vn, None, None, None, None, None, q.shape[-1] ** -0.5, bs, block_n=16)
    assert not got[:, :64].isnan().any()
    torch.testing.assert_close(got[:, :64], ref[:, :64], atol=ATTN_FP32_ATOL, rtol=0)
    assert got[:, 64:].isnan().all()  # the poison is live: the second tile reads those rows


@pytest.mark.parametrize("block_causal", [False, True])
@pytest.mark.parametrize("Lq, Hq, Hkv", [(32, 32, 32), (32, 28, 4), (33, 28, 4), (97, 28, 4), (4096, 28, 4)])
@pytest.mark.parametrize("keys", [64, 4096])
def test_gpu_plans_are_compiled_configurations(block_causal, Lq, Hq, Hkv, keys):
    """Every tile a block-causal launch picks on a GPU is compiled (and spill-checked) by
    tests/test_compile_sm90.py as a block-causal variant; the 256-row tile keeps one query tile
    per KV group at Fast-dLLM v2 7B's decode step (28 / 4 heads, 32 rows)."""
    compiled = {
        (s.constexprs["HEAD_DIM"], s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"], s.num_warps, s.num_stages)
        + (s.constexprs["SPLIT"], s.constexprs["BLOCK_CAUSAL"])
        for s in kernels.aot_specs()
        if s.name.startswith("attention_fwd[bf16")
    }
    for D in (64, 128):
        for B in (1, 8, 64):
            plan = kernels._plan(
                B, Lq, Hq, Hkv, D, keys, torch.bfloat16, programs=528, interpret=False, block_causal=block_causal
            )
            t = plan.tiles
            key = (D, t.block_m, t.block_n, t.num_warps, t.num_stages, plan.splits > 1, block_causal)
            assert key in compiled, plan
    plan = kernels._plan(8, 32, 28, 4, 128, 2080, torch.bfloat16, programs=528, interpret=False, block_causal=True)
    assert (plan.tiles.block_m, plan.n_m) == (256, 1) and plan.splits > 1


def test_custom_op_registration(device):
    q, k, v, kw = _inputs(CASES_OP[2], 64, torch.float32, device)
    args = (q, k, v, kw["k_cache"], kw["v_cache"], kw["cache_len"], kw["kv_len"], kw["key_start"], 0.125)
    torch.library.opcheck(torch.ops.dllm_kernels.attention.default, (*args, kw["block_size"], kw["block_origin"]))
    torch.library.opcheck(torch.ops.dllm_kernels.attention.default, (*args, 4, None))


_Q = torch.zeros(2, 4, 4, 64)
_KV = torch.zeros(2, 4, 2, 64)


@pytest.mark.parametrize(
    "args, kw, match",
    [
        ((_Q, _KV, _KV), {"block_size": 0}, "block_size must be a positive int or None, got 0"),
        ((_Q, _KV, _KV), {"block_size": True}, "block_size must be a positive int or None, got True"),
        ((_Q, _KV, _KV), {"block_size": 4.0}, "block_size must be a positive int or None, got 4.0"),
        (
            (_Q, None, None),
            {"k_cache": _KV, "v_cache": _KV, "block_size": 4},
            "block_size needs the forwarded rows' keys k, which is None",
        ),
        (
            (_Q, torch.zeros(2, 6, 2, 64), torch.zeros(2, 6, 2, 64)),
            {"block_size": 4},
            r"block_size needs one new K/V row per query row \(Lk == Lq\), got Lk 6 and Lq 4",
        ),
        ((_Q, _KV, _KV), {"block_origin": torch.tensor([0, 0])}, "block_origin needs block_size, which is None"),
        (
            (_Q, _KV, _KV),
            {"block_size": 4, "block_origin": torch.tensor([0, 0, 0])},
            r"block_origin must have shape \[2\], got \[3\]",
        ),
        (
            (_Q, _KV, _KV),
            {"block_size": 4, "block_origin": torch.tensor([0, 2**31])},
            r"block_origin values must lie in \[-2147483648, 2147483647\]",
        ),
    ],
)
def test_bad_input(args, kw, match):
    with pytest.raises(ValueError, match=match):
        dk.attention(*args, **kw)


# ------------------------------------------------------------------------------------------------
# the block-diffusion model: attn_impl="ops" runs this op, "sdpa" the dense mask


def _pair(tmp_path, fmt, backend="reference", **kw):
    """The same tiny checkpoint as an ops model and an sdpa model; head dim 16 (the op's
    smallest) with GQA: SDAR 4 query / 2 KV heads (Qwen3 layout), Fast-dLLM v2 2 / 1 (Qwen2)."""
    heads = dict(head_dim=16, n_heads=4, n_kv_heads=2) if fmt == "sdar" else dict(n_heads=2, n_kv_heads=1)
    ckpt = write_tiny_checkpoint(tmp_path / fmt, fmt, attn_scale=2.0, **heads, **kw)
    return load_pretrained(ckpt.path, attn_impl="ops", backend=backend), load_pretrained(ckpt.path, attn_impl="sdpa")


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("fmt", ["sdar", "fast_dllm_v2"])
def test_model_ops_equals_sdpa_without_cache(tmp_path, monkeypatch, fmt, backend):
    """Full forwards (no cache) whose windows start mid-block, with ragged real rows."""
    ops, sdpa = _pair(tmp_path, fmt, backend, block_size=4)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, ops.config.vocab_size, (3, 11), generator=g)
    positions = torch.stack([torch.arange(11), torch.arange(3, 14), torch.arange(6, 17)])
    kv_len = torch.tensor([11, 9, 6])
    with torch.no_grad():
        want = sdpa(tokens, positions, kv_len=kv_len)
        monkeypatch.setattr(tr, "_sdpa_attention", _fail_sdpa)
        got = ops(tokens, positions, kv_len=kv_len)
    for b, n in enumerate(kv_len.tolist()):
        torch.testing.assert_close(got[b, :n], want[b, :n], **MODEL_TOL)


def _fail_sdpa(*args, **kwargs):
    raise AssertionError("attn_impl='ops' ran the SDPA path")


@pytest.mark.parametrize("fmt", ["sdar", "fast_dllm_v2"])
def test_model_ops_equals_sdpa_with_the_cache(tmp_path, monkeypatch, fmt):
    """generate's block-causal forwards: a prefill of whole prompt blocks from the left padding
    (writing them), then block steps against the cache, one with the next block's first row
    (Fast-dLLM v2's inherited token), under key_start = pad and pad + one block."""
    bs, B, L = 4, 2, 28
    ops, sdpa = _pair(tmp_path, fmt, block_size=bs)
    tokens = torch.randint(0, ops.config.vocab_size, (B, L), generator=torch.Generator().manual_seed(3))
    pad = torch.tensor([0, 8])
    for key_start in (pad, pad + bs):
        caches = [m.new_cache(B, L) for m in (ops, sdpa)]
        # (window start per row, window length, blocks written)
        steps = [(pad, 8, 2), (pad + 8, bs, 0), (pad + 8, bs + 1, 1), (pad + 12, bs + 1, 0)]
        for a, n, nw in steps:
            idx = a[:, None] + torch.arange(n)[None, :]
            kw = dict(cache_len=a, key_start=key_start)
            if nw:
                ids = (a // bs)[:, None] + torch.arange(nw)[None, :]
                kw["write"] = CacheWrite(ids, bs, new_start=a)
            outs = []
            for m, cache in zip((ops, sdpa), caches):
                with monkeypatch.context() as mp:
                    if m is ops:
                        mp.setattr(tr, "_sdpa_attention", _fail_sdpa)
                    with torch.no_grad():
                        outs.append(m(tokens.gather(1, idx), idx - pad[:, None], cache=cache, **kw))
            torch.testing.assert_close(outs[0], outs[1], **MODEL_TOL)
        for ca, cb in zip(caches[0].k + caches[0].v, caches[1].k + caches[1].v):
            torch.testing.assert_close(ca, cb, **MODEL_TOL)


def test_model_ops_passes_the_block_option(tmp_path, monkeypatch):
    """The ops path calls the op with the model's block size and ``cache_len - positions[:, 0]``;
    a one-row forward or one that attends the cache only needs no block option."""
    ops, _ = _pair(tmp_path, "sdar", block_size=4)
    calls = []
    real = dk.attention

    def spy(*args, **kw):
        calls.append((kw["block_size"], kw["block_origin"]))
        return real(*args, **kw)

    monkeypatch.setattr(sys.modules["dllm_kernels.attention"], "attention", spy)  # the model's import
    cache = ops.new_cache(2, 16)
    tokens = torch.zeros(2, 5, dtype=torch.long)
    with torch.no_grad():
        ops(tokens, torch.tensor([[4, 5, 6, 7, 8], [1, 2, 3, 4, 5]]), cache=cache, cache_len=torch.tensor([8, 3]))
        assert calls and all(c[0] == 4 and c[1].tolist() == [4, 2] for c in calls)
        calls.clear()
        ops(tokens[:, :1], torch.tensor([[4], [1]]), cache=cache, cache_len=torch.tensor([8, 3]))
        ops(tokens, cache=cache, cache_len=torch.tensor([8, 3]), attend_new=False)
    assert calls and all(c == (None, None) for c in calls)


def test_model_ops_needs_consecutive_positions(tmp_path):
    ops, sdpa = _pair(tmp_path, "sdar", block_size=4)
    tokens = torch.zeros(1, 4, dtype=torch.long)
    positions = torch.tensor([[0, 1, 2, 9]])
    with torch.no_grad(), pytest.raises(ValueError, match="positions: attn_impl='ops' runs a block-causal"):
        ops(tokens, positions)
    with torch.no_grad():
        sdpa(tokens, positions)  # the masked SDPA path takes any positions
        ops(tokens, positions, kv_len=torch.tensor([3]))  # padding rows may sit anywhere


def test_model_ops_left_padding(tmp_path, monkeypatch):
    """A whole left-padded canvas (generate's uncached policies on a block-causal model, e.g.
    vanilla): the padding rows sit at position 0 before the real rows' 0, 1, ...; they are no
    real rows (key_start), so the op's blocks start at the first real row as the positions do."""
    ops, sdpa = _pair(tmp_path, "sdar", block_size=4)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, ops.config.vocab_size, (3, 12), generator=g)
    pad = torch.tensor([0, 3, 5])
    positions = (torch.arange(12)[None, :] - pad[:, None]).clamp_min(0)
    with torch.no_grad():
        want = sdpa(tokens, positions, key_start=pad)
        monkeypatch.setattr(tr, "_sdpa_attention", _fail_sdpa)
        got = ops(tokens, positions, key_start=pad)
        for b, p in enumerate(pad.tolist()):
            torch.testing.assert_close(got[b, p:], want[b, p:], **MODEL_TOL)
        with pytest.raises(ValueError, match="positions: attn_impl='ops' runs a block-causal"):
            ops(tokens, positions)  # without key_start the padding rows are real: not consecutive


def test_generate_vanilla_on_a_block_model_ragged(monkeypatch):
    """vanilla (uncached, the whole canvas each step) on a block-causal model with ragged
    prompts: the same tokens on the op as on the masked SDPA."""
    bs = 4
    run = dict(policy="vanilla", gen_length=2 * bs, block_length=bs, backend="reference")
    prompts = [PROMPTS[0], PROMPTS[3]]
    want = generate(block_model(bs=bs, shift=False), prompts, **run)
    monkeypatch.setattr(tr, "_sdpa_attention", _fail_sdpa)
    got = generate(block_model(bs=bs, shift=False, attn_impl="ops"), prompts, **run)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.nfe, want.nfe)


@pytest.mark.parametrize("policy, bs, shift, kw", [CASES[0], CASES[3]], ids=[IDS[0], IDS[3]])
def test_generate_ops_equals_sdpa(policy, bs, shift, kw, monkeypatch):
    """The block-causal policies decode the same tokens, commit steps and NFE on the op (its
    reference here) as on the masked SDPA path: ragged prompts with and without complete blocks
    and, for Fast-dLLM v2, a one-block prompt (its key_start quirk). The op's kernel: every case
    of tests/test_generate_block.py::test_kernels_match_references (an attn_impl='ops' model on
    the Triton interpreter against the SDPA model)."""
    prompts = [PROMPTS[0], PROMPTS[3]] + ([[5] * bs] if policy == "fast_dllm_v2" else [])
    run = dict(policy=policy, gen_length=3 * bs, block_length=bs, backend="reference", **kw)
    want = generate(block_model(bs=bs, shift=shift), prompts, **run)
    monkeypatch.setattr(tr, "_sdpa_attention", _fail_sdpa)
    got = generate(block_model(bs=bs, shift=shift, attn_impl="ops"), prompts, **run)
    assert not (want.tokens[:, want.gen_start :] == MASK).all()
    assert torch.equal(got.tokens, want.tokens)
    assert torch.equal(got.commit_step, want.commit_step) and torch.equal(got.nfe, want.nfe)


def test_training_keeps_the_differentiable_sdpa_path(monkeypatch):
    """attn_impl='sdpa' (training) still builds the dense mask and backpropagates."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(block_model().config, block_size=4)
    m = DiffusionLM(cfg, attn_impl="sdpa").train()
    seen = []
    real = tr._sdpa_attention
    monkeypatch.setattr(tr, "_sdpa_attention", lambda *a, **k: seen.append(a[-1]) or real(*a, **k))
    m(torch.randint(0, cfg.vocab_size, (2, 8))).logsumexp(-1).sum().backward()
    assert seen and all(s is not None and s.shape == (2, 8, 8) for s in seen)
    assert torch.isfinite(m.layers[0].q_proj.weight.grad).all()


# ------------------------------------------------------------------------------------------------
# GPU: bf16 at the block-diffusion models' shapes (the 256-row tile on 32-key tiles included)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "B, Lq, Hq, Hkv, Lmax, bs",
    [(4, 33, 28, 4, 640, 32), (4, 32, 32, 8, 640, 4), (1, 1024, 8, 4, 0, 32), (2, 300, 28, 4, 96, 32)],
    ids=["v2-step", "sdar-step", "prefill", "prefill-cached"],
)
def test_gpu_model_shapes(dtype, B, Lq, Hq, Hkv, Lmax, bs):
    cl = [Lmax - 32 * b for b in range(B)] if Lmax else None
    kl = [Lq - b for b in range(B)]
    ks = [32 * b for b in range(B)]
    q, k, v, kw = make_inputs(
        B, Lq, Hq, Hkv, 128, Lk=Lq, Lmax=Lmax, cache_len=cl, kv_len=kl, key_start=ks, dtype=dtype, device="cuda"
    )
    kw = dict(kw, block_size=bs, block_origin=torch.tensor([b - 40 for b in range(B)], device="cuda"))
    got = dk.attention(q, k, v, backend="triton", **kw)
    assert_attention_close(got, reference.attention(q, k, v, **kw), attention_lowp(q, k, v, **kw))
