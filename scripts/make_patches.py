#!/usr/bin/env python
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
Regenerates `patches/`, the `git format-patch` series that brings the overlay's fix into a transformers 5.23.0 source
tree, from this repository's sources:

- 0001: `modular_qwen2.py` defines the overlay's `eager_attention_forward` (and the private helpers it calls), and every
  modeling file that transformers' modular converter regenerates from it;
- 0002: the upstream-style regression tests (`tests/models/qwen2`, `tests/models/llava_onevision`);
- 0003: `examples/rag/README.md`.

The function text comes from `src/transformers_overlay/integrations/stable_eager_attention.py` (extracted with `ast`),
so the patches and the overlay cannot drift. The generated modeling files are exactly what upstream's
`utils/modular_model_converter.py` produces: `--record-layout` runs the converter (which lives in a transformers git
checkout, not in the sdist) and records where it places each function in `patches/modular-layout.json`; the plain run
replays that layout, so regenerating needs neither the converter nor a network connection once the pristine tree is
cached. Author, dates and base are fixed, so regenerating gives byte-identical patches.

usage:
    python scripts/make_patches.py                  # rewrite patches/
    python scripts/make_patches.py --check          # exit 1 when patches/ is stale
    python scripts/make_patches.py --pristine-tree  # print the cached pristine tree (downloading it when absent)
    python scripts/make_patches.py --record-layout --converter-dir TRANSFORMERS_CHECKOUT/utils
