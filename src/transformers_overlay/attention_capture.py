"""Selective attention capture: float32 attention rows of chosen layers and queries, whatever backend the model runs.

`output_attentions=True` forces the eager backend and returns the full `(batch, heads, q_len, kv_len)` weights of every
layer. `capture_attention` leaves the model on its own backend (sdpa, eager, flash) and recomputes, from the very
query and key states that backend receives, only the softmax rows that were asked for, reduced over heads and
restricted to chosen keys, so the memory kept is proportional to layers x heads x queries x keys that are kept.
"""

import contextlib
import functools
import inspect
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .integrations.overlay_eager_attention import float32_attention_probabilities


__all__ = ["AttentionCapture", "AttentionStep", "capture_attention", "image_token_positions"]

# Name of the module-level eager function that attention modules fall back to, and of the attention function table.
_EAGER_FUNCTION_NAME = "eager_attention_forward"
_INTERFACE_NAME = "ALL_ATTENTION_FUNCTIONS"
_HEAD_REDUCTIONS = ("mean", "max")
_QUERY_MODES = ("last", "all")
# At most this many float32 scores are held at once when many query rows are captured (64 MiB).
_MAX_SCORE_ELEMENTS = 2**24


@dataclass
class AttentionStep:
    r"""
    What one forward call of the model (one `generate` step) captured.

    Args:
        attentions (`dict[int, torch.Tensor]`):
            Layer index -> float32 attention probabilities of shape `(batch, heads, n_queries, n_keys)`, where `heads`
            is 1 after a `"mean"`/`"max"` reduction, the number of selected heads, or all query heads.
        query_positions (`torch.LongTensor` of shape `(n_queries,)`):
            Sequence positions of the captured query rows (the same for every batch row).
        key_positions (`torch.LongTensor` of shape `(n_keys,)` or `(batch, n_keys)`):
            Sequence positions of the captured key columns; two-dimensional when keys were selected per batch row.
    """

    attentions: dict[int, torch.Tensor]
    query_positions: torch.Tensor
    key_positions: torch.Tensor


class AttentionCapture(Sequence):
    """The `AttentionStep`s recorded by `capture_attention`, one per forward call, in call order."""

    def __init__(self):
        self.steps: list[AttentionStep] = []

    def __getitem__(self, index):
        return self.steps[index]

    def __len__(self):
        return len(self.steps)

    def __repr__(self):
        return f"AttentionCapture({len(self.steps)} steps)"


def image_token_positions(input_ids: torch.Tensor, config_or_model) -> torch.LongTensor:
    """
    Positions of the image tokens in `input_ids` (shape `(batch, seq_len)`) for a LLaVA-style config or model, as a
    `(batch, n_image_tokens)` LongTensor ready for `capture_attention(..., keys=...)`. Every batch row must hold the
    same number of image tokens (left padding shifts positions, so rows may differ in where they are).
    """
    config = config_or_model.config if isinstance(config_or_model, nn.Module) else config_or_model
    token_id = getattr(config, "image_token_id", None)
    if token_id is None:
        token_id = getattr(config, "image_token_index", None)
    if token_id is None:
        raise ValueError(f"{type(config).__name__} has no `image_token_id`/`image_token_index`.")
    if input_ids.dim() != 2:
        raise ValueError(f"`input_ids` must have shape (batch, seq_len), got {tuple(input_ids.shape)}.")
    return _per_row_positions(input_ids == token_id, what="image tokens")


def _per_row_positions(mask: torch.Tensor, what: str) -> torch.LongTensor:
    counts = mask.sum(dim=-1)
    if counts.numel() == 0 or counts.min() == 0 or (counts != counts[0]).any():
        raise ValueError(f"every batch row must hold the same, non-zero number of {what}; got {counts.tolist()}.")
    return mask.nonzero()[:, 1].view(mask.shape[0], -1).cpu()


