"""Binds the overlay's stable eager attention into `transformers.models.qwen2.modeling_qwen2` (see `transformers_overlay.patching`)."""

from ...integrations.overlay_eager_attention import overlay_eager_attention_forward as eager_attention_forward


__all__ = ["eager_attention_forward"]
