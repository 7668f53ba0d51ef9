"""The ``runtime`` option of the Rustic AI integration, and ``execute``'s dedent.

The tests marked ``scientific`` need the scientific runtime (``bash build_runtime.sh
--profile scientific``): without it they skip, unless ``WASM_EXEC_REQUIRE_SCIENTIFIC=1`` (as
CI sets), which tests/conftest.py turns into a failure. The others run everywhere. Run
with a Python that has Rustic AI (``rusticai-core``, Python >= 3.13)::

    .venv313/bin/python -m pytest tests/rustic -q
"""

from __future__ import annotations

import pytest

pytest.importorskip("rustic_ai")

import asyncio  # noqa: E402
import re  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

from rustic_ai.core.guild.agent_ext.depends.code_execution.stateful import (  # noqa: E402
    CodeSnippet,
)
from rustic_ai.core.guild.agent_ext.depends.code_execution.stateless import (  # noqa: E402
    CodeBlock,
)
from rustic_ai.core.guild.dsl import DependencySpec  # noqa: E402

from wasm_exec import ConfigurationError, PythonExecExecutor  # noqa: E402
from wasm_exec.integrations.rustic import (  # noqa: E402
    WasmCodeExecutor,
    WasmCodeInterpreter,
    WasmCodeInterpreterResolver,
    WasmExecExecutorResolver,
    close_shared_resolvers,
)
from wasm_exec.runtime import profiles  # noqa: E402

STATEFUL = "wasm_exec.integrations.rustic.WasmExecExecutorResolver"
STATELESS = "wasm_exec.integrations.rustic.WasmCodeInterpreterResolver"


from tests.scientific_support import needs_scientific  # noqa: E402


def py(code: str) -> CodeSnippet:
    return CodeSnippet(language="python", code=code)


def block(code: str, globals: dict[str, Any] | None = None) -> CodeBlock:
    return CodeBlock(language="python", code=code, globals=globals or {}, locals={})


@pytest.fixture(autouse=True, scope="module")
def _close_pools() -> Iterator[None]:
    yield
    close_shared_resolvers()


# ------------------------------------------------------------------ the option
def test_runtime_defaults_to_minimal() -> None:
    executor = WasmCodeExecutor()
    try:
        assert executor.runtime == "minimal" and executor.executor.runtime == "minimal"
    finally:
        executor.shutdown()
    resolver = WasmExecExecutorResolver()
    assert resolver.runtime == "minimal" and resolver.pool.runtime == "minimal"
    assert WasmCodeExecutor.wrap(PythonExecExecutor()).runtime == "minimal"
    assert WasmCodeInterpreter().runtime == "minimal"
    runner = WasmCodeInterpreterResolver().resolve("org", "guild", "agent")
    assert isinstance(runner, WasmCodeInterpreter) and runner.runtime == "minimal"


def test_runtime_is_passed_on() -> None:
    # nothing here boots an interpreter: it runs without the scientific runtime installed
    props: dict[str, Any] = {"whitelisted_imports": ["numpy"], "runtime": "scientific"}
    resolver = DependencySpec(class_name=STATEFUL, properties=props).to_resolver()
    assert isinstance(resolver, WasmExecExecutorResolver)
    assert resolver.runtime == "scientific" and resolver.pool.runtime == "scientific"
    # the shared pool is per configuration, runtime included
    assert WasmExecExecutorResolver(whitelisted_imports=["numpy"],
                                    runtime="scientific").pool is resolver.pool
    minimal = WasmExecExecutorResolver(whitelisted_imports=["numpy"])
    assert minimal.pool is not resolver.pool and minimal.pool.runtime == "minimal"
    agent = resolver.resolve("org", "guild", "agent")
    assert isinstance(agent, WasmCodeExecutor) and agent.runtime == "scientific"

    stateless = DependencySpec(class_name=STATELESS, properties=props).to_resolver()
    assert isinstance(stateless, WasmCodeInterpreterResolver)
    assert stateless.runtime == "scientific"
    runner = stateless.resolve("org", "guild", "agent")
    assert isinstance(runner, WasmCodeInterpreter) and runner.runtime == "scientific"
    assert runner.policy.whitelisted_imports == frozenset({"numpy"})


