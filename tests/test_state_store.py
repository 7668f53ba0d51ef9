"""The state store: an agent's image saved after each answered call, and resumed from by a
new executor of the same identity (directory and Redis stores)."""

from __future__ import annotations

import logging
import os
import random
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_support import needs_redis, redis_server
from tests.scientific_support import needs_scientific
from wasm_exec import (
    ConfigurationError,
    DirectoryStateStore,
    PythonExecExecutor,
    PythonExecExecutorResolver,
    RedisStateStore,
    StateStoreError,
)
from wasm_exec.state_store import ChunkedDeflate, encode_identity, state_name

KEY = b"k" * 32


def make(store: object, identity: object = ("alice", "g1"), **kwargs: object) \
        -> PythonExecExecutor:
    kwargs.setdefault("timeout_seconds", 10)
    return PythonExecExecutor(state_store=store, state_key=identity, **kwargs)  # type: ignore[arg-type]


def stored_files(path: Path) -> list[str]:
    return sorted(os.listdir(path))


# ------------------------------------------------------------------ the compressor
def test_chunked_deflate_is_one_zlib_stream_across_versions() -> None:
    rng = random.Random(7)
    packer = ChunkedDeflate(chunk=4096)
    memory = bytearray(4096 * 40 + 123)  # (zero chunks, and a partial last chunk)
    memory[5000:9000] = rng.randbytes(4000)  # (chunks 1 and 2)
    memory[-100:] = b"tail" * 25
    body = packer.compress(memory)
    assert zlib.decompress(body) == bytes(memory)
    assert packer.last_changed == 3  # two non-zero chunks and the partial one
    for _ in range(5):
        chunk = rng.randrange(0, 40)
        at = chunk * 4096 + rng.randrange(0, 4086)
        memory[at:at + 10] = rng.randbytes(10)
        assert zlib.decompress(packer.compress(memory)) == bytes(memory)
        assert packer.last_changed == 1  # only the chunk written since
    assert zlib.decompress(packer.compress(memory)) == bytes(memory)
    assert packer.last_changed == 0
    # chunks written back to zeros, and a memory that grew
    memory[:4096 * 40] = bytes(4096 * 40)
    memory += b"\x01" * 5000
    assert zlib.decompress(packer.compress(memory)) == bytes(memory)


def test_identity_is_encoded_unambiguously() -> None:
    names = {state_name(i) for i in [("alice", "g"), ("alice/g",), ("alice", "", "g"),
                                      ("alice", "g", ""), ("alic", "eg"), ("\ud800",),
                                      ("\udfff",)]}
    assert len(names) == 7
    assert encode_identity(("a", "b")) != encode_identity(("ab",))
    assert len(state_name(("x" * 100_000,))) == 64  # (a fixed-length, safe file name)


# ----------------------------------------------------------------- directory store
def test_resume_from_directory(tmp_path: Path) -> None:
    ex = make(tmp_path)
    r = ex.execute("x = 41\nnames = ['a']\ndef twice(v):\n    return 2 * v")
    assert r.success and not r.state_reset
    ex.close()  # (waits for the last save)
    [name] = stored_files(tmp_path)
    assert name == state_name(("alice", "g1")) + DirectoryStateStore.SUFFIX
    # owner-only: an image holds whatever the agent computed
    assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600

    again = make(tmp_path)
    r = again.execute("x += 1\nout = [x, names, twice(x)]", return_globals=["out"])
    assert r.success and not r.state_reset
    assert r.globals == {"out": [42, ["a"], 84]}
    again.close()
    # another identity, same store: its own (empty) state
    other = make(tmp_path, ("alice", "g2"))
    r = other.execute("x")
    assert r.error_type == "NameError" and not r.state_reset
    other.close()


def test_stored_file_is_a_plain_image(tmp_path: Path) -> None:
    ex = make(tmp_path, "bob", whitelisted_imports=["math"])
    ex.execute("import math\nr = math.sqrt(81)")
    assert ex.flush_state()
    [name] = stored_files(tmp_path)
    loaded = PythonExecExecutor.load(tmp_path / name)
    assert loaded.execute("", return_globals=["r"]).globals == {"r": 9.0}
    loaded.close()
    ex.close()


def test_store_holds_the_last_answered_call(tmp_path: Path) -> None:
    ex = make(tmp_path)
    ex.execute("x = 1")
    r = ex.execute("x = 2\n1 / 0")  # answered (with an exception): saved
    assert r.error_type == "ZeroDivisionError"
    r = ex.execute("x = 3\nwhile True: pass", limits={"timeout_seconds": 0.5})
    assert r.limit == "timeout" and r.rolled_back  # not answered: not saved
    assert ex.flush_state()
    resumed = make(tmp_path)
    assert resumed.execute("", return_globals=["x"]).globals == {"x": 2}
    resumed.close()
    # the interrupted call left the live agent where the store has it too
    assert ex.execute("", return_globals=["x"]).globals == {"x": 2}
    ex.close()


