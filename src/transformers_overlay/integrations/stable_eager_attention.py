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
    `softmax((query * scaling) @ key^T + attention_mask) @ value`, with the scores, mask and softmax in float32 whatever
    the input dtype (and autocast) is. `query` is `(batch, num_heads, q_len, head_dim)`, `key` and `value` are
    `(batch, num_key_value_heads, kv_len, head_dim)` with `num_heads` a multiple of `num_key_value_heads`. Returns
    `attn_output` `(batch, q_len, num_heads, head_dim)` and `attn_weights` `(batch, num_heads, q_len, kv_len)` in
    `value.dtype`; `attn_output` is computed from `attn_weights` after dropout.
    """
    batch_size, num_heads, query_len, head_dim = query.shape
    num_key_value_heads, key_len = key.shape[1], key.shape[2]
    # Each key/value head serves a group of consecutive query heads: stacking a group's queries as rows shares the keys
    # and values with one batched matmul instead of copying them per query head (`repeat_kv`).
    query_states = query.reshape(batch_size * num_key_value_heads, -1, head_dim)
    key_states = key.reshape(batch_size * num_key_value_heads, key_len, head_dim)
    value_states = value.reshape(batch_size * num_key_value_heads, key_len, -1)

    # Qwen2's large q/k biases push `query @ key^T` past float16's range (inf, then NaN after the softmax) and cost
    # bfloat16 its precision, so scores, mask and softmax are computed in float32, with autocast disabled so that the
    # upcast holds under mixed precision. The weights are cast back before `@ value`, as in the other eager functions.
    with torch.autocast(device_type=query.device.type, enabled=False):
        attn_weights = torch.bmm(query_states.float() * scaling, key_states.float().transpose(1, 2))
        attn_weights = attn_weights.view(batch_size, num_heads, query_len, key_len)
        if attention_mask is not None:
            attn_weights.add_(attention_mask[:, :, :, :key_len])
        # Without autograd the softmax overwrites the scores: the float32 buffers then peak where stock eager's do.
        softmax_out = None if torch.is_grad_enabled() else attn_weights
        attn_weights = torch.softmax(attn_weights, dim=-1, out=softmax_out)
        attn_weights = attn_weights.to(value.dtype)

    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.bmm(attn_weights.view(batch_size * num_key_value_heads, -1, key_len), value_states)
    attn_output = attn_output.view(batch_size, num_heads, query_len, -1).transpose(1, 2).contiguous()

    return attn_output, attn_weights
