"""Rustic AI integration: sandboxed twins of Rustic's code executors and their resolvers.

Name the resolver in a guild's dependency map and every agent that depends on
``code_executor`` gets its own persistent interpreter in the WebAssembly sandbox::

    DependencySpec(
        class_name="wasm_exec.integrations.rustic.WasmExecExecutorResolver",
        properties={"whitelisted_imports": ["math"], "default_imports": {"m": "math"}},
    )

The injected :class:`WasmCodeExecutor` is a Rustic
``rustic_ai.core.guild.agent_ext.depends.code_execution.stateful.CodeExecutor``
(``run(CodeSnippet)`` / ``run_async`` / ``shutdown``) and also offers wasm-exec's own
``execute(code, globals_dict=None, return_globals=None)`` on the same interpreter.

``run(snippet, input_files=..., output_filenames=...)`` works with the sandbox's own
files (Rustic's in-process executor ignores both): the input files are written into the
agent's working directory (``/tmp/work``) before the code runs, and the output files are
read from there afterwards into ``output_files`` (one that is missing is named in
``logs``). Other differences from Rustic's in-process ``PythonExecExecutor``: globals
travel as JSON data, and with no allow-list an import fails with
``Import of 'sys' is not allowed. Allowed imports: []`` rather than
``__import__ not found``.

The stateless twin of Rustic's ``InProcessCodeInterpreterResolver`` is
:class:`WasmCodeInterpreterResolver`: the injected :class:`WasmCodeInterpreter` is a Rustic
``CodeRunner`` (``run(CodeBlock)`` / ``validate_and_run``) that runs every block in a fresh
interpreter, taken from a pool of pre-started ones; ``run(block, input_files=...,
output_filenames=...)`` takes files too (a :class:`WasmCodeResult` then carries
``output_files``)::

    DependencySpec(
        class_name="wasm_exec.integrations.rustic.WasmCodeInterpreterResolver",
        properties={"whitelisted_imports": ["math"], "timeout_seconds": 10},
    )

Every class here takes ``runtime``: ``"minimal"`` (the default) or ``"scientific"``
(numpy, pandas, matplotlib; ``bash build_runtime.sh --profile scientific``)::

    DependencySpec(
        class_name="wasm_exec.integrations.rustic.WasmExecExecutorResolver",
        properties={"whitelisted_imports": ["numpy", "pandas", "matplotlib.pyplot"],
                    "default_imports": {"np": "numpy", "pd": "pandas",
                                        "plt": "matplotlib.pyplot"},
                    "runtime": "scientific"},
    )

This module needs Rustic AI (``pip install rusticai-core``, Python >= 3.13).
"""

from __future__ import annotations

import asyncio
import os
import textwrap
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import Field

try:
    from rustic_ai.core.guild.agent_ext.depends.code_execution.stateful import (
        CodeExecutor,
        CodeSnippet,
        CodeValidator,
        DefaultCodeValidator,
        ExecutionException,
        ValidationError,
    )
    from rustic_ai.core.guild.agent_ext.depends.code_execution.stateful import (
        ExecutionResult as RusticExecutionResult,
    )
    from rustic_ai.core.guild.agent_ext.depends.code_execution.stateless import (
        CodeBlock,
        CodeException,
        CodeResult,
        CodeRunner,
    )
    from rustic_ai.core.guild.agent_ext.depends.dependency_resolver import DependencyResolver
except ImportError as _error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "wasm_exec.integrations.rustic needs Rustic AI: pip install rusticai-core "
        f"(Python >= 3.13) [{type(_error).__name__}: {_error}]"
    ) from _error

from ..config import Limits, Policy, configure
from ..errors import ConfigurationError, ExecutorClosedError, WasmExecError
from ..executor import ExecutionResult, PythonExecExecutor
from ..pool import SessionPool
from ..resolver import PythonExecExecutorResolver
from ..runtime import profiles
from ..state_store import check_key

__all__ = [
    "WasmCodeExecutor",
    "WasmCodeInterpreter",
    "WasmCodeInterpreterResolver",
    "WasmCodeResult",
    "WasmExecExecutorResolver",
    "close_shared_resolvers",
]

ExecutorFactory = Callable[[], PythonExecExecutor]



