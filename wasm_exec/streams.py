"""The guest's output while a call runs: buffered so that printing is fast, delivered
soon enough to stream.

How output travels: the runner's ``sys.stdout`` / ``sys.stderr`` are the interpreter's own
``TextIOWrapper`` -> ``BufferedWriter`` -> ``FileIO`` on fd 1 / 2, and each flush is one
``fd_write`` that the host sees at once (``Session._fd_write``), so it can hand the chunk
to the caller while the call goes on. Line buffered, every ``print`` is a host call (about
25 us: 10,000 prints cost about 0.26 s, against 0.004 s natively). Block buffered, a print
costs in the guest what it costs natively, but what sits in the buffer reaches the host
only when the buffer fills (8 KiB) or the call ends, and nothing in the guest can flush it
on a timer (no threads, no signals, no host call while pure Python runs).

So the host chooses the mode while the call runs, by writing the stream's
``line_buffering`` flag (one byte of the ``TextIOWrapper`` object) in the guest's memory,
at moments when the guest is stopped in a host call or at an epoch check:

- a call starts line buffered: a line printed after a quiet spell is delivered at once
  (``print("starting")`` before a long computation reaches the host as it is printed),
  and so is every line of a short run of printing;
- when :data:`BURST_LINES` flushes in a row each followed the one before within
  :data:`BURST_GAP` seconds, the printing is a burst: the stream is switched to block
  buffering (no host call per line);
- every :data:`FLUSH_TICKS` epoch ticks (20 ms) while WebAssembly runs, an epoch callback
  switches it back to line buffering, so the next line written flushes what was buffered
  (and, when the burst goes on, block buffering resumes at once): a burst arrives in
  pieces about 20 ms apart;
- a sleep ends a burst: the runner's ``time.sleep`` flushes the streams first, and the
  host (``poll_oneoff``) puts line buffering back, so the line printed after it is
  delivered at once too;
- the reply puts both flags back as boot left them (line buffered), before the image of
  the interpreter is taken.

What this does not deliver early: what a burst printed in its last 20 ms waits for the
next line written, an explicit flush (``print(..., flush=True)``), or the end of the call;
and when a limit stops the call there, it is lost with the call.

Where the flag lives is not hard-coded: the runner makes five probe objects of the
streams' type with known settings and sends their addresses with the ready message of its
boot, before any agent code ran; the host reads their memory and finds the one byte that
follows ``line_buffering`` in all of them (and its neighbour ``write_through``). The
offset belongs to a runtime build; the streams' addresses to an interpreter and every
snapshot of it, and they travel with its snapshots, parked images and image files. The
layout is never taken from a later reply (an agent can word those: the runner's closure
cells are writable from Python 3.13 on). The host checks the object at every write (its
type word, the flag's value) and writes only inside the guest's memory: at worst an agent
that scribbles over its own interpreter gets its own output garbled. What keeps the
addresses the streams' own is that the runner's audit hook holds both stream objects in
its closure, which no agent code reaches, so they are never freed and their memory never
reused (``tests/test_adversarial.py``: an agent that drops every other reference leaves
them where they were); the per-write check is a second line, which data the agent lays out
in a freed block could pass.

The epoch callback also enforces the call's deadline (it replaces the trap at a fixed
epoch): it runs on the session's thread, at the guest's epoch checks, at least every
:data:`FLUSH_TICKS` ticks.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

# how often (in epoch ticks of session.TICK_SECONDS) the epoch callback runs while wasm runs
FLUSH_TICKS = 4
# this many flushes in a row, each closer than BURST_GAP (seconds) to the one before, are
# a burst: block buffering from then on (until the next epoch check); shorter runs of
# printing stay line buffered, each line delivered as it is printed
BURST_GAP = 0.002
BURST_LINES = 16
# how far into a stream object the host looks for its flags
OBJECT_BYTES = 96
TYPE_WORD = 4  # offset of ob_type in an object on wasm32 (after a 4-byte refcount)
# (line_buffering, write_through) of the runner's probes, in order (runner.py)
PROBE_FLAGS = ((1, 0), (0, 1), (1, 1), (0, 0), (1, 0))


@dataclass(frozen=True)
class StreamLayout:
    """Where the runner's stdout and stderr keep their ``line_buffering`` flag."""

    offset: int  # of the flag in a TextIOWrapper object
    type_word: int  # the TextIOWrapper type's address (the objects' ob_type)
    stdout: int  # address of the runner's sys.stdout object
    stderr: int

    @property
    def flags(self) -> tuple[int, int]:
        """The addresses of the two flag bytes (stdout's, stderr's)."""
        return self.stdout + self.offset, self.stderr + self.offset


