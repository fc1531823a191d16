"""transformers-overlay: numerically safe eager attention in float16/bfloat16 for transformers' Qwen2 and SigLIP.

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

_LAZY_ATTRIBUTES = {
    "apply": "patching",
    "revert": "patching",
    "disabled": "patching",
    "status": "patching",
    "eager_attention_forward": "models.qwen2.modeling_qwen2",
    "capture_attention": "attention_capture",
    "image_token_positions": "attention_capture",
}


def __getattr__(name):
    if name not in _LAZY_ATTRIBUTES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_LAZY_ATTRIBUTES[name]}"), name)


def __dir__():
    return sorted([*globals(), *_LAZY_ATTRIBUTES])
