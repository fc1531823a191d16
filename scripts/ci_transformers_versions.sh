#!/usr/bin/env bash
# Runs `transformers-overlay check`, the overlay's tests and the numerics regression tests against several transformers
# releases, each in its own virtual environment with the pinned CPU torch, the release and the overlay installed from
# this checkout (not editable, so the installed `.pth` hook is what is tested).
#
# usage: scripts/ci_transformers_versions.sh [TRANSFORMERS_VERSION ...]
#   default versions, duplicates removed: the oldest release setup.cfg's lower bound admits, the last 4.x (masks from
#   masking_utils, before 5.0; see LAST_4X), the release the patch series targets and the newest tested (`SERIES_RELEASE`
#   in src/transformers_overlay/releases.py), and the newest release the package registry serves now (resolved with
#   `pip index versions transformers` when this runs, printed, never written down). On that newest release the
#   project's regression tests (scripts/regression_test_paths) run too. One summary line per version at the end; exits
#   1 when any version fails.
# environment:
#   PYTHON          interpreter that creates the environments (default: python3)
#   TORCH_VERSION   torch installed first in every environment (default: 2.13.0, the CPU wheel on this machine's disk)
#   VENV_ROOT       where the environments go (default: a temporary directory, removed at the end)
#   LOG_DIR         where each version's install log goes (default: $VENV_ROOT/logs)
#   TEST_PATHS      test paths, relative to the checkout (default: tests/overlay; tests/models holds upstream-style
#                   tests of the patch, without shims for older releases: they run on the newest release only)
#   LAST_4X         the 4.x release among the defaults (default: 4.57.6; set it empty to leave it out)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
LAST_4X="${LAST_4X-4.57.6}"

# resolve: prints "NEWEST OLDEST SERIES BOUND": the newest final release the registry serves, the oldest one setup.cfg's
# lower bound admits, SERIES_RELEASE and the bound (a field is "-" when it cannot be resolved).
resolve() {
    local index
    index="$("$PYTHON" -m pip index versions transformers 2>/dev/null)"
    "$PYTHON" - "$REPO" "$index" <<'PY'
import configparser
import re
import runpy
import sys

repo = sys.argv[1]
match = re.search(r"^Available versions: (.+)$", sys.argv[2], flags=re.MULTILINE)
releases = [v.strip() for v in match.group(1).split(",")] if match else []
releases = sorted((v for v in releases if re.fullmatch(r"\d+(\.\d+)*", v)), key=lambda v: tuple(map(int, v.split("."))))
setup = configparser.RawConfigParser()
setup.read(f"{repo}/setup.cfg")
bound = re.findall(r"^\s*transformers\s*>=\s*([\d.]+)", setup["options"]["install_requires"], flags=re.MULTILINE)
bound = bound[0] if bound else None
oldest = [v for v in releases if bound and tuple(map(int, v.split("."))) >= tuple(map(int, bound.split(".")))]
series = runpy.run_path(f"{repo}/src/transformers_overlay/releases.py")["SERIES_RELEASE"]
print(releases[-1] if releases else "-", oldest[0] if oldest else "-", series, bound or "-")
PY
}
read -r NEWEST OLDEST SERIES_RELEASE BOUND < <(resolve)
if [[ "$NEWEST" == "-" ]]; then
    NEWEST=""
    echo "cannot list the transformers releases on the package registry (pip index versions transformers)"
else
    echo "newest transformers release on the package registry now: $NEWEST (pip index versions transformers)"
fi

