"""Framing between the host and the guest runner (``runtime/spec/runner.py``).

Requests (host -> guest, on the guest's fd 0)::

    b"WXQ1" | u32 little-endian length | UTF-8 JSON

Replies (guest -> host, written only by the runner's audit hook)::

    b"WXR1" | 16-byte session token | u32 little-endian length | UTF-8 JSON

sent as ONE ``fd_write`` on fd 1 (the runtime's libc passes no other descriptor to the
host). The token is known only to the host and to the runner's audit hook, so nothing the
agent's code prints or writes can pass for a reply: a write without the token is plain
stdout. A write with the token that is not exactly one well-formed frame is a protocol
violation: the interpreter is treated as crashed and replaced.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

REQUEST_MAGIC = b"WXQ1"
REPLY_MAGIC = b"WXR1"
TOKEN_BYTES = 16
REPLY_HEADER = len(REPLY_MAGIC) + TOKEN_BYTES + 4


class ProtocolError(Exception):
    """The guest sent something that is not a valid reply."""



class StopReason(StrEnum):
    """Why a call ended without the interpreter's answer (``ExecutionResult.limit``).

    The values are the strings the API has always used (``result.limit == "fuel"``)."""

    FUEL = "fuel"  # the call's fuel budget ran out
    TIMEOUT = "timeout"  # its wall-clock deadline passed
    MEMORY = "memory"  # the interpreter's memory cap was reached
    STACK_OVERFLOW = "stack_overflow"  # the WebAssembly stack overflowed
    EXIT = "exit"  # the interpreter itself exited
    CRASH = "crash"  # a WebAssembly trap, or the interpreter stopped answering
    PROTOCOL = "protocol"  # the interpreter broke the sandbox protocol
    CANCELLED = "cancelled"  # the caller cancelled the call (or closed the executor)


# why a call ran on a fresh interpreter (``ExecutionResult.reset_reason``): the agent was
# reset, evicted or lost its interpreter, or its parked image was dropped or unusable
ResetReason = Literal["reset", "evicted", "lost", "park_dropped", "park_failed"]


@dataclass(frozen=True)
class CallLimits:
    """What one call may use, as the session enforces it (see ``Limits.for_call``)."""

    fuel: int | None
    timeout_seconds: float
    max_output_bytes: int
    max_reply_bytes: int
    max_globals_bytes: int


@dataclass(frozen=True)
class CallRequest:
    """One call as the guest runner receives it (an ``exec`` request), checked by the host.

    ``globals_json`` is the globals already encoded as a JSON object (they are not
    encoded again); ``tools`` the names of the host functions the call offers.
    """

    code: str
    return_names: tuple[str, ...] = ()
    globals_json: str = "{}"
    display: bool = False
    return_all: bool = False
    figures: bool = False  # (the scientific runtime: return matplotlib's open figures)
    trace_imports: bool = False
    tools: tuple[str, ...] = ()

    def payload(self, call_id: int, max_globals_bytes: int) -> dict[str, Any]:
        """The request's fields as the runner reads them (all but the globals)."""
        out: dict[str, Any] = {
            "op": "exec", "code": self.code, "return": list(self.return_names),
            "display": self.display, "return_all": self.return_all,
            "figures": self.figures, "max_depth": MAX_JSON_DEPTH, "id": call_id,
            "max_globals_bytes": max_globals_bytes}
        if self.trace_imports:
            out["trace_imports"] = True
        if self.tools:
            out["tools"] = list(self.tools)
        return out


@dataclass(frozen=True)
class CallReply:
    """The runner's answer to a call, validated (see :func:`validate_call_reply`)."""

    ok: bool
    globals: dict[str, Any]
    globals_errors: dict[str, str]
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    exit_code: int | None = None
    value: dict[str, Any] | None = None  # (the last expression's shown forms)
    imports: list[tuple[str, str | None]] = field(default_factory=list)
    figures: list[bytes] = field(default_factory=list)


def encode_request(payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload, ensure_ascii=False, allow_nan=True,
                      separators=(",", ":")).encode("utf-8", "surrogatepass")
    return REQUEST_MAGIC + len(body).to_bytes(4, "little") + body


# A reply is one JSON object with a few containers of its own (its globals, their errors,
# the figures); returned values travel inside it as JSON text, in strings. The runner's
# reply is the agent's to word, though (Python 3.13+ code can rewrite a live frame's
# variables, and closure cells are writable), and each `[]` of a reply becomes a Python
# object of 56 bytes or more on the host: 10 MB of `[],` took about 340 MiB to parse. So
# the containers outside strings are counted before parsing.
MAX_REPLY_CONTAINERS = 100_000
_STRING = re.compile(rb'"[^"]*"')
_NOT_QUOTE_OR_OPENER = bytes(c for c in range(256) if c not in b'"[{')


