"""Public confidence ops: ``token_stats`` (and its tensor-parallel pair ``token_stats_partial`` +
``merge_token_stats``) and ``window_confidence``.

Each op validates its inputs, picks a backend (see :mod:`dllm_kernels.backend`) and runs either
the Triton kernel, registered as a ``torch.library`` custom op with a fake implementation (so it
traces under ``torch.compile`` and is captured by CUDA graphs), or the PyTorch reference.
"""

from __future__ import annotations

import math

import torch

from . import reference
from ._checks import FLOAT_DTYPES, check_int_list, check_tensor
from ._seeds import resolve_seed
from ._types import TokenStats
from .backend import register_op, resolve_backend

MAX_SUPPRESS_IDS = 16  # each id costs one compare per logit inside the kernel
MAX_VOCAB = 2**31 - 1  # ids are int32 inside the kernels
MAX_MERGE = 1024  # partial states merge_token_stats reduces per row
PARTIAL_WORDS = 8  # 32-bit words per row of a token_stats_partial state
# 1 / temperature must be a finite fp32 number (the kernel multiplies the logits by it)
_FP32_MAX = float(torch.finfo(torch.float32).max)
MIN_TEMPERATURE = 1.0 / _FP32_MAX
SEED_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
MAX_WINDOW = 16
NOISES = ("dllm", "vllm")  # Gumbel noise: this library's (U >= 2**-32), vLLM 0.33's (U >= 1e-20)


# ------------------------------------------------------------------------------------------------
# custom ops (the Triton path), wired by backend.register_op: the op under torch.compile, the
# launcher itself in eager mode; the kernels module is imported on first use, so that
# TRITON_INTERPRET can still be set after `import dllm_kernels`
# ------------------------------------------------------------------------------------------------


def _fake_stats(lead, like):
    return (
        like.new_empty(lead, dtype=torch.int64),
        like.new_empty(lead, dtype=torch.float32),
        like.new_empty(lead, dtype=torch.float32),
        like.new_empty(lead, dtype=torch.float32),
    )


# the seed travels as an int (`seed`) or, per row, as a tensor (`seeds`, then seed is 0); the
# temperature as a float or, per row, as an fp32 tensor (`temps`, then temperature is 0)
def _launch_token_stats(
    kernels, logits, t, seed, ids, seeds=None, temps=None, allowed=None, tempered=False, vllm=False
):
    t = t if temps is None else temps
    seed = seed if seeds is None else seeds
    return kernels.token_stats(logits, t, seed, tuple(ids), allowed=allowed, tempered=tempered, vllm=vllm)


def _launch_partial(
    kernels, x, start, size, t, seed, ids, seeds=None, temps=None, allowed=None, tempered=False, vllm=False
):
    t = t if temps is None else temps
    seed = seed if seeds is None else seeds
    return kernels.token_stats_partial(
        x, start, size, t, seed, tuple(ids), allowed=allowed, tempered=tempered, vllm=vllm
    )


_token_stats_op = register_op(
    "token_stats",
    "confidence",
    "(Tensor logits, float temperature, SymInt seed, SymInt[] suppress_ids, Tensor? seeds=None, "
    "Tensor? temps=None, Tensor? allowed=None, bool tempered=False, bool vllm=False) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    fake=lambda logits, *args: _fake_stats(logits.shape[:-1], logits),
    launch=_launch_token_stats,
)
_token_stats_partial_op = register_op(
    "token_stats_partial",
    "confidence",
    "(Tensor logits, SymInt vocab_start, SymInt vocab_size, float temperature, SymInt seed, "
    "SymInt[] suppress_ids, Tensor? seeds=None, Tensor? temps=None, Tensor? allowed=None, bool tempered=False, "
    "bool vllm=False) -> Tensor",
    fake=lambda logits, *args: logits.new_empty((*logits.shape[:-1], PARTIAL_WORDS), dtype=torch.float32),
    launch=_launch_partial,
)
_merge_token_stats_op = register_op(
    "merge_token_stats",
    "confidence",
    "(Tensor partials, float temperature=0., bool tempered=False, Tensor? temps=None) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    fake=lambda partials, *args: _fake_stats(partials.shape[1:-1], partials),
    launch=lambda kernels, partials, temperature=0.0, tempered=False, temps=None: kernels.merge_token_stats(
        partials, temperature if temps is None else temps, tempered
    ),
)
_window_confidence_op = register_op(
    "window_confidence",
    "confidence",
    "(Tensor conf, Tensor decided, SymInt window, SymInt max_decided) -> Tensor",
    fake=lambda conf, *args: conf.new_empty(conf.shape, dtype=torch.float32),
)


