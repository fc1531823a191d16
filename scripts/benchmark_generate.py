#!/usr/bin/env python
# Copyright 2026 The transformers-overlay authors.
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
End-to-end float16 `generate` with P-001: a random Qwen2 with Qwen2-7B's attention layout (28 query / 4 key-value heads
of 128) and q/k biases that overflow float16 scores (`reproduction.add_overflow_biases_`), greedy from a random prompt,
with three attention set-ups: eager stock (inside `transformers_overlay.disabled()`), eager with the overlay, and sdpa.

For each: one warm-up `generate`; the prefill peak, i.e. the memory held at the peak of a one-token `generate` above
what was held before it (CUDA: `torch.cuda.max_memory_allocated()`; CPU: the resident set's high-water mark, Linux
only, which memory the allocator kept from earlier calls hides unless `MALLOC_MMAP_THRESHOLD_=65536` is set); then `--repeats` timed `generate` calls of `--new-tokens` tokens, every step timestamped (after a CUDA
synchronisation) by a logits processor: prefill ms (up to the first step) and ms per token (the steps after it), medians
over the repeats; and how many generated tokens are token 0 (what NaN logits give), and for how many steps the tokens
agree with sdpa's.

Defaults depend on `--device`: on CUDA a 4-layer model with Qwen2-7B's layer sizes (hidden 3584, MLP 18944), a
2048-token prompt and 64 new tokens; on CPU a 2-layer model (hidden 512, MLP 1024), a 512-token prompt and 16 new tokens
(under a minute on 2 cores). Every size has a flag. A markdown table goes to stdout, with the hardware (the CPU's matmul
capabilities or the GPU) and the torch build; the JSON report to `--output` (default in the system's temporary
directory). Exit code 0 when every set-up ran and neither the overlay nor sdpa generated only token 0; 1 otherwise; 2
when the overlay cannot be applied.

    python scripts/benchmark_generate.py --device cuda
    python scripts/benchmark_generate.py --device cpu --prompt-tokens 64 --new-tokens 4    # a smoke test
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchmark_utils
import torch

import transformers
import transformers_overlay
from transformers import LogitsProcessor, LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2 import modeling_qwen2
from transformers_overlay import reproduction


DEFAULT_OUTPUT = Path(tempfile.gettempdir()) / "transformers-overlay-benchmarks" / "generate.json"
SETUPS = ("eager stock", "eager overlay", "sdpa")
# --device -> default sizes: layers, hidden size, MLP size, vocabulary, prompt tokens, new tokens, timed repeats
DEFAULT_SIZES = {
    "cuda": {
        "layers": 4,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "vocab_size": 32000,
        "prompt_tokens": 2048,
        "new_tokens": 64,
        "repeats": 3,
    },
    "cpu": {
        "layers": 2,
        "hidden_size": 512,
        "intermediate_size": 1024,
        "vocab_size": 1000,
        "prompt_tokens": 512,
        "new_tokens": 16,
        "repeats": 1,
    },
}


class StepClock(LogitsProcessor):
    """Records the time each generation step reaches the logits processors, after the device has finished its work."""

    def __init__(self, device: str):
        self.device = device
        self.times = []

    def __call__(self, input_ids, scores):
        benchmark_utils.synchronize(self.device)
        self.times.append(time.perf_counter())
        return scores


def build_model(args) -> Qwen2ForCausalLM:
    """The random float16 model with the overflow-prone q/k biases, built on the device (no float32 copy on the host)."""
    config = Qwen2Config(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=reproduction.NUM_ATTENTION_HEADS,
        num_key_value_heads=reproduction.NUM_KEY_VALUE_HEADS,
        head_dim=reproduction.HEAD_DIM,
        rope_theta=reproduction.ROPE_THETA,
        max_position_embeddings=args.prompt_tokens + args.new_tokens + 8,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    with torch.device(args.device):
        model = Qwen2ForCausalLM(config)
    reproduction.add_overflow_biases_(model, reproduction.BIAS_BY_DTYPE[torch.float16])
    return model.to(torch.float16).eval()


def generate(model, input_ids, new_tokens: int, clock: StepClock | None = None):
    """Greedy `generate` of exactly `new_tokens` tokens; returns the new tokens `(new_tokens,)`."""
    with torch.no_grad():
        sequences = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=0,
            logits_processor=LogitsProcessorList([clock] if clock is not None else []),
        )
    return sequences[0, input_ids.shape[1] :]


def measure(model, input_ids, args) -> dict:
    """Warm-up, prefill peak and timed `generate` of the model's current attention set-up."""
    generate(model, input_ids, 2)
    peak, _ = benchmark_utils.peak_bytes(lambda: generate(model, input_ids, 1), args.device)
    prefill_ms, per_token_ms = [], []
    for _ in range(args.repeats):
        clock = StepClock(args.device)
        benchmark_utils.synchronize(args.device)
        start = time.perf_counter()
        tokens = generate(model, input_ids, args.new_tokens, clock)
        prefill_ms.append(1e3 * (clock.times[0] - start))
        if len(clock.times) > 1:
            per_token_ms.append(1e3 * (clock.times[-1] - clock.times[0]) / (len(clock.times) - 1))
    return {
        "ms_per_token": statistics.median(per_token_ms) if per_token_ms else None,
        "prefill_ms": statistics.median(prefill_ms),
        "prefill_peak_mib": None if peak is None else peak / 2**20,
        "tokens": tokens.tolist(),
        "token_0": int((tokens == 0).sum()),
    }