class WasmCodeExecutor(CodeExecutor):
    """A Rustic ``CodeExecutor`` that runs Python in a wasm-exec sandbox.

    >>> ex = WasmCodeExecutor(whitelisted_imports=["math"])
    >>> ex.run(CodeSnippet(language="python", code="import math; print(math.sqrt(9))")).stdout
    '3.0\\n'

    One persistent interpreter: variables live on between ``run`` (and ``execute``)
    calls. Errors in the code come back as results (``exit_code`` -1 and ``exception``),
    never as host exceptions; only an unsupported language raises Rustic's
    ``ValidationError``. ``shutdown()`` ends the interpreter; a later call runs on a
    fresh one with an empty state (default imports bound again).

    ``timeout_seconds`` of ``run`` / ``run_async`` becomes the sandbox's own deadline for
    that call, so a runaway snippet is stopped inside wasm, never left running on a
    thread. A ``timeout_seconds`` given here (or in ``limits``) is a ceiling: a call
    asking for more gets this value.

    ``runtime`` is the runtime profile: ``"minimal"`` (the default) or ``"scientific"``
    (numpy, pandas, matplotlib; figures come back in ``execute``'s ``result.figures``).
    """

    def __init__(
        self,
        *,
        whitelisted_imports: Iterable[str] | None = None,
        default_imports: Mapping[str, str] | None = None,
        limits: Limits | Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
        fuel: int | None | Literal["default"] = "default",
        memory_bytes: int | None = None,
        max_output_bytes: int | None = None,
        validator: CodeValidator | None = None,
        runtime: str = "minimal",
    ) -> None:
        runtime = _check_runtime("WasmCodeExecutor", runtime)
        executor = PythonExecExecutor(
            whitelisted_imports=whitelisted_imports, default_imports=default_imports,
            limits=limits, timeout_seconds=timeout_seconds, fuel=fuel,
            memory_bytes=memory_bytes, max_output_bytes=max_output_bytes, runtime=runtime)
        policy, call_limits = executor.policy, executor.limits

        def fresh() -> PythonExecExecutor:
            return PythonExecExecutor(whitelisted_imports=policy.whitelisted_imports,
                                      default_imports=policy.default_imports,
                                      limits=call_limits, runtime=runtime)

        self._setup(fresh, executor, _configured_timeout(limits, timeout_seconds), validator,
                    runtime)

    @classmethod
    def wrap(
        cls,
        source: PythonExecExecutor | ExecutorFactory,
        *,
        max_timeout_seconds: float | None = None,
        validator: CodeValidator | None = None,
        runtime: str | None = None,
    ) -> WasmCodeExecutor:
        """A ``WasmCodeExecutor`` over an existing executor, or over a factory of them.

        With a factory (e.g. ``lambda: pool.resolve(agent_id)``) the executor is asked for
        on first use and again whenever the one in hand has been closed (after
        ``shutdown()``); with an executor, a closed one is replaced by a new executor of
        the same policy, limits and runtime. ``max_timeout_seconds`` caps the per-call
        timeout. ``runtime`` names the factory's runtime profile for the ``runtime``
        property (an executor's own is used when it is given; without either, the
        property asks the factory).
        """
        self = cls.__new__(cls)
        if isinstance(source, PythonExecExecutor):
            first = source

            def fresh() -> PythonExecExecutor:
                return PythonExecExecutor(
                    whitelisted_imports=first.policy.whitelisted_imports,
                    default_imports=first.policy.default_imports, limits=first.limits,
                    runtime=first.runtime)

            self._setup(fresh, first, max_timeout_seconds, validator, first.runtime)
        else:
            if runtime is not None:
                runtime = _check_runtime("WasmCodeExecutor", runtime)
            self._setup(source, None, max_timeout_seconds, validator, runtime)
        return self

    def _setup(self, factory: ExecutorFactory, executor: PythonExecExecutor | None,
               max_timeout_seconds: float | None, validator: CodeValidator | None,
               runtime: str | None) -> None:
        super().__init__(validator or DefaultCodeValidator(self.supported_languages))
        self._factory = factory
        self._executor = executor
        self._max_timeout = max_timeout_seconds
        self._runtime = runtime
        self._swap_lock = threading.Lock()

    # ------------------------------------------------------------ Rustic API
    @property
    def supported_languages(self) -> set[str]:
        """Only ``"python"``."""
        return {"python"}

    @property
    def runtime(self) -> str:
        """The runtime profile the code runs on: ``"minimal"`` or ``"scientific"``."""
        if self._runtime is None:
            self._runtime = self.executor.runtime
        return self._runtime

    @property
    def executor(self) -> PythonExecExecutor:
        """The wasm-exec executor in use now (a fresh one after ``shutdown()``)."""
        with self._swap_lock:
            current = self._executor
            if current is None or current.closed:
                current = self._executor = self._factory()
            return current

    def run(
        self,
        code: CodeSnippet,
        timeout_seconds: float | None = 60,
        input_files: dict[str, bytes] | None = None,
        output_filenames: list[str] | None = None,
    ) -> RusticExecutionResult:
        """Run ``code`` in the sandbox and return Rustic's ``ExecutionResult``.

        ``exit_code`` is 0 on success and -1 when the code raised or a limit stopped it
        (``SystemExit(n)`` gives ``n``); ``timed_out`` is True when the deadline stopped
        it. ``timeout_seconds=None`` uses the executor's configured deadline.
        ``input_files`` (name -> bytes) are written into the sandbox's working directory
        (``/tmp/work``; names relative to it, or absolute under ``/tmp``) before the code
        runs, and stay there; the files named in ``output_filenames`` are read back into
        ``output_files`` after it (each one that cannot be read is named in ``logs``).
        A bad name, or files that do not fit the agent's file space, give an error result
        and nothing runs. Raises Rustic's ``ValidationError`` for a language other than
        Python.
        """
        self._admit(code)
        return self._do_run(code, timeout_seconds, input_files, output_filenames)

    async def run_async(
        self,
        code: CodeSnippet,
        timeout_seconds: float | None = 60,
        input_files: dict[str, bytes] | None = None,
        output_filenames: list[str] | None = None,
    ) -> RusticExecutionResult:
        """``run`` for event loops: the loop is never blocked.

        The deadline is the sandbox's own (``timed_out=True`` when hit). Cancelling the
        awaiting task stops the guest at once; the interpreter is then lost and the next
        call starts a fresh one.
        """
        self._admit(code)
        return await self._do_run_async(code, timeout_seconds, input_files, output_filenames)

    def _do_run(
        self,
        code: CodeSnippet,
        timeout_seconds: float | None,
        input_files: dict[str, bytes] | None,
        output_filenames: list[str] | None,
    ) -> RusticExecutionResult:
        try:
            result = self._with_executor(
                lambda ex: ex.execute(code.code, limits=self._call_limits(timeout_seconds),
                                      files=input_files, output_files=output_filenames))
        except WasmExecError as e:
            return _host_error(code, e)
        return _to_rustic(code, result)

    async def _do_run_async(
        self,
        code: CodeSnippet,
        timeout_seconds: float | None,
        input_files: dict[str, bytes] | None,
        output_filenames: list[str] | None,
    ) -> RusticExecutionResult:
        try:
            limits = self._call_limits(timeout_seconds)
            files = dict(files=input_files, output_files=output_filenames)
            try:
                result = await (await self._executor_async()).aexecute(
                    code.code, limits=limits, **files)
            except ExecutorClosedError:  # closed by a shutdown() racing with us: once more
                result = await (await self._executor_async()).aexecute(
                    code.code, limits=limits, **files)
        except WasmExecError as e:
            return _host_error(code, e)
        return _to_rustic(code, result)

    def _do_shutdown(self) -> None:
        """End the interpreter now; the next call runs on a fresh one (empty state). With
        a state store, the agent's stored image is deleted too."""
        with self._swap_lock:
            current, self._executor = self._executor, None
        if current is not None:
            current.forget_state()
            current.close()

    # ------------------------------------------------------- wasm-exec's API
    def execute(
        self,
        code: str,
        globals_dict: Mapping[str, Any] | None = None,
        return_globals: Iterable[str] | None = None,
        *,
        limits: Mapping[str, Any] | None = None,
    ) -> ExecutionResult:
        """wasm-exec's ``execute`` on the same interpreter as ``run``.

        ``globals_dict`` values (JSON data) are bound before the code runs and the names
        in ``return_globals`` come back in ``result.globals``. Returns
        :class:`wasm_exec.ExecutionResult`; raises :class:`wasm_exec.InputError` for
        globals that are not JSON data (nothing runs then).

        Code indented as a whole is dedented first (``textwrap.dedent``), so a
        triple-quoted string written inside a method body, as Rustic's docs write it,
        runs as its author meant. Only here and in ``aexecute``: ``run`` passes its
        snippet on as given, as Rustic's executors do. Code without such a common margin
        is passed on unchanged; line numbers in tracebacks stay those of ``code``.
        """
        self._rearm()
        code = _dedent(code)
        return self._with_executor(
            lambda ex: ex.execute(code, globals_dict, return_globals, limits=limits))

    async def aexecute(
        self,
        code: str,
        globals_dict: Mapping[str, Any] | None = None,
        return_globals: Iterable[str] | None = None,
        *,
        limits: Mapping[str, Any] | None = None,
    ) -> ExecutionResult:
        """``execute`` for event loops (cancelling stops the guest)."""
        self._rearm()
        code = _dedent(code)
        try:
            executor = await self._executor_async()
            return await executor.aexecute(code, globals_dict, return_globals, limits=limits)
        except ExecutorClosedError:  # closed by a shutdown() racing with us: once more
            executor = await self._executor_async()
            return await executor.aexecute(code, globals_dict, return_globals, limits=limits)

    # ------------------------------------------------------------ internals
    def _admit(self, code: CodeSnippet) -> None:
        validator = self._validator or DefaultCodeValidator(self.supported_languages)
        if not validator.is_valid(code):
            raise ValidationError(validator.explain(code)
                                  or f"Unsupported language: {code.language}")
        self._rearm()

    def _rearm(self) -> None:
        # Like Rustic's PythonExecExecutor, a call after shutdown() works on an empty state;
        # it starts a new life, so a later shutdown() clears state again.
        self._is_shutdown = False

    def _with_executor(self, call: Callable[[PythonExecExecutor], ExecutionResult]) \
            -> ExecutionResult:
        try:
            return call(self.executor)
        except ExecutorClosedError:  # closed by a shutdown() racing with us: once more
            return call(self.executor)

    async def _executor_async(self) -> PythonExecExecutor:
        current = self._executor
        if current is not None and not current.closed:
            return current
        # starting an interpreter takes tens of milliseconds: keep it off the event loop
        return await asyncio.to_thread(lambda: self.executor)

    def _call_limits(self, timeout_seconds: float | None) -> dict[str, Any] | None:
        if timeout_seconds is None:
            return None
        timeout = float(timeout_seconds)
        if self._max_timeout is not None:
            timeout = min(timeout, self._max_timeout)
        return {"timeout_seconds": timeout}


