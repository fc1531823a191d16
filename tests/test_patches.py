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
The patch series in `patches/`: it is what `transformers_overlay.upstream_series` generates from the overlay's source
(so the attention function in the patches is the overlay's), and `scripts/apply_patches.sh` applies, checks and
reverts it on a transformers tree all or nothing: the stored series on its release, the same change generated for
the tree on any other release or `.devN` checkout, refusing trees it does not fit without touching them.

The pristine trees are the sdists cached by `upstream_series.pristine_tree()` (downloaded with pip on first use).
"""

import ast
import functools
import hashlib
import os
import subprocess
import tempfile
import unittest
from pathlib import Path

from transformers_overlay import upstream_series
from transformers_overlay.releases import SERIES_RELEASE


REPO = Path(__file__).resolve().parents[1]
APPLY = REPO / "scripts" / "apply_patches.sh"
PATCH_DIR = REPO / "patches"
# Another release the series is generated for (the one before the stored series' release).
OTHER_RELEASE = "5.24.0"
MAIN_VERSION = "5.26.0.dev0"


@functools.cache
def _pristine_tree(version: str) -> Path | None:
    try:
        return upstream_series.pristine_tree(version)
    except (upstream_series.PatchError, subprocess.CalledProcessError, OSError):
        return None


def pristine_tree(version: str = SERIES_RELEASE) -> Path:
    """The cached transformers sdist tree; the test skips when it is absent and cannot be downloaded (offline)."""
    tree = _pristine_tree(version)
    if tree is None:
        raise unittest.SkipTest(
            f"transformers {version} sdist not cached in {upstream_series.cache_dir()} and not downloadable (offline)"
        )
    return tree


def series() -> list[str]:
    return [path.name for path in upstream_series.series_patches(PATCH_DIR)]


def tree_digest(root: Path) -> str:
    """Hash of every path, executable bit and content under `root`, git metadata included (HEAD, index, refs)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "objects" not in path.relative_to(root).parts[:2]:
            digest.update(f"{path.relative_to(root)}:{os.access(path, os.X_OK)}\n".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def plain_copy(destination: Path, version: str = SERIES_RELEASE) -> Path:
    """A pristine tree as an unpacked sdist: files only, no git repository."""
    destination.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(pristine_tree(version)), "archive", "HEAD"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive.stdout, check=True)
    return destination


def git(tree: Path, *args: str) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    command = ["git", "-C", str(tree), "-c", "user.name=test", "-c", "user.email=test@localhost", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout


def git_checkout(destination: Path, version: str = SERIES_RELEASE) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(pristine_tree(version)), str(destination)], check=True)
    return destination


def main_like_checkout(destination: Path) -> Path:
    """A checkout of "main": the stored series' release with its version set to the next `.dev0`, committed."""
    tree = git_checkout(destination)
    for path, old in (("src/transformers/__init__.py", "__version__ = "), ("setup.py", "version=")):
        text = (tree / path).read_text(encoding="utf-8")
        (tree / path).write_text(text.replace(f'{old}"{SERIES_RELEASE}"', f'{old}"{MAIN_VERSION}"', 1))
    git(tree, "commit", "--quiet", "-am", f"Bump to {MAIN_VERSION}")
    return tree


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


def changed_paths(patch: Path) -> set[str]:
    return {
        line[len("+++ b/") :] for line in patch.read_text(encoding="utf-8").splitlines() if line.startswith("+++ b/")
    }


