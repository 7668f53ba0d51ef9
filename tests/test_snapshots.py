"""Interpreter images (issue 7): warm starts, roll-back after a stopped call, save/load."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.scientific_support import needs_scientific
from wasm_exec import ImageError, PythonExecExecutor
from wasm_exec.images import MAGIC

# every runtime can be imaged: each test runs on both
SEED = {
    "minimal": dict(whitelisted_imports=["json", "random", "collections"],
                    default_imports={"co": "collections"}),
    "scientific": dict(whitelisted_imports=["numpy", "pandas", "json", "random"],
                       default_imports={"np": "numpy", "pd": "pandas"}),
}
STATE = {
    "minimal": ("df = co.Counter('abbccc')\n"
                "def double(x):\n    return 2 * x\n"
                "class Box:\n    size = 7\n"
                "k = 5\n"),
    "scientific": ("df = pd.DataFrame({'a': [1, 2, 3]})\n"
                   "def double(x):\n    return 2 * x\n"
                   "class Box:\n    size = 7\n"
                   "k = 5\n"),
}
CHECK = {
    "minimal": "out = [df['c'] * 2, double(21), Box.size, k]",
    "scientific": "out = [int(df.a.sum()), double(21), Box.size, k]",
}
EXPECTED = [6, 42, 7, 5]


@pytest.fixture(params=["minimal", pytest.param("scientific", marks=[pytest.mark.scientific,
                                                                      needs_scientific])])
def rt(request):
    """The runtime a test runs on."""
    return request.param


def make(rt, **kw):
    return PythonExecExecutor(**{"runtime": rt, "timeout_seconds": 20, **SEED[rt], **kw})


@pytest.mark.parametrize("kind,code,limits", [
    ("fuel", "k = 99\nwhile True: pass", {"fuel": 50_000_000}),
    ("timeout", "k = 99\nwhile True: pass", {"timeout_seconds": 0.5, "fuel": None}),
    ("stack_overflow", "k = 99\nimport json\njson.loads('[' * 200000 + ']' * 200000)", None),
])
def test_a_stopped_call_rolls_back_to_the_state_after_the_previous_call(rt, kind, code, limits):
    fuel = None if limits and "fuel" in limits and limits["fuel"] is None else "default"
    with make(rt, fuel=fuel) as ex:
        assert ex.execute(STATE[rt]).success
        call_limits = {k: v for k, v in (limits or {}).items() if k != "fuel" or v is not None}
        r = ex.execute(code, limits=call_limits or None)
        assert not r.success and r.limit == kind, r.error
        assert r.rolled_back and not r.interpreter_lost and not r.state_reset
        assert "rolled back" in r.error and "intact" in r.error
        r = ex.execute(CHECK[rt], return_globals=["out"])
        assert r.success and r.globals == {"out": EXPECTED}, r.error
        assert not r.state_reset
        # and the interpreter goes on as before
        r = ex.execute("k += 1", return_globals=["k"])
        assert r.globals == {"k": 6}


def test_rollback_can_be_switched_off(rt):
    with make(rt, rollback=False) as ex:
        ex.execute("k = 5")
        r = ex.execute("while True: pass", limits={"fuel": 50_000_000})
        assert r.limit == "fuel" and r.interpreter_lost and not r.rolled_back
        r = ex.execute("ok = 'k' in globals()", return_globals=["ok"])
        assert r.state_reset and r.globals == {"ok": False}


def test_agents_started_from_one_boot_image_are_isolated(rt):
    with make(rt) as first, make(rt) as second:
        # (the second starts from the first one's boot image: a warm start)
        first.execute("secret = 'of the first agent'\nimport json\njson.dumps = None")
        r = second.execute("import json\nout = ['secret' in globals(), json.dumps({'a': 1})]",
                           return_globals=["out"])
        assert r.globals == {"out": [False, '{"a": 1}']}, r.error
        draws = []
        for ex in (first, second):
            second_draw = "float(np.random.rand())" if rt == "scientific" else "random.random()"
            r = ex.execute(f"import random\nv = [random.random(), {second_draw}]",
                           return_globals=["v"])
            draws.append(r.globals["v"])
        # reseeded after the restore: the two copies do not repeat each other's numbers
        assert draws[0][0] != draws[1][0] and draws[0][1] != draws[1][1]


def test_saved_agent_continues_in_another_process(rt, tmp_path):
    path = tmp_path / "agent.img"
    with make(rt) as ex:
        r = ex.execute(STATE[rt] + "with open('/tmp/notes.txt', 'w') as fh:\n    fh.write('kept')\n"
                       "log = open('/tmp/log.txt', 'w')\nlog.write('one ')")
        assert r.success, r.error
        size = ex.save(path)
    assert size == path.stat().st_size and size < 60 << 20
    script = textwrap.dedent(f"""
        import json
        from wasm_exec import PythonExecExecutor
        ex = PythonExecExecutor.load({str(path)!r}, timeout_seconds=20)
        r = ex.execute({CHECK[rt]!r} + "\\nlog.write('two'); log.close()\\n"
                       "files = [open('/tmp/notes.txt').read(), open('/tmp/log.txt').read()]",
                       return_globals=["out", "files"])
        print(json.dumps([r.success, r.error, r.globals]))
        ex.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=str(Path(__file__).resolve().parents[1]))
    assert done.returncode == 0, done.stderr[-3000:]
    ok, error, values = json.loads(done.stdout.strip().splitlines()[-1])
    assert ok, error
    assert values == {"out": EXPECTED, "files": ["kept", "one two"]}


