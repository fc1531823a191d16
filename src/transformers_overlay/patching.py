"""Applying, reverting and reporting the overlay on transformers' modeling modules.

The model table (`transformers_overlay.model_table.MODEL_TABLE`) says which transformers module each model type
patches; every one of them gets `overlay_eager_attention_forward` as its module-level `eager_attention_forward`. Only
the module attribute changes: `revert()` puts back the very object it replaced. Whether a module is patched is decided
per module, from the function it would replace: its signature, and that its text is a stock one the overlay recognises
(`transformers_overlay.stock_functions`; `TRANSFORMERS_OVERLAY_FORCE=1` or `apply(force=True)` waives the latter).
Releases older than the lower bound the package declares (`install_requires` in setup.cfg, read from the installed
package's metadata, or from setup.cfg of a source checkout on `PYTHONPATH`) stay stock; a newer release than the one
tested (`releases.SERIES_RELEASE`) is patched where its functions are recognised, and `status()` says so.
"""

import contextlib
import functools
import importlib
import inspect
import os
import sys

from ._activation import OPT_OUT_ENV, OPT_OUT_OFF_VALUES, _warn_once, import_hook_installed, opt_out_is_set
from .model_table import MODEL_TABLE, model_type_of_module
from .releases import SERIES_RELEASE


DISTRIBUTION = "transformers-overlay"
PATCHED_ATTRIBUTE = "eager_attention_forward"
REPLACEMENT = "transformers_overlay.integrations.overlay_eager_attention:overlay_eager_attention_forward"
# Set (to anything but "", "0", "false", "no"), it replaces a function with the expected signature even when its text
# is not a stock one the overlay recognises; `apply(force=True)` does the same for the model types it is given.
FORCE_ENV = "TRANSFORMERS_OVERLAY_FORCE"
# What `status()` adds to "patched" on a release newer than the newest tested one.
UNTESTED_RECOGNISED = "untested release, stock function recognised"

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
_notes = {}  # model type -> what `status()` adds to "patched" for a function replaced by force
_forced = set()  # model types `apply(force=True)` was called for, until `revert()`
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
    The transformers releases this package supports, as the specifier it declares (e.g. ">=4.48": a lower bound only),
    read from the installed package's metadata, or from setup.cfg when the package is imported from a source checkout
    (e.g. through `PYTHONPATH`) without being installed; None when neither says it.
    """
    from importlib import metadata

    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        requirements = _checkout_requirements()
    return _transformers_specifier(requirements)


def _checkout_requirements() -> list[str]:
    """`install_requires` of setup.cfg in the source checkout this package is imported from; [] outside one."""
    import configparser

    setup_cfg = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "setup.cfg")
    setup = configparser.RawConfigParser()
    try:
        setup.read(setup_cfg)
        return setup["options"]["install_requires"].splitlines() if setup["metadata"]["name"] == DISTRIBUTION else []
    except (configparser.Error, KeyError):
        return []


def _transformers_specifier(requirements) -> str | None:
    """The specifier of the unconditional `transformers` requirement among `requirements`, lower bound first."""
    import re

    # Parsed without `packaging`, which may be missing when transformers (that depends on it) is.
    for line in requirements:
        requirement, _, marker = line.partition(";")
        match = re.match(r"\s*([A-Za-z0-9._-]+)\s*(.*)", requirement)
        if match is None:
            continue
        name, specifier = match.groups()
        if name.lower() == "transformers" and not marker.strip():
            specifiers = [part.strip() for part in specifier.strip("() ").split(",") if part.strip()]
            return ",".join(sorted(specifiers, key=lambda part: not part.startswith(">")))
    return None


def is_supported_transformers(version: str | None) -> bool:
    """
    True when `version` is a transformers release in `supported_transformers()`, i.e. not older than its lower bound
    (a newer release than the tested one included: its modules are patched where their functions are recognised).
    """
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


def is_untested_release(version: str | None) -> bool:
    """True when `version` is a transformers release newer than `releases.SERIES_RELEASE`, the newest one tested."""
    if version is None:
        return False
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) > Version(SERIES_RELEASE)
    except InvalidVersion:
        return False


def force_is_set() -> bool:
    """True when `TRANSFORMERS_OVERLAY_FORCE` is set to anything but "", "0", "false" or "no" (case and spaces ignored)."""
    return os.environ.get(FORCE_ENV, "").strip().lower() not in OPT_OUT_OFF_VALUES


def _why_unsupported(version: str | None) -> str | None:
    """Why the installed transformers is not patched at all, or None when it is in the supported range."""
    if is_supported_transformers(version):
        return None
    found = "no installed transformers" if version is None else f"transformers {version}"
    supported = supported_transformers()
    if supported is None:
        return (
            f"{DISTRIBUTION} is not installed and not imported from its source checkout, so nothing says which "
            "transformers releases it supports"
        )
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


def _why_not_patchable(model_type: str, target, forced: bool = False) -> str | None:
    """
    Why `target` is not transformers' eager attention function as the overlay knows it (its signature, and unless
    `forced` its text: one of the stock texts in `transformers_overlay.known_stock_functions`); None when it is.
    """
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
    if not forced and not _is_replacement(target) and not _is_recognised(target):
        return (
            f"its `{PATCHED_ATTRIBUTE}` (transformers {transformers_version()}) is not a stock text the overlay "
            f"recognises, so {model_type}'s eager attention stays stock; to replace it anyway set {FORCE_ENV}=1 or "
            f"call transformers_overlay.apply(force=True)"
        )
    return None


def _is_replacement(target) -> bool:
    """True when `target` is the overlay's own function (the module is patched already)."""
    module_name, _, attribute = REPLACEMENT.partition(":")
    return getattr(target, "__module__", None) == module_name and getattr(target, "__name__", None) == attribute


