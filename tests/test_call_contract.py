"""The call contract after the refactor of the call path: where input is checked, what a
protocol stop reports, how limits are read, and that nothing blocks the process's exit.
(Regressions an independent review of that refactor found; each failed on it.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading

import pytest

import wasm_exec.session as session_module
from wasm_exec import ConfigurationError, InputError, PythonExecExecutor
from wasm_exec.config import configure
from wasm_exec.protocol import ProtocolError, validate_call_reply


def test_an_async_call_checks_its_code_and_globals_off_the_event_loop(monkeypatch):
    # (a large code or globals is encoded on the worker thread: the loop never waits)
    seen: list[str] = []
    real = PythonExecExecutor._check_globals

    def spy(globals_dict, limits):
        seen.append(threading.current_thread().name)
        return real(globals_dict, limits)

    monkeypatch.setattr(PythonExecExecutor, "_check_globals", staticmethod(spy))

    async def main() -> tuple[str, list]:
        loop_thread = threading.current_thread().name
        with PythonExecExecutor() as ex:
            r = await ex.aexecute("y = x + 1", {"x": 1}, ["y"])
            events = [e async for e in ex.astream("z = x", {"x": 2}, ["z"])]
            return loop_thread, [r.globals, events[-1].globals]

    loop_thread, results = asyncio.run(main())
    assert results == [{"y": 2}, {"z": 2}]
    assert len(seen) == 2 and loop_thread not in seen


def test_bad_input_to_an_async_call_is_still_an_input_error():
    async def main() -> None:
        with PythonExecExecutor() as ex:
            with pytest.raises(InputError, match="globals_dict"):
                await ex.aexecute("pass", {"a": object()})
            with pytest.raises(InputError, match="code must be a str"):
                async for _ in ex.astream(b"pass"):  # type: ignore[arg-type]
                    pass
            assert (await ex.aexecute("1 + 1")).value.json_value == 2

    asyncio.run(main())


def test_an_astream_left_unfinished_at_loop_shutdown_stops_quietly():
    errors: list[dict] = []

    with PythonExecExecutor(timeout_seconds=30, fuel=None) as ex:
        ex.execute("x = 41")
        kept = []

        async def leave() -> None:
            asyncio.get_running_loop().set_exception_handler(lambda _loop, c: errors.append(c))
            stream = ex.astream("print('go', flush=True)\nwhile True: pass")
            async for _ in stream:
                break
            kept.append(stream)  # (left open: asyncio.run closes it at shutdown)

        asyncio.run(leave())
        r = ex.execute("x", return_globals=["x"])
    assert errors == []
    assert r.success and r.globals == {"x": 41} and not r.state_reset


def test_a_reply_that_breaks_the_protocol_loses_the_interpreter_but_reads_its_files(
        monkeypatch):
    state = {"bad": False}

    def checked(reply, call_id):
        if state["bad"]:
            raise ProtocolError("forged reply")
        return validate_call_reply(reply, call_id)

    monkeypatch.setattr(session_module, "validate_call_reply", checked)
    with PythonExecExecutor() as ex:
        ex.execute("x = 41")
        state["bad"] = True
        r = ex.execute("open('out.txt', 'w').write('hi')", output_files=["out.txt"])
        state["bad"] = False
        assert r.limit == "protocol" and r.interpreter_lost and not r.rolled_back
        assert "forged reply" in r.error
        assert r.files == {"out.txt": b"hi"}
        after = ex.execute("print(globals().get('x'))")
        assert after.state_reset and after.reset_reason == "lost"
        assert after.stdout == "None\n"


def test_limits_are_read_from_keywords_mappings_and_pairs_alike():
    policy, limits = configure(["json"], {"j": "json"}, [("timeout_seconds", 5)], fuel=None)
    assert limits.timeout_seconds == 5 and limits.fuel is None
    assert policy.allowed == frozenset({"json"})
    with PythonExecExecutor(limits=[("timeout_seconds", 7)]) as ex:  # type: ignore[arg-type]
        assert ex.limits.timeout_seconds == 7
    # an unknown limit given as an override names the known ones
    with pytest.raises(ConfigurationError, match=r"^X: unknown limit\(s\) \['bogus'\]"):
        configure(overrides={"bogus": 1}, owner="X")
    with pytest.raises(ConfigurationError):
        configure(limits=5)  # type: ignore[arg-type]


def test_with_bad_globals_and_bad_names_the_globals_are_reported():
    with PythonExecExecutor() as ex:
        with pytest.raises(InputError, match="globals_dict"):
            ex.execute("pass", {"a": object()}, ["not an identifier"])


def test_the_process_exits_without_waiting_for_a_running_calls_deadline():
    # an executor's interpreters are freed at exit, which stops a call a daemon thread
    # runs at once (it does not wait for the call's deadline)
    script = textwrap.dedent("""
        import threading, time
        from wasm_exec import PythonExecExecutor
        ex = PythonExecExecutor(timeout_seconds=120, fuel=None)
        ex.execute("x = 1")
        def run():
            print("ended:", ex.execute("while True: pass").limit, flush=True)
        threading.Thread(target=run, daemon=True).start()
        time.sleep(1)
        print("exiting", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=100)
    assert done.returncode == 0, done.stderr
    assert "exiting" in done.stdout and "ended: timeout" not in done.stdout
