#!/usr/bin/env bash
# What a newcomer does first: a fresh clone, a brand-new virtual environment, and the README's first command exactly as
# written there (the first ```bash block of README.md, extracted, not retyped), then its second (the test command, the
# second ```bash block) in the same environment. Exit code 0 means both work on a fresh machine of this type (for
# `transformers-overlay check`: P-001 cleared, overlay active; for the tests: the suite passes); otherwise the first
# failing command's exit code.
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
# readme_command N: the README's Nth ```bash block, as written.
readme_command() {
    "$PYTHON" - "$WORK/clone/README.md" "$1" <<'PY'
import re
import sys

blocks = re.findall(r"^```bash\n(.*?)^```", open(sys.argv[1], encoding="utf-8").read(), flags=re.DOTALL | re.MULTILINE)
index = int(sys.argv[2])
if len(blocks) < index:
    sys.exit(f"README.md has fewer than {index} ```bash blocks")
print(blocks[index - 1].strip())
PY
}
first_command=$(readme_command 1)
second_command=$(readme_command 2)
"$PYTHON" -m venv "$WORK/venv"
echo "clone of $(git -C "$WORK/clone" rev-parse --short HEAD) in $WORK/clone, new virtual environment $WORK/venv"
echo "README's first command: $first_command"
echo "README's second command: $second_command"

set +e
(
    cd "$WORK/clone"
    unset PYTHONPATH PYTHONHOME PIP_USER VIRTUAL_ENV TRANSFORMERS_OVERLAY_DISABLE
    # shellcheck disable=SC1091
    source "$WORK/venv/bin/activate" || exit 1
    [ "$(command -v python)" = "$WORK/venv/bin/python" ] || { echo "the new virtual environment is not active" >&2; exit 1; }
    for which in first second; do
        command_var="${which}_command"
        started=$SECONDS
        echo "--- README's $which command"
        bash -c "${!command_var}"
        code=$?
        echo "exit code $code after $((SECONDS - started)) s"
        if [ "$code" -ne 0 ]; then
            echo "FAIL: the README's $which command exits $code in a brand-new virtual environment from a fresh clone" >&2
            exit $code
        fi
    done
)
code=$?
set -e
rm -rf "$WORK/venv"  # a few GB of torch; the clone stays for inspection when WORK_DIR was given
exit "$code"
