# Copyright 2025 The transformers-overlay authors.
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
"""Testing suite for `transformers_overlay.capture_attention`: captured rows are the true attention weights."""

import copy
import importlib
import itertools
import runpy
import unittest
from pathlib import Path
from unittest import mock

from parameterized import parameterized

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    is_torch_available,
)
from transformers.testing_utils import require_torch, torch_device


if is_torch_available():
    import torch

    from transformers_overlay import (
        attention_capture,
        capture_attention,
        image_token_positions,
        patching,
        reproduction,
    )


EXAMPLE_PATH = Path(__file__).resolve().parents[2] / "examples" / "capture_attention_fastv.py"
QWEN2_MODULE = "transformers.models.qwen2.modeling_qwen2"


def left_padded_position_ids(attention_mask):
    """Position ids as `generate` builds them for a left-padded batch."""
    return (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)


def eager_reference_attentions(model, **inputs):
    """Float32 eager `output_attentions=True` weights of every decoder layer of a copy of `model`."""
    reference = copy.deepcopy(model).float()
    reproduction.set_attention_implementation(reference, "eager")
    if "pixel_values" in inputs:
        inputs = {**inputs, "pixel_values": inputs["pixel_values"].float()}
    with torch.no_grad():
        return [weights.float() for weights in reference(**inputs, output_attentions=True).attentions]


def select_attention(weights, query_positions, heads=None, keys=None):
    """The slice of full `(batch, heads, q_len, kv_len)` weights that a capture with these arguments keeps."""
    weights = weights[:, :, list(query_positions)]
    if heads == "mean":
        weights = weights.mean(dim=1, keepdim=True)
    elif heads == "max":
        weights = weights.amax(dim=1, keepdim=True)
    elif heads is not None:
        weights = weights[:, list(heads)]
    if keys is None:
        return weights
    keys = torch.as_tensor(keys, device=weights.device)
    if keys.dtype == torch.bool:
        keys = keys.nonzero()[:, -1].view(*keys.shape[:-1], -1)
    if keys.dim() == 1:
        return weights[..., keys]
    return weights.gather(-1, keys[:, None, None, :].expand(*weights.shape[:-1], keys.shape[-1]))


def assert_close_on_real_queries(actual, expected, query_positions, num_padding, **tolerances):
    """Compares query rows that are real tokens; row `b`'s first `num_padding[b]` positions are padding."""
    real = torch.as_tensor(list(query_positions))[None, :] >= torch.as_tensor(num_padding)[:, None]
    torch.testing.assert_close(actual.transpose(1, 2)[real], expected.transpose(1, 2)[real], **tolerances)


def attention_function_snapshot():
    """Every attention function a Qwen2 attention layer can call, by identity, with the interface's own overrides."""
    module = importlib.import_module(QWEN2_MODULE)
    interface = module.ALL_ATTENTION_FUNCTIONS
    return (
        module.eager_attention_forward,
        {name: interface[name] for name in list(interface.keys())},
        dict(getattr(interface, "_local_mapping", {})),
    )


def assert_same_functions(test, snapshot, other):
    test.assertIs(snapshot[0], other[0])
    test.assertEqual(snapshot[1].keys(), other[1].keys())
    for name, function in snapshot[1].items():
        test.assertIs(function, other[1][name], name)
    test.assertEqual(snapshot[2], other[2])


class Qwen2CaptureTester:
    def __init__(
        self,
        batch_size=2,
        seq_length=11,
        num_padding=(3, 0),
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    ):
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.num_padding = num_padding
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings

    def get_config(self):
        return Qwen2Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            pad_token_id=0,
        )

    def get_model(self, attn_implementation="sdpa"):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(self.get_config()).to(torch_device).eval()
        reproduction.set_attention_implementation(model, attn_implementation)
        return model

    def prepare_inputs(self):
        generator = torch.Generator().manual_seed(1)
        input_ids = torch.randint(3, self.vocab_size, (self.batch_size, self.seq_length), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        for row, num_padding in enumerate(self.num_padding):
            attention_mask[row, :num_padding] = 0
            input_ids[row, :num_padding] = 0
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": left_padded_position_ids(attention_mask),
        }
        return {name: tensor.to(torch_device) for name, tensor in inputs.items()}


