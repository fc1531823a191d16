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

- 0001: the Qwen2 family's eager attention (`FAMILY`): `modular_qwen2.py` defines the overlay's
  `eager_attention_forward`, `modular_qwen2_moe.py` imports it, the hand-written `modeling_qwen2_vl.py` copies it
  (`# Copied from`), the generated modeling files of the family carry it, and the modular files of models outside the
  family that inherited it import the stock function explicitly so that their generated code stays byte-identical;
- 0002: the upstream-style tests in `tests/models/<model>/test_modeling_*.py` (`UPSTREAM_TESTS`);
- 0003: `examples/rag/README.md` (a separate PR, marked so in `patches/series`).

The function text comes from `src/transformers_overlay/integrations/stable_eager_attention.py` (extracted with `ast`,
then given upstream's `**kwargs: Unpack[TransformersKwargs]` and `module.num_key_value_groups`), so the patches and
the overlay cannot drift. The generated files are the pristine ones with the stock function replaced, renamed the way
the converter renames what it copies. `--verify-with-converter` proves that this is what upstream's
`utils/modular_model_converter.py` produces: it converts every modular file of the family and every modular file that
imports from a family modeling file, once on the pristine tree and once on the patched one, and checks that the two
conversions differ exactly by the function replacement in the family's files and not at all elsewhere (comparing two
conversions by the same converter keeps the proof valid for a converter version that formats other code differently).
Author, dates and base are fixed, so regenerating gives byte-identical patches.

usage:
    python scripts/make_patches.py                  # rewrite patches/
    python scripts/make_patches.py --check          # exit 1 when patches/ is stale
    python scripts/make_patches.py --pristine-tree  # print the cached pristine tree (downloading it when absent)
    python scripts/make_patches.py --verify-with-converter --converter-dir TRANSFORMERS_CHECKOUT/utils
