"""Results as they happen (issue 14): output streamed while a call runs, the value of the
last expression, exit codes and stdin, JSON-safe results, buffered printing. Each runs on
both runtimes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
import textwrap
import threading

import pytest

from tests.scientific_support import needs_scientific
from wasm_exec import (
    ExecutionResult,
    OutputChunk,
    PythonExecExecutor,
    ReentrantCallError,
)
from wasm_exec.output import MAX_PIECES, ChunkQueue, Mailbox


@pytest.fixture
def make(rt):  # (rt: conftest.py; these tests allow sys and time, and take longer)
    made: list[PythonExecExecutor] = []

    def factory(**kw) -> PythonExecExecutor:
        ex = PythonExecExecutor(**{"runtime": rt, "timeout_seconds": 30,
                                   "whitelisted_imports": ["sys", "time"], **kw})
        made.append(ex)
        return ex

    yield factory
    for ex in made:
        ex.close()


# ------------------------------------------------------------------ 1. streaming output
def test_a_line_printed_before_a_long_loop_reaches_the_callback_while_the_call_runs(make):
    ex = make()
    ex.execute("kept = 1")
    events: list[str] = []
    arrived = threading.Event()

    def on_stdout(text: str) -> None:
        events.append("chunk " + text)
        arrived.set()

    def stop_when_it_arrives() -> None:
        if arrived.wait(25):
            events.append("cancel")
            ex.cancel()

    stopper = threading.Thread(target=stop_when_it_arrives)
    stopper.start()
    # the loop never ends by itself: only a chunk that arrives while it runs stops it
    r = ex.execute("kept = 2\nprint('starting')\nwhile True: pass", on_stdout=on_stdout)
    stopper.join()
    assert events == ["chunk starting\n", "cancel"]
    assert r.limit == "cancelled" and r.rolled_back and r.stdout == "starting\n"
    # roll-back: the call's state is gone, what was streamed stays delivered
    assert ex.execute("", return_globals=["kept"]).globals == {"kept": 1}


def _stop_once_seen(ex: PythonExecExecutor, text: str, seen: list[str]) -> threading.Thread:
    """A thread that cancels ``ex``'s call once ``text`` has been streamed into ``seen``."""
    def watch() -> None:
        for _ in range(2500):
            if text in "".join(seen):
                seen.append("<cancel>")
                ex.cancel()
                return
            threading.Event().wait(0.01)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


@pytest.mark.parametrize("printing", [
    "print('a\\nb')\nprint('c')\nprint('last')",  # a short run of lines
    "for i in range(2000):\n    print(i)\nprint('last', flush=True)",  # a flushed burst
])
def test_printing_before_a_long_loop_arrives_while_it_runs(make, printing):
    ex = make()
    seen: list[str] = []
    watcher = _stop_once_seen(ex, "last\n", seen)
    r = ex.execute(printing + "\nwhile True: pass", on_stdout=seen.append)
    watcher.join()
    assert seen[-1] == "<cancel>" and r.limit == "cancelled"  # (it never ends by itself)
    assert "".join(seen[:-1]) == r.stdout and r.stdout.endswith("last\n")


def test_a_burst_before_a_sleep_arrives_before_the_sleep_ends(make):
    ex = make()
    seen: list[str] = []
    watcher = _stop_once_seen(ex, "1999\n", seen)
    r = ex.execute("import time\nfor i in range(2000):\n    print(i)\ntime.sleep(25)",
                   on_stdout=seen.append)
    watcher.join()
    assert seen[-1] == "<cancel>" and r.limit == "cancelled"  # (during the sleep)
    assert r.stdout.endswith("1998\n1999\n")


