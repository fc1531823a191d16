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
The upstream patch series, from the overlay's reference function to a patched transformers source tree.

One direction: `stable_eager_attention.py`'s `eager_attention_forward` (extracted with `ast`, then given upstream's
`**kwargs: Unpack[TransformersKwargs]` and `module.num_key_value_groups`) -> the edits of a transformers tree's
modular and modeling files -> a `git format-patch` series:

- 0001: the Qwen2 family's eager attention (`FAMILY`): `modular_qwen2.py` defines the function, `modular_qwen2_moe.py`
  imports it, the hand-written `modeling_qwen2_vl.py` copies it (`# Copied from`), the generated modeling files of the
  family carry it, and the modular files of models outside the family that took it through a family class import a
  function with their stock text explicitly (`keep_stock`, computed per tree), so that their generated code stays
  byte-identical;
- 0002: the upstream-style tests in `tests/models/<model>/test_modeling_*.py` (`UPSTREAM_TESTS`);
- 0003: `examples/rag/README.md` (a separate PR, marked so in `patches/series`).

`patches/` holds the series generated for `releases.SERIES_RELEASE` (`make`, `make --check`); `apply` applies it to a
tree of that release, and to any other tree (a release from 5.0 on, or a `.devN` checkout of a later one) applies the
same change generated for that tree's own text, all or nothing. Author, dates and base are fixed, so regenerating
gives byte-identical patches. `make --verify-with-converter` proves the generated files with upstream's
`utils/modular_model_converter.py`: it converts every affected modular file on the pristine and on the patched tree
and checks that the two conversions differ exactly by the function replacement in the family's files.

Standard library only, and not imported by `import transformers_overlay`; `scripts/make_patches.py` and
`scripts/apply_patches.sh` are its entry points:

    python scripts/make_patches.py [--check | --pristine-tree | --verify-with-converter --converter-dir DIR]
    scripts/apply_patches.sh TREE [--check | --reverse] [--commit]
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

from .releases import SERIES_RELEASE


REPO = Path(__file__).resolve().parents[2]
OVERLAY_SOURCE = Path(__file__).resolve().parent / "integrations" / "stable_eager_attention.py"
PATCH_DIR = REPO / "patches"

# Author/committer date of every patch: bump it when the content of the series changes.
PATCH_DATE = "2026-12-04"
# The project's git identity (the repository's user.name/user.email), fixed so the series is reproducible.
AUTHOR = ("Seed 893c5ed4 maintainers", "maintainers@users.noreply.r-seed-893c5ed4.example")
# The oldest release whose family modules all have the module-level function the series edits.
OLDEST_RELEASE = (5, 0)

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
# Names the overlay function may use, and what the family's modeling files provide them as.
ALLOWED_IMPORTS = {"torch", "nn"}
# What the family's stock function used and the fixed one does not: the generated modeling files drop it with it (the
# converter copies only what is used), and the models kept stock that define the stock function import it from here.
STOCK_HELPER = ("repeat_kv", "llama")
UPSTREAM_TESTS = ("tests/models",)
RAG_README = "examples/rag/README.md"
UPSTREAM_BUG = "https://github.com/huggingface/transformers/issues/33615"


class PatchError(Exception):
    """A one-line reason why the series cannot be generated or applied."""


def modular_path(model: str) -> str:
    """The modular file of `model`, relative to a transformers tree."""
    return f"{MODELS}/{model}/modular_{model}.py"


