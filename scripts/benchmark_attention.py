"""Benchmark of transformers-overlay's stable eager attention against transformers' stock eager attention and sdpa.

Three sections, all printed as tables and written to one JSON file:

- `op`: the attention function alone, batch 1, for each head geometry x sequence length x dtype. The contenders are
  stock eager (`transformers.models.qwen2.modeling_qwen2.eager_attention_forward` with the overlay reverted), the
  stable eager (`transformers_overlay.integrations.stable_eager_attention.eager_attention_forward`) and sdpa
  (`transformers.integrations.sdpa_attention.sdpa_attention_forward`). All three get the same inputs: query, key and
  value laid out as the model's projections give them, and the causal float mask transformers builds for eager.
- `model`: a tiny random Qwen2ForCausalLM, whole forward and greedy prefill + 32-token decode (`generate`), with
  `attn_implementation="eager"` (stock, then with the overlay applied) and `"sdpa"`.
- `startup`: what the activation hook (`transformers_overlay.pth`) costs at interpreter start-up.

How it measures (workers run with `TRANSFORMERS_OVERLAY_DISABLE=1`, the overlay applied only where named):

- Time: in one fresh process per configuration, each contender is called once (warm-up), then all contenders are
  called in rounds, rotating the order every round (A B C, B C A, C A B, ...), and the median per contender is
  reported. Rounds stop after `--time-budget` seconds per configuration, but never fewer than `--min-rounds`. The
  same process checks that the stable result is bitwise identical to the same computation in one block.
- Peak memory: in another fresh process per configuration, each contender is called once on a 64-token input (code
  pages, one-time initialisations), then measured one after the other on the real input. On CPU it is the peak
  resident set size above a baseline taken once the inputs exist: the kernel's high water mark (`VmHWM`) is reset by
  writing "5" to `/proc/self/clear_refs` right before the call and read right after it. The process runs with
  `MALLOC_MMAP_THRESHOLD_=65536`, so glibc serves every large tensor from its own mapping and gives it back to the
  system when it is freed: the peak is what the call itself holds, not what an earlier call left in the heap (the
  timing process keeps glibc's defaults, which is what users get). On CUDA it is `torch.cuda.max_memory_allocated()`
  above the memory allocated before the call. The peak includes the returned tensors; the table also gives it as a
  multiple of the size of the returned attention weights.
- Start-up: `python -c pass` with the hook and with the opt-out variable, alternating, median of many runs; the
  import time of `transformers_overlay` from `python -X importtime`; and whether torch or transformers is imported.

Usage (from the repository root):

    python scripts/benchmark_attention.py            # full run
    python scripts/benchmark_attention.py --quick    # a few small configurations, for CI and development
    python scripts/benchmark_attention.py --device cuda
"""

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
OPT_OUT_ENV = "TRANSFORMERS_OVERLAY_DISABLE"
OP_CONTENDERS = ("eager", "stable", "sdpa")
MODEL_CONTENDERS = ("eager", "stable", "sdpa")
# name -> (query heads, key/value heads, head_dim)
GEOMETRIES = {"qwen2-7b": (28, 4, 128), "small": (8, 2, 128)}
FULL = {
    "geometries": tuple(GEOMETRIES),
    "seq_lens": (512, 1024, 2048, 4096),
    "time_budget": 5.0,
    "model_seq_len": 1024,
    "prompt_len": 512,
    "startup_runs": 40,
}
QUICK = {
    "geometries": ("small",),
    "seq_lens": (256, 1024),
    "time_budget": 1.0,
    "model_seq_len": 256,
    "prompt_len": 128,
    "startup_runs": 10,
}
NEW_TOKENS = 32
WARMUP_SEQ_LEN = 64  # input length of the warm-up calls that precede a memory measurement
TARGET_MIN_SEQ_LEN = 1024  # the targets apply from this sequence length on
TARGET_TIME_RATIO = 1.0  # stable / stock eager
TARGET_MEMORY_RATIO = 1.5  # peak memory / returned attention weights


