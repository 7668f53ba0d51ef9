"""The public API: :class:`PythonExecExecutor` and :class:`ExecutionResult`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from . import images, parking
from .config import Limits, Policy, configure
from .errors import (
    ConfigurationError,
    ExecutorClosedError,
    ImageError,
    InputError,
    ReentrantCallError,
    WasmExecError,
)
from .files import (
    FileData,
    FileInfo,
    check_files,
    check_output_files,
    file_bytes,
    listing,
    read_all,
    write_all,
)
from .hostfiles import host_path
from .output import Mailbox, OutputChunk, OutputDispatch, OutputHandler, in_callback_of
from .protocol import (
    CallReply,
    CallRequest,
    ResetReason,
    StopReason,
    check_json_value,
    is_plain_json,
)
from .results import (  # (LimitName: importable from here, as before)
    DisplayValue,
    ExecutionResult,
    LimitName,  # noqa: F401
    display_value,
    not_run,
    stopped,
)
from .runtime import EngineSettings, load_pin, load_runtime, missing_module_hint, profiles
from .session import STOP_CANCELLED, Session, SessionDead
from .snapshot import Snapshot
from .state_store import (
    AgentState,
    StateStore,
    StateStoreError,
    check_identity,
    check_key,
    open_state_store,
)
from .supply import AgentSupply, SessionKey, SessionPool, template_of
from .tools import Stragglers, ToolBox, ToolFunction, check_tools, serving
from .turns import CallOutcome
from .vfs import MemoryFS, scratch_budget
from .zipfs import shared_zip

_log = logging.getLogger("wasm_exec.state_store")

# how many names return_globals may list, and how long each may be (the reply carries
# each name twice, and has to fit the host's cap)
MAX_RETURN_NAMES = 10_000
MAX_NAME_CHARS = 1_000

@dataclass
class _Extras:
    """What the host brings to a call, checked on the caller's side: files in, names of
    files out, tools, the event loop of an ``aexecute`` (where async tools run), and the
    call's ticket (an async call's cancellation) and output callbacks."""

    files: list[tuple[str, bytes]] = field(default_factory=list)
    output_files: list[tuple[str, str]] = field(default_factory=list)
    tools: dict[str, ToolFunction] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None
    ticket: _Ticket | None = None
    output: OutputDispatch | None = None


@dataclass
class _Call:
    """One call with its input checked: the request the guest is sent, the limits it runs
    under, and its extras. (An async call's request is checked on the worker thread: a
    large code or globals never blocks the event loop.)"""

    request: CallRequest
    limits: Limits
    extras: _Extras


class PythonExecExecutor:
    """A persistent Python interpreter in a WebAssembly sandbox, for one agent.

    >>> with PythonExecExecutor(whitelisted_imports=["math"]) as ex:
    ...     ex.execute("import math\\nr = math.sqrt(16)", return_globals=["r"]).globals
    {'r': 4.0}

    Variables, functions, classes and imports live on between calls. Limits (fuel,
    timeout, memory, output) come from ``limits`` (or keyword arguments) and can be
    overridden per call with ``execute(..., limits={...})``. ``tools`` maps names to host
    callables that the agent's code calls like functions (JSON data in and out; see
    :mod:`wasm_exec.tools`). The agent's files (``write_file``, ``read_file``,
    ``list_files``, ``delete_file``; ``execute(files=..., output_files=...)``) live in its
    sandbox, under ``/tmp`` (the working directory is ``/tmp/work``).
    """

    def __init__(
        self,
        *,
        whitelisted_imports: Iterable[str] | None = None,
        default_imports: Mapping[str, str] | None = None,
        limits: Limits | Mapping[str, Any] | None = None,
        fuel: int | None | Literal["default"] = "default",
        timeout_seconds: float | None = None,
        memory_bytes: int | None = None,
        max_output_bytes: int | None = None,
        pool: SessionPool | None = None,
        runtime: str = "minimal",
        rollback: bool = True,
        rollback_standby: bool = False,
        state_store: StateStore | str | os.PathLike[str] | None = None,
        state_key: str | tuple[str, ...] | None = None,
        state_store_key: bytes | str | None = None,
        tools: Mapping[str, ToolFunction] | None = None,
        _restore: Snapshot | None = None,
        _fork_of: tuple[Snapshot, Snapshot | None, list[int] | None] | None = None,
    ) -> None:
        self._tools = check_tools(tools, where="tools", error=ConfigurationError)
        self._stragglers = Stragglers()  # (its tools still running past their call)
        self.policy: Policy
        self.limits: Limits
        self.policy, self.limits = configure(
            whitelisted_imports, default_imports, limits, fuel=fuel,
            timeout_seconds=timeout_seconds, memory_bytes=memory_bytes,
            max_output_bytes=max_output_bytes)
        self._settings = EngineSettings(fuel=self.limits.fuel is not None)
        if runtime not in profiles():
            raise ConfigurationError(f"unknown runtime {runtime!r}; known: {profiles()}")
        self.runtime = runtime
        load_runtime(self._settings, runtime)  # the runtime is found (or an error names the fix)
        self._key = SessionKey.of(self._settings, self.policy.allowed,
                                  self.policy.default_imports, self.limits.memory_bytes,
                                  runtime)
        # a snapshot of the interpreter is kept after each call (taken after the answer is
        # returned), so that a stopped call rolls back instead of losing the agent's state
        self.rollback = bool(rollback)
        # an interpreter kept restored in the background from the start (not only after a
        # first stop), so that even the first roll-back reloads mapped pages: one more
        # linear memory per agent
        self.rollback_standby = bool(rollback_standby)
        # every runtime can be imaged (kept for compatibility: always True)
        self.snapshots = True
        self._pool = pool
        self._lock = threading.RLock()
        # every interpreter of this agent's (the one it runs on, the roll-back standby, the
        # spare, its parked image) comes from and goes back to its supply
        self._supply = AgentSupply(self._key, pool=pool, rollback=self.rollback,
                                   rollback_standby=self.rollback_standby, lock=self._lock,
                                   default_imports=self.policy.default_imports,
                                   runtime=runtime)
        ref = weakref.ref(self)  # (the supply must not keep its executor alive)
        self._supply.room = lambda: _room_of(ref)
        self._closed = False
        self._last_used = time.monotonic()
        self.on_session_start: Callable[[PythonExecExecutor], None] | None = None
        # set by a resolver: makes room for an interpreter of this executor's (evicting
        # or parking others) and may hand over one it freed (see AgentSupply.room)
        self._room_for: Callable[[PythonExecExecutor], Session | None] | None = None
        # why the next call runs on a fresh interpreter (ExecutionResult.reset_reason)
        self._reset_pending: ResetReason | None = None
        self._calls = 0  # calls that got the executor (see _Ticket.deliver)
        # the agent's image in a state store: saved after each answered call, and what a
        # new executor of the same identity continues from (see state_store.py)
        self._state: AgentState | None = None
        self._resume = False  # the next call continues from the store (after release())
        supply = self._supply
        if state_store is not None or state_key is not None or state_store_key is not None:
            self._state = _agent_state(self, state_store, state_key, state_store_key)
            if _restore is None:
                stored = self._stored_snapshot()
                if stored is not None:
                    try:
                        supply.adopt(supply.restore(stored))
                    except ValueError as e:
                        _log.warning("agent %r starts on a fresh interpreter: %s",
                                     self._state.identity, e)
                        self._reset_pending = "lost"
        if supply.current is None and _restore is not None:
            try:
                supply.adopt(supply.restore(_restore))
            except ValueError as e:
                raise ImageError(str(e)) from e
        elif _fork_of is not None and supply.current is None:
            try:
                supply.adopt(supply.copy_of(*_fork_of))
            except ValueError as e:
                raise ImageError(str(e)) from e
        elif supply.current is None:
            supply.adopt(supply.new())
        # (an executor dropped unclosed frees its interpreters and parked image)
        self._finalizer = weakref.finalize(self, supply.free)

    # ------------------------------------------------------------------ API
    def execute(
        self,
        code: str,
        globals_dict: Mapping[str, Any] | None = None,
        return_globals: Iterable[str] | None = None,
        *,
        limits: Mapping[str, Any] | None = None,
        display: bool = False,
        return_all: bool = False,
        trace_imports: bool = False,
        files: Mapping[str, FileData] | None = None,
        output_files: Iterable[str] | None = None,
        tools: Mapping[str, ToolFunction] | None = None,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
    ) -> ExecutionResult:
        """Run ``code`` in this executor's interpreter.

        ``globals_dict`` values (JSON data) are bound as globals before the code runs;
        the names in ``return_globals`` come back in ``result.globals`` as JSON data.
        ``limits`` overrides this executor's limits for this call. When the last
        statement is an expression, its value comes back in ``result.value``; with
        ``display=True`` it is also printed, as at the interactive prompt. With
        ``return_all=True`` every global that converts to JSON comes back (modules,
        functions, classes and other objects are left out without an error). With
        ``trace_imports=True``, ``result.imports`` lists each import the guard was asked
        for during the call, with the rule that granted it (None: refused).

        ``files`` (name -> bytes or str) are written into the agent's files before the
        code runs, as :meth:`write_file` would (they stay, also when a limit stops the
        call); the files named in ``output_files`` come back in ``result.files`` (those
        that cannot be read in ``result.files_errors``). ``tools`` (name -> callable) adds
        to, or replaces, this executor's tools for this call.

        ``on_stdout`` / ``on_stderr`` are called with each piece of text the code prints,
        while it runs (on this thread; the guest does not wait for them). One that raises
        is not called again in this call, and ``result.callback_error`` says what it
        raised; the call goes on. ``result.stdout`` / ``stderr`` still hold everything.
        """
        output = (OutputDispatch(self, on_stdout, on_stderr)
                  if on_stdout is not None or on_stderr is not None else None)
        extras = self._extras(files, output_files, tools)
        extras.output = output
        self._not_from_callback("execute()")
        return self._execute(self._check(extras, code, globals_dict, return_globals, limits,
                                         display, return_all, trace_imports))

    def _extras(self, files: Mapping[str, FileData] | None,
                output_files: Iterable[str] | None,
                tools: Mapping[str, ToolFunction] | None,
                loop: asyncio.AbstractEventLoop | None = None) -> _Extras:
        """Check what the host brings to a call (InputError: nothing runs)."""
        self._check_not_serving()  # (execute, aexecute and astream, on the caller's side)
        merged = dict(self._tools)
        merged.update(check_tools(tools, where="tools", error=InputError))
        return _Extras(check_files(files), check_output_files(output_files), merged, loop)

    def _check(self, extras: _Extras, code: str, globals_dict: Mapping[str, Any] | None,
               return_globals: Iterable[str] | None, limits: Mapping[str, Any] | None,
               display: bool, return_all: bool, trace_imports: bool) -> _Call:
        """Check a call's code, globals, names and limits into the request the guest is
        sent (InputError says what is wrong; nothing runs and the agent's state is
        unchanged)."""
        call_limits = self._call_limits(limits)
        if not isinstance(code, str):
            raise InputError(f"code must be a str, not {type(code).__name__}")
        try:
            encoded = code.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(
                f"code has a lone surrogate ({code[e.start]!r}) at index {e.start}: that is "
                "not text Python can compile; write it as an escape in a string literal "
                "(e.g. '\\ud800') or remove it. Nothing was run and the agent's state is "
                "unchanged") from None
        if len(encoded) > call_limits.max_code_bytes:
            raise InputError(f"code is {len(encoded)} bytes; the limit is "
                             f"{call_limits.max_code_bytes} (limits.max_code_bytes)")
        globals_json = self._check_globals(globals_dict, call_limits)
        names = tuple(self._check_names(return_globals))
        request = CallRequest(
            code=code, return_names=names, globals_json=globals_json, display=bool(display),
            return_all=bool(return_all), figures=self.runtime != "minimal",
            trace_imports=bool(trace_imports), tools=tuple(sorted(extras.tools)))
        return _Call(request, call_limits, extras)

    def _execute(self, call: _Call) -> ExecutionResult:
        """Run a prepared call; its output callbacks are done with when it returns."""
        result = self._execute_call(call)
        output = call.extras.output
        if output is not None:
            output.finish()
            if output.error is not None:
                result = result.model_copy(update={"callback_error": output.error})
            if output.interrupt is not None:
                raise output.interrupt  # (the call was stopped and rolled back)
        return result

    def _execute_call(self, call: _Call) -> ExecutionResult:
        """Hold the executor for ``call`` (it never runs when its ticket is cancelled
        first), then run it."""
        ticket = call.extras.ticket
        with self._call_lock(ticket) as go:
            if not go:
                return not_run()
            self._calls += 1
            result = self._execute_locked(call)
            if ticket is not None and result.state_reset and not ticket.deliver(self._calls):
                # cancelled: no one reads this result, so the next call reports the reset
                self._reset_pending = result.reset_reason or "lost"
            return result

    def _execute_locked(self, call: _Call) -> ExecutionResult:
        """One call, with the executor held (see ``_execute_call``): an interpreter for
        it, the call handed over, its output files read, and its outcome as a result."""
        if self._closed:
            raise ExecutorClosedError("this executor is closed; create a new one")
        session, reset = self._interpreter(self._reset_pending)
        self._reset_pending = None
        started = time.perf_counter()
        ran = self._run(call, session, reset)
        if ran is None:
            return not_run()
        session, outcome, reset = ran
        if call.extras.output is not None and outcome.interrupt is not None:
            call.extras.output.interrupt = outcome.interrupt
        out_files, out_errors = self._output_files(call, session, outcome)
        if call.extras.ticket is not None and call.extras.ticket.finish() and outcome.died is None:
            self._replace_after_late_cancel(session)
        self._last_used = time.monotonic()
        common = dict(stdout=outcome.stdout, stderr=outcome.stderr,
                      stdout_truncated=outcome.stdout_truncated,
                      stderr_truncated=outcome.stderr_truncated,
                      duration_seconds=outcome.duration or (time.perf_counter() - started),
                      fuel_used=outcome.fuel_used, memory_bytes=outcome.memory_bytes,
                      state_reset=reset is not None, reset_reason=reset, files=out_files,
                      files_errors=out_errors)
        if outcome.died is not None:
            return self._roll_back(session, outcome.died, call.limits, common)
        assert outcome.reply is not None  # (validated where the session received it)
        return self._answered(call, session, outcome.reply, common)

    def _interpreter(self, reset: ResetReason | None
                     ) -> tuple[Session, ResetReason | None]:
        """The interpreter the next call runs on, and why the agent's state was reset
        (``reset``: what is still to be reported, None if nothing)."""
        session = self._supply.current
        if session is None and self._resume:
            session = self._resume_from_store()  # (released: continue from the store)
            reset = None if session is not None else (reset or "lost")
        if session is None or not session.alive:
            session, lost = self._supply.continue_after(session)
            reset = lost or reset
        return session, reset

    def _run(self, call: _Call, session: Session, reset: ResetReason | None
             ) -> tuple[Session, CallOutcome, ResetReason | None] | None:
        """Hand ``call`` over to ``session`` and wait for its outcome (None: its ticket
        was cancelled before it ran). An interpreter that died between calls, before it
        took the request, is replaced first (see ``AgentSupply.continue_after``)."""
        ticket, limits = call.extras.ticket, call.limits
        box = None
        if call.extras.tools:
            box = ToolBox(call.extras.tools, max_calls=limits.max_tool_calls,
                          max_bytes=limits.max_globals_bytes, loop=call.extras.loop,
                          stragglers=self._stragglers)
        writes = write_all(call.extras.files) if call.extras.files else None
        for_call = limits.for_call(call.request.return_names)

        def hand_over(session: Session) -> CallOutcome:
            if writes is not None:
                session.files(writes, changes=True)
            return session.call(call.request, for_call, box, call.extras.output)

        if ticket is not None and not ticket.start(session):
            self._reset_pending = reset  # (still to be reported by the next call)
            return None
        try:
            try:
                outcome = hand_over(session)
                died = outcome.died
                if (died is not None and not outcome.taken and not died.during_call
                        and died.reason != STOP_CANCELLED and not self._closed):
                    # it died after its last answer, before it took this call (code the
                    # agent left in the runner's frames ran past the idle limits): this
                    # call never ran, so it runs on a fresh interpreter, as after a death
                    # between calls
                    raise died
            except SessionDead:
                # it died between calls, before it took this request (e.g. a cancel of
                # this call that landed just before the request was handed over):
                # continue from the snapshot of its last answered call (the agent keeps
                # its state)
                session, lost = self._supply.continue_after(session)
                reset = lost or reset
                if ticket is not None and not ticket.start(session):
                    self._reset_pending = reset
                    return None
                outcome = hand_over(session)
        except BaseException:
            # (files that did not fit: nothing ran; the ticket lets go of the session)
            if ticket is not None:
                ticket.finish()
            self._reset_pending = self._reset_pending or reset
            raise
        return session, outcome, reset

    @staticmethod
    def _output_files(call: _Call, session: Session, outcome: CallOutcome
                      ) -> tuple[dict[str, bytes], dict[str, str]]:
        """The files the call named in ``output_files``, and why others could not be read."""
        wanted = call.extras.output_files
        if not wanted:
            return {}, {}
        died = outcome.died
        # (a reply that broke the protocol leaves the interpreter alive: its files are read
        # before it is replaced)
        if died is not None and (died.reason != StopReason.PROTOCOL or not session.alive):
            return {}, {name: "not read: a limit stopped the call, and what it wrote is not "
                        "kept" for name, _path in wanted}
        try:
            found: tuple[dict[str, bytes], dict[str, str]] = session.files(
                read_all(wanted), changes=False)
        except SessionDead:
            return {}, {name: "the interpreter was stopped before the file could be read"
                        for name, _path in wanted}
        return found

    def _replace_after_late_cancel(self, session: Session) -> None:
        """The call was cancelled as it ended: the cancel reached the interpreter after its
        answer (the result goes to no one), so it would stop the next call instead. The
        interpreter is replaced by one restored from its latest snapshot: taken after this
        call's answer, or before this call when the stop cut the end of its turn (as if
        the cancel had come during the call)."""
        session.close()  # (stops it: no snapshot is being taken any more)
        snapshot = session.latest_snapshot if self.rollback else None
        if not self._supply.roll_back(session, snapshot):
            self._reset_pending = "lost"

    def _roll_back(self, session: Session, died: SessionDead, limits: Limits,
                   common: dict[str, Any]) -> ExecutionResult:
        """The result of a call that a limit, a cancel or a crash stopped: rolled back to
        the agent's last snapshot, or (without one) with its interpreter lost. Not one
        that broke the protocol: the interpreter itself is then suspect, and so may its
        last snapshot be. After a death between calls (a cancel that landed before the
        interpreter took the request, say) only to the snapshot of its last answered
        call: the latest one may miss the last answer."""
        snapshot = None
        if self.rollback and died.reason != StopReason.PROTOCOL:
            snapshot = (session.latest_snapshot if died.during_call
                        else session.current_snapshot())
        if self._supply.roll_back(session, snapshot):
            return self._stopped(died, limits, common, rolled_back=True)
        self._reset_pending = "lost"
        return self._stopped(died, limits, common)

    def _answered(self, call: _Call, session: Session, reply: CallReply,
                  common: dict[str, Any]) -> ExecutionResult:
        """The result of a call the interpreter answered (its code may have raised)."""
        common["figures"] = reply.figures
        common["value"] = display_value(reply.value)
        common["exit_code"] = reply.exit_code
        if call.request.trace_imports:
            common["imports"] = reply.imports
        if self._state is not None:
            self._state.request_save(session)  # (in the background: the caller goes on)
        self._supply.after_answer(session)
        if reply.ok:
            return ExecutionResult(success=True, globals=reply.globals,
                                   globals_errors=reply.globals_errors, **common)
        etype, emsg = reply.error_type, reply.error_message
        if etype == "ModuleNotFoundError" and emsg.startswith("No module named '"):
            emsg += missing_module_hint(emsg[len("No module named '"):].rstrip("'"),
                                        self.runtime)
        return ExecutionResult(
            success=False, error=f"{etype}: {emsg}" if emsg else etype,
            error_type=etype, error_message=emsg, traceback=reply.traceback,
            globals=reply.globals, globals_errors=reply.globals_errors, **common)

    async def aexecute(
        self,
        code: str,
        globals_dict: Mapping[str, Any] | None = None,
        return_globals: Iterable[str] | None = None,
        *,
        limits: Mapping[str, Any] | None = None,
        display: bool = False,
        return_all: bool = False,
        trace_imports: bool = False,
        files: Mapping[str, FileData] | None = None,
        output_files: Iterable[str] | None = None,
        tools: Mapping[str, ToolFunction] | None = None,
        on_stdout: Callable[[str], Any] | None = None,
        on_stderr: Callable[[str], Any] | None = None,
    ) -> ExecutionResult:
        """``execute`` for event loops: runs on a worker thread, never blocks the loop.

        ``on_stdout`` / ``on_stderr`` are called on the event loop with each piece of
        text the code prints while it runs (coroutine functions are awaited); see
        :meth:`astream` for the same as an async iterator.

        Cancelling the awaiting task (or ``asyncio.wait_for`` timing out) affects this
        call only. Cancelled while it runs, it stops the guest at once and the call is
        rolled back (the agent keeps its state from its last answered call; with
        ``rollback=False`` the interpreter is lost and the next call says
        ``state_reset=True``). Cancelled while
        it still waits for the executor (another call is running), it never runs, and the
        running call goes on. No thread is left running the agent's code.

        ``files``, ``output_files`` and ``tools`` as for :meth:`execute`; a tool that is a
        coroutine function (``async def``) runs on this event loop.
        """
        def extras_for(loop: asyncio.AbstractEventLoop) -> _Extras:
            return self._extras(files, output_files, tools, loop)

        def check(extras: _Extras) -> _Call:
            return self._check(extras, code, globals_dict, return_globals, limits, display,
                               return_all, trace_imports)

        if on_stdout is not None or on_stderr is not None:
            return await self._aexecute_streamed(self._stream(extras_for, check), on_stdout,
                                                 on_stderr)
        loop = asyncio.get_running_loop()
        extras = extras_for(loop)
        ticket = extras.ticket = _Ticket()
        future = loop.run_in_executor(None, lambda: self._execute(check(extras)))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await self._abandon(ticket, future)
            raise

    def astream(
        self,
        code: str,
        globals_dict: Mapping[str, Any] | None = None,
        return_globals: Iterable[str] | None = None,
        *,
        limits: Mapping[str, Any] | None = None,
        display: bool = False,
        return_all: bool = False,
        trace_imports: bool = False,
        files: Mapping[str, FileData] | None = None,
        output_files: Iterable[str] | None = None,
        tools: Mapping[str, ToolFunction] | None = None,
    ) -> AsyncIterator[OutputChunk | ExecutionResult]:
        """Run ``code`` like :meth:`aexecute`, yielding its output as it is printed.

        >>> async for event in ex.astream("print('working')\nsum(range(10**6))"):
        ...     if isinstance(event, OutputChunk):
        ...         print(event.stream, event.text)        # stdout working
        ...     else:
        ...         result = event                         # ExecutionResult, always last

        Yields :class:`OutputChunk` (``stream`` "stdout" or "stderr", ``text``) in the
        order they were printed, then the :class:`ExecutionResult`, last. Leaving the
        loop early (or cancelling the task) stops the call, which is rolled back, as a
        cancelled ``aexecute``; close the iterator (``contextlib.aclosing``) when you
        break out of it, so that this happens at once.
        """
        return self._stream(
            lambda loop: self._extras(files, output_files, tools, loop),
            lambda extras: self._check(extras, code, globals_dict, return_globals, limits,
                                       display, return_all, trace_imports))

    async def _stream(self, extras_for: Callable[[asyncio.AbstractEventLoop], _Extras],
                      check: Callable[[_Extras], _Call]
                      ) -> AsyncIterator[OutputChunk | ExecutionResult]:
        """A call's output as it is printed, then its result (see astream). Its extras
        are checked when the iteration starts, its request on the worker thread."""
        loop = asyncio.get_running_loop()
        extras = extras_for(loop)
        mailbox = Mailbox(loop)
        ticket = extras.ticket = _Ticket()
        extras.output = OutputDispatch(self, mailbox.sender("stdout"),
                                       mailbox.sender("stderr"))
        future = loop.run_in_executor(None, lambda: self._execute(check(extras)))
        # (every chunk is posted before the call returns, so before this runs)
        future.add_done_callback(lambda _: mailbox.end())
        finished = False
        try:
            while True:
                ended = mailbox.ended
                for chunk in await mailbox.take():
                    yield chunk
                if ended:  # (and what was posted before the end is taken)
                    break
            result = future.result()
            finished = True
            yield result
        finally:
            if not finished:  # (the caller left: no one reads the result)
                await self._abandon(ticket, future)

    async def _aexecute_streamed(self, stream: AsyncIterator[OutputChunk | ExecutionResult],
                                 on_stdout: Callable[[str], Any] | None,
                                 on_stderr: Callable[[str], Any] | None) -> ExecutionResult:
        """``aexecute`` with output callbacks: the chunks of ``stream`` (see
        :meth:`_stream`), each handed to its callback on the event loop (awaited when it
        is a coroutine)."""
        handlers = {"stdout": on_stdout, "stderr": on_stderr}
        error = None
        result = None
        async with contextlib.aclosing(stream) as events:  # type: ignore[type-var]
            async for event in events:
                if isinstance(event, ExecutionResult):
                    result = event
                    continue
                handler = handlers[event.stream]
                if handler is None:
                    continue
                try:
                    outcome = handler(event.text)
                    if asyncio.iscoroutine(outcome) or isinstance(outcome, asyncio.Future):
                        await outcome
                except Exception as e:  # noqa: BLE001 - reported in the result
                    handlers[event.stream] = None
                    if error is None:
                        error = f"on_{event.stream} raised {type(e).__name__}: {e}"
        assert result is not None
        if error is not None and result.callback_error is None:
            result = result.model_copy(update={"callback_error": error})
        return result

    async def _abandon(self, ticket: _Ticket, future: asyncio.Future[ExecutionResult]) -> None:
        """Stop a call whose caller left (a cancelled ``aexecute``, an ``astream`` left
        early)."""
        ticket.cancel()
        try:
            result = await asyncio.wait_for(asyncio.shield(future), timeout=10)
        except BaseException:  # noqa: BLE001 - the call's own outcome no longer matters
            return
        # it ended before the cancel reached it, and no one reads its result: the next
        # call reports a reset it saw (unless another call has run since)
        if result.state_reset and ticket.delivered_as is not None:
            with self._lock:
                if self._calls == ticket.delivered_as:
                    self._reset_pending = result.reset_reason or "lost"

    def fork(self) -> PythonExecExecutor:
        """A new executor holding a copy of this agent as of its last answered call.

        >>> with PythonExecExecutor() as ex:   # doctest: +SKIP
        ...     ex.execute("plan = ['a']")
        ...     branch = ex.fork()
        ...     branch.execute("plan.append('b')")   # ex's plan is still ['a']

        The two are isolated from then on (memory, files, limits, roll-back), like two
        loads of one saved image, and the copy draws its own random numbers (``random``
        and numpy's global generator are seeded afresh; ``os.urandom``, ``secrets`` and
        ``uuid4`` read the host's entropy anyway). Generators the agent made itself
        (``random.Random(42)``, ``np.random.default_rng(...)``) are its state and are
        copied as they are. Same configuration, limits and pool as this executor; the copy
        is an executor of its own (a resolver does not know it). A parked agent is
        unparked first.
        """
        with self._lock:
            self._check_open()
            session, lost = self._supply.ready()
            self._reset_pending = lost or self._reset_pending
            snapshot = session.wait_snapshot(current=True)
            if snapshot is None:
                raise ImageError("the interpreter has no memory snapshot yet; try again")
            # (the pages where it can differ from the boot snapshot, when known: only those
            # are written into the copy)
            base = template_of(self._key)
            changed = session.pages_changed_from(base) if base is not None else None
        return PythonExecExecutor(
            whitelisted_imports=self.policy.whitelisted_imports,
            default_imports=self.policy.default_imports, limits=self.limits, pool=self._pool,
            runtime=self.runtime, rollback=self.rollback,
            rollback_standby=self.rollback_standby,
            _fork_of=(snapshot, base, changed))

    def save(self, path: str | os.PathLike[str], *, key: bytes | None = None) -> int:
        """Save this agent's interpreter to ``path``; returns the file's size in bytes.

        The file holds the interpreter as of the end of its last call (compressed, with a
        checksum, tied to this runtime build); :meth:`load` continues it in another
        executor, in this process or another. ``key`` (bytes): sign the file with
        HMAC-SHA256 instead of the checksum; ``load(path, key=key)`` then accepts only
        files saved with that key.
        """
        self._not_from_callback("save()")
        self._check_not_serving()
        with self._lock:
            self._check_open()
            session, lost = self._supply.ready()
            self._reset_pending = lost or self._reset_pending
            snapshot = session.wait_snapshot(current=True)
            fs = session.fs
            if snapshot is None or fs is None:
                raise ImageError("the interpreter has no memory snapshot yet; try again")
            return images.save(path, snapshot, runtime=self.runtime, allowed=self.policy.allowed,
                               default_imports=dict(self.policy.default_imports), fs=fs,
                               key=key)

    # ------------------------------------------------------------------ files
    def write_file(self, path: str | os.PathLike[str], data: FileData) -> None:
        """Put a file into the agent's file system (its directories are made as needed).

        ``path`` is relative to the working directory (``/tmp/work``) or absolute under
        ``/tmp``; ``data`` is bytes, or a str written as UTF-8. The file counts against
        the agent's file space (a quarter of ``memory_bytes``, at least 16 MiB): one that
        does not fit raises :class:`InputError` and nothing changes. A call running now
        is not raced: the write waits for it. The file stays, also when a later call is
        stopped by a limit and rolled back.
        """
        target = host_path(path)
        content = file_bytes(data, "data")
        self._files_job(lambda fs: fs.host_write(target, content), changes=True)

    def read_file(self, path: str | os.PathLike[str]) -> bytes:
        """The contents of a file of the agent's (``FileNotFoundError`` when there is
        none, ``IsADirectoryError`` for a directory)."""
        target = host_path(path)
        return self._files_job(lambda fs: fs.host_read(target),  # type: ignore[no-any-return]
                               changes=False)

    def list_files(self, path: str | os.PathLike[str] = ".", *,
                   recursive: bool = False) -> list[FileInfo]:
        """What a directory of the agent's holds (default: the working directory), as
        :class:`FileInfo` entries sorted by name; ``recursive`` lists everything below."""
        target = host_path(path)
        return self._files_job(listing(target, bool(recursive)),  # type: ignore[no-any-return]
                               changes=False)

    def delete_file(self, path: str | os.PathLike[str]) -> None:
        """Delete a file of the agent's, or a directory with everything in it
        (``FileNotFoundError`` when there is none). Its space is free again."""
        target = host_path(path)
        self._files_job(lambda fs: fs.host_delete(target), changes=True)

    def _files_job(self, fn: Callable[[MemoryFS], Any], *, changes: bool) -> Any:
        """``fn(fs)`` on the agent's file system, between calls (a running call is
        waited for); a lost interpreter is replaced first, as the next call would."""
        # (from the executor's own output callback, the running call holds the
        # interpreter: the job would wait for it forever)
        self._not_from_callback("a file method (write_file, read_file, list_files or "
                                "delete_file)")
        self._check_not_serving()
        with self._lock:
            self._check_open()
            session = self._supply.current
            if session is None or not session.alive:
                session = self._supply.replace()
                self._reset_pending = "lost"
            try:
                return session.files(fn, changes=changes)
            except SessionDead:
                session = self._supply.replace()
                self._reset_pending = "lost"
                return session.files(fn, changes=changes)

    @property
    def tools(self) -> dict[str, ToolFunction]:
        """The host functions every call offers the agent's code (a copy)."""
        return dict(self._tools)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        limits: Limits | Mapping[str, Any] | None = None,
        fuel: int | None | Literal["default"] = "default",
        timeout_seconds: float | None = None,
        memory_bytes: int | None = None,
        max_output_bytes: int | None = None,
        pool: SessionPool | None = None,
        rollback: bool = True,
        rollback_standby: bool = False,
        key: bytes | None = None,
        tools: Mapping[str, ToolFunction] | None = None,
    ) -> PythonExecExecutor:
        """An executor that continues the interpreter saved by :meth:`save`.

        The allow-list, default imports and runtime are the saved ones; limits are given
        here as for a new executor. A damaged or truncated file, or one saved by another
        runtime build or wasm-exec version, raises :class:`ImageError` and nothing runs.
        With ``key`` (bytes), only a file that :meth:`save` signed with the same key is
        accepted. The file is re-accounted under these limits: it never gives the agent
        more (memory, scratch files, descriptors), and one larger than an image within
        them could be is refused before it is read whole or parsed. The agent's files come
        with it. ``tools`` as for a new executor (an image holds no host functions).
        """
        _, built = configure(limits=limits, fuel=fuel, timeout_seconds=timeout_seconds,
                             memory_bytes=memory_bytes, max_output_bytes=max_output_bytes)
        memory_limit = built.memory_bytes
        # what an image within these limits can hold (its file system: the one its
        # interpreter will get)
        bounds = images.ReadLimits.for_load(memory_limit, scratch_budget(memory_limit))
        header, body = images.read(path, key=key, limits=bounds)
        runtime = header.get("runtime")
        if not isinstance(runtime, str) or runtime not in profiles():
            raise ImageError(f"{path} names an unknown runtime {runtime!r}")
        images.check_compatible(header, runtime_sha256=load_pin(runtime).sha256, path=path)
        try:
            allowed = [str(a) for a in header["whitelisted_imports"]]
            defaults = {str(k): str(v) for k, v in dict(header["default_imports"]).items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ImageError(f"{path} has a damaged header") from e
        size = header.get("memory_size")
        if type(size) is int and size > memory_limit:
            raise ImageError(f"{path} holds an interpreter of {size} bytes of memory, more "
                             f"than the memory limit of {memory_limit} bytes; load it with a "
                             "larger memory_bytes")
        rt = load_runtime(EngineSettings(fuel=True), runtime)
        fs = MemoryFS(shared_zip(rt.stdlib_zip()), zip_path=rt.pin.zip_path,
                      scratch_bytes=scratch_budget(memory_limit))
        snapshot = images.decode(header, body, fs, max_memory=memory_limit)
        return cls(whitelisted_imports=allowed, default_imports=defaults, limits=built,
                   pool=pool, runtime=runtime, rollback=rollback,
                   rollback_standby=rollback_standby, tools=tools, _restore=snapshot)

    def cancel(self) -> None:
        """Stop the call running now (from another thread); its interpreter is lost."""
        session = self._supply.current
        if session is not None:
            session.cancel()

    def reset(self) -> None:
        """Throw away this agent's state: the next call runs on a fresh interpreter (and
        its result says ``state_reset=True``)."""
        self._not_from_callback("reset()")
        self._check_not_serving()
        with self._lock:
            self._check_open()
            self._supply.drop_standby()
            self._supply.replace()
            self._reset_pending = "reset"
            self._resume = False
            if self._state is not None:
                self._state.forget()  # (a later executor of this agent starts fresh too)

    def release(self) -> bool:
        """Free the interpreter but keep the executor usable (used to evict idle agents).

        The next call starts a fresh interpreter and reports ``state_reset=True``; with a
        ``state_store``, it continues from the stored image instead (the state of the last
        answered call). Returns False (and does nothing) when a call is running, or when
        it is called from inside this executor's own work (a resolver's eviction run while
        this executor takes an interpreter, or an output or tool callback: the executor is
        busy, not idle).
        """
        if in_callback_of(self) or self._lock._is_owned():  # type: ignore[attr-defined]
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            session = self._supply.release()
            if session is not None:
                self._reset_pending = "evicted"
                self._resume = self._state is not None
                session.close()
            return True
        finally:
            self._lock.release()

    @property
    def has_interpreter(self) -> bool:
        """Whether a live interpreter is attached (False after ``release`` or a stop)."""
        session = self._supply.current
        return session is not None and session.alive

    @property
    def last_used(self) -> float:
        """``time.monotonic()`` of the end of the last call (or of creation)."""
        return self._last_used

    def close(self) -> None:
        """End the interpreter. Later calls raise :class:`ExecutorClosedError`."""
        if self._closed:
            return
        self._closed = True
        self._supply.close()  # (stops a running call first)
        if self._state is not None:
            # the last answered call's image reaches the store (a failure was logged)
            with contextlib.suppress(WasmExecError):
                self._state.flush(timeout=60)
            self._state.close()
        self._finalizer.detach()

    # ---------------------------------------------------------- state store
    @property
    def state_store(self) -> StateStore | None:
        """The store this agent's image is saved to after each answered call (or None)."""
        return self._state.store if self._state is not None else None

    def flush_state(self, timeout: float | None = 60.0) -> bool:
        """Wait until the image of the last answered call is in the state store (saves run
        in the background, after the result is returned). False on timeout; raises
        :class:`StateStoreError` when that save failed. True at once without a store."""
        if self._state is None:
            return True
        return self._state.flush(timeout)

    def forget_state(self) -> None:
        """Delete this agent's image from the state store (and drop saves not yet done):
        a later executor of this identity starts fresh. The live interpreter is kept."""
        if self._state is not None:
            self._check_not_serving()
            with self._lock:
                self._resume = False
                self._state.forget()

    def _stored_snapshot(self) -> Snapshot | None:
        """The image in the state store to continue from, as a snapshot (None: none, or not
        usable,
        which is logged and makes the first result say ``state_reset=True``)."""
        assert self._state is not None
        rt = load_runtime(self._settings, self.runtime)
        fs = MemoryFS(shared_zip(rt.stdlib_zip()), zip_path=rt.pin.zip_path,
                      scratch_bytes=scratch_budget(self.limits.memory_bytes))
        try:
            return self._state.load(self.limits.memory_bytes,
                                    scratch_budget(self.limits.memory_bytes), fs,
                                    rt.pin.sha256)
        except (ImageError, StateStoreError) as e:
            _log.warning("agent %r starts on a fresh interpreter: %s",
                         self._state.identity, e)
            self._reset_pending = "lost"
            return None

    def _resume_from_store(self) -> Session | None:
        """After ``release()``: an interpreter continuing from the stored image."""
        assert self._state is not None
        self._resume = False
        with contextlib.suppress(WasmExecError):
            self._state.flush(timeout=60)
        snapshot = self._stored_snapshot()
        if snapshot is None:
            return None
        if self.on_session_start is not None:
            self.on_session_start(self)
        try:
            session = self._supply.restore(snapshot)
        except Exception as e:  # noqa: BLE001 - a fresh interpreter instead
            _log.warning("agent %r starts on a fresh interpreter: %s", self._state.identity,
                         e)
            return None
        self._reset_pending = None
        return self._supply.adopt(session)

    def __enter__(self) -> PythonExecExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------ internals
    @property
    def _session(self) -> Session | None:
        """The interpreter the agent runs on now (None: released, parked or lost)."""
        return self._supply.current

    def _check_not_serving(self) -> None:
        session = self._supply.current
        if session is not None and serving() is session:
            raise RuntimeError(
                "a tool called the executor whose call it serves: that would wait for the "
                "call, which waits for the tool. Return data from the tool instead (files "
                "too: the agent's code can write what the tool returns)")

    @contextlib.contextmanager
    def _call_lock(self, ticket: _Ticket | None) -> Iterator[bool]:
        """Hold the executor for one call; yields False when ``ticket`` was cancelled
        before the call got the executor (it then never runs)."""
        self._check_not_serving()
        if ticket is None:
            with self._lock:
                yield True
            return
        while not self._lock.acquire(timeout=0.02):
            if ticket.cancelled:
                yield False
                return
        try:
            yield not ticket.cancelled
        finally:
            self._lock.release()

    def _not_from_callback(self, what: str) -> None:
        if in_callback_of(self):
            raise ReentrantCallError(
                f"{what} was called from one of this executor's own output callbacks while "
                "its call runs; call it after that call returns")

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorClosedError("this executor is closed; create a new one")

    def _make_room(self) -> Session | None:
        """Tell the owner (a resolver) that this executor takes an interpreter, so that it
        makes room; it may hand over an interpreter it freed by parking another agent."""
        if self._room_for is not None:
            return self._room_for(self)
        if self.on_session_start is not None:
            self.on_session_start(self)
        return None

    # ------------------------------------------------------------- parking
    def _park(self, lot: parking.ParkingLot) -> Session | None | Literal[False]:
        """Park this agent in ``lot`` (a resolver making room; see
        :meth:`AgentSupply.park`). False when busy (a call runs); else the interpreter
        freed (alive, for another agent to take over) or None. An agent that cannot be
        parked is released: its next result says so."""
        if self._lock._is_owned():  # type: ignore[attr-defined]  # (its own work: busy)
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            freed, reason = self._supply.park(lot)
            if reason is not None:
                self._reset_pending = reason
            return freed
        finally:
            self._lock.release()

    @property
    def parked(self) -> bool:
        """Whether this agent is parked (its state kept as an image; no interpreter)."""
        return self._supply.parked

    def _call_limits(self, overrides: Mapping[str, Any] | None) -> Limits:
        try:
            merged = self.limits.merged(dict(overrides) if overrides else None)
        except ValueError as e:
            raise InputError(f"invalid limits: {e}") from e
        if (merged.fuel is None) != (self.limits.fuel is None):
            raise InputError("fuel metering cannot be switched on or off per call; create the "
                             "executor with fuel=None (off) or a budget (on)")
        if merged.memory_bytes != self.limits.memory_bytes:
            raise InputError("memory_bytes is fixed when the interpreter starts; set it on "
                             "the executor")
        return merged

    @staticmethod
    def _check_globals(globals_dict: Mapping[str, Any] | None, limits: Limits) -> str:
        """The globals as JSON text, or an InputError naming the key that is not JSON."""
        if globals_dict is None:
            return "{}"
        if not isinstance(globals_dict, Mapping):
            raise InputError("globals_dict must be a mapping of names to JSON values")
        values: dict[str, Any] = {}
        for key, value in globals_dict.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise InputError(f"globals_dict key {key!r} is not a valid Python identifier")
            if key.startswith("__") and key.endswith("__"):
                raise InputError(f"globals_dict key {key!r}: dunder names are reserved")
            values[key] = value
        if not is_plain_json(values):
            for key, value in values.items():
                try:
                    check_json_value(value, f"globals_dict[{key!r}]")
                except TypeError as e:
                    raise InputError(f"{e}; nothing was run and the agent's state is "
                                     "unchanged") from None
        try:
            text = json.dumps(values, allow_nan=True, ensure_ascii=False, separators=(",", ":"))
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    # a lone surrogate is a valid str but not UTF-8: escaped (\ud800) it
                    # reaches the agent as the same str
                    text = json.dumps(values, allow_nan=True, ensure_ascii=True,
                                      separators=(",", ":"))
        except (TypeError, ValueError, RecursionError) as e:
            raise InputError(f"globals_dict cannot be sent as JSON: {e}") from None
        if len(text) > limits.max_globals_bytes:
            raise InputError(f"globals_dict is {len(text)} bytes as JSON; the limit is "
                             f"{limits.max_globals_bytes} (limits.max_globals_bytes)")
        return text

    @staticmethod
    def _check_names(names: Iterable[str] | None) -> list[str]:
        if names is None:
            return []
        if isinstance(names, str):
            raise InputError("return_globals must be a list of names, not a string "
                             f"(did you mean [{names!r}]?)")
        out = []
        for n in names:
            if not isinstance(n, str) or not n.isidentifier():
                raise InputError(f"return_globals entry {n!r:.200} is not a valid identifier")
            if len(n) > MAX_NAME_CHARS:
                raise InputError(f"return_globals entry {n[:50]!r}... has {len(n)} "
                                 f"characters; names may have at most {MAX_NAME_CHARS}")
            out.append(n)
            if len(out) > MAX_RETURN_NAMES:
                raise InputError(f"return_globals names more than {MAX_RETURN_NAMES} globals; "
                                 "it may name at most that many (return one dict or list "
                                 "instead, or use return_all=True)")
        return out

    def _stopped(self, died: SessionDead, limits: Limits, common: dict[str, Any],
                 rolled_back: bool = False) -> ExecutionResult:
        return stopped(died.reason, died.detail, fuel=limits.fuel,
                       timeout=limits.timeout_seconds, rolled_back=rolled_back,
                       closed=self._closed, **common)


class _Ticket:
    """The cancellation of one ``aexecute`` call, and of nothing else: cancelled before
    the call reaches its interpreter, the call never runs; during it, the cancel stops
    the interpreter this call runs on (the executor runs one call at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cancelled = False
        self._session: Session | None = None
        self._stopped = False
        self.delivered_as: int | None = None

    def start(self, session: Session) -> bool:
        """The call is about to run on ``session``; False if it was cancelled already."""
        with self._lock:
            if self.cancelled:
                return False
            self._session = session
            return True

    def deliver(self, call_number: int) -> bool:
        """The call's result is ready (it was the executor's ``call_number``-th call);
        False when the call was cancelled already (no one will read the result)."""
        with self._lock:
            if self.cancelled:
                return False
            self.delivered_as = call_number
            return True

    def finish(self) -> bool:
        """The call has ended; whether a cancel stopped its interpreter meanwhile."""
        with self._lock:
            self._session = None
            return self._stopped

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._session is not None:
                self._stopped = True
                self._session.cancel()


def _agent_state(executor: PythonExecExecutor, store: Any, identity: Any,
                 key: Any) -> AgentState:
    """The executor's place in its state store (ConfigurationError when misconfigured)."""
    if store is None or identity is None:
        raise ConfigurationError("a state store needs both state_store (a directory, a "
                                 "redis:// URL or a StateStore) and state_key (the agent's "
                                 "identity: a str or a tuple of str)")
    try:
        identity = check_identity(identity)
        key = check_key(key)
        opened = open_state_store(store)
    except (TypeError, ValueError, StateStoreError) as e:
        raise ConfigurationError(str(e)) from e
    return AgentState(opened, identity, key=key, runtime=executor.runtime,
                      allowed=executor.policy.allowed,
                      default_imports=dict(executor.policy.default_imports),
                      owns_store=opened is not store)


def _room_of(ref: weakref.ReferenceType[PythonExecExecutor]) -> Session | None:
    """Make room for an interpreter of the executor ``ref`` names (the supply's ``room``:
    a weak reference, so that the supply does not keep its executor alive)."""
    executor = ref()
    return executor._make_room() if executor is not None else None


__all__ = ["DisplayValue", "ExecutionResult", "OutputChunk", "PythonExecExecutor"]
