"""Reproduction of P-001 (NaN / imprecise eager attention in half precision) on tiny models, and the comparison metrics.

Every model type of the model table has a builder here (its row names it): a tiny model with 128-dim attention heads
and large q/k biases on the lowest-frequency rotary dims of every head. RoPE barely rotates those dims, so the biases
add straight into q·kᵀ: eight biased dims of 120 give scores of about 8 * 120² = 115200 > 65504, the float16 limit,
which is how Qwen2-7B's own biases break stock eager attention in float16. Qwen2 has Qwen2-7B's layout (28 query / 4
key-value heads) on a small hidden size; the models whose head size follows from the hidden size have 4 query / 2
key-value heads on a 512 hidden size. Every candidate is compared with a float32 reference that runs the same
dtype-rounded weights, over the real (unpadded) tokens, so the only difference measured is the arithmetic of the
forward pass.
"""

import contextlib
import copy
import importlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import patching
from .integrations.overlay_eager_attention import overlay_eager_attention_forward
from .model_table import MODEL_TABLE, model_type_of_module


# Qwen2-7B's attention layout.
NUM_ATTENTION_HEADS = 28
NUM_KEY_VALUE_HEADS = 4
HEAD_DIM = 128
ROPE_THETA = 1_000_000.0
# Models whose head size is hidden_size / num_heads (Qwen2-MoE, Qwen2-VL, Qwen2.5-VL, Qwen2.5-Omni): 4 / 2 heads of 128.
SMALL_NUM_ATTENTION_HEADS = 4
SMALL_NUM_KEY_VALUE_HEADS = 2
# Qwen2-VL-7B's multimodal rotary sections (temporal, height, width) of a 128-dim head.
MROPE_SECTION = [16, 24, 24]
# Dims at the end of each rotary half that get the bias: the 4 lowest RoPE frequencies.
BIASED_DIMS_PER_HALF = 4
# 120 overflows float16 scores (8 * 120² > 65504); 30 shows the precision bfloat16 scores lose (at 120, q and k
# themselves lose so much in bfloat16 that every attention kernel is equally far from float32).
BIAS_BY_DTYPE = {torch.float16: 120.0, torch.bfloat16: 30.0}
# The float32 reference of a tiny random model is close to uniform; a larger output projection makes its top-1 token a
# real choice, so that top-1 agreement measures something.
LM_HEAD_STD = 0.2

ATTENTION_VARIANTS = ("eager stock", "eager overlay", "sdpa")
# The overlay clears P-001 when its logits are finite and KL(fp32 || overlay) <= KL_FACTOR * KL(fp32 || sdpa) + KL_FLOOR.
KL_FACTOR = 2.0
KL_FLOOR = 1e-6

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
PROMPT_QUESTION = "Describe this image."
PROMPT_TEXT = "The quick brown fox jumps over the lazy dog; in half precision, q times k can overflow."
# The shorter prompt of the left-padded text batch.
SHORT_PROMPT_TEXT = "Half precision: q times k."


@dataclass
class Measurement:
    """Agreement of one forward pass with the float32 reference: NaN/inf, mean KL(fp32 || x), top-1 agreement, max |Δ|."""

    non_finite: bool
    kl: float
    top1: float
    max_abs: float


@dataclass
class Case:
    """A model and its inputs: `load(dtype)` returns the model in `dtype`, in eval mode, on the device to check."""

    name: str
    load: Callable[[torch.dtype], torch.nn.Module]
    inputs: dict
    model_types: tuple[str, ...]  # the model types of the model table whose eager attention the model runs
    bias: float | None = None
    description: str = ""


def model_types_in(model: torch.nn.Module) -> tuple[str, ...]:
    """The model types of the model table whose modeling module defines one of `model`'s sub-modules."""
    found = {model_type_of_module(type(module).__module__) for module in model.modules()}
    return tuple(model_type for model_type in MODEL_TABLE if model_type in found)


