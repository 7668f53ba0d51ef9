"""Where interpreters come from, and who owns each one.

- Warm starts: the boot snapshot of each configuration (a template), and one interpreter
  restored from it waiting for the next agent (process-wide).
- :class:`SessionPool`: booted, never-used interpreters kept ready per configuration.
- :class:`AgentSupply`: the interpreters of one agent (the one it runs on, the standby kept
  restored for roll-backs, the spare booted after a loss) and its parked image. Every
  interpreter an executor uses comes from its supply, which is the one owner that closes it.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import parking, sharing
from .errors import ConfigurationError, ImageError
from .protocol import ResetReason
from .runtime import EngineSettings, load_runtime, missing_module_hint
from .session import Session
from .snapshot import Snapshot

# Warm starts (reactor runtimes): the snapshot of a freshly booted interpreter per
# configuration, taken once per process; later interpreters of that configuration start
# from it instead of booting and importing the default imports again. Each costs its
# linear memory (40-100 MB for the scientific runtime), so only the latest few are kept.
MAX_TEMPLATES = 4
_templates: OrderedDict[SessionKey, Snapshot] = OrderedDict()
_templates_lock = threading.Lock()


# ... and one interpreter already restored from each of them, waiting: restoring copies the
# whole snapshot into fresh pages (about 0.7 ms per MiB), which the agent then need not wait for
_standby: dict[SessionKey, Session] = {}
_standby_busy: set[SessionKey] = set()


def forget_templates() -> None:
    """Drop the boot snapshots kept for warm starts, and the interpreters waiting on them."""
    with _templates_lock:
        _templates.clear()
        waiting = list(_standby.values())
        _standby.clear()
    for session in waiting:
        session.close()


def template_of(key: SessionKey) -> Snapshot | None:
    """The boot snapshot kept for ``key`` (the warm-start template), if there is one."""
    with _templates_lock:
        return _templates.get(key)


def _prepare_standby(key: SessionKey, template: Snapshot) -> None:
    """Restore one interpreter from ``template`` in the background, for the next agent."""
    with _templates_lock:
        if key in _standby or key in _standby_busy:
            return
        _standby_busy.add(key)

    def restore() -> None:
        session = None
        try:
            session = key.restore(template)
        except Exception:  # noqa: BLE001 - the next agent restores (and reports) for itself
            pass
        with _templates_lock:
            _standby_busy.discard(key)
            if session is not None and _templates.get(key) is template and key not in _standby:
                _standby[key] = session
                session = None
        if session is not None:
            session.close()

    threading.Thread(target=restore, name="wasm-exec-standby", daemon=True).start()


@dataclass(frozen=True)
class SessionKey:
    """Everything that is fixed when an interpreter boots."""

    settings: EngineSettings
    profile: str
    allowed: frozenset[str]
    default_imports: tuple[tuple[str, str], ...]
    memory_bytes: int

    @classmethod
    def of(cls, settings: EngineSettings, allowed: frozenset[str],
           default_imports: Mapping[str, str], memory_bytes: int,
           profile: str = "minimal") -> SessionKey:
        return cls(settings, profile, frozenset(allowed), tuple(sorted(default_imports.items())),
                   memory_bytes)

    def start(self, keep_snapshots: bool = True) -> Session:
        """A new interpreter: from this configuration's boot snapshot when there is one, else
        booted (and its boot snapshot kept for the next)."""
        rt = load_runtime(self.settings, self.profile)
        with _templates_lock:
            template = _templates.get(self)
            waiting = _standby.pop(self, None)
            if template is not None:
                _templates.move_to_end(self)
        if template is not None:
            _prepare_standby(self, template)
            if waiting is not None and waiting.alive:
                waiting.keep_snapshots = keep_snapshots
                return waiting
            return self.restore(template, keep_snapshots=keep_snapshots)
        session = Session(rt, allowed=self.allowed, default_imports=dict(self.default_imports),
                          memory_bytes=self.memory_bytes, keep_snapshots=keep_snapshots)
        if not session.default_import_errors:
            boot = session.wait_snapshot()
            if boot is not None:
                # (in a memory file: interpreters restored from it map it copy-on-write)
                taken, boot = boot, sharing.shareable(boot)
                session.rebase(taken, boot)
                dropped = []
                with _templates_lock:
                    _templates[self] = boot
                    while len(_templates) > MAX_TEMPLATES:
                        old, _ = _templates.popitem(last=False)
                        if old in _standby:
                            dropped.append(_standby.pop(old))
                for waiting in dropped:
                    waiting.close()
                _prepare_standby(self, boot)
        return session

    def waiting(self, keep_snapshots: bool = True) -> Session | None:
        """The interpreter restored from this configuration's boot snapshot that waits for
        the next agent, if one does (another is then prepared in the background)."""
        with _templates_lock:
            template = _templates.get(self)
            waiting = _standby.pop(self, None)
        if template is not None:
            _prepare_standby(self, template)
        if waiting is not None and waiting.alive:
            waiting.keep_snapshots = keep_snapshots
            return waiting
        return None

    def restore(self, snapshot: Snapshot, keep_snapshots: bool = True) -> Session:
        """A new interpreter that continues from ``snapshot`` (reactor runtimes)."""
        return Session(load_runtime(self.settings, self.profile), allowed=self.allowed,
                       default_imports=dict(self.default_imports),
                       memory_bytes=self.memory_bytes, from_snapshot=snapshot,
                       keep_snapshots=keep_snapshots)


class SessionPool:
    """Keeps up to ``size`` booted, never-used interpreters ready per configuration.

    >>> pool = SessionPool(size=2)
    >>> ex = PythonExecExecutor(pool=pool)   # doctest: +SKIP
    >>> pool.close()

    A configuration becomes warm the first time an interpreter is taken for it; a
    background thread then refills it. Taking one costs a queue pop (well under a
    millisecond); when none is ready the caller boots one itself (about 50 ms). Each
    ready interpreter holds about 10-15 MB of memory.
    """

    def __init__(self, size: int = 2, *, refill_delay: float = 0.2) -> None:
        if size < 0:
            raise ValueError("pool size must be >= 0")
        self.size = size
        # a refill boots an interpreter (a core for ~60 ms): wait a little, so that the
        # agent that just took one gets its first result without competing for the CPU
        self.refill_delay = refill_delay
        self._ready: dict[SessionKey, list[Session]] = {}
        self._lock = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        # a pool dropped without close() ends its ready interpreters too (the refill
        # thread holds the pool only weakly, and only between its waits)
        self._shut = [False]  # (the refill thread's view of _closed)
        self._finalizer = weakref.finalize(self, _close_ready, self._ready, self._lock,
                                           self._shut)

    def take(self, key: SessionKey) -> Session:
        """A ready interpreter for ``key`` (booted now if none is waiting)."""
        session = self.take_ready(key)
        if session is not None:
            return session
        # none waiting: boot one for the caller first, then refill (two boots at once
        # would only slow each other down)
        session = key.start()
        with self._lock:
            self._wake()
        return session

    def take_ready(self, key: SessionKey) -> Session | None:
        """A ready interpreter for ``key`` if one is waiting (None, without booting, when
        none is)."""
        with self._lock:
            ready = self._ready.setdefault(key, [])
            while ready:
                candidate = ready.pop()
                if candidate.alive:
                    self._wake()
                    return candidate
        return None

    def warm(self, key: SessionKey) -> None:
        """Start filling the pool for ``key`` now (without taking anything)."""
        with self._lock:
            self._ready.setdefault(key, [])
            self._wake()

    def ready_count(self, key: SessionKey) -> int:
        with self._lock:
            return len(self._ready.get(key, ()))

    def close(self) -> None:
        """Stop refilling and end every waiting interpreter."""
        with self._lock:
            self._closed = True
        self._finalizer()

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        if self.size == 0 or self._closed:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=_fill, args=(weakref.ref(self),),
                                            daemon=True, name="wasm-exec-pool")
            self._thread.start()
        self._lock.notify_all()


def _close_ready(ready: dict[SessionKey, list[Session]], lock: threading.Condition,
                 shut: list[bool]) -> None:
    """End a pool's waiting interpreters (its close(), or the pool was collected)."""
    with lock:
        shut[0] = True
        sessions = [s for waiting in ready.values() for s in waiting]
        ready.clear()
        lock.notify_all()
    for s in sessions:
        s.close()


