# Copyright 2025 The HuggingFace Team. All rights reserved.
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
How the overlay becomes active: the `.pth` import hook in fresh interpreters (with a real, a broken, a mismatched and
an absent transformers), the opt-out, and the explicit `apply()` / `revert()` / `disabled()` / `status()` API.

The fresh-interpreter tests need the package installed (`pip install -e .` or `pip install .`), which is what puts
`transformers_overlay.pth` into site-packages.
"""

import contextlib
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import types
import unittest
import warnings
from importlib import metadata
from pathlib import Path
from unittest import mock

from parameterized import parameterized

from transformers.testing_utils import require_torch
from transformers_overlay import _activation, patching
from transformers_overlay._activation import OPT_OUT_ENV
from transformers_overlay.known_stock_functions import KNOWN_STOCK_FUNCTIONS
from transformers_overlay.model_table import MODEL_TABLE, patchable_model_types


# model type -> the transformers module the overlay patches, as the model table says
PATCHED_MODULES = {model_type: entry.module for model_type, entry in MODEL_TABLE.items()}
# Where the function the overlay installs lives: its `__module__`.
STABLE_MODULE = "transformers_overlay.integrations.overlay_eager_attention"
PTH_FILE = Path(__file__).parents[2] / "src" / "transformers_overlay.pth"
OVERLAY_WARNING = "Warning: transformers-overlay"


# The model types whose module in the installed transformers has the module-level function the overlay replaces, as
# the model table says (tests/overlay/test_model_family.py checks the table against the installed modules).
PATCHABLE_MODEL_TYPES = patchable_model_types(metadata.version("transformers"))


def not_patchable_state(model_type: str) -> str:
    """
    The pattern of what `status()` says, imported or not, of a model type that the installed transformers has no
    module-level function for (or no model at all), before the model table's first patchable release.
    """
    first = MODEL_TABLE[model_type].first_patchable_release
    return (
        rf"^stock \(transformers {metadata.version('transformers')} has no module-level `eager_attention_forward` for "
        rf"{model_type} \(transformers has one since {first}\), so .* stays stock: use attn_implementation='sdpa'"
    )


# Prints, as JSON, what a fresh interpreter holds right after start and after importing the two patched modules.
PROBE = """
import json, sys
started = {name: name in sys.modules for name in ("torch", "transformers", "transformers_overlay._activation")}
started["transformers_overlay.patching"] = "transformers_overlay.patching" in sys.modules
hook = [type(finder).__name__ for finder in sys.meta_path if type(finder).__name__ == "PostImportHookFinder"]
imported = {}
for model_type, module_name in json.loads(sys.argv[1]).items():
    try:
        module = __import__(module_name, fromlist=["eager_attention_forward"])
        function = getattr(module, "eager_attention_forward", None)  # absent before its first patchable release
        imported[model_type] = None if function is None else function.__module__
    except ModuleNotFoundError as error:  # a model this transformers does not have
        imported[model_type] = "absent" if module_name.startswith(error.name or "?") else repr(error)
    except Exception as error:
        imported[model_type] = f"{type(error).__name__}: {error}"