"""

from __future__ import annotations

import argparse
import ast
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
OVERLAY_SOURCE = REPO / "src" / "transformers_overlay" / "integrations" / "stable_eager_attention.py"
PATCH_DIR = REPO / "patches"
LAYOUT_NAME = "modular-layout.json"

TRANSFORMERS_VERSION = "5.23.0"
# Author/committer date of every patch and the DEP-3 Last-Update: bump it when the content of the series changes.
PATCH_DATE = "2026-11-25"
AUTHOR = ("transformers-overlay", "transformers-overlay@users.noreply.invalid")

MODULAR_QWEN2 = "src/transformers/models/qwen2/modular_qwen2.py"
EAGER = "eager_attention_forward"
# Where the modular file imports each name the overlay functions use from their module's imports (None: already there).
MODULAR_IMPORTS = {"torch": None, "nn": None, "repeat_kv": "llama.modeling_llama"}
TEST_DIRS = ("tests/models/qwen2", "tests/models/llava_onevision")
RAG_README = "examples/rag/README.md"
UPSTREAM_BUG = "https://github.com/huggingface/transformers/issues/33615"


class PatchError(Exception):
    """A one-line reason why the series cannot be generated."""


# --------------------------------------------------------------------------------------------------------------------
# Overlay source


@dataclass(frozen=True)
class OverlayFunction:
    name: str
    text: str
    calls: tuple[str, ...]  # other overlay functions it references
    imports: tuple[str, ...]  # names it uses from the overlay module's imports


def _referenced_names(node: ast.AST) -> set[str]:
    return {child.id for child in ast.walk(node) if isinstance(child, ast.Name)}


def _imported_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def _node_text(lines: list[str], node: ast.stmt) -> str:
    start = min([node.lineno] + [decorator.lineno for decorator in getattr(node, "decorator_list", [])])
    return "".join(lines[start - 1 : node.end_lineno])


def overlay_functions(source: Path = OVERLAY_SOURCE) -> list[OverlayFunction]:
    """
    `eager_attention_forward` and every module-level function of `source` it calls, directly or not, in source order,
    each with its exact source text (what the patches must contain).
    """
    text = source.read_text(encoding="utf-8")
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    if EAGER not in functions:
        raise PatchError(f"{source} defines no {EAGER}")
    imported = _imported_names(tree)
    needed, queue = set(), [EAGER]
    while queue:
        name = queue.pop()
        if name not in needed:
            needed.add(name)
            queue.extend(sorted(_referenced_names(functions[name]) & functions.keys()))
    return [
        OverlayFunction(
            name=name,
            text=_node_text(lines, node),
            calls=tuple(sorted((_referenced_names(node) & needed) - {name})),
            imports=tuple(sorted(_referenced_names(node) & imported)),
        )
        for name, node in functions.items()
        if name in needed
    ]


def call_graph(functions: list[OverlayFunction]) -> dict[str, list[str]]:
    """
    Each overlay function with the other overlay functions and the imported names it references: what the modular
    converter's placement of the functions (and of imported helpers such as `repeat_kv`) depends on.
    """
    return {function.name: sorted(function.calls + function.imports) for function in functions}


# --------------------------------------------------------------------------------------------------------------------
# Top-level blocks of a Python file


@dataclass
class Block:
    key: str  # function/class name, or `stmt:<first line>` for other statements
    gap: str  # the lines between the previous block and this one
    text: str  # the block, from its first decorator or attached comment to its last line


def split_blocks(text: str) -> tuple[list[Block], str]:
    """Splits a module into its top-level statements (comments directly above a statement belong to it)."""
    lines = text.splitlines(keepends=True)
    blocks, position = [], 0
    for node in ast.parse(text).body:
        start = min([node.lineno] + [decorator.lineno for decorator in getattr(node, "decorator_list", [])]) - 1
        while start > position and lines[start - 1].startswith("#"):
            start -= 1
        name = getattr(node, "name", None)
        key = name if name is not None else "stmt:" + lines[node.lineno - 1].strip()
        blocks.append(Block(key, "".join(lines[position:start]), "".join(lines[start : node.end_lineno])))
        position = node.end_lineno
    return blocks, "".join(lines[position:])


def join_blocks(blocks: list[Block], tail: str) -> str:
    return "".join(block.gap + block.text for block in blocks) + tail


def stock_eager_dependencies(text: str) -> set[str]:
    """Module-level functions of a generated file that its (stock) `eager_attention_forward` calls, e.g. `repeat_kv`."""
    tree = ast.parse(text)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    if EAGER not in functions:
        return set()
    return (_referenced_names(functions[EAGER]) & functions.keys()) - {EAGER}


# --------------------------------------------------------------------------------------------------------------------
# modular_qwen2.py


def _sort_key(name: str) -> tuple[int, str]:
    # ruff's isort order inside `from x import (...)`: CONSTANTS, Classes, then functions and variables
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def edit_modular_qwen2(text: str, functions: list[OverlayFunction]) -> str:
    """
    `modular_qwen2.py` with its own `eager_attention_forward` (and helpers) instead of Llama's, defined right before
    `Qwen2Attention`, and the imports they need.
    """
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    llama_import = next(
        (
            n
            for n in tree.body
            if isinstance(n, ast.ImportFrom) and n.level == 2 and n.module == "llama.modeling_llama"
        ),
        None,
    )
    attention = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Qwen2Attention"), None)
    if llama_import is None or attention is None or EAGER not in {alias.name for alias in llama_import.names}:
        raise PatchError(f"{MODULAR_QWEN2} is not the 5.23.0 file this series expects (Llama import, Qwen2Attention)")

    needed_imports = {name for function in functions for name in function.imports}
    unknown = sorted(needed_imports - MODULAR_IMPORTS.keys())
    if unknown:
        raise PatchError(f"the overlay functions use {unknown}: add where the modular imports them to MODULAR_IMPORTS")
    llama_names = {alias.name for alias in llama_import.names} - {EAGER}
    llama_names |= {name for name in needed_imports if MODULAR_IMPORTS[name] == "llama.modeling_llama"}
    new_import = "from ..llama.modeling_llama import (\n"
    new_import += "".join(f"    {name},\n" for name in sorted(llama_names, key=_sort_key)) + ")\n"

    attention_start = min([attention.lineno] + [d.lineno for d in attention.decorator_list]) - 1
    definitions = "\n\n".join(function.text for function in functions) + "\n\n"  # two blank lines around each
    return "".join(
        lines[: llama_import.lineno - 1]
        + [new_import]
        + lines[llama_import.end_lineno : attention_start]
        + [definitions]
        + lines[attention_start:]
    )


# --------------------------------------------------------------------------------------------------------------------
# Generated modeling files: record the converter's layout, replay it


def layout_entries(pristine: str, generated: str, functions: list[OverlayFunction]) -> list[dict]:
    """
    Where the converter put the overlay functions and the stock eager's dependencies in `generated`: one entry per
    such function, in file order, with the text it carries (`overlay` or `pristine`) and the block it precedes.
    """
    overlay_text = {function.name: function.text for function in functions}
    pristine_blocks = {block.key: block.text for block in split_blocks(pristine)[0]}
    tracked = set(overlay_text) | stock_eager_dependencies(pristine) | {EAGER}
    blocks, _ = split_blocks(generated)
    entries = []
    for index, block in enumerate(blocks):
        if block.key not in tracked:
            continue
        if block.text == overlay_text.get(block.key):
            source = "overlay"
        elif block.text == pristine_blocks.get(block.key):
            source = "pristine"
        else:
            raise PatchError(f"the converter wrote a {block.key} that is neither the overlay's nor the stock one")
        before = next((b.key for b in blocks[index + 1 :] if b.key not in tracked), None)
        entries.append({"name": block.key, "source": source, "before": before})
    return entries


def replay_layout(pristine: str, entries: list[dict], functions: list[OverlayFunction]) -> str:
    """Rebuilds a generated file from its pristine text and the recorded layout (the inverse of `layout_entries`)."""
    overlay_text = {function.name: function.text for function in functions}
    tracked = set(overlay_text) | stock_eager_dependencies(pristine) | {EAGER}
    blocks, tail = split_blocks(pristine)
    pristine_text = {block.key: block.text for block in blocks}
    waiting = {}  # anchor -> the functions placed right before it, in file order
    for entry in entries:
        text = overlay_text[entry["name"]] if entry["source"] == "overlay" else pristine_text[entry["name"]]
        # top-level functions are separated by two blank lines (ruff format)
        waiting.setdefault(entry["before"], []).append(Block(entry["name"], "\n\n", text))
    result = []
    for block in blocks:
        if block.key not in tracked:
            result += waiting.pop(block.key, []) + [block]
    result += waiting.pop(None, [])
    if waiting:
        raise PatchError(f"layout anchors {sorted(waiting)} are not in the pristine file")
    return join_blocks(result, tail)


# --------------------------------------------------------------------------------------------------------------------
# Pristine tree and git plumbing


def cache_dir() -> Path:
    return Path(os.environ.get("TRANSFORMERS_OVERLAY_CACHE", Path.home() / ".cache" / "transformers-overlay"))


def git_env() -> dict[str, str]:
    """Environment that makes every commit and patch independent of the user's git configuration and clock."""
    date = f"{PATCH_DATE}T00:00:00+00:00"
    return dict(
        os.environ,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME=AUTHOR[0],
        GIT_AUTHOR_EMAIL=AUTHOR[1],
        GIT_COMMITTER_NAME=AUTHOR[0],
        GIT_COMMITTER_EMAIL=AUTHOR[1],
        GIT_AUTHOR_DATE=date,
        GIT_COMMITTER_DATE=date,
        TZ="UTC",
        LC_ALL="C",
    )