def compare_logits(reference: torch.Tensor, logits: torch.Tensor, attention_mask=None) -> Measurement:
    """
    Compares `logits` with the float32 `reference` (both `[batch, seq, vocab]`) over every position, or over the
    positions where the 2-D `attention_mask` is 1 (padding positions' logits mean nothing).
    """
    reference = reference.float()
    logits = logits.float()
    if attention_mask is not None and attention_mask.dim() == 2:
        real = attention_mask.bool().cpu()
        reference, logits = reference[real], logits[real]
    non_finite = not torch.isfinite(logits).all().item()
    log_p = torch.log_softmax(reference, dim=-1)
    kl = (log_p.exp() * (log_p - torch.log_softmax(logits, dim=-1))).sum(-1).mean().item()
    top1 = (reference.argmax(-1) == logits.argmax(-1)).float().mean().item()
    max_abs = (reference - logits).abs().max().item()
    return Measurement(non_finite=non_finite, kl=kl, top1=top1, max_abs=max_abs)


def overlay_clears(measurements: dict[str, Measurement]) -> bool:
    """True when the overlay's logits are finite and at least nearly as close to float32 as sdpa's."""
    overlay, sdpa = measurements["eager overlay"], measurements["sdpa"]
    if overlay.non_finite or math.isnan(overlay.kl):
        return False
    if sdpa.non_finite or math.isnan(sdpa.kl):
        return True
    return overlay.kl <= KL_FACTOR * sdpa.kl + KL_FLOOR


def stock_eager_attention(model_type: str):
    """
    Transformers' own eager attention function for `model_type`, whether or not the overlay replaced it; None when this
    transformers has no module-level one (before the model table's `first_patchable_release`).
    """
    module = importlib.import_module(MODEL_TABLE[model_type].module)
    return patching._originals.get(model_type, getattr(module, patching.PATCHED_ATTRIBUTE, None))


def replaceable_model_types(model_types) -> tuple[str, ...]:
    """The model types in `model_types` whose transformers module exists and has a module-level eager function."""
    replaceable = []
    for model_type in model_types:
        try:
            module = importlib.import_module(MODEL_TABLE[model_type].module)
        except ModuleNotFoundError:
            continue
        if hasattr(module, patching.PATCHED_ATTRIBUTE):
            replaceable.append(model_type)
    return tuple(replaceable)


@contextlib.contextmanager
def eager_attention(functions: dict):
    """Runs the block with `functions[model_type]` as the eager attention of each model type, then restores the objects."""
    modules = {model_type: importlib.import_module(MODEL_TABLE[model_type].module) for model_type in functions}
    previous = {model_type: getattr(module, patching.PATCHED_ATTRIBUTE) for model_type, module in modules.items()}
    try:
        for model_type, function in functions.items():
            setattr(modules[model_type], patching.PATCHED_ATTRIBUTE, function)
        yield
    finally:
        for model_type, function in previous.items():
            setattr(modules[model_type], patching.PATCHED_ATTRIBUTE, function)


