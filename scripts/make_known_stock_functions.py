#!/usr/bin/env python
"""
Regenerates `src/transformers_overlay/known_stock_functions.py`: the distinct stock `eager_attention_forward` texts of
the model table's modules across released transformers wheels, each with the modules and releases it was seen in.

    python scripts/make_known_stock_functions.py                  # default releases (below), downloads what is missing
    python scripts/make_known_stock_functions.py --releases 5.26.0 5.27.0 --keep   # add releases to the file's list

Default releases: from the lower bound setup.cfg declares for transformers to the newest release the package registry
serves (`pip index versions transformers`), the first and the last release of every minor. Wheels are fetched with
`pip download --no-deps` into --wheel-dir (kept between runs) and read as zip files; nothing is installed or imported
from them. Two texts are the same when their normalised forms are (`transformers_overlay.stock_functions`); the file
keeps the first text seen of each. Standard library and pip only.
"""

import argparse
import configparser
import re
import subprocess
import sys
import zipfile
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from transformers_overlay.model_table import MODEL_TABLE, _release  # noqa: E402
from transformers_overlay.stock_functions import normalised_source  # noqa: E402


OUTPUT = REPO / "src" / "transformers_overlay" / "known_stock_functions.py"
DEFAULT_WHEEL_DIR = Path.home() / ".cache" / "transformers-overlay" / "wheels"
FUNCTION = "eager_attention_forward"


def lower_bound() -> str:
    """The `>=` bound of transformers in setup.cfg's install_requires."""
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    for line in setup["options"]["install_requires"].splitlines():
        match = re.match(r"\s*transformers\s*>=\s*([\w.]+)", line)
        if match:
            return match.group(1)
    sys.exit("setup.cfg declares no lower bound for transformers")


def registry_releases() -> list[str]:
    """Every final transformers release the package registry serves, oldest first."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "transformers"], capture_output=True, text=True, check=True
    )
    match = re.search(r"^Available versions: (.+)$", result.stdout, flags=re.MULTILINE)
    if match is None:
        sys.exit(f"cannot read the transformers releases from pip index:\n{result.stdout}{result.stderr}")
    versions = [version.strip() for version in match.group(1).split(",")]
    return sorted((v for v in versions if re.fullmatch(r"\d+(\.\d+)*", v)), key=_release)


def default_releases() -> list[str]:
    """The first and the last release of every minor from setup.cfg's lower bound on."""
    bound = _release(lower_bound())
    minors = {}
    for version in registry_releases():
        if _release(version) >= bound:
            minors.setdefault(_release(version)[:2], []).append(version)
    return sorted({version for versions in minors.values() for version in (versions[0], versions[-1])}, key=_release)


def wheel(version: str, wheel_dir: Path) -> Path:
    """The transformers `version` wheel in `wheel_dir`, downloaded with pip when it is not there yet."""
    name = f"transformers-{version}-py3-none-any.whl"
    if not (wheel_dir / name).exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:"]
            + [f"transformers=={version}", "-d", str(wheel_dir)],
            check=True,
        )
    return wheel_dir / name


def function_source(module_source: str) -> str | None:
    """The text of the module-level `eager_attention_forward` in `module_source`, decorators included; None if absent."""
    import ast

    for node in ast.parse(module_source).body:
        if isinstance(node, ast.FunctionDef) and node.name == FUNCTION:
            first = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
            return "\n".join(module_source.splitlines()[first - 1 : node.end_lineno]) + "\n"
    return None


def collect(releases: list[str], wheel_dir: Path) -> list[dict]:
    """The distinct stock texts: [{"source": text, "seen_in": {model type: [releases]}}], in order of first sight."""
    variants = {}  # normalised form -> entry
    for version in releases:
        with zipfile.ZipFile(wheel(version, wheel_dir)) as archive:
            names = set(archive.namelist())
            for model_type, entry in MODEL_TABLE.items():
                path = entry.module.replace(".", "/") + ".py"
                if path not in names:
                    continue
                source = function_source(archive.read(path).decode("utf-8"))
                if source is None:
                    continue
                variant = variants.setdefault(normalised_source(source), {"source": source, "seen_in": {}})
                variant["seen_in"].setdefault(model_type, []).append(version)
        print(f"transformers {version}: read", file=sys.stderr)
    return list(variants.values())


def spans(versions: list[str], releases: list[str]) -> str:
    """`versions` as runs of consecutive `releases`: "4.53.0 to 4.57.6, 5.2.0"."""
    runs, positions = [], [releases.index(version) for version in versions]
    for position in positions:
        if runs and position == runs[-1][1] + 1:
            runs[-1][1] = position
        else:
            runs.append([position, position])
    return ", ".join(releases[a] if a == b else f"{releases[a]} to {releases[b]}" for a, b in runs)


def quoted(text: str) -> str:
    """`text` as a readable triple-quoted literal when it can be one, else its repr."""
    if '"""' not in text and "\\" not in text and not text.endswith('"'):
        return f'"""\\\n{text}"""'
    return repr(text)


def render(variants: list[dict], releases: list[str]) -> str:
    """The text of `known_stock_functions.py` for `variants` (see `collect`) read from `releases`."""
    lines = [
        '"""',
        f"The stock `{FUNCTION}` texts of the model table's transformers modules, one per normalised form",
        "(`transformers_overlay.stock_functions`), each with the model types and releases it was seen in. The overlay",
        "replaces a module's function only when it is one of these (or when forced).",
        "",
        "Generated by `python scripts/make_known_stock_functions.py` from the released wheels; do not edit.",
        '"""',
        "",
        "# The releases whose wheels were read.",
        "COVERED_RELEASES = (",
        *(f'    "{version}",' for version in releases),
        ")",
        "",
        "KNOWN_STOCK_FUNCTIONS = (",
    ]
    for variant in variants:
        lines.append("    {")
        lines.append('        "seen_in": {')
        for model_type, versions in variant["seen_in"].items():
            lines.append(f'            "{model_type}": "{spans(versions, releases)}",')
        lines.append("        },")
        lines.append(f'        "source": {quoted(variant["source"])},')
        lines.append("    },")
    lines.append(")")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Reads the releases' wheels and writes --output; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--releases", nargs="+", help="transformers releases to read (default: see above)")
    parser.add_argument(
        "--keep", action="store_true", help="also read the releases the current file covers (with --releases)"
    )
    parser.add_argument("--wheel-dir", type=Path, default=DEFAULT_WHEEL_DIR, help=f"default: {DEFAULT_WHEEL_DIR}")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="default: %(default)s")
    args = parser.parse_args(argv)

    releases = list(args.releases or default_releases())
    if args.keep:
        from transformers_overlay.known_stock_functions import COVERED_RELEASES

        releases += COVERED_RELEASES
    releases = sorted(set(releases), key=_release)
    args.wheel_dir.mkdir(parents=True, exist_ok=True)
    print(f"reading transformers {', '.join(releases)}", file=sys.stderr)
    variants = collect(releases, args.wheel_dir)
    args.output.write_text(render(variants, releases))
    print(f"{args.output}: {len(variants)} stock texts from {len(releases)} releases", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
