"""Benchmark rows for the state store (``wasm-exec bench`` includes them): what saving an
agent after each answered call costs, on both runtimes, beside native CPython and the same
executor without a store, measured in one run."""

from __future__ import annotations

import statistics
import tempfile
import time
import zlib
from typing import Any

from .benchkit import Row, _native_exec, _stats, _time

SEEDS: dict[str, dict[str, Any]] = {
    "minimal": {},
    "scientific": {"whitelisted_imports": ["numpy", "pandas"],
                   "default_imports": {"np": "numpy", "pd": "pandas"}},
}


def bench_state_store(repeat: int) -> list[Row]:
    rows: list[Row] = []
    for runtime, seed in SEEDS.items():
        rows.extend(_one_runtime(runtime, seed, repeat))
    return rows


def _one_runtime(runtime: str, seed: dict[str, Any], repeat: int) -> list[Row]:
    from .errors import WasmExecError
    from .executor import PythonExecExecutor

    rows: list[Row] = []
    try:
        plain = PythonExecExecutor(runtime=runtime, timeout_seconds=120, **seed)
    except WasmExecError as e:  # (the scientific runtime is not installed)
        return [Row(f"{runtime}: state store", "ms", 0, 0, 0, 0, note=f"skipped: {e}")]
    with tempfile.TemporaryDirectory() as tmp, plain:
        stored = PythonExecExecutor(runtime=runtime, timeout_seconds=120,
                                    state_store=tmp, state_key=("bench", runtime), **seed)
        state = stored._state
        assert state is not None
        for ex in (plain, stored):
            ex.execute("x = 0")
            for _ in range(10):
                ex.execute("x += 1")
        stored.flush_state()
        calls = max(40, repeat * 10)
        ns = {"x": 0}
        native = statistics.median(_time(lambda: _native_exec("x += 1", ns), calls))
        off = _time(lambda: plain.execute("x += 1"), calls)
        on = _time(lambda: stored.execute("x += 1"), calls)
        stored.flush_state()
        rows.append(Row(f"{runtime}: per call x += 1 with a state store, back to back",
                        "ms", *[v * 1000 for v in _stats(on)], calls, native * 1000,
                        note=f"without a store {statistics.median(off) * 1000:.3f} ms "
                             "(saves run after the reply, coalesced)"))

        # one save per call (as when calls are apart): its cost, on the saving thread
        cpu, wall, durable = [], [], []
        for _ in range(max(10, repeat * 2)):
            t = time.perf_counter()
            stored.execute("x += 1")
            stored.flush_state()
            durable.append(time.perf_counter() - t)
            cpu.append(state.last_save_cpu_seconds)
            wall.append(state.last_save_seconds)
        changed = state._deflate.last_changed
        chunks = len(state._deflate._digests)
        session = stored._session
        assert session is not None
        image = session.answered_snapshot()
        assert image is not None
        full_cpu = []
        for _ in range(3):
            t = time.thread_time()
            zlib.compress(image.memory, 1)
            full_cpu.append(time.thread_time() - t)
        rows.append(Row(f"{runtime}: save after a call (x += 1), CPU time", "ms",
                        *[v * 1000 for v in _stats(cpu)], len(cpu),
                        note=f"wall {statistics.median(wall) * 1000:.1f} ms; "
                             f"{changed} of {chunks} chunks changed; file "
                             f"{state.last_save_bytes / (1 << 20):.1f} MiB; compressing "
                             f"the whole {image.size / (1 << 20):.0f} MiB: "
                             f"{statistics.median(full_cpu) * 1000:.0f} ms CPU"))
        rows.append(Row(f"{runtime}: call answered and stored (execute + flush_state)",
                        "ms", *[v * 1000 for v in _stats(durable)], len(durable),
                        native * 1000))
        stored.close()

        resumes = []
        for _ in range(max(3, repeat)):
            t = time.perf_counter()
            again = PythonExecExecutor(runtime=runtime, timeout_seconds=120,
                                       state_store=tmp, state_key=("bench", runtime),
                                       **seed)
            r = again.execute("x += 1")
            resumes.append(time.perf_counter() - t)
            assert r.success and not r.state_reset
            again.close()
        rows.append(Row(f"{runtime}: resume from the store, new executor to first result",
                        "ms", *[v * 1000 for v in _stats(resumes)], len(resumes)))
    return rows
