"""Host functions ("tools") that the agent's code calls like Python functions.

An executor is given callables by name (``PythonExecExecutor(tools={...})`` and/or
``execute(..., tools={...})``); each call binds a stub per name in the agent's builtins.
A stub sends the tool's name and its arguments as JSON through the reactor's host door
(``host.call``, reachable only from the runner's audit hook); the session reads the
request here, runs the host function on a worker thread of its own while the call's
deadline keeps running, and answers with the result as JSON, or with the failure as a
message that the stub raises as ``ToolError``. Nothing of the host crosses but JSON
data and that message.

What a tool call may cost is bounded: its request and its answer are at most
``limits.max_globals_bytes`` each, a call makes at most ``limits.max_tool_calls`` of them,
each costs fuel (:data:`TOOL_CALL_FUEL` plus one unit per byte it carries) and the
wall-clock time the host function takes counts against the call's deadline: one slower
than what is left of it ends the call as a deadline stop (rolled back like any).
"""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import inspect
import json
import keyword
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .protocol import MAX_RETURNED_VALUES, check_json_value, is_plain_json

ToolFunction = Callable[..., Any]

MAX_TOOLS = 256  # tools one call may offer
MAX_TOOL_NAME = 100  # characters of a tool's name
TOOL_CALL_FUEL = 1_000_000  # what a tool call costs in fuel, besides one unit per byte
MAX_MESSAGE_CHARS = 2_000  # of a host function's error message, as the guest sees it
# bytes a request may have beyond its arguments' cap (the name and the JSON around them)
REQUEST_OVERHEAD = 1024
# host functions of one executor that outlived their call (its deadline or a cancel came
# first) and still run, at most: each keeps a thread, so past this a tool call is answered
# with an error until one of them returns (an agent cannot pile up host threads by calling
# a tool that hangs, call after call)
MAX_STRAGGLERS = 4

# names a tool cannot take: the builtins the agent's code relies on (those of the guest's
# Python too), and the sandbox's own exception
RESERVED_NAMES = frozenset(dir(builtins)) | frozenset({
    "ToolError", "PythonFinalizationError", "exit", "quit", "help", "breakpoint",
    "copyright", "credits", "license"})


def check_tools(tools: Mapping[str, ToolFunction] | None, *, where: str,
                error: type[Exception]) -> dict[str, ToolFunction]:
    """``tools`` as a plain dict, every name and callable checked; ``error`` (raised with a
    message that names the problem and what to do) otherwise."""
    if tools is None:
        return {}
    if not isinstance(tools, Mapping):
        raise error(f"{where} must be a mapping of names to callables, like "
                    "{'get_weather': get_weather}")
    if len(tools) > MAX_TOOLS:
        raise error(f"{where} names {len(tools)} tools; a call may offer at most {MAX_TOOLS}")
    out: dict[str, ToolFunction] = {}
    for name, fn in tools.items():
        shown = repr(name)[:120]
        if not isinstance(name, str) or not name.isidentifier() or not name.isascii() \
                or keyword.iskeyword(name):
            raise error(f"{where}: tool name {shown} is not a Python identifier (ASCII "
                        "letters, digits and _, not a keyword): agent code calls it by name")
        if name.startswith("_"):
            raise error(f"{where}: tool name {shown} starts with '_'; choose a plain name")
        if len(name) > MAX_TOOL_NAME:
            raise error(f"{where}: tool name {shown} has {len(name)} characters; at most "
                        f"{MAX_TOOL_NAME}")
        if name in RESERVED_NAMES:
            raise error(f"{where}: tool name {shown} would hide Python's builtin {name!r} "
                        "(or the sandbox's ToolError) from the agent's code; choose "
                        "another name")
        if not callable(fn):
            raise error(f"{where}: tool {shown} is a {type(fn).__name__}, not a callable")
        out[name] = fn
    return out


class Stragglers:
    """One executor's host functions that outlived their call and still run (shared by
    the interpreters it replaces: a stopped call's interpreter is not the next call's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.names: list[str] = []

    def add(self, name: str) -> None:
        with self._lock:
            self.names.append(name)

    def remove(self, name: str) -> None:
        with self._lock:
            if name in self.names:
                self.names.remove(name)

    def full(self) -> bool:
        with self._lock:
            return len(self.names) >= MAX_STRAGGLERS


class ToolBox:
    """The tools of one call, and what that call has spent on them."""

    def __init__(self, tools: Mapping[str, ToolFunction], *, max_calls: int, max_bytes: int,
                 loop: asyncio.AbstractEventLoop | None = None,
                 stragglers: Stragglers | None = None) -> None:
        self.tools = dict(tools)
        self.max_calls = max_calls
        self.max_bytes = max_bytes
        self.loop = loop
        self.calls = 0
        self.stragglers = stragglers if stragglers is not None else Stragglers()

    @property
    def names(self) -> list[str]:
        return sorted(self.tools)


# ------------------------------------------------------------------- requests / answers
def _answer(body: dict[str, Any]) -> bytes:
    return json.dumps(body, allow_nan=True, ensure_ascii=True,
                      separators=(",", ":")).encode("ascii")


def error_answer(message: str, error_type: str = "ToolError") -> bytes:
    """An answer that the stub raises as ToolError(message)."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 3] + "..."
    return _answer({"ok": False, "message": message, "type": error_type})


