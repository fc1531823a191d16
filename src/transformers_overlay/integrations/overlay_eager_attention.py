"""TEMPORARY SHIM (branch `family` only): stands in for the lead's `overlay_eager_attention` until it lands on main.

Remove this file when merging main brings the real module.
"""

import torch
from torch import nn

from .stable_eager_attention import eager_attention_forward


__all__ = ["float32_attention_probabilities", "overlay_eager_attention_forward"]


def float32_attention_probabilities(query, key, attention_mask, scaling):
    """float32 `softmax((query * scaling) @ key^T + mask)` `(batch, heads, q, k)`; keys grouped, not repeated."""
    batch_size, num_heads, query_length, head_dim = query.shape
    num_kv_heads = key.shape[1]
    with torch.autocast(device_type=query.device.type, enabled=False):
        grouped = query.float().reshape(batch_size, num_kv_heads, -1, head_dim) * scaling
        scores = torch.matmul(grouped, key.float().transpose(-1, -2)).view(batch_size, num_heads, query_length, -1)
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, torch.finfo(torch.float32).min)
            else:
                scores = scores + attention_mask
        return nn.functional.softmax(scores, dim=-1)


def overlay_eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """The reference function (shim)."""
    return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
