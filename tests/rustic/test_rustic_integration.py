"""The Rustic AI integration: WasmCodeExecutor, WasmExecExecutorResolver, a real guild.

Run with a Python that has Rustic AI (``rusticai-core``, Python >= 3.13)::

    .venv313/bin/python -m pytest tests/rustic -q
"""

from __future__ import annotations

import pytest

pytest.importorskip("rustic_ai")

import asyncio  # noqa: E402
import base64  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

from pydantic import BaseModel  # noqa: E402
from rustic_ai.core.agents.testutils.probe_agent import ProbeAgent  # noqa: E402
from rustic_ai.core.guild import agent  # noqa: E402
from rustic_ai.core.guild.agent import Agent, ProcessContext  # noqa: E402
from rustic_ai.core.guild.agent_ext.depends.code_execution.stateful import (  # noqa: E402
    CodeExecutor,
    CodeSnippet,
    ValidationError,
)
from rustic_ai.core.guild.builders import AgentBuilder, GuildBuilder  # noqa: E402
from rustic_ai.core.guild.dsl import DependencySpec  # noqa: E402
from rustic_ai.core.messaging.core.message import Message  # noqa: E402

import wasm_exec  # noqa: E402
from tests.rustic.probe_support import attach_probe  # noqa: E402
from wasm_exec.integrations.rustic import (  # noqa: E402
    WasmCodeExecutor,
    WasmExecExecutorResolver,
    close_shared_resolvers,
)

RESOLVER = "wasm_exec.integrations.rustic.WasmExecExecutorResolver"


def py(code: str) -> CodeSnippet:
    return CodeSnippet(language="python", code=code)


@pytest.fixture(autouse=True, scope="module")
def _close_pools() -> Iterator[None]:
    yield
    close_shared_resolvers()


@pytest.fixture
def executor() -> Iterator[WasmCodeExecutor]:
    ex = WasmCodeExecutor()
    yield ex
    ex.shutdown()


@pytest.fixture
def executor_with_imports() -> Iterator[WasmCodeExecutor]:
    ex = WasmCodeExecutor(whitelisted_imports={"math", "json"},
                          default_imports={"m": "math", "json_lib": "json"})
    yield ex
    ex.shutdown()


# ------------------------------------------------- Rustic's own executor tests, mirrored
def test_basic_execution(executor: WasmCodeExecutor) -> None:
    result = executor.run(py('x = 1 + 2\nprint(f"Result: {x}")'))
    assert result.exit_code == 0
    assert result.stdout == "Result: 3\n"
    assert result.stderr == ""
    assert result.exception is None
    assert result.timed_out is False
    assert result.duration_seconds is not None and result.duration_seconds > 0
    assert result.resources_used is not None
    assert set(result.resources_used) == {"fuel_used", "memory_bytes", "limit", "state_reset",
                                          "interpreter_lost"}
    assert isinstance(result.resources_used["fuel_used"], int)
    assert result.resources_used["fuel_used"] > 0
    assert result.resources_used["limit"] is None
    assert result.input_snippet.code.startswith("x = 1 + 2")


def test_is_a_rustic_code_executor(executor: WasmCodeExecutor) -> None:
    assert isinstance(executor, CodeExecutor)
    assert executor.supported_languages == {"python"}


def test_state_persistence(executor: WasmCodeExecutor) -> None:
    assert executor.run(py("x = 42")).exit_code == 0
    result = executor.run(py("print(x)"))
    assert result.exit_code == 0
    assert result.stdout == "42\n"


def test_error_handling(executor: WasmCodeExecutor) -> None:
    result = executor.run(py("1/0"))
    assert result.exit_code == -1
    assert result.exception is not None
    assert result.exception.type == "ZeroDivisionError"
    assert "division by zero" in result.exception.message
    assert result.exception.traceback is not None
    assert "ZeroDivisionError" in result.exception.traceback


def test_syntax_error_handling(executor: WasmCodeExecutor) -> None:
    result = executor.run(py("if True print('invalid')"))
    assert result.exit_code == -1
    assert result.exception is not None
    assert result.exception.type == "SyntaxError"


