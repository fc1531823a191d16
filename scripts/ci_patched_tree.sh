#!/usr/bin/env bash
# CI for the patch series: downloads the transformers sdist the stored series targets, unpacks it and commits it to a
# fresh git repository, then exercises scripts/apply_patches.sh on it (apply, --check, --reverse back to the pristine
# tree, apply again with --commit), installs the patched tree into its own virtual environment (CPU torch pin first, no
# overlay) and runs this repository's tests/models and scripts/check_patched_parity.py there: the fix and drop-in
# parity (autograd, torch.compile, torch.export, autocast, gradient checkpointing) must hold with transformers alone.
# Then the generated route: a main-like checkout (the same sdist, `__version__` bumped to the next minor's .dev0 and
# committed) gets the series generated for it (apply, --reverse back to a clean checkout, apply --commit), is
# installed in the same environment and runs tests/models.
#
# usage: scripts/ci_patched_tree.sh
# environment:
#   PYTHON         interpreter that creates the environment (default: python3)
#   TORCH_VERSION  torch installed first (default: 2.13.0, the CPU wheel on this machine's disk)
#   WORK_DIR       where the tree, the environment and the logs go (default: a temporary directory, removed at the end)
#   TEST_PATHS     test paths, relative to this checkout (default: tests/models)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VERSION="$(sed -n 's/^# transformers-version: *//p' "$REPO/patches/series")"
START=$SECONDS

if [[ -n "${WORK_DIR:-}" ]]; then
    mkdir -p "$WORK_DIR"
else
    WORK_DIR="$(mktemp -d -t overlay-patched-tree.XXXXXX)"
    trap 'rm -rf "$WORK_DIR"' EXIT
fi
TREE="$WORK_DIR/transformers-$VERSION"
IFS=. read -r MAJOR MINOR _ <<<"$VERSION"
DEV_VERSION="$MAJOR.$((MINOR + 1)).0.dev0"
MAIN="$WORK_DIR/transformers-main"
VENV="$WORK_DIR/venv"
LOG="$WORK_DIR/install.log"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
gitq() { git -C "$TREE" -c user.name=ci -c user.email=ci@localhost "$@"; }

step() { printf '\n=== patched tree: %s (%s, %ss)\n' "$1" "$(date -u +%H:%M:%S)" "$((SECONDS - START))"; }
fail() {
    echo "ci_patched_tree: $*" >&2
    exit 1
}

step "download and unpack the transformers $VERSION sdist"
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "transformers==$VERSION" --dest "$WORK_DIR"
tar --no-same-owner -xzf "$WORK_DIR/transformers-$VERSION.tar.gz" -C "$WORK_DIR"
gitq init --quiet
gitq add --all
gitq commit --quiet -m "transformers $VERSION (PyPI sdist)"
PRISTINE="$(gitq rev-parse HEAD)"

step "apply, --check, --reverse, apply --commit"
"$REPO/scripts/apply_patches.sh" "$TREE"
"$REPO/scripts/apply_patches.sh" "$TREE" --check | tee "$WORK_DIR/check.txt"
grep -q "already applied" "$WORK_DIR/check.txt" || fail "--check does not report the series as applied"
"$REPO/scripts/apply_patches.sh" "$TREE" --reverse
[[ -z "$(gitq status --porcelain)" ]] || fail "--reverse did not restore the pristine tree"
"$REPO/scripts/apply_patches.sh" "$TREE" --commit
[[ -z "$(gitq status --porcelain)" ]] || fail "apply --commit left uncommitted changes"
COMMITS="$(gitq rev-list --count "$PRISTINE..HEAD")"
PATCHES="$(grep -vc '^#' "$REPO/patches/series")"
[[ $COMMITS == "$PATCHES" ]] || fail "apply --commit made $COMMITS commits for $PATCHES patches"
gitq log --oneline "$PRISTINE..HEAD"

