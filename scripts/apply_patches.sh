#!/usr/bin/env bash
# Applies the Qwen2-family eager attention series to a transformers source tree (a git checkout or an unpacked sdist),
# all or nothing: on a tree of the release patches/ targets, the stored series; on any other release from 5.0 on, or
# a checkout whose __version__ is a .devN of a later release, the same change generated for that tree from this
# repository's source by transformers_overlay.upstream_series (standard library only; neither torch nor transformers
# is imported).
#
# usage: scripts/apply_patches.sh TRANSFORMERS_TREE [--check | --reverse] [--commit]
#   (no option)  apply the series to the working tree (already applied: says so, exit 0)
#   --check      only report whether the series applies or is applied
#   --reverse    undo the series (not applied: says so, exit 0)
#   --commit     git checkouts only: commit the series with `git am` instead of leaving the changes uncommitted
# Refused with a one-line reason and exit 1, the tree left as it was: a directory that is not a transformers source
# tree, an unsupported version, a checkout with uncommitted changes, a tree whose family functions the generator
# does not recognise, a tree the series neither applies to nor is applied to. --reverse on a tree other than the
# stored series' release needs its pristine text: git HEAD (or the parent of the series' commits) for a checkout, the
# release's PyPI sdist (cached in $TRANSFORMERS_OVERLAY_CACHE, default ~/.cache/transformers-overlay) for a plain tree.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../src" && pwd)"
PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" -m transformers_overlay.upstream_series apply "$@"