# ----------------------------------------------------------------------------------------------------------------------
# Workers: run in fresh processes, print one JSON line on stdout.
# ----------------------------------------------------------------------------------------------------------------------


def _load_contenders():
    """The three attention functions, with the overlay reverted so transformers' modules hold their own code."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.qwen2 import modeling_qwen2
    from transformers_overlay import patching
    from transformers_overlay.integrations.stable_eager_attention import eager_attention_forward

    patching.revert()
    stock = modeling_qwen2.eager_attention_forward
    if stock is eager_attention_forward or stock.__module__ != modeling_qwen2.__name__:
        raise RuntimeError(
            f"could not load transformers' own eager attention, got {stock.__module__}.{stock.__name__}"
        )
    return {"eager": stock, "stable": eager_attention_forward, "sdpa": sdpa_attention_forward}


class _AttentionModule:
    """The attributes transformers' attention functions read from the calling attention layer."""

    def __init__(self, num_key_value_groups):
        self.num_key_value_groups = num_key_value_groups
        self.is_causal = True
        self.training = False


def _causal_mask(seq_len, dtype, device):
    """The mask transformers gives eager attention: float, 0 where attended, the dtype's minimum elsewhere."""
    import torch

    try:
        from transformers.masking_utils import eager_mask
    except ImportError:  # transformers 4.x builds the same mask in the model
        mask = torch.full((seq_len, seq_len), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
        return mask[None, None]
    return eager_mask(batch_size=1, q_length=seq_len, kv_length=seq_len, dtype=dtype, device=device)


def _op_inputs(geometry, seq_len, dtype, device):
    import torch

    num_heads, num_key_value_heads, head_dim = GEOMETRIES[geometry]
    generator = torch.Generator().manual_seed(0)

    def states(heads):  # (batch, heads, seq, head_dim), strided like `proj(x).view(...).transpose(1, 2)`
        return torch.randn(1, seq_len, heads, head_dim, generator=generator).to(device, dtype).transpose(1, 2)

    query, key, value = states(num_heads), states(num_key_value_heads), states(num_key_value_heads)
    module = _AttentionModule(num_heads // num_key_value_heads)
    return module, query, key, value, _causal_mask(seq_len, dtype, device)


def _synchronize(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _peak_memory(call, device):
    """Bytes held at the peak of `call()` above what was held before it (see the module docstring)."""
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        result = call()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        baseline = _proc_status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current resident set size
        result = call()
        peak = _proc_status_bytes("VmHWM") - baseline
    del result
    gc.collect()
    return peak


def _peak_memories(calls, warmup_calls, device):
    """
    Peak memory of each of `calls`, measured after each of `warmup_calls` (the same work on a short input) ran once, so
    that loading code pages and one-time initialisations are not counted.
    """
    for call in warmup_calls.values():
        call()
    return {name: _peak_memory(call, device) for name, call in calls.items()}


def _proc_status_bytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _timed_rounds(calls, device, time_budget, min_rounds, max_rounds):
    """Median seconds per call, calling the contenders in rotating order, round after round (one warm-up call each)."""
    names = list(calls)
    for name in names:
        calls[name]()
    _synchronize(device)
    times = {name: [] for name in names}
    started = time.perf_counter()
    for round_index in range(max_rounds):
        if round_index >= min_rounds and time.perf_counter() - started > time_budget:
            break
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            _synchronize(device)
            start = time.perf_counter()
            calls[name]()
            _synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "rounds": len(t)} for name, t in times.items()}


def _op_calls(spec, seq_len, functions):
    """One call per contender on fresh inputs of `seq_len` tokens, and the size of the attention weights they return."""
    import torch

    module, query, key, value, mask = _op_inputs(
        spec["geometry"], seq_len, getattr(torch, spec["dtype"]), spec["device"]
    )
    scaling = query.shape[-1] ** -0.5

    def caller(function):
        return lambda: function(module, query, key, value, mask, scaling=scaling)

    weights_bytes = query.shape[1] * seq_len**2 * query.element_size()
    return {name: caller(functions[name]) for name in spec["contenders"]}, weights_bytes


def _op_worker(spec):
    import torch

    from transformers_overlay.integrations import stable_eager_attention

    device, dtype = spec["device"], getattr(torch, spec["dtype"])
    functions = _load_contenders()
    with torch.no_grad():
        if spec["mode"] == "memory":
            warmup_calls, _ = _op_calls(spec, WARMUP_SEQ_LEN, functions)
            calls, weights_bytes = _op_calls(spec, spec["seq_len"], functions)
            return {"weights_bytes": weights_bytes, "peak_bytes": _peak_memories(calls, warmup_calls, device)}
        calls, weights_bytes = _op_calls(spec, spec["seq_len"], functions)
        result = {"weights_bytes": weights_bytes}
        result["time"] = _timed_rounds(calls, device, spec["time_budget"], spec["min_rounds"], spec["max_rounds"])
        # Blocked result against the same computation in one block, and the float32 distance to stock eager.
        output, weights = calls["stable"]()
        rows_per_block = stable_eager_attention._query_rows_per_block
        stable_eager_attention._query_rows_per_block = lambda query_len: query_len
        try:
            unblocked_output, unblocked_weights = calls["stable"]()
        finally:
            stable_eager_attention._query_rows_per_block = rows_per_block
        result["identical_to_unblocked"] = torch.equal(output, unblocked_output) and torch.equal(
            weights, unblocked_weights
        )
        result["finite"] = bool(torch.isfinite(output).all() and torch.isfinite(weights).all())
        if "eager" in calls and dtype == torch.float32:
            stock_output, stock_weights = calls["eager"]()
            result["max_abs_diff_to_eager"] = max(
                (output - stock_output).abs().max().item(), (weights - stock_weights).abs().max().item()
            )
    return result


def _tiny_qwen2(dtype, device, max_positions):
    import torch

    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=128,
        max_position_embeddings=max_positions,
        rope_theta=1e6,
        tie_word_embeddings=False,
    )
    eager_model = Qwen2ForCausalLM._from_config(copy.deepcopy(config), attn_implementation="eager")
    sdpa_model = Qwen2ForCausalLM._from_config(copy.deepcopy(config), attn_implementation="sdpa")
    sdpa_model.load_state_dict(eager_model.state_dict())
    models = {"eager": eager_model, "sdpa": sdpa_model}
    for implementation, model in models.items():
        if model.config._attn_implementation != implementation:
            raise RuntimeError(f"the {implementation} model runs {model.config._attn_implementation} attention")
        model.to(device, dtype).eval()
    return models