@pytest.mark.parametrize("owner", [WasmExecExecutorResolver, WasmCodeExecutor,
                                   WasmCodeInterpreter, WasmCodeInterpreterResolver])
@pytest.mark.parametrize("runtime", ["huge", "Scientific", None, 3])
def test_unknown_runtime_is_refused(owner: Any, runtime: Any) -> None:
    message = f"{owner.__name__}: unknown runtime {runtime!r}; known: {profiles()}"
    with pytest.raises(ConfigurationError, match=f"^{re.escape(message)}$"):
        owner(runtime=runtime)


def test_unknown_runtime_is_refused_from_a_guild_spec_and_by_wrap() -> None:
    spec = DependencySpec(class_name=STATEFUL, properties={"runtime": "huge"})
    with pytest.raises(ConfigurationError, match="WasmExecExecutorResolver: unknown runtime"):
        spec.to_resolver()
    with pytest.raises(ConfigurationError, match="WasmCodeExecutor: unknown runtime 'huge'"):
        WasmCodeExecutor.wrap(lambda: PythonExecExecutor(), runtime="huge")


def test_minimal_runtime_names_the_scientific_one() -> None:
    executor = WasmCodeExecutor(whitelisted_imports=["pandas"])
    try:
        result = executor.execute("import pandas")
    finally:
        executor.shutdown()
    assert not result.success and result.error is not None
    assert result.error.startswith("ModuleNotFoundError: No module named 'pandas'")
    assert 'runtime="scientific"' in result.error


# ---------------------------------------------------------- execute's dedent
# shaped as Rustic's data-analysis example writes it: a triple-quoted string in a method
# body, so every line has a 4-space margin, blank lines hold the margin too
INDENTED = ('\n    total = sum(values)\n    \n    # a comment\n    output = {\n'
            '        "total": total,\n        "text": """a\n    \n    b""",\n    }\n    ')


def test_execute_dedents_code_indented_as_a_whole() -> None:
    executor = WasmCodeExecutor()
    try:
        result = executor.execute(INDENTED, {"values": [1, 2, 3]}, ["output"])
        assert result.success, result.error
        # the margin is gone from the string literal's lines too, as its author meant
        assert result.globals == {"output": {"total": 6, "text": "a\n\nb"}}
        # aexecute does the same
        result = asyncio.run(executor.aexecute(INDENTED, {"values": [4]}, ["output"]))
        assert result.globals == {"output": {"total": 4, "text": "a\n\nb"}}
        # run() passes its snippet on as given, as Rustic's executors do (exec raises)
        ran = executor.run(py(INDENTED))
        assert ran.exit_code == -1 and ran.exception is not None
        assert ran.exception.type == "IndentationError"
        # line numbers stay those of the code as written
        failed = executor.execute("\n    x = 1\n    y = x / 0\n")
        assert failed.error_type == "ZeroDivisionError"
        assert failed.traceback is not None and "line 3" in failed.traceback
    finally:
        executor.shutdown()


def test_execute_leaves_code_without_a_margin_alone() -> None:
    executor = WasmCodeExecutor()
    try:
        # whitespace-only lines in a string literal are kept (dedent would empty them)
        code = 'text = """a\n   \nb"""\n    # an indented comment after the code\n'
        assert executor.execute(code, return_globals=["text"]).globals == {
            "text": "a\n   \nb"}
        # an indented first comment, code at the margin: no common margin, nothing changed
        code = '    # a comment\ntext = """\n  \n"""'
        assert executor.execute(code, return_globals=["text"]).globals == {"text": "\n  \n"}
        # indentation that is wrong after dedenting still fails, at its own line
        failed = executor.execute("    x = 1\n  y = 2\n")
        assert failed.error_type == "IndentationError"
    finally:
        executor.shutdown()