def test_blocked_direct_import_without_allow_list(executor: WasmCodeExecutor) -> None:
    # Rustic's in-process executor says "__import__ not found" here; ours names the policy
    result = executor.run(py("import sys"))
    assert result.exit_code == -1
    assert result.exception is not None
    assert result.exception.type == "ImportError"
    assert result.exception.message == "Import of 'sys' is not allowed. Allowed imports: []"


def test_output_capture(executor: WasmCodeExecutor) -> None:
    result = executor.run(py("print('to stdout')\nraise Exception('to stderr')\n"))
    assert result.stdout == "to stdout\n"
    assert result.exit_code == -1
    assert result.exception is not None
    assert result.exception.type == "Exception"
    assert "to stderr" in result.exception.message


def test_stderr_is_captured_exactly() -> None:
    ex = WasmCodeExecutor(whitelisted_imports=["sys"])
    try:
        result = ex.run(py("import sys\nprint('out')\nprint('warn', file=sys.stderr)"))
        assert (result.exit_code, result.stdout, result.stderr) == (0, "out\n", "warn\n")
    finally:
        ex.shutdown()


def test_system_exit_codes(executor: WasmCodeExecutor) -> None:
    assert executor.run(py("raise SystemExit(7)")).exit_code == 7
    assert executor.run(py("raise SystemExit(0)")).exit_code == 0
    assert executor.run(py("raise SystemExit")).exit_code == 0
    assert executor.run(py("raise SystemExit('bye')")).exit_code == 1
    # the interpreter survives a SystemExit
    executor.run(py("y = 5"))
    assert executor.run(py("print(y)")).stdout == "5\n"


def test_invalid_language(executor: WasmCodeExecutor) -> None:
    with pytest.raises(ValidationError) as exc_info:
        executor.run(py("x").model_copy(update={"language": "javascript"}))
    assert "Unsupported language: javascript" in str(exc_info.value)


def test_invalid_language_async(executor: WasmCodeExecutor) -> None:
    snippet = CodeSnippet(language="javascript", code="console.log(1)")
    with pytest.raises(ValidationError, match="Unsupported language: javascript"):
        asyncio.run(executor.run_async(snippet))


def test_shutdown_clears_state(executor: WasmCodeExecutor) -> None:
    executor.run(py("x = 42"))
    executor.shutdown()
    result = executor.run(py("print(x)"))
    assert result.exit_code == -1
    assert result.exception is not None
    assert result.exception.type == "NameError"
    assert "name 'x' is not defined" in result.exception.message
    # a run after shutdown starts a new life: a second shutdown clears state again
    executor.run(py("z = 1"))
    assert executor.run(py("print(z)")).stdout == "1\n"
    executor.shutdown()
    assert executor.run(py("print(z)")).exception.type == "NameError"  # type: ignore[union-attr]


def test_shutdown_closes_the_interpreter(executor: WasmCodeExecutor) -> None:
    first = executor.executor
    executor.shutdown()
    assert first.closed
    assert executor.executor is not first


def test_whitelisted_imports(executor_with_imports: WasmCodeExecutor) -> None:
    result = executor_with_imports.run(py("from math import sqrt\nprint(sqrt(16))"))
    assert result.exit_code == 0
    assert result.stdout.strip() == "4.0"
    assert result.stderr == ""
    assert result.exception is None


def test_blocked_non_whitelisted_import(executor_with_imports: WasmCodeExecutor) -> None:
    result = executor_with_imports.run(py("import sys"))
    assert result.exit_code == -1
    assert result.exception is not None
    assert result.exception.type == "ImportError"
    assert "Import of 'sys' is not allowed" in result.exception.message


def test_default_imports_available(executor_with_imports: WasmCodeExecutor) -> None:
    result = executor_with_imports.run(py("print(m.pi)\nprint(json_lib.dumps([1,2,3]))"))
    assert result.exit_code == 0
    assert "3.14159" in result.stdout
    assert "[1, 2, 3]" in result.stdout
    assert result.stderr == ""
    assert result.exception is None


