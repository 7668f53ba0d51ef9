"""Soak test (issue 13): many agents, many calls, random stops, cancels, evictions and resets.

50 agents share one :class:`PythonExecExecutorResolver` whose ``max_agents`` is smaller
than 50 (so least-recently-used idle agents are parked all along, and come back with their
state), with an idle timeout (the reaper parks too), and ``SOAK_CALLS`` calls in all from
several concurrent asyncio workers (each agent runs one operation at a time; different
agents run at once): plain calls, exceptions, fuel stops, deadline stops, ``aexecute``
cancelled while it runs, cancelled at a random moment (possibly after its answer),
cancelled while it still waits behind another call of the same agent, explicit
``reset()``, ``release()`` (an eviction without parking) and ``forget()``.

Each agent keeps a counter ``c`` in its interpreter, and the test keeps a model of what it
should hold: a stop or a cancel rolls back (the counter is as after the last answered
call), an exception keeps what ran before it, a reset or an eviction starts afresh and the
next result says ``state_reset`` with the reason (``reset_reason``), which the model checks:
no other reason than a reset() or an eviction is ever right. Every result is accounted
for. At the end, with the resolver closed, the warm-start cache dropped and the garbage
collected, the process's threads, open descriptors and resident memory are back within a
small margin of where they started.

The issue asks for 10,000 calls; on the project's 2-core machine this test makes
``SOAK_CALLS`` = 6,000 calls (about 2.5 minutes) to stay within CI's time budget (set
``WASM_EXEC_SOAK_CALLS=10000`` to run the full count). The agents are 50, as asked. The
random seed is fixed (``WASM_EXEC_SOAK_SEED`` changes it); the interleaving of the
workers is not deterministic, so neither is every outcome, but the model accepts only
what the README promises.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import gc
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

import wasm_exec.supply
from wasm_exec import PythonExecExecutor, PythonExecExecutorResolver

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("WASM_EXEC_SOAK_SEED", "13"))
SOAK_CALLS = int(os.environ.get("WASM_EXEC_SOAK_CALLS", "6000"))
N_AGENTS = 50
MAX_AGENTS = 30
WORKERS = 8

INC = "c = globals().get('c', 0) + 1"
# a long call: it is still running when it is cancelled or its limit stops it
SPIN = "c = globals().get('c', 0) + 1000\nwhile True: pass"
# about 0.25 s of work, then the increment (a call that another one waits behind)
BUSY = "for _ in range(2_000_000): pass\nc = globals().get('c', 0) + 1"

# (operation, weight)
OPERATIONS = [
    ("inc", 60), ("raise", 4), ("fuel", 6), ("timeout", 3), ("cancel_running", 4),
    ("cancel_random", 5), ("cancel_waiting", 3), ("reset", 3), ("release", 3),
    ("forget", 1),
]


@dataclass
class Agent:
    name: str
    values: set[int] = field(default_factory=lambda: {0})  # what `c` may hold
    reset_pending: bool = False   # reset(): the next result says state_reset
    # what each cancelled call since the last result may have added (a cancel may land
    # after the call's answer: its effect is then kept)
    late_adds: list[int] = field(default_factory=list)
    evictions_reported: int = 0   # results that said reset_reason="evicted"
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=8))


class Releases:
    """Counts the successful ``release()`` calls (evictions) per executor, wherever they
    come from (the resolver's LRU, its reaper, the test)."""

    def __init__(self) -> None:
        self.started: collections.Counter[int] = collections.Counter()
        self.done: collections.Counter[int] = collections.Counter()
        self.lock = threading.Lock()

    def wrap(self, original):
        def release(executor: PythonExecExecutor) -> bool:
            with self.lock:
                self.started[id(executor)] += 1
            ok = original(executor)
            with self.lock:
                if ok:
                    self.done[id(executor)] += 1
                else:
                    self.started[id(executor)] -= 1
            return ok
        return release

    async def settled(self, executor: PythonExecExecutor) -> int:
        """Successful releases of ``executor`` so far (waiting for any under way)."""
        for _ in range(2000):
            with self.lock:
                if self.started[id(executor)] == self.done[id(executor)]:
                    return self.done[id(executor)]
            await asyncio.sleep(0.005)
        raise AssertionError("a release() did not finish within 10 s")


def _threads() -> int:
    return threading.active_count()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _quiesce() -> None:
    wasm_exec.supply.forget_templates()
    for _ in range(3):
        gc.collect()
    # memory freed but kept by the C allocator's arenas (one per thread that allocated)
    # is not a leak: hand it back, so that what RSS still shows is held
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    # threads that were told to end (sessions, the epoch ticker, the pool's refill) exit
    # within moments
    time.sleep(0.5)


def _measure(target: int | None = None) -> tuple[int, int, float]:
    """Threads, fds, RSS once the thread count is steady (or down to ``target``): a
    background restore that was under way (a warm-start standby) ends within moments."""
    deadline = time.monotonic() + 15
    threads = _threads()
    while time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.2)
        now = _threads()
        if (target is not None and now <= target) or (target is None and now == threads):
            break
        threads = now
    return _threads(), _fds(), _rss_mib()


