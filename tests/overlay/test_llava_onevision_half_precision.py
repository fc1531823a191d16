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
Testing suite for LLaVA-OneVision's eager attention in float16/bfloat16 when the query-key scores of its Qwen2 text
model exceed the float16 range (see `tests/overlay/test_qwen2_half_precision.py`): the multimodal path
of `llava-hf/llava-onevision-qwen2-7b-ov-hf`, where stock eager float16 answers "!!!!...". Tests whose name contains
`overflow` run such a model in half precision.
"""

import random
import tempfile
import unittest

from parameterized import parameterized
from tokenizers import Tokenizer, models, pre_tokenizers

import transformers
from transformers import (
    AutoProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionProcessor,
    PreTrainedTokenizerFast,
    is_torch_available,
    is_vision_available,
)
from transformers.testing_utils import (
    cleanup,
    require_accelerate,
    require_torch,
    require_torch_accelerator,
    require_torchvision,
    require_vision,
    slow,
    torch_device,
)

from .test_qwen2_half_precision import (
    HALF_PRECISION_DTYPES,
    Qwen2HalfPrecisionModelTester,
    assert_greedy_batches_agree,
    assert_greedy_continuations_agree,
    assert_no_degenerate_run,
    eager_sdpa_tolerance,
    parameterized_name,
)


if is_torch_available():
    import torch

    from transformers import LlavaOnevisionForConditionalGeneration


if is_vision_available():
    from PIL import Image

    from transformers import LlavaOnevisionVideoProcessor

    try:  # the PIL/numpy image processor; since transformers 5, `LlavaOnevisionImageProcessor` needs torchvision
        from transformers import LlavaOnevisionImageProcessorPil
    except ImportError:
        from transformers import LlavaOnevisionImageProcessor as LlavaOnevisionImageProcessorPil


# `from_pretrained(..., dtype=...)` and the `model.model.language_model` layout of LLaVA-OneVision: transformers 4.56
TRANSFORMERS_AT_LEAST_4_56 = tuple(int(part) for part in transformers.__version__.split(".")[:2]) >= (4, 56)


# A ChatML template that renders the images of a message before its text, like the one of the llava-hf checkpoints
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for content in message['content'] if content['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for content in message['content'] if content['type'] == 'text' %}{{ content['text'] }}{% endfor %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
# Token 0 is "!" as in Qwen2's vocabulary: NaN logits make greedy decoding answer "!!!!..."
WORDS = "! [UNK] user assistant What is in this image ? Describe the picture .".split()


def create_image(height, width, seed):
    """A deterministic RGB noise image."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", (width, height), bytes(rng.randrange(256) for _ in range(height * width * 3)))


def user_conversation(question):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def is_exclamation_run(text):
    return set(text.replace(" ", "")) == {"!"}


