#!/usr/bin/env bash
# Runs tests/models in a virtual environment that also has torchvision, so the LLaVA-OneVision cases that need
# `LlavaOnevisionProcessor` / `AutoProcessor` (transformers looks up the video processor, which requires torchvision)
# run instead of skipping. PyPI's torchvision does not import beside the CPU torch 2.13.0 of the main environment, so
# this environment takes a torch/torchvision pair built together (on x86_64 a CUDA build of about 5.5 GB, which runs
# on the CPU). Two runs:
#   - with the overlay: every test must run and pass, except @slow ones;
#   - on stock transformers (opt-out set): every test_overflow_* case must fail.
#
# usage: scripts/ci_torchvision_tests.sh [VENV_DIR]   (default .ci-work/torchvision-venv; reused when present)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.ci-work/torchvision-venv}
REPORTS=$(dirname "$VENV")

case "$(uname -m)" in
    x86_64) TORCH_PAIR=(torch==2.14.1 torchvision==0.29.1) ;;
    aarch64) TORCH_PAIR=(torch==2.9.1 torchvision==0.24.1) ;;
    *) echo "ci_torchvision_tests: no known torch/torchvision pair for $(uname -m)" >&2; exit 1 ;;
esac

if [[ ! -x "$VENV/bin/python" ]]; then
    python -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --disable-pip-version-check "${TORCH_PAIR[@]}"
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]" "transformers==5.23.0"
"$PY" -c "import torch, torchvision, transformers; print('torch', torch.__version__, '| torchvision', \
torchvision.__version__, '| transformers', transformers.__version__)"

mapfile -t REGRESSION_TESTS <scripts/regression_test_paths
pytest_models() {
    "$PY" -m pytest "${REGRESSION_TESTS[@]}" -p no:cacheprovider -q -rN --junitxml="$1"
}

echo "--- with the overlay"
status=0
pytest_models "$REPORTS/torchvision-fixed.xml" >"$REPORTS/torchvision-fixed.log" 2>&1 || status=$?
tail -n 3 "$REPORTS/torchvision-fixed.log"
python scripts/ci_junit_summary.py "$REPORTS/torchvision-fixed.xml" --expect fixed \
    --label "with torchvision, overlay active" || status=1

echo "--- stock transformers (TRANSFORMERS_OVERLAY_DISABLE=1)"
TRANSFORMERS_OVERLAY_DISABLE=1 pytest_models "$REPORTS/torchvision-stock.xml" \
    >"$REPORTS/torchvision-stock.log" 2>&1 || true
tail -n 3 "$REPORTS/torchvision-stock.log"
python scripts/ci_junit_summary.py "$REPORTS/torchvision-stock.xml" --expect stock \
    --label "with torchvision, stock transformers" || status=1
exit "$status"
