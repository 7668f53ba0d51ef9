"""Whether the scientific runtime is installed, for tests that need it."""

from __future__ import annotations

import pytest

from wasm_exec.errors import WasmExecError
from wasm_exec.runtime import EngineSettings, load_runtime


def scientific_installed() -> bool:
    try:
        load_runtime(EngineSettings(fuel=True), "scientific")
        return True
    except WasmExecError:
        return False


# tests/conftest.py fails (rather than skips) a test with both this and the `scientific`
# mark when WASM_EXEC_REQUIRE_SCIENTIFIC=1, as CI sets
needs_scientific = pytest.mark.skipif(
    not scientific_installed(),
    reason="the scientific runtime is not installed (bash build_runtime.sh --profile scientific)")