def set_attention_implementation(model: torch.nn.Module, implementation: str) -> None:
    """Switches `model` and its sub-models to `implementation` ("eager" or "sdpa")."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
        return
    # transformers < 4.54: every attention layer reads `config._attn_implementation` at run time.
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None:
            config._attn_implementation = implementation


def _logits(model: torch.nn.Module, inputs: dict, dtype: torch.dtype) -> torch.Tensor:
    device = next(model.parameters()).device
    inputs = {
        name: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        for name, value in inputs.items()
    }
    with torch.no_grad():
        return model(**inputs).logits.float().cpu()


def compare_attention(case: Case, dtype: torch.dtype) -> dict[str, Measurement]:
    """
    Runs `case` in `dtype` with stock eager, overlay eager and sdpa attention, then upcasts the same model to float32
    (its weights are now the `dtype`-rounded ones) and compares every run with that float32 stock-eager reference.
    """
    model_types = replaceable_model_types(case.model_types)
    stock = {model_type: stock_eager_attention(model_type) for model_type in model_types}
    overlay = dict.fromkeys(model_types, overlay_eager_attention_forward)
    model = case.load(dtype)
    logits = {}
    for variant, implementation, functions in (
        ("eager stock", "eager", stock),
        ("eager overlay", "eager", overlay),
        ("sdpa", "sdpa", stock),  # stock functions in place for any layer that falls back to eager
    ):
        set_attention_implementation(model, implementation)
        with eager_attention(functions):
            logits[variant] = _logits(model, case.inputs, dtype)
    model.to(torch.float32)
    set_attention_implementation(model, "eager")
    with eager_attention(stock):
        reference = _logits(model, case.inputs, torch.float32)
    del model
    attention_mask = case.inputs.get("attention_mask")
    return {variant: compare_logits(reference, logits[variant], attention_mask) for variant in ATTENTION_VARIANTS}


# Built-in tiny models


def add_overflow_biases_(model: torch.nn.Module, bias: float) -> None:
    """
    Sets the q/k biases of every rotary decoder attention layer (a module with a `layer_idx`, `head_dim` and biased
    `q_proj`/`k_proj`: Qwen2's and its family's) to `bias` on the lowest-frequency rotary dims of each head.
    """
    for module in model.modules():
        if getattr(module, "layer_idx", None) is None or not hasattr(module, "head_dim"):
            continue
        if getattr(getattr(module, "q_proj", None), "bias", None) is None:
            continue
        if getattr(getattr(module, "k_proj", None), "bias", None) is None:
            continue
        half = module.head_dim // 2
        for projection in (module.q_proj, module.k_proj):
            per_head = projection.bias.data.view(-1, module.head_dim)
            per_head[:, half - BIASED_DIMS_PER_HALF : half] = bias
            per_head[:, -BIASED_DIMS_PER_HALF:] = bias


def tiny_qwen2_config(vocab_size: int):
    """A 2-layer Qwen2 text config with Qwen2-7B's attention layout (28 query / 4 kv heads of dim 128)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=NUM_ATTENTION_HEADS,
        num_key_value_heads=NUM_KEY_VALUE_HEADS,
        head_dim=HEAD_DIM,
        rope_theta=ROPE_THETA,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )


def _small_text_config(tokenizer, **overrides) -> dict:
    """Text config keywords of a 2-layer decoder with 4 query / 2 key-value heads of dim 128 (hidden size 512)."""
    rope = {"rope_theta": ROPE_THETA}
    if "mrope_section" in overrides:
        rope = _mrope_keywords(overrides.pop("mrope_section"))
    return {
        "vocab_size": len(tokenizer) + 8,
        "hidden_size": SMALL_NUM_ATTENTION_HEADS * HEAD_DIM,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": SMALL_NUM_ATTENTION_HEADS,
        "num_key_value_heads": SMALL_NUM_KEY_VALUE_HEADS,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": False,
        **rope,
        **overrides,
    }


def _mrope_keywords(mrope_section) -> dict:
    """
    Multimodal rotary settings: `rope_parameters` in transformers 5, `rope_scaling` and `rope_theta` before. The rotary
    type is "default" (multimodal rotary computes default RoPE): transformers 4.x's Qwen2-VL configs rename a "mrope"
    type to it, but Qwen2.5-Omni's does not and its rotary embedding then fails on the unknown type.
    """
    from packaging.version import Version

    import transformers

    if Version(transformers.__version__).major >= 5:
        return {"rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": mrope_section}}
    return {"rope_theta": ROPE_THETA, "rope_scaling": {"type": "default", "mrope_section": mrope_section}}


def _small_vision_config(**overrides) -> dict:
    """A 2-layer Qwen2.5-VL-style vision tower on 8x8 patches whose merger feeds the 512-wide text model."""
    return {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 4,
        "patch_size": 8,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 32,
        "fullatt_block_indexes": [1],
        "out_hidden_size": SMALL_NUM_ATTENTION_HEADS * HEAD_DIM,
        **overrides,
    }


def tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens, no merges) with Qwen2's chat and image special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", IMAGE_TOKEN, VIDEO_TOKEN],
    )


class MissingDependency(ImportError):
    """An optional package the reproduction needs is not installed; the message says which and how to install it."""


def _pil_image_module():
    """`PIL.Image`, imported on first use: only the LLaVA-OneVision cases need Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependency(
            "the LLaVA-OneVision cases need Pillow (transformers' PIL image processor and the synthetic image use it), "
            "and it is not installed: pip install pillow"
        ) from None
    return Image


def tiny_image_processor():
    """LLaVA-OneVision's PIL image processor at 32x32 pixels with a small any-resolution grid."""
    import transformers

    _pil_image_module()  # the processor class exists without Pillow but fails when used, with a less precise message

    # transformers 5 names the PIL implementation `...Pil`; before, the default class was the PIL one.
    processor_class = getattr(transformers, "LlavaOnevisionImageProcessorPil", None)
    if processor_class is None:
        processor_class = transformers.LlavaOnevisionImageProcessor
    return processor_class(
        size={"height": 32, "width": 32}, image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]]
    )


def tiny_llava_onevision_config(tokenizer):
    """LLaVA-OneVision with the tiny Qwen2 text model and a 2-layer SigLIP tower on 32x32 images in 8x8 patches."""
    from transformers import LlavaOnevisionConfig

    image_processor = tiny_image_processor()
    return LlavaOnevisionConfig(
        text_config=tiny_qwen2_config(vocab_size=len(tokenizer) + 8).to_dict(),
        vision_config={
            "model_type": "siglip_vision_model",
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        image_grid_pinpoints=image_processor.image_grid_pinpoints,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )


def _tiny_model(model_class, config, bias: float, seed: int):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)
        model.get_output_embeddings().weight.data.normal_(0.0, LM_HEAD_STD)
    add_overflow_biases_(model, bias)
    return model.eval()


def _deepcopy_loader(model: torch.nn.Module, device: str) -> Callable[[torch.dtype], torch.nn.Module]:
    return lambda dtype: copy.deepcopy(model).to(device=device, dtype=dtype)


def synthetic_image(height: int = 40, width: int = 48):
    """A deterministic RGB gradient image (a `PIL.Image.Image`)."""
    rows, columns = np.indices((height, width))
    channels = [(rows + columns) * 3 % 256, (rows * 5) % 256, (255 - columns * 4) % 256]
    return _pil_image_module().fromarray(np.stack(channels, axis=-1).astype(np.uint8))