def _containers(body: bytes) -> int:
    """How many JSON containers (``[`` or ``{``) ``body`` holds outside its strings (in C;
    exact only when the plain count of openers is over MAX_REPLY_CONTAINERS)."""
    plain = body.count(b"[") + body.count(b"{")
    if plain <= MAX_REPLY_CONTAINERS:
        return plain
    # escaped backslashes, then escaped quotes, out: every quote left opens or closes a
    # string; of the rest only quotes and openers matter
    skeleton = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(
        None, _NOT_QUOTE_OR_OPENER)
    return len(_STRING.sub(b"", skeleton))


class ReplyReader:
    """Recognises and decodes reply frames for one session (size-capped)."""

    def __init__(self, token: bytes, max_bytes: int) -> None:
        self._prefix = REPLY_MAGIC + token
        self._max = max_bytes

    def reset(self, max_bytes: int) -> None:
        self._max = max_bytes

    def is_reply(self, head: bytes) -> bool:
        """Whether a write starting with ``head`` (at least 20 bytes) is a reply."""
        return head[:len(self._prefix)] == self._prefix

    def decode(self, frame: bytes) -> dict[str, Any]:
        """Decode one whole reply frame (one write that :meth:`is_reply` accepted)."""
        if len(frame) < REPLY_HEADER or not self.is_reply(frame):
            raise ProtocolError("truncated reply header")
        size = int.from_bytes(frame[len(self._prefix):REPLY_HEADER], "little")
        if size > self._max:
            raise ProtocolError(f"reply of {size} bytes exceeds the cap of {self._max}")
        if len(frame) - REPLY_HEADER != size:
            raise ProtocolError("reply length does not match its header")
        body = frame[REPLY_HEADER:]
        containers = _containers(body)
        if containers > MAX_REPLY_CONTAINERS:
            raise ProtocolError(f"reply holds {containers} JSON containers outside its strings "
                                f"(a reply has a few; at most {MAX_REPLY_CONTAINERS})")
        try:
            reply = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ProtocolError(f"reply is not JSON: {e}") from None
        if not isinstance(reply, dict):
            raise ProtocolError("reply is not a JSON object")
        return reply


def _str(value: Any, name: str, cap: int = 1_000_000) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"reply field {name!r} is not a string")
    return value[:cap]


def validate_ready(reply: dict[str, Any]) -> dict[str, str]:
    if reply.get("id") != 0 or reply.get("ready") is not True:
        raise ProtocolError("expected the runner's ready message")
    errors = reply.get("errors")
    if not isinstance(errors, dict):
        raise ProtocolError("ready message without an errors map")
    return {_str(k, "alias", 200): _str(v, "error", 2000) for k, v in errors.items()}


# Returned values are parsed into Python objects on the host: a reply within its byte cap
# can still hold millions of tiny values (`[[],[],...]` grows about 20 times as Python
# objects), so the values of one call are counted before parsing (an upper bound: commas
# and openers, in strings too) and a name past the budget is a per-name error.
MAX_RETURNED_VALUES = 1_000_000


def _value_count(text: str) -> int:
    return text.count(",") + text.count("[") + text.count("{") + 1


def validate_call_reply(reply: dict[str, Any], call_id: int) -> CallReply:
    """Check a call reply's shape and types; parse the returned globals (ProtocolError:
    the reply is not one the runner sends)."""
    if reply.get("id") != call_id:
        raise ProtocolError(f"reply for call {reply.get('id')!r}, expected {call_id}")
    ok = reply.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError("reply field 'ok' is not a boolean")
    out: dict[str, Any] = {"ok": ok}
    if not ok:
        out["error_type"] = _str(reply.get("error_type"), "error_type", 500)
        out["error_message"] = _str(reply.get("error_message"), "error_message", 100_000)
        out["traceback"] = _str(reply.get("traceback"), "traceback", 200_000)
    raw_globals = reply.get("globals")
    raw_errors = reply.get("globals_errors")
    if not isinstance(raw_globals, dict) or not isinstance(raw_errors, dict):
        raise ProtocolError("reply globals are not JSON objects")
    values: dict[str, Any] = {}
    too_many: dict[str, str] = {}
    budget = MAX_RETURNED_VALUES
    out["exit_code"] = _exit_code(reply.get("exit_code"))
    out["value"], budget = _shown_value(reply.get("value"), budget)
    for name, text in raw_globals.items():
        text = _str(text, f"globals[{name!r}]", 1 << 40)
        count = _value_count(text)
        if count > budget:
            too_many[_str(name, "name", 1000)] = (
                f"too many values to return (about {count:,}; a call returns at most "
                f"{MAX_RETURNED_VALUES:,} in all): return fewer items, or a summary")
            continue
        budget -= count
        try:
            values[name] = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ProtocolError(f"returned global {name!r} is not JSON: {e}") from None
    out["globals"] = values
    out["globals_errors"] = {_str(k, "name", 1000): _str(v, "error", 2000)
                             for k, v in raw_errors.items()}
    out["globals_errors"].update(too_many)
    imports = reply.get("imports", [])
    if not isinstance(imports, list) or len(imports) > 256:
        raise ProtocolError("reply imports are not a list of at most 256 items")
    out["imports"] = []
    for item in imports:
        if (not isinstance(item, list) or len(item) != 2
                or not (item[1] is None or isinstance(item[1], str))):
            raise ProtocolError("a traced import is not [name, rule or null]")
        out["imports"].append((_str(item[0], "import", 1000),
                               None if item[1] is None else _str(item[1], "rule", 100)))
    figures = reply.get("figures", [])
    if not isinstance(figures, list):
        raise ProtocolError("reply figures are not a list")
    out["figures"] = []
    for item in figures:
        try:
            out["figures"].append(base64.b64decode(_str(item, "figure", 1 << 40),
                                                   validate=True))
        except (ValueError, binascii.Error):
            raise ProtocolError("a figure is not base64") from None
    return CallReply(**out)