def run_setup(setup: str, model, input_ids, args) -> dict:
    if setup == "sdpa":
        reproduction.set_attention_implementation(model, "sdpa")
        return measure(model, input_ids, args)
    reproduction.set_attention_implementation(model, "eager")
    if setup == "eager stock":
        with transformers_overlay.disabled():
            return measure(model, input_ids, args)
    return measure(model, input_ids, args)


def agreement(tokens, reference) -> int:
    """Steps at the start on which two greedy runs generated the same tokens."""
    steps = 0
    for token, expected in zip(tokens, reference):
        if token != expected:
            break
        steps += 1
    return steps


def environment(device: str) -> dict:
    return {
        "hardware": benchmark_utils.hardware(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
    }


def table(results: dict, sizes: str) -> str:
    def number(value, digits):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        f"| attention ({sizes}) | ms per token | prefill ms | prefill peak MiB | generated tokens that are token 0 | "
        "steps equal to sdpa's |",
        "|---|---|---|---|---|---|",
    ]
    sdpa_tokens = results.get("sdpa", {}).get("tokens")
    for setup in SETUPS:
        result = results.get(setup)
        if result is None:
            continue
        if "error" in result:
            lines.append(f"| {setup} | failed: {result['error']} | | | | |")
            continue
        new_tokens = len(result["tokens"])
        same = "n/a" if sdpa_tokens is None else f"{agreement(result['tokens'], sdpa_tokens)} of {new_tokens}"
        lines.append(
            f"| {setup} | {number(result['ms_per_token'], 2)} | {number(result['prefill_ms'], 1)} | "
            f"{number(result['prefill_peak_mib'], 0)} | {result['token_0']} of {new_tokens} | {same} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    for name in DEFAULT_SIZES["cpu"]:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            help=f"default: {DEFAULT_SIZES['cuda'][name]} on cuda, {DEFAULT_SIZES['cpu'][name]} on cpu",
        )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON report (default {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    for name, default in DEFAULT_SIZES[args.device].items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.new_tokens < 2 or args.repeats < 1 or args.prompt_tokens < 1:
        parser.error("--new-tokens must be at least 2, --repeats and --prompt-tokens at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"benchmark_generate: --device cuda, but torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return 2

    transformers_overlay.apply(["qwen2"])
    if modeling_qwen2.eager_attention_forward is not transformers_overlay.eager_attention_forward:
        state = transformers_overlay.status()["models"]["qwen2"]["state"]
        print(f"benchmark_generate: the overlay cannot patch Qwen2 here: {state}", file=sys.stderr)
        return 2

    found = environment(args.device)
    sizes = (
        f"{args.layers} layers, hidden {args.hidden_size}, 28/4 heads x 128, prompt {args.prompt_tokens}, "
        f"{args.new_tokens} new tokens"
    )
    print(
        f"float16 generate on {found['hardware']}, {found['torch_threads']} torch threads; "
        f"transformers {found['transformers']}; {sizes}; medians of {args.repeats} timed runs after a warm-up\n",
        flush=True,
    )
    results, failed = {}, []
    try:
        model = build_model(args)
        generator = torch.Generator().manual_seed(1)
        input_ids = torch.randint(1, args.vocab_size, (1, args.prompt_tokens), generator=generator).to(args.device)
    except Exception as error:  # e.g. out of memory: reported like a failed set-up
        failed.append(f"building the model: {error!r:.300}")
        model = None
    for setup in SETUPS if model is not None else ():
        try:
            results[setup] = run_setup(setup, model, input_ids, args)
        except Exception as error:
            results[setup] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
            failed.append(f"{setup}: {results[setup]['error']}")
        if args.device == "cuda":
            torch.cuda.empty_cache()
    for setup in ("eager overlay", "sdpa"):
        result = results.get(setup, {})
        if "token_0" in result and result["token_0"] == len(result["tokens"]):
            failed.append(f"{setup} generated only token 0 (P-001 not cleared)")

    print(table(results, sizes))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    arguments = {name: value for name, value in vars(args).items() if name != "output"}
    report = {"metadata": {**found, "arguments": arguments}, "results": results, "failed": failed}
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    stock = results.get("eager stock", {})
    if "token_0" in stock:
        reproduced = stock["token_0"] == len(stock["tokens"])
        print(f"\nstock eager {'reproduces' if reproduced else 'does not reproduce'} P-001 (only token 0).")
    print(f"results written to {args.output}")
    if failed:
        print("FAILED:\n  " + "\n  ".join(failed))
        return 1
    print("OK: every set-up ran; the overlay and sdpa generate real tokens.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
