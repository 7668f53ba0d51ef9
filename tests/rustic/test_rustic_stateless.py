"""WasmCodeInterpreter / WasmCodeInterpreterResolver: the sandboxed twin of Rustic's
stateless ``InProcessCodeInterpreter`` (a fresh interpreter for every block).

Run with a Python that has Rustic AI (``rusticai-core``, Python >= 3.13)::

    .venv313/bin/python -m pytest tests/rustic -q
"""

from __future__ import annotations

import pytest

pytest.importorskip("rustic_ai")

import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

from rustic_ai.core.guild.agent_ext.depends.code_execution.stateless import (  # noqa: E402
    CodeBlock,
    CodeResult,
    CodeRunner,
)
from rustic_ai.core.guild.dsl import DependencySpec  # noqa: E402

import wasm_exec  # noqa: E402
from wasm_exec.integrations.rustic import (  # noqa: E402
    WasmCodeInterpreter,
    WasmCodeInterpreterResolver,
    close_shared_resolvers,
)

RESOLVER = "wasm_exec.integrations.rustic.WasmCodeInterpreterResolver"


def block(code: str, globals: dict[str, Any] | None = None,
          locals: dict[str, Any] | None = None, language: str = "python") -> CodeBlock:
    # Rustic 1.4.1's CodeBlock cannot build its own default globals/locals: always pass them
    return CodeBlock(language=language, code=code, globals=globals or {}, locals=locals or {})


@pytest.fixture(autouse=True, scope="module")
def _close_pools() -> Iterator[None]:
    yield
    close_shared_resolvers()


@pytest.fixture(scope="module")
def interpreter() -> WasmCodeInterpreter:
    return WasmCodeInterpreter()


@pytest.fixture(scope="module")
def interpreter_with_imports() -> WasmCodeInterpreter:
    return WasmCodeInterpreter(whitelisted_imports=["math", "json", "sys"],
                               default_imports={"m": "math"})


def run_one(runner: CodeRunner, code_block: CodeBlock) -> CodeResult:
    (result,) = runner.validate_and_run([code_block])
    return result


# ------------------------------------------------- Rustic's own tests, mirrored
def test_is_a_rustic_code_runner(interpreter: WasmCodeInterpreter) -> None:
    assert isinstance(interpreter, CodeRunner)
    assert interpreter.supported_languages == ["python"]


def test_execute_valid_python_code(interpreter: WasmCodeInterpreter) -> None:
    result = run_one(interpreter, block("x = 1 + 1\nprint(x)"))
    assert result.exit_code == 0
    assert result.output.strip() == "2"
    assert result.error == ""
    assert result.exception is None


def test_execute_invalid_python_code(interpreter: WasmCodeInterpreter) -> None:
    result = run_one(interpreter, block("x = 1 / 0\nprint(x)"))
    assert result.exit_code == 1
    assert result.exception is not None
    assert result.exception.etype == "ZeroDivisionError"
    assert "division by zero" in result.exception.message
    # the traceback is a list of lines, as traceback.format_exception gives
    assert isinstance(result.exception.traceback, list)
    assert result.exception.traceback[0] == "Traceback (most recent call last):\n"
    assert result.exception.traceback[-1] == "ZeroDivisionError: division by zero\n"
    assert "ZeroDivisionError: division by zero" in str(result.exception)
    assert result.error == ""  # like Rustic's: the error text is in the exception


def test_execute_syntax_error(interpreter: WasmCodeInterpreter) -> None:
    result = run_one(interpreter, block("def missing_colon()\n    pass"))
    assert result.exit_code == 1
    assert result.exception is not None
    assert result.exception.etype == "SyntaxError"
    assert "expected ':'" in result.exception.message


def test_execute_with_globals_and_locals(interpreter: WasmCodeInterpreter) -> None:
    result = run_one(interpreter, block("x = y + 5\nprint(x)", {"y": 10}, {}))
    assert result.exit_code == 0
    assert result.output.strip() == "15"
    assert result.error == ""
    assert result.code.globals == {"y": 10}
    assert result.code.locals == {"x": 15}


