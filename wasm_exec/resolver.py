"""One executor per agent: :class:`PythonExecExecutorResolver`."""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from .config import Limits, configure
from .errors import ConfigurationError, ExecutorClosedError
from .executor import PythonExecExecutor
from .parking import ParkingLot
from .session import Session
from .state_store import (
    StateStore,
    StateStoreError,
    check_key,
    open_state_store,
    state_name,
)
from .supply import SessionPool

# an agent's identity: its id and the scope parts after it, kept apart (never joined)
AgentKey = tuple[str, ...]


def _key(agent_id: str, scope: tuple[str, ...]) -> AgentKey:
    parts = []
    for part in (agent_id, *scope):
        if type(part) is not str:
            if not isinstance(part, str):
                raise TypeError(f"an agent id and its scope parts must be str, not "
                                f"{type(part).__name__} ({part!r})")
            part = str.__str__(part)  # (a subclass's own __eq__ / __hash__ play no part)
        parts.append(part)
    return tuple(parts)


class PythonExecExecutorResolver:
    """Hands each agent its own persistent sandboxed interpreter.

    >>> resolver = PythonExecExecutorResolver(whitelisted_imports=["math"])
    >>> resolver.resolve("agent-1").execute("import math\\nr = math.pi").success
    True
    >>> resolver.close()

    The same agent id gets the same executor back (its state kept); different agents are
    isolated. ``pool_size`` interpreters are kept booted ahead of need, so a new agent
    or a reset after a limit does not wait for a boot. At most ``max_agents``
    interpreters are alive at once: beyond that, the one idle the longest is parked, and
    so is any idle for ``idle_timeout_seconds``. A parked agent keeps its executor and its
    state, as an image of the pages its interpreter changed (``park_dir``: None keeps the
    images in memory, a directory keeps them as files there); its next call writes them
    back into an interpreter (``state_reset=False``). The images take at most
    ``park_budget_bytes``; past it, ``park_overflow="drop_oldest"`` drops the images
    parked longest ago and ``"refuse"`` parks no more: such an agent's next call runs on
    a fresh interpreter and says ``state_reset=True`` with
    ``reset_reason="park_dropped"``. With ``park=False`` an evicted agent is reset instead
    (``reset_reason="evicted"``). Thread-safe.

    With ``state_store`` (a directory, a ``redis://`` URL or a
    :class:`~wasm_exec.state_store.StateStore`) every agent's interpreter is also saved there
    after each answered call, under a name derived from its key ``(agent_id, *scope)``:
    an agent resolved later, by this resolver or by one in another process, continues
    from its last answered call, and so does an evicted agent whose parked image was
    dropped (instead of a fresh interpreter). ``state_store_key`` (bytes, at least 16)
    signs the images: only images saved with that key, for that agent, load.
    """

    def __init__(
        self,
        whitelisted_imports: Iterable[str] | None = None,
        default_imports: Mapping[str, str] | None = None,
        *,
        max_agents: int = 64,
        idle_timeout_seconds: float | None = 1800.0,
        pool_size: int = 2,
        runtime: str = "minimal",
        limits: Limits | Mapping[str, Any] | None = None,
        state_store: StateStore | str | os.PathLike[str] | None = None,
        state_store_key: bytes | str | None = None,
        park: bool = True,
        park_dir: str | os.PathLike[str] | None = None,
        park_budget_bytes: int = 1 << 30,
        park_overflow: Literal["drop_oldest", "refuse"] = "drop_oldest",
        **limit_overrides: Any,
    ) -> None:
        if type(max_agents) is not int or max_agents < 1:
            raise ConfigurationError(f"max_agents must be an int of at least 1, not "
                                     f"{max_agents!r}")
        if type(pool_size) is not int or pool_size < 0:
            raise ConfigurationError(f"pool_size must be an int >= 0, not {pool_size!r}")
        if idle_timeout_seconds is not None and (
                isinstance(idle_timeout_seconds, bool)
                or not isinstance(idle_timeout_seconds, (int, float))
                or not 0 < idle_timeout_seconds < math.inf):
            raise ConfigurationError("idle_timeout_seconds must be a positive, finite number "
                                     f"of seconds (or None), not {idle_timeout_seconds!r}")
        self.policy, self.limits = configure(whitelisted_imports, default_imports, limits,
                                             overrides=limit_overrides)
        self.max_agents = max_agents
        self.runtime = runtime
        self.state_store: StateStore | None = None
        self._state_store_key: bytes | None = None
        if state_store is not None:
            try:
                self._state_store_key = check_key(state_store_key)
                self.state_store = open_state_store(state_store)
            except (TypeError, ValueError, StateStoreError) as e:
                raise ConfigurationError(str(e)) from e
        elif state_store_key is not None:
            raise ConfigurationError("state_store_key needs a state_store")
        owned_store = self.state_store if self.state_store is not state_store else None
        # where evicted agents are parked (None: they are reset)
        self.parking: ParkingLot | None = (
            ParkingLot(park_dir, budget_bytes=park_budget_bytes, overflow=park_overflow)
            if park else None)
        # interpreters booted ahead of need: new agents and resets start at once
        self.pool = SessionPool(size=pool_size)
        self.idle_timeout_seconds = idle_timeout_seconds
        self._executors: OrderedDict[AgentKey, PythonExecExecutor] = OrderedDict()
        self._lock = threading.RLock()
        self._closed = False
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        # a resolver dropped without close() ends its interpreters too: the reaper thread
        # and the executors' callbacks hold it only weakly
        self._finalizer = weakref.finalize(self, _close_all, self._executors, self._lock,
                                           self._stop, self.pool, self.parking,
                                           owned_store)
        if idle_timeout_seconds is not None:
            period = min(30.0, max(0.05, idle_timeout_seconds / 4))
            self._reaper = threading.Thread(
                target=_reap_loop, args=(weakref.ref(self), self._stop, period), daemon=True,
                name="wasm-exec-resolver-reaper")
            self._reaper.start()

    # ----------------------------------------------------------------- API
    def resolve(self, agent_id: str, *scope: str) -> PythonExecExecutor:
        """The executor of ``agent_id`` (created on first use).

        Extra positional parts (e.g. ``resolve(agent_id, guild_id, org_id)``) are part of
        the key, which is the tuple of all parts (never a joined string): ids that repeat
        across guilds stay apart, and ``("alice", "g")`` is not ``("alice/g",)``.
        """
        key = _key(agent_id, scope)
        with self._lock:
            if self._closed:
                raise ExecutorClosedError("this resolver is closed")
            executor = self._executors.get(key)
            if executor is not None and not executor.closed:
                self._executors.move_to_end(key)
                return executor
            freed = self._make_room(exclude=None)
            if freed is not None:  # (a parked agent's memory: the new one starts fresh)
                _close_later(freed)
            stored: dict[str, Any] = {}
            if self.state_store is not None:
                stored = dict(state_store=self.state_store, state_key=key,
                              state_store_key=self._state_store_key)
            executor = PythonExecExecutor(
                whitelisted_imports=self.policy.whitelisted_imports,
                default_imports=self.policy.default_imports, limits=self.limits,
                pool=self.pool, runtime=self.runtime, **stored)
            executor._room_for = _weak_callback(self._room_for)
            self._executors[key] = executor
            return executor

    def agents(self) -> list[AgentKey]:
        """Keys (``(agent_id, *scope)`` tuples) of the agents that have an executor (live
        interpreter or not)."""
        with self._lock:
            return list(self._executors)

    def live_agents(self) -> list[AgentKey]:
        """Keys (``(agent_id, *scope)`` tuples) of the agents whose interpreter is alive now."""
        with self._lock:
            return [k for k, e in self._executors.items() if e.has_interpreter]

    def parked_agents(self) -> list[AgentKey]:
        """Keys of the agents that are parked now (state kept as an image)."""
        with self._lock:
            return [k for k, e in self._executors.items() if e.parked]

    @property
    def parked_bytes(self) -> int:
        """Bytes the parked agents' images take (in memory, or on disk with ``park_dir``)."""
        return self.parking.nbytes if self.parking is not None else 0

    def forget(self, agent_id: str, *scope: str) -> None:
        """Close and drop one agent's executor (named by the parts given to ``resolve``),
        and its image in the state store if there is one: the agent is gone."""
        key = _key(agent_id, scope)
        with self._lock:
            executor = self._executors.pop(key, None)
        if executor is not None:
            executor.forget_state()
            executor.close()
        elif self.state_store is not None:
            self.state_store.delete(state_name(key))

    def close(self) -> None:
        """End every interpreter. Later ``resolve`` calls raise ExecutorClosedError."""
        with self._lock:
            self._closed = True
        self._finalizer()

    def __enter__(self) -> PythonExecExecutorResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals
    def _room_for(self, executor: PythonExecExecutor) -> Session | None:
        """``executor`` takes an interpreter: make room (it may get one freed for it)."""
        with self._lock:
            for key, e in self._executors.items():
                if e is executor:
                    self._executors.move_to_end(key)
                    break
            return self._make_room(exclude=executor)

    def _make_room(self, exclude: PythonExecExecutor | None) -> Session | None:
        """Park (or release) the least recently used idle interpreters beyond
        ``max_agents - 1``; returns one interpreter freed by parking (alive), if any."""
        live = [e for e in self._executors.values() if e.has_interpreter and e is not exclude]
        excess = len(live) - (self.max_agents - 1)
        freed = None
        if excess <= 0:
            return None
        for e in sorted(live, key=lambda e: e.last_used):
            if excess <= 0:
                break
            got = self._evict(e)
            if got is False:
                continue
            excess -= 1
            if got is not None:
                if freed is None:
                    freed = got
                else:
                    _close_later(got)
        return freed

    def _evict(self, executor: PythonExecExecutor) -> Session | None | Literal[False]:
        """Park (or, without parking, release) an idle agent: False when it is busy."""
        if self.parking is not None:
            return executor._park(self.parking)
        return None if executor.release() else False

    def _reap_once(self) -> None:
        assert self.idle_timeout_seconds is not None
        deadline = time.monotonic() - self.idle_timeout_seconds
        with self._lock:
            idle = [e for e in self._executors.values()
                    if e.has_interpreter and e.last_used < deadline]
        for e in idle:
            freed = self._evict(e)
            if freed:
                _close_later(freed)


