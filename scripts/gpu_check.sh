#!/usr/bin/env bash
# The GPU check in one command: the GPU tests, then token_stats, DiffusionGemma's sampler
# statistics and soft embedding (vLLM's kernel when vLLM, its sampler file or wheel is there:
# docs/benchmarks.md), attention, refresh/commit and a decoding step against their baselines, with
# the copy bandwidth and matmul rate measured in the same run (bench/gpu_check.py says what each
# phase measures). At most 8 minutes on an H100/H200 image without network; runs from the checkout
# as it is (no install, no build backend).
#
#   bash scripts/gpu_check.sh            # CUDA machine: bench/results/gpu-check.{json,md,png}, gpu-check-tests.log
#   bash scripts/gpu_check.sh --cpu      # the same driver on Triton's interpreter, tiny shapes (seconds)
#
# Other arguments go to the driver (--out DIR, --phases ..., --budget S). The JSON is rewritten
# after every phase, so a run cut by the timeout still returns what it measured. When $OUT is set
# (a lent device machine), the results and the run's log are copied there.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
limit=${GPU_CHECK_TIMEOUT:-480}  # seconds for everything; the driver plans for 450
out=bench/results
if [ -n "${OUT:-}" ]; then
    timeout --kill-after=15 "$limit" "$py" bench/gpu_check.py --out "$out" "$@" 2>&1 | tee "$OUT/gpu-check-run.log"
    rc=${PIPESTATUS[0]}
    cp "$out"/gpu-check* "$out"/cpu-check* "$OUT"/ 2>/dev/null
else
    timeout --kill-after=15 "$limit" "$py" bench/gpu_check.py --out "$out" "$@"
    rc=$?
fi
exit "$rc"
