#!/usr/bin/env python
# Copyright 2025 The transformers-overlay authors.
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
Time and memory of `capture_attention` beside plain sdpa and eager `output_attentions=True`, on random Qwen2 models with
Qwen2-7B's attention geometry (28 query / 4 key-value heads of dim 128), at torch's default thread count (`--threads`
to change it), once on an otherwise idle machine and once beside one competing CPU-bound process (`--loads`).

- Memory: one forward over `--memory-tokens` tokens (default 8192) per configuration, each in its own process forked
  from this one before it has run any computation (so it starts with torch and transformers imported and nothing
  allocated). "Extra memory" is the peak resident set size during the forward minus the resident set size just before
  it (Linux `VmHWM` after resetting it through `/proc/self/clear_refs`, and `VmRSS`): torch's CPU allocations are
  invisible to tracemalloc. "Kept" is the exact size of what the configuration returns (captured tensors or
  `outputs.attentions`). `output_attentions=True` is skipped, with its projected size, when it would keep more than
  `--max-output-attentions-gib`.
- Speed: `generate` (greedy, `--new-tokens` forced new tokens after a `--prompt-tokens` prompt) on a model with
  Qwen2-7B's layer sizes (hidden 3584, MLP 18944), where the MLP dominates, and again after `--long-prompt-tokens` on
  the memory model, where attention dominates; median and minimum over `--repeats` interleaved runs, and the share of
  the time spent inside the capture computation (timed around it, steadier than total times on a busy CPU).
- The competing process is `python -c "while True: pass"`, running through every measurement of a "busy" row.

Results go to stdout as tables, and the full report as JSON to `--json PATH` (default: `DEFAULT_JSON`, in the system's
temporary directory, never inside the repository).

    python scripts/benchmark_capture.py                    # the README's run (about 5 minutes on 2 CPU cores)
    python scripts/benchmark_capture.py --quick            # small sizes, idle and busy: a smoke test, under a minute
"""

import argparse
import contextlib
import gc
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from unittest import mock

import benchmark_utils
import torch

import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers_overlay import attention_capture, capture_attention
from transformers_overlay.reproduction import set_attention_implementation


# Qwen2-7B: 28 query / 4 key-value heads of dim 128, hidden 3584, MLP 18944, rope theta 1e6.
ATTENTION_GEOMETRY = {"num_attention_heads": 28, "num_key_value_heads": 4, "head_dim": 128, "rope_theta": 1e6}
QWEN2_7B_LAYERS = 28
VOCAB_SIZE = 1024

# name -> (attention implementation, capture_attention kwargs or None, output_attentions)
CONFIGURATIONS = {
    "sdpa": ("sdpa", None, False),
    "sdpa + capture (last row, all heads)": ("sdpa", {"queries": "last", "heads": None}, False),
    "sdpa + capture (last row, head mean)": ("sdpa", {"queries": "last", "heads": "mean"}, False),
    "eager + output_attentions": ("eager", None, True),
}
LOADS = ("idle", "busy")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DEFAULT_JSON = os.path.join(tempfile.gettempdir(), "transformers-overlay", "benchmark_capture.json")


def build_model(hidden_size: int, intermediate_size: int, num_layers: int, max_positions: int, dtype: torch.dtype):
    """A random Qwen2ForCausalLM with Qwen2-7B's attention geometry, created directly in `dtype`."""
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        max_position_embeddings=max_positions,
        **ATTENTION_GEOMETRY,
    )
    default_dtype = torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    return model.eval()


def kept_bytes(captured, outputs_attentions) -> int:
    tensors = [weights for step in captured or [] for weights in step.attentions.values()]
    tensors += list(outputs_attentions or [])
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


