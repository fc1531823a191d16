"""Interpreter-start activation, run from `transformers_overlay.pth`, and the post-import hooks it rests on.

Only the standard library is imported here: installing the hook must cost next to nothing and must never fail.

The mechanism is generic, like wrapt's post-import hooks: `register_post_import_hook(module_name, hook)` runs `hook`
right after `module_name` has executed (at once when it is already imported). A hook may be given as a
`"package.module:function"` string, imported only when the module it waits for is, so that nothing the hook needs is
imported at interpreter start. `install_import_hook()` registers the overlay's one hook,
`transformers_overlay.patching:patch_loaded_module`, for the modules of the model table.
"""

import importlib
import os
import sys


OPT_OUT_ENV = "TRANSFORMERS_OVERLAY_DISABLE"
# What the overlay's activation runs after transformers has executed a modeling module of the model table.
OVERLAY_HOOK = "transformers_overlay.patching:patch_loaded_module"

_post_import_hooks = {}  # module name -> hooks (callables or "module:function" strings), in registration order


# Values of OPT_OUT_ENV that leave the overlay on. `transformers_overlay.pth` repeats this rule so that an opted-out
# interpreter does not even import this module (tests/overlay/test_activation.py checks that the two agree).
OPT_OUT_OFF_VALUES = ("", "0", "false", "no")


def opt_out_is_set() -> bool:
    """True when the opt-out variable is set to anything but "", "0", "false" or "no" (case and spaces ignored)."""
    return os.environ.get(OPT_OUT_ENV, "").strip().lower() not in OPT_OUT_OFF_VALUES


def _resolve(hook):
    if not isinstance(hook, str):
        return hook
    module_name, _, attribute = hook.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _run_post_import_hooks(module) -> None:
    """Runs the hooks registered for `module`; a failing hook warns once and leaves the module as it is."""
    for hook in list(_post_import_hooks.get(module.__name__, ())):
        try:
            _resolve(hook)(module)
        except Exception as error:  # the user's import must go on, with the module as transformers made it
            _warn_once(f"transformers-overlay: {hook!r} failed on {module.__name__}: {error!r}; stock code is in use.")


def register_post_import_hook(module_name: str, hook) -> None:
    """
    Runs `hook(module)` right after `module_name` has been executed by an import, or now if it already has been.
    `hook` is a callable or a `"package.module:function"` string resolved when it runs. Registering the same hook
    twice for a module has no effect. Needs `install_post_import_finder()` for modules imported later.
    """
    hooks = _post_import_hooks.setdefault(module_name, [])
    if hook in hooks:
        return
    hooks.append(hook)
    module = sys.modules.get(module_name)
    if module is not None:
        try:
            _resolve(hook)(module)
        except Exception as error:
            _warn_once(f"transformers-overlay: {hook!r} failed on {module_name}: {error!r}; stock code is in use.")


class _PostImportLoader:
    """Runs the real loader, then the module's post-import hooks."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _run_post_import_hooks(module)


class PostImportHookFinder:
    """`sys.meta_path` entry that wraps the loader of modules with registered post-import hooks, and nothing else."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _post_import_hooks:
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
            spec.loader = _PostImportLoader(spec.loader)
        return spec


def post_import_finder_installed() -> bool:
    return any(isinstance(finder, PostImportHookFinder) for finder in sys.meta_path)


def install_post_import_finder() -> None:
    """Puts `PostImportHookFinder` first on `sys.meta_path` (once)."""
    if not post_import_finder_installed():
        sys.meta_path.insert(0, PostImportHookFinder())


def import_hook_installed() -> bool:
    """True when the overlay's hook waits for (or has run on) the model table's modules in this interpreter."""
    from .model_table import MODEL_TABLE

    return post_import_finder_installed() and all(
        OVERLAY_HOOK in _post_import_hooks.get(entry.module, ()) for entry in MODEL_TABLE.values()
    )


def install_import_hook() -> None:
    """
    Activation: registers `OVERLAY_HOOK` for every module of the model table, unless the opt-out is set (the `.pth`
    file does not even call this then). Modules already imported (e.g. by a sitecustomize) are patched at once. Never
    raises.
    """
    try:
        if opt_out_is_set():
            return
        from .model_table import MODEL_TABLE

        install_post_import_finder()
        for entry in MODEL_TABLE.values():
            register_post_import_hook(entry.module, OVERLAY_HOOK)
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