# ------------------------------------------------------------------------------------------------
# public functions
# ------------------------------------------------------------------------------------------------


def _check_logits(op: str, name: str, logits) -> int:
    check_tensor(op, name, logits, ndim=(2, 3), dtypes=FLOAT_DTYPES)
    V = logits.shape[-1]
    if V < 1:
        raise ValueError(f"{op}: {name} must have a non-empty vocabulary dimension, got shape {tuple(logits.shape)}")
    return V


def _check_temperature(op: str, temperature, logits: torch.Tensor | None = None, lead=None):
    """A float (0 or >= MIN_TEMPERATURE), or an fp32 tensor of per-row temperatures shaped like
    the rows (``logits.shape[:-1]``, or ``lead``) on their device (values checked on the CPU, in
    eager mode)."""
    if isinstance(temperature, torch.Tensor):
        want = tuple(logits.shape[:-1]) if lead is None else tuple(lead)
        device = logits.device
        if temperature.dtype != torch.float32:
            raise TypeError(f"{op}: a temperature tensor must have dtype float32, got {temperature.dtype}")
        if tuple(temperature.shape) != want:
            got = list(temperature.shape)
            raise ValueError(f"{op}: a temperature tensor must have the rows' shape {list(want)}, got {got}")
        if temperature.device != device:
            raise ValueError(f"{op}: a temperature tensor must be on {device}, got {temperature.device}")
        if temperature.device.type == "cpu" and temperature.numel() and not torch.compiler.is_compiling():
            t = temperature
            bad = ~torch.isfinite(t) | (t < 0) | ((t > 0) & (t < MIN_TEMPERATURE))
            if bool(bad.any()):
                raise ValueError(
                    f"{op}: temperature values must be 0 or finite and >= {MIN_TEMPERATURE:.6g}, "
                    f"got {t[bad].flatten()[0].item()!r}"
                )
        return temperature
    return _check_float_temperature(op, temperature)


def _check_float_temperature(op: str, temperature) -> float:
    bad_type = isinstance(temperature, bool) or not isinstance(temperature, (int, float))
    if bad_type or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"{op}: temperature must be a finite number >= 0, got {temperature!r}")
    if 0 < temperature < MIN_TEMPERATURE or (temperature > 0 and 1.0 / temperature > _FP32_MAX):
        raise ValueError(
            f"{op}: temperature must be 0 (argmax) or at least {MIN_TEMPERATURE:.6g} (1/temperature must be a "
            f"finite fp32 number), got {temperature!r}"
        )
    return float(temperature)


def _check_seed(op: str, seed, logits: torch.Tensor, sample: bool):
    """An int in [0, 2**63), ``None`` (drawn at T > 0), or an integer tensor of per-row seeds
    shaped like ``logits.shape[:-1]`` on the logits' device (values checked on the CPU only: a
    check on the GPU would sync)."""
    lead = tuple(logits.shape[:-1])
    if isinstance(seed, torch.Tensor):
        if seed.dtype not in SEED_DTYPES:
            names = "/".join(str(d).replace("torch.", "") for d in SEED_DTYPES)
            raise TypeError(f"{op}: a seed tensor must have an integer dtype ({names}), got {seed.dtype}")
        if tuple(seed.shape) != lead:
            want, got = list(lead), list(seed.shape)
            raise ValueError(f"{op}: a seed tensor must have the logits' row shape {want}, got {got}")
        if seed.device != logits.device:
            raise ValueError(f"{op}: a seed tensor must be on {logits.device} (like logits), got {seed.device}")
        if seed.device.type == "cpu" and seed.numel() and int(seed.min()) < 0:
            raise ValueError(f"{op}: seed values must lie in [0, 2**63), got {int(seed.min())}")
        return seed if sample else 0
    if seed is None:
        return resolve_seed(None) if sample else 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{op}: seed must be an int, None or an integer tensor, got {type(seed).__name__}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"{op}: seed must lie in [0, 2**63), got {seed}")
    return int(seed) if sample else 0