def git(tree: Path, *args: str, capture: bool = False) -> str:
    result = subprocess.run(
        ["git", "-C", str(tree), *args], env=git_env(), check=True, text=True, capture_output=capture
    )
    return result.stdout if capture else ""


def pristine_tree() -> Path:
    """
    The transformers 5.23.0 sdist unpacked and committed as one git commit (fixed author and date), under the cache
    directory (`$TRANSFORMERS_OVERLAY_CACHE`, default ~/.cache/transformers-overlay); downloaded with pip when absent.
    """
    root = cache_dir()
    tree = root / f"transformers-{TRANSFORMERS_VERSION}"
    if not (tree / ".git").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        sdist = root / f"transformers-{TRANSFORMERS_VERSION}.tar.gz"
        if not sdist.is_file():
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
                + [f"transformers=={TRANSFORMERS_VERSION}", "--dest", str(root)],
                check=True,
            )
        with tempfile.TemporaryDirectory(dir=root) as scratch:
            with tarfile.open(sdist) as archive:
                archive.extractall(scratch, filter="data")
            unpacked = Path(scratch) / f"transformers-{TRANSFORMERS_VERSION}"
            git(unpacked, "init", "--quiet", "--initial-branch=main")
            git(unpacked, "add", "--all")
            git(
                unpacked, "commit", "--quiet", "--no-verify", "-m", f"transformers {TRANSFORMERS_VERSION} (PyPI sdist)"
            )
            unpacked.rename(tree)
    if git(tree, "status", "--porcelain", capture=True):
        raise PatchError(f"the cached pristine tree {tree} has local changes: remove it to download it again")
    return tree


