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
"""The `examples/rag` redirect README names only things the installed transformers has, and its snippet is Python."""

import ast
import re
import unittest
from pathlib import Path

import transformers


README = Path(__file__).resolve().parents[1] / "examples" / "rag" / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def imported_transformers_names(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module == "transformers":
            names.update(alias.name for alias in node.names)
    return names


class RagReadmeTest(unittest.TestCase):
    def setUp(self):
        self.text = README.read_text(encoding="utf-8")

    def test_has_a_python_quick_start_that_parses(self):
        blocks = python_blocks(self.text)
        self.assertEqual(len(blocks), 1)
        code = blocks[0]
        ast.parse(code)
        self.assertIn("from_pretrained", code)

    def test_every_transformers_name_exists(self):
        # classes named in the prose and the table (`RagRetriever`, ...) and everything the snippet imports
        mentioned = set(re.findall(r"`(Rag[A-Za-z]+)`", self.text))
        imported = set().union(*(imported_transformers_names(code) for code in python_blocks(self.text)))
        self.assertGreaterEqual(len(mentioned), 6)
        self.assertTrue(imported)
        missing = sorted(name for name in mentioned | imported if not hasattr(transformers, name))
        self.assertEqual(missing, [], f"not in transformers {transformers.__version__}")

    def test_lists_the_public_rag_classes(self):
        public = {name for name in dir(transformers) if re.fullmatch(r"Rag[A-Z][A-Za-z]*", name)}
        public -= {"RagPreTrainedModel"}  # a base class, not something users instantiate
        mentioned = set(re.findall(r"`(Rag[A-Za-z]+)`", self.text))
        self.assertEqual(sorted(public - mentioned), [])

    def test_points_to_the_docs_and_the_research_projects(self):
        self.assertIn("https://huggingface.co/docs/transformers/model_doc/rag", self.text)
        self.assertIn("https://github.com/huggingface/transformers-research-projects/tree/main/rag", self.text)


if __name__ == "__main__":
    unittest.main()