def _exit_code(raw: Any) -> int | None:
    if raw is None:
        return None
    if type(raw) is not int or not -(1 << 31) <= raw < (1 << 31):
        raise ProtocolError("reply field 'exit_code' is not a 32-bit int")
    return raw


def _shown_value(raw: Any, budget: int) -> tuple[dict[str, Any] | None, int]:
    """The last expression's value as the runner showed it (its forms, checked), and what
    is left of the returned-values budget."""
    if raw is None:
        return None, budget
    if not isinstance(raw, dict):
        raise ProtocolError("reply field 'value' is not a JSON object")
    shown: dict[str, Any] = {"text": _str(raw.get("text"), "value text", 200_000)}
    if "json" in raw:
        text = _str(raw["json"], "value json", 1 << 40)
        count = _value_count(text)
        if count <= budget:
            budget -= count
            try:
                shown["json"] = json.loads(text)
            except (ValueError, RecursionError) as e:
                raise ProtocolError(f"the value's JSON is not JSON: {e}") from None
    if "html" in raw:
        shown["html"] = _str(raw["html"], "value html", 1 << 40)
    if "png" in raw:
        try:
            shown["png"] = base64.b64decode(_str(raw["png"], "value png", 1 << 40),
                                            validate=True)
        except (ValueError, binascii.Error):
            raise ProtocolError("the value's PNG is not base64") from None
    return shown, budget


# the runner's streams and the probes the host reads their layout from (streams.py)
STREAM_IDS = 7


def stream_ids(reply: dict[str, Any]) -> tuple[int, ...] | None:
    """The addresses of the runner's stdout, stderr and stream probes in a reply, if any."""
    raw = reply.get("streams")
    if (isinstance(raw, list) and len(raw) == STREAM_IDS
            and all(type(a) is int and 0 < a < (1 << 32) for a in raw)):
        return tuple(raw)
    return None


# how deeply JSON data (globals in and out) may nest: the guest's parser and encoder are C
# code under CPython's C recursion limit on WASI (500 levels on 3.12, counting the request's
# own levels and the runner's frames), so the documented depth leaves a margin below it
MAX_JSON_DEPTH = 400

_SCALARS = (str, int, float, bool, type(None))
_BIG = 10 ** 4000


def is_plain_json(value: Any, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Fast check that ``value`` is plain JSON data (str keys, no huge ints, bounded depth).

    On False, :func:`check_json_value` says exactly what and where.
    """
    stack = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        v, depth = pop()
        t = type(v)
        if t is str or t is bool or t is float or v is None:
            continue
        if t is int:
            if -_BIG < v < _BIG:
                continue
            return False
        if depth >= max_depth:
            return False
        if t is dict:
            for k, item in v.items():
                if type(k) is not str:
                    return False
                if type(item) in _SCALARS and type(item) is not int:
                    continue
                push((item, depth + 1))
            continue
        if t is list or t is tuple:
            for item in v:
                if type(item) in _SCALARS and type(item) is not int:
                    continue
                push((item, depth + 1))
            continue
        return False
    return True


def encode_request_with_globals(payload: dict[str, Any], globals_json: str) -> bytes:
    """Like :func:`encode_request`, with ``globals`` given as already encoded JSON text."""
    head = json.dumps(payload, ensure_ascii=False, allow_nan=True, separators=(",", ":"))
    body = (head[:-1] + ',"globals":' + globals_json + "}").encode("utf-8", "surrogatepass")
    return REQUEST_MAGIC + len(body).to_bytes(4, "little") + body


def check_json_value(value: Any, path: str, depth: int = 0) -> None:
    """Raise ``TypeError`` naming ``path`` when ``value`` is not plain JSON data."""
    if depth >= MAX_JSON_DEPTH and isinstance(value, (list, tuple, dict)):
        raise TypeError(f"{path} is nested more than {MAX_JSON_DEPTH} levels deep (lists "
                        "and dicts in one another)")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if abs(value) >= _BIG:
            raise TypeError(f"{path} is an integer with more than 4000 digits")
        return
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json_value(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{path} has a key {k!r} that is not a string")
            check_json_value(item, f"{path}[{k!r}]", depth + 1)
        return
    raise TypeError(f"{path} is a {type(value).__name__}, which is not JSON "
                    "(use dict, list, str, int, float, bool or None)")
