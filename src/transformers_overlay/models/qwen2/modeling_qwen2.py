"""Binds the stable eager attention into `transformers.models.qwen2.modeling_qwen2` (see `transformers_overlay.patching`)."""

from ...integrations.stable_eager_attention import eager_attention_forward


__all__ = ["eager_attention_forward"]
