"""A LLaDA/Dream/Qwen-architecture masked-diffusion transformer built on the library's ops.

Pre-norm blocks of RMSNorm -> attention (RoPE, GQA) -> RMSNorm -> SwiGLU MLP, untied (or tied)
LM head, optional QKV biases (Dream, Qwen2 / Fast-dLLM v2), optional q/k RMSNorm over head_dim
before RoPE (Qwen3 / SDAR) and optional logit shift (Dream, Fast-dLLM v2).

Attention is bidirectional (LLaDA, Dream), or block-causal when ``config.block_size`` is set
(Fast-dLLM v2, SDAR): a row attends to the rows of its own block and of every earlier block, with
blocks counted in RoPE positions (block of a row = ``position // block_size``, as the published
generate functions, which put the prompt at position 0, count them). With the completed blocks in
the cache and one block forwarded, that is exactly the ``[cache | new rows]`` attention below
(no mask inside the block), so the cache of a block-causal model is exact.

Decoding against a KV cache. The cache holds, per layer, K (after RoPE) and V of canvas positions
``[0, Lmax)``. One forward takes any set of canvas positions (``tokens`` with their RoPE
``positions``) and

1. optionally writes the new K/V rows of some blocks into the cache (``write``:
   :func:`dllm_kernels.refresh_kv_cache`, block-sparse, in place) -- a block-start full forward
   fills it, Fast-dLLM's dual cache overwrites the block, d3LLM appends decoded blocks;
2. attends from every forwarded position to cache rows ``[0, cache_len)`` plus (unless
   ``attend_new=False``) the forwarded positions themselves (:func:`dllm_kernels.attention`, no
   concatenation in memory). The dual-cache pattern writes the block first and then attends the
   cache alone.

``attn_impl="sdpa"`` instead runs what the public dLLM repos run: concatenate cache and new K/V
and call ``torch.nn.functional.scaled_dot_product_attention`` (also the differentiable path used
for training). It is the baseline of the end-to-end benchmark, never a silent fallback.

The block-causal mask among the forwarded rows follows ``attn_impl`` too: ``"ops"`` runs the
library's attention op with its ``block_size`` option (blocks counted from the logical index
``block_origin = cache_len - positions[:, 0]``, which is the rule by positions when each row's
forwarded rows sit at consecutive positions, as every call of ``generate`` forwards them; on the
CPU other positions are a ValueError); ``"sdpa"`` builds the explicit ``[B, Lq, cache + Lq]``
mask (validity as above, and among the forwarded rows ``block(key) <= block(query)``, any
positions) for torch SDPA, the differentiable path training uses. A one-row forward, or one that
attends the cache only (``attend_new=False``), needs no mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._rope import rotate_half
from .config import ModelConfig
from .protocol import CacheWrite

ATTN_IMPLS = ("ops", "sdpa")


@dataclass
class KVCache:
    """Per-layer K (rotated) and V of canvas positions: ``k[i], v[i]`` are ``[B, Lmax, Hkv, D]``."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, max_len: int, *, device=None, dtype=torch.float32) -> KVCache:
        shape = (batch, max_len, config.n_kv_heads, config.head_dim)
        return cls(
            k=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)],
            v=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)],
        )

    @property
    def max_len(self) -> int:
        return self.k[0].shape[1]


class RMSNorm(nn.Module):
    """RMSNorm in fp32; ``has_weight=False``: no learned scale (DiffusionGemma's post-norm)."""

    def __init__(self, dim: int, eps: float, *, has_weight: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim)) if has_weight else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf if self.weight is None else xf * self.weight.float()).to(x.dtype)


