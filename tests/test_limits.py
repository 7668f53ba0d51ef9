"""Fuel, deadline, memory and output limits (issue 2)."""

from __future__ import annotations

import time

import pytest

from wasm_exec import ConfigurationError, InputError, Limits, PythonExecExecutor


def _after_reset_works(ex, *, defaults=None):
    r = ex.execute("after = 1", return_globals=["after"])
    assert r.success and r.globals == {"after": 1}
    # (the stopped call was rolled back, or, with rollback=False, the interpreter replaced)
    assert not r.interpreter_lost
    return r


def test_fuel_limit_names_the_budget(make_executor):
    ex = make_executor(fuel=50_000_000)
    ex.execute("before = 1")
    r = ex.execute("while True:\n    pass")
    assert not r.success and r.limit == "fuel"
    assert "50000000" in r.error and r.rolled_back and not r.interpreter_lost
    r = ex.execute("x = 1", return_globals=["x", "before"])
    assert not r.state_reset and r.globals == {"x": 1, "before": 1}


def test_fuel_stop_without_rollback_resets(make_executor):
    ex = make_executor(fuel=50_000_000, rollback=False)
    ex.execute("before = 1")
    r = ex.execute("while True:\n    pass")
    assert r.limit == "fuel" and r.interpreter_lost and not r.rolled_back
    r = ex.execute("x = 1", return_globals=["x", "before"])
    assert r.state_reset and r.globals == {"x": 1} and "before" in r.globals_errors


def test_fuel_override_per_call(make_executor):
    ex = make_executor()
    r = ex.execute("s = 0\nfor i in range(100_000): s += i", limits={"fuel": 5_000_000})
    assert r.limit == "fuel"
    r = ex.execute("s = 0\nfor i in range(100_000): s += i", return_globals=["s"])
    assert r.success and r.globals["s"] == sum(range(100_000)) and not r.state_reset


def test_fuel_used_is_reported(ex):
    small = ex.execute("x = 1").fuel_used
    big = ex.execute("s = 0\nfor i in range(100_000): s += i").fuel_used
    assert small and big and big > 10 * small


def test_timeout_stops_busy_loop(make_executor):
    ex = make_executor(timeout_seconds=0.5, fuel=None)
    t = time.monotonic()
    r = ex.execute("while True:\n    pass")
    assert time.monotonic() - t < 3
    assert not r.success and r.limit == "timeout" and "0.5" in r.error
    _after_reset_works(ex)


def test_timeout_ends_sleep(make_executor):
    ex = make_executor(timeout_seconds=0.5, whitelisted_imports=["time"])
    t = time.monotonic()
    r = ex.execute("import time\nprint('before')\ntime.sleep(3600)")
    assert time.monotonic() - t < 3
    assert r.limit == "timeout" and r.stdout == "before\n"
    _after_reset_works(ex)


def test_sleep_within_deadline_sleeps(make_executor):
    ex = make_executor(whitelisted_imports=["time"])
    r = ex.execute("import time\nt = time.monotonic()\ntime.sleep(0.2)\nd = time.monotonic() - t",
                   return_globals=["d"])
    assert 0.19 <= r.globals["d"] < 1.0


def test_timeout_override_per_call(make_executor):
    ex = make_executor(whitelisted_imports=["time"])
    r = ex.execute("import time\ntime.sleep(5)", limits={"timeout_seconds": 0.3})
    assert r.limit == "timeout"


def test_except_baseexception_cannot_swallow_limits(make_executor):
    ex = make_executor(timeout_seconds=0.5, fuel=200_000_000)
    code = ("while True:\n    try:\n        while True: pass\n"
            "    except BaseException:\n        pass\n")
    r = ex.execute(code)
    assert r.limit in ("fuel", "timeout")
    _after_reset_works(ex)


def test_memory_cap_raises_memoryerror_and_survives(make_executor):
    ex = make_executor(memory_bytes=64 * 1024 * 1024)
    ex.execute("keep = 'me'")
    r = ex.execute("b = bytearray(200 * 1024 * 1024)")
    assert not r.success and r.error_type == "MemoryError" and not r.interpreter_lost
    r = ex.execute("", return_globals=["keep"])
    assert r.globals == {"keep": "me"} and not r.state_reset


def test_memory_cap_with_growing_list(make_executor):
    ex = make_executor(memory_bytes=64 * 1024 * 1024)
    r = ex.execute("x = []\nwhile True:\n    x.append('y' * 10000)")
    assert not r.success and r.error_type == "MemoryError"
    assert ex.execute("del x\nz = 1", return_globals=["z"]).globals == {"z": 1}


FILL_LIST = "x = []\nwhile True:\n    x.append('y' * 10000)"
FILL_DICT = "d = {}\ni = 0\nwhile True:\n    d[i] = b'z' * 1000\n    i += 1"


