"""The sandbox core: persistent state, results, marshaling, errors (issue 2)."""

from __future__ import annotations

import math

import pytest

from wasm_exec import ExecutionResult, InputError, PythonExecExecutor
from wasm_exec.vfs import GUEST_CWD, GUEST_ENV


def test_issue_example():
    with PythonExecExecutor() as ex:
        ex.execute("x = 41")
        r = ex.execute("x += 1\nprint('x is', x)\ny = {'k': [1, 2.5, None, 'é']}",
                       return_globals=["x", "y"])
        assert r.success and r.stdout == "x is 42\n"
        assert r.globals == {"x": 42, "y": {"k": [1, 2.5, None, "é"]}}
        r = ex.execute("total = sum(input_data)", globals_dict={"input_data": [1, 2, 3]},
                       return_globals=["total"])
        assert r.globals["total"] == 6


def test_state_persists_functions_classes(ex):
    assert ex.execute("def f(a): return a * 2\nclass C:\n    v = 5").success
    r = ex.execute("z = f(C.v)", return_globals=["z"])
    assert r.globals == {"z": 10}


def test_result_fields(ex):
    r = ex.execute("print('hi')")
    assert isinstance(r, ExecutionResult)
    assert r.success and r.error is None and r.limit is None
    assert r.duration_seconds > 0 and r.fuel_used and r.fuel_used > 0
    assert r.memory_bytes > 1_000_000
    assert not r.state_reset and not r.interpreter_lost



def test_exception_keeps_output_and_state(ex):
    ex.execute("a = 1")
    r = ex.execute("a = 2\nprint('before')\n1/0\na = 3")
    assert not r.success
    assert r.stdout == "before\n"
    assert r.error == "ZeroDivisionError: division by zero"
    assert r.traceback.startswith("Traceback (most recent call last):")
    assert '<cell-' in r.traceback and "1/0" in r.traceback
    assert "runner" not in r.traceback and "/work" not in r.traceback
    assert ex.execute("", return_globals=["a"]).globals == {"a": 2}


def test_traceback_shows_user_frames_only(ex):
    r = ex.execute("def inner():\n    raise KeyError('k')\ndef outer():\n    inner()\nouter()")
    assert r.error_type == "KeyError"
    assert "in outer" in r.traceback and "in inner" in r.traceback
    assert "wasm-exec-runner" not in r.traceback and "run_call" not in r.traceback


def test_syntax_error(ex):
    ex.execute("keep = 1")
    r = ex.execute("def broken(:\n  pass")
    assert not r.success and r.error_type == "SyntaxError"
    assert "def broken(:" in r.traceback
    assert ex.execute("", return_globals=["keep"]).globals == {"keep": 1}


@pytest.mark.parametrize("code,etype,exit_code", [
    ("raise SystemExit(3)", "SystemExit", 3),
    ("exit(0)", None, 0),
    ("quit()", None, 0),
    ("raise KeyboardInterrupt", "KeyboardInterrupt", None),
])
def test_exit_and_interrupt_are_not_crashes(ex, code, etype, exit_code):
    ex.execute("kept = 'yes'")
    r = ex.execute("print('p')\n" + code)
    # an exit with status 0 is a success (as for a process); the others are errors
    assert r.success is (etype is None) and r.error_type == etype and r.stdout == "p\n"
    assert r.exit_code == exit_code and not r.interpreter_lost
    r = ex.execute("", return_globals=["kept"])
    assert r.globals == {"kept": "yes"} and not r.state_reset


def test_custom_exception_type_name(ex):
    r = ex.execute("class MyErr(Exception): pass\nraise MyErr('boom')")
    assert r.error_type == "MyErr" and r.error == "MyErr: boom"


def test_unprintable_exception(ex):
    r = ex.execute("class E(Exception):\n    def __str__(self): raise RuntimeError\nraise E()")
    assert not r.success and r.error_type == "E" and "unprintable" in r.error_message


# ------------------------------------------------------------- marshaling in
def test_globals_in_all_json_types(ex):
    data = {"i": 1, "f": 2.5, "s": "é", "b": True, "n": None, "l": [1, [2]], "d": {"k": {"j": 1}},
            "big": 10**30}
    r = ex.execute("out = [type(v).__name__ for v in (i, f, s, b, n, l, d, big)]\n"
                   "echo = big", globals_dict=data, return_globals=["out", "echo"])
    assert r.globals["out"] == ["int", "float", "str", "bool", "NoneType", "list", "dict", "int"]
    assert r.globals["echo"] == 10**30


def test_globals_in_tuple_becomes_list(ex):
    r = ex.execute("t = type(v).__name__", globals_dict={"v": (1, 2)}, return_globals=["t"])
    assert r.globals["t"] == "list"


@pytest.mark.parametrize("bad", [b"bytes", {1, 2}, object(), {"k": {1: 2}}, [1, b"x"]])
def test_globals_in_not_json_is_refused_before_running(ex, bad):
    ex.execute("state = 'intact'")
    with pytest.raises(InputError) as info:
        ex.execute("state = 'changed'", globals_dict={"good": 1, "bad_value": bad})
    assert "bad_value" in str(info.value)
    assert ex.execute("", return_globals=["state"]).globals == {"state": "intact"}


@pytest.mark.parametrize("key", ["not an identifier", "__builtins__", 3])
def test_globals_in_bad_keys(ex, key):
    with pytest.raises(InputError):
        ex.execute("pass", globals_dict={key: 1})