def test_saves_replace_atomically(tmp_path: Path) -> None:
    ex = make(tmp_path)
    for i in range(5):
        ex.execute(f"x = {i}")
    assert ex.flush_state()
    assert len(stored_files(tmp_path)) == 1  # (no temporary file left behind)
    assert ex.state_store is not None
    ex.close()
    resumed = make(tmp_path)
    assert resumed.execute("", return_globals=["x"]).globals == {"x": 4}
    resumed.close()


def test_reset_and_forget_delete_the_stored_image(tmp_path: Path) -> None:
    ex = make(tmp_path)
    ex.execute("x = 1")
    ex.flush_state()
    ex.reset()
    assert stored_files(tmp_path) == []
    ex.execute("y = 2")
    ex.flush_state()
    ex.forget_state()
    assert stored_files(tmp_path) == []
    assert ex.execute("", return_globals=["y"]).globals == {"y": 2}  # (the live one stays)
    ex.close()


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_image_starts_fresh(tmp_path: Path, damage: str,
                                    caplog: pytest.LogCaptureFixture) -> None:
    ex = make(tmp_path)
    ex.execute("x = 1")
    ex.close()
    [name] = stored_files(tmp_path)
    path = tmp_path / name
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    elif damage == "garbage":
        path.write_bytes(os.urandom(5000))
    else:
        path.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="wasm_exec.state_store"):
        fresh = make(tmp_path)
    r = fresh.execute("y = 1", return_globals=["y"])
    assert r.success and r.state_reset  # (said plainly: the stored state was not used)
    assert "starts on a fresh interpreter" in caplog.text
    assert fresh.execute("x").error_type == "NameError"
    fresh.close()


def test_oversized_image_is_refused_unread(tmp_path: Path) -> None:
    ex = make(tmp_path)
    ex.close()
    path = tmp_path / (state_name(("alice", "g1")) + DirectoryStateStore.SUFFIX)
    with open(path, "wb") as f:  # (sparse: a 3 GiB file that takes no disk)
        f.write(b"WASM-EXEC-IMAGE\n" + (16).to_bytes(4, "little"))
        f.truncate(3 << 30)
    store = DirectoryStateStore(tmp_path)
    with pytest.raises(StateStoreError, match="more than an image"):
        store.get(state_name(("alice", "g1")), 100 << 20)
    fresh = make(tmp_path, memory_bytes=64 << 20)
    assert fresh.execute("x = 1").state_reset
    fresh.close()


def test_key_signs_images_per_agent(tmp_path: Path) -> None:
    ex = make(tmp_path, "alice", state_store_key=KEY)
    ex.execute("secret = 'alice'")
    ex.close()
    bob = make(tmp_path, "bob", state_store_key=KEY)
    bob.execute("secret = 'bob'")
    bob.close()
    alice_file = tmp_path / (state_name(("alice",)) + DirectoryStateStore.SUFFIX)
    bob_file = tmp_path / (state_name(("bob",)) + DirectoryStateStore.SUFFIX)

    # the right key: resumed
    again = make(tmp_path, "alice", state_store_key=KEY)
    r = again.execute("", return_globals=["secret"])
    assert r.globals == {"secret": "alice"} and not r.state_reset
    again.close()
    # another key, or none: refused, fresh
    for key in (b"x" * 32, None):
        other = make(tmp_path, "alice", state_store_key=key)
        r = other.execute("", return_globals=["secret"])
        assert r.state_reset and "secret" in r.globals_errors
        other.close()
    # bob's image put under alice's name (same deployment key): refused
    os.replace(bob_file, alice_file)
    swapped = make(tmp_path, "alice", state_store_key=KEY)
    r = swapped.execute("", return_globals=["secret"])
    assert r.state_reset and "secret" in r.globals_errors
    swapped.close()


def test_another_policy_does_not_resume(tmp_path: Path) -> None:
    ex = make(tmp_path, whitelisted_imports=["math", "json"])
    ex.execute("import json\nx = 1")
    ex.close()
    # an allow-list narrowed since: the saved interpreter (its runner holds the old list)
    # is not resumed
    narrowed = make(tmp_path, whitelisted_imports=["math"])
    r = narrowed.execute("", return_globals=["x"])
    assert r.state_reset and "x" in r.globals_errors
    assert "not allowed" in (narrowed.execute("import json").error or "")
    narrowed.close()


def test_bad_configuration(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="state_key"):
        PythonExecExecutor(state_store=tmp_path)
    with pytest.raises(ConfigurationError, match="state_store"):
        PythonExecExecutor(state_key="alice")
    with pytest.raises(ConfigurationError, match="str"):
        PythonExecExecutor(state_store=tmp_path, state_key=("alice", 3))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="16 bytes"):
        PythonExecExecutor(state_store=tmp_path, state_key="a", state_store_key=b"short")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigurationError, match="state directory"):
        PythonExecExecutor(state_store=tmp_path / "file" / "sub", state_key="a")
    with pytest.raises(ConfigurationError, match="needs a state_store"):
        PythonExecExecutorResolver(state_store_key=KEY)


