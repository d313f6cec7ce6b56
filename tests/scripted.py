"""A scripted model for loop tests: logits are a fixed function of the forwarded positions.

``ScriptedModel(table)`` returns ``table[position]`` as the logits of each forwarded position,
whatever the tokens and the cache, so every policy's decisions can be worked out by hand. It
records every call (RoPE positions and real window lengths) for tests of what a forward sees.
"""

from dataclasses import dataclass, field

import torch

from dllm_kernels.models.adapter import AdapterConfig

# the protocol's config of a model without weights: the HF adapter's (vocab_size, mask_id, eos_id, ...)
ScriptedConfig = AdapterConfig


@dataclass
class ScriptedModel:
    table: torch.Tensor  # [max_position, V] logits by RoPE position
    config: ScriptedConfig
    calls: list = field(default_factory=list)

    def new_cache(self, batch, max_len):
        return object()  # nothing to cache: logits depend on positions only

    def __call__(self, tokens, positions, *, kv_len=None, logits_index=None, **_):  # the cache arguments: unused
        B, Lq = tokens.shape
        n = torch.full((B,), Lq) if kv_len is None else kv_len.cpu()
        self.calls.append([positions[b, : n[b]].tolist() for b in range(B)])
        if logits_index is None:
            logits_index = torch.arange(Lq).expand(B, Lq)
        return self.table[positions.gather(1, logits_index)]


def confident_table(targets, confidences, vocab_size):
    """Logits whose softmax puts ``confidences[p]`` on ``targets[p]`` and spreads the rest evenly."""
    L = len(targets)
    table = torch.empty(L, vocab_size)
    for p, (t, c) in enumerate(zip(targets, confidences)):
        rest = (1 - c) / (vocab_size - 1)
        table[p] = torch.log(torch.tensor(rest))
        table[p, t] = torch.log(torch.tensor(c))
    return table