def work_copy(destination: Path) -> Path:
    """A fresh clone of the pristine tree to build the series in."""
    git(Path.cwd(), "clone", "--quiet", str(pristine_tree()), str(destination))
    return destination


def commit(tree: Path, message: str, paths: list[str]) -> None:
    git(tree, "add", "--", *paths)
    subprocess.run(
        ["git", "-C", str(tree), "commit", "--quiet", "--no-verify", "--file", "-"],
        input=message,
        env=git_env(),
        check=True,
        text=True,
    )


# --------------------------------------------------------------------------------------------------------------------
# Commit messages


def dep3(description: str) -> str:
    return (
        f"\nDescription: {description}\n"
        "Origin: vendor, transformers-overlay, generated by scripts/make_patches.py\n"
        f"Bug: {UPSTREAM_BUG}\n"
        "Forwarded: no\n"
        f"Last-Update: {PATCH_DATE}\n"
    )


EVIDENCE = """\
Measured on CPU (torch 2.13, transformers 5.23): random Qwen2ForCausalLM (8 query / 2 key-value heads of dim 128),
q_proj/k_proj biases set to b on the lowest-frequency rotary dims of every head, 128 teacher-forced tokens; cells
are KL(float32 reference || candidate) / top-1 agreement with the reference:

    float16   b=30           b=60           b=120          b=250
    before    2.4e-3 / 92%   4.7e-2 / 59%   NaN            NaN
    after     9.3e-5 / 99%   1.4e-3 / 91%   8.5e-2 / 78%   0.12 / 8%
    sdpa      8.6e-5 / 98%   1.3e-3 / 91%   8.4e-2 / 80%   0.12 / 9%

    bfloat16  b=30           b=60           b=120
    before    0.16 / 41%     0.30 / 11%     0.64 / 9%
    after     2.0e-3 / 97%   2.7e-2 / 76%   0.31 / 34%
    sdpa      3.4e-3 / 93%   2.6e-2 / 64%   0.31 / 34%

At large b even sdpa drifts from float32: q and k themselves are stored in half precision, which no attention
kernel can undo; the target is sdpa's accuracy. Rejected alternatives: scaling q before the matmul in the input
dtype only moves the overflow point (0.20 KL at b=250), and replacing infinite scores by 0 (the Qwen2-VL fix)
breaks left padding (batched and single greedy outputs differ)."""


def modeling_message(generated: dict[str, list[dict]]) -> str:
    with_function = sorted(path for path, entries in generated.items() if _has(entries, EAGER, "overlay"))
    helpers_only = sorted(path for path in generated if path not in with_function)
    lines = [
        "Qwen2: compute eager attention scores, mask and softmax in float32",
        "",
        "Qwen2's eager attention (Llama's `eager_attention_forward`) computes `query @ key^T` in the input dtype and",
        "scales it afterwards. Qwen2-7B's large q/k biases push float16 scores past 65504: they become inf, softmax",
        'turns the row into NaN and greedy decoding emits token 0 ("!"), as llava-hf/llava-onevision-qwen2-7b-ov-hf',
        'does with attn_implementation="eager" in float16 while sdpa, flash attention and the 0.5B model work. In',
        "bfloat16 the same scores lose precision (Qwen2-7B wikitext2 perplexity 7.99 with eager, 7.13 with sdpa, #33317).",
        "",
        "`modular_qwen2.py` now defines its own `eager_attention_forward`: the query is scaled first, scores, mask",
        "and softmax are computed in float32 and the probabilities cast back to the value dtype, block by block over",
        "the query rows and a few key/value heads at a time (repeated with `repeat_kv` as before), so the float32",
        "copies stay a fraction of the returned weights: peak memory 1.1-1.3x the weights against 2-5x before. The",
        "`(attn_output, attn_weights)` contract is unchanged and float32 inputs give the previous result up to",
        "float32 rounding. A boolean mask means True = attend (it used to be added as 0/1), and a row whose keys are",
        "all masked gets zeros instead of NaN.",
        "",
        EVIDENCE,
        "",
        "The modeling files are regenerated with utils/modular_model_converter.py. Every model whose modular",
        "inherits Qwen2's attention, directly or through Qwen3 and its descendants, gets the new function:",
        *(f"    {path}" for path in with_function),
    ]
    if helpers_only:
        lines += [
            "In these files the converter only adds the private helpers: their text attention takes",
            "`eager_attention_forward` from another parent first, so it keeps the stock function:",
            *(f"    {path}" for path in helpers_only),
        ]
    lines += [
        "",
        "SigLIP is left out: LLaVA-OneVision 0.5B shares the 7B's SigLIP vision tower and works in float16 eager,",
        "so the tower is not what breaks, and SigLIP's `eager_attention_forward` is the source of six `# Copied from`",
        "copies (pixtral, idefics3, git, opt, idefics, idefics/vision) that utils/check_copies.py keeps identical.",
        dep3("compute Qwen2 eager attention in float32 so float16/bfloat16 scores cannot overflow"),
    ]
    return "\n".join(lines)