def test_memory_exhausted_again_and_again_keeps_state(make_executor):
    # the runner's reserve is held only while the agent's code runs: after any number of
    # calls that each fill the memory, the next call still starts, and nothing is lost
    ex = make_executor(memory_bytes=64 * 1024 * 1024)
    assert ex.execute("keep = 41").success
    for fill in (FILL_LIST, FILL_LIST.replace("x", "w"), FILL_DICT, FILL_LIST.replace("x", "v")):
        r = ex.execute(fill)
        assert not r.success and r.error_type == "MemoryError", r.error
        assert not r.interpreter_lost and not r.state_reset
    r = ex.execute("del x, w, d, v\nkeep += 1", return_globals=["keep"])
    assert r.success and r.globals == {"keep": 42}, r.error


def test_memory_freed_serves_other_sizes(make_executor):
    # memory freed by small objects serves large ones (and the other way round): the
    # interpreter's allocator coalesces what is freed
    ex = make_executor(memory_bytes=64 * 1024 * 1024)
    assert ex.execute(FILL_DICT).error_type == "MemoryError"
    r = ex.execute("n = len(d)\ndel d\nbig = bytearray(24 << 20)\nk = len(big)",
                   return_globals=["k"])
    assert r.success and r.globals == {"k": 24 << 20}, r.error
    assert ex.execute("del big\nints = list(range(500_000))").success
    assert ex.execute("del ints\n" + FILL_LIST).error_type == "MemoryError"
    r = ex.execute("del x\nblobs = [bytes(1 << 20) for _ in range(24)]\nk = len(blobs)",
                   return_globals=["k"])
    assert r.success and r.globals == {"k": 24}, r.error


def test_memory_reserve_does_not_lift_the_cap(make_executor):
    # the reserve is memory of the interpreter's, under the same limit: what the agent can
    # hold, before and after running out, stays below memory_bytes
    cap = 64 * 1024 * 1024
    ex = make_executor(memory_bytes=cap)
    total = ("got = []\nn = 0\ntry:\n    while True:\n        got.append(bytearray(1 << 16))"
             "\n        n += 1 << 16\nexcept MemoryError:\n    pass\ndel got")
    sizes = []
    for _ in range(3):
        r = ex.execute(total, return_globals=["n"])
        assert r.success and 0 < r.globals["n"] < cap, r.error
        assert r.memory_bytes <= cap
        sizes.append(r.globals["n"])
    assert max(sizes) - min(sizes) < 2 << 20  # (no call gets the reserve on top)
    r = ex.execute("b = bytearray(" + str(cap - (1 << 20)) + ")")
    assert r.error_type == "MemoryError" and r.memory_bytes <= cap
    assert ex.execute("z = 1", return_globals=["z"]).globals == {"z": 1}


def test_output_cap_truncates_with_marker(make_executor):
    ex = make_executor(max_output_bytes=10_000)
    r = ex.execute("for i in range(5000):\n    print('line', i)")
    assert r.success and r.stdout_truncated
    assert len(r.stdout) < 10_200 and "[output truncated: stdout exceeded 10000 bytes]" in r.stdout
    r = ex.execute("print('small')")
    assert r.stdout == "small\n" and not r.stdout_truncated


def test_huge_power_is_stopped(make_executor):
    ex = make_executor(timeout_seconds=2, fuel=2_000_000_000)
    r = ex.execute("x = 10**10**8")
    assert not r.success and r.limit in ("fuel", "timeout")
    _after_reset_works(ex)


def test_infinite_iterator_sum(make_executor):
    ex = make_executor(timeout_seconds=1)
    r = ex.execute("sum(iter(int, 1))")
    assert r.limit in ("fuel", "timeout")
    _after_reset_works(ex)


def test_default_imports_rebound_after_reset(make_executor):
    ex = make_executor(default_imports={"js": "json"}, fuel=50_000_000, rollback=False)
    assert ex.execute("while True: pass").limit == "fuel"
    r = ex.execute("s = js.dumps([1])", return_globals=["s"])
    assert r.state_reset and r.globals == {"s": "[1]"}


def test_recursion_error_is_normal(ex):
    r = ex.execute("def f(n): return f(n + 1)\nf(0)")
    assert r.error_type == "RecursionError" and not r.interpreter_lost


def test_limits_validation():
    with pytest.raises(ValueError):
        Limits(timeout_seconds=0)
    with pytest.raises(ConfigurationError):
        PythonExecExecutor(timeout_seconds=-1)
    with pytest.raises(ConfigurationError):
        PythonExecExecutor(limits={"no_such_limit": 1})


def test_per_call_limit_validation(ex):
    with pytest.raises(InputError, match="unknown limit"):
        ex.execute("x = 1", limits={"bogus": 1})
    with pytest.raises(InputError):
        ex.execute("x = 1", limits={"timeout_seconds": -5})
    with pytest.raises(InputError, match="memory_bytes"):
        ex.execute("x = 1", limits={"memory_bytes": 128 * 1024 * 1024})


def test_fuel_off_executor(make_executor):
    ex = make_executor(fuel=None, timeout_seconds=0.5)
    r = ex.execute("x = 1", return_globals=["x"])
    assert r.success and r.fuel_used is None
    with pytest.raises(InputError, match="fuel metering"):
        ex.execute("x = 1", limits={"fuel": 10**9})
