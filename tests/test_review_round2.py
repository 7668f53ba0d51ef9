"""Findings of the second adversarial review round (issue 13: review in rounds), on the
surfaces that landed after the first: host functions (tools), files in and out, streamed
output, the last expression's value, the state store, the MCP server and the smolagents
executor.

Each test fails on the code before its fix (or is a strict xfail naming what is still
open). Calls that hung before their fix run on a helper thread, so that a regression
fails the test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from wasm_exec import PythonExecExecutor, ReentrantCallError
from wasm_exec.tools import MAX_STRAGGLERS

# generous: each of these calls takes milliseconds once fixed; before, it never returned
PATIENCE = 60.0


def _in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a daemon thread: its value, or its exception raised here; a call that
    never returns fails the test (it hung) instead of hanging the suite."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(PATIENCE)
    assert not t.is_alive(), "the call never returned (a deadlock)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _close(ex: PythonExecExecutor) -> None:
    """Close ``ex`` on a daemon thread (an executor a deadlock holds cannot close)."""
    t = threading.Thread(target=ex.close, daemon=True)
    t.start()
    t.join(PATIENCE)


# ------------------------------------------------------------------------------------
# 1. The executor's file methods from its own output callback. on_stdout runs on the
# caller's thread while the call holds the interpreter; write_file / read_file /
# list_files / delete_file queued a job for that interpreter and waited for it on the
# session's (non-reentrant) lock, held by that same thread: the caller hung for good.

FILE_METHODS: dict[str, Callable[[PythonExecExecutor], Any]] = {
    "write_file": lambda ex: ex.write_file("a.txt", b"x"),
    "read_file": lambda ex: ex.read_file("a.txt"),
    "list_files": lambda ex: ex.list_files(),
    "delete_file": lambda ex: ex.delete_file("a.txt"),
}


@pytest.mark.parametrize("method", sorted(FILE_METHODS))
def test_file_methods_from_an_output_callback_raise_instead_of_hanging(method):
    ex = PythonExecExecutor(timeout_seconds=10)
    try:
        ex.write_file("a.txt", b"before")
        assert ex.execute("keep = 41").success
        seen: list[BaseException | None] = []

        def on_stdout(text: str) -> None:
            if seen:
                return
            try:
                FILE_METHODS[method](ex)
                seen.append(None)
            except BaseException as e:  # noqa: BLE001 - what the test looks at
                seen.append(e)

        r = _in_thread(lambda: ex.execute("print('hi')\nkeep += 1", on_stdout=on_stdout,
                                          return_globals=["keep"]))
        assert r.success and r.globals == {"keep": 42}, r.error
        assert isinstance(seen[0], ReentrantCallError), seen
        assert "after that call returns" in str(seen[0])
        # the agent's state and files are as they were, and the methods work again
        assert ex.read_file("a.txt") == b"before"
    finally:
        _close(ex)


# ------------------------------------------------------------------------------------
# 2. A tool calling the executor whose call it serves. execute() and the file methods
# refused with a clear error, but save(), reset() and forget_state() waited for the
# executor (held by the call, which waited for the tool) until the call's deadline: the
# call was stopped and rolled back, and the reset then ran anyway, after the stop. An
# async tool (run on the caller's event loop, not the tool thread) was not recognised at
# all: its aexecute() of the same executor ended the same way.

def test_executor_methods_from_a_tool_raise_and_the_call_goes_on(tmp_path):
    holder: dict[str, PythonExecExecutor] = {}

    def attempt(what: str) -> list[str]:
        ex = holder["ex"]
        try:
            if what == "save":
                ex.save(tmp_path / "x.img")
            elif what == "reset":
                ex.reset()
            elif what == "forget_state":
                ex.forget_state()
            else:
                ex.execute("1")
            return ["ran"]
        except Exception as e:  # noqa: BLE001 - what the agent's code looks at
            return [type(e).__name__, str(e)]

    ex = PythonExecExecutor(timeout_seconds=10, tools={"attempt": attempt},
                            state_store=tmp_path / "store", state_key="agent-1")
    holder["ex"] = ex
    try:
        assert ex.execute("keep = 40").success
        for what in ("save", "reset", "forget_state", "execute"):
            r = _in_thread(lambda what=what: ex.execute(
                f"r = attempt({what!r})\nkeep += 1", return_globals=["r", "keep"]))
            assert r.success, (what, r.error)
            assert r.globals["r"][0] == "RuntimeError", (what, r.globals)
            assert "a tool called the executor whose call it serves" in r.globals["r"][1]
        r = ex.execute("keep", return_globals=["keep"])
        assert r.globals == {"keep": 44} and not r.state_reset
        assert not (tmp_path / "x.img").exists()
    finally:
        ex.close()


def test_an_async_tool_calling_its_executor_gets_a_clear_error():
    async def main() -> tuple[Any, Any]:
        holder: dict[str, PythonExecExecutor] = {}

        async def nested() -> list[str]:
            try:
                await holder["ex"].aexecute("1")
                return ["ran"]
            except Exception as e:  # noqa: BLE001 - what the agent's code looks at
                return [type(e).__name__, str(e)]

        async def writes() -> list[str]:
            try:
                holder["ex"].write_file("b.txt", b"x")
                return ["ran"]
            except Exception as e:  # noqa: BLE001
                return [type(e).__name__, str(e)]

        ex = PythonExecExecutor(timeout_seconds=10, tools={"nested": nested,
                                                           "writes": writes})
        holder["ex"] = ex
        try:
            r1 = await asyncio.wait_for(ex.aexecute("r = nested()", return_globals=["r"]),
                                        PATIENCE)
            r2 = await asyncio.wait_for(ex.aexecute("r = writes()", return_globals=["r"]),
                                        PATIENCE)
            return r1, r2
        finally:
            ex.close()

    for r in asyncio.run(main()):
        assert r.success, r.error
        assert r.globals["r"][0] == "RuntimeError", r.globals
        assert "whose call it serves" in r.globals["r"][1]


def test_a_tool_may_still_use_another_executor():
    # (the check refuses only the executor whose call the tool serves)
    other = PythonExecExecutor(timeout_seconds=10)
    ex = PythonExecExecutor(timeout_seconds=10, tools={
        "use_other": lambda: other.execute("6 * 7", return_globals=[]).value.text})
    try:
        r = ex.execute("r = use_other()", return_globals=["r"])
        assert r.success and r.globals == {"r": "42"}, r.error
    finally:
        ex.close()
        other.close()


# ------------------------------------------------------------------------------------
# 3. Host threads an agent piles up. A tool still running when its call's deadline came
# keeps its worker thread (Python cannot stop it), and the stopped call's interpreter is
# replaced by a roll-back: the next tool call started a new worker, every time. An agent
# calling a tool that hangs (a human-in-the-loop tool, a slow service) once per call added
# one host thread per call, without bound.

def _tool_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "wasm-exec-tool"}


def test_tools_that_outlive_their_calls_do_not_pile_up_host_threads():
    release = threading.Event()

    def hang() -> int:
        release.wait(PATIENCE)
        return 1

    before = _tool_threads()
    ex = PythonExecExecutor(timeout_seconds=0.5, tools={"hang": hang})
    try:
        code = ("try:\n    hang()\nexcept ToolError as e:\n    err = str(e)\n"
                "    kind = e.error_type")
        limits = []
        for _ in range(MAX_STRAGGLERS + 4):
            r = ex.execute(code, return_globals=["err", "kind"])
            limits.append(r.limit)
            assert len(_tool_threads() - before) <= MAX_STRAGGLERS
        assert limits[:MAX_STRAGGLERS] == ["timeout"] * MAX_STRAGGLERS
        assert limits[MAX_STRAGGLERS:] == [None] * 4  # refused at once, with the reason
        assert r.globals["kind"] == "RuntimeError"
        assert "still running" in r.globals["err"] and "hang" in r.globals["err"]
        release.set()
        # (each of them ends once its function returns: their interpreters are closed)
        for t in _tool_threads() - before:
            t.join(PATIENCE)
        r = ex.execute("x = hang()", return_globals=["x"])  # (the tool works again)
        assert r.success and r.globals == {"x": 1}, r.error
    finally:
        release.set()
        ex.close()