"""

from __future__ import annotations

import argparse
import ast
import difflib
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
OVERLAY_SOURCE = REPO / "src" / "transformers_overlay" / "integrations" / "stable_eager_attention.py"
PATCH_DIR = REPO / "patches"

TRANSFORMERS_VERSION = "5.23.0"
# Author/committer date of every patch: bump it when the content of the series changes.
PATCH_DATE = "2026-12-01"
# The project's git identity (the repository's user.name/user.email), fixed so the series is reproducible.
AUTHOR = ("Seed 893c5ed4 maintainers", "maintainers@users.noreply.r-seed-893c5ed4.example")

EAGER = "eager_attention_forward"
MODELS = "src/transformers/models"

# The family: model types whose attention has Qwen2's q/k biases and whose modeling module defines its own
# `eager_attention_forward`. Each gets the fix one way: `define` (the modular file defines it), `import` (the modular
# file imports it from the model named), `copy` (hand-written modeling file, `# Copied from` the model named) or
# `inherit` (nothing to edit: the converter copies it from the modeling file its modular file imports from).
# qwen2_audio is left out: its own eager function serves a Whisper-style encoder (no k_proj bias); its language model
# is a Qwen2ForCausalLM, which the qwen2 row fixes.
FAMILY = {
    "qwen2": ("define", None),
    "qwen2_moe": ("import", "qwen2"),
    "qwen2_vl": ("copy", "qwen2"),
    "qwen2_5_vl": ("inherit", "qwen2_vl"),
    "qwen2_5_omni": ("inherit", "qwen2_5_vl"),
}
# The converter's cased model names (from the configuration class names).
CASED_NAMES = {
    "qwen2": "Qwen2",
    "qwen2_moe": "Qwen2Moe",
    "qwen2_vl": "Qwen2VL",
    "qwen2_5_vl": "Qwen2_5_VL",
    "qwen2_5_omni": "Qwen2_5Omni",
}
# Models outside the family whose modular files took the stock function through a family class: they import it
# explicitly from a modeling file outside the family whose stock function has the same text, so that their generated
# code stays byte-identical. `--verify-with-converter` finds any that is missing here.
KEEP_STOCK = {
    "cwm": "llama",
    "deepseek_ocr2": "llama",
    "exaone4_5": "zamba",
    "kimi_k25": "zamba",
    "minicpmv4_6": "zamba",
    "ministral": "llama",
    "paddleocr_vl": "zamba",
    "qwen3": "llama",
    "qwen3_omni_moe": "zamba",
    "video_llama_3": "zamba",
}
KEEP_STOCK_SOURCES = {
    "llama": "Llama's, which they had before Qwen2 defined its own",
    "zamba": "Zamba's, the text Qwen2-VL's had (built on Qwen2-VL or Qwen2.5-Omni classes, not Qwen2's decoder)",
}
# Names the overlay function may use, and what the family's modeling files provide them as.
ALLOWED_IMPORTS = {"torch", "nn", "repeat_kv"}
UPSTREAM_TESTS = ("tests/models",)
RAG_README = "examples/rag/README.md"
UPSTREAM_BUG = "https://github.com/huggingface/transformers/issues/33615"


class PatchError(Exception):
    """A one-line reason why the series cannot be generated."""


def kept_stock() -> dict[str, list[str]]:
    """The KEEP_STOCK models grouped by the model whose function they import."""
    grouped = {}
    for model, source in sorted(KEEP_STOCK.items()):
        grouped.setdefault(source, []).append(model)
    return grouped


def modular_path(model: str) -> str:
    return f"{MODELS}/{model}/modular_{model}.py"


def modeling_path(model: str) -> str:
    return f"{MODELS}/{model}/modeling_{model}.py"


# --------------------------------------------------------------------------------------------------------------------
# The function, as the overlay defines it and as upstream's files carry it


def _referenced_names(node: ast.AST) -> set[str]:
    return {child.id for child in ast.walk(node) if isinstance(child, ast.Name)}


def _imported_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def _node_span(node: ast.stmt) -> tuple[int, int]:
    """0-based first line (decorators included) and end line of a top-level statement."""
    start = min([node.lineno] + [decorator.lineno for decorator in getattr(node, "decorator_list", [])])
    return start - 1, node.end_lineno


SIGNATURE_KWARGS = ("    **kwargs,\n):\n", "    **kwargs: Unpack[TransformersKwargs],\n):\n")
KV_GROUPS = ('getattr(module, "num_key_value_groups", 1)', "module.num_key_value_groups")


def overlay_eager_text(source: Path = OVERLAY_SOURCE) -> str:
    """The exact source text of the overlay's `eager_attention_forward`, checked to be self-contained."""
    text = source.read_text(encoding="utf-8")
    tree = ast.parse(text)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    if EAGER not in functions:
        raise PatchError(f"{source} defines no {EAGER}")
    node = functions[EAGER]
    used = _referenced_names(node)
    helpers = sorted(used & (functions.keys() - {EAGER}))
    if helpers:
        raise PatchError(f"{EAGER} calls {helpers}: the patch takes a self-contained function")
    unknown = sorted((used & _imported_names(tree)) - ALLOWED_IMPORTS)
    if unknown:
        raise PatchError(f"{EAGER} uses {unknown}, which the family's modeling files do not import")
    start, end = _node_span(node)
    return "".join(text.splitlines(keepends=True)[start:end])


def upstream_eager_text(overlay_text: str) -> str:
    """
    The overlay function as upstream writes it: `**kwargs: Unpack[TransformersKwargs]` (the overlay cannot import
    `TransformersKwargs` on every transformers version it supports) and `module.num_key_value_groups` (the overlay
    also serves SigLIP, whose attention has no such attribute; every family attention module defines it).
    """
    old, new = SIGNATURE_KWARGS
    if overlay_text.count(old) != 1:
        raise PatchError(f"{EAGER} no longer ends its signature with `**kwargs,`: update SIGNATURE_KWARGS")
    text = overlay_text.replace(old, new)
    old, new = KV_GROUPS
    if old not in text:
        raise PatchError(f"{EAGER} no longer reads `{old}`: update KV_GROUPS")
    return text.replace(old, new)


