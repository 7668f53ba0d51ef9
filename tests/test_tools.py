"""Host functions ("tools") the agent's code calls (issue 14, item 4), on both runtimes."""

from __future__ import annotations

import asyncio
import threading

import pytest

from wasm_exec import ConfigurationError, InputError, PythonExecExecutor
from wasm_exec import tools as tools_mod


def get_weather(city, unit="C", *, detail=False):
    if city == "Atlantis":
        raise ValueError(f"unknown city {city!r}")
    out = {"city": city, "temp": 21.5, "unit": unit}
    if detail:
        out["history"] = (1, 2.5, None, True, "\u00e9")
    return out


def test_a_tool_is_called_like_a_function(make):
    ex = make(tools={"get_weather": get_weather})
    r = ex.execute("a = get_weather('Paris')\n"
                   "b = get_weather('Oslo', unit='F', detail=True)\n"
                   "c = get_weather(*['Rome'], **{'unit': 'K'})\n"
                   "name = get_weather.__name__",
                   return_globals=["a", "b", "c", "name"])
    assert r.success, r.error
    assert r.globals == {
        "a": {"city": "Paris", "temp": 21.5, "unit": "C"},
        "b": {"city": "Oslo", "temp": 21.5, "unit": "F",
              "history": [1, 2.5, None, True, "\u00e9"]},
        "c": {"city": "Rome", "temp": 21.5, "unit": "K"},
        "name": "get_weather"}
    # the agent's state lives on as usual
    assert ex.execute("d = a['temp'] * 2", return_globals=["d"]).globals == {"d": 43.0}


def test_arguments_arrive_as_json_data(make):
    seen = []

    def echo(*args, **kwargs):
        seen.append((args, kwargs))
        return [list(args), kwargs]

    code = ("from collections import OrderedDict\n"
            "class S(str):\n    def __str__(self): raise RuntimeError('not called')\n"
            "class L(list):\n    def __iter__(self): raise RuntimeError('not called')\n"
            "class D(dict):\n    def items(self): raise RuntimeError('not called')\n"
            "out = echo((1, 2), S('s'), L([3]), D(k=4), {1: 'int key', None: 'x'},\n"
            "           float('nan') != float('nan'), big=10**30, ok=True)\n")
    ex = make(tools={"echo": echo}, whitelisted_imports=["collections"])
    r = ex.execute(code, return_globals=["out"])
    assert r.success, r.error
    assert r.globals["out"] == [[[1, 2], "s", [3], {"k": 4}, {"1": "int key", "null": "x"},
                                 True], {"big": 10**30, "ok": True}]
    assert seen[0][0][0] == [1, 2]  # tuples arrive as lists


@pytest.mark.parametrize("arg,words", [
    ("b'x'", "a bytes is not JSON data"),
    ("{1, 2}", "a set is not JSON data"),
    ("object()", "a object is not JSON data"),
    ("{(1, 2): 3}", "a dict key is a tuple"),
    ("10 ** 5000", "cannot be sent as JSON"),
])
def test_arguments_that_are_not_json_raise_typeerror_in_the_guest(make, arg, words):
    calls = []
    ex = make(tools={"echo": lambda *a: calls.append(a)})
    ex.execute("x = 1")
    r = ex.execute(f"echo({arg})")
    assert not r.success and r.error_type == "TypeError", r.error
    assert words in r.error_message and "echo()" in r.error_message
    assert calls == []  # never reached the host
    assert ex.execute("y = x", return_globals=["y"]).globals == {"y": 1}


def test_deep_arguments_are_refused(make):
    ex = make(tools={"echo": lambda a: a})
    r = ex.execute("v = []\nfor _ in range(1000):\n    v = [v]\necho(v)")
    assert r.error_type == "TypeError" and "nested more than" in r.error_message