@contextlib.contextmanager
def time_spent_capturing():
    """Adds up the seconds spent computing captures (inside the wrapped attention calls) into the yielded list."""
    seconds = [0.0]
    record = attention_capture._Recorder.record

    def timed_record(*args, **kwargs):
        start = time.perf_counter()
        try:
            return record(*args, **kwargs)
        finally:
            seconds[0] += time.perf_counter() - start

    with mock.patch.object(attention_capture._Recorder, "record", timed_record):
        yield seconds


def run_configuration(model, name: str, run) -> tuple[int, float]:
    """
    Runs `run(output_attentions)` under configuration `name`; returns the bytes it kept and the seconds spent in the
    capture computation (0 without capture): on a shared CPU this share is steadier than a ratio of total times.
    """
    implementation, capture_kwargs, output_attentions = CONFIGURATIONS[name]
    set_attention_implementation(model, implementation)
    with torch.no_grad():
        if capture_kwargs is None:
            return kept_bytes(None, run(output_attentions)), 0.0
        with time_spent_capturing() as seconds, capture_attention(model, **capture_kwargs) as captured:
            run(output_attentions)
        return kept_bytes(captured, None), seconds[0]


# Memory: one configuration per subprocess


def memory_worker(args, name: str) -> dict:
    """One forward over `args.memory_tokens` tokens in configuration `name`: time, extra peak RSS, kept bytes."""
    model = build_model(
        args.memory_hidden_size, 2 * args.memory_hidden_size, args.memory_layers, args.memory_tokens, args.dtype
    )
    input_ids = torch.randint(0, VOCAB_SIZE, (1, args.memory_tokens), generator=torch.Generator().manual_seed(0))

    def forward(output_attentions):
        # The base model: the logits of 8k tokens would add memory that has nothing to do with attention.
        return model.model(input_ids=input_ids, use_cache=False, output_attentions=output_attentions).attentions

    gc.collect()
    rss_before = benchmark_utils.proc_status_bytes("VmRSS")
    benchmark_utils.reset_peak_rss()
    start = time.perf_counter()
    kept, capture_seconds = run_configuration(model, name, forward)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "capture_seconds": capture_seconds,
        "extra_peak_bytes": benchmark_utils.proc_status_bytes("VmHWM") - rss_before,
        "kept_bytes": kept,
    }


def projected_output_attentions_bytes(num_layers: int, tokens: int, dtype: torch.dtype) -> int:
    element_size = torch.empty((), dtype=dtype).element_size()
    return num_layers * ATTENTION_GEOMETRY["num_attention_heads"] * tokens * tokens * element_size


def projected_capture_bytes(num_layers: int, tokens: int, heads: int) -> int:
    return num_layers * heads * tokens * 4


def _forked_memory_worker(args, name: str, connection) -> None:
    try:
        connection.send(memory_worker(args, name))
    except BaseException as error:  # reported as the row's error, not as a traceback of the child
        connection.send({"error": f"{type(error).__name__}: {error}"})
    finally:
        connection.close()


