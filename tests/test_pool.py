"""Pre-started interpreters (issue 5)."""

from __future__ import annotations

import time

from wasm_exec import PythonExecExecutor, SessionPool


def test_pool_hands_out_ready_interpreters_and_refills():
    with SessionPool(size=2, refill_delay=0) as pool:
        a = PythonExecExecutor(pool=pool, default_imports={"js": "json"})
        deadline = time.monotonic() + 20
        while pool.ready_count(a._key) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.ready_count(a._key) == 2
        b = PythonExecExecutor(pool=pool, default_imports={"js": "json"})
        assert pool.ready_count(a._key) == 1
        a.execute("v = 'a'")
        r = b.execute("w = js.dumps(1)", return_globals=["w", "v"])
        assert r.globals == {"w": "1"} and "v" in r.globals_errors  # isolated, defaults bound
        a.close()
        b.close()


def test_pool_serves_reset_after_a_limit():
    with SessionPool(size=1, refill_delay=0) as pool:
        ex = PythonExecExecutor(pool=pool, fuel=50_000_000, rollback=False)
        ex.execute("keep = 1")
        time.sleep(1)
        assert ex.execute("while True: pass").limit == "fuel"
        t = time.perf_counter()
        r = ex.execute("x = 1", return_globals=["x"])
        assert r.success and r.state_reset
        assert time.perf_counter() - t < 0.5
        ex.close()


def test_spare_interpreter_after_a_stop_without_pool():
    ex = PythonExecExecutor(fuel=50_000_000, rollback=False)
    try:
        assert ex.execute("while True: pass").limit == "fuel"
        time.sleep(1)  # the replacement boots in the background meanwhile
        t = time.perf_counter()
        r = ex.execute("x = 1", return_globals=["x"])
        assert r.success and r.state_reset and time.perf_counter() - t < 0.05
    finally:
        ex.close()
