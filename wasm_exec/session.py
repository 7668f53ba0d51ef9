"""One live interpreter: a wasmtime Store + Instance of a pre-initialised CPython reactor.

Every runtime is a WASI reactor driven in turns (``turn(ptr, len)``): the first turn boots
the guest runner, each later turn answers one request, and between turns no WebAssembly
frame is live, so the linear memory plus the in-memory file system is the whole
interpreter (snapshots: roll-back, save/load, warm starts). Turns run on the session's own
thread; callers hand requests over and wait for the reply.

Shadowed WASI imports (everything else is wasmtime's WASI with no preopened directory,
no environment and no arguments): the file system is :class:`vfs.MemoryFS` (the stdlib zip
read-only, a capped scratch area); stdio, the reply, the host door for tools, clocks and
sleeping are the host functions in hostcalls.py (a base class of :class:`Session`). A
call's own state and outcome, and the reasons an interpreter stops, are in turns.py.

The host's own file operations (:meth:`Session.files`) run on the session thread too,
between turns, so they never race a turn or the snapshot taken after one.

The epoch deadline runs a callback (streams.py) at least every 20 ms while wasm runs: it
stops the guest at the call's deadline, and switches the runner's stdout and stderr back
to line buffering after a burst of printing. Writes on fd 1/2 can be handed to the caller
while the call runs (``call(..., on_output=...)``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import mmap
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import wasmtime

from . import streams
from .dirty import DirtyPages
from .hostcalls import HostCalls
from .output import ChunkQueue
from .protocol import (
    CallLimits,
    CallRequest,
    ProtocolError,
    ReplyReader,
    encode_request,
    encode_request_with_globals,
    validate_call_reply,
    validate_ready,
)
from .runtime import LoadedRuntime, runner_identity
from .session_snapshots import SessionSnapshots
from .snapshot import Snapshot
from .tools import (
    ToolBox,
    ToolJob,
    ToolWorker,
)
from .turns import (
    MARKER,
    STOP_CANCELLED,
    STOP_CRASH,
    STOP_DETAIL,
    STOP_EXIT,
    STOP_FUEL,
    STOP_MEMORY,
    STOP_PROTOCOL,
    STOP_STACK,
    STOP_TIMEOUT,
    U32,
    Abort,
    CallOutcome,
    CallState,
    SessionDead,
    Waking,
    safe_fuel,
)
from .vfs import MemoryFS, scratch_budget, setup_source
from .zipfs import shared_zip

T = TypeVar("T")

if TYPE_CHECKING:
    from .parking import ParkedImage

TICK_SECONDS = 0.005
BOOT_FUEL = 20_000_000_000
BOOT_TIMEOUT = 60.0

# The runner arrives as the source of the boot turn (compiled there, and the compiled form
# sent back with the ready message) or, for later interpreters of the same process, as that
# compiled form.
REACTOR_BOOTSTRAP = (
    "def _wasm_exec_bootstrap(_src):\n"
    "    import sys\n"
    "    if _src.startswith('M:'):\n"
    "        import binascii, marshal\n"
    "        return marshal.loads(binascii.a2b_base64(_src[2:]))\n"
    "    return compile(_src, '<wasm-exec-runner>', 'exec')\n"
    "_wasm_exec_code = _wasm_exec_bootstrap({runner})\n"
    "del _wasm_exec_bootstrap\n"
    "exec(_wasm_exec_code)\n")

# compiled runner per (runner source, runtime binary): filled by the first interpreter
_runner_blobs: dict[tuple[str, str], str] = {}

# the source of every turn after the boot: the runner's turn step ignores it
STEP_SOURCE = b"pass"

# modules CPython's own C code imports on the caller's behalf (never by a statement):
# `\N{...}` escapes load unicodedata, time.strptime and datetime.strptime load _strptime.
# The grant loads the module and answers the caller with an empty stand-in (C code reads
# sys.modules itself), so the agent's own __import__ of one of them gets no module. The
# codec machinery needs no grant: encodings' own code imports its codec modules.
IMPLICIT_IMPORTS = ("unicodedata", "_strptime")
# ... and which of them only C code behind an allowed module makes: `_strptime` is imported
# by time.strptime and datetime.strptime (and itself imports os, locale and calendar), so
# it is granted only where one of them is allowed
IMPLICIT_ONLY_WITH = {"_strptime": frozenset({"time", "datetime", "_strptime"})}


def implicit_imports(allowed: frozenset[str]) -> list[str]:
    """The modules CPython's C code may import on the agent's behalf, for this allow-list."""
    return [m for m in IMPLICIT_IMPORTS
            if m not in IMPLICIT_ONLY_WITH or allowed & IMPLICIT_ONLY_WITH[m]]


@dataclass
class _FilesJob:
    """Host work on the file system, run on the session thread between turns."""

    fn: Callable[[MemoryFS], Any]
    changes: bool
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


# ----------------------------------------------------------------- epoch ticker

class _Ticker:
    """Advances the epoch of every live session's engine every TICK_SECONDS."""

    def __init__(self) -> None:
        self._engines: weakref.WeakSet[wasmtime.Engine] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def add(self, engine: wasmtime.Engine) -> None:
        with self._lock:
            self._engines.add(engine)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="wasm-exec-epoch",
                                                daemon=True)
                self._thread.start()

    def remove(self, engine: wasmtime.Engine) -> None:
        with self._lock:
            self._engines.discard(engine)

    def _run(self) -> None:
        while True:
            time.sleep(TICK_SECONDS)
            with self._lock:
                engines = list(self._engines)
                if not engines:
                    self._thread = None
                    return
            for e in engines:
                e.increment_epoch()