def test_errors_of_the_host_function_come_back_as_tool_error(make):
    ex = make(tools={"get_weather": get_weather}, whitelisted_imports=["traceback"])
    r = ex.execute("import traceback\n"
                   "try:\n    get_weather('Atlantis')\n"
                   "except ToolError as e:\n"
                   "    got = [str(e), e.tool, e.error_type, type(e).__name__,\n"
                   "           isinstance(e, Exception)]\n"
                   "    text = traceback.format_exc()\n"
                   "    frames = []\n"
                   "    tb = e.__traceback__\n"
                   "    while tb is not None:\n"
                   "        frames.append(tb.tb_frame.f_code.co_filename)\n"
                   "        tb = tb.tb_next\n",
                   return_globals=["got", "text", "frames"])
    assert r.success, r.error
    assert r.globals["got"] == ["get_weather: ValueError: unknown city 'Atlantis'",
                                "get_weather", "ValueError", "ToolError", True]
    # the traceback holds the agent's frames and the stub's, nothing of the host's or
    # the runner's (and the agent can read it)
    assert set(r.globals["frames"]) == {"<cell-1>", "<wasm-exec-tool>"}
    assert "ToolError: get_weather: ValueError" in r.globals["text"]
    assert "tools.py" not in r.globals["text"] and "test_tools" not in r.globals["text"]
    # uncaught, it is the call's error
    r = ex.execute("get_weather('Atlantis')")
    assert r.error == "ToolError: get_weather: ValueError: unknown city 'Atlantis'"
    assert "tools.py" not in r.traceback and "<wasm-exec" not in r.traceback
    assert "line 1" in r.traceback


def test_results_that_are_not_json_or_too_large(make):
    ex = make(tools={"bad": lambda: {1, 2}, "huge": lambda: "x" * 6000,
                     "ok": lambda: "fine"}, limits={"max_globals_bytes": 4096})
    r = ex.execute("bad()")
    assert r.error_type == "ToolError" and "not JSON data" in r.error_message
    r = ex.execute("huge()")
    assert r.error_type == "ToolError" and "max_globals_bytes" in r.error_message
    r = ex.execute("echo_big = ok('y' * 6000)")
    assert r.error_type == "ToolError" and "max_globals_bytes" in r.error_message
    assert ex.execute("v = ok()", return_globals=["v"]).globals == {"v": "fine"}


def test_per_call_tools(make):
    ex = make(tools={"a": lambda: "executor's a", "b": lambda: "b"})
    r = ex.execute("x = [a(), b(), c()]", tools={"a": lambda: "call's a", "c": lambda: "c"},
                   return_globals=["x"])
    assert r.globals == {"x": ["call's a", "b", "c"]}, r.error
    # the next call offers the executor's tools only
    r = ex.execute("y = a()\nc()", return_globals=["y"])
    assert r.globals == {"y": "executor's a"}
    assert r.error == "NameError: name 'c' is not defined"
    # a stub kept from an earlier call reaches only the tools of the call running now
    ex.execute("keep = c", tools={"c": lambda: "c"})
    r = ex.execute("keep()")
    assert r.error_type == "ToolError" and "no tool named 'c' in this call" in r.error_message
    # a global of the same name hides a tool (it is a builtin of the namespace)
    r = ex.execute("a = 5\nz = a", return_globals=["z"])
    assert r.globals == {"z": 5}
    r = ex.execute("del a\nw = a()", return_globals=["w"])
    assert r.globals == {"w": "executor's a"}
    assert ex.tools.keys() == {"a", "b"}


def test_tools_without_tools(make):
    ex = make()
    r = ex.execute("ok = issubclass(ToolError, Exception)", return_globals=["ok"])
    assert r.globals == {"ok": True}


