"""The host functions the guest calls while a session runs its turns (a part of
:class:`~wasm_exec.session.Session`, kept apart because it is the sandbox's surface):

- ``fd_read``: fd 0 holds the request of the turn; during a call it reads as end-of-file;
- ``fd_write``: fd 1/2 are the call's stdout/stderr (capped); a write on fd 1 that starts
  with the reply header and the session token is the reply;
- ``host.call`` (the reactor's host door, the guest's ``_host.call``): tool calls of the
  running call (see :mod:`wasm_exec.tools`); refused outside a call;
- ``clock_time_get``: host clocks, so that sleeps with absolute deadlines agree;
- ``poll_oneoff``: sleeping ends at the call's deadline.

Every guest address is read through ``U32`` and bounds-checked against the memory before
it is touched; every size and count is capped (``MAX_IOVS``, ``MAX_IO_BYTES``, the call's
output and reply caps).
"""

from __future__ import annotations

import ctypes
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

import wasmtime

from . import streams
from .protocol import REPLY_HEADER, ProtocolError, ReplyReader, stream_ids
from .tools import (
    MAX_STRAGGLERS,
    REQUEST_OVERHEAD,
    TOOL_CALL_FUEL,
    ToolBox,
    ToolJob,
    ToolWorker,
    error_answer,
    parse_request,
)
from .turns import (
    CLOCK_ORIGIN,
    IDLE_FUEL,
    MARKER,
    STOP_CRASH,
    STOP_DETAIL,
    STOP_FUEL,
    STOP_PROTOCOL,
    STOP_TIMEOUT,
    U32,
    Abort,
    CallState,
    safe_fuel,
)
from .wasi import EBADF as ERRNO_BADF
from .wasi import EFAULT as ERRNO_FAULT
from .wasi import EINVAL as ERRNO_INVAL
from .wasi import ESUCCESS as ERRNO_SUCCESS
from .wasi import M32 as _M32
from .wasi import MAX_IO_BYTES, iovecs

if TYPE_CHECKING:
    from .runtime import LoadedRuntime