import transformers_overlay
print(json.dumps({"started": started, "hook": hook, "imported": imported, "status": transformers_overlay.status()}))
"""


def run_python(code, env=None, pythonpath=None, args=()):
    """Runs `code` in a fresh interpreter (site-packages `.pth` files processed), without the opt-out unless given."""
    environment = {name: value for name, value in os.environ.items() if name != OPT_OUT_ENV}
    environment.update(env or {})
    if pythonpath is not None:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), environment.get("PYTHONPATH")]))
    command = [sys.executable, "-c", code, *args]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)


def probe(env=None, pythonpath=None, modules=PATCHED_MODULES):
    result = run_python(PROBE, env=env, pythonpath=pythonpath, args=[json.dumps(dict(modules))])
    if result.returncode != 0:
        raise AssertionError(f"the probe failed:\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def count_overlay_warnings(stderr: str) -> int:
    return sum(OVERLAY_WARNING in line for line in stderr.splitlines())


def write_fake_transformers(root: Path, version: str, modeling_sources: dict) -> None:
    """
    A `transformers` package with only `models/<type>/modeling_<type>.py` files, shadowing the real one, and the
    `integrations.sdpa_attention.repeat_kv` that the stable function imports.
    """
    package = root / "transformers"
    (package / "models").mkdir(parents=True)
    (package / "integrations").mkdir()
    (package / "__init__.py").write_text(f"__version__ = {version!r}\n")
    (package / "integrations" / "__init__.py").write_text("")
    (package / "integrations" / "sdpa_attention.py").write_text("def repeat_kv(hidden_states, n_rep):\n    pass\n")
    (package / "models" / "__init__.py").write_text("")
    for model_type, source in modeling_sources.items():
        (package / "models" / model_type).mkdir()
        (package / "models" / model_type / "__init__.py").write_text("")
        (package / "models" / model_type / f"modeling_{model_type}.py").write_text(textwrap.dedent(source))


# A stock text the overlay recognises (SigLIP's), with annotations left unevaluated: the fake package has no torch.
STOCK_FUNCTION = "from __future__ import annotations\n\n" + next(
    entry["source"] for entry in KNOWN_STOCK_FUNCTIONS if "siglip" in entry["seen_in"]
)
CHANGED_TEXT = """
def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    return "changed"
"""
OTHER_SIGNATURE = """
def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, sliding_window=None, **kwargs):
    return "stock"