def text_inputs(tokenizer, text: str = PROMPT_TEXT) -> dict:
    """`text` tokenized as one unpadded sequence."""
    encoding = tokenizer(text, return_tensors="pt")
    return {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"]}


def left_padded_text_inputs(model, tokenizer) -> dict:
    """`PROMPT_TEXT` and `SHORT_PROMPT_TEXT` as one batch, left-padded as for batched generation (`model` unused)."""
    tokenizer = copy.copy(tokenizer)
    tokenizer.padding_side = "left"
    encoding = tokenizer([PROMPT_TEXT, SHORT_PROMPT_TEXT], return_tensors="pt", padding=True)
    return {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"]}


def llava_onevision_image_text_inputs(model, tokenizer) -> dict:
    """One synthetic image and a chat prompt for the tiny LLaVA-OneVision `model`."""
    return image_text_inputs(model.config, tokenizer, tiny_image_processor())


def image_token_count(config, image_processor, image_inputs) -> int:
    """
    Number of image placeholder tokens the model fills for the single image in `image_inputs`, with upstream's own
    `LlavaOnevisionProcessor._get_number_of_features`. The processor itself is not constructed: in transformers 5 it
    requires the torchvision video processor, which the PIL image path does not need.
    """
    from transformers import LlavaOnevisionProcessor

    counter = LlavaOnevisionProcessor.__new__(LlavaOnevisionProcessor)
    counter.image_processor = image_processor
    counter.num_image_tokens = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    counter.vision_aspect_ratio = getattr(config, "vision_aspect_ratio", "anyres_max_9")
    height, width = (int(size) for size in image_inputs["image_sizes"][0])
    count = counter._get_number_of_features(height, width, *image_inputs["pixel_values"].shape[-2:])
    return count - 1 if config.vision_feature_select_strategy == "default" else count


def image_text_inputs(config, tokenizer, image_processor, image=None, question: str = PROMPT_QUESTION) -> dict:
    """One image and a Qwen2 chat prompt, with the image token repeated as often as the model expects features."""
    image = synthetic_image() if image is None else image
    image_inputs = dict(image_processor(images=image, return_tensors="pt"))
    image_token = tokenizer.convert_ids_to_tokens(config.image_token_index)
    image_tokens = image_token * image_token_count(config, image_processor, image_inputs)
    prompt = f"<|im_start|>user\n{image_tokens}\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return {**text_inputs(tokenizer, prompt), **image_inputs}


def tiny_qwen2(tokenizer, bias: float, seed: int = 0):
    """The tiny Qwen2ForCausalLM with overflow biases `bias`, in float32."""
    from transformers import Qwen2ForCausalLM

    return _tiny_model(Qwen2ForCausalLM, tiny_qwen2_config(vocab_size=len(tokenizer) + 8), bias, seed)


def tiny_llava_onevision(tokenizer, bias: float, seed: int = 0):
    """The tiny LlavaOnevisionForConditionalGeneration with overflow biases `bias` in its Qwen2, in float32."""
    from transformers import LlavaOnevisionForConditionalGeneration

    return _tiny_model(LlavaOnevisionForConditionalGeneration, tiny_llava_onevision_config(tokenizer), bias, seed)


def tiny_qwen2_moe(tokenizer, bias: float, seed: int = 0):
    """A tiny Qwen2MoeForCausalLM (4 experts, 2 per token, a shared expert) with overflow biases `bias`, in float32."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    config = Qwen2MoeConfig(
        **_small_text_config(tokenizer),
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
        qkv_bias=True,
    )
    return _tiny_model(Qwen2MoeForCausalLM, config, bias, seed)


def tiny_qwen2_vl(tokenizer, bias: float, seed: int = 0):
    """A tiny Qwen2VLForConditionalGeneration (multimodal rotary, 2-layer vision tower) with overflow biases `bias`."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    vision_config = {
        "depth": 2,
        "embed_dim": 32,
        "mlp_ratio": 2,
        "num_heads": 4,
        "patch_size": 8,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "hidden_size": SMALL_NUM_ATTENTION_HEADS * HEAD_DIM,
    }
    text_config = _small_text_config(tokenizer, mrope_section=MROPE_SECTION)
    config = Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **_vision_token_ids(tokenizer))
    return _tiny_model(Qwen2VLForConditionalGeneration, config, bias, seed)


