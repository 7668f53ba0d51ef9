"""The usage Rustic AI documents for its code executors, run on wasm-exec in a real guild.

The agents below are written as Rustic's docs write them
(docs/dependencies/core/python_exec_executor.md, in_process_interpreter.md); only the
resolver class paths in the guild configuration are ours (and, for the data-analysis
example, ``"runtime": "scientific"``). Run with a Python that has Rustic AI
(``rusticai-core``, Python >= 3.13)::

    .venv313/bin/python -m pytest tests/rustic -q

The data-analysis tests need the scientific runtime (``bash build_runtime.sh --profile
scientific``): without it they skip, unless ``WASM_EXEC_REQUIRE_SCIENTIFIC=1`` (as CI sets),
which tests/conftest.py turns into a failure.
"""

from __future__ import annotations

import pytest

pytest.importorskip("rustic_ai")

import contextlib  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

from pydantic import BaseModel  # noqa: E402
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
Send = Callable[[str, BaseModel], dict[str, Any]]


from tests.rustic.probe_support import attach_probe  # noqa: E402
from tests.scientific_support import needs_scientific  # noqa: E402


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


class AnalysisRequest(BaseModel):
    data: Any = None


# Rustic's documented data-analysis processor, verbatim (it is shown as a bare method, so
# its code string is indented by 4 spaces as in the doc); DataAnalysisAgent below hosts it.
@agent.processor(clz=AnalysisRequest, depends_on=["code_executor"])
def run_analysis(self, ctx: agent.ProcessContext, code_executor: PythonExecExecutor):
    # Let's assume we have pandas whitelisted
    code = """
    import pandas as pd
    
    # Process the input data
    df = pd.DataFrame(input_data)
    
    # Perform some analysis
    summary = df.describe()
    correlation = df.corr()
    
    # Set output variable to be returned
    output = {
        "summary": summary.to_dict(),
        "correlation": correlation.to_dict()
    }
    """  # noqa: W293 (the doc's blank lines inside the string keep their 4 spaces)

    result = code_executor.execute(
        code=code,
        globals_dict={"input_data": ctx.payload.data},
        return_globals=["output"]
    )

    if result.success:
        ctx.send_dict({"analysis_results": result.globals["output"]})
    else:
        ctx.send_dict({"error": result.error})


class DataAnalysisAgent(CodeExecutionAgent):
    """The documented ``run_analysis`` processor as written in the doc, on an agent that also
    has the documented ``execute_code`` one (inherited): the two share one interpreter, so
    the tests boot one scientific interpreter, not two."""

    run_analysis = run_analysis


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
@contextlib.contextmanager
def _guild(guild_id: str, key: str, class_name: str, properties: dict[str, Any],
           agents: dict[str, type[Agent]], wait_seconds: float = 15) -> Iterator[Send]:
    """A guild whose agents (id -> class) each listen on the topic named by their id.

    Yields ``send(agent_id, payload)``: publishes ``payload`` on that agent's topic and
    returns the agent's one reply.
    """
    # a guild id of its own per test: with a reused id, the agent of an earlier test's
    # guild (shut down) still answered on the in-memory messaging
    guild_builder = (
        GuildBuilder(f"{guild_id}_{uuid.uuid4().hex[:8]}", "Code Execution Guild",
                     "Guild with Python execution capabilities")
        .set_messaging("rustic_ai.core.messaging.backend", "InMemoryMessagingBackend", {})
        .add_dependency_resolver(key, DependencySpec(class_name=class_name,
                                                     properties=properties))
    )
    for agent_id, agent_class in agents.items():
        guild_builder.add_agent_spec(
            AgentBuilder(agent_class).set_id(agent_id).set_name(agent_id.title())
            .set_description("runs agent-written Python in wasm-exec")
            .listen_to_default_topic(False).add_additional_topic(agent_id).build_spec())
    guild = guild_builder.launch(organization_id="docs_org")
    probe = attach_probe(guild, agents)

    def send(agent_id: str, payload: BaseModel) -> dict[str, Any]:
        probe.clear_messages()
        probe.publish(topic=agent_id, payload=payload)
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            replies = [m for m in probe.get_messages() if m.sender.id == agent_id]
            if replies:
                assert len(replies) == 1, replies
                return replies[0].payload
            time.sleep(0.01)
        raise AssertionError(f"no reply from {agent_id}: {probe.get_messages()!r}")

    try:
        yield send
    finally:
        guild.shutdown()
        close_shared_resolvers()


def _launch(guild_id: str, key: str, class_name: str, properties: dict[str, Any],
            agent_class: type[Agent], request: type[BaseModel]) -> Iterator[Ask]:
    with _guild(guild_id, key, class_name, properties, {"coder": agent_class}) as send:
        yield lambda code, **fields: send("coder", request(code=code, **fields))


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