def _check_allowed(op: str, allowed, logits: torch.Tensor, words: int | None, min_words: int):
    """An int32 bitmask ``[*rows, W]`` (xgrammar's layout) on the logits' device; ``W ==
    words`` when the vocabulary size is known, else ``W >= min_words``."""
    if allowed is None:
        return None
    lead = tuple(logits.shape[:-1])
    check_tensor(op, "allowed", allowed, dtypes=(torch.int32,), device=logits.device)
    if tuple(allowed.shape[:-1]) != lead or allowed.dim() != len(lead) + 1:
        raise ValueError(f"{op}: allowed must have shape [{', '.join(map(str, lead))}, W], got {list(allowed.shape)}")
    W = allowed.shape[-1]
    if (words is not None and W != words) or W < min_words:
        want = f"ceil(vocab / 32) = {words}" if words is not None else f"at least {min_words}"
        raise ValueError(f"{op}: allowed must have {want} int32 words per row, got {W}")
    return allowed


def _check_modes(op: str, tempered, noise) -> bool:
    if not isinstance(tempered, bool):
        raise TypeError(f"{op}: tempered must be a bool, got {type(tempered).__name__}")
    if noise not in NOISES:
        raise ValueError(f"{op}: noise must be one of {NOISES}, got {noise!r}")
    return noise == "vllm"


def _vllm_temperatures(temperature, lead, device) -> torch.Tensor:
    """vLLM's noise reads the temperature per row: a float becomes a filled fp32 tensor."""
    if isinstance(temperature, torch.Tensor):
        return temperature
    return torch.full(lead, temperature, dtype=torch.float32, device=device)


def _sampling(temperature, seed, ids, allowed, tempered, noise) -> dict:
    """The sampling and statistics keywords that ``reference.token_stats`` and
    ``reference.token_stats_partial`` share, by name."""
    return dict(temperature=temperature, seed=seed, suppress_ids=ids, allowed=allowed, tempered=tempered, noise=noise)


def _op_scalars(temperature, seed):
    """``(t, s, temps, seeds)`` for the registered ops: a per-row tensor goes to ``temps`` /
    ``seeds`` (its scalar then 0), a number stays the scalar (its tensor then ``None``)."""
    temps = temperature if isinstance(temperature, torch.Tensor) else None
    seeds = seed if isinstance(seed, torch.Tensor) else None
    return (0.0 if temps is not None else temperature), (0 if seeds is not None else seed), temps, seeds


def _check_suppress(op: str, suppress_ids, high: int) -> tuple[int, ...]:
    ids = () if suppress_ids is None else check_int_list(op, "suppress_ids", suppress_ids, low=0, high=high)
    if len(ids) > MAX_SUPPRESS_IDS:
        raise ValueError(f"{op}: at most {MAX_SUPPRESS_IDS} suppress_ids are supported, got {len(ids)}")
    return tuple(sorted(set(ids)))


