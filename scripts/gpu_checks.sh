#!/usr/bin/env bash
# The checks that need a GPU, as one script that finishes within 6 minutes on one GPU. In order, each under its own
# `timeout` (and never past the overall limit):
#   1. attention cost cells on CUDA: scripts/benchmark_attention.py --device cuda --quick
#   2. `transformers-overlay check --device cuda` (float16/bfloat16, every row of the model table)
#   3. the project's tests (tests/overlay, tests/models) with transformers' `torch_device` = cuda, less the two files
#      that never use it (the import hook and the CLI, which run on CPU in subprocesses and are tested by CPU CI)
#   4. end-to-end float16 generate: scripts/benchmark_generate.py --device cuda
# Results and logs go to $OUT (default: a temporary directory); a summary is printed at the end, and the exit code is
# non-zero when a step failed or ran out of time.
# Usage: bash scripts/gpu_checks.sh   (in an environment where `pip install -e ".[test]"` was run with a CUDA torch)
# environment: OUT (results folder), TOTAL_LIMIT_S (overall limit in seconds, default 355)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d -t overlay-gpu-checks.XXXXXX)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
TOTAL_LIMIT_S=${TOTAL_LIMIT_S:-355}
DEADLINE=$((SECONDS + TOTAL_LIMIT_S))
SUMMARY=()
FAILED=0

# run_step NAME LOG LIMIT_S COMMAND...: runs COMMAND under `timeout`, for LIMIT_S seconds or what is left of the total.
run_step() {
    local name=$1 log=$2 limit=$3
    shift 3
    local left=$((DEADLINE - SECONDS))
    if ((left < 10)); then
        SUMMARY+=("$name: not run, no time left of ${TOTAL_LIMIT_S}s")
        FAILED=1
        return
    fi
    ((limit > left)) && limit=$left
    printf '\n=== %s (limit %ss)\n' "$name" "$limit"
    local start=$SECONDS
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT/$log"
    local code=${PIPESTATUS[0]}
    local took=$((SECONDS - start))
    if ((code == 0)); then
        SUMMARY+=("$name: ok (${took}s, log $OUT/$log)")
    elif ((code == 124 || code == 137)); then
        SUMMARY+=("$name: TIMED OUT after ${limit}s (log $OUT/$log)")
        FAILED=1
    else
        SUMMARY+=("$name: FAILED, exit code $code (${took}s, log $OUT/$log)")
        FAILED=1
    fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, transformers; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '| transformers', transformers.__version__)"

run_step "attention benchmark (--quick)" benchmark-attention.log 75 \
    python scripts/benchmark_attention.py --device cuda --quick --output "$OUT/attention-cuda.json"
run_step "transformers-overlay check --device cuda" check.log 60 \
    transformers-overlay check --device cuda
run_step "tests/overlay and tests/models on cuda" tests.log 160 \
    env TRANSFORMERS_TEST_DEVICE=cuda python -m pytest tests/overlay tests/models -q -p no:cacheprovider -rfE \
    --ignore=tests/overlay/test_activation.py --ignore=tests/overlay/test_cli.py \
    --durations=15 --junitxml="$OUT/tests-cuda.xml"
run_step "generate benchmark" benchmark-generate.log 55 \
    python scripts/benchmark_generate.py --device cuda --output "$OUT/generate-cuda.json"

printf '\n=== summary (%ss of %ss)\n' "$SECONDS" "$TOTAL_LIMIT_S"
printf '%s\n' "${SUMMARY[@]}"
echo "results in $OUT"
exit "$FAILED"