class WasmExecExecutorResolver(DependencyResolver[CodeExecutor]):
    """Rustic dependency resolver handing each agent its own sandboxed interpreter.

    Use it from a guild specification::

        DependencySpec(
            class_name="wasm_exec.integrations.rustic.WasmExecExecutorResolver",
            properties={"whitelisted_imports": ["math"], "default_imports": {"m": "math"},
                        "timeout_seconds": 10},
        )

    ``runtime`` is ``"minimal"`` (the default) or ``"scientific"`` (numpy, pandas,
    matplotlib). Rustic builds one resolver per agent from ``properties``; all resolvers with
    the same configuration share one process-wide :class:`wasm_exec.PythonExecExecutorResolver`,
    so every agent counts against the same ``max_agents`` bound. The same
    org/guild/agent always gets the same interpreter (its state kept); different agents
    are isolated.

    ``state_store`` (a directory or a ``redis://`` URL) saves each agent's interpreter
    after every answered call, keyed by ``(agent_id, guild_id, org_id)``: an agent whose
    process died (a Ray actor restarted, or recreated on another node) continues from its
    last answered call. ``state_store_key_env`` names an environment variable holding
    the key that signs the images (at least 16 bytes; ``state_store_key`` gives it
    directly, but a guild spec is not the place for a secret).
    """

    memoize_resolution = True

    def __init__(
        self,
        whitelisted_imports: Iterable[str] | None = None,
        default_imports: Mapping[str, str] | None = None,
        *,
        timeout_seconds: float | None = None,
        fuel: int | None | Literal["default"] = "default",
        memory_bytes: int | None = None,
        max_output_bytes: int | None = None,
        limits: Mapping[str, Any] | None = None,
        max_agents: int = 64,
        idle_timeout_seconds: float | None = 1800.0,
        runtime: str = "minimal",
        state_store: str | None = None,
        state_store_key: str | None = None,
        state_store_key_env: str | None = None,
    ) -> None:
        super().__init__()
        self.runtime: str = _check_runtime("WasmExecExecutorResolver", runtime)
        store_key = _store_key(state_store, state_store_key, state_store_key_env)
        overrides: dict[str, Any] = dict(limits or {})
        overrides.update(Limits.shortcuts(fuel=fuel, timeout_seconds=timeout_seconds,
                                          memory_bytes=memory_bytes,
                                          max_output_bytes=max_output_bytes))
        policy, call_limits = configure(whitelisted_imports, default_imports,
                                        overrides=overrides, owner="WasmExecExecutorResolver")
        # a configured deadline is a ceiling that a run(timeout_seconds=...) cannot lift
        self.max_timeout_seconds: float | None = (
            call_limits.timeout_seconds if "timeout_seconds" in overrides else None)
        self._pool_key: _PoolKey = (
            policy.whitelisted_imports, tuple(sorted(policy.default_imports.items())),
            call_limits, max_agents, idle_timeout_seconds, self.runtime,
            str(state_store) if state_store is not None else None, store_key)
        _shared_pool(self._pool_key)  # start the pool now, so every agent finds it

    @property
    def pool(self) -> PythonExecExecutorResolver:
        """The process-wide pool shared by every resolver of this configuration."""
        return _shared_pool(self._pool_key)

    def resolve(self, org_id: str, guild_id: str, agent_id: str) -> CodeExecutor:
        """A :class:`WasmCodeExecutor` bound to this agent's interpreter in the shared pool."""
        key = self._pool_key

        def agent_executor() -> PythonExecExecutor:
            return _shared_pool(key).resolve(agent_id, guild_id, org_id)

        return WasmCodeExecutor.wrap(agent_executor, max_timeout_seconds=self.max_timeout_seconds,
                                     runtime=self.runtime)