def modeling_path(model: str) -> str:
    """The modeling file of `model`, relative to a transformers tree."""
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
    `TransformersKwargs` on every transformers version it supports).
    """
    old, new = SIGNATURE_KWARGS
    if overlay_text.count(old) != 1:
        raise PatchError(f"{EAGER} no longer ends its signature with `**kwargs,`: update SIGNATURE_KWARGS")
    return overlay_text.replace(old, new)


def drop_unused_function(text: str, name: str) -> str:
    """
    `text` without its top-level function `name` (and the `# Copied from` line above it) when nothing else in the
    file refers to it, as the converter leaves out a dependency that the code it copies no longer uses.
    """
    tree = ast.parse(text)
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if node is None or any(
        isinstance(child, ast.Name) and child.id == name
        for other in tree.body
        if other is not node
        for child in ast.walk(other)
    ):
        return text
    lines = text.splitlines(keepends=True)
    start, end = _node_span(node)
    if start and lines[start - 1].startswith("# Copied from "):
        start -= 1
    while end < len(lines) and not lines[end].strip():  # the blank lines that separated it from what follows
        end += 1
    return "".join(lines[:start] + lines[end:])


def converter_rename(text: str, old_model: str, new_model: str) -> str:
    """
    What `utils/modular_model_converter.py` does to code it copies from `modeling_<old_model>.py` into
    `modeling_<new_model>.py`: model names in code, comments and strings follow the new model (`Qwen2` -> `Qwen2Moe`).
    """
    cased = {name: CASED_NAMES[name] for name in (old_model, new_model)}
    patterns = {old_model: new_model, old_model.upper(): new_model.upper(), cased[old_model]: cased[new_model]}
    regex = re.compile(f"(?<![a-z0-9])({'|'.join(map(re.escape, patterns))})(.|$)", re.IGNORECASE | re.DOTALL)
    return regex.sub(lambda match: patterns.get(match.group(1), cased[new_model]) + match.group(2), text)


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
        raise PatchError(f"{path} defines no module-level {name}: not a file this generator recognises")
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


def take_eager_from(text: str, model: str, path: str, name: str = EAGER) -> str:
    """
    A modular file that imports `name` (default `eager_attention_forward`) from `..<model>.modeling_<model>` (and from
    nowhere else), so that the converter copies that model's function; `# noqa: F401` when only the converter uses the
    import.
    """
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    source = f"..{model}.modeling_{model}"
    relative = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 2]
    if not relative:
        raise PatchError(f"{path} imports nothing from another model: not a file this generator recognises")
    used = any(
        isinstance(n, ast.Name) and n.id == name
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
        elif name in statement.names:
            del statement.names[name]
            replacements[node] = statement.render() if statement.names else ""
    comment = "" if used else "# noqa: F401"
    if target is not None:
        statement = _parse_import(lines, target)
        statement.names[name] = comment
        statement.multiline = statement.multiline or (bool(comment) and len(statement.names) > 1)
        replacements[target] = statement.render()
        insert_before = None
    else:
        # a new statement, where isort puts it among the `from ..x` imports
        new = ImportStatement(source, {name: comment}, False).render()
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
        raise PatchError(f"{path} does not import {EAGER} from Llama's modeling file before Qwen2Attention")
    statement = _parse_import(lines, llama)
    del statement.names[EAGER]
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
    """`model`'s modular file importing the function from `source`'s modeling file."""
    return take_eager_from(text, source, modular_path(model))


def edit_hand_written(text: str, model: str, source: str, function: str) -> str:
    """A hand-written modeling file whose function becomes a `# Copied from` copy of `source`'s."""
    copied = f"# Copied from transformers.models.{source}.modeling_{source}.{EAGER}\n"
    return drop_unused_function(
        replace_function(text, EAGER, copied + function, modeling_path(model)), STOCK_HELPER[0]
    )


# --------------------------------------------------------------------------------------------------------------------
# Reading a transformers tree: its version, its family members, the models kept stock


VERSION_PATTERN = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:\.dev(\d+))?$")


def tree_version(tree: Path) -> str:
    """The `__version__` of a transformers source tree; PatchError when `tree` is not one."""
    init = tree / "src" / "transformers" / "__init__.py"
    match = None
    if init.is_file() and ((tree / "setup.py").is_file() or (tree / "pyproject.toml").is_file()):
        match = re.search(r'^__version__ = "([^"]+)"', init.read_text(encoding="utf-8"), re.MULTILINE)
    if match is None:
        raise PatchError(
            f"{tree} is not a transformers source tree (no src/transformers/__init__.py with __version__ next to "
            "setup.py)"
        )
    return match.group(1)


def supported_version(version: str) -> tuple[int, int, int, int | None]:
    """(major, minor, patch, dev) of a release from 5.0 on or of a `.devN` build; PatchError for anything else."""
    match = VERSION_PATTERN.match(version)
    if match is None or tuple(map(int, match.group(1, 2))) < OLDEST_RELEASE:
        raise PatchError(
            f"transformers {version} is not supported: the series is generated for releases from "
            f"{'.'.join(map(str, OLDEST_RELEASE))} on and for `.devN` checkouts of later ones"
        )
    major, minor, patch, dev = match.groups()
    return int(major), int(minor), int(patch), None if dev is None else int(dev)


def _read(tree: Path, path: str) -> str:
    return (tree / path).read_text(encoding="utf-8")


def module_function(text: str, name: str = EAGER) -> str | None:
    """The source text of the top-level function `name` in `text` (decorators included), or None."""
    tree = ast.parse(text)
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if node is None:
        return None
    start, end = _node_span(node)
    return "".join(text.splitlines(keepends=True)[start:end])


def stock_eager(tree: Path, model: str) -> str | None:
    """The module-level `eager_attention_forward` of `modeling_<model>.py` in `tree`, or None."""
    path = tree / modeling_path(model)
    return module_function(path.read_text(encoding="utf-8")) if path.is_file() else None


def family_in(tree: Path) -> dict[str, tuple[str, str | None]]:
    """
    The family members of `tree` the series edits: those whose modeling file has a module-level eager function; a
    member whose source has none is refused, since its function would come from nowhere the series edits.
    """
    present = {model: plan for model, plan in FAMILY.items() if stock_eager(tree, model) is not None}
    for model, (_, source) in present.items():
        if source is not None and source not in present:
            raise PatchError(f"{modeling_path(source)} has no module-level {EAGER}, which {model}'s is built from")
    if "qwen2" not in present:
        raise PatchError(f"{modeling_path('qwen2')} has no module-level {EAGER}: not a tree this generator recognises")
    return present


def _model_of(module: str | None, level: int) -> str | None:
    """`x` for an import of `..x.modeling_x` or `transformers.models.x.modeling_x`, else None."""
    if level == 2:
        name = module or ""
    elif level == 0 and (module or "").startswith("transformers.models."):
        name = module[len("transformers.models.") :]
    else:
        return None
    parts = name.split(".")
    return parts[0] if len(parts) == 2 and parts[1] == f"modeling_{parts[0]}" else None


