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
Testing suite for Qwen2's eager attention in float16/bfloat16 when the query-key scores exceed the float16 range.

Qwen2-7B has large q/k projection biases on the lowest-frequency rotary dims, where RoPE barely rotates, so the bias
products add straight into `query @ key^T`. Computed in float16 those scores overflow to inf and the logits turn NaN
(greedy decoding then emits token 0, "!", forever); computed in bfloat16 they keep only ~3 significant digits. The
tiny models below reproduce that on CPU. Tests whose name contains `overflow` run such a model in half precision.
"""

import copy
import importlib.util
import unittest
from unittest import mock

from parameterized import parameterized

from transformers import Qwen2Config, is_torch_available
from transformers.testing_utils import require_torch, torch_device


if is_torch_available():
    import torch
    from torch import nn

    from transformers import Qwen2ForCausalLM
    from transformers.models.qwen2 import modeling_qwen2


# (device type, dtype) -> (atol, rtol): the tolerances of `_test_eager_matches_sdpa_inference` in upstream's
# tests/test_modeling_common.py (the entries with the sdpa kernels enabled, which is torch's default).
EAGER_MATCHES_SDPA_TOLERANCES = {
    ("cpu", "float32"): (1e-6, 1e-4),
    ("cpu", "float16"): (5e-3, 5e-3),
    ("cpu", "bfloat16"): (1e-2, 1e-2),
    ("cuda", "float32"): (1e-6, 1e-4),
    ("cuda", "float16"): (5e-3, 5e-3),
    ("cuda", "bfloat16"): (1e-2, 3e-2),
}

# Eager may be this much further than sdpa from the float32 reference (KL divergence, max-abs error, gradient error).
SDPA_ERROR_FACTOR = 1.5
# KL divergences below this are float32 rounding noise of the KL computation itself.
KL_DIVERGENCE_FLOOR = 1e-6

HALF_PRECISION_DTYPES = [("fp16", "float16"), ("bf16", "bfloat16")]

# Qwen2's sliding window applies to eager attention since transformers builds its masks in `masking_utils` (4.53);
# before, only flash attention used it.
EAGER_HAS_SLIDING_WINDOW = importlib.util.find_spec("transformers.masking_utils") is not None


def parameterized_name(func, _, params):
    """`test_x_fp16` rather than parameterized's default `test_x_0_fp16`."""
    return f"{func.__name__}_{params.args[0]}"


def eager_sdpa_tolerance(dtype) -> dict:
    """`atol`/`rtol` for comparing eager with sdpa outputs in `dtype` on `torch_device` (upstream's table)."""
    device_type = "cpu" if torch.device(torch_device).type == "cpu" else "cuda"
    atol, rtol = EAGER_MATCHES_SDPA_TOLERANCES[device_type, str(dtype).removeprefix("torch.")]
    return {"atol": atol, "rtol": rtol}


def mean_kl_divergence(reference_logits, logits):
    """Mean over positions of KL(softmax(reference_logits) || softmax(logits)), computed in float32."""
    reference_log_probs = reference_logits.float().log_softmax(-1)
    log_probs = logits.float().log_softmax(-1)
    return (reference_log_probs.exp() * (reference_log_probs - log_probs)).sum(-1).mean()


def max_abs_error(reference, tensor):
    return (tensor.double() - reference.double()).abs().max()


def assert_no_degenerate_run(test_case, new_tokens, scores):
    """NaN logits make greedy decoding pick token 0 at every step: all scores must be finite and no row all 0."""
    test_case.assertTrue(torch.isfinite(scores).all(), "generation scores contain inf/NaN")
    test_case.assertFalse((new_tokens == 0).all(dim=-1).any(), "greedy decoding emitted a run of token 0")


def assert_greedy_continuations_agree(test_case, tokens, scores, expected_tokens, expected_scores, atol, rtol):
    """
    Two greedy continuations of one prompt agree when their tokens are equal, or when they first differ at a step
    whose scores are close within `atol`/`rtol`, i.e. a near-tie that either numerics may break (the rule of upstream's
    `GenerationTesterMixin._check_similar_generate_outputs`). `tokens` is `(new_tokens,)`, `scores` `(new_tokens, vocab)`.
    """
    mismatches = (tokens != expected_tokens).nonzero()
    if len(mismatches) == 0:
        return
    step = mismatches[0].item()
    torch.testing.assert_close(
        scores[step].float(),
        expected_scores[step].float(),
        atol=atol,
        rtol=rtol,
        msg=lambda message: (
            f"greedy tokens differ from step {step} on, where the scores are not a near-tie: {message}"
        ),
    )