def calibrate(ids: tuple[int, ...], read: Callable[[int, int], bytes | None]
              ) -> StreamLayout | None:
    """The layout found from the runner's stream and probe addresses (``ids``: stdout,
    stderr, then the probes), reading guest memory with ``read(address, size)``; None when
    the probes do not show one unambiguous flag. Only for an interpreter's boot, before
    any agent code ran: the layout then lives with the interpreter and its snapshots."""
    objects = [read(a, OBJECT_BYTES) for a in ids]
    if any(o is None or len(o) != OBJECT_BYTES for o in objects):
        return None
    words = {int.from_bytes(o[TYPE_WORD:TYPE_WORD + 4], "little")  # type: ignore[index]
             for o in objects}
    if len(words) != 1:
        return None
    probes = objects[2:]
    want_lb = [lb for lb, _ in PROBE_FLAGS]
    want_wt = [wt for _, wt in PROBE_FLAGS]
    lb_at = [k for k in range(TYPE_WORD + 4, OBJECT_BYTES)
             if [p[k] for p in probes] == want_lb]  # type: ignore[index]
    wt_at = [k for k in range(TYPE_WORD + 4, OBJECT_BYTES)
             if [p[k] for p in probes] == want_wt]  # type: ignore[index]
    if len(lb_at) != 1 or len(wt_at) != 1:
        return None
    offset = lb_at[0]
    # the real streams are line buffered, as boot leaves them
    if objects[0][offset] != 1 or objects[1][offset] != 1:  # type: ignore[index]
        return None
    return StreamLayout(offset, words.pop(), ids[0], ids[1])


def layout_holds(layout: StreamLayout, read: Callable[[int, int], bytes | None]) -> bool:
    """Whether both streams are where ``layout`` says, with a flag of 0 or 1."""
    for address in (layout.stdout, layout.stderr):
        head = read(address, layout.offset + 1)
        if head is None or len(head) != layout.offset + 1:
            return False
        if int.from_bytes(head[TYPE_WORD:TYPE_WORD + 4], "little") != layout.type_word:
            return False
        if head[layout.offset] not in (0, 1):
            return False
    return True


class Bursts:
    """One call's printing on stdout (0) and stderr (1): when to block buffer it."""

    def __init__(self) -> None:
        self.last = [0.0, 0.0]  # the latest flush
        self.streak = [0, 0]  # flushes in a row, each soon after the one before
        self.reopened = [0.0, 0.0]  # when an epoch check put line buffering back

    def flushed(self, stream: int, now: float) -> bool:
        """A flush reached the host: whether to switch that stream to block buffering."""
        burst = self.streak[stream] >= BURST_LINES
        if burst and now - self.reopened[stream] < BURST_GAP:
            self.last[stream] = now  # (the burst goes on past an epoch check)
            return True
        self.streak[stream] = self.streak[stream] + 1 \
            if now - self.last[stream] < BURST_GAP else 0
        self.last[stream] = now
        return self.streak[stream] >= BURST_LINES

    def reopen(self, stream: int, now: float) -> None:
        """An epoch check put the stream back to line buffering."""
        self.reopened[stream] = now

    def quiet(self) -> None:
        """The guest sleeps: whatever it prints next starts afresh."""
        self.streak = [0, 0]


# ------------------------------------------------------------------ epoch callback
# wasmtime calls one C callback per store when its epoch deadline is reached; these
# objects live as long as the process, and a store finds its session by number in a weak
# map (no finalizer: nothing of Python runs while a store is dropped)

_EpochCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t, ctypes.POINTER(ffi.wasmtime_context_t), ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t))
_NoFinalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

