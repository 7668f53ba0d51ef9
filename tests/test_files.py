"""Files in and out of the agent's file system (issue 14, item 3), on both runtimes."""

from __future__ import annotations

import os
import tempfile
import threading

import pytest

from tests.scientific_support import needs_scientific
from wasm_exec import ConfigurationError, FileInfo, InputError, PythonExecExecutor
from wasm_exec.vfs import NODE_COST


def test_write_read_list_delete(make):
    ex = make()
    ex.write_file("data.csv", b"a,b\n1,2\n")
    ex.write_file("notes/today.txt", "caf\u00e9")  # a str is written as UTF-8; dirs made
    ex.write_file("/tmp/shared.bin", bytearray(b"\x00\x01"))
    assert ex.read_file("data.csv") == b"a,b\n1,2\n"
    assert ex.read_file("/tmp/work/notes/today.txt") == "caf\u00e9".encode()
    assert ex.read_file("./notes/./today.txt") == "caf\u00e9".encode()
    assert ex.list_files() == [
        FileInfo(name="data.csv", path="/tmp/work/data.csv", size=8, is_dir=False),
        FileInfo(name="notes", path="/tmp/work/notes", size=0, is_dir=True)]
    assert [(f.name, f.size) for f in ex.list_files(".", recursive=True)] == [
        ("data.csv", 8), ("notes", 0), ("notes/today.txt", 5)]
    assert "shared.bin" in {f.name for f in ex.list_files("/tmp")}
    # the agent's code sees them where the host put them, and its own files come back
    r = ex.execute("text = open('data.csv').read()\n"
                   "today = open('notes/today.txt', encoding='utf-8').read()\n"
                   "with open('/tmp/shared.bin', 'rb') as f:\n    raw = list(f.read())\n"
                   "open('result.txt', 'w').write('done')\n",
                   return_globals=["text", "today", "raw"])
    assert r.success, r.error
    assert r.globals == {"text": "a,b\n1,2\n", "today": "caf\u00e9", "raw": [0, 1]}
    assert ex.read_file("result.txt") == b"done"
    # overwrite, then delete a file and a directory with what it holds
    ex.write_file("data.csv", b"x")
    assert ex.read_file("data.csv") == b"x"
    ex.delete_file("data.csv")
    ex.delete_file("notes")
    assert {f.name for f in ex.list_files()} == {"result.txt"}
    with pytest.raises(FileNotFoundError):
        ex.read_file("data.csv")
    with pytest.raises(FileNotFoundError):
        ex.delete_file("notes/today.txt")
    with pytest.raises(IsADirectoryError):
        ex.read_file("/tmp/work")
    with pytest.raises(NotADirectoryError):
        ex.list_files("result.txt")
    with pytest.raises(IsADirectoryError):
        ex.write_file("/tmp/work", b"x")
    r = ex.execute("left = open('result.txt').read()", return_globals=["left"])
    assert r.globals == {"left": "done"}


@pytest.mark.parametrize("path,words", [
    ("../etc/passwd", "'..'"),
    ("/tmp/../etc/passwd", "'..'"),
    ("/etc/passwd", "outside the agent's files"),
    ("/usr/local/lib/python313.zip", "outside the agent's files"),
    ("/", "outside the agent's files"),
    ("", "empty"),
    ("a\0b", "NUL"),
    ("\ud800.txt", "surrogate"),
    ("x" * 300, "longer than 255"),
    ("d/" * 2100 + "f", "paths in the sandbox have at most"),
])
def test_names_are_checked(make, path, words):
    ex = make()
    ex.write_file("keep.txt", b"1")
    for call in (lambda: ex.write_file(path, b"x"), lambda: ex.read_file(path),
                 lambda: ex.list_files(path), lambda: ex.delete_file(path),
                 lambda: ex.execute("pass", files={path: b"x"}),
                 lambda: ex.execute("pass", output_files=[path])):
        with pytest.raises(InputError) as info:
            call()
        assert words in str(info.value)
    assert [f.name for f in ex.list_files()] == ["keep.txt"]
    assert ex.execute("k = open('keep.txt').read()", return_globals=["k"]).globals == {"k": "1"}


def test_bad_arguments(make):
    ex = make()
    with pytest.raises(InputError, match="bytes or str"):
        ex.write_file("a", 12)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="must be a str"):
        ex.read_file(3)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="not a string"):
        ex.execute("pass", output_files="out.png")
    with pytest.raises(InputError, match="mapping"):
        ex.execute("pass", files=[("a", b"")])  # type: ignore[arg-type]
    for own in ("/tmp", "/tmp/work", ".", "/tmp/home", "/tmp/mpl"):
        with pytest.raises(InputError, match="sandbox's own directories"):
            ex.delete_file(own)
    # a file in the way of a directory
    ex.write_file("f", b"")
    with pytest.raises(NotADirectoryError):
        ex.write_file("f/g", b"")


