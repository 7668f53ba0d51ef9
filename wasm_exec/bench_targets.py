"""The default runtime's targets, measured beside native CPython and the closest rival.

``wasm-exec bench --targets [--rival-python PY]`` prints one table: each measure for
wasm-exec (this process), native CPython (``--native-python``, default: this Python) and
eryx (``pyeryx``, run by ``--rival-python``, a Python >= 3.12 where it is installed), all in
one run, with the target from the own-runtime issue. Rows a tool cannot measure say so.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

CPU_LOOP = "s = 0\nfor i in range(3_000_000):\n    s += i\n"
AGENTS_FOR_MEMORY = 20
PARKING_AGENTS = 1000  # agents served round-robin by a resolver of PARKING_LIVE interpreters
PARKING_LIVE = 50


@dataclass
class Target:
    name: str
    unit: str
    ours: float | None
    native: float | None
    rival: float | None
    target: str
    note: str = ""


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


# ------------------------------------------------------------------ ours

def _ours(repeat: int) -> dict[str, Any]:
    from .executor import PythonExecExecutor

    out: dict[str, Any] = {}
    t = time.perf_counter()
    first = PythonExecExecutor()
    first.execute("x = 1")
    out["first_in_process_ms"] = (time.perf_counter() - t) * 1000
    first.close()

    # new agent -> first result: agents arriving slowly, then back to back
    slow, fast = [], []
    for _ in range(repeat):
        time.sleep(0.3)
        t = time.perf_counter()
        ex = PythonExecExecutor()
        ex.execute("x = 1")
        slow.append(time.perf_counter() - t)
        ex.close()
    made = []
    for _ in range(repeat * 2):
        t = time.perf_counter()
        ex = PythonExecExecutor()
        ex.execute("x = 1")
        fast.append(time.perf_counter() - t)
        made.append(ex)
    for ex in made:
        ex.close()
    out["new_agent_slow_ms"] = _median_ms(slow)
    out["new_agent_b2b_ms"] = _median_ms(fast)

    # per call x += 1, roll-back on: back to back and paced (5 ms between calls)
    with PythonExecExecutor() as ex:
        ex.execute("x = 0")
        for _ in range(50):
            ex.execute("x += 1")
        b2b = []
        for _ in range(300):
            t = time.perf_counter()
            ex.execute("x += 1")
            b2b.append(time.perf_counter() - t)
        paced = []
        for _ in range(200):
            time.sleep(0.005)
            t = time.perf_counter()
            ex.execute("x += 1")
            paced.append(time.perf_counter() - t)
        out["call_b2b_ms"] = _median_ms(b2b)
        out["call_paced_ms"] = _median_ms(paced)

    # CPU loop with fuel on (the default limits)
    with PythonExecExecutor() as ex:
        ex.execute(CPU_LOOP)
        cpu = []
        for _ in range(repeat):
            t = time.perf_counter()
            r = ex.execute(CPU_LOOP)
            cpu.append(time.perf_counter() - t)
            assert r.success, r.error
        out["cpu_s"] = statistics.median(cpu)

    # while True stopped at 1 s: the next call, and whether the state was kept
    with PythonExecExecutor(timeout_seconds=1) as ex:
        ex.execute("kept = 41")
        r = ex.execute("while True: pass")
        t = time.perf_counter()
        nxt = ex.execute("kept += 1", return_globals=["kept"])
        out["stop_next_ms"] = (time.perf_counter() - t) * 1000
        out["stop_state_kept"] = (r.limit == "timeout" and nxt.globals == {"kept": 42})

    # fork(): a copy of an agent as of its last answered call, as a new executor
    with PythonExecExecutor() as ex:
        ex.execute("plan = ['a']\nnotes = {'k': list(range(100))}")
        paced_fork, b2b_fork = [], []
        for _ in range(repeat * 2):
            time.sleep(0.3)
            t = time.perf_counter()
            copy = ex.fork()
            paced_fork.append(time.perf_counter() - t)
            copy.close()
        copies = []
        for _ in range(repeat * 2):
            t = time.perf_counter()
            copies.append(ex.fork())
            b2b_fork.append(time.perf_counter() - t)
        kept = copies[-1].execute("plan.append('b')", return_globals=["plan"]).globals
        out["fork_state_kept"] = kept == {"plan": ["a", "b"]} and ex.execute(
            "", return_globals=["plan"]).globals == {"plan": ["a"]}
        for copy in copies:
            copy.close()
        out["fork_slow_ms"] = _median_ms(paced_fork)
        out["fork_b2b_ms"] = _median_ms(b2b_fork)

    # first agent of a new configuration with default imports
    t = time.perf_counter()
    with PythonExecExecutor(whitelisted_imports=["json", "math", "re"],
                            default_imports={"js": "json", "m": "math", "re": "re"}) as ex:
        ex.execute("x = m.pi")
    out["first_of_config_ms"] = (time.perf_counter() - t) * 1000
    return out


_MEMORY_CHILD = r"""
import gc, json, sys, time
from wasm_exec import PythonExecExecutor
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096
n = int(sys.argv[1])
rollback = len(sys.argv) < 3 or sys.argv[2] == "1"
PythonExecExecutor(rollback=rollback).close(); gc.collect(); time.sleep(0.5)
before = rss()
agents = [PythonExecExecutor(rollback=rollback) for _ in range(n)]
linear = [a.execute("x = 1").memory_bytes for a in agents]
gc.collect(); time.sleep(1.0)
after = rss()
print(json.dumps({"per_agent_rss": (after - before) / n, "linear": sum(linear) / n}))
for a in agents: a.close()
"""


def idle_memory(n: int, rollback: bool = True) -> dict[str, float]:
    """Host RSS growth per idle agent (and its guest linear memory), ``n`` agents in a
    fresh process."""
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(n),
                           "1" if rollback else "0"], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"memory benchmark failed: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


_PARKING_CHILD = r"""
import gc, json, statistics, sys, time
from wasm_exec import PythonExecExecutorResolver
n, live, rounds, park = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096
res = PythonExecExecutorResolver(max_agents=live, idle_timeout_seconds=None, park=park)
res.resolve("warm").execute("x = 1"); res.forget("warm")
gc.collect(); time.sleep(0.5)
before = rss()
t = time.perf_counter()
for i in range(n):
    r = res.resolve(f"agent-{i}").execute(
        f"me = {i}\nname = 'agent-{i}'\nnotes = {{'turn': 0}}\nseen = list(range(20))")
    assert r.success, r.error
