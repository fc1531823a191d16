"""FastV-style image-token scoring with `capture_attention`, offline on the overlay's built-in tiny LLaVA-OneVision.

FastV ranks the image tokens by the attention the last prompt token pays them in the second decoder layer (its K=2,
layer index 1), averaged over heads, and keeps the best ones. `capture_attention` computes exactly that one float32
row while the model keeps running sdpa in float16: no eager backend, no `(heads, tokens, tokens)` tensor per layer.

Runs offline as it is: `python examples/capture_attention_fastv.py`. To run it on a real checkpoint (about 16 GB to
download unless cached; `AutoProcessor` needs torchvision, `device_map` needs accelerate), replace
`tiny_model_and_inputs()` with:

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(
        "llava-hf/llava-onevision-qwen2-7b-ov-hf", dtype=torch.float16, attn_implementation="sdpa", device_map="auto"
    )
    processor = AutoProcessor.from_pretrained("llava-hf/llava-onevision-qwen2-7b-ov-hf")
    image = PIL.Image.open("your-image.jpg")
    prompt = "<|im_start|>user\n<image>\nDescribe this image.<|im_end|>\n<|im_start|>assistant\n"
    inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device, torch.float16)
"""

import torch

from transformers_overlay import capture_attention, image_token_positions, reproduction


FASTV_LAYER = 1  # FastV's K=2: the attention map of the second decoder layer
FASTV_KEEP_RATIO = 0.5


def fastv_image_scores(model, inputs: dict, layer: int = FASTV_LAYER):
    """
    Attention of the last prompt token to every image token in decoder layer `layer`, averaged over heads: a float32
    tensor `(batch, n_image_tokens)`, with the `(batch, n_image_tokens)` sequence positions of those tokens.
    """
    positions = image_token_positions(inputs["input_ids"], model)
    with torch.no_grad():
        with capture_attention(model, layers=layer, queries="last", heads="mean", keys=positions) as captured:
            model(**inputs)
    return captured[0].attentions[layer][:, 0, -1], positions


def tiny_model_and_inputs(dtype: torch.dtype = torch.float16):
    """The built-in tiny LLaVA-OneVision (P-001's overflowing q/k biases included) on sdpa, and one image prompt."""
    tokenizer = reproduction.tiny_tokenizer()
    config = reproduction.tiny_llava_onevision_config(tokenizer)
    inputs = reproduction.image_text_inputs(config, tokenizer, reproduction.tiny_image_processor())
    model = reproduction.tiny_llava_onevision(tokenizer, bias=120.0).to(dtype)
    reproduction.set_attention_implementation(model, "sdpa")
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return model, inputs


def main():
    model, inputs = tiny_model_and_inputs()
    scores, positions = fastv_image_scores(model, inputs)
    num_kept = int(scores.shape[-1] * FASTV_KEEP_RATIO)
    kept = positions.gather(-1, scores.topk(num_kept, dim=-1).indices).sort(dim=-1).values
    print(f"{scores.shape[-1]} image tokens, attention mass on them {scores.sum(-1).tolist()}")
    print(f"FastV keeps {num_kept}: positions {kept[0].tolist()}")
    return scores, kept


if __name__ == "__main__":
    main()
