"""The model table: the one place that knows which transformers model types the overlay covers.

Every row names a model type whose transformers modeling module defines its own module-level `eager_attention_forward`
serving attention with Qwen2's large q/k biases, the first transformers release that has that function, and the
builder of the tiny model that `transformers-overlay check` reproduces P-001 with. The import hook, `apply()` /
`revert()` / `status()`, `check`, the tests and the patch generation all read this table; adding a model type is one
row here plus its builder in `transformers_overlay.reproduction`.

Standard library only: the import hook reads this table at interpreter start.
"""

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    """
    One model type the overlay covers.

    Args:
        module: the transformers modeling module whose module-level `eager_attention_forward` the overlay replaces.
        first_patchable_release: the first transformers release whose `module` has that function (before it, eager
            attention is written inside the attention classes and stays stock).
        attention: the attention layers that run the function, for people reading `status()` and the README.
        builder: name of the function in `transformers_overlay.reproduction` that builds `check`'s tiny model:
            `builder(tokenizer, bias, seed=0)` returns a float32 model in eval mode whose q/k biases are `bias`.
        inputs: name of the function in `transformers_overlay.reproduction` that builds its inputs:
            `inputs(model, tokenizer)` returns the keyword arguments of the model's forward.
    """

    module: str
    first_patchable_release: str
    attention: str
    builder: str
    inputs: str = "left_padded_text_inputs"

    def patchable_in(self, transformers_version: str) -> bool:
        """
        True when transformers `transformers_version` is `first_patchable_release` or later (a pre-release or dev
        build counts as its release), i.e. when its `module` has the module-level function the overlay replaces.
        """
        return _release(transformers_version) >= _release(self.first_patchable_release)


MODEL_TABLE = {
    "qwen2": ModelEntry(
        module="transformers.models.qwen2.modeling_qwen2",
        first_patchable_release="4.48",
        attention="decoder (Qwen2, Qwen2.5, the language model of Qwen2-Audio and of LLaVA models on Qwen2)",
        builder="tiny_qwen2",
    ),
    "qwen2_moe": ModelEntry(
        module="transformers.models.qwen2_moe.modeling_qwen2_moe",
        first_patchable_release="5.0",
        attention="decoder",
        builder="tiny_qwen2_moe",
    ),
    "qwen2_vl": ModelEntry(
        module="transformers.models.qwen2_vl.modeling_qwen2_vl",
        first_patchable_release="4.53",
        attention="text decoder and vision tower",
        builder="tiny_qwen2_vl",
    ),
    "qwen2_5_vl": ModelEntry(
        module="transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
        first_patchable_release="4.53",
        attention="text decoder and vision tower",
        builder="tiny_qwen2_5_vl",
    ),
    "qwen2_5_omni": ModelEntry(
        module="transformers.models.qwen2_5_omni.modeling_qwen2_5_omni",
        first_patchable_release="4.53",
        attention="thinker and talker decoders, vision tower, audio encoder",
        builder="tiny_qwen2_5_omni_thinker",
    ),
    "siglip": ModelEntry(
        module="transformers.models.siglip.modeling_siglip",
        first_patchable_release="4.51",
        attention="vision tower (LLaVA-OneVision's)",
        builder="tiny_llava_onevision",
        inputs="llava_onevision_image_text_inputs",
    ),
}


def _release(version: str) -> tuple[int, ...]:
    """The release numbers of a version string: "4.53.0.dev0" -> (4, 53, 0). Read without `packaging`."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if match is None:
        raise ValueError(f"{version!r} is not a release number")
    return tuple(int(part) for part in match.group(1).split("."))


def patchable_model_types(transformers_version: str) -> tuple[str, ...]:
    """The model types of the table whose eager function transformers `transformers_version` lets the overlay replace."""
    return tuple(model_type for model_type, entry in MODEL_TABLE.items() if entry.patchable_in(transformers_version))


def model_type_of_module(module_name: str) -> str | None:
    """The model type whose row names transformers module `module_name`; None for a module not in the table."""
    for model_type, entry in MODEL_TABLE.items():
        if entry.module == module_name:
            return model_type
    return None
