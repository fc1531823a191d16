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
Regenerates `patches/` from the overlay's source; the generator is `transformers_overlay.upstream_series`.

usage:
    python scripts/make_patches.py                  # rewrite patches/
    python scripts/make_patches.py --check          # exit 1 when patches/ is stale
    python scripts/make_patches.py --pristine-tree  # print the cached pristine tree (downloading it when absent)
    python scripts/make_patches.py --verify-with-converter --converter-dir TRANSFORMERS_CHECKOUT/utils [--models ...]
"""

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transformers_overlay.upstream_series import make_main  # noqa: E402


if __name__ == "__main__":
    sys.exit(make_main())