def rewrite_header(data: bytes, change) -> bytes:
    """The image with its header changed and a valid checksum (a well-formed file)."""
    start = len(MAGIC) + 4
    size = int.from_bytes(data[len(MAGIC):start], "little")
    header = json.loads(data[start:start + size])
    change(header)
    head = json.dumps(header).encode()
    body = data[start + size:-32]
    out = MAGIC + len(head).to_bytes(4, "little") + head + body
    return out + hashlib.sha256(out).digest()


def test_damaged_or_foreign_images_are_refused(rt, tmp_path):
    path = tmp_path / "agent.img"
    with make(rt) as ex:
        ex.execute("k = 5")
        ex.save(path)
    data = path.read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], "damaged or truncated"),
        "altered": (data[:1000] + bytes([data[1000] ^ 1]) + data[1001:], "damaged"),
        "not an image": (b"hello world" * 10, "not a wasm-exec interpreter image"),
        "other runtime build": (rewrite_header(
            data, lambda h: h.update(runtime_sha256="0" * 64)), "another build"),
        "other wasm-exec": (rewrite_header(
            data, lambda h: h.update(runner_sha256="0" * 64)), "another version of wasm-exec"),
        "other format": (rewrite_header(data, lambda h: h.update(format=99)), "format"),
        # memory that inflates beyond what the header says is refused before it is kept
        "inflates too far": (rewrite_header(data, lambda h: h.update(memory_size=1000)),
                             "does not have the size"),
        "too big for the limit": (rewrite_header(data, lambda h: h.update(
            memory_size=8 << 30)), "more than the memory limit"),
    }
    for name, (blob, words) in cases.items():
        bad = tmp_path / f"{name}.img"
        bad.write_bytes(blob)
        with pytest.raises(ImageError, match=words):
            PythonExecExecutor.load(bad)
    # the good one still loads
    with PythonExecExecutor.load(path) as ex:
        assert ex.execute("k += 1", return_globals=["k"]).globals == {"k": 6}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_repeated_trap_and_restore_cycles_do_not_leak(rt):
    with make(rt) as ex:
        ex.execute(STATE[rt])
        for _ in range(10):  # warm up allocators and caches
            ex.execute("while True: pass", limits={"fuel": 20_000_000})
        rss = _rss_bytes()
        fds = len(os.listdir("/proc/self/fd"))
        threads = len(os.listdir("/proc/self/task"))
        for _ in range(100):
            r = ex.execute("while True: pass", limits={"fuel": 20_000_000})
            assert r.rolled_back
        assert ex.execute(CHECK[rt], return_globals=["out"]).globals == {"out": EXPECTED}
        # (stopped interpreters are closed on a background thread)
        deadline = time.monotonic() + 10
        while len(os.listdir("/proc/self/fd")) > fds + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        gc.collect()
        grown = _rss_bytes() - rss
        assert len(os.listdir("/proc/self/fd")) <= fds + 2
        assert len(os.listdir("/proc/self/task")) <= threads + 2
        # a leak of one image per cycle would be 100 x 60+ MB
        assert grown < 200 << 20, f"resident memory grew by {grown >> 20} MiB"


REACH_SYS = ("sys = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == "
             "'BuiltinImporter'][0].find_spec.__func__.__globals__['sys']\n")


def test_the_end_of_a_turn_runs_nothing_of_the_agent(rt):
    # red-team round 11: the reactor's turn flushes sys.stdout (its own global `sys`) after
    # the answer and before the host images the interpreter; an agent that replaced that
    # global ran code there, died, and the next call was "rolled back" past an answered call
    with make(rt, timeout_seconds=5) as ex:
        ex.execute("keep = 'after call 1'")
        r = ex.execute(REACH_SYS + "keep = 'after call 2'\n_r = sys.modules['_reactor']\n"
                       "class Out:\n    def flush(self):\n        while True:\n            pass\n"
                       "class Proxy:\n    stdout = Out()\n    stderr = Out()\n"
                       "_r.sys = Proxy()\n_r._run_turn = lambda *a: 0\n")
        assert r.success, r.error
        for _ in range(2):
            r = ex.execute("got = keep", return_globals=["got"])
            assert r.success and not r.rolled_back and not r.state_reset, r.error
            assert r.globals == {"got": "after call 2"}


