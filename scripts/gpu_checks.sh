#!/usr/bin/env bash
# The checks that need a GPU, as one script: the attention cost cells on CUDA (stock eager, the overlay, the patch's
# reference function, the half-input/float32-output route, sdpa), `check` in float16/bfloat16 on the GPU, and the
# function-level numerics and parity tests on the GPU. Results go to $OUT (default: a temporary directory).
# Usage: bash scripts/gpu_checks.sh   (in an environment where `pip install -e ".[test]"` was run with a CUDA torch)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python scripts/benchmark_attention.py --device cuda --time-budget 1 --output "$OUT/attention-cuda.json" 2>&1 | tee "$OUT/benchmark.log"
transformers-overlay check --device cuda 2>&1 | tee "$OUT/check.log"
python -m pytest tests/overlay/test_stable_eager_attention.py tests/overlay/test_drop_in_parity.py -q -p no:cacheprovider \
    2>&1 | tee "$OUT/tests.log" | tail -n 5
echo "results in $OUT"