def token_stats(
    logits: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 0.0,
    seed: int | torch.Tensor | None = None,
    suppress_ids=None,
    allowed: torch.Tensor | None = None,
    tempered: bool = False,
    noise: str = "dllm",
    backend: str = "auto",
) -> TokenStats:
    """Fused per-position statistics over the vocabulary, in one read of the logits.

    Args:
        logits: ``[N, V]`` or ``[B, L, V]``, fp32/fp16/bf16, any strides (e.g. a slice
            ``logits[:, s:e]`` of a larger tensor; no copy is made). Any values: NaN counts as
            ``-inf``; ``+inf`` entries take all the mass (see Returns).
        temperature: 0 proposes ``argmax(logits)`` (ties -> lowest id); T > 0 samples by
            Gumbel-max, ``argmax(logits / T + g)`` with ``g = -log(-log(U))``, which draws from
            ``softmax(logits / T)`` (LLaDA's ``add_gumbel_noise`` rule). T must be 0 or at least
            :data:`MIN_TEMPERATURE` (~2.94e-39, where ``1 / T`` stops being a finite fp32).
            Or an fp32 tensor shaped like ``logits.shape[:-1]``: per-row temperatures (values
            checked for CPU tensors only), read as fp32 with ``1 / T`` rounded correctly in fp32
            (a row equals the float path whenever T is an fp32 value, e.g. 0.5);
            rows with T = 0 propose their argmax. A tensor needs no seed per row.
        seed: for T > 0. An int in ``[0, 2**63)``: the uniform of row ``r`` (flattened), id
            ``v`` is ``tl.rand(seed, r * V + v)``. An integer tensor shaped like
            ``logits.shape[:-1]`` (per-row seeds, on the logits' device): row ``r``'s uniforms
            are ``tl.rand(seed[r], v)``, keyed by the row's own seed and the id only, so a row
            samples the same token wherever it sits in a batch. Negative values are rejected
            for CPU tensors; on the GPU they are not checked (that would sync) and both backends
            use their 64 bits alike. ``None`` draws an int seed from torch's default generator.
            Uniforms of exactly 0 are raised to 2**-32 (finite noise).
        suppress_ids: up to 16 token ids whose logits count as ``-inf`` (e.g. EOS/EoT at early
            steps); a sequence of ints or a 1-D integer CPU tensor.
        allowed: an allowed-token bitmask, int32 ``[*logits.shape[:-1], ceil(V / 32)]`` in
            xgrammar's layout: bit ``j`` of word ``w`` (``(word >> j) & 1``) allows token ``32 *
            w + j``. Disallowed logits count as ``-inf`` inside the one pass (as suppressed ones);
            bits past ``V`` are ignored. A row with nothing allowed is a row without a logit
            above ``-inf`` (see Returns).
        tempered: False (default): prob, margin and entropy are those of ``softmax(logits)``;
            True: of ``softmax(logits / T)`` per row, with T = 0 taken as 1e-10 (vLLM 0.33's
            clamp). The pivot stays the raw row maximum and ``1 / T`` scales the distances from
            it, so the statistics stay finite as T -> 0 (a unique maximum gives prob 1, entropy 0).
        noise: ``"dllm"`` (this library's Gumbel noise) or ``"vllm"``: vLLM 0.33's DiffusionGemma
            sampler, term for term: scores ``z * (1 / max(T, 1e-10)) + g * (T > 0)`` with ``U``
            clamped at 1e-20 (a T = 0 row also scores its logits times 1e10), only scores above
            ``-inf`` are candidates. Same Philox stream; used by
            :mod:`dllm_kernels.integrations.vllm`. A float temperature is read per row.
        backend: ``"auto"`` | ``"triton"`` | ``"reference"`` (see :mod:`dllm_kernels.backend`).

    Returns:
        :class:`TokenStats` ``(token, prob, margin, entropy)`` of shape ``logits.shape[:-1]``:
        int64 token; fp32 ``prob = softmax(logits)[token]``, ``margin = p_top1 - p_top2`` and
        ``entropy = -sum p log p`` (natural log), of the untempered softmax unless ``tempered``.
        A row without a logit above ``-inf`` (NaN counts as ``-inf``; suppressed and disallowed
        ids too) gives token 0, prob 0, margin 0, entropy +inf. ``k`` entries of ``+inf`` share
        all the mass (the softmax's limit): token = the lowest of their ids at every temperature,
        prob ``1/k``, margin 1 if ``k == 1`` else 0, entropy ``log k``. A sampling score that
        overflows to ``-inf`` stays a candidate (``noise="dllm"``).

    Precision: fp32 accumulation with an online softmax; prob/margin within ~4e-6 absolute and
    entropy within ~1e-5 * (1 + H) of an fp64 computation; the token is exact at T = 0.
    """
    op = "token_stats"
    V = _check_logits(op, "logits", logits)
    ids = _check_suppress(op, suppress_ids, V)
    temperature = _check_temperature(op, temperature, logits)
    vllm = _check_modes(op, tempered, noise)
    allowed = _check_allowed(op, allowed, logits, -(-V // 32), 0)
    sample = isinstance(temperature, torch.Tensor) or temperature > 0.0 or vllm
    seed = _check_seed(op, seed, logits, sample)
    return token_stats_unchecked(
        logits, temperature, seed, ids, backend, allowed=allowed, tempered=tempered, noise=noise
    )


def token_stats_unchecked(
    logits,
    temperature,
    seed,
    ids: tuple[int, ...],
    backend: str,
    *,
    allowed=None,
    tempered: bool = False,
    noise: str = "dllm",
) -> TokenStats:
    """:func:`token_stats` without validation: the documented internal entry of a decoding loop
    that validated its arguments once per call (``dllm_kernels.decode.step.decode_step`` calls it every step).

    ``temperature`` a float (0 or >= MIN_TEMPERATURE) or an fp32 tensor of the rows' shape,
    ``seed`` an int in ``[0, 2**63)`` or an integer tensor of the logits' row shape (0 where
    nothing samples), ``ids`` sorted distinct suppressed ids, ``backend``, ``allowed``,
    ``tempered`` and ``noise`` as in :func:`token_stats`. Wrong input here is undefined
    behaviour of the kernel, not an error. Not part of the public API (``dllm_kernels.__all__``);
    its signature changes only with :func:`token_stats`'s."""
    if noise == "vllm":
        temperature = _vllm_temperatures(temperature, logits.shape[:-1], logits.device)
    if resolve_backend(backend, logits.device, "token_stats") == "reference":
        return reference.token_stats(logits, **_sampling(temperature, seed, ids, allowed, tempered, noise))
    t, s, temps, seeds = _op_scalars(temperature, seed)
    if temps is None and allowed is None and not tempered and noise == "dllm":  # the loop's call
        if seeds is None:
            return TokenStats(*_token_stats_op(logits, t, s, list(ids)))
        return TokenStats(*_token_stats_op(logits, t, s, list(ids), seeds))
    return TokenStats(*_token_stats_op(logits, t, s, list(ids), seeds, temps, allowed, tempered, noise == "vllm"))


def token_stats_partial(
    logits_shard: torch.Tensor,
    vocab_start: int,
    *,
    temperature: float | torch.Tensor = 0.0,
    seed: int | torch.Tensor | None = None,
    suppress_ids=None,
    vocab_size: int | None = None,
    allowed: torch.Tensor | None = None,
    tempered: bool = False,
    noise: str = "dllm",
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`token_stats` of a vocabulary shard, as a small state that merges exactly.

    Under tensor parallelism each rank holds the logits of ids ``[vocab_start, vocab_start +
    V_shard)``. Gathering the logits costs ``rows * V * 4`` bytes per step; gathering these
    states costs 32 bytes per row, and :func:`merge_token_stats` of the shards' states equals
    ``token_stats`` of the whole vocabulary (exact tokens, the same float tolerances).

    Args:
        logits_shard: ``[N, V_shard]`` or ``[B, L, V_shard]`` as in :func:`token_stats`.
        vocab_start: the global id of the shard's first entry (int >= 0).
        temperature, seed: as in :func:`token_stats` (a float or per-row fp32 tensor), keyed by
            the GLOBAL id, so the merged sample is the sample of the whole vocabulary. Every
            shard must get the same temperature and seed; sampling (T > 0, a temperature tensor,
            or ``noise="vllm"``) needs an explicit seed, and an int seed needs ``vocab_size``
            (its Philox offsets are ``row * vocab_size + id``).
        suppress_ids: global ids (those outside the shard are ignored).
        vocab_size: the whole vocabulary's size; checked against the shard if given.
        allowed: the bitmask of the WHOLE vocabulary (global ids), int32 ``[*lead,
            ceil(vocab_size / 32)]`` (without ``vocab_size``: at least ``ceil((vocab_start +
            V_shard) / 32)`` words); each shard reads the bits of its ids.
        tempered, noise: as in :func:`token_stats`; a tempered state must be merged with
            ``merge_token_stats(..., temperature=T, tempered=True)`` (the same T).

    Returns:
        ``[*lead, 8]`` fp32: per row the words ``(m, s, u, v2, gumbel score, its logit)`` then
        two int32 ids bit-cast into fp32 words (the argmax's and the sample's global ids). Treat
        it as opaque: all-gather it (e.g. ``dist.all_gather_into_tensor``) and merge it.
    """
    op = "token_stats_partial"
    V = _check_logits(op, "logits_shard", logits_shard)
    if isinstance(vocab_start, bool) or not isinstance(vocab_start, int) or vocab_start < 0:
        raise ValueError(f"{op}: vocab_start must be an int >= 0, got {vocab_start!r}")
    if vocab_size is not None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 1 <= vocab_size <= MAX_VOCAB:
            raise ValueError(f"{op}: vocab_size must be an int in [1, 2**31 - 1], got {vocab_size!r}")
        if vocab_start + V > vocab_size:
            raise ValueError(f"{op}: vocab_start + shard width ({vocab_start} + {V}) exceeds vocab_size {vocab_size}")
    elif vocab_start + V > MAX_VOCAB:
        raise ValueError(f"{op}: vocab_start + shard width ({vocab_start} + {V}) exceeds 2**31 - 1")
    ids = _check_suppress(op, suppress_ids, vocab_size if vocab_size is not None else MAX_VOCAB)
    temperature = _check_temperature(op, temperature, logits_shard)
    vllm = _check_modes(op, tempered, noise)
    words = -(-vocab_size // 32) if vocab_size is not None else None
    allowed = _check_allowed(op, allowed, logits_shard, words, -(-(vocab_start + V) // 32))
    sample = isinstance(temperature, torch.Tensor) or temperature > 0.0 or vllm
    if sample:
        if seed is None:
            raise ValueError(f"{op}: seed must be given at temperature > 0 (every shard must draw the same noise)")
        if vocab_size is None and not isinstance(seed, torch.Tensor):
            raise ValueError(
                f"{op}: vocab_size is required at temperature > 0 with an int seed "
                "(the Philox offsets are row * vocab_size + id)"
            )
    seed = _check_seed(op, seed, logits_shard, sample)
    vocab_size = vocab_size if vocab_size is not None else vocab_start + V
    if vllm:
        temperature = _vllm_temperatures(temperature, logits_shard.shape[:-1], logits_shard.device)
    if resolve_backend(backend, logits_shard.device, op) == "reference":
        options = _sampling(temperature, seed, ids, allowed, tempered, noise)
        return reference.token_stats_partial(logits_shard, vocab_start, vocab_size=vocab_size, **options)
    t, s, temps, seeds = _op_scalars(temperature, seed)
    return _token_stats_partial_op(
        logits_shard, vocab_start, vocab_size, t, s, list(ids), seeds, temps, allowed, tempered, vllm
    )


def merge_token_stats(
    partials, *, temperature: float | torch.Tensor = 0.0, tempered: bool = False, backend: str = "auto"
) -> TokenStats:
    """Merge the :func:`token_stats_partial` states of a vocabulary's shards into its statistics.

    Args:
        partials: a sequence of ``[*lead, 8]`` fp32 states (one per shard, any order, same shape
            and device), or one ``[S, *lead, 8]`` tensor (e.g. an all-gather's output viewed
            ``[world, *lead, 8]``); ``lead`` is ``[N]`` or ``[B, L]``; at most 1024 shards.
        temperature, tempered: for states made with ``tempered=True``: the same temperature (a
            float, or an fp32 tensor shaped ``lead``) and ``tempered=True`` (the states' sums
            are in units of ``(z - m) / T``). Unused otherwise.
        backend: as in :func:`token_stats`.

    Returns:
        :class:`TokenStats` of the whole vocabulary: the same token as :func:`token_stats`
        (lowest global id on ties; the same sample at T > 0) and the floats within its stated
        tolerances.
    """
    op = "merge_token_stats"
    if isinstance(partials, (list, tuple)):
        if not partials:
            raise ValueError(f"{op}: partials must hold at least one state, got an empty sequence")
        for i, p in enumerate(partials):
            check_tensor(
                op,
                f"partials[{i}]",
                p,
                ndim=(2, 3),
                dtypes=(torch.float32,),
                device=partials[0].device,
                shape=(*partials[0].shape[:-1], PARTIAL_WORDS),
            )
        partials = torch.stack(list(partials))
    else:
        check_tensor(op, "partials", partials, ndim=(3, 4), dtypes=(torch.float32,))
        if partials.shape[-1] != PARTIAL_WORDS or partials.shape[0] < 1:
            got = list(partials.shape)
            raise ValueError(f"{op}: partials must have shape [S >= 1, *lead, {PARTIAL_WORDS}], got {got}")
    if partials.shape[0] > MAX_MERGE:
        raise ValueError(f"{op}: at most {MAX_MERGE} partial states per row are supported, got {partials.shape[0]}")
    _check_modes(op, tempered, "dllm")
    temperature = _check_temperature(op, temperature, partials, lead=partials.shape[1:-1])
    if resolve_backend(backend, partials.device, op) == "reference":
        return reference.merge_token_stats(partials, temperature=temperature, tempered=tempered)
    if not tempered:
        return TokenStats(*_merge_token_stats_op(partials))
    if isinstance(temperature, torch.Tensor):
        return TokenStats(*_merge_token_stats_op(partials, 0.0, True, temperature))
    return TokenStats(*_merge_token_stats_op(partials, temperature, True))


def window_confidence(
    conf: torch.Tensor, decided: torch.Tensor, window: int = 3, max_decided: int = 1, *, backend: str = "auto"
) -> torch.Tensor:
    """R2-dLLM's confidence-cluster score (DESIGN.md 1.2, rule 5) of every position.

    Windows of ``window`` consecutive positions slide over each row with stride 1. A window
    qualifies if it holds at most ``max_decided`` decided positions, at least one undecided one,
    and finite confidences at its undecided positions; its score is the mean confidence of its
    undecided positions (fp32, summed left to right, correctly rounded division).

    Args:
        conf: ``[B, L]`` fp32 confidences (e.g. ``TokenStats.prob`` of a block).
        decided: ``[B, L]`` bool, True where the position is no longer masked.
        window: window length W (1..16; R2's default 3).
        max_decided: U, the most decided positions a window may hold (R2's default 1).

    Returns:
        ``[B, L]`` fp32: for each undecided position the max score over the qualifying windows
        that contain it, ``-inf`` where there is none and at decided positions. Rule 5 commits the
        undecided positions with score ``>= tau_s``.
    """
    op = "window_confidence"
    check_tensor(op, "conf", conf, ndim=2, dtypes=(torch.float32,))
    check_tensor(op, "decided", decided, dtypes=(torch.bool,), device=conf.device, shape=tuple(conf.shape))
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"{op}: window must be an int in [1, {MAX_WINDOW}], got {window!r}")
    if isinstance(max_decided, bool) or not isinstance(max_decided, int) or max_decided < 0:
        raise ValueError(f"{op}: max_decided must be an int >= 0, got {max_decided!r}")
    if resolve_backend(backend, conf.device, op) == "reference":
        return reference.window_confidence(conf, decided, window, max_decided)
    return _window_confidence_op(conf, decided, window, max_decided)