# (queries, the positions they select in one forward over 11 tokens)
QUERY_CASES = [
    ("last", [10]),
    ("all", list(range(11))),
    (5, [5]),
    (-2, [9]),
    (slice(4, 9), [4, 5, 6, 7, 8]),
    (slice(1, None, 4), [1, 5, 9]),
    ([2, 7, -1], [2, 7, 10]),
    (torch.tensor([i % 3 == 0 for i in range(11)]), [0, 3, 6, 9]),
]
HEAD_CASES = [None, "mean", "max", [1, 3]]


@require_torch
class CaptureAttentionQwen2Test(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model_tester = Qwen2CaptureTester()
        cls.inputs = cls.model_tester.prepare_inputs()
        cls.models = {name: cls.model_tester.get_model(name) for name in ("sdpa", "eager")}
        cls.reference = eager_reference_attentions(cls.models["sdpa"], **cls.inputs)

    def capture(self, attn_implementation="sdpa", **kwargs):
        with torch.no_grad(), capture_attention(self.models[attn_implementation], **kwargs) as captured:
            self.models[attn_implementation](**self.inputs)
        return captured

    @parameterized.expand(
        [
            (implementation, queries, positions, heads)
            for implementation, (queries, positions), heads in itertools.product(
                ("sdpa", "eager"), QUERY_CASES, HEAD_CASES
            )
        ]
    )
    def test_captured_rows_match_float32_eager_weights(self, implementation, queries, positions, heads):
        captured = self.capture(implementation, queries=queries, heads=heads)

        self.assertEqual(len(captured), 1)
        step = captured[0]
        self.assertEqual(step.query_positions.tolist(), positions)
        self.assertEqual(step.key_positions.tolist(), list(range(self.model_tester.seq_length)))
        self.assertEqual(sorted(step.attentions), list(range(self.model_tester.num_hidden_layers)))
        for layer, weights in step.attentions.items():
            self.assertEqual(weights.dtype, torch.float32)
            self.assertEqual(weights.device, torch.device("cpu"))
            expected = select_attention(self.reference[layer], positions, heads)
            self.assertEqual(weights.shape, expected.shape)
            assert_close_on_real_queries(
                weights, expected.cpu(), positions, self.model_tester.num_padding, rtol=0, atol=1e-5
            )

    @parameterized.expand(
        [
            ("indices", [0, 4, 10], [0, 4, 10]),
            ("mask", torch.tensor([False, True] * 5 + [True]), [1, 3, 5, 7, 9, 10]),
            ("past_the_end", [3, 50], [3]),
            ("per_row", torch.tensor([[3, 5, 9], [0, 1, 2]]), [[3, 5, 9], [0, 1, 2]]),
            ("per_row_mask", (torch.arange(11)[None, :] - torch.tensor([[1], [2]])) % 4 == 0, [[1, 5, 9], [2, 6, 10]]),
        ]
    )
    def test_key_selection(self, _, keys, key_positions):
        captured = self.capture(layers=[0, 2], queries="all", heads="mean", keys=keys)

        step = captured[0]
        self.assertEqual(step.key_positions.tolist(), key_positions)
        self.assertEqual(sorted(step.attentions), [0, 2])
        for layer, weights in step.attentions.items():
            expected = select_attention(self.reference[layer], range(11), "mean", key_positions)
            assert_close_on_real_queries(weights, expected.cpu(), range(11), (3, 0), rtol=0, atol=1e-5)

    @parameterized.expand([("sdpa",), ("eager",)])
    def test_scores_held_in_blocks_of_rows(self, implementation):
        # 4 heads x 11 keys x 3 rows per block: the 11 rows of each layer are computed in 4 blocks
        with mock.patch.object(attention_capture, "_MAX_SCORE_ELEMENTS", 2 * 4 * 11 * 3):
            captured = self.capture(implementation, queries="all", keys=[0, 2, 3, 9])

        for layer, weights in captured[0].attentions.items():
            expected = select_attention(self.reference[layer], range(11), None, [0, 2, 3, 9])
            assert_close_on_real_queries(weights, expected.cpu(), range(11), (3, 0), rtol=0, atol=1e-5)

    def test_layer_selection_and_device(self):
        captured = self.capture(layers=-1, to=None)

        self.assertEqual(list(captured[0].attentions), [self.model_tester.num_hidden_layers - 1])
        self.assertEqual(captured[0].attentions[2].device.type, torch.device(torch_device).type)

    @parameterized.expand([("sdpa",), ("eager",)])
    def test_model_outputs_unchanged(self, implementation):
        model = self.models[implementation]
        with torch.no_grad():
            expected = model(**self.inputs).logits
            with capture_attention(model, queries="all"):
                logits = model(**self.inputs).logits

        torch.testing.assert_close(logits, expected, rtol=0, atol=0)

    def test_generate_captures_one_step_per_token(self):
        model = self.models["sdpa"]
        generate_kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
        inputs = {name: self.inputs[name] for name in ("input_ids", "attention_mask")}
        with torch.no_grad():
            expected_sequences = model.generate(**inputs, **generate_kwargs)
            with capture_attention(model, queries="last") as captured:
                sequences = model.generate(**inputs, **generate_kwargs)

        torch.testing.assert_close(sequences, expected_sequences, rtol=0, atol=0)
        prompt_length = self.model_tester.seq_length
        self.assertEqual([step.query_positions.tolist() for step in captured], [[10], [11], [12], [13]])
        for step, position in zip(captured, range(prompt_length - 1, prompt_length + 3)):
            self.assertEqual(step.key_positions.tolist(), list(range(position + 1)))

        # One forward over the whole generated sequence gives every step's row at once.
        attention_mask = torch.cat([inputs["attention_mask"], torch.ones_like(sequences[:, prompt_length:])], dim=-1)
        reference = eager_reference_attentions(
            model,
            input_ids=sequences[:, :-1],
            attention_mask=attention_mask[:, :-1],
            position_ids=left_padded_position_ids(attention_mask[:, :-1]),
        )
        for step in captured:
            position = step.query_positions.item()
            for layer, weights in step.attentions.items():
                expected = reference[layer][:, :, [position], : position + 1]
                torch.testing.assert_close(weights, expected.cpu(), rtol=0, atol=1e-5)

    def test_generate_selects_absolute_positions(self):
        model = self.models["sdpa"]
        inputs = {name: self.inputs[name] for name in ("input_ids", "attention_mask")}
        with torch.no_grad(), capture_attention(model, layers=0, queries=[3, 12]) as captured:
            model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0)

        self.assertEqual([step.query_positions.tolist() for step in captured], [[3], [12]])
        self.assertEqual([step.key_positions.shape[-1] for step in captured], [11, 13])

    def test_attention_functions_restored_on_exit(self):
        before = attention_function_snapshot()
        with capture_attention(self.models["sdpa"], layers=0):
            self.assertIsNot(importlib.import_module(QWEN2_MODULE).eager_attention_forward, before[0])
        assert_same_functions(self, before, attention_function_snapshot())

    def test_attention_functions_restored_on_exception(self):
        before = attention_function_snapshot()
        with self.assertRaisesRegex(RuntimeError, "inside the block"):
            with capture_attention(self.models["eager"], heads="max"):
                raise RuntimeError("inside the block")
        assert_same_functions(self, before, attention_function_snapshot())

    def test_nested_captures(self):
        before = attention_function_snapshot()
        with torch.no_grad():
            with capture_attention(self.models["sdpa"], layers=0) as outer:
                with capture_attention(self.models["sdpa"], layers=1, heads="mean") as inner:
                    self.models["sdpa"](**self.inputs)
                self.models["sdpa"](**self.inputs)

        self.assertEqual([list(step.attentions) for step in outer], [[0], [0]])
        self.assertEqual([list(step.attentions) for step in inner], [[1]])
        assert_same_functions(self, before, attention_function_snapshot())

    @parameterized.expand(
        [
            ("layer_out_of_range", {"layers": 3}),
            ("no_layers", {"layers": []}),
            ("boolean_layer", {"layers": True}),
            ("unknown_reduction", {"heads": "sum"}),
            ("head_out_of_range", {"heads": [1, 4]}),
            ("unknown_queries", {"queries": "first"}),
            ("no_queries", {"queries": None}),
            ("float_queries", {"queries": 1.5}),
            ("two_dimensional_queries", {"queries": torch.tensor([[1, 2]])}),
            ("non_positive_slice_step", {"queries": slice(None, None, -1)}),
            ("negative_keys", {"keys": [-1]}),
            ("empty_keys", {"keys": []}),
            ("ragged_key_mask", {"keys": torch.tensor([[True, True], [True, False]])}),
        ]
    )
    def test_invalid_arguments_raise_and_change_nothing(self, _, kwargs):
        before = attention_function_snapshot()
        with self.assertRaises(ValueError):
            with capture_attention(self.models["sdpa"], **kwargs):
                pass
        assert_same_functions(self, before, attention_function_snapshot())

    def test_per_row_keys_must_fit_the_batch(self):
        before = attention_function_snapshot()
        with self.assertRaisesRegex(ValueError, "per-row `keys`"):
            self.capture(keys=torch.tensor([[1, 2], [3, 4], [5, 6]]))
        assert_same_functions(self, before, attention_function_snapshot())