def converter_rename(text: str, old_model: str, new_model: str) -> str:
    """
    What `utils/modular_model_converter.py` does to code it copies from `modeling_<old_model>.py` into
    `modeling_<new_model>.py`: model names in code, comments and strings follow the new model (`Qwen2` -> `Qwen2Moe`).
    """
    cased = {name: CASED_NAMES[name] for name in (old_model, new_model)}
    patterns = {old_model: new_model, old_model.upper(): new_model.upper(), cased[old_model]: cased[new_model]}
    regex = re.compile(f"(?<![a-z0-9])({'|'.join(map(re.escape, patterns))})(.|$)", re.IGNORECASE | re.DOTALL)
    return regex.sub(lambda match: patterns.get(match.group(1), cased[new_model]) + match.group(2), text)


def family_source(model: str) -> str:
    """The model whose modeling file the family member's function comes from (`qwen2_5_omni` -> `qwen2`)."""
    while FAMILY[model][1] is not None:
        model = FAMILY[model][1]
    return model


def generated_eager_text(model: str, function: str) -> str:
    """The function as the converter writes it into `modeling_<model>.py`, one renaming step per modular import."""
    chain = [model]
    while FAMILY[chain[-1]][1] is not None:
        chain.append(FAMILY[chain[-1]][1])
    for parent, child in zip(reversed(chain[1:]), reversed(chain[:-1])):
        if FAMILY[child][0] in ("import", "inherit"):
            function = converter_rename(function, parent, child)
    return function


# --------------------------------------------------------------------------------------------------------------------
# Source edits


def replace_function(text: str, name: str, new_text: str, path: str) -> str:
    """`text` with its top-level function `name` (from its first decorator to its last line) replaced by `new_text`."""
    tree = ast.parse(text)
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if node is None:
        raise PatchError(f"{path} defines no {name}: not the {TRANSFORMERS_VERSION} file this series expects")
    lines = text.splitlines(keepends=True)
    start, end = _node_span(node)
    return "".join(lines[:start] + [new_text] + lines[end:])


def _sort_key(name: str) -> tuple[int, str]:
    # ruff's isort order inside `from x import (...)`: CONSTANTS, Classes, then functions and variables
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name.lower(), name)


@dataclass
class ImportStatement:
    module: str  # "..llama.modeling_llama"
    names: dict[str, str]  # imported name -> trailing comment ("" for none)
    multiline: bool

    def render(self) -> str:
        names = sorted(self.names, key=_sort_key)
        one_line = f"from {self.module} import {', '.join(names)}"
        if not self.multiline and len(names) == 1 and self.names[names[0]]:
            return f"{one_line}  {self.names[names[0]]}\n"
        if not self.multiline and not any(self.names.values()) and len(one_line) <= 119:
            return one_line + "\n"
        body = "".join(f"    {name},{'  ' + self.names[name] if self.names[name] else ''}\n" for name in names)
        return f"from {self.module} import (\n{body})\n"


def _parse_import(lines: list[str], node: ast.ImportFrom) -> ImportStatement:
    start, end = _node_span(node)
    comments = {}
    for line in lines[start:end]:
        match = re.match(r"\s*(?:from \S+ import )?(\w+),?\s*(#.*)?$", line.rstrip("\n"))
        if match and match.group(2):
            comments[match.group(1)] = match.group(2)
    module = "." * node.level + (node.module or "")
    return ImportStatement(module, {a.name: comments.get(a.name, "") for a in node.names}, end - start > 1)


