"""The transformers releases this project has tested, written once.

Standard library only, no imports: the import hook, `check`, the patch generator and CI scripts read it.
"""

# The release `patches/` is generated for, and the newest release the overlay is tested on. A newer release (or a
# checkout of main) is still patched when its functions are ones the overlay recognises; `status()` then says so.
SERIES_RELEASE = "5.25.0"
