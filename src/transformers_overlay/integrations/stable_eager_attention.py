"""Eager attention that stays finite and accurate in float16/bfloat16.

This is the single source of the stable attention function: the overlay binds it into transformers' modeling modules
at run time, and `scripts/make_patches.py` copies its text into the patch set for a transformers checkout.
"""

import torch
from torch import nn

from transformers.integrations.sdpa_attention import repeat_kv


def _query_rows_per_block(query_len: int) -> int:
    """
    Number of query rows whose float32 scores are held at once: about 1/16 of the rows, so the float32 block stays a
    fraction of the returned weights, and never fewer than 64 (a multiple of 8, which keeps the matmul on the same
    kernel as an unblocked one, so blocking does not change the result). The last block also takes the remainder.
    """
    return max(64, (-(-query_len // 16) + 7) // 8 * 8)


def _key_value_heads_per_step(num_key_value_heads: int, num_key_value_groups: int) -> int:
    """
    Number of key/value heads repeated (for grouped-query attention) and attended at once: as many as keeps their
    repeated float32 copies no larger than one float32 copy of all key/value heads (all heads when nothing repeats).
    """
    return max(1, num_key_value_heads // num_key_value_groups)


def _add_attention_mask_(scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """
    Adds `attention_mask` to the float32 `scores` in place. A boolean mask means True = attend: False becomes -inf.
    A float mask is added as it is. Returns the rows whose keys are all masked with -inf (softmax makes them NaN).
    """
    if attention_mask.dtype == torch.bool:
        scores.masked_fill_(attention_mask.logical_not(), float("-inf"))
        return attention_mask.logical_not().all(dim=-1, keepdim=True)
    scores.add_(attention_mask)
    return torch.isneginf(attention_mask).all(dim=-1, keepdim=True)


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
    Eager attention computed in float32, returning `(attn_output, attn_weights)` like the other attention functions.

    With `Q`, `K`, `V` the query, key and value states upcast to float32 (`K`, `V` repeated with upstream's
    `repeat_kv` for grouped-query attention when `module` has `num_key_value_groups`) and `M` the attention mask:

        scores = (Q * scaling) @ K^T + M     # M: float mask added as is; boolean mask: True -> 0, False -> -inf
        attn_weights = softmax(scores, dim=-1)
        attn_output = dropout(attn_weights, p=dropout) @ V

    - Scores, mask and softmax are float32 whatever the input dtype, so float16 scores cannot overflow to inf (and
      NaN after softmax) and bfloat16 scores keep their precision. The mask is sliced to the key length.
    - A row whose keys are all masked with -inf gets zero weights and a zero output instead of NaN; no masked key is
      ever attended.
    - `attn_output` has shape `(batch, q_len, num_heads, head_dim)` and `attn_weights` (after dropout) shape
      `(batch, num_heads, q_len, kv_len)`, both in `value.dtype`. For float32 inputs the result equals transformers'
      eager attention up to float32 rounding (within 1e-6 for ordinary scores; with scores in the thousands it is
      closer to float64 than upstream, because `Q` is scaled before the product).
    - The float32 scores are computed for one block of query rows at a time and written straight into the returned
      weights, and the keys and values are repeated for a few key/value heads at a time, so the extra memory is a
      fraction of `attn_weights` rather than several times it.
    """
    batch_size, num_heads, query_len, _ = query.shape
    num_key_value_heads, key_len = key.shape[1], key.shape[2]
    num_key_value_groups = getattr(module, "num_key_value_groups", 1)
    key_states = key.to(torch.float32)
    value_states = value.to(torch.float32)
    if attention_mask is not None:
        attention_mask = attention_mask[..., :key_len]

    attn_weights = value.new_empty(batch_size, num_heads, query_len, key_len)
    attn_output = value.new_empty(batch_size, query_len, num_heads, value.shape[-1])

    kv_heads_per_step = _key_value_heads_per_step(num_key_value_heads, num_key_value_groups)
    rows_per_block = _query_rows_per_block(query_len)
    num_blocks = max(1, query_len // rows_per_block)
    # Without autograd, every block is computed in place in one float32 workspace sized for the largest (last) block:
    # one copy of the scores instead of two, and no fresh allocation (page faults on CPU) per block.
    workspace = None
    if not (torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)):
        largest_block = query_len - (num_blocks - 1) * rows_per_block
        heads_per_step = kv_heads_per_step * num_key_value_groups
        workspace = query.new_empty(batch_size * heads_per_step * largest_block * key_len, dtype=torch.float32)
    for kv_start in range(0, num_key_value_heads, kv_heads_per_step):
        kv_heads = slice(kv_start, min(kv_start + kv_heads_per_step, num_key_value_heads))
        heads = slice(kv_heads.start * num_key_value_groups, kv_heads.stop * num_key_value_groups)
        step_keys_t = repeat_kv(key_states[:, kv_heads], num_key_value_groups).transpose(-1, -2)
        step_values = repeat_kv(value_states[:, kv_heads], num_key_value_groups)
        step_mask = attention_mask
        if attention_mask is not None and attention_mask.shape[1] > 1:
            step_mask = attention_mask[:, heads]
        for block in range(num_blocks):
            # the last block takes the remaining rows: a block of a few rows would run on another matmul kernel
            end = query_len if block == num_blocks - 1 else (block + 1) * rows_per_block
            rows = slice(block * rows_per_block, end)
            block_query = query[:, heads, rows].to(torch.float32) * scaling
            scores_shape = block_query.shape[:-1] + (key_len,)
            scores = None if workspace is None else workspace[: scores_shape.numel()].view(scores_shape)
            scores = torch.matmul(block_query, step_keys_t, out=scores)
            fully_masked_rows = None
            if step_mask is not None:
                block_mask = step_mask if step_mask.shape[-2] == 1 else step_mask[..., rows, :]
                fully_masked_rows = _add_attention_mask_(scores, block_mask)
            if workspace is None:
                probs = nn.functional.softmax(scores, dim=-1)
            else:
                probs = torch.softmax(scores, dim=-1, out=scores)
            if fully_masked_rows is not None and fully_masked_rows.any():
                probs = probs.masked_fill(fully_masked_rows, 0.0)
            probs = nn.functional.dropout(probs, p=dropout, training=module.training)
            attn_weights[:, heads, rows] = probs
            attn_output[:, rows, heads] = torch.matmul(probs, step_values).transpose(1, 2)
            del block_query, scores, probs  # release this block before the next one is allocated
        del step_keys_t, step_values

    return attn_output, attn_weights