created = time.perf_counter() - t
lat, kept = [], 0
for rnd in range(1, rounds + 1):
    for i in range(n):
        t = time.perf_counter()
        r = res.resolve(f"agent-{i}").execute("notes['turn'] += 1\nseen.append(me)",
                                              return_globals=["me", "notes"])
        lat.append(time.perf_counter() - t)
        kept += (r.success and not r.state_reset
                 and r.globals == {"me": i, "notes": {"turn": rnd}})
gc.collect(); time.sleep(1.0)
lat.sort()
parked = len(res.parked_agents())
print(json.dumps({"median_ms": statistics.median(lat) * 1000,
                  "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
                  "rss_mib": (rss() - before) / (1 << 20), "calls": len(lat), "kept": kept,
                  "parked": parked, "parked_kib": res.parked_bytes / max(parked, 1) / 1024,
                  "live": len(res.live_agents()), "create_s": created}))
res.close()
"""


def parking(agents: int, live: int, rounds: int = 2, park: bool = True) -> dict[str, float]:
    """``agents`` agents with a few variables each, served round-robin by one resolver of
    ``live`` interpreters (parking the others), in a fresh process: per-call latency
    (median, p99; every call after the first round restores a parked agent), how many
    calls found their agent's state, host memory growth."""
    proc = subprocess.run([sys.executable, "-c", _PARKING_CHILD, str(agents), str(live),
                           str(rounds), "1" if park else "0"], capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"parking benchmark failed: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _ours_memory(rollback: bool) -> float:
    return idle_memory(AGENTS_FOR_MEMORY, rollback)["per_agent_rss"] / (1 << 20)


# ------------------------------------------------------------------ native and eryx

_NATIVE_CHILD = """
import json, statistics, sys, time
code = sys.argv[1]
runs = []
for _ in range(int(sys.argv[2])):
    ns = {}
    t = time.perf_counter()
    exec(compile(code, "<native>", "exec"), ns)
    runs.append(time.perf_counter() - t)
print(json.dumps({"cpu_s": statistics.median(runs), "version": sys.version.split()[0]}))
"""

_ERYX_CHILD = """
import gc, json, statistics, sys, time
import eryx
repeat, loop, n_mem = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096
out = {"version": eryx.__version__}
t = time.perf_counter(); s = eryx.Session(); s.execute("x = 1")
out["first_in_process_ms"] = (time.perf_counter() - t) * 1000
slow, fast = [], []
for _ in range(repeat):
    time.sleep(0.3)
    t = time.perf_counter(); s = eryx.Session(); s.execute("x = 1")
    slow.append(time.perf_counter() - t)
keep = []
for _ in range(repeat * 2):
    t = time.perf_counter(); s = eryx.Session(); s.execute("x = 1")
    fast.append(time.perf_counter() - t); keep.append(s)
del keep
out["new_agent_slow_ms"] = statistics.median(slow) * 1000
out["new_agent_b2b_ms"] = statistics.median(fast) * 1000
s = eryx.Session()
s.execute("x = 0")
for _ in range(50):
    s.execute("x += 1")
b2b, paced = [], []
for _ in range(300):
    t = time.perf_counter(); s.execute("x += 1"); b2b.append(time.perf_counter() - t)
for _ in range(200):
    time.sleep(0.005)
    t = time.perf_counter(); s.execute("x += 1"); paced.append(time.perf_counter() - t)
out["call_b2b_ms"] = statistics.median(b2b) * 1000
out["call_paced_ms"] = statistics.median(paced) * 1000
s = eryx.Session(max_fuel=10**13)
s.execute(loop)
cpu = []
for _ in range(repeat):
    t = time.perf_counter(); s.execute(loop); cpu.append(time.perf_counter() - t)
out["cpu_s"] = statistics.median(cpu)
s = eryx.Session(execution_timeout_ms=1000)
s.execute("kept = 41")
try:
    s.execute("while True: pass")
except Exception:
    pass
t = time.perf_counter()
try:
    r = s.execute("kept += 1\\nprint(kept)")
    out["stop_state_kept"] = r.stdout.strip() == "42"
except Exception as e:
    out["stop_state_kept"] = False
    out["stop_error"] = type(e).__name__
out["stop_next_ms"] = (time.perf_counter() - t) * 1000
gc.collect(); time.sleep(0.5)
before = rss()
agents = [eryx.Session() for _ in range(n_mem)]
for a in agents:
    a.execute("x = 1")
gc.collect(); time.sleep(1.0)
out["idle_mib"] = (rss() - before) / n_mem / (1 << 20)
print(json.dumps(out))
"""


def _child(python: str, script: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run([python, "-c", script, *args], capture_output=True, text=True,
                          timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"{python} failed: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run(repeat: int = 5, native_python: str | None = None,
        rival_python: str | None = None, log: Any = print,
        parking_agents: int = PARKING_AGENTS) -> list[Target]:
    native_python = native_python or sys.executable
    log(f"native CPython ({native_python}) ...")
    native = _child(native_python, _NATIVE_CHILD, CPU_LOOP, str(repeat))
    rival: dict[str, Any] = {}
    if rival_python:
        log(f"eryx ({rival_python}) ...")
        try:
            rival = _child(rival_python, _ERYX_CHILD, str(repeat), CPU_LOOP,
                           str(AGENTS_FOR_MEMORY))
        except RuntimeError as e:
            log(f"eryx could not be measured: {e}")
    log("wasm-exec: first results, calls, the CPU loop, a stop ...")
    ours = _ours(repeat)
    gc.collect()
    log("wasm-exec: idle memory, roll-back off and on ...")
    mem_off = _ours_memory(rollback=False)
    mem_on = _ours_memory(rollback=True)
    log(f"parking: {parking_agents} agents through {PARKING_LIVE} interpreters ...")
    parked = parking(parking_agents, PARKING_LIVE)
    log(f"yardstick: {PARKING_LIVE} agents, all live ...")
    all_live = parking(PARKING_LIVE, PARKING_LIVE)
    r = rival.get
    rows = [
        Target("first agent in a process -> first result", "ms", ours["first_in_process_ms"],
               None, r("first_in_process_ms"), "-"),
        Target("new agent -> first result, agents arriving slowly", "ms",
               ours["new_agent_slow_ms"], None, r("new_agent_slow_ms"), "<= 2 ms"),
        Target("new agent -> first result, back to back", "ms", ours["new_agent_b2b_ms"],
               None, r("new_agent_b2b_ms"), "<= 2 ms"),
        Target("per call x += 1, roll-back on, 5 ms between calls", "ms",
               ours["call_paced_ms"], None, r("call_paced_ms"), "<= 0.15 ms"),
        Target("per call x += 1, roll-back on, back to back", "ms", ours["call_b2b_ms"], None,
               r("call_b2b_ms"), "<= 0.3 ms"),
        Target("CPU loop 3,000,000 steps, fuel on", "s", ours["cpu_s"], native["cpu_s"],
               r("cpu_s"), "<= 1.2x eryx",
               note=f"native {native.get('version')}"),
        Target("while True stopped at 1 s: next call", "ms", ours["stop_next_ms"], None,
               r("stop_next_ms"), "<= 20 ms, state kept",
               note=f"state kept: ours {ours['stop_state_kept']}, eryx "
                    f"{r('stop_state_kept', '-')}"),
        Target("idle agent host memory, roll-back off", "MiB", mem_off, None, r("idle_mib"),
               "<= 8 MiB", note=f"{AGENTS_FOR_MEMORY} agents, RSS growth / agents"),
        Target("idle agent host memory, roll-back on (with its image)", "MiB", mem_on, None,
               r("idle_mib"), "<= 25 MiB"),
        Target("first agent of a configuration with default imports", "ms",
               ours["first_of_config_ms"], None, None, "<= 60 ms"),
        Target(f"parking: {parking_agents} agents round-robin, {PARKING_LIVE} live: "
               "per call, median", "ms", parked["median_ms"], None, None, "-",
               note=f"{parked['kept']}/{parked['calls']} calls found their state; "
                    f"{PARKING_LIVE} agents all live: {all_live['median_ms']:.2f} ms"),
        Target("parking: per call, p99", "ms", parked["p99_ms"], None, None, "-",
               note=f"{PARKING_LIVE} agents all live: {all_live['p99_ms']:.2f} ms"),
        Target(f"parking: host memory, {parking_agents} agents", "MiB", parked["rss_mib"],
               None, None, "-",
               note=f"{parked['parked']} parked, {parked['parked_kib']:.0f} KiB each; "
                    f"{PARKING_LIVE} agents all live: {all_live['rss_mib']:.0f} MiB"),
        Target("fork() -> new executor, forks 0.3 s apart", "ms", ours["fork_slow_ms"],
               None, None, "<= 10 ms", note=f"isolated: {ours['fork_state_kept']}"),
        Target("fork() -> new executor, back to back", "ms", ours["fork_b2b_ms"], None, None,
               "<= 10 ms"),
    ]
    return rows


def format_table(rows: list[Target]) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [f"{'measure':56} {'unit':>4} {'wasm-exec':>10} {'native':>9} {'eryx':>9} "
             f"{'ours/eryx':>9}  target; note"]
    for t in rows:
        ratio = f"{t.ours / t.rival:.2f}x" if t.ours and t.rival else "-"
        if t.native and t.ours:
            ratio += f" ({t.ours / t.native:.1f}x nat)"
        lines.append(f"{t.name[:56]:56} {t.unit:>4} {f(t.ours):>10} {f(t.native):>9} "
                     f"{f(t.rival):>9} {ratio:>9}  {t.target}; {t.note}".rstrip("; "))
    return "\n".join(lines)