def test_default_imports_after_shutdown(executor_with_imports: WasmCodeExecutor) -> None:
    executor_with_imports.shutdown()
    assert executor_with_imports.run(py("print(m.floor(2.5))")).stdout == "2\n"


# ----------------------------------------------------------------- limits and timeouts
def test_timeout_maps_to_timed_out(executor: WasmCodeExecutor) -> None:
    executor.run(py("kept = 1"))
    started = time.monotonic()
    result = executor.run(py("while True: pass"), timeout_seconds=1)
    assert time.monotonic() - started < 5
    assert result.timed_out is True
    assert result.exit_code == -1
    assert result.exception is not None
    assert result.exception.type == "TimeoutError"
    assert result.resources_used is not None
    assert result.resources_used["limit"] == "timeout"
    assert result.resources_used["interpreter_lost"] is False
    # the stopped run was rolled back: the next run works and finds the earlier state
    after = executor.run(py("print('alive', kept)"))
    assert after.exit_code == 0 and after.stdout == "alive 1\n"
    assert after.resources_used is not None and after.resources_used["state_reset"] is False


def test_configured_timeout_is_a_ceiling() -> None:
    ex = WasmCodeExecutor(timeout_seconds=1)
    try:
        started = time.monotonic()
        result = ex.run(py("while True: pass"), timeout_seconds=60)
        assert result.timed_out and time.monotonic() - started < 5
    finally:
        ex.shutdown()


def test_fuel_limit_is_not_a_timeout() -> None:
    ex = WasmCodeExecutor(fuel=50_000_000)
    try:
        result = ex.run(py("while True: pass"))
        assert result.timed_out is False
        assert result.exit_code == -1
        assert result.resources_used is not None and result.resources_used["limit"] == "fuel"
        assert result.exception is not None and result.exception.type == "FuelExhausted"
    finally:
        ex.shutdown()


def test_bad_timeout_is_an_error_result(executor: WasmCodeExecutor) -> None:
    result = executor.run(py("x = 1"), timeout_seconds=0)
    assert result.exit_code == -1
    assert result.exception is not None and result.exception.type == "InputError"


def test_run_async_timeout_does_not_block_the_loop(executor: WasmCodeExecutor) -> None:
    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        task = asyncio.create_task(ticker())
        try:
            started = time.monotonic()
            result = await executor.run_async(py("while True: pass"), timeout_seconds=1)
            elapsed = time.monotonic() - started
        finally:
            task.cancel()
        assert result.timed_out is True and result.exit_code == -1
        assert elapsed < 5
        assert ticks >= 5  # the loop kept running while the guest spun
        after = await executor.run_async(py("print(1 + 1)"))
        assert after.exit_code == 0 and after.stdout == "2\n"

    asyncio.run(main())


def test_run_async_cancellation_stops_the_guest(executor: WasmCodeExecutor) -> None:
    async def main() -> None:
        await executor.run_async(py("kept = 1"))
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(executor.run_async(py("while True: pass"), timeout_seconds=30),
                                   timeout=0.5)
        assert time.monotonic() - started < 5
        # the cancelled run was stopped and rolled back: the state from before it is kept
        result = await executor.run_async(py("print('next', kept)"))
        assert result.exit_code == 0 and result.stdout == "next 1\n"
        assert result.resources_used is not None and result.resources_used["state_reset"] is False

    asyncio.run(main())


def test_run_async_state_and_errors(executor: WasmCodeExecutor) -> None:
    async def main() -> None:
        assert (await executor.run_async(py("a = 20"))).exit_code == 0
        result = await executor.run_async(py("print(a + 1)\n1/0"))
        assert result.stdout == "21\n"
        assert result.exit_code == -1
        assert result.exception is not None and result.exception.type == "ZeroDivisionError"

    asyncio.run(main())


