"""dllm-kernels: fused Triton kernels for the decoding hot path of masked diffusion LMs.

Every op takes ``backend="auto" | "triton" | "reference"``; ``dllm_kernels.reference`` holds the
pure-PyTorch references with the same signatures.
"""

import importlib.util

# kernels/ and reference/ live at the repository's top level and become dllm_kernels.kernels /
# .reference only through an install (pyproject.toml's package-dir): from a bare checkout on
# sys.path the imports below would fail with a misleading circular-import error.
if any(importlib.util.find_spec(f"{__name__}.{sub}") is None for sub in ("kernels", "reference")):
    raise ImportError(
        f"dllm_kernels is imported from a source checkout that is not installed ({__path__[0]}): its "
        "subpackages kernels/ and reference/ are mapped in by the install; run `pip install -e .` "
        "(or scripts/bootstrap.sh) in the repository first"
    )
del importlib

from . import reference
from ._types import CommitRule, CommitState, RenoiseState, TokenStats
from .attention import attention
from .backend import BACKENDS, interpreter_enabled
from .block_edit import block_edit as _block_edit  # noqa: F401  (registers the internal op dllm_kernels::block_edit)
from .commit import commit, num_transfer_schedule
from .confidence import merge_token_stats, token_stats, token_stats_partial, window_confidence
from .decode.generate import GenerateResult, MaxNFEError, generate
from .kv_cache import refresh_kv_cache
from .policies import POLICIES, Policy
from .soft_embedding import merge_soft_embedding, soft_embedding, soft_embedding_partial

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "CommitRule",
    "CommitState",
    "GenerateResult",
    "MaxNFEError",
    "POLICIES",
    "Policy",
    "RenoiseState",
    "TokenStats",
    "attention",
    "commit",
    "generate",
    "interpreter_enabled",
    "merge_soft_embedding",
    "merge_token_stats",
    "num_transfer_schedule",
    "reference",
    "refresh_kv_cache",
    "soft_embedding",
    "soft_embedding_partial",
    "token_stats",
    "token_stats_partial",
    "window_confidence",
]
