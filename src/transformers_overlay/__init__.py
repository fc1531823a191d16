"""transformers-overlay: numerically safe eager attention in float16/bfloat16 for transformers' Qwen2 family.

Importing this package is cheap: torch and transformers are only imported when one of the names below is used.
"""

__version__ = "0.1.0"

__all__ = [
    "apply",
    "revert",
    "disabled",
    "status",
    "eager_attention_forward",
    "capture_attention",
    "image_token_positions",
]

# name -> (submodule, its attribute)
_LAZY_ATTRIBUTES = {
    "apply": ("patching", "apply"),
    "revert": ("patching", "revert"),
    "disabled": ("patching", "disabled"),
    "status": ("patching", "status"),
    # What the overlay installs as `eager_attention_forward` in every modeling module of the model table.
    "eager_attention_forward": ("integrations.overlay_eager_attention", "overlay_eager_attention_forward"),
    "capture_attention": ("attention_capture", "capture_attention"),
    "image_token_positions": ("attention_capture", "image_token_positions"),
}


def __getattr__(name):
    if name not in _LAZY_ATTRIBUTES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    submodule, attribute = _LAZY_ATTRIBUTES[name]
    return getattr(importlib.import_module(f"{__name__}.{submodule}"), attribute)


def __dir__():
    return sorted([*globals(), *_LAZY_ATTRIBUTES])
