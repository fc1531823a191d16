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
The overlay on every supported transformers release: the version gate, and the mask and keyword paths that differ
between releases. transformers 4.48-4.52 build the 4D mask in `Qwen2Model._update_causal_mask` (additive
`finfo(dtype).min`, one column longer than the keys when no 2D mask is given, as long as the cache with a static
cache) and fall back from sdpa to the module-level eager function for `output_attentions=True`; 4.53+ build it in
`masking_utils`. SigLIP has a module-level eager function only from 4.51 on.
"""

import contextlib
import importlib
import sys
import unittest
import warnings
from unittest import mock

from parameterized import parameterized

from transformers import is_torch_available
from transformers.testing_utils import require_torch, torch_device
from transformers_overlay import _activation, patching
from transformers_overlay.model_table import MODEL_TABLE


if is_torch_available():
    import torch

    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2 import modeling_qwen2
    from transformers.models.siglip import modeling_siglip
    from transformers_overlay.integrations.overlay_eager_attention import (
        overlay_eager_attention_forward as eager_attention_forward,
    )

    # 4.48-4.52: the mask comes from `_update_causal_mask`, and sdpa falls back to eager for `output_attentions`.
    MASK_FROM_UPDATE_CAUSAL_MASK = hasattr(modeling_qwen2.Qwen2Model, "_update_causal_mask")
else:
    MASK_FROM_UPDATE_CAUSAL_MASK = False


@contextlib.contextmanager
def overlay_state_restored():
    """Runs the block on stock modules, then puts back what was patched, the skip reasons and the warnings given."""
    skipped, warned = dict(patching._skipped), set(_activation._warned)
    try:
        with patching.disabled():
            try:
                yield
            finally:
                patching.revert()
    finally:
        patching._skipped.clear()
        patching._skipped.update(skipped)
        _activation._warned.clear()
        _activation._warned.update(warned)


def overlay_warnings(caught):
    return [str(warning.message) for warning in caught if "transformers-overlay" in str(warning.message)]


class TransformersVersionGateTest(unittest.TestCase):
    @parameterized.expand(
        [
            ("oldest", "4.48.0", True),
            ("newest", "5.23.0", True),
            ("newest_patch", "5.23.9", True),
            ("before_module_level_function", "4.47.1", False),
            ("next_minor", "5.24.0", False),
            ("next_minor_dev", "5.24.0.dev0", False),
            ("not_a_version", "main", False),
            ("not_installed", None, False),
        ]
    )
    def test_supported_range(self, _, version, supported):
        self.assertIs(patching.is_supported_transformers(version), supported)

    @parameterized.expand([("older", "4.47.1"), ("newer", "5.24.0")])
    def test_unsupported_release_is_left_stock_with_one_warning(self, _, fake_version):
        with overlay_state_restored(), mock.patch.object(patching, "transformers_version", return_value=fake_version):
            _activation._warned.clear()
            stock = {}  # the model table's modules this transformers has
            for model_type, entry in MODEL_TABLE.items():
                with contextlib.suppress(ModuleNotFoundError):
                    module = importlib.import_module(entry.module)
                    stock[model_type] = getattr(module, patching.PATCHED_ATTRIBUTE, None)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                patching.apply()
                status = patching.apply()  # a second attempt must not warn again

            self.assertFalse(status["transformers_supported"])
            for model_type, function in stock.items():
                module = sys.modules[MODEL_TABLE[model_type].module]
                self.assertIs(getattr(module, patching.PATCHED_ATTRIBUTE, None), function)
                self.assertEqual(
                    status["models"][model_type]["state"],
                    f"stock (transformers {fake_version} is outside the supported range >=4.48,<5.24)",
                )
            messages = overlay_warnings(caught)
            self.assertEqual(len(messages), 1, messages)
            self.assertIn(f"transformers {fake_version} is outside the supported range", messages[0])

    def test_unsupported_release_is_reported_before_import(self):
        with mock.patch.object(patching, "transformers_version", return_value="5.24.0"), mock.patch.dict(sys.modules):
            for entry in MODEL_TABLE.values():
                sys.modules.pop(entry.module, None)
            status = patching.status()

        self.assertFalse(status["transformers_supported"])
        for model_type in MODEL_TABLE:
            self.assertEqual(
                status["models"][model_type]["state"],
                "not imported (will stay stock: transformers 5.24.0 is outside the supported range >=4.48,<5.24)",
            )

    def test_model_type_newer_than_the_release_is_reported_stock_before_import(self):
        # What the model table says of a supported release older than a row's first patchable release, e.g. SigLIP on
        # 4.50.3, before (or without) any import of the modules.
        with mock.patch.object(patching, "transformers_version", return_value="4.50.3"), mock.patch.dict(sys.modules):
            for entry in MODEL_TABLE.values():
                sys.modules.pop(entry.module, None)
            status = patching.status()

        self.assertTrue(status["transformers_supported"])
        for model_type, entry in MODEL_TABLE.items():
            state = status["models"][model_type]["state"]
            if entry.patchable_in("4.50.3"):
                self.assertTrue(state.startswith("not imported (will "), state)  # the hook, if any, decides
            else:
                self.assertEqual(
                    state,
                    f"stock (transformers 4.50.3 has no module-level `eager_attention_forward` for {model_type} "
                    f"(transformers has one since {entry.first_patchable_release}), so {model_type}'s eager attention "
                    "stays stock: use attn_implementation='sdpa' for it)",
                )

    @require_torch
    def test_siglip_without_module_level_function_is_left_stock_with_one_warning(self):
        # transformers 4.48-4.50 compute SigLIP's eager attention inside `SiglipAttention.forward`.
        with overlay_state_restored(), mock.patch.object(patching, "transformers_version", return_value="4.50.3"):
            _activation._warned.clear()
            stock = modeling_siglip.__dict__.pop(patching.PATCHED_ATTRIBUTE, None)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    patching.apply(["siglip"])
                    status = patching.apply(["siglip"])
                self.assertNotIn(patching.PATCHED_ATTRIBUTE, vars(modeling_siglip))
            finally:
                if stock is not None:
                    setattr(modeling_siglip, patching.PATCHED_ATTRIBUTE, stock)

        state = status["models"]["siglip"]["state"]
        self.assertTrue(state.startswith("stock (transformers 4.50.3 has no module-level"), state)
        self.assertIn("since 4.51", state)
        self.assertTrue(status["transformers_supported"])
        messages = overlay_warnings(caught)
        self.assertEqual(len(messages), 1, messages)
        self.assertIn("transformers.models.siglip.modeling_siglip", messages[0])


class Qwen2OverflowModelTester:
    """A tiny Qwen2 with the 7B head layout whose q/k biases make fp16 `query @ key^T` overflow (P-001)."""

    def __init__(self, batch_size=2, seq_length=16, bias=128.0):
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.bias = bias
        self.num_attention_heads = 28
        self.num_key_value_heads = 4
        self.head_dim = 128

    def get_config(self, attn_implementation="eager"):
        return Qwen2Config(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            max_position_embeddings=128,
            rope_theta=1e6,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            attn_implementation=attn_implementation,
        )

    def get_model(self, attn_implementation="eager", dtype=None):
        """The same weights whatever the attention implementation; biases on the last 4 dims of each rotary half."""
        dtype = dtype or torch.float16
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(self.get_config(attn_implementation)).eval()
        low_frequency_dims = [
            *range(self.head_dim // 2 - 4, self.head_dim // 2),
            *range(self.head_dim - 4, self.head_dim),
        ]
        with torch.no_grad():
            for layer in model.model.layers:
                attention = layer.self_attn
                for projection, num_heads in (
                    (attention.q_proj, self.num_attention_heads),
                    (attention.k_proj, self.num_key_value_heads),
                ):
                    projection.bias.view(num_heads, self.head_dim)[:, low_frequency_dims] = self.bias
        return model.to(device=torch_device, dtype=dtype)

    def get_input_ids(self):
        torch.manual_seed(1)
        return torch.randint(3, 128, (self.batch_size, self.seq_length), device=torch_device)


class MaskSpy:
    """Wraps the patched eager function and records, per call, the key length and the mask it received."""

    def __init__(self, function):
        self.function = function
        self.calls = []

    def __call__(self, module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        self.calls.append((key.shape[-2], attention_mask, sorted(kwargs)))
        return self.function(module, query, key, value, attention_mask, scaling, dropout, **kwargs)


@require_torch
class StableEagerAttentionMaskPathsTest(unittest.TestCase):
    """The masks and keyword arguments that reach `eager_attention_forward` on different transformers releases."""

    def setUp(self):
        stack = contextlib.ExitStack()
        stack.enter_context(overlay_state_restored())
        self.addCleanup(stack.close)
        patching.apply(["qwen2"])
        self.assertIs(modeling_qwen2.eager_attention_forward, eager_attention_forward)
        self.model_tester = Qwen2OverflowModelTester()

    def attention_inputs(self, query_length=5, key_length=7):
        torch.manual_seed(0)
        module = torch.nn.Module()
        module.num_key_value_groups = 2
        query = torch.randn(2, 4, query_length, 16, device=torch_device)
        key, value = (torch.randn(2, 2, key_length, 16, device=torch_device) for _ in range(2))
        return module.eval(), query, key, value

    def assert_finite(self, tensor):
        self.assertTrue(torch.isfinite(tensor).all(), "found NaN or inf")

    def spy_on_eager_attention(self):
        spy = MaskSpy(modeling_qwen2.eager_attention_forward)
        patcher = mock.patch.object(modeling_qwen2, "eager_attention_forward", spy)
        patcher.start()
        self.addCleanup(patcher.stop)
        return spy

    def test_mask_longer_than_keys_is_sliced_like_stock(self):
        # 4.48-4.52 make the mask `past + query + 1` columns long when no 2D mask is given, and their eager function
        # slices it to the keys (4.53+ pass masks as long as the keys and no longer slice).
        module, query, key, value = self.attention_inputs()
        mask = torch.zeros(2, 1, 5, 8, device=torch_device)
        mask[..., :7] = torch.randn(2, 1, 5, 7, device=torch_device).clamp(max=0)
        with patching.disabled():
            expected = modeling_qwen2.eager_attention_forward(module, query, key, value, mask[..., :7], scaling=0.25)

        output, weights = eager_attention_forward(module, query, key, value, mask, scaling=0.25)

        torch.testing.assert_close(output, expected[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(weights, expected[1], rtol=1e-6, atol=1e-6)

    @parameterized.expand(
        [
            ("4.48", {"output_attentions": True, "sliding_window": None, "position_ids": None, "use_cache": True}),
            ("5.x", {"sliding_window": None, "position_ids": None, "use_cache": False}),
        ]
    )
    def test_release_specific_keyword_arguments_are_ignored(self, _, kwargs):
        module, query, key, value = self.attention_inputs()
        expected = eager_attention_forward(module, query, key, value, None, scaling=0.25)

        output = eager_attention_forward(module, query, key, value, None, scaling=0.25, **kwargs)

        torch.testing.assert_close(output, expected, rtol=0, atol=0)

    @unittest.skipUnless(MASK_FROM_UPDATE_CAUSAL_MASK, "transformers>=4.53 builds masks in masking_utils")
    def test_forward_without_attention_mask_receives_longer_mask(self):
        model = self.model_tester.get_model()
        input_ids = self.model_tester.get_input_ids()
        with torch.no_grad(), patching.disabled():
            self.assertFalse(torch.isfinite(model(input_ids).logits).all(), "stock eager should overflow (P-001)")
        spy = self.spy_on_eager_attention()

        with torch.no_grad():
            logits = model(input_ids).logits
            expected = model(input_ids, attention_mask=torch.ones_like(input_ids)).logits

        key_length, mask, _ = spy.calls[0]
        self.assertEqual(mask.shape[-1], key_length + 1)
        self.assertEqual(mask.dtype, torch.float16)
        self.assert_finite(logits)
        torch.testing.assert_close(logits, expected, rtol=0, atol=0)

    def test_left_padding_additive_mask(self):
        model = self.model_tester.get_model()
        input_ids = self.model_tester.get_input_ids()
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, :5] = 0
        spy = self.spy_on_eager_attention()

        with torch.no_grad():
            padded = model(input_ids.masked_fill(attention_mask == 0, 0), attention_mask=attention_mask).logits
            alone = model(input_ids[1:, 5:]).logits

        mask = spy.calls[0][1]
        self.assertTrue(mask.is_floating_point())
        self.assertEqual(mask.min().item(), torch.finfo(torch.float16).min)
        self.assert_finite(padded)
        torch.testing.assert_close(padded[1:, 5:], alone, rtol=1e-2, atol=1e-2)

    def test_user_4d_boolean_mask_means_attend(self):
        # Every release hands a user's 4D mask to the attention function as it is; stock eager adds a boolean one as
        # 0/1, i.e. ignores it.
        model = self.model_tester.get_model()
        input_ids = self.model_tester.get_input_ids()
        length = input_ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=torch_device).tril()
        boolean_mask = causal[None, None].expand(input_ids.shape[0], 1, length, length)
        additive_mask = torch.zeros(boolean_mask.shape, dtype=torch.float16, device=torch_device)
        additive_mask = additive_mask.masked_fill(~boolean_mask, torch.finfo(torch.float16).min)
        spy = self.spy_on_eager_attention()

        with torch.no_grad():
            expected = model(input_ids).logits
            from_boolean = model(input_ids, attention_mask=boolean_mask).logits
            from_additive = model(input_ids, attention_mask=additive_mask).logits

        self.assertEqual(spy.calls[2][1].dtype, torch.bool)
        self.assert_finite(expected)
        torch.testing.assert_close(from_boolean, expected, rtol=0, atol=0)
        torch.testing.assert_close(from_additive, expected, rtol=0, atol=0)

    def test_static_cache_mask_covers_whole_cache(self):
        model = self.model_tester.get_model()
        input_ids = self.model_tester.get_input_ids()
        generation_kwargs = {"max_new_tokens": 6, "do_sample": False, "output_scores": True}
        generation_kwargs["return_dict_in_generate"] = True
        spy = self.spy_on_eager_attention()

        static = model.generate(input_ids, cache_implementation="static", **generation_kwargs)
        static_calls = list(spy.calls)
        dynamic = model.generate(input_ids, **generation_kwargs)

        for key_length, mask, _ in static_calls:
            self.assertGreaterEqual(mask.shape[-1], key_length)
        self.assertTrue(all(torch.isfinite(scores).all() for scores in static.scores))
        torch.testing.assert_close(static.sequences, dynamic.sequences, rtol=0, atol=0)

    @unittest.skipUnless(MASK_FROM_UPDATE_CAUSAL_MASK, "transformers>=4.53 does not fall back from sdpa to eager")
    def test_sdpa_output_attentions_falls_back_to_stable_eager(self):
        model = self.model_tester.get_model(attn_implementation="sdpa")
        input_ids = self.model_tester.get_input_ids()
        with torch.no_grad(), patching.disabled():
            stock = model(input_ids, output_attentions=True)
        self.assertFalse(torch.isfinite(stock.attentions[-1]).all(), "stock eager should overflow (P-001)")

        with torch.no_grad():
            outputs = model(input_ids, output_attentions=True)

        self.assert_finite(outputs.logits)
        length = input_ids.shape[1]
        for weights in outputs.attentions:
            self.assertEqual(weights.shape, (input_ids.shape[0], 28, length, length))
            self.assert_finite(weights)
            row_sums = weights.float().sum(-1)
            torch.testing.assert_close(row_sums, torch.ones_like(row_sums), rtol=0, atol=1e-2)
            self.assertTrue((weights.triu(diagonal=1) == 0).all())


if __name__ == "__main__":
    unittest.main()