step "generated route: a main-like $DEV_VERSION checkout (apply, --reverse, apply --commit)"
gitm() { git -C "$MAIN" -c user.name=ci -c user.email=ci@localhost "$@"; }
git clone --quiet "$TREE" "$MAIN"
gitm reset --quiet --hard "$PRISTINE"
# as upstream's release tooling does: the package version and setup.py's
sed -i "s/^__version__ = \"$VERSION\"/__version__ = \"$DEV_VERSION\"/" "$MAIN/src/transformers/__init__.py"
sed -i "s/version=\"$VERSION\"/version=\"$DEV_VERSION\"/" "$MAIN/setup.py"
grep -q "^__version__ = \"$DEV_VERSION\"" "$MAIN/src/transformers/__init__.py" || fail "could not set $DEV_VERSION"
grep -q "version=\"$DEV_VERSION\"" "$MAIN/setup.py" || fail "could not set $DEV_VERSION in setup.py"
gitm commit --quiet -am "Bump to $DEV_VERSION"
MAIN_BASE="$(gitm rev-parse HEAD)"
"$REPO/scripts/apply_patches.sh" "$MAIN" | tee "$WORK_DIR/main-apply.txt"
grep -q "generated the" "$WORK_DIR/main-apply.txt" || fail "the main-like checkout did not get a generated series"
"$REPO/scripts/apply_patches.sh" "$MAIN" --reverse
[[ -z "$(gitm status --porcelain)" ]] || fail "--reverse did not restore the main-like checkout"
"$REPO/scripts/apply_patches.sh" "$MAIN" --commit
[[ -z "$(gitm status --porcelain)" ]] || fail "apply --commit left uncommitted changes in the main-like checkout"
COMMITS="$(gitm rev-list --count "$MAIN_BASE..HEAD")"
[[ $COMMITS == "$PATCHES" ]] || fail "apply --commit made $COMMITS commits for $PATCHES patches in the main-like checkout"
gitm log --oneline "$MAIN_BASE..HEAD"

step "install the patched tree in $VENV (torch $TORCH_VERSION first, no overlay)"
{
    "$PYTHON" -m venv "$VENV" &&
        "$VENV/bin/python" -m pip install --progress-bar off "torch==$TORCH_VERSION" &&
        "$VENV/bin/python" -m pip install --progress-bar off "$TREE" pytest parameterized pillow accelerate
} >"$LOG" 2>&1 || {
    tail -n 30 "$LOG" >&2
    fail "installing the patched tree failed (log: $LOG)"
}
# the tests must see the patched transformers and nothing of the overlay
(cd "$WORK_DIR" && "$VENV/bin/python" - "$VERSION" "$TORCH_VERSION") <<'EOF'
import importlib.util
import sys
from importlib.metadata import version

import transformers.models.qwen2.modeling_qwen2 as modeling_qwen2

if importlib.util.find_spec("transformers_overlay") is not None:
    sys.exit("transformers_overlay is importable in the patched-tree environment")
found = (version("transformers"), version("torch").split("+")[0])
if found != (sys.argv[1], sys.argv[2]):
    sys.exit(f"installed transformers/torch {found}, wanted {tuple(sys.argv[1:])}")
print(f"transformers {found[0]} from {modeling_qwen2.__file__}, torch {version('torch')}, no overlay")
EOF

step "tests/models against the patched tree"
TESTS=()
for path in ${TEST_PATHS:-tests/models}; do
    [[ -e "$REPO/$path" ]] && TESTS+=("$path")
done
[[ ${#TESTS[@]} -gt 0 ]] || fail "no test path found in $REPO"
(cd "$REPO" && "$VENV/bin/python" -m pytest -p no:cacheprovider -q "${TESTS[@]}")

step "drop-in parity against the patched tree"
(cd "$WORK_DIR" && "$VENV/bin/python" "$REPO/scripts/check_patched_parity.py")

step "tests/models against the patched main-like $DEV_VERSION checkout (installed over the release)"
"$VENV/bin/python" -m pip install --progress-bar off --no-deps --force-reinstall "$MAIN" >>"$LOG" 2>&1 || {
    tail -n 30 "$LOG" >&2
    fail "installing the patched main-like checkout failed (log: $LOG)"
}
FOUND="$(cd "$WORK_DIR" && "$VENV/bin/python" -c 'from importlib.metadata import version; print(version("transformers"))')"
[[ $FOUND == "$DEV_VERSION" ]] || fail "installed transformers $FOUND, wanted $DEV_VERSION"
(cd "$REPO" && "$VENV/bin/python" -m pytest -p no:cacheprovider -q "${TESTS[@]}")

step "done in $((SECONDS - START))s"
