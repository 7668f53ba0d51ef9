"""Benchmark: wasm-exec against native CPython ``exec`` of the same code, in one run.

``wasm-exec bench`` (or ``python -m wasm_exec bench``) prints a table and writes the same
figures as JSON (``--json PATH``, default ``bench-results.json``). Every row gives the
median and the spread (min-max) of several runs and, where it has one, the ratio to the
native yardstick measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from .bench_state import bench_state_store
from .benchkit import Row, _native_exec, _stats, _time

CPU_LOOP = "s = 0\nfor i in range(3_000_000):\n    s += i\n"
PRINT_LOOP = "for i in range(10_000):\n    print(i)\n"
# the same work with no output at all: what printing costs the guest's interpreter itself
PRINT_INTO = "import io\nsink = io.StringIO()\nfor i in range(10_000):\n    print(i, file=sink)\n"
TEN_GLOBALS = "\n".join(f"g{i} = {i} * 2" for i in range(10))


def bench_new_agent(repeat: int) -> list[Row]:
    from .executor import PythonExecExecutor
    from .supply import SessionPool

    native = _time(lambda: _native_exec("print(1)"), max(repeat, 20))
    nat = statistics.median(native)
    PythonExecExecutor().close()  # module load and compiled-runner cache: once per process

    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        ex = PythonExecExecutor()
        ex.execute("print(1)")
        samples.append(time.perf_counter() - t)
        ex.close()
    rows = [Row("new agent, cold (new executor to first result)", "ms",
                *[v * 1000 for v in _stats(samples)], repeat, nat * 1000, "<= 60 ms")]
    with SessionPool(size=2) as pool:
        PythonExecExecutor(pool=pool).close()
        pooled = []
        for _ in range(repeat):
            time.sleep(0.5)  # let the pool refill, as between agents arriving
            t = time.perf_counter()
            ex = PythonExecExecutor(pool=pool)
            ex.execute("print(1)")
            pooled.append(time.perf_counter() - t)
            ex.close()
    rows.append(Row("new agent, pre-started interpreter waiting (SessionPool)", "ms",
                    *[v * 1000 for v in _stats(pooled)], repeat, nat * 1000, "<= 5 ms"))
    return rows


def bench_per_call(repeat: int) -> list[Row]:
    from .executor import PythonExecExecutor

    calls = max(200, repeat * 50)
    rows = []
    with PythonExecExecutor() as ex:
        ex.execute("x = 0")
        for _ in range(20):
            ex.execute("x += 1")
        samples = _time(lambda: ex.execute("x += 1"), calls)
        ns = {"x": 0}
        native = _time(lambda: _native_exec("x += 1", ns), calls)
        rows.append(Row("per call: x += 1", "ms", *[v * 1000 for v in _stats(samples)], calls,
                        statistics.median(native) * 1000, "<= 0.5 ms"))
        names = [f"g{i}" for i in range(10)]
        samples = _time(lambda: ex.execute(TEN_GLOBALS, return_globals=names), calls)

        def native_globals() -> None:
            out = _native_exec(TEN_GLOBALS)
            json.loads(json.dumps({n: out[n] for n in names}))

        native = _time(native_globals, calls)
        rows.append(Row("per call: 10 small globals returned", "ms",
                        *[v * 1000 for v in _stats(samples)], calls,
                        statistics.median(native) * 1000))
    return rows


def bench_cpu(repeat: int) -> list[Row]:
    from .executor import PythonExecExecutor

    native = _time(lambda: _native_exec(CPU_LOOP), repeat)
    nat = statistics.median(native)
    rows = []
    with PythonExecExecutor() as ex:
        ex.execute("pass")
        fuel = []
        samples = []
        for _ in range(repeat):
            r = ex.execute(CPU_LOOP)
            samples.append(r.duration_seconds)
            fuel.append(r.fuel_used or 0)
    rows.append(Row("CPU loop 3,000,000 steps, default limits (fuel + deadline)", "s",
                    *_stats(samples), repeat, nat, "<= 8x native",
                    extra={"fuel_per_run": statistics.median(fuel)}))
    with PythonExecExecutor(fuel=None) as ex:
        ex.execute("pass")
        nofuel = [ex.execute(CPU_LOOP).duration_seconds for _ in range(repeat)]
    rows.append(Row("CPU loop, fuel metering off (deadline only)", "s", *_stats(nofuel), repeat,
                    nat))
    with_fuel = statistics.median(samples)
    share = (with_fuel - statistics.median(nofuel)) / with_fuel
    rows[0].note = f"fuel metering is {share:.0%} of the time"
    rows[0].extra["fuel_share"] = share
    return rows


def bench_marshal(repeat: int) -> list[Row]:
    from .executor import PythonExecExecutor

    data = [{"id": i, "name": f"item{i}", "value": i * 0.5, "ok": i % 2 == 0}
            for i in range(10_000)]
    code = "total = sum(d['value'] for d in items if d['ok'])\ncount = len(items)"

    def native() -> None:
        ns = {"items": json.loads(json.dumps(data))}
        out = _native_exec(code, ns)
        json.loads(json.dumps({"total": out["total"], "count": out["count"]}))

    nat = statistics.median(_time(native, repeat))
    with PythonExecExecutor() as ex:
        ex.execute("pass")
        samples = _time(lambda: ex.execute(code, globals_dict={"items": data},
                                           return_globals=["total", "count"]), repeat)
    return [Row("marshaling: 10,000 small dicts in, derived values out", "ms",
                *[v * 1000 for v in _stats(samples)], repeat, nat * 1000)]


def bench_memory(counts: tuple[int, ...]) -> list[Row]:
    from .bench_targets import idle_memory

    rows = []
    for n in counts:
        got = idle_memory(n)
        mib = 1024 * 1024
        rows.append(Row(f"memory per idle agent, {n} agent(s): resident (RSS)", "MiB",
                        got["per_agent_rss"] / mib, got["per_agent_rss"] / mib,
                        got["per_agent_rss"] / mib, 1, None, "<= 25 MB",
                        note=f"guest linear memory {got['linear'] / mib:.1f} MiB per agent"))
    return rows


def bench_parallel(repeat: int) -> list[Row]:
    from .executor import PythonExecExecutor

    agents = [PythonExecExecutor(), PythonExecExecutor()]
    try:
        for a in agents:
            a.execute("pass")
        one = _time(lambda: agents[0].execute(CPU_LOOP), repeat)

        def both() -> None:
            threads = [threading.Thread(target=a.execute, args=(CPU_LOOP,)) for a in agents]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        two = _time(both, repeat)
    finally:
        for a in agents:
            a.close()
    t1, t2 = statistics.median(one), statistics.median(two)
    speedup = 2 * t1 / t2
    return [Row("parallel: 1 agent, CPU loop", "s", *_stats(one), repeat),
            Row("parallel: 2 agents at once (2 cores), CPU loop each", "s", *_stats(two),
                repeat, target=">= 1.6x throughput of one",
                note=f"throughput {speedup:.2f}x of one agent", extra={"speedup": speedup})]


def bench_printing(repeat: int) -> list[Row]:
    """10,000 print calls in one call: the guest buffers its output (streams.py). Native
    CPython prints into a StringIO in this process; the rounds interleave the native run
    and each wasm variant, so that a busy machine slows them alike."""
    rows = []
    for runtime in ("minimal", "scientific"):
        rows.extend(_printing(runtime, max(repeat, 10)))
    return rows


def _printing(runtime: str, runs: int) -> list[Row]:
    from .errors import WasmExecError
    from .executor import PythonExecExecutor

    try:
        ex = PythonExecExecutor(runtime=runtime, timeout_seconds=60, whitelisted_imports=["io"])
    except WasmExecError as e:
        return [Row(f"{runtime}: 10,000 print calls", "-", 0, 0, 0, 0,
                    note=f"skipped: {str(e).splitlines()[0]}")]
    session = ex._session
    assert session is not None
    layout = session._stream_layout
    chunks: list[str] = []

    def timed(line_buffered: bool = False, code: str = PRINT_LOOP, **kw: Any) -> float:
        time.sleep(0.02)  # (the previous call's image is taken meanwhile)
        if line_buffered:  # as before the output was buffered: a host call a line
            session._stream_layout = None
        try:
            r = ex.execute(code, **kw)
        finally:
            session._stream_layout = layout
        assert r.success and r.stdout.count("\n") == (10_000 if code == PRINT_LOOP else 0)
        return r.duration_seconds

    native, native_into, buffered, streamed, into, lines = [], [], [], [], [], []
    with ex:
        ex.execute(PRINT_LOOP)
        for i in range(runs):
            native.extend(_time(lambda: _native_exec(PRINT_LOOP), 1))
            native_into.extend(_time(lambda: _native_exec(PRINT_INTO), 1))
            buffered.append(timed())
            streamed.append(timed(on_stdout=chunks.append))
            into.append(timed(code=PRINT_INTO))
            if i < 3:
                lines.append(timed(line_buffered=True))
    nat = statistics.median(native)
    label = "default runtime" if runtime == "minimal" else "scientific"
    before = statistics.median(lines) * 1000
    return [Row(f"{label}: 10,000 print calls in one call", "ms",
                *[v * 1000 for v in _stats(buffered)], runs, nat * 1000, "<= 3x native",
                note=f"line buffered as before: {before:.0f} ms",
                extra={"line_buffered_ms": before}),
            Row(f"{label}: the same, streamed to an on_stdout callback", "ms",
                *[v * 1000 for v in _stats(streamed)], runs, nat * 1000,
                note=f"{len(chunks) // runs} chunks a call"),
            Row(f"{label}: the same into an io.StringIO in the guest (no output)", "ms",
                *[v * 1000 for v in _stats(into)], runs,
                statistics.median(native_into) * 1000,
                note="the interpreter's own cost of the loop: the floor")]


SCIENTIFIC_SEED = dict(whitelisted_imports=["numpy", "pandas", "matplotlib.pyplot"],
                      default_imports={"np": "numpy", "pd": "pandas",
                                       "plt": "matplotlib.pyplot"})


def bench_snapshots(repeat: int) -> list[Row]:
    """Interpreter images (scientific runtime): warm start, roll-back, save/load."""
    import tempfile

    from .errors import WasmExecError
    from .executor import PythonExecExecutor
    from .supply import forget_templates

    def make(**kw: Any) -> PythonExecExecutor:
        return PythonExecExecutor(runtime="scientific", timeout_seconds=120,
                                  **{**SCIENTIFIC_SEED, **kw})

    try:
        forget_templates()
        t = time.perf_counter()
        first = make()
        first.execute("x = 1")
        boot = time.perf_counter() - t
    except WasmExecError as e:
        return [Row("snapshots (scientific runtime)", "-", 0, 0, 0, 0,
                    note=f"skipped: {str(e).splitlines()[0]}")]
    rows = [Row("scientific: first agent, boot + import np/pd/plt, first result", "ms",
                boot * 1000, boot * 1000, boot * 1000, 1)]

    # (agents arrive some time apart: the interpreter restored for the next one in the
    # background is ready by then; back to back, each waits for a restore)
    warm, burst = [], []
    for pause, out in ((0.5, warm), (0.0, burst)):
        for _ in range(repeat):
            time.sleep(pause)
            t = time.perf_counter()
            ex = make()
            ex.execute("x = 1")
            out.append(time.perf_counter() - t)
            ex.close()
    rows.append(Row("scientific: new agent from the boot image (warm start)", "ms",
                    *[v * 1000 for v in _stats(warm)], repeat, target="<= 50 ms",
                    note=f"booting and importing instead: {boot * 1000:.0f} ms"))
    rows.append(Row("scientific: warm start, agents created back to back", "ms",
                    *[v * 1000 for v in _stats(burst)], repeat,
                    note="each restores the boot image itself"))

    first.execute("df = pd.DataFrame({'a': range(1000)})\nkeep = 1")
    back = []
    for _ in range(repeat):
        time.sleep(0.3)  # (the model thinks: the image of the last call is taken meanwhile)
        t = time.perf_counter()
        r = first.execute("while True: pass", limits={"fuel": 1_000_000})
        r2 = first.execute("keep += 1")
        back.append(time.perf_counter() - t)
        assert r.rolled_back and r2.success, (r.error, r2.error)
    rows.append(Row("scientific: stopped call rolled back, next call answered", "ms",
                    *[v * 1000 for v in _stats(back)], repeat, target="<= 50 ms",
                    note="the trap, the restore of the last image and one more call"))
    firsts = []
    for standby in (False, True):
        samples = []
        for _ in range(max(1, repeat // 2)):
            ex = make(rollback_standby=standby)
            ex.execute("keep = 1")
            time.sleep(0.5)  # (the model thinks)
            t = time.perf_counter()
            r = ex.execute("while True: pass", limits={"fuel": 1_000_000})
            ex.execute("keep += 1")
            samples.append(time.perf_counter() - t)
            assert r.rolled_back, r.error
            ex.close()
        firsts.append(samples)
    rows.append(Row("scientific: an agent's first stop rolled back, next call answered", "ms",
                    *[v * 1000 for v in _stats(firsts[0])], len(firsts[0]),
                    target="<= 50 ms", note="restores into fresh pages"))
    rows.append(Row("scientific: the same with rollback_standby=True", "ms",
                    *[v * 1000 for v in _stats(firsts[1])], len(firsts[1]),
                    target="<= 50 ms", note="an interpreter restored in the background "
                    "after the first call: one more linear memory per agent"))

    calls = 20
    per_call: dict[str, float] = {}
    for label, rollback, think in (("images on, back to back", True, 0.0),
                                   ("images off, back to back", False, 0.0),
                                   ("images on, 0.1 s between calls", True, 0.1)):
        first.rollback = rollback
        first._session.keep_snapshots = rollback  # type: ignore[union-attr]
        first.execute("x = 0")
        samples = []
        for _ in range(calls):
            if think:
                time.sleep(think)
            t = time.perf_counter()
            first.execute("x += 1")
            samples.append(time.perf_counter() - t)
        per_call[label] = statistics.median(samples) * 1000
        rows.append(Row(f"scientific: per call x += 1, {label}", "ms",
                        *[v * 1000 for v in _stats(samples)], calls))
    first.rollback = True
    first._session.keep_snapshots = True  # type: ignore[union-attr]
    image = first._session.wait_snapshot(current=True)  # type: ignore[union-attr]
    size = image.size if image is not None else 0
    extra = per_call["images on, back to back"] - per_call["images off, back to back"]
    rows[-1].note = (f"image per agent: {size / (1 << 20):.0f} MiB of host memory "
                     f"(its linear memory); back to back an image costs {extra:.1f} ms a call")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "agent.img")
        saves, loads = [], []
        file_size = 0
        for _ in range(max(1, repeat // 2)):
            t = time.perf_counter()
            file_size = first.save(path)
            saves.append(time.perf_counter() - t)
            t = time.perf_counter()
            ex = PythonExecExecutor.load(path, timeout_seconds=120)
            ex.execute("keep += 1")
            loads.append(time.perf_counter() - t)
            ex.close()
        rows.append(Row("scientific: save an agent to a file", "ms",
                        *[v * 1000 for v in _stats(saves)], len(saves),
                        note=f"file {file_size / (1 << 20):.1f} MiB (memory "
                             f"{size / (1 << 20):.0f} MiB, zlib level 1)"))
        rows.append(Row("scientific: load it into a new executor, first result", "ms",
                        *[v * 1000 for v in _stats(loads)], len(loads)))
    first.close()
    return rows


def _parts() -> dict[str, Callable[[int], list[Row]]]:
    """The benchmark's parts by name."""
    return {f.__name__.removeprefix("bench_"): f for f in (
        bench_new_agent, bench_per_call, bench_cpu, bench_printing, bench_marshal,
        bench_parallel, bench_snapshots, bench_state_store)}


