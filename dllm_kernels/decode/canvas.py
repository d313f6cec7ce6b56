"""The canvas of a :func:`~dllm_kernels.decode.generate` call and its rows: building it from the
prompts, the batch's device tensors, and the compaction that lets finished rows leave the batch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_tensor
from ..commit import CommitState


def build_canvas(prompt, gen_length: int, block_length: int, config, device, *, block_causal: bool = False):
    """Left-pad the prompts to a common block-aligned length and append the masks (a fixed number
    of tensor ops whatever the batch; a list prompt is read row by row once). Returns the canvas
    ``[B, P + gen_length]``, the ``[B]`` left padding, ``P`` and the ``[B]`` prompt lengths (on
    the CPU).

    ``block_causal`` (block-diffusion decoding, whose blocks are aligned to position 0): the left
    padding is a whole number of blocks, each prompt's last (partial) block ends at ``P``, and the
    masks start right after the prompt, so that canvas blocks are the model's position blocks."""
    if isinstance(prompt, torch.Tensor):
        check_tensor("generate", "prompt", prompt, ndim=2)
        if prompt.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"generate: prompt must be an integer tensor, got {prompt.dtype}")
        rect = tokens = prompt.cpu().to(torch.int64)
        lengths = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.int64)
        tokens = tokens.flatten()
    else:
        rect, rows = None, []
        for r in prompt:
            t = torch.as_tensor(r)
            bad_dtype = t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool
            if t.dim() != 1 or (t.numel() and bad_dtype):
                raise TypeError(
                    f"generate: prompt must hold 1-D integer token id sequences, got {t.dtype} {list(t.shape)}"
                )
            rows.append(t.cpu().to(torch.int64))
        lengths = torch.tensor([len(t) for t in rows], dtype=torch.int64)
        tokens = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
    if not len(lengths) or bool((lengths == 0).any()):
        raise ValueError("generate: every prompt needs at least one token")
    bad = tokens[(tokens < 0) | (tokens >= config.vocab_size)]
    if len(bad):
        raise ValueError(f"generate: prompt token ids must lie in [0, {config.vocab_size}), got {bad[:5].tolist()}")
    B = len(lengths)
    P = -(-int(lengths.max()) // block_length) * block_length
    pad_id = config.pad_id if getattr(config, "pad_id", None) is not None else config.eos_id
    pad = P - lengths
    if block_causal:
        pad = P - (-(-lengths // block_length)) * block_length
    x = torch.full((B, P + gen_length), config.mask_id, dtype=torch.int64)
    x[:, :P] = torch.where(torch.arange(P)[None, :] < (pad + lengths)[:, None], pad_id, config.mask_id)
    if rect is not None:  # rows of one length: one block
        x[:, int(pad[0]) : int(pad[0]) + rect.shape[1]] = rect
    else:  # token i of the concatenation belongs to row b and goes to column pad[b] + (its index in b)
        row = torch.repeat_interleave(torch.arange(B), lengths)
        first = torch.cumsum(lengths, 0) - lengths
        x[row, pad[row] + torch.arange(len(tokens)) - first[row]] = tokens
    return x.to(device), pad.to(device), P, lengths


def fill_eos(
    x, commit_step, fill_after: torch.Tensor, step, eos: int, keep: torch.Tensor | None = None, redate: bool = True
):
    """Every position after ``fill_after[b]`` of row b becomes EOS (except where ``keep``);
    positions whose token changes record ``step`` (an int, or ``[B, 1]`` per row); with
    ``redate=False`` only those that had no commit step yet (a Fast-dLLM v2 stop: the published
    record dates a padded position by the forward that committed it)."""
    after = torch.arange(x.shape[1], device=x.device)[None, :] > fill_after[:, None]
    if keep is not None:
        after &= ~keep
    new = torch.where(after, eos, x)
    date = new != x if redate else (new != x) & (commit_step < 0)
    commit_step.copy_(torch.where(date, step, commit_step))
    x.copy_(new)


def ship_index(a: np.ndarray, device) -> torch.Tensor:
    """An index array to the device without a host sync (pinned, asynchronous)."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def select_rows(cache, index: torch.Tensor | None):
    """The cache of the batch rows ``index``: ``None`` stays None; a dataclass whose fields are
    tensors or lists of tensors with the batch first (the project's KV cache) is indexed; any
    other cache cannot drop rows (False). ``index=None`` only asks whether it can."""
    if cache is None:
        return None
    if not dataclasses.is_dataclass(cache) or isinstance(cache, type):
        return False
    values = [getattr(cache, f.name) for f in dataclasses.fields(cache)]
    if not all(
        isinstance(v, torch.Tensor) or (isinstance(v, list) and all(isinstance(t, torch.Tensor) for t in v))
        for v in values
    ):
        return False
    if index is None:
        return True

    def pick(v):
        return v.index_select(0, index) if isinstance(v, torch.Tensor) else [t.index_select(0, index) for t in v]

    return dataclasses.replace(cache, **{f.name: pick(v) for f, v in zip(dataclasses.fields(cache), values)})


@dataclass
class Batch:
    """The device tensors of the rows in the batch: the canvas ``x`` ``[B, L]``, the commit
    state, the ``[B]`` left padding, the model's cache (or None), the ``[B]`` int64 row seeds and
    the ``[B]`` first key each row attends (None: ``pad``; Fast-dLLM v2's one-block prompt is
    never attended)."""

    x: torch.Tensor
    state: CommitState
    pad: torch.Tensor
    cache: object
    seeds: torch.Tensor
    key_start: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> Batch:
        """The rows ``index`` (a device index tensor); the cache must be able to drop rows."""
        pick = lambda t: t.index_select(0, index)  # noqa: E731
        state = CommitState(*(pick(getattr(self.state, f.name)) for f in dataclasses.fields(self.state)))
        key_start = None if self.key_start is None else pick(self.key_start)
        return Batch(pick(self.x), state, pick(self.pad), select_rows(self.cache, index), pick(self.seeds), key_start)


class Compaction:
    """Rows that are done (or out of forwards) leave the batch (a row's tokens do not depend on its
    place in the batch, at any temperature) when the model's cache can drop rows; their final
    canvas, commit steps and NFE are kept here. ``rows`` maps the batch's rows to the caller's."""

    def __init__(self, batch: Batch):
        B = batch.x.shape[0]
        self.enabled = select_rows(batch.cache, None) is not False
        self.x, self.commit_step = batch.x, batch.state.commit_step  # without compaction: the batch's own
        if self.enabled:
            self.x, self.commit_step = self.x.clone(), self.commit_step.clone()
        self.nfe = np.zeros(B, np.int64)
        self.rows = np.arange(B)

    def wanted(self, gone: np.ndarray) -> bool:
        """Whether the rows ``gone`` leave now (at least an eighth of the batch at once)."""
        return self.enabled and bool(gone.any()) and 8 * gone.sum() >= len(self.rows)

    def retire(self, batch: Batch, drop: np.ndarray, nfe: np.ndarray) -> None:
        """Keep the final canvas, commit steps and NFE (``[B]``, the scheduler's) of the batch rows
        ``drop``, and forget them in :attr:`rows`."""
        device = batch.x.device
        drop_t, orig_t = ship_index(drop, device), ship_index(self.rows[drop], device)
        self.x.index_copy_(0, orig_t, batch.x.index_select(0, drop_t))
        self.commit_step.index_copy_(0, orig_t, batch.state.commit_step.index_select(0, drop_t))
        self.nfe[self.rows[drop]] = nfe[drop]
        keep = np.ones(len(self.rows), bool)
        keep[drop] = False
        self.rows = self.rows[keep]

    def finish(self, batch: Batch, nfe: np.ndarray) -> None:
        """Keep the rows still in the batch (``nfe``: theirs)."""
        if not len(self.rows):
            return
        if self.enabled:
            rows_t = ship_index(self.rows, batch.x.device)
            self.x.index_copy_(0, rows_t, batch.x)
            self.commit_step.index_copy_(0, rows_t, batch.state.commit_step)
        self.nfe[self.rows] = nfe