"""
RAISING_MODULE = """
raise RuntimeError("this modeling module is broken")
"""
# The modules of the fake transformers the tests write: two model types of the table.
FAKE_MODULES = {model_type: PATCHED_MODULES[model_type] for model_type in ("qwen2", "siglip")}


class ImportHookTest(unittest.TestCase):
    """A fresh interpreter after `pip install`: active without any import of the package, lazily, never raising."""

    def test_pth_file_is_installed_and_recorded(self):
        # RECORD lists every installed file, so `pip uninstall` removes the hook with the package.
        distribution = metadata.distribution("transformers-overlay")
        recorded = [path for path in distribution.files if path.name == "transformers_overlay.pth"]
        self.assertEqual(len(recorded), 1, "transformers_overlay.pth is not in the installed distribution's RECORD")
        installed = Path(distribution.locate_file(recorded[0]))
        self.assertEqual(installed.read_text(), PTH_FILE.read_text())

    @require_torch
    def test_fresh_interpreter_runs_the_stable_function(self):
        report, stderr = probe()

        self.assertEqual(report["hook"], ["PostImportHookFinder"])
        for model_type in PATCHED_MODULES:
            if model_type in PATCHABLE_MODEL_TYPES:
                self.assertEqual(report["imported"][model_type], STABLE_MODULE)
            else:
                self.assertIn(report["imported"][model_type], (None, "absent"))
        self.assertEqual(set(report["status"]["models"]), set(MODEL_TABLE))
        present = [model_type for model_type in PATCHED_MODULES if report["imported"][model_type] != "absent"]
        for model_type, entry in report["status"]["models"].items():
            if model_type in PATCHABLE_MODEL_TYPES:
                self.assertEqual(entry["state"], "patched")
            else:
                self.assertRegex(entry["state"], not_patchable_state(model_type))
        # One warning per imported model type the overlay cannot patch in this transformers, none otherwise.
        unpatchable = [model_type for model_type in present if model_type not in PATCHABLE_MODEL_TYPES]
        self.assertEqual(count_overlay_warnings(stderr), len(unpatchable), stderr)

    def test_interpreter_start_imports_neither_torch_nor_transformers(self):
        report, _ = probe(modules={})

        self.assertEqual(report["hook"], ["PostImportHookFinder"])
        self.assertEqual(
            report["started"],
            {
                "torch": False,
                "transformers": False,
                "transformers_overlay._activation": True,
                "transformers_overlay.patching": False,
            },
        )
        self.assertEqual(report["status"]["activation"], patching.ACTIVE)
        for model_type, entry in report["status"]["models"].items():
            if model_type in PATCHABLE_MODEL_TYPES:
                self.assertEqual(entry["state"], "not imported (will be patched on import)")
            else:  # known from the model table before any import
                self.assertRegex(entry["state"], not_patchable_state(model_type))

    def test_opt_out_skips_the_hook_import(self):
        report, stderr = probe(env={OPT_OUT_ENV: "1"}, modules={})

        self.assertEqual(report["hook"], [])
        self.assertFalse(report["started"]["transformers_overlay._activation"])
        self.assertEqual(report["status"]["activation"], f"installed, disabled by {OPT_OUT_ENV}")
        for model_type, entry in report["status"]["models"].items():
            if model_type in PATCHABLE_MODEL_TYPES:
                self.assertEqual(
                    entry["state"],
                    f"not imported (will stay stock: overlay installed, disabled by {OPT_OUT_ENV}; apply() patches it)",
                )
            else:
                self.assertRegex(entry["state"], not_patchable_state(model_type))
        self.assertEqual(stderr, "")

    @parameterized.expand([(value,) for value in ("1", "true", "YES", " no ", "0", "false", "No", "", "off")])
    def test_pth_file_and_opt_out_is_set_agree(self, value):
        # The `.pth` line repeats the opt-out rule so that an opted-out interpreter does not import the hook module.
        code = (
            f"exec(open({str(PTH_FILE)!r}).read())\n"
            "print(any(type(finder).__name__ == 'PostImportHookFinder' for finder in sys.meta_path))"
        )
        package_root = Path(_activation.__file__).parents[1]
        environment = {**os.environ, OPT_OUT_ENV: value, "PYTHONPATH": str(package_root)}
        # -S: no site-packages `.pth` files, so the hook can only come from the committed file run here.
        result = subprocess.run(
            [sys.executable, "-S", "-c", code], env=environment, capture_output=True, text=True, timeout=120
        )

        self.assertEqual((result.returncode, result.stderr), (0, ""))
        with mock.patch.dict(os.environ, {OPT_OUT_ENV: value}):
            self.assertEqual(result.stdout.strip(), str(not _activation.opt_out_is_set()))

    @require_torch
    def test_opt_out_leaves_stock_functions(self):
        report, stderr = probe(env={OPT_OUT_ENV: "1"})

        self.assertEqual(report["hook"], [])
        for model_type, module_name in PATCHED_MODULES.items():
            if model_type in PATCHABLE_MODEL_TYPES:
                self.assertEqual(report["imported"][model_type], module_name)
            else:
                self.assertIn(report["imported"][model_type], (None, "absent"))
        self.assertTrue(report["status"]["opt_out"])
        self.assertFalse(report["status"]["import_hook"])
        self.assertEqual(report["status"]["activation"], f"installed, disabled by {OPT_OUT_ENV}")
        for model_type, entry in report["status"]["models"].items():
            if model_type in PATCHABLE_MODEL_TYPES:
                self.assertEqual(entry["state"], "stock")
            else:  # imported or absent from this transformers, it says why the overlay could not patch it
                self.assertRegex(entry["state"], not_patchable_state(model_type))
        self.assertEqual(count_overlay_warnings(stderr), 0)

    @parameterized.expand([("1", True), ("true", True), ("YES", True), ("0", False), ("false", False), ("", False)])
    def test_opt_out_values(self, value, expected):
        with mock.patch.dict(os.environ, {OPT_OUT_ENV: value}):
            self.assertIs(_activation.opt_out_is_set(), expected)

    def test_absent_transformers_does_not_break_start(self):
        # A `transformers` that cannot be imported, as when it is not installed.
        with tempfile.TemporaryDirectory() as root:
            package = Path(root) / "transformers"
            package.mkdir()
            (package / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'transformers'\")\n")
            result = run_python(
                "import transformers_overlay._activation\n"
                "try:\n    import transformers.models.qwen2.modeling_qwen2\n"
                "except ModuleNotFoundError as error:\n    print('missing:', error)\n",
                pythonpath=root,
            )

        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("missing: No module named 'transformers'", result.stdout)
        self.assertEqual(count_overlay_warnings(result.stderr), 0)

    def test_broken_modeling_module_raises_its_own_error(self):
        with tempfile.TemporaryDirectory() as root:
            write_fake_transformers(Path(root), "5.23.0", {"qwen2": RAISING_MODULE})
            started = run_python("print('started')", pythonpath=root)
            imported = run_python("import transformers.models.qwen2.modeling_qwen2", pythonpath=root)

        self.assertEqual((started.returncode, started.stdout, started.stderr), (0, "started\n", ""))
        self.assertNotEqual(imported.returncode, 0)
        self.assertIn("RuntimeError: this modeling module is broken", imported.stderr)
        self.assertEqual(count_overlay_warnings(imported.stderr), 0)

    def test_broken_overlay_package_does_not_break_start(self):
        # The `.pth` line swallows any error of the package it activates.
        with tempfile.TemporaryDirectory() as root:
            (Path(root) / "transformers_overlay").mkdir()
            (Path(root) / "transformers_overlay" / "__init__.py").write_text("raise RuntimeError('broken overlay')\n")
            result = run_python("print('started')", pythonpath=root)

        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "started\n", ""))

    def test_signature_mismatch_is_left_alone_with_one_warning(self):
        with tempfile.TemporaryDirectory() as root:
            write_fake_transformers(Path(root), "5.23.0", {"qwen2": OTHER_SIGNATURE, "siglip": STOCK_FUNCTION})
            report, stderr = probe(pythonpath=root, modules=FAKE_MODULES)

        self.assertEqual(report["imported"]["qwen2"], PATCHED_MODULES["qwen2"])
        qwen2_state = report["status"]["models"]["qwen2"]["state"]
        self.assertTrue(qwen2_state.startswith("stock ("), qwen2_state)
        self.assertIn("sliding_window", qwen2_state)
        self.assertIn("expected signature", qwen2_state)
        self.assertEqual(count_overlay_warnings(stderr), 1, stderr)
        # The fake SigLIP function is a stock text, so the overlay replaces it.
        self.assertEqual(report["imported"]["siglip"], STABLE_MODULE)

    def test_changed_function_text_is_left_alone_with_one_warning(self):
        with tempfile.TemporaryDirectory() as root:
            write_fake_transformers(Path(root), "5.23.0", {"qwen2": CHANGED_TEXT, "siglip": STOCK_FUNCTION})
            report, stderr = probe(pythonpath=root, modules=FAKE_MODULES)

        self.assertEqual(report["imported"]["qwen2"], PATCHED_MODULES["qwen2"])
        qwen2_state = report["status"]["models"]["qwen2"]["state"]
        self.assertTrue(qwen2_state.startswith("stock (its `eager_attention_forward`"), qwen2_state)
        self.assertIn("is not a stock text the overlay recognises", qwen2_state)
        self.assertEqual(count_overlay_warnings(stderr), 1, stderr)
        self.assertIn(PATCHED_MODULES["qwen2"], stderr)
        self.assertIn(f"set {patching.FORCE_ENV}=1 or call transformers_overlay.apply(force=True)", stderr)
        self.assertEqual(report["imported"]["siglip"], STABLE_MODULE)
        self.assertEqual(report["status"]["models"]["siglip"]["state"], "patched")

    def test_force_variable_replaces_a_changed_function(self):
        with tempfile.TemporaryDirectory() as root:
            write_fake_transformers(Path(root), "5.23.0", {"qwen2": CHANGED_TEXT, "siglip": STOCK_FUNCTION})
            report, stderr = probe(env={patching.FORCE_ENV: "1"}, pythonpath=root, modules=FAKE_MODULES)

        self.assertEqual(report["imported"], {"qwen2": STABLE_MODULE, "siglip": STABLE_MODULE})
        self.assertEqual(
            report["status"]["models"]["qwen2"]["state"],
            f"patched (forced by {patching.FORCE_ENV}: transformers' function text is not one the overlay recognises)",
        )
        self.assertEqual(report["status"]["models"]["siglip"]["state"], "patched")
        self.assertEqual(count_overlay_warnings(stderr), 0, stderr)

    def test_untested_release_with_stock_functions_is_patched(self):
        with tempfile.TemporaryDirectory() as root:
            write_fake_transformers(Path(root), "5.99.0", {"qwen2": STOCK_FUNCTION, "siglip": STOCK_FUNCTION})
            report, stderr = probe(pythonpath=root, modules=FAKE_MODULES)

        self.assertEqual(report["imported"], {"qwen2": STABLE_MODULE, "siglip": STABLE_MODULE})
        self.assertTrue(report["status"]["transformers_untested"])
        for model_type in FAKE_MODULES:
            self.assertEqual(
                report["status"]["models"][model_type]["state"],
                "patched (untested release, stock function recognised)",
            )
        self.assertEqual(count_overlay_warnings(stderr), 0, stderr)

    def test_unsupported_transformers_is_left_alone_with_one_warning(self):
        with tempfile.TemporaryDirectory() as root:
            write_fake_transformers(Path(root), "4.30.0", {"qwen2": STOCK_FUNCTION, "siglip": STOCK_FUNCTION})
            report, stderr = probe(pythonpath=root, modules=FAKE_MODULES)

        self.assertEqual(report["imported"], FAKE_MODULES)
        for entry in report["status"]["models"].values():
            self.assertIn("outside the supported range", entry["state"])
        self.assertEqual(count_overlay_warnings(stderr), 1, stderr)

    @require_torch
    def test_disabled_block_leaves_modules_imported_inside_it_patched_afterwards(self):
        code = (
            "import sys, transformers_overlay\n"
            "with transformers_overlay.disabled():\n"
            "    import transformers.models.qwen2.modeling_qwen2 as module\n"
            "    inside = module.eager_attention_forward.__module__\n"
            "print(inside, module.eager_attention_forward.__module__)\n"
        )
        result = run_python(code)

        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.split(), [PATCHED_MODULES["qwen2"], STABLE_MODULE])


class PostImportHookTest(unittest.TestCase):
    """The generic mechanism under the import hook: hooks run once a module has executed, whatever they do."""

    def setUp(self):
        self.root = tempfile.TemporaryDirectory()
        self.addCleanup(self.root.cleanup)
        self.name = f"overlay_post_import_probe_{self.id().rsplit('.', 1)[-1]}"
        (Path(self.root.name) / f"{self.name}.py").write_text("VALUE = 1\n")
        for patcher in (
            mock.patch.object(sys, "path", [self.root.name, *sys.path]),
            mock.patch.object(sys, "meta_path", list(sys.meta_path)),
            mock.patch.dict(sys.modules),
            mock.patch.object(_activation, "_post_import_hooks", {}),
            mock.patch.object(_activation, "_warned", set()),
        ):
            patcher.start()
            self.addCleanup(patcher.stop)
        _activation.install_post_import_finder()

    def test_hook_runs_after_the_module_executed(self):
        seen = []
        _activation.register_post_import_hook(self.name, lambda module: seen.append(module.VALUE))
        self.assertEqual(seen, [])

        module = importlib.import_module(self.name)

        self.assertEqual(seen, [1])
        self.assertIs(sys.modules[self.name], module)

    def test_hook_named_by_a_string_is_imported_when_the_module_is(self):
        hooks = types.ModuleType(f"{self.name}_hooks")
        hooks.mark = lambda module: setattr(module, "MARKED", True)
        sys.modules[hooks.__name__] = hooks
        _activation.register_post_import_hook(self.name, f"{hooks.__name__}:mark")
        _activation.register_post_import_hook(self.name, f"{hooks.__name__}:mark")  # registered once

        module = importlib.import_module(self.name)

        self.assertTrue(module.MARKED)
        self.assertEqual(len(_activation._post_import_hooks[self.name]), 1)

    def test_module_imported_before_registration_is_hooked_at_once(self):
        module = importlib.import_module(self.name)
        seen = []
        _activation.register_post_import_hook(self.name, seen.append)
        self.assertEqual(seen, [module])

    def test_failing_hook_warns_once_and_the_import_goes_on(self):
        def broken(module):
            raise RuntimeError("broken hook")

        _activation.register_post_import_hook(self.name, broken)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(self.name)

        self.assertEqual(module.VALUE, 1)
        self.assertEqual(len(caught), 1)
        self.assertIn("broken hook", str(caught[0].message))

    def test_other_modules_are_not_wrapped(self):
        finder = next(f for f in sys.meta_path if isinstance(f, _activation.PostImportHookFinder))
        self.assertIsNone(finder.find_spec(self.name))


@require_torch
class PatchingApiTest(unittest.TestCase):
    """`apply()`, `revert()`, `disabled()` and `status()` in this process; each test restores the state it found."""

    def setUp(self):
        self.modules = {}  # the model table's modules this transformers has
        for model_type, name in PATCHED_MODULES.items():
            with contextlib.suppress(ModuleNotFoundError):
                self.modules[model_type] = importlib.import_module(name)
        self.state = (patching._enabled, dict(patching._originals), dict(patching._skipped))
        self.functions = self.current_functions()
        with patching.disabled():
            self.stock = self.current_functions()
        from transformers_overlay.integrations.overlay_eager_attention import overlay_eager_attention_forward

        self.stable = overlay_eager_attention_forward

    def tearDown(self):
        for model_type, function in self.functions.items():
            if function is not None:  # a module without the function is left without it
                setattr(self.modules[model_type], patching.PATCHED_ATTRIBUTE, function)
        enabled, originals, skipped = self.state
        patching._enabled = enabled
        patching._originals.clear()
        patching._originals.update(originals)
        patching._skipped.clear()
        patching._skipped.update(skipped)

    def current_functions(self):
        """Each model type's module-level function; None where this transformers has none."""
        return {
            model_type: getattr(module, patching.PATCHED_ATTRIBUTE, None)
            for model_type, module in self.modules.items()
        }

    def patched_functions(self):
        """What `apply()` leaves: the stable function wherever transformers has a module-level one to replace."""
        return {
            model_type: self.stable if model_type in PATCHABLE_MODEL_TYPES else self.stock[model_type]
            for model_type in self.modules
        }

    def assert_state(self, status, model_type, state):
        """`state` for a patchable model type; one without the module-level function is stock, saying why."""
        found = status["models"][model_type]["state"]
        if model_type in PATCHABLE_MODEL_TYPES:
            self.assertEqual(found, state)
        else:
            self.assertRegex(found, not_patchable_state(model_type))

    def assert_states(self, status, state):
        for model_type in PATCHED_MODULES:
            self.assert_state(status, model_type, state)

    def test_apply_then_revert_restores_the_identical_objects(self):
        patching.revert()
        stock = self.current_functions()

        status = patching.apply()
        self.assertEqual(self.current_functions(), self.patched_functions())
        self.assertIs(self.modules["qwen2"].eager_attention_forward, self.stable)
        self.assert_states(status, "patched")

        status = patching.revert()
        for model_type, function in self.current_functions().items():
            self.assertIs(function, stock[model_type])
            self.assertIs(function, self.stock[model_type])
        self.assert_states(status, "stock")
        self.assertFalse(status["enabled"])

    def test_apply_twice_keeps_the_original(self):
        patching.revert()
        patching.apply()
        patching.apply()
        patching.revert()
        for model_type, function in self.current_functions().items():
            self.assertIs(function, self.stock[model_type])

    def test_revert_one_model_type(self):
        patching.apply()
        status = patching.revert(["qwen2"])

        self.assertIs(self.modules["qwen2"].eager_attention_forward, self.stock["qwen2"])
        self.assertIs(self.current_functions()["siglip"], self.patched_functions()["siglip"])
        self.assertEqual(status["models"]["qwen2"]["state"], "stock")
        self.assert_state(status, "siglip", "patched")

    def test_disabled_restores_the_patched_functions(self):
        patching.apply()
        with patching.disabled():
            self.assertEqual(self.current_functions(), self.stock)
            self.assert_states(patching.status(), "stock")
        self.assertEqual(self.current_functions(), self.patched_functions())

    def test_disabled_restores_after_an_exception(self):
        patching.apply()
        with self.assertRaises(KeyError), patching.disabled():
            raise KeyError("raised inside the block")
        self.assertEqual(self.current_functions(), self.patched_functions())

    def test_disabled_keeps_a_reverted_state(self):
        patching.revert()
        with patching.disabled():
            pass
        self.assertEqual(self.current_functions(), self.stock)

    def test_status_reports_versions_opt_out_and_hook(self):
        status = patching.status()

        self.assertEqual(status["opt_out_variable"], OPT_OUT_ENV)
        self.assertEqual(status["opt_out"], _activation.opt_out_is_set())
        self.assertEqual(status["import_hook"], _activation.import_hook_installed())
        self.assertEqual(status["transformers"], metadata.version("transformers"))
        self.assertEqual(set(status["models"]), set(PATCHED_MODULES))
        self.assertIn(status["activation"], patching.ACTIVATION_STATES)
        for entry in status["models"].values():
            self.assertRegex(entry["state"], rf"^({'|'.join(patching.STATES)})( \(.+\))?$")

    def test_activation_follows_revert_and_apply(self):
        with (
            mock.patch.object(sys, "meta_path", list(sys.meta_path)),
            mock.patch.dict(_activation._post_import_hooks),
            mock.patch.dict(os.environ, {OPT_OUT_ENV: ""}),
        ):
            _activation.install_import_hook()
            self.assertEqual(patching.revert()["activation"], "installed, stopped by revert()")
            self.assertEqual(patching.apply()["activation"], "installed, active")

    def test_signature_mismatch_is_left_alone_with_a_reason(self):
        def eager_attention_forward(module, query, key, value, attention_mask, scaling, is_causal=True):
            return None

        fake = types.ModuleType("fake_modeling_qwen2")
        fake.eager_attention_forward = eager_attention_forward
        with (
            mock.patch.dict(sys.modules, {"fake_modeling_qwen2": fake}),
            mock.patch.dict(
                MODEL_TABLE, {"qwen2": dataclasses.replace(MODEL_TABLE["qwen2"], module="fake_modeling_qwen2")}
            ),
            mock.patch.dict(patching._originals, clear=True),
            mock.patch.object(_activation, "_warned", set()),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            patching._patch("qwen2")
            patching._patch("qwen2")  # said once, however often it is tried
            state = patching.status()["models"]["qwen2"]["state"]

        self.assertIs(fake.eager_attention_forward, eager_attention_forward)
        self.assertTrue(state.startswith("stock (") and "is_causal" in state, state)
        self.assertEqual(len(caught), 1)
        self.assertIn("unpatched", str(caught[0].message))

    @parameterized.expand([("apply",), ("revert",)])
    def test_unknown_model_type_is_rejected_before_any_change(self, function_name):
        with self.assertRaisesRegex(
            ValueError, rf"unknown model type 'llama': the overlay patches {', '.join(MODEL_TABLE)}$"
        ):
            getattr(patching, function_name)(["qwen2", "llama"])
        self.assertEqual(self.current_functions(), self.functions)
        self.assertEqual(patching._enabled, self.state[0])

    def test_single_model_type_as_a_string(self):
        patching.revert()
        status = patching.apply("qwen2")

        self.assertIs(self.modules["qwen2"].eager_attention_forward, self.stable)
        self.assertIs(self.current_functions()["siglip"], self.stock["siglip"])
        self.assert_state(status, "siglip", "stock")