@dataclass
class ModularFile:
    """What `keep_stock` needs to know of one modular file."""

    model: str
    imports: dict[str, list[str]]  # model whose modeling file it imports from -> names imported
    classes: set[str]
    functions: set[str]

    @classmethod
    def read(cls, path: Path) -> ModularFile:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imports = {}
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (model := _model_of(node.module, node.level)) is not None:
                imports.setdefault(model, []).extend(alias.name for alias in node.names)
        return cls(
            model=path.parent.name,
            imports=imports,
            classes={n.name for n in tree.body if isinstance(n, ast.ClassDef)},
            functions={n.name for n in tree.body if isinstance(n, ast.FunctionDef)},
        )

    def overrides(self, name: str, family_model: str) -> bool:
        """Whether this file defines `name` of `modeling_<family_model>.py` itself (renamed, as the converter does)."""
        if name in self.classes or name in self.functions:
            return True
        cased = CASED_NAMES[family_model]
        if not name.startswith(cased):
            return False
        suffix = name[len(cased) :]
        own = self.model.replace("_", "")
        return any(c.endswith(suffix) and c[: -len(suffix)].replace("_", "").lower() == own for c in self.classes)


def _eager_users(tree: Path, model: str) -> dict[str, set[str]]:
    """Top-level names of `modeling_<model>.py` -> the top-level names of that file each one refers to."""
    module = ast.parse(_read(tree, modeling_path(model)))
    definitions = {n.name: n for n in module.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    return {
        name: {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in definitions} - {name}
        for name, node in definitions.items()
    }


def _takes_family_eager(modular: ModularFile, references: dict[str, dict[str, set[str]]]) -> dict[str, list[str]]:
    """
    The family models whose function the converter copies into `modular`'s modeling file through what it imports,
    each with the imported names that lead to it.
    """
    sources = {}
    for family_model, names in modular.imports.items():
        if family_model not in references:
            continue
        refs = references[family_model]
        leading = []
        for start in [n for n in names if n in refs or n == EAGER]:
            seen, stack = set(), [start]
            while stack:
                name = stack.pop()
                if name in seen or (name not in names and modular.overrides(name, family_model)):
                    continue
                seen.add(name)
                stack += refs.get(name, ())
            if EAGER in seen:
                leading.append(start)
        if leading:
            sources[family_model] = leading
    return sources


def modular_parents(tree: Path) -> dict[str, set[str]]:
    """Model -> the models whose modeling files its modular file imports from (its parents), for every modular file."""
    return {
        path.parent.name: set(ModularFile.read(path).imports) - {path.parent.name}
        for path in sorted((tree / MODELS).glob("*/modular_*.py"))
        if path.name == f"modular_{path.parent.name}.py"
    }


def _ancestors(model: str, parents: dict[str, set[str]]) -> set[str]:
    found, stack = set(), list(parents.get(model, ()))
    while stack:
        parent = stack.pop()
        if parent not in found:
            found.add(parent)
            stack += parents.get(parent, ())
    return found


@dataclass(frozen=True)
class KeptStock:
    """
    How a model outside the family keeps its stock function: imported from the modeling file of `source`, a model
    outside the family with the same stock text, or (`source` None) defined in its own modular file, where no model
    it builds on has that text; `why` says why, for the commit message.
    """

    source: str | None
    why: str
    taken_from: dict[str, list[str]]  # family model -> imported names through which the converter copied its function
    stock: str  # the function text its modeling file has


KEEP_STOCK_WHY = {
    0: "the function the family model it builds on imported, which it had before",
    1: "a model its modular file already builds on, with the same text",
    2: "a model its modular file builds on through its parents, with the same text",
    3: "no model it builds on has that text",
    4: "a model of this series that defines the same text; its own first attention is built on a model outside the"
    " family",
}


def keep_stock(tree: Path, family: dict[str, tuple[str, str | None]] | None = None) -> dict[str, KeptStock]:
    """
    The models outside the family whose modular files take the family's function through a family class or import
    (and neither define it nor import it from elsewhere), each with how it keeps the function it has today, so that
    the converter keeps generating its code byte for byte: imported from, in order of preference, the model the family
    module imported the function from, a model its modular file builds on, or one of those models' ancestors (never
    one that builds on the model itself, which would make a cycle); failing those, defined in its modular file.
    PatchError when a model's modeling file does not show the function it takes.
    """
    family = family_in(tree) if family is None else family
    references = {model: _eager_users(tree, model) for model in family}
    parents = modular_parents(tree)
    modulars = {
        model: ModularFile.read(tree / modular_path(model))
        for model in parents
        if (tree / modular_path(model)).is_file()
    }
    kept_texts = {}
    for model, modular in sorted(modulars.items()):
        if model in FAMILY or EAGER in modular.functions:
            continue
        if any(EAGER in names for source, names in modular.imports.items() if source not in FAMILY):
            continue
        taken = _takes_family_eager(modular, references)
        if not taken:
            continue
        text = stock_eager(tree, model)
        if text is None:
            raise PatchError(
                f"{modular_path(model)} takes {EAGER} from {', '.join(taken)}, but its modeling file has no "
                "module-level one: cannot tell how to keep it stock"
            )
        kept_texts[model] = (text, taken)
    # where each family module's modular file imported the function from (qwen2: llama)
    family_origin = {}
    for model in family:
        if model in modulars:
            origin = [s for s, names in modulars[model].imports.items() if EAGER in names and s not in FAMILY]
            if origin:
                family_origin[model] = origin[0]
    texts = {}  # model -> its stock function text, read only for the candidates

    def text_of(candidate: str) -> str | None:
        if candidate not in texts:
            texts[candidate] = stock_eager(tree, candidate)
        return texts[candidate]

    chosen = {}
    for model, (text, taken) in sorted(kept_texts.items()):
        ancestors = _ancestors(model, parents)
        ranks = {}
        origins = {family_origin[source] for source in taken if source in family_origin}
        for candidate in sorted(origins | ancestors):
            if candidate in FAMILY or text_of(candidate) != text or model in _ancestors(candidate, parents):
                continue
            ranks[candidate] = 0 if candidate in origins else 1 if candidate in parents.get(model, ()) else 2
        if ranks:
            # among equals, the parent it takes most from
            best = min(ranks, key=lambda c: (ranks[c], -len(modulars[model].imports.get(c, ())), c))
            chosen[model] = KeptStock(best, KEEP_STOCK_WHY[ranks[best]], taken, text)
        elif _first_taker_builds_on_the_family(_read(tree, modular_path(model)), taken):
            chosen[model] = KeptStock(None, KEEP_STOCK_WHY[3], taken, text)
    # The rest take the function first in a class built on a model outside the family (Video-LLaMA 3's vision
    # attention on SigLIP's): the converter would not find `repeat_kv` for a function they define, so they import it
    # from a model that defines it above, one that does not build on them.
    for model, (text, taken) in sorted(kept_texts.items()):
        if model in chosen:
            continue
        graph = {m: parents.get(m, set()) | ({chosen[m].source} if m in chosen else set()) for m in parents}
        homes = [
            other
            for other, keep in sorted(chosen.items())
            if keep.source is None and keep.stock == text and model not in _ancestors(other, graph)
        ]
        if not homes:
            raise PatchError(
                f"no model outside the family has {modular_path(model)}'s stock {EAGER} to import without a cycle, and "
                "it cannot define it: cannot keep it stock"
            )
        chosen[model] = KeptStock(homes[0], KEEP_STOCK_WHY[4], taken, text)
    return dict(sorted(chosen.items()))


def _first_taker_builds_on_the_family(text: str, taken: dict[str, list[str]]) -> bool:
    """Whether the first class of a modular file that takes the family's function subclasses a family class."""
    leading = {name for names in taken.values() for name in names}
    first = next(
        (n for n in ast.parse(text).body if isinstance(n, ast.ClassDef) and _referenced_names(n) & leading), None
    )
    return first is not None and bool({b.id for b in first.bases if isinstance(b, ast.Name)} & (leading - {EAGER}))


def define_stock_eager(text: str, keep: KeptStock, path: str) -> str:
    """
    A modular file that defines the stock function its modeling file has, before the first class that takes it from
    the family, and imports `repeat_kv` for it from Llama's modeling file (the family's no longer has it).
    """
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    leading = {name for names in keep.taken_from.values() for name in names}
    first = next(
        (
            node
            for node in tree.body
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and _referenced_names(node) & leading
        ),
        None,
    )
    if first is None:
        raise PatchError(f"{path}: no class takes {', '.join(sorted(leading))}; cannot place {EAGER}")
    defined = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    imported = _imported_names(tree)
    replacements = {}
    for node in tree.body:  # the family's function, which the modular file imported explicitly
        if isinstance(node, ast.ImportFrom) and _model_of(node.module, node.level) in FAMILY:
            statement = _parse_import(lines, node)
            if EAGER in statement.names:
                del statement.names[EAGER]
                replacements[node] = statement.render() if statement.names else ""
    for name in ("torch", "nn"):
        if name in _referenced_names(ast.parse(keep.stock)) and name not in imported:
            raise PatchError(f"{path} does not import {name}, which its stock {EAGER} uses")
    result, position = [], 0
    for node in tree.body:
        start, end = _node_span(node)
        if node is first:
            while start > position and lines[start - 1].startswith("#"):  # the class's own comment stays with it
                start -= 1
            result += lines[position:start] + [keep.stock, "\n\n"]
            position = start
            start = _node_span(node)[0]
        if node in replacements:
            result += lines[position:start] + [replacements[node]]
            position = end
    text = "".join(result + lines[position:])
    helper, home = STOCK_HELPER
    if helper in _referenced_names(ast.parse(keep.stock)) and helper not in defined:
        text = take_eager_from(text, home, path, name=helper)
    return text


def patched_files(tree: Path, function: str) -> tuple[dict[str, str], dict[str, KeptStock]]:
    """Every file 0001 changes, with its patched text, computed from the pristine `tree`; and the models kept stock."""
    family = family_in(tree)
    kept = keep_stock(tree, family)
    files = {}
    for model, (how, source) in family.items():
        if how == "define":
            files[modular_path(model)] = edit_modular_qwen2(_read(tree, modular_path(model)), function)
        elif how == "import":
            files[modular_path(model)] = edit_modular_import(_read(tree, modular_path(model)), model, source)
        if how == "copy":
            files[modeling_path(model)] = edit_hand_written(_read(tree, modeling_path(model)), model, source, function)
        else:
            path = modeling_path(model)
            patched = replace_function(_read(tree, path), EAGER, generated_eager_text(model, function), path)
            files[path] = drop_unused_function(patched, STOCK_HELPER[0])
    for model, keep in kept.items():
        path = modular_path(model)
        if keep.source is None:
            files[path] = define_stock_eager(_read(tree, path), keep, path)
        else:
            files[path] = take_eager_from(_read(tree, path), keep.source, path)
    for path, text in files.items():
        if text == _read(tree, path):
            raise PatchError(f"the series would leave {path} unchanged: not a tree this generator recognises")
    return dict(sorted(files.items())), kept


def looks_patched(tree: Path) -> bool:
    """Whether `tree`'s Qwen2 modeling file already carries the overlay's function (the series is applied)."""
    return stock_eager(tree, "qwen2") == generated_eager_text("qwen2", upstream_eager_text(overlay_eager_text()))


# --------------------------------------------------------------------------------------------------------------------
# Pristine trees and git plumbing


def cache_dir() -> Path:
    """Where pristine sdists are cached: `$TRANSFORMERS_OVERLAY_CACHE`, default ~/.cache/transformers-overlay."""
    return Path(os.environ.get("TRANSFORMERS_OVERLAY_CACHE", Path.home() / ".cache" / "transformers-overlay"))


def git_env(**extra: str) -> dict[str, str]:
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
        **extra,
    )