@require_torch
class CaptureAttentionPaddingMaskBackendTest(unittest.TestCase):
    """A backend that, like flash attention, receives a 2-D padding mask (or none) and applies causality itself."""

    implementation = "capture_test_padding_mask"

    @staticmethod
    def padding_mask_attention_forward(module, query, key, value, attention_mask, **kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        query_length, key_length = query.shape[2], key.shape[2]
        causal = torch.ones(query_length, key_length, dtype=torch.bool, device=query.device)
        mask = causal.tril(key_length - query_length)[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, -key_length:]
        return sdpa_attention_forward(module, query, key, value, mask, **kwargs)

    def setUp(self):
        try:
            from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
            from transformers.modeling_utils import AttentionInterface
        except ImportError:
            self.skipTest("transformers < 4.53 has no attention mask interface to register a backend with")
        AttentionInterface.register(self.implementation, self.padding_mask_attention_forward)
        AttentionMaskInterface.register(self.implementation, flash_attention_mask)
        self.addCleanup(AttentionInterface._global_mapping.pop, self.implementation)
        self.addCleanup(AttentionMaskInterface._global_mapping.pop, self.implementation)

    def test_two_dimensional_padding_mask_all_rows_in_blocks(self):
        model_tester = Qwen2CaptureTester()
        model = model_tester.get_model(self.implementation)
        inputs = model_tester.prepare_inputs()
        with mock.patch.object(attention_capture, "_MAX_SCORE_ELEMENTS", 2 * 4 * 11 * 3):
            with torch.no_grad(), capture_attention(model, queries="all", heads=[0, 3]) as captured:
                model(**inputs)

        reference = eager_reference_attentions(model, **inputs)
        for layer, weights in captured[0].attentions.items():
            expected = select_attention(reference[layer], range(11), [0, 3])
            assert_close_on_real_queries(weights, expected.cpu(), range(11), (3, 0), rtol=0, atol=1e-5)

    def test_two_dimensional_padding_mask(self):
        model_tester = Qwen2CaptureTester()
        model = model_tester.get_model(self.implementation)
        inputs = model_tester.prepare_inputs()
        inputs = {name: inputs[name] for name in ("input_ids", "attention_mask")}
        with torch.no_grad(), capture_attention(model, queries="last") as captured:
            sequences = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=0)

        attention_mask = torch.cat([inputs["attention_mask"], torch.ones_like(sequences[:, 11:])], dim=-1)[:, :-1]
        reference = eager_reference_attentions(
            model,
            input_ids=sequences[:, :-1],
            attention_mask=attention_mask,
            position_ids=left_padded_position_ids(attention_mask),
        )
        self.assertEqual(len(captured), 3)
        for step in captured:
            position = step.query_positions.item()
            for layer, weights in step.attentions.items():
                expected = reference[layer][:, :, [position], : position + 1]
                torch.testing.assert_close(weights, expected.cpu(), rtol=0, atol=1e-5)