class WasmCodeInterpreter(CodeRunner):
    """A Rustic ``CodeRunner`` that runs each block in a fresh wasm-exec sandbox.

    The sandboxed twin of Rustic's ``InProcessCodeInterpreter``:

    >>> runner = WasmCodeInterpreter(whitelisted_imports=["math"])
    >>> block = CodeBlock(language="python", code="import math\\nr = math.sqrt(y)",
    ...                   globals={"y": 16}, locals={})
    >>> runner.run(block).code.locals
    {'r': 4.0}

    Stateless: every ``run`` takes a fresh, pre-started interpreter from a
    :class:`wasm_exec.SessionPool` (shared by every runner with the same ``pool_size``; it
    keeps ``pool_size`` interpreters ready per boot configuration) and ends it afterwards,
    so nothing carries over from one block to the next. Default imports are bound in each.

    Results have Rustic's shape: ``output`` is stdout, ``error`` is stderr, ``exit_code``
    is 1 when the code raised, a limit stopped it or it wrote to stderr (else 0), and
    ``exception`` (a ``CodeException`` with the traceback as a list of lines) describes
    what was raised or which limit stopped it. An unsupported language gives
    ``exit_code`` 1 and ``error`` ``"Unsupported language: ..."``. Errors in the code never
    raise on the host.

    ``exec(code, globals, locals)`` is emulated in the sandbox's one namespace: the code
    runs with ``globals`` and ``locals`` merged (``locals`` win), then ``code.globals`` and
    ``code.locals`` of the block are updated in place: a name given in ``globals`` (and
    not in ``locals``) goes back to ``globals`` with its new value, every other name the
    code left behind goes to ``locals``. Only JSON data comes back: modules, functions,
    classes and other objects are left out, as are names the code deleted. When a limit
    stopped the code the block is left as it was.

    ``runtime`` is ``"minimal"`` (the default) or ``"scientific"`` (numpy, pandas,
    matplotlib); a missing runtime comes back from ``run`` as an error result.
    """

    supported_languages: list[str] = ["python"]

    def __init__(
        self,
        *,
        whitelisted_imports: Iterable[str] | None = None,
        default_imports: Mapping[str, str] | None = None,
        limits: Limits | Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
        fuel: int | None | Literal["default"] = "default",
        memory_bytes: int | None = None,
        max_output_bytes: int | None = None,
        pool_size: int = 2,
        pool: SessionPool | None = None,
        runtime: str = "minimal",
    ) -> None:
        self.runtime: str = _check_runtime("WasmCodeInterpreter", runtime)
        self.policy, self.limits = _policy_and_limits(
            "WasmCodeInterpreter", whitelisted_imports, default_imports, limits,
            timeout_seconds, fuel, memory_bytes, max_output_bytes)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 0:
            raise ConfigurationError(
                f"WasmCodeInterpreter: pool_size must be an int >= 0, not {pool_size!r}")
        self.pool_size = pool_size
        self._own_pool = pool

    @property
    def pool(self) -> SessionPool:
        """The pool of pre-started interpreters each ``run`` takes one from."""
        if self._own_pool is not None:
            return self._own_pool
        return _runner_pool(self.pool_size)

    def run(self, code: CodeBlock, *, input_files: Mapping[str, bytes] | None = None,
            output_filenames: Iterable[str] | None = None) -> CodeResult:
        """Run ``code`` in a fresh interpreter; ``result.code`` is ``code``, read back.

        ``input_files`` (name -> bytes; relative to the working directory ``/tmp/work``)
        are written before the code runs, and the files named in ``output_filenames`` are
        read after it: the result is then a :class:`WasmCodeResult`, whose
        ``output_files`` holds them (one that cannot be read gets a line on ``error``
        and ``exit_code`` 1). Rustic's ``CodeRunner.run`` has no files: these two keyword
        arguments are this runner's own.
        """
        block = code
        files_asked = input_files is not None or output_filenames is not None
        result_type = WasmCodeResult if files_asked else CodeResult
        if block.language not in self.supported_languages:
            return result_type(code=block, output="",
                               error=f"Unsupported language: {block.language}", exit_code=1)
        namespace = {**block.globals, **block.locals}
        try:
            executor = PythonExecExecutor(
                whitelisted_imports=self.policy.whitelisted_imports,
                default_imports=self.policy.default_imports, limits=self.limits,
                pool=self.pool, runtime=self.runtime)
            try:
                result = executor.execute(block.code, namespace, return_all=True,
                                          files=input_files, output_files=output_filenames)
            finally:
                executor.close()
        except WasmExecError as e:  # globals that are not JSON, a runtime that cannot boot
            return result_type(code=block, output="", error="", exit_code=1,
                               exception=CodeException(etype=type(e).__name__,
                                                       message=str(e), traceback=[]))
        if result.limit is None:
            _read_back(block, result.globals)
        exception = None
        if not result.success and not _clean_exit(result):
            message = result.error_message if result.error_message is not None \
                else (result.error or "")
            exception = CodeException(
                etype=result.error_type or "Error", message=message,
                traceback=(result.traceback or "").splitlines(keepends=True))
        error = result.stderr + "".join(line + "\n" for line in _file_logs(result))
        failed = exception is not None or bool(error)
        if files_asked:
            return WasmCodeResult(code=block, output=result.stdout, error=error,
                                  exit_code=1 if failed else 0, exception=exception,
                                  output_files=dict(result.files))
        return CodeResult(code=block, output=result.stdout, error=error,
                          exit_code=1 if failed else 0, exception=exception)