class Soak:
    def __init__(self, resolver: PythonExecExecutorResolver, releases: Releases) -> None:
        self.resolver = resolver
        self.releases = releases
        self.rng = random.Random(SEED)
        self.agents = [Agent(f"agent-{i:02d}") for i in range(N_AGENTS)]
        self.calls = 0
        self.stats: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []

    # --------------------------------------------------------------- checks
    def fail(self, agent: Agent, what: str) -> None:
        self.failures.append(f"{agent.name}: {what}\n    after: {list(agent.history)}")

    async def account(self, agent: Agent, ex: PythonExecExecutor, r, op: str,
                      added: int, read: bool = True) -> None:
        """Check a result of code that added ``added`` to ``c`` (0 for a stopped call)
        and, when ``read``, returned ``c``; then update the model.

        A fresh interpreter must be explained by the reason the result gives: "reset" by
        a reset() since the last result, "evicted" by a release of the executor that no
        earlier result reported (each release that freed an interpreter is reported once,
        by the next call, or passed on by a cancelled one; one made while a call is being
        accounted may be reported by the next result only, so releases are counted, not
        placed in time). No other reason is ever right here: a stop or a cancel rolls
        back."""
        releases = await self.releases.settled(ex)
        agent.history.append((op, r.limit or r.error_type,
                              f"reset:{r.reset_reason}" if r.state_reset else "",
                              r.globals.get("c")))
        if r.state_reset:
            self.stats["state_reset"] += 1
            if r.reset_reason == "reset":
                if not agent.reset_pending:
                    self.fail(agent, f"{op}: reset_reason='reset', but no reset() since the "
                              "last result")
            elif r.reset_reason == "evicted":
                if releases <= agent.evictions_reported:
                    self.fail(agent, f"{op}: reset_reason='evicted', but every release "
                              f"({releases}) was reported already")
                agent.evictions_reported += 1
            else:
                self.fail(agent, f"{op}: state_reset=True with reset_reason="
                          f"{r.reset_reason!r}: the agent lost its state")
            # fresh, then the cancelled calls since may each have added what they add (a
            # cancelled call that ran on the fresh interpreter passes its reset on)
            base = {0}
            for add in agent.late_adds:
                base |= {v + add for v in base}
        else:
            if agent.reset_pending:
                self.fail(agent, f"{op}: reset() was called, but the next result does not "
                          "say state_reset")
            base = set(agent.values)
        agent.reset_pending = False
        agent.late_adds = []
        expected = {v + added for v in base}
        if read:
            if "c" in r.globals:
                got = r.globals["c"]
            elif "is not defined" in r.globals_errors.get("c", ""):
                got = 0
            else:
                self.fail(agent, f"{op}: c not returned: {r.globals_errors}")
                got = None
            if got is not None and got not in expected:
                self.fail(agent, f"{op}: c == {got}, expected "
                          f"{' or '.join(map(str, sorted(expected)))} "
                          f"(state_reset={r.state_reset})")
            agent.values = {got} if got is not None else expected
        else:
            agent.values = expected

    # ----------------------------------------------------------- operations
    async def op(self, agent: Agent, name: str) -> None:
        ex = self.resolver.resolve(agent.name)
        rng = self.rng
        if name == "inc":
            self.calls += 1
            r = await ex.aexecute(INC, return_globals=["c"])
            if not r.success:
                self.fail(agent, f"inc failed: {r.error}")
            await self.account(agent, ex, r, name, 1)
        elif name == "raise":
            self.calls += 1
            r = await ex.aexecute(INC + "\nraise ValueError('boom')", return_globals=["c"])
            if r.success or r.error_type != "ValueError" or r.limit is not None:
                self.fail(agent, f"raise: unexpected {r.error!r}")
            # (an exception keeps the state)
            await self.account(agent, ex, r, name, 1)
        elif name in ("fuel", "timeout"):
            self.calls += 1
            limits = ({"fuel": rng.randrange(3_000_000, 30_000_000)} if name == "fuel"
                      else {"timeout_seconds": rng.uniform(0.02, 0.12)})
            r = await ex.aexecute(SPIN, return_globals=["c"], limits=limits)
            if r.success or r.limit != name or not r.rolled_back or r.interpreter_lost:
                self.fail(agent, f"{name} stop: success={r.success} limit={r.limit} "
                          f"rolled_back={r.rolled_back} lost={r.interpreter_lost}")
            if r.globals:
                self.fail(agent, f"{name} stop returned globals {r.globals}")
            await self.account(agent, ex, r, name, 0, read=False)
        elif name == "cancel_running":
            # cancelled while it runs (it never ends by itself): rolled back, strictly
            self.calls += 1
            task = asyncio.ensure_future(ex.aexecute(SPIN, return_globals=["c"]))
            await asyncio.sleep(rng.uniform(0.01, 0.06))
            task.cancel()
            try:
                r = await task
                self.fail(agent, f"cancel_running: the call ended by itself: {r.error}")
            except asyncio.CancelledError:
                self.stats["cancelled"] += 1
        elif name == "cancel_random":
            # a short call cancelled at a random moment: before it runs, while it runs, or
            # after its answer (then its increment may be kept)
            self.calls += 1
            try:
                r = await asyncio.wait_for(ex.aexecute(INC, return_globals=["c"]),
                                           timeout=rng.uniform(0.0, 0.012))
            except TimeoutError:
                self.stats["cancelled"] += 1
                agent.values = agent.values | {v + 1 for v in agent.values}
                agent.late_adds.append(1)
            else:
                self.stats["cancel_too_late"] += 1
                if not r.success:
                    self.fail(agent, f"cancel_random: {r.error}")
                await self.account(agent, ex, r, name, 1)
        elif name == "cancel_waiting":
            # a call cancelled while it waits behind another call of the same agent never
            # runs, and the call it waited behind is not disturbed
            self.calls += 2
            started = time.monotonic()
            first = asyncio.ensure_future(ex.aexecute(BUSY, return_globals=["c"]))
            await asyncio.sleep(0.02)
            second = asyncio.ensure_future(ex.aexecute("c = globals().get('c', 0) + 1000\n"
                                                       + BUSY, return_globals=["c"]))
            await asyncio.sleep(0.02)
            second.cancel()
            cancelled_after = time.monotonic() - started
            try:
                await second
                self.fail(agent, "cancel_waiting: the waiting call was not cancelled")
            except asyncio.CancelledError:
                self.stats["cancelled"] += 1
            r = await first
            if not r.success:
                self.fail(agent, f"cancel_waiting: the running call failed: {r.error}")
            await self.account(agent, ex, r, name, 1)
            if cancelled_after >= r.duration_seconds:
                # this event loop was held up (it runs the synchronous resolve, reset,
                # release and forget, and shares two cores with every worker thread) for
                # as long as the first call ran: the first may have ended before the
                # cancel, so the second may have started, even ended (its effect kept)
                self.stats["cancel_waiting_late"] += 1
                agent.values = agent.values | {v + 1001 for v in agent.values}
                agent.late_adds.append(1001)
        elif name == "reset":
            ex.reset()
            agent.reset_pending = True
            agent.values = {0}
            self.stats["reset"] += 1
        elif name == "release":
            if ex.release():
                self.stats["release"] += 1
        elif name == "forget":
            self.resolver.forget(agent.name)
            agent.values = {0}
            agent.reset_pending = False
            agent.late_adds = []
            agent.evictions_reported = 0
            self.stats["forget"] += 1

    async def worker(self) -> None:
        names = [n for n, _ in OPERATIONS]
        weights = [w for _, w in OPERATIONS]
        while self.calls < SOAK_CALLS:
            agent = self.rng.choice(self.agents)
            if agent.lock.locked():
                await asyncio.sleep(0)
                continue
            name = self.rng.choices(names, weights)[0]
            async with agent.lock:
                self.stats[name] += 1
                agent.history.append(name)
                await self.op(agent, name)

    async def check_all(self) -> None:
        """Every agent's counter, read once more at the end."""
        for agent in self.agents:
            ex = self.resolver.resolve(agent.name)
            r = await ex.aexecute("", return_globals=["c"])
            await self.account(agent, ex, r, "final read", 0)

    async def run(self) -> None:
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=3 * WORKERS, thread_name_prefix="soak"))
        await asyncio.gather(*(self.worker() for _ in range(WORKERS)))
        await self.check_all()


