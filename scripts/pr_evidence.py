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
Prints the tiny-model tables of `patches/PR.md`'s "Evidence" section for the installed torch and transformers.

Each model is built by the tester of its upstream-style test (`tests/models/<model>/test_modeling_*_eager_attention.py`;
LLaVA-OneVision's only where that file exists), with the test's inputs, and run in float16 and bfloat16 with three
attention setups: "stock eager" (the modeling module's own `eager_attention_forward`), "this PR" (that function
replaced, for the run, by `transformers_overlay.integrations.stable_eager_attention.eager_attention_forward` in the
modeling modules the series changes) and "sdpa". As in the tests, the reference is the float32 model with the same
weights (and image) rounded to the half-precision dtype, run with stock eager; the metrics cover the non-padding
positions. The script sets `TRANSFORMERS_OVERLAY_DISABLE=1` for itself, so that stock is stock where the overlay is
installed. Deterministic (fixed seeds); under half a minute on two CPU cores.

usage:
    python scripts/pr_evidence.py
"""

import contextlib
import copy
import importlib
import os
import platform
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
OPT_OUT_ENV = "TRANSFORMERS_OVERLAY_DISABLE"

# (label, test directory under tests/models, tester class) in PR.md's order; a missing test file is skipped.
MODELS = (
    ("qwen2", "qwen2", "Qwen2EagerAttentionTester"),
    ("qwen2_moe", "qwen2_moe", "Qwen2MoeEagerAttentionTester"),
    ("qwen2_vl (text only)", "qwen2_vl", "Qwen2VLEagerAttentionTester"),
    ("qwen2_5_vl (text only)", "qwen2_5_vl", "Qwen2_5_VLEagerAttentionTester"),
    ("qwen2_5_omni thinker", "qwen2_5_omni", "Qwen2_5OmniThinkerEagerAttentionTester"),
    ("llava_onevision", "llava_onevision", "LlavaOnevisionEagerAttentionTester"),
)
SETUPS = ("stock eager", "this PR", "sdpa")


def cpu_model() -> str:
    """The CPU's model name as the OS reports it (`/proc/cpuinfo` on Linux), else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def eager_function(modules, function):
    """Sets the module-level `eager_attention_forward` of each of `modules` to `function` inside the block only."""
    saved = [(module, module.eager_attention_forward) for module in modules]
    try:
        for module, _ in saved:
            module.eager_attention_forward = function
        yield
    finally:
        for module, stock in saved:
            module.eager_attention_forward = stock


def run_model(model, dtype, attn_implementation, inputs):
    """Logits of a copy of `model` cast to `dtype` (floating inputs too), as the tests' `run_model` computes them."""
    import torch

    model = copy.deepcopy(model).to(dtype)
    model.set_attn_implementation(attn_implementation)
    inputs = {name: value.to(dtype) if value.is_floating_point() else value for name, value in inputs.items()}
    with torch.no_grad():
        return model(**inputs, output_attentions=attn_implementation == "eager").logits.float()


def compare(logits, reference):
    """(max |logit error|, mean KL(reference || logits), top-1 agreement) over the rows of `reference`; NaN-aware."""
    import torch

    error = (logits - reference).abs().max().item()
    log_p = torch.log_softmax(reference, dim=-1)
    kl = (log_p.exp() * (log_p - torch.log_softmax(logits, dim=-1))).sum(-1).mean().item()
    # a row with NaN logits has no most likely token: it never agrees
    agree = (logits.argmax(-1) == reference.argmax(-1)) & torch.isfinite(logits).all(-1)
    return error, kl, agree.float().mean().item()


def measure(tester, pr_function, pr_modules):
    """
    {dtype: {setup: (error, kl, top1)}} for the tester's model and inputs: the test's seeds, fresh model per dtype,
    the float32 reference with the dtype-rounded weights and floating inputs, all on the non-padding positions.
    """
    import torch

    results = {}
    for dtype in (torch.float16, torch.bfloat16):
        torch.manual_seed(0)
        inputs = tester.prepare_inputs()
        inputs = {
            name: value.to(dtype).float() if value.is_floating_point() else value for name, value in inputs.items()
        }
        model = tester.get_model().to(dtype).float()
        valid = inputs["attention_mask"].bool()
        reference = run_model(model, torch.float32, "eager", inputs)[valid]
        runs = {}
        for setup in SETUPS:
            patch = eager_function(pr_modules, pr_function) if setup == "this PR" else contextlib.nullcontext()
            with patch:
                logits = run_model(model, dtype, "sdpa" if setup == "sdpa" else "eager", inputs)
            runs[setup] = compare(logits[valid], reference)
        results[dtype] = runs
    return results


def pr_modules_of(model, family):
    """The modeling modules of `family` (model types the series changes) that define a class used in `model`."""
    names = {f"transformers.models.{model_type}.modeling_{model_type}" for model_type in family}
    used = sorted({type(submodule).__module__ for submodule in model.modules()} & names)
    modules = [importlib.import_module(name) for name in used]
    for module in modules:
        source = module.eager_attention_forward.__module__
        if source != module.__name__:
            sys.exit(f"{module.__name__}.eager_attention_forward comes from {source}: stock eager would not be stock")
    return modules


def number(value, spec):
    """`value` formatted with `spec`, as PR.md writes numbers: "NaN", exponents without leading zeros (2.1e-4)."""
    if value != value:
        return "NaN"
    mantissa, e, exponent = format(value, spec).partition("e")
    return f"{mantissa}{e}{int(exponent)}" if e else mantissa


def main():
    sys.path[:0] = [str(REPO), str(REPO / "src")]
    import torch

    import transformers
    from transformers_overlay.integrations.stable_eager_attention import eager_attention_forward
    from transformers_overlay.upstream_series import FAMILY

    measured, skipped = {}, []
    for label, directory, tester_name in MODELS:
        test_file = REPO / "tests" / "models" / directory / f"test_modeling_{directory}_eager_attention.py"
        if not test_file.is_file():
            skipped.append(f"{label} (no {test_file.relative_to(REPO)})")
            continue
        test_module = importlib.import_module(f"tests.models.{directory}.{test_file.stem}")
        tester = getattr(test_module, tester_name)(parent=None)
        if label == "qwen2":
            geometry_tester = tester
        pr_modules = pr_modules_of(tester.get_model(), FAMILY)
        measured[label] = measure(tester, eager_attention_forward, pr_modules)

    config = geometry_tester.get_config()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    padding = int((geometry_tester.prepare_inputs()["attention_mask"] == 0).sum())
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, CPU {cpu_model()}; tester: "
        f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.num_attention_heads} query / "
        f"{config.num_key_value_heads} key-value heads of dim {head_dim}, q/k bias {geometry_tester.qk_bias:g}, "
        f"{geometry_tester.batch_size} x {geometry_tester.seq_length} tokens ({padding} left padding)"
    )

    print("\n    max |logit error| / mean KL / top-1 agreement with the float32 reference")
    for dtype, runs in measured["qwen2"].items():
        for index, (setup, (error, kl, top1)) in enumerate(runs.items()):
            name = str(dtype).removeprefix("torch.") if index == 0 else ""
            cells = f"{number(error, '.3f'):<5} / {number(kl, '.1e'):<7} / {number(top1, '.0%')}"
            print(f"    {name:<9} {setup:<13} {cells}")

    print(f"\n    {'model':<24} " + "".join(f"{setup:<15}" for setup in SETUPS).rstrip())
    for label, results in measured.items():
        cells = [" / ".join(number(results[dtype][setup][0], ".3f") for dtype in results) for setup in SETUPS]
        print(f"    {label:<24} " + "".join(f"{cell:<15}" for cell in cells).rstrip())
    if skipped:
        print(f"\nskipped: {', '.join(skipped)}")


if __name__ == "__main__":
    if os.environ.get(OPT_OUT_ENV) != "1":
        # the overlay's import hook is installed at interpreter start, when its opt-out is not set: start again without
        os.environ[OPT_OUT_ENV] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    main()
