from __future__ import annotations

import importlib.util
import os

import pytest

from tests.scientific_support import needs_scientific
from wasm_exec import PythonExecExecutor

# The Rustic AI suite needs Python >= 3.13 with rusticai-core: CI runs it on its own
# (.ci/rustic.sh); elsewhere it is not collected at all (rather than reported skipped).
collect_ignore = [] if importlib.util.find_spec("rustic_ai") else ["rustic"]


# marks whose skips CI turns into failures: CI installs what they need and says so
_REQUIRED = {"scientific": "WASM_EXEC_REQUIRE_SCIENTIFIC", "redis": "WASM_EXEC_REQUIRE_REDIS"}


def pytest_collection_modifyitems(config, items):
    """CI builds the scientific runtime and installs redis-server, and sets
    WASM_EXEC_REQUIRE_SCIENTIFIC=1 / WASM_EXEC_REQUIRE_REDIS=1: there a test with the
    `scientific` / `redis` mark must run, never skip (elsewhere it would skip without
    what it needs)."""
    required = [mark for mark, env in _REQUIRED.items() if os.environ.get(env) == "1"]
    if not required:
        return
    for item in items:
        for mark_name in required:
            if item.get_closest_marker(mark_name):
                for mark in item.iter_markers("skipif"):
                    if mark.args and mark.args[0]:
                        pytest.fail(f"{item.nodeid}: {mark_name} is required here "
                                    f"({mark.kwargs.get('reason')})", pytrace=False)


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


@pytest.fixture(params=["minimal", pytest.param("scientific", marks=[pytest.mark.scientific,
                                                                      needs_scientific])])
def rt(request):
    """The runtime a test runs on (a test using it runs on both)."""
    return request.param


@pytest.fixture
def make(rt):
    """Factory for executors on the test's runtime (``rt``), all closed after the test."""
    made: list[PythonExecExecutor] = []

    def factory(**kwargs) -> PythonExecExecutor:
        kwargs.setdefault("timeout_seconds", 20)
        ex = PythonExecExecutor(runtime=rt, **kwargs)
        made.append(ex)
        return ex

    yield factory
    for ex in made:
        ex.close()