def git(tree: Path, *args: str, capture: bool = False, env: dict[str, str] | None = None) -> str:
    """Runs git in `tree` (with `git_env()` unless `env` is given); its stdout when `capture`, else ""."""
    result = subprocess.run(
        ["git", "-C", str(tree), *args], env=env or git_env(), check=True, text=True, capture_output=capture
    )
    return result.stdout if capture else ""


def pristine_tree(version: str = SERIES_RELEASE) -> Path:
    """
    The transformers `version` sdist unpacked and committed as one git commit (fixed author and date), under the cache
    directory (`$TRANSFORMERS_OVERLAY_CACHE`, default ~/.cache/transformers-overlay); downloaded with pip when absent.
    """
    root = cache_dir()
    tree = root / f"transformers-{version}"
    if not (tree / ".git").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        sdist = root / f"transformers-{version}.tar.gz"
        if not sdist.is_file():
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
                + [f"transformers=={version}", "--dest", str(root)],
                check=True,
            )
        with tempfile.TemporaryDirectory(dir=root) as scratch:
            with tarfile.open(sdist) as archive:
                archive.extractall(scratch, filter="data")
            unpacked = Path(scratch) / f"transformers-{version}"
            git(unpacked, "init", "--quiet", "--initial-branch=main")
            git(unpacked, "add", "--all")
            git(unpacked, "commit", "--quiet", "--no-verify", "-m", f"transformers {version} (PyPI sdist)")
            unpacked.rename(tree)
    if git(tree, "status", "--porcelain", capture=True):
        raise PatchError(f"the cached pristine tree {tree} has local changes: remove it to download it again")
    return tree