def test_failed_save_is_reported_not_raised(tmp_path: Path) -> None:
    class Broken(DirectoryStateStore):
        def put(self, name: str, parts: object) -> None:
            raise StateStoreError("disk full")

    ex = make(Broken(tmp_path))
    r = ex.execute("x = 1", return_globals=["x"])
    assert r.success and r.globals == {"x": 1}  # (the call itself is not affected)
    with pytest.raises(StateStoreError, match="disk full"):
        ex.flush_state()
    assert ex.execute("x += 1", return_globals=["x"]).globals == {"x": 2}
    ex.close()


# ------------------------------------------------------------------------ resolver
def test_resolver_resumes_across_resolvers_and_evictions(tmp_path: Path) -> None:
    resolver = PythonExecExecutorResolver(max_agents=2, idle_timeout_seconds=None,
                                          pool_size=0, state_store=str(tmp_path),
                                          state_store_key=KEY, timeout_seconds=10)
    for i, agent in enumerate(["a", "b", "c", "d"]):
        assert resolver.resolve(agent, "guild").execute(f"v = {i}").success
    # only two interpreters live; the released ones continue from the store
    assert len(resolver.live_agents()) <= 2
    for i, agent in enumerate(["a", "b", "c", "d"]):
        r = resolver.resolve(agent, "guild").execute("v += 10", return_globals=["v"])
        assert r.globals == {"v": i + 10} and not r.state_reset
    resolver.close()

    # a new resolver (as in another process) finds every agent where it was
    second = PythonExecExecutorResolver(idle_timeout_seconds=None, pool_size=0,
                                        state_store=tmp_path, state_store_key=KEY)
    r = second.resolve("c", "guild").execute("", return_globals=["v"])
    assert r.globals == {"v": 12} and not r.state_reset
    # keys are tuples: ("c", "guild") is not ("c/guild",)
    assert second.resolve("c/guild").execute("v").error_type == "NameError"
    second.forget("c", "guild")
    assert not (tmp_path / (state_name(("c", "guild")) + DirectoryStateStore.SUFFIX)).exists()
    second.forget("d", "guild")  # (never resolved here: its stored image goes too)
    assert not (tmp_path / (state_name(("d", "guild")) + DirectoryStateStore.SUFFIX)).exists()
    second.close()


@pytest.mark.scientific
@needs_scientific
def test_resume_scientific(tmp_path: Path) -> None:
    kwargs = dict(runtime="scientific", whitelisted_imports=["numpy"],
                  default_imports={"np": "numpy"})
    ex = make(tmp_path, "sci", **kwargs)
    ex.execute("a = np.arange(6).reshape(2, 3)")
    ex.execute("a = a * 7")
    ex.close()
    again = make(tmp_path, "sci", **kwargs)
    r = again.execute("out = a.sum(axis=0).tolist()", return_globals=["out"])
    assert r.globals == {"out": [21, 35, 49]} and not r.state_reset
    again.close()


# ----------------------------------------------------------------------- Redis store
@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as (host, port):
        yield f"redis://{host}:{port}/0"


@pytest.mark.redis
@needs_redis
def test_redis_store_operations(redis_url: str) -> None:
    store = RedisStateStore(redis_url, prefix="test-ops:")
    name = state_name(("x",))
    assert store.get(name, 100) is None
    store.put(name, [b"abc", b"def"])
    assert store.get(name, 100) == b"abcdef"
    with pytest.raises(StateStoreError, match="more than 5 bytes"):
        store.get(name, 5)  # (read no further than the cap allows)
    store.delete(name)
    assert store.get(name, 100) is None
    store.delete(name)  # (nothing there: no error)
    store.close()


@pytest.mark.redis
@needs_redis
def test_resume_from_redis(redis_url: str) -> None:
    ex = make(redis_url, ("carol", "guild", "org"), state_store_key=KEY,
              whitelisted_imports=["json"])
    ex.execute("import json\ndoc = json.dumps({'n': 1})")
    ex.execute("doc = doc.upper()")
    ex.close()
    again = make(redis_url, ("carol", "guild", "org"), state_store_key=KEY,
                 whitelisted_imports=["json"])
    r = again.execute("out = json.loads(doc.lower())", return_globals=["out"])
    assert r.globals == {"out": {"n": 1}} and not r.state_reset
    again.forget_state()
    again.close()
    fresh = make(redis_url, ("carol", "guild", "org"), state_store_key=KEY,
                 whitelisted_imports=["json"])
    assert fresh.execute("doc").error_type == "NameError"
    fresh.close()


@pytest.mark.redis
@needs_redis
def test_redis_unreachable_is_reported(redis_url: str) -> None:
    store = RedisStateStore("redis://127.0.0.1:1/0", timeout_seconds=1)
    with pytest.raises(StateStoreError, match="cannot read"):
        store.get(state_name(("x",)), 100)
    store.close()
