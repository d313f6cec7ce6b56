#!/usr/bin/env bash
# The GPU checks, on a lent GPU machine without network access (its image already holds torch,
# triton, safetensors, tokenizers, pytest, pytest-benchmark, pytest-xdist and matplotlib):
#
#   bash scripts/gpu_check.sh tests                 # every test, the GPU-marked ones included
#   bash scripts/gpu_check.sh token_stats commit    # benchmark files, one or several
#
# Parts: tests, token_stats, commit, attention, refresh, generate (the bench/test_bench_*.py
# files). Each part fits in one 10-minute device call; logs, pytest-benchmark JSON and the
# results files (bench/results/*.json, *.png) are copied to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --no-deps --no-build-isolation --disable-pip-version-check -e . || exit 1
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 1
export PYTHONUNBUFFERED=1
out=${OUT:-bench/results}
mkdir -p "$out"
rc=0
for part in "$@"; do
    if [ "$part" = tests ]; then
        python3 -m pytest tests -q -n 4 --dist loadfile -rs 2>&1 | tee "$out/gpu-tests.log" || rc=1
    else
        python3 -m pytest "bench/test_bench_$part.py" -q --benchmark-json "$out/$part-pytest.json" 2>&1 \
            | tee "$out/bench-$part.log" || rc=1
    fi
done
if [ "$out" != bench/results ]; then
    cp bench/results/*.json bench/results/*.png "$out"/ 2>/dev/null
fi
exit $rc
