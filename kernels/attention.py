"""Bidirectional attention of a dLLM decoding step over ``[cache rows | new K/V]``, fused.

A decoding step forwards a block of queries (32 tokens, or the block plus a pruned suffix) that
attends, without a causal mask, to the KV cache of the decoded prefix (in dual-cache mode also of
the stale suffix) and to the K/V the step just computed. The public decoders concatenate cache
and new K/V every step (a copy of the whole cache per layer and step) and call SDPA; here each
program walks the two tensors as one logical key sequence instead::

    logical key j  ->  k_cache[b, j]                  for j <  cache_len[b]
                       k[b, j - cache_len[b]]         for j >= cache_len[b], j < cache_len[b] + kv_len[b]

and keys with ``j < key_start[b]`` (left padding) are skipped by starting the walk there. All
per-row lengths are read on the device: ragged batches cost no host sync and no recompile.

Online softmax (FlashAttention-2) in the log2 domain, with ``s = q . k * scale * log2(e)``::

    m' = max(m, max_j s_j),  a = 2^(m - m'),  l' = a l + sum_j 2^(s_j - m'),  acc' = a acc + P V

Every key tile a program visits holds at least one valid key (tiles start inside the valid
range), so ``m`` is finite after the first tile and ``2^(-inf - -inf)`` never occurs; a query row
whose range is empty ends with ``l = 0`` and writes 0.

Block-causal (``BLOCK_CAUSAL``, block-diffusion models): the queries are the forwarded rows, and
new row ``j`` is hidden from query row ``i`` when ``(j + phase) // block_size > (i + phase) //
block_size``, ``phase = (cache_len - block_origin) mod block_size``. The new-row range of a
program ends with the block of its query tile's last row (the later blocks' tiles are never
visited), and the tiles inside it mask the hidden keys per (row, key). A row may then see only
hidden keys in a tile (or a whole split), so its running max starts at the lowest finite fp32
instead of ``-inf``: ``2^(-inf - m)`` is 0 and no ``-inf - -inf`` occurs. Other launches compile
without any of it (a constexpr switch).

GQA: the ``G = Hq / Hkv`` query heads of a KV head are folded into the M dimension (tile row
``r = l * G + g`` is query position ``l``, head ``h * G + g``), so each K/V tile is read once per
KV head for all of its query heads. The query tile is sized to the packed rows ``M = Lq * G`` of a
decode step (32, 64, 128 or 256 rows), so one program holds all of them: LLaDA's 32-query block
(G = 1) fills a 32-row tile instead of half a 64-row one, and Dream's 32 queries x 7 heads (224
rows) fit one 256-row tile instead of two 128-row tiles that each re-read the K/V of the group.
Each K/V byte of the range is then read once per (batch entry, KV head). Larger M (pruned
suffixes with GQA, prefill) uses 128-row tiles.

Memory traffic: K/V rows in the key range are read once per (query tile, split); q read once,
o written once. Decode shapes (few queries, long keys) have too few (batch, head) pairs to fill
the GPU, so the logical key range is split across ``n_splits`` programs (flash-decoding); each
writes its normalised partial output (fp32) and log-sum-exp, merged by a small combine kernel.
The split count is capped so the partials never outweigh the K/V bytes they summarise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import _utils
from ._utils import (
    HEAD_DIMS,
    IS_INTERPRET,
    TORCH_TO_TRITON,
    AotSpec,
    cdiv,
    check_launchable,
    dense,
    next_pow2,
    programs_target,
)

LOG2E = 1.4426950408889634
_FP32_MIN = tl.constexpr(-3.4028234663852886e38)  # the lowest finite fp32
_MAX_SPLITS = 64
_MAX_GRID_Z = 65535  # (batch, KV head) pairs sit on grid axis 2, after the query tiles and splits


@triton.jit
def _attn_tile(
    acc,  # [BLOCK_M, HEAD_DIM] fp32, un-normalised output
    m_i,  # [BLOCK_M] fp32, running max of the scores (log2 domain)
    l_i,  # [BLOCK_M] fp32, running sum of 2^(s - m_i)
    b_q,  # [BLOCK_M, HEAD_DIM], queries (input dtype)
    p_k,  # pointer to the tile's first key row (its head, dim 0)
    p_v,  # pointer to the tile's first value row
    stride_kn,
    stride_vn,
    n_valid,  # keys of the tile inside the range (MASKED only)
    qk_scale,  # scale * log2(e)
    j0,  # BLOCK_CAUSAL: new-row index of the tile's first key
    q_blk,  # BLOCK_CAUSAL: [BLOCK_M] block of each query row, (i + phase) // block_size
    phase,  # BLOCK_CAUSAL: (cache_len - block_origin) mod block_size
    block_size,  # BLOCK_CAUSAL
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr,  # the tile may run past the end of the range
    DOT_F32: tl.constexpr,  # interpreter: dot operands in fp32 (its bf16 dot is wrong)
    DOT_PREC: tl.constexpr,  # "tf32x3" for fp32 inputs (3xTF32, close to fp32), else "tf32"
    BLOCK_CAUSAL: tl.constexpr,  # hide the keys of later blocks than the query row's
):
    """One online-softmax step over ``BLOCK_N`` consecutive key rows."""
    o_n = tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, HEAD_DIM)
    p_kt = p_k + o_n[:, None] * stride_kn + o_d[None, :]  # [BLOCK_N, HEAD_DIM]
    p_vt = p_v + o_n[:, None] * stride_vn + o_d[None, :]  # [BLOCK_N, HEAD_DIM]
    if MASKED:
        # rows past the range are never read: cache rows beyond cache_len may hold anything
        m_n = o_n < n_valid
        b_k = tl.load(p_kt, mask=m_n[:, None], other=0.0)
        b_v = tl.load(p_vt, mask=m_n[:, None], other=0.0)
    else:
        b_k = tl.load(p_kt)
        b_v = tl.load(p_vt)

    if DOT_F32:
        b_s = tl.dot(b_q.to(tl.float32), tl.trans(b_k.to(tl.float32)))
    else:
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC)
    b_s = b_s * qk_scale  # [BLOCK_M, BLOCK_N]
    if MASKED:
        b_s = tl.where(m_n[None, :], b_s, float("-inf"))

    if BLOCK_CAUSAL:  # m_i starts at the lowest finite fp32 (see the kernel): never -inf - -inf
        k_blk = (j0 + o_n + phase) // block_size  # [BLOCK_N]
        b_s = tl.where(k_blk[None, :] <= q_blk[:, None], b_s, float("-inf"))

    m_new = tl.maximum(m_i, tl.max(b_s, 1))  # finite: column 0 of every tile is a valid key (or m_i)
    alpha = tl.exp2(m_i - m_new)
    b_p = tl.exp2(b_s - m_new[:, None])  # [BLOCK_M, BLOCK_N]
    l_i = l_i * alpha + tl.sum(b_p, 1)
    # P is rounded to the value dtype before the P.V product, as in FlashAttention
    b_p = b_p.to(b_v.dtype)
    if DOT_F32:
        acc = acc * alpha[:, None] + tl.dot(b_p.to(tl.float32), b_v.to(tl.float32))
    else:
        acc = tl.dot(b_p, b_v, acc * alpha[:, None], input_precision=DOT_PREC)
    return acc, m_new, l_i


@triton.jit
def _attn_range(
    acc,
    m_i,
    l_i,
    b_q,
    p_k,  # pointer to key row 0 of this (batch entry, KV head)
    p_v,  # pointer to value row 0
    stride_kn,
    stride_vn,
    lo,  # first key row
    hi,  # one past the last key row (hi <= lo: nothing)
    qk_scale,
    q_blk,  # BLOCK_CAUSAL (see _attn_tile)
    phase,
    block_size,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DOT_F32: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_CAUSAL: tl.constexpr,
):
    """Attend to key rows ``[lo, hi)`` of one K/V tensor: full tiles without masks, then a tail."""
    n_full = lo + tl.maximum(hi - lo, 0) // BLOCK_N * BLOCK_N
    p_kn = p_k + lo.to(tl.int64) * stride_kn
    p_vn = p_v + lo.to(tl.int64) * stride_vn
    for j0 in tl.range(lo, n_full, BLOCK_N):
        acc, m_i, l_i = _attn_tile(
            acc,
            m_i,
            l_i,
            b_q,
            p_kn,
            p_vn,
            stride_kn,
            stride_vn,
            BLOCK_N,
            qk_scale,
            j0,
            q_blk,
            phase,
            block_size,
            BLOCK_N,
            HEAD_DIM,
            False,
            DOT_F32,
            DOT_PREC,
            BLOCK_CAUSAL,
        )
        p_kn += BLOCK_N * stride_kn
        p_vn += BLOCK_N * stride_vn
    if n_full < hi:
        acc, m_i, l_i = _attn_tile(
            acc,
            m_i,
            l_i,
            b_q,
            p_kn,
            p_vn,
            stride_kn,
            stride_vn,
            hi - n_full,
            qk_scale,
            n_full,
            q_blk,
            phase,
            block_size,
            BLOCK_N,
            HEAD_DIM,
            True,
            DOT_F32,
            DOT_PREC,
            BLOCK_CAUSAL,
        )
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["Lq", "Lk", "Lmax", "chunk"])
def _attention_fwd_kernel(
    q_ptr,  # [B, Lq, Hq, D]
    k_ptr,  # [B, Lk, Hkv, D] new keys (the cache when there are none, with Lk = 0)
    v_ptr,  # [B, Lk, Hkv, D] new values
    kc_ptr,  # [B, Lmax, Hkv, D] key cache (the new keys when there is none, with Lmax = 0)
    vc_ptr,  # [B, Lmax, Hkv, D] value cache
    o_ptr,  # [B, Lq, Hq, D] output, contiguous; SPLIT: [n_splits, B, Lq, Hq, D] fp32 partials
    lse_ptr,  # SPLIT: [n_splits, B, Lq, Hq] fp32 log2-sum-exp of each partial
    cache_len_ptr,  # [B] int (CACHE_LEN)
    kv_len_ptr,  # [B] int (KV_LEN)
    key_start_ptr,  # [B] int (KEY_START)
    block_origin_ptr,  # [B] int (BLOCK_ORIGIN)
    stride_qb,
    stride_ql,
    stride_qh,
    stride_kb,
    stride_kl,
    stride_kh,
    stride_vb,
    stride_vl,
    stride_vh,
    stride_kcb,
    stride_kcl,
    stride_kch,
    stride_vcb,
    stride_vcl,
    stride_vch,
    Hkv,  # KV heads
    G,  # query heads per KV head
    Lq,  # queries per batch entry
    Lk,  # new K/V rows (0: none)
    Lmax,  # cache rows (0: no cache)
    chunk,  # logical keys per split, a multiple of BLOCK_N
    qk_scale,  # scale * log2(e)
    block_size,  # BLOCK_CAUSAL: forwarded rows per block
    CACHE_LEN: tl.constexpr,  # per-row cache lengths given (else Lmax)
    KV_LEN: tl.constexpr,  # per-row new lengths given (else Lk)
    KEY_START: tl.constexpr,  # per-row first valid key given (else 0)
    SPLIT: tl.constexpr,  # write partials for the combine kernel
    BLOCK_CAUSAL: tl.constexpr,  # the forwarded rows (queries = new rows) attend block-causally
    BLOCK_ORIGIN: tl.constexpr,  # per-row block origin given (else key_start)
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_F32: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_m, i_s, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // Hkv, i_bh % Hkv
    i_b64 = i_b.to(tl.int64)

    # ragged lengths, read on the device and clamped so that no value can address outside a tensor
    cl = Lmax
    if CACHE_LEN:
        cl = tl.minimum(tl.maximum(tl.load(cache_len_ptr + i_b).to(tl.int32), 0), Lmax)
    kl = Lk
    if KV_LEN:
        kl = tl.minimum(tl.maximum(tl.load(kv_len_ptr + i_b).to(tl.int32), 0), Lk)
    ks = 0
    if KEY_START:
        ks = tl.maximum(tl.load(key_start_ptr + i_b).to(tl.int32), 0)
    # this program's logical key range
    lo = tl.maximum(i_s * chunk, ks)
    hi = tl.minimum(i_s * chunk + chunk, cl + kl)

    # query tile: row r is position r // G of query head i_h * G + r % G
    M = Lq * G
    o_r = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_r = o_r < M
    o_l = o_r // G
    o_hq = i_h * G + o_r % G
    o_d = tl.arange(0, HEAD_DIM)
    p_q = q_ptr + i_b64 * stride_qb + (o_l * stride_ql + o_hq * stride_qh)[:, None] + o_d[None, :]
    b_q = tl.load(p_q, mask=m_r[:, None], other=0.0)  # [BLOCK_M, HEAD_DIM]

    # block-causal: query row l (= new row l) is in block (l + phase) // block_size; the new rows
    # of later blocks than the tile's last row are never visited
    hi_new = hi - cl
    phase = 0
    q_blk = o_l
    if BLOCK_CAUSAL:
        origin = ks
        if BLOCK_ORIGIN:
            origin = tl.load(block_origin_ptr + i_b).to(tl.int32)
        phase = ((cl.to(tl.int64) - origin) % block_size + block_size) % block_size  # C or floor %
        phase = phase.to(tl.int32)
        q_blk = (o_l + phase) // block_size  # [BLOCK_M]
        l_last = (tl.minimum(i_m * BLOCK_M + BLOCK_M, M) - 1) // G
        hi_new = tl.minimum(hi_new, ((l_last + phase) // block_size + 1) * block_size - phase)

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # block-causal: a row may meet only hidden (-inf) keys in a tile, so m starts finite, below
    # every finite score: 2^(-inf - m) = 0 and 2^(m - m') stays defined
    m_i = tl.full([BLOCK_M], _FP32_MIN if BLOCK_CAUSAL else float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # cache rows: logical index j is cache row j
    acc, m_i, l_i = _attn_range(
        acc,
        m_i,
        l_i,
        b_q,
        kc_ptr + i_b64 * stride_kcb + i_h * stride_kch,
        vc_ptr + i_b64 * stride_vcb + i_h * stride_vch,
        stride_kcl,
        stride_vcl,
        lo,
        tl.minimum(hi, cl),
        qk_scale,
        q_blk,
        phase,
        block_size,
        BLOCK_N,
        HEAD_DIM,
        DOT_F32,
        DOT_PREC,
        False,
    )
    # new rows: logical index j is new row j - cl
    acc, m_i, l_i = _attn_range(
        acc,
        m_i,
        l_i,
        b_q,
        k_ptr + i_b64 * stride_kb + i_h * stride_kh,
        v_ptr + i_b64 * stride_vb + i_h * stride_vh,
        stride_kl,
        stride_vl,
        tl.maximum(lo, cl) - cl,
        hi_new,
        qk_scale,
        q_blk,
        phase,
        block_size,
        BLOCK_N,
        HEAD_DIM,
        DOT_F32,
        DOT_PREC,
        BLOCK_CAUSAL,
    )

    # output row of (b, l, hq) in the contiguous [B, Lq, Hq] layout (and in each split's slice)
    Hq = Hkv * G
    o_row = (i_b64 * Lq + o_l) * Hq + o_hq  # [BLOCK_M]
    has_keys = l_i > 0.0
    b_o = acc / tl.where(has_keys, l_i, 1.0)[:, None]  # rows without keys: acc = 0 -> 0
    if SPLIT:
        o_row += i_s.to(tl.int64) * (tl.num_programs(2) // Hkv) * Lq * Hq
        b_lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + o_row, b_lse, mask=m_r)
        # an empty split writes its log-sum-exp only; the combine never reads its output rows
        tl.store(o_ptr + o_row[:, None] * HEAD_DIM + o_d[None, :], b_o, mask=(m_r & has_keys)[:, None])
    else:
        tl.store(o_ptr + o_row[:, None] * HEAD_DIM + o_d[None, :], b_o.to(o_ptr.dtype.element_ty), mask=m_r[:, None])


@triton.jit(do_not_specialize=["R", "n_splits"])
def _attention_combine_kernel(
    part_o_ptr,  # [n_splits, R, D] fp32, normalised partial outputs
    lse_ptr,  # [n_splits, R] fp32, their log2-sum-exp (-inf: the split had no key)
    o_ptr,  # [R, D] output (rows = B * Lq * Hq)
    R,
    n_splits,
    HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """o = sum_s 2^(lse_s - m) o_s / sum_s 2^(lse_s - m), merged online over the splits."""
    i_r = tl.program_id(0)
    o_r = (i_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    m_r = o_r < R
    o_d = tl.arange(0, HEAD_DIM)
    m = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    den = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], dtype=tl.float32)
    for i_s in tl.range(0, n_splits):
        b_lse = tl.load(lse_ptr + i_s * R + o_r, mask=m_r, other=float("-inf"))  # [BLOCK_R]
        m_new = tl.maximum(m, b_lse)
        pivot = tl.where(m_new > float("-inf"), m_new, 0.0)  # finite, so -inf - pivot = -inf
        alpha = tl.exp2(m - pivot)
        b_w = tl.exp2(b_lse - pivot)
        m_o = (m_r & (b_lse > float("-inf")))[:, None]
        b_o = tl.load(part_o_ptr + (i_s * R + o_r)[:, None] * HEAD_DIM + o_d[None, :], mask=m_o, other=0.0)
        acc = acc * alpha[:, None] + b_w[:, None] * b_o
        den = den * alpha + b_w
        m = m_new
    b_o = acc / tl.where(den > 0.0, den, 1.0)[:, None]
    tl.store(o_ptr + o_r[:, None] * HEAD_DIM + o_d[None, :], b_o.to(o_ptr.dtype.element_ty), mask=m_r[:, None])


# ------------------------------------------------------------------------------------------------
# launcher
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tiles:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Not tuned on a GPU yet (none was available): FA2-tutorial-like tiles, 3-stage cp.async
# pipelines; the query tile is the smallest of 32 / 64 / 128 / 256 rows that holds the packed
# rows M = Lq * G of a decode step (see the module docstring), 128 rows beyond that. ptxas
# (sm_90a, bf16, D=128, split / unsplit): BM=32 x 4 warps 225 / 255 registers, 76 KiB shared
# (two programs per SM); BM=64 x 8 warps 182 / 175; BM=128 x 8 warps 226 / 224; BM=256 x 16
# warps 128 / 128 (the cap of 512 threads), 160 KiB, no spill when SPLIT but 128 B of spills
# unsplit, so the 256-row tile is used only together with a key split (always the case at decode
# shapes with a cache; without one the launcher falls back to two 128-row tiles).
# Launch plans at the models' decode step (B 8, 32 queries, 2048 cached + 32 new keys, bf16,
# 4 x 132 programs wanted; _plan, checked by tests/test_attention.py), before -> after packing:
#   LLaDA 32/32 heads: 64-row tile half empty, 3 splits, 768 programs, K/V read once (273 MB)
#                   -> 32-row tile full, 3 splits, 768 programs, the same 273 MB
#   Dream 28/4 heads: two 128-row tiles x 4 splits, 256 programs, K/V read twice (68 MB)
#                   -> one 256-row tile (224 rows used) x 4 splits, 128 programs, K/V once (34 MB)
# (At B 1 Dream gets 16 programs: the split count is capped by the partials' traffic.)
_GPU_TILES = {
    # (head_dim, block_m): tiles
    (64, 32): _Tiles(32, 64, 4, 3),
    (64, 64): _Tiles(64, 64, 4, 3),
    (64, 128): _Tiles(128, 64, 8, 3),
    (64, 256): _Tiles(256, 64, 16, 3),
    (128, 32): _Tiles(32, 64, 4, 3),
    (128, 64): _Tiles(64, 64, 8, 3),
    (128, 128): _Tiles(128, 64, 8, 3),
    (128, 256): _Tiles(256, 64, 16, 3),
}
# Block-causal launches mask every key tile of the new rows ([BLOCK_M, BLOCK_N] where): on the
# 256-row tile at D=128 that spills (ptxas: 124 B stored, 152 B loaded at the 128-register cap of
# 512 threads), so that one takes 32-key tiles (no spill), keeping K/V read once per KV group.
_GPU_TILES_BLOCK_CAUSAL = {(128, 256): _Tiles(256, 32, 16, 3)}
# fp32 inputs (a testing dtype; 3xTF32 dots, which spill) use one small tile whatever M is
_GPU_TILES_FP32 = {64: _Tiles(64, 32, 4, 2), 128: _Tiles(64, 32, 8, 2)}
_PACK_M = 256  # the largest query tile: a KV group's packed rows up to this fit one program
_COMBINE_BLOCK_R = 16


def _block_m(M: int) -> int:
    """Query rows per tile: the packed rows of a decode step in one tile, 128 beyond _PACK_M."""
    return max(32, next_pow2(M)) if M <= _PACK_M else 128


def _gpu_tiles(D: int, block_m: int, block_causal: bool) -> _Tiles:
    key = (max(D, 64), block_m)
    return _GPU_TILES_BLOCK_CAUSAL.get(key, _GPU_TILES[key]) if block_causal else _GPU_TILES[key]


def _tiles(
    M: int,
    D: int,
    dtype: torch.dtype,
    max_keys: int,
    block_n: int | None,
    interpret: bool = IS_INTERPRET,
    block_causal: bool = False,
) -> _Tiles:
    if interpret:  # ~0.4 ms per tl op per program whatever the tile: few programs, big tiles
        bn = block_n or min(64, max(16, next_pow2(max_keys)))
        return _Tiles(min(_PACK_M, max(16, next_pow2(M))), bn, 4, 1)
    t = _GPU_TILES_FP32[max(D, 64)] if dtype == torch.float32 else _gpu_tiles(D, _block_m(M), block_causal)
    return t if block_n is None else _Tiles(t.block_m, block_n, t.num_warps, t.num_stages)


def _num_splits(B: int, Hkv: int, M: int, n_m: int, max_keys: int, tiles: _Tiles, elem: int, programs: int) -> int:
    """Splits of the key range: enough programs to fill the GPU (``programs``), at least two key
    tiles each, and no more partial-output traffic (M rows x D x 4 bytes, written and read back)
    per (b, h) than the K/V bytes (keys x D x 2 x elem) the splits read."""
    base = B * Hkv * n_m
    fill = cdiv(programs, base)
    traffic = max_keys * elem // (4 * M)
    return max(1, min(_MAX_SPLITS, fill, cdiv(max_keys, tiles.block_n) // 2, traffic))


@dataclass(frozen=True)
class _Plan:
    """How one call is launched: tiles, query tiles per (batch entry, KV head), key splits."""

    tiles: _Tiles
    n_m: int
    splits: int
    chunk: int  # logical keys per split, a multiple of tiles.block_n

    def programs(self, B: int, Hkv: int) -> int:
        return self.n_m * self.splits * B * Hkv


def _plan(
    B: int,
    Lq: int,
    Hq: int,
    Hkv: int,
    D: int,
    max_keys: int,
    dtype: torch.dtype,
    *,
    programs: int,
    num_splits: int | None = None,
    block_n: int | None = None,
    interpret: bool = IS_INTERPRET,
    block_causal: bool = False,
) -> _Plan:
    """Pure function of the shapes (tests read the GPU plan of the models' decode shapes on any
    machine: ``programs`` is what ``programs_target`` gives, 4 x 132 on an H100 / H200)."""
    M = Lq * (Hq // Hkv)
    elem = torch.empty((), dtype=dtype).element_size()

    def splits_for(tiles: _Tiles, n_m: int) -> int:
        if num_splits is not None:
            return max(1, int(num_splits))
        return 1 if interpret else _num_splits(B, Hkv, M, n_m, max_keys, tiles, elem, programs)

    tiles = _tiles(M, D, dtype, max_keys, block_n, interpret, block_causal)
    n_m = cdiv(M, tiles.block_m)
    splits = splits_for(tiles, n_m)
    if not interpret and tiles.block_m == _PACK_M and splits == 1:  # see _GPU_TILES: spills unsplit
        tiles = _gpu_tiles(D, 128, block_causal)
        tiles = tiles if block_n is None else _Tiles(tiles.block_m, block_n, tiles.num_warps, tiles.num_stages)
        n_m = cdiv(M, tiles.block_m)
        splits = splits_for(tiles, n_m)
    chunk = max(cdiv(cdiv(max(max_keys, 1), splits), tiles.block_n) * tiles.block_n, tiles.block_n)
    return _Plan(tiles, n_m, max(1, cdiv(max_keys, chunk)), chunk)


def attention(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    k_cache: torch.Tensor | None,
    v_cache: torch.Tensor | None,
    cache_len: torch.Tensor | None,
    kv_len: torch.Tensor | None,
    key_start: torch.Tensor | None,
    scale: float,
    block_size: int | None = None,
    block_origin: torch.Tensor | None = None,
    *,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Launch the attention kernels. Inputs are assumed validated by the public op (last dims
    contiguous, D in HEAD_DIMS, matching heads/dtypes/devices, at least one of k / k_cache;
    with ``block_size``, ``k`` given with ``Lk == Lq``).

    ``num_splits`` and ``block_n`` override the heuristics (tests use them to cover the split
    and tail paths on small shapes).
    """
    lengths = (cache_len, kv_len, key_start, block_origin)
    present = [t for t in (q, k, v, k_cache, v_cache, *lengths) if t is not None]
    check_launchable("attention", *present)
    cache_len, kv_len, key_start, block_origin = (dense(t) for t in lengths)
    B, Lq, Hq, D = q.shape
    # absent operands: point at the other K/V pair with a length of 0 (never dereferenced)
    k_, v_ = (k, v) if k is not None else (k_cache, v_cache)
    kc_, vc_ = (k_cache, v_cache) if k_cache is not None else (k, v)
    Lk = k.shape[1] if k is not None else 0
    Lmax = k_cache.shape[1] if k_cache is not None else 0
    Hkv = k_.shape[2]
    G = Hq // Hkv
    max_keys = Lk + Lmax

    plan = _plan(
        B,
        Lq,
        Hq,
        Hkv,
        D,
        max_keys,
        q.dtype,
        programs=programs_target(q.device),
        num_splits=num_splits,
        block_n=block_n,
        block_causal=block_size is not None,
    )
    tiles, n_m, splits, chunk = plan.tiles, plan.n_m, plan.splits, plan.chunk

    if B * Hkv > _MAX_GRID_Z:
        raise ValueError(f"attention: batch x KV heads = {B * Hkv} exceeds the {_MAX_GRID_Z} programs of a grid axis")
    out = _utils.empty(B, Lq, Hq, D, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if splits > 1:
        part_o = _utils.empty(splits, B, Lq, Hq, D, dtype=torch.float32, device=q.device)
        lse = _utils.empty(splits, B, Lq, Hq, dtype=torch.float32, device=q.device)
    else:  # unused when not SPLIT
        part_o, lse = out, out
    dummy = q  # length pointers that are absent are never read
    _attention_fwd_kernel[(n_m, splits, B * Hkv)](
        q,
        k_,
        v_,
        kc_,
        vc_,
        part_o,
        lse,
        dummy if cache_len is None else cache_len,
        dummy if kv_len is None else kv_len,
        dummy if key_start is None else key_start,
        dummy if block_origin is None else block_origin,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        *_bhl_strides(k),
        *_bhl_strides(v),
        *_bhl_strides(k_cache),
        *_bhl_strides(v_cache),
        Hkv,
        G,
        Lq,
        Lk,
        Lmax,
        chunk,
        scale * LOG2E,
        1 if block_size is None else block_size,
        CACHE_LEN=cache_len is not None,
        KV_LEN=kv_len is not None,
        KEY_START=key_start is not None,
        SPLIT=splits > 1,
        BLOCK_CAUSAL=block_size is not None,
        BLOCK_ORIGIN=block_origin is not None,
        HEAD_DIM=D,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        DOT_F32=IS_INTERPRET,
        DOT_PREC=_dot_prec(q.dtype),
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
    )
    if splits > 1:
        R = B * Lq * Hq
        block_r = min(next_pow2(R), 4096 // D) if IS_INTERPRET else _COMBINE_BLOCK_R
        _attention_combine_kernel[(cdiv(R, block_r),)](
            part_o,
            lse,
            out,
            R,
            splits,
            HEAD_DIM=D,
            BLOCK_R=block_r,
            num_warps=4,
        )
    return out


def _bhl_strides(t: torch.Tensor | None) -> tuple[int, int, int]:
    """(batch, row, head) strides of a [B, L, H, D] operand; zeros for an absent one."""
    return (t.stride(0), t.stride(1), t.stride(2)) if t is not None else (0, 0, 0)


def _dot_prec(dtype: torch.dtype) -> str:
    return "tf32x3" if dtype == torch.float32 else "tf32"  # only matters for fp32 inputs


# ------------------------------------------------------------------------------------------------
# ahead-of-time configurations
# ------------------------------------------------------------------------------------------------


def _aot_specs_fwd():
    """Every tile of every dtype, split or not; the block-causal variant (with a block origin)
    of the main configurations only (half precision, D 64 / 128: the block-diffusion models)."""
    specs = []
    strides = [f"stride_{t}{d}" for t in ("q", "k", "v", "kc", "vc") for d in ("b", "l", "h")]
    pointers = ["q_ptr", "k_ptr", "v_ptr", "kc_ptr", "vc_ptr", "o_ptr", "lse_ptr"]
    for dtype, ty in TORCH_TO_TRITON.items():
        tiles = (
            list(_GPU_TILES_FP32.items()) if dtype == torch.float32 else [(D, t) for (D, _), t in _GPU_TILES.items()]
        )
        if dtype != torch.float32:  # the small head dims run on the D=64 tiles (small models only)
            tiles += [(D, t) for D in HEAD_DIMS if D < 64 for (Dt, _), t in _GPU_TILES.items() if Dt == 64]
        half = dtype != torch.float32  # block-causal: half precision at D >= 64 (the models)
        variants = [
            (D, t if not causal else _gpu_tiles(D, t.block_m, True), split, causal)
            for D, t in tiles
            for causal in (False, True)
            if not causal or (half and D >= 64)
            for split in ((False, True) if t.block_m < _PACK_M else (True,))  # see _plan
        ]
        for D, t, split, causal in variants:
            specs.append(
                AotSpec(
                    name=f"attention_fwd[{ty},D={D},BM={t.block_m},split={split}{',block_causal' if causal else ''}]",
                    kernel=_attention_fwd_kernel,
                    signature={
                        **{p: f"*{ty}" for p in pointers},
                        "o_ptr": "*fp32" if split else f"*{ty}",
                        "lse_ptr": "*fp32",
                        "cache_len_ptr": "*i32",
                        "kv_len_ptr": "*i32",
                        "key_start_ptr": "*i32",
                        "block_origin_ptr": "*i32",
                        **{s: "i32" for s in strides},
                        "Hkv": "i32",
                        "G": "i32",
                        "Lq": "i32",
                        "Lk": "i32",
                        "Lmax": "i32",
                        "chunk": "i32",
                        "qk_scale": "fp32",
                        "block_size": "i32",
                    },
                    # the length flags only gate one scalar load each: compiled with all given
                    constexprs={
                        "CACHE_LEN": True,
                        "KV_LEN": True,
                        "KEY_START": True,
                        "SPLIT": split,
                        "BLOCK_CAUSAL": causal,
                        "BLOCK_ORIGIN": causal,
                        "HEAD_DIM": D,
                        "BLOCK_M": t.block_m,
                        "BLOCK_N": t.block_n,
                        "DOT_F32": False,
                        "DOT_PREC": _dot_prec(dtype),
                    },
                    num_warps=t.num_warps,
                    num_stages=t.num_stages,
                    main=dtype != torch.float32 and D >= 64,  # fp32 and small D: testing
                    max_registers=255,  # one program per SM (see _GPU_TILES)
                    aligned=tuple(pointers + strides),  # [.., H, D] tensors with D in HEAD_DIMS
                )
            )
    return specs


def _aot_specs_combine():
    return [
        AotSpec(
            name=f"attention_combine[{ty},D={D}]",
            kernel=_attention_combine_kernel,
            signature={"part_o_ptr": "*fp32", "lse_ptr": "*fp32", "o_ptr": f"*{ty}", "R": "i32", "n_splits": "i32"},
            constexprs={"HEAD_DIM": D, "BLOCK_R": _COMBINE_BLOCK_R},
            num_warps=4,
            aligned=("part_o_ptr", "lse_ptr", "o_ptr"),
        )
        for ty in TORCH_TO_TRITON.values()
        for D in HEAD_DIMS
    ]


def aot_specs():
    return _aot_specs_fwd() + _aot_specs_combine()
