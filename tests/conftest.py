from __future__ import annotations

import importlib.util

import pytest

from wasm_exec import PythonExecExecutor

# The Rustic AI suite needs Python >= 3.13 with rusticai-core: CI runs it on its own
# (.ci/rustic.sh); elsewhere it is not collected at all (rather than reported skipped).
collect_ignore = [] if importlib.util.find_spec("rustic_ai") else ["rustic"]


@pytest.fixture
def ex():
    """A fresh executor with no imports allowed (closed after the test)."""
    executor = PythonExecExecutor(timeout_seconds=10)
    yield executor
    executor.close()


@pytest.fixture
def make_executor():
    """Factory for executors that are all closed after the test."""
    made: list[PythonExecExecutor] = []

    def factory(**kwargs) -> PythonExecExecutor:
        kwargs.setdefault("timeout_seconds", 10)
        e = PythonExecExecutor(**kwargs)
        made.append(e)
        return e

    yield factory
    for e in made:
        e.close()
