"""Triton kernels and their launchers, one module per op family.

Importing this package decorates the kernels: set ``TRITON_INTERPRET=1`` before the import to
run them on CPU tensors through Triton's interpreter.
"""

from . import attention, block_edit, commit, confidence, kv_cache, soft_embedding

# modules whose ``aot_specs()`` list every configuration their launchers can pick
AOT_MODULES = ("attention", "block_edit", "commit", "confidence", "kv_cache", "soft_embedding")

__all__ = ["attention", "block_edit", "commit", "confidence", "kv_cache", "soft_embedding", "AOT_MODULES"]