def _model_worker(spec):
    import torch

    from transformers_overlay import patching

    device, dtype = spec["device"], getattr(torch, spec["dtype"])
    _load_contenders()  # checks that the overlay can be reverted to stock transformers
    seq_len, prompt_len = spec["seq_len"], spec["prompt_len"]
    models = _tiny_qwen2(dtype, device, max(seq_len, prompt_len + NEW_TOKENS))
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 1024, (1, seq_len), generator=generator).to(device)
    prompt_ids = input_ids[:, :prompt_len]

    def with_backend(name, run, ids):
        model = models["sdpa" if name == "sdpa" else "eager"]

        def call():
            if name == "stable":
                patching.apply(["qwen2"])
            else:
                patching.revert()
            return run(model, ids)

        return call

    def forward(model, ids):
        return model(ids, use_cache=False).logits

    def generate(model, ids):
        return model.generate(
            ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
        )

    result = {}
    with torch.no_grad():
        for task, run, ids in (("forward", forward, input_ids), ("generate", generate, prompt_ids)):
            calls = {name: with_backend(name, run, ids) for name in spec["contenders"]}
            if spec["mode"] == "memory":
                warmup_calls = {name: with_backend(name, run, ids[:, :WARMUP_SEQ_LEN]) for name in spec["contenders"]}
                result[task] = {"peak_bytes": _peak_memories(calls, warmup_calls, device)}
            else:
                result[task] = {
                    "time": _timed_rounds(calls, device, spec["time_budget"], spec["min_rounds"], spec["max_rounds"])
                }
    patching.revert()
    return result


