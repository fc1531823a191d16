"""Eager attention that stays finite and accurate in float16/bfloat16: the reference function.

This is the single source of the fix: `scripts/make_patches.py` copies `eager_attention_forward` verbatim into the
patch set for a transformers checkout, and the overlay runs it (through
`transformers_overlay.integrations.overlay_eager_attention`) whenever autograd, `torch.compile` or `torch.export` is
involved. It is upstream's Qwen2 eager attention with the scores, mask and softmax moved to float32.
"""

import torch
from torch import nn

from transformers.integrations.sdpa_attention import repeat_kv


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
    the input dtype (and autocast) is. Returns `attn_output` `(batch, q_len, num_heads, head_dim)` and `attn_weights`
    `(batch, num_heads, q_len, kv_len)` in `value.dtype`; `attn_output` is computed from `attn_weights` after dropout.
    """
    # Qwen2's large q/k biases push `query @ key^T` past float16's range (inf, then NaN after the softmax) and cost
    # bfloat16 its precision, so scores, mask and softmax are computed in float32, with autocast disabled so that the
    # upcast holds under mixed precision. The weights are cast back before `@ value`, as in the other eager functions.
    key_states = repeat_kv(key, getattr(module, "num_key_value_groups", 1))
    value_states = repeat_kv(value, getattr(module, "num_key_value_groups", 1))

    with torch.autocast(device_type=query.device.type, enabled=False):
        attn_weights = torch.matmul(query.float() * scaling, key_states.float().transpose(2, 3))
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask[:, :, :, : key_states.shape[-2]]
        attn_weights = nn.functional.softmax(attn_weights, dim=-1).to(value.dtype)

    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous()

    return attn_output, attn_weights
