"""The public API: :class:`PythonExecExecutor` and :class:`ExecutionResult`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import images, parking
from .config import Limits, Policy
from .errors import ConfigurationError, ExecutorClosedError, ImageError, InputError
from .pool import SessionKey, SessionPool, template_of
from .protocol import (
    MAX_JSON_DEPTH,
    ProtocolError,
    check_json_value,
    is_plain_json,
    validate_call_reply,
)
from .runtime import EngineSettings, get_image, load_pin, profiles
from .session import STOP_CANCELLED, CallLimits, MemoryImage, Session, SessionDead
from .vfs import MemoryFS, scratch_budget, shared_zip

# top-level packages the scientific runtime has and the minimal one lacks
SCIENTIFIC_PACKAGES = frozenset({
    "numpy", "pandas", "scipy", "sklearn", "statsmodels", "matplotlib", "PIL", "lxml",
    "openpyxl", "xlsxwriter", "xlrd", "pypdf", "bs4", "html5lib", "xmltodict", "dateutil",
    "sympy", "networkx", "seaborn", "regex", "yaml", "jinja2", "tabulate", "tqdm", "patsy",
    "kiwisolver", "contourpy", "fontTools", "cycler", "pyparsing", "mpmath", "joblib",
    "threadpoolctl", "markupsafe", "soupsieve", "defusedxml", "tzdata", "six", "packaging",
    "reportlab", "narwhals", "toolz", "more_itertools", "charset_normalizer", "cloudpickle",
    "formulaic", "wrapt", "typing_extensions", "attrs", "tomli_w"})


def _runtime_hint(module: str, runtime: str) -> str:
    top = module.split(".")[0]
    if runtime == "minimal" and top in SCIENTIFIC_PACKAGES:
        return (f" ({top} is not in the minimal runtime; the scientific runtime has it: "
                "PythonExecExecutor(runtime=\"scientific\"))")
    return ""


# how many names return_globals may list, and how long each may be (the reply carries
# each name twice, and has to fit the host's cap)
MAX_RETURN_NAMES = 10_000
MAX_NAME_CHARS = 1_000

# why a call ran on a fresh interpreter (see ExecutionResult.reset_reason)
ResetReason = Literal["reset", "evicted", "lost", "park_dropped", "park_failed"]

LimitName = Literal["fuel", "timeout", "memory", "stack_overflow", "exit", "crash",
                    "protocol", "cancelled"]

_STOP_TEXT = {
    "fuel": "Fuel limit exceeded: the call used its whole budget of {fuel} fuel units",
    "timeout": "Timeout: the call ran past its deadline of {timeout} s",
    "stack_overflow": "The interpreter's WebAssembly stack overflowed (too deep recursion "
                      "in C code)",
    "exit": "The code ended the interpreter ({detail})",
    "crash": "The interpreter crashed ({detail})",
    "protocol": "The interpreter broke the sandbox protocol ({detail})",
    "cancelled": "The call was cancelled",
    "memory": "Memory limit exceeded",
}


class ExecutionResult(BaseModel):
    """What one ``execute`` call produced.

    ``success`` is False when the code raised (including ``SyntaxError`` and
    ``SystemExit``) or when a limit stopped it; ``error`` then says what happened in one
    line and ``error_type`` / ``error_message`` / ``traceback`` give the details.
    """

    model_config = ConfigDict(frozen=True)

    success: bool
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    globals: dict[str, Any] = Field(default_factory=dict)
    globals_errors: dict[str, str] = Field(
        default_factory=dict,
        description="Names from return_globals that could not be returned, with the reason.")
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    limit: LimitName | None = Field(
        default=None, description="The limit that stopped the call, if one did.")
    state_reset: bool = Field(
        default=False,
        description="True when this call ran on a fresh interpreter because the previous "
        "one was lost (a limit stopped it, it crashed, or it was evicted): variables from "
        "earlier calls are gone. Default imports are in place again.")
    reset_reason: ResetReason | None = Field(
        default=None,
        description="Why state_reset is True: 'reset' (reset() was called), 'evicted' (the "
        "interpreter was released to make room, or idle, without parking), 'lost' (an "
        "earlier call ended the interpreter and it could not be rolled back), "
        "'park_dropped' (the agent was parked and its image dropped to stay within the "
        "parking budget), 'park_failed' (its parked image could not be restored).")
    interpreter_lost: bool = Field(
        default=False,
        description="True when this call ended the interpreter: the next call starts fresh.")
    rolled_back: bool = Field(
        default=False,
        description="True when a limit (or a crash) stopped this call and the interpreter "
        "was put back as it was after the previous call (reactor runtimes): nothing this "
        "call did is kept; earlier variables, functions and imports are intact.")
    duration_seconds: float = 0.0
    fuel_used: int | None = None
    memory_bytes: int = Field(default=0, description="Guest linear memory after the call.")
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    figures: list[bytes] = Field(
        default_factory=list,
        description="PNG images of the matplotlib figures the call left open (scientific "
        "runtime); they are closed afterwards. Counted against max_globals_bytes.")


class PythonExecExecutor:
    """A persistent Python interpreter in a WebAssembly sandbox, for one agent.

    >>> with PythonExecExecutor(whitelisted_imports=["math"]) as ex:
    ...     ex.execute("import math\\nr = math.sqrt(16)", return_globals=["r"]).globals
    {'r': 4.0}

    Variables, functions, classes and imports live on between calls. Limits (fuel,
    timeout, memory, output) come from ``limits`` (or keyword arguments) and can be
    overridden per call with ``execute(..., limits={...})``.
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
        _restore: MemoryImage | None = None,
        _fork_of: tuple[MemoryImage, MemoryImage | None, list[int] | None] | None = None,
    ) -> None:
        try:
            self.policy = Policy(
                whitelisted_imports=whitelisted_imports,  # type: ignore[arg-type]
                default_imports=default_imports,  # type: ignore[arg-type]
            )
            self.limits = Limits.build(
                limits if isinstance(limits, Limits) else dict(limits or {}), fuel=fuel,
                timeout_seconds=timeout_seconds, memory_bytes=memory_bytes,
                max_output_bytes=max_output_bytes)
        except ValueError as e:
            raise ConfigurationError(str(e)) from e
        self._settings = EngineSettings(fuel=self.limits.fuel is not None)
        if runtime not in profiles():
            raise ConfigurationError(f"unknown runtime {runtime!r}; known: {profiles()}")
        self.runtime = runtime
        get_image(self._settings, runtime)  # the runtime is found (or an error names the fix)
        self._key = SessionKey.of(self._settings, self.policy.allowed,
                                  self.policy.default_imports, self.limits.memory_bytes,
                                  runtime)
        # an image of the interpreter is kept after each call (taken after the answer is
        # returned), so that a stopped call rolls back instead of losing the agent's state
        self.rollback = bool(rollback)
        # an interpreter kept restored in the background from the start (not only after a
        # first stop), so that even the first roll-back reloads mapped pages: one more
        # linear memory per agent
        self.rollback_standby = bool(rollback_standby)
        # every runtime can be imaged (kept for compatibility: always True)
        self.snapshots = True
        self._pool = pool
        self._spare: threading.Thread | None = None
        # the interpreter booted in the background after a stop (see _prepare_spare); the
        # boot thread holds this list and `_gone`, never the executor, so that an executor
        # dropped unclosed is collected and its finalizer frees the spare too
        self._spare_session: list[Session] = []
        self._gone = [False]  # set once the executor is closed or collected
        self._lock = threading.RLock()
        self._closed = False
        self._last_used = time.monotonic()
        self.on_session_start: Callable[[PythonExecExecutor], None] | None = None
        # set by a resolver: makes room for an interpreter of this executor's (evicting
        # or parking others) and may hand over one it freed (see _unpark)
        self._room_for: Callable[[PythonExecExecutor], Session | None] | None = None
        # (the lot and ticket of this agent's parked image while it is parked: freed
        # with the executor, closed or collected)
        self._parked: list[tuple[parking.ParkingLot, int] | None] = [None]
        self._session: Session | None = None
        self._rollback_standby: Session | None = None
        self._rollback_thread: threading.Thread | None = None
        # why the next call runs on a fresh interpreter (ExecutionResult.reset_reason)
        self._reset_pending: ResetReason | None = None
        self._calls = 0  # calls that got the executor (see _Ticket.deliver)
        # (the interpreter, and the standby one for roll-backs: closed if the executor is
        # garbage collected unclosed)
        self._holder: list[Session | None] = [None, None]
        if _restore is not None:
            try:
                self._session = self._key.restore(_restore, keep_images=self.rollback)
            except ValueError as e:
                raise ImageError(str(e)) from e
        elif _fork_of is not None:
            self._session = self._copy_of(*_fork_of)
        else:
            self._session = self._new_session()
        self._holder[0] = self._session
        self._finalizer = weakref.finalize(self, _close_session, self._holder,
                                           self._spare_session, self._gone, self._parked)

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
    ) -> ExecutionResult:
        """Run ``code`` in this executor's interpreter.

        ``globals_dict`` values (JSON data) are bound as globals before the code runs;
        the names in ``return_globals`` come back in ``result.globals`` as JSON data.
        ``limits`` overrides this executor's limits for this call. With ``display=True``
        a single statement runs as at the interactive prompt (an expression's value is
        printed). With ``return_all=True`` every global that converts to JSON comes back
        (modules, functions, classes and other objects are left out without an error).
        """
        return self._execute(code, globals_dict, return_globals, limits, display, return_all,
                             None)

    def _execute(self, code: str, globals_dict: Mapping[str, Any] | None,
                 return_globals: Iterable[str] | None, limits: Mapping[str, Any] | None,
                 display: bool, return_all: bool, ticket: _Ticket | None) -> ExecutionResult:
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
        names = self._check_names(return_globals)
        with self._call_lock(ticket) as go:
            if not go:
                return _not_run()
            self._calls += 1
            result = self._execute_locked(code, names, globals_json, call_limits, display,
                                          return_all, ticket)
            if ticket is not None and result.state_reset and not ticket.deliver(self._calls):
                # cancelled: no one reads this result, so the next call reports the reset
                self._reset_pending = result.reset_reason or "lost"
            return result

    def _execute_locked(self, code: str, names: list[str], globals_json: str,
                        call_limits: Limits, display: bool, return_all: bool,
                        ticket: _Ticket | None) -> ExecutionResult:
        """One call, with the executor held (see ``_execute``)."""
        if self._closed:
            raise ExecutorClosedError("this executor is closed; create a new one")
        reset = self._reset_pending
        session = self._session
        if session is None or not session.alive:
            session, lost = self._continue_session(session)
            reset = lost or reset
        self._reset_pending = None
        payload = {"op": "exec", "code": code, "return": names, "display": bool(display),
                   "return_all": bool(return_all), "figures": self.runtime != "minimal",
                   "max_depth": MAX_JSON_DEPTH}
        limits_for_call = CallLimits(
            fuel=call_limits.fuel, timeout_seconds=call_limits.timeout_seconds,
            max_output_bytes=call_limits.max_output_bytes,
            # (the values' cap, the error texts, and per name its key and message,
            # each character at most 6 bytes as an escape)
            max_reply_bytes=call_limits.max_globals_bytes + 1_000_000
            + sum(6 * len(n) + 3_100 for n in names),
            max_globals_bytes=call_limits.max_globals_bytes)
        started = time.perf_counter()
        if ticket is not None and not ticket.start(session):
            self._reset_pending = reset  # (still to be reported by the next call)
            return _not_run()
        try:
            outcome = session.call(payload, limits_for_call, globals_json)
        except SessionDead:
            # it died between calls, before it took this request (e.g. a cancel of this
            # call that landed just before the request was handed over): continue from
            # the image of its last answered call (the agent keeps its state)
            session, lost = self._continue_session(session)
            reset = lost or reset
            if ticket is not None and not ticket.start(session):
                self._reset_pending = reset
                return _not_run()
            outcome = session.call(payload, limits_for_call, globals_json)
        if ticket is not None and ticket.finish() and outcome.died is None:
            # cancelled as the call ended: the cancel reached the interpreter after
            # its answer (its result goes to no one), so it would stop the next call
            # instead. The interpreter is replaced by one restored from its latest
            # image: taken after this call's answer, or before this call when the stop
            # cut the end of its turn (as if the cancel had come during the call)
            session.close()  # (stops it: no image is being taken any more)
            image = session.latest_image if self.rollback else None
            self._discard(session)
            restored = (self._restore_for_rollback(image)
                        if image is not None and not self._closed else None)
            if restored is not None:
                self._session = restored
                self._holder[0] = restored
            else:
                self._reset_pending = "lost"
                self._prepare_spare()
        duration = outcome.duration or (time.perf_counter() - started)
        self._last_used = time.monotonic()
        common = dict(stdout=outcome.stdout, stderr=outcome.stderr,
                      stdout_truncated=outcome.stdout_truncated,
                      stderr_truncated=outcome.stderr_truncated,
                      duration_seconds=duration, fuel_used=outcome.fuel_used,
                      memory_bytes=outcome.memory_bytes, state_reset=reset is not None,
                      reset_reason=reset)
        if outcome.died is not None:
            # roll back a call that a limit, a cancel or a crash stopped; not one that
            # broke the protocol (the interpreter itself is then suspect: so may its
            # last image be), nor a death between calls (the last image may miss the
            # last answer)
            image = (session.latest_image if self.rollback and outcome.died.during_call
                     and outcome.died.reason != "protocol" else None)
            self._discard(session)
            if image is not None and not self._closed:
                restored = self._restore_for_rollback(image)
                if restored is not None:
                    self._session = restored
                    self._holder[0] = restored
                    return self._stopped(outcome.died, call_limits, common,
                                         rolled_back=True)
            self._reset_pending = "lost"
            self._prepare_spare()
            return self._stopped(outcome.died, call_limits, common)
        assert outcome.reply is not None
        try:
            reply = validate_call_reply(outcome.reply, outcome.call_id)
        except ProtocolError as e:
            self._reset_pending = "lost"
            self._discard(session)
            return self._stopped(SessionDead("protocol", str(e)), call_limits, common)
        common["figures"] = reply.get("figures", [])
        if (self.rollback_standby and self.rollback
                and self._rollback_standby is None):
            image = session.latest_image
            if image is not None:
                self._prepare_rollback_standby(image)
        if reply["ok"]:
            return ExecutionResult(success=True, globals=reply["globals"],
                                   globals_errors=reply["globals_errors"], **common)
        etype, emsg = reply["error_type"], reply["error_message"]
        if etype == "ModuleNotFoundError" and emsg.startswith("No module named '"):
            emsg += _runtime_hint(emsg[len("No module named '"):].rstrip("'"),
                                  self.runtime)
        return ExecutionResult(
            success=False, error=f"{etype}: {emsg}" if emsg else etype,
            error_type=etype, error_message=emsg, traceback=reply["traceback"],
            globals=reply["globals"], globals_errors=reply["globals_errors"], **common)

    async def aexecute(
        self,
        code: str,
        globals_dict: Mapping[str, Any] | None = None,
        return_globals: Iterable[str] | None = None,
        *,
        limits: Mapping[str, Any] | None = None,
        display: bool = False,
        return_all: bool = False,
    ) -> ExecutionResult:
        """``execute`` for event loops: runs on a worker thread, never blocks the loop.

        Cancelling the awaiting task (or ``asyncio.wait_for`` timing out) affects this
        call only. Cancelled while it runs, it stops the guest at once and the call is
        rolled back (the agent keeps its state from its last answered call; with
        ``rollback=False`` the interpreter is lost and the next call says
        ``state_reset=True``). Cancelled while
        it still waits for the executor (another call is running), it never runs, and the
        running call goes on. No thread is left running the agent's code.
        """
        loop = asyncio.get_running_loop()
        ticket = _Ticket()
        future = loop.run_in_executor(None, lambda: self._execute(
            code, globals_dict, return_globals, limits, display, return_all, ticket))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            ticket.cancel()
            try:
                result = await asyncio.wait_for(asyncio.shield(future), timeout=10)
            except BaseException:  # the call's own outcome no longer matters
                pass
            else:
                # it ended before the cancel reached it, and no one reads its result: the
                # next call reports a reset it saw (unless another call has run since)
                if result.state_reset and ticket.delivered_as is not None:
                    with self._lock:
                        if self._calls == ticket.delivered_as:
                            self._reset_pending = result.reset_reason or "lost"
            raise

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
            session = self._session
            if session is None or not session.alive:
                session, lost = self._continue_session(session)
                self._reset_pending = lost or self._reset_pending
            image = session.wait_image(current=True)
            if image is None:
                raise ImageError("the interpreter has no memory image yet; try again")
            # (the pages where it can differ from the boot image, when known: only those
            # are written into the copy)
            base = template_of(self._key)
            changed = session.pages_changed_from(base) if base is not None else None
        return PythonExecExecutor(
            whitelisted_imports=self.policy.whitelisted_imports,
            default_imports=self.policy.default_imports, limits=self.limits, pool=self._pool,
            runtime=self.runtime, rollback=self.rollback,
            rollback_standby=self.rollback_standby,
            _fork_of=(image, base, changed))

    def _copy_of(self, image: MemoryImage, base: MemoryImage | None = None,
                 pages: list[int] | None = None) -> Session:
        """A new interpreter continuing from ``image``, with fresh random numbers: a ready
        one of this configuration (its pages are mapped already, so the image is copied
        at memory speed) reloaded with it, else one restored from it (into new pages)."""
        session = self._take_spare()
        if session is None and self._pool is not None:
            session = self._pool.take_ready(self._key)
        if session is None:
            session = self._key.waiting(keep_images=self.rollback)
        if session is not None:
            if session.reload(image, self.limits.memory_bytes, base=base, pages=pages):
                session.keep_images = self.rollback
                return session
            session.close()
        try:
            return self._key.restore(image, keep_images=self.rollback)
        except ValueError as e:
            raise ImageError(str(e)) from e

    def save(self, path: str | os.PathLike[str], *, key: bytes | None = None) -> int:
        """Save this agent's interpreter to ``path``; returns the file's size in bytes.

        The file holds the interpreter as of the end of its last call (compressed, with a
        checksum, tied to this runtime build); :meth:`load` continues it in another
        executor, in this process or another. ``key`` (bytes): sign the file with
        HMAC-SHA256 instead of the checksum; ``load(path, key=key)`` then accepts only
        files saved with that key.
        """
        with self._lock:
            self._check_open()
            session = self._session
            if session is None or not session.alive:
                session, lost = self._continue_session(session)
                self._reset_pending = lost or self._reset_pending
            image = session.wait_image(current=True)
            fs = session.fs
            if image is None or fs is None:
                raise ImageError("the interpreter has no memory image yet; try again")
            return images.save(path, image, runtime=self.runtime, allowed=self.policy.allowed,
                               default_imports=dict(self.policy.default_imports), fs=fs,
                               key=key)

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
    ) -> PythonExecExecutor:
        """An executor that continues the interpreter saved by :meth:`save`.

        The allow-list, default imports and runtime are the saved ones; limits are given
        here as for a new executor. A damaged or truncated file, or one saved by another
        runtime build or wasm-exec version, raises :class:`ImageError` and nothing runs.
        With ``key`` (bytes), only a file that :meth:`save` signed with the same key is
        accepted. The file is re-accounted under these limits: it never gives the agent
        more (memory, scratch files, descriptors), and one larger than an image within
        them could be is refused before it is read whole or parsed.
        """
        try:
            built = Limits.build(
                limits if isinstance(limits, Limits) else dict(limits or {}), fuel=fuel,
                timeout_seconds=timeout_seconds, memory_bytes=memory_bytes,
                max_output_bytes=max_output_bytes)
        except ValueError as e:
            raise ConfigurationError(str(e)) from e
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
        rt = get_image(EngineSettings(fuel=True), runtime)
        fs = MemoryFS(shared_zip(rt.stdlib_zip()), zip_path=rt.pin.zip_path,
                      scratch_bytes=scratch_budget(memory_limit))
        memory_image = images.decode(header, body, fs, max_memory=memory_limit)
        return cls(whitelisted_imports=allowed, default_imports=defaults, limits=built,
                   pool=pool, runtime=runtime, rollback=rollback,
                   rollback_standby=rollback_standby, _restore=memory_image)

    def cancel(self) -> None:
        """Stop the call running now (from another thread); its interpreter is lost."""
        session = self._session
        if session is not None:
            session.cancel()

    def reset(self) -> None:
        """Throw away this agent's state: the next call runs on a fresh interpreter (and
        its result says ``state_reset=True``)."""
        with self._lock:
            self._check_open()
            self._drop_rollback_standby()
            self._replace_session()
            self._reset_pending = "reset"

    def release(self) -> bool:
        """Free the interpreter but keep the executor usable (used to evict idle agents).

        The next call starts a fresh interpreter and reports ``state_reset=True``.
        Returns False (and does nothing) when a call is running, or when it is called
        from inside this executor's own work (a resolver's eviction run by its
        ``on_session_start`` hook, say: the executor is busy, not idle).
        """
        if self._lock._is_owned():  # type: ignore[attr-defined]  # (an RLock: re-entry)
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            session, self._session = self._session, None
            self._holder[0] = None
            self._drop_rollback_standby()
            if session is not None:
                self._reset_pending = "evicted"
                session.close()
            return True
        finally:
            self._lock.release()

    @property
    def has_interpreter(self) -> bool:
        """Whether a live interpreter is attached (False after ``release`` or a stop)."""
        session = self._session
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
        self._gone[0] = True
        # stop a running call first (it holds the lock), then tidy up under the lock
        running = self._session
        if running is not None:
            running.close()
        with self._lock:
            session, self._session = self._session, None
            self._holder[0] = None
        if session is not None:
            session.close()
        with self._lock:
            self._drop_rollback_standby()
            self._forget_parked()
        spare = self._spare
        if spare is not None:
            spare.join(60)
        self._drop_spare()
        self._finalizer.detach()

    def __enter__(self) -> PythonExecExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------ internals
    @contextlib.contextmanager
    def _call_lock(self, ticket: _Ticket | None) -> Iterator[bool]:
        """Hold the executor for one call; yields False when ``ticket`` was cancelled
        before the call got the executor (it then never runs)."""
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

    def _restore_for_rollback(self, image: MemoryImage) -> Session | None:
        """An interpreter continuing from ``image``: the standby one when it is ready
        (prepared after this agent's previous roll-back: agents that hit a limit once
        tend to again), else restored now."""
        standby, self._rollback_standby = self._rollback_standby, None
        self._holder[1] = None
        restored = None
        if standby is not None:
            if standby.reload(image, self.limits.memory_bytes):
                restored = standby
            else:
                self._discard(standby)
        if restored is None:
            try:
                restored = self._key.restore(image, keep_images=self.rollback)
            except Exception:  # noqa: BLE001 - a fresh interpreter instead
                return None
        restored.keep_images = self.rollback
        self._prepare_rollback_standby(image)
        return restored

    def _prepare_rollback_standby(self, image: MemoryImage) -> None:
        """Restore an interpreter from ``image`` in the background, to be reloaded with the
        image of the moment at the next stop (its pages are then mapped already)."""
        if self._rollback_thread is not None and self._rollback_thread.is_alive():
            return

        def make() -> None:
            try:
                session = self._key.restore(image, keep_images=self.rollback)
            except Exception:  # noqa: BLE001 - the next stop restores for itself
                return
            with self._lock:
                if self._closed or self._rollback_standby is not None:
                    session.close()
                else:
                    self._rollback_standby = session
                    self._holder[1] = session

        self._rollback_thread = threading.Thread(target=make, daemon=True,
                                                 name="wasm-exec-rollback-standby")
        self._rollback_thread.start()

    def _drop_rollback_standby(self) -> None:
        standby, self._rollback_standby = self._rollback_standby, None
        self._holder[1] = None
        if standby is not None:
            standby.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorClosedError("this executor is closed; create a new one")

    def _new_session(self) -> Session:
        session = self._take_spare()
        if session is None:
            session = (self._pool.take(self._key) if self._pool is not None
                       else self._key.start(keep_images=self.rollback))
        session.keep_images = self.rollback
        if session.default_import_errors:
            session.close()
            problems = "; ".join(
                f"{alias!r} ({self.policy.default_imports[alias]!r}): {err}"
                + _runtime_hint(self.policy.default_imports[alias], self.runtime)
                for alias, err in session.default_import_errors.items())
            raise ConfigurationError(f"default imports that the runtime cannot provide: "
                                     f"{problems}")
        return session

    def _continue_session(self, dead: Session | None) -> tuple[Session, ResetReason | None]:
        """The interpreter to go on with when the current one is gone (``dead``: None after
        a release). One that died between calls (a cancel that landed before its request
        was handed over, say) continues from the image of its last answered call, so the
        agent keeps its state; without such an image, a fresh interpreter (and the reason
        the next result gives)."""
        if dead is None:
            if self._parked[0] is not None:
                return self._unpark()
            return self._replace_session(), None
        died = dead.dead
        image = (dead.current_image() if self.rollback and not self._closed
                 and (died is None or died.reason != "protocol") else None)
        self._discard(dead)
        if image is not None:
            restored = self._restore_for_rollback(image)
            if restored is not None:
                self._session = restored
                self._holder[0] = restored
                return restored, None
        return self._replace_session(), "lost"

    def _replace_session(self) -> Session:
        old = self._session
        if old is not None:
            self._discard(old)
        self._forget_parked()
        freed = self._make_room()
        if freed is not None:  # (another agent's memory: a fresh interpreter is wanted)
            self._discard(freed)
        self._session = self._new_session()
        self._holder[0] = self._session
        return self._session

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
        """Park this agent in ``lot`` (a resolver making room): its interpreter is kept as
        the pages that differ from its configuration's boot image, and its next call
        continues from them. False when busy (a call runs); else the interpreter freed
        (alive, for another agent to take over) or None. An agent that cannot be parked
        (no image, or the lot refuses it) is released: its next result says so."""
        if self._lock._is_owned():  # type: ignore[attr-defined]  # (its own work: busy)
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            session = self._session
            if self._closed or session is None:
                return None
            self._session = None
            self._holder[0] = None
            self._drop_rollback_standby()
            died = session.dead
            image = (session.current_image()
                     if died is None or died.reason != "protocol" else None)
            if image is None and session.alive:
                image = session.wait_image(5.0, current=True)
            parked = None
            if image is not None:
                base = template_of(self._key)
                try:
                    parked = parking.park(image, base, session.pages_changed_from(base)
                                          if base is not None else None)
                except Exception:  # noqa: BLE001 - not parked: released instead
                    parked = None
            ticket = lot.new_ticket()
            if parked is not None and lot.put(ticket, parked, session.fs):
                self._parked[0] = (lot, ticket)
                if session.alive:
                    session.mark_parked(parked)
                    return session
            else:
                self._reset_pending = ("park_dropped" if parked is not None
                                       else "evicted" if session.alive else "lost")
            self._discard(session)
            return None
        finally:
            self._lock.release()

    def _unpark(self) -> tuple[Session, ResetReason | None]:
        """The interpreter of this parked agent, its parked image written back (into an
        interpreter freed for it, else a fresh one); a fresh one when the image was
        dropped (over the parking budget) or cannot be used."""
        entry, self._parked[0] = self._parked[0], None
        assert entry is not None
        lot, ticket = entry
        taken = lot.take(ticket)  # (first: the room made for it must not drop it)
        freed = self._make_room()
        try:
            target = freed if freed is not None else self._new_session()
            reason: ResetReason | None = None
            parked = None
            try:
                if taken is not None:
                    parked = lot.load(taken[0], taken[1], target.fs)
                contents = parked.contents() if parked is not None else b""
            except ImageError:
                parked, reason = None, "park_failed"
            if parked is None:
                reason = reason or "park_dropped"
                if target is freed:  # (another agent's memory)
                    freed = None
                    self._discard(target)
                    target = self._new_session()
                session = target
            elif target.become(parked, contents, self.limits.memory_bytes):
                session = target
            else:
                self._discard(target)
                if target is freed:
                    freed = None
                session = self._new_session()
                if not session.become(parked, contents, self.limits.memory_bytes):
                    self._discard(session)
                    try:
                        session = self._key.restore(parked.materialize(),
                                                    keep_images=self.rollback)
                    except Exception:  # noqa: BLE001 - its state is gone: a fresh one
                        session, reason = self._new_session(), "park_failed"
            if session is freed:
                freed = None
        finally:
            if freed is not None:
                self._discard(freed)
        session.keep_images = self.rollback
        self._session = session
        self._holder[0] = session
        return session, reason

    def _forget_parked(self) -> None:
        """Free this agent's parked image (reset, close)."""
        entry, self._parked[0] = self._parked[0], None
        if entry is not None:
            entry[0].discard(entry[1])

    @property
    def parked(self) -> bool:
        """Whether this agent is parked (its state kept as an image; no interpreter)."""
        entry = self._parked[0]
        return entry is not None and entry[1] in entry[0]

    def _discard(self, session: Session) -> None:
        if self._session is session:
            self._session = None
        threading.Thread(target=session.close, daemon=True).start() \
            if session.alive else session.close()

    def _prepare_spare(self) -> None:
        """Boot the next interpreter in the background after a stop, so that the call
        after a limit does not wait for it (with a pool, the pool does this)."""
        if self._pool is not None or self._closed or self._spare is not None:
            return

        key, spares, gone = self._key, self._spare_session, self._gone

        def boot() -> None:
            try:
                session = key.start()
            except Exception:  # the next call boots (and reports) for itself
                return
            spares.append(session)
            if gone[0]:  # closed or collected meanwhile (it set the flag, then drained)
                _drain(spares)

        self._spare = threading.Thread(target=boot, daemon=True, name="wasm-exec-spare")
        self._spare.start()

    def _take_spare(self) -> Session | None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.join(60)
        while self._spare_session:
            session = self._spare_session.pop()
            if session.alive:
                return session
        return None

    def _drop_spare(self) -> None:
        _drain(self._spare_session)

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
        reason = died.reason
        text = _STOP_TEXT.get(reason, "The interpreter stopped ({detail})").format(
            fuel=limits.fuel, timeout=limits.timeout_seconds, detail=died.detail)
        if rolled_back:
            text += (". The call was rolled back: nothing it did is kept, and the "
                     "interpreter is as it was after the previous call (earlier variables, "
                     "functions and imports are intact).")
        else:
            text += ". The interpreter was lost: the next call starts a fresh one " \
                    "(earlier variables are gone, default imports are rebound)."
        etype = {"fuel": "FuelExhausted", "timeout": "TimeoutError",
                 "stack_overflow": "StackOverflow", "cancelled": "Cancelled"}.get(
                     reason, "SandboxError")
        if reason == STOP_CANCELLED and self._closed:
            text = "The executor was closed while the call ran."
        return ExecutionResult(success=False, error=text, error_type=etype,
                               error_message=text, limit=reason,  # type: ignore[arg-type]
                               interpreter_lost=not rolled_back, rolled_back=rolled_back,
                               **common)


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


def _not_run() -> ExecutionResult:
    text = ("The call was cancelled before it started: nothing ran, and the agent's state "
            "is unchanged.")
    return ExecutionResult(success=False, error=text, error_type="Cancelled",
                           error_message=text, limit="cancelled")


def _close_session(holder: list[Session | None], spares: list[Session],
                   gone: list[bool],
                   parked: list[tuple[parking.ParkingLot, int] | None] | None = None) -> None:
    """Free every interpreter of an executor, and its parked image (run by close() or
    when it is collected)."""
    gone[0] = True
    if parked is not None and parked[0] is not None:
        lot, ticket = parked[0]
        parked[0] = None
        lot.discard(ticket)
    for s in holder:
        if s is not None:
            s.close()
    _drain(spares)


def _drain(sessions: list[Session]) -> None:
    while sessions:
        try:
            session = sessions.pop()
        except IndexError:  # (another thread drained it meanwhile)
            return
        session.close()


__all__ = ["ExecutionResult", "PythonExecExecutor"]