@require_torch
class CaptureAttentionHalfPrecisionTest(unittest.TestCase):
    """P-001's tiny Qwen2 (q/k biases that overflow float16 scores) in float16/bfloat16."""

    bias = 120.0

    def setUp(self):
        if patching.status()["models"]["qwen2"]["state"] != "patched":
            patching.apply(["qwen2"])
            self.addCleanup(patching.revert, ["qwen2"])
        torch.manual_seed(0)
        self.model = Qwen2ForCausalLM(reproduction.tiny_qwen2_config(vocab_size=99)).to(torch_device).eval()
        reproduction.add_overflow_biases_(self.model, self.bias)
        self.input_ids = torch.randint(3, 99, (1, 24), generator=torch.Generator().manual_seed(1)).to(torch_device)

    def half_precision_run(self, dtype, implementation):
        model = copy.deepcopy(self.model).to(dtype)
        reproduction.set_attention_implementation(model, implementation)
        with torch.no_grad(), capture_attention(model, queries="all") as captured:
            outputs = model(input_ids=self.input_ids, output_attentions=implementation == "eager")
        return captured[0].attentions, outputs.attentions

    @parameterized.expand([(torch.float16,), (torch.bfloat16,)])
    def test_equals_the_overlay_eager_weights_before_their_cast(self, dtype):
        captured, eager_weights = self.half_precision_run(dtype, "eager")

        for layer, weights in captured.items():
            self.assertTrue(torch.isfinite(weights).all())
            expected = eager_weights[layer].float().cpu()
            torch.testing.assert_close(weights, expected, rtol=0, atol=torch.finfo(dtype).eps)

    @parameterized.expand([(torch.float16,), (torch.bfloat16,)])
    def test_sdpa_capture_as_accurate_as_eager_in_the_same_dtype(self, dtype):
        reference = eager_reference_attentions(copy.deepcopy(self.model).to(dtype), input_ids=self.input_ids)
        captured, _ = self.half_precision_run(dtype, "sdpa")
        _, eager_weights = self.half_precision_run(dtype, "eager")

        for layer, weights in captured.items():
            self.assertTrue(torch.isfinite(weights).all())
            capture_error = (weights - reference[layer].cpu()).abs().max()
            eager_error = (eager_weights[layer].float() - reference[layer]).abs().max().cpu()
            self.assertLessEqual(capture_error, eager_error + torch.finfo(dtype).eps)