def test_code_must_be_str(ex):
    with pytest.raises(InputError):
        ex.execute(b"x = 1")  # type: ignore[arg-type]


def test_return_globals_must_be_list(ex):
    with pytest.raises(InputError, match="did you mean"):
        ex.execute("x = 1", return_globals="x")  # type: ignore[arg-type]


# ------------------------------------------------------------ marshaling out
def test_return_missing_name_is_reported_by_name(ex):
    r = ex.execute("a = 1", return_globals=["a", "missing"])
    assert r.success and r.globals == {"a": 1}
    assert "missing" in r.globals_errors and "not defined" in r.globals_errors["missing"]


def test_return_tuple_as_list(ex):
    assert ex.execute("t = (1, (2, 3))", return_globals=["t"]).globals == {"t": [1, [2, 3]]}


def test_return_nan_and_infinity_as_floats(ex):
    r = ex.execute("v = [float('nan'), float('inf'), -float('inf')]", return_globals=["v"])
    nan, inf, ninf = r.globals["v"]
    assert math.isnan(nan) and inf == math.inf and ninf == -math.inf


def test_return_large_ints(ex):
    r = ex.execute("a = 2**200\nb = 10**5000", return_globals=["a", "b"])
    assert r.globals["a"] == 2**200
    assert "b" not in r.globals and "too large" in r.globals_errors["b"]


def test_return_bytes_is_an_error_by_name(ex):
    r = ex.execute("b = b'x'\nok = 1", return_globals=["b", "ok"])
    assert r.globals == {"ok": 1}
    assert "bytes" in r.globals_errors["b"] and "JSON" in r.globals_errors["b"]


def test_return_non_string_keys(ex):
    r = ex.execute("d = {1: 'a', 2.5: 'b', False: 'c', None: 'd'}\ne = {(1, 2): 'x'}",
                   return_globals=["d", "e"])
    assert r.globals["d"] == {"1": "a", "2.5": "b", "false": "c", "null": "d"}
    assert "e" in r.globals_errors


def test_return_cycle_and_deep_nesting(ex):
    r = ex.execute("c = []\nc.append(c)\nd = []\nfor _ in range(200_000): d = [d]\nok = 1",
                   return_globals=["c", "d", "ok"])
    assert r.globals == {"ok": 1}
    assert "cycle" in r.globals_errors["c"] and "deeply" in r.globals_errors["d"]
    assert ex.execute("x = 1", return_globals=["x"]).globals == {"x": 1}


def test_return_objects_with_hostile_methods(ex):
    code = (
        "class D(dict):\n"
        "    def items(self): raise RuntimeError('no')\n"
        "    def keys(self): raise RuntimeError('no')\n"
        "class L(list):\n"
        "    def __iter__(self): raise RuntimeError('no')\n"
        "class R:\n"
        "    def __repr__(self):\n"
        "        while True: pass\n"
        "d = D(a=1)\nl = L([1])\nr = R()\nok = 2\n")
    r = ex.execute(code, return_globals=["d", "l", "r", "ok"])
    assert r.success and r.globals["ok"] == 2
    assert "r" in r.globals_errors
    assert ex.execute("y = 1", return_globals=["y"]).globals == {"y": 1}


def test_return_size_cap(make_executor):
    ex = make_executor(limits={"max_globals_bytes": 10_000})
    r = ex.execute("big = 'x' * 20_000\nsmall = 1", return_globals=["big", "small"])
    assert r.globals == {"small": 1} and "capped" in r.globals_errors["big"]


def test_code_size_cap(make_executor):
    ex = make_executor(limits={"max_code_bytes": 2048})
    with pytest.raises(InputError, match="max_code_bytes"):
        ex.execute("x = 1\n" * 1000)


def test_globals_size_cap(make_executor):
    ex = make_executor(limits={"max_globals_bytes": 2048})
    with pytest.raises(InputError, match="max_globals_bytes"):
        ex.execute("pass", globals_dict={"v": "x" * 5000})


# ----------------------------------------------------------- guest environment
def test_guest_sees_no_host_environment_or_files(make_executor):
    ex = make_executor(whitelisted_imports=["os"])
    r = ex.execute(
        "import os\nenv = dict(os.environ)\ncwd = os.getcwd()\n"
        "listed = sorted(os.listdir('/'))\n"
        "try:\n    open('/etc/passwd').read()\n    read = True\n"
        "except OSError:\n    read = False\n",
        return_globals=["env", "cwd", "listed", "read"])
    # the guest's own file system (in host memory): a skeleton, its scratch area, its places
    assert r.globals == {"env": GUEST_ENV, "cwd": GUEST_CWD, "listed": ["dev", "tmp", "usr"],
                         "read": False}


def test_stdin_is_empty(ex):
    r = ex.execute("input()")
    assert not r.success and r.error_type in ("RuntimeError", "EOFError")
    assert ex.execute("x = 1", return_globals=["x"]).globals == {"x": 1}


def test_unicode_output_and_surrogates(ex):
    r = ex.execute("print('é ✓ 😀')\nprint('\\udcff')")
    assert r.stdout.startswith("é ✓ 😀\n") and r.success


def test_return_all_globals(make_executor):
    ex = make_executor(default_imports={"js": "json"})
    r = ex.execute("x = 1\ny = [1, 2]\ndef f(): pass\nclass C: pass\nb = b'bytes'\n_p = 3",
                   globals_dict={"g": 5}, return_all=True)
    assert r.globals == {"x": 1, "y": [1, 2], "g": 5, "_p": 3}
    assert r.globals_errors == {}
