"""Rustic AI integration tests: skipped where Rustic AI is not installed, unless required.

The main test run (Python 3.11) has no Rustic AI, so the tests in this folder skip there.
``.ci/rustic.sh`` sets ``WASM_EXEC_REQUIRE_RUSTIC=1``: then a missing Rustic AI is an
error, never a silent skip.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

if os.environ.get("WASM_EXEC_REQUIRE_RUSTIC") == "1" and importlib.util.find_spec(
        "rustic_ai") is None:
    raise pytest.UsageError(
        "WASM_EXEC_REQUIRE_RUSTIC=1 but rustic_ai is not importable: install rusticai-core "
        "(Python >= 3.13) into this environment")
