"""What the benchmarks share: a row of figures, timing, and native CPython as the
yardstick (bench.py, bench_state.py and bench_files.py import it; it imports none of
them)."""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    name: str
    unit: str
    median: float
    low: float
    high: float
    runs: int
    native: float | None = None
    target: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.native:
            return self.median / self.native
        return None


def _stats(samples: list[float]) -> tuple[float, float, float]:
    return statistics.median(samples), min(samples), max(samples)


def _time(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _native_exec(code: str, ns: dict[str, Any] | None = None) -> dict[str, Any]:
    ns = {} if ns is None else ns
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "<native>", "exec"), ns)
    return ns
