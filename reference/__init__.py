"""Pure-PyTorch references of every op, with the public ops' names and signatures.

Written for clarity (fp32/fp64 math, plain loops allowed); the oracle of every kernel test.
"""

from .commit import commit, num_transfer_schedule
from .confidence import token_stats, window_confidence

__all__ = ["commit", "num_transfer_schedule", "token_stats", "window_confidence"]
