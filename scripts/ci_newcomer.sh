#!/usr/bin/env bash
# What a newcomer does first: a fresh clone, a brand-new virtual environment, and the README's first command exactly as
# written there (the first ```bash block of README.md, extracted, not retyped). Its exit code is this script's: 0 means
# the command works on a fresh machine of this type (for `transformers-overlay check`: P-001 cleared, overlay active).
#
#   scripts/ci_newcomer.sh [WORK_DIR]   # default: a temporary directory, removed afterwards
#
# The clone is of the committed HEAD of this repository, so uncommitted changes are not tested. Nothing of the calling
# environment leaks in: PYTHONPATH, PYTHONHOME, PIP_USER, VIRTUAL_ENV and the overlay's opt-out are unset, and the new
# environment does not see the system site-packages.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
if [ $# -ge 1 ]; then
    mkdir -p "$1"
    WORK=$(cd "$1" && pwd)  # absolute: the command runs from inside the clone
else
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
fi
rm -rf "$WORK/clone" "$WORK/venv"
mkdir -p "$WORK"

git clone --quiet "$REPO" "$WORK/clone"
command=$("$PYTHON" - "$WORK/clone/README.md" <<'PY'
import re
import sys

blocks = re.findall(r"^```bash\n(.*?)^```", open(sys.argv[1], encoding="utf-8").read(), flags=re.DOTALL | re.MULTILINE)
if not blocks:
    sys.exit("README.md has no ```bash block")
print(blocks[0].strip())
PY
)
"$PYTHON" -m venv "$WORK/venv"
echo "clone of $(git -C "$WORK/clone" rev-parse --short HEAD) in $WORK/clone, new virtual environment $WORK/venv"
echo "README's first command: $command"

set +e
(
    cd "$WORK/clone"
    unset PYTHONPATH PYTHONHOME PIP_USER VIRTUAL_ENV TRANSFORMERS_OVERLAY_DISABLE
    # shellcheck disable=SC1091
    source "$WORK/venv/bin/activate" || exit 1
    [ "$(command -v python)" = "$WORK/venv/bin/python" ] || { echo "the new virtual environment is not active" >&2; exit 1; }
    started=$SECONDS
    bash -c "$command"
    code=$?
    echo "exit code $code after $((SECONDS - started)) s"
    exit $code
)
code=$?
set -e
if [ "$code" -ne 0 ]; then
    echo "FAIL: the README's first command exits $code in a brand-new virtual environment from a fresh clone" >&2
fi
rm -rf "$WORK/venv"  # a few GB of torch; the clone stays for inspection when WORK_DIR was given
exit "$code"
