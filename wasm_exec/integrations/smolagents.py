"""smolagents integration: a sandboxed ``PythonExecutor`` for ``CodeAgent(executor=...)``.

::

    from smolagents import CodeAgent
    from wasm_exec.integrations.smolagents import WasmPythonExecutor

    imports = ["json"]
    agent = CodeAgent(tools=[...], model=model, additional_authorized_imports=imports,
                      executor=WasmPythonExecutor(additional_authorized_imports=imports))

The agent's code runs in one persistent wasm-exec interpreter (variables live on from step
to step); its tools, ``final_answer`` among them, are host functions the code calls like
functions (arguments and results as JSON data); its imports are limited to smolagents'
base modules plus ``additional_authorized_imports`` (``"pkg.*"`` is ``"pkg"``: an entry
allows its submodules; ``"*"`` is refused: the sandbox has no "anything goes"). A step's
``logs`` are what the code printed (stdout, then stderr); its ``output`` is the value of the
code's last line when that line is an expression, as with smolagents' local executor, or
the final answer. A step that raises, or is stopped by a limit, raises an error whose
message holds the logs, the error and the traceback: the agent shows it to the model as
the step's observation.

Needs ``pip install 'wasm-exec[smolagents]'``.
"""

from __future__ import annotations

import ast
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

try:
    from smolagents.local_python_executor import (
        BASE_BUILTIN_MODULES,
        CodeOutput,
        InterpreterError,
        PythonExecutor,
    )
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"wasm_exec.integrations.smolagents needs smolagents ({e}); install "
                      "it with: pip install 'wasm-exec[smolagents]'") from e

from ..errors import WasmExecError
from ..executor import ExecutionResult, PythonExecExecutor
from ..protocol import is_plain_json

DEFAULT_MAX_LEN_OUTPUT = 50_000  # smolagents' own default for print outputs

# the guest's names of the step's last value (see _capture_last_value)
_VALUE = "_wasm_exec_last_value"
_REPR = "_wasm_exec_last_repr"

# run once in the sandbox (again after a reset): `final_answer` ends the step. The host
# tool of that name records the answer; the wrapper then raises an exception that
# `except Exception` does not catch, like smolagents' own FinalAnswerException.
_FINAL_ANSWER_SETUP = '''\
class FinalAnswerException(BaseException):
    """Raised by final_answer() to end the step (the answer is already with the host)."""


def _wasm_exec_final_answer(tool):
    plain = (str, int, float, bool, type(None))

    def final_answer(*args, **kwargs):
        try:
            tool(*args, **kwargs)
        except TypeError:  # not JSON data: the host gets the value's str()
            tool(*[a if type(a) in plain else str(a) for a in args],
                 **{k: v if type(v) in plain else str(v) for k, v in kwargs.items()})
        raise FinalAnswerException("final_answer was called")

    final_answer.__doc__ = getattr(tool, "__doc__", None)
    return final_answer


final_answer = _wasm_exec_final_answer(final_answer)
del _wasm_exec_final_answer
'''


class SandboxExecutionError(InterpreterError):
    """A step's code raised, or a limit stopped it; the message holds the step's logs,
    the error and the traceback (what the agent shows the model)."""