def _has(entries: list[dict], name: str, source: str) -> bool:
    return any(entry["name"] == name and entry["source"] == source for entry in entries)


def tests_message(paths: list[str]) -> str:
    return "\n".join(
        [
            "Qwen2, LLaVA-OneVision: regression tests for eager attention in float16/bfloat16",
            "",
            "Tiny models built offline with Qwen2-7B's head layout (28 query / 4 key-value heads of dim 128) and large",
            "q/k biases on the low-frequency rotary dims, so the stock eager attention overflows in float16. The tests",
            "compare eager with a float32 reference and with sdpa (logits, generation, attention weights, padding,",
            "KV cache, boolean masks, gradients) and fail without the previous commit. New files, next to the existing",
            "test_modeling_*.py:",
            *(f"    {path}" for path in paths),
            dep3("regression tests for the float32 eager attention of Qwen2 and LLaVA-OneVision"),
        ]
    )


def rag_message() -> str:
    return "\n".join(
        [
            "examples/rag: point to where RAG lives now",
            "",
            "The RAG paper (arXiv:2005.11401) links to examples/rag, which no longer exists. The README names the RAG",
            "classes of the library, links the model documentation and the research-projects repository that now",
            "holds the fine-tuning and evaluation scripts, and gives a quick start.",
            dep3("redirect README for the examples/rag link of the RAG paper").replace(
                f"Bug: {UPSTREAM_BUG}\n", "Bug: https://arxiv.org/abs/2005.11401 (links to examples/rag)\n"
            ),
        ]
    )


# --------------------------------------------------------------------------------------------------------------------
# Generation


def load_layout(patch_dir: Path) -> dict:
    path = patch_dir / LAYOUT_NAME
    if not path.is_file():
        raise PatchError(f"{path} is missing: record it with --record-layout --converter-dir TRANSFORMERS/utils")
    return json.loads(path.read_text(encoding="utf-8"))


def check_layout(layout: dict, functions: list[OverlayFunction]) -> None:
    """The recorded placement holds only for the call graph it was recorded with, and for text the converter keeps."""
    if layout["overlay_call_graph"] != call_graph(functions):
        raise PatchError(
            "the overlay functions or the names they use changed since the layout was recorded: "
            "re-record it with --record-layout --converter-dir TRANSFORMERS/utils"
        )
    # the converter renames model names (`qwen2` -> `qwen3`, ...) in copied code, comments and strings
    models = {path.split("/")[3] for path in layout["generated_files"]}
    for function in functions:
        mentioned = sorted(
            model for model in models if re.search(rf"(?<![a-z0-9]){model}", function.text, re.IGNORECASE)
        )
        if mentioned:
            raise PatchError(f"{function.name} mentions {mentioned}, which the converter would rename: reword it")


def test_files() -> list[str]:
    paths = []
    for directory in TEST_DIRS:
        paths += sorted(
            str(path.relative_to(REPO)) for path in (REPO / directory).glob("*.py") if path.name != "__init__.py"
        )
    return paths