def take_eager_from(text: str, model: str, path: str) -> str:
    """
    A modular file that imports `eager_attention_forward` from `..<model>.modeling_<model>` (and from nowhere else), so
    that the converter copies that model's function; `# noqa: F401` when only the converter uses the import.
    """
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    source = f"..{model}.modeling_{model}"
    relative = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 2]
    if not relative:
        raise PatchError(f"{path} imports nothing from another model: not the file this series expects")
    used = any(
        isinstance(n, ast.Name) and n.id == EAGER
        for stmt in tree.body
        if not isinstance(stmt, (ast.Import, ast.ImportFrom))
        for n in ast.walk(stmt)
    )
    replacements = {}  # statement index in tree.body -> new text ("" removes it)
    target = None
    for node in relative:
        statement = _parse_import(lines, node)
        if statement.module == source:
            target = node
        elif EAGER in statement.names:
            del statement.names[EAGER]
            replacements[node] = statement.render() if statement.names else ""
    comment = "" if used else "# noqa: F401"
    if target is not None:
        statement = _parse_import(lines, target)
        statement.names[EAGER] = comment
        statement.multiline = statement.multiline or (bool(comment) and len(statement.names) > 1)
        replacements[target] = statement.render()
        insert_before = None
    else:
        # a new statement, where isort puts it among the `from ..x` imports
        new = ImportStatement(source, {EAGER: comment}, False).render()
        after = [n for n in relative if ("." * n.level + n.module) < source]
        anchor = after[-1] if after else None
        insert_before = (relative[0], new) if anchor is None else None
        if anchor is not None:
            replacements[anchor] = replacements.get(anchor, _render_original(lines, anchor)) + new
    result, position = [], 0
    for node in tree.body:
        start, end = _node_span(node)
        if insert_before is not None and node is insert_before[0]:
            result += lines[position:start] + [insert_before[1]]
            position = start
        if node in replacements:
            result += lines[position:start] + [replacements[node]]
            position = end
    return "".join(result + lines[position:])


def _render_original(lines: list[str], node: ast.stmt) -> str:
    start, end = _node_span(node)
    return "".join(lines[start:end])


def edit_modular_qwen2(text: str, function: str) -> str:
    """`modular_qwen2.py` with its own `eager_attention_forward` instead of Llama's, defined before `Qwen2Attention`."""
    path = modular_path("qwen2")
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    llama = next(
        (
            n
            for n in tree.body
            if isinstance(n, ast.ImportFrom) and n.level == 2 and n.module == "llama.modeling_llama"
        ),
        None,
    )
    attention = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Qwen2Attention"), None)
    if llama is None or attention is None or EAGER not in {alias.name for alias in llama.names}:
        raise PatchError(
            f"{path} is not the {TRANSFORMERS_VERSION} file this series expects (Llama import, Qwen2Attention)"
        )
    statement = _parse_import(lines, llama)
    del statement.names[EAGER]
    statement.names.setdefault("repeat_kv", "")
    import_start, import_end = _node_span(llama)
    attention_start = _node_span(attention)[0]
    return "".join(
        lines[:import_start]
        + [statement.render()]
        + lines[import_end:attention_start]
        + [function, "\n\n"]
        + lines[attention_start:]
    )


def edit_modular_import(text: str, model: str, source: str) -> str:
    return take_eager_from(text, source, modular_path(model))


def edit_hand_written(text: str, model: str, source: str, function: str) -> str:
    """A hand-written modeling file whose function becomes a `# Copied from` copy of `source`'s."""
    copied = f"# Copied from transformers.models.{source}.modeling_{source}.{EAGER}\n"
    return replace_function(text, EAGER, copied + function, modeling_path(model))


def patched_files(tree: Path, function: str) -> dict[str, str]:
    """Every file 0001 changes, with its patched text, computed from the pristine `tree`."""

    def read(path: str) -> str:
        return (tree / path).read_text(encoding="utf-8")

    files = {}
    for model, (how, source) in FAMILY.items():
        if how == "define":
            files[modular_path(model)] = edit_modular_qwen2(read(modular_path(model)), function)
        elif how == "import":
            files[modular_path(model)] = edit_modular_import(read(modular_path(model)), model, source)
        if how == "copy":
            files[modeling_path(model)] = edit_hand_written(read(modeling_path(model)), model, source, function)
        else:
            path = modeling_path(model)
            files[path] = replace_function(read(path), EAGER, generated_eager_text(model, function), path)
    for model, source in KEEP_STOCK.items():
        files[modular_path(model)] = take_eager_from(read(modular_path(model)), source, modular_path(model))
    for path, text in files.items():
        if text == read(path):
            raise PatchError(f"the series would leave {path} unchanged: FAMILY/KEEP_STOCK are out of date")
    return dict(sorted(files.items()))


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


