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
The Qwen2 family from the model table: the table agrees with the installed transformers and the package metadata, and
every model type's tiny model with 7B-like q/k biases and left-padded text is broken in float16/bfloat16 eager on stock
transformers and as close to float32 as sdpa with the overlay; `capture_attention` reads each of them.
"""

import configparser
import copy
import importlib
import inspect
import unittest
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from parameterized import parameterized

from transformers import is_torch_available
from transformers.testing_utils import require_torch, torch_device
from transformers_overlay import patching
from transformers_overlay.model_table import MODEL_TABLE, ModelEntry, patchable_model_types


if is_torch_available():
    import torch

    from transformers_overlay import capture_attention, reproduction
    from transformers_overlay.integrations.overlay_eager_attention import overlay_eager_attention_forward


REPO = Path(__file__).resolve().parents[2]
INSTALLED_TRANSFORMERS = Version(Version(metadata.version("transformers")).base_version)
# The model types whose module in the installed transformers has the function the overlay replaces, as the model table
# says (test_first_patchable_release_matches_the_installed_transformers checks the table against the modules).
PATCHABLE_MODEL_TYPES = patchable_model_types(metadata.version("transformers"))
DTYPES = ["float16", "bfloat16"]


def require_patchable(model_type):
    return unittest.skipUnless(
        model_type in PATCHABLE_MODEL_TYPES,
        f"transformers {INSTALLED_TRANSFORMERS} has no module-level eager function for {model_type} (since "
        f"{MODEL_TABLE[model_type].first_patchable_release})",
    )


class ModelTableTest(unittest.TestCase):
    def test_supported_range_is_the_one_setup_cfg_declares(self):
        setup = configparser.ConfigParser()
        setup.read(REPO / "setup.cfg")
        requirements = [Requirement(line) for line in setup["options"]["install_requires"].split("\n") if line]
        (declared,) = [requirement.specifier for requirement in requirements if requirement.name == "transformers"]

        self.assertEqual(SpecifierSet(patching.supported_transformers()), declared)

    @parameterized.expand([(model_type,) for model_type in MODEL_TABLE])
    def test_first_patchable_release_matches_the_installed_transformers(self, model_type):
        entry = MODEL_TABLE[model_type]
        try:
            module = importlib.import_module(entry.module)
        except ModuleNotFoundError:
            self.assertNotIn(model_type, PATCHABLE_MODEL_TYPES)
            return
        self.assertEqual(hasattr(module, patching.PATCHED_ATTRIBUTE), model_type in PATCHABLE_MODEL_TYPES)

    @parameterized.expand(
        [
            ("previous_patch_release", "4.52.4", False),
            ("first_release", "4.53.0", True),
            ("short_release", "4.53", True),
            ("dev_build_of_the_first_release", "4.53.0.dev0", True),
            ("numeric_not_lexical", "4.100.0", True),
            ("next_major_pre_release", "5.0.0rc1", True),
        ]
    )
    def test_patchable_in_compares_release_numbers(self, _, version, patchable):
        entry = ModelEntry(
            module="transformers.models.x.modeling_x", first_patchable_release="4.53", attention="", builder=""
        )
        self.assertIs(entry.patchable_in(version), patchable)

    def test_first_patchable_release_is_within_the_supported_range(self):
        supported = SpecifierSet(patching.supported_transformers())
        for model_type, entry in MODEL_TABLE.items():
            self.assertIn(Version(entry.first_patchable_release), supported, model_type)

    @require_torch
    @parameterized.expand([(model_type,) for model_type in MODEL_TABLE])
    def test_builder_and_inputs_exist(self, model_type):
        entry = MODEL_TABLE[model_type]
        self.assertTrue(callable(getattr(reproduction, entry.builder, None)), entry.builder)
        self.assertTrue(callable(getattr(reproduction, entry.inputs, None)), entry.inputs)

    def test_readme_lists_every_model_type(self):
        readme = (REPO / "README.md").read_text()
        for model_type, entry in MODEL_TABLE.items():
            self.assertIn(f"`{model_type}`", readme)
            self.assertIn(entry.module, readme)


def restore_overlay_state(state):
    """Puts the overlay back in `state`: (enabled, patched model types, skip reasons)."""
    patching.revert()
    enabled, originals, skipped = state
    if originals:
        patching.apply(list(originals))
    patching._enabled = enabled
    patching._skipped.clear()
    patching._skipped.update(skipped)


@require_torch
class FamilyHalfPrecisionTest(unittest.TestCase):
    """Each model type's tiny model with the overflow biases, left-padded text, float16 and bfloat16 eager."""

    @classmethod
    def setUpClass(cls):
        cls.tokenizer = reproduction.tiny_tokenizer()

    def setUp(self):
        state = (patching._enabled, dict(patching._originals), dict(patching._skipped))
        self.addCleanup(restore_overlay_state, state)

    def logits(self, model, inputs, attn_implementation, dtype):
        reproduction.set_attention_implementation(model, attn_implementation)
        return reproduction._logits(model, inputs, dtype)

    def measure(self, model_type, dtype):
        """Stock eager, overlay eager and sdpa against the float32 eager logits of the same rounded weights."""
        dtype = getattr(torch, dtype)
        entry = MODEL_TABLE[model_type]
        model = getattr(reproduction, entry.builder)(self.tokenizer, reproduction.BIAS_BY_DTYPE[dtype])
        inputs = getattr(reproduction, entry.inputs)(model, self.tokenizer)
        if model_type != "siglip":
            self.assertEqual(inputs["attention_mask"][1, 0].item(), 0, "the second row should be left-padded")
        model = model.to(device=torch_device, dtype=dtype)

        status = patching.apply([model_type])
        self.assertEqual(status["models"][model_type]["state"], "patched")
        module = importlib.import_module(entry.module)
        self.assertIs(module.eager_attention_forward, overlay_eager_attention_forward)
        with torch.no_grad():
            overlay = self.logits(model, inputs, "eager", dtype)
            sdpa = self.logits(model, inputs, "sdpa", dtype)
            with patching.disabled():
                stock = self.logits(model, inputs, "eager", dtype)
                reference = self.logits(model.float(), inputs, "eager", torch.float32)
        mask = inputs["attention_mask"]
        return {
            name: reproduction.compare_logits(reference, logits, mask)
            for name, logits in (("eager stock", stock), ("eager overlay", overlay), ("sdpa", sdpa))
        }

    @parameterized.expand([(model_type, dtype) for model_type in MODEL_TABLE for dtype in DTYPES])
    def test_overlay_is_as_close_to_float32_as_sdpa_and_stock_is_not(self, model_type, dtype):
        if model_type not in PATCHABLE_MODEL_TYPES:
            self.skipTest(f"transformers {INSTALLED_TRANSFORMERS} has no module-level eager function for {model_type}")
        measurements = self.measure(model_type, dtype)
        overlay, sdpa, stock = measurements["eager overlay"], measurements["sdpa"], measurements["eager stock"]

        self.assertFalse(overlay.non_finite)
        self.assertLessEqual(overlay.kl, reproduction.KL_FACTOR * sdpa.kl + reproduction.KL_FLOOR, measurements)
        self.assertTrue(reproduction.overlay_clears(measurements))
        # Stock eager: NaN in float16 (scores past 65504), far from float32 in bfloat16 (scores lose their precision).
        if dtype == "float16":
            self.assertTrue(stock.non_finite, measurements)
        else:
            self.assertFalse(stock.non_finite)
            self.assertGreater(stock.kl, 3 * overlay.kl, measurements)