def _patch(model_type: str) -> None:
    module = sys.modules[MODEL_TABLE[model_type].module]
    current = getattr(module, PATCHED_ATTRIBUTE, None)
    version = transformers_version()
    unsupported = _why_unsupported(version)
    if unsupported is not None:
        _skipped[model_type] = unsupported
        # One message for every model type, so that a process warns once however many modules it imports.
        _warn_once(f"transformers-overlay is inactive: {unsupported}; eager attention stays stock (P-001 not fixed).")
        return
    forced = model_type in _forced or force_is_set()
    # The target is checked before the replacement is imported: importing it needs torch and transformers internals
    # that a transformers this check rejects may not have.
    reason = _why_not_in_release(model_type, version) or _why_not_patchable(model_type, current, forced)
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
    if forced and not _is_recognised(current):
        via = "apply(force=True)" if model_type in _forced else f"{FORCE_ENV}"
        _notes[model_type] = f"forced by {via}: transformers' function text is not one the overlay recognises"
    else:
        _notes.pop(model_type, None)
    _originals[model_type] = current
    setattr(module, PATCHED_ATTRIBUTE, replacement)


def _is_recognised(function) -> bool:
    """Whether `function` is one of the stock texts the overlay knows (imported here: only patching needs it)."""
    from .stock_functions import is_known_stock_function

    return is_known_stock_function(function)


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


def apply(model_types=None, force: bool = False) -> dict:
    """
    Replaces `eager_attention_forward` in the modeling modules of `model_types` (default: every model type of the
    model table), importing them if needed, and keeps patching them on later imports. A model type this transformers
    does not have, or whose function is not a stock text the overlay recognises, is reported by `status()` and left
    stock; `force=True` replaces an unrecognised function with the expected signature too (until `revert()`). Works
    whether or not the import hook is installed, and ignores the opt-out variable (an explicit call wins). Returns
    `status()`.
    """
    global _enabled
    model_types = _checked_model_types(model_types)
    _enabled = True
    if force:
        _forced.update(model_types)
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
        _forced.discard(model_type)
        _notes.pop(model_type, None)
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
    was_enabled, was_patched, was_forced = _enabled, list(_originals), set(_forced)
    imported_before = {model_type for model_type, entry in MODEL_TABLE.items() if entry.module in sys.modules}
    revert()
    try:
        yield
    finally:
        _enabled = was_enabled
        _forced.update(was_forced)
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
PATCHED = "patched"  # imported, eager attention runs the overlay's function (noting an untested release or a force)
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
    What the overlay does right now: versions (`transformers_untested`: newer than `newest_tested_transformers`),
    opt-out, force, `activation` (one of `ACTIVATION_STATES`) and, per model type of the table, its module and `state`
    (one of `STATES`, with the reason in parentheses where there is one, e.g. "patched (untested release, stock
    function recognised)").
    """
    version = transformers_version()
    unsupported = _why_unsupported(version)
    untested = unsupported is None and is_untested_release(version)
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
        elif module is None and activation == ACTIVE and untested:
            state = (
                f"{NOT_IMPORTED} (will be {PATCHED} on import if its stock function is recognised: untested release)"
            )
        elif module is None and activation == ACTIVE:
            state = f"{NOT_IMPORTED} (will be {PATCHED} on import)"
        elif module is None:
            state = f"{NOT_IMPORTED} (will stay {STOCK}: overlay {activation}; apply() patches it)"
        elif model_type in _originals:
            # Without a force, what was replaced is a recognised stock function.
            note = _notes.get(model_type, UNTESTED_RECOGNISED if untested else None)
            state = PATCHED if note is None else f"{PATCHED} ({note})"
        elif model_type in _skipped:
            state = f"{STOCK} ({_skipped[model_type]})"
        else:
            state = STOCK
        models[model_type] = {"module": entry.module, "state": state}
    return {
        "transformers": version,
        "supported_transformers": supported_transformers(),
        "transformers_supported": unsupported is None,
        "newest_tested_transformers": SERIES_RELEASE,
        "transformers_untested": untested,
        "force": force_is_set(),
        "opt_out_variable": OPT_OUT_ENV,
        "opt_out": opt_out_is_set(),
        "import_hook": import_hook_installed(),
        "activation": activation,
        "enabled": _enabled,
        "models": models,
    }