def commit(tree: Path, message: str, paths: list[str]) -> None:
    """Commits `paths` in `tree` with `message`, with the series' fixed identity and date."""
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


def modeling_message(files: list[str], family: list[str], kept: dict[str, KeptStock]) -> str:
    """The commit message of 0001, naming how each model kept stock keeps its function."""
    grouped = {}
    for model, keep in sorted(kept.items()):
        grouped.setdefault((keep.source, keep.why), []).append(model)
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
                f"Scope: the models with Qwen2's q/k-biased attention and their own eager function"
                f" ({', '.join(family)}). modular_qwen2.py defines the function, modular_qwen2_moe.py imports it,"
                " the hand-written modeling_qwen2_vl.py copies it (`# Copied from`), and qwen2_5_vl / qwen2_5_omni"
                " inherit it through their modular files.",
                width=105,
            ),
            "",
            "Models outside the family that took Qwen2's or Qwen2-VL's function through a family class keep the",
            "function they have today, same text, so their generated code is unchanged: their modular file imports it",
            "from a model outside the family it builds on, or defines it where no such model has that text.",
            *(
                line
                for (source, why), models in grouped.items()
                for line in textwrap.wrap(
                    f"- {', '.join(models)}: " + (f"{source}'s ({why})" if source else f"defined ({why})"),
                    width=105,
                    subsequent_indent="  ",
                )
            ),
            "",
            "Files:",
            *(f"    {path}" for path in files),
        ]
    )


def tests_message(paths: list[str]) -> str:
    """The commit message of 0002."""
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
    """The commit message of 0003."""
    return "\n".join(
        [
            "examples/rag: point to where RAG lives now",
            "",
            "The RAG paper (arXiv:2005.11401) links to examples/rag, which no longer exists. The README names the RAG",
            "classes of the library, links the model documentation and the research-projects repository that now",
            "holds the fine-tuning and evaluation scripts, and gives a quick start.",
        ]
    )