def _fill(ref: weakref.ReferenceType[SessionPool]) -> None:
    """The refill thread: holds its pool only while it looks at it, never while it waits
    or boots (a pool dropped without close() is collected and ends what it holds)."""
    pool = ref()
    if pool is None:
        return
    lock, ready, shut, delay = pool._lock, pool._ready, pool._shut, pool.refill_delay
    del pool
    while True:
        with lock:
            if shut[0]:
                return
            pool = ref()
            size = pool.size if pool is not None else 0
            del pool
            want = [k for k, v in ready.items() if len(v) < size]
            if not want:
                if not lock.wait(timeout=30):
                    if not any(len(v) < size for v in ready.values()):
                        pool = ref()
                        if pool is not None:
                            pool._thread = None
                        del pool
                        return
                continue
        key = want[0]
        if delay:
            with lock:
                lock.wait(delay)
                if shut[0]:
                    return
        try:
            session = key.start()
        except Exception:  # a config that cannot boot: leave it to the caller
            with lock:
                ready.pop(key, None)
            continue
        with lock:
            if shut[0]:
                session.close()
                return
            ready.setdefault(key, []).append(session)


class AgentSupply:
    """The interpreters of one agent, and their one owner.

    ``current`` is the interpreter the agent runs on (None after a release or a park).
    Besides it the supply may hold: the *standby*, an interpreter kept restored from a
    roll-back snapshot, so that the next roll-back reloads pages that are mapped already;
    the *spare*, booted in the background after the agent lost its interpreter, so that the
    next call does not wait for a boot (without a pool: a pool does this itself); and the
    agent's *parked image* while it is parked. The executor asks the supply for an
    interpreter and hands back the ones it is done with (:meth:`discard`); it never makes
    or closes one itself.

    All methods run with the executor's lock held (``lock``: the standby, made on a thread
    of its own, takes it to hand itself over), except :meth:`close` and :meth:`free`.
    The boot thread of a spare holds only the spare list and the ``gone`` flag, so that an
    executor dropped unclosed is collected and its finalizer (:meth:`free`) frees the
    spare too.
    """

    def __init__(self, key: SessionKey, *, pool: SessionPool | None, rollback: bool,
                 rollback_standby: bool, lock: threading.RLock,
                 default_imports: Mapping[str, str], runtime: str) -> None:
        self.key = key
        self.pool = pool
        self.rollback = rollback  # (snapshots are kept after each call)
        self.rollback_standby = rollback_standby  # (a standby from the first call on)
        self.closed = False
        self.current: Session | None = None
        self.standby: Session | None = None
        self.standby_thread: threading.Thread | None = None
        self.spare_thread: threading.Thread | None = None
        self._spares: list[Session] = []
        self._gone = [False]  # set once the executor is closed or collected
        self._parked: tuple[parking.ParkingLot, int] | None = None
        self._lock = lock
        self._default_imports = dict(default_imports)
        self._runtime = runtime
        # makes room for an interpreter of this agent's, and may hand over one it freed by
        # parking another agent (set by a resolver through the executor)
        self.room: Callable[[], Session | None] = _no_room

    # ---------------------------------------------------------- the current one
    def new(self) -> Session:
        """A fresh interpreter of this configuration: the spare, a pooled one or a new one
        (ConfigurationError when the runtime cannot provide a default import)."""
        session = self._take_spare()
        if session is None:
            session = (self.pool.take(self.key) if self.pool is not None
                       else self.key.start(keep_snapshots=self.rollback))
        session.keep_snapshots = self.rollback
        if session.default_import_errors:
            session.close()
            problems = "; ".join(
                f"{alias!r} ({self._default_imports[alias]!r}): {err}"
                + missing_module_hint(self._default_imports[alias], self._runtime)
                for alias, err in session.default_import_errors.items())
            raise ConfigurationError(f"default imports that the runtime cannot provide: "
                                     f"{problems}")
        return session

    def restore(self, snapshot: Snapshot) -> Session:
        """A new interpreter continuing from ``snapshot`` (ValueError: it does not fit)."""
        return self.key.restore(snapshot, keep_snapshots=self.rollback)

    def adopt(self, session: Session) -> Session:
        """Make ``session`` the agent's interpreter."""
        self.current = session
        return session

    def ready(self) -> tuple[Session, ResetReason | None]:
        """The agent's interpreter, alive: the current one, else the one to go on with
        (see :meth:`continue_after`), and why the agent lost its state (None: it did not)."""
        session = self.current
        if session is not None and session.alive:
            return session, None
        return self.continue_after(session)

    def continue_after(self, dead: Session | None) -> tuple[Session, ResetReason | None]:
        """The interpreter to go on with when the current one is gone (``dead``: None after
        a release or a park). One that died between calls (a cancel that landed before its
        request was handed over, say) continues from the snapshot of its last answered
        call, so the agent keeps its state; a parked agent is unparked; else a fresh
        interpreter, and the reason the next result gives."""
        if dead is None:
            if self._parked is not None:
                return self._unpark()
            return self.replace(), None
        died = dead.dead
        snapshot = (dead.current_snapshot() if self.rollback and not self.closed
                    and (died is None or died.reason != "protocol") else None)
        # (no spare: the replacement is made now, after the owner has made room for it)
        if self.roll_back(dead, snapshot, spare=False):
            assert self.current is not None
            return self.current, None
        return self.replace(), "lost"

    def replace(self) -> Session:
        """A fresh interpreter for the agent (its state, and its parked image, are gone)."""
        old = self.current
        if old is not None:
            self.discard(old)
        self.forget_parked()
        freed = self.room()
        if freed is not None:  # (another agent's memory: a fresh interpreter is wanted)
            self.discard(freed)
        return self.adopt(self.new())

    def release(self) -> Session | None:
        """Detach the agent's interpreter (returned: the caller closes it) and its standby."""
        session, self.current = self.current, None
        self.drop_standby()
        return session

    def discard(self, session: Session) -> None:
        """Done with ``session``: closed (on a thread of its own when it is alive, so that
        the caller does not wait for its thread to end)."""
        if self.current is session:
            self.current = None
        if session.alive:
            threading.Thread(target=session.close, daemon=True).start()
        else:
            session.close()

    # ---------------------------------------------------------- roll-back
    def roll_back(self, session: Session, snapshot: Snapshot | None, *,
                  spare: bool = True) -> bool:
        """Replace ``session`` (stopped, or lost) by an interpreter continuing from
        ``snapshot``. False when there is none to continue from (no snapshot, the supply is
        closed, or restoring failed): the agent has no interpreter then, and (``spare``) a
        spare boots in the background for its next call."""
        self.discard(session)
        if snapshot is not None and not self.closed:
            restored = self._restore_for_rollback(snapshot)
            if restored is not None:
                self.adopt(restored)
                return True
        if spare:
            self.prepare_spare()
        return False

    def after_answer(self, session: Session) -> None:
        """A call was answered: with ``rollback_standby``, a standby is prepared from its
        snapshot (once)."""
        if self.rollback_standby and self.rollback and self.standby is None:
            snapshot = session.latest_snapshot
            if snapshot is not None:
                self._prepare_standby(snapshot)

    def _restore_for_rollback(self, snapshot: Snapshot) -> Session | None:
        """An interpreter continuing from ``snapshot``: the standby when it is ready
        (prepared after this agent's previous roll-back: agents that hit a limit once tend
        to again), else restored now."""
        standby, self.standby = self.standby, None
        restored = None
        if standby is not None:
            if standby.reload(snapshot, self.key.memory_bytes):
                restored = standby
            else:
                self.discard(standby)
        if restored is None:
            try:
                restored = self.restore(snapshot)
            except Exception:  # noqa: BLE001 - a fresh interpreter instead
                return None
        restored.keep_snapshots = self.rollback
        self._prepare_standby(snapshot)
        return restored

    def _prepare_standby(self, snapshot: Snapshot) -> None:
        """Restore an interpreter from ``snapshot`` in the background, to be reloaded with
        the snapshot of the moment at the next stop (its pages are then mapped already)."""
        if self.standby_thread is not None and self.standby_thread.is_alive():
            return

        def make() -> None:
            try:
                session = self.restore(snapshot)
            except Exception:  # noqa: BLE001 - the next stop restores for itself
                return
            with self._lock:
                if self.closed or self.standby is not None:
                    session.close()
                else:
                    self.standby = session

        self.standby_thread = threading.Thread(target=make, daemon=True,
                                               name="wasm-exec-rollback-standby")
        self.standby_thread.start()

    def drop_standby(self) -> None:
        standby, self.standby = self.standby, None
        if standby is not None:
            standby.close()

    # ---------------------------------------------------------- spares
    def prepare_spare(self) -> None:
        """Boot the next interpreter in the background after a loss, so that the call
        after a limit does not wait for it (with a pool, the pool does this)."""
        if self.pool is not None or self.closed or self.spare_thread is not None:
            return

        key, spares, gone = self.key, self._spares, self._gone

        def boot() -> None:
            try:
                session = key.start()
            except Exception:  # noqa: BLE001 - the next call boots (and reports) for itself
                return
            spares.append(session)
            if gone[0]:  # closed or collected meanwhile (it set the flag, then drained)
                _drain(spares)

        self.spare_thread = threading.Thread(target=boot, daemon=True, name="wasm-exec-spare")
        self.spare_thread.start()

    def _take_spare(self) -> Session | None:
        spare, self.spare_thread = self.spare_thread, None
        if spare is not None:
            spare.join(60)
        while self._spares:
            session = self._spares.pop()
            if session.alive:
                return session
        return None

    # ---------------------------------------------------------- copies
    def copy_of(self, snapshot: Snapshot, base: Snapshot | None = None,
                pages: list[int] | None = None) -> Session:
        """A new interpreter continuing from ``snapshot``, with fresh random numbers: a
        ready one of this configuration (its pages are mapped already, so the snapshot is
        copied at memory speed) reloaded with it, else one restored from it (into new
        pages). ValueError when the snapshot does not fit."""
        session = self._take_spare()
        if session is None and self.pool is not None:
            session = self.pool.take_ready(self.key)
        if session is None:
            session = self.key.waiting(keep_snapshots=self.rollback)
        if session is not None:
            if session.reload(snapshot, self.key.memory_bytes, base=base, pages=pages):
                session.keep_snapshots = self.rollback
                return session
            session.close()
        return self.restore(snapshot)

    # ---------------------------------------------------------- parking
    @property
    def parked(self) -> bool:
        """Whether the agent is parked (its state kept as an image; no interpreter)."""
        entry = self._parked
        return entry is not None and entry[1] in entry[0]

    def park(self, lot: parking.ParkingLot) -> tuple[Session | None, ResetReason | None]:
        """Park the agent in ``lot``: its interpreter is kept as the pages that differ from
        its configuration's boot snapshot, and its next call continues from them. Returns
        the interpreter freed (alive, for another agent to take over) or None, and, when
        the agent could not be parked (no snapshot, or the lot refused it) and was
        released instead, the reason its next result gives."""
        session = self.current
        if self.closed or session is None:
            return None, None
        self.current = None
        self.drop_standby()
        died = session.dead
        snapshot = (session.current_snapshot()
                    if died is None or died.reason != "protocol" else None)
        if snapshot is None and session.alive:
            snapshot = session.wait_snapshot(5.0, current=True)
        parked = None
        if snapshot is not None:
            base = template_of(self.key)
            try:
                parked = parking.park(snapshot, base, session.pages_changed_from(base)
                                      if base is not None else None)
            except Exception:  # noqa: BLE001 - not parked: released instead
                parked = None
        ticket = lot.new_ticket()
        reason: ResetReason | None = None
        if parked is not None and lot.put(ticket, parked, session.fs):
            self._parked = (lot, ticket)
            if session.alive:
                session.mark_parked(parked)
                return session, None
        else:
            reason = ("park_dropped" if parked is not None
                      else "evicted" if session.alive else "lost")
        self.discard(session)
        return None, reason

    def _unpark(self) -> tuple[Session, ResetReason | None]:
        """The interpreter of this parked agent, its parked image written back (into an
        interpreter freed for it, else a fresh one); a fresh one when the image was
        dropped (over the parking budget) or cannot be used."""
        entry, self._parked = self._parked, None
        assert entry is not None
        lot, ticket = entry
        taken = lot.take(ticket)  # (first: the room made for it must not drop it)
        freed = self.room()
        memory_bytes = self.key.memory_bytes
        try:
            target = freed if freed is not None else self.new()
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
                    self.discard(target)
                    target = self.new()
                session = target
            elif target.become(parked, contents, memory_bytes):
                session = target
            else:
                self.discard(target)
                if target is freed:
                    freed = None
                session = self.new()
                if not session.become(parked, contents, memory_bytes):
                    self.discard(session)
                    try:
                        session = self.restore(parked.materialize())
                    except Exception:  # noqa: BLE001 - its state is gone: a fresh one
                        session, reason = self.new(), "park_failed"
            if session is freed:
                freed = None
        finally:
            if freed is not None:
                self.discard(freed)
        session.keep_snapshots = self.rollback
        return self.adopt(session), reason

    def forget_parked(self) -> None:
        """Free the agent's parked image (reset, close)."""
        entry, self._parked = self._parked, None
        if entry is not None:
            entry[0].discard(entry[1])

    # ---------------------------------------------------------- the end
    def close(self) -> None:
        """Close every interpreter of the agent and free its parked image (the executor's
        close: a call running now is stopped first, then the rest under the lock)."""
        self.closed = True
        self._gone[0] = True
        running = self.current
        if running is not None:
            running.close()  # (it holds the lock while it runs)
        with self._lock:
            session, self.current = self.current, None
        if session is not None:
            session.close()
        with self._lock:
            self.drop_standby()
            self.forget_parked()
        spare = self.spare_thread
        if spare is not None:
            spare.join(60)
        _drain(self._spares)

    def free(self) -> None:
        """Free everything without waiting (the executor was collected unclosed)."""
        # (no lock: this also runs at interpreter exit, where a call running on a daemon
        # thread holds it; closing its interpreter stops that call at once)
        self._gone[0] = True
        self.closed = True  # (a standby handed over from now on closes itself)
        self.forget_parked()
        for session in (self.current, self.standby):
            if session is not None:
                session.close()
        _drain(self._spares)


def _no_room() -> Session | None:
    return None


def _drain(sessions: list[Session]) -> None:
    while sessions:
        try:
            session = sessions.pop()
        except IndexError:  # (another thread drained it meanwhile)
            return
        session.close()
