"""Interpreter-start activation, run from `transformers_overlay.pth`.

Only the standard library is imported here: installing the hook must cost next to nothing and must never fail. The
hook waits for transformers to import one of the modeling modules in `PATCHED_MODULES` and patches it right after
the module has executed (see `transformers_overlay.patching`).
"""

import os
import sys


OPT_OUT_ENV = "TRANSFORMERS_OVERLAY_DISABLE"

# model type -> the transformers module whose module-level `eager_attention_forward` the overlay replaces
PATCHED_MODULES = {
    "qwen2": "transformers.models.qwen2.modeling_qwen2",
    "siglip": "transformers.models.siglip.modeling_siglip",
}


# Values of OPT_OUT_ENV that leave the overlay on. `transformers_overlay.pth` repeats this rule so that an opted-out
# interpreter does not even import this module (tests/overlay/test_activation.py checks that the two agree).
OPT_OUT_OFF_VALUES = ("", "0", "false", "no")


def opt_out_is_set() -> bool:
    """True when the opt-out variable is set to anything but "", "0", "false" or "no" (case and spaces ignored)."""
    return os.environ.get(OPT_OUT_ENV, "").strip().lower() not in OPT_OUT_OFF_VALUES


class _PatchingLoader:
    """Runs the real loader, then hands the fresh module to the overlay."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            from transformers_overlay import patching

            patching.patch_loaded_module(module.__name__)
        except Exception as error:  # the user's import must go on with stock transformers
            _warn_once(f"transformers-overlay could not patch {module.__name__}: {error!r}; stock code is in use.")


class PatchOnImportFinder:
    """`sys.meta_path` entry that wraps the loader of the modules in `PATCHED_MODULES` and nothing else."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in PATCHED_MODULES.values():
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader)
        return spec


def import_hook_installed() -> bool:
    """True when `PatchOnImportFinder` is on `sys.meta_path` in this interpreter."""
    return any(isinstance(finder, PatchOnImportFinder) for finder in sys.meta_path)


def install_import_hook() -> None:
    """
    Puts `PatchOnImportFinder` first on `sys.meta_path`, unless the opt-out is set (the `.pth` file does not even call
    this then). Never raises.
    """
    try:
        if opt_out_is_set() or import_hook_installed():
            return
        sys.meta_path.insert(0, PatchOnImportFinder())
        for module_name in PATCHED_MODULES.values():
            if module_name in sys.modules:  # imported before the hook, e.g. by a sitecustomize
                from transformers_overlay import patching

                patching.patch_loaded_module(module_name)
    except Exception as error:
        _warn_once(f"transformers-overlay is not active: {error!r}")


_warned = set()


def _warn_once(message: str) -> None:
    if message in _warned:
        return
    _warned.add(message)
    try:
        import warnings

        warnings.warn(message, RuntimeWarning, stacklevel=2)
    except Exception:
        pass
