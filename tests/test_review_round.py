"""Findings of an adversarial review round of the sandbox (issue 13: review in rounds).

Each test fails on the code before its fix (or is a strict xfail naming what is still
open). The attacks are written as an agent would: with an allow-list of ``sys`` only (to
list ``sys.modules`` before and after), reaching everything else by object walks.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
import tracemalloc

import pytest

from tests.scientific_support import needs_scientific
from wasm_exec import PythonExecExecutor
from wasm_exec.images import MAGIC
from wasm_exec.protocol import REPLY_MAGIC, ProtocolError, ReplyReader


def _new_modules(ex: PythonExecExecutor, code: str) -> tuple[set[str], dict]:
    """The modules that running ``code`` (errors caught) loaded, and its globals."""
    assert ex.execute("import sys\nboot = set(sys.modules)").success
    r = ex.execute("try:\n" + textwrap.indent(textwrap.dedent(code).strip("\n"), "    ")
                   + "\nexcept BaseException as e:\n    caught = type(e).__name__ + ': ' + str(e)\n"
                   "new = sorted(set(sys.modules) - boot)", return_globals=["new", "caught"])
    assert "new" in r.globals, r.error
    return set(r.globals["new"]), r.globals


# ------------------------------------------------------------------------------------
# 1. Import statements in the interpreter's own modules, reached by an object walk.
# The runner grants a library's own import statement (json importing re). A module the
# interpreter loaded for itself (importlib's machinery, site's help, os on the scientific
# runtime) is reachable by an object walk whatever the allow-list says, so its statements
# imported, for an agent allowed nothing: PathFinder.find_distributions() loaded
# importlib.metadata and 90 modules with it (os, shutil, tempfile, zipfile, threading);
# on the scientific runtime help() loaded pydoc and subprocess, os.popen() subprocess.

PATHFINDER = "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'PathFinder'][0]"

MINIMAL_STATEMENT_ATTACKS = {
    "find_distributions": f"list({PATHFINDER}.find_distributions())",
    "invalidate_caches": f"{PATHFINDER}.invalidate_caches()",
    "decode_source": "sys.modules['importlib._bootstrap_external'].decode_source(b'x = 1')",
    "trampoline_json_hook": (
        "import json\n"
        f"json.loads('{{}}', object_hook=lambda d: list({PATHFINDER}.find_distributions()))"),
}
# the library import statement each attack reaches, and the guard refuses (an attack that
# failed in its own set-up, an IndexError say, would otherwise pass with nothing new)
STATEMENT_REFUSED = "ImportError: Import of '{}' is not allowed"
MINIMAL_STATEMENTS = {"find_distributions": "importlib.metadata",
                      "invalidate_caches": "importlib.metadata",
                      "decode_source": "tokenize",
                      "trampoline_json_hook": "importlib.metadata"}


@pytest.mark.parametrize("name", sorted(MINIMAL_STATEMENT_ATTACKS))
def test_interpreter_modules_import_nothing_new_for_the_agent(make_executor, name):
    ex = make_executor(whitelisted_imports=["sys", "json"])
    ex.execute("import json")  # (its own imports are the agent's, allowed)
    new, seen = _new_modules(ex, MINIMAL_STATEMENT_ATTACKS[name])
    assert seen["caught"].startswith(STATEMENT_REFUSED.format(MINIMAL_STATEMENTS[name])), seen
    assert new == set(), sorted(new)


@pytest.mark.xfail(strict=True, reason=(
    "open: a module an allowed import loaded (json loads re, enum and types) keeps its own "
    "import statements at run time, and the agent reaches its functions by object walks: "
    "types.__getattr__('CapsuleType') imports _socket for an agent allowed only json. "
    "Telling such a call from the library's own use of the function (json calling it) "
    "needs the stack to name who asked, which C trampolines hide"))
def test_dependencies_of_allowed_modules_import_nothing_new_for_the_agent(make_executor):
    ex = make_executor(whitelisted_imports=["sys", "json"])
    ex.execute("import json")
    new, _ = _new_modules(ex, "sys.modules['types'].CapsuleType")
    assert new == set(), sorted(new)


def test_allowed_importlib_still_imports_what_its_machinery_needs(make_executor):
    ex = make_executor(whitelisted_imports=["importlib", "sys"])
    r = ex.execute("import importlib, sys\nimportlib.invalidate_caches()\n"
                   "loaded = 'importlib.metadata' in sys.modules", return_globals=["loaded"])
    assert r.success and r.globals == {"loaded": True}, r.error


SCIENTIFIC_STATEMENT_ATTACKS = {
    "builtins_help": "print.__self__.help('json')",
    "os_popen": "sys.modules['os'].popen('id')",
    "help_through_json_hook": "sys.modules['json'].loads('{}', object_hook=print.__self__.help)",
}
SCIENTIFIC_STATEMENTS = {"builtins_help": "pydoc", "os_popen": "subprocess",
                         "help_through_json_hook": "pydoc"}


@pytest.mark.scientific
@needs_scientific
@pytest.mark.parametrize("name", sorted(SCIENTIFIC_STATEMENT_ATTACKS))
def test_scientific_interpreter_modules_import_nothing_new(make_executor, name):
    ex = make_executor(runtime="scientific", whitelisted_imports=["sys"], timeout_seconds=60)
    new, seen = _new_modules(ex, SCIENTIFIC_STATEMENT_ATTACKS[name])
    assert seen["caught"].startswith(STATEMENT_REFUSED.format(SCIENTIFIC_STATEMENTS[name])), seen
    assert not new & {"pydoc", "subprocess", "signal", "threading", "inspect"}, sorted(new)


@pytest.mark.scientific
@needs_scientific
def test_scientific_library_run_time_imports_still_work(make_executor):
    ex = make_executor(runtime="scientific", whitelisted_imports=["importlib", "pandas"],
                       timeout_seconds=60)
    r = ex.execute(
        "import importlib.metadata as md, pandas as pd\n"
        "v = md.version('numpy')\n"
        # (re's parser, loaded by the interpreter, imports unicodedata for \\N{...})
        "m = pd.Series(['a1', 'b']).str.contains('\\\\N{DIGIT ONE}').tolist()",
        return_globals=["v", "m"])
    assert r.success and r.globals["m"] == [True, False] and r.globals["v"], r.error


# ------------------------------------------------------------------------------------
# 2. An image file whose file system names a file with a lone surrogate: it loaded, and
# every listing of that directory then crashed the interpreter (a UnicodeEncodeError in
# the host's fd_readdir), rolled back each time.

def _rewrite_image(src, dst, edit) -> None:
    data = open(src, "rb").read()
    size = int.from_bytes(data[16:20], "little")
    header = json.loads(data[20:20 + size])
    edit(header)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    out = MAGIC + len(head).to_bytes(4, "little") + head + data[20 + size:-32]
    open(dst, "wb").write(out + hashlib.sha256(out).digest())


@pytest.mark.parametrize("bad", ["\udc80x", "a\x00b"])
def test_image_file_names_that_are_not_utf8_are_refused(tmp_path, bad):
    from wasm_exec.errors import ImageError

    with PythonExecExecutor(whitelisted_imports=["os"], timeout_seconds=10) as ex:
        assert ex.execute("open('/tmp/work/victim.txt', 'w').write('x')").success
        ex.save(tmp_path / "a.img")

    def rename(header):
        for node in header["fs"]["nodes"]:
            if node["kind"] == "dir" and "victim.txt" in node["entries"]:
                node["entries"][bad] = node["entries"].pop("victim.txt")

    _rewrite_image(tmp_path / "a.img", tmp_path / "b.img", rename)
    with pytest.raises(ImageError, match="file name"):
        PythonExecExecutor.load(tmp_path / "b.img")


# ------------------------------------------------------------------------------------
# 3. A reply within its byte cap that is mostly JSON containers: the runner's reply is
# the agent's to word (it can rewrite the runner's variables and closure cells), and the
# host parsed it whole: 10 MB of `[],` became about 340 MiB of Python objects on the host
# for an agent limited to 256 MiB. The host bounds the reply's containers before parsing.

def _frame(token: bytes, payload: bytes) -> bytes:
    return REPLY_MAGIC + token + len(payload).to_bytes(4, "little") + payload


def test_reply_of_many_containers_is_refused_before_parsing():
    token = b"T" * 16
    bomb = (b'{"id":1,"ok":true,"globals":{},"globals_errors":{},"pad":['
            + b"[]," * 2_000_000 + b"[]]}")
    reader = ReplyReader(token, len(bomb) + 10)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="containers"):
            reader.decode(_frame(token, bomb))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(bomb), peak  # (parsed, it took about 20 times its size)


def test_large_returned_values_still_parse():
    token = b"T" * 16
    # 1.2M containers, in strings with escaped quotes and backslashes next to brackets
    value = json.dumps([[i, {"k": [i], "s": '\\"[{\\'}] for i in range(400_000)])
    reply = json.dumps({"id": 1, "ok": True, "globals": {"x": value},
                        "globals_errors": {}, "figures": []}).encode()
    out = ReplyReader(token, len(reply) + 10).decode(_frame(token, reply))
    assert out["globals"]["x"] == value


def test_an_agent_that_words_a_container_bomb_reply_loses_only_that_call(make_executor):
    ex = make_executor(whitelisted_imports=["sys"], timeout_seconds=20)
    assert ex.execute("keep = 1").success
    r = ex.execute(textwrap.dedent("""
        import sys
        turn = sys.modules['_reactor'].__dict__['_run_turn']
        step = [c.cell_contents for c in turn.__closure__
                if getattr(c.cell_contents, '__name__', '') == 'step'][0]
        for cell in step.__closure__:
            if getattr(cell.cell_contents, '__name__', '') == 'run_call':
                def bomb(req, n, real=cell.cell_contents):
                    reply = real(req, n)
                    reply['pad'] = [[]] * 2_000_000
                    return reply
                cell.cell_contents = bomb
        """))
    assert r.success, r.error
    r = ex.execute("x = 2", return_globals=["x"])
    assert not r.success and r.interpreter_lost and "containers" in r.error, r
    r = ex.execute("y = 3", return_globals=["y"])
    assert r.success and r.globals == {"y": 3} and r.state_reset


# ------------------------------------------------------------------------------------
# 4. Agent code after the answer. Python 3.13+ lets any code write the variables of a
# live frame (frame.f_locals), and closure cells are writable: a value the agent plants
# in the runner's turn frame is dropped, and its finalizer run, after the reply was sent.
# It runs outside any call (with the host's idle fuel and a 10 s deadline), and the
# caller's next call waits for it.

POST_ANSWER = textwrap.dedent("""
    import sys
    ran = []
    class Late:
        def __del__(self):
            ran.append(1)
    f = sys._getframe()
    while f is not None:
        if 'source' in f.f_locals and 'number' in f.f_locals:
            f.f_locals['source'] = Late()
        f = f.f_back
    """)


@pytest.mark.xfail(strict=True, reason=(
    "open: on Python 3.13+ the agent can write a live runner frame's variables "
    "(frame.f_locals) and the runner's closure cells, so it can plant a value whose "
    "finalizer runs when the turn's frames end, after the reply (bounded by the host's "
    "idle fuel, 200,000,000 units, and a 10 s deadline; the next call waits for it)"))
def test_no_agent_code_runs_after_the_answer(make_executor):
    ex = make_executor(whitelisted_imports=["sys"])
    assert ex.execute(POST_ANSWER).success
    r = ex.execute("n = len(ran)", return_globals=["n"])
    assert r.globals == {"n": 0}


def test_an_interpreter_lost_after_its_answer_does_not_cost_the_next_call(make_executor):
    # (the code planted above, looping until the idle fuel runs out: the interpreter dies
    # after the answer, while the next call waits. That call never ran: it was reported
    # as a fuel stop of its own, "the call used its whole budget". It now runs on a fresh
    # interpreter, whose result says the state was reset)
    ex = make_executor(whitelisted_imports=["sys"])
    assert ex.execute("keep = 1").success
    assert ex.execute(POST_ANSWER.replace("ran.append(1)", "while True: pass")).success
    r = ex.execute("x = 2", return_globals=["x"])
    assert r.success and r.globals == {"x": 2} and r.state_reset, r.error
    r = ex.execute("y = x + 1", return_globals=["y"])
    assert r.success and r.globals == {"y": 3} and not r.state_reset, r.error


# ------------------------------------------------------------------------------------
# 5. Guest pointers at or above 2 GiB. WASI pointers are u32, but wasmtime hands an i32
# parameter to a Python host function as a signed int: the session's own host functions
# (clock_time_get, poll_oneoff, fd_read/fd_write on stdio, and host_alloc's result) took
# an address of 2 GiB or more (an interpreter may have up to 4 GiB) for a negative one and
# refused it with EFAULT. (The file system's calls already read them as u32.)

class _SparseMemory:
    """Stands in for wasmtime.Memory: 2 GiB and a page of anonymous, untouched pages."""

    def __init__(self) -> None:
        import ctypes
        import mmap

        self.buf = mmap.mmap(-1, (1 << 31) + 4096)
        self._first = ctypes.c_ubyte.from_buffer(self.buf)

    def data_ptr(self, caller):
        import ctypes

        return ctypes.pointer(self._first)

    def data_len(self, caller):
        return len(self.buf)


def _signed(address: int) -> int:
    return address - (1 << 32) if address >= 1 << 31 else address


def test_host_functions_take_guest_pointers_above_2_gib():
    import struct

    from wasm_exec.session import Session
    from wasm_exec.wasi import ESUCCESS as ERRNO_SUCCESS

    session = Session.__new__(Session)
    session._memory = _SparseMemory()
    high = (1 << 31) + 64
    assert session._clock_time_get(None, 0, 0, _signed(high)) == ERRNO_SUCCESS
    assert struct.unpack_from("<Q", session._memory.buf, high)[0] > 0
    session._inbuf = b"request"
    iovec = (1 << 31) + 256
    struct.pack_into("<II", session._memory.buf, iovec, (1 << 31) + 512, 16)
    assert session._fd_read(None, 0, _signed(iovec), 1, _signed(high)) == ERRNO_SUCCESS
    assert session._memory.buf[(1 << 31) + 512:(1 << 31) + 519] == b"request"
    assert struct.unpack_from("<I", session._memory.buf, high)[0] == 7


def test_stdio_writes_of_more_than_2_gib_in_all_are_refused_not_raised():
    # (several iovecs whose lengths add up past what nwritten, a u32, can hold: the
    # host function raised struct.error, a host error that crashed the interpreter)
    import struct

    from wasm_exec.session import Session
    from wasm_exec.wasi import EINVAL as ERRNO_INVAL

    session = Session.__new__(Session)
    session._memory = _SparseMemory()
    session._call = None
    table = 4096
    struct.pack_into("<IIII", session._memory.buf, table, 0, 1 << 31, 0, 1 << 31)
    assert session._fd_write(None, 2, table, 2, table + 64) == ERRNO_INVAL
    # (the file system's own console, used without the session's stdio, likewise)
    from wasm_exec.vfs import EINVAL, MemoryFS

    fs = MemoryFS(b"", overlays=())
    fs.bind_memory(lambda caller: session._mem(caller))
    assert fs.fd_write(None, 1, table, 2, table + 64) == EINVAL


def test_a_directory_cookie_past_the_end_reads_nothing():
    # (a cookie of 2**63 or more made itertools.islice raise ValueError in the host)
    import struct

    from wasm_exec.session import Session
    from wasm_exec.vfs import ESUCCESS, PREOPEN_FD, MemoryFS

    session = Session.__new__(Session)
    session._memory = _SparseMemory()
    fs = MemoryFS(b"", overlays=())
    fs.bind_memory(lambda caller: session._mem(caller))
    for cookie in (-1, 1 << 63, 1000):
        assert fs.fd_readdir(None, PREOPEN_FD, 4096, 1024, cookie, 8192) == ESUCCESS
        assert struct.unpack_from("<I", session._memory.buf, 8192)[0] == 0


# ------------------------------------------------------------------------------------
# 6. (Found while measuring, not a security finding.) On the scientific runtime (Python
# 3.15) a library's aliased lazy from-import did not take effect at run time: the guard
# grants a lazy import taking effect in library code only inside an import it granted,
# and only where the code uses the module's or the imported name, not its alias. The
# modules collections imports lazily (heapq, copy) are loaded at boot now (the runtime's
# "preload" list), so taking effect is a library asking for a loaded module.

@pytest.mark.scientific
@needs_scientific
def test_a_librarys_aliased_lazy_import_takes_effect_at_run_time(make_executor):
    ex = make_executor(runtime="scientific", whitelisted_imports=["collections"],
                       timeout_seconds=60)
    r = ex.execute("import collections\nout = collections.Counter('abracadabra').most_common(2)",
                   return_globals=["out"])
    assert r.success and r.globals == {"out": [["a", 5], ["b", 2]]}, r.error
