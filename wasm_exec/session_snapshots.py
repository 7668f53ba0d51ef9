"""How a session takes snapshots and continues from them (:class:`SessionSnapshots`, a
base class of :class:`~wasm_exec.session.Session`): the snapshot taken after each
answered turn, waiting for one, restoring and reloading, and parking."""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import wasmtime

from . import sharing, streams
from .dirty import DirtyPages, open_tracker
from .pages import PAGE, Pinned, changed_pages
from .protocol import ReplyReader
from .snapshot import Snapshot
from .turns import CLOCK_ORIGIN, CallState, SessionDead

if TYPE_CHECKING:
    from .parking import ParkedImage
    from .runtime import LoadedRuntime
    from .vfs import MemoryFS


class SessionSnapshots:
    """How a :class:`~wasm_exec.session.Session` takes snapshots and continues from them
    (a base class of it): the snapshot taken after each answered turn (only the pages the
    turn wrote, where the kernel lists them), waiting for one, restoring one into a fresh
    instance or reloading one into a live interpreter, and parking (``mark_parked``,
    ``become``: writing only the pages two agents differ in).

    Runs on the session's thread (taking) or with the session idle (restoring); uses the
    session's memory, store, file system and turn counters.
    """

    latest_snapshot: Snapshot | None
    default_import_errors: dict[str, str]
    calls: int
    _keep_snapshots: bool
    _reseed: bool
    _mono_shift: int
    _snapped: threading.Event
    _answered: int
    _snapshot_of: int
    _want_snapshot: bool
    _buffers: list[mmap.mmap]
    _sharers: list[weakref.ref[Snapshot]]
    _parked_as: tuple[ParkedImage, int] | None
    _dirty: DirtyPages | None
    _dirty_tried: bool
    _dirty_buffer: mmap.mmap | None
    _touched: set[int] | None
    _touched_base: Snapshot | None
    _boot_source: bytes
    _memory_bytes: int
    _store: wasmtime.Store
    _memory: wasmtime.Memory | None
    _runtime: LoadedRuntime
    _fs: MemoryFS
    _token: bytes
    _reader: ReplyReader
    _cv: threading.Condition
    _lock: threading.Lock
    _requests: list[bytes]
    _call: CallState | None
    _boot: CallState
    _dead: SessionDead | None
    _closing: bool
    _stream_layout: streams.StreamLayout | None

    def _read_idle(self, address: int, size: int) -> bytes | None:
        raise NotImplementedError  # (the session's)

    @property
    def keep_snapshots(self) -> bool:
        return self._keep_snapshots

    @keep_snapshots.setter
    def keep_snapshots(self, value: bool) -> None:
        self._keep_snapshots = bool(value)

    def wait_snapshot(self, timeout: float = 30.0, current: bool = False) -> Snapshot | None:
        """The latest snapshot of the interpreter (None when it died before one was taken).
        With ``current``, one taken after the last answered call (waiting for it, or asking
        for one)."""
        self._snapped.wait(timeout)
        if not current:
            return self.latest_snapshot
        with self._cv:
            if not self._await_answered_snapshot(timeout):
                return None
            return self.latest_snapshot if self._dead is None else None

    def answered_snapshot(self, timeout: float = 30.0) -> Snapshot | None:
        """The snapshot taken after the last answered call (waiting for it, or asking for
        one), also when the interpreter has stopped since (as a roll-back uses it); None
        when there is none (the interpreter died before it was taken)."""
        with self._cv:
            if not self._await_answered_snapshot(timeout):
                return None
            return self.latest_snapshot if self._snapshot_of == self._answered else None

    def _await_answered_snapshot(self, timeout: float) -> bool:
        """With ``self._cv`` held: ask for a snapshot of the last answered call and wait
        until it is taken or the interpreter died; False when ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        while self._snapshot_of != self._answered and self._dead is None:
            self._want_snapshot = True
            self._cv.notify_all()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._cv.wait(min(left, 0.05))  # (a death is not notified)
        return True

    def current_snapshot(self) -> Snapshot | None:
        """The snapshot taken after the last answered turn (None when there is none: the
        turn after it was not imaged, or the interpreter died first)."""
        if not self._snapped.is_set():
            return None
        with self._cv:
            return self.latest_snapshot if self._snapshot_of == self._answered else None

    def reload(self, snapshot: Snapshot, memory_bytes: int, *,
               base: Snapshot | None = None, pages: list[int] | None = None) -> bool:
        """Make this restored, never-used interpreter that of ``snapshot`` instead, writing
        only the pages that differ (``pages``: those that can, when this interpreter is
        ``base``'s, never used since it was restored from it; else the memory is compared
        first). False when it cannot (it was used, died, or holds more memory than the
        snapshot)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if (self._dead is not None or self._closing or self.calls or self._answered
                    or self._call is not None or self._memory is None
                    or self._memory.data_len(self._store) > snapshot.size):
                return False
            # (this memory is that of `pristine`, a snapshot in host memory: the pages to
            # write are found by comparing the two snapshots, not by reading this memory)
            pristine = (self._touched_base if self._touched == set()
                        and self.latest_snapshot is self._touched_base else None)
            known = None
            if pristine is not None:

                known = (pages if base is pristine and pages is not None
                         else list(changed_pages(snapshot.memory, snapshot.size, pristine.memory,
                                                 pristine.size)))
            self._restore(snapshot, memory_bytes, pages=known)
            return True
        finally:
            self._lock.release()

    def mark_parked(self, parked: ParkedImage) -> None:
        """This interpreter's agent was parked as ``parked`` (a snapshot of its memory as it
        is now): another agent may :meth:`become` it by writing only changed pages."""
        self._parked_as = (parked, self._answered)

    def become(self, target: ParkedImage, contents: bytes, memory_bytes: int, *,
               reseed: bool = False) -> bool:
        """Make this idle interpreter the one parked as ``target`` (``contents``: its
        pages), writing only the pages that differ: possible when this interpreter's
        memory is ``target``'s base (restored from it and never used since) or a snapshot
        parked on the same base (see :meth:`mark_parked`; not used since). Writes the
        same pages into its roll-back snapshot when that is its own; else copies the memory
        once. False (nothing changed) when it cannot. ``reseed``: fresh random numbers
        (a copy of an agent, not the agent itself)."""

        if not self._lock.acquire(blocking=False):
            return False
        try:
            with self._cv:
                idle = (self._dead is None and not self._closing and self._call is None
                        and not self._requests and self._memory is not None
                        and self._snapshot_of == self._answered and self._snapped.is_set()
                        and self._boot.done.is_set())
            if not idle or target.runtime_sha256 != self._runtime.pin.sha256:
                return False
            if target.size > memory_bytes or len(contents) != PAGE * len(target.pages) \
                    or target.fs is None:
                return False
            parked = self._parked_as
            if (parked is not None and parked[1] == self._answered
                    and parked[0].base is target.base):
                previous, have = parked[0].pages, parked[0].size
            elif (self.calls == 0 and target.base is not None
                  and self.latest_snapshot is target.base):
                previous, have = (), target.base.size
            else:
                return False
            assert self._memory is not None
            if self._memory.data_len(self._store) != have or have > target.size:
                return False
            self._parked_as = None
            if target.size > have:
                self._memory.grow(self._store, (target.size - have + 65535) // 65536)
            wanted = set(target.pages)
            back = [p for p in previous if p not in wanted]
            old_contents = target.base_pages(back) if back else b""
            writes = [(p, old_contents, i) for i, p in enumerate(back)]
            writes += [(p, contents, i) for i, p in enumerate(target.pages)]
            base = ctypes.addressof(self._memory.data_ptr(self._store).contents)
            # the roll-back snapshot: its own buffer when it is a copy of this memory (it is
            # patched alike), else a full copy of the memory once it is written
            old = self.latest_snapshot
            image_buf = None
            if (old is not None and old is not target.base and target.size == old.size
                    and any(old.memory is b for b in self._buffers)
                    and sys.getrefcount(old) <= 3):  # (the attribute, `old`, the call)
                image_buf = old.memory
            elif (self._dirty_buffer is not None and have == target.size
                  and len(self._dirty_buffer) == target.size
                  and (old is None or old.memory is not self._dirty_buffer)):
                image_buf = self._dirty_buffer  # (the memory's copy, held by no snapshot)
            del old
            pinned = Pinned(image_buf) if image_buf is not None else None
            try:
                for p, src, i in writes:
                    chunk = src[i * PAGE:(i + 1) * PAGE]
                    ctypes.memmove(base + p * PAGE, chunk, PAGE)
                    if pinned is not None:
                        ctypes.memmove(pinned.address + p * PAGE, chunk, PAGE)
            finally:
                if pinned is not None:
                    pinned.release()
            if image_buf is None:
                image_buf = mmap.mmap(-1, max(target.size, 1))
                ctypes.memmove((ctypes.c_char * target.size).from_buffer(image_buf), base,
                               target.size)
                self._buffers = (self._buffers + [image_buf])[-2:]
                self._dirty_buffer = None  # (the next snapshot copies it all once)
            if self._dirty is not None and target.base is not None:
                # (what it wrote is listed too: only these pages can differ from the base)
                self._touched, self._touched_base = set(target.pages), target.base
            else:
                self._touched = None
            self._take_identity(target.fs, target.default_import_errors, target.token,
                                target.monotonic_ns, reseed=reseed)
            self._memory_bytes = target.size
            with self._cv:
                self._stream_layout = self._layout_for(target.streams)
                self.latest_snapshot = Snapshot(
                    image_buf, target.fs, dict(target.default_import_errors),
                    target.monotonic_ns, target.runtime_sha256, target.token,
                    self._stream_layout)
                self._snapshot_of = self._answered
            return True
        finally:
            self._lock.release()

    def _capture_or_none(self, reuse: mmap.mmap | None = None) -> Snapshot | None:
        try:
            return self._capture(reuse)
        except Exception:  # noqa: BLE001 - no snapshot: a stop then loses the interpreter
            return None

    def _publish(self, snapshot: Snapshot | None) -> None:
        """Make ``snapshot`` the latest, taken after the last answer (hold ``self._cv``)."""
        self.latest_snapshot = snapshot
        self._snapshot_of = self._answered
        self._want_snapshot = False
        self._cv.notify_all()

    def _capture(self, reuse: mmap.mmap | None = None) -> Snapshot:
        assert self._memory is not None and self._fs is not None
        fs_state = self._fs.snapshot()  # (first: if it fails, no page was overwritten)
        base = ctypes.addressof(self._memory.data_ptr(self._store).contents)
        size = self._memory.data_len(self._store)
        # anonymous pages (no zero-filling under the GIL), filled by ctypes.memmove, which
        # releases the GIL: the caller, who has its answer already, goes on on the other
        # core while the interpreter's memory is copied
        if reuse is not None and len(reuse) == size:
            copy = reuse
        else:
            copy = mmap.mmap(-1, max(size, 1))
            self._buffers = [b for b in self._buffers if b is not reuse] + [copy]
            self._buffers = self._buffers[-2:]
        target = ctypes.addressof((ctypes.c_char * size).from_buffer(copy))
        regions = self._written(base, size)
        if regions is not None and copy is self._dirty_buffer:
            # only what the turn (or the host) wrote since the snapshot this buffer holds
            for lo, hi in regions:
                ctypes.memmove(target + lo, base + lo, hi - lo)
        else:
            ctypes.memmove(target, base, size)
            if regions is None:
                self._touched = None
                self._track(base, size)
        self._dirty_buffer = copy if self._dirty is not None else None
        if self._touched is not None and regions is not None:
            for lo, hi in regions:
                self._touched.update(range(lo // 4096, hi // 4096))
        snapshot = Snapshot(copy, fs_state,
                            dict(self.default_import_errors),
                            time.monotonic_ns() - CLOCK_ORIGIN + self._mono_shift,
                            self._runtime.pin.sha256, self._token, self._stream_layout)
        if regions is None and self._dirty is not None:
            # tracked from now on: only the pages written later can differ from this snapshot
            self._touched, self._touched_base = set(), snapshot
        return snapshot

    def rebase(self, snapshot: Snapshot, same: Snapshot) -> None:
        """``same`` is a copy of ``snapshot`` (the same bytes): what this interpreter knows
        relative to ``snapshot`` holds relative to ``same`` too."""
        with self._cv:
            if self._touched_base is snapshot:
                self._touched_base = same

    def _written(self, base: int, size: int) -> list[tuple[int, int]] | None:
        """The ranges of the memory written since the last snapshot (None: unknown); a part
        the memory grew by counts as written (and is tracked from now on)."""
        tracker = self._dirty
        if tracker is None:
            return None
        start, length = tracker.tracked
        if start != base or not 0 < length <= size:
            return None
        try:
            regions = tracker.written(base, length)
            if size > length:
                tracker.track(base, size)
                regions.append((length, size))
            return regions
        except OSError:
            self._dirty = None
            tracker.close()
            return None

    def _track(self, base: int, size: int) -> bool:
        """Start (or go on) listing the pages written from now on."""
        if self._dirty is None:
            if self._dirty_tried:
                return False
            self._dirty_tried = True
            self._dirty = open_tracker()
            if self._dirty is None:
                return False
        try:
            self._dirty.track(base, size)
            return True
        except OSError:
            tracker, self._dirty = self._dirty, None
            tracker.close()
            return False

    def pages_changed_from(self, snapshot: Snapshot) -> list[int] | None:
        """The pages that can differ from ``snapshot`` (written since the memory was that
        snapshot's, as of the latest snapshot taken); None when that is not known."""
        with self._cv:
            if (self._touched is None or self._touched_base is not snapshot
                    or self._snapshot_of != self._answered):
                return None
            return sorted(self._touched)

    def _restore(self, snapshot: Snapshot, memory_bytes: int, fresh: bool = False,
                 pages: list[int] | None = None) -> None:
        """Make this instance the interpreter of ``snapshot`` (before its thread runs).

        ``fresh``: the instance was just made, so its memory is the module's baked
        memory, mapped copy-on-write from the compiled file: only the pages where the
        snapshot differs from it are written (the rest stays shared by every interpreter).
        ``pages``: the only pages where the snapshot can differ from this memory. Otherwise
        the memory is compared with the snapshot and only the pages that differ written."""
        self._dirty_buffer = None
        self._touched = None
        assert self._memory is not None and self._fs is not None
        if snapshot.runtime_sha256 != self._runtime.pin.sha256:
            raise ValueError("the memory snapshot belongs to another runtime build")
        if snapshot.size > memory_bytes:
            raise ValueError(f"the memory snapshot needs {snapshot.size} bytes of memory; the "
                             f"memory limit is {memory_bytes} (limits.memory_bytes)")
        page = 65536
        have = self._memory.data_len(self._store)
        if snapshot.size > have:
            self._memory.grow(self._store, (snapshot.size - have + page - 1) // page)
        base = ctypes.addressof(self._memory.data_ptr(self._store).contents)
        source = snapshot.memory
        src = (ctypes.cast(ctypes.c_char_p(source), ctypes.c_void_p).value or 0
               if isinstance(source, bytes)
               else ctypes.addressof((ctypes.c_char * snapshot.size).from_buffer(source)))
        if fresh and snapshot.size >= have:
            baked = sharing.baked_memory(self._runtime.pin.sha256, base, have)
            for off, length in sharing.differing_runs(snapshot, baked):
                ctypes.memmove(base + off, src + off, length)
        elif pages is not None:
            for p in pages:
                at = p * 4096
                if at < snapshot.size:
                    ctypes.memmove(base + at, src + at, min(4096, snapshot.size - at))
        else:
            sharing.write_differences(base, src, snapshot.size)
        # from now on the written pages are listed (see _capture): for parking, only they
        # can differ from this snapshot
        if self._track(base, self._memory.data_len(self._store)):
            self._touched, self._touched_base = set(), snapshot
            # a roll-back snapshot that starts as a copy-on-write mapping of this one (when
            # it is in a memory file: a boot snapshot): the first snapshot after a call copies
            # only the pages written
            cow = sharing.cow_copy(snapshot)
            if cow is not None:
                self._buffers = (self._buffers + [cow])[-2:]
                self._dirty_buffer = cow
        self._parked_as = None
        self._boot_source = b""
        self._take_identity(snapshot.fs, snapshot.default_import_errors, snapshot.token,
                            snapshot.monotonic_ns, reseed=True)
        # the streams are where the snapshot's interpreter found them at its boot; a
        # snapshot that does not say (an image file of an older version) has its streams
        # left alone
        self._stream_layout = self._layout_for(snapshot.streams)
        self.latest_snapshot = snapshot
        self._answered = self._snapshot_of = 0
        self._snapped.set()
        self._boot.reply = {"id": 0, "ready": True, "errors": self.default_import_errors}
        self._boot.done.set()

    def _take_identity(self, fs: Any, default_import_errors: dict[str, str], token: bytes,
                       monotonic_ns: int, *, reseed: bool) -> None:
        """Become the interpreter a snapshot (or a parked image) was taken of, as far as
        the host knows it: its files, the token its runner holds (sent to no one: a copy
        of an interpreter answers on its own channel only), fresh random numbers at the
        next call when ``reseed``, and a monotonic clock that never goes back."""
        self._fs.restore(fs)
        self.default_import_errors = dict(default_import_errors)
        self._token = token
        self._reader = ReplyReader(self._token, 1 << 20)
        self._reseed = reseed
        now = time.monotonic_ns() - CLOCK_ORIGIN
        self._mono_shift = max(0, monotonic_ns - now)

    def _layout_for(self, carried: streams.StreamLayout | None) -> streams.StreamLayout | None:
        """The stream layout of an interpreter continued from a snapshot that carried
        ``carried``, if it holds in its memory now."""
        if carried is None or not streams.layout_holds(carried, self._read_idle):
            return None
        return carried
