"""What tools and files cost: ``python -m wasm_exec.bench_files [--runtime NAME]``.

Prints medians of a few runs, with the same work done by native CPython (this process)
in the same run as the yardstick:

- a tool call from the agent's code (a trivial host function, JSON both ways), per call,
  against a native call of the same function with a JSON round trip of its arguments and
  result;
- ``write_file`` + ``read_file`` of 1 MiB, against writing and reading 1 MiB to a
  temporary file of the host's;
- ``execute("pass", files={...}, output_files=[...])`` with one small file each way,
  against ``execute("pass")``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from .executor import PythonExecExecutor


def _median(fn: Callable[[], float], runs: int = 5) -> float:
    return statistics.median(fn() for _ in range(runs))


def _ping(x: int) -> int:
    return x + 1


def bench(runtime: str, calls: int = 1000) -> dict[str, float]:
    out: dict[str, float] = {}
    with PythonExecExecutor(runtime=runtime, tools={"ping": _ping}, fuel=None) as ex:
        ex.execute("pass")

        def tool_loop() -> float:
            r = ex.execute(f"for i in range({calls}):\n    ping(i)")
            assert r.success, r.error
            return r.duration_seconds

        def empty_loop() -> float:
            r = ex.execute(f"for i in range({calls}):\n    pass")
            return r.duration_seconds

        out["tool call, per call (ms)"] = (_median(tool_loop) - _median(empty_loop)) / calls * 1e3

        def native() -> float:
            t = time.perf_counter()
            for i in range(calls):
                json.loads(json.dumps(_ping(*json.loads(json.dumps([i])))))
            return time.perf_counter() - t

        out["native call + JSON round trip, per call (ms)"] = _median(native) / calls * 1e3

        blob = os.urandom(1 << 20)

        def files() -> float:
            t = time.perf_counter()
            ex.write_file("blob.bin", blob)
            assert ex.read_file("blob.bin") == blob
            return time.perf_counter() - t

        out["write_file + read_file, 1 MiB (ms)"] = _median(files) * 1e3

        def host_files() -> float:
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "blob.bin")
                t = time.perf_counter()
                with open(path, "wb") as f:
                    f.write(blob)
                with open(path, "rb") as f:
                    assert f.read() == blob
                return time.perf_counter() - t

        out["native write + read of a host file, 1 MiB (ms)"] = _median(host_files) * 1e3

        def with_files() -> float:
            t = time.perf_counter()
            r = ex.execute("open('o.txt', 'w').write(open('i.txt').read())",
                           files={"i.txt": b"x" * 100}, output_files=["o.txt"])
            assert r.files == {"o.txt": b"x" * 100}, r.error
            return time.perf_counter() - t

        def plain() -> float:
            t = time.perf_counter()
            ex.execute("pass")
            return time.perf_counter() - t

        out["execute with a file in and out (ms)"] = _median(with_files, 9) * 1e3
        out["execute('pass') (ms)"] = _median(plain, 9) * 1e3
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", action="append", help="minimal (default), scientific")
    args = parser.parse_args(argv)
    for runtime in args.runtime or ["minimal"]:
        print(f"[{runtime}]")
        for name, value in bench(runtime).items():
            print(f"  {name:48s} {value:9.3f}")


if __name__ == "__main__":
    main()