_owners: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_numbers = iter(range(1, 1 << 62))
_numbers_lock = threading.Lock()


def _error(message: bytes) -> int:
    err = ffi.wasmtime_error_new(message)
    return ctypes.cast(err, ctypes.c_void_p).value or 0


def _on_epoch(context: Any, data: int | None, delta: Any, kind: Any) -> int:
    owner = _owners.get(data or 0)
    if owner is None:
        return _error(b"the interpreter was closed")
    try:
        ticks = owner.on_epoch(context)
    except BaseException:  # noqa: BLE001 - never leave a callback with an exception
        ticks = None
    if ticks is None:
        return _error(b"stopped by the host")
    delta[0] = ticks
    kind[0] = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
    return 0


_CALLBACK = _EpochCallback(_on_epoch)
_NO_FINALIZER = ctypes.cast(0, _NoFinalizer)


def install_epoch_callback(store: wasmtime.Store, owner: Any) -> None:
    """Make ``owner.on_epoch(context)`` run whenever ``store`` reaches its epoch deadline:
    it returns the ticks to the next deadline, or None to stop the guest (the error then
    surfaces from the running call)."""
    with _numbers_lock:
        number = next(_numbers)
    _owners[number] = owner
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _CALLBACK,
                                               ctypes.c_void_p(number), _NO_FINALIZER)


def memory_of(context: Any, memory: wasmtime.Memory) -> tuple[int, int]:
    """(base address, size) of ``memory`` through a callback's store context."""
    ptr = ffi.wasmtime_memory_data(context, ctypes.byref(memory._memory))
    size = ffi.wasmtime_memory_data_size(context, ctypes.byref(memory._memory))
    return ctypes.addressof(ptr.contents), int(size)


def _flag_at(base: int, size: int, layout: StreamLayout, which: int) -> int | None:
    """The address of stream ``which``'s flag (0: stdout, 1: stderr) when the object there
    is still a stream of the layout's type with a flag of 0 or 1; else None."""
    start = layout.stdout if which == 0 else layout.stderr
    flag = start + layout.offset
    if not (0 < start and flag < size):
        return None
    if int.from_bytes(ctypes.string_at(base + start + TYPE_WORD, 4), "little") \
            != layout.type_word:
        return None
    if ctypes.c_uint8.from_address(base + flag).value not in (0, 1):
        return None
    return flag


def set_flag(base: int, size: int, layout: StreamLayout, which: int, value: int) -> None:
    """Set stream ``which``'s line-buffering flag (0: stdout, 1: stderr) to ``value``.
    Checked at every write, not only when the layout was found: the object at the
    stream's address must still be a stream of that type (its type word) with a flag of 0
    or 1, so an agent that freed the runner's streams and laid out memory of its own
    there gets at most a byte of its own stream-looking data flipped between 0 and 1."""
    flag = _flag_at(base, size, layout, which)
    if flag is not None:
        ctypes.c_uint8.from_address(base + flag).value = value


def get_flag(base: int, size: int, layout: StreamLayout, which: int) -> int | None:
    """Stream ``which``'s flag (None: the object there is not the stream any more)."""
    flag = _flag_at(base, size, layout, which)
    return None if flag is None else ctypes.c_uint8.from_address(base + flag).value


def layout_to_json(layout: StreamLayout | None) -> list[int] | None:
    """The layout as an image file's header keeps it."""
    if layout is None:
        return None
    return [layout.offset, layout.type_word, layout.stdout, layout.stderr]


def layout_from_json(value: object) -> StreamLayout | None:
    """The layout an image file's header gives (None: none); ValueError when it is not
    one (four addresses of 32 bits, an offset within a stream object)."""
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 4
            or not all(type(v) is int and 0 <= v < (1 << 32) for v in value)
            or not TYPE_WORD + 4 <= value[0] < OBJECT_BYTES):
        raise ValueError("the streams' layout")
    return StreamLayout(*value)


__all__ = ["FLUSH_TICKS", "StreamLayout", "calibrate", "install_epoch_callback",
           "layout_from_json", "layout_holds", "layout_to_json"]
