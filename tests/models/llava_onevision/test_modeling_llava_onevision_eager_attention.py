# Copyright 2026 The HuggingFace Team. All rights reserved.
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
"""Testing suite for LLaVA-OneVision's eager attention in float16/bfloat16 with its Qwen2 text model's large q/k biases."""

import copy
import unittest

from transformers import LlavaOnevisionConfig, is_torch_available
from transformers.testing_utils import require_torch, torch_device


if is_torch_available():
    import torch

    from transformers import LlavaOnevisionForConditionalGeneration


class LlavaOnevisionEagerAttentionTester:
    def __init__(
        self, parent, batch_size=2, text_length=7, vocab_size=99, hidden_size=32, qk_bias=200.0, image_token_index=1
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        # on the lowest-frequency rotary dims of the text model, where RoPE barely rotates: `query @ key^T` grows as
        # 2 * qk_bias**2; the SigLIP vision tower keeps small scores
        self.qk_bias = qk_bias
        self.image_token_index = image_token_index
        # what the vision config below produces for one 45x45 image: base image and one tile of 2x2 patches each
        self.num_image_tokens = 10
        self.num_padding = 3
        self.seq_length = self.num_padding + self.num_image_tokens + text_length

    def get_config(self):
        text_config = {
            "model_type": "qwen2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "rope_theta": 1000000.0,
            "pad_token_id": 0,
        }
        vision_config = {
            "image_size": 16,
            "patch_size": 8,
            "num_channels": 3,
            "hidden_size": 32,
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

    def prepare_inputs(self):
        input_ids = torch.randint(2, self.vocab_size, (self.batch_size, self.seq_length), device=torch_device)
        image_positions = slice(self.num_padding, self.num_padding + self.num_image_tokens)
        input_ids[:, image_positions] = self.image_token_index
        attention_mask = torch.ones_like(input_ids)
        input_ids[0, : self.num_padding] = 0
        attention_mask[0, : self.num_padding] = 0  # left padding
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.randn(self.batch_size, 3, 3, 16, 16, device=torch_device),
            "image_sizes": torch.tensor([[45, 45]] * self.batch_size, device=torch_device),
        }

    def get_model(self):
        torch.manual_seed(0)
        model = LlavaOnevisionForConditionalGeneration(self.get_config()).to(torch_device).eval()
        with torch.no_grad():
            for layer in model.model.language_model.layers:
                for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    bias = projection.bias.view(-1, layer.self_attn.head_dim)
                    bias[:, [bias.shape[-1] // 2 - 1, -1]] = self.qk_bias
        return model


@require_torch
class LlavaOnevisionEagerAttentionTest(unittest.TestCase):
    def setUp(self):
        self.model_tester = LlavaOnevisionEagerAttentionTester(self)

    def run_model(self, model, dtype, attn_implementation, inputs):
        model = copy.deepcopy(model).to(dtype)
        model.set_attn_implementation(attn_implementation)
        inputs = {name: value.to(dtype) if value.is_floating_point() else value for name, value in inputs.items()}
        with torch.no_grad():
            return model(**inputs, output_attentions=attn_implementation == "eager")

    def test_overflow_eager_float16_as_close_to_float32_as_sdpa(self):
        self.check_eager_as_close_to_float32_as_sdpa(torch.float16)

    def test_eager_bfloat16_as_close_to_float32_as_sdpa(self):
        # no overflow in bfloat16, but the scores lose precision when computed in it
        self.check_eager_as_close_to_float32_as_sdpa(torch.bfloat16)

    def check_eager_as_close_to_float32_as_sdpa(self, dtype):
        torch.manual_seed(0)
        inputs = self.model_tester.prepare_inputs()
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype).float()
        model = self.model_tester.get_model()
        # the reference is the float32 model with the same weights and image rounded to `dtype`
        reference = self.run_model(model.to(dtype).float(), torch.float32, "eager", inputs)
        eager = self.run_model(model, dtype, "eager", inputs)
        sdpa = self.run_model(model, dtype, "sdpa", inputs)

        valid = inputs["attention_mask"].bool()
        self.assertTrue(torch.isfinite(eager.logits[valid]).all())
        eager_error = (eager.logits.float() - reference.logits)[valid].abs().max()
        sdpa_error = (sdpa.logits.float() - reference.logits)[valid].abs().max()
        self.assertLessEqual(eager_error.item(), 1.5 * sdpa_error.item() + 1e-3)

        # `output_attentions=True` (the text model's weights): finite probabilities in the model dtype, with weight on
        # the image tokens (q and k themselves are stored in half precision, so the weights cannot match the float32
        # model more closely than sdpa's output does)
        is_image = inputs["input_ids"] == self.model_tester.image_token_index
        for weights in eager.attentions:
            self.assertEqual(weights.dtype, dtype)
            self.assertTrue(torch.isfinite(weights).all())
            row_sums = weights.float().sum(-1)[valid[:, None, :].expand(-1, weights.shape[1], -1)]
            torch.testing.assert_close(row_sums, torch.ones_like(row_sums), atol=2e-2, rtol=0)
            last_row_on_image = weights[:, :, -1].float().masked_fill(~is_image[:, None], 0).sum(-1)
            self.assertTrue((last_row_on_image > 0).all())

    def test_eager_float32_matches_sdpa(self):
        model_tester = LlavaOnevisionEagerAttentionTester(self, qk_bias=1.0)
        inputs = model_tester.prepare_inputs()
        model = model_tester.get_model()
        eager = self.run_model(model, torch.float32, "eager", inputs)
        sdpa = self.run_model(model, torch.float32, "sdpa", inputs)
        valid = inputs["attention_mask"].bool()
        torch.testing.assert_close(eager.logits[valid], sdpa.logits[valid], atol=1e-4, rtol=1e-4)