def test_files_count_against_the_agents_file_space(make):
    ex = make(memory_bytes=64 << 20)  # file space: 16 MiB
    budget = 16 << 20
    with pytest.raises(InputError, match="file space") as info:
        ex.write_file("big.bin", bytes(budget))
    assert "Nothing was written" in str(info.value)
    assert ex.list_files() == []
    half = budget // 2
    ex.write_file("a.bin", bytes(half))
    # the guest's own writes share the space: it cannot write another half
    r = ex.execute(f"with open('b.bin', 'wb') as f:\n    f.write(bytes({half}))")
    assert not r.success and r.error_type == "OSError", r.error
    assert "No space left" in r.error_message
    # several files at once: all or nothing
    with pytest.raises(InputError, match="file space"):
        ex.execute("x = 1", files={"c.bin": b"c", "d.bin": bytes(half)})
    assert "c.bin" not in {f.name for f in ex.list_files()}
    assert "x" in ex.execute("", return_globals=["x"]).globals_errors  # nothing ran
    # deleting gives the space back
    ex.delete_file("a.bin")
    ex.delete_file("b.bin")  # (the guest's short write left it, partly filled)
    ex.write_file("big.bin", bytes(budget - 8 * NODE_COST))


def test_execute_files_in_and_out(make):
    ex = make()
    r = ex.execute("rows = open('in/data.csv').read().splitlines()\n"
                   "open('out.txt', 'w').write(str(len(rows)))\n"
                   "with open('/tmp/raw.bin', 'wb') as f:\n    f.write(bytes([1, 2, 3]))\n",
                   files={"in/data.csv": "a\nb\nc\n"},
                   output_files=["out.txt", "/tmp/raw.bin", "missing.txt", "in"])
    assert r.success, r.error
    assert r.files == {"out.txt": b"3", "/tmp/raw.bin": b"\x01\x02\x03"}
    assert set(r.files_errors) == {"missing.txt", "in"}
    assert "no such file" in r.files_errors["missing.txt"]
    assert "directory" in r.files_errors["in"]
    # files persist: the next call and the host see them
    r = ex.execute("n = open('out.txt').read()", return_globals=["n"])
    assert r.globals == {"n": "3"}
    # an exception in the code still returns what it wrote
    r = ex.execute("open('partial.txt', 'w').write('half')\n1/0",
                   output_files=["partial.txt"])
    assert not r.success and r.files == {"partial.txt": b"half"}


def test_host_files_survive_a_stopped_call_and_the_calls_own_do_not(make):
    ex = make()
    ex.write_file("before.txt", b"host")
    r = ex.execute("open('mine.txt', 'w').write('stopped call')\n"
                   "open('before.txt', 'w').write('changed')\n"
                   "while True: pass",
                   files={"with_call.txt": b"given"}, output_files=["mine.txt"],
                   limits={"fuel": 50_000_000})
    assert r.limit == "fuel" and r.rolled_back
    assert r.files == {} and "limit stopped the call" in r.files_errors["mine.txt"]
    # the files the host put in (before or with the call) are kept; what the stopped call
    # wrote (a new file, a change) is rolled back with it
    assert ex.read_file("before.txt") == b"host"
    assert ex.read_file("with_call.txt") == b"given"
    with pytest.raises(FileNotFoundError):
        ex.read_file("mine.txt")
    # and a deletion by the host before a stopped call stays deleted
    ex.delete_file("before.txt")
    r = ex.execute("while True: pass", limits={"fuel": 50_000_000})
    assert r.rolled_back
    assert {f.name for f in ex.list_files()} == {"with_call.txt"}


def test_files_travel_with_saved_images(make, rt):
    ex = make()
    ex.write_file("host.txt", b"from the host")
    assert ex.execute("open('guest.txt', 'w').write('from the guest')").success
    path = os.path.join(tempfile.mkdtemp(), "agent.img")
    ex.save(path)
    again = PythonExecExecutor.load(path, timeout_seconds=20)
    try:
        assert again.read_file("host.txt") == b"from the host"
        r = again.execute("both = [open('host.txt').read(), open('guest.txt').read()]",
                          return_globals=["both"])
        assert r.globals == {"both": ["from the host", "from the guest"]}
    finally:
        again.close()
    # a file written right before save is in the image too (no call in between)
    ex.write_file("late.txt", b"late")
    ex.save(path)
    with PythonExecExecutor.load(path) as third:
        assert third.read_file("late.txt") == b"late"