def _as_positions(value, name: str) -> torch.LongTensor:
    """An int, a sequence of ints or an integer/bool tensor as a LongTensor of positions (bool: its True indices)."""
    message = f"`{name}` must be an int, a non-empty sequence of ints or a 1-D/2-D index or boolean tensor."
    if isinstance(value, bool) or (isinstance(value, (list, tuple)) and not value):
        raise ValueError(message)
    try:
        tensor = torch.as_tensor(value).detach().cpu().clone()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{message} Got {value!r}.") from None
    if tensor.dim() > 2:
        raise ValueError(message)
    if tensor.dtype == torch.bool:
        return tensor.nonzero()[:, 0] if tensor.dim() == 1 else _per_row_positions(tensor, what=f"`{name}`")
    if tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"`{name}` must hold integer positions or booleans, got {tensor.dtype}.")
    return tensor.long().reshape(-1) if tensor.dim() == 0 else tensor.long()


def _normalize_queries(queries):
    if isinstance(queries, str):
        if queries not in _QUERY_MODES:
            raise ValueError(f"`queries` must be one of {_QUERY_MODES}, an index, a slice or a mask; got {queries!r}.")
        return queries
    if isinstance(queries, slice):
        if queries.step is not None and queries.step <= 0:
            raise ValueError(f"a `queries` slice needs a positive step, got {queries.step}.")
        return queries
    positions = _as_positions(queries, "queries")
    if positions.dim() != 1:
        raise ValueError("`queries` selects positions shared by all batch rows: give a 1-D index or mask.")
    return positions


def _normalize_keys(keys):
    if keys is None:
        return None
    positions = _as_positions(keys, "keys")
    if positions.numel() == 0 or (positions < 0).any():
        raise ValueError("`keys` must select at least one key, by non-negative sequence positions.")
    return positions


def _normalize_heads(heads, num_heads: int | None):
    if heads is None or (isinstance(heads, str) and heads in _HEAD_REDUCTIONS):
        return heads
    if isinstance(heads, str):
        raise ValueError(f"`heads` must be None, one of {_HEAD_REDUCTIONS} or head indices; got {heads!r}.")
    index = _as_positions(heads, "heads").reshape(-1)
    if index.numel() == 0 or (index < 0).any() or (num_heads is not None and (index >= num_heads).any()):
        raise ValueError(f"`heads` must be indices in [0, {num_heads}), got {index.tolist()}.")
    return index


def _decoder_attention_modules(model: nn.Module) -> dict[int, nn.Module]:
    """Layer index -> self-attention module: the modules carrying a `layer_idx` (the text decoder's)."""
    modules = {}
    for name, module in model.named_modules():
        layer_idx = getattr(module, "layer_idx", None)
        if isinstance(layer_idx, int) and hasattr(module, "q_proj") and hasattr(module, "k_proj"):
            if layer_idx in modules:
                raise ValueError(f"{name} and another module both claim attention layer {layer_idx}.")
            modules[layer_idx] = module
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention modules with a `layer_idx` to capture.")
    return dict(sorted(modules.items()))


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _select_layers(layers, available: dict[int, nn.Module]) -> dict[nn.Module, int]:
    num_layers = len(available)
    if layers is None or (isinstance(layers, str) and layers == "all"):
        chosen = list(available)
    else:
        requested = [layers] if isinstance(layers, (int, str)) else list(layers)
        if not requested or not all(_is_index(i) and -num_layers <= i < num_layers for i in requested):
            raise ValueError(f"`layers` must be None, 'all' or layer indices in [{-num_layers}, {num_layers}).")
        chosen = sorted({i % num_layers for i in requested})
    return {available[i]: i for i in chosen}


def _query_rows(queries, past_length: int, query_length: int):
    """The query rows of this forward call that `queries` selects, as (slice or index, positions) or None."""
    total = past_length + query_length
    if isinstance(queries, str):
        start, stop = (total - 1, total) if queries == "last" else (past_length, total)
    elif isinstance(queries, slice) and queries.step in (None, 1):
        start, stop, _ = queries.indices(total)
        start = max(start, past_length)
    else:
        if isinstance(queries, slice):
            positions = torch.arange(*queries.indices(total))
        else:
            positions = torch.where(queries < 0, queries + total, queries)
        positions = positions[(positions >= past_length) & (positions < total)]
        return (positions - past_length, positions) if positions.numel() else None
    if start >= stop:
        return None
    return slice(start - past_length, stop - past_length), torch.arange(start, stop)


