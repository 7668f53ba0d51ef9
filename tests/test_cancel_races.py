"""Cancelling ``aexecute`` never costs the agent its state, nor hides a reset (found by
the soak test, tests/test_soak.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from wasm_exec import PythonExecExecutor

INC = "c = globals().get('c', 0) + 1"
SPIN = "c = globals().get('c', 0) + 1000\nwhile True: pass"


async def _cancel_after(ex: PythonExecExecutor, code: str, delay: float) -> None:
    task = asyncio.ensure_future(ex.aexecute(code, return_globals=["c"]))
    await asyncio.sleep(delay)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def test_a_cancelled_call_does_not_swallow_the_news_of_a_reset():
    """A released (evicted) agent's next call runs on a fresh interpreter and says
    state_reset=True. When that call is cancelled, nobody reads its result: the next
    call must say it instead (it used to say state_reset=False on a fresh interpreter)."""
    with PythonExecExecutor(timeout_seconds=10) as ex:
        ex.execute("c = 5")
        assert ex.release()
        asyncio.run(_cancel_after(ex, SPIN, 0.3))
        r = ex.execute(INC, return_globals=["c"])
        assert r.success and r.globals == {"c": 1}
        assert r.state_reset


def test_a_cancel_that_lands_between_turns_rolls_back():
    """A call cancelled just after it was handed to the interpreter (which may still be
    finishing the previous turn and taking its image) is rolled back like one cancelled
    while it runs: the agent keeps its state (it used to lose the interpreter)."""
    with PythonExecExecutor(timeout_seconds=10) as ex:
        expected = 0

        async def main() -> None:
            nonlocal expected
            for i in range(40):
                r = await ex.aexecute(INC, return_globals=["c"])
                expected += 1
                assert r.success and not r.state_reset, (i, r.error)
                assert r.globals == {"c": expected}, i
                await _cancel_after(ex, SPIN, (i % 8) * 0.0005)

        asyncio.run(main())
        r = ex.execute("", return_globals=["c"])
        assert not r.state_reset and r.globals == {"c": expected}


def test_a_cancel_before_the_request_reaches_the_interpreter_keeps_the_state(monkeypatch):
    """The race behind the soak test's state losses and this file's flaky between-turns
    test: a cancel that lands after the call took the executor and its interpreter, but
    before the request reached that interpreter, stops the idle interpreter. The call then
    finds it dead; it used to replace it by a fresh one (the agent lost its variables, and
    the next result said state_reset=True for a call that never ran). The interpreter is
    restored from the image of its last answered call instead, and the cancelled call
    never runs."""
    from wasm_exec.session import Session

    real_call = Session.call
    entered = threading.Event()

    def call(self, *args, **kwargs):
        if not entered.is_set():
            entered.set()
            # the cancel lands here (the test cancels once this is reached) and stops the
            # interpreter between turns; then the request is handed over
            deadline = time.monotonic() + 10
            while self.alive and time.monotonic() < deadline:
                time.sleep(0.005)
            assert not self.alive
        return real_call(self, *args, **kwargs)

    with PythonExecExecutor(timeout_seconds=10) as ex:
        ex.execute("c = 5")
        monkeypatch.setattr(Session, "call", call)

        async def main() -> None:
            task = asyncio.ensure_future(ex.aexecute("c = 1000", return_globals=["c"]))
            while not entered.is_set():
                await asyncio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        r = ex.execute(INC, return_globals=["c"])
        assert r.success, r.error
        assert not r.state_reset and r.globals == {"c": 6}
