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
What the benchmark scripts share: the hardware line every table of theirs names (the CPU's matmul capabilities or the
GPU, and the torch build), and the peak memory of one call. torch is imported inside the functions, so that a parent
process that only starts workers stays light.
"""

import gc
import os
import platform
import time


MATMUL_FLAGS = {"avx2": "AVX2", "avx512_bf16": "AVX512-BF16", "avx512_fp16": "AVX512-FP16", "amx_bf16": "AMX-BF16"}


def cpu_matmul_capabilities() -> str:
    """The CPU model and the matmul-relevant instruction sets `/proc/cpuinfo` advertises (Linux; else the platform)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            first_cpu = cpuinfo.read().split("\n\n")[0].splitlines()
    except OSError:
        return model
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first_cpu)}
    model, flags = fields.get("model name", model), set(fields.get("flags", "").split())
    found = [name for flag, name in MATMUL_FLAGS.items() if flag in flags]
    return f"{model} ({', '.join(found) or 'none of ' + ', '.join(MATMUL_FLAGS.values())})"


def hardware(device: str) -> str:
    """What a benchmark ran on, for its table's header: the GPU or the CPU's matmul capabilities, and the torch build."""
    import torch

    if device == "cuda":
        found = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    else:
        found = f"{cpu_matmul_capabilities()}, {os.cpu_count()} CPUs"
    return f"{found}; torch {torch.__version__}"


def proc_status_bytes(field: str) -> int:
    """A memory field of `/proc/self/status` (`VmRSS`, `VmHWM`) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Resets the resident set's high-water mark (`VmHWM`) to the current resident set size (Linux)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def peak_bytes(call, device: str) -> tuple[int | None, float]:
    """
    Bytes held at the peak of `call()` above what was held before it, returned values included (None where this OS
    cannot tell), and the seconds the call took. CUDA: `torch.cuda.max_memory_allocated()`; CPU: the resident set's
    high-water mark, which memory the allocator kept from earlier calls hides unless `MALLOC_MMAP_THRESHOLD_=65536`.
    """
    import torch

    gc.collect()
    peak = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        try:
            baseline = proc_status_bytes("VmRSS")
            reset_peak_rss()
        except OSError:
            baseline = None
    start = time.perf_counter()
    result = call()
    synchronize(device)
    seconds = time.perf_counter() - start
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - baseline
    elif baseline is not None:
        peak = proc_status_bytes("VmHWM") - baseline
    del result
    gc.collect()
    return peak, seconds