class HostCalls:
    """The host functions of :class:`~wasm_exec.session.Session` (a base class of it).

    They run on the session's thread, inside a turn, and use the session's state: the
    running call (``_call``), the guest's memory and store, the request buffer
    (``_inbuf``), the reply reader, the tool worker, and ``_fail`` / ``_abort`` to stop
    the interpreter.
    """

    _call: CallState | None
    _boot: CallState
    _memory: wasmtime.Memory | None
    _store: wasmtime.Store
    _inbuf: bytes
    _reader: ReplyReader
    _runtime: LoadedRuntime
    _cv: threading.Condition
    _tool_worker: ToolWorker | None
    _tool_job: ToolJob | None
    _fuel_enabled: bool
    _mono_shift: int
    _started_ns: int
    _memory_bytes: int
    _answered: int
    _abort_reason: str | None
    _deadline_ticks: int
    _idle_deadline: float
    _host_alloc: wasmtime.Func
    _stream_layout: streams.StreamLayout | None

    def _fail(self, reason: str, detail: str) -> None:
        raise NotImplementedError  # (the session's)

    def _abort(self, reason: str, force: bool = False) -> None:
        raise NotImplementedError  # (the session's)

    def _read_guest(self, caller: wasmtime.Caller, address: int, size: int) -> bytes | None:
        """Guest memory at ``address`` (in a host call)."""
        base, total = self._mem(caller)
        if address <= 0 or address + size > total:
            return None
        return ctypes.string_at(base + address, size)

    def _mem(self, caller: wasmtime.Caller) -> tuple[int, int]:
        assert self._memory is not None
        ptr = self._memory.data_ptr(caller)
        return ctypes.addressof(ptr.contents), self._memory.data_len(caller)

    def _fd_read(self, caller: wasmtime.Caller, fd: int, iovs: int, iovs_len: int,
                 nread_ptr: int) -> int:
        if fd != 0:
            return ERRNO_BADF
        if not self._inbuf:
            # a turn never waits for input (the host hands each request over before the
            # turn that answers it); the agent's code finds stdin empty
            return self._put_u32(caller, nread_ptr, 0)
        base, size = self._mem(caller)
        vecs = iovecs(base, size, iovs, iovs_len)
        if isinstance(vecs, int):
            return vecs
        total = 0
        for buf, length in vecs:
            n = min(length, len(self._inbuf))
            if n:
                ctypes.memmove(base + buf, self._inbuf[:n], n)
                self._inbuf = self._inbuf[n:]
                total += n
            if not self._inbuf:
                break
        return self._put_u32(caller, nread_ptr, total)

    def _put_u32(self, caller: wasmtime.Caller, ptr: int, value: int) -> int:
        return self._put(caller, ptr, struct.pack("<I", value))

    def _put(self, caller: wasmtime.Caller, ptr: int, data: bytes) -> int:
        """Write ``data`` at the guest address ``ptr`` (EFAULT when it does not fit)."""
        base, size = self._mem(caller)
        ptr &= U32
        if ptr + len(data) > size:
            return ERRNO_FAULT
        ctypes.memmove(base + ptr, data, len(data))
        return ERRNO_SUCCESS

    def _fd_write(self, caller: wasmtime.Caller, fd: int, iovs: int, iovs_len: int,
                  nwritten_ptr: int) -> int:
        if fd not in (1, 2):
            return ERRNO_BADF
        base, size = self._mem(caller)
        vecs = iovecs(base, size, iovs, iovs_len)
        if isinstance(vecs, int):
            return vecs
        call = self._call
        total = sum(length for _buf, length in vecs)
        chunks = [(buf, length) for buf, length in vecs if length]
        if total > MAX_IO_BYTES:
            return ERRNO_INVAL  # (what nwritten, a u32, cannot count: POSIX's EINVAL)
        if fd == 1 and chunks and total >= REPLY_HEADER:
            first_buf, first_len = next((b, n) for b, n in chunks if n)
            head = ctypes.string_at(base + first_buf, min(first_len, REPLY_HEADER))
            if self._reader.is_reply(head):
                self._on_reply(caller, base, chunks, total)
                return self._put_u32(caller, nwritten_ptr, total)
        if call is not None:
            target = call.stdout if fd == 1 else call.stderr
            room = call.limits.max_output_bytes - len(target)
            dropped = call.out_dropped if fd == 1 else call.err_dropped
            start = len(target)
            for b, n in chunks:
                take = max(0, min(n, room))
                if take:
                    target += ctypes.string_at(base + b, take)
                    room -= take
                if take < n:
                    if fd == 1:
                        call.out_dropped = True
                    else:
                        call.err_dropped = True
            if call.chunks is not None:
                # streamed: the same bytes the result will hold, the cap's marker once
                if len(target) > start:
                    call.chunks.put(fd, target[start:])
                if not dropped and (call.out_dropped if fd == 1 else call.err_dropped):
                    what = "stdout" if fd == 1 else "stderr"
                    call.chunks.put(fd, MARKER.format(
                        what=what, cap=call.limits.max_output_bytes).encode())
            layout = self._stream_layout
            if (layout is not None and call is not self._boot
                    and call.bursts.flushed(fd - 1, time.perf_counter())):
                # a burst of printing: block buffered from here until the next epoch
                # check (streams.py)
                streams.set_flag(base, size, layout, fd - 1, 0)
        return self._put_u32(caller, nwritten_ptr, total)

    def _on_reply(self, caller: wasmtime.Caller, base: int, chunks: list[tuple[int, int]],
                  total: int) -> None:
        call = self._call
        if call is None:
            self._fail(STOP_PROTOCOL, "the interpreter sent a reply outside a call")
        assert call is not None
        if total > call.limits.max_reply_bytes + REPLY_HEADER:
            self._fail(STOP_PROTOCOL, f"reply of {total} bytes exceeds the cap")
        frame = b"".join(ctypes.string_at(base + b, n) for b, n in chunks)
        try:
            reply = self._reader.decode(frame)
        except ProtocolError as e:
            self._fail(STOP_PROTOCOL, f"protocol violation: {e}")
        layout = self._stream_layout
        if layout is not None:
            size = self._memory.data_len(caller) if self._memory else 0
            for which in (0, 1):  # line buffered again, as boot left them
                streams.set_flag(base, size, layout, which, 1)
        elif call is self._boot:
            # found at boot only, before any agent code ran (a later reply is the agent's
            # to word: see streams.py); its snapshots carry it from then on
            ids = stream_ids(reply)
            if ids is not None:
                self._stream_layout = streams.calibrate(
                    ids, lambda a, n: self._read_guest(caller, a, n))
        call.reply = reply
        self._answered += 1  # (before the caller can ask for a snapshot of it)
        call.ended = time.perf_counter()
        if self._fuel_enabled:
            call.fuel_left = safe_fuel(self._store)
            self._store.set_fuel(IDLE_FUEL)
        self._memory_bytes = self._memory.data_len(caller) if self._memory else 0
        self._idle_deadline = time.perf_counter() + 10  # (the end of the turn)
        self._deadline_ticks = streams.FLUSH_TICKS
        self._store.set_epoch_deadline(self._deadline_ticks)
        self._call = None
        call.done.set()

    def _host_call(self, caller: wasmtime.Caller, req: int, req_len: int, out_ptr: int,
                   out_len_ptr: int) -> int:
        """``host.call``: one tool call of the running call. The request is JSON the
        guest wrote (untrusted: bounded and checked in :func:`tools.parse_request`); the
        answer goes into memory the guest's own allocator gives (``host_alloc``), its
        address and length at the two out-pointers. -1 (refused) outside a call that
        offers tools, -2 (failed) for bad pointers or no memory for the answer."""
        call = self._call
        box = call.tools if call is not None and call is not self._boot else None
        if call is None or box is None:
            return -1
        req &= _M32
        req_len &= _M32
        out_ptr &= _M32
        out_len_ptr &= _M32
        base, size = self._mem(caller)
        if req + req_len > size or out_ptr + 4 > size or out_len_ptr + 4 > size:
            return -2
        box.calls += 1
        if box.calls > box.max_calls:
            answer = error_answer(
                f"this call made {box.max_calls:,} tool calls, the most one call may make "
                "(limits.max_tool_calls): do the rest in a later call, or ask for a "
                "higher limit", "RuntimeError")
        elif req_len > box.max_bytes + REQUEST_OVERHEAD:
            answer = error_answer(
                f"the tool call's arguments are {req_len:,} bytes as JSON; a tool call "
                f"carries at most {box.max_bytes:,} (limits.max_globals_bytes)", "ValueError")
        else:
            raw = ctypes.string_at(base + req, req_len)
            self._charge_fuel(call, TOOL_CALL_FUEL + req_len)
            parsed = parse_request(box, raw)
            del raw
            if isinstance(parsed, bytes):
                answer = parsed
            else:
                answer = self._run_tool(call, box, *parsed)
        self._charge_fuel(call, len(answer))
        return self._give_answer(caller, call, answer, out_ptr, out_len_ptr)

    def _charge_fuel(self, call: CallState, amount: int) -> None:
        """Take ``amount`` fuel from the running call (a fuel stop when it has less)."""
        if not self._fuel_enabled or call.limits.fuel is None:
            return
        left = safe_fuel(self._store)
        if left is None:
            return
        if left <= amount:
            self._store.set_fuel(0)
            self._fail(STOP_FUEL, "fuel exhausted")
        self._store.set_fuel(left - amount)

    def _run_tool(self, call: CallState, box: ToolBox, name: str, fn: Any, args: list[Any],
                  kwargs: dict[str, Any]) -> bytes:
        """Run a host function on the session's tool worker while the call's deadline
        runs: one slower than that (or a cancel) ends the call, like any deadline stop."""
        if box.stragglers.full():
            running = ", ".join(sorted(set(box.stragglers.names)))
            return error_answer(
                f"{name}: not called: {MAX_STRAGGLERS} host functions of earlier calls "
                f"({running}) outlived their call's deadline and are still running; a tool "
                "can be called again once one of them returns", "RuntimeError")
        worker = self._tool_worker
        last = self._tool_job
        if worker is None or (last is not None and not last.done.is_set()):
            if worker is not None:
                worker.stop()  # (it ends once the function it still runs returns)
            worker = self._tool_worker = ToolWorker(self)

        def wake() -> None:
            with self._cv:
                self._cv.notify_all()

        job = self._tool_job = ToolJob(name, fn, args, kwargs, box.loop, wake,
                                        box.stragglers)
        worker.submit(job)
        with self._cv:
            while not job.done.is_set() and self._abort_reason is None:
                left = call.deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cv.wait(left)
        if not job.done.is_set():
            job.abandon()
            if self._abort_reason is not None:
                raise Abort(self._abort_reason)
            self._fail(STOP_TIMEOUT, f"deadline reached while the tool {name!r} ran")
        return job.answer(box.max_bytes)

    def _give_answer(self, caller: wasmtime.Caller, call: CallState, answer: bytes,
                     out_ptr: int, out_len_ptr: int) -> int:
        if self._abort_reason is not None:
            raise Abort(self._abort_reason)
        if time.perf_counter() >= call.deadline:
            self._fail(STOP_TIMEOUT, "deadline reached")
        try:
            ptr = self._host_alloc(caller, len(answer))
        except wasmtime.Trap as e:
            reason = {wasmtime.TrapCode.OUT_OF_FUEL: STOP_FUEL,
                      wasmtime.TrapCode.INTERRUPT: STOP_TIMEOUT}.get(e.trap_code, STOP_CRASH)
            self._fail(reason, STOP_DETAIL.get(reason, "the guest's allocator failed"))
        if not isinstance(ptr, int) or ptr <= 0:
            return -2  # no memory for the answer: the stub raises ToolError
        base, size = self._mem(caller)  # (the allocation may have grown the memory)
        ptr &= _M32
        if ptr + len(answer) > size:
            return -2
        ctypes.memmove(base + ptr, answer, len(answer))
        ctypes.memmove(base + out_ptr, struct.pack("<I", ptr), 4)
        ctypes.memmove(base + out_len_ptr, struct.pack("<I", len(answer)), 4)
        return 0

    def _clock_time_get(self, caller: wasmtime.Caller, clock_id: int, precision: int,
                        out_ptr: int) -> int:
        if clock_id == 0:
            now = time.time_ns()
        elif clock_id == 1:
            now = time.monotonic_ns() - CLOCK_ORIGIN + self._mono_shift
        elif clock_id in (2, 3):
            # CPU-time clocks: this interpreter's own running time, nothing of the host's
            now = time.monotonic_ns() - self._started_ns
        else:
            return ERRNO_INVAL
        return self._put(caller, out_ptr, struct.pack("<Q", now))

    def _poll_oneoff(self, caller: wasmtime.Caller, in_ptr: int, out_ptr: int, nsubs: int,
                     nevents_ptr: int) -> int:
        if nsubs <= 0:
            return ERRNO_INVAL
        base, size = self._mem(caller)
        in_ptr &= U32
        out_ptr &= U32
        if in_ptr + 48 * nsubs > size or out_ptr + 32 * nsubs > size:
            return ERRNO_FAULT
        data = ctypes.string_at(base + in_ptr, 48 * nsubs)
        events: list[bytes] = []
        wait_until: float | None = None
        clocks: list[tuple[int, float]] = []
        for i in range(nsubs):
            userdata, tag = struct.unpack_from("<QB", data, 48 * i)
            if tag == 0:  # clock
                clock_id, timeout, _prec, flags = struct.unpack_from("<I4xQQH", data, 48 * i + 16)
                if flags & 1:  # absolute
                    now_ns = (time.time_ns() if clock_id == 0
                              else time.monotonic_ns() - CLOCK_ORIGIN + self._mono_shift)
                    rel = max(0, timeout - now_ns) / 1e9
                else:
                    rel = timeout / 1e9
                when = time.monotonic() + rel
                clocks.append((userdata, when))
                wait_until = when if wait_until is None else min(wait_until, when)
            else:  # fd read/write: nothing to wait for in the sandbox
                events.append(struct.pack("<QHBxxxxxQHxxxxxx", userdata, ERRNO_BADF, tag, 0, 0))
        if not events and wait_until is not None:
            call = self._call
            if call is None:
                # between calls only the runner runs, and it never sleeps
                self._fail(STOP_PROTOCOL, "the interpreter tried to sleep between calls")
            layout = self._stream_layout
            if layout is not None and call is not None and call is not self._boot:
                # a sleep ends a burst of printing: the next line is delivered at once
                for which in (0, 1):
                    streams.set_flag(base, size, layout, which, 1)
                call.bursts.quiet()
            limit = wait_until
            if call is not None:
                limit = min(limit, time.monotonic() + max(0.0, call.deadline - time.perf_counter()))
            with self._cv:
                while self._abort_reason is None:
                    remaining = limit - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cv.wait(remaining)
            if self._abort_reason is not None:
                raise Abort(self._abort_reason)
            if call is not None and time.perf_counter() >= call.deadline and limit < wait_until:
                self._fail(STOP_TIMEOUT, "deadline reached")
            now = time.monotonic()
            for userdata, when in clocks:
                if when <= now + 1e-4:
                    events.append(struct.pack("<QHBxxxxxQHxxxxxx", userdata, 0, 0, 0, 0))
            if not events:
                userdata, _ = clocks[0]
                events.append(struct.pack("<QHBxxxxxQHxxxxxx", userdata, 0, 0, 0, 0))
        blob = b"".join(events)
        ctypes.memmove(base + out_ptr, blob, len(blob))
        return self._put_u32(caller, nevents_ptr, len(events))
