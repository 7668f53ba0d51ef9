"""The usage Rustic AI documents for its code executors, run on wasm-exec in a real guild.

The agents below are written as Rustic's docs write them
(docs/dependencies/core/python_exec_executor.md, in_process_interpreter.md); only the
resolver class paths in the guild configuration are ours. Run with a Python that has
Rustic AI (``rusticai-core``, Python >= 3.13)::

    .venv313/bin/python -m pytest tests/rustic -q
"""

from __future__ import annotations

import pytest

pytest.importorskip("rustic_ai")

import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

from pydantic import BaseModel  # noqa: E402
from rustic_ai.core.agents.testutils.probe_agent import ProbeAgent  # noqa: E402
from rustic_ai.core.guild import Agent, agent  # noqa: E402
from rustic_ai.core.guild.agent_ext.depends.code_execution.stateful.python_exec_executor import (  # noqa: E402, E501
    PythonExecExecutor,
)
from rustic_ai.core.guild.agent_ext.depends.code_execution.stateless import (  # noqa: E402
    CodeBlock,
    CodeRunner,
)
from rustic_ai.core.guild.builders import AgentBuilder, GuildBuilder  # noqa: E402
from rustic_ai.core.guild.dsl import DependencySpec  # noqa: E402

from wasm_exec.integrations.rustic import close_shared_resolvers  # noqa: E402

STATEFUL = "wasm_exec.integrations.rustic.WasmExecExecutorResolver"
STATELESS = "wasm_exec.integrations.rustic.WasmCodeInterpreterResolver"

Ask = Callable[..., dict[str, Any]]


# ------------------------------------------------------ the documented agents
class CodeRequest(BaseModel):
    code: str
    input_data: Any = None


class CodeExecutionAgent(Agent):
    """Rustic's documented CodeExecutionAgent, verbatim but for the missing CodeRequest."""

    @agent.processor(clz=CodeRequest, depends_on=["code_executor"])
    def execute_code(self, ctx: agent.ProcessContext, code_executor: PythonExecExecutor):
        code = ctx.payload.code
        input_data = ctx.payload.input_data

        # Execute the code with the provided input data
        result = code_executor.execute(
            code=code,
            globals_dict={"input_data": input_data},
            return_globals=["output"]
        )

        if result.success:
            output = result.globals.get("output", "No output variable defined")
            ctx.send_dict({"status": "success", "output": output})
        else:
            ctx.send_dict({"status": "error", "error": result.error})


class BlockRequest(BaseModel):
    code: str
    globals: dict[str, Any] = {}


class SimpleCodeAgent(Agent):
    """Runs each request as a CodeBlock with its injected stateless ``code_runner``.

    (Rustic's in_process_interpreter.md shows ``code_runner.run(code)`` with a string and
    reads ``result.success`` / ``result.result``, which its CodeRunner does not have; this
    agent uses the real API: ``run(CodeBlock)`` -> ``CodeResult``.)
    """

    @agent.processor(clz=BlockRequest, depends_on=["code_runner"])
    def run_simple_code(self, ctx: agent.ProcessContext, code_runner: CodeRunner):
        result = code_runner.run(CodeBlock(language="python", code=ctx.payload.code,
                                           globals=ctx.payload.globals, locals={}))
        ctx.send_dict({"output": result.output, "exit_code": result.exit_code,
                       "globals": result.code.globals, "locals": result.code.locals,
                       "exception": result.exception.etype if result.exception else None})


