# Copyright 2025 The HuggingFace Team. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
The numerical contract of the stable eager attention: the reference function of the patch set
(`stable_eager_attention.eager_attention_forward`) and the function the overlay installs
(`overlay_eager_attention.overlay_eager_attention_forward`: the reference after the overlay's mask extras), checked
against transformers' own function and, with and without autograd, against themselves.
"""

import unittest

from parameterized import parameterized

from transformers import is_torch_available
from transformers.testing_utils import require_torch, torch_device


if is_torch_available():
    import torch
    from torch import nn

    from transformers.models.qwen2 import modeling_qwen2
    from transformers.models.siglip import modeling_siglip
    from transformers_overlay import patching
    from transformers_overlay.integrations.overlay_eager_attention import overlay_eager_attention_forward
    from transformers_overlay.integrations.stable_eager_attention import eager_attention_forward
    from transformers_overlay.model_table import MODEL_TABLE

    with patching.disabled():  # transformers' own functions, whether or not the overlay replaced them
        UPSTREAM_QWEN2_EAGER = modeling_qwen2.eager_attention_forward
        # None before the model table's first patchable release of siglip: SigLIP's eager attention was inside its class.
        UPSTREAM_SIGLIP_EAGER = getattr(modeling_siglip, patching.PATCHED_ATTRIBUTE, None)

    class AttentionModuleStub(nn.Module):
        """What the eager functions read from the attention layer: `training` and, for GQA, `num_key_value_groups`."""

        def __init__(self, num_key_value_groups=None):
            super().__init__()
            if num_key_value_groups is not None:
                self.num_key_value_groups = num_key_value_groups


HEAD_DIM = 16
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16) if is_torch_available() else ()
# Qwen2-7B-like overflow: 8 dims of q and k both at 120 give q·k ≈ 8 * 120² = 115200 > 65504 (float16 max).
OVERFLOW_HEAD_DIM = 128
OVERFLOW_BIAS = 120.0
OVERFLOW_DIMS = [*range(60, 64), *range(124, 128)]


def make_qkv(num_heads=4, num_key_value_heads=4, query_len=12, key_len=None, head_dim=HEAD_DIM, batch_size=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    key_len = query_len if key_len is None else key_len

    def states(heads, length):
        return torch.randn(batch_size, heads, length, head_dim, generator=generator).to(torch_device)

    return states(num_heads, query_len), states(num_key_value_heads, key_len), states(num_key_value_heads, key_len)


def make_overflow_prone_qkv(dtype, query_len=16, num_heads=4, num_key_value_heads=2):
    """q/k with Qwen2-7B-like biases on 8 dims: stock eager's float16 scores overflow to inf."""
    query, key, value = make_qkv(num_heads, num_key_value_heads, query_len, head_dim=OVERFLOW_HEAD_DIM, batch_size=1)
    query[..., OVERFLOW_DIMS] += OVERFLOW_BIAS
    key[..., OVERFLOW_DIMS] += OVERFLOW_BIAS
    return query.to(dtype), key.to(dtype), value.to(dtype)


def causal_mask(query_len, key_len, dtype=torch.float32, masked_value=None):
    """Additive causal mask `(1, 1, q, k)` as transformers builds it (`finfo(dtype).min` unless `masked_value`)."""
    masked_value = torch.finfo(dtype).min if masked_value is None else masked_value
    allowed = torch.ones(query_len, key_len, dtype=torch.bool).tril(key_len - query_len)
    return (
        torch.zeros(query_len, key_len, dtype=dtype).masked_fill(~allowed, masked_value)[None, None].to(torch_device)
    )


def padding_mask(batch_size, key_len, padded, dtype=torch.float32):
    """Additive `(batch, 1, 1, k)` mask hiding the first `padded` keys of the last sequence (left padding)."""
    mask = torch.zeros(batch_size, 1, 1, key_len, dtype=dtype)
    mask[-1, ..., :padded] = torch.finfo(dtype).min
    return mask.to(torch_device)


def make_mask(kind, batch_size, num_heads, query_len, key_len):
    if kind == "none":
        return None
    if kind == "causal":
        return causal_mask(query_len, key_len)
    if kind == "padding_broadcast":
        return padding_mask(batch_size, key_len, padded=3)
    if kind == "causal_and_padding":
        return causal_mask(query_len, key_len) + padding_mask(batch_size, key_len, padded=3)
    if kind == "per_head":
        generator = torch.Generator().manual_seed(1)
        hidden = torch.rand(batch_size, num_heads, query_len, key_len, generator=generator) < 0.3
        hidden[..., 0] = False  # every row keeps a key
        return torch.zeros(hidden.shape).masked_fill(hidden, torch.finfo(torch.float32).min).to(torch_device)
    raise ValueError(kind)


@require_torch
class StableEagerAttentionFloat32Test(unittest.TestCase):
    """float32 inputs: the stable function equals transformers' eager attention within 1e-6."""

    @parameterized.expand(
        [
            (f"{layout}_{mask}", num_heads, num_key_value_heads, mask)
            for layout, num_heads, num_key_value_heads in (
                ("mha", 4, 4),
                ("gqa", 8, 2),
                ("qwen2_7b", 28, 4),
            )
            for mask in ("none", "causal", "padding_broadcast", "causal_and_padding", "per_head")
        ]
    )
    def test_matches_upstream_qwen2(self, _, num_heads, num_key_value_heads, mask_kind):
        query, key, value = make_qkv(num_heads, num_key_value_heads)
        module = AttentionModuleStub(num_heads // num_key_value_heads).eval()
        mask = make_mask(mask_kind, query.shape[0], num_heads, query.shape[2], key.shape[2])

        output, weights = eager_attention_forward(module, query, key, value, mask, scaling=HEAD_DIM**-0.5)
        expected_output, expected_weights = UPSTREAM_QWEN2_EAGER(module, query, key, value, mask, HEAD_DIM**-0.5)

        torch.testing.assert_close(output, expected_output, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-6)

    @parameterized.expand([("none",), ("padding_broadcast",)])
    def test_matches_upstream_siglip(self, mask_kind):
        if UPSTREAM_SIGLIP_EAGER is None:
            self.skipTest(
                f"transformers {patching.transformers_version()} has no module-level SigLIP eager function (it has "
                f"since {MODEL_TABLE['siglip'].first_patchable_release}), so the overlay does not replace it"
            )
        # SigLIP's attention layer has no `num_key_value_groups`.
        query, key, value = make_qkv(num_heads=4, num_key_value_heads=4, query_len=16)
        module = AttentionModuleStub().eval()
        mask = make_mask(mask_kind, query.shape[0], 4, 16, 16)

        output, weights = eager_attention_forward(module, query, key, value, mask, scaling=HEAD_DIM**-0.5)
        expected_output, expected_weights = UPSTREAM_SIGLIP_EAGER(module, query, key, value, mask, HEAD_DIM**-0.5)

        torch.testing.assert_close(output, expected_output, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-6)

    def test_decode_step_with_longer_key_cache(self):
        # One new query row against a cache of 20 keys, with the causal mask of that step.
        query, key, value = make_qkv(8, 2, query_len=1, key_len=20)
        module = AttentionModuleStub(4).eval()
        mask = causal_mask(1, 20)

        output, weights = eager_attention_forward(module, query, key, value, mask, scaling=HEAD_DIM**-0.5)
        expected_output, expected_weights = UPSTREAM_QWEN2_EAGER(module, query, key, value, mask, HEAD_DIM**-0.5)

        torch.testing.assert_close(output, expected_output, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-6)

    @parameterized.expand([(torch.float16,), (torch.bfloat16,), (torch.float32,), (torch.float64,)])
    def test_return_contract(self, dtype):
        query, key, value = (tensor.to(dtype) for tensor in make_qkv(8, 2, query_len=5, key_len=7))
        output, weights = eager_attention_forward(AttentionModuleStub(4).eval(), query, key, value, None, 0.25)

        self.assertEqual(output.shape, (2, 5, 8, HEAD_DIM))  # (batch, q_len, heads, head_dim)
        self.assertEqual(weights.shape, (2, 8, 5, 7))  # (batch, heads, q_len, kv_len)
        self.assertEqual((output.dtype, weights.dtype), (dtype, dtype))
        self.assertTrue(output.is_contiguous())

    def test_float64_matches_upstream_to_float32_precision(self):
        # Upstream's softmax runs in float32 for every input dtype; the stable function computes the scores in
        # float32 too, so float64 inputs are supported with float32 accuracy and float64 results.
        query, key, value = (tensor.double() for tensor in make_qkv(8, 2))
        module = AttentionModuleStub(4).eval()
        mask = causal_mask(12, 12, dtype=torch.float64)

        output, weights = eager_attention_forward(module, query, key, value, mask, scaling=HEAD_DIM**-0.5)
        expected_output, expected_weights = UPSTREAM_QWEN2_EAGER(module, query, key, value, mask, HEAD_DIM**-0.5)

        self.assertEqual((output.dtype, weights.dtype), (torch.float64, torch.float64))
        torch.testing.assert_close(output, expected_output, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-6)


@require_torch
class StableEagerAttentionHalfPrecisionTest(unittest.TestCase):
    """Overflow-prone half-precision inputs: finite, and as close to float32 as the output dtype allows."""

    @parameterized.expand([(torch.float16, 2e-3, 2e-3), (torch.bfloat16, 1e-2, 1.6e-2)])
    def test_overflow_prone_inputs_stay_finite_and_accurate(self, dtype, atol, rtol):
        query, key, value = make_overflow_prone_qkv(dtype)
        module = AttentionModuleStub(2).eval()
        mask = causal_mask(16, 16, dtype=dtype)
        scaling = OVERFLOW_HEAD_DIM**-0.5

        output, weights = eager_attention_forward(module, query, key, value, mask, scaling)
        # Reference: transformers' function in float32 on the same rounded inputs.
        upcast = [tensor.float() for tensor in (query, key, value)]
        expected_output, expected_weights = UPSTREAM_QWEN2_EAGER(module, *upcast, mask.float(), scaling)

        self.assertTrue(torch.isfinite(output).all() and torch.isfinite(weights).all())
        torch.testing.assert_close(output.float(), expected_output, atol=atol, rtol=rtol)
        torch.testing.assert_close(weights.float(), expected_weights, atol=atol, rtol=rtol)

    def test_stock_overflows_on_the_same_inputs(self):
        # Guards the inputs above: they do overflow transformers' float16 eager attention.
        query, key, value = make_overflow_prone_qkv(torch.float16)
        mask = causal_mask(16, 16, dtype=torch.float16)
        output, _ = UPSTREAM_QWEN2_EAGER(AttentionModuleStub(2).eval(), query, key, value, mask, 128**-0.5)
        self.assertTrue(torch.isnan(output).any())

    def test_backward_is_finite_in_float16(self):
        query, key, value = (tensor.requires_grad_() for tensor in make_overflow_prone_qkv(torch.float16))
        module = AttentionModuleStub(2).train()
        mask = causal_mask(16, 16, dtype=torch.float16)

        output, weights = eager_attention_forward(module, query, key, value, mask, OVERFLOW_HEAD_DIM**-0.5)
        (output.float().square().sum() + weights.float().square().sum()).backward()
        gradients = [query.grad, key.grad, value.grad]

        upcast = [tensor.detach().float().requires_grad_() for tensor in (query, key, value)]
        output_32, weights_32 = eager_attention_forward(module, *upcast, mask.float(), OVERFLOW_HEAD_DIM**-0.5)
        (output_32.square().sum() + weights_32.square().sum()).backward()

        for gradient, reference in zip(gradients, upcast):
            self.assertEqual(gradient.dtype, torch.float16)
            self.assertTrue(torch.isfinite(gradient).all())
            relative_error = (gradient.float() - reference.grad).norm() / reference.grad.norm()
            self.assertLess(relative_error.item(), 1e-2)


def attend_with_gradients(function, module, query, key, value, mask, scaling, **kwargs):
    """`function` on inputs that require grad, so that its softmax keeps the scores for backward; results detached."""
    query, key, value = (tensor.detach().requires_grad_() for tensor in (query, key, value))
    return tuple(result.detach() for result in function(module, query, key, value, mask, scaling, **kwargs))


@require_torch
class OverlayMaskTest(unittest.TestCase):
    """
    The overlay's mask extras, with and without autograd (the reference's softmax overwrites the scores only without
    it): boolean masks mean True = attend, and a row whose keys are all masked gets the uniform weights of
    transformers' own finite masks instead of NaN.
    """

    def setUp(self):
        self.query, self.key, self.value = make_qkv(8, 2, query_len=10)
        self.module = AttentionModuleStub(4).eval()

    def attend(self, mask, query=None, path="no_grad"):
        query = self.query if query is None else query
        arguments = (self.module, query, self.key, self.value, mask, HEAD_DIM**-0.5)
        if path == "autograd":
            return attend_with_gradients(overlay_eager_attention_forward, *arguments)
        with torch.no_grad():
            return overlay_eager_attention_forward(*arguments)

    @parameterized.expand([(dtype, path) for dtype in FLOAT_DTYPES for path in ("no_grad", "autograd")])
    def test_boolean_mask_equals_additive_mask(self, dtype, path):
        self.query, self.key, self.value = (tensor.to(dtype) for tensor in (self.query, self.key, self.value))
        allowed = causal_mask(10, 10) == 0  # True = attend
        allowed[-1, ..., :3] = False  # and left padding in the last sequence
        additive = torch.zeros(allowed.shape, dtype=dtype, device=torch_device).masked_fill(~allowed, float("-inf"))

        torch.testing.assert_close(self.attend(allowed, path=path), self.attend(additive, path=path), atol=0, rtol=0)

    @parameterized.expand([("no_grad",), ("autograd",)])
    def test_boolean_mask_is_not_added_as_zero_one(self, path):
        # Upstream adds a boolean mask as 0/1, which attends every key; True = attend must hide the future.
        allowed = causal_mask(10, 10) == 0
        _, weights = self.attend(allowed, path=path)
        self.assertTrue((weights.masked_select(~allowed) == 0).all())

    @parameterized.expand(
        [(mask_type, path) for mask_type in ("neg_inf", "boolean") for path in ("no_grad", "autograd")]
    )
    def test_fully_masked_rows_get_the_weights_of_finite_masks(self, mask_type, path):
        allowed = (causal_mask(10, 10) == 0).expand(2, 1, 10, 10).clone()
        allowed[0, :, 3] = False  # row 3 of the first sequence sees no key
        allowed[1, :, :, :4] = False  # rows 0-3 of the second sequence see no key (left padding, as queries)
        if mask_type == "boolean":
            mask = allowed
        else:
            mask = torch.zeros(allowed.shape, device=torch_device).masked_fill(~allowed, float("-inf"))

        output, weights = self.attend(mask, path=path)

        # Stock eager gives NaN rows for the `-inf` mask; transformers' own masks use the dtype's minimum instead.
        finite_mask = torch.zeros(allowed.shape, device=torch_device).masked_fill(
            ~allowed, torch.finfo(torch.float32).min
        )
        expected_output, expected_weights = UPSTREAM_QWEN2_EAGER(
            self.module, self.query, self.key, self.value, finite_mask, HEAD_DIM**-0.5
        )
        self.assertTrue(torch.isfinite(output).all() and torch.isfinite(weights).all())
        torch.testing.assert_close(weights, expected_weights)
        torch.testing.assert_close(output, expected_output)
        fully_masked = ~allowed.any(dim=-1)  # (batch, 1, q): these rows are uniform
        uniform = torch.full((8 * 5, 10), 0.1, device=torch_device)
        torch.testing.assert_close(weights[fully_masked.expand(-1, 8, -1)], uniform)

    @parameterized.expand([("no_grad",), ("autograd",)])
    def test_longer_mask_is_sliced_to_the_key_length(self, path):
        mask = causal_mask(10, 10)
        longer = torch.cat([mask, torch.full((1, 1, 10, 5), float("-inf"), device=torch_device)], dim=-1)
        longer[..., 10:] = torch.randn(1, 1, 10, 5, device=torch_device)  # whatever lies past the keys is ignored

        torch.testing.assert_close(self.attend(longer, path=path), self.attend(mask, path=path), atol=0, rtol=0)

    @parameterized.expand(
        [(mask_type, path) for mask_type in ("additive", "boolean") for path in ("no_grad", "autograd")]
    )
    def test_mask_with_query_dimension_one_broadcasts(self, mask_type, path):
        query, _, _ = make_qkv(8, 2, query_len=100, key_len=10, seed=3)
        mask = padding_mask(2, 10, padded=4)
        if mask_type == "boolean":
            mask = mask == 0
        expanded = mask.expand(2, 1, 100, 10)
        broadcast_result = self.attend(mask, query, path=path)
        expanded_result = self.attend(expanded, query, path=path)

        torch.testing.assert_close(broadcast_result, expanded_result, atol=0, rtol=0)


@require_torch
class InferenceModeTest(unittest.TestCase):
    """Without autograd the reference's softmax overwrites its float32 scores; the results are the same."""

    @parameterized.expand(
        [
            (f"{str(dtype)[6:]}_{query_len}x{key_len}", dtype, query_len, key_len)
            for dtype in FLOAT_DTYPES
            for query_len, key_len in ((40, 40), (1, 40), (7, 40))  # prefill, decode, a short chunk
        ]
    )
    def test_no_grad_equals_autograd(self, _, dtype, query_len, key_len):
        query, key, value = (tensor.to(dtype) for tensor in make_qkv(28, 4, query_len, key_len, seed=4))
        module = AttentionModuleStub(7).eval()
        mask = causal_mask(query_len, key_len, dtype=dtype) + padding_mask(2, key_len, padded=7, dtype=dtype)

        with torch.no_grad():
            output, weights = eager_attention_forward(module, query, key, value, mask, HEAD_DIM**-0.5)
        expected = attend_with_gradients(eager_attention_forward, module, query, key, value, mask, HEAD_DIM**-0.5)

        self.assertEqual((output.dtype, weights.dtype), (dtype, dtype))
        torch.testing.assert_close((output, weights), expected, atol=0, rtol=0)

    @parameterized.expand([(torch.float16,), (torch.bfloat16,)])
    def test_overflow_prone_inputs_stay_finite_without_grad(self, dtype):
        query, key, value = make_overflow_prone_qkv(dtype, query_len=64)
        module = AttentionModuleStub(2).eval()
        mask = causal_mask(64, 64, dtype=dtype)
        with torch.no_grad():
            output, weights = overlay_eager_attention_forward(module, query, key, value, mask, OVERFLOW_HEAD_DIM**-0.5)
        expected = attend_with_gradients(
            eager_attention_forward, module, query, key, value, mask, OVERFLOW_HEAD_DIM**-0.5
        )

        self.assertTrue(torch.isfinite(output).all() and torch.isfinite(weights).all())
        torch.testing.assert_close((output, weights), expected, atol=0, rtol=0)


@require_torch
class DropoutTest(unittest.TestCase):
    def test_dropout_in_training_returns_the_weights_the_output_used(self):
        query, key, value = make_qkv(8, 2, query_len=10)
        module = AttentionModuleStub(4)
        mask = causal_mask(10, 10)

        _, weights_eval = overlay_eager_attention_forward(module.eval(), query, key, value, mask, HEAD_DIM**-0.5)
        torch.manual_seed(0)
        output, weights = overlay_eager_attention_forward(
            module.train(), query, key, value, mask, HEAD_DIM**-0.5, dropout=0.5
        )

        dropped = weights == 0
        self.assertTrue((dropped & (weights_eval > 0)).any())  # dropout was applied in training mode
        torch.testing.assert_close(weights[~dropped], 2 * weights_eval[~dropped])  # survivors scaled by 1 / (1 - p)
        value_per_query_head = value.repeat_interleave(4, dim=1)
        torch.testing.assert_close(output, torch.matmul(weights, value_per_query_head).transpose(1, 2))