def test_soak(monkeypatch):
    # warm up once (the runtime module, the engine, the first boot) so that what stays
    # loaded for the process's lifetime is in the baseline
    with PythonExecExecutorResolver(max_agents=2, pool_size=1, timeout_seconds=10) as warm:
        e = warm.resolve("w")
        e.execute(INC)
        e.execute(SPIN, limits={"fuel": 3_000_000})
        e.execute(INC)
    _quiesce()
    threads0, fds0, rss0 = _measure()

    releases = Releases()
    monkeypatch.setattr(PythonExecExecutor, "release",
                        releases.wrap(PythonExecExecutor.release))
    started = time.monotonic()
    resolver = PythonExecExecutorResolver(max_agents=MAX_AGENTS, pool_size=2,
                                          idle_timeout_seconds=8, timeout_seconds=10)
    soak = Soak(resolver, releases)
    try:
        asyncio.run(soak.run())
        live = len(resolver.live_agents())
        parked = len(resolver.parked_agents())
        evictions = sum(releases.done.values())
    finally:
        resolver.close()
    duration = time.monotonic() - started
    del resolver, soak.resolver
    monkeypatch.undo()
    _quiesce()
    threads1, fds1, rss1 = _measure(threads0)
    print(f"\nsoak: {soak.calls} calls, {N_AGENTS} agents, {duration:.1f} s, "
          f"{evictions} releases, {live} live and {parked} parked at the end; "
          f"{dict(soak.stats)}\n"
          f"threads {threads0} -> {threads1}, fds {fds0} -> {fds1}, "
          f"RSS {rss0:.0f} -> {rss1:.0f} MiB")
    assert not soak.failures, "\n".join(soak.failures[:30])
    assert soak.calls >= SOAK_CALLS
    assert evictions > 0 and soak.stats["state_reset"] > 0
    assert threads1 <= threads0, (threads0, threads1, [t.name for t in threading.enumerate()])
    assert fds1 <= fds0 + 2, (fds0, fds1)
    assert rss1 <= rss0 + 100, (rss0, rss1)
