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
The patch series in `patches/`: it is what `scripts/make_patches.py` generates from the overlay's source (so the
attention function in the patches is the overlay's), and `scripts/apply_patches.sh` applies, checks and reverts it on
a transformers 5.23.0 tree all or nothing, refusing trees it does not fit without touching them.

The pristine tree is the sdist cached by `make_patches.pristine_tree()` (downloaded with pip on first use).
"""

import ast
import functools
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
APPLY = REPO / "scripts" / "apply_patches.sh"
PATCH_DIR = REPO / "patches"


def _load_make_patches():
    spec = importlib.util.spec_from_file_location("make_patches", REPO / "scripts" / "make_patches.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


make_patches = _load_make_patches()


@functools.cache
def _pristine_tree() -> Path | None:
    try:
        return make_patches.pristine_tree()
    except (make_patches.PatchError, subprocess.CalledProcessError, OSError):
        return None


def pristine_tree() -> Path:
    """The cached transformers sdist tree; the test skips when it is absent and cannot be downloaded (offline)."""
    tree = _pristine_tree()
    if tree is None:
        raise unittest.SkipTest(
            f"transformers {make_patches.TRANSFORMERS_VERSION} sdist not cached in {make_patches.cache_dir()} "
            "and not downloadable (offline)"
        )
    return tree


def series() -> list[str]:
    lines = (PATCH_DIR / "series").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def tree_digest(root: Path) -> str:
    """Hash of every path, executable bit and content under `root`, git metadata included (HEAD, index, refs)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "objects" not in path.relative_to(root).parts[:2]:
            digest.update(f"{path.relative_to(root)}:{os.access(path, os.X_OK)}\n".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def plain_copy(destination: Path) -> Path:
    """The pristine tree as an unpacked sdist: files only, no git repository."""
    destination.mkdir()
    archive = subprocess.run(["git", "-C", str(pristine_tree()), "archive", "HEAD"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive.stdout, check=True)
    return destination


def git_checkout(destination: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(pristine_tree()), str(destination)], check=True)
    return destination


def apply_patches(tree: Path, *options: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    return subprocess.run(["bash", str(APPLY), str(tree), *options], capture_output=True, text=True, env=env)


def top_level_functions(path: Path) -> dict[str, str]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    return {
        node.name: "".join(lines[node.lineno - 1 : node.end_lineno])
        for node in ast.parse(text).body
        if isinstance(node, ast.FunctionDef)
    }


class PatchSeriesTest(unittest.TestCase):
    def test_series_lists_every_patch_in_order(self):
        names = series()
        self.assertEqual(names, sorted(path.name for path in PATCH_DIR.glob("*.patch")))
        self.assertEqual([name[:4] for name in names], [f"{i:04d}" for i in range(1, len(names) + 1)])
        self.assertIn(
            f"# transformers-version: {make_patches.TRANSFORMERS_VERSION}", (PATCH_DIR / "series").read_text()
        )

    def test_every_patch_reads_as_an_upstream_commit(self):
        for name in series():
            with self.subTest(name):
                text = (PATCH_DIR / name).read_text(encoding="utf-8")
                self.assertTrue(text.startswith("From 0000000000000000000000000000000000000000 "))
                header = text.split("\n---\n", 1)[0].replace("\n ", " ")  # unfold RFC 2822 header lines
                self.assertIn(f"From: {make_patches.AUTHOR[0]} <{make_patches.AUTHOR[1]}>\n", header)
                for trailer in ("Description:", "Origin:", "Forwarded:", "Last-Update:"):
                    self.assertNotIn(f"\n{trailer} ", header)

    def test_the_rag_redirect_is_marked_as_a_separate_pr(self):
        lines = (PATCH_DIR / "series").read_text(encoding="utf-8").splitlines()
        rag = next(index for index, line in enumerate(lines) if "examples-rag" in line)
        self.assertIn("separate", lines[rag - 1])

    def test_the_fix_adds_at_most_40_lines_to_modular_qwen2(self):
        fix = (PATCH_DIR / series()[0]).read_text(encoding="utf-8")
        modular = fix.split(f"+++ b/{make_patches.modular_path('qwen2')}\n", 1)[1].split("\ndiff --git", 1)[0]
        added = [line for line in modular.splitlines() if line.startswith("+")]
        self.assertLessEqual(len(added), 40)

    def test_the_fix_changes_exactly_the_family(self):
        fix = (PATCH_DIR / series()[0]).read_text(encoding="utf-8")
        changed = {line[len("+++ b/") :] for line in fix.splitlines() if line.startswith("+++ b/")}
        generated = {p for p in changed if "/modeling_" in p}
        self.assertEqual(generated, {make_patches.modeling_path(model) for model in make_patches.FAMILY})
        # outside the family only modular files change, and only their imports
        for path in changed - generated:
            model = path.split("/")[3]
            self.assertTrue(model in make_patches.FAMILY or model in make_patches.KEEP_STOCK, path)

    def test_models_kept_stock_import_a_function_with_their_stock_text(self):
        tree = pristine_tree()

        def eager_text(model):
            text = (tree / make_patches.modeling_path(model)).read_text(encoding="utf-8")
            node = next(n for n in ast.parse(text).body if getattr(n, "name", None) == make_patches.EAGER)
            return ast.get_source_segment(text, node)

        for model, source in make_patches.KEEP_STOCK.items():
            with self.subTest(model):
                self.assertNotIn(source, make_patches.FAMILY)
                self.assertEqual(eager_text(source), eager_text(model))

    def test_the_pr_description_names_every_model_kept_stock(self):
        description = (PATCH_DIR / "PR.md").read_text(encoding="utf-8")
        for model in [*make_patches.FAMILY, *make_patches.KEEP_STOCK]:
            self.assertIn(model, description)

    def test_the_family_is_the_model_table_without_siglip(self):
        # SigLIP (LLaVA-OneVision's vision tower) stays an overlay-only entry: patches/PR.md says why
        from transformers_overlay.model_table import MODEL_TABLE

        self.assertEqual(set(make_patches.FAMILY), set(MODEL_TABLE) - {"siglip"})

    def test_upstream_function_text(self):
        overlay = make_patches.overlay_eager_text()
        upstream = make_patches.upstream_eager_text(overlay)
        self.assertIn("**kwargs: Unpack[TransformersKwargs],\n", upstream)
        self.assertNotIn("getattr(", upstream)
        self.assertEqual(
            upstream.replace("module.num_key_value_groups", make_patches.KV_GROUPS[0]).replace(
                make_patches.SIGNATURE_KWARGS[1], make_patches.SIGNATURE_KWARGS[0]
            ),
            overlay,
        )
        renamed = make_patches.converter_rename("# Qwen2's biases, qwen2 and QWEN2\n", "qwen2", "qwen2_moe")
        self.assertEqual(renamed, "# Qwen2Moe's biases, qwen2_moe and QWEN2_MOE\n")

    def test_patches_are_regenerated_byte_for_byte(self):
        pristine_tree()
        # fails when the overlay function, the tests, the RAG README or the generator changed without regenerating
        self.assertEqual(make_patches.stale_files(), [], "run python scripts/make_patches.py")

    def test_patches_cover_the_tests_and_the_rag_readme(self):
        text = "".join((PATCH_DIR / name).read_text(encoding="utf-8") for name in series())
        for path in [*make_patches.test_files(), make_patches.RAG_README]:
            self.assertIn(f"\n+++ b/{path}\n", text)
        self.assertNotIn("__init__.py\n", "".join(line for line in text.splitlines(True) if line.startswith("+++")))


class ApplyPatchesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        pristine_tree()
        cls.scratch = tempfile.TemporaryDirectory()
        cls.root = Path(cls.scratch.name)

    @classmethod
    def tearDownClass(cls):
        cls.scratch.cleanup()

    def assertRefused(self, tree: Path, reason: str, *options: str):
        before = tree_digest(tree)
        result = apply_patches(tree, *options)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn(reason, result.stderr)
        self.assertEqual(tree_digest(tree), before, "a refused tree was modified")

    def assertCarriesOverlayFunctions(self, tree: Path):
        function = make_patches.upstream_eager_text(make_patches.overlay_eager_text())
        for model in make_patches.FAMILY:
            eager = top_level_functions(tree / make_patches.modeling_path(model))[make_patches.EAGER]
            self.assertEqual(eager, make_patches.generated_eager_text(model, function), model)
        for model in ("qwen3", "ministral", "smollm3"):
            path = make_patches.modeling_path(model)
            self.assertEqual((tree / path).read_bytes(), (pristine_tree() / path).read_bytes(), path)

    def test_refuses_a_directory_that_is_not_a_transformers_tree(self):
        tree = self.root / "not-transformers"
        (tree / "src").mkdir(parents=True)
        (tree / "setup.py").write_text("print('hello')\n")
        self.assertRefused(tree, "is not a transformers source tree")

    def test_refuses_another_transformers_version(self):
        tree = self.root / "transformers-5.22.0"
        (tree / "src" / "transformers").mkdir(parents=True)
        (tree / "src" / "transformers" / "__init__.py").write_text('__version__ = "5.22.0"\n')
        (tree / "setup.py").write_text("")
        self.assertRefused(
            tree, f"is transformers 5.22.0; this patch series needs transformers {make_patches.TRANSFORMERS_VERSION}"
        )

    def test_refuses_a_tree_the_patches_do_not_fit(self):
        tree = plain_copy(self.root / "modified")
        modeling = tree / "src/transformers/models/qwen2/modeling_qwen2.py"
        text = modeling.read_text(encoding="utf-8")
        modeling.write_text(
            text.replace(
                "    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling\n",
                "    attn_weights = torch.matmul(query * scaling, key_states.transpose(2, 3))\n",
                1,
            )
        )
        self.assertNotEqual(modeling.read_text(encoding="utf-8"), text)
        self.assertRefused(tree, "neither apply")

    def test_refuses_a_partly_patched_tree(self):
        tree = plain_copy(self.root / "partly")
        subprocess.run(["git", "apply", str(PATCH_DIR / series()[-1])], cwd=tree, check=True)
        self.assertRefused(tree, "neither apply")
        self.assertRefused(tree, "neither apply", "--reverse")

    def test_apply_check_reverse_and_apply_again_on_an_unpacked_sdist(self):
        tree = plain_copy(self.root / "sdist")
        pristine = tree_digest(tree)
        check = apply_patches(tree, "--check")
        self.assertEqual((check.returncode, tree_digest(tree)), (0, pristine))
        self.assertIn("apply cleanly", check.stdout)

        result = apply_patches(tree)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"applied the {len(series())} patches", result.stdout)
        self.assertCarriesOverlayFunctions(tree)
        patched = tree_digest(tree)

        for options, message in ((("--check",), "already applied to"), ((), "nothing to do")):
            with self.subTest(options=options):
                again = apply_patches(tree, *options)
                self.assertEqual(again.returncode, 0, again.stderr)
                self.assertIn(message, again.stdout)
                self.assertEqual(tree_digest(tree), patched)

        reverse = apply_patches(tree, "--reverse")
        self.assertEqual(reverse.returncode, 0, reverse.stderr)
        self.assertEqual(tree_digest(tree), pristine)
        self.assertIn("not applied", apply_patches(tree, "--reverse").stdout)

        self.assertEqual(apply_patches(tree).returncode, 0)
        self.assertEqual(tree_digest(tree), patched)

    def test_commit_on_a_git_checkout(self):
        tree = git_checkout(self.root / "checkout")
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        result = apply_patches(tree, "--commit")
        self.assertEqual(result.returncode, 0, result.stderr)
        log = subprocess.run(
            ["git", "-C", str(tree), "log", "--format=%s", f"{head.strip()}..HEAD"], capture_output=True, text=True
        )
        self.assertEqual(len(log.stdout.splitlines()), len(series()))
        status = subprocess.run(["git", "-C", str(tree), "status", "--porcelain"], capture_output=True, text=True)
        self.assertEqual(status.stdout, "")
        self.assertIn("already applied", apply_patches(tree, "--check").stdout)
        self.assertCarriesOverlayFunctions(tree)

    def test_commit_refuses_a_plain_tree(self):
        tree = plain_copy(self.root / "plain-commit")
        self.assertRefused(tree, "--commit needs a git checkout", "--commit")


if __name__ == "__main__":
    unittest.main()