def _key_columns(keys, key_length: int, batch_size: int):
    """The key positions of this call that `keys` selects (None: all keys; empty: none exist yet)."""
    if keys is None:
        return None
    if keys.dim() == 1:
        return keys[keys < key_length]
    if keys.shape[0] != batch_size or keys.max() >= key_length:
        raise ValueError(
            f"per-row `keys` of shape {tuple(keys.shape)} (max position {keys.max().item()}) do not fit attention over "
            f"{key_length} keys with batch size {batch_size}."
        )
    return keys


@dataclass
class _Selection:
    """What a forward call captures, shared by all its layers: query rows and key columns, on the states' device."""

    rows: slice | torch.Tensor
    query_positions: torch.Tensor
    columns: torch.Tensor | None
    key_positions: torch.Tensor
    heads: str | torch.Tensor | None


def _select(queries, keys, heads, batch_size: int, query_length: int, key_length: int, device) -> _Selection | None:
    selection = _query_rows(queries, key_length - query_length, query_length)
    columns = _key_columns(keys, key_length, batch_size)
    if selection is None or (columns is not None and columns.numel() == 0):
        return None
    rows, query_positions = selection
    return _Selection(
        rows=rows.to(device) if isinstance(rows, torch.Tensor) else rows,
        query_positions=query_positions,
        columns=None if columns is None else columns.to(device),
        key_positions=torch.arange(key_length) if columns is None else columns,
        heads=heads.to(device) if isinstance(heads, torch.Tensor) else heads,
    )


def _implicit_mask(padding_mask, query_positions, key_length: int, sliding_window, is_causal: bool, device):
    """
    Boolean mask (True = attend) of shape `(batch or 1, 1, n_queries, key_length)` for backends that receive no 4-D
    mask (sdpa's `is_causal` path, flash attention's 2-D padding mask): causal and sliding window from the positions,
    padding from the 2-D mask. None when it would mask nothing (e.g. the newest token without padding).
    """
    first_query, last_query = query_positions.min().item(), query_positions.max().item()
    needs_causal = is_causal and first_query < key_length - 1
    needs_window = sliding_window is not None and last_query - sliding_window >= 0
    if padding_mask is None and not needs_causal and not needs_window:
        return None
    key_positions = torch.arange(key_length, device=device)
    query_positions = query_positions.to(device)[:, None]
    mask = torch.ones(len(query_positions), key_length, dtype=torch.bool, device=device)
    if needs_causal:
        mask &= key_positions <= query_positions
    if needs_window:
        mask &= key_positions > query_positions - sliding_window
    mask = mask[None, None]
    if padding_mask is not None:
        mask = mask & padding_mask[:, -key_length:].bool()[:, None, None, :]
    return mask


