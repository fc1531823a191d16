# Copyright 2026 The transformers-overlay authors. All rights reserved.
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
Drop-in parity of the patched transformers tree, without the overlay: a tiny Qwen2 with eager attention keeps its
attention weights in the autograd graph, compiles with `fullgraph=True`, exports with `torch.export`, keeps finite
float32 scores under float16 autocast and gives the same gradients with gradient checkpointing.
`scripts/ci_patched_tree.sh` runs it in the patched tree's environment; `tests/overlay/test_drop_in_parity.py` checks
the same against the overlay. Prints one line per check and exits 1 at the first that fails.
"""

import sys

import torch

from transformers import Qwen2Config, Qwen2ForCausalLM


# Large enough to overflow float16 scores on the biased rotary dims (8 dims * 120² > 65504).
OVERFLOW_BIAS = 120.0
INPUT_IDS = torch.tensor([[5, 17, 42, 8, 93, 61, 2, 7, 33, 71, 12, 50]])


def tiny_qwen2(bias: float = 0.0) -> Qwen2ForCausalLM:
    """A 2-layer float32 Qwen2 with eager attention, q/k biases `bias` on the 4 lowest-frequency dims of each half."""
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
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    for layer in model.model.layers:
        for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            per_head = projection.bias.data.view(-1, 2, config.head_dim // 2)
            per_head[:, :, -4:] = bias
    return model


def weights_in_the_autograd_graph():
    outputs = tiny_qwen2()(INPUT_IDS, output_attentions=True)
    attentions = outputs.attentions[0]
    attentions.retain_grad()
    outputs.logits.flatten()[0].backward()
    assert attentions.grad is not None and attentions.grad.abs().sum() > 0, "no gradient reached the weights"


def compiles_with_fullgraph():
    model = tiny_qwen2(OVERFLOW_BIAS).half()
    with torch.no_grad():
        logits = torch.compile(model, fullgraph=True)(INPUT_IDS).logits
        expected = model(INPUT_IDS).logits
    assert torch.isfinite(logits).all(), "compiled float16 logits are not finite"
    torch.testing.assert_close(logits, expected, atol=1e-2, rtol=1e-2)


def exports():
    model = tiny_qwen2(OVERFLOW_BIAS).half()
    with torch.no_grad():
        logits = torch.export.export(model, (INPUT_IDS,)).module()(INPUT_IDS).logits
        expected = model(INPUT_IDS).logits
    assert torch.isfinite(logits).all(), "exported float16 logits are not finite"
    torch.testing.assert_close(logits, expected, atol=1e-3, rtol=1e-3)


def float32_scores_under_autocast():
    model = tiny_qwen2(OVERFLOW_BIAS)
    with torch.autocast(device_type="cpu", dtype=torch.float16):
        logits = model(INPUT_IDS).logits
    reference = model(INPUT_IDS).logits
    assert torch.isfinite(logits).all(), "logits under float16 autocast are not finite"
    error = (logits.float() - reference).abs().max().item()
    assert error < 0.1, f"float16 autocast logits are {error:.3g} from float32"


def gradient_checkpointing():
    def gradients(checkpointing):
        model = tiny_qwen2(30.0).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(INPUT_IDS, labels=INPUT_IDS).loss.backward()
        return {name: parameter.grad for name, parameter in model.named_parameters()}

    torch.testing.assert_close(gradients(True), gradients(False))


def main() -> int:
    for check in (
        weights_in_the_autograd_graph,
        compiles_with_fullgraph,
        exports,
        float32_scores_under_autocast,
        gradient_checkpointing,
    ):
        try:
            check()
        except Exception as error:
            print(f"parity: {check.__name__}: FAILED: {error!r:.300}", file=sys.stderr)
            return 1
        print(f"parity: {check.__name__}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
