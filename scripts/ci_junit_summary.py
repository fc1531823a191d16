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
Reads a pytest junit XML report of the regression tests (`scripts/regression_test_paths`), prints the counts, and exits non-zero when the run does not prove
what CI needs it to prove:

    --expect stock   run on stock transformers: every `test_overflow_*` case must fail (one that passes proves
                     nothing), and at least one must have run;
    --expect fixed   run with the fix: nothing may fail, and nothing may be skipped except `@slow` tests.
"""

import argparse
import sys
import xml.etree.ElementTree as ElementTree


OVERFLOW_MARKER = ".test_overflow_"
SLOW_SKIP_MESSAGE = "test is slow"  # transformers.testing_utils.slow's reason


def outcomes(report: str) -> dict[str, tuple[str, str]]:
    """`class.test` -> (passed | failed | skipped, the skip or failure message)."""
    result = {}
    for case in ElementTree.parse(report).iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "skipped" if child.tag == "skipped" else "failed"
                message = child.get("message", "")
        result[f"{case.get('classname')}.{case.get('name')}"] = (outcome, message)
    return result


def count(cases: dict, outcome: str) -> int:
    return sum(found == outcome for found, _ in cases.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="junit XML written by pytest --junitxml")
    parser.add_argument("--expect", choices=("stock", "fixed"), required=True)
    parser.add_argument("--label", default="regression tests", help="what the printed counts describe")
    args = parser.parse_args(argv)

    cases = outcomes(args.report)
    overflow = {name: found for name, found in cases.items() if OVERFLOW_MARKER in name}
    print(
        f"{args.label}: {count(cases, 'passed')} passed, {count(cases, 'failed')} failed, "
        f"{count(cases, 'skipped')} skipped; overflow cases: {count(overflow, 'passed')} passed, "
        f"{count(overflow, 'failed')} failed, {count(overflow, 'skipped')} skipped"
    )
    if args.expect == "stock":
        passing = sorted(name for name, (found, _) in overflow.items() if found == "passed")
        if not overflow or count(overflow, "skipped") == len(overflow):
            print("no overflow case ran on stock transformers", file=sys.stderr)
            return 1
        if passing:
            print(
                "overflow cases that pass on stock transformers prove nothing: " + ", ".join(passing), file=sys.stderr
            )
            return 1
        return 0
    bad = sorted(
        f"{name} ({found}: {message.splitlines()[0] if message else ''})"
        for name, (found, message) in cases.items()
        if found == "failed" or (found == "skipped" and SLOW_SKIP_MESSAGE not in message)
    )
    if not cases or bad:
        print("with the fix every test must run and pass:\n  " + "\n  ".join(bad or ["no test ran"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