class SelfConditioning(nn.Module):
    """DiffusionGemma's self-conditioning (vLLM ``DiffusionGemmaSelfConditioning``): a gated MLP
    of the previous step's soft embedding ``s`` added to the input embeddings,
    ``post_norm(e + down(gelu_tanh(gate(pre_norm(s))) * up(pre_norm(s))))``; ``pre_norm`` has a
    weight, ``post_norm`` none."""

    def __init__(self, dim: int, hidden: int, eps: float):
        super().__init__()
        self.pre_norm = RMSNorm(dim, eps)
        self.post_norm = RMSNorm(dim, eps, has_weight=False)
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, inputs_embeds: torch.Tensor, soft_embeds: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(soft_embeds)
        signal = self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))
        return self.post_norm(inputs_embeds + signal)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x [..., H, D]`` rotated by per-position ``cos/sin [..., D]`` (HF rotate_half), in fp32."""
    xf = x.float()
    return (xf * cos[..., None, :] + rotate_half(xf) * sin[..., None, :]).to(x.dtype)


class Block(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c = c
        self.attn_norm = RMSNorm(c.d_model, c.rms_eps)
        self.q_proj = nn.Linear(c.d_model, c.n_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        if c.qk_norm:  # Qwen3: per-head RMSNorm of q and k (weights [head_dim]), before RoPE
            self.q_norm = RMSNorm(c.head_dim, c.rms_eps)
            self.k_norm = RMSNorm(c.head_dim, c.rms_eps)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=False)
        self.mlp_norm = RMSNorm(c.d_model, c.rms_eps)
        self.gate_proj = nn.Linear(c.d_model, c.ffn_dim, bias=False)
        self.up_proj = nn.Linear(c.d_model, c.ffn_dim, bias=False)
        self.down_proj = nn.Linear(c.ffn_dim, c.d_model, bias=False)

    def forward(
        self,
        h,
        cos,
        sin,
        *,
        layer_cache,
        cache_len,
        kv_len,
        attend_new,
        write,
        key_start,
        backend,
        attn_impl,
        real,
        new_mask=None,
        block_origin=None,
    ):
        """``h [B, L, d]``, or ``[N, d]``: the rows ``real`` (a :class:`_Rows`) of the flattened
        ``[B * L]`` token axis, when the per-token layers skip the padding. ``new_mask [B, L, L]``
        (bool): which forwarded rows each forwarded row may attend (block-causal models); given,
        attention runs the masked SDPA path. ``block_origin [B]``: given, the attention op runs
        block-causally over blocks of ``c.block_size`` counted from it (see :func:`attention`)."""
        c = self.c
        B, L = (real.B, real.L) if real is not None else h.shape[:2]
        x = self.attn_norm(h)
        q = self.q_proj(x).unflatten(-1, (c.n_heads, c.head_dim))
        k = self.k_proj(x).unflatten(-1, (c.n_kv_heads, c.head_dim))
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        v = self.v_proj(x).unflatten(-1, (c.n_kv_heads, c.head_dim))
        if real is not None:  # attention and the cache write see the padded [B, L] layout
            q, k, v = real.unpack(q), real.unpack(k), real.unpack(v)
        k_cache, v_cache = layer_cache if layer_cache is not None else (None, None)
        if write is not None:
            _write_cache(k_cache, v_cache, k, v, write, backend, attn_impl)
        kn, vn = (k, v) if attend_new else (None, None)
        if new_mask is not None:
            o = _sdpa_attention(q, kn, vn, k_cache, v_cache, cache_len, kv_len, key_start, new_mask)
        elif attn_impl == "ops":
            from ..attention import attention

            o = attention(
                q,
                kn,
                vn,
                k_cache=k_cache,
                v_cache=v_cache,
                cache_len=cache_len,
                kv_len=kv_len if attend_new else None,
                key_start=key_start,
                block_size=c.block_size if block_origin is not None else None,
                block_origin=block_origin,
                backend=backend,
            )
        else:
            o = _sdpa_attention(q, kn, vn, k_cache, v_cache, cache_len, kv_len, key_start)
        o = o.reshape(B, L, c.n_heads * c.head_dim)
        h = h + self.o_proj(real.pack(o) if real is not None else o)
        x = self.mlp_norm(h)
        return h + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Rows:
    """The real rows of a ragged forward: ``index`` the positions of the flattened ``[B * L]``
    token axis with ``j < kv_len[b]``. The per-token layers (norms, projections, RoPE, MLP) run
    on ``[N, ...]`` packed rows, exactly the values they compute on the padded layout; attention
    and the cache write get the padded layout back, padding rows zero (never attended)."""

    def __init__(self, index: torch.Tensor, B: int, L: int):
        self.index, self.B, self.L = index, B, L

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """``[B, L, ...]`` -> ``[N, ...]``."""
        return t.flatten(0, 1).index_select(0, self.index)

    def unpack(self, t: torch.Tensor) -> torch.Tensor:
        """``[N, ...]`` -> ``[B, L, ...]`` (zeros at the padding)."""
        out = t.new_zeros(self.B * self.L, *t.shape[1:])
        return out.index_copy_(0, self.index, t).unflatten(0, (self.B, self.L))


def _real_rows(kv_len: torch.Tensor | None, B: int, L: int, device) -> _Rows | None:
    """The packing of a forward whose rows past ``kv_len`` are padding, on the CPU only (finding
    the rows reads ``kv_len``, a host sync on an accelerator); None when nothing is padding."""
    if kv_len is None or torch.device(device).type != "cpu":
        return None
    real = (torch.arange(L, device=device)[None, :] < kv_len[:, None]).flatten()
    if bool(real.all()):
        return None
    return _Rows(real.nonzero().flatten(), B, L)


def _write_cache(k_cache, v_cache, k, v, write: CacheWrite, backend, attn_impl):
    if k_cache is None:
        raise ValueError("a cache write needs a cache")
    if attn_impl == "ops":
        from ..kv_cache import refresh_kv_cache

        refresh_kv_cache(
            k_cache, v_cache, k, v, write.block_ids, write.block_size, new_start=write.new_start, backend=backend
        )
        return
    # the peers' way: gather the listed rows and scatter them with torch indexing
    B, Lmax = k_cache.shape[:2]
    bs = write.block_size
    rows = write.block_ids[:, :, None].long() * bs + torch.arange(bs, device=k.device)  # [B, nb, bs]
    rows = rows.reshape(B, -1)
    start = torch.zeros(B, dtype=torch.long, device=k.device) if write.new_start is None else write.new_start.long()
    src = rows - start[:, None]
    ok = (write.block_ids.long().repeat_interleave(bs, dim=1) >= 0) & (rows < Lmax) & (src >= 0) & (src < k.shape[1])
    b = torch.arange(B, device=k.device)[:, None].expand_as(rows)
    k_cache[b[ok], rows[ok]] = k[b[ok], src[ok]]
    v_cache[b[ok], rows[ok]] = v[b[ok], src[ok]]


def _sdpa_attention(q, k, v, k_cache, v_cache, cache_len, kv_len, key_start, new_mask=None):
    """Concatenate cache rows and new rows, mask invalid keys, run torch SDPA (the peers' path).
    ``new_mask [B, Lq, Lk]`` (bool, with new rows ``k``): also hide new row j from query row i
    where it is False (the block-causal mask)."""
    B, Lq, Hq, D = q.shape
    ar = lambda n: torch.arange(n, device=q.device)[None, :].expand(B, n)  # noqa: E731
    keys, vals, logical, valid = [], [], [], []
    clen = torch.zeros(B, dtype=torch.long, device=q.device)
    if k_cache is not None:
        Lmax = k_cache.shape[1]
        clen = torch.full((B,), Lmax, device=q.device, dtype=torch.long) if cache_len is None else cache_len.long()
        keys.append(k_cache), vals.append(v_cache), logical.append(ar(Lmax))
        valid.append(ar(Lmax) < clen[:, None])
    if k is not None:
        keys.append(k), vals.append(v), logical.append(clen[:, None] + ar(k.shape[1]))
        n_new = torch.full((B,), k.shape[1], device=q.device) if kv_len is None else kv_len.long()
        valid.append(ar(k.shape[1]) < n_new[:, None])
    kk, vv, ok = torch.cat(keys, 1), torch.cat(vals, 1), torch.cat(valid, 1)
    if key_start is not None:  # logical key index: cache row j -> j, new row j -> cache_len + j
        ok = ok & (torch.cat(logical, 1) >= key_start.long()[:, None])
    ok = ok[:, None, :]  # [B, 1 or Lq, keys]
    if new_mask is not None:
        if k is None:
            raise ValueError("new_mask needs the new rows' keys (attend_new=True)")
        n_cache = kk.shape[1] - k.shape[1]
        ok = ok & torch.cat([new_mask.new_ones(B, Lq, n_cache), new_mask], dim=2)
    rep = Hq // kk.shape[2]
    kk = kk.repeat_interleave(rep, dim=2).transpose(1, 2)
    vv = vv.repeat_interleave(rep, dim=2).transpose(1, 2)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), kk, vv, attn_mask=ok[:, None])
    o = torch.where(ok.any(-1)[:, None, :, None], o, 0.0)  # rows without a key: 0, not NaN
    return o.transpose(1, 2)


def _block_origin(positions, cache, cache_len, kv_len, key_start) -> torch.Tensor:
    """``[B]`` int64 ``block_origin`` of the attention op for a block-causal forward whose real
    rows ``j`` (``j < kv_len`` and logical key index ``cache_len + j >= key_start``: left padding
    is no real row) sit at consecutive positions, ``positions[b, j] == p - (last - j)`` with
    ``p`` the position of the last real row ``last``: then ``(cache_len + j - block_origin) //
    block_size == positions[b, j] // block_size`` on every real row. Checks the consecutiveness
    on the CPU (no host sync elsewhere)."""
    B, Lq = positions.shape
    dev = positions.device
    if cache is None:
        first = torch.zeros(B, dtype=torch.long, device=dev)
    elif cache_len is None:
        first = torch.full((B,), cache.max_len, dtype=torch.long, device=dev)
    else:
        first = cache_len.long()
    n = kv_len.long() if kv_len is not None else torch.full((B,), Lq, dtype=torch.long, device=dev)
    last = (n - 1).clamp_min(0)
    p_last = positions.gather(1, last[:, None]).squeeze(1).long()
    if dev.type == "cpu":
        j = torch.arange(Lq, device=dev)[None, :]
        real = j < n[:, None]
        if key_start is not None:
            real &= first[:, None] + j >= key_start.long()[:, None]
        if not bool(((positions == p_last[:, None] - (last[:, None] - j)) | ~real).all()):
            raise ValueError(
                "positions: attn_impl='ops' runs a block-causal model's real forwarded rows at consecutive "
                "positions (left padding excepted); use attn_impl='sdpa' for others"
            )
    return first + last - p_last


def rope_tables(config: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 RoPE ``cos, sin [max_seq_len, head_dim]``: angle ``p * theta**(-2i/D)`` repeated for
    both halves (the rotate_half convention of LLaDA, Dream and HF Llama)."""
    D = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, D, 2, device=device, dtype=torch.float32) / D))
    freqs = torch.outer(torch.arange(config.max_seq_len, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


class DiffusionLM(nn.Module):
    """The transformer. ``backend`` is passed to every library op; ``attn_impl`` picks the
    attention path ("ops": the library's kernels/references; "sdpa": concat + torch SDPA)."""

    def __init__(self, config: ModelConfig, *, backend: str = "auto", attn_impl: str = "ops"):
        super().__init__()
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.config = config
        self.backend = backend
        self.attn_impl = attn_impl
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.self_conditioning = (
            None
            if config.self_conditioning_size is None
            else SelfConditioning(config.d_model, config.self_conditioning_size, config.rms_eps)
        )
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.rms_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def embed_weight(self) -> torch.Tensor:
        """``[V, d_model]`` the input-embedding matrix (what a soft embedding multiplies)."""
        return self.embed.weight

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.lm_head.weight
        return KVCache.empty(self.config, batch, max_len, device=p.device, dtype=p.dtype)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        cache_len: torch.Tensor | None = None,
        kv_len: torch.Tensor | None = None,
        attend_new: bool = True,
        write: CacheWrite | None = None,
        key_start: torch.Tensor | None = None,
        logits_index: torch.Tensor | None = None,
        soft_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of the forwarded positions.

        Args:
            tokens: ``[B, Lq]`` int64 canvas tokens being forwarded (any subset of the canvas).
            positions: ``[B, Lq]`` int RoPE positions (default ``0..Lq-1``); the canvas position
                minus the row's left padding. Streaming-dLLM's pruned suffix keeps its original
                positions here.
            cache: the loop's :class:`KVCache` (None: attend the forwarded positions only).
            cache_len: ``[B]`` cache rows ``[0, cache_len)`` are attended (default: all).
            kv_len: ``[B]`` forwarded rows ``[0, kv_len)`` are real (ragged windows); the rest are
                padding, never attended as keys (their own outputs are garbage; on the CPU the
                per-token layers skip them, the real rows' values unchanged).
            attend_new: also attend the forwarded positions' own K/V (False: cache only).
            write: cache rows to (over)write with this forward's K/V, before attending.
            key_start: ``[B]`` left padding: keys before this logical index are ignored.
            logits_index: ``[B, Lo]`` forwarded rows whose logits are wanted (default: all); the
                LM head is the most expensive matmul at a large vocabulary. With ``logit_shift``
                the logits of row i come from the hidden state of row ``i - 1`` (row 0: itself),
                shifted within the forwarded window as the Dream and Fast-dLLM v2 code does.
            soft_embeds: ``[B, Lq, d_model]`` (any float dtype) the self-conditioning signal of
                each forwarded row, ``softmax(prev_logits / T) @ embed_weight`` (uniform-state
                models). A model with ``config.self_conditioning_size`` always applies its
                :class:`SelfConditioning` to the embeddings, with zeros when None; a model
                without one refuses a signal.

        With ``config.block_size`` set (block-causal models), the forwarded rows attend each
        other block-causally by their ``positions`` (row j is hidden from row i when
        ``positions[j] // block_size > positions[i] // block_size``); cache rows are attended as
        above (the caller keeps only completed earlier blocks there). With ``attn_impl="ops"``
        each row's real forwarded rows must sit at consecutive positions (``positions[b, j] ==
        positions[b, 0] + j`` for ``j < kv_len[b]``; checked on the CPU); see the module
        docstring.

        Returns:
            ``[B, Lo, V]`` logits in the model's dtype.
        """
        B, Lq = tokens.shape
        soft_embeds = self._soft_embeds(soft_embeds, tokens)
        if positions is None:
            positions = torch.arange(Lq, device=tokens.device).expand(B, Lq)
        if positions.shape != tokens.shape:
            raise ValueError(f"positions must have shape {list(tokens.shape)}, got {list(positions.shape)}")
        # on the CPU the per-token layers skip the padding rows past kv_len (rows that are done
        # have kv_len 0): the real rows get exactly the values of the padded forward
        new_mask = block_origin = None
        if self.config.block_size is not None and attend_new and Lq > 1:
            if self.attn_impl == "sdpa":
                blk = torch.div(positions, self.config.block_size, rounding_mode="floor")
                new_mask = blk[:, None, :] <= blk[:, :, None]  # [B, Lq (query), Lq (key)]
            else:  # the op's blocks: forwarded row j (logical index cache_len + j) at position p0 + j
                block_origin = _block_origin(positions, cache, cache_len, kv_len, key_start)
        real = _real_rows(kv_len, B, Lq, tokens.device)
        if real is not None:
            tokens, positions = real.pack(tokens), real.pack(positions)
        h = self.embed(tokens)
        if self.self_conditioning is not None:
            h = self.self_conditioning(h, real.pack(soft_embeds) if real is not None else soft_embeds)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # [B, Lq, D] (or [N, D])
        for i, layer in enumerate(self.layers):
            layer_cache = (cache.k[i], cache.v[i]) if cache is not None else None
            h = layer(
                h,
                cos,
                sin,
                layer_cache=layer_cache,
                cache_len=cache_len,
                kv_len=kv_len,
                attend_new=attend_new,
                write=write,
                key_start=key_start,
                backend=self.backend,
                attn_impl=self.attn_impl,
                real=real,
                new_mask=new_mask,
                block_origin=block_origin,
            )
        if real is not None:
            h = real.unpack(h)  # padding rows: 0, their logits are ignored
        if logits_index is None:
            logits_index = torch.arange(Lq, device=h.device).expand(B, Lq)
        rows = (logits_index - 1).clamp_min(0) if self.config.logit_shift else logits_index
        h = h.gather(1, rows[:, :, None].expand(-1, -1, h.shape[-1]))
        return self.lm_head(self.norm(h))

    def _soft_embeds(self, soft_embeds: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor | None:
        """The checked self-conditioning signal in the embeddings' dtype (zeros when None)."""
        if self.self_conditioning is None:
            if soft_embeds is not None:
                raise ValueError("soft_embeds: this model has no self-conditioning (config.self_conditioning_size)")
            return None
        w = self.embed.weight
        shape = (*tokens.shape, self.config.d_model)
        if soft_embeds is None:
            return torch.zeros(shape, device=w.device, dtype=w.dtype)
        if tuple(soft_embeds.shape) != shape or not soft_embeds.is_floating_point():
            raise ValueError(
                f"soft_embeds must be a float tensor of shape {list(shape)}, got {soft_embeds.dtype} "
                f"{list(soft_embeds.shape)}"
            )
        return soft_embeds.to(device=w.device, dtype=w.dtype)