def tiny_qwen2_5_vl(tokenizer, bias: float, seed: int = 0):
    """A tiny Qwen2_5_VLForConditionalGeneration (multimodal rotary, windowed vision tower) with overflow biases."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text_config = _small_text_config(tokenizer, mrope_section=MROPE_SECTION)
    config = Qwen2_5_VLConfig(
        text_config=text_config, vision_config=_small_vision_config(), **_vision_token_ids(tokenizer)
    )
    return _tiny_model(Qwen2_5_VLForConditionalGeneration, config, bias, seed)


def tiny_qwen2_5_omni_thinker(tokenizer, bias: float, seed: int = 0):
    """
    A tiny Qwen2.5-Omni thinker (the part that reads text, images and audio and writes text; the talker runs the same
    attention) with overflow biases `bias` in its text decoder, in float32.
    """
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    audio_config = {
        "encoder_layers": 1,
        "d_model": 32,
        "encoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "num_mel_bins": 16,
        "max_source_positions": 50,
        "n_window": 10,
        "output_dim": SMALL_NUM_ATTENTION_HEADS * HEAD_DIM,
    }
    config = Qwen2_5OmniThinkerConfig(
        text_config=_small_text_config(tokenizer, mrope_section=MROPE_SECTION),
        vision_config=_small_vision_config(),
        audio_config=audio_config,
    )
    for name, token_id in _vision_token_ids(tokenizer).items():  # not all of them are thinker config fields
        if getattr(config, name, None) != token_id:
            setattr(config, name, token_id)
    return _tiny_model(Qwen2_5OmniThinkerForConditionalGeneration, config, bias, seed)


def _vision_token_ids(tokenizer) -> dict:
    """Image/video placeholders of the tiny tokenizer; vision start/end are ids past it (the vocabulary has 8 spare)."""
    return {
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "video_token_id": tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        "vision_start_token_id": len(tokenizer),
        "vision_end_token_id": len(tokenizer) + 1,
    }


def tiny_model_case(model_type: str, tokenizer, bias: float, device: str = "cpu") -> Case:
    """`check`'s case for `model_type`: the model table row's builder and inputs, with overflow biases `bias`."""
    entry = MODEL_TABLE[model_type]
    model = globals()[entry.builder](tokenizer, bias)
    inputs = globals()[entry.inputs](model, tokenizer)
    return Case(
        model_type,
        _deepcopy_loader(model, device),
        inputs,
        model_types_in(model),
        bias,
        description=f"tiny {type(model).__name__}",
    )


def builtin_runs(
    dtypes=(torch.float16, torch.bfloat16), device: str = "cpu", model_types=None
) -> list[tuple[Case, torch.dtype]]:
    """
    A case per model type of the model table (or of `model_types`) whose eager function this transformers lets the
    overlay replace, in every dtype with that dtype's bias: text with left padding (LLaVA-OneVision: image and text).
    """
    tokenizer = tiny_tokenizer()
    model_types = replaceable_model_types(MODEL_TABLE if model_types is None else model_types)
    runs = []
    for model_type in model_types:
        for dtype in dtypes:
            runs.append((tiny_model_case(model_type, tokenizer, BIAS_BY_DTYPE[dtype], device), dtype))
    return runs


# Locally available checkpoints


class CheckpointNotAvailable(Exception):
    """The checkpoint asked for is not on this machine, or runs no attention of the model table."""


def checkpoint_case(name_or_path: str, device: str = "cpu") -> Case:
    """
    A case for a checkpoint available on this machine (`local_files_only=True`) whose model runs the eager attention
    of a model type of the model table: a LLaVA-OneVision model gets a synthetic image and a question, any other model
    (a causal LM, or an image-text model such as Qwen2-VL) `PROMPT_TEXT`. Raises `CheckpointNotAvailable` with a
    one-line reason.
    """
    from packaging.version import Version

    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    is_directory = os.path.isdir(name_or_path)
    if is_directory and not os.path.isfile(os.path.join(name_or_path, "config.json")):
        raise CheckpointNotAvailable(f"{name_or_path!r} is a directory without config.json, not a checkpoint")
    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as error:
        if is_directory:
            raise CheckpointNotAvailable(
                f"{name_or_path!r}: config.json cannot be read: {first_line(error)}"
            ) from None
        raise CheckpointNotAvailable(_not_found_locally(name_or_path)) from None
    model_class = _checkpoint_model_class(config)
    model_types = () if model_class is None else _model_types_of_class(model_class, config)
    if not model_types:
        raise CheckpointNotAvailable(
            f"{name_or_path!r} is a {config.model_type!r} model, which runs none of the model types the overlay "
            f"covers ({', '.join(MODEL_TABLE)})"
        )
    if is_directory:
        missing = missing_checkpoint_files(name_or_path, config.model_type)
        if missing:
            raise CheckpointNotAvailable(f"{name_or_path!r} has no {'; no '.join(missing)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
        if not tokenizer(PROMPT_TEXT)["input_ids"]:  # e.g. a tokenizer_config.json without a vocabulary
            raise CheckpointNotAvailable(
                f"{name_or_path!r}: its tokenizer turns text into no tokens (are its tokenizer files complete?)"
            )
        if config.model_type == "llava_onevision":
            image_processor = AutoImageProcessor.from_pretrained(name_or_path, local_files_only=True)
            inputs = image_text_inputs(config, tokenizer, image_processor)
        else:
            inputs = text_inputs(tokenizer)
    except (OSError, ValueError) as error:
        raise CheckpointNotAvailable(f"{name_or_path!r} cannot be prepared: {first_line(error)}") from None

    # transformers 4.56 renamed `torch_dtype` to `dtype`.
    dtype_argument = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"

    def load(dtype):
        model = model_class.from_pretrained(
            name_or_path, local_files_only=True, attn_implementation="eager", **{dtype_argument: dtype}
        )
        return model.to(device).eval()

    return Case(name_or_path, load, inputs, model_types)


def _checkpoint_model_class(config):
    """The auto class entry that generates text with `config`'s model (causal LM or image-text-to-text), or None."""
    import transformers

    for auto_name in ("AutoModelForCausalLM", "AutoModelForImageTextToText"):
        auto_class = getattr(transformers, auto_name, None)
        mapping = getattr(auto_class, "_model_mapping", None)
        if mapping is None:
            continue
        try:
            return mapping[type(config)]
        except KeyError:
            continue
    return None


