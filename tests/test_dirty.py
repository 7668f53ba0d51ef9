"""Roll-back images copy only the pages a call wrote (issue 15 item 2), and stay exact.

The kernel lists the written pages (wasm_exec/dirty.py); where it cannot, images are
copied whole. Either way the image after a call must be the memory, byte for byte: these
tests compare them after calls that write a little, a lot, grow the memory, free it, and
after a roll-back and a parked agent's return.
"""

from __future__ import annotations

import ctypes
import mmap

import pytest

from wasm_exec import PythonExecExecutor, PythonExecExecutorResolver, dirty

CALLS = [
    "x = 0",
    "x += 1",
    "x += 1",
    "big = [i for i in range(200_000)]",          # grows the memory
    "x += 1",
    "del big",
    "s = 'a' * 3_000_000",
    "s = s[:10]\nx += 1",
    "with open('/tmp/f.txt', 'w') as f:\n    f.write('hello' * 1000)",
] + ["x += 1"] * 40  # (past a relearning of the hot pages)


def _same_as_memory(ex: PythonExecExecutor) -> None:
    session = ex._session
    image = session.wait_snapshot(current=True)
    assert image is not None
    base = ctypes.addressof(session._memory.data_ptr(session._store).contents)
    size = session._memory.data_len(session._store)
    assert image.size == size
    live = ctypes.string_at(base, size)
    held = bytes(image.memory) if not isinstance(image.memory, mmap.mmap) \
        else image.memory[:size]
    assert held == live, "the image differs from the memory"


def test_the_kernel_lists_written_pages_here():
    """This project's machines (Linux >= 6.7) have what the tracking needs; elsewhere
    images are copied whole (the other tests check the images either way)."""
    import platform
    release = tuple(int(x) for x in platform.release().split(".")[:2] if x.isdigit())
    if platform.system() == "Linux" and release >= (6, 7):
        assert dirty.open_tracker() is not None


def test_images_are_the_memory_after_every_call():
    with PythonExecExecutor(timeout_seconds=20) as ex:
        for code in CALLS:
            assert ex.execute(code).success, code
            _same_as_memory(ex)
        if dirty.open_tracker() is not None:
            assert ex._session._dirty is not None  # (tracked, not copied whole)


def test_a_roll_back_after_tracked_calls_restores_the_last_answered_call():
    with PythonExecExecutor(timeout_seconds=20) as ex:
        for code in CALLS[:12]:
            ex.execute(code)
        r = ex.execute("x = -1\nbig = [0] * 1_000_000\nwhile True: pass",
                       limits={"fuel": 100_000_000})
        assert r.rolled_back
        r = ex.execute("", return_globals=["x", "s"])
        assert r.globals == {"x": 7, "s": "a" * 10}
        for code in CALLS[12:20]:
            ex.execute(code)
            _same_as_memory(ex)


def test_parked_agents_come_back_exactly():
    with PythonExecExecutorResolver(max_agents=1, idle_timeout_seconds=None) as res:
        for rnd in range(3):
            for name in ("a", "b"):
                ex = res.resolve(name)
                r = ex.execute(f"n = globals().get('n', 0) + 1\ntag = '{name}' * n",
                               return_globals=["n", "tag"])
                assert r.globals == {"n": rnd + 1, "tag": name * (rnd + 1)}
                _same_as_memory(ex)


@pytest.mark.parametrize("size", [4, 64])
def test_the_tracker_sees_every_write(size):
    tracker = dirty.open_tracker()
    if tracker is None:
        pytest.skip("this kernel cannot list written pages (images are copied whole)")
    page = dirty.PAGE
    buf = mmap.mmap(-1, size * page)
    view = (ctypes.c_char * (size * page)).from_buffer(buf)
    start = ctypes.addressof(view)
    try:
        tracker.track(start, size * page)
        for look in range(1, 3 * dirty.RELEARN):
            wrote = {(look * 7) % size, (look * 3) % size, 1}
            for p in wrote:
                buf[p * page + look % page] = look % 256
            got = {p for lo, hi in tracker.written(start, size * page)
                   for p in range(lo // page, hi // page)}
            assert wrote <= got, (look, wrote, got)
    finally:
        tracker.close()
        del view


def _memory_bytes(ex: PythonExecExecutor) -> bytes:
    session = ex._session
    base = ctypes.addressof(session._memory.data_ptr(session._store).contents)
    return ctypes.string_at(base, session._memory.data_len(session._store))


def test_restores_that_write_only_differing_pages_are_exact():
    """A new interpreter is its boot image; a fork is its original's image; a roll-back
    is the last answered call's image: byte for byte, although each wrote only the pages
    that differ (from the module's memory, or from the ready interpreter's)."""
    import wasm_exec.supply as pool

    with PythonExecExecutor(timeout_seconds=20) as first:
        first.execute("x = 1")
        with PythonExecExecutor(timeout_seconds=20) as ex:
            template = pool.template_of(ex._key)
            assert template is not None
            assert _memory_bytes(ex) == bytes(template.memory[:template.size])
            ex.execute("plan = list(range(1000))")
            image = ex._session.wait_snapshot(current=True)
            with ex.fork() as copy:
                assert _memory_bytes(copy) == bytes(image.memory[:image.size])
            r = ex.execute("plan = None\nwhile True: pass", limits={"fuel": 20_000_000})
            assert r.rolled_back
            assert _memory_bytes(ex) == bytes(image.memory[:image.size])


def test_a_shared_image_and_its_copies_stay_apart():
    from wasm_exec import sharing
    from wasm_exec.snapshot import Snapshot

    memory = mmap.mmap(-1, 8 * 4096)
    memory[:5] = b"hello"
    image = Snapshot(memory, None, {}, 0, "x", b"0" * 16)
    shared = sharing.shareable(image)
    assert bytes(shared.memory[:8 * 4096]) == bytes(memory[:])
    one, two = sharing.cow_copy(shared), sharing.cow_copy(shared)
    if one is None:
        pytest.skip("no memory files here (images are plain copies)")
    one[:5] = b"HELLO"
    assert two[:5] == b"hello" and shared.memory[:5] == b"hello"
    shared.memory[:5] = b"xxxxx"  # (its own view is private too)
    assert sharing.cow_copy(shared)[:5] == b"hello"