def build_series(output: Path) -> list[str]:
    """Writes the series for the current sources into `output`; returns the patch file names in order."""
    functions = overlay_functions()
    layout = load_layout(PATCH_DIR)
    check_layout(layout, functions)
    with tempfile.TemporaryDirectory() as scratch:
        tree = work_copy(Path(scratch) / "transformers")
        base = git(tree, "rev-parse", "HEAD", capture=True).strip()

        modular = tree / MODULAR_QWEN2
        modular.write_text(edit_modular_qwen2(modular.read_text(encoding="utf-8"), functions), encoding="utf-8")
        for path, entries in layout["generated_files"].items():
            target = tree / path
            target.write_text(replay_layout(target.read_text(encoding="utf-8"), entries, functions), encoding="utf-8")
        commit(tree, modeling_message(layout["generated_files"]), [MODULAR_QWEN2, *layout["generated_files"]])

        tests = test_files()
        if tests:
            for path in tests:
                (tree / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(REPO / path, tree / path)
            commit(tree, tests_message(tests), tests)

        (tree / RAG_README).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / RAG_README, tree / RAG_README)
        commit(tree, rag_message(), [RAG_README])

        output.mkdir(parents=True, exist_ok=True)
        git(
            tree,
            "format-patch",
            "--quiet",
            "--zero-commit",
            "--full-index",
            "--no-signature",
            "--no-renames",
            "--output-directory",
            str(output),
            f"{base}..HEAD",
            capture=True,
        )
        names = sorted(path.name for path in output.glob("*.patch"))
    (output / "series").write_text(
        f"# transformers-version: {TRANSFORMERS_VERSION}\n"
        "# Generated by scripts/make_patches.py; apply with scripts/apply_patches.sh. Do not edit by hand.\n"
        + "".join(f"{name}\n" for name in names),
        encoding="utf-8",
    )
    return names


def series_files(directory: Path) -> set[str]:
    return {path.name for path in directory.glob("*.patch")} | (
        {"series"} if (directory / "series").is_file() else set()
    )