def modeling_message(files: list[str]) -> str:
    family = ", ".join(FAMILY)
    return "\n".join(
        [
            "Qwen2 family: compute eager attention scores and softmax in float32",
            "",
            "Qwen2's large q/k biases push `query @ key^T` past float16's range in eager attention: the scores become",
            'inf, the softmax turns them into NaN and generation emits token 0 ("!"). In bfloat16 the same scores lose',
            "precision (Qwen2-7B wikitext2 perplexity 7.9967 with eager against 7.13 with sdpa, #33317). sdpa and flash",
            "attention accumulate in float32 and are not affected; eager is what `output_attentions=True` needs.",
            "",
            "The family's `eager_attention_forward` now scales the query, computes the scores, adds the mask and takes",
            "the softmax in float32 (autocast disabled, so the upcast also holds under mixed precision), then casts",
            "the weights back to the value dtype before `@ value`, as before. The signature and the returned",
            "`(attn_output, attn_weights)` are unchanged, and float32 inputs give the previous result.",
            "",
            *textwrap.wrap(
                f"Scope: the models with Qwen2's q/k-biased attention and their own eager function ({family})."
                " modular_qwen2.py defines the function, modular_qwen2_moe.py imports it, the hand-written"
                " modeling_qwen2_vl.py copies it (`# Copied from`), and qwen2_5_vl / qwen2_5_omni inherit it through"
                " their modular files.",
                width=105,
            ),
            "",
            "Models outside the family that took Qwen2's or Qwen2-VL's function through a family class now import",
            "a function with the same stock text explicitly, so their generated code is unchanged:",
            *(
                line
                for source, models in kept_stock().items()
                for line in textwrap.wrap(
                    f"- {KEEP_STOCK_SOURCES[source]}: {', '.join(models)}", width=105, subsequent_indent="  "
                )
            ),
            "",
            "Files:",
            *(f"    {path}" for path in files),
        ]
    )


def tests_message(paths: list[str]) -> str:
    return "\n".join(
        [
            "Qwen2 family: tests for float16/bfloat16 eager attention",
            "",
            "One test file per model of the family, each with a small tester config whose q/k biases are large enough",
            "to overflow float16 scores: eager must stay finite and as close to the float32 model as sdpa in float16",
            "and bfloat16, including the returned attention weights, and match sdpa in float32. Qwen2-VL, Qwen2.5-VL",
            "and the Qwen2.5-Omni thinker run text-only inputs through their M-RoPE text decoder. The slow integration",
            "test checks Qwen2-7B-Instruct's float16 eager generation against its expected text.",
            "",
            *(f"    {path}" for path in paths),
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
        ]
    )


# --------------------------------------------------------------------------------------------------------------------
# Generation


def test_files() -> list[str]:
    paths = []
    for directory in UPSTREAM_TESTS:
        paths += sorted(
            str(path.relative_to(REPO)) for path in (REPO / directory).rglob("test_*.py") if path.is_file()
        )
    return paths


SERIES_HEADER = (
    f"# transformers-version: {TRANSFORMERS_VERSION}\n"
    "# Generated by scripts/make_patches.py; apply with scripts/apply_patches.sh. Do not edit by hand.\n"
    "# PR 1 (the fix and its tests, patches/PR.md):\n"
)
SEPARATE_PR = "# PR 2, separate and unrelated to the fix (examples/rag redirect):\n"


def build_series(output: Path) -> list[str]:
    """Writes the series for the current sources into `output`; returns the patch file names in order."""
    function = upstream_eager_text(overlay_eager_text())
    with tempfile.TemporaryDirectory() as scratch:
        tree = work_copy(Path(scratch) / "transformers")
        base = git(tree, "rev-parse", "HEAD", capture=True).strip()

        files = patched_files(tree, function)
        for path, text in files.items():
            (tree / path).write_text(text, encoding="utf-8")
        commit(tree, modeling_message(list(files)), list(files))

        tests = test_files()
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
        SERIES_HEADER + "".join(f"{name}\n" for name in names[:2]) + SEPARATE_PR + f"{names[2]}\n", encoding="utf-8"
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
# Verification with upstream's converter

CONVERT_ALL = """\
import sys
from pathlib import Path

from modular_model_converter import convert_modular_file

output = Path(sys.argv[1])
for modular in sys.argv[2:]:
    model = Path(modular).parent.name
    (output / model).mkdir(parents=True, exist_ok=True)
    for file_type, (formatted, checked) in convert_modular_file(modular).items():
        text = formatted or checked  # the converter writes the unformatted code when ruff cannot format it
        (output / model / f"{file_type.replace('*', '')}_{model}.py").write_text(text, encoding="utf-8")
"""


