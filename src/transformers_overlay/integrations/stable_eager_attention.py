"""Eager attention that stays finite and accurate in float16/bfloat16: the reference function.

This is the single source of the fix: `transformers_overlay`'s patch-series generator copies `eager_attention_forward`
verbatim into the patch set for a transformers checkout, and the overlay runs it (through
`transformers_overlay.integrations.overlay_eager_attention`). It is upstream's Qwen2 eager attention with the scores,
mask and softmax moved to float32, and query heads grouped per key/value head instead of repeating keys and values.
"""

import torch
from torch import nn


def eager_attention_forward(
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
    `softmax((query * scaling) @ key^T + attention_mask) @ value` with scores, mask and softmax in float32 whatever the
    input dtype (and autocast). Returns `attn_output` `(batch, q_len, heads, head_dim)` and `attn_weights` `(batch, heads,
    q_len, kv_len)` in `value.dtype`, the output computed from the weights after dropout.
    """
    batch_size, num_heads, query_len, head_dim = query.shape
    num_key_value_heads, key_len = key.shape[1], key.shape[2]
    # The query heads of a key/value head are stacked as rows and share its keys and values: no `repeat_kv` copies.
    query_states = query.reshape(batch_size * num_key_value_heads, -1, head_dim)
    key_states = key.reshape(batch_size * num_key_value_heads, key_len, head_dim)
    value_states = value.reshape(batch_size * num_key_value_heads, key_len, -1)

    # Qwen2's large q/k biases push `query @ key^T` past float16's range (inf, then NaN after the softmax) and cost
    # bfloat16 its precision: scores, mask and softmax are float32, with autocast disabled so that the upcast holds.
    with torch.autocast(device_type=query.device.type, enabled=False):
        attn_weights = torch.bmm(query_states.float() * scaling, key_states.float().transpose(1, 2))
        attn_weights = attn_weights.view(batch_size, num_heads, query_len, key_len)
        if attention_mask is not None:
            attn_weights.add_(attention_mask[:, :, :, :key_len])
        # Without autograd the softmax overwrites the scores, so the float32 buffers peak where stock eager's do.
        attn_weights = torch.softmax(attn_weights, dim=-1, out=None if torch.is_grad_enabled() else attn_weights)
        attn_weights = attn_weights.to(value.dtype)

    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.bmm(attn_weights.view(batch_size * num_key_value_heads, -1, key_len), value_states)
    attn_output = attn_output.view(batch_size, num_heads, query_len, -1).transpose(1, 2).contiguous()

    return attn_output, attn_weights
