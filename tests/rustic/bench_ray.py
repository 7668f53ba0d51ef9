"""Figures for the README's "Scaling out": the seed's guild on Ray (a head and two worker
nodes, Redis messaging), round trip through the guild and memory per agent actor, with the
wasm-exec resolver and a Redis state store beside Rustic's own in-process executor (the
yardstick: plain ``exec`` in the actor), measured in one run.

    .venv313/bin/python -m tests.rustic.bench_ray [--requests 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from tests.rustic.ray_support import KEY_ENV, RUSTIC_EXECUTOR, ray_guild  # (Ray stays on loopback)


def _pss_mib(pid: int) -> float:
    """The process's proportional set size (shared pages split among their users)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        out.extend(kids)
        frontier.extend(kids)
    return out


def _tree_pss_mib() -> float:
    """PSS of every process this one started (Ray's, the actors, redis-server)."""
    return sum(_pss_mib(pid) for pid in _descendants(os.getpid()))


def measure(label: str, resolver: str, properties: Any, requests: int) -> dict[str, Any]:
    with ray_guild(["coder_a", "coder_b"], properties, resolver_class=resolver) as g:
        g.ask("coder_a", "counter = 0")
        pids = [g.ask(a, "x = 1")["pid"] for a in ("coder_a", "coder_b")]
        for _ in range(10):
            g.ask("coder_a", "counter += 1")
        samples = []
        for _ in range(requests):
            t = time.perf_counter()
            reply = g.ask("coder_a", "counter += 1\noutput = counter")
            samples.append(time.perf_counter() - t)
            assert reply["status"] == "success", reply
        samples.sort()
        actors = [_pss_mib(pid) for pid in pids]
        return {"label": label, "median_ms": statistics.median(samples) * 1000,
                "p90_ms": samples[int(len(samples) * 0.9)] * 1000,
                "actor_pss_mib": statistics.mean(actors),
                "others_pss_mib": _tree_pss_mib() - sum(actors)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=200)
    args = p.parse_args()

    def ours(store_url: str) -> dict[str, Any]:
        return {"whitelisted_imports": ["math"], "timeout_seconds": 10,
                "state_store": store_url, "state_store_key_env": KEY_ENV}

    rows = [measure("wasm-exec resolver, Redis state store",
                    "wasm_exec.integrations.rustic.WasmExecExecutorResolver", ours,
                    args.requests),
            measure("Rustic's PythonExecExecutor (in-process exec, no sandbox)",
                    RUSTIC_EXECUTOR, lambda url: {}, args.requests)]
    print(f"{'guild on Ray, request to reply':60} {'median':>9} {'p90':>9} "
          f"{'PSS/actor':>10} {'PSS rest':>9}")
    for r in rows:
        print(f"{r['label']:60} {r['median_ms']:7.2f}ms {r['p90_ms']:7.2f}ms "
              f"{r['actor_pss_mib']:7.0f}MiB {r['others_pss_mib']:6.0f}MiB")
    print(f"(machine: {os.cpu_count()} cores; PSS rest: Ray's own processes and "
          "redis-server, started by this run)")


if __name__ == "__main__":
    main()
