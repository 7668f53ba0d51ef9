"""Cancelling ``aexecute`` never costs the agent its state, nor hides a reset (found by
the soak test, tests/test_soak.py)."""

from __future__ import annotations

import asyncio

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