class LlavaOnevisionHalfPrecisionModelTester:
    """
    Builds a tiny `LlavaOnevisionForConditionalGeneration` whose Qwen2 text model is the overflow-prone one of
    `Qwen2HalfPrecisionModelTester`, with a tiny SigLIP vision tower on anyres tiles of `image_size` pixels, and the
    inputs a user builds for it: a word-level tokenizer with a chat template and the image token, the real image
    processor (the PIL backend, which needs no torchvision) and PIL images of different sizes.

    `LlavaOnevisionProcessor` cannot be built without torchvision (it requires a video processor), so the tests that go
    through it require torchvision; the others build the same inputs from the tokenizer and the image processor.
    """

    def __init__(
        self,
        parent,
        vocab_size=99,
        image_size=32,
        patch_size=8,
        vision_hidden_size=32,
        vision_intermediate_size=37,
        vision_num_hidden_layers=2,
        vision_num_attention_heads=4,
        image_grid_pinpoints=([32, 32], [32, 64], [64, 32], [64, 64], [32, 96], [96, 32]),
        image_heights_widths=((40, 56), (90, 30)),
        questions=("What is in this image ?", "Describe the picture ."),
        max_new_tokens=20,
        seed=0,
    ):
        self.parent = parent
        filler = [f"w{index}" for index in range(vocab_size - len(WORDS) - len(SPECIAL_TOKENS))]
        self.vocab = {token: index for index, token in enumerate(WORDS + filler + SPECIAL_TOKENS)}
        self.pad_token_id = self.vocab["<|endoftext|>"]
        self.image_token_id = self.vocab["<image>"]
        self.text_tester = Qwen2HalfPrecisionModelTester(
            parent, vocab_size=vocab_size, pad_token_id=self.pad_token_id, max_new_tokens=max_new_tokens, seed=seed
        )
        self.image_size = image_size
        self.patch_size = patch_size
        self.vision_hidden_size = vision_hidden_size
        self.vision_intermediate_size = vision_intermediate_size
        self.vision_num_hidden_layers = vision_num_hidden_layers
        self.vision_num_attention_heads = vision_num_attention_heads
        self.image_grid_pinpoints = [list(pinpoint) for pinpoint in image_grid_pinpoints]
        self.image_heights_widths = image_heights_widths
        self.questions = questions
        self.max_new_tokens = max_new_tokens
        self.seed = seed

    def get_config(self):
        return LlavaOnevisionConfig(
            text_config=self.text_tester.get_config().to_dict(),
            vision_config={
                "model_type": "siglip_vision_model",
                "hidden_size": self.vision_hidden_size,
                "intermediate_size": self.vision_intermediate_size,
                "num_hidden_layers": self.vision_num_hidden_layers,
                "num_attention_heads": self.vision_num_attention_heads,
                "image_size": self.image_size,
                "patch_size": self.patch_size,
            },
            image_token_index=self.image_token_id,
            video_token_index=self.vocab["<video>"],
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=self.image_grid_pinpoints,
        )

    def get_tokenizer(self):
        backend = Tokenizer(models.WordLevel(self.vocab, unk_token="[UNK]"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            unk_token="[UNK]",
            pad_token="<|endoftext|>",
            eos_token="<|im_end|>",
            additional_special_tokens=SPECIAL_TOKENS[1:],
            padding_side="left",
            chat_template=CHAT_TEMPLATE,
            model_input_names=["input_ids", "attention_mask"],
        )

    def get_image_processor(self):
        return LlavaOnevisionImageProcessorPil(
            size={"height": self.image_size, "width": self.image_size}, image_grid_pinpoints=self.image_grid_pinpoints
        )

    def get_processor(self):
        """The full `LlavaOnevisionProcessor`: its video processor, required by the processor, needs torchvision."""
        return LlavaOnevisionProcessor(
            image_processor=self.get_image_processor(),
            tokenizer=self.get_tokenizer(),
            video_processor=LlavaOnevisionVideoProcessor(),
            num_image_tokens=(self.image_size // self.patch_size) ** 2,
            vision_feature_select_strategy="full",
            chat_template=CHAT_TEMPLATE,
        )

    def get_float32_state_dict(self, config):
        """Seeded float32 weights, the text model with the overflow-prone q/k biases."""
        torch.manual_seed(self.seed)
        model = LlavaOnevisionForConditionalGeneration(config)
        self.text_tester.add_large_qk_biases(model.model.language_model.layers)
        return model.state_dict()

    def create_model(self, dtype, attn_implementation, state_dict=None):
        """The seeded model in `dtype` with `attn_implementation` for the text and vision models, in eval mode."""
        config = self.get_config()
        if state_dict is None:
            state_dict = self.get_float32_state_dict(config)
        model = LlavaOnevisionForConditionalGeneration._from_config(config, attn_implementation=attn_implementation)
        model.load_state_dict({name: tensor.to(dtype) for name, tensor in state_dict.items()})
        return model.to(device=torch_device, dtype=dtype).eval()

    def create_images(self):
        return [create_image(height, width, seed) for seed, (height, width) in enumerate(self.image_heights_widths)]

    def prepare_inputs(self, dtype, num_samples=None):
        """
        Model inputs for the first `num_samples` (image, question) pairs, built without `LlavaOnevisionProcessor`:
        the chat template of the tokenizer, the image processor, and each `<image>` repeated as many times as the model
        has features for its image. Prompts are left-padded.
        """
        num_samples = num_samples or len(self.questions)
        tokenizer = self.get_tokenizer()
        image_inputs = self.get_image_processor()(self.create_images()[:num_samples], return_tensors="pt")
        feature_model = self.create_model(torch.float32, "eager")
        prompts = []
        for index, question in enumerate(self.questions[:num_samples]):
            with torch.no_grad():
                image_features = feature_model.get_image_features(
                    pixel_values=image_inputs["pixel_values"][index : index + 1].to(torch_device),
                    image_sizes=image_inputs["image_sizes"][index : index + 1].to(torch_device),
                )
            # A list of per-image features, wrapped in a model output since transformers 5
            image_features = getattr(image_features, "pooler_output", image_features)
            prompt = tokenizer.apply_chat_template(
                user_conversation(question), add_generation_prompt=True, tokenize=False
            )
            prompts.append(prompt.replace("<image>", "<image>" * len(image_features[0])))
        inputs = tokenizer(prompts, padding=True, return_tensors="pt")
        inputs["pixel_values"] = image_inputs["pixel_values"].to(dtype)
        inputs["image_sizes"] = image_inputs["image_sizes"]
        return {name: tensor.to(torch_device) for name, tensor in inputs.items()}

    def greedy_generate(self, model, inputs):
        """Greedy `generate` returning `(new_tokens, scores)`, scores stacked as `(batch, new_tokens, vocab)`."""
        output = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=self.max_new_tokens,
            pad_token_id=self.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
        return output.sequences[:, inputs["input_ids"].shape[1] :], torch.stack(output.scores, dim=1)


@require_torch
@require_vision
@unittest.skipUnless(TRANSFORMERS_AT_LEAST_4_56, "needs transformers >= 4.56")
class LlavaOnevisionHalfPrecisionEagerAttentionTest(unittest.TestCase):
    def setUp(self):
        self.model_tester = LlavaOnevisionHalfPrecisionModelTester(self)

    @parameterized.expand(HALF_PRECISION_DTYPES, name_func=parameterized_name)
    def test_overflow_anyres_batch_eager_matches_sdpa(self, _, dtype_name):
        # Two images of different sizes, hence different numbers of anyres tiles and image tokens, in one batch
        dtype = getattr(torch, dtype_name)
        inputs = self.model_tester.prepare_inputs(dtype)
        self.assertNotEqual(*(inputs["input_ids"] == self.model_tester.image_token_id).sum(-1).tolist())
        with torch.no_grad():
            outputs_eager = self.model_tester.create_model(dtype, "eager")(**inputs, output_hidden_states=True)
            logits_sdpa = self.model_tester.create_model(dtype, "sdpa")(**inputs).logits

        for layer_idx, hidden_states in enumerate(outputs_eager.hidden_states):
            self.assertTrue(torch.isfinite(hidden_states).all(), f"hidden states {layer_idx} are not finite")
        self.assertTrue(torch.isfinite(outputs_eager.logits).all())
        attended = inputs["attention_mask"].bool()
        torch.testing.assert_close(
            outputs_eager.logits[attended], logits_sdpa[attended], **eager_sdpa_tolerance(dtype)
        )

    @parameterized.expand(HALF_PRECISION_DTYPES, name_func=parameterized_name)
    def test_overflow_anyres_batch_generate_matches_sdpa(self, _, dtype_name):
        dtype = getattr(torch, dtype_name)
        inputs = self.model_tester.prepare_inputs(dtype)
        tokens_eager, scores_eager = self.model_tester.greedy_generate(
            self.model_tester.create_model(dtype, "eager"), inputs
        )
        tokens_sdpa, scores_sdpa = self.model_tester.greedy_generate(
            self.model_tester.create_model(dtype, "sdpa"), inputs
        )

        assert_no_degenerate_run(self, tokens_eager, scores_eager)
        assert_greedy_batches_agree(
            self, tokens_eager, scores_eager, tokens_sdpa, scores_sdpa, **eager_sdpa_tolerance(dtype)
        )

    @parameterized.expand(HALF_PRECISION_DTYPES, name_func=parameterized_name)
    def test_overflow_output_attentions_over_image_tokens(self, _, dtype_name):
        dtype = getattr(torch, dtype_name)
        inputs = self.model_tester.prepare_inputs(dtype, num_samples=1)
        model = self.model_tester.create_model(dtype, "eager")
        with torch.no_grad():
            outputs = model(**inputs, output_attentions=True)
            vision_outputs = model.model.vision_tower(inputs["pixel_values"][0], output_attentions=True)
            logits_sdpa = self.model_tester.create_model(dtype, "sdpa")(**inputs).logits

        tolerance = eager_sdpa_tolerance(dtype)
        seq_length = inputs["input_ids"].shape[1]
        image_positions = inputs["input_ids"][0] == self.model_tester.image_token_id
        first_row_after_image = int(image_positions.nonzero().max()) + 1
        above_diagonal = torch.ones(seq_length, seq_length, dtype=torch.bool, device=torch_device).triu(diagonal=1)
        self.assertEqual(len(outputs.attentions), self.model_tester.text_tester.num_hidden_layers)
        for layer_idx, attentions in enumerate(outputs.attentions):
            self.assertEqual(
                tuple(attentions.shape), (1, self.model_tester.text_tester.num_attention_heads, seq_length, seq_length)
            )
            self.assertTrue(torch.isfinite(attentions).all(), f"text attention weights {layer_idx} not finite")
            row_sums = attentions.float().sum(-1)
            torch.testing.assert_close(row_sums, torch.ones_like(row_sums), **tolerance)
            self.assertTrue((attentions[..., above_diagonal] == 0).all(), f"layer {layer_idx} attends to the future")
            weight_on_image = attentions[0, :, first_row_after_image:][..., image_positions].float().sum(-1)
            self.assertTrue((weight_on_image > 0).all(), f"layer {layer_idx}: the text ignores the image")
        for layer_idx, attentions in enumerate(vision_outputs.attentions):
            self.assertTrue(torch.isfinite(attentions).all(), f"vision attention weights {layer_idx} not finite")
            row_sums = attentions.float().sum(-1)
            torch.testing.assert_close(row_sums, torch.ones_like(row_sums), **tolerance)
        torch.testing.assert_close(outputs.logits, logits_sdpa, **tolerance)

    @parameterized.expand(HALF_PRECISION_DTYPES, name_func=parameterized_name)
    @require_accelerate
    def test_overflow_from_pretrained_device_map_auto_generate_matches_sdpa(self, _, dtype_name):
        dtype = getattr(torch, dtype_name)
        inputs = self.model_tester.prepare_inputs(dtype)
        outputs = {}
        with tempfile.TemporaryDirectory() as tmpdirname:
            self.model_tester.create_model(torch.float32, "eager").save_pretrained(tmpdirname)
            for attn_implementation in ("eager", "sdpa"):
                model = LlavaOnevisionForConditionalGeneration.from_pretrained(
                    tmpdirname, dtype=dtype, device_map="auto", attn_implementation=attn_implementation
                )
                self.assertEqual(model.dtype, dtype)
                self.assertEqual(model.config.text_config._attn_implementation, attn_implementation)
                self.assertEqual(model.config.vision_config._attn_implementation, attn_implementation)
                outputs[attn_implementation] = self.model_tester.greedy_generate(model, inputs)

        tokens_eager, scores_eager = outputs["eager"]
        assert_no_degenerate_run(self, tokens_eager, scores_eager)
        assert_greedy_batches_agree(self, tokens_eager, scores_eager, *outputs["sdpa"], **eager_sdpa_tolerance(dtype))

    @parameterized.expand(HALF_PRECISION_DTYPES, name_func=parameterized_name)
    @require_torchvision
    def test_overflow_processor_chat_template_generate_matches_sdpa(self, _, dtype_name):
        dtype = getattr(torch, dtype_name)
        processor = self.model_tester.get_processor()
        image = self.model_tester.create_images()[0]
        prompt = processor.apply_chat_template(
            user_conversation(self.model_tester.questions[0]), add_generation_prompt=True
        )
        inputs = processor(images=image, text=prompt, return_tensors="pt").to(torch_device, dtype)
        tokens_eager, scores_eager = self.model_tester.greedy_generate(
            self.model_tester.create_model(dtype, "eager"), inputs
        )
        tokens_sdpa, scores_sdpa = self.model_tester.greedy_generate(
            self.model_tester.create_model(dtype, "sdpa"), inputs
        )

        assert_no_degenerate_run(self, tokens_eager, scores_eager)
        self.assertFalse(is_exclamation_run(processor.decode(tokens_eager[0], skip_special_tokens=True)))
        assert_greedy_batches_agree(
            self, tokens_eager, scores_eager, tokens_sdpa, scores_sdpa, **eager_sdpa_tolerance(dtype)
        )

    @parameterized.expand(HALF_PRECISION_DTYPES, name_func=parameterized_name)
    @require_torchvision
    @require_accelerate
    def test_overflow_save_pretrained_and_generate_like_a_user(self, _, dtype_name):
        # The path of the problem report: a checkpoint and its processor loaded with `from_pretrained`, then a chat
        dtype = getattr(torch, dtype_name)
        conversation = [
            {"role": "user", "content": [{"type": "text", "text": "What is in this image ?"}, {"type": "image"}]}
        ]
        with tempfile.TemporaryDirectory() as tmpdirname:
            self.model_tester.create_model(torch.float32, "eager").save_pretrained(tmpdirname)
            self.model_tester.get_processor().save_pretrained(tmpdirname)

            processor = AutoProcessor.from_pretrained(tmpdirname)
            answers = {}
            for attn_implementation in ("eager", "sdpa"):
                model = LlavaOnevisionForConditionalGeneration.from_pretrained(
                    tmpdirname, dtype=dtype, device_map="auto", attn_implementation=attn_implementation
                )
                self.assertEqual(model.dtype, dtype)
                self.assertEqual(model.config.text_config._attn_implementation, attn_implementation)
                prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
                image = self.model_tester.create_images()[0]
                inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device, dtype)
                tokens, scores = self.model_tester.greedy_generate(model, inputs)
                answers[attn_implementation] = (tokens, scores, processor.decode(tokens[0], skip_special_tokens=True))

        tokens_eager, scores_eager, answer_eager = answers["eager"]
        tokens_sdpa, scores_sdpa, answer_sdpa = answers["sdpa"]
        assert_no_degenerate_run(self, tokens_eager, scores_eager)
        self.assertFalse(is_exclamation_run(answer_eager), answer_eager)
        assert_greedy_batches_agree(
            self, tokens_eager, scores_eager, tokens_sdpa, scores_sdpa, **eager_sdpa_tolerance(dtype)
        )
        if torch.equal(tokens_eager, tokens_sdpa):
            self.assertEqual(answer_eager, answer_sdpa)


@slow
@require_torch_accelerator
@require_vision
@unittest.skipUnless(TRANSFORMERS_AT_LEAST_4_56, "needs transformers >= 4.56")
class LlavaOnevisionHalfPrecisionIntegrationTest(unittest.TestCase):
    """Eager and sdpa answer alike in float16 with the released checkpoints, where they are in the local cache."""

    def tearDown(self):
        cleanup(torch_device, gc_collect=True)

    @parameterized.expand(
        [("7b", "llava-hf/llava-onevision-qwen2-7b-ov-hf"), ("0_5b", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf")],
        name_func=parameterized_name,
    )
    def test_eager_generate_matches_sdpa_float16(self, _, checkpoint):
        try:
            processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)
            model = LlavaOnevisionForConditionalGeneration.from_pretrained(
                checkpoint,
                dtype=torch.float16,
                device_map=torch_device,
                attn_implementation="eager",
                local_files_only=True,
            )
        except OSError as error:
            self.skipTest(f"{checkpoint} is not in the local Hugging Face cache: {error}")

        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]}
        ]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        image = Image.new("RGB", (640, 480), (200, 40, 40))
        inputs = processor(images=image, text=prompt, return_tensors="pt").to(torch_device, torch.float16)
        generate_kwargs = {
            "do_sample": False,
            "max_new_tokens": 30,
            "output_scores": True,
            "return_dict_in_generate": True,
        }

        outputs = {}
        for attn_implementation in ("eager", "sdpa"):
            model.set_attn_implementation(attn_implementation)
            output = model.generate(**inputs, **generate_kwargs)
            outputs[attn_implementation] = (
                output.sequences[0, inputs["input_ids"].shape[1] :],
                torch.stack(output.scores, dim=1)[0],
            )

        tokens_eager, scores_eager = outputs["eager"]
        tokens_sdpa, scores_sdpa = outputs["sdpa"]
        answer_eager = processor.decode(tokens_eager, skip_special_tokens=True)
        self.assertTrue(torch.isfinite(scores_eager).all())
        self.assertFalse(is_exclamation_run(answer_eager), answer_eager)
        assert_greedy_continuations_agree(
            self, tokens_eager, scores_eager, tokens_sdpa, scores_sdpa, **eager_sdpa_tolerance(torch.float16)
        )
        if torch.equal(tokens_eager, tokens_sdpa):
            self.assertEqual(answer_eager, processor.decode(tokens_sdpa, skip_special_tokens=True))
