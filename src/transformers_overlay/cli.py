"""`transformers-overlay check`: reports what the overlay patches here and reproduces P-001 with and without it.

Exit codes: 0 the overlay clears P-001 and eager attention runs it by default (also on a transformers release newer
than the newest tested one, when its stock functions are recognised: the report says so); 1 it does not clear P-001
(or the comparison cannot run); 2 bad arguments, or the requested model or device is not available; 3 it clears P-001
but this interpreter runs stock eager attention by default (opt-out set, import hook missing, transformers older than
the supported lower bound, or a function text the overlay does not recognise and was not forced to replace).
"""

import argparse
import os
import sys
import warnings

from . import __version__


EXIT_CLEARED = 0
EXIT_NOT_CLEARED = 1
EXIT_UNAVAILABLE = 2
EXIT_NOT_ACTIVE = 3

DTYPES = ("float16", "bfloat16")
TABLE_COLUMNS = ("dtype", "q/k bias", "attention", "NaN", "KL(fp32||x)", "top-1", "max|Δ|", "")
COLUMN_WIDTHS = (8, 8, 13, 3, 11, 6, 7, 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transformers-overlay",
        description="Numerically safe eager attention in float16/bfloat16 for transformers' Qwen2 family.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="show what is patched and reproduce P-001 with stock eager, overlay eager and sdpa",
        description=(
            "Prints the transformers/torch versions and what the overlay patches, then runs a tiny model with 7B-like "
            "q/k biases for every model type of the overlay's model table (or --model) in float16 and bfloat16 with "
            "stock eager, overlay eager and sdpa attention, and compares each with a float32 reference of the same "
            "rounded weights."
        ),
        epilog=(
            "exit codes: 0 the overlay clears P-001 and is active by default (on an untested transformers release too, "
            "when its stock functions are recognised); 1 it does not clear P-001; 2 bad arguments, or model/device not "
            "available; 3 it clears P-001 but eager attention here runs the stock function by default (opt-out, no "
            "import hook, transformers older than supported, or a function text not recognised)"
        ),
    )
    check.add_argument(
        "--model",
        metavar="TYPE_OR_PATH",
        help=(
            "a model type of the model table (e.g. qwen2_vl: only its tiny model), or a checkpoint already on this "
            "machine (never downloaded) whose model runs one of them, instead of every tiny model"
        ),
    )
    check.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu (default), cuda, cuda:1")
    check.add_argument(
        "--dtype", nargs="+", choices=DTYPES, default=list(DTYPES), help="half-precision dtypes to check"
    )
    return parser


