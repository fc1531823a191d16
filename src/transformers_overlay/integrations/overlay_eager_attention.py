"""The eager attention function the overlay installs: the float32 reference plus the overlay's mask extras.

Masks: a boolean mask means True = attend, and `-inf` (or False) entries count as float32's most negative value, so a
row with every key masked gets the uniform weights transformers' own masks give (they use the dtype's minimum) instead
of NaN. Both are a pass over the mask, never over the scores, and involve no branch on tensor values. Everything else
is the reference function `stable_eager_attention.eager_attention_forward`, the one in the patch set, on every device
and in every mode (inference, autograd, `torch.compile`, `torch.export`).
"""

import torch
from torch import nn

from .stable_eager_attention import eager_attention_forward


def float32_attention_mask(attention_mask: torch.Tensor | None, key_len: int) -> torch.Tensor | None:
    """
    `attention_mask` as an additive float32 mask sliced to `key_len` keys: a boolean mask gives 0 where True (attend)
    and float32's minimum where False; a float mask is upcast and its `-inf` entries raised to float32's minimum.
    """
    if attention_mask is None:
        return None
    attention_mask = attention_mask[..., :key_len]
    min_value = torch.finfo(torch.float32).min
    if attention_mask.dtype == torch.bool:
        return torch.zeros(attention_mask.shape, device=attention_mask.device).masked_fill_(~attention_mask, min_value)
    return attention_mask.to(torch.float32).clamp(min=min_value)


def float32_attention_probabilities(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    r"""
    float32 attention probabilities `softmax((Q * scaling) @ K^T + M, dim=-1)` of shape `(batch, num_heads, q_len,
    kv_len)`, for `query` `(batch, num_heads, q_len, head_dim)` and `key` `(batch, num_key_value_heads, kv_len,
    head_dim)` in any dtype, both upcast to float32. Grouped-query keys are shared by their query heads, never
    repeated. `attention_mask` (broadcastable to the result) is made additive by `float32_attention_mask`.
    Inference only (the softmax overwrites the scores); `capture_attention` computes its rows with it.
    """
    batch_size, num_heads, query_len, head_dim = query.shape
    num_key_value_heads, key_len = key.shape[1], key.shape[2]
    with torch.autocast(device_type=query.device.type, enabled=False):
        grouped_query = (query.to(torch.float32) * scaling).reshape(batch_size, num_key_value_heads, -1, head_dim)
        scores = torch.matmul(grouped_query, key.to(torch.float32).transpose(-1, -2))
        scores = scores.view(batch_size, num_heads, query_len, key_len)
        mask = float32_attention_mask(attention_mask, key_len)
        if mask is not None:
            scores.add_(mask)
        return torch.softmax(scores, dim=-1, out=scores)


def overlay_eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    r"""
    Drop-in for transformers' `eager_attention_forward`: the reference `eager_attention_forward` (float32 scores, mask
    and softmax; `(attn_output, attn_weights)` in `value.dtype` with upstream's shapes, the weights in the autograd
    graph) after `float32_attention_mask` has made the mask additive float32 with finite entries.
    """
    mask = float32_attention_mask(attention_mask, key.shape[-2])
    return eager_attention_forward(module, query, key, value, mask, scaling, dropout=dropout, **kwargs)
