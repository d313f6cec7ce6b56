"""Moved to :mod:`dllm_kernels.policies.aliases` (the aliases live in each decoder's section of
:mod:`dllm_kernels.policies.published`). This module only keeps ``dllm_kernels.loop``'s import
working until the loop calls :func:`dllm_kernels.policies.resolve_policy` alone; then delete it."""

from .policies.aliases import public_aliases

__all__ = ["public_aliases"]
