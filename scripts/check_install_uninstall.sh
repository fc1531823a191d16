#!/usr/bin/env bash
# Installs the overlay into throwaway virtual environments, as a wheel (`pip install .`) and editable
# (`pip install -e .`), and checks in each that:
#   - `transformers_overlay.pth` is installed into site-packages and listed in the distribution's RECORD;
#   - a fresh interpreter starts silently with the import hook in place, and without torch or transformers installed
#     (the environments have neither) `status()` says transformers is missing;
#   - `pip uninstall` removes the hook: no `.pth` and no importable package are left behind.
# Needs network access to PyPI for pip's isolated build (setuptools). Run from anywhere: scripts/check_install_uninstall.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

fail() { echo "FAIL ($1): $2" >&2; exit 1; }

for mode in wheel editable; do
    "$PYTHON" -m venv "$work/$mode"
    python="$work/$mode/bin/python"
    site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    if [ "$mode" = editable ]; then target=(-e .); else target=(.); fi
    # --no-deps: the hook must work, and stay silent, where transformers is absent.
    "$python" -m pip install --quiet --no-deps "${target[@]}"

    [ -f "$site/transformers_overlay.pth" ] || fail "$mode" "transformers_overlay.pth is not in $site"
    "$python" - <<'PY' || fail "$mode" "transformers_overlay.pth is not in the RECORD"
from importlib import metadata
assert any(path.name == "transformers_overlay.pth" for path in metadata.distribution("transformers-overlay").files)
PY
    started=$("$python" -c '
import sys
assert "torch" not in sys.modules and "transformers" not in sys.modules, "torch or transformers imported at start"
assert any(type(finder).__name__ == "PostImportHookFinder" for finder in sys.meta_path), "no import hook"
import transformers_overlay
assert transformers_overlay.status()["transformers"] is None, transformers_overlay.status()
print("started")
' 2>&1) || fail "$mode" "fresh interpreter: $started"
    [ "$started" = started ] || fail "$mode" "interpreter start was not silent: $started"

    "$python" -m pip uninstall --quiet --yes transformers-overlay
    leftovers=$(find "$site" -maxdepth 1 \( -iname '*transformers_overlay*' -o -iname '*transformers-overlay*' \))
    [ -z "$leftovers" ] || fail "$mode" "left behind by pip uninstall: $leftovers"
    if (cd "$work" && "$python" -c 'import transformers_overlay' 2>/dev/null); then
        fail "$mode" "transformers_overlay still importable after pip uninstall"
    fi
    echo "ok ($mode): .pth installed and recorded, silent start without transformers, nothing left after uninstall"
done
