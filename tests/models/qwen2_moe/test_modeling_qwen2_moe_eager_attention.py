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
"""Testing suite for Qwen2-MoE's eager attention in float16/bfloat16 with Qwen2's large q/k biases."""

import copy
import unittest

from transformers import Qwen2MoeConfig, is_torch_available
from transformers.testing_utils import require_torch, torch_device


if is_torch_available():
    import torch

    from transformers import Qwen2MoeForCausalLM


class Qwen2MoeEagerAttentionTester:
    def __init__(self, parent, batch_size=2, seq_length=12, vocab_size=99, hidden_size=32, qk_bias=200.0):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        # on the lowest-frequency rotary dims, where RoPE barely rotates: `query @ key^T` grows as 2 * qk_bias**2
        self.qk_bias = qk_bias

    def get_config(self):
        return Qwen2MoeConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=37,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            qkv_bias=True,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            rope_theta=1000000.0,
        )

    def prepare_inputs(self):
        input_ids = torch.randint(1, self.vocab_size, (self.batch_size, self.seq_length), device=torch_device)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[0, :3] = 0  # left padding
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def get_model(self):
        torch.manual_seed(0)
        model = Qwen2MoeForCausalLM(self.get_config()).to(torch_device).eval()
        with torch.no_grad():
            for layer in model.model.layers:
                for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    bias = projection.bias.view(-1, layer.self_attn.head_dim)
                    bias[:, [bias.shape[-1] // 2 - 1, -1]] = self.qk_bias
        return model


@require_torch
class Qwen2MoeEagerAttentionTest(unittest.TestCase):
    def setUp(self):
        self.model_tester = Qwen2MoeEagerAttentionTester(self)

    def run_model(self, model, dtype, attn_implementation, inputs):
        model = copy.deepcopy(model).to(dtype)
        model.set_attn_implementation(attn_implementation)
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
        model = self.model_tester.get_model()
        # the reference is the float32 model with the same weights rounded to `dtype`
        reference = self.run_model(model.to(dtype).float(), torch.float32, "eager", inputs)
        eager = self.run_model(model, dtype, "eager", inputs)
        sdpa = self.run_model(model, dtype, "sdpa", inputs)

        valid = inputs["attention_mask"].bool()
        self.assertTrue(torch.isfinite(eager.logits[valid]).all())
        eager_error = (eager.logits.float() - reference.logits)[valid].abs().max()
        sdpa_error = (sdpa.logits.float() - reference.logits)[valid].abs().max()
        self.assertLessEqual(eager_error.item(), 1.5 * sdpa_error.item() + 1e-3)

        # `output_attentions=True`: finite probabilities in the model dtype (q and k themselves are stored in half
        # precision, so the weights cannot match the float32 model more closely than sdpa's output does)
        for weights in eager.attentions:
            self.assertEqual(weights.dtype, dtype)
            self.assertTrue(torch.isfinite(weights).all())
            row_sums = weights.float().sum(-1)[valid[:, None, :].expand(-1, weights.shape[1], -1)]
            torch.testing.assert_close(row_sums, torch.ones_like(row_sums), atol=2e-2, rtol=0)

    def test_eager_float32_matches_sdpa(self):
        model_tester = Qwen2MoeEagerAttentionTester(self, qk_bias=1.0)
        inputs = model_tester.prepare_inputs()
        model = model_tester.get_model()
        eager = self.run_model(model, torch.float32, "eager", inputs)
        sdpa = self.run_model(model, torch.float32, "sdpa", inputs)
        valid = inputs["attention_mask"].bool()
        torch.testing.assert_close(eager.logits[valid], sdpa.logits[valid], atol=1e-4, rtol=1e-4)