def test_a_write_waits_for_the_running_call(make):
    ex = make()
    done = threading.Event()
    writer = threading.Thread(target=lambda: (ex.write_file("late.txt", b"x"), done.set()))

    def hold() -> bool:
        writer.start()
        # the writer cannot get in while this call runs: it waits for the executor
        return done.wait(0.3)

    r = ex.execute("raced = hold()\n"
                   "try:\n    open('late.txt')\n    seen = True\n"
                   "except FileNotFoundError:\n    seen = False\n",
                   tools={"hold": hold}, return_globals=["raced", "seen"])
    assert r.globals == {"raced": False, "seen": False}, r.error
    writer.join(20)
    assert done.is_set() and ex.read_file("late.txt") == b"x"


def test_a_tool_cannot_call_its_own_executor(make):
    ex = make()

    def sneaky() -> str:
        try:
            ex.write_file("x", b"")
        except RuntimeError as e:
            return str(e)
        return "no error"

    r = ex.execute("msg = sneaky()", tools={"sneaky": sneaky}, return_globals=["msg"])
    assert "a tool called the executor whose call it serves" in r.globals["msg"]


def test_files_of_a_lost_interpreter(make):
    ex = make(rollback=False)
    ex.write_file("a.txt", b"1")
    r = ex.execute("while True: pass", limits={"fuel": 50_000_000})
    assert r.interpreter_lost
    # a fresh interpreter, as the next call would get: the files went with the old one
    assert ex.list_files() == []
    assert ex.execute("x = 1").state_reset


def test_closed_executor(make):
    ex = make()
    ex.close()
    from wasm_exec import ExecutorClosedError
    with pytest.raises(ExecutorClosedError):
        ex.write_file("a", b"")


def test_host_module_cannot_be_allowed():
    with pytest.raises(ConfigurationError, match="_host"):
        PythonExecExecutor(whitelisted_imports=["_host"])


def test_host_files_and_roll_backs_with_a_standby_interpreter(make):
    # with rollback_standby, an interpreter is restored in the background from an image
    # that shares its memory with the later image holding the host's files
    ex = make(rollback_standby=True)
    for round_no in range(3):
        assert ex.execute(f"k = {round_no}").success
        ex.write_file(f"host-{round_no}.txt", str(round_no))
        r = ex.execute("k = -1\nopen('lost.txt', 'w').write('x')\nwhile True: pass",
                       limits={"fuel": 50_000_000})
        assert r.rolled_back, r.error
        r = ex.execute(f"v = [k, open('host-{round_no}.txt').read()]", return_globals=["v"])
        assert r.globals == {"v": [round_no, str(round_no)]}, r.error
    assert sorted(f.name for f in ex.list_files()) == ["host-0.txt", "host-1.txt",
                                                       "host-2.txt"]


def test_file_methods_from_many_threads_while_calls_run(make):
    ex = make()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(20):
                ex.write_file(f"t{n}/f{i}.txt", f"{n}:{i}")
                assert ex.read_file(f"t{n}/f{i}.txt") == f"{n}:{i}".encode()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for _ in range(20):
        assert ex.execute("x = 1").success
    for t in threads:
        t.join(60)
    assert errors == []
    r = ex.execute("got = sorted(open(f't{n}/f{i}.txt').read() for n in range(3) "
                   "for i in range(20))", return_globals=["got"])
    assert r.globals["got"] == sorted(f"{n}:{i}" for n in range(3) for i in range(20))


@needs_scientific
@pytest.mark.scientific
def test_dataframes_and_figures_as_files():
    with PythonExecExecutor(runtime="scientific", timeout_seconds=60,
                            whitelisted_imports=["pandas", "matplotlib.pyplot"],
                            default_imports={"pd": "pandas", "plt": "matplotlib.pyplot"}) as ex:
        ex.write_file("in.csv", "a,b\n1,2\n3,4\n")
        r = ex.execute("df = pd.read_csv('in.csv')\n"
                       "df['c'] = df.a + df.b\n"
                       "df.to_csv('table.csv', index=False)\n"
                       "fig, ax = plt.subplots()\n"
                       "ax.plot(df.a, df.c)\n"
                       "fig.savefig('chart.png')\n"
                       "plt.close(fig)\n",
                       output_files=["table.csv", "chart.png"])
        assert r.success, r.error
        assert r.files["table.csv"] == b"a,b,c\n1,2,3\n3,4,7\n"
        assert r.files["chart.png"].startswith(b"\x89PNG")


def test_results_with_files_turn_into_json(make):
    import base64
    import json

    ex = make()
    r = ex.execute("open('b.bin', 'wb').write(bytes(range(256)))", output_files=["b.bin"])
    data = json.loads(r.model_dump_json())
    assert base64.b64decode(data["files"]["b.bin"]) == bytes(range(256))