def test_execute_multiple_code_blocks(interpreter: WasmCodeInterpreter) -> None:
    results = interpreter.validate_and_run([
        block("a = 5\nprint(a)"),
        block("b = a + 10\nprint(b)", {}, {"a": 5}),
    ])
    assert len(results) == 2
    assert [(r.exit_code, r.output.strip(), r.error) for r in results] == [
        (0, "5", ""), (0, "15", "")]
    assert results[0].code.locals == {"a": 5}
    assert results[1].code.locals == {"a": 5, "b": 15}


def test_execute_unsupported_language(interpreter: WasmCodeInterpreter) -> None:
    result = run_one(interpreter, block("console.log('Hello, World!')", language="javascript"))
    assert result.exit_code == 1
    assert "unsupported language" in result.error.lower()
    assert result.output == ""
    # run() itself refuses it too (Rustic's in-process run() would exec it as Python)
    direct = interpreter.run(block("console.log(1)", language="javascript"))
    assert (direct.exit_code, direct.error) == (1, "Unsupported language: javascript")


def test_read_back_globals(interpreter: WasmCodeInterpreter) -> None:
    code_block = block("global counter\ncounter += 1\nprint(counter)", {"counter": 0}, {})
    result = run_one(interpreter, code_block)
    assert result.exit_code == 0
    assert result.output.strip() == "1"
    assert result.code.globals["counter"] == 1
    assert result.code is code_block  # read back into the block, as exec() does
    assert result.code.locals == {}


def test_read_back_locals(interpreter: WasmCodeInterpreter) -> None:
    result = run_one(interpreter, block("x = 42\ny = x * 2\nprint(y)"))
    assert result.exit_code == 0
    assert result.output.strip() == "84"
    assert result.code.locals == {"x": 42, "y": 84}
    assert result.code.globals == {}


# ------------------------------------------------------------------ stateless
def test_every_run_is_fresh(interpreter: WasmCodeInterpreter) -> None:
    assert interpreter.run(block("leaked = 1")).exit_code == 0
    result = interpreter.run(block("print(leaked)"))
    assert result.exit_code == 1
    assert result.exception is not None and result.exception.etype == "NameError"


def test_default_imports_in_every_run(interpreter_with_imports: WasmCodeInterpreter) -> None:
    assert interpreter_with_imports.run(block("r = m.sqrt(81)")).code.locals == {"r": 9.0}
    assert interpreter_with_imports.run(block("m = None")).exit_code == 0
    # rebinding the alias in one run does not reach the next
    assert interpreter_with_imports.run(block("r = m.floor(2.5)")).code.locals == {"r": 2}


def test_concurrent_runs_are_isolated(interpreter: WasmCodeInterpreter) -> None:
    results: dict[int, CodeResult] = {}

    def work(i: int) -> None:
        results[i] = interpreter.run(block("total = sum(data) * k", {"k": i}, {"data": [i] * 3}))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {i: r.code.locals["total"] for i, r in results.items()} == {
        i: 3 * i * i for i in range(4)}


# ------------------------------------------------------- globals and locals
def test_a_name_in_both_is_the_local_one(interpreter: WasmCodeInterpreter) -> None:
    result = interpreter.run(block("x += 1\nz = x + g", {"x": 1, "g": 100}, {"x": 5}))
    assert result.exit_code == 0
    assert result.code.globals == {"x": 1, "g": 100}  # as exec(code, globals, locals)
    assert result.code.locals == {"x": 6, "z": 106}


def test_only_json_values_come_back(interpreter_with_imports: WasmCodeInterpreter) -> None:
    code = ("import json\ndef f(): return 1\nclass C: pass\nobj = C()\nnums = {1, 2}\n"
            "pair = (1, 2)\ndata = {'a': [1, 2.5, None, True]}\nswapped = f\ncfg = json.dumps(1)")
    result = interpreter_with_imports.run(block(code, {"swapped": "text", "kept": [1]}))
    assert result.exit_code == 0
    # swapped now holds a function, which cannot come back: it is left out
    assert result.code.globals == {"kept": [1]}
    assert result.code.locals == {"pair": [1, 2], "data": {"a": [1, 2.5, None, True]},
                                  "cfg": "1"}