def converted_modular_files(tree: Path) -> list[str]:
    """The family's modular files, those the series edits, and every modular file importing from a family module."""
    family = "|".join(map(re.escape, FAMILY))
    pattern = re.compile(rf"from (?:\.\.|transformers\.models\.)({family})\.modeling_\1 import")
    found = {modular_path(model) for model in [*FAMILY, *KEEP_STOCK] if (tree / modular_path(model)).is_file()}
    for path in (tree / MODELS).glob("*/modular_*.py"):
        if pattern.search(path.read_text(encoding="utf-8")):
            found.add(str(path.relative_to(tree)))
    return sorted(found)


def convert(tree: Path, converter_dir: Path, python: str, modular_files: list[str], output: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree / "src"), str(converter_dir)]))
    subprocess.run([python, "-c", CONVERT_ALL, str(output), *modular_files], cwd=tree, env=env, check=True)


def verify_with_converter(converter_dir: Path, python: str, models: list[str] | None = None) -> list[str]:
    """
    Problems found by converting the affected modular files on the pristine and the patched tree with upstream's
    converter: the conversions must differ exactly by the function replacement in the family's generated files.
    """
    if not (converter_dir / "modular_model_converter.py").is_file():
        raise PatchError(f"{converter_dir} has no modular_model_converter.py (give a transformers checkout's utils/)")
    function = upstream_eager_text(overlay_eager_text())
    problems = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        pristine, patched = work_copy(root / "pristine"), work_copy(root / "patched")
        for path, text in patched_files(patched, function).items():
            (patched / path).write_text(text, encoding="utf-8")
        modular_files = converted_modular_files(patched)
        if models:
            modular_files = [path for path in modular_files if path.split("/")[3] in models]
        print(
            f"converting {len(modular_files)} modular files twice with {converter_dir / 'modular_model_converter.py'}"
        )
        convert(pristine, converter_dir, python, modular_files, root / "out-pristine")
        convert(patched, converter_dir, python, modular_files, root / "out-patched")
        family_files = {f"{model}/modeling_{model}.py": model for model in FAMILY if FAMILY[model][0] != "copy"}
        for before in sorted((root / "out-pristine").rglob("*.py")):
            relative = str(before.relative_to(root / "out-pristine"))
            after = (root / "out-patched" / relative).read_text(encoding="utf-8")
            expected = before.read_text(encoding="utf-8")
            if relative in family_files:
                model = family_files[relative]
                expected = replace_function(expected, EAGER, generated_eager_text(model, function), relative)
            if after != expected:
                diff = difflib.unified_diff(
                    expected.splitlines(), after.splitlines(), "expected", "converted", lineterm=""
                )
                problems.append(f"{relative}:\n" + "\n".join(list(diff)[:40]))
        print(f"compared {len(list((root / 'out-pristine').rglob('*.py')))} generated files")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when patches/ differs from a regeneration")
    mode.add_argument("--pristine-tree", action="store_true", help="print the cached pristine tree (download it)")
    mode.add_argument(
        "--verify-with-converter", action="store_true", help="prove the generated files with upstream's converter"
    )
    parser.add_argument("--converter-dir", type=Path, help="utils/ of a transformers git checkout")
    parser.add_argument("--converter-python", default=sys.executable, help="python with libcst for the converter")
    parser.add_argument("--models", nargs="+", help="--verify-with-converter: only these models' modular files")
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
        elif args.verify_with_converter:
            if args.converter_dir is None:
                parser.error("--verify-with-converter needs --converter-dir")
            problems = verify_with_converter(args.converter_dir.expanduser(), args.converter_python, args.models)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print(f"make_patches: {len(problems)} generated files differ from the converter's", file=sys.stderr)
                return 1
            print("the converter's output differs from the pristine conversion exactly by the series' changes")
        else:
            names = write_series()
            print("wrote patches/series: " + ", ".join(names))
    except (PatchError, subprocess.CalledProcessError) as error:
        print(f"make_patches: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
