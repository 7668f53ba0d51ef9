"""The host keeps its promises under hostile agents and careless callers (issue 13).

Each test names the class of defect of issue 13 it guards against, and fails on the code
before its fix.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest
from pydantic import ValidationError

from wasm_exec import (
    ConfigurationError,
    InputError,
    Limits,
    PythonExecExecutor,
    PythonExecExecutorResolver,
    SessionPool,
)
from wasm_exec.protocol import MAX_JSON_DEPTH


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


# ------------------------------------------------------------ caller input (class 7)
def _nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _state_kept(ex) -> bool:
    r = ex.execute("", return_globals=["keep"])
    return r.globals == {"keep": 1} and not r.state_reset


def test_lone_surrogate_in_code_is_refused_before_anything_runs(ex):
    ex.execute("keep = 1")
    with pytest.raises(InputError, match="surrogate"):
        ex.execute("x = '\ud800'")
    assert _state_kept(ex)


def test_lone_surrogate_in_globals_is_handled(ex):
    ex.execute("keep = 1")
    r = ex.execute("n = len(s) + len(d['k'][0])",
                   globals_dict={"s": "a\ud800b", "d": {"k": ["\udfff"], "\udc80": 1}},
                   return_globals=["n", "s"])
    assert r.success, r.error
    assert r.globals == {"n": 4, "s": "a\ud800b"}
    assert _state_kept(ex)


def test_lone_surrogates_made_by_the_agent_cost_nothing(ex):
    # an exception message or a returned value with a lone surrogate is answered like any
    # other, never by losing the interpreter
    ex.execute("keep = 1")
    r = ex.execute("raise ValueError('bad ' + chr(0xd800))")
    assert not r.success and r.error_type == "ValueError" and not r.interpreter_lost
    assert r.error_message == "bad \ud800"
    r = ex.execute("s = chr(0xdc00) * 3\nt = {chr(0xd800): [chr(0xdbff)]}",
                   return_globals=["s", "t"])
    assert r.success and r.globals == {"s": "\udc00" * 3, "t": {"\ud800": ["\udbff"]}}
    assert _state_kept(ex)


def test_input_nested_up_to_the_documented_depth_works(ex):
    ex.execute("keep = 1")
    for levels in (MAX_JSON_DEPTH - 8, MAX_JSON_DEPTH):
        value = _nested(levels)
        r = ex.execute("d = 0\nx = v\nwhile x:\n    x = x[0]\n    d += 1",
                       globals_dict={"v": value}, return_globals=["d"])
        assert r.success, r.error
        assert r.globals == {"d": levels - 1}
        d: dict = {}
        for _ in range(levels - 1):
            d = {"k": d}
        assert ex.execute("y = 1", globals_dict={"v": d}).success
    assert _state_kept(ex)


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 499, 500, 501, 5000])
def test_input_nested_deeper_is_refused_up_front(ex, levels):
    ex.execute("keep = 1")
    with pytest.raises(InputError, match="nested more than"):
        ex.execute("y = 1", globals_dict={"v": _nested(levels)})
    d: dict = {}
    for _ in range(levels - 1):
        d = {"k": d}
    with pytest.raises(InputError, match="nested more than"):
        ex.execute("y = 1", globals_dict={"v": [1, "a", d]})
    assert _state_kept(ex)


@pytest.mark.parametrize("fuel", [2**64, 2**64 + 5, 10**30])
def test_fuel_wasmtime_cannot_hold_is_refused_by_validation(fuel):
    with pytest.raises(ValidationError, match="fuel"):
        Limits(fuel=fuel)
    with pytest.raises(ConfigurationError, match="at most"):
        PythonExecExecutor(fuel=fuel)
    with PythonExecExecutor(timeout_seconds=10) as ex:
        ex.execute("keep = 1")
        with pytest.raises(InputError, match="at most"):
            ex.execute("x = 1", limits={"fuel": fuel})
        assert _state_kept(ex)


def test_largest_fuel_is_accepted():
    with PythonExecExecutor(fuel=2**64 - 1, timeout_seconds=10) as ex:
        r = ex.execute("x = sum(range(1000))", return_globals=["x"])
        assert r.success and r.globals == {"x": 499500}


@pytest.mark.parametrize("overrides", [
    {"timeout_seconds": True}, {"fuel": True}, {"memory_bytes": True},
    {"max_output_bytes": True}, {"max_code_bytes": False}, {"max_globals_bytes": True},
    {"timeout_seconds": float("nan")}, {"timeout_seconds": float("inf")},
    {"timeout_seconds": -1}, {"fuel": -5}, {"fuel": 0}, {"memory_bytes": -1},
    {"max_output_bytes": 2**70}, {"max_code_bytes": 2**70}, {"max_globals_bytes": 2**70},
    {"timeout_seconds": 10**400}, {"fuel": float("nan")}, {"fuel": 1_500_000.5},
])
def test_nonsense_limits_are_refused(overrides):
    with pytest.raises(ValidationError):
        Limits(**overrides)


@pytest.mark.parametrize("kwargs", [
    {"max_agents": True}, {"max_agents": 1.5}, {"pool_size": -1}, {"pool_size": 1.5},
    {"idle_timeout_seconds": float("nan")}, {"idle_timeout_seconds": float("inf")},
    {"idle_timeout_seconds": 0},
])
def test_nonsense_resolver_options_are_refused(kwargs):
    with pytest.raises(ConfigurationError):
        PythonExecExecutorResolver(**kwargs)


# ------------------------------------------------------------------ leaks (class 5)
def _session_threads() -> int:
    """Interpreter threads, leaving out those the process-wide warm-start cache keeps
    restored ahead (one per configuration, owned and freed by that cache)."""
    from wasm_exec import supply as pool

    standby = {s._thread for s in list(pool._standby.values())}
    return sum(1 for t in threading.enumerate()
               if t.name == "wasm-exec-session" and t not in standby)


def _settle(count, target: int, seconds: float = 10.0) -> int:
    deadline = time.monotonic() + seconds
    while count() > target and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    return count()


def test_executor_dropped_unclosed_after_a_limit_frees_its_spare():
    before = _session_threads()
    ex = PythonExecExecutor(timeout_seconds=0.5, fuel=None, rollback=False)  # (the spare path)
    r = ex.execute("while True: pass")
    assert r.limit == "timeout"
    spare = ex._supply.spare_thread  # the interpreter booted in the background for the next call
    assert spare is not None
    spare.join(60)
    assert _session_threads() == before + 1  # the spare, waiting
    del ex, r, spare
    gc.collect()
    assert _settle(_session_threads, before) == before


def test_executor_dropped_while_its_spare_boots_frees_it():
    before = _session_threads()
    ex = PythonExecExecutor(timeout_seconds=0.5, fuel=None, rollback=False)  # (the spare path)
    assert ex.execute("while True: pass").limit == "timeout"
    del ex  # the spare is still booting: it must not outlive the executor
    gc.collect()
    time.sleep(1.5)
    assert _settle(_session_threads, before) == before


# ----------------------------------------------------------- cancellation (class 4)
def test_cancelling_a_waiting_call_stops_neither_it_nor_the_running_one(make_executor):
    ex = make_executor(whitelisted_imports=["time"])
    ex.execute("keep = 1")

    async def main():
        running = asyncio.create_task(ex.aexecute(
            "import time\ntime.sleep(1.2)\nfirst = 1", return_globals=["first"]))
        await asyncio.sleep(0.3)  # the first call is running
        waiting = asyncio.create_task(ex.aexecute("second = 1"))
        await asyncio.sleep(0.2)  # the second waits for the executor
        cancelled_at = time.monotonic()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # the cancel returned at once (it did not wait for the running call to end)
        assert time.monotonic() - cancelled_at < 0.5
        assert not running.done()
        return await running

    first = asyncio.run(main())
    assert first.success and first.globals == {"first": 1}
    assert not first.interpreter_lost and first.limit is None
    time.sleep(0.3)  # a cancelled call that ran anyway would have run by now
    r = ex.execute("", return_globals=["keep", "first", "second"])
    assert r.globals == {"keep": 1, "first": 1} and not r.state_reset
    assert "second" in r.globals_errors  # the cancelled call never ran


def test_cancelling_the_running_call_lets_the_waiting_one_run(make_executor):
    ex = make_executor(whitelisted_imports=["time"])
    ex.execute("keep = 1")

    async def main():
        running = asyncio.create_task(ex.aexecute("import time\ntime.sleep(30)"))
        await asyncio.sleep(0.3)
        waiting = asyncio.create_task(ex.aexecute("second = 2",
                                                  return_globals=["second", "keep"]))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert time.monotonic() - started < 5
        return await waiting

    second = asyncio.run(main())
    # the waiting call was not cancelled with it: it ran, on the interpreter as the
    # cancelled call found it (that call was rolled back)
    assert second.success and second.globals == {"second": 2, "keep": 1}, second
    assert not second.state_reset


def test_aexecute_takes_the_options_of_execute(ex):
    r = asyncio.run(ex.aexecute("6 * 7", display=True))
    assert r.stdout == "42\n"
    r = asyncio.run(ex.aexecute("z = 3", return_all=True))
    assert r.globals["z"] == 3


def test_returned_values_nested_deeper_are_a_per_name_error(ex):
    ex.execute("keep = 1")
    r = ex.execute(f"ok = []\nfor _ in range({MAX_JSON_DEPTH} - 1): ok = [ok]\n"
                   f"deep = []\nfor _ in range({MAX_JSON_DEPTH}): deep = [deep]\n"
                   "deeper = []\nfor _ in range(5000): deeper = [deeper]",
                   return_globals=["ok", "deep", "deeper", "keep"])
    assert r.success and r.globals["keep"] == 1
    assert r.globals["ok"] == _nested(MAX_JSON_DEPTH)
    assert set(r.globals_errors) == {"deep", "deeper"}
    assert "nested" in r.globals_errors["deep"]
    assert _state_kept(ex)



# ------------------------------------------------ agent code in the trusted path (class 8)
HOSTILE = '''
calls = []
class D(dict):
    def items(self):
        calls.append("D.items")
        while True: pass
    def keys(self):
        calls.append("D.keys")
        while True: pass
    def __iter__(self):
        calls.append("D.__iter__")
        while True: pass
    def __getitem__(self, k):
        calls.append("D.__getitem__")
        while True: pass
    def __len__(self):
        calls.append("D.__len__")
        return 0
class L(list):
    def __iter__(self):
        calls.append("L.__iter__")
        while True: pass
    def __len__(self):
        calls.append("L.__len__")
        return 0
    def __getitem__(self, i):
        calls.append("L.__getitem__")
        while True: pass
class T(tuple):
    def __iter__(self):
        calls.append("T.__iter__")
        while True: pass
    def __getitem__(self, i):
        calls.append("T.__getitem__")
        while True: pass
class S(str):
    def __str__(self):
        calls.append("S.__str__")
        while True: pass
    def __repr__(self):
        calls.append("S.__repr__")
        while True: pass
    __hash__ = str.__hash__  # (the dict literal below hashes the keys)
    def __eq__(self, other):
        calls.append("S.__eq__")
        while True: pass
    def __radd__(self, other):
        calls.append("S.__radd__")
        while True: pass
class I(int):
    def __index__(self):
        calls.append("I.__index__")
        while True: pass
    def __repr__(self):
        calls.append("I.__repr__")
        while True: pass
    def __int__(self):
        calls.append("I.__int__")
        while True: pass
    __hash__ = int.__hash__
class F(float):
    def __repr__(self):
        calls.append("F.__repr__")
        while True: pass
    def __float__(self):
        calls.append("F.__float__")
        while True: pass
class Meta(type):
    def __eq__(cls, other):
        calls.append("Meta.__eq__")
        while True: pass
    __hash__ = type.__hash__
class Odd(metaclass=Meta):
    @property
    def __class__(self):
        calls.append("Odd.__class__")
        while True: pass
Odd.__qualname__ = S("Odd")  # (an error message names the class: S.__radd__ must not run)
d = D(a=1, b=[1, 2])
l = L([1, "x", [2]])
t = T((1, (2, 3)))
s = S("text")
i = I(7)
f = F(2.5)
nested = {"d": D(x=L([F(1.5), I(3)])), "t": T((S("u"),))}
keys = {S("k"): 1, I(5): 2, F(0.5): 3}
odd = Odd()
odd_list = [Odd()]
flat = D({S("k1"): 1, S("k2"): "v"})  # (a dict subclass holding no container)
def evil_hash(self):
    calls.append("S.__hash__")
    while True: pass
S.__hash__ = evil_hash  # (after the dicts above were built)
'''


def test_returned_values_are_converted_without_agent_methods(ex):
    ex.execute("keep = 1")
    names = ["d", "l", "t", "s", "i", "f", "nested", "keys", "odd", "odd_list", "flat"]
    r = ex.execute(HOSTILE, return_globals=names, limits={"timeout_seconds": 5})
    assert r.success, r.error
    assert r.limit is None and not r.interpreter_lost
    # subclasses of JSON types are read with the base type's own functions
    assert r.globals["d"] == {"a": 1, "b": [1, 2]}
    assert r.globals["l"] == [1, "x", [2]]
    assert r.globals["t"] == [1, [2, 3]]
    assert r.globals["s"] == "text" and r.globals["i"] == 7 and r.globals["f"] == 2.5
    assert r.globals["nested"] == {"d": {"x": [1.5, 3]}, "t": ["u"]}
    assert r.globals["keys"] == {"k": 1, "5": 2, "0.5": 3}
    assert r.globals["flat"] == {"k1": 1, "k2": "v"}
    # other objects are a per-name error, whatever their class claims
    assert set(r.globals_errors) == {"odd", "odd_list"}
    assert "JSON" in r.globals_errors["odd"]
    r = ex.execute("", return_globals=["calls", "keep"])
    assert r.globals == {"calls": [], "keep": 1}, r.globals
    assert _state_kept(ex)


def test_return_all_runs_no_agent_method(ex):
    ex.execute("keep = 1")
    r = ex.execute(HOSTILE, return_all=True, limits={"timeout_seconds": 5})
    assert r.success and r.limit is None, r.error
    assert r.globals["d"] == {"a": 1, "b": [1, 2]} and r.globals["keep"] == 1
    r = ex.execute("", return_globals=["calls"])
    assert r.globals == {"calls": []}
    assert _state_kept(ex)


def test_a_dict_subclass_whose_items_never_ends_costs_nothing(ex):
    # the example of issue 13: the call used to time out and lose the interpreter
    ex.execute("keep = 1")
    r = ex.execute("class D(dict):\n    def items(self):\n        while True: yield 1\n"
                   "x = D(a=1)", return_globals=["x"], limits={"timeout_seconds": 5})
    assert r.success and r.globals == {"x": {"a": 1}}
    assert _state_kept(ex)


def test_a_planted_namespace_key_is_not_compared_when_returning(ex):
    # a key whose hash equals a returned name's: looking the name up would call its __eq__
    ex.execute("keep = 1")
    r = ex.execute(
        "calls = []\n"
        "armed = []\n"
        "class K:\n"
        "    def __hash__(self): return hash('target')\n"
        "    def __eq__(self, other):\n"
        "        if armed:\n"
        "            calls.append('K.__eq__')\n"
        "            while True: pass\n"
        "        return False\n"
        "globals()[K()] = 1\n"  # (first: a lookup of 'target' meets it before 'target')
        "target = 5\n"
        "armed.append(1)\n", return_globals=["target", "missing"],
        limits={"timeout_seconds": 5})
    assert r.success and r.globals == {"target": 5}, r.error
    assert "missing" in r.globals_errors
    r = ex.execute("", return_all=True, limits={"timeout_seconds": 5})
    assert r.success and r.globals["target"] == 5 and r.globals["calls"] == []


# ------------------------------------------------- an agent bricking its interpreter (class 9)
BRICKS = {
    "display_sets_builtins_underscore": ("2 + 2", True),
    "builtins_underscore": ("import builtins\nbuiltins._ = 5", False),
    "close_dunder_stdout": ("import sys\nsys.__stdout__.close()", False),
    "close_stdout": ("import sys\nsys.stdout.close()", False),
    "close_stderr": ("import sys\nsys.stderr.close()", False),
    "close_stdout_buffer": ("import sys\nsys.stdout.buffer.close()", False),
    "close_stdout_raw": ("import sys\nsys.stdout.buffer.raw.close()", False),
    "detach_stdout": ("import sys\nsys.stdout.detach()", False),
    "detach_stdout_buffer": ("import sys\nsys.stdout.buffer.detach()", False),
    "reconfigure_stdout": ("import sys\nsys.stdout.reconfigure(errors='strict', "
                           "line_buffering=False)", False),
    "stdout_write_attribute": ("import sys\nsys.stdout.write = None\n"
                               "sys.stdout.buffer.write = None", False),
    "junk_stdout": ("import sys\nsys.stdout = 42\nsys.stderr = None", False),
    "del_builtins_print": ("import builtins\ndel builtins.print", False),
    "replace_builtins_str": ("import builtins\nbuiltins.str = int", False),
    "del_agent_builtins_print": ("del __builtins__['print']", False),
    "agent_import_none": ("__builtins__['__import__'] = None", False),
    "rebind_agent_builtins": ("__builtins__ = 5", False),
}


@pytest.mark.parametrize("name", sorted(BRICKS))
def test_the_next_call_works_whatever_the_agent_did(make_executor, name):
    code, display = BRICKS[name]
    ex = make_executor(whitelisted_imports=["sys", "builtins", "json"])
    ex.execute("keep = 1")
    ex.execute(code, display=display)
    for _ in range(2):
        r = ex.execute("import json\nprint('out')\nimport sys\nprint('err', file=sys.stderr)\n"
                       "x = json.dumps([1])", return_globals=["x", "keep"])
        assert r.success, (name, r.error)
        assert r.stdout == "out\n" and r.stderr == "err\n", (name, r.stdout, r.stderr)
        assert r.globals == {"x": "[1]", "keep": 1} and not r.state_reset


def test_a_benign_display_keeps_imports_working_in_the_repl_way(make_executor):
    ex = make_executor(whitelisted_imports=["json", "math"])
    for source in ("2 + 2", "import math", "math.sqrt(16)", "import json", "json.dumps(3)"):
        r = ex.execute(source, display=True)
        assert r.success, (source, r.error)
    assert r.stdout == "'3'\n"


def _named(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name)


def test_resolver_dropped_unclosed_frees_its_interpreters():
    sessions, reapers = _session_threads(), _named("wasm-exec-resolver-reaper")
    res = PythonExecExecutorResolver(pool_size=1, idle_timeout_seconds=60)
    res.resolve("a").execute("x = 1")
    res.resolve("b", "g").execute("y = 1")
    assert _session_threads() > sessions
    del res
    gc.collect()
    assert _settle(_session_threads, sessions) == sessions
    assert _settle(lambda: _named("wasm-exec-resolver-reaper"), reapers) == reapers


def test_pool_dropped_unclosed_frees_its_ready_interpreters():
    sessions = _session_threads()
    pool = SessionPool(size=2, refill_delay=0)
    with PythonExecExecutor(pool=pool) as ex:
        ex.execute("x = 1")
    deadline = time.monotonic() + 10
    while _session_threads() < sessions + 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the pool refills
    assert _session_threads() == sessions + 2
    del pool, ex
    gc.collect()
    assert _settle(_session_threads, sessions) == sessions


# ------------------------------------------- replies that outgrow the host's cap (classes 7, 9)
def test_many_return_names_are_answered_or_refused_never_the_state(ex):
    ex.execute("keep = 1")
    r = ex.execute("", return_globals=[f"n{i}" for i in range(9_999)] + ["keep"])
    assert r.success and r.globals == {"keep": 1} and len(r.globals_errors) == 9_999
    with pytest.raises(InputError, match="at most"):
        ex.execute("", return_globals=[f"n{i}" for i in range(10_001)])
    with pytest.raises(InputError, match="at most"):
        ex.execute("", return_globals=["a" * 1001])
    r = ex.execute("", return_globals=["b" * 1000, "keep"])
    assert r.success and r.globals == {"keep": 1} and "not defined" in r.globals_errors["b" * 1000]
    assert _state_kept(ex)


def test_huge_error_texts_are_shortened_not_the_cause_of_a_lost_interpreter(ex):
    ex.execute("keep = 1")
    r = ex.execute("raise ValueError('x' * 20_000_000)")
    assert not r.success and r.error_type == "ValueError" and not r.interpreter_lost
    assert 1_000 < len(r.error_message) <= 20_000
    assert len(r.traceback) <= 60_000 and r.traceback.rstrip().endswith("x")
    r = ex.execute("class C: pass\nC.__qualname__ = 'Q' * 3_000_000\n"
                   "a = C(); b = C(); c = C(); d = C(); e = C(); f = C()",
                   return_globals=list("abcdef") + ["keep"])
    assert r.success and r.globals == {"keep": 1} and set(r.globals_errors) == set("abcdef")
    assert all(len(v) <= 500 for v in r.globals_errors.values())
    assert _state_kept(ex)


def test_return_all_stays_within_the_cap_counting_the_names(make_executor):
    ex = make_executor(limits={"max_globals_bytes": 100_000})
    ex.execute("keep = 1")
    r = ex.execute("g = globals()\nfor i in range(20_000): g['v%05d' % i] = i", return_all=True)
    assert r.success, r.error
    assert 0 < sum(len(k) + len(str(v)) for k, v in r.globals.items()) <= 100_000
    assert _state_kept(ex)


def test_a_wide_cycle_is_reported_at_once(make_executor):
    # the module's own namespace holds itself: found at the second level, not after 400
    ex = make_executor(timeout_seconds=5)
    r = ex.execute("g = globals()\nfor i in range(3000): g['v%d' % i] = [i]",
                   return_globals=["g"])
    assert r.success and "cycle" in r.globals_errors["g"], r.error
    assert r.globals_errors["g"].startswith("value contains a reference cycle")
    assert r.fuel_used < 2_000_000_000  # (71 billion, and 17 s, before)


def test_the_agent_still_cannot_open_the_standard_descriptors(make_executor):
    # the runner may re-open its own stdout and stderr (write only) when the agent broke
    # them; the agent itself opens no descriptor, by any route
    ex = make_executor(whitelisted_imports=["io", "sys", "codecs", "functools"])
    for code in ("import io\nio.FileIO(1, 'wb', closefd=False)",
                 "import io\nio.FileIO(2, 'wb', closefd=False)",
                 "open(1, 'w', closefd=False)",
                 "import sys\nsys.stdout.buffer.raw.__init__(0, 'rb', closefd=False)",
                 # an encoder that opens fd 1 for reading, called when the runner
                 # re-initialises the stream it (first) breaks
                 "import sys, codecs, io, functools\n"
                 "info = codecs.lookup('utf-8')\n"
                 "info.incrementalencoder = functools.partial(io.FileIO, 1, 'rb')\n"
                 "sys.stdout.close()"):
        r = ex.execute(code)
        r2 = ex.execute("print('fine')")
        assert r2.success and r2.stdout == "fine\n", (code, r2.error)
        if "partial" in code:
            assert r.success, r.error  # (the runner re-opened the file, not the encoder)
        else:
            assert not r.success and "descriptor" in (r.error or ""), (code, r.error)
    # the planted encoder is called (and refused) if the text layer has to be rebuilt
    r = ex.execute("import sys\nsys.stdout.detach()")
    r = ex.execute("print('after')")
    assert not r.success and "uninitialized" in (r.error or "")