def _worker_main(spec):
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    worker = {"op": _op_worker, "model": _model_worker}[spec["section"]]
    result = worker(spec)
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result))


# ----------------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------------


def _run_worker(spec):
    """Runs `spec` in a fresh interpreter with the overlay's import hook off; returns its JSON result."""
    env = dict(os.environ, **{OPT_OUT_ENV: "1"})
    if spec["mode"] == "memory" and spec["device"] == "cpu":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True, text=True
    )
    if completed.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _run_section(section, configs, base_spec, log):
    rows = []
    for config in configs:
        spec = dict(base_spec, section=section, **config)
        started = time.perf_counter()
        memory = _run_worker(dict(spec, mode="memory"))
        timing = _run_worker(dict(spec, mode="time"))
        rows.append(dict(config, memory=memory, timing=timing, wall_s=time.perf_counter() - started))
        log(f"  {section} {config} done in {rows[-1]['wall_s']:.0f} s")
    return rows


def measure_startup(runs):
    """Interpreter start-up with the activation hook against the opt-out, alternating runs, plus `-X importtime`."""
    pth_files = [path for path in map(Path, sys.path) if (path / "transformers_overlay.pth").is_file()]
    if not pth_files:
        return {"hook_installed": False}
    on_env = {key: value for key, value in os.environ.items() if key != OPT_OUT_ENV}
    off_env = dict(on_env, **{OPT_OUT_ENV: "1"})
    samples = {"hook": [], "opt_out": []}
    for _ in range(runs):
        for name, env in (("hook", on_env), ("opt_out", off_env)):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
            samples[name].append(time.perf_counter() - start)
    probe = "import sys; from transformers_overlay import patching; print(sorted(set(sys.modules) & {'torch', 'transformers'}), patching.status()['import_hook'])"
    probe = subprocess.run([sys.executable, "-c", probe], env=on_env, capture_output=True, text=True, check=True)
    imported, hook_active = probe.stdout.rsplit(maxsplit=1)[0], probe.stdout.split()[-1]
    importtime = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], env=on_env, capture_output=True, text=True, check=True
    )
    overlay_lines = [line for line in importtime.stderr.splitlines() if "transformers_overlay" in line]
    # `-X importtime` columns: self [us] | cumulative [us] | module; the package line's cumulative time covers all.
    overlay_us = max((int(line.split("|")[1]) for line in overlay_lines), default=0)
    return {
        "hook_installed": True,
        "pth": str(pth_files[0] / "transformers_overlay.pth"),
        "runs": runs,
        "median_s": {name: statistics.median(values) for name, values in samples.items()},
        "hook_minus_opt_out_s": statistics.median(samples["hook"]) - statistics.median(samples["opt_out"]),
        "hook_active": hook_active == "True",
        "heavy_modules_imported_at_start": imported,
        "overlay_import_us": overlay_us,
        "importtime_lines": overlay_lines,
    }


def machine_description(device):
    import torch

    import transformers

    description = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    if device == "cuda":
        description["gpu"] = torch.cuda.get_device_name()
    return description


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def _ms(seconds):
    return f"{seconds * 1e3:.1f}" if seconds >= 0.01 else f"{seconds * 1e3:.2f}"


def _mb(num_bytes):
    megabytes = num_bytes / 2**20
    return f"{megabytes:.0f}" if megabytes >= 10 else f"{megabytes:.1f}"


def _ratio(numerator, denominator):
    return f"{numerator / denominator:.2f}" if denominator else "-"


