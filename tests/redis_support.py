"""A throwaway redis-server on the loopback interface, for the tests that need one."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest


def redis_server_path() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if shutil.which("/usr/bin/redis-server") else None)


# tests/conftest.py fails (rather than skips) a test with the `redis` mark and this one
# when WASM_EXEC_REQUIRE_REDIS=1, as CI sets (.ci/services.sh installs redis-server)
needs_redis = pytest.mark.skipif(
    redis_server_path() is None,
    reason="redis-server is not installed (apt-get install redis-server)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """Start redis-server on 127.0.0.1 (a free port, no persistence); yields (host, port)
    and stops it afterwards."""
    path = redis_server_path()
    assert path is not None
    for _attempt in range(5):
        port = _free_port()
        workdir = tempfile.mkdtemp(prefix="wasm-exec-redis-")
        proc = subprocess.Popen(
            [path, "--bind", "127.0.0.1", "--port", str(port), "--protected-mode", "yes",
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", workdir,
             "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None and not _ping(port):
            time.sleep(0.05)
        if proc.poll() is None and _ping(port):
            break
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        raise RuntimeError("redis-server did not start on the loopback interface")
    try:
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