class WasmCodeResult(CodeResult):
    """Rustic's ``CodeResult`` with the files a :class:`WasmCodeInterpreter` run was asked
    for (``output_filenames``), by name."""

    output_files: dict[str, bytes] = Field(default_factory=dict)


class WasmCodeInterpreterResolver(DependencyResolver[CodeRunner]):
    """Rustic dependency resolver for :class:`WasmCodeInterpreter` (stateless runs).

    The sandboxed twin of Rustic's ``InProcessCodeInterpreterResolver``::

        DependencySpec(
            class_name="wasm_exec.integrations.rustic.WasmCodeInterpreterResolver",
            properties={"whitelisted_imports": ["math"], "default_imports": {"m": "math"},
                        "timeout_seconds": 10},
        )

    Not memoized, like Rustic's: each resolution gives a new runner, and each of its runs
    uses a fresh interpreter from the pool shared by every runner with the same
    ``pool_size``. ``runtime`` is ``"minimal"`` (the default) or ``"scientific"``. Bad
    properties raise :class:`wasm_exec.ConfigurationError` here, when
    the guild builds the resolver.
    """

    memoize_resolution = False

    def __init__(
        self,
        whitelisted_imports: Iterable[str] | None = None,
        default_imports: Mapping[str, str] | None = None,
        *,
        timeout_seconds: float | None = None,
        fuel: int | None | Literal["default"] = "default",
        memory_bytes: int | None = None,
        max_output_bytes: int | None = None,
        limits: Mapping[str, Any] | None = None,
        pool_size: int = 2,
        runtime: str = "minimal",
    ) -> None:
        super().__init__()
        runtime = _check_runtime("WasmCodeInterpreterResolver", runtime)
        first = WasmCodeInterpreter(
            whitelisted_imports=whitelisted_imports, default_imports=default_imports,
            limits=limits, timeout_seconds=timeout_seconds, fuel=fuel,
            memory_bytes=memory_bytes, max_output_bytes=max_output_bytes, pool_size=pool_size,
            runtime=runtime)
        self.policy, self.limits, self.pool_size = first.policy, first.limits, pool_size
        self.runtime: str = runtime

    def resolve(self, org_id: str, guild_id: str, agent_id: str) -> CodeRunner:
        """A new :class:`WasmCodeInterpreter` of this resolver's configuration."""
        return WasmCodeInterpreter(
            whitelisted_imports=self.policy.whitelisted_imports,
            default_imports=self.policy.default_imports, limits=self.limits,
            pool_size=self.pool_size, runtime=self.runtime)