def op_targets(row):
    """Whether the issue's targets hold for one op row (None below the sequence length they apply from)."""
    if row["seq_len"] < TARGET_MIN_SEQ_LEN:
        return None
    time_ratio = row["timing"]["time"]["stable"]["median_s"] / row["timing"]["time"]["eager"]["median_s"]
    memory_ratio = row["memory"]["peak_bytes"]["stable"] / row["memory"]["weights_bytes"]
    return {
        "time": time_ratio <= TARGET_TIME_RATIO,
        "memory": memory_ratio <= TARGET_MEMORY_RATIO,
        "identical_to_unblocked": row["timing"]["identical_to_unblocked"],
    }


def op_table(rows):
    header = (
        "| geometry | S | dtype | eager ms | stable ms | sdpa ms | stable/eager | stable/sdpa "
        "| weights MB | eager peak MB | stable peak MB | sdpa peak MB | eager peak/weights | stable peak/weights "
        "| = unblocked | targets |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in rows:
        times = {name: value["median_s"] for name, value in row["timing"]["time"].items()}
        peaks, weights = row["memory"]["peak_bytes"], row["memory"]["weights_bytes"]
        targets = op_targets(row)
        verdict = "n/a (S < 1024)" if targets is None else ", ".join(k for k, ok in targets.items() if not ok) or "met"
        if targets is not None and verdict != "met":
            verdict = "MISSED: " + verdict
        lines.append(
            f"| {row['geometry']} | {row['seq_len']} | {row['dtype']} | {_ms(times['eager'])} | {_ms(times['stable'])} "
            f"| {_ms(times['sdpa'])} | {_ratio(times['stable'], times['eager'])} "
            f"| {_ratio(times['stable'], times['sdpa'])} | {_mb(weights)} | {_mb(peaks['eager'])} "
            f"| {_mb(peaks['stable'])} | {_mb(peaks['sdpa'])} | {_ratio(peaks['eager'], weights)} "
            f"| {_ratio(peaks['stable'], weights)} | {'yes' if row['timing']['identical_to_unblocked'] else 'NO'} "
            f"| {verdict} |"
        )
    return "\n".join(lines)


def model_table(rows):
    header = (
        "| task | S | dtype | eager ms | stable ms | sdpa ms | stable/eager | stable/sdpa "
        "| eager peak MB | stable peak MB | sdpa peak MB |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in rows:
        for task in ("forward", "generate"):
            times = {name: value["median_s"] for name, value in row["timing"][task]["time"].items()}
            peaks = row["memory"][task]["peak_bytes"]
            length = row["seq_len"] if task == "forward" else f"{row['prompt_len']}+{NEW_TOKENS}"
            lines.append(
                f"| {task} | {length} | {row['dtype']} | {_ms(times['eager'])} | {_ms(times['stable'])} "
                f"| {_ms(times['sdpa'])} | {_ratio(times['stable'], times['eager'])} "
                f"| {_ratio(times['stable'], times['sdpa'])} | {_mb(peaks['eager'])} | {_mb(peaks['stable'])} "
                f"| {_mb(peaks['sdpa'])} |"
            )
    return "\n".join(lines)


def startup_table(startup):
    if not startup.get("hook_installed"):
        return "transformers_overlay.pth is not installed in this interpreter: start-up not measured."
    median = startup["median_s"]
    return "\n".join(
        [
            f"`python -c pass`, median of {startup['runs']} alternating runs: hook {median['hook'] * 1e3:.1f} ms, "
            f"opt-out ({OPT_OUT_ENV}=1) {median['opt_out'] * 1e3:.1f} ms, "
            f"difference {startup['hook_minus_opt_out_s'] * 1e3:+.1f} ms",
            f"import of transformers_overlay at start-up (`-X importtime`, cumulative): "
            f"{startup['overlay_import_us'] / 1e3:.2f} ms; hook active: {startup['hook_active']}; "
            f"torch/transformers imported at start: {startup['heavy_modules_imported_at_start']}",
            *(f"    {line}" for line in startup["importtime_lines"]),
        ]
    )


# ----------------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="a few small configurations, for CI and development")
    parser.add_argument(
        "--sections", nargs="+", choices=("op", "model", "startup"), default=["op", "model", "startup"]
    )
    parser.add_argument(
        "--geometries", nargs="+", choices=sorted(GEOMETRIES), help="op head geometries (default: all)"
    )
    parser.add_argument("--seq-lens", nargs="+", type=int, help="op sequence lengths (default: 512 1024 2048 4096)")
    parser.add_argument("--dtypes", nargs="+", choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--time-budget", type=float, help="seconds of timed rounds per configuration (default: 5)")
    parser.add_argument("--min-rounds", type=int, default=3)
    parser.add_argument("--max-rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, help="torch threads in the workers (default: torch's default)")
    parser.add_argument("--output", type=Path, help="JSON file (default: benchmarks/attention-<device>.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return _worker_main(json.loads(args.worker))
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no CUDA device.")
    elif not Path("/proc/self/clear_refs").exists():
        sys.exit("Peak memory on CPU is read from /proc/self/status and /proc/self/clear_refs: Linux only.")

    preset = QUICK if args.quick else FULL
    dtypes = args.dtypes or ["float16", "bfloat16", "float32"]
    output = args.output or REPO_ROOT / "benchmarks" / f"attention-{args.device}{'-quick' if args.quick else ''}.json"
    base_spec = {
        "device": args.device,
        "threads": args.threads,
        "time_budget": args.time_budget or preset["time_budget"],
        "min_rounds": args.min_rounds,
        "max_rounds": args.max_rounds,
    }

    def log(message):
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    report = {"machine": machine_description(args.device), "args": {k: str(v) for k, v in vars(args).items()}}
    if "op" in args.sections:
        configs = [
            {"geometry": geometry, "seq_len": seq_len, "dtype": dtype}
            for geometry in args.geometries or preset["geometries"]
            for seq_len in args.seq_lens or preset["seq_lens"]
            for dtype in dtypes
        ]
        report["op"] = _run_section("op", configs, dict(base_spec, contenders=OP_CONTENDERS), log)
    if "model" in args.sections:
        configs = [
            {"seq_len": preset["model_seq_len"], "prompt_len": preset["prompt_len"], "dtype": dtype}
            for dtype in dtypes
        ]
        report["model"] = _run_section("model", configs, dict(base_spec, contenders=MODEL_CONTENDERS), log)
    if "startup" in args.sections:
        report["startup"] = measure_startup(preset["startup_runs"])
    report["total_s"] = time.perf_counter() - started

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    machine = report["machine"]
    worker_threads = sorted({row["timing"]["threads"] for key in ("op", "model") for row in report.get(key, [])})
    threads = ", ".join(map(str, worker_threads)) or machine["torch_threads"]
    print(
        f"Machine: {machine['cpu']}, {machine['cpu_count']} CPUs ({threads} torch threads), "
        f"{machine['memory_gib']} GiB{', ' + machine['gpu'] if 'gpu' in machine else ''}; torch {machine['torch']}, "
        f"transformers {machine['transformers']}. Times: median ms; peak: MB above the inputs, returned tensors included."
    )
    if "op" in report:
        print("\nAttention op alone (batch 1, causal mask, head_dim 128):\n" + op_table(report["op"]))
    if "model" in report:
        print(
            f"\nTiny Qwen2ForCausalLM (2 layers, 8/2 heads, head_dim 128), {args.device}:\n"
            + model_table(report["model"])
        )
    if "startup" in report:
        print("\nStart-up cost of the activation hook:\n" + startup_table(report["startup"]))
    print(f"\nTotal {report['total_s']:.0f} s; JSON written to {output}")


if __name__ == "__main__":
    main()