def main(argv=None) -> int:
    """Entry point of the `transformers-overlay` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    return check(model=args.model, device=args.device, dtypes=args.dtype)


def _error(message: str) -> None:
    print(f"transformers-overlay check: error: {message}", file=sys.stderr)


def _device_problem(device: str) -> str | None:
    import torch

    try:
        device_type = torch.device(device).type
    except RuntimeError:
        return f"--device {device}: not a torch device"
    if device_type == "cuda" and not torch.cuda.is_available():
        return f"--device {device}: CUDA is not available (torch {torch.__version__})"
    if device_type not in ("cpu", "cuda"):
        return f"--device {device}: only cpu and cuda are supported"
    return None


def _import_patched_modules() -> str | None:
    """
    Imports the transformers modules of the model table, as a user's model would (the import hook acts here); a model
    this transformers does not have yet is skipped (its status line says so).
    """
    from . import patching
    from .model_table import MODEL_TABLE

    for model_type, entry in MODEL_TABLE.items():
        try:
            # The hook's warning about a module it leaves stock would repeat what that module's status line says.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="transformers-overlay", category=RuntimeWarning)
                patching._import_modeling_module(model_type)
        except Exception as error:
            return f"cannot import {entry.module}: {error!r}"
    return None


def _not_active_reason(status: dict, model_types) -> str | None:
    """Why eager attention of `model_types` runs stock code by default in this interpreter; None when it is patched."""
    from . import patching

    states = {model_type: status["models"][model_type]["state"] for model_type in model_types}
    if all(_is_patched(state) for state in states.values()):
        return None
    if status["opt_out"]:
        variable = status["opt_out_variable"]
        return f"the opt-out {variable}={os.environ.get(variable)} is set (transformers_overlay.apply() overrides it)"
    if not status.get("transformers_supported", True):
        return (
            f"transformers {status['transformers']} is outside the supported range {status['supported_transformers']}"
        )
    unrecognised = [
        model_type for model_type, state in states.items() if not _is_patched(state) and patching.FORCE_ENV in state
    ]
    if unrecognised:
        return (
            f"the eager function of {', '.join(unrecognised)} is not a stock text the overlay recognises "
            f"(set {patching.FORCE_ENV}=1 or call transformers_overlay.apply(force=True) to replace it anyway)"
        )
    if status["activation"] == patching.NOT_INSTALLED:
        return (
            "the overlay is not installed in this environment, so no import hook patches transformers "
            "(pip install the package, or call transformers_overlay.apply())"
        )
    if status["activation"] == patching.HOOK_NOT_LOADED:
        return "the import hook was not loaded: site-packages .pth files were not processed (python -S?)"
    return "; ".join(f"{model_type}: {state}" for model_type, state in states.items() if not _is_patched(state))


def _is_patched(state: str) -> bool:
    """True for a model type state "patched", with or without a note ("patched (untested release, ...)")."""
    from . import patching

    return state == patching.PATCHED or state.startswith(f"{patching.PATCHED} (")


def _print_header(status: dict, device: str) -> None:
    import torch

    device_name = (
        torch.cuda.get_device_name(device) if device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    )
    variable = status["opt_out_variable"]
    if not status["opt_out"]:
        opt_out = f"opt-out {variable} not set"
    elif variable in status["activation"]:  # "installed, disabled by <variable>"
        opt_out = f"set to {os.environ.get(variable)!r}"
    else:
        opt_out = f"opt-out {variable} set to {os.environ.get(variable)!r}"
    print(f"transformers-overlay {__version__}: {status['activation']} ({opt_out})")
    tested = f"newest tested {status['newest_tested_transformers']}"
    if status["transformers_untested"]:
        tested = f"untested release: newer than the newest tested {status['newest_tested_transformers']}"
    print(f"transformers {status['transformers']} (supported {status['supported_transformers']}, {tested}), ", end="")
    print(f"torch {torch.__version__}, device {device} ({device_name})")
    width = max(len(model_type) for model_type in status["models"])
    for model_type, entry in status["models"].items():
        print(f"  {model_type:<{width}}  {entry['module']}: {entry['state']}")


def _patched_note(state: str) -> str:
    """The note of a "patched (note)" state; "" for any other state."""
    from . import patching

    prefix = f"{patching.PATCHED} ("
    return state[len(prefix) : -1] if state.startswith(prefix) else ""


def _parenthesised(notes: list[str]) -> str:
    return f" ({'; '.join(notes)})" if notes else ""


def _format_row(cells, name_width: int) -> str:
    widths = (name_width, *COLUMN_WIDTHS)
    return "  ".join(f"{cell:<{width}}" for cell, width in zip(cells, widths)).rstrip()


def _measurement_cells(measurement) -> tuple[str, str, str, str]:
    kl = "nan" if measurement.kl != measurement.kl else f"{measurement.kl:.2e}"
    max_abs = "nan" if measurement.max_abs != measurement.max_abs else f"{measurement.max_abs:.3g}"
    return ("yes" if measurement.non_finite else "no", kl, f"{100 * measurement.top1:.1f}%", max_abs)


def check(model: str | None = None, device: str = "cpu", dtypes=DTYPES) -> int:
    """Runs the check and prints the report; returns the exit code (see the module docstring)."""
    problem = _device_problem(device)
    if problem is not None:
        _error(problem)
        return EXIT_UNAVAILABLE
    problem = _import_patched_modules()
    if problem is not None:
        _error(problem)
        return EXIT_UNAVAILABLE

    import torch

    from . import patching, reproduction

    status = patching.status()  # the default of this interpreter, before the check swaps anything
    dtypes = [getattr(torch, name) for name in dict.fromkeys(dtypes)]
    from .model_table import MODEL_TABLE

    if model is None or model in MODEL_TABLE:
        try:
            runs = reproduction.builtin_runs(dtypes, device, model_types=None if model is None else [model])
        except reproduction.MissingDependency as error:
            _error(str(error))
            return EXIT_UNAVAILABLE
        if not runs:
            _error(f"--model {model}: {status['models'][model]['state']}")
            return EXIT_UNAVAILABLE
    else:
        from transformers.utils import logging

        logging.disable_progress_bar()  # the weight-loading bars would interleave with the table
        try:
            case = reproduction.checkpoint_case(model, device)
        except reproduction.CheckpointNotAvailable as error:
            _error(str(error))
            return EXIT_UNAVAILABLE
        runs = [(case, dtype) for dtype in dtypes]

    _print_header(status, device)
    # Model types without a module-level eager function in this transformers are reported by the status lines.
    used = [model_type for model_type in MODEL_TABLE if any(model_type in case.model_types for case, _ in runs)]
    model_types = reproduction.replaceable_model_types(used)
    not_active = _not_active_reason(status, model_types)
    # What "patched (...)" says of the model types checked: an untested release, a forced replacement.
    notes = sorted({_patched_note(status["models"][model_type]["state"]) for model_type in model_types} - {""})
    if not_active is None:
        print(f"By default, eager attention of {', '.join(model_types)} runs the overlay{_parenthesised(notes)}.")
    else:
        print(f"By default, eager attention of {', '.join(model_types)} runs STOCK transformers code: {not_active}.")
    print(
        "\nP-001: stock eager vs overlay eager vs sdpa, each against a float32 reference of the same rounded weights"
    )
    if model is None or model in MODEL_TABLE:
        print("(tiny models with 128-dim heads, q/k bias on the lowest-frequency rotary dims, text left-padded)")
        for case in {case.name: case for case, _ in runs}.values():
            print(f"  {case.name}: {case.description}, runs the eager attention of {', '.join(case.model_types)}")

    # A row each for the model types of the table that this transformers gives the overlay nothing to replace in.
    replaceable = reproduction.replaceable_model_types(MODEL_TABLE)
    skipped = [] if model is not None else [model_type for model_type in MODEL_TABLE if model_type not in replaceable]
    name_width = max(len("model"), *(len(name) for name in [case.name for case, _ in runs] + skipped))
    print(_format_row(("model", *TABLE_COLUMNS), name_width))
    print(_format_row(("-" * name_width, *("-" * width for width in COLUMN_WIDTHS)), name_width))
    failures, stock_nan = [], []
    for case, dtype in runs:
        dtype_name = str(dtype).removeprefix("torch.")
        try:
            measurements = reproduction.compare_attention(case, dtype)
        except OSError as error:  # the checkpoint's weights cannot be loaded
            _error(f"{case.name}: {reproduction.first_line(error)}")
            return EXIT_UNAVAILABLE
        except RuntimeError as error:  # e.g. out of memory, or a dtype the device does not support
            _error(f"{case.name} in {dtype_name}: {reproduction.first_line(error)}")
            return EXIT_NOT_CLEARED
        clears = reproduction.overlay_clears(measurements)
        if not clears:
            failures.append(f"{case.name} {dtype_name}")
        if measurements["eager stock"].non_finite:
            stock_nan.append(dtype_name)
        group = (case.name, dtype_name, "-" if case.bias is None else f"{case.bias:g}")
        for variant, measurement in measurements.items():
            verdict = ("clears" if clears else "FAILS") if variant == "eager overlay" else ""
            print(_format_row((*group, variant, *_measurement_cells(measurement), verdict), name_width), flush=True)
            group = ("", "", "")  # the model, dtype and bias are printed once per group
    for model_type in skipped:
        first = MODEL_TABLE[model_type].first_patchable_release
        version = status["transformers"]
        reason = f"skipped: transformers {version} has no module-level eager function to replace (first in {first})"
        print(_format_row((model_type, reason), name_width))
    print(
        "\ntop-1: share of positions whose most likely token matches float32's; for reading only (NaN and KL decide)."
    )
    if model is None:
        print(
            "The tiny models' random weights leave near-ties between tokens, so even sdpa's top-1 is far from 100% here."
        )
    print()
    return _verdict(failures, list(dict.fromkeys(stock_nan)), not_active, notes)


def _verdict(failures: list[str], stock_nan: list[str], not_active: str | None, notes=()) -> int:
    """Prints the one-line verdict and returns the exit code."""
    stock = f"stock eager gives NaN in {', '.join(stock_nan)}" if stock_nan else "stock eager gives no NaN here"
    if failures:
        print(f"FAIL: the overlay does not clear P-001 in {', '.join(failures)} ({stock}).")
        return EXIT_NOT_CLEARED
    from .reproduction import KL_FACTOR

    criterion = f"finite logits, KL within {KL_FACTOR:g}x of sdpa's"
    if not_active is not None:
        print(
            f"NOT ACTIVE: the overlay clears P-001 ({criterion}; {stock}), but eager attention here is stock by default."
        )
        return EXIT_NOT_ACTIVE
    print(f"PASS: the overlay clears P-001 ({criterion}; {stock}) and is active by default{_parenthesised(notes)}.")
    return EXIT_CLEARED