def _rows_per_block(batch_size: int, num_heads: int, key_length: int) -> int:
    return max(1, _MAX_SCORE_ELEMENTS // (batch_size * num_heads * key_length))


def _attention_probabilities(query, key, attention_mask, scaling: float, rows, mask_rows):
    """
    float32 softmax rows `softmax((Q[rows] * scaling) @ K^T + M)` of shape `(batch, num_heads, n_rows, key_length)`,
    with the overlay's float32 attention kernel (grouped-query keys are never repeated).
    """
    block_mask = None
    if attention_mask is not None:
        block_mask = attention_mask if attention_mask.shape[-2] == 1 else attention_mask[..., mask_rows, :]
    return float32_attention_probabilities(query[:, :, rows], key, block_mask, scaling)


def _reduce_heads(probs: torch.Tensor, heads) -> torch.Tensor:
    if heads is None:
        return probs
    if isinstance(heads, torch.Tensor):
        return probs[:, heads]
    return probs.mean(dim=1, keepdim=True) if heads == "mean" else probs.amax(dim=1, keepdim=True)


def _select_columns(probs: torch.Tensor, columns) -> torch.Tensor:
    if columns is None:
        return probs
    if columns.dim() == 1:
        return probs[..., columns]
    index = columns[:, None, None, :].expand(*probs.shape[:-1], columns.shape[-1])
    return probs.gather(-1, index)


def _sub_rows(rows, start: int, stop: int):
    if isinstance(rows, slice):
        return slice(rows.start + start, min(rows.start + stop, rows.stop))
    return rows[start:stop]


class _Recorder:
    """Computes and stores the capture for the selected attention modules; called by the wrapped attention functions."""

    def __init__(self, capture, layer_of_module, queries, heads, keys, to):
        self.capture = capture
        self.layer_of_module = layer_of_module
        self.queries, self.heads, self.keys, self.to = queries, heads, keys, to
        self.active = True
        # Layers of one forward call share the selection and the implicit mask: computed once per call.
        self._selection_key, self._selection = None, None
        self._mask_key, self._mask = None, None
        self._stored_selection = None

    def wants(self, module) -> bool:
        return self.active and module in self.layer_of_module

    def _selection_for(self, batch_size: int, query_length: int, key_length: int, device) -> _Selection | None:
        key = (batch_size, query_length, key_length, device)
        if key != self._selection_key:
            self._selection = _select(self.queries, self.keys, self.heads, *key)
            self._selection_key = key
        return self._selection

    def _implicit_mask_for(self, selection, padding_mask, key_length, sliding_window, is_causal, device):
        key = (selection, padding_mask, sliding_window, is_causal)
        cached = self._mask_key
        if cached is None or cached[0] is not selection or cached[1] is not padding_mask or cached[2:] != key[2:]:
            self._mask = _implicit_mask(
                padding_mask, selection.query_positions, key_length, sliding_window, is_causal, device
            )
            self._mask_key = key  # holds `padding_mask`, so its identity cannot be reused by another tensor
        return self._mask

    @torch.no_grad()
    def record(self, module, query, key, attention_mask, kwargs):
        if kwargs.get("s_aux") is not None or kwargs.get("softcap") is not None:
            raise ValueError("capture_attention does not model attention sinks or logit softcapping.")
        if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
            raise ValueError(f"capture_attention cannot read a {type(attention_mask).__name__} attention mask.")
        batch_size, num_heads, query_length, _ = query.shape
        key_length = key.shape[-2]
        if isinstance(self.heads, torch.Tensor) and self.heads.max() >= num_heads:
            raise ValueError(f"`heads` {self.heads.tolist()} out of range for {num_heads} attention heads.")
        selection = self._selection_for(batch_size, query_length, key_length, query.device)
        if selection is None:
            return

        if attention_mask is None or attention_mask.dim() == 2:
            is_causal = kwargs.get("is_causal")
            is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
            sliding_window = kwargs.get("sliding_window")
            attention_mask = self._implicit_mask_for(
                selection, attention_mask, key_length, sliding_window, is_causal, query.device
            )
            implicit = True  # built for the selected rows only: block `start:stop` is rows `start:stop` of it
        else:
            attention_mask = attention_mask[..., :key_length]
            implicit = False
        scaling = kwargs.get("scaling")
        scaling = getattr(module, "scaling", query.shape[-1] ** -0.5) if scaling is None else scaling

        key = key.to(torch.float32)
        n_queries = len(selection.query_positions)
        block = _rows_per_block(batch_size, num_heads, key_length)
        device = query.device if self.to is None else self.to
        out = None
        for start in range(0, n_queries, block):
            rows = _sub_rows(selection.rows, start, start + block)
            mask_rows = slice(start, start + block) if implicit else rows
            probs = _attention_probabilities(query, key, attention_mask, scaling, rows, mask_rows)
            kept = _select_columns(_reduce_heads(probs, selection.heads), selection.columns)
            del probs  # release this block before the next one is allocated
            if n_queries <= block:
                out = kept.to(device)
                break
            if out is None:
                shape = (batch_size, kept.shape[1], n_queries, kept.shape[-1])
                out = torch.empty(shape, dtype=torch.float32, device=device)
            out[:, :, start : start + block].copy_(kept)
        self._store(self.layer_of_module[module], out, selection)

    def _store(self, layer: int, weights: torch.Tensor, selection: _Selection):
        steps = self.capture.steps
        if not steps or layer in steps[-1].attentions or self._stored_selection is not selection:
            steps.append(AttentionStep({}, selection.query_positions, selection.key_positions))
            self._stored_selection = selection
        steps[-1].attentions[layer] = weights


def _wrap_attention_function(original, recorder: _Recorder):
    """`original`, recording the capture first when it is called for a selected module; otherwise just `original`."""

    @functools.wraps(original)
    def attention_function_with_capture(module, query, key, value, *args, **kwargs):
        if recorder.wants(module):
            attention_mask = args[0] if args else kwargs.get("attention_mask")
            recorder.record(module, query, key, attention_mask, kwargs)
        return original(module, query, key, value, *args, **kwargs)

    return attention_function_with_capture


def _attention_function_slots(modules) -> list[tuple[MutableMapping, str]]:
    """
    Where the selected modules' `forward` reads its attention function from, as (mapping, name) pairs: the
    `eager_attention_forward` global of its module, and every entry of the `ALL_ATTENTION_FUNCTIONS` it reads (a dict
    in transformers 4.48, later an `AttentionInterface` whose per-instance entries live in `_local_mapping`).
    """
    slots, seen = [], set()
    for module in modules:
        namespace = inspect.unwrap(type(module).forward).__globals__
        if id(namespace) not in seen and _EAGER_FUNCTION_NAME in namespace:
            slots.append((namespace, _EAGER_FUNCTION_NAME))
        seen.add(id(namespace))
        interface = namespace.get(_INTERFACE_NAME)
        if interface is not None and id(interface) not in seen:
            slots.extend((interface, name) for name in list(interface.keys()))
            seen.add(id(interface))
    return slots


def _install(slots, recorder: _Recorder) -> list[tuple]:
    """Wraps the attention function in every slot; returns what `_restore` needs to put the originals back."""
    installed = []
    for table, name in slots:
        overrides = getattr(table, "_local_mapping", table)
        wrapper = _wrap_attention_function(table[name], recorder)
        installed.append((overrides, name, name in overrides, overrides.get(name), wrapper))
        overrides[name] = wrapper
    return installed


def _restore(installed: list[tuple]) -> None:
    """Puts back the exact objects `_install` replaced, leaving any entry someone else changed meanwhile alone."""
    for overrides, name, had_entry, previous, wrapper in reversed(installed):
        if overrides.get(name) is not wrapper:
            continue
        if had_entry:
            overrides[name] = previous
        else:
            del overrides[name]


@contextlib.contextmanager
def capture_attention(model: nn.Module, layers=None, queries="last", heads=None, keys=None, to="cpu"):
    r"""
    Captures float32 attention probabilities of selected layers, query rows, heads and keys while `model` runs on its
    own attention backend (sdpa, eager, flash attention): its outputs are unchanged.

    ```python
    with capture_attention(model, layers=[2], queries="last", heads="mean", keys=image_positions) as captured:
        model(**inputs)
    scores = captured[0].attentions[2][:, 0, -1]  # (batch, n_image_tokens)
    ```

    Args:
        model (`nn.Module`):
            A transformers model whose decoder attention modules carry a `layer_idx`: every model of the model table
            (Qwen2, Qwen2-MoE, Qwen2-VL and Qwen2.5-VL with their multimodal rotary positions, the Qwen2.5-Omni
            thinker, LLaVA-OneVision's Qwen2 text model) and Llama-like models. Vision towers and audio encoders are
            never captured.
        layers (`int`, `Sequence[int]`, `"all"` or `None`):
            Decoder layer indices (negative counts from the end); `None`/`"all"` for every layer.
        queries (`"last"`, `"all"`, `int`, `slice`, `Sequence[int]` or 1-D bool tensor):
            Query rows, as positions in the sequence processed so far (cache slots, i.e. columns of `input_ids`
            including padding). `"last"`: the newest token of every forward call (the token being generated at
            each `generate` step). `"all"`: every row of every call. An index, slice, index list or mask selects those
            positions in whichever call processes them; negative positions count from the end of the sequence
            processed so far (so `-1` is `"last"`).
        heads (`None`, `"mean"`, `"max"` or `Sequence[int]`):
            `None` keeps every query head, `"mean"`/`"max"` reduce over heads (kept as a size-1 head dimension), a
            list keeps those heads.
        keys (`None`, `Sequence[int]`, 1-D/2-D index or bool tensor):
            Key columns to keep after the softmax over all keys; positions as for `queries` but non-negative. 1-D:
            the same positions for every batch row, positions beyond the current key length are dropped. 2-D
            `(batch, n)` (e.g. `image_token_positions(input_ids, model)`): per batch row positions, all of which
            must exist in every captured call.
        to (`str`, `torch.device` or `None`):
            Device the captured tensors are moved to as they are computed (default CPU); `None` keeps them on the
            device of the attention states.

    Returns:
        An `AttentionCapture`: a sequence of `AttentionStep`, one per forward call that selected at least one query
        (with `generate`: the prompt, then one per new token), each holding `attentions` (layer -> float32 tensor
        `(batch, heads, n_queries, n_keys)`), `query_positions` `(n_queries,)` and `key_positions` `(n_keys,)` or
        `(batch, n_keys)`.

    Numerical contract:
        For the post-rotary query states `Q` (selected rows) and the key states `K` (the whole cache) that the
        backend receives, both upcast to float32, and the mask `M` it receives:

            probs = softmax((Q * scaling) @ K^T + M, dim=-1)    # float32, over all keys, before any selection

        A 4-D mask is used as given (bool: True = attend, float: added). Without one (sdpa's causal shortcut) or with
        flash attention's 2-D padding mask, the causal mask, the module's sliding window and that padding are built
        from the positions. The probabilities come from `float32_attention_probabilities`, the very kernel of the
        overlay's eager attention (fully masked rows as it defines them), so for a float32 model the values equal `output_attentions=True` eager weights up to
        float32 rounding, and for float16/bfloat16 models they carry only the error of the float16/bfloat16 query
        and key states (never overflow). Dropout is not applied and no gradient flows into the capture. Grouped-query
        keys are used per key/value group, never repeated. Scores are held for a block of query rows at a time
        (at most 2**24 float32 values), so memory is what is kept plus that block and the kernel's float32 keys.

    Positions assume a cache holding every past token in order (`DynamicCache`, `generate`'s default): query rows
    of a call are positions `kv_len - q_len ... kv_len - 1` and keys are positions `0 ... kv_len - 1`. Static or
    sliding-window caches are not supported.

    Restoration: for the duration of the block the overlay wraps the attention functions the selected modules call
    (the `eager_attention_forward` global of their modeling module and every entry of the `ALL_ATTENTION_FUNCTIONS`
    they read); calls for other modules and other models pass straight through. On exit, also on an exception, the
    exact original objects are put back (an entry somebody else replaced meanwhile is left alone); the model itself
    is never modified. Nested captures must exit in reverse order; the wrapping is process-wide, so do not run other
    threads' forwards of the same models concurrently.
    """
    available = _decoder_attention_modules(model)
    layer_of_module = _select_layers(layers, available)
    text_config = getattr(next(iter(layer_of_module)), "config", None)
    recorder = _Recorder(
        AttentionCapture(),
        layer_of_module,
        queries=_normalize_queries(queries),
        heads=_normalize_heads(heads, getattr(text_config, "num_attention_heads", None)),
        keys=_normalize_keys(keys),
        to=None if to is None else torch.device(to),
    )
    installed = _install(_attention_function_slots(layer_of_module), recorder)
    try:
        yield recorder.capture
    finally:
        recorder.active = False
        _restore(installed)