def _model_types_of_class(model_class, config) -> tuple[str, ...]:
    """The model table's model types that `model_class(config)` runs, found on weights that are never allocated."""
    with torch.device("meta"):
        return model_types_in(model_class(config))


# What a checkpoint directory needs, for `missing_checkpoint_files`: (description, alternatives), each alternative
# a set of files that together suffice.
CHECKPOINT_FILES = (
    (
        "weights (model.safetensors, pytorch_model.bin, or a sharded index)",
        (
            ("model.safetensors",),
            ("model.safetensors.index.json",),
            ("pytorch_model.bin",),
            ("pytorch_model.bin.index.json",),
        ),
    ),
    (
        "tokenizer files (tokenizer.json, or vocab.json and merges.txt)",
        (
            ("tokenizer.json",),
            ("vocab.json", "merges.txt"),
            ("tokenizer.model",),
        ),
    ),
)
IMAGE_PROCESSOR_FILES = ("image processor file (preprocessor_config.json)", (("preprocessor_config.json",),))


def missing_checkpoint_files(directory: str, model_type: str) -> list[str]:
    """What the checkpoint directory lacks for `check --model` (weights, tokenizer, image processor), described."""
    required = [*CHECKPOINT_FILES, *([IMAGE_PROCESSOR_FILES] if model_type == "llava_onevision" else [])]
    return [
        description
        for description, alternatives in required
        if not any(all(os.path.isfile(os.path.join(directory, name)) for name in names) for names in alternatives)
    ]


def _not_found_locally(name: str) -> str:
    """The one-line error for a name that is neither a directory nor a model id in the Hugging Face cache."""
    if os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1:  # a path, not an `org/name` id
        return f"{name!r}: no such directory"
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        HF_HUB_CACHE = "the Hugging Face cache"
    return (
        f"{name!r} is not found locally: it is not a directory here, and not in the Hugging Face cache ({HF_HUB_CACHE}). "
        f"check never downloads: pass the checkpoint's directory, or download it first (hf download {name})"
    )


def first_line(error: Exception) -> str:
    """The first line of an error's message, for one-line reports."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