def test_a_finalizer_of_a_replaced_stream_runs_no_code_after_the_answer(rt):
    # red-team round 12: the runner dropped the agent's sys.stdout before answering; its
    # __del__ installed another stream whose flush (run by the end of the turn, after the
    # answer) changed the state the host then imaged and later rolled back to
    with make(rt, timeout_seconds=5) as ex:
        r = ex.execute(REACH_SYS + "class Late:\n    def write(self, s):\n        return len(s)\n"
                       "    def flush(self):\n        global x\n        x = 'changed after'\n"
                       "class First:\n    def write(self, s):\n        return len(s)\n"
                       "    def flush(self):\n        pass\n    def __del__(self):\n"
                       "        sys.stdout = Late()\n"
                       "sys.stdout = First()\nx = 'answered'", return_globals=["x"])
        assert r.globals == {"x": "answered"}, r.error
        r = ex.execute("x = 'lost'\nwhile True: pass", limits={"fuel": 50_000_000})
        assert r.rolled_back
        assert ex.execute("pass", return_globals=["x"]).globals == {"x": "answered"}


def test_rollback_standby_restores_an_interpreter_ahead_of_the_first_stop(rt):
    with make(rt, rollback_standby=True) as ex:
        assert ex.execute(STATE[rt]).success
        deadline = time.monotonic() + 30  # (restored in the background after the call)
        while ex._supply.standby is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ex._supply.standby is not None
        r = ex.execute("k = 99\nwhile True: pass", limits={"fuel": 50_000_000})
        assert r.rolled_back
        assert ex.execute(CHECK[rt], return_globals=["out"]).globals == {"out": EXPECTED}


@pytest.mark.parametrize("plant", [
    # red-team round 13: an instance attribute on the runner's own stdout (called by the
    # reactor's end-of-turn flush), a class for sys whose __getattribute__ runs at its
    # `sys.stdout`, and new code for the reactor's turn function itself (a wedge: it ran
    # before every later request, and every roll-back restored it)
    "out = sys.stdout\ncalls = [0]\ndef late():\n    global x\n    calls[0] += 1\n"
    "    if calls[0] > 1:\n        x = 'changed after'\n"  # (the first is the runner's own)
    "out.flush = late\n",
    "class M(type(sys)):\n    def __getattribute__(self, name):\n        global x\n"
    "        x = 'changed after'\n        return type(sys).__getattribute__(self, name)\n"
    "sys.__class__ = M\n",
    "def t(*a):\n    while True:\n        pass\n"
    # (the scientific runtime's _reactor has a Python turn(); the default one's is C)
    "if hasattr(sys.modules['_reactor'], 'turn'):\n"
    "    sys.modules['_reactor'].turn.__code__ = t.__code__\n",
])
def test_nothing_planted_in_the_turn_runs_after_the_answer(rt, plant):
    with make(rt, timeout_seconds=5) as ex:
        r = ex.execute(REACH_SYS + plant + "x = 'answered'", return_globals=["x"])
        assert r.success and r.globals == {"x": "answered"}, r.error
        for _ in range(2):
            r = ex.execute("y = 1", return_globals=["x"])
            assert r.success and not r.rolled_back and not r.state_reset, r.error
            assert r.globals == {"x": "answered"}
        r = ex.execute("x = 'lost'\nwhile True: pass", limits={"fuel": 50_000_000})
        assert r.rolled_back
        assert ex.execute("pass", return_globals=["x"]).globals == {"x": "answered"}


def test_a_class_descriptor_on_sys_runs_nothing_in_the_end_of_turn_reset(rt):
    # round 15 (audit of the hook): the reset put sys's class back with object.__setattr__,
    # which looks "__class__" up in the agent's class first: a property there ran inside
    # the hook and read its frames (the token, the real __import__)
    with make(rt, timeout_seconds=5) as ex:
        r = ex.execute(REACH_SYS + "ran = []\n"
                       "def setter(self, value):\n    ran.append(1)\n"
                       "    object.__setattr__(self, '__class__', value)\n"
                       "class M(type(sys)):\n"
                       "    __class__ = property(lambda self: type(sys), setter)\n"
                       "sys.__class__ = M\n")
        assert r.success, r.error
        r = ex.execute("n = len(ran)", return_globals=["n"])
        assert r.success and r.globals == {"n": 0}, (r.error, r.globals)
