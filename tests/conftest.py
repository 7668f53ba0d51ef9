from __future__ import annotations

import pytest

from wasm_exec import PythonExecExecutor


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