class LlavaOnevisionCaptureTester:
    def __init__(self, batch_size=2, num_padding=(2, 0), num_image_tokens=10, text_length=7, num_hidden_layers=3):
        self.batch_size = batch_size
        self.num_padding = num_padding
        self.num_image_tokens = num_image_tokens  # what the vision config below produces for one 45x45 image
        self.text_length = text_length
        self.num_hidden_layers = num_hidden_layers
        self.seq_length = max(num_padding) + num_image_tokens + text_length
        self.image_token_index = 1

    def get_config(self):
        text_config = {
            "model_type": "qwen2",
            "vocab_size": 99,
            "hidden_size": 32,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 37,
            "max_position_embeddings": 580,
            "pad_token_id": 0,
        }
        vision_config = {
            "image_size": 16,
            "patch_size": 8,
            "num_channels": 3,
            "hidden_size": 32,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 37,
        }
        return LlavaOnevisionConfig(
            text_config=text_config,
            vision_config=vision_config,
            image_token_index=self.image_token_index,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=[[16, 16]],
        )

    def get_model(self, attn_implementation="sdpa"):
        torch.manual_seed(0)
        model = LlavaOnevisionForConditionalGeneration(self.get_config()).to(torch_device).eval()
        reproduction.set_attention_implementation(model, attn_implementation)
        return model

    def image_positions(self):
        return torch.tensor([[padding + 1 + i for i in range(self.num_image_tokens)] for padding in self.num_padding])

    def prepare_inputs(self):
        generator = torch.Generator().manual_seed(1)
        input_ids = torch.randint(3, 99, (self.batch_size, self.seq_length), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        for row, (padding, positions) in enumerate(zip(self.num_padding, self.image_positions())):
            input_ids[row, :padding] = 0
            attention_mask[row, :padding] = 0
            input_ids[row, positions] = self.image_token_index
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.randn(self.batch_size, 3, 3, 16, 16, generator=generator),
            "image_sizes": torch.tensor([[45, 45]] * self.batch_size),
        }
        return {name: tensor.to(torch_device) for name, tensor in inputs.items()}