# ------------------------------------------------------------ shared pools
# allow-list, default imports, limits, max_agents, idle_timeout_seconds, runtime,
# state store, its key
_PoolKey = tuple[frozenset[str], tuple[tuple[str, str], ...], Limits, int, float | None, str,
                 str | None, bytes | None]
_pools: dict[_PoolKey, PythonExecExecutorResolver] = {}
_pools_lock = threading.Lock()


def _shared_pool(key: _PoolKey) -> PythonExecExecutorResolver:
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            (allowed, defaults, limits, max_agents, idle_timeout_seconds, runtime, store,
             store_key) = key
            pool = PythonExecExecutorResolver(
                allowed, dict(defaults), max_agents=max_agents,
                idle_timeout_seconds=idle_timeout_seconds, limits=limits, runtime=runtime,
                state_store=store, state_store_key=store_key)
            _pools[key] = pool
        return pool


_runner_pools: dict[int, SessionPool] = {}


def _runner_pool(size: int) -> SessionPool:
    with _pools_lock:
        pool = _runner_pools.get(size)
        if pool is None:
            pool = _runner_pools[size] = SessionPool(size=size)
        return pool


def close_shared_resolvers() -> None:
    """End every interpreter that the resolvers of this module started.

    That is the pools of :class:`WasmExecExecutorResolver` (agents' state is gone, unless
    a state store keeps it; executors already handed out keep working, each on a fresh
    interpreter in a new pool, or one continuing from the store)
    and the ready interpreters of :class:`WasmCodeInterpreter` (later runs use a new
    pool). Useful at the end of a test or when a process winds down its guilds.
    """
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
        runner_pools = list(_runner_pools.values())
        _runner_pools.clear()
    for pool in pools:
        pool.close()
    for runner_pool in runner_pools:
        runner_pool.close()


