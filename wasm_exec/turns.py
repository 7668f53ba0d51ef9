"""One call as a session runs it: its state while the guest runs (:class:`CallState`),
what the caller gets back (:class:`CallOutcome`), and why an interpreter stops
(:class:`SessionDead`, the ``STOP_*`` names). Shared by the session's turns (session.py)
and the host functions the guest calls during them (hostcalls.py)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import wasmtime

from . import streams
from .output import ChunkQueue
from .protocol import CallLimits, CallReply, StopReason
from .tools import ToolBox

# guest pointers are u32, but wasmtime hands an i32 to a host function as a signed int (an
# address of 2 GiB or more arrives negative): pointers are read through this mask
U32 = 0xFFFFFFFF
# the guest's monotonic clocks start near zero: they say nothing about the host's uptime
CLOCK_ORIGIN = time.monotonic_ns() - 1_000_000_000
# fuel an interpreter may burn between calls (code the agent left behind), per idle turn
IDLE_FUEL = 200_000_000
MARKER = "\n[output truncated: {what} exceeded {cap} bytes]\n"


# why an interpreter stopped (short names for protocol.StopReason's members)
STOP_FUEL = StopReason.FUEL
STOP_TIMEOUT = StopReason.TIMEOUT
STOP_MEMORY = StopReason.MEMORY
STOP_STACK = StopReason.STACK_OVERFLOW
STOP_EXIT = StopReason.EXIT
STOP_CRASH = StopReason.CRASH
STOP_PROTOCOL = StopReason.PROTOCOL
STOP_CANCELLED = StopReason.CANCELLED


class SessionDead(Exception):
    """The interpreter is gone; ``reason`` says why."""

    def __init__(self, reason: StopReason, detail: str, during_call: bool = True) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        # False when it died between calls (after an answer): the last snapshot may then
        # predate the last call that answered
        self.during_call = during_call


class Abort(Exception):
    pass


@dataclass
class CallOutcome:
    reply: CallReply | None  # (validated: a reply that is not valid is a protocol stop)
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    fuel_used: int | None
    duration: float
    memory_bytes: int
    call_id: int = 0
    died: SessionDead | None = None
    taken: bool = True  # False: the interpreter died before it took the call (it never ran)
    # what interrupted the caller while it took the call's output (Ctrl-C): the call
    # was stopped, and the caller raises it once the outcome is dealt with
    interrupt: BaseException | None = None


class Waking(threading.Event):
    """A call's ``done`` that also wakes the caller waiting for its output."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def set(self) -> None:
        super().set()
        self._wake.set()


@dataclass
class CallState:
    call_id: int
    frame: bytes
    limits: CallLimits
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, Any] | None = None
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    out_dropped: bool = False
    err_dropped: bool = False
    started: float = 0.0
    ended: float = 0.0
    deadline: float = 0.0
    fuel_left: int | None = None
    tools: ToolBox | None = None
    # streamed output, for the caller to take while the call runs (None: not streamed)
    chunks: ChunkQueue | None = None
    bursts: streams.Bursts = field(default_factory=streams.Bursts)


# how a stop is described in a SessionDead's detail
STOP_DETAIL = {
    STOP_FUEL: "fuel exhausted",
    STOP_TIMEOUT: "deadline reached",
    STOP_CANCELLED: "the call was cancelled",
}


def safe_fuel(store: wasmtime.Store) -> int | None:
    """The store's fuel left (None when fuel is off or the store is gone)."""
    try:
        return store.get_fuel()
    except Exception:
        return None
