#!/usr/bin/env bash
# Applies the patch series in patches/ (listed in patches/series) to a transformers source tree: a git checkout or a
# plain unpacked sdist. All or nothing: the whole series is checked before anything is written.
#
# usage: scripts/apply_patches.sh TRANSFORMERS_TREE [--check | --reverse] [--commit]
#   (no option)  apply the series to the working tree (already applied: says so, exit 0)
#   --check      only report whether the series applies, is applied, or neither (exit 1)
#   --reverse    undo the series (not applied: says so, exit 0)
#   --commit     git checkouts only: commit the series with `git am` instead of leaving the changes uncommitted
# Refused with a one-line reason and exit 1, the tree left as it was: a directory that is not a transformers source
# tree, a transformers version other than the one the series targets, a tree the series neither applies to nor is
# applied to.
set -euo pipefail

PATCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../patches" && pwd)"
SERIES="$PATCH_DIR/series"

usage() {
    echo "usage: $0 TRANSFORMERS_TREE [--check | --reverse] [--commit]" >&2
    exit 2
}

refuse() {
    echo "apply_patches: $*" >&2
    exit 1
}

TREE="" MODE=apply COMMIT=0
for arg in "$@"; do
    case "$arg" in
        --check) [[ $MODE == apply ]] || usage; MODE=check ;;
        --reverse) [[ $MODE == apply ]] || usage; MODE=reverse ;;
        --commit) COMMIT=1 ;;
        -h | --help) usage ;;
        -*) usage ;;
        *) [[ -z $TREE ]] || usage; TREE="$arg" ;;
    esac
done
[[ -n $TREE ]] || usage
if [[ $COMMIT == 1 && $MODE != apply ]]; then refuse "--commit only goes with a plain apply, not --check or --reverse"; fi

[[ -f $SERIES ]] || refuse "no patch series at $SERIES"
NEEDED="$(sed -n 's/^# transformers-version: *//p' "$SERIES")"
PATCHES=()
while IFS= read -r line; do
    [[ -z $line || $line == \#* ]] && continue
    [[ -f $PATCH_DIR/$line ]] || refuse "patches/series lists $line, which is missing"
    PATCHES+=("$PATCH_DIR/$line")
done <"$SERIES"
REVERSED=()
for ((i = ${#PATCHES[@]} - 1; i >= 0; i--)); do REVERSED+=("${PATCHES[i]}"); done

INIT="$TREE/src/transformers/__init__.py"
if [[ ! -f $INIT ]] || ! grep -q '^__version__ = ' "$INIT" || [[ ! -f $TREE/setup.py && ! -f $TREE/pyproject.toml ]]; then
    refuse "$TREE is not a transformers source tree (no src/transformers/__init__.py with __version__ next to setup.py)"
fi
TREE="$(cd "$TREE" && pwd)"
FOUND="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$INIT")"
[[ $FOUND == "$NEEDED" ]] || refuse "$TREE is transformers $FOUND; this patch series needs transformers $NEEDED"

# `git apply` finds the repository the tree belongs to: keep it from climbing into an enclosing one, so a plain tree
# is patched as plain files and a checkout as itself.
export GIT_CEILING_DIRECTORIES="$(dirname "$TREE")"
IS_GIT=0
if [[ "$(git -C "$TREE" rev-parse --show-toplevel 2>/dev/null)" == "$TREE" ]]; then IS_GIT=1; fi
gitapply() { git -C "$TREE" apply --whitespace=nowarn "$@"; }

if gitapply --check "${PATCHES[@]}" 2>/dev/null; then
    STATE=applicable
elif gitapply --check --reverse "${REVERSED[@]}" 2>/dev/null; then
    STATE=applied
else
    refuse "the patches neither apply to $TREE nor are applied there (modified or partly patched tree); nothing changed"
fi

N=${#PATCHES[@]}
case "$MODE/$STATE" in
    check/applicable) echo "the $N patches apply cleanly to $TREE (not applied yet)" ;;
    check/applied) echo "the $N patches are already applied to $TREE" ;;
    apply/applied) echo "the $N patches are already applied to $TREE; nothing to do" ;;
    reverse/applicable) echo "the $N patches are not applied to $TREE; nothing to undo" ;;
    reverse/applied)
        gitapply --reverse "${REVERSED[@]}"
        echo "reverted the $N patches in $TREE"
        ;;
    apply/applicable)
        if [[ $COMMIT == 1 ]]; then
            [[ $IS_GIT == 1 ]] || refuse "--commit needs a git checkout; $TREE is a plain tree (nothing changed)"
            # git am needs an identity; fall back to the series' own when the checkout has none
            git -C "$TREE" config user.email >/dev/null || export GIT_COMMITTER_NAME=transformers-overlay \
                GIT_COMMITTER_EMAIL=transformers-overlay@users.noreply.invalid
            if ! git -C "$TREE" am --quiet --whitespace=nowarn "${PATCHES[@]}"; then
                git -C "$TREE" am --abort
                refuse "git am failed in $TREE; aborted, nothing changed"
            fi
            echo "committed the $N patches in $TREE"
        else
            gitapply "${PATCHES[@]}"
            echo "applied the $N patches to $TREE"
        fi
        ;;
esac
