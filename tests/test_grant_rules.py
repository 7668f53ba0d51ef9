"""Which grant rule of the runner's import guard decided each import (issue 17).

The guard's decisions are an ordered table of named rules in runtime/spec/runner.py
(``grant_rules``); ``execute(..., trace_imports=True)`` reports, for each import the guard
was asked for, the rule that granted it or None where it refused.
"""

from __future__ import annotations

import pytest

from wasm_exec import PythonExecExecutor


@pytest.fixture(scope="module")
def ex():
    with PythonExecExecutor(whitelisted_imports=["json", "time", "collections"],
                            timeout_seconds=20) as e:
        yield e


def _trace(ex, code):
    r = ex.execute(code, trace_imports=True)
    assert r.imports is not None
    return r, r.imports


def test_the_agents_allowed_import_is_granted_by_the_allow_list(ex):
    r, trace = _trace(ex, "import json")
    assert r.success, r.error
    assert ("json", "allow-list") in trace


def test_a_refused_import_is_traced_with_no_rule(ex):
    r, trace = _trace(ex, "import os")
    assert not r.success and r.error_type == "ImportError"
    assert ("os", None) in trace
    assert all(rule is None for name, rule in trace if name == "os")


def test_library_imports_are_granted_as_the_librarys_own(ex):
    # a first import of collections.abc, from json's or the library's own statements
    r, trace = _trace(ex, "import json\njson.dumps({'a': 1})\nfrom collections import abc")
    assert r.success, r.error
    assert ("collections", "allow-list") in trace or ("collections.abc", "allow-list") in trace


def test_strptime_is_granted_as_an_import_by_c_for_the_caller(ex):
    r, trace = _trace(ex, "import time\ntime.strptime('2026', '%Y')")
    assert r.success, r.error
    assert ("_strptime", "import by C for the caller") in trace
    # _strptime's own imports are the library's
    assert {rule for name, rule in trace if name == "os"} <= {"library import statement"}


def test_no_trace_unless_asked(ex):
    r = ex.execute("import json")
    assert r.success and r.imports is None


def test_the_agent_cannot_forge_trace_entries(ex):
    # the trace is kept in the audit hook; the agent's own imports only add refusals
    r, trace = _trace(ex, "for n in ['os', 'sys', 'subprocess']:\n"
                          "    try:\n        __import__(n)\n    except ImportError:\n"
                          "        pass")
    assert r.success, r.error
    assert [t for t in trace if t[0] in ("os", "sys", "subprocess")] == [
        ("os", None), ("sys", None), ("subprocess", None)]
