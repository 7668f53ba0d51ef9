"""Pre-started interpreters, so that a new agent (or a reset) does not wait for a boot."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from . import sharing
from .runtime import EngineSettings, load_runtime
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
