"""Pure-PyTorch references of every op, with the public ops' names and signatures.

A reference takes its public op's parameters minus ``backend``: the same names, order, kinds and
defaults (``tests/test_reference_signatures.py`` checks them), without type annotations: the
typed signature and the contract have one home, the public op and its docstring. Written for
clarity (fp32/fp64 math, plain loops allowed); the oracle of every kernel test.
"""

from .attention import attention
from .commit import commit, num_transfer_schedule
from .confidence import merge_token_stats, token_stats, token_stats_partial, window_confidence
from .kv_cache import refresh_kv_cache
from .soft_embedding import merge_soft_embedding, soft_embedding, soft_embedding_partial

__all__ = [
    "attention",
    "commit",
    "num_transfer_schedule",
    "refresh_kv_cache",
    "token_stats",
    "window_confidence",
    "token_stats_partial",
    "merge_token_stats",
    "soft_embedding",
    "soft_embedding_partial",
    "merge_soft_embedding",
]
