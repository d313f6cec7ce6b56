"""Compile every shipped kernel configuration for Hopper (sm_90a) without a GPU.

    python -m dllm_kernels.aot [--json] [--jobs N]

The entry point of ``dllm_kernels.kernels._aot`` (see there): the kernel layer lists the
configurations its launchers can pick, and this module, above it, hands down the commit rules to
compile, :func:`dllm_kernels.policies.compiled_rules` (the kernel layer imports nothing from
``dllm_kernels`` outside ``dllm_kernels.kernels``). Must run with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import sys

from .policies import compiled_rules


def all_specs() -> list:
    """Every configuration compiled ahead of time (``AotSpec`` list), the policies' commit rules
    included."""
    from .kernels import _aot

    return _aot.all_specs(compiled_rules())


def main(argv=None) -> int:
    from .kernels import _aot

    return _aot.main(compiled_rules(), argv)


if __name__ == "__main__":
    sys.exit(main())