class PatchSeriesTest(unittest.TestCase):
    def test_series_lists_every_patch_in_order(self):
        names = series()
        self.assertEqual(names, sorted(path.name for path in PATCH_DIR.glob("*.patch")))
        self.assertEqual([name[:4] for name in names], [f"{i:04d}" for i in range(1, len(names) + 1)])
        self.assertIn(f"# transformers-version: {SERIES_RELEASE}", (PATCH_DIR / "series").read_text())

    def test_every_patch_reads_as_an_upstream_commit(self):
        for name in series():
            with self.subTest(name):
                text = (PATCH_DIR / name).read_text(encoding="utf-8")
                self.assertTrue(text.startswith("From 0000000000000000000000000000000000000000 "))
                header = text.split("\n---\n", 1)[0].replace("\n ", " ")  # unfold RFC 2822 header lines
                self.assertIn(f"From: {upstream_series.AUTHOR[0]} <{upstream_series.AUTHOR[1]}>\n", header)
                for trailer in ("Description:", "Origin:", "Forwarded:", "Last-Update:"):
                    self.assertNotIn(f"\n{trailer} ", header)

    def test_the_rag_redirect_is_marked_as_a_separate_pr(self):
        lines = (PATCH_DIR / "series").read_text(encoding="utf-8").splitlines()
        rag = next(index for index, line in enumerate(lines) if "examples-rag" in line)
        self.assertIn("separate", lines[rag - 1])

    def test_the_fix_adds_at_most_40_lines_to_modular_qwen2(self):
        fix = (PATCH_DIR / series()[0]).read_text(encoding="utf-8")
        modular = fix.split(f"+++ b/{upstream_series.modular_path('qwen2')}\n", 1)[1].split("\ndiff --git", 1)[0]
        added = [line for line in modular.splitlines() if line.startswith("+")]
        self.assertLessEqual(len(added), 40)

    def test_the_fix_changes_exactly_the_family_and_the_models_kept_stock(self):
        kept = upstream_series.keep_stock(pristine_tree())
        changed = changed_paths(PATCH_DIR / series()[0])
        generated = {p for p in changed if "/modeling_" in p}
        self.assertEqual(generated, {upstream_series.modeling_path(model) for model in upstream_series.FAMILY})
        # outside the family only modular files change
        self.assertEqual(
            {p.split("/")[3] for p in changed - generated} - set(upstream_series.FAMILY),
            set(kept),
            "models kept stock",
        )

    def test_models_kept_stock_keep_their_stock_text(self):
        tree = pristine_tree()
        parents = upstream_series.modular_parents(tree)
        kept = upstream_series.keep_stock(tree)
        # the six of issue 21 (built on Qwen2-VL / Qwen2.5-Omni classes) and the four built on Qwen2's decoder
        self.assertTrue({"qwen3", "ministral", "cwm", "qwen3_omni_moe", "video_llama_3"} <= set(kept), sorted(kept))
        with tempfile.TemporaryDirectory() as scratch:
            patched = plain_copy(Path(scratch) / "patched")
            subprocess.run(["git", "apply", str(PATCH_DIR / series()[0])], cwd=patched, check=True)
            for model, keep in kept.items():
                with self.subTest(model):
                    stock = upstream_series.stock_eager(tree, model)
                    modular = (patched / upstream_series.modular_path(model)).read_text(encoding="utf-8")
                    if keep.source is None:  # defined in its own modular file, with the text it has today
                        self.assertEqual(upstream_series.module_function(modular), stock)
                        continue
                    # imported from a model outside the family with that text, that does not build on it
                    self.assertNotIn(keep.source, upstream_series.FAMILY)
                    self.assertEqual(upstream_series.stock_eager(tree, keep.source), stock)
                    self.assertNotIn(model, upstream_series._ancestors(keep.source, parents))
                    self.assertIn(f"from ..{keep.source}.modeling_{keep.source} import", modular)
        # never Zamba's (issue 21): Llama's for the models on Qwen2's decoder, which Qwen2 itself imported before
        self.assertNotIn("zamba", {keep.source for keep in kept.values()})
        self.assertEqual(kept["qwen3"].source, "llama")

    def test_the_pr_description_names_every_model_kept_stock(self):
        description = (PATCH_DIR / "PR.md").read_text(encoding="utf-8")
        for model in [*upstream_series.FAMILY, *upstream_series.keep_stock(pristine_tree())]:
            self.assertIn(f"{model}", description)

    def test_the_family_is_the_model_table_without_siglip(self):
        # SigLIP (LLaVA-OneVision's vision tower) stays an overlay-only entry: patches/PR.md says why
        from transformers_overlay.model_table import MODEL_TABLE

        self.assertEqual(set(upstream_series.FAMILY), set(MODEL_TABLE) - {"siglip"})

    def test_upstream_function_text(self):
        overlay = upstream_series.overlay_eager_text()
        upstream = upstream_series.upstream_eager_text(overlay)
        self.assertIn("**kwargs: Unpack[TransformersKwargs],\n", upstream)
        self.assertNotIn("getattr(", upstream)
        self.assertEqual(
            upstream.replace(upstream_series.SIGNATURE_KWARGS[1], upstream_series.SIGNATURE_KWARGS[0]),
            overlay,
        )
        renamed = upstream_series.converter_rename("# Qwen2's biases, qwen2 and QWEN2\n", "qwen2", "qwen2_moe")
        self.assertEqual(renamed, "# Qwen2Moe's biases, qwen2_moe and QWEN2_MOE\n")

    def test_patches_are_regenerated_byte_for_byte(self):
        pristine_tree()
        # fails when the overlay function, the tests, the RAG README or the generator changed without regenerating
        self.assertEqual(upstream_series.stale_files(), [], "run python scripts/make_patches.py")

    def test_patches_cover_the_tests_and_the_rag_readme(self):
        text = "".join((PATCH_DIR / name).read_text(encoding="utf-8") for name in series())
        for path in [*upstream_series.test_files(), upstream_series.RAG_README]:
            self.assertIn(f"\n+++ b/{path}\n", text)
        self.assertNotIn("__init__.py\n", "".join(line for line in text.splitlines(True) if line.startswith("+++")))