# ------------------------------------------------------- on the scientific runtime
@pytest.mark.scientific
@needs_scientific
def test_code_executor_on_the_scientific_runtime() -> None:
    executor = WasmCodeExecutor(runtime="scientific", whitelisted_imports=["numpy"],
                                timeout_seconds=60)
    try:
        assert executor.executor.runtime == "scientific"
        result = executor.run(py("import numpy as np\nv = np.arange(5, dtype=np.int64)\n"
                                 "print(int(v.sum()))"))
        assert (result.exit_code, result.stdout) == (0, "10\n")
        assert executor.execute("s = v.tolist()", return_globals=["s"]).globals == {
            "s": [0, 1, 2, 3, 4]}
        executor.shutdown()  # the next call runs on a fresh interpreter of the same runtime
        assert executor.executor.runtime == "scientific"
        assert executor.run(py("v")).exception.type == "NameError"  # type: ignore[union-attr]
    finally:
        executor.shutdown()
    # wrap() keeps an executor's runtime for the fresh one after shutdown()
    wrapped = WasmCodeExecutor.wrap(PythonExecExecutor(runtime="scientific"))
    assert wrapped.runtime == "scientific"
    wrapped.shutdown()
    assert wrapped.executor.runtime == "scientific"
    wrapped.shutdown()


@pytest.mark.scientific
@needs_scientific
def test_resolvers_on_the_scientific_runtime() -> None:
    props: dict[str, Any] = {"whitelisted_imports": ["numpy"], "runtime": "scientific",
                             "timeout_seconds": 60}
    resolver = DependencySpec(class_name=STATEFUL, properties=props).to_resolver()
    agent = resolver.get_or_resolve("org", "guild", "agent")
    assert isinstance(agent, WasmCodeExecutor)
    assert agent.run(py("import numpy as np\nx = np.float64(2.5)")).exit_code == 0
    assert agent.run(py("print(float(x) * 2)")).stdout == "5.0\n"  # state kept
    assert agent.executor.runtime == "scientific"

    stateless = DependencySpec(class_name=STATELESS, properties=props).to_resolver()
    runner = stateless.get_or_resolve("org", "guild", "agent")
    result = runner.run(block("import numpy as np\nm = float(np.mean(v))", {"v": [1, 2, 6]}))
    assert result.exit_code == 0, result.exception
    assert result.code.globals == {"v": [1, 2, 6]} and result.code.locals == {"m": 3.0}


# ------------------------------------------------------------------------ files
@pytest.mark.scientific
@needs_scientific
def test_files_in_and_out_on_the_scientific_runtime() -> None:
    executor = WasmCodeExecutor(runtime="scientific",
                                whitelisted_imports=["pandas", "matplotlib.pyplot"],
                                default_imports={"pd": "pandas", "plt": "matplotlib.pyplot"},
                                timeout_seconds=60)
    try:
        result = executor.run(py("df = pd.read_csv('in.csv')\n"
                                 "df.assign(c=df.a * df.b).to_csv('out.csv', index=False)\n"
                                 "plt.plot(df.a, df.b)\n"
                                 "plt.savefig('plot.png')\n"
                                 "plt.close('all')\n"),
                              timeout_seconds=60, input_files={"in.csv": b"a,b\n2,3\n4,5\n"},
                              output_filenames=["out.csv", "plot.png"])
        assert result.exit_code == 0, result.exception
        assert result.output_files["out.csv"] == b"a,b,c\n2,3,6\n4,5,20\n"
        assert result.output_files["plot.png"].startswith(b"\x89PNG")
    finally:
        executor.shutdown()
    runner = WasmCodeInterpreter(runtime="scientific", whitelisted_imports=["pandas"],
                                 default_imports={"pd": "pandas"}, timeout_seconds=60)
    out = runner.run(block("pd.read_csv('in.csv').T.to_csv('t.csv', header=False)"),
                     input_files={"in.csv": b"a,b\n1,2\n"}, output_filenames=["t.csv"])
    assert out.exit_code == 0, out.exception
    assert out.output_files == {"t.csv": b"a,1\nb,2\n"}  # type: ignore[attr-defined]