# ------------------------------------------------------------------------ files
def test_input_files_and_output_filenames(executor: WasmCodeExecutor) -> None:
    result = executor.run(
        py("rows = open('data.csv').read().splitlines()\n"
           "open('summary.txt', 'w').write(f'{len(rows)} rows')\n"
           "open('/tmp/raw.bin', 'wb').write(bytes([0, 255]))\n"),
        input_files={"data.csv": b"a,b\n1,2\n3,4\n"},
        output_filenames=["summary.txt", "/tmp/raw.bin", "missing.png"])
    assert result.exit_code == 0, result.exception
    assert result.output_files == {"summary.txt": b"3 rows", "/tmp/raw.bin": b"\x00\xff"}
    assert len(result.logs) == 1 and "'missing.png'" in result.logs[0]
    assert "no such file" in result.logs[0]
    # the files stay with the agent's interpreter
    assert executor.run(py("print(open('data.csv').read().count(','))")).stdout == "3\n"


def test_bad_file_names_give_an_error_result(executor: WasmCodeExecutor) -> None:
    result = executor.run(py("x = 1"), input_files={"../etc/passwd": b"x"})
    assert result.exit_code == -1
    assert result.exception is not None and result.exception.type == "InputError"
    assert "'..'" in result.exception.message
    # nothing ran
    assert executor.run(py("print(x)")).exception.type == "NameError"  # type: ignore[union-attr]
    result = executor.run(py("x = 1"), output_filenames=["/etc/passwd"])
    assert result.exception is not None and "outside the agent's files" in \
        result.exception.message


def test_files_async(executor: WasmCodeExecutor) -> None:
    async def main() -> None:
        result = await executor.run_async(
            py("open('b.txt', 'w').write(open('a.txt').read().upper())"),
            input_files={"a.txt": b"hi"}, output_filenames=["b.txt"])
        assert result.exit_code == 0, result.exception
        assert result.output_files == {"b.txt": b"HI"}

    asyncio.run(main())


def test_output_files_of_a_stopped_run(executor: WasmCodeExecutor) -> None:
    result = executor.run(py("open('o.txt', 'w').write('x')\nwhile True: pass"),
                          timeout_seconds=1, output_filenames=["o.txt"])
    assert result.timed_out and result.output_files == {}
    assert "limit stopped the call" in result.logs[0]


# ------------------------------------------------------------- seed API, same state
def test_execute_and_run_share_state(executor_with_imports: WasmCodeExecutor) -> None:
    ex = executor_with_imports
    r = ex.execute("total = sum(input_data)", globals_dict={"input_data": [1, 2, 3]},
                   return_globals=["total"])
    assert isinstance(r, wasm_exec.ExecutionResult)
    assert r.success and r.globals == {"total": 6}
    assert ex.run(py("print(total * 2)")).stdout == "12\n"
    ex.run(py("output = {'root': m.sqrt(total * 6)}"))
    r = ex.execute("pass", return_globals=["output"])
    assert r.globals == {"output": {"root": 6.0}}


def test_execute_rejects_non_json_globals(executor: WasmCodeExecutor) -> None:
    with pytest.raises(wasm_exec.InputError):
        executor.execute("x = 1", globals_dict={"data": {1, 2}})


def test_aexecute(executor: WasmCodeExecutor) -> None:
    async def main() -> None:
        r = await executor.aexecute("y = x * 2", globals_dict={"x": 21}, return_globals=["y"])
        assert r.globals == {"y": 42}

    asyncio.run(main())


def test_wrap_an_existing_executor() -> None:
    inner = wasm_exec.PythonExecExecutor(whitelisted_imports=["math"])
    ex = WasmCodeExecutor.wrap(inner)
    inner.execute("v = 3")
    assert ex.run(py("import math\nprint(math.factorial(v))")).stdout == "6\n"
    ex.shutdown()
    assert inner.closed
    assert ex.run(py("import math\nprint(math.e > 2)")).stdout == "True\n"
    ex.shutdown()


def test_import_error_without_rustic() -> None:
    code = ("import sys\nsys.modules['rustic_ai'] = None\n"
            "try:\n    import wasm_exec.integrations.rustic\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.startswith("wasm_exec.integrations.rustic needs Rustic AI: pip install "
                          "rusticai-core (Python >= 3.13)")