class WasmPythonExecutor(PythonExecutor):
    """A smolagents ``PythonExecutor`` that runs the agent's code in wasm-exec's sandbox.

    ``additional_authorized_imports``: modules the code may import besides smolagents'
    base ones (``BASE_BUILTIN_MODULES``): pass the agent the same list, so that its prompt
    names them. ``max_print_outputs_length`` caps a step's logs (characters; smolagents'
    default 50,000). Other keyword arguments go to :class:`~wasm_exec.PythonExecExecutor`
    (``limits``, ``timeout_seconds``, ``memory_bytes``, ``fuel``, ``runtime``,
    ``default_imports``, ``rollback``, ``state_store``...); or pass ``executor``, one of
    your own, whose allow-list is then used as it is.
    """

    def __init__(self, additional_authorized_imports: Iterable[str] = (), *,
                 max_print_outputs_length: int | None = None,
                 executor: PythonExecExecutor | None = None,
                 **executor_options: Any) -> None:
        if isinstance(additional_authorized_imports, str):
            raise ValueError("additional_authorized_imports must be a list of module names, "
                             f"not a string (did you mean [{additional_authorized_imports!r}]?)")
        self.additional_authorized_imports = list(additional_authorized_imports)
        for key in ("whitelisted_imports", "tools"):
            if key in executor_options:
                raise ValueError(f"WasmPythonExecutor sets {key} itself: pass "
                                 + ("additional_authorized_imports" if key.startswith("w")
                                    else "the tools to the CodeAgent"))
        self.authorized_imports = authorized_imports(self.additional_authorized_imports)
        if executor is not None and executor_options:
            raise ValueError("pass either executor or options for a new one "
                             f"({', '.join(sorted(executor_options))}), not both")
        self.executor = executor if executor is not None else PythonExecExecutor(
            whitelisted_imports=self.authorized_imports, **executor_options)
        self.max_print_outputs_length = (DEFAULT_MAX_LEN_OUTPUT if max_print_outputs_length
                                         is None else int(max_print_outputs_length))
        self._tools: dict[str, Callable[..., Any]] = {}
        self._answer: _Answer | None = None  # the step running now
        self._wrapped = False  # the guest's final_answer wrapper is in place

    # ------------------------------------------------------------------ PythonExecutor
    def send_tools(self, tools: Mapping[str, Any]) -> None:
        """Make the agent's tools (and managed agents) host functions of the sandbox:
        the code calls ``name(...)``; ``final_answer`` also ends the step."""
        host: dict[str, Callable[..., Any]] = {}
        for name, tool in tools.items():
            if not callable(tool):
                raise ValueError(f"tool {name!r} is a {type(tool).__name__}, not callable")
            host[name] = (self._final_answer_tool(tool) if name == "final_answer"
                          else _host_tool(tool))
        try:  # (names the sandbox cannot bind: refused here, with the reason)
            self.executor.execute("pass", tools=host)
        except WasmExecError as e:
            raise ValueError(f"these tools cannot be offered in the sandbox: {e}") from None
        self._tools = host
        self._wrapped = False
        self._install_final_answer()

    def send_variables(self, variables: Mapping[str, Any]) -> None:
        """Bind the agent's state (``agent.run(additional_args=...)``) as globals: JSON
        data (dict, list, str, int, float, bool, None) only."""
        if not variables:
            return
        try:
            r = self.executor.execute("pass", globals_dict=dict(variables))
        except WasmExecError as e:
            raise ValueError(f"cannot send these variables to the sandbox: {e} (the "
                             "sandbox takes JSON data; pass files with "
                             "executor.executor.write_file)") from None
        if not r.success:
            raise SandboxExecutionError(f"sending variables failed: {r.error}")

    def __call__(self, code_action: str) -> CodeOutput:
        """Run one step's code; a CodeOutput, or SandboxExecutionError when it failed."""
        code, captured = _capture_last_value(code_action)
        answer = self._answer = _Answer()
        try:
            r = self.executor.execute(code, tools=self._tools,
                                      return_globals=[_VALUE, _REPR] if captured else None)
        except WasmExecError as e:  # nothing ran
            raise SandboxExecutionError(f"the code could not be sent to the sandbox: {e}"
                                        ) from None
        finally:
            self._answer = None
        if r.state_reset:
            self._wrapped = False
        logs = self._logs(r)
        if not self._wrapped:  # a fresh interpreter: final_answer ends steps again
            self._install_final_answer()
        if answer.given:
            return CodeOutput(output=answer.value, logs=logs, is_final_answer=True)
        if not r.success:
            raise SandboxExecutionError(_failure(r, logs))
        output: Any = None
        if captured:
            output = r.globals[_VALUE] if _VALUE in r.globals else r.globals.get(_REPR)
        return CodeOutput(output=output, logs=logs, is_final_answer=False)

    # ------------------------------------------------------------------ lifecycle
    def cleanup(self) -> None:
        """Close the sandbox (``CodeAgent.cleanup()`` and ``with CodeAgent(...)`` call
        this)."""
        self.executor.close()

    def __enter__(self) -> WasmPythonExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ helpers
    def _final_answer_tool(self, tool: Callable[..., Any]) -> Callable[..., None]:
        def final_answer(*args: Any, **kwargs: Any) -> None:
            answer = self._answer  # (the step that called: taken before the tool runs)
            value = tool(*args, **kwargs)  # (a custom final-answer tool may check it)
            if answer is not None:
                answer.give(value)

        final_answer.__doc__ = getattr(tool, "description", None)
        return final_answer

    def _install_final_answer(self) -> None:
        if "final_answer" not in self._tools:
            self._wrapped = True
            return
        r = self.executor.execute(_FINAL_ANSWER_SETUP, tools=self._tools)
        if not r.success:  # pragma: no cover - the setup is plain Python
            raise SandboxExecutionError(f"setting up final_answer failed: {r.error}")
        self._wrapped = True

    def _logs(self, r: ExecutionResult) -> str:
        logs = r.stdout
        if r.stdout_truncated:
            logs += "\n[output truncated: the sandbox's output cap was reached]\n"
        if r.stderr:
            logs += r.stderr
        cap = self.max_print_outputs_length
        if len(logs) > cap:
            logs = (logs[:cap // 2] + f"\n..._This content has been truncated to stay below "
                    f"{cap} characters_...\n" + logs[-(cap // 2):])
        return logs


class _Answer:
    """The final answer of one step, given by the host tool (on a worker thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.given = False
        self.value: Any = None

    def give(self, value: Any) -> None:
        with self._lock:
            if not self.given:  # (the first answer of a step stands)
                self.given, self.value = True, value


def authorized_imports(additional: Iterable[str]) -> list[str]:
    """smolagents' base modules plus ``additional`` as a wasm-exec allow-list (``pkg.*``
    as ``pkg``; ``*`` refused)."""
    out = list(BASE_BUILTIN_MODULES)
    for name in additional:
        if not isinstance(name, str):
            raise ValueError(f"an authorized import must be a module name, not {name!r}")
        if name.strip() == "*":
            raise ValueError("additional_authorized_imports=['*'] (any import) cannot be "
                             "honoured: the sandbox imports only what its allow-list names; "
                             "list the modules the agent needs (an entry allows its "
                             "submodules, 'pkg' or 'pkg.*')")
        name = name.removesuffix(".*")
        if name not in out:
            out.append(name)
    return out


def _host_tool(tool: Callable[..., Any]) -> Callable[..., Any]:
    """A smolagents tool as a host function: its result as JSON data, else as text."""

    def call(*args: Any, **kwargs: Any) -> Any:
        value = tool(*args, **kwargs)
        return value if is_plain_json(value) else str(value)

    call.__doc__ = getattr(tool, "description", None)
    return call


_NEWLINE = re.compile(rb"\r\n|\r|\n")


def _capture_last_value(code: str) -> tuple[str, bool]:
    """``code`` with the value of its last statement, when that is an expression, kept in
    the guest (as JSON data, else its repr) for the step's output; line numbers unchanged.
    Code the host's parser cannot read runs as it is (the guest reports its errors)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return code, False
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code, False
    node = tree.body[-1].value
    if node.end_lineno is None or node.end_col_offset is None:
        return code, False
    raw = code.encode("utf-8")
    starts = [0] + [m.end() for m in _NEWLINE.finditer(raw)]
    begin = starts[node.lineno - 1] + node.col_offset  # (offsets are UTF-8 bytes)
    end = starts[node.end_lineno - 1] + node.end_col_offset
    head, expr, tail = raw[:begin], raw[begin:end], raw[end:]
    epilogue = (
        f"\ntry:\n"
        f"    {_REPR} = None if type({_VALUE}) in (str, int, float, bool, type(None)) "
        f"else repr({_VALUE})[:{DEFAULT_MAX_LEN_OUTPUT}]\n"
        f"except Exception as _wasm_exec_error:\n"
        f"    {_REPR} = f'<unrepresentable {{type({_VALUE}).__name__}}: "
        f"{{_wasm_exec_error!r}}>'\n")
    rewritten = (head + f"{_VALUE} = (".encode() + expr + b")" + tail).decode("utf-8")
    return rewritten + epilogue, True


def _failure(r: ExecutionResult, logs: str) -> str:
    """What the model reads when a step failed: logs, then the error and traceback."""
    parts = []
    if r.state_reset:
        parts.append("[the sandbox was reset before this step: earlier variables are gone]")
    if logs:
        parts.append(logs.rstrip("\n"))
    if r.limit:
        how = (" (the sandbox was rolled back to its state after the previous step)"
               if r.rolled_back else "")
        parts.append(f"Code execution stopped by the {r.limit} limit{how}: {r.error}")
    else:
        parts.append(f"Code execution failed: {r.error}")
        if r.traceback:
            parts.append(r.traceback.rstrip("\n"))
    return "\n".join(parts)


__all__ = ["SandboxExecutionError", "WasmPythonExecutor", "authorized_imports"]