VERSIONS=("$@")
if [[ ${#VERSIONS[@]} -eq 0 ]]; then
    if [[ -z "$NEWEST" || "$OLDEST" == "-" ]]; then
        echo "cannot resolve the default releases (setup.cfg: transformers>=$BOUND; newest: ${NEWEST:-unknown})" >&2
        exit 1
    fi
    echo "default releases: oldest supported $OLDEST (setup.cfg: transformers>=$BOUND)${LAST_4X:+, last 4.x $LAST_4X}," \
        "series and newest tested $SERIES_RELEASE, newest on the registry $NEWEST (duplicates removed)"
    mapfile -t VERSIONS < <(printf '%s\n' "$OLDEST" $LAST_4X "$SERIES_RELEASE" "$NEWEST" | awk 'NF && !seen[$0]++')
fi
REGRESSION_TESTS=()
[[ -f "$REPO/scripts/regression_test_paths" ]] && mapfile -t REGRESSION_TESTS <"$REPO/scripts/regression_test_paths"

if [[ -n "${VENV_ROOT:-}" ]]; then
    mkdir -p "$VENV_ROOT"
else
    VENV_ROOT="$(mktemp -d -t overlay-tf-versions.XXXXXX)"
    trap 'rm -rf "$VENV_ROOT"' EXIT
fi
LOG_DIR="${LOG_DIR:-$VENV_ROOT/logs}"
mkdir -p "$LOG_DIR"

TEST_PATHS_FOUND=()
for path in ${TEST_PATHS:-tests/overlay}; do
    [[ -e "$REPO/$path" ]] && TEST_PATHS_FOUND+=("$path")
done

export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
SUMMARY=()
FAILED=0

step() { printf '\n=== transformers %s: %s (%s)\n' "$1" "$2" "$(date -u +%H:%M:%S)"; }

# install VERSION VENV: torch first (so nothing pulls another torch build), then transformers with the overlay and its
# test extras in one resolution, then proof that neither pin moved. `--no-compile` skips byte-compiling every module
# of torch and transformers at install time (about half of the install); the modules the tests import compile on use.
install() {
    local version="$1" venv="$2" log="$LOG_DIR/transformers-$1.log"
    local pip=("$venv/bin/python" -m pip install --progress-bar off --no-compile)
    "$PYTHON" -m venv "$venv" >>"$log" 2>&1 &&
        "${pip[@]}" "torch==$TORCH_VERSION" >>"$log" 2>&1 &&
        "${pip[@]}" "transformers==$version" "$REPO[test]" >>"$log" 2>&1 &&
        "$venv/bin/python" - "$version" "$TORCH_VERSION" <<'EOF'
import sys
from importlib.metadata import version

found = {"transformers": version("transformers"), "torch": version("torch").split("+")[0]}
wanted = {"transformers": sys.argv[1], "torch": sys.argv[2]}
if found != wanted:
    sys.exit(f"installed {found}, wanted {wanted}")
print(f"installed transformers {found['transformers']}, torch {version('torch')}, overlay {version('transformers-overlay')}")
EOF
}

# check VENV: the P-001 check, skipped while the installed overlay has no `check` command.
check() {
    local venv="$1"
    if ! "$venv/bin/python" -c "import transformers_overlay.cli" 2>/dev/null; then
        echo "no transformers_overlay.cli in this checkout: check skipped"
        return 99
    fi
    (cd "$VENV_ROOT" && "$venv/bin/python" -m transformers_overlay check)
}

for version in "${VERSIONS[@]}"; do
    venv="$VENV_ROOT/transformers-$version"
    started=$SECONDS

    step "$version" "install into $venv (log: $LOG_DIR/transformers-$version.log)"
    if ! install "$version" "$venv"; then
        tail -n 30 "$LOG_DIR/transformers-$version.log"
        SUMMARY+=("transformers $version: FAILED install ($((SECONDS - started))s, see $LOG_DIR/transformers-$version.log)")
        FAILED=1
        continue
    fi
    install_seconds=$((SECONDS - started))

    step "$version" "transformers-overlay check"
    check_started=$SECONDS
    check "$venv"
    check_rc=$?
    case $check_rc in
        0) check_result="check ok" ;;
        99) check_result="check skipped (no cli)" ;;
        *) check_result="check FAILED (exit $check_rc)" && FAILED=1 ;;
    esac
    check_result="$check_result ($((SECONDS - check_started))s)"

    paths=("${TEST_PATHS_FOUND[@]}")
    if [[ "$version" == "$NEWEST" ]]; then  # the newest release: the regression tests too, each file once
        for path in "${REGRESSION_TESTS[@]}"; do
            covered=0
            for given in "${paths[@]}"; do
                [[ "$path" == "$given" || "$path" == "${given%/}/"* ]] && covered=1
            done
            [[ -n "$path" && $covered -eq 0 ]] && paths+=("$path")
        done
    fi
    step "$version" "pytest ${paths[*]}"
    tests_started=$SECONDS
    pytest_log="$LOG_DIR/pytest-$version.log"
    (cd "$REPO" && "$venv/bin/python" -m pytest -p no:cacheprovider -q --continue-on-collection-errors "${paths[@]}") 2>&1 | tee "$pytest_log"
    pytest_rc=${PIPESTATUS[0]}
    counts="$(grep -E '^(=+ )?[0-9]+ [a-z]+.* in [0-9.]+s' "$pytest_log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')"
    if [[ $pytest_rc -eq 0 ]]; then
        tests_result="tests ok: ${counts:-no summary}"
    else
        tests_result="tests FAILED (exit $pytest_rc): ${counts:-no summary}"
        FAILED=1
    fi
    tests_result="$tests_result ($((SECONDS - tests_started))s)"

    SUMMARY+=("transformers $version: install ok (${install_seconds}s), $check_result, $tests_result")
done

printf '\n=== summary: torch %s, %s\n' "$TORCH_VERSION" "$("$PYTHON" --version 2>&1)"
printf '%s\n' "${SUMMARY[@]}"
printf 'total %ss\n' "$SECONDS"
exit $FAILED