# ------------------------------------------------------------------------ resolver
def test_resolver_shares_one_pool_per_configuration() -> None:
    props: dict[str, Any] = {"whitelisted_imports": ["math"], "default_imports": {"m": "math"},
                             "timeout_seconds": 5}
    r1 = DependencySpec(class_name=RESOLVER, properties=props).to_resolver()
    r2 = DependencySpec(class_name=RESOLVER, properties=dict(props)).to_resolver()
    other = DependencySpec(class_name=RESOLVER, properties={"whitelisted_imports": ["json"]})
    assert isinstance(r1, WasmExecExecutorResolver) and isinstance(r2, WasmExecExecutorResolver)
    assert r1.pool is r2.pool
    assert other.to_resolver().pool is not r1.pool  # type: ignore[attr-defined]

    a1 = r1.get_or_resolve("org", "guild", "agent-a")
    assert a1 is r1.get_or_resolve("org", "guild", "agent-a")  # memoized per resolver
    a2 = r2.get_or_resolve("org", "guild", "agent-a")  # another resolver, same agent
    b = r1.get_or_resolve("org", "guild", "agent-b")
    assert isinstance(a1, WasmCodeExecutor) and isinstance(a2, WasmCodeExecutor)
    assert isinstance(b, WasmCodeExecutor)

    a1.run(py("secret = m.sqrt(49)"))
    assert a2.run(py("print(secret)")).stdout == "7.0\n"  # same agent, same state
    assert b.run(py("print(secret)")).exception.type == "NameError"  # type: ignore[union-attr]
    assert r1.get_or_resolve("org", "other-guild", "agent-a").run(
        py("secret")).exception.type == "NameError"  # type: ignore[union-attr]
    assert {("agent-a", "guild", "org"), ("agent-b", "guild", "org"),
            ("agent-a", "other-guild", "org")} <= set(r1.pool.agents())

    # shutdown() through one handle clears the agent's state for every handle
    a1.shutdown()
    assert a2.run(py("secret")).exception.type == "NameError"  # type: ignore[union-attr]

    # the configured timeout is a ceiling for run()
    started = time.monotonic()
    assert b.run(py("while True: pass"), timeout_seconds=1).timed_out
    assert time.monotonic() - started < 5


def test_resolver_rejects_bad_configuration() -> None:
    with pytest.raises(wasm_exec.ConfigurationError):
        WasmExecExecutorResolver(whitelisted_imports="math")  # a string, not a list
    with pytest.raises(wasm_exec.ConfigurationError):
        WasmExecExecutorResolver(timeout_seconds=-1)
    with pytest.raises(wasm_exec.ConfigurationError):
        WasmExecExecutorResolver(limits={"no_such_limit": 1})


def _agent(resolver: WasmExecExecutorResolver, agent_id: str) -> WasmCodeExecutor:
    executor = resolver.get_or_resolve("org", "g", agent_id)
    assert isinstance(executor, WasmCodeExecutor)
    return executor


def test_resolver_pool_is_bounded() -> None:
    resolver = WasmExecExecutorResolver(max_agents=1, idle_timeout_seconds=None,
                                        max_output_bytes=4096)
    first, second = _agent(resolver, "one"), _agent(resolver, "two")
    first.run(py("x = 1"))
    second.run(py("x = 2"))   # "one" is parked to make room
    assert resolver.pool.parked_agents() == [("one", "g", "org")]
    result = first.run(py("print(x)"))   # "two" is parked, "one" comes back
    assert result.exit_code == 0 and result.stdout == "1\n"
    assert result.resources_used is not None
    assert result.resources_used["state_reset"] is False
    assert resolver.pool.live_agents() == [("one", "g", "org")]
    assert resolver.pool.parked_agents() == [("two", "g", "org")]


def test_close_shared_resolvers_then_use_again() -> None:
    resolver = WasmExecExecutorResolver(whitelisted_imports=["json"], idle_timeout_seconds=None)
    old_pool = resolver.pool
    ex = _agent(resolver, "agent")
    ex.run(py("x = 1"))
    close_shared_resolvers()
    assert ex.executor.closed is False  # a fresh interpreter, in a new pool
    result = ex.run(py("print(x)"))
    assert result.exit_code == -1
    assert result.exception is not None and result.exception.type == "NameError"
    assert resolver.pool is not old_pool
    again = WasmExecExecutorResolver(whitelisted_imports=["json"], idle_timeout_seconds=None)
    assert again.pool is resolver.pool
    assert _agent(again, "agent").run(py("import json; print(json.dumps(1))")).stdout == "1\n"