_ticker = _Ticker()


class Session(HostCalls, SessionSnapshots):
    """One CPython interpreter inside WebAssembly, alive between calls."""

    def __init__(self, runtime: LoadedRuntime, *, allowed: frozenset[str],
                 default_imports: dict[str, str], memory_bytes: int,
                 from_snapshot: Snapshot | None = None, keep_snapshots: bool = True) -> None:
        self._runtime = runtime
        self._token = os.urandom(16)
        # the interpreter's memory as of the end of its last successful turn
        self.latest_snapshot: Snapshot | None = None
        self._keep_snapshots = keep_snapshots
        self._reseed = False
        self._mono_shift = 0  # keeps the guest's monotonic clock going forward
        self._snapped = threading.Event()  # set once latest_snapshot holds a snapshot
        self._answered = 0  # turns answered (boot included) ...
        self._snapshot_of = -1  # ... and the one latest_snapshot was taken after
        self._want_snapshot = False  # a snapshot is wanted although keep_snapshots is off
        self._buffers: list[mmap.mmap] = []  # snapshot memory this session allocated
        # earlier snapshots that share the latest snapshot's memory (the latest one took the
        # host's files after them: see files()); its pages are reused only once they are gone
        self._sharers: list[weakref.ref[Snapshot]] = []
        # the snapshot its agent was parked as (and its turns then): its memory is that
        # snapshot's until it runs again, so another agent can take it over (become)
        self._parked_as: tuple[ParkedImage, int] | None = None
        # the kernel's list of the pages written since the last snapshot (dirty.py; None
        # where it cannot), and the snapshot buffer that equals the memory as of that snapshot:
        # the next snapshot copies only the written pages into it (used on the session thread)
        self._dirty: DirtyPages | None = None
        self._dirty_tried = False
        self._dirty_buffer: mmap.mmap | None = None
        # the pages written since the memory was that of a snapshot (None: not known), for
        # parking: only those can differ from it
        self._touched: set[int] | None = None
        self._touched_base: Snapshot | None = None
        self._boot_source = b""
        self._started_ns = time.monotonic_ns()
        self._memory_bytes = 0
        self._engine, self._module = runtime.new_engine()
        self._store = wasmtime.Store(self._engine)
        self._store.set_limits(memory_size=memory_bytes)
        self._fuel_enabled = runtime.settings.fuel
        self._requests: list[bytes] = []
        self._cv = threading.Condition()
        self._inbuf = b""
        self._call: CallState | None = None
        self._boot = CallState(0, b"", CallLimits(BOOT_FUEL, BOOT_TIMEOUT, 1 << 20, 1 << 20,
                                                    1 << 20))
        self._reader = ReplyReader(self._token, 1 << 20)
        self._memory: wasmtime.Memory | None = None
        self._dead: SessionDead | None = None
        self._closing = False
        self._abort_reason: str | None = None
        self._host_error: SessionDead | None = None
        self._lock = threading.Lock()  # one call at a time
        self._pending: CallState | None = None
        self._jobs: list[_FilesJob] = []
        self._tool_worker: ToolWorker | None = None
        self._tool_job: ToolJob | None = None
        self._ids = itertools.count(1)
        self.default_import_errors: dict[str, str] = {}
        self.calls = 0
        # the runner's streams (streams.py): where their line-buffering flags are, once
        # known (found at boot, or carried by the snapshot it was restored from; never
        # taken from a later reply)
        self._stream_layout: streams.StreamLayout | None = None
        self._idle_deadline = 0.0  # (the end of a turn's own deadline, after its answer)
        streams.install_epoch_callback(self._store, self)
        self._instantiate(runtime, memory_bytes)
        self._deadline_ticks = 0
        if from_snapshot is not None:
            self._restore(from_snapshot, memory_bytes, fresh=True)
            self._thread = threading.Thread(target=self._run, name="wasm-exec-session",
                                            daemon=True)
            self._thread.start()
            return
        self._boot_runner(runtime, allowed, default_imports)

    def _instantiate(self, runtime: LoadedRuntime, memory_bytes: int) -> None:
        """The instance: wasmtime's WASI with no preopened directory, no environment and
        no arguments, its file system calls shadowed by a MemoryFS and the rest by the
        host functions (hostcalls.py); and the boot turn's source."""
        wasi = wasmtime.WasiConfig()
        # the runner gets its own file name, so tracebacks can leave its frames out
        source, source_sha = runner_identity()
        self._blob_key = (source_sha, str(runtime.cwasm))
        blob = _runner_blobs.get(self._blob_key)
        runner_arg = "M:" + blob if blob else source
        self._store.set_wasi(wasi)
        linker = wasmtime.Linker(self._engine)
        linker.define_wasi()
        linker.allow_shadowing = True
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        # the standard library zip, read-only from host memory; a scratch area in host
        # memory for writes (never the host's files)
        self._fs = MemoryFS(shared_zip(runtime.stdlib_zip()), zip_path=runtime.pin.zip_path,
                            scratch_bytes=scratch_budget(memory_bytes))
        self._fs.install(linker, lambda: self._memory, stdio_read=self._fd_read,
                         stdio_write=self._fd_write)
        # the reactor's own host door (`_host.call`): the running call's tools
        linker.define_func("host", "call", wasmtime.FuncType([i32, i32, i32, i32], [i32]),
                           self._host_call, access_caller=True)
        linker.define_func("wasi_snapshot_preview1", "poll_oneoff",
                           wasmtime.FuncType([i32, i32, i32, i32], [i32]), self._poll_oneoff,
                           access_caller=True)
        linker.define_func("wasi_snapshot_preview1", "clock_time_get",
                           wasmtime.FuncType([i32, i64, i32], [i32]), self._clock_time_get,
                           access_caller=True)
        self._instance = linker.instantiate(self._store, self._module)
        mem = self._instance.exports(self._store)["memory"]
        assert isinstance(mem, wasmtime.Memory)
        self._memory = mem
        exports = self._instance.exports(self._store)
        # a pre-started interpreter: the boot turn runs the runner's set-up and ends after
        # the ready message; every call is then a turn of its own, so that between calls no
        # wasm frame is live and the memory is the whole interpreter
        self._boot_source = (setup_source() + REACTOR_BOOTSTRAP.format(
            runner=repr(runner_arg))).encode("utf-8")
        host_alloc = exports["host_alloc"]
        turn = exports["turn"]
        assert isinstance(host_alloc, wasmtime.Func) and isinstance(turn, wasmtime.Func)
        self._host_alloc = host_alloc
        self._turn_func = turn

    def _boot_runner(self, runtime: LoadedRuntime, allowed: frozenset[str],
                     default_imports: dict[str, str]) -> None:
        """Run the boot turn (the runner's set-up, the hook, the default imports) and wait
        for the ready message (RuntimeError with the guest's stderr when it fails)."""
        init = {"token": self._token.hex(), "allowed": sorted(allowed),
                "implicit": implicit_imports(frozenset(allowed)),
                "default_imports": dict(default_imports),
                # the runtime's genuine compiled modules: all the import machinery may load
                "code_index": runtime.code_index(), "turns": True,
                "preload": list(runtime.pin.preload)}
        self._inbuf = encode_request(init)
        self._arm(self._boot)
        self._call = self._boot
        self._thread = threading.Thread(target=self._run, name="wasm-exec-session", daemon=True)
        self._thread.start()
        self._boot.done.wait(BOOT_TIMEOUT + 5)
        if not self._boot.done.is_set():
            self._abort(STOP_TIMEOUT)
            self._boot.done.wait(5)
        if self._dead is not None and self._boot.reply is None:
            detail = self._dead.detail
            boot_err = self._boot.stderr.decode("utf-8", "replace")[-2000:]
            self.close()
            raise RuntimeError(f"the sandbox interpreter failed to start: {detail}\n{boot_err}")
        assert self._boot.reply is not None
        self.default_import_errors = validate_ready(self._boot.reply)
        blob = self._boot.reply.get("runner_blob")
        if isinstance(blob, str) and blob and len(blob) < 4_000_000:
            _runner_blobs.setdefault(self._blob_key, blob)

    # ------------------------------------------------------------ public
    @property
    def alive(self) -> bool:
        return self._dead is None and not self._closing

    @property
    def dead(self) -> SessionDead | None:
        return self._dead

    @property
    def memory_bytes(self) -> int:
        """Guest linear memory as of the end of the last call (read on the session thread:
        a Store is never touched from two threads at once)."""
        return self._memory_bytes

    def call(self, request: CallRequest, limits: CallLimits, tools: ToolBox | None = None,
             on_output: Callable[[int, bytes], None] | None = None) -> CallOutcome:
        """Run one request; returns its outcome, or ``died`` set when the interpreter died
        (or broke the protocol: its reply is validated here, where it is received).

        ``tools`` are the host functions the call's code may call (their names are the
        request's ``tools``). ``on_output(fd, data)`` is given what the call writes on fd 1
        and 2 (within the output cap) while it runs, on this thread; the guest does not
        wait for it.
        """
        with self._lock:
            if self._dead is not None:
                raise self._dead
            call_id = next(self._ids)
            payload = request.payload(call_id, limits.max_globals_bytes)
            if self._reseed:
                payload["reseed"] = True  # restored from a snapshot: fresh random numbers
                self._reseed = False
            call = CallState(call_id, encode_request_with_globals(payload, request.globals_json),
                         limits, tools=tools)
            if on_output is not None:
                call.chunks = ChunkQueue()
                call.done = Waking(call.chunks.wake)
            with self._cv:
                self._requests.append(call.frame)
                self._pending = call
                self._cv.notify_all()
            # the deadline is enforced inside wasm by the epoch (it starts when the runner
            # takes the request, at once when it is healthy); this wait only guards against
            # an interpreter that never takes the request or never answers
            interrupt = None
            if on_output is None:
                finished = call.done.wait(limits.timeout_seconds + 2)
            else:
                finished, interrupt = self._pump(call, on_output, limits.timeout_seconds + 2)
            if not finished:
                self._abort(STOP_TIMEOUT)
                call.done.wait(10)
            self.calls += 1
            outcome = self._outcome(call)
            outcome.interrupt = interrupt
            return outcome

    def _pump(self, call: CallState, on_output: Callable[[int, bytes], None],
              patience: float) -> tuple[bool, BaseException | None]:
        """Wait for ``call`` while handing its output to ``on_output`` as it arrives (on
        the caller's thread: the guest goes on meanwhile, a slow consumer only delays the
        caller). Returns whether the call ended, and what interrupted the caller (then the
        call was stopped: it is rolled back like a cancelled one)."""
        assert call.chunks is not None
        chunks, wake = call.chunks, call.chunks.wake
        give_up = time.monotonic() + patience
        try:
            while True:
                wake.clear()
                ended = call.done.is_set()
                for fd, data in chunks.take():
                    on_output(fd, bytes(data))
                if ended:
                    return True, None
                left = give_up - time.monotonic()
                if left <= 0 and not call.done.is_set():
                    return False, None
                wake.wait(max(0.0, left))
        except BaseException as e:  # noqa: BLE001 - handed back with the outcome
            if not call.done.is_set():
                self._abort(STOP_CANCELLED)
                call.done.wait(10)
            return call.done.is_set(), e

    @property
    def fs(self) -> MemoryFS:
        """The interpreter's in-memory file system."""
        return self._fs

    def files(self, fn: Callable[[MemoryFS], T], *, changes: bool) -> T:
        """``fn(fs)`` run on the session thread between turns (never during a call, nor
        while a snapshot is taken); returns its value or raises its exception. With
        ``changes``, the latest snapshot (when it is that of the last answered call) takes the
        file system as ``fn`` left it: a later call stopped by a limit rolls back to the
        files the host put in. Raises :class:`SessionDead` when the interpreter is gone."""
        with self._lock:
            if self._dead is not None:
                raise self._dead
            job = _FilesJob(fn, changes)
            with self._cv:
                self._jobs.append(job)
                self._cv.notify_all()
            while not job.done.wait(1.0):
                if self._dead is not None or not self._thread.is_alive():
                    break
            if not job.done.is_set():
                raise self._dead or SessionDead(STOP_CRASH, "the interpreter stopped")
            if job.error is not None:
                raise job.error
            return job.value  # type: ignore[no-any-return]

    def _run_files_job(self, job: _FilesJob) -> None:
        """(On the session thread, between turns.)"""
        try:
            job.value = job.fn(self._fs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            job.error = e
        if job.changes:
            with self._cv:
                snapshot = self.latest_snapshot
                if snapshot is not None and self._snapshot_of == self._answered:
                    # the same memory with the files as they are now (the previous snapshot
                    # object may still be held, by a standby being restored from it: its
                    # pages are reused for a later snapshot only once it is gone)
                    self._sharers.append(weakref.ref(snapshot))
                    try:
                        self.latest_snapshot = dataclasses.replace(snapshot, fs=self._fs.snapshot())
                    except Exception:  # noqa: BLE001 - no snapshot: a stop then loses the state
                        self.latest_snapshot = None
        job.done.set()

    def cancel(self) -> None:
        """Stop the running call now; the interpreter is lost (reason ``cancelled``)."""
        self._abort(STOP_CANCELLED)

    def close(self) -> None:
        """End the interpreter and free its memory. Safe to call more than once."""
        if self._closing:
            return
        self._closing = True
        with self._cv:
            self._requests.append(b"")  # end of input: the runner returns
            self._cv.notify_all()
        thread = getattr(self, "_thread", None)
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            if self._call is not None and self._call is not self._boot:
                self._abort(STOP_CANCELLED)
            thread.join(5)
            if thread.is_alive():
                self._abort(STOP_CANCELLED, force=True)
                thread.join(5)
        _ticker.remove(self._engine)
        worker, self._tool_worker = self._tool_worker, None
        if worker is not None:
            worker.stop()
        if thread is not None and thread.is_alive():
            return  # still unwinding: leave the store to the garbage collector
        try:
            self._store.close()
        except Exception:
            pass

    # ------------------------------------------------------ reactor turns
    def _turn(self, source: bytes) -> None:
        """Run one turn of the reactor (on the session thread)."""
        assert self._memory is not None
        ptr = self._host_alloc(self._store, len(source))
        if not isinstance(ptr, int) or not ptr & U32:
            self._fail(STOP_MEMORY, "no memory left for the turn")
        self._memory.write(self._store, source, ptr & U32)
        self._turn_func(self._store, ptr, len(source))  # (the i32 as host_alloc gave it)

    def _serve_turns(self, store: wasmtime.Store) -> None:
        """The session thread of a reactor runtime: the boot turn (unless restored from
        a snapshot), then one turn per request; a snapshot after each answered turn."""
        if self._boot_source:
            self._turn(self._boot_source)
            self._boot_source = b""
            if self._boot.reply is None:
                self._fail(STOP_PROTOCOL, "the interpreter ended its boot without answering")
            self._after_turn()
        while True:
            _ticker.remove(self._engine)  # idle: no epoch to advance
            with self._cv:
                while (not self._requests and self._abort_reason is None and not self._jobs
                       and not (self._want_snapshot and self._snapshot_of != self._answered)):
                    self._cv.wait()
                if self._abort_reason is not None:
                    raise Abort(self._abort_reason)
                job = None
                if self._jobs and not (self._requests and not self._requests[0]):
                    job = self._jobs.pop(0)  # (the host's files; a close goes first)
                elif not self._requests:  # a snapshot of the interpreter as it is now
                    self._publish(self._capture_or_none())
                    continue
                else:
                    frame = self._requests.pop(0)
                    pending = self._pending
                    if not frame:
                        return  # closed
                    if pending is None or pending.frame is not frame:
                        continue
                    # (under the lock: a cancel sees either no call yet, and the loop stops
                    # before this one, or this call, and stops it in wasm)
                    self._call = pending
            if job is not None:
                self._run_files_job(job)
                continue
            self._inbuf = frame
            self._arm(pending)
            if self._abort_reason is not None:  # (cancelled while the call was armed)
                raise Abort(self._abort_reason)
            self._turn(STEP_SOURCE)
            self._inbuf = b""
            if pending.reply is None:
                self._fail(STOP_PROTOCOL, "the interpreter ended its turn without answering")
            self._after_turn()

    def _after_turn(self) -> None:
        """Between turns (the caller has its answer already): keep the rollback snapshot."""
        self._memory_bytes = self._read_memory_size()
        if self._keep_snapshots or self.latest_snapshot is None or self._want_snapshot:
            with self._cv:
                # the previous snapshot's pages, when nothing but this session holds it (a
                # copy into pages already mapped costs a tenth of one into new pages)
                old = self.latest_snapshot
                reuse = None
                if (old is not None and any(old.memory is b for b in self._buffers)
                        and sys.getrefcount(old) <= 3  # the attribute, `old`, the call
                        and all(ref() is None for ref in self._sharers)):
                    reuse = old.memory
                    self.latest_snapshot = None
                elif self._dirty_buffer is not None and (
                        old is None or old.memory is not self._dirty_buffer):
                    reuse = self._dirty_buffer  # (held by no snapshot: prepared at a restore)
                del old
                self._sharers = []  # (the next snapshot is in pages of its own)
            snapshot = self._capture_or_none(reuse)
            with self._cv:
                self._publish(snapshot)
        self._snapped.set()

    # ----------------------------------------------------------- internals
    def _outcome(self, call: CallState) -> CallOutcome:
        cap = call.limits.max_output_bytes
        out = call.stdout.decode("utf-8", "replace")
        err = call.stderr.decode("utf-8", "replace")
        if call.out_dropped:
            out += MARKER.format(what="stdout", cap=cap)
        if call.err_dropped:
            err += MARKER.format(what="stderr", cap=cap)
        fuel_used = None
        if call.limits.fuel is not None and call.fuel_left is not None:
            fuel_used = max(0, call.limits.fuel - call.fuel_left)
        end = call.ended or time.perf_counter()
        died = None
        reply = None
        if call.reply is None:
            died = self._dead or SessionDead(STOP_CRASH, "the interpreter stopped answering")
        else:
            try:
                reply = validate_call_reply(call.reply, call.call_id)
            except ProtocolError as e:
                died = SessionDead(STOP_PROTOCOL, str(e))
        return CallOutcome(reply, out, err, call.out_dropped, call.err_dropped, fuel_used,
                           max(0.0, end - call.started) if call.started else 0.0,
                           self._memory_bytes, call.call_id, died, bool(call.started))

    def _read_idle(self, address: int, size: int) -> bytes | None:
        """Guest memory at ``address`` (between turns, on a thread that owns the store)."""
        if self._memory is None or address <= 0:
            return None
        if address + size > self._memory.data_len(self._store):
            return None
        return bytes(self._memory.read(self._store, address, address + size))

    def on_epoch(self, context: Any) -> int | None:
        """The guest reached its epoch deadline (on this session's thread, in wasm; see
        streams.py): stop it (None) when asked to or at the call's deadline; else put
        streams that a burst switched to block buffering back to line buffering (the next
        line flushes what they hold), and return the ticks to the next check."""
        if self._abort_reason is not None:
            return None
        now = time.perf_counter()
        call = self._call
        deadline = call.deadline if call is not None else self._idle_deadline
        if now >= deadline:
            self._host_error = SessionDead(STOP_TIMEOUT, "deadline reached")
            return None
        layout = self._stream_layout
        if (call is not None and call is not self._boot and layout is not None
                and self._memory is not None):
            base, size = streams.memory_of(context, self._memory)
            for which in (0, 1):
                if streams.get_flag(base, size, layout, which) == 0:
                    streams.set_flag(base, size, layout, which, 1)
                    call.bursts.reopen(which, now)
        ticks = max(1, min(streams.FLUSH_TICKS, math.ceil((deadline - now) / TICK_SECONDS)))
        self._deadline_ticks = ticks
        return ticks

    def _abort(self, reason: str, force: bool = False) -> None:
        if self._abort_reason is None:
            self._abort_reason = reason
        with self._cv:
            self._cv.notify_all()
            # a cancel with no call in wasm (none taken yet, or the end of the previous
            # turn still running, after its answer): the serving loop stops before the
            # next call, and that turn ends and leaves its snapshot (the roll-back's), as
            # after any answered call
            if reason == STOP_CANCELLED and self._call is None and not force:
                return
        # push the epoch past any deadline: the guest stops at its next check
        for _ in range(max(self._deadline_ticks, streams.FLUSH_TICKS) + 2):
            self._engine.increment_epoch()

    def _arm(self, call: CallState) -> None:
        """Set fuel and deadline for ``call`` (on the session thread, or before it starts)."""
        call.started = time.perf_counter()
        call.deadline = call.started + call.limits.timeout_seconds
        if self._fuel_enabled:
            self._store.set_fuel(call.limits.fuel if call.limits.fuel is not None else 1 << 62)
        # (the epoch callback checks the deadline at least every FLUSH_TICKS ticks)
        ticks = min(streams.FLUSH_TICKS,
                    max(1, int(call.limits.timeout_seconds / TICK_SECONDS) + 1))
        self._deadline_ticks = ticks
        self._store.set_epoch_deadline(ticks)
        self._reader.reset(call.limits.max_reply_bytes)
        _ticker.add(self._engine)

    def _run(self) -> None:
        reason = STOP_CRASH
        detail = ""
        try:
            self._serve_turns(self._store)
            reason, detail = STOP_EXIT, "the interpreter exited"
        except wasmtime.ExitTrap as e:
            reason, detail = STOP_EXIT, f"the interpreter exited with status {e.code}"
        except wasmtime.Trap as e:
            code = e.trap_code
            if self._host_error is not None:
                reason, detail = self._host_error.reason, self._host_error.detail
            elif self._abort_reason is not None:
                reason = self._abort_reason
                detail = STOP_DETAIL.get(reason, reason)
            elif code == wasmtime.TrapCode.OUT_OF_FUEL:
                reason, detail = STOP_FUEL, "fuel exhausted"
            elif code == wasmtime.TrapCode.INTERRUPT:
                reason, detail = STOP_TIMEOUT, "deadline reached"
            elif code == wasmtime.TrapCode.STACK_OVERFLOW:
                reason, detail = STOP_STACK, "WebAssembly stack overflow"
            else:
                reason, detail = STOP_CRASH, f"WebAssembly trap: {e.message.splitlines()[0]}"
        except Abort:
            if self._host_error is not None:
                reason, detail = self._host_error.reason, self._host_error.detail
            else:
                reason = self._abort_reason or STOP_CANCELLED
                detail = STOP_DETAIL.get(reason, reason)
        except wasmtime.WasmtimeError as e:
            if self._host_error is not None:
                reason, detail = self._host_error.reason, self._host_error.detail
            elif self._abort_reason is not None:
                reason, detail = self._abort_reason, STOP_DETAIL.get(self._abort_reason, "")
            else:
                reason, detail = STOP_CRASH, f"interpreter failed: {str(e).splitlines()[0]}"
        except BaseException as e:  # a bug in our host functions: report, never hang
            reason, detail = STOP_CRASH, f"host error: {e!r}"
        if self._closing and reason in (STOP_EXIT, STOP_CANCELLED):
            reason, detail = STOP_CANCELLED, "the executor was closed"
        during = self._call is not None and self._call is not self._boot
        pending = self._pending
        if (not during and pending is not None and not pending.done.is_set()
                and self._snapshot_of == self._answered and self._boot.done.is_set()):
            # stopped before it took the call waiting for it, with the snapshot of its last
            # answered turn taken: that call is rolled back like one stopped while it ran
            during = True
        self._dead = SessionDead(reason, detail, during)
        tracker, self._dirty = self._dirty, None
        self._dirty_buffer = None
        if tracker is not None:
            tracker.close()
        call = self._call
        if call is not None:
            call.ended = time.perf_counter()
            if self._fuel_enabled:
                call.fuel_left = 0 if reason == STOP_FUEL else safe_fuel(self._store)
            self._memory_bytes = self._read_memory_size()
            call.done.set()
        pending = self._pending
        if pending is not None and not pending.done.is_set():
            pending.done.set()
        with self._cv:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            job.error = self._dead
            job.done.set()
        self._boot.done.set()

    # ------------------------------------------------------------ stopping
    def _read_memory_size(self) -> int:
        try:
            return self._memory.data_len(self._store) if self._memory else 0
        except Exception:
            return 0

    def _fail(self, reason: str, detail: str) -> None:
        self._host_error = SessionDead(reason, detail)
        raise Abort(detail)