def test_slow_lines_arrive_one_by_one_and_a_burst_in_few_pieces(make):
    ex = make()
    chunks: list[str] = []
    r = ex.execute("import time\nfor i in range(3):\n    print(i)\n    time.sleep(0.05)",
                   on_stdout=chunks.append)
    assert chunks == ["0\n", "1\n", "2\n"] and r.stdout == "0\n1\n2\n"
    chunks.clear()
    r = ex.execute("for i in range(10_000):\n    print(i)", on_stdout=chunks.append)
    # buffered: far fewer pieces (host calls) than lines, the same text
    assert 1 <= len(chunks) < 1_000
    assert "".join(chunks) == r.stdout == "".join(f"{i}\n" for i in range(10_000))


def test_streamed_text_is_the_results_text_stdout_and_stderr(make):
    ex = make()
    out: list[str] = []
    err: list[str] = []
    code = ("import sys\n"
            "print('a')\n"
            "print('warn', file=sys.stderr)\n"
            # a character split between two flushes arrives whole
            "sys.stdout.buffer.write('é'.encode()[:1])\n"
            "sys.stdout.flush()\n"
            "sys.stdout.buffer.write('é'.encode()[1:])\n"
            "print(' done')\n")
    r = ex.execute(code, on_stdout=out.append, on_stderr=err.append)
    assert r.success, r.error
    assert "".join(out) == r.stdout == "a\né done\n"
    assert "".join(err) == r.stderr == "warn\n"
    assert "é" in out[-1] or "é" in "".join(out[-2:])