@pytest.mark.parametrize("name,words", [
    ("print", "hide Python's builtin"), ("open", "hide Python's builtin"),
    ("ToolError", "hide Python's builtin"), ("__import__", "starts with '_'"),
    ("_private", "starts with '_'"), ("class", "not a Python identifier"),
    ("get weather", "not a Python identifier"), ("caf\u00e9", "not a Python identifier"),
    ("x" * 101, "characters"), (3, "not a Python identifier"),
])
def test_tool_names_are_checked(name, words):
    with pytest.raises(ConfigurationError, match=words):
        PythonExecExecutor(tools={name: len})
    with PythonExecExecutor() as ex:
        with pytest.raises(InputError, match=words):
            ex.execute("pass", tools={name: len})


def test_tools_must_be_callables():
    with pytest.raises(ConfigurationError, match="not a callable"):
        PythonExecExecutor(tools={"f": 3})
    with pytest.raises(ConfigurationError, match="mapping"):
        PythonExecExecutor(tools=[len])  # type: ignore[arg-type]


def test_a_slow_tool_ends_the_call_at_its_deadline_and_the_call_rolls_back(make):
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait(60)
        finished.set()
        return "late"

    ex = make(tools={"slow": slow, "quick": lambda: "quick"})
    ex.execute("k = 1")
    r = ex.execute("k = 2\nv = slow()", limits={"timeout_seconds": 0.5})
    # the call ended while the host function still ran
    assert started.is_set() and not finished.is_set()
    assert r.limit == "timeout" and r.rolled_back and not r.interpreter_lost, r.error
    release.set()
    # rolled back as any deadline stop; tools work on (a new worker thread)
    r = ex.execute("v = [k, quick()]", return_globals=["v"])
    assert r.globals == {"v": [1, "quick"]}, r.error
    assert finished.wait(10)


def test_a_loop_of_tool_calls_stops_on_fuel(make):
    calls = []
    ex = make(tools={"ping": lambda: calls.append(1)})
    ex.execute("k = 1")
    r = ex.execute("k = 2\nwhile True:\n    ping()", limits={"fuel": 50_000_000})
    assert r.limit == "fuel" and r.rolled_back
    # each tool call costs at least TOOL_CALL_FUEL: the budget allowed at most 50 of them
    assert 0 < len(calls) <= 50_000_000 // tools_mod.TOOL_CALL_FUEL
    assert ex.execute("v = k", return_globals=["v"]).globals == {"v": 1}


def test_the_number_of_tool_calls_is_bounded(make):
    calls = []
    ex = make(tools={"ping": lambda: calls.append(1)}, limits={"max_tool_calls": 5})
    r = ex.execute("n = 0\ntry:\n    while True:\n        ping()\n        n += 1\n"
                   "except ToolError as e:\n    msg = str(e)\n",
                   return_globals=["n", "msg"])
    assert r.globals["n"] == 5 and len(calls) == 5
    assert "max_tool_calls" in r.globals["msg"]
    r = ex.execute("ping()", limits={"max_tool_calls": 0})
    assert r.error_type == "ToolError" and len(calls) == 5
    assert ex.execute("ping()").success and len(calls) == 6  # per call


def test_async_tools(make):
    async def fetch(key):
        await asyncio.sleep(0)
        return {"key": key, "loop": id(asyncio.get_running_loop())}

    ex = make(tools={"fetch": fetch})
    # without an event loop of the caller's, it runs on a loop of its own
    r = ex.execute("v = fetch('a')", return_globals=["v"])
    assert r.success and r.globals["v"]["key"] == "a", r.error

    async def main():
        r = await ex.aexecute("v = fetch('b')", return_globals=["v"])
        return r, id(asyncio.get_running_loop())

    r, loop_id = asyncio.run(main())
    # in aexecute, on the caller's own loop
    assert r.globals["v"] == {"key": "b", "loop": loop_id}, r.error