def run_memory_worker(args, name: str) -> dict:
    """`memory_worker(args, name)` in a forked child: a process of its own for the peak, without importing torch again."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_forked_memory_worker, args=(args, name, sender))
    child.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:  # the child died without a word (e.g. killed for memory)
        result = {}
    child.join()
    if not result:
        result = {"error": f"worker exited with code {child.exitcode}"}
    return result


def memory_benchmark(args) -> list[dict]:
    rows = []
    for load in args.loads:
        with competing_process(load):
            for name in CONFIGURATIONS:
                row = {"configuration": name, "load": load}
                projected = projected_output_attentions_bytes(args.memory_layers, args.memory_tokens, args.dtype)
                if CONFIGURATIONS[name][2] and projected > args.max_output_attentions_gib * 2**30:
                    row.update(skipped=f"would keep {projected / 2**30:.1f} GiB", kept_bytes=projected)
                else:
                    row.update(run_memory_worker(args, name))
                rows.append(row)
                print(f"  memory ({load}): {name}: {row}", file=sys.stderr, flush=True)
    return rows


@contextlib.contextmanager
def competing_process(load: str):
    """For the "busy" load, one CPU-bound process runs beside everything inside the block."""
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
    try:
        yield
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


# Speed: generate, all configurations interleaved in one process


def speed_benchmark(
    args, load: str, hidden_size: int, intermediate_size: int, prompt_tokens: int, new_tokens: int
) -> dict:
    """`generate` in every configuration on one model, interleaved over `args.repeats` timed rounds, under `load`."""
    setting = {
        "load": load,
        "layers": args.speed_layers,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
    }
    model = build_model(hidden_size, intermediate_size, args.speed_layers, prompt_tokens + new_tokens, args.dtype)
    input_ids = torch.randint(0, VOCAB_SIZE, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))

    def generate(output_attentions):
        outputs = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            pad_token_id=0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            output_attentions=output_attentions,
            return_dict_in_generate=True,
        )
        return [weights for step in outputs.attentions for weights in step] if output_attentions else None

    seconds = {name: [] for name in CONFIGURATIONS}
    capture_shares = {name: [] for name in CONFIGURATIONS}
    kept = {}
    with competing_process(load):
        for repeat in range(args.repeats + 1):  # the first round warms up and is not timed
            for name in CONFIGURATIONS:
                start = time.perf_counter()
                kept[name], capture_seconds = run_configuration(model, name, generate)
                if repeat:
                    seconds[name].append(time.perf_counter() - start)
                    capture_shares[name].append(capture_seconds / seconds[name][-1])
            print(f"  speed {setting}: round {repeat} done", file=sys.stderr, flush=True)
    baseline, fastest_baseline = statistics.median(seconds["sdpa"]), min(seconds["sdpa"])
    rows = [
        {
            "configuration": name,
            "median_seconds": statistics.median(seconds[name]),
            "min_seconds": min(seconds[name]),
            "vs_sdpa": statistics.median(seconds[name]) / baseline,
            "min_vs_sdpa_min": min(seconds[name]) / fastest_baseline,
            "capture_share": statistics.median(capture_shares[name]),
            "kept_bytes": kept[name],
            "seconds": seconds[name],
        }
        for name in CONFIGURATIONS
    ]
    return {"setting": setting, "rows": rows}


def _mib(value) -> str:
    return f"{value / 2**20:,.1f}" if isinstance(value, (int, float)) else "-"


def _print_memory_table(rows: list[dict], settings: dict) -> None:
    print(
        f"\nMemory: one forward over {settings['memory_tokens']} tokens, {settings['memory_layers']} layers, "
        f"{settings['dtype']}, 28 q / 4 kv heads x 128 (hidden {settings['memory_hidden_size']}); "
        "extra = peak RSS during the forward - RSS before (fresh process per row)"
    )
    print(
        "| configuration | load | seconds | capture ms | extra peak MiB | kept MiB | kept for Qwen2-7B (28 layers) MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        seconds = f"{row['seconds']:.1f}" if "seconds" in row else row.get("skipped", row.get("error", "-"))
        per_layer = row.get("kept_bytes", 0) / settings["memory_layers"]
        captures = CONFIGURATIONS[row["configuration"]][1] is not None and "capture_seconds" in row
        capture_ms = f"{row['capture_seconds'] * 1e3:.1f}" if captures else "-"
        print(
            f"| {row['configuration']} | {row['load']} | {seconds} | {capture_ms} | {_mib(row.get('extra_peak_bytes'))} | "
            f"{_mib(row.get('kept_bytes'))} | {_mib(per_layer * QWEN2_7B_LAYERS)} |"
        )


def print_tables(report: dict) -> None:
    settings, environment = report["settings"], report["environment"]
    print(
        f"{environment['hardware']}, {environment['threads']} torch threads, load average before "
        f"{environment['load_average']}, transformers {environment['transformers']}"
    )
    if report["memory"]:
        _print_memory_table(report["memory"], settings)
    for speed in report["speed"]:
        setting = speed["setting"]
        print(
            f"\nSpeed: generate {setting['new_tokens']} tokens after {setting['prompt_tokens']}, {setting['layers']} "
            f"layers of hidden {setting['hidden_size']} / MLP {setting['intermediate_size']}, {settings['dtype']}, "
            f"median of {settings['repeats']} runs, {setting['load']}"
        )
        print("| configuration | median s | min s | median vs sdpa | min vs sdpa | capture share | kept MiB |")
        print("|---|---|---|---|---|---|---|")
        for row in speed["rows"]:
            print(
                f"| {row['configuration']} | {row['median_seconds']:.2f} | {row['min_seconds']:.2f} | "
                f"{row['vs_sdpa']:.2f}x | {row['min_vs_sdpa_min']:.2f}x | {row['capture_share']:.1%} | "
                f"{_mib(row['kept_bytes'])} |"
            )


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default, what users get)")
    parser.add_argument(
        "--loads", nargs="+", choices=LOADS, default=list(LOADS), help="idle, and/or beside one competing process"
    )
    parser.add_argument("--memory-tokens", type=int, default=8192)
    parser.add_argument("--memory-layers", type=int, default=2)
    parser.add_argument("--memory-hidden-size", type=int, default=512)
    parser.add_argument("--max-output-attentions-gib", type=float, default=8.0)
    parser.add_argument("--speed-layers", type=int, default=2)
    parser.add_argument("--speed-hidden-size", type=int, default=3584)
    parser.add_argument("--speed-intermediate-size", type=int, default=18944)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument(
        "--long-prompt-tokens",
        type=int,
        default=4096,
        help="also time generate after this many tokens on the memory model, where attention dominates (0: skip)",
    )
    parser.add_argument("--long-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--json", default=DEFAULT_JSON, help="where to write the full report (default: %(default)s)")
    args = parser.parse_args()
    if args.quick:  # a smoke test of every configuration and load; most of its time is importing torch
        args.memory_tokens, args.memory_hidden_size = 512, 128
        args.speed_hidden_size, args.speed_intermediate_size = 256, 512
        args.prompt_tokens, args.new_tokens = 32, 4
        args.long_prompt_tokens, args.long_new_tokens = 256, 2
        args.repeats = 1
    args.dtype_name, args.dtype = args.dtype, DTYPES[args.dtype]
    return args


def main():
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = {
        name: getattr(args, name)
        for name in (
            "memory_tokens",
            "memory_layers",
            "memory_hidden_size",
            "speed_layers",
            "speed_hidden_size",
            "speed_intermediate_size",
            "prompt_tokens",
            "new_tokens",
            "long_prompt_tokens",
            "long_new_tokens",
            "repeats",
            "loads",
        )
    }
    settings["dtype"] = args.dtype_name
    environment = {
        "hardware": benchmark_utils.hardware("cpu"),
        "threads": torch.get_num_threads(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    start = time.perf_counter()
    report = {"settings": settings, "environment": environment, "memory": [], "speed": []}
    if not args.skip_memory:
        report["memory"] = memory_benchmark(args)
    if not args.skip_speed:
        for load in args.loads:
            report["speed"].append(
                speed_benchmark(
                    args,
                    load,
                    args.speed_hidden_size,
                    args.speed_intermediate_size,
                    args.prompt_tokens,
                    args.new_tokens,
                )
            )
            if args.long_prompt_tokens:
                hidden_size = args.memory_hidden_size
                report["speed"].append(
                    speed_benchmark(
                        args, load, hidden_size, 2 * hidden_size, args.long_prompt_tokens, args.long_new_tokens
                    )
                )
    environment["total_seconds"] = time.perf_counter() - start
    print_tables(report)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as file:
        json.dump(report, file, indent=2)
    print(f"wrote {args.json} ({environment['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