PART_NAMES = ("new_agent", "per_call", "cpu", "printing", "marshal", "parallel", "snapshots",
              "state_store", "memory")


def run(repeat: int = 5, memory_counts: tuple[int, ...] = (1, 10, 50),
        only: set[str] | None = None, log: Any = None) -> dict[str, Any]:
    rows: list[Row] = []
    parts = [f for name, f in _parts().items() if only is None or name in only]
    with_memory = only is None or "memory" in only
    total = len(parts) + with_memory
    started = time.monotonic()
    for i, part in enumerate(parts, 1):
        if log:
            log(f"[{time.monotonic() - started:4.0f} s] {i}/{total}: "
                f"{part.__name__.removeprefix('bench_').replace('_', ' ')}")
        rows.extend(part(repeat))
    if with_memory:
        if log:
            log(f"[{time.monotonic() - started:4.0f} s] {total}/{total}: "
                f"memory for {', '.join(map(str, memory_counts))} agents")
        rows.extend(bench_memory(memory_counts))
    return {
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "rows": [dict(asdict(r), ratio=r.ratio) for r in rows],
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'benchmark':62} {'median':>10} {'min-max':>19} {'native':>10} {'ratio':>8}"
             f"  target / note"]
    for r in result["rows"]:
        unit = r["unit"]
        native = f"{r['native']:.3f}" if r["native"] is not None else "-"
        ratio = f"{r['ratio']:.1f}x" if r["ratio"] is not None else "-"
        spread = f"{r['low']:.3f}-{r['high']:.3f}"
        tail = "; ".join(x for x in (r["target"], r["note"]) if x)
        lines.append(f"{r['name'][:62]:62} {r['median']:>7.3f} {unit:2} {spread:>19} "
                     f"{native:>10} {ratio:>8}  {tail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import sys

    from .options import OneLineParser, positive_int_arg

    def progress(message: str) -> None:  # (stderr: stdout keeps the table)
        print(f"bench: {message}", file=sys.stderr, flush=True)

    p = OneLineParser(prog="wasm-exec bench", description=__doc__)
    p.add_argument("--repeat", type=positive_int_arg("--repeat"), default=5,
                   help="runs per row (default 5)")
    p.add_argument("--json", default="bench-results.json", help="where to write the figures")
    p.add_argument("--quick", action="store_true", help="3 runs, memory for 1 and 10 agents")
    p.add_argument("--targets", action="store_true",
                   help="the default runtime's targets beside native CPython and eryx")
    p.add_argument("--native-python", help="native CPython for --targets (default: this one)")
    p.add_argument("--rival-python",
                   help="a Python with pyeryx installed, for the eryx column of --targets")
    p.add_argument("--only", metavar="PARTS",
                   help="comma-separated parts to run: " + ", ".join(PART_NAMES))
    p.add_argument("--parking-agents", type=int, default=1000,
                   help="agents in --targets' parking rows (served by 50 interpreters)")
    args = p.parse_args(argv)
    if args.targets:
        from . import bench_targets

        rows = bench_targets.run(3 if args.quick else args.repeat, args.native_python,
                                 args.rival_python, log=progress,
                                 parking_agents=args.parking_agents)
        print(bench_targets.format_table(rows))
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
        print(f"\nfigures written to {args.json}")
        return 0
    repeat = 3 if args.quick else args.repeat
    counts = (1, 10) if args.quick else (1, 10, 50)
    only = None
    if args.only:
        only = {x.strip() for x in args.only.split(",") if x.strip()}
        unknown = only - set(PART_NAMES)
        if unknown:
            p.error(f"unknown parts {sorted(unknown)}; known: {list(PART_NAMES)}")
    progress(f"{repeat} runs per row; about a minute or more, a line per part")
    result = run(repeat, counts, only, log=progress)
    print(format_table(result))
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