SUBJECTS = (
    "Qwen2 family: compute eager attention scores and softmax in float32",
    "Qwen2 family: tests for float16/bfloat16 eager attention",
    "examples/rag: point to where RAG lives now",
)


# --------------------------------------------------------------------------------------------------------------------
# Generation


def test_files() -> list[str]:
    """The upstream-style test files 0002 adds, relative to this repository."""
    paths = []
    for directory in UPSTREAM_TESTS:
        paths += sorted(
            str(path.relative_to(REPO)) for path in (REPO / directory).rglob("test_*.py") if path.is_file()
        )
    return paths


def series_header(version: str) -> str:
    """The comment lines that open `patches/series` for a series against transformers `version`."""
    return (
        f"# transformers-version: {version}\n"
        "# Generated by scripts/make_patches.py; apply with scripts/apply_patches.sh. Do not edit by hand.\n"
        "# PR 1 (the fix and its tests, patches/PR.md):\n"
    )


SEPARATE_PR = "# PR 2, separate and unrelated to the fix (examples/rag redirect):\n"


def build_series(tree: Path, output: Path) -> list[str]:
    """
    Writes into `output` the series for the current sources against the pristine transformers `tree` (a directory,
    read only), with its `series` file; returns the patch file names in order. The commits are made in a scratch
    repository holding only the files the series touches, which gives the same patches as a full clone.
    """
    function = upstream_eager_text(overlay_eager_text())
    version = tree_version(tree)
    files, kept = patched_files(tree, function)
    tests = test_files()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch) / "transformers"
        work.mkdir()
        git(work, "init", "--quiet", "--initial-branch=main")
        touched = [*files, *tests, RAG_README]
        for path in touched:
            if (tree / path).is_file():
                (work / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tree / path, work / path)
        git(work, "add", "--all")
        git(work, "commit", "--quiet", "--no-verify", "--allow-empty", "-m", f"transformers {version}")
        base = git(work, "rev-parse", "HEAD", capture=True).strip()

        for path, text in files.items():
            (work / path).write_text(text, encoding="utf-8")
        commit(work, modeling_message(list(files), list(family_in(tree)), kept), list(files))

        for path in tests:
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / path, work / path)
        commit(work, tests_message(tests), tests)

        (work / RAG_README).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / RAG_README, work / RAG_README)
        commit(work, rag_message(), [RAG_README])

        output.mkdir(parents=True, exist_ok=True)
        git(
            work,
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
        series_header(version) + "".join(f"{name}\n" for name in names[:2]) + SEPARATE_PR + f"{names[2]}\n",
        encoding="utf-8",
    )
    return names


def series_files(directory: Path) -> set[str]:
    """The names of the patch files and `series` in `directory`."""
    return {path.name for path in directory.glob("*.patch")} | (
        {"series"} if (directory / "series").is_file() else set()
    )


def stale_files(patch_dir: Path = PATCH_DIR) -> list[str]:
    """Files of the series in `patch_dir` that differ from a fresh regeneration (missing and extra ones included)."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch)
        build_series(pristine_tree(), fresh)
        current, expected = series_files(patch_dir), series_files(fresh)
        differing = [n for n in sorted(current & expected) if not filecmp.cmp(patch_dir / n, fresh / n, shallow=False)]
        return sorted(set(differing) | (current ^ expected))


def write_series() -> list[str]:
    """Rewrites `patches/` for `SERIES_RELEASE`; returns the patch file names in order."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch)
        names = build_series(pristine_tree(), fresh)
        for old in PATCH_DIR.glob("*.patch"):
            old.unlink()
        for name in series_files(fresh):
            shutil.copyfile(fresh / name, PATCH_DIR / name)
    return names


def series_patches(directory: Path) -> list[Path]:
    """The patches `directory/series` lists, in order."""
    lines = (directory / "series").read_text(encoding="utf-8").splitlines()
    patches = [directory / line for line in lines if line and not line.startswith("#")]
    for patch in patches:
        if not patch.is_file():
            raise PatchError(f"{directory / 'series'} lists {patch.name}, which is missing")
    return patches


def stored_series_release(directory: Path = PATCH_DIR) -> str | None:
    """The release the series in `directory` targets (its `# transformers-version:` line), or None."""
    text = (directory / "series").read_text(encoding="utf-8")
    match = re.search(r"^# transformers-version: *(\S+)", text, re.MULTILINE)
    return match.group(1) if match else None


# --------------------------------------------------------------------------------------------------------------------
# Applying the series to a tree


def _patch_paths(patches: list[Path]) -> set[str]:
    paths = set()
    for patch in patches:
        for line in patch.read_text(encoding="utf-8").splitlines():
            if line.startswith(("--- a/", "+++ b/")):
                paths.add(line[6:])
    return paths


