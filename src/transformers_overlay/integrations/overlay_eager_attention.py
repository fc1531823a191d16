"""The eager attention function the overlay installs: the float32 reference plus two overlay-only extras.

- Masks: a boolean mask means True = attend, and `-inf` (or False) entries count as float32's most negative value, so
  a row with every key masked gets the uniform weights transformers' own masks give (they use the dtype's minimum)
  instead of NaN. Both are a pass over the mask, never over the scores, and involve no branch on tensor values.
- Speed: on CPU, inference calls (no autograd graph, no dropout, not traced by `torch.compile`/`torch.export`) take
  `blocked_eager_attention_forward`, which groups query heads per key/value head instead of repeating keys and values,
  and computes blocks of query rows in one reused float32 workspace. Everything else runs the reference function
  `stable_eager_attention.eager_attention_forward`, the one in the patch set. Tests check that both agree.
"""

import torch
from torch import nn

from .stable_eager_attention import eager_attention_forward


# Query rows are computed in this many blocks (when there are at least `_MIN_ROWS_PER_BLOCK` rows per block): fewer,
# larger operations cost less under CPU contention, and one block of float32 scores is a quarter of them.
_NUM_ROW_BLOCKS = 4
_MIN_ROWS_PER_BLOCK = 64


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
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""
    float32 attention probabilities `softmax((Q * scaling) @ K^T + M, dim=-1)` of shape `(batch, num_heads, q_len,
    kv_len)`, for `query` `(batch, num_heads, q_len, head_dim)` and `key` `(batch, num_key_value_heads, kv_len,
    head_dim)` in any dtype, both upcast to float32. Grouped-query keys are shared by their query heads, never
    repeated. `attention_mask` (broadcastable to the result) is made additive by `float32_attention_mask`.
    `out`, if given, is a contiguous float32 buffer of the result's size that receives the probabilities in place.
    """
    batch_size, num_heads, query_len, head_dim = query.shape
    num_key_value_heads, key_len = key.shape[1], key.shape[2]
    groups = num_heads // num_key_value_heads
    with torch.autocast(device_type=query.device.type, enabled=False):
        grouped_shape = (batch_size, num_key_value_heads, groups * query_len)
        grouped_query = (query.to(torch.float32) * scaling).reshape(*grouped_shape, head_dim)
        out = None if out is None else out.view(*grouped_shape, key_len)
        scores = torch.matmul(grouped_query, key.to(torch.float32).transpose(-1, -2), out=out)
        scores = scores.view(batch_size, num_heads, query_len, key_len)
        mask = float32_attention_mask(attention_mask, key_len)
        if mask is not None:
            scores.add_(mask)
        return torch.softmax(scores, dim=-1, out=scores)


def _rows_per_block(query_len: int) -> int:
    if query_len < _NUM_ROW_BLOCKS * _MIN_ROWS_PER_BLOCK:
        return query_len
    return -(-query_len // _NUM_ROW_BLOCKS)


def blocked_eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    **kwargs,
):
    r"""
    Inference-only eager attention (no autograd, no dropout) with the reference's contract: float32 scores, mask and
    softmax, `attn_output` `(batch, q_len, num_heads, head_dim)` and `attn_weights` `(batch, num_heads, q_len, kv_len)`
    in `value.dtype`. Blocks of query rows share one float32 workspace, keys and values are upcast once and grouped
    (not repeated), and `probabilities @ V` runs in float32 before the cast, so the output equals the reference's up to
    the rounding of the weights to `value.dtype`, which the reference applies before `@ V`.
    """
    batch_size, num_heads, query_len, _ = query.shape
    num_key_value_heads, key_len = key.shape[1], key.shape[2]
    groups = num_heads // num_key_value_heads
    key_states = key.to(torch.float32)
    value_states = value.to(torch.float32)
    mask = float32_attention_mask(attention_mask, key_len)

    attn_weights = value.new_empty(batch_size, num_heads, query_len, key_len)
    attn_output = value.new_empty(batch_size, query_len, num_heads, value.shape[-1])
    rows_per_block = _rows_per_block(query_len)
    workspace = query.new_empty(batch_size * num_heads * rows_per_block * key_len, dtype=torch.float32)
    with torch.autocast(device_type=query.device.type, enabled=False):
        for start in range(0, query_len, rows_per_block):
            rows = slice(start, min(start + rows_per_block, query_len))
            block_len = rows.stop - rows.start
            block_query = query[:, :, rows]
            block_mask = None if mask is None else mask if mask.shape[-2] == 1 else mask[..., rows, :]
            scores = workspace[: batch_size * num_heads * block_len * key_len]
            probs = float32_attention_probabilities(block_query, key_states, block_mask, scaling, out=scores)
            attn_weights[:, :, rows] = probs
            grouped_probs = probs.view(batch_size, num_key_value_heads, groups * block_len, key_len)
            block_output = torch.matmul(grouped_probs, value_states)
            attn_output[:, rows] = block_output.view(batch_size, num_heads, block_len, -1).transpose(1, 2)
    return attn_output, attn_weights


def _runs_blocked(module: nn.Module, query, key, value, dropout: float) -> bool:
    """Whether a call can take the inference-only path: CPU, nothing to differentiate, no dropout, not traced."""
    if query.device.type != "cpu" or (module.training and dropout > 0.0):
        return False
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        return False
    # `torch.compiler.is_compiling` is True under torch.compile and torch.export (torch < 2.3 names it in `_dynamo`).
    is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
    return not (is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting())


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
    graph) with the mask extras of this module, and `blocked_eager_attention_forward` for CPU inference calls.
    """
    if _runs_blocked(module, query, key, value, dropout):
        return blocked_eager_attention_forward(module, query, key, value, attention_mask, scaling, **kwargs)
    mask = float32_attention_mask(attention_mask, key.shape[-2])
    return eager_attention_forward(module, query, key, value, mask, scaling, dropout=dropout, **kwargs)
