"""Per-agent executors, eviction, async (issue 4)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from wasm_exec import ConfigurationError, ExecutorClosedError, PythonExecExecutorResolver


def test_same_agent_same_executor_state_kept():
    with PythonExecExecutorResolver(whitelisted_imports=["math"]) as res:
        a = res.resolve("a")
        a.execute("import math\nv = math.floor(2.5)")
        assert res.resolve("a") is a
        assert res.resolve("a").execute("", return_globals=["v"]).globals == {"v": 2}


def test_agents_are_isolated():
    with PythonExecExecutorResolver() as res:
        res.resolve("a").execute("secret = 1")
        r = res.resolve("b").execute("", return_globals=["secret"])
        assert "secret" in r.globals_errors


def test_scoped_ids_stay_apart():
    with PythonExecExecutorResolver() as res:
        assert res.resolve("agent", "guild1") is not res.resolve("agent", "guild2")


def test_accepts_json_like_config():
    # framework configs arrive as JSON: lists, not sets
    with PythonExecExecutorResolver(whitelisted_imports=["json", "math"],
                                    default_imports={"m": "math"},
                                    timeout_seconds=5) as res:
        r = res.resolve("a").execute("x = m.sqrt(9)", return_globals=["x"])
        assert r.globals == {"x": 3.0}
        assert res.limits.timeout_seconds == 5


def test_bad_config():
    with pytest.raises(ConfigurationError):
        PythonExecExecutorResolver(max_agents=0)
    with pytest.raises(ConfigurationError):
        PythonExecExecutorResolver(whitelisted_imports="json")


def test_max_agents_evicts_least_recently_used():
    # (without parking: an evicted agent is reset; tests/test_parking.py parks them)
    with PythonExecExecutorResolver(max_agents=2, idle_timeout_seconds=None, park=False) as res:
        res.resolve("a").execute("v = 'a'")
        res.resolve("b").execute("v = 'b'")
        res.resolve("c").execute("v = 'c'")  # a is evicted
        assert len(res.live_agents()) <= 2
        r = res.resolve("a").execute("", return_globals=["v"])
        assert r.state_reset and r.reset_reason == "evicted" and "v" in r.globals_errors
        r = res.resolve("c").execute("", return_globals=["v"])
        assert r.globals == {"v": "c"} and not r.state_reset


def test_idle_timeout_releases_interpreter():
    with PythonExecExecutorResolver(idle_timeout_seconds=0.3, park=False) as res:
        ex = res.resolve("a")
        ex.execute("v = 1")
        deadline = time.monotonic() + 5
        while ex.has_interpreter and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not ex.has_interpreter
        r = ex.execute("", return_globals=["v"])
        assert r.state_reset and "v" in r.globals_errors
        assert ex.execute("w = 2", return_globals=["w"]).globals == {"w": 2}


def test_close_ends_everything():
    res = PythonExecExecutorResolver()
    a = res.resolve("a")
    a.execute("x = 1")
    res.close()
    assert a.closed
    with pytest.raises(ExecutorClosedError):
        res.resolve("b")


def test_thread_safe_resolve():
    with PythonExecExecutorResolver(max_agents=8) as res:
        got: dict[int, object] = {}

        def work(i: int) -> None:
            ex = res.resolve(f"agent-{i % 3}")
            got[i] = ex
            ex.execute(f"n = {i}")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({id(got[i]) for i in range(9)}) == 3


# ------------------------------------------------------------------------ async
def test_aexecute_does_not_block_the_loop(ex):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        r = await ex.aexecute("s = 0\nfor i in range(300_000): s += i", return_globals=["s"])
        t.cancel()
        return r, ticks

    r, ticks = asyncio.run(main())
    assert r.globals["s"] == sum(range(300_000))
    assert ticks >= 3


def test_async_timeout_really_stops_the_guest(make_executor):
    ex = make_executor(fuel=None, timeout_seconds=30)
    ex.execute("counter = 0")

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ex.aexecute("while True:\n    counter += 1"), 0.3)

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 5
    # nothing keeps running the agent's code: the cancelled call was rolled back, so the
    # agent's state is as after its last call
    r = ex.execute("", return_globals=["counter"])
    assert not r.state_reset and r.globals == {"counter": 0}
    assert not [t for t in threading.enumerate() if t.name == "wasm-exec-session"
                and not t.daemon]


def test_an_executor_is_not_released_from_inside_its_own_work():
    """The executor's lock is re-entrant: a release() made by the thread that is inside
    the executor's own work (its on_session_start hook, where a resolver evicts others)
    used to succeed and report an eviction of an executor that was busy. It is refused,
    as for a call that is running."""
    from wasm_exec import PythonExecExecutor

    with PythonExecExecutor(timeout_seconds=10) as ex:
        ex.execute("c = 1")
        answers = []
        ex.on_session_start = lambda e: answers.append(e.release())
        ex.reset()
        assert answers == [False]
        assert ex.has_interpreter
        r = ex.execute("", return_globals=["c"])
        assert r.state_reset and r.reset_reason == "reset" and "c" in r.globals_errors