def test_an_interpreter_loaded_in_a_fresh_process_buffers_and_streams_too(make, tmp_path):
    # (no boot in that process: the streams' layout comes with the image, from the saving
    # interpreter's boot; the host never takes it from a reply)
    ex = make()
    ex.execute("kept = 1")
    path = tmp_path / "agent.img"
    ex.save(path)
    code = textwrap.dedent(f"""
        from wasm_exec import PythonExecExecutor
        ex = PythonExecExecutor.load({str(path)!r})
        pieces = [ex._session._stream_layout is None]
        for _ in range(2):
            chunks = []
            r = ex.execute("for i in range(3000):\\n    print(i)\\nkept",
                           on_stdout=chunks.append)
            assert r.value.json_value == 1 and "".join(chunks) == r.stdout, r.error
            pieces.append(len(chunks))
        print(pieces)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    unknown, first, second = json.loads(proc.stdout.lower())
    # buffered from the first call on
    assert unknown is False and first < 300 and second < 300


def test_the_output_cap_counts_streamed_output(make):
    ex = make(max_output_bytes=2000)
    out: list[str] = []
    r = ex.execute("for i in range(500):\n    print('x' * 9)", on_stdout=out.append)
    assert r.stdout_truncated and "".join(out) == r.stdout
    assert r.stdout.startswith("x" * 9 + "\n") and "[output truncated" in r.stdout
    assert r.stdout.count("xxxxxxxxx") == 200


def test_waiting_output_is_held_in_few_pieces_whatever_the_guest_writes():
    # (host memory: a slow consumer and a guest that flushes every byte, alternating
    # streams, leave the host the bytes and at most MAX_PIECES pieces)
    queue = ChunkQueue()
    for _ in range(5 * MAX_PIECES):
        queue.put(1, b"o")
        queue.put(2, b"e")
    pieces = queue.take()
    assert len(pieces) == MAX_PIECES and queue.take() == []
    assert sum(len(d) for fd, d in pieces if fd == 1) == 5 * MAX_PIECES
    assert b"".join(d for fd, d in pieces if fd == 2) == b"e" * 5 * MAX_PIECES

    async def mailbox() -> list[OutputChunk]:
        box = Mailbox(asyncio.get_running_loop())
        out, err = box.sender("stdout"), box.sender("stderr")
        for _ in range(5 * MAX_PIECES):
            out("o")
            err("e")
        box.end()
        return await box.take()

    chunks = asyncio.run(mailbox())
    assert len(chunks) == MAX_PIECES
    assert "".join(c.text for c in chunks if c.stream == "stdout") == "o" * 5 * MAX_PIECES


def test_every_byte_arrives_in_order_per_stream_when_the_guest_flushes_each(make):
    ex = make()
    out: list[str] = []
    err: list[str] = []
    r = ex.execute("import sys\nfor i in range(3000):\n"
                   "    print(i % 10, end='', flush=True)\n"
                   "    print(i % 7, end='', file=sys.stderr, flush=True)",
                   on_stdout=out.append, on_stderr=err.append)
    assert "".join(out) == r.stdout == "".join(str(i % 10) for i in range(3000))
    assert "".join(err) == r.stderr == "".join(str(i % 7) for i in range(3000))


def test_a_callback_that_raises_is_reported_and_the_call_goes_on(make):
    ex = make()
    calls: list[str] = []

    def broken(text: str) -> None:
        calls.append(text)
        raise ValueError("consumer broke")

    r = ex.execute("print('one')\nimport time\ntime.sleep(0.05)\nprint('two')\nx = 1",
                   on_stdout=broken)
    assert r.success and r.stdout == "one\ntwo\n"
    assert calls == ["one\n"]  # not called again in this call
    assert r.callback_error == "on_stdout raised ValueError: consumer broke"
    assert ex.execute("", return_globals=["x"]).globals == {"x": 1}


def test_a_slow_callback_holds_up_only_its_own_caller(make):
    ex, other = make(), make()
    entered, release = threading.Event(), threading.Event()
    results: list[ExecutionResult] = []

    def slow(text: str) -> None:
        entered.set()
        release.wait(25)

    worker = threading.Thread(target=lambda: results.append(
        ex.execute("print('first')\nfor i in range(1000):\n    print(i)\ndone = True",
                   on_stdout=slow)))
    worker.start()
    assert entered.wait(25)
    # while that callback blocks, another agent runs a call to its end
    r = other.execute("y = 6 * 7", return_globals=["y"])
    assert r.globals == {"y": 42} and worker.is_alive()
    release.set()
    worker.join()
    (first,) = results
    assert first.success and first.stdout.endswith("999\n") and first.callback_error is None


def test_a_callback_cannot_call_its_own_executor(make):
    ex = make()
    seen: list[str] = []

    def reenter(text: str) -> None:
        seen.append(text)
        ex.execute("x = 2")

    r = ex.execute("x = 1\nprint('hi')", on_stdout=reenter)
    assert r.success and seen == ["hi\n"]
    assert r.callback_error.startswith("on_stdout raised ReentrantCallError")
    assert ex.execute("", return_globals=["x"]).globals == {"x": 1}
    # what the callback got
    caught: list[BaseException] = []

    def keep(text: str) -> None:
        for attempt in (lambda: ex.execute("x = 3"), ex.reset):
            try:
                attempt()
            except ReentrantCallError as e:
                caught.append(e)
        caught.append(ex.release())  # (False: a call is running)

    assert ex.execute("print('again')", on_stdout=keep).callback_error is None
    assert [type(c) for c in caught] == [ReentrantCallError, ReentrantCallError, bool]
    assert "execute() was called" in str(caught[0]) and caught[2] is False
    r = ex.execute("", return_globals=["x"])
    assert r.globals == {"x": 1} and not r.state_reset


def test_an_interrupt_in_a_callback_stops_the_call_and_rolls_it_back(make):
    ex = make()
    ex.execute("x = 1")

    def interrupt(text: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ex.execute("x = 2\nprint('go')\nwhile True: pass", on_stdout=interrupt)
    r = ex.execute("", return_globals=["x"])
    assert r.globals == {"x": 1} and not r.state_reset


def test_astream_yields_chunks_as_printed_then_the_result(make):
    ex = make()

    async def main() -> list[object]:
        events: list[object] = []
        async for event in ex.astream("print('a')\nimport time\ntime.sleep(0.05)\n"
                                      "print('b')\n6 * 7"):
            events.append(event)
        return events

    events = asyncio.run(main())
    assert events[:2] == [OutputChunk("stdout", "a\n"), OutputChunk("stdout", "b\n")]
    result = events[-1]
    assert isinstance(result, ExecutionResult) and len(events) == 3
    assert result.value.json_value == 42 and result.stdout == "a\nb\n"


def test_leaving_astream_early_stops_the_call_and_rolls_it_back(make):
    ex = make()
    ex.execute("x = 1")

    async def main() -> list[object]:
        seen = []
        async with contextlib.aclosing(ex.astream(
                "x = 2\nprint('started')\nwhile True: pass")) as events:
            async for event in events:
                seen.append(event)
                break  # the call never ends by itself: the chunk came while it ran
        return seen

    assert asyncio.run(main()) == [OutputChunk("stdout", "started\n")]
    r = ex.execute("", return_globals=["x"])
    assert r.globals == {"x": 1} and not r.state_reset


def test_aexecute_calls_plain_and_async_callbacks_on_the_loop(make):
    ex = make()

    async def main() -> tuple[ExecutionResult, list[str], list[str]]:
        out: list[str] = []
        err: list[str] = []

        async def on_stderr(text: str) -> None:
            await asyncio.sleep(0)
            err.append(text)

        r = await ex.aexecute("import sys\nprint('o')\nprint('e', file=sys.stderr)",
                              on_stdout=out.append, on_stderr=on_stderr)
        return r, out, err

    r, out, err = asyncio.run(main())
    assert r.success and out == ["o\n"] and err == ["e\n"]


# ------------------------------------------------------------ 2. the last expression's value
@pytest.mark.parametrize("code,text,data", [
    ("x = 5\nx * 2", "10", 10),
    ("2 + 2", "4", 4),
    ("'hé'", "'hé'", "hé"),
    ("[1, (2, 3), {'k': None}]", "[1, (2, 3), {'k': None}]", [1, [2, 3], {"k": None}]),
    ("a = 1; a + 1", "2", 2),
    ("f = max\nf(1,\n  3)", "3", 3),
    ("y = 7\ny  # the last line\n\n# a comment", "7", 7),
    ("s = 'a;b'; s", "'a;b'", "a;b"),
    ("x = 3\nx == 3", "True", True),
])
def test_the_last_expression_is_the_results_value(make, code, text, data):
    r = make().execute(code)
    assert r.success, r.error
    assert r.value.text == text and r.value.is_json and r.value.json_value == data
    assert r.value.mime_bundle() == {"text/plain": text, "application/json": data}


@pytest.mark.parametrize("code", [
    "x = 5", "print(1)", "None", "for i in range(3): i", "if True:\n    7",
    "s = '''\n1 + 1\n'''", "d = {}\nd['k'] = 3", "x: int = 3", "x = 1\nx += 2",
    "import sys", "def f():\n    return 1", "x = 1 + \\\n2", "# only a comment",
])
def test_a_cell_that_ends_with_a_statement_has_no_value(make, code):
    r = make().execute(code)
    assert r.success, r.error
    assert r.value is None


def test_objects_show_their_repr_and_errors_keep_their_lines(make):
    ex = make()
    r = ex.execute("class P:\n    def __repr__(self):\n        return 'P!'\nP()")
    assert r.value.text == "P!" and not r.value.is_json and r.value.json_value is None
    r = ex.execute("class Q:\n    def __repr__(self):\n        raise ValueError\nQ()")
    assert r.success and r.value.text == "<Q object (its repr() failed)>"
    r = ex.execute("list(range(100_000))")
    assert r.value.text.endswith("...") and len(r.value.text) == 100_000
    assert r.value.json_value == list(range(100_000))
    r = ex.execute("x = 1\n1 / 0")
    assert not r.success and r.value is None and r.error_type == "ZeroDivisionError"
    assert 'line 2' in r.traceback and "1 / 0" in r.traceback


def test_the_value_is_never_bound_to_underscore(make):
    ex = make(whitelisted_imports=["builtins"])
    assert ex.execute("6 * 7").value.text == "42"
    r = ex.execute("import builtins\nprobe = [hasattr(builtins, '_'), '_' in globals()]",
                   return_globals=["probe"])
    assert r.globals == {"probe": [False, False]}


def test_display_also_prints_the_value(make):
    r = make().execute("x = 2\nx ** 10", display=True)
    assert r.stdout == "1024\n" and r.value.text == "1024"


@pytest.mark.scientific
@needs_scientific
def test_a_dataframe_shows_as_html_and_text_an_image_as_png():
    with PythonExecExecutor(runtime="scientific", whitelisted_imports=["pandas", "PIL"],
                            default_imports={"pd": "pandas"}, timeout_seconds=60) as ex:
        r = ex.execute("pd.DataFrame({'col_a': [1, 2], 'col_b': [3.5, 4.5]})")
        assert r.success, r.error
        assert "col_a" in r.value.text and "<table" in r.value.html
        assert not r.value.is_json
        r = ex.execute("from PIL import Image\nImage.new('RGB', (4, 4))")
        assert r.value.png.startswith(b"\x89PNG")
        assert r.value.mime_bundle()["image/png"] == base64.b64encode(r.value.png).decode()


# ------------------------------------------------------------------ 5. exit codes and stdin
@pytest.mark.parametrize("code,success,exit_code,stderr", [
    ("import sys\nsys.exit()", True, 0, ""),
    ("import sys\nsys.exit(0)", True, 0, ""),
    ("exit(3)", False, 3, ""),
    ("raise SystemExit(True)", False, 1, ""),
    ("import sys\nsys.exit('bye')", False, 1, "bye\n"),
    ("quit(2 ** 40)", False, 1, ""),
])
def test_system_exit_gives_its_status_and_keeps_the_state(make, code, success, exit_code,
                                                          stderr):
    ex = make()
    r = ex.execute("kept = 'yes'\nprint('before')\n" + code + "\nnot_reached = 1")
    assert r.success is success and r.exit_code == exit_code
    assert r.stdout == "before\n" and r.stderr == stderr and not r.interpreter_lost
    assert r.error_type == (None if success else "SystemExit")
    r = ex.execute("", return_globals=["kept", "not_reached"])
    assert r.globals == {"kept": "yes"} and not r.state_reset
    assert ex.execute("x = 1").exit_code is None


def test_input_says_there_is_no_stdin_and_what_to_use(make):
    ex = make()
    r = ex.execute("kept = 1\nanswer = input('name? ')")
    assert not r.success and r.error_type == "EOFError"
    assert "no stdin" in r.error and "globals_dict" in r.error
    assert ex.execute("", return_globals=["kept"]).globals == {"kept": 1}


# ------------------------------------------------------------------------ 6. JSON results
def test_every_result_dumps_to_json(make):
    ex = make()
    r = ex.execute("n = float('nan')\nbig = 10 ** 4000\ns = '\\ud800x'\n"
                   "deep = []\nc = deep\nfor _ in range(399):\n    c.append([])\n    c = c[0]\n"
                   "'\\udcff'", return_globals=["n", "big", "s", "deep"])
    assert r.success and r.globals["s"] == "\ud800x"
    data = json.loads(r.model_dump_json())
    assert data["globals"]["n"] is None and data["globals"]["big"] == 10 ** 4000
    assert data["globals"]["s"] == "\ud800x" and data["value"]["json_value"] == "\udcff"
    depth, c = 0, data["globals"]["deep"]
    while c:
        depth, c = depth + 1, c[0]
    assert depth == 399
    # a stopped call, a failed one
    for code in ("while True: pass", "1 / 0"):
        json.loads(ex.execute(code, limits={"fuel": 10_000_000}).model_dump_json())


@pytest.mark.scientific
@needs_scientific
def test_figures_dump_as_base64_and_read_back():
    with PythonExecExecutor(runtime="scientific", whitelisted_imports=["matplotlib.pyplot"],
                            default_imports={"plt": "matplotlib.pyplot"},
                            timeout_seconds=60) as ex:
        r = ex.execute("fig, ax = plt.subplots()\nax.plot([1, 2, 3])")
    assert r.success and r.figures
    text = r.model_dump_json()
    assert base64.b64decode(json.loads(text)["figures"][0]) == r.figures[0]
    assert ExecutionResult.model_validate_json(text) == r


# ------------------------------------------------------------------------------ the CLI
def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wasm_exec", *args], capture_output=True,
                          text=True, timeout=300, **kw)


def test_cli_run_streams_its_output():
    proc = subprocess.Popen(
        [sys.executable, "-m", "wasm_exec", "run", "-c",
         "print('first')\nwhile True: pass", "--timeout", "60", "--fuel", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        still_running = proc.poll() is None
    finally:
        proc.kill()
        proc.communicate()
    assert line == "first\n" and still_running


def test_cli_run_exits_with_the_codes_status():
    p = _cli("run", "-c", "import sys\nprint('out')\nsys.exit(4)", "--allow", "sys")
    assert p.returncode == 4 and p.stdout == "out\n" and p.stderr == ""
    p = _cli("run", "-c", "import sys\nsys.exit('no good')", "--allow", "sys")
    assert p.returncode == 1 and p.stderr == "no good\n"
    p = _cli("run", "-c", "exit()", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["exit_code"] == 0


@pytest.mark.scientific
@needs_scientific
def test_cli_json_holds_figures():
    p = _cli("run", "--runtime", "scientific", "--allow", "matplotlib.pyplot", "--json",
             "--timeout", "120", "-c",
             "import matplotlib.pyplot as plt\nplt.plot([1, 2])\n'done'")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert base64.b64decode(out["figures"][0]).startswith(b"\x89PNG")
    assert out["value"]["text"] == "'done'"


def test_cli_repl_shows_values_and_streams():
    p = _cli("repl", input="x = 20\nx + 22\nprint('p')\nimport sys\n")
    assert p.returncode == 0
    assert "42\n" in p.stdout and "p\n" in p.stdout and "None" not in p.stdout
    p = _cli("repl", input="x = 1\nexit(3)\nprint('not reached')\n")
    assert p.returncode == 3 and "not reached" not in p.stdout


def test_the_host_writes_a_stream_flag_only_where_a_stream_still_is():
    # (checked at every write: an agent that freed the runner's streams and laid out
    # memory of its own at their addresses gets no byte written that does not look like a
    # stream's flag)
    import ctypes

    from wasm_exec import streams

    memory = (ctypes.c_uint8 * 4096)()
    base = ctypes.addressof(memory)
    layout = streams.StreamLayout(offset=40, type_word=0xABCD, stdout=1000, stderr=2000)
    for start in (1000, 2000):
        ctypes.memmove(base + start + streams.TYPE_WORD, (0xABCD).to_bytes(4, "little"), 4)
        memory[start + 40] = 1
    streams.set_flag(base, 4096, layout, 0, 0)
    assert memory[1040] == 0 and streams.get_flag(base, 4096, layout, 0) == 0
    memory[2000 + streams.TYPE_WORD] = 0x11  # (another object there now)
    streams.set_flag(base, 4096, layout, 1, 0)
    assert memory[2040] == 1 and streams.get_flag(base, 4096, layout, 1) is None
    memory[1040] = 7  # (not a flag)
    streams.set_flag(base, 4096, layout, 0, 1)
    assert memory[1040] == 7
    # outside the memory: nothing
    far = streams.StreamLayout(offset=40, type_word=0xABCD, stdout=4090, stderr=0)
    streams.set_flag(base, 4096, far, 0, 1)
    streams.set_flag(base, 4096, far, 1, 1)
    assert streams.get_flag(base, 4096, far, 0) is None
    # an image's header gives a layout only as four 32-bit numbers
    assert streams.layout_from_json(streams.layout_to_json(layout)) == layout
    for bad in ([1, 2, 3], [40, -1, 0, 0], [40, 1 << 32, 0, 0], [0, 1, 2, 3], "x"):
        with pytest.raises(ValueError):
            streams.layout_from_json(bad)