# ---------------------------------------------------------------- mapping
def _store_key(store: Any, key: Any, key_env: Any) -> bytes | None:
    """The state store's signing key, from ``state_store_key`` or the environment variable
    ``state_store_key_env`` names (ConfigurationError when misconfigured)."""
    owner = "WasmExecExecutorResolver"
    if store is not None and not isinstance(store, str):
        raise ConfigurationError(f"{owner}: state_store must be a directory path or a "
                                 f"redis:// URL (a str), not {type(store).__name__}")
    if key is not None and key_env is not None:
        raise ConfigurationError(f"{owner}: give state_store_key or state_store_key_env, "
                                 "not both")
    if key_env is not None:
        if not isinstance(key_env, str) or not os.environ.get(key_env):
            raise ConfigurationError(f"{owner}: state_store_key_env names {key_env!r}, an "
                                     "environment variable that is not set (or empty) here")
        key = os.environ[key_env]
    if key is not None and store is None:
        raise ConfigurationError(f"{owner}: a state store key needs a state_store")
    try:
        return check_key(key)
    except (TypeError, ValueError) as e:
        raise ConfigurationError(f"{owner}: {e}") from e


def _check_runtime(owner: str, runtime: Any) -> str:
    known = profiles()
    if not isinstance(runtime, str) or runtime not in known:
        raise ConfigurationError(f"{owner}: unknown runtime {runtime!r}; known: {known}")
    return runtime