# --------------------------------------------------------------------- a real guild
class CodeRequest(BaseModel):
    """What the probe sends to a code-execution agent."""

    code: str
    input_data: Any = None


class CodeExecutionAgent(Agent):
    """Runs the code of each request with its injected ``code_executor``."""

    @agent.processor(clz=CodeRequest, depends_on=["code_executor"])
    def run_code(self, ctx: ProcessContext[CodeRequest], code_executor: CodeExecutor) -> None:
        request = ctx.payload
        result = code_executor.execute(  # type: ignore[attr-defined]
            code=request.code, globals_dict={"input_data": request.input_data},
            return_globals=["output"])
        if result.success:
            ctx.send_dict({"status": "success", "output": result.globals.get("output")})
        else:
            ctx.send_dict({"status": "error", "error": result.error})


class FileRequest(BaseModel):
    """What the probe sends to a file-handling agent: code, files in (base64), names out."""

    code: str
    files: dict[str, str] = {}
    outputs: list[str] = []


class FileAgent(Agent):
    """Runs code with files in and out through Rustic's own CodeExecutor.run."""

    @agent.processor(clz=FileRequest, depends_on=["code_executor"])
    def run_files(self, ctx: ProcessContext[FileRequest], code_executor: CodeExecutor) -> None:
        request = ctx.payload
        result = code_executor.run(
            CodeSnippet(language="python", code=request.code),
            input_files={k: base64.b64decode(v) for k, v in request.files.items()},
            output_filenames=request.outputs)
        ctx.send_dict({"status": "success" if result.exit_code == 0 else "error",
                       "files": {k: base64.b64encode(v).decode()
                                 for k, v in result.output_files.items()},
                       "logs": result.logs, "stdout": result.stdout})


def _replies(probe: ProbeAgent, count: int, timeout: float = 15.0) -> list[Message]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = [m for m in probe.get_messages() if "status" in m.payload]
        if len(replies) >= count:
            return replies
        time.sleep(0.02)
    raise AssertionError(f"expected {count} replies, got {probe.get_messages()!r}")


@pytest.fixture
def guild_and_probe() -> Iterator[tuple[ProbeAgent, Callable[[str, str, Any], dict[str, Any]]]]:
    def code_agent(agent_id: str, topic: str, cls: Any = CodeExecutionAgent) -> Any:
        return (AgentBuilder(cls).set_id(agent_id).set_name(agent_id)
                .set_description("runs agent-written Python in wasm-exec")
                .listen_to_default_topic(False).add_additional_topic(topic).build_spec())

    builder = (
        GuildBuilder("wasm_exec_guild", "wasm-exec guild", "CodeExecutionAgents on wasm-exec")
        .set_messaging("rustic_ai.core.messaging.backend", "InMemoryMessagingBackend", {})
        .add_dependency_resolver(
            "code_executor",
            DependencySpec(class_name=RESOLVER,
                           properties={"whitelisted_imports": ["math"],
                                       "default_imports": {"m": "math"}}))
        .add_agent_spec(code_agent("coder_a", "code_a"))
        .add_agent_spec(code_agent("coder_b", "code_b"))
    )
    guild = builder.launch(organization_id="wasm_exec_org")
    probe = attach_probe(guild, ["code_a", "code_b"])

    def ask(topic: str, code: str, input_data: Any = None) -> dict[str, Any]:
        probe.clear_messages()
        probe.publish(topic=topic, payload=CodeRequest(code=code, input_data=input_data))
        (reply,) = _replies(probe, 1)
        return reply.payload

    try:
        yield probe, ask
    finally:
        guild.shutdown()