def assert_greedy_batches_agree(test_case, tokens, scores, expected_tokens, expected_scores, atol, rtol):
    """`assert_greedy_continuations_agree` for every row of a batch: `tokens` `(batch, new_tokens)`, `scores`
    `(batch, new_tokens, vocab)`."""
    for row in range(tokens.shape[0]):
        assert_greedy_continuations_agree(
            test_case, tokens[row], scores[row], expected_tokens[row], expected_scores[row], atol, rtol
        )


def reference_eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Transformers' eager attention formula as written before the half-precision fix, used as a float32 reference."""
    key_states = modeling_qwen2.repeat_kv(key, module.num_key_value_groups)
    value_states = modeling_qwen2.repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask[:, :, :, : key_states.shape[-2]]
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class Qwen2HalfPrecisionModelTester:
    """
    Builds tiny `Qwen2ForCausalLM` models with Qwen2-7B's attention layout (28 query / 4 key-value heads of dim 128)
    on a small hidden size, and inputs for them.

    Every decoder layer gets Qwen2-7B-like q/k biases: `qk_bias` on the last `num_biased_dims` dims of each rotary
    half (the lowest RoPE frequencies, which barely rotate) of every query and key head, with zero projection weights
    on those dims. The biased dims then add the same `2 * num_biased_dims * qk_bias**2` (115200 for the defaults) to
    every raw score: softmax cancels such an offset, but in float16 it is past the maximum of 65504 (inf, then NaN)
    and in bfloat16 it leaves scores a resolution of 512. Since the offset does not depend on the layer input, eager
    and sdpa stay within upstream's tolerances of each other; `qk_weight_std` is larger than the std of the other
    weights so that attention depends on the content of the other dims.
    """

    def __init__(
        self,
        parent,
        batch_size=3,
        seq_length=24,
        vocab_size=99,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=28,
        num_key_value_heads=4,
        head_dim=128,
        rope_theta=1_000_000.0,
        max_position_embeddings=256,
        initializer_range=0.02,
        qk_weight_std=0.16,
        qk_bias=120.0,
        num_biased_dims=4,
        pad_token_id=1,
        max_new_tokens=20,
        seed=0,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.qk_weight_std = qk_weight_std
        self.qk_bias = qk_bias
        self.num_biased_dims = num_biased_dims
        self.pad_token_id = pad_token_id
        self.max_new_tokens = max_new_tokens
        self.seed = seed

    def get_config(self, **kwargs):
        config_kwargs = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "tie_word_embeddings": False,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": None,
            "eos_token_id": None,
        }
        config_kwargs.update(kwargs)
        return Qwen2Config(**config_kwargs)

    def biased_dims(self):
        """Per-head indices of the last `num_biased_dims` dims of each rotary half (the lowest RoPE frequencies)."""
        half = self.head_dim // 2
        return [dim for end in (half, self.head_dim) for dim in range(end - self.num_biased_dims, end)]

    def add_large_qk_biases(self, decoder_layers):
        """Draws the q/k projection weights with `qk_weight_std` and gives every layer the overflow-prone biases."""
        biased_dims = self.biased_dims()
        with torch.no_grad():
            for layer in decoder_layers:
                for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    nn.init.normal_(projection.weight, std=self.qk_weight_std)
                    projection.weight.view(-1, self.head_dim, projection.in_features)[:, biased_dims] = 0.0
                    projection.bias.view(-1, self.head_dim)[:, biased_dims] = self.qk_bias

    def get_float32_state_dict(self, config, large_qk_biases=True):
        """Seeded float32 weights, with the overflow-prone q/k biases unless `large_qk_biases=False`."""
        torch.manual_seed(self.seed)
        model = Qwen2ForCausalLM(config)
        if large_qk_biases:
            self.add_large_qk_biases(model.model.layers)
        return model.state_dict()

    def create_model(self, dtype, attn_implementation, config=None, large_qk_biases=True, state_dict=None):
        """The seeded model in `dtype` (weights rounded from the float32 ones) with `attn_implementation`, in eval mode."""
        # Models share nothing: `set_attn_implementation` writes to the model's config
        config = copy.deepcopy(config) if config is not None else self.get_config()
        if state_dict is None:
            state_dict = self.get_float32_state_dict(config, large_qk_biases)
        model = Qwen2ForCausalLM._from_config(config, attn_implementation=attn_implementation)
        model.load_state_dict({name: tensor.to(dtype) for name, tensor in state_dict.items()})
        return model.to(device=torch_device, dtype=dtype).eval()

    def create_reference_model(self, dtype, config=None, large_qk_biases=True):
        """A float32 eager model whose weights are those of `create_model(dtype, ...)`, i.e. rounded to `dtype`."""
        config = config if config is not None else self.get_config()
        state_dict = self.get_float32_state_dict(config, large_qk_biases)
        rounded = {name: tensor.to(dtype).to(torch.float32) for name, tensor in state_dict.items()}
        return self.create_model(torch.float32, "eager", config, state_dict=rounded)

    def prepare_input_ids(self, batch_size=None, seq_length=None, seed_offset=0):
        """Random token ids, never the pad token nor token 0."""
        generator = torch.Generator().manual_seed(self.seed + 1 + seed_offset)
        shape = (batch_size or self.batch_size, seq_length or self.seq_length)
        return torch.randint(2, self.vocab_size, shape, generator=generator).to(torch_device)

    def prepare_left_padded_inputs(self, lengths):
        """Left-padded `input_ids`, `attention_mask` of prompts of `lengths`, and the unpadded prompts."""
        prompts = [self.prepare_input_ids(1, length, seed_offset=i)[0] for i, length in enumerate(lengths)]
        max_length = max(lengths)
        input_ids = torch.full((len(lengths), max_length), self.pad_token_id, dtype=torch.long, device=torch_device)
        attention_mask = torch.zeros_like(input_ids)
        for row, prompt in enumerate(prompts):
            input_ids[row, max_length - len(prompt) :] = prompt
            attention_mask[row, max_length - len(prompt) :] = 1
        return input_ids, attention_mask, prompts

    def greedy_generate(self, model, input_ids, attention_mask=None):
        """Greedy `generate` returning `(new_tokens, scores)`, scores stacked as `(batch, new_tokens, vocab)`."""
        output = model.generate(
            input_ids,
            attention_mask=attention_mask if attention_mask is not None else torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=self.max_new_tokens,
            pad_token_id=self.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
        return output.sequences[:, input_ids.shape[1] :], torch.stack(output.scores, dim=1)

    def decode_with_cache(self, model, input_ids, prompt_length):
        """Logits of `input_ids[:, prompt_length - 1:]`: prefill of the prompt, then one token at a time from the cache."""
        with torch.no_grad():
            outputs = model(input_ids[:, :prompt_length], use_cache=True)
            logits = [outputs.logits[:, -1]]
            for position in range(prompt_length, input_ids.shape[1]):
                next_ids = input_ids[:, position : position + 1]
                outputs = model(next_ids, past_key_values=outputs.past_key_values, use_cache=True)
                logits.append(outputs.logits[:, -1])
        return torch.stack(logits, dim=1)


@require_torch
class Qwen2HalfPrecisionEagerAttentionTest(unittest.TestCase):
    def setUp(self):
        self.model_tester = Qwen2HalfPrecisionModelTester(self)

    @parameterized.expand(HALF_PRECISION_DTYPES, name_func=parameterized_name)
    def test_overflow_eager_matches_sdpa_inference(self, _, dtype_name):
        dtype = getattr(torch, dtype_name)
        model_eager = self.model_tester.create_model(dtype, "eager")
        model_sdpa = self.model_tester.create_model(dtype, "sdpa")
        input_ids = self.model_tester.prepare_input_ids()
        # Left padding on the last row, as in upstream's `test_eager_matches_sdpa_inference`
        attention_mask = torch.ones_like(input_ids)
        attention_mask[-1, :2] = 0

        with torch.no_grad():
            outputs_eager = model_eager(input_ids, attention_mask=attention_mask, output_hidden_states=True)
            outputs_sdpa = model_sdpa(input_ids, attention_mask=attention_mask)

        for layer_idx, hidden_states in enumerate(outputs_eager.hidden_states):
            self.assertTrue(torch.isfinite(hidden_states).all(), f"hidden states {layer_idx} are not finite")
        self.assertTrue(torch.isfinite(outputs_eager.logits).all())
        # Padded positions may differ, as upstream's test allows
        attended = attention_mask.bool()
        torch.testing.assert_close(
            outputs_eager.logits[attended], outputs_sdpa.logits[attended], **eager_sdpa_tolerance(dtype)
        )

    @parameterized.expand(HALF_PRECISION_DTYPES, name_func=parameterized_name)
    def test_overflow_eager_as_close_to_float32_as_sdpa(self, _, dtype_name):
        dtype = getattr(torch, dtype_name)
        input_ids = self.model_tester.prepare_input_ids()
        with torch.no_grad():
            reference_logits = self.model_tester.create_reference_model(dtype)(input_ids).logits
            eager_logits = self.model_tester.create_model(dtype, "eager")(input_ids).logits
            sdpa_logits = self.model_tester.create_model(dtype, "sdpa")(input_ids).logits

        self.assertTrue(torch.isfinite(eager_logits).all())
        self.assertLessEqual(
            mean_kl_divergence(reference_logits, eager_logits),
            SDPA_ERROR_FACTOR * mean_kl_divergence(reference_logits, sdpa_logits) + KL_DIVERGENCE_FLOOR,
        )
        self.assertLessEqual(
            max_abs_error(reference_logits, eager_logits),
            SDPA_ERROR_FACTOR * max_abs_error(reference_logits, sdpa_logits),
        )

    @parameterized.expand(HALF_PRECISION_DTYPES, name_func=parameterized_name)
    def test_overflow_greedy_generate_matches_sdpa(self, _, dtype_name):
        dtype = getattr(torch, dtype_name)
        input_ids = self.model_tester.prepare_input_ids()
        tokens_eager, scores_eager = self.model_tester.greedy_generate(
            self.model_tester.create_model(dtype, "eager"), input_ids
        )
        tokens_sdpa, scores_sdpa = self.model_tester.greedy_generate(
            self.model_tester.create_model(dtype, "sdpa"), input_ids
        )

        assert_no_degenerate_run(self, tokens_eager, scores_eager)
        assert_greedy_batches_agree(
            self, tokens_eager, scores_eager, tokens_sdpa, scores_sdpa, **eager_sdpa_tolerance(dtype)
        )

    @parameterized.expand(HALF_PRECISION_DTYPES, name_func=parameterized_name)
    def test_overflow_output_attentions(self, _, dtype_name):
        dtype = getattr(torch, dtype_name)
        input_ids = self.model_tester.prepare_input_ids()
        batch_size, seq_length = input_ids.shape
        with torch.no_grad():
            outputs = self.model_tester.create_model(dtype, "eager")(input_ids, output_attentions=True)
            sdpa_logits = self.model_tester.create_model(dtype, "sdpa")(input_ids).logits

        tolerance = eager_sdpa_tolerance(dtype)
        self.assertEqual(len(outputs.attentions), self.model_tester.num_hidden_layers)
        above_diagonal = torch.ones(seq_length, seq_length, dtype=torch.bool, device=torch_device).triu(diagonal=1)
        for layer_idx, attentions in enumerate(outputs.attentions):
            expected_shape = (batch_size, self.model_tester.num_attention_heads, seq_length, seq_length)
            self.assertEqual(tuple(attentions.shape), expected_shape)
            self.assertEqual(attentions.dtype, dtype)
            self.assertTrue(torch.isfinite(attentions).all(), f"attention weights of layer {layer_idx} not finite")
            row_sums = attentions.float().sum(-1)
            torch.testing.assert_close(row_sums, torch.ones_like(row_sums), **tolerance)
            self.assertTrue((attentions[..., above_diagonal] == 0).all(), f"layer {layer_idx} attends to the future")
        # Returning the weights does not change the numerics
        torch.testing.assert_close(outputs.logits, sdpa_logits, **tolerance)

    @parameterized.expand(HALF_PRECISION_DTYPES, name_func=parameterized_name)
    def test_overflow_left_padded_batch_generate_matches_single(self, _, dtype_name):
        dtype = getattr(torch, dtype_name)
        tolerance = eager_sdpa_tolerance(dtype)
        model_eager = self.model_tester.create_model(dtype, "eager")
        model_sdpa = self.model_tester.create_model(dtype, "sdpa")
        input_ids, attention_mask, prompts = self.model_tester.prepare_left_padded_inputs([24, 17, 9])
        batch_tokens, batch_scores = self.model_tester.greedy_generate(model_eager, input_ids, attention_mask)

        assert_no_degenerate_run(self, batch_tokens, batch_scores)
        for row, prompt in enumerate(prompts):
            single_tokens, single_scores = self.model_tester.greedy_generate(model_eager, prompt[None])
            sdpa_tokens, sdpa_scores = self.model_tester.greedy_generate(model_sdpa, prompt[None])
            # Padding changes nothing, and the unpadded continuation is sdpa's
            assert_greedy_continuations_agree(
                self, batch_tokens[row], batch_scores[row], single_tokens[0], single_scores[0], **tolerance
            )
            assert_greedy_continuations_agree(
                self, single_tokens[0], single_scores[0], sdpa_tokens[0], sdpa_scores[0], **tolerance
            )

    @parameterized.expand(
        [
            (f"{short_name}{suffix}", dtype_name, use_sliding_window)
            for short_name, dtype_name in HALF_PRECISION_DTYPES
            for suffix, use_sliding_window in (("", False), ("_sliding_window", True))
        ],
        name_func=parameterized_name,
    )
    def test_overflow_cached_decoding_matches_full_forward(self, _, dtype_name, use_sliding_window):
        if use_sliding_window and not EAGER_HAS_SLIDING_WINDOW:
            self.skipTest("this transformers version has no sliding window for eager attention")
        dtype = getattr(torch, dtype_name)
        config_kwargs = {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0}
        config = self.model_tester.get_config(**(config_kwargs if use_sliding_window else {}))
        state_dict = self.model_tester.get_float32_state_dict(config)
        model_eager = self.model_tester.create_model(dtype, "eager", config, state_dict=state_dict)
        model_sdpa = self.model_tester.create_model(dtype, "sdpa", config, state_dict=state_dict)
        prompt_length = self.model_tester.seq_length
        input_ids = self.model_tester.prepare_input_ids(seq_length=prompt_length + 8)

        with torch.no_grad():
            full_logits = model_eager(input_ids, use_cache=False).logits[:, prompt_length - 1 :]
        cached_logits = self.model_tester.decode_with_cache(model_eager, input_ids, prompt_length)
        sdpa_cached_logits = self.model_tester.decode_with_cache(model_sdpa, input_ids, prompt_length)

        if use_sliding_window:
            model_full_attention = self.model_tester.create_model(dtype, "eager", state_dict=state_dict)
            with torch.no_grad():
                full_attention_logits = model_full_attention(input_ids, use_cache=False).logits[:, prompt_length - 1 :]
            self.assertFalse(torch.allclose(full_logits, full_attention_logits), "the sliding window has no effect")
        self.assertTrue(torch.isfinite(cached_logits).all())
        tolerance = eager_sdpa_tolerance(dtype)
        torch.testing.assert_close(cached_logits, full_logits, **tolerance)
        torch.testing.assert_close(cached_logits, sdpa_cached_logits, **tolerance)

    @parameterized.expand(HALF_PRECISION_DTYPES, name_func=parameterized_name)
    def test_overflow_4d_boolean_mask_matches_causal_mask(self, _, dtype_name):
        dtype = getattr(torch, dtype_name)
        model = self.model_tester.create_model(dtype, "eager")
        input_ids = self.model_tester.prepare_input_ids()
        batch_size, seq_length = input_ids.shape
        # A 4D boolean mask is used as given by every attention implementation: True means "attend"
        causal_mask = torch.ones(seq_length, seq_length, dtype=torch.bool, device=torch_device).tril()
        boolean_mask = causal_mask.expand(batch_size, 1, seq_length, seq_length)

        with torch.no_grad():
            logits_default = model(input_ids).logits
            logits_boolean = model(input_ids, attention_mask=boolean_mask).logits

        self.assertTrue(torch.isfinite(logits_boolean).all())
        torch.testing.assert_close(logits_boolean, logits_default, **eager_sdpa_tolerance(dtype))

    @parameterized.expand(HALF_PRECISION_DTYPES, name_func=parameterized_name)
    def test_overflow_fully_masked_query_row_stays_finite(self, _, dtype_name):
        dtype = getattr(torch, dtype_name)
        model = self.model_tester.create_model(dtype, "eager")
        input_ids = self.model_tester.prepare_input_ids()
        batch_size, seq_length = input_ids.shape
        masked_position = seq_length // 2
        boolean_mask = (
            torch.ones(seq_length, seq_length, dtype=torch.bool, device=torch_device)
            .tril()
            .expand(batch_size, 1, seq_length, seq_length)
            .clone()
        )
        boolean_mask[0, :, masked_position, :] = False

        with torch.no_grad():
            logits_default = model(input_ids).logits
            logits_masked = model(input_ids, attention_mask=boolean_mask).logits

        self.assertTrue(torch.isfinite(logits_masked).all())
        # Causality: the positions before the masked query and the other sequences are unaffected
        tolerance = eager_sdpa_tolerance(dtype)
        torch.testing.assert_close(
            logits_masked[0, :masked_position], logits_default[0, :masked_position], **tolerance
        )
        torch.testing.assert_close(logits_masked[1:], logits_default[1:], **tolerance)

    @parameterized.expand(HALF_PRECISION_DTYPES, name_func=parameterized_name)
    def test_overflow_backward_gradients_close_to_float32(self, _, dtype_name):
        dtype = getattr(torch, dtype_name)
        input_ids = self.model_tester.prepare_input_ids()

        def gradients(model):
            model.train()
            model(input_ids, labels=input_ids).loss.backward()
            return torch.cat([parameter.grad.float().flatten() for parameter in model.parameters()])

        reference_gradients = gradients(self.model_tester.create_reference_model(dtype))
        eager_gradients = gradients(self.model_tester.create_model(dtype, "eager"))
        sdpa_gradients = gradients(self.model_tester.create_model(dtype, "sdpa"))

        self.assertTrue(torch.isfinite(eager_gradients).all())
        eager_error = (eager_gradients - reference_gradients).norm() / reference_gradients.norm()
        sdpa_error = (sdpa_gradients - reference_gradients).norm() / reference_gradients.norm()
        self.assertLessEqual(eager_error, SDPA_ERROR_FACTOR * sdpa_error)

    def test_float32_eager_matches_reference_formula(self):
        model = self.model_tester.create_model(torch.float32, "eager", large_qk_biases=False)
        input_ids, attention_mask, _ = self.model_tester.prepare_left_padded_inputs([24, 17, 9])

        with torch.no_grad():
            logits = model(input_ids, attention_mask=attention_mask).logits
            with mock.patch.object(modeling_qwen2, "eager_attention_forward", reference_eager_attention_forward):
                reference_logits = model(input_ids, attention_mask=attention_mask).logits

        attended = attention_mask.bool()
        torch.testing.assert_close(logits[attended], reference_logits[attended], **eager_sdpa_tolerance(torch.float32))

    def test_float32_eager_with_large_scores_as_close_to_float64_as_reference_formula(self):
        # Scores of ~1e4 carry float32 rounding errors of ~1e-3, so here the contract is accuracy, not equality
        config = self.model_tester.get_config()
        state_dict = self.model_tester.get_float32_state_dict(config)
        model = self.model_tester.create_model(torch.float32, "eager", config, state_dict=state_dict)
        model_float64 = self.model_tester.create_model(torch.float64, "eager", config, state_dict=state_dict)
        input_ids = self.model_tester.prepare_input_ids()

        with torch.no_grad():
            exact_logits = model_float64(input_ids).logits
            logits = model(input_ids).logits
            with mock.patch.object(modeling_qwen2, "eager_attention_forward", reference_eager_attention_forward):
                reference_logits = model(input_ids).logits

        self.assertLessEqual(max_abs_error(exact_logits, logits), max_abs_error(exact_logits, reference_logits))
