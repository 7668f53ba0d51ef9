"""The host keeps its promises under hostile agents and careless callers (issue 13).

Each test names the class of defect of issue 13 it guards against, and fails on the code
before its fix.
"""

from __future__ import annotations

import pytest

from wasm_exec import PythonExecExecutorResolver


# ------------------------------------------------------------- identity (class 3)
def test_scoped_ids_are_tuples_not_joined_strings():
    # ("alice", "guild-1") and ("alice/guild-1",) are two agents: neither reads the other
    with PythonExecExecutorResolver(idle_timeout_seconds=None, pool_size=0) as res:
        scoped = res.resolve("alice", "guild-1")
        joined = res.resolve("alice/guild-1")
        assert scoped is not joined
        scoped.execute("secret = 'alice in guild-1'")
        r = joined.execute("", return_globals=["secret"])
        assert "secret" in r.globals_errors
        # the parts are kept apart wherever they sit
        assert res.resolve("a/b", "c") is not res.resolve("a", "b/c")
        assert res.resolve("a", "b", "c") is not res.resolve("a", "b/c")
        assert res.resolve("alice", "guild-1") is scoped
        assert set(res.agents()) == {("alice", "guild-1"), ("alice/guild-1",), ("a/b", "c"),
                                     ("a", "b/c"), ("a", "b", "c")}


def test_forget_takes_the_same_parts_as_resolve():
    with PythonExecExecutorResolver(idle_timeout_seconds=None, pool_size=0) as res:
        ex = res.resolve("alice", "guild-1")
        other = res.resolve("alice/guild-1")
        res.forget("alice", "guild-1")
        assert ex.closed and not other.closed
        assert res.agents() == [("alice/guild-1",)]


def test_identity_parts_must_be_strings():
    with PythonExecExecutorResolver(idle_timeout_seconds=None, pool_size=0) as res:
        with pytest.raises(TypeError, match="agent id"):
            res.resolve(1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="agent id"):
            res.resolve("alice", None)  # type: ignore[arg-type]