# ------------------------------------------- the data-analysis example (scientific runtime)
# The documented guild configuration (python_exec_executor.md) with our class path and the
# scientific runtime: numpy, pandas and matplotlib.pyplot whitelisted exactly as documented.
SCIENTIFIC_PROPERTIES = {
    "whitelisted_imports": ["numpy", "pandas", "matplotlib.pyplot"],
    "default_imports": {"np": "numpy", "pd": "pandas", "plt": "matplotlib.pyplot"},
    "runtime": "scientific",
}


@pytest.fixture(scope="module")
def scientific_guild() -> Iterator[Send]:
    # one guild for the module: its agent boots its interpreter (and imports numpy, pandas
    # and matplotlib.pyplot, its default imports) once, on its first message: ~3-4 s
    with _guild("docs_analysis_guild", "code_executor", STATEFUL, SCIENTIFIC_PROPERTIES,
                {"analyst": DataAnalysisAgent}, wait_seconds=120) as send:
        yield send


def _describe(values: list[float]) -> dict[str, float]:
    """``pd.Series(values).describe().to_dict()`` in plain Python (quantiles: linear)."""
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"count": float(len(values)), "mean": statistics.fmean(values),
            "std": statistics.stdev(values), "min": float(min(values)),
            "25%": q1, "50%": q2, "75%": q3, "max": float(max(values))}


def _analysis(data: dict[str, list[float]]) -> dict[str, Any]:
    """What the documented code computes, in plain Python (Pearson correlation)."""
    return {"summary": {column: _describe(values) for column, values in data.items()},
            "correlation": {c1: {c2: 1.0 if c1 == c2 else statistics.correlation(v1, v2)
                                 for c2, v2 in data.items()}
                            for c1, v1 in data.items()}}


def _assert_close(actual: Any, expected: Any, where: str = "") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert list(actual) == list(expected), where  # the same keys, in pandas' order
        for key, value in expected.items():
            _assert_close(actual[key], value, f"{where}[{key!r}]")
    else:
        assert type(actual) is float, where
        assert math.isclose(actual, expected, rel_tol=1e-12, abs_tol=1e-12), \
            f"{where}: {actual!r} != {expected!r}"


@pytest.mark.scientific
@needs_scientific
def test_documented_data_analysis(scientific_guild: Send) -> None:
    data = {"a": [1, 2, 3, 4], "b": [2, 4, 6, 9]}
    reply = scientific_guild("analyst", AnalysisRequest(data=data))
    assert list(reply) == ["analysis_results"], reply
    results = reply["analysis_results"]
    _assert_close(results, _analysis(data))
    # the numbers native pandas gives for this data
    assert results["summary"]["a"] == {"count": 4.0, "mean": 2.5, "std": 1.2909944487358056,
                                       "min": 1.0, "25%": 1.75, "50%": 2.5, "75%": 3.25,
                                       "max": 4.0}
    assert results["summary"]["b"]["mean"] == 5.25 and results["summary"]["b"]["75%"] == 6.75
    assert results["correlation"]["a"]["b"] == pytest.approx(0.9943767126843689, rel=1e-12)
    assert results["correlation"]["a"]["a"] == results["correlation"]["b"]["b"] == 1.0

    # the same agent, more data: floats, negatives, a negative correlation
    data = {"x": [0.5, 1.5, -2.0, 4.25, 3.0], "y": [10, 8, 7, 3, 1], "z": [1, 1, 2, 3, 5]}
    reply = scientific_guild("analyst", AnalysisRequest(data=data))
    _assert_close(reply["analysis_results"], _analysis(data))
    assert reply["analysis_results"]["correlation"]["y"]["z"] < -0.9


@pytest.mark.scientific
@needs_scientific
def test_documented_data_analysis_errors(scientific_guild: Send) -> None:
    # the documented agent's error branch: pandas refuses columns of different lengths
    reply = scientific_guild("analyst", AnalysisRequest(data={"a": [1, 2], "b": [3]}))
    assert reply == {"error": "ValueError: All arrays must be of the same length"}
    # the documented CodeExecutionAgent's processor on the same configuration (the same
    # agent, interpreter and runtime): a refused import ...
    reply = scientific_guild("analyst", CodeRequest(code="import os\noutput = os.getcwd()"))
    assert reply == {"status": "error", "error": "ImportError: Import of 'os' is not allowed. "
                     "Allowed imports: ['matplotlib.pyplot', 'numpy', 'pandas']"}
    # ... and the agent goes on, with numpy, pandas and pyplot bound as documented
    code = ("import numpy as numpy_again\n"
            "fig, ax = plt.subplots()\nax.plot(input_data)\n"
            "output = {'mean': float(np.mean(input_data)), "
            "'median': float(pd.Series(input_data).median()), "
            "'figures': len(plt.get_fignums()), 'same': numpy_again is np}")
    reply = scientific_guild("analyst", CodeRequest(code=code, input_data=[3, 1, 4, 1, 5]))
    assert reply == {"status": "success",
                     "output": {"mean": 2.8, "median": 3.0, "figures": 1, "same": True}}