def _reap_loop(ref: weakref.ReferenceType[PythonExecExecutorResolver], stop: threading.Event,
               period: float) -> None:
    """Release idle interpreters every ``period`` s, holding the resolver only meanwhile."""
    while not stop.wait(period):
        resolver = ref()
        if resolver is None:
            return
        resolver._reap_once()
        del resolver


def _close_all(executors: OrderedDict[AgentKey, PythonExecExecutor], lock: threading.RLock,
               stop: threading.Event, pool: SessionPool,
               parking: ParkingLot | None = None,
               store: StateStore | None = None) -> None:
    """End a resolver's interpreters, free its parked images and close the state store it
    opened (its close(), or the resolver was collected)."""
    with lock:
        closing = list(executors.values())
        executors.clear()
    stop.set()
    for e in closing:
        e.close()  # (with a state store: after its last image is saved)
    pool.close()
    if parking is not None:
        parking.close()
    if store is not None:
        store.close()


def _close_later(session: Session) -> None:
    """Close an interpreter on a thread of its own (the caller holds locks)."""
    threading.Thread(target=session.close, daemon=True, name="wasm-exec-close").start()


def _weak_callback(method: Callable[[PythonExecExecutor], Session | None],
                   ) -> Callable[[PythonExecExecutor], Session | None]:
    """``method`` without a strong reference to its object (the resolver)."""
    ref = weakref.WeakMethod(method)

    def call(executor: PythonExecExecutor) -> Session | None:
        bound = ref()
        return bound(executor) if bound is not None else None

    return call