def value_answer(name: str, value: Any, max_bytes: int) -> bytes:
    """The answer carrying ``value`` (JSON data within ``max_bytes``), or an error answer
    saying why it cannot be sent."""
    if not is_plain_json(value):
        try:
            check_json_value(value, "the result")
        except TypeError as e:
            return error_answer(f"{name}: the tool returned a value that is not JSON data "
                                f"({e})", "TypeError")
    try:
        body = _answer({"ok": True, "value": value})
    except (TypeError, ValueError, RecursionError) as e:
        return error_answer(f"{name}: the tool's result cannot be sent as JSON ({e})",
                            "TypeError")
    if len(body) > max_bytes + REQUEST_OVERHEAD:
        return error_answer(f"{name}: the tool's result is {len(body):,} bytes as JSON; a tool "
                            f"call carries at most {max_bytes:,} (limits.max_globals_bytes)",
                            "ValueError")
    return body


def parse_request(box: ToolBox, raw: bytes) -> tuple[str, ToolFunction, list[Any],
                                                      dict[str, Any]] | bytes:
    """(name, function, args, kwargs) of a request the guest sent, or the error answer to
    give it. Everything in ``raw`` is untrusted: sizes and shapes are checked."""
    count = raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1
    if count > MAX_RETURNED_VALUES:
        return error_answer(f"the tool call's arguments hold about {count:,} values; a tool "
                            f"call carries at most {MAX_RETURNED_VALUES:,}", "ValueError")
    try:
        request = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return error_answer("the tool call's request is not JSON", "ValueError")
    if not isinstance(request, dict):
        return error_answer("the tool call's request is not a JSON object", "ValueError")
    name, args, kwargs = request.get("tool"), request.get("args"), request.get("kwargs")
    if not isinstance(name, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
        return error_answer("the tool call's request lacks its name or arguments",
                            "ValueError")
    fn = box.tools.get(name)
    if fn is None:
        offered = ", ".join(box.names) or "none"
        return error_answer(f"no tool named {name[:200]!r} in this call (tools: {offered})",
                            "NameError")
    return name, fn, args, kwargs


# ------------------------------------------------------------------------ running them
class ToolJob:
    """One host function call, run on a :class:`ToolWorker`."""

    def __init__(self, name: str, fn: ToolFunction, args: list[Any], kwargs: dict[str, Any],
                 loop: asyncio.AbstractEventLoop | None, notify: Callable[[], None],
                 stragglers: Stragglers | None = None) -> None:
        self.name = name
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.loop = loop
        self.notify = notify
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.future: Any = None  # an async tool's future on the caller's event loop
        self.abandoned = False
        self.stragglers = stragglers
        self._lock = threading.Lock()  # (abandon() and the end of run() race)

    def run(self) -> None:
        try:
            value = self.fn(*self.args, **self.kwargs)
            if inspect.isawaitable(value):
                value = self._await(value)
            self.value = value
        except BaseException as e:  # noqa: BLE001 - reported to the guest as ToolError
            self.error = e
        finally:
            self.args = self.kwargs = None  # type: ignore[assignment]
            with self._lock:
                self.done.set()
                if self.abandoned and self.stragglers is not None:
                    self.stragglers.remove(self.name)
            self.notify()

    def _await(self, awaitable: Any) -> Any:
        owner = serving()

        async def wait() -> Any:
            # (on the caller's loop: the executor the tool serves refuses calls from it,
            # as from the worker thread)
            _serving_task.set(owner)
            return await awaitable

        loop = self.loop
        if loop is not None and loop.is_running() and not loop.is_closed():
            # aexecute: the coroutine runs on the caller's own event loop
            self.future = asyncio.run_coroutine_threadsafe(wait(), loop)
            if self.abandoned:
                self.future.cancel()
            return self.future.result()
        return asyncio.run(wait())

    def abandon(self) -> None:
        """The call no longer waits for it (deadline, cancel): an async tool is cancelled;
        a function running on the worker thread cannot be stopped, and its result is
        dropped (it counts among the executor's stragglers until it returns)."""
        with self._lock:
            if not self.abandoned and not self.done.is_set() and self.stragglers is not None:
                self.stragglers.add(self.name)
            self.abandoned = True
        future = self.future
        if future is not None:
            future.cancel()

    def answer(self, max_bytes: int) -> bytes:
        if self.error is not None:
            e = self.error
            try:
                text = str(e)
            except Exception:  # noqa: BLE001 - a message that cannot be shown
                text = "<unprintable message>"
            kind = type(e).__name__
            return error_answer(f"{self.name}: {kind}: {text}" if text else
                                f"{self.name}: {kind}", kind)
        return value_answer(self.name, self.value, max_bytes)


_serving = threading.local()
_serving_task: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "wasm_exec_serving", default=None)


def serving() -> object | None:
    """The session whose tool the current thread (or, for an async tool, the current
    task on the caller's event loop) runs; None outside a tool."""
    owner = getattr(_serving, "owner", None)
    return owner if owner is not None else _serving_task.get()


class ToolWorker:
    """A daemon thread that runs one session's host functions, one at a time. A function
    still running when its call stopped waiting keeps this thread; the session then starts
    another worker for its next tool call."""

    def __init__(self, owner: object) -> None:
        self._owner = owner
        self._jobs: list[ToolJob | None] = []
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="wasm-exec-tool",
                                        daemon=True)
        self._thread.start()

    def submit(self, job: ToolJob) -> None:
        with self._cv:
            self._jobs.append(job)
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._jobs.append(None)
            self._cv.notify()

    def _serve(self) -> None:
        _serving.owner = self._owner
        while True:
            with self._cv:
                while not self._jobs:
                    self._cv.wait()
                job = self._jobs.pop(0)
            if job is None:
                return
            job.run()


__all__ = ["Stragglers", "ToolBox", "ToolJob", "ToolWorker", "check_tools"]