def test_a_slow_async_tool_is_cancelled_at_the_deadline(make):
    cancelled = threading.Event()

    async def slow():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    ex = make(tools={"slow": slow})

    async def main():
        r = await ex.aexecute("slow()", limits={"timeout_seconds": 0.5})
        await asyncio.sleep(0)  # (let the loop run the cancellation)
        for _ in range(100):
            if cancelled.is_set():
                break
            await asyncio.sleep(0.01)
        return r

    r = asyncio.run(main())
    assert r.limit == "timeout" and r.rolled_back
    assert cancelled.is_set()


def test_cancelling_aexecute_stops_a_call_waiting_for_a_tool(make):
    started, release = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(60)

    ex = make(tools={"hold": hold})
    ex.execute("k = 1")

    async def main():
        task = asyncio.ensure_future(ex.aexecute("k = 2\nhold()"))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    release.set()
    assert ex.execute("v = k", return_globals=["v"]).globals == {"v": 1}


# ------------------------------------------------------------------ what the agent reaches
WALK = """
seen = set()
found = []
todo = [(get_weather, 'get_weather')]
names = ('__self__', '__func__', '__closure__', '__globals__', '__defaults__',
         '__kwdefaults__', '__wrapped__', '__dict__', 'cell_contents', '__code__',
         '__builtins__', '__class__', '__module__')
denied = []
while todo and len(seen) < 50000:
    obj, path = todo.pop()
    if id(obj) in seen:
        continue
    seen.add(id(obj))
    if type(obj).__name__ == 'module' and getattr(obj, '__name__', None) == '_host':
        found.append(path + ' is the module of the host door')
    if type(obj).__name__ == 'builtin_function_or_method':
        owner = getattr(obj, '__self__', None)
        if getattr(owner, '__name__', None) == '_host':
            found.append(path + ' is the host door')
    kids = []
    if isinstance(obj, (tuple, list)):
        kids = [(v, path + '[%d]' % i) for i, v in enumerate(obj)]
    elif isinstance(obj, dict):
        kids = [(v, path + '[%r]' % (k,)) for k, v in obj.items()]
    for name in names:
        try:
            kids.append((getattr(obj, name), path + '.' + name))
        except PermissionError:
            denied.append(path + '.' + name)
        except Exception:
            pass
    for kid in kids:
        if isinstance(kid[0], (type, str, int, float, bytes, type(None))):
            continue
        todo.append(kid)
"""


def test_nothing_of_the_host_is_reachable_from_a_tool(make):
    ex = make(tools={"get_weather": get_weather})
    r = ex.execute(WALK + "walked = len(seen)", return_globals=["found", "denied", "walked"],
                   limits={"timeout_seconds": 60})
    assert r.success, r.error
    # a stub reaches the guest's own modules (through builtins, as any code does), but
    # neither the host door nor its module; the runner's code (tool_call's) is refused
    assert r.globals["walked"] > 50
    assert r.globals["found"] == []
    assert any("__code__" in d for d in r.globals["denied"])
    # the door's module is out of the module table and cannot be imported or re-created
    ex2 = make(whitelisted_imports=["sys", "_imp", "importlib"],
               tools={"get_weather": get_weather})
    r = ex2.execute("import sys\nloaded = '_host' in sys.modules\n"
                    "try:\n    import _host\nexcept ImportError as e:\n    imp = str(e)\n"
                    "import _imp, importlib.machinery as m\n"
                    "try:\n    _imp.create_builtin(m.ModuleSpec('_host', None))\n"
                    "    made = 'made'\n"
                    "except BaseException as e:\n    made = type(e).__name__ + ': ' + str(e)\n",
                    return_globals=["loaded", "imp", "made"])
    assert r.success, r.error
    assert r.globals["loaded"] is False
    assert "not allowed" in r.globals["imp"]
    assert r.globals["made"].startswith(("PermissionError", "ImportError")), r.globals["made"]


