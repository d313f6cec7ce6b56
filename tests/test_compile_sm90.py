"""Every kernel configuration the launchers can pick compiles for Hopper (sm_90a) without a GPU.

The interpreter cannot tell whether a kernel compiles for the GPU; Triton's own compiler can,
on any machine: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` produces
PTX and a cubin, and Triton's bundled ``ptxas -v`` reports registers and spills. The compiler
must run without TRITON_INTERPRET, hence a subprocess.
"""

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-m", "dllm_kernels.aot", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_every_family_has_configurations(compiled):
    families = {r["name"].split("[")[0] for r in compiled}
    assert {"token_stats", "token_stats_combine", "window_confidence", "commit"} <= families
    assert {"attention_fwd", "attention_combine", "refresh_kv_cache"} <= families


def test_main_configurations_do_not_spill(compiled):
    spills = [r for r in compiled if r["main"] and (r["spill_stores"] or r["spill_loads"])]
    assert not spills, "register spills in main configurations:\n" + "\n".join(map(str, spills))


def test_register_budget(compiled):
    """At most 255 registers per thread exist; the main configs stay below 168 so that at
    least 3 warps-groups of 4 warps fit per SM (occupancy for the bandwidth-bound kernels),
    unless they declare a budget of their own (AotSpec.max_registers)."""
    heavy = [r for r in compiled if r["main"] and r["registers"] > r["max_registers"]]
    assert not heavy, "\n".join(map(str, heavy))


def test_shared_memory_fits_hopper(compiled):
    """A configuration asking for more than the 227 KiB of shared memory a block may use on
    sm_90 compiles, but fails at launch."""
    big = [r for r in compiled if r["shared"] > 232448]
    assert not big, "\n".join(map(str, big))