@require_torch
class CaptureAttentionLlavaOnevisionTest(unittest.TestCase):
    def setUp(self):
        self.model_tester = LlavaOnevisionCaptureTester()
        self.inputs = self.model_tester.prepare_inputs()

    def test_image_token_positions(self):
        positions = image_token_positions(self.inputs["input_ids"], self.model_tester.get_config())

        self.assertEqual(positions.tolist(), self.model_tester.image_positions().tolist())

    def test_image_token_positions_needs_equal_counts(self):
        input_ids = self.inputs["input_ids"].clone()
        input_ids[0, -1] = self.model_tester.image_token_index
        with self.assertRaisesRegex(ValueError, "same, non-zero number of image tokens"):
            image_token_positions(input_ids, self.model_tester.get_config())

    @parameterized.expand([("sdpa",), ("eager",)])
    def test_image_token_scores_match_float32_eager_weights(self, implementation):
        model = self.model_tester.get_model(implementation)
        keys = image_token_positions(self.inputs["input_ids"], model)
        with torch.no_grad():
            expected_logits = model(**self.inputs).logits
            with capture_attention(model, layers=[1, 2], queries="last", heads="mean", keys=keys) as captured:
                logits = model(**self.inputs).logits

        torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
        reference = eager_reference_attentions(model, **self.inputs)
        step = captured[0]
        self.assertEqual(step.key_positions.tolist(), keys.tolist())
        for layer in (1, 2):
            expected = select_attention(reference[layer], [self.model_tester.seq_length - 1], "mean", keys)
            self.assertEqual(step.attentions[layer].shape, (2, 1, 1, self.model_tester.num_image_tokens))
            torch.testing.assert_close(step.attentions[layer], expected.cpu(), rtol=0, atol=1e-5)

    def test_generate_scores_image_tokens_at_every_step(self):
        model = self.model_tester.get_model("sdpa")
        keys = image_token_positions(self.inputs["input_ids"], model)
        # a generated image token would make the reference forward expect another image
        image_token = self.model_tester.image_token_index
        generate_kwargs = {
            "max_new_tokens": 3,
            "do_sample": False,
            "pad_token_id": 0,
            "suppress_tokens": [image_token],
        }
        with torch.no_grad(), capture_attention(model, layers=1, heads="mean", keys=keys) as captured:
            sequences = model.generate(**self.inputs, **generate_kwargs)

        prompt_length = self.model_tester.seq_length
        attention_mask = torch.cat(
            [self.inputs["attention_mask"], torch.ones_like(sequences[:, prompt_length:])], dim=-1
        )[:, :-1]
        inputs = {**self.inputs, "input_ids": sequences[:, :-1], "attention_mask": attention_mask}
        reference = eager_reference_attentions(model, **inputs, position_ids=left_padded_position_ids(attention_mask))
        self.assertEqual([step.query_positions.tolist() for step in captured], [[18], [19], [20]])
        for step in captured:
            expected = select_attention(reference[1], step.query_positions.tolist(), "mean", keys)
            torch.testing.assert_close(step.attentions[1], expected.cpu(), rtol=0, atol=1e-5)

    def test_fastv_example(self):
        example = runpy.run_path(str(EXAMPLE_PATH))
        model = self.model_tester.get_model("sdpa")

        scores, positions = example["fastv_image_scores"](model, self.inputs, layer=1)

        reference = eager_reference_attentions(model, **self.inputs)
        expected = select_attention(reference[1], [self.model_tester.seq_length - 1], "mean", positions)[:, 0, 0]
        torch.testing.assert_close(scores, expected.cpu(), rtol=0, atol=1e-5)
        float16_scores, kept = example["main"]()
        self.assertTrue(torch.isfinite(float16_scores).all())
        self.assertEqual(kept.shape[-1], float16_scores.shape[-1] // 2)


if __name__ == "__main__":
    unittest.main()
