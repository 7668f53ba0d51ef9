"""Memory pages interpreters share instead of each holding a copy (issue 15 item 2).

- A fresh instance's linear memory is the module's baked memory, which wasmtime maps
  copy-on-write from the compiled file: restoring a snapshot into it writes only the pages
  where the snapshot differs from that memory (:func:`differing_runs`, about a third of a
  boot snapshot), and the rest stays one copy in the page cache for every interpreter.
- A boot snapshot (a configuration's warm-start template) is kept in an anonymous memory
  file (:func:`shareable`): the roll-back snapshot of an interpreter restored from it starts
  as a private mapping of that file (:func:`cow_copy`), so it costs nothing until the
  pages a call wrote are copied into it.

Where memory files are not available, snapshots are plain copies as before.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .pages import CHUNK, PAGE, changed_pages, memcmp

if TYPE_CHECKING:
    from .snapshot import Snapshot

_lock = threading.Lock()
_baked: dict[str, mmap.mmap] = {}          # runtime build -> its modules' baked memory
_runs: dict[int, list[tuple[int, int]]] = {}  # id(snapshot) -> where it differs from baked
_files: dict[int, int] = {}                # id(snapshot) -> the memory file its memory is in


def baked_memory(runtime_sha256: str, address: int, size: int) -> mmap.mmap:
    """The baked memory of this runtime's module: a copy of the fresh instance's memory at
    ``address`` (read once per process, the first time; that instance must be fresh)."""
    with _lock:
        held = _baked.get(runtime_sha256)
        if held is None:
            held = mmap.mmap(-1, max(size, 1))
            ctypes.memmove(ctypes.addressof(ctypes.c_char.from_buffer(held)), address, size)
            _baked[runtime_sha256] = held
        return held


def _address(buf: Any) -> tuple[int, Any]:
    if isinstance(buf, bytes):
        return ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value or 0, None
    view = (ctypes.c_char * len(buf)).from_buffer(buf)
    return ctypes.addressof(view), view


def differing_runs(snapshot: Snapshot, baked: mmap.mmap) -> list[tuple[int, int]]:
    """(offset, length) runs of ``snapshot``'s memory that differ from ``baked`` (zeros past
    its end), whole pages; remembered for snapshots kept for many restores (templates)."""
    key = id(snapshot)
    with _lock:
        cached = _runs.get(key)
    if cached is not None:
        return cached

    pages = changed_pages(snapshot.memory, snapshot.size, baked, len(baked))
    out: list[tuple[int, int]] = []
    for p in pages:
        at = p * PAGE
        if out and out[-1][0] + out[-1][1] == at:
            out[-1] = (out[-1][0], out[-1][1] + PAGE)
        else:
            out.append((at, PAGE))
    if key in _files:
        with _lock:
            _runs[key] = out
        weakref.finalize(snapshot, _runs.pop, key, None)
    return out


def shareable(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` with its memory in an anonymous memory file (the same bytes), so that
    :func:`cow_copy` can map it copy-on-write; ``snapshot`` itself where that is not
    possible."""
    if not hasattr(os, "memfd_create"):
        return snapshot
    try:
        fd = os.memfd_create("wasm-exec-snapshot", os.MFD_CLOEXEC)
    except OSError:
        return snapshot
    try:
        size = snapshot.size
        os.ftruncate(fd, max(size, 1))
        view = mmap.mmap(fd, max(size, 1), flags=mmap.MAP_SHARED,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE)
        src, hold = _address(snapshot.memory)
        dst, dst_hold = _address(view)
        ctypes.memmove(dst, src, size)
        del hold, dst_hold
        view.close()
        # its own view is private too: nothing written through it reaches the file
        memory = mmap.mmap(fd, max(size, 1), flags=mmap.MAP_PRIVATE,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError, BufferError):
        os.close(fd)
        return snapshot
    shared = replace(snapshot, memory=memory)
    with _lock:
        _files[id(shared)] = fd
    weakref.finalize(shared, _forget_file, id(shared), fd)
    return shared


def _forget_file(key: int, fd: int) -> None:
    with _lock:
        _files.pop(key, None)
    os.close(fd)


def cow_copy(snapshot: Snapshot) -> mmap.mmap | None:
    """A private, copy-on-write mapping of ``snapshot``'s memory file (None when it has
    none): a buffer equal to its memory that costs only the pages written into it."""
    with _lock:
        fd = _files.get(id(snapshot))
        if fd is None:
            return None
        try:
            return mmap.mmap(fd, max(snapshot.size, 1), flags=mmap.MAP_PRIVATE,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError):
            return None


def write_differences(dst: int, src: int, size: int) -> None:
    """Make the ``size`` bytes at ``dst`` those at ``src``, writing only the pages that
    differ (compared a chunk, then a page, at a time: memcmp and memmove release the
    GIL), so that pages already equal stay as they are (shared, if they are)."""

    cmp = memcmp()
    for start in range(0, size, CHUNK):
        n = min(CHUNK, size - start)
        if not cmp(dst + start, src + start, n):
            continue
        for p in range(start, start + n, PAGE):
            m = min(PAGE, size - p)
            if cmp(dst + p, src + p, m):
                ctypes.memmove(dst + p, src + p, m)
