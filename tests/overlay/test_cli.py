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
"""`transformers-overlay check`: the P-001 reproduction, its verdict and exit codes, and `--model` / `--device`."""

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import warnings
from importlib import metadata
from unittest import mock

from parameterized import parameterized

from transformers import is_torch_available
from transformers.testing_utils import require_torch
from transformers_overlay import _activation, cli, patching
from transformers_overlay._activation import OPT_OUT_ENV
from transformers_overlay.model_table import MODEL_TABLE, patchable_model_types
from transformers_overlay.releases import SERIES_RELEASE

from .test_model_family import restore_overlay_state


if is_torch_available():
    import torch

    from transformers_overlay import reproduction


def run_check(*args):
    """Runs `transformers-overlay check *args` in this process; returns (exit code, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["check", *args])
    return code, stdout.getvalue(), stderr.getvalue()


# The model types whose module in the installed transformers has the module-level function the overlay replaces, as
# the model table says.
PATCHABLE_MODEL_TYPES = patchable_model_types(metadata.version("transformers"))
# The model types whose tiny case runs LLaVA-OneVision's PIL image processor, so that `check` needs Pillow for them.
PILLOW_MODEL_TYPES = [
    model_type for model_type, entry in MODEL_TABLE.items() if entry.inputs == "llava_onevision_image_text_inputs"
]


def table_rows(output: str, attention: str) -> list[str]:
    return [line for line in output.splitlines() if f"  {attention}  " in f"{line}  "]


class CommandLineTest(unittest.TestCase):
    def test_console_script_is_declared(self):
        (entry_point,) = metadata.entry_points(group="console_scripts", name="transformers-overlay")
        self.assertIs(entry_point.load(), cli.main)

    def test_module_entry_point(self):
        result = subprocess.run(
            [sys.executable, "-m", "transformers_overlay", "--version"], capture_output=True, text=True, timeout=120
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.split(), ["transformers-overlay", metadata.version("transformers-overlay")])

    def test_unknown_dtype_is_a_usage_error(self):
        with self.assertRaises(SystemExit) as raised, contextlib.redirect_stderr(io.StringIO()):
            cli.main(["check", "--dtype", "float8"])
        self.assertEqual(raised.exception.code, cli.EXIT_UNAVAILABLE)


@require_torch
class CheckBuiltinModelsTest(unittest.TestCase):
    def test_check_clears_p001_in_a_fresh_interpreter(self):
        # What a user runs after `pip install`: the import hook patches, the check says so and exits 0.
        environment = {name: value for name, value in os.environ.items() if name != OPT_OUT_ENV}
        result = subprocess.run(
            [sys.executable, "-m", "transformers_overlay", "check"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = result.stdout

        self.assertEqual(result.returncode, cli.EXIT_CLEARED, output + result.stderr)
        self.assertTrue(output.startswith(f"transformers-overlay {metadata.version('transformers-overlay')}: "))
        self.assertIn(f": installed, active (opt-out {OPT_OUT_ENV} not set)\n", output)
        self.assertIn(f"transformers {metadata.version('transformers')}", output)
        self.assertIn(f"torch {torch.__version__}", output)
        patchable = PATCHABLE_MODEL_TYPES
        # A status line per model type of the table: patched where this transformers has the module-level function.
        width = max(map(len, MODEL_TABLE))
        for model_type, entry in MODEL_TABLE.items():
            state = "patched" if model_type in patchable else "stock ("
            self.assertIn(f"  {model_type:<{width}}  {entry.module}: {state}", output)
        # The others get a row that says they were skipped, and why, instead of measurements.
        version = metadata.version("transformers")
        for model_type, entry in MODEL_TABLE.items():
            skipped = (
                f"skipped: transformers {version} has no module-level eager function to replace "
                f"(first in {entry.first_patchable_release})"
            )
            rows = [line for line in output.splitlines() if line.startswith(f"{model_type} ")]
            self.assertEqual(
                [row.split(None, 1)[1] for row in rows if "skipped" in row],
                [] if model_type in patchable else [skipped],
            )
        self.assertIn(f"By default, eager attention of {', '.join(patchable)} runs the overlay.", output)
        # One row per patchable model type, dtype and attention; stock eager gives NaN in float16, the overlay clears.
        stock_rows = table_rows(output, "eager stock")
        self.assertEqual(len(stock_rows), 2 * len(patchable))
        self.assertEqual([row.split()[0] for row in stock_rows], [t for t in patchable for _ in range(2)])
        self.assertEqual(sum(" float16 " in row and "  yes  " in row for row in stock_rows), len(patchable))
        overlay_rows = table_rows(output, "eager overlay")
        self.assertEqual(len(overlay_rows), 2 * len(patchable))
        self.assertTrue(all(row.endswith("clears") and "  no  " in row for row in overlay_rows), overlay_rows)
        self.assertIn("random weights leave near-ties", output)  # why top-1 agreement is low even for sdpa
        self.assertTrue(output.rstrip().splitlines()[-1].startswith("PASS: the overlay clears P-001"))

    def test_check_with_the_opt_out_in_a_fresh_interpreter_exits_3(self):
        environment = {**os.environ, OPT_OUT_ENV: "1"}
        result = subprocess.run(
            [sys.executable, "-m", "transformers_overlay", "check", "--dtype", "float16"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = result.stdout

        self.assertEqual(result.returncode, cli.EXIT_NOT_ACTIVE, output + result.stderr)
        header = output.splitlines()[0]
        self.assertTrue(header.endswith(f": installed, disabled by {OPT_OUT_ENV} (set to '1')"), header)
        self.assertRegex(output, r"(?m)^  qwen2 +transformers\.models\.qwen2\.modeling_qwen2: stock$")
        self.assertIn(f"runs STOCK transformers code: the opt-out {OPT_OUT_ENV}=1 is set", output)
        self.assertTrue(all(row.endswith("clears") for row in table_rows(output, "eager overlay")))
        self.assertTrue(output.rstrip().splitlines()[-1].startswith("NOT ACTIVE: the overlay clears P-001"))

    def test_untested_release_with_recognised_functions_exits_0(self):
        # A transformers newer than the newest tested release whose functions are stock texts the overlay knows.
        with mock.patch.object(patching, "transformers_version", return_value="5.99.0.dev0"):
            code, output, error = run_check("--model", "qwen2", "--dtype", "float16")

        self.assertEqual(code, cli.EXIT_CLEARED, output + error)
        self.assertIn(
            f"transformers 5.99.0.dev0 (supported >=4.48, untested release: newer than the newest tested "
            f"{SERIES_RELEASE})",
            output,
        )
        self.assertIn(
            "qwen2.modeling_qwen2: patched (untested release, stock function recognised)\n",
            output,
        )
        self.assertIn("runs the overlay (untested release, stock function recognised).", output)
        self.assertTrue(output.rstrip().splitlines()[-1].startswith("PASS: the overlay clears P-001"))

    def test_unrecognised_function_is_not_active_and_exits_3(self):
        from transformers.models.qwen2 import modeling_qwen2

        state = (patching._enabled, dict(patching._originals), dict(patching._skipped))
        self.addCleanup(restore_overlay_state, state)
        patching.revert(["qwen2"])
        stock = modeling_qwen2.eager_attention_forward

        def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
            return stock(module, query, key, value, attention_mask, scaling, dropout=dropout, **kwargs)

        with (
            mock.patch.object(modeling_qwen2, "eager_attention_forward", eager_attention_forward),
            mock.patch.dict(os.environ, {patching.FORCE_ENV: ""}),
            mock.patch.object(_activation, "_warned", set()),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            patching.apply(["qwen2"])
            code, output, error = run_check("--model", "qwen2", "--dtype", "float16")
            self.assertIs(modeling_qwen2.eager_attention_forward, eager_attention_forward)

        self.assertEqual(code, cli.EXIT_NOT_ACTIVE, output + error)
        self.assertEqual(len(caught), 1, [str(warning.message) for warning in caught])
        self.assertIn("qwen2.modeling_qwen2: stock (its `eager_attention_forward`", output)
        self.assertIn(
            f"runs STOCK transformers code: the eager function of qwen2 is not a stock text the overlay recognises "
            f"(set {patching.FORCE_ENV}=1 or call transformers_overlay.apply(force=True) to replace it anyway)",
            output,
        )
        self.assertTrue(all(row.endswith("clears") for row in table_rows(output, "eager overlay")))
        self.assertTrue(output.rstrip().splitlines()[-1].startswith("NOT ACTIVE: the overlay clears P-001"))

    def test_missing_pillow_is_reported_with_exit_2(self):
        with mock.patch.dict(sys.modules, {"PIL": None, "PIL.Image": None}):  # `import PIL` raises ImportError
            code, output, error = run_check("--dtype", "float16")

        if not set(PILLOW_MODEL_TYPES) & set(PATCHABLE_MODEL_TYPES):
            # No case that needs Pillow runs on this transformers: the check goes on without it.
            self.assertEqual(code, cli.EXIT_CLEARED, output + error)
            self.assertEqual(len(table_rows(output, "eager overlay")), len(PATCHABLE_MODEL_TYPES))
            return
        self.assertEqual(code, cli.EXIT_UNAVAILABLE)
        self.assertEqual(output, "")
        self.assertEqual(len(error.splitlines()), 1, error)
        self.assertIn("need Pillow", error)
        self.assertIn("pip install pillow", error)

    def test_check_fails_when_the_overlay_does_not_clear(self):
        # With transformers' own functions standing in for the overlay, P-001 is not cleared and the check says so.
        from transformers_overlay.model_table import model_type_of_module

        model_types = reproduction.replaceable_model_types(MODEL_TABLE)
        stock = {model_type: reproduction.stock_eager_attention(model_type) for model_type in model_types}

        def stock_eager_attention(module, *args, **kwargs):
            return stock[model_type_of_module(type(module).__module__)](module, *args, **kwargs)

        # The last model type of the table that this transformers lets the overlay patch (LLaVA-OneVision's SigLIP
        # tower from 4.51 on, whose case runs two model types).
        with mock.patch.object(reproduction, "overlay_eager_attention_forward", stock_eager_attention):
            code, output, _ = run_check("--model", PATCHABLE_MODEL_TYPES[-1], "--dtype", "float16")

        self.assertEqual(code, cli.EXIT_NOT_CLEARED, output)
        overlay_rows = table_rows(output, "eager overlay")
        self.assertEqual(len(overlay_rows), 1, output)
        self.assertTrue(overlay_rows[0].endswith("FAILS"), overlay_rows)
        self.assertTrue(output.rstrip().splitlines()[-1].startswith("FAIL: the overlay does not clear P-001"))

    @parameterized.expand([(model_type,) for model_type in MODEL_TABLE])
    def test_model_type_runs_its_tiny_model_only(self, model_type):
        if model_type not in PATCHABLE_MODEL_TYPES:
            code, output, error = run_check("--model", model_type, "--dtype", "bfloat16")
            self.assertEqual((code, output), (cli.EXIT_UNAVAILABLE, ""))
            self.assertIn(f"--model {model_type}: stock (", error)
            return
        code, output, _ = run_check("--model", model_type, "--dtype", "bfloat16")

        self.assertEqual(code, cli.EXIT_CLEARED, output)
        (stock_row,) = table_rows(output, "eager stock")
        self.assertTrue(stock_row.startswith(f"{model_type}  bfloat16"), stock_row)
        (overlay_row,) = table_rows(output, "eager overlay")
        self.assertTrue(overlay_row.endswith("clears"), overlay_row)

    @unittest.skipIf(is_torch_available() and torch.cuda.is_available(), "CUDA is available here")
    def test_cuda_device_without_cuda(self):
        code, output, error = run_check("--device", "cuda")

        self.assertEqual(code, cli.EXIT_UNAVAILABLE)
        self.assertEqual(output, "")
        self.assertEqual(len(error.splitlines()), 1)
        self.assertIn("CUDA is not available", error)


@require_torch
class CheckLocalCheckpointTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.TemporaryDirectory()
        tokenizer = reproduction.tiny_tokenizer()
        cls.checkpoints = {
            "qwen2": os.path.join(cls.directory.name, "tiny-qwen2"),
            "llava_onevision": os.path.join(cls.directory.name, "tiny-llava-onevision"),
        }
        with contextlib.redirect_stderr(io.StringIO()):  # the shard-writing progress bars
            reproduction.tiny_qwen2(tokenizer, bias=120.0).save_pretrained(cls.checkpoints["qwen2"])
            reproduction.tiny_llava_onevision(tokenizer, bias=120.0).save_pretrained(
                cls.checkpoints["llava_onevision"]
            )
        tokenizer.save_pretrained(cls.checkpoints["qwen2"])
        tokenizer.save_pretrained(cls.checkpoints["llava_onevision"])
        reproduction.tiny_image_processor().save_pretrained(cls.checkpoints["llava_onevision"])

    @classmethod
    def tearDownClass(cls):
        cls.directory.cleanup()

    @parameterized.expand([("qwen2",), ("llava_onevision",)])
    def test_local_checkpoint(self, model_type):
        path = self.checkpoints[model_type]
        code, output, _ = run_check("--model", path, "--dtype", "float16")

        self.assertEqual(code, cli.EXIT_CLEARED, output)
        (stock_row,) = table_rows(output, "eager stock")
        self.assertTrue(stock_row.startswith(f"{path}  float16"), stock_row)
        self.assertIn("  yes  ", stock_row)  # the checkpoint carries the overflow biases
        (overlay_row,) = table_rows(output, "eager overlay")
        self.assertTrue(overlay_row.endswith("clears"), overlay_row)

    def assert_unavailable(self, model, message):
        code, output, error = run_check("--model", model)

        self.assertEqual(code, cli.EXIT_UNAVAILABLE)
        self.assertEqual(output, "")
        self.assertEqual(len(error.splitlines()), 1, error)
        self.assertIn(message, error)

    def test_missing_directory(self):
        path = os.path.join(self.directory.name, "not-downloaded")
        self.assert_unavailable(path, f"{path!r}: no such directory")

    def test_model_id_not_in_the_cache_is_not_found_locally(self):
        # Not a network error: `check` never downloads.
        model_id = "transformers-overlay-tests/not-downloaded"
        self.assert_unavailable(model_id, f"{model_id!r} is not found locally: it is not a directory here, and not in")

    def test_directory_without_config(self):
        path = os.path.join(self.directory.name, "empty")
        os.makedirs(path, exist_ok=True)
        self.assert_unavailable(path, f"{path!r} is a directory without config.json, not a checkpoint")

    @parameterized.expand(
        [
            ("qwen2", "tokenizer*", "has no tokenizer files (tokenizer.json, or vocab.json and merges.txt)"),
            ("qwen2", "*.safetensors*", "has no weights (model.safetensors"),
            ("llava_onevision", "preprocessor_config.json", "has no image processor file (preprocessor_config.json)"),
        ]
    )
    def test_checkpoint_directory_with_missing_files(self, model_type, left_out, message):
        path = os.path.join(self.directory.name, f"{model_type}-without-{left_out.strip('*')}")
        shutil.copytree(
            self.checkpoints[model_type], path, ignore=shutil.ignore_patterns(left_out), dirs_exist_ok=True
        )
        self.assert_unavailable(path, f"{path!r} {message}")

    def test_model_type_not_covered(self):
        from transformers import LlamaConfig

        path = os.path.join(self.directory.name, "tiny-llama")
        LlamaConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1).save_pretrained(path)
        self.assert_unavailable(
            path,
            f"is a 'llama' model, which runs none of the model types the overlay covers ({', '.join(MODEL_TABLE)})",
        )