# --------------------------------------------------------------------- guilds
def _launch(guild_id: str, key: str, class_name: str, properties: dict[str, Any],
            agent_class: type[Agent], request: type[BaseModel]) -> Iterator[Ask]:
    # a guild id of its own per test: with a reused id, the agent of an earlier test's
    # guild (shut down) still answered on the in-memory messaging
    guild_builder = (
        GuildBuilder(f"{guild_id}_{uuid.uuid4().hex[:8]}", "Code Execution Guild",
                     "Guild with Python execution capabilities")
        .set_messaging("rustic_ai.core.messaging.backend", "InMemoryMessagingBackend", {})
        .add_dependency_resolver(key, DependencySpec(class_name=class_name,
                                                     properties=properties))
        .add_agent_spec(AgentBuilder(agent_class).set_id("coder").set_name("Coder")
                        .set_description("runs agent-written Python in wasm-exec")
                        .listen_to_default_topic(False).add_additional_topic("code")
                        .build_spec())
    )
    guild = guild_builder.launch(organization_id="docs_org")
    probe_spec: Any = (AgentBuilder(ProbeAgent).set_id("probe").set_name("Probe")
                       .set_description("sends code, collects replies")
                       .add_additional_topic("code").build_spec())
    probe: ProbeAgent = guild._add_local_agent(probe_spec)  # type: ignore[assignment]

    def ask(code: str, **fields: Any) -> dict[str, Any]:
        probe.clear_messages()
        probe.publish(topic="code", payload=request(code=code, **fields))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            replies = [m for m in probe.get_messages() if m.sender.id == "coder"]
            if replies:
                assert len(replies) == 1, replies
                return replies[0].payload
            time.sleep(0.01)
        raise AssertionError(f"no reply from the agent: {probe.get_messages()!r}")

    try:
        yield ask
    finally:
        guild.shutdown()
        close_shared_resolvers()


@pytest.fixture
def documented_guild() -> Iterator[Ask]:
    """The documented guild configuration, with our resolver's class path."""
    yield from _launch(
        "docs_code_guild", "code_executor", STATEFUL,
        {"whitelisted_imports": ["math", "json"], "default_imports": {"m": "math"}},
        CodeExecutionAgent, CodeRequest)


@pytest.fixture
def stateless_guild() -> Iterator[Ask]:
    # the documented properties ({"timeout_seconds": 10}) plus an allow-list
    yield from _launch(
        "docs_simple_code_guild", "code_runner", STATELESS,
        {"timeout_seconds": 10, "whitelisted_imports": ["math"],
         "default_imports": {"m": "math"}},
        SimpleCodeAgent, BlockRequest)


# ---------------------------------------------------------------------- tests
def test_documented_success(documented_guild: Ask) -> None:
    reply = documented_guild("output = {'mean': sum(input_data) / len(input_data), "
                             "'root': m.sqrt(max(input_data))}", input_data=[4, 9, 16, 11])
    assert reply == {"status": "success", "output": {"mean": 10.0, "root": 4.0}}
    reply = documented_guild("import json\noutput = json.dumps(input_data, sort_keys=True)",
                             input_data={"b": 1, "a": [True, None]})
    assert reply == {"status": "success", "output": '{"a": [true, null], "b": 1}'}


def test_documented_no_output_variable(documented_guild: Ask) -> None:
    assert documented_guild("x = 1") == {"status": "success",
                                         "output": "No output variable defined"}


def test_documented_state_persists(documented_guild: Ask) -> None:
    assert documented_guild("history = [input_data]\noutput = len(history)",
                            input_data=3) == {"status": "success", "output": 1}
    assert documented_guild("history.append(input_data)\noutput = sum(history)",
                            input_data=4) == {"status": "success", "output": 7}


def test_documented_refused_import(documented_guild: Ask) -> None:
    reply = documented_guild("import os\noutput = os.listdir('.')")
    assert reply["status"] == "error"
    assert "Import of 'os' is not allowed" in reply["error"]


def test_documented_exception(documented_guild: Ask) -> None:
    reply = documented_guild("output = input_data / 0", input_data=1)
    assert reply["status"] == "error"
    assert "ZeroDivisionError" in reply["error"]
    # the agent keeps working after an error
    assert documented_guild("output = input_data + 1", input_data=1) == {
        "status": "success", "output": 2}


def test_stateless_guild_runs_are_fresh(stateless_guild: Ask) -> None:
    first = stateless_guild("global total\ntotal += 1\nroot = m.sqrt(49)\nprint(total)",
                            globals={"total": 41})
    # ("42\n" arrives as "42": Rustic's Message strips whitespace from its strings)
    assert first == {"output": "42", "exit_code": 0, "globals": {"total": 42},
                     "locals": {"root": 7.0}, "exception": None}
    # nothing from the first message is left: each run is a fresh interpreter
    second = stateless_guild("print(total, root)")
    assert second["exit_code"] == 1
    assert second["exception"] == "NameError"
    assert second["output"] == "" and second["globals"] == {} and second["locals"] == {}
    third = stateless_guild("import os")
    assert (third["exit_code"], third["exception"]) == (1, "ImportError")