@require_torch
class FamilyCaptureAttentionTest(unittest.TestCase):
    """`capture_attention` on each model type's tiny model (sdpa) equals float32 eager `output_attentions` weights."""

    @parameterized.expand([(model_type,) for model_type in MODEL_TABLE])
    def test_capture_matches_float32_eager_weights(self, model_type):
        if model_type not in PATCHABLE_MODEL_TYPES:
            self.skipTest(f"transformers {INSTALLED_TRANSFORMERS} has no module-level eager function for {model_type}")
        tokenizer = reproduction.tiny_tokenizer()
        entry = MODEL_TABLE[model_type]
        model = getattr(reproduction, entry.builder)(tokenizer, bias=1.0).to(torch_device)
        inputs = {
            name: value.to(torch_device)
            for name, value in getattr(reproduction, entry.inputs)(model, tokenizer).items()
        }
        reference = copy.deepcopy(model)
        reproduction.set_attention_implementation(reference, "eager")
        reproduction.set_attention_implementation(model, "sdpa")
        with torch.no_grad():
            expected = reference(**inputs, output_attentions=True).attentions
            with capture_attention(model, queries="all", heads="mean") as captured:
                model(**inputs)

        self.assertEqual(len(captured), 1)
        real = inputs["attention_mask"].bool().cpu()
        self.assertEqual(sorted(captured[0].attentions), list(range(len(expected))))
        for layer, weights in captured[0].attentions.items():
            mean = expected[layer].float().mean(dim=1, keepdim=True).cpu()
            self.assertEqual(weights.shape, mean.shape)
            torch.testing.assert_close(weights.transpose(1, 2)[real], mean.transpose(1, 2)[real], rtol=0, atol=1e-5)

    @require_patchable("qwen2_vl")
    def test_capture_follows_qwen2_vl_generation_with_an_image(self):
        # With an image, Qwen2-VL's rotary positions differ per section (temporal, height, width) and run ahead of
        # the cache slots; the capture is keyed by cache slots and recomputes from the rotated states the backend gets.
        tokenizer = reproduction.tiny_tokenizer()
        model = reproduction.tiny_qwen2_vl(tokenizer, bias=1.0).to(torch_device)
        inputs = {name: value.to(torch_device) for name, value in qwen2_vl_image_inputs(model, tokenizer).items()}
        reproduction.set_attention_implementation(model, "sdpa")

        with torch.no_grad(), capture_attention(model, queries="last", layers=[-1]) as captured:
            generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)

        self.assertEqual(len(captured), 3)
        reference = copy.deepcopy(model)
        reproduction.set_attention_implementation(reference, "eager")
        full = {
            **inputs,
            "input_ids": generated[:, :-1],
            "attention_mask": torch.ones_like(generated[:, :-1]),
        }
        if "mm_token_type_ids" in inputs:
            full["mm_token_type_ids"] = (full["input_ids"] == model.config.image_token_id).int()
        with torch.no_grad():
            expected = reference(**full, output_attentions=True).attentions[-1].float().cpu()
        length = inputs["input_ids"].shape[1]
        for step, capture in enumerate(captured):
            position = length - 1 + step
            self.assertEqual(capture.query_positions.tolist(), [position])
            torch.testing.assert_close(
                capture.attentions[1][..., 0, :], expected[:, :, position, : position + 1], rtol=0, atol=1e-5
            )


def qwen2_vl_image_inputs(model, tokenizer):
    """A 16x16 image (a 2x2 grid of merged patches) between vision start/end tokens, then text."""
    config = model.config
    vision = config.vision_config
    grid = torch.tensor([[1, 2 * vision.spatial_merge_size, 2 * vision.spatial_merge_size]])
    patch_values = 3 * vision.temporal_patch_size * vision.patch_size**2
    torch.manual_seed(0)
    pixel_values = torch.randn(int(grid.prod()), patch_values)
    image_tokens = int(grid.prod()) // vision.spatial_merge_size**2
    text = tokenizer("Describe it.", return_tensors="pt")["input_ids"][0].tolist()
    input_ids = [config.vision_start_token_id, *[config.image_token_id] * image_tokens, text[0], *text]
    input_ids = torch.tensor([input_ids])
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": pixel_values,
        "image_grid_thw": grid,
    }
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:  # transformers 5: 1 marks image tokens
        inputs["mm_token_type_ids"] = (input_ids == config.image_token_id).int()
    return inputs


if __name__ == "__main__":
    unittest.main()