class TargetTree:
    """A transformers source tree `apply` works on: a git checkout (its own repository) or plain files."""

    def __init__(self, path: Path):
        self.version = tree_version(path)
        self.path = path.resolve()
        # keep git from climbing into an enclosing repository: a plain tree is patched as plain files
        self.env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(self.path.parent))
        top = self.git("rev-parse", "--show-toplevel", check=False)
        self.is_git = top.returncode == 0 and Path(top.stdout.strip()).resolve() == self.path

    def git(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(self.path), *args], env=env or self.env, check=check, text=True, capture_output=True
        )

    def modified(self) -> set[str]:
        """Tracked paths with uncommitted changes (git checkouts; untracked files do not count)."""
        if not self.is_git:
            return set()
        status = self.git("status", "--porcelain", "--untracked-files=no").stdout
        return {line[3:].split(" -> ")[-1] for line in status.splitlines()}

    def export(self, revision: str, destination: Path, extra_paths: list[str]) -> Path:
        """The checkout's files at `revision` that the generator reads, written under `destination`."""
        destination.mkdir(parents=True)
        top_level = set(self.git("ls-tree", "--name-only", revision).stdout.split())
        paths = ["src/transformers"] + [name for name in ("setup.py", "pyproject.toml") if name in top_level]
        archive = subprocess.run(
            ["git", "-C", str(self.path), "archive", revision, "--", *paths],
            env=self.env,
            check=True,
            capture_output=True,
        )
        subprocess.run(["tar", "-x", "-C", str(destination)], input=archive.stdout, check=True)
        for path in extra_paths:
            blob = subprocess.run(
                ["git", "-C", str(self.path), "show", f"{revision}:{path}"], env=self.env, capture_output=True
            )
            if blob.returncode == 0:
                (destination / path).parent.mkdir(parents=True, exist_ok=True)
                (destination / path).write_bytes(blob.stdout)
        return destination


def pristine_source(target: TargetTree, scratch: Path) -> Path:
    """
    A directory with `target`'s pristine text, to generate the series from: the tree itself when it does not carry
    the fix; else, for a checkout, HEAD (applied, uncommitted) or the parent of the series' commits (applied with
    --commit); for a plain release tree, the release's sdist (cached). PatchError when there is none.
    """
    if not looks_patched(target.path):
        return target.path
    extra = [*test_files(), RAG_README]
    if target.is_git:
        head = target.export("HEAD", scratch / "head", extra)
        if not looks_patched(head):
            return head
        subjects = target.git("log", "--format=%s", "-n", str(len(SUBJECTS)), "HEAD").stdout.splitlines()
        if tuple(reversed(subjects)) != SUBJECTS:
            raise PatchError(
                f"{target.path} carries the fix in commits other than the series' last {len(SUBJECTS)}: cannot tell "
                "its pristine text; nothing changed"
            )
        return target.export(f"HEAD~{len(SUBJECTS)}", scratch / "base", extra)
    if supported_version(target.version)[3] is not None:
        raise PatchError(
            f"{target.path} is a plain transformers {target.version} tree that already carries the fix, and a .dev "
            "tree has no release sdist to take its pristine text from: use a git checkout; nothing changed"
        )
    try:
        return pristine_tree(target.version)
    except (subprocess.CalledProcessError, OSError) as error:
        raise PatchError(
            f"{target.path} already carries the fix and the transformers {target.version} sdist to compare it with "
            f"is neither cached in {cache_dir()} nor downloadable ({type(error).__name__}); nothing changed"
        ) from None


def apply_series(tree: Path, mode: str = "apply", commit_series: bool = False) -> list[str]:
    """
    Applies (`mode` "apply"), checks ("check") or reverts ("reverse") the series on the transformers source `tree`,
    all or nothing; `commit_series` commits it with `git am` (checkouts only). The stored series serves a tree of its
    release; any other supported tree gets the series generated for its own pristine text. Returns the lines to
    print; PatchError with a one-line reason, the tree unchanged, for a tree it does not fit.
    """
    if commit_series and mode != "apply":
        raise PatchError("--commit only goes with a plain apply, not --check or --reverse")
    target = TargetTree(tree)
    lines = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if target.version == stored_series_release():
            patches = series_patches(PATCH_DIR)
        else:
            supported_version(target.version)
            if target.is_git and not looks_patched(target.path) and target.modified():
                raise PatchError(
                    f"{target.path} has uncommitted changes ({', '.join(sorted(target.modified())[:3])}): commit or "
                    "stash them first; nothing changed"
                )
            source = pristine_source(target, scratch)
            build_series(source, scratch / "patches")
            patches = series_patches(scratch / "patches")
            lines.append(
                f"generated the {len(patches)} patches for transformers {target.version} from the overlay's source "
                f"(the stored series is for {stored_series_release()})"
            )
        state = _state(target, patches)
        dirty = target.modified() - (_patch_paths(patches) if state == "applied" else set())
        if dirty:
            raise PatchError(
                f"{target.path} has uncommitted changes ({', '.join(sorted(dirty)[:3])}): commit or stash them first; "
                "nothing changed"
            )
        lines.append(_act(target, patches, state, mode, commit_series))
    return lines


def _git_apply(target: TargetTree, patches: list[Path], *options: str) -> subprocess.CompletedProcess:
    return target.git("apply", "--whitespace=nowarn", *options, *map(str, patches), check=False)


def _state(target: TargetTree, patches: list[Path]) -> str:
    if _git_apply(target, patches, "--check").returncode == 0:
        return "applicable"
    if _git_apply(target, patches[::-1], "--check", "--reverse").returncode == 0:
        return "applied"
    raise PatchError(
        f"the patches neither apply to {target.path} nor are applied there (modified or partly patched tree); "
        "nothing changed"
    )


