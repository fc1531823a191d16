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
The README's snippets as a reader meets them: every Python block runs offline as written unless it is marked as
needing a real checkpoint, the offline example it points to runs, and the words `status()` and `check` use are the
ones the README lists. The two install commands are run by CI (`scripts/ci_newcomer.sh` and the test stage).
"""

import ast
import builtins
import os
import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from transformers.testing_utils import require_torch
from transformers_overlay import patching
from transformers_overlay._activation import OPT_OUT_ENV


REPOSITORY = Path(__file__).resolve().parents[1]
README = REPOSITORY / "README.md"
# First line of a Python block that cannot run offline; the prose before the block says what it needs.
NEEDS_CHECKPOINT = "# Needs a real checkpoint"
FIRST_COMMAND = "pip install torch==2.13.0 && pip install -e . && transformers-overlay check"
TEST_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest'


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def run_offline(arguments, cwd) -> subprocess.CompletedProcess:
    """Runs `python *arguments` in a fresh interpreter that cannot reach the Hugging Face Hub."""
    environment = {name: value for name, value in os.environ.items() if name != OPT_OUT_ENV}
    environment.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, *arguments], cwd=cwd, env=environment, capture_output=True, text=True, timeout=600
    )


class ReadmeTest(unittest.TestCase):
    def setUp(self):
        self.text = README.read_text(encoding="utf-8")
        self.python_blocks = fenced_blocks(self.text, "python")

    def test_first_commands_are_the_ones_ci_runs(self):
        # scripts/ci_newcomer.sh runs the first two ```bash blocks in a brand-new virtual environment; .ci/run's first
        # stage runs the test command too.
        first, second = fenced_blocks(self.text, "bash")[:2]
        self.assertEqual(first.strip(), FIRST_COMMAND)
        self.assertEqual(second.strip(), TEST_COMMAND)
        ci_run = (REPOSITORY / ".ci" / "run").read_text(encoding="utf-8")
        self.assertIn(TEST_COMMAND.replace("pip install", "python -m pip install"), ci_run)

    @require_torch
    def test_runnable_python_blocks_run_offline(self):
        runnable = [code for code in self.python_blocks if not code.startswith(NEEDS_CHECKPOINT)]
        self.assertTrue(runnable)
        for code in runnable:
            with self.subTest(code=code.splitlines()[0]), tempfile.TemporaryDirectory() as directory:
                result = run_offline(["-c", code], cwd=directory)
                self.assertEqual(result.returncode, 0, result.stderr)

    def test_blocks_needing_a_checkpoint_are_complete_python(self):
        # Not run here (they download a 7B checkpoint), but every name they use is defined or imported.
        marked = [code for code in self.python_blocks if code.startswith(NEEDS_CHECKPOINT)]
        self.assertTrue(marked)
        for code in marked:
            tree = ast.parse(code)
            defined = {
                alias.asname or alias.name
                for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names
            }
            defined |= {
                node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
            }
            used = {
                node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
            }
            undefined = sorted(used - defined - set(dir(builtins)))
            self.assertEqual(undefined, [], code)

    def test_offline_examples_the_readme_points_to_run(self):
        examples = sorted(set(re.findall(r"`python (examples/[\w/]+\.py)`", self.text)))
        self.assertTrue(examples)
        for example in examples:
            with self.subTest(example=example):
                result = run_offline([str(REPOSITORY / example)], cwd=REPOSITORY)
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertTrue(result.stdout.strip())

    def test_lists_every_state_word(self):
        listed = set(re.findall(r"^\| `([^`]+)` \|", self.text, flags=re.MULTILINE))
        for state in patching.ACTIVATION_STATES:
            self.assertIn(state, listed)
        for state in patching.STATES:  # each with its reasons: "stock (why)", "not imported (will ...)"
            self.assertTrue(any(entry == state or entry.startswith(f"{state} (") for entry in listed), state)


if __name__ == "__main__":
    unittest.main()