def stale_files(patch_dir: Path = PATCH_DIR) -> list[str]:
    """Files of the series in `patch_dir` that differ from a fresh regeneration (missing and extra ones included)."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch)
        build_series(fresh)
        current, expected = series_files(patch_dir), series_files(fresh)
        differing = [n for n in sorted(current & expected) if not filecmp.cmp(patch_dir / n, fresh / n, shallow=False)]
        return sorted(set(differing) | (current ^ expected))


def write_series() -> list[str]:
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch)
        names = build_series(fresh)
        for old in PATCH_DIR.glob("*.patch"):
            old.unlink()
        for name in series_files(fresh):
            shutil.copyfile(fresh / name, PATCH_DIR / name)
    return names


# --------------------------------------------------------------------------------------------------------------------
# Recording the layout with upstream's converter


def pinned_ruff_version(tree: Path) -> str:
    match = re.search(r'"ruff==([^"]+)"', (tree / "setup.py").read_text(encoding="utf-8"))
    if match is None:
        raise PatchError("cannot find the ruff pin in setup.py")
    return match.group(1)


def run_converter(tree: Path, converter_dir: Path, python: str, modular_files: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    subprocess.run(
        [python, str(converter_dir / "modular_model_converter.py"), "--num_workers", "1", *modular_files],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def changed_files(tree: Path) -> list[str]:
    return sorted(git(tree, "diff", "--name-only", capture=True).split())


def dependents(tree: Path, models: set[str], done: set[str]) -> list[str]:
    """Modular files, not converted yet, that import from the modeling file of one of `models`."""
    pattern = re.compile(
        r"from (?:\.\.|\.\.\.models\.|transformers\.models\.)(" + "|".join(map(re.escape, models)) + r")\.modeling_\1 "
    )
    found = []
    for path in sorted((tree / "src/transformers/models").glob("*/modular_*.py")):
        relative = str(path.relative_to(tree))
        if relative not in done and pattern.search(path.read_text(encoding="utf-8")):
            found.append(relative)
    return found


def undefined_names(tree: Path, paths: list[str]) -> list[str]:
    ruff = shutil.which("ruff")
    if ruff is None:
        raise PatchError("ruff is needed to check the converter's output")
    result = subprocess.run(
        [ruff, "check", "--isolated", "--select", "F821", "--output-format", "concise", *paths],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    return [line for line in result.stdout.splitlines() if ": F821" in line]


def record_layout(converter_dir: Path, python: str, baseline: bool = True) -> dict:
    """
    Runs upstream's modular converter on the edited `modular_qwen2.py` and, round after round, on every modular file
    that imports from a modeling file it changed; checks that the same converter reproduces the pristine files, that
    the result defines every name it uses, and records where each function went.
    """
    if not (converter_dir / "modular_model_converter.py").is_file():
        raise PatchError(f"{converter_dir} has no modular_model_converter.py (give a transformers checkout's utils/)")
    functions = overlay_functions()
    with tempfile.TemporaryDirectory() as scratch:
        tree = work_copy(Path(scratch) / "patched")
        ruff_version = subprocess.run(["ruff", "--version"], capture_output=True, text=True).stdout.split()[-1]
        if ruff_version != pinned_ruff_version(tree):
            raise PatchError(f"ruff {ruff_version} on PATH, the converter needs ruff {pinned_ruff_version(tree)}")
        modular = tree / MODULAR_QWEN2
        modular.write_text(edit_modular_qwen2(modular.read_text(encoding="utf-8"), functions), encoding="utf-8")

        # every modular file that imports, directly or not, from a modeling file the edit may change; the converter
        # orders them so that each is converted after the files it imports from
        converted, frontier = [MODULAR_QWEN2], [MODULAR_QWEN2]
        while frontier:
            frontier = dependents(tree, {path.split("/")[3] for path in frontier}, set(converted))
            converted += frontier
        print(f"converting {len(converted)} modular files with {converter_dir / 'modular_model_converter.py'}")
        run_converter(tree, converter_dir, python, converted)
        generated = [p for p in changed_files(tree) if p != MODULAR_QWEN2]

        broken = undefined_names(tree, generated)
        if broken:
            raise PatchError(
                "the converter's output uses undefined names (a helper the stock eager pulled in, such as repeat_kv, "
                "is no longer in the modeling files others inherit from): " + "; ".join(broken)
            )
        if baseline:
            reference = work_copy(Path(scratch) / "baseline")
            print(f"checking that the converter reproduces the {len(converted)} pristine conversions")
            run_converter(reference, converter_dir, python, converted)
            drift = changed_files(reference)
            if drift:
                raise PatchError(f"this converter does not reproduce transformers {TRANSFORMERS_VERSION}: {drift}")

        pristine = pristine_tree()
        layout = {}
        for path in generated:
            before = (pristine / path).read_text(encoding="utf-8")
            after = (tree / path).read_text(encoding="utf-8")
            entries = layout_entries(before, after, functions)
            if replay_layout(before, entries, functions) != after:
                raise PatchError(f"the recorded layout does not reproduce the converter's {path}")
            removed = {b.key for b in split_blocks(before)[0]} - {b.key for b in split_blocks(after)[0]}
            if removed:
                raise PatchError(f"the converter removes {sorted(removed)} from {path}")
            layout[path] = entries
    return {
        "comment": "Where utils/modular_model_converter.py places the overlay functions; written by make_patches.py.",
        "transformers_version": TRANSFORMERS_VERSION,
        "overlay_call_graph": call_graph(functions),
        "converted_modular_files": converted,
        "generated_files": layout,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when patches/ differs from a regeneration")
    mode.add_argument("--pristine-tree", action="store_true", help="print the cached pristine tree (download it)")
    mode.add_argument("--record-layout", action="store_true", help="re-record the layout with upstream's converter")
    parser.add_argument("--converter-dir", type=Path, help="utils/ of a transformers 5.23.0 git checkout")
    parser.add_argument("--converter-python", default=sys.executable, help="python with libcst for the converter")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip re-converting the pristine files (halves --record-layout)"
    )
    args = parser.parse_args(argv)
    try:
        if args.pristine_tree:
            print(pristine_tree())
        elif args.check:
            stale = stale_files()
            if stale:
                print(f"patches/ is stale ({', '.join(stale)}): run python scripts/make_patches.py", file=sys.stderr)
                return 1
            print("patches/ is up to date")
        else:
            if args.record_layout:
                if args.converter_dir is None:
                    parser.error("--record-layout needs --converter-dir")
                layout = record_layout(args.converter_dir.expanduser(), args.converter_python, not args.no_baseline)
                PATCH_DIR.mkdir(exist_ok=True)
                (PATCH_DIR / LAYOUT_NAME).write_text(json.dumps(layout, indent=2) + "\n", encoding="utf-8")
                print(f"recorded {len(layout['generated_files'])} generated files in patches/{LAYOUT_NAME}")
            names = write_series()
            print("wrote patches/series: " + ", ".join(names))
    except (PatchError, subprocess.CalledProcessError) as error:
        print(f"make_patches: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
