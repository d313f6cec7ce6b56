#!/usr/bin/env bash
# Sets up ./.venv with dllm-kernels (editable) and its test/bench extras. Idempotent.
#
# - A machine whose python3 already has a CUDA build of torch (a GPU image) gets a venv that
#   sees the system site-packages, so that torch and triton are reused, never replaced.
# - Any other machine gets the CPU build of torch (torch==2.13.0, which this project's machines
#   serve from a local wheel) before anything else, so pip never pulls the multi-GB CUDA wheels,
#   plus triton 3.6 (the GPU image's version) with numpy < 2.4, which its interpreter needs.
# - A CPU machine also gets SGLang's dLLM modules for tests/test_sglang.py, unless sglang is
#   already importable: tests/sglang-cpu-deps.txt with dependencies, then the pinned
#   tests/sglang-cpu.txt with --no-deps (never a CUDA torch). A failed install (e.g. offline) only
#   warns here; the CI run then fails in tests/test_sglang.py, which requires sglang when CI=true
#   on a CPU machine. The GPU image (CUDA torch, no network) skips this step.
# - A CPU machine also gets vLLM 0.33's diffusion_gemma_sampler.py (scripts/fetch_vllm_sampler.py,
#   into the git-ignored bench/vllm_diffusion_gemma_sampler.py) for tests/test_vllm.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if "$PY" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" >/dev/null 2>&1; then
        "$PY" -m venv --system-site-packages .venv
    else
        "$PY" -m venv .venv
    fi
fi
VPY=.venv/bin/python
pip_install() { "$VPY" -m pip install --quiet --disable-pip-version-check "$@"; }
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    pip_install "torch==2.13.0"
fi
if ! "$VPY" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" >/dev/null 2>&1; then
    # CPU machine: kernels run on Triton's interpreter, which breaks with numpy >= 2.4 on 3.6.
    pip_install "triton==3.6.0" "numpy>=1.26,<2.4"
fi
pip_install -e ".[test,bench]"
if ! "$VPY" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" >/dev/null 2>&1 \
        && ! "$VPY" -c "import sglang" >/dev/null 2>&1; then
    if ! { pip_install -r tests/sglang-cpu-deps.txt && pip_install --no-deps -r tests/sglang-cpu.txt; }; then
        echo "bootstrap: could not install the SGLang test set (tests/sglang-cpu.txt); tests/test_sglang.py needs it" >&2
    fi
fi
# vLLM 0.33's DiffusionGemma sampler file (6.8 kB read out of its wheel by range requests; git-ignored)
# for tests/test_vllm.py and bench/gpu_check.py; on a machine without network only a warning
if ! "$VPY" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" >/dev/null 2>&1; then
    "$VPY" scripts/fetch_vllm_sampler.py >/dev/null \
        || echo "bootstrap: no vLLM sampler file (scripts/fetch_vllm_sampler.py); tests/test_vllm.py needs it" >&2
fi