def _act(target: TargetTree, patches: list[Path], state: str, mode: str, commit_series: bool) -> str:
    n, where = len(patches), target.path
    if mode == "check":
        return (
            f"the {n} patches apply cleanly to {where} (not applied yet)"
            if state == "applicable"
            else (f"the {n} patches are already applied to {where}")
        )
    if mode == "reverse":
        if state == "applicable":
            return f"the {n} patches are not applied to {where}; nothing to undo"
        _git_apply(target, patches[::-1], "--reverse").check_returncode()
        return f"reverted the {n} patches in {where}"
    if state == "applied":
        return f"the {n} patches are already applied to {where}; nothing to do"
    if not commit_series:
        _git_apply(target, patches).check_returncode()
        return f"applied the {n} patches to {where}"
    if not target.is_git:
        raise PatchError(f"--commit needs a git checkout; {where} is a plain tree (nothing changed)")
    env = dict(target.env)
    if target.git("config", "user.email", check=False).returncode != 0:
        # git am needs a committer identity; the checkout has none
        env.update(GIT_COMMITTER_NAME="transformers-overlay", GIT_COMMITTER_EMAIL="transformers-overlay@invalid")
    if target.git("am", "--quiet", "--whitespace=nowarn", *map(str, patches), check=False, env=env).returncode:
        target.git("am", "--abort", check=False, env=env)
        raise PatchError(f"git am failed in {where}; aborted, nothing changed")
    return f"committed the {n} patches in {where}"


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


def converted_modular_files(tree: Path, kept: dict[str, KeptStock]) -> list[str]:
    """The family's modular files, those the series edits, and every modular file importing from a family module."""
    family = "|".join(map(re.escape, FAMILY))
    pattern = re.compile(rf"from (?:\.\.|transformers\.models\.)({family})\.modeling_\1 import")
    found = {modular_path(model) for model in [*FAMILY, *kept] if (tree / modular_path(model)).is_file()}
    for path in (tree / MODELS).glob("*/modular_*.py"):
        if pattern.search(path.read_text(encoding="utf-8")):
            found.add(str(path.relative_to(tree)))
    return sorted(found)


def convert(tree: Path, converter_dir: Path, python: str, modular_files: list[str], output: Path) -> None:
    """Converts `modular_files` of `tree` with the converter in `converter_dir`, writing the results under `output`."""
    # a fixed hash seed: the converter orders some dependencies by iterating over sets of names
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree / "src"), str(converter_dir)]), PYTHONHASHSEED="0")
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
        pristine, patched = root / "pristine", root / "patched"
        for copy in (pristine, patched):
            git(Path.cwd(), "clone", "--quiet", str(pristine_tree()), str(copy))
        files, kept = patched_files(patched, function)
        for path, text in files.items():
            (patched / path).write_text(text, encoding="utf-8")
        modular_files = converted_modular_files(patched, kept)
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
                new_text = generated_eager_text(model, function)
                try:
                    expected = replace_function(expected, EAGER, new_text, relative)
                except SyntaxError:  # a converter that writes this file unformatted: replace the stock text itself
                    stock = stock_eager(pristine, model)
                    if stock is None or expected.count(stock) != 1:
                        problems.append(
                            f"{relative}: the converter's output does not parse nor show the stock {EAGER}"
                        )
                        continue
                    expected = expected.replace(stock, new_text)
            if relative in family_files:
                expected = drop_unused_function(expected, STOCK_HELPER[0])
            if after != expected:
                diff = difflib.unified_diff(
                    expected.splitlines(), after.splitlines(), "expected", "converted", lineterm=""
                )
                problems.append(f"{relative}:\n" + "\n".join(list(diff)[:40]))
        print(f"compared {len(list((root / 'out-pristine').rglob('*.py')))} generated files")
    return problems


def make_main(argv: list[str] | None = None) -> int:
    """`scripts/make_patches.py`: rewrite, check or prove `patches/`; exit status 0, or 1 with a one-line reason."""
    parser = argparse.ArgumentParser(
        prog="make_patches.py",
        description=f"Regenerates patches/, the series for transformers {SERIES_RELEASE}, from the overlay's source.",
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


def apply_main(argv: list[str] | None = None) -> int:
    """`scripts/apply_patches.sh`: exit status 0, 1 for a refused tree (one line on stderr, nothing changed), 2 usage."""
    parser = argparse.ArgumentParser(
        prog="apply_patches.sh",
        description="Applies the Qwen2-family eager attention series to a transformers source tree, all or nothing.",
    )
    parser.add_argument("tree", type=Path, help="a transformers git checkout or unpacked sdist")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_const", const="check", dest="mode", help="only report the state")
    mode.add_argument("--reverse", action="store_const", const="reverse", dest="mode", help="undo the series")
    parser.add_argument("--commit", action="store_true", help="git checkouts: commit the series with git am")
    args = parser.parse_args(argv)
    try:
        for line in apply_series(args.tree, args.mode or "apply", args.commit):
            print(line)
    except (PatchError, subprocess.CalledProcessError) as error:
        print(f"apply_patches: {error}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    commands = {"make": make_main, "apply": apply_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python -m transformers_overlay.upstream_series {{{','.join(commands)}}} ...")
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