def test_forged_calls_reach_only_the_tools_of_the_call(make):
    calls = []
    ex = make(tools={"get_weather": get_weather, "log": lambda m: calls.append(m)})
    # the stub's closure holds the runner's tool_call: called with a tuple of the agent's
    # making, it can ask for any name, and the host answers for the tools it offers only
    r = ex.execute("cells = dict(zip(log.__code__.co_freevars, log.__closure__))\n"
                   "call, S = cells['call'].cell_contents, cells['S'].cell_contents\n"
                   "ok, err = call(('secret',) + S[1:], ['x'], {})\n"
                   "ok2, val = call(('log',) + S[1:], ['forged'], {})\n"
                   "out = [ok, type(err).__name__, str(err), ok2, val]",
                   return_globals=["out"])
    assert r.success, r.error
    ok, kind, message, ok2, val = r.globals["out"]
    assert (ok, kind, ok2, val) == (False, "ToolError", True, None)
    assert "no tool named 'secret'" in message
    assert calls == ["forged"]  # the same as calling log('forged')


def test_the_host_reads_tool_requests_as_untrusted():
    box = tools_mod.ToolBox({"f": len}, max_calls=10, max_bytes=1000)
    for raw in (b"\xff", b"not json", b"[1]", b'{"tool": "f"}', b'{"tool": 1, "args": [],'
                b' "kwargs": {}}', b'{"tool": "g", "args": [], "kwargs": {}}',
                b"[" * 2000 + b"]" * 2000, b"[" + b"0," * 1_000_001 + b"0]"):
        answer = tools_mod.parse_request(box, raw)
        assert isinstance(answer, bytes) and b'"ok":false' in answer, raw[:40]
    name, fn, args, kwargs = tools_mod.parse_request(
        box, b'{"tool": "f", "args": [[1, 2]], "kwargs": {}}')
    assert (name, fn, args, kwargs) == ("f", len, [[1, 2]], {})


def test_a_kept_stub_in_a_call_without_tools(make):
    ex = make()
    assert ex.execute("keep = f", tools={"f": lambda: 1}).success
    r = ex.execute("keep()")
    assert r.error_type == "ToolError" and "did not answer" in r.error_message
    assert ex.execute("v = 1").success


def test_tool_threads_end_with_their_interpreter(make):
    def tool_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "wasm-exec-tool"}

    before = tool_threads()
    ex = make(tools={"ping": lambda: 1})
    assert ex.execute("ping()").success and ex.execute("ping()").success
    (ours,) = tool_threads() - before  # one worker, reused from call to call
    ex.close()
    ours.join(10)
    assert not ours.is_alive()


def test_gc_walks_from_a_stub_are_refused(make):
    ex = make(tools={"get_weather": get_weather}, whitelisted_imports=["sys"])
    r = ex.execute("import sys\n"
                   "gc = sys.modules['gc']\n"
                   "out = []\n"
                   "for name in ('get_referents', 'get_referrers', 'get_objects'):\n"
                   "    try:\n"
                   "        getattr(gc, name)(get_weather)\n"
                   "        out.append(name + ': answered')\n"
                   "    except Exception as e:\n"
                   "        out.append(name + ': ' + type(e).__name__)\n",
                   return_globals=["out"])
    assert r.success, r.error
    assert r.globals["out"] == ["get_referents: RuntimeError", "get_referrers: RuntimeError",
                                "get_objects: RuntimeError"]


def test_tools_of_a_loaded_image(make, rt, tmp_path):
    ex = make(tools={"get_weather": get_weather})
    ex.execute("w = get_weather('Oslo')")
    path = tmp_path / "agent.img"
    ex.save(path)
    # an image holds no host function: load is given its tools like a new executor
    with PythonExecExecutor.load(path, tools={"get_weather": get_weather}) as again:
        r = again.execute("v = [w['city'], get_weather('Rome')['city']]",
                          return_globals=["v"])
        assert r.globals == {"v": ["Oslo", "Rome"]}, r.error
    with PythonExecExecutor.load(path) as bare:
        r = bare.execute("get_weather('Rome')")
        assert r.error == "NameError: name 'get_weather' is not defined"
