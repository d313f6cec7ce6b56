"""Compile every shipped kernel configuration for Hopper (sm_90a) without a GPU.

Run it as ``python -m dllm_kernels.aot [--json]``: this module is the kernel layer's part and
imports nothing above it, so the commit rules to compile (label -> rule) are handed in by the
caller: ``dllm_kernels.aot`` passes ``dllm_kernels.policies.compiled_rules()``.

Triton's own compiler lowers each configuration that the launchers can pick (see each module's
``aot_specs()``) to PTX and a cubin for ``GPUTarget("cuda", 90, 32)``; the ``ptxas`` bundled with
Triton then reports registers and spills. This catches what the interpreter cannot: code that
does not compile for the GPU, and register pressure. Must run with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import AOT_MODULES
from ._utils import IS_INTERPRET, CommitRule

TARGET = GPUTarget("cuda", 90, 32)


def ptxas_path() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def all_specs(commit_rules: Mapping[str, CommitRule]):
    """Every configuration of :data:`AOT_MODULES`, the commit kernel's for ``commit_rules``."""
    specs = []
    for name in AOT_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        specs.extend(module.aot_specs(commit_rules) if name == "commit" else module.aot_specs())
    return specs


def compile_spec(commit_rules: Mapping[str, CommitRule], index: int) -> dict:
    spec = all_specs(commit_rules)[index]
    attrs = {(spec.kernel.arg_names.index(a),): [["tt.divisibility", 16]] for a in spec.aligned}
    src = ASTSource(
        fn=spec.kernel,
        signature={**spec.signature, **{k: "constexpr" for k in spec.constexprs}},
        constexprs=spec.constexprs,
        attrs=attrs,
    )
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages, "enable_fp_fusion": spec.enable_fp_fusion}
    compiled = triton.compile(src, target=TARGET, options=options)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    try:
        out = subprocess.run(
            [ptxas_path(), "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(f.name)
    log = out.stdout + out.stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spill_st = int(re.search(r"(\d+) bytes spill stores", log).group(1))
    spill_ld = int(re.search(r"(\d+) bytes spill loads", log).group(1))
    return {
        "name": spec.name,
        "main": spec.main,
        "registers": regs,
        "spill_stores": spill_st,
        "spill_loads": spill_ld,
        "shared": compiled.metadata.shared,
        "num_warps": spec.num_warps,
        "max_registers": spec.max_registers,
    }


def main(commit_rules: Mapping[str, CommitRule], argv=None) -> int:
    """The command line of ``python -m dllm_kernels.aot`` (which passes ``commit_rules``)."""
    parser = argparse.ArgumentParser(prog="python -m dllm_kernels.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if IS_INTERPRET:
        print("unset TRITON_INTERPRET: AOT compilation needs the real compiler", file=sys.stderr)
        return 2
    n = len(all_specs(commit_rules))
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(partial(compile_spec, dict(commit_rules)), range(n)))
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(
                f"{r['name']:<64} regs {r['registers']:>3}  spills {r['spill_stores']:>4}/{r['spill_loads']:<4}"
                f"  smem {r['shared']:>6}  {'main' if r['main'] else ''}"
            )
    return 0