class TreeTestCase(unittest.TestCase):
    release = SERIES_RELEASE

    @classmethod
    def setUpClass(cls):
        pristine_tree(cls.release)
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

    def assertCarriesOverlayFunctions(self, tree: Path, pristine: Path):
        """The family's modeling files carry the overlay's function; every other modeling file is unchanged."""
        function = upstream_series.upstream_eager_text(upstream_series.overlay_eager_text())
        for model in upstream_series.FAMILY:
            eager = top_level_functions(tree / upstream_series.modeling_path(model))[upstream_series.EAGER]
            self.assertEqual(eager, upstream_series.generated_eager_text(model, function), model)
        changed = {
            str(path.relative_to(tree))
            for path in (tree / upstream_series.MODELS).glob("*/modeling_*.py")
            if path.read_bytes() != (pristine / path.relative_to(tree)).read_bytes()
        }
        self.assertEqual(changed, {upstream_series.modeling_path(model) for model in upstream_series.FAMILY})


class ApplyPatchesTest(TreeTestCase):
    """The stored series on a tree of its release."""

    def test_refuses_a_directory_that_is_not_a_transformers_tree(self):
        tree = self.root / "not-transformers"
        (tree / "src").mkdir(parents=True)
        (tree / "setup.py").write_text("print('hello')\n")
        self.assertRefused(tree, "is not a transformers source tree")

    def test_refuses_an_unsupported_transformers_version(self):
        tree = self.root / "transformers-4.57.6"
        (tree / "src" / "transformers").mkdir(parents=True)
        (tree / "src" / "transformers" / "__init__.py").write_text('__version__ = "4.57.6"\n')
        (tree / "setup.py").write_text("")
        self.assertRefused(tree, "transformers 4.57.6 is not supported")

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
        self.assertCarriesOverlayFunctions(tree, pristine_tree())
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
        self.assertCarriesOverlayFunctions(tree, pristine_tree())

    def test_commit_refuses_a_plain_tree(self):
        tree = plain_copy(self.root / "plain-commit")
        self.assertRefused(tree, "--commit needs a git checkout", "--commit")

    def test_refuses_a_checkout_with_uncommitted_changes(self):
        tree = git_checkout(self.root / "dirty")
        setup = tree / "setup.py"
        setup.write_text(setup.read_text(encoding="utf-8") + "# local change\n")
        self.assertRefused(tree, "has uncommitted changes (setup.py)")
        self.assertRefused(tree, "has uncommitted changes (setup.py)", "--commit")