def test_deleted_names_are_gone(interpreter: WasmCodeInterpreter) -> None:
    result = interpreter.run(block("del g\ndel l", {"g": 1, "h": 2}, {"l": 3}))
    assert result.exit_code == 0
    assert (result.code.globals, result.code.locals) == ({"h": 2}, {})


def test_error_keeps_what_ran_before(interpreter: WasmCodeInterpreter) -> None:
    result = interpreter.run(block("a = 1\ncounter = 7\n1/0\nb = 2", {"counter": 0}))
    assert result.exit_code == 1
    assert result.code.globals == {"counter": 7}
    assert result.code.locals == {"a": 1}


def test_non_json_input_is_an_error_result(interpreter: WasmCodeInterpreter) -> None:
    code_block = block("x = 1")
    code_block.globals["s"] = {1, 2}  # type: ignore[assignment]  # bypasses validation
    result = run_one(interpreter, code_block)
    assert result.exit_code == 1
    assert result.exception is not None and result.exception.etype == "InputError"
    assert "globals_dict['s']" in result.exception.message


# -------------------------------------------------------------- output, exits
def test_stdout_and_stderr(interpreter_with_imports: WasmCodeInterpreter) -> None:
    result = interpreter_with_imports.run(
        block("import sys\nprint('out')\nprint('warn', file=sys.stderr)"))
    assert (result.output, result.error) == ("out\n", "warn\n")
    # like Rustic's in-process interpreter: anything on stderr makes exit_code 1
    assert result.exit_code == 1
    assert result.exception is None


def test_refused_import(interpreter_with_imports: WasmCodeInterpreter) -> None:
    result = interpreter_with_imports.run(block("print('before')\nimport os"))
    assert result.output == "before\n"
    assert result.exit_code == 1
    assert result.exception is not None and result.exception.etype == "ImportError"
    assert "Import of 'os' is not allowed" in result.exception.message


def test_system_exit(interpreter: WasmCodeInterpreter) -> None:
    assert interpreter.run(block("raise SystemExit")).exit_code == 0
    assert interpreter.run(block("raise SystemExit(0)")).exception is None
    result = interpreter.run(block("raise SystemExit(3)"))
    assert result.exit_code == 1
    assert result.exception is not None and result.exception.etype == "SystemExit"


def test_timeout_is_an_error_result() -> None:
    runner = WasmCodeInterpreter(timeout_seconds=0.5)
    code_block = block("x = 1\nprint('started')\nwhile True: pass", {"g": 1})
    started = time.monotonic()
    result = runner.run(code_block)
    assert time.monotonic() - started < 5
    assert result.exit_code == 1
    assert result.output == "started\n"
    assert result.exception is not None and result.exception.etype == "TimeoutError"
    assert "deadline" in result.exception.message
    assert (code_block.globals, code_block.locals) == ({"g": 1}, {})  # left as it was
    assert runner.run(block("print('next')")).output == "next\n"


def test_fuel_limit() -> None:
    result = WasmCodeInterpreter(fuel=50_000_000).run(block("while True: pass"))
    assert result.exit_code == 1
    assert result.exception is not None and result.exception.etype == "FuelExhausted"


# ------------------------------------------------------------------ resolver
def test_resolver_from_a_dependency_spec() -> None:
    spec = DependencySpec(class_name=RESOLVER,
                          properties={"whitelisted_imports": ["math"],
                                      "default_imports": {"m": "math"}, "timeout_seconds": 10})
    resolver = spec.to_resolver()
    assert isinstance(resolver, WasmCodeInterpreterResolver)
    assert resolver.memoize_resolution is False
    first = resolver.get_or_resolve("org", "guild", "agent")
    second = resolver.get_or_resolve("org", "guild", "agent")
    assert isinstance(first, WasmCodeInterpreter) and isinstance(second, WasmCodeInterpreter)
    assert first is not second  # not memoized, like Rustic's InProcessCodeInterpreterResolver
    assert first.limits.timeout_seconds == 10
    assert first.pool is second.pool  # but one pool of ready interpreters
    assert first.run(block("r = m.sqrt(x)", {"x": 49})).code.locals == {"r": 7.0}
    assert second.run(block("print(r)")).exception.etype == "NameError"  # type: ignore[union-attr]