def _dedent(code: Any) -> Any:
    """``code`` without the margin common to all its lines, when it has one.

    Only code that would fail with ``IndentationError`` ("unexpected indent") has such a
    margin (or code that is only comments): anything else comes back as it is,
    whitespace-only lines included, and so does a value that is not a ``str`` (``execute``
    reports that). Lines are kept, so line numbers in tracebacks do not move.
    """
    if not isinstance(code, str):
        return code
    first = next((line for line in code.splitlines() if line.strip()), "")
    if not first[:1].isspace():
        return code
    dedented = textwrap.dedent(code)
    first_after = next((line for line in dedented.splitlines() if line.strip()), "")
    return dedented if len(first_after) < len(first) else code


def _policy_and_limits(
    owner: str,
    whitelisted_imports: Iterable[str] | None,
    default_imports: Mapping[str, str] | None,
    limits: Limits | Mapping[str, Any] | None,
    timeout_seconds: float | None,
    fuel: int | None | Literal["default"],
    memory_bytes: int | None,
    max_output_bytes: int | None,
) -> tuple[Policy, Limits]:
    return configure(whitelisted_imports, default_imports, limits, fuel=fuel,
                     timeout_seconds=timeout_seconds, memory_bytes=memory_bytes,
                     max_output_bytes=max_output_bytes, owner=owner)


def _read_back(block: CodeBlock, values: Mapping[str, Any]) -> None:
    """Split the namespace the code left into ``block.globals`` / ``block.locals``."""
    if block.globals is block.locals:  # exec(code, d, d): one namespace, as here
        block.globals.clear()
        block.globals.update(values)
        return
    # a name given in both was seen (and updated) as the local one, as exec does
    new_globals: dict[str, Any] = {}
    for name, old in block.globals.items():
        if name in block.locals:
            new_globals[name] = old
        elif name in values:
            new_globals[name] = values[name]
    new_locals = {name: value for name, value in values.items()
                  if name in block.locals or name not in block.globals}
    block.globals.clear()
    block.globals.update(new_globals)
    block.locals.clear()
    block.locals.update(new_locals)


def _clean_exit(result: ExecutionResult) -> bool:
    """``sys.exit()`` / ``sys.exit(0)``: the code ended normally, as a process would."""
    return result.exit_code == 0


def _configured_timeout(limits: Limits | Mapping[str, Any] | None,
                        timeout_seconds: float | None) -> float | None:
    if timeout_seconds is not None:
        return float(timeout_seconds)
    if isinstance(limits, Limits):
        return limits.timeout_seconds if "timeout_seconds" in limits.model_fields_set else None
    if limits and limits.get("timeout_seconds") is not None:
        return float(limits["timeout_seconds"])
    return None


def _exit_code(result: ExecutionResult) -> int:
    if result.exit_code is not None:
        return result.exit_code  # SystemExit(n): n (sys.exit("text"): 1), as a process
    return 0 if result.success else -1


def _to_rustic(snippet: CodeSnippet, result: ExecutionResult) -> RusticExecutionResult:
    exception = None
    if not result.success:
        exception = ExecutionException(
            type=result.error_type or "Error",
            message=result.error_message if result.error_message is not None
            else (result.error or ""),
            traceback=result.traceback)
    return RusticExecutionResult(
        input_snippet=snippet,
        stdout=result.stdout,
        stderr=result.stderr,
        exit_code=_exit_code(result),
        exception=exception,
        timed_out=result.limit == "timeout",
        duration_seconds=result.duration_seconds,
        output_files=dict(result.files),
        logs=_file_logs(result),
        resources_used={
            "fuel_used": result.fuel_used,
            "memory_bytes": result.memory_bytes,
            "limit": result.limit,
            "state_reset": result.state_reset,
            "interpreter_lost": result.interpreter_lost,
        },
    )


def _host_error(snippet: CodeSnippet, error: Exception) -> RusticExecutionResult:
    return RusticExecutionResult(
        input_snippet=snippet, exit_code=-1,
        exception=ExecutionException(type=type(error).__name__, message=str(error)))


def _file_logs(result: ExecutionResult) -> list[str]:
    """A log line per output file that could not be read."""
    return [f"output file {name!r} not read: {why}"
            for name, why in result.files_errors.items()]
