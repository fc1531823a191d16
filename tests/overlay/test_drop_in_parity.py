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
"""
Drop-in parity: what stock eager attention supports keeps working with the overlay installed (attention weights in the
autograd graph, `torch.compile(fullgraph=True)`, `torch.export`, float32 scores under autocast, gradient
checkpointing), checked on a tiny Qwen2 with the overlay applied and, as the control, with stock transformers.
"""

import contextlib
import unittest

from packaging.version import Version
from parameterized import parameterized

from transformers import is_torch_available
from transformers.testing_utils import require_torch, torch_device


if is_torch_available():
    import torch

    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers_overlay import patching
    from transformers_overlay.integrations import overlay_eager_attention
    from transformers_overlay.integrations.overlay_eager_attention import overlay_eager_attention_forward
    from transformers_overlay.integrations.stable_eager_attention import eager_attention_forward
    from transformers_overlay.reproduction import add_overflow_biases_

# Large enough to overflow float16 scores on the biased rotary dims (8 dims * 120² > 65504).
OVERFLOW_BIAS = 120.0


def tiny_qwen2(bias=0.0, seed=0):
    """A 2-layer float32 Qwen2 with 4 query / 2 key-value heads of 32, eager attention, no cache."""
    config = Qwen2Config(
        vocab_size=99,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        use_cache=False,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    if bias:
        add_overflow_biases_(model, bias)
    return model.to(torch_device).eval()


def attention_implementation(name):
    """The overlay applied (`"overlay"`) or stock transformers (`"stock"`) for the block."""
    if name == "stock":
        return patching.disabled()
    patching.apply("qwen2")
    return contextlib.nullcontext()


@require_torch
class DropInParityTest(unittest.TestCase):
    def setUp(self):
        self.input_ids = torch.tensor([[5, 17, 42, 8, 93, 61, 2, 7, 33, 71, 12, 50]], device=torch_device)

    def tearDown(self):
        patching.apply("qwen2")  # leave the overlay as the import hook would

    @parameterized.expand([("overlay",), ("stock",)])
    def test_attention_weights_are_in_the_autograd_graph(self, implementation):
        # As upstream's `test_retain_grad_hidden_states_attentions`.
        model = tiny_qwen2()
        with attention_implementation(implementation):
            outputs = model(self.input_ids, output_attentions=True)
            attentions = outputs.attentions[0]
            attentions.retain_grad()
            outputs.logits.flatten()[0].backward()

        self.assertIsNotNone(attentions.grad)
        self.assertGreater(attentions.grad.abs().sum().item(), 0.0)

    def test_weights_are_what_the_output_is_computed_from(self):
        query, key, value = (
            torch.randn(1, heads, 6, 16, device=torch_device, requires_grad=True) for heads in (4, 2, 2)
        )
        module = torch.nn.Module()
        module.num_key_value_groups = 2
        output, weights = overlay_eager_attention_forward(module.eval(), query, key, value, None, 0.25)
        weights.retain_grad()
        output.sum().backward()

        expected_grad = value.detach().repeat_interleave(2, dim=1).sum(-1)[:, :, None, :].expand_as(weights)
        torch.testing.assert_close(weights.grad, expected_grad)

    @parameterized.expand([("no_grad",), ("enable_grad",)])
    def test_compiles_with_fullgraph(self, grad_mode):
        # Both of the reference's softmax modes: in place on the scores without autograd, out of place with it.
        query, key, value = (torch.randn(1, heads, 8, 32, device=torch_device) for heads in (4, 2, 2))
        allowed = torch.ones(8, 8, dtype=torch.bool, device=torch_device).tril()
        mask = torch.zeros(1, 1, 8, 8, device=torch_device).masked_fill(~allowed, float("-inf"))
        module = torch.nn.Module().eval()
        module.num_key_value_groups = 2

        torch._dynamo.reset()
        compiled = torch.compile(overlay_eager_attention_forward, fullgraph=True)
        with getattr(torch, grad_mode)():
            output, weights = compiled(module, query, key, value, mask, 0.25)
            expected = eager_attention_forward(
                module, query, key, value, overlay_eager_attention.float32_attention_mask(mask, 8), 0.25
            )

        torch.testing.assert_close((output, weights), expected)

    @parameterized.expand([(False,), (True,)])
    def test_model_forward_has_the_graph_breaks_of_stock(self, output_attentions):
        def graph_breaks(implementation):
            torch._dynamo.reset()
            with attention_implementation(implementation):
                return torch._dynamo.explain(tiny_qwen2())(self.input_ids, output_attentions=output_attentions)

        overlay, stock = graph_breaks("overlay"), graph_breaks("stock")
        self.assertEqual(overlay.graph_break_count, stock.graph_break_count, overlay.break_reasons)
        if not output_attentions and Version(patching.transformers_version()) >= Version("5.0"):
            self.assertEqual(overlay.graph_break_count, 0, overlay.break_reasons)

    def test_export_matches_eager(self):
        model = tiny_qwen2(bias=OVERFLOW_BIAS).to(torch.float16)
        with attention_implementation("stock"), torch.no_grad():
            try:
                torch.export.export(model, (self.input_ids,))
            except Exception as error:  # parity only: what stock cannot export is not asked of the overlay
                self.skipTest(f"stock transformers {patching.transformers_version()} cannot export it: {error!r:.200}")
        with attention_implementation("overlay"), torch.no_grad():
            exported = torch.export.export(model, (self.input_ids,))
            logits = exported.module()(self.input_ids).logits
            expected = model(self.input_ids).logits

        self.assertTrue(torch.isfinite(logits).all())
        torch.testing.assert_close(logits, expected, atol=1e-3, rtol=1e-3)

    @parameterized.expand([("overlay", True), ("stock", False)])
    def test_scores_stay_float32_under_autocast(self, implementation, finite):
        # Mixed-precision fine-tuning: a float32 model under float16 autocast, gradients enabled.
        model = tiny_qwen2(bias=OVERFLOW_BIAS)
        device_type = torch.device(torch_device).type
        with attention_implementation(implementation), torch.autocast(device_type=device_type, dtype=torch.float16):
            logits = model(self.input_ids).logits

        self.assertEqual(torch.isfinite(logits).all().item(), finite)
        if finite:
            with attention_implementation(implementation):
                reference = model(self.input_ids).logits  # float32 throughout
            # Only the projections run in float16; the attention itself is float32 as without autocast.
            self.assertLess((logits.float() - reference).abs().max().item(), 0.1)

    def test_gradient_checkpointing_gives_the_same_gradients(self):
        def gradients(checkpointing):
            model = tiny_qwen2(bias=30.0).train()
            if checkpointing:
                model.gradient_checkpointing_enable()
            model(self.input_ids, labels=self.input_ids).loss.backward()
            return {name: parameter.grad for name, parameter in model.named_parameters()}

        with attention_implementation("overlay"):
            expected, checkpointed = gradients(False), gradients(True)
        torch.testing.assert_close(checkpointed, expected)