class GeneratedSeriesTest(TreeTestCase):
    """The series generated for trees other than the stored series' release: another release, a main-like checkout."""

    release = OTHER_RELEASE

    def test_another_release_as_an_unpacked_sdist(self):
        tree = plain_copy(self.root / "other", OTHER_RELEASE)
        pristine = tree_digest(tree)
        check = apply_patches(tree, "--check")
        self.assertEqual((check.returncode, tree_digest(tree)), (0, pristine), check.stderr)
        self.assertIn(f"generated the 3 patches for transformers {OTHER_RELEASE}", check.stdout)
        self.assertIn("apply cleanly", check.stdout)

        result = apply_patches(tree)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("applied the 3 patches", result.stdout)
        self.assertCarriesOverlayFunctions(tree, pristine_tree(OTHER_RELEASE))
        patched = tree_digest(tree)
        for test in upstream_series.test_files():
            self.assertEqual((tree / test).read_bytes(), (REPO / test).read_bytes(), test)

        # applied: its pristine text comes from the release's sdist
        again = apply_patches(tree)
        self.assertEqual((again.returncode, tree_digest(tree)), (0, patched), again.stderr)
        self.assertIn("nothing to do", again.stdout)
        reverse = apply_patches(tree, "--reverse")
        self.assertEqual(reverse.returncode, 0, reverse.stderr)
        self.assertEqual(tree_digest(tree), pristine)

    def test_a_main_like_checkout(self):
        tree = main_like_checkout(self.root / "main")
        base = git(tree, "rev-parse", "HEAD").strip()
        # the same text as the stored series' release, so the same patches
        with tempfile.TemporaryDirectory() as scratch:
            names = upstream_series.build_series(tree, Path(scratch))
            self.assertEqual(names, series())
            for name in names:
                self.assertEqual((Path(scratch) / name).read_bytes(), (PATCH_DIR / name).read_bytes(), name)

        result = apply_patches(tree)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"generated the 3 patches for transformers {MAIN_VERSION}", result.stdout)
        self.assertCarriesOverlayFunctions(tree, pristine_tree(SERIES_RELEASE))
        self.assertIn("already applied", apply_patches(tree, "--check").stdout)
        self.assertEqual(apply_patches(tree, "--reverse").returncode, 0)
        self.assertEqual(git(tree, "status", "--porcelain"), "")

        commit = apply_patches(tree, "--commit")
        self.assertEqual(commit.returncode, 0, commit.stderr)
        self.assertEqual(
            git(tree, "log", "--format=%s", f"{base}..HEAD").splitlines()[::-1], list(upstream_series.SUBJECTS)
        )
        self.assertEqual(git(tree, "status", "--porcelain"), "")
        # committed: the pristine text is the parent of the series' commits
        self.assertIn("already applied", apply_patches(tree, "--check").stdout)
        self.assertEqual(apply_patches(tree, "--reverse").returncode, 0)
        self.assertEqual(git(tree, "diff", base), "")

    def test_refuses_a_dirty_main_like_checkout(self):
        tree = main_like_checkout(self.root / "main-dirty")
        modeling = tree / upstream_series.modeling_path("qwen2")
        modeling.write_text(modeling.read_text(encoding="utf-8") + "# local change\n")
        self.assertRefused(tree, "has uncommitted changes (src/transformers/models/qwen2/modeling_qwen2.py)")

    def test_refuses_a_tree_whose_family_functions_it_does_not_recognise(self):
        tree = plain_copy(self.root / "unrecognised", OTHER_RELEASE)
        modular = tree / upstream_series.modular_path("qwen2")
        text = modular.read_text(encoding="utf-8")
        modular.write_text(text.replace("    eager_attention_forward,\n", "", 1))
        self.assertNotEqual(modular.read_text(encoding="utf-8"), text)
        self.assertRefused(tree, "does not import eager_attention_forward from Llama's modeling file")

        modeling = tree / upstream_series.modeling_path("qwen2")
        text = modeling.read_text(encoding="utf-8")
        modeling.write_text(text.replace("def eager_attention_forward(", "def _eager_attention_forward(", 1))
        self.assertRefused(tree, "has no module-level eager_attention_forward")

    def test_refuses_to_reverse_a_patched_plain_dev_tree(self):
        tree = plain_copy(self.root / "plain-dev")
        init = tree / "src" / "transformers" / "__init__.py"
        init.write_text(init.read_text(encoding="utf-8").replace(SERIES_RELEASE, MAIN_VERSION, 1))
        self.assertEqual(apply_patches(tree).returncode, 0)
        self.assertRefused(tree, "a .dev tree has no release sdist to take its pristine text from", "--reverse")


if __name__ == "__main__":
    unittest.main()
