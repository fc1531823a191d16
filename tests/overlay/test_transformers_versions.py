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
import functools
import importlib
import os
import sys
import unittest
import warnings
from pathlib import Path
from unittest import mock

from parameterized import parameterized

from transformers import is_torch_available
from transformers.testing_utils import require_torch, torch_device
from transformers_overlay import _activation, patching
from transformers_overlay.known_stock_functions import COVERED_RELEASES, KNOWN_STOCK_FUNCTIONS
from transformers_overlay.model_table import MODEL_TABLE, patchable_model_types
from transformers_overlay.releases import SERIES_RELEASE
from transformers_overlay.stock_functions import is_known_stock_function, normalised_source


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


# A release newer than the newest tested one.
FUTURE_RELEASE = "5.99.0.dev0"


class TransformersVersionGateTest(unittest.TestCase):
    @parameterized.expand(
        [
            ("oldest", "4.48.0", True),
            ("series_release", SERIES_RELEASE, True),
            ("newer_than_tested", "5.99.0", True),  # patched where its functions are recognised
            ("dev_build_of_a_future_release", "5.99.0.dev0", True),
            ("before_module_level_function", "4.47.1", False),
            ("not_a_version", "main", False),
            ("not_installed", None, False),
        ]
    )
    def test_supported_range(self, _, version, supported):
        self.assertIs(patching.is_supported_transformers(version), supported)

    @parameterized.expand(
        [
            ("oldest", "4.48.0", False),
            ("series_release", SERIES_RELEASE, False),
            ("dev_build_of_the_series_release", f"{SERIES_RELEASE}.dev0", False),
            ("next_patch", "5.25.1", True),
            ("dev_build_of_a_future_release", "5.99.0.dev0", True),
            ("not_a_version", "main", False),
            ("not_installed", None, False),
        ]
    )
    def test_untested_release(self, _, version, untested):
        self.assertIs(patching.is_untested_release(version), untested)

    def test_declared_range_is_a_lower_bound_only(self):
        # pip must not downgrade a newer transformers; whether its modules are patched is decided per function.
        self.assertEqual(patching.supported_transformers(), ">=4.48")

    def test_lower_bound_without_package_metadata_is_read_from_the_checkout(self):
        # Imported from a source checkout through PYTHONPATH, without `pip install`, setup.cfg still says it; a copy
        # without metadata outside a checkout has nothing to read it from.
        from importlib import metadata

        from_checkout = (Path(patching.__file__).parents[2] / "setup.cfg").is_file()
        patching.supported_transformers.cache_clear()
        self.addCleanup(patching.supported_transformers.cache_clear)
        with mock.patch.object(metadata, "requires", side_effect=metadata.PackageNotFoundError(patching.DISTRIBUTION)):
            self.assertEqual(patching.supported_transformers(), ">=4.48" if from_checkout else None)

    def test_unsupported_release_is_left_stock_with_one_warning(self):
        fake_version = "4.47.1"
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
                status = patching.apply(force=True)  # a second attempt must not warn again, and force does not help

            self.assertFalse(status["transformers_supported"])
            for model_type, function in stock.items():
                module = sys.modules[MODEL_TABLE[model_type].module]
                self.assertIs(getattr(module, patching.PATCHED_ATTRIBUTE, None), function)
                self.assertEqual(
                    status["models"][model_type]["state"],
                    f"stock (transformers {fake_version} is outside the supported range >=4.48)",
                )
            messages = overlay_warnings(caught)
            self.assertEqual(len(messages), 1, messages)
            self.assertIn(f"transformers {fake_version} is outside the supported range", messages[0])

    def test_unsupported_release_is_reported_before_import(self):
        with mock.patch.object(patching, "transformers_version", return_value="4.47.1"), mock.patch.dict(sys.modules):
            for entry in MODEL_TABLE.values():
                sys.modules.pop(entry.module, None)
            status = patching.status()

        self.assertFalse(status["transformers_supported"])
        for model_type in MODEL_TABLE:
            self.assertEqual(
                status["models"][model_type]["state"],
                "not imported (will stay stock: transformers 4.47.1 is outside the supported range >=4.48)",
            )

    def test_untested_release_is_reported_before_import(self):
        with (
            mock.patch.object(patching, "transformers_version", return_value=FUTURE_RELEASE),
            mock.patch.object(patching, "_activation", return_value=patching.ACTIVE),
            mock.patch.dict(patching._skipped, clear=True),
            mock.patch.dict(sys.modules),
        ):
            for entry in MODEL_TABLE.values():
                sys.modules.pop(entry.module, None)
            status = patching.status()

        self.assertTrue(status["transformers_untested"])
        for model_type in MODEL_TABLE:
            self.assertEqual(
                status["models"][model_type]["state"],
                "not imported (will be patched on import if its stock function is recognised: untested release)",
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


def import_table_modules() -> dict:
    """The model table's modules that the installed transformers has, imported: model type -> module."""
    modules = {}
    for model_type, entry in MODEL_TABLE.items():
        with contextlib.suppress(ModuleNotFoundError):
            modules[model_type] = importlib.import_module(entry.module)
    return modules


@contextlib.contextmanager
def transformers_reads_as(version: str):
    """
    The imported transformers package reports `version` as its `__version__`. Set after the modeling modules are
    imported: importing a transformers submodule restores the package's own `__version__`.
    """
    import transformers

    with mock.patch.object(transformers, "__version__", version):
        yield


@require_torch
class UntestedReleaseTest(unittest.TestCase):
    """
    A transformers newer than the newest tested release (`SERIES_RELEASE`): patched where its function is a stock text
    the overlay recognises, left stock with one warning where it is not, unless forced.
    """

    def setUp(self):
        stack = contextlib.ExitStack()
        self.addCleanup(stack.close)
        self.modules = import_table_modules()
        stack.enter_context(overlay_state_restored())  # stock functions from here on, restored at the end
        stack.enter_context(mock.patch.dict(os.environ, {patching.FORCE_ENV: ""}))
        stack.enter_context(transformers_reads_as(FUTURE_RELEASE))
        _activation._warned.clear()
        # The model types whose module in the installed transformers has the function to replace.
        self.patchable = [t for t, module in self.modules.items() if hasattr(module, patching.PATCHED_ATTRIBUTE)]
        self.stock = {t: getattr(self.modules[t], patching.PATCHED_ATTRIBUTE) for t in self.patchable}
        from transformers_overlay.integrations.overlay_eager_attention import overlay_eager_attention_forward

        self.stable = overlay_eager_attention_forward

    def apply_recording_warnings(self, model_types=None, **kwargs):
        model_types = self.patchable if model_types is None else model_types
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            patching.apply(model_types, **kwargs)
            status = patching.apply(model_types, **kwargs)  # a second attempt must not warn again
        return status, overlay_warnings(caught)

    def change_qwen2_function(self):
        """Puts a function with the expected signature but another text in place of qwen2's stock function."""
        stock = self.stock["qwen2"]

        def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
            return stock(module, query, key, value, attention_mask, scaling, dropout=dropout, **kwargs)

        patcher = mock.patch.object(self.modules["qwen2"], patching.PATCHED_ATTRIBUTE, eager_attention_forward)
        patcher.start()
        self.addCleanup(patcher.stop)
        return eager_attention_forward

    def test_unchanged_functions_are_patched_and_reported_untested(self):
        status, messages = self.apply_recording_warnings()

        self.assertEqual(status["transformers"], FUTURE_RELEASE)
        self.assertTrue(status["transformers_supported"])
        self.assertTrue(status["transformers_untested"])
        self.assertEqual(status["newest_tested_transformers"], SERIES_RELEASE)
        self.assertTrue(self.patchable)
        for model_type in self.patchable:
            self.assertIs(getattr(self.modules[model_type], patching.PATCHED_ATTRIBUTE), self.stable)
            self.assertEqual(
                status["models"][model_type]["state"], "patched (untested release, stock function recognised)"
            )
        self.assertEqual(messages, [])

    def test_changed_function_is_left_stock_with_one_warning(self):
        changed = self.change_qwen2_function()

        status, messages = self.apply_recording_warnings()

        self.assertIs(self.modules["qwen2"].eager_attention_forward, changed)
        state = status["models"]["qwen2"]["state"]
        self.assertTrue(
            state.startswith("stock (its `eager_attention_forward` (transformers 5.99.0.dev0) is not"), state
        )
        self.assertEqual(len(messages), 1, messages)
        self.assertIn("transformers.models.qwen2.modeling_qwen2", messages[0])
        self.assertIn(f"set {patching.FORCE_ENV}=1 or call transformers_overlay.apply(force=True)", messages[0])
        # Nothing else changes: the other model types are patched as usual.
        for model_type in self.patchable:
            if model_type != "qwen2":
                self.assertIs(getattr(self.modules[model_type], patching.PATCHED_ATTRIBUTE), self.stable)

    @parameterized.expand([("apply_force", "apply(force=True)"), ("environment", patching.FORCE_ENV)])
    def test_force_replaces_a_changed_function(self, _, via):
        changed = self.change_qwen2_function()

        if via == patching.FORCE_ENV:
            patcher = mock.patch.dict(os.environ, {patching.FORCE_ENV: "1"})
            patcher.start()
            self.addCleanup(patcher.stop)
            status, messages = self.apply_recording_warnings(["qwen2"])
        else:
            status, messages = self.apply_recording_warnings(["qwen2"], force=True)

        self.assertIs(self.modules["qwen2"].eager_attention_forward, self.stable)
        self.assertEqual(
            status["models"]["qwen2"]["state"],
            f"patched (forced by {via}: transformers' function text is not one the overlay recognises)",
        )
        self.assertEqual(messages, [])
        with patching.disabled():  # the force survives a `disabled()` block
            self.assertIs(self.modules["qwen2"].eager_attention_forward, changed)
        self.assertIs(self.modules["qwen2"].eager_attention_forward, self.stable)
        patching.revert(["qwen2"])
        self.assertIs(self.modules["qwen2"].eager_attention_forward, changed)

    def test_signature_mismatch_is_not_forced(self):
        def eager_attention_forward(module, query, key, value, attention_mask, scaling, is_causal=True):
            return None

        with mock.patch.object(self.modules["qwen2"], patching.PATCHED_ATTRIBUTE, eager_attention_forward):
            status, _ = self.apply_recording_warnings(["qwen2"], force=True)
            self.assertIs(self.modules["qwen2"].eager_attention_forward, eager_attention_forward)
        self.assertIn("does not have the expected signature", status["models"]["qwen2"]["state"])


def qwen2_stock_function():
    """transformers' own qwen2 eager function, whether or not the overlay replaced it."""
    return patching._originals.get("qwen2", modeling_qwen2.eager_attention_forward)


class KnownStockFunctionsTest(unittest.TestCase):
    """`known_stock_functions.py`: the stock texts the overlay recognises, and how texts are compared."""

    @require_torch
    def test_installed_release_functions_are_known(self):
        modules = import_table_modules()
        patchable = [t for t in patchable_model_types(patching.transformers_version()) if t in modules]
        self.assertTrue(patchable)
        with patching.disabled():
            for model_type in patchable:
                function = getattr(modules[model_type], patching.PATCHED_ATTRIBUTE)
                self.assertTrue(is_known_stock_function(function), f"{model_type}: {function.__module__}")

    @require_torch
    def test_wrapper_of_a_stock_function_is_not_known(self):
        # `inspect.getsource` follows `__wrapped__`: a wrapper would read as the stock text it wraps.
        stock = qwen2_stock_function()

        @functools.wraps(stock)
        def wrapper(*args, **kwargs):
            return stock(*args, **kwargs)

        self.assertTrue(is_known_stock_function(stock))
        self.assertFalse(is_known_stock_function(wrapper))

    def test_covers_the_lower_bound_and_the_series_release(self):
        self.assertIn("4.48.0", COVERED_RELEASES)
        self.assertIn(SERIES_RELEASE, COVERED_RELEASES)

    def test_every_model_type_has_a_known_text(self):
        seen = {model_type for entry in KNOWN_STOCK_FUNCTIONS for model_type in entry["seen_in"]}
        self.assertEqual(seen, set(MODEL_TABLE))
        forms = [normalised_source(entry["source"]) for entry in KNOWN_STOCK_FUNCTIONS]
        self.assertEqual(len(forms), len(set(forms)), "two entries have the same normalised form")

    def test_normalised_form_ignores_docstring_annotations_and_layout_only(self):
        stock = KNOWN_STOCK_FUNCTIONS[-1]["source"]
        reformatted = (
            stock.replace("    module: nn.Module,", '    module: "nn.Module",  # annotation and comment differ')
            .replace("):\n", '):\n    """A docstring."""\n\n', 1)
            .replace("dropout: float = 0.0", "dropout: 'float' = 0.0")
        )
        self.assertNotEqual(reformatted, stock)
        self.assertEqual(normalised_source(reformatted), normalised_source(stock))
        for changed in (
            stock.replace("dim=-1", "dim=-2"),
            stock.replace("dropout: float = 0.0", "dropout: float = 0.1"),
            stock.replace("    return attn_output, attn_weights", "    return attn_output, None"),
        ):
            self.assertNotEqual(normalised_source(changed), normalised_source(stock))


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