def test_resolver_rejects_bad_configuration() -> None:
    with pytest.raises(wasm_exec.ConfigurationError):
        WasmCodeInterpreterResolver(whitelisted_imports="math")  # a string, not a list
    with pytest.raises(wasm_exec.ConfigurationError):
        WasmCodeInterpreterResolver(timeout_seconds=-1)
    with pytest.raises(wasm_exec.ConfigurationError):
        WasmCodeInterpreterResolver(limits={"no_such_limit": 1})
    with pytest.raises(wasm_exec.ConfigurationError):
        WasmCodeInterpreterResolver(pool_size=-1)


def test_pools_are_shared_and_closed() -> None:
    a, b = WasmCodeInterpreter(), WasmCodeInterpreter(whitelisted_imports=["json"])
    assert a.pool is b.pool  # one SessionPool per pool_size, ready interpreters per config
    assert WasmCodeInterpreter(pool_size=1).pool is not a.pool
    old = a.pool
    close_shared_resolvers()
    assert a.pool is not old
    assert a.run(block("print('still works')")).output == "still works\n"


def test_own_pool() -> None:
    with wasm_exec.SessionPool(size=1) as pool:
        runner = WasmCodeInterpreter(pool=pool)
        assert runner.pool is pool
        assert runner.run(block("x = 2 ** 10")).code.locals == {"x": 1024}


def test_runs_are_fast_once_the_pool_is_warm(interpreter: WasmCodeInterpreter) -> None:
    interpreter.run(block("pass"))  # warms the pool for this configuration
    durations = []
    for _ in range(3):
        time.sleep(0.5)  # let the pool refill
        started = time.perf_counter()
        assert interpreter.run(block("x = 1")).exit_code == 0
        durations.append(time.perf_counter() - started)
    # a cold start boots an interpreter (~50-150 ms); a pooled one takes a few ms
    assert min(durations) < 0.04, durations


def test_default_import_the_runtime_lacks() -> None:
    result = WasmCodeInterpreter(default_imports={"pd": "pandas"}).run(block("x = 1"))
    assert result.exit_code == 1
    assert result.exception is not None and result.exception.etype == "ConfigurationError"
    assert "No module named 'pandas'" in result.exception.message


# ------------------------------------------------------------------------ files
def test_files_in_and_out(interpreter: WasmCodeInterpreter) -> None:
    from wasm_exec.integrations.rustic import WasmCodeResult

    code_block = block("n = len(open('in.txt').read())\n"
                       "open('out.txt', 'w').write(str(n * 2))", globals={})
    result = interpreter.run(code_block, input_files={"in.txt": b"abc"},
                             output_filenames=["out.txt"])
    assert isinstance(result, WasmCodeResult) and isinstance(result, CodeResult)
    assert (result.exit_code, result.error) == (0, ""), result.exception
    assert result.output_files == {"out.txt": b"6"}
    assert result.code.locals == {"n": 3}
    # a file that was not written: a line on error, exit code 1
    result = interpreter.run(block("x = 1"), output_filenames=["none.txt"])
    assert result.exit_code == 1 and "'none.txt'" in result.error
    assert result.output_files == {}
    # stateless: the next block starts with no files
    result = interpreter.run(block("open('in.txt')"))
    assert result.exception is not None and result.exception.etype == "FileNotFoundError"
    # a bad name: an error result, nothing runs
    result = interpreter.run(block("x = 1"), input_files={"/etc/x": b""})
    assert result.exit_code == 1 and result.exception is not None
    assert result.exception.etype == "InputError"
    # without files, the result is Rustic's own CodeResult
    assert type(interpreter.run(block("x = 1"))) is CodeResult
