"""Applying, reverting and reporting the overlay on transformers' modeling modules.

The model table (`transformers_overlay.model_table.MODEL_TABLE`) says which transformers module each model type
patches; every one of them gets `overlay_eager_attention_forward` as its module-level `eager_attention_forward`. Only
the module attribute changes: `revert()` puts back the very object it replaced. Whether a module can be patched is
decided per module (its function's signature, the first release that has it); the supported transformers range is the
one the package declares (`install_requires` in setup.cfg), read from the installed package's metadata.
"""

import contextlib
import functools
import importlib
import inspect
import os
import sys

from ._activation import OPT_OUT_ENV, _warn_once, import_hook_installed, opt_out_is_set
from .model_table import MODEL_TABLE, model_type_of_module


DISTRIBUTION = "transformers-overlay"
PATCHED_ATTRIBUTE = "eager_attention_forward"
REPLACEMENT = "transformers_overlay.integrations.overlay_eager_attention:overlay_eager_attention_forward"

# Parameters (name, kind) of the upstream function that the stable one replaces; anything else is left alone.
_EXPECTED_PARAMETERS = (
    ("module", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ("query", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ("key", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ("value", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ("attention_mask", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ("scaling", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ("dropout", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ("kwargs", inspect.Parameter.VAR_KEYWORD),
)

_originals = {}  # model type -> the transformers function that was replaced
_skipped = {}  # model type -> why it was left alone
_enabled = True  # False after revert(): the import hook then leaves newly imported modules alone


def transformers_version() -> str | None:
    """The installed transformers version, read without importing transformers; None when it is not installed."""
    module = sys.modules.get("transformers")
    if module is not None and hasattr(module, "__version__"):
        return module.__version__
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def supported_transformers() -> str | None:
    """
    The transformers releases this package supports, as the specifier its metadata declares (e.g. ">=4.48,<5.24", lower
    bound first); None when the package is not installed, so that no metadata says it.
    """
    import re
    from importlib import metadata

    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return None
    # Parsed without `packaging`, which may be missing when transformers (that depends on it) is.
    for line in requirements:
        requirement, _, marker = line.partition(";")
        name, specifier = re.match(r"\s*([A-Za-z0-9._-]+)\s*(.*)", requirement).groups()
        if name.lower() == "transformers" and not marker.strip():
            specifiers = [part.strip() for part in specifier.strip("() ").split(",") if part.strip()]
            return ",".join(sorted(specifiers, key=lambda part: not part.startswith(">")))
    return None


def is_supported_transformers(version: str | None) -> bool:
    """True when `version` is a transformers release in `supported_transformers()` (the releases tested in CI)."""
    if version is None:  # checked first: without transformers, `packaging` (its dependency) may be missing too
        return False
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    supported = supported_transformers()
    if supported is None:
        return False
    try:
        return SpecifierSet(supported).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def _why_unsupported(version: str | None) -> str | None:
    """Why the installed transformers is not patched at all, or None when it is in the supported range."""
    if is_supported_transformers(version):
        return None
    found = "no installed transformers" if version is None else f"transformers {version}"
    supported = supported_transformers()
    if supported is None:
        return f"{DISTRIBUTION} is not installed, so no package metadata says which transformers releases it supports"
    return f"{found} is outside the supported range {supported}"


def _replacement():
    module_name, _, attribute = REPLACEMENT.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _why_not_in_release(model_type: str, version: str | None) -> str | None:
    """
    Why transformers `version` (a supported one) gives the overlay nothing to replace for `model_type`, as the model
    table says (its module, if it has one, writes eager attention inside the attention classes); None when it does.
    """
    entry = MODEL_TABLE[model_type]
    try:
        if version is None or entry.patchable_in(version):
            return None
    except ValueError:  # not a release number: the supported-range check reports it
        return None
    return (
        f"transformers {version} has no module-level `{PATCHED_ATTRIBUTE}` for {model_type} (transformers has one since "
        f"{entry.first_patchable_release}), so {model_type}'s eager attention stays stock: use "
        "attn_implementation='sdpa' for it"
    )


def _why_not_patchable(model_type: str, target) -> str | None:
    """Why `target` does not look like transformers' eager attention function, or None when it does."""
    if target is None:
        first = MODEL_TABLE[model_type].first_patchable_release
        return (
            f"transformers {transformers_version()} has no module-level `{PATCHED_ATTRIBUTE}` here, although the "
            f"model table expects one since {first}, so {model_type}'s eager attention stays stock"
        )
    try:
        parameters = tuple((p.name, p.kind) for p in inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return f"`{PATCHED_ATTRIBUTE}` has no inspectable signature"
    if parameters != _EXPECTED_PARAMETERS:
        found = ", ".join(name for name, _ in parameters)
        return f"`{PATCHED_ATTRIBUTE}({found})` does not have the expected signature"
    return None


def _patch(model_type: str) -> None:
    module = sys.modules[MODEL_TABLE[model_type].module]
    current = getattr(module, PATCHED_ATTRIBUTE, None)
    unsupported = _why_unsupported(transformers_version())
    if unsupported is not None:
        _skipped[model_type] = unsupported
        # One message for every model type, so that a process warns once however many modules it imports.
        _warn_once(f"transformers-overlay is inactive: {unsupported}; eager attention stays stock (P-001 not fixed).")
        return
    # The target is checked before the replacement is imported: importing it needs torch and transformers internals
    # that a transformers this check rejects may not have.
    reason = _why_not_in_release(model_type, transformers_version()) or _why_not_patchable(model_type, current)
    if reason is None:
        try:
            replacement = _replacement()
        except Exception as error:
            reason = f"the stable function cannot be imported ({error!r})"
    if reason is not None:
        _skipped[model_type] = reason
        _warn_once(f"transformers-overlay left {module.__name__} unpatched: {reason}.")
        return
    if current is replacement:
        return
    _skipped.pop(model_type, None)
    _originals[model_type] = current
    setattr(module, PATCHED_ATTRIBUTE, replacement)


def patch_loaded_module(module) -> None:
    """The import hook's post-import hook: patches `module`, a modeling module of the model table, once executed."""
    model_type = model_type_of_module(module.__name__)
    if _enabled and model_type is not None:
        _patch(model_type)


def _checked_model_types(model_types) -> list[str]:
    """`model_types` as a list: the whole model table for None, one model type for a string. Unknown ones raise."""
    if model_types is None:
        return list(MODEL_TABLE)
    model_types = [model_types] if isinstance(model_types, str) else list(model_types)
    unknown = [model_type for model_type in model_types if model_type not in MODEL_TABLE]
    if unknown:
        raise ValueError(
            f"unknown model type {', '.join(map(repr, unknown))}: the overlay patches {', '.join(MODEL_TABLE)}"
        )
    return model_types


def _import_modeling_module(model_type: str) -> bool:
    """Imports `model_type`'s modeling module; False (with the reason kept) when this transformers has none."""
    module_name = MODEL_TABLE[model_type].module
    try:
        importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise  # a dependency the module itself imports is missing: that is the user's error to see
        _skipped[model_type] = _absent_reason(model_type)
        return False
    return True


def _absent_reason(model_type: str) -> str:
    version = transformers_version()
    first = MODEL_TABLE[model_type].first_patchable_release
    return _why_not_in_release(model_type, version) or (
        f"transformers {version} has no {model_type} model, although the model table expects one since {first}"
    )


def apply(model_types=None) -> dict:
    """
    Replaces `eager_attention_forward` in the modeling modules of `model_types` (default: every model type of the
    model table), importing them if needed, and keeps patching them on later imports. A model type this transformers
    does not have is reported by `status()` and skipped. Works whether or not the import hook is installed, and
    ignores the opt-out variable (an explicit call wins). Returns `status()`.
    """
    global _enabled
    model_types = _checked_model_types(model_types)
    _enabled = True
    for model_type in model_types:
        if _import_modeling_module(model_type):
            _patch(model_type)
    return status()


def revert(model_types=None) -> dict:
    """Puts back the exact objects `apply()` replaced and stops patching on import. Returns `status()`."""
    global _enabled
    model_types = _checked_model_types(model_types)
    if set(model_types) >= set(MODEL_TABLE):
        _enabled = False
    for model_type in model_types:
        original = _originals.pop(model_type, None)
        module = sys.modules.get(MODEL_TABLE[model_type].module)
        if original is not None and module is not None:
            setattr(module, PATCHED_ATTRIBUTE, original)
    return status()


@contextlib.contextmanager
def disabled():
    """
    Runs the block with stock transformers' eager attention, then restores whatever was patched before, and patches
    the modules first imported inside the block if the overlay was enabled (as the import hook would have).
    """
    global _enabled
    was_enabled, was_patched = _enabled, list(_originals)
    imported_before = {model_type for model_type, entry in MODEL_TABLE.items() if entry.module in sys.modules}
    revert()
    try:
        yield
    finally:
        _enabled = was_enabled
        for model_type, entry in MODEL_TABLE.items():
            imported_inside = was_enabled and model_type not in imported_before and entry.module in sys.modules
            if model_type in was_patched or imported_inside:
                _patch(model_type)


# The vocabulary of `status()` and `transformers-overlay check` (the README lists it). The activation of this
# interpreter, `status()["activation"]`:
ACTIVE = "installed, active"  # the import hook patches the modules as transformers imports them
OPTED_OUT = f"installed, disabled by {OPT_OUT_ENV}"  # the opt-out kept the hook out of this interpreter
REVERTED = "installed, stopped by revert()"  # until apply() is called again
HOOK_NOT_LOADED = "installed, import hook not loaded"  # site-packages `.pth` files not processed (python -S)
NOT_INSTALLED = "not installed"  # importable, but no `transformers_overlay.pth`: only apply() patches
# The state of one model type, `status()["models"][model_type]["state"]`, optionally followed by " (why)":
PATCHED = "patched"  # imported, eager attention runs the overlay's function
STOCK = "stock"  # eager attention runs transformers' own function (imported, or not patchable in this release)
NOT_IMPORTED = "not imported"  # transformers has not imported the modeling module yet
STATES = (PATCHED, STOCK, NOT_IMPORTED)
ACTIVATION_STATES = (ACTIVE, OPTED_OUT, REVERTED, HOOK_NOT_LOADED, NOT_INSTALLED)


def _pth_installed() -> bool:
    """True when `transformers_overlay.pth` (what `pip install` puts into site-packages) is in a site directory."""
    import site

    try:
        directories = [*site.getsitepackages(), site.getusersitepackages()]
    except Exception:  # a `site` replaced by a virtualenv or an embedding application may lack these
        directories = sys.path
    return any(os.path.isfile(os.path.join(directory, "transformers_overlay.pth")) for directory in directories)


def _activation() -> str:
    if import_hook_installed():
        return ACTIVE if _enabled else REVERTED
    if not _pth_installed():
        return NOT_INSTALLED
    return OPTED_OUT if opt_out_is_set() else HOOK_NOT_LOADED


def status() -> dict:
    """
    What the overlay does right now: versions, opt-out, `activation` (one of `ACTIVATION_STATES`) and, per model type
    of the table, its module and `state` (one of `STATES`, with the reason in parentheses where there is one).
    """
    version = transformers_version()
    unsupported = _why_unsupported(version)
    activation = _activation()
    models = {}
    for model_type, entry in MODEL_TABLE.items():
        module = sys.modules.get(entry.module)
        not_in_release = None if unsupported is not None else _why_not_in_release(model_type, version)
        if module is None and unsupported is not None:
            state = f"{NOT_IMPORTED} (will stay {STOCK}: {unsupported})"
        elif not_in_release is not None:  # imported or not (or absent from this release), it stays stock
            state = f"{STOCK} ({not_in_release})"
        elif module is None and model_type in _skipped:  # this transformers has no such modeling module
            state = f"{STOCK} ({_skipped[model_type]})"
        elif module is None and activation == ACTIVE:
            state = f"{NOT_IMPORTED} (will be {PATCHED} on import)"
        elif module is None:
            state = f"{NOT_IMPORTED} (will stay {STOCK}: overlay {activation}; apply() patches it)"
        elif model_type in _originals:
            state = PATCHED
        elif model_type in _skipped:
            state = f"{STOCK} ({_skipped[model_type]})"
        else:
            state = STOCK
        models[model_type] = {"module": entry.module, "state": state}
    return {
        "transformers": version,
        "supported_transformers": supported_transformers(),
        "transformers_supported": unsupported is None,
        "opt_out_variable": OPT_OUT_ENV,
        "opt_out": opt_out_is_set(),
        "import_hook": import_hook_installed(),
        "activation": activation,
        "enabled": _enabled,
        "models": models,
    }