def test_guild_code_execution_agents(guild_and_probe: tuple[ProbeAgent, Any]) -> None:
    probe, ask = guild_and_probe

    # default import, globals in, a global out
    assert ask("code_a", "output = m.sqrt(sum(input_data))", [9, 16]) == {
        "status": "success", "output": 5.0}

    # state persists for one agent across messages
    assert ask("code_a", "counter = 41")["status"] == "success"
    assert ask("code_a", "counter += 1\noutput = counter") == {"status": "success",
                                                                "output": 42}

    # the other agent is isolated
    reply = ask("code_b", "output = counter")
    assert reply["status"] == "error"
    assert "NameError" in reply["error"] and "counter" in reply["error"]
    assert ask("code_b", "output = input_data['k'] * 2", {"k": 21}) == {"status": "success",
                                                                         "output": 42}

    # a refused import comes back as an error message
    reply = ask("code_a", "import os\noutput = os.getcwd()")
    assert reply["status"] == "error"
    assert "Import of 'os' is not allowed" in reply["error"]

    # and agent A still has its state
    assert ask("code_a", "output = counter") == {"status": "success", "output": 42}

    # both agents live in the one pool shared by every resolver of this configuration
    pool = WasmExecExecutorResolver(whitelisted_imports=["math"],
                                    default_imports={"m": "math"}).pool
    assert {("coder_a", "wasm_exec_guild", "wasm_exec_org"),
            ("coder_b", "wasm_exec_guild", "wasm_exec_org")} <= set(pool.live_agents())


@pytest.fixture
def files_guild() -> Iterator[Callable[..., dict[str, Any]]]:
    """A guild (of its own name: agents of an earlier guild of the same name may still
    listen) with one FileAgent on the topic "files"."""
    filer = (AgentBuilder(FileAgent).set_id("filer").set_name("filer")
             .set_description("runs code with files in and out")
             .listen_to_default_topic(False).add_additional_topic("files").build_spec())
    guild = (
        GuildBuilder("wasm_exec_files_guild", "wasm-exec files guild", "files in and out")
        .set_messaging("rustic_ai.core.messaging.backend", "InMemoryMessagingBackend", {})
        .add_dependency_resolver("code_executor",
                                 DependencySpec(class_name=RESOLVER, properties={}))
        .add_agent_spec(filer)
    ).launch(organization_id="wasm_exec_org")
    probe = attach_probe(guild, ["files"], probe_id="files_probe",
                         description="sends code and files")

    def ask(code: str, files: dict[str, str], outputs: list[str]) -> dict[str, Any]:
        probe.clear_messages()
        probe.publish(topic="files", payload=FileRequest(code=code, files=files,
                                                         outputs=outputs))
        (reply,) = _replies(probe, 1)
        return reply.payload

    try:
        yield ask
    finally:
        guild.shutdown()


def test_guild_files_in_and_out(files_guild: Callable[..., dict[str, Any]]) -> None:
    ask = files_guild
    csv = base64.b64encode(b"x,y\n1,2\n3,4\n").decode()
    reply = ask("rows = open('in.csv').read().splitlines()[1:]\n"
                "total = sum(int(v) for r in rows for v in r.split(','))\n"
                "open('total.txt', 'w').write(str(total))\n"
                "open('copy.csv', 'wb').write(open('in.csv', 'rb').read())\n",
                files={"in.csv": csv}, outputs=["total.txt", "copy.csv", "nope.txt"])
    assert reply["status"] == "success", reply
    assert {k: base64.b64decode(v) for k, v in reply["files"].items()} == {
        "total.txt": b"10", "copy.csv": b"x,y\n1,2\n3,4\n"}
    assert len(reply["logs"]) == 1 and "nope.txt" in reply["logs"][0]
    # the agent's files persist between its messages
    reply = ask("print(open('total.txt').read())", files={}, outputs=["in.csv"])
    assert reply["stdout"].strip() == "10" and base64.b64decode(reply["files"]["in.csv"]) \
        == b"x,y\n1,2\n3,4\n"


def test_readme_rustic_blocks_run():
    import subprocess
    import sys

    from tests.readme_blocks import python_blocks

    rustic_blocks = python_blocks(rustic=True)
    assert rustic_blocks
    for code in rustic_blocks:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
