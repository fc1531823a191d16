"""Cost of transformers-overlay's eager attention against transformers' stock eager attention (and sdpa for scale).

Cells: Qwen2-7B's attention geometry (28 query / 4 key-value heads of 128), batch 1, inference (`torch.no_grad`),
float16, bfloat16 and float32,
- prefill: S query rows over S keys with the causal float mask transformers builds for eager, S = 1024, 2048, 4096;
- decode: 1 query row over a cache of K keys (mask of zeros), K = 1024, 2048, 4096, 8192;
each once on an otherwise idle machine and once beside one competing CPU-bound process (`--load`).

Contenders: `stock` (transformers' own `eager_attention_forward` of Qwen2), `overlay` (the function the overlay
installs: the reference after its mask extras), `reference` (the reference function alone, i.e. what the patch series
puts into transformers and what a patched tree runs without the overlay), and `sdpa` (transformers' sdpa function). On
CUDA, `reference_out_dtype` also measures a candidate: the same grouped reference with the scores from
`torch.bmm(..., out_dtype=torch.float32)` on the half-precision inputs (torch >= 2.8, CUDA only, no derivative).

The header names the hardware: the CPU model and the matmul capabilities its flags advertise (AVX2, AVX512-BF16,
AVX512-FP16, AMX-BF16), or the GPU, and the torch build.

How it measures:
- Each cell runs in a fresh worker process, with torch's default thread count unless `--threads` is given. The worker
  builds the inputs as the model's projections lay them out, calls every contender once on a short input (code pages,
  one-time set-up) and, on CUDA, once more at the cell's size (kernel selection, allocator), then measures each contender's peak memory on one call (timed too: round 0), then times them in
  rounds, rotating the order every round, until `--time-budget` seconds have passed (at least `--min-rounds` rounds
  in all); the median is kept.
- Peak memory on CPU: the peak resident set size (`VmHWM`, reset through `/proc/self/clear_refs`) above the resident
  set before the call, returned tensors included. Workers run with `MALLOC_MMAP_THRESHOLD_=65536`, so glibc returns
  freed tensors to the system and a call's peak is its own. On CUDA: `torch.cuda.max_memory_allocated()` above the
  memory allocated before the call.
- The competing process is `python -c "while True: pass"`, started before the cell's worker and stopped after it.

Usage (from the repository root; the full run takes about 15 minutes on 2 CPU cores, `--quick` under a minute):

    python scripts/benchmark_attention.py                    # every cell; table on stdout, JSON to --output
    python scripts/benchmark_attention.py --quick            # prefill 512 and decode 2048 in bfloat16, idle only
    python scripts/benchmark_attention.py --device cuda      # the same cells on a GPU (no competing process)
    python scripts/benchmark_attention.py --device cuda --quick   # prefill 1024/4096, decode 8192, fp16/bf16 (~2 min)
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchmark_utils


GEOMETRY = (28, 4, 128)  # Qwen2-7B: query heads, key/value heads, head_dim
PREFILL_LENGTHS = (1024, 2048, 4096)
DECODE_LENGTHS = (1024, 2048, 4096, 8192)
DTYPES = ("float16", "bfloat16", "float32")
LOADS = ("idle", "busy")
WARMUP_LENGTH = 64
DEFAULT_OUTPUT = Path(tempfile.gettempdir()) / "transformers-overlay-benchmarks" / "attention.json"
TARGET = "overlay and reference <= stock eager in time and in peak memory"


# ----------------------------------------------------------------------------------------------------------------------
# Worker: one cell in a fresh process, one JSON line on stdout.
# ----------------------------------------------------------------------------------------------------------------------


def _contenders(device):
    """name -> attention function; transformers' own function is read with the overlay reverted."""
    import torch

    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.qwen2 import modeling_qwen2
    from transformers_overlay import patching
    from transformers_overlay.integrations.overlay_eager_attention import overlay_eager_attention_forward
    from transformers_overlay.integrations.stable_eager_attention import eager_attention_forward

    with patching.disabled():
        stock = modeling_qwen2.eager_attention_forward
    if stock.__module__ != modeling_qwen2.__name__:
        raise RuntimeError(f"expected transformers' own eager attention, got {stock.__module__}.{stock.__name__}")
    contenders = {"stock": stock, "overlay": overlay_eager_attention_forward, "reference": eager_attention_forward}

    def reference_out_dtype(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        """The grouped reference with half-precision `query @ key^T` accumulated and returned in float32 (CUDA)."""
        batch, heads, q_len, head_dim = query.shape
        kv_heads, kv_len = key.shape[1], key.shape[2]
        scores = torch.bmm(
            query.reshape(batch * kv_heads, -1, head_dim),
            key.reshape(batch * kv_heads, kv_len, head_dim).transpose(1, 2),
            out_dtype=torch.float32,
        ).view(batch, heads, q_len, kv_len)
        scores.mul_(scaling)
        if attention_mask is not None:
            scores.add_(attention_mask)
        weights = torch.softmax(scores, dim=-1, out=scores).to(value.dtype)
        output = torch.bmm(weights.view(batch * kv_heads, -1, kv_len), value.reshape(batch * kv_heads, kv_len, -1))
        return output.view(batch, heads, q_len, -1).transpose(1, 2).contiguous(), weights

    if device == "cuda":
        contenders["reference_out_dtype"] = reference_out_dtype
    contenders["sdpa"] = sdpa_attention_forward
    return contenders


class _AttentionModule:
    """The attributes transformers' attention functions read from the calling attention layer."""

    def __init__(self, num_key_value_groups):
        self.num_key_value_groups = num_key_value_groups
        self.is_causal = True
        self.training = False


def _inputs(phase, length, dtype, device):
    """
    Query, key, value strided like `proj(x).view(...).transpose(1, 2)` (decode: keys and values contiguous, as a cache
    holds them), and the mask transformers gives eager.
    """
    import torch

    num_heads, num_key_value_heads, head_dim = GEOMETRY
    query_len = length if phase == "prefill" else 1
    generator = torch.Generator().manual_seed(0)

    def states(heads, seq_len):
        return torch.randn(1, seq_len, heads, head_dim, generator=generator).to(device, dtype).transpose(1, 2)

    query, key, value = (
        states(num_heads, query_len),
        states(num_key_value_heads, length),
        states(num_key_value_heads, length),
    )
    if phase == "decode":  # a KV cache holds what `torch.cat` made of the steps: contiguous keys and values
        key, value = key.contiguous(), value.contiguous()
    mask = torch.zeros(query_len, length, dtype=dtype, device=device)
    if phase == "prefill":
        mask.masked_fill_(
            torch.ones(query_len, length, dtype=torch.bool, device=device).triu(1), torch.finfo(dtype).min
        )
    module = _AttentionModule(num_heads // num_key_value_heads)
    return module, query, key, value, mask[None, None]


def _worker(cell):
    import torch

    if cell["threads"]:
        torch.set_num_threads(cell["threads"])
    device, dtype = cell["device"], getattr(torch, cell["dtype"])
    contenders = _contenders(device)

    def calls(length):
        module, query, key, value, mask = _inputs(cell["phase"], length, dtype, device)
        scaling = query.shape[-1] ** -0.5
        return {
            name: (lambda function=function: function(module, query, key, value, mask, scaling=scaling))
            for name, function in contenders.items()
        }

    result = {"threads": torch.get_num_threads()}
    with torch.no_grad():
        for call in calls(WARMUP_LENGTH).values():
            call()
        timed = calls(cell["length"])
        if device == "cuda":  # kernel selection and allocator growth at the timed size stay out of the timings
            for call in timed.values():
                call()
            torch.cuda.synchronize()
        # Round 0 measures each contender's peak memory (and its time); later rounds rotate the order.
        times, started = {name: [] for name in timed}, time.perf_counter()
        result["peak_bytes"] = {}
        for name, call in timed.items():
            result["peak_bytes"][name], seconds = benchmark_utils.peak_bytes(call, device)
            times[name].append(seconds)
        output, weights = timed["overlay"]()
        result["weights_bytes"] = weights.numel() * weights.element_size()
        result["finite"] = bool(torch.isfinite(output).all() and torch.isfinite(weights).all())
        del output, weights
        names, round_index = list(timed), 1
        while round_index < cell["min_rounds"] or time.perf_counter() - started < cell["time_budget"]:
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                benchmark_utils.synchronize(device)
                start = time.perf_counter()
                timed[name]()
                benchmark_utils.synchronize(device)
                times[name].append(time.perf_counter() - start)
            round_index += 1
    result["median_s"] = {name: statistics.median(samples) for name, samples in times.items()}
    result["rounds"] = round_index
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------------


def _run_cell(cell):
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONWARNINGS": "ignore"}
    competitor = None
    if cell["load"] == "busy":
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        completed = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(cell)], capture_output=True, text=True, env=environment
        )
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    if completed.returncode != 0:
        raise RuntimeError(f"worker for {cell} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _cells(args):
    loads = ("idle",) if args.device == "cuda" else args.loads
    for phase, lengths in (("prefill", args.prefill), ("decode", args.decode)):
        for length in lengths:
            for dtype in args.dtypes:
                for load in loads:
                    yield {
                        "phase": phase,
                        "length": length,
                        "dtype": dtype,
                        "load": load,
                        "device": args.device,
                        "threads": args.threads,
                        "time_budget": args.time_budget,
                        "min_rounds": args.min_rounds,
                    }


CONTENDERS_CHECKED = ("overlay", "reference")  # each held to the target against stock


def _row(cell, result):
    median, peak = result["median_s"], result["peak_bytes"]
    times = " | ".join(f"{median[name] * 1e3:.4g}" for name in result["columns"])
    ratios, misses = [], []
    for name in CONTENDERS_CHECKED:
        time_ratio, memory_ratio = median[name] / median["stock"], peak[name] / peak["stock"]
        ratios.append(f"{time_ratio:.2f} | {memory_ratio:.2f}")
        misses += [f"{name} {what}" for what, ratio in (("time", time_ratio), ("peak", memory_ratio)) if ratio > 1.0]
    return (
        f"| {cell['phase']} | {cell['length']} | {cell['dtype']} | {cell['load']} | {times} "
        f"| {peak['stock'] / 2**20:.0f} | {peak['overlay'] / 2**20:.0f} | {peak['reference'] / 2**20:.0f} "
        f"| {' | '.join(ratios)} | {'MISSED: ' + ', '.join(misses) if misses else 'met'} |"
    )


def _header(columns):
    names = ["phase", "S", "dtype", "load", *(f"{name} ms" for name in columns)]
    names += ["stock peak MiB", "overlay peak MiB", "reference peak MiB"]
    names += [f"{name} / stock {what}" for name in CONTENDERS_CHECKED for what in ("time", "peak")] + ["target"]
    return "| " + " | ".join(names) + " |\n|" + "---|" * len(names)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick", action="store_true", help="CPU: prefill 512, decode 2048, bfloat16, idle; CUDA: see the usage above"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    parser.add_argument("--prefill", type=int, nargs="*", default=list(PREFILL_LENGTHS), help="prefill lengths")
    parser.add_argument("--decode", type=int, nargs="*", default=list(DECODE_LENGTHS), help="decode cache lengths")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--loads", nargs="+", default=list(LOADS), choices=LOADS)
    parser.add_argument("--time-budget", type=float, default=2.0, help="seconds of timed rounds per cell")
    parser.add_argument("--min-rounds", type=int, default=1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON results (default {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    if args.quick and args.device == "cuda":  # sized for scripts/gpu_checks.sh: about two minutes
        args.prefill, args.decode, args.dtypes, args.time_budget = [1024, 4096], [8192], ["float16", "bfloat16"], 1.0
    elif args.quick:
        args.prefill, args.decode, args.dtypes, args.loads, args.time_budget = (
            [512],
            [2048],
            ["bfloat16"],
            ["idle"],
            1.0,
        )

    import torch

    import transformers

    hardware = benchmark_utils.hardware(args.device)
    print(f"{hardware}, transformers {transformers.__version__}; target: {TARGET}\n")
    rows = []
    for cell in _cells(args):
        result = _run_cell(cell)
        result["columns"] = list(result["median_s"])
        if not rows:
            print(_header(result["columns"]), flush=True)
        rows.append({"cell": cell, "result": result})
        print(_row(cell, result), flush=True)
    misses = [row for row in rows if "MISSED" in _row(row["cell"], row["result"])]
    print(
        f"\n{len(rows) - len(misses)} of {len(rows)} cells meet the target; torch threads {rows[0]['result']['threads']}."
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "hardware": hardware,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "command": " ".join(sys.argv),
    }
    args.output.write_text(json.dumps({"metadata": metadata, "rows": rows}, indent=1) + "\n")
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
