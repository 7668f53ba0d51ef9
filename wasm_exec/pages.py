"""Comparing and copying an interpreter's memory page by page (4 KiB pages): which pages
of one memory differ from another's (memcmp, which releases the GIL), and their contents.
Used by the session (images that copy only what changed), sharing.py and parking.py."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
from array import array
from collections.abc import Callable, Iterator
from typing import Any

PAGE = 4096
CHUNK = 64 * PAGE  # compared whole first; only a chunk that differs is compared by page
ZEROS = bytes(CHUNK)

_libc: Any = None


def memcmp() -> Any:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None)
        func = libc.memcmp
        func.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
        func.restype = ctypes.c_int
        _libc = func
    return _libc


class Pinned:
    """The address of a buffer's bytes (held while in use: bytes, bytearray or mmap)."""

    __slots__ = ("address", "_hold", "_buf")

    def __init__(self, buf: bytes | bytearray | mmap.mmap | memoryview) -> None:
        self._buf = buf
        if isinstance(buf, bytes):
            self._hold: Any = None
            self.address = ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value or 0
        else:
            self._hold = (ctypes.c_char * len(buf)).from_buffer(buf)
            self.address = ctypes.addressof(self._hold)

    def release(self) -> None:
        self._hold = None
        self._buf = None


@contextlib.contextmanager
def _compared(memory: Any, base: Any | None,
              base_size: int) -> Iterator[tuple[Callable[..., int], int, int | None, int]]:
    """memcmp and the addresses of ``memory``, of ``base`` (None when there is none) and
    of a page of zeros, pinned while the block runs."""
    mem = Pinned(memory)
    ref = Pinned(base) if base is not None and base_size else None
    zeros = Pinned(ZEROS)
    try:
        yield memcmp(), mem.address, None if ref is None else ref.address, zeros.address
    finally:
        mem.release()
        if ref is not None:
            ref.release()
        zeros.release()


def changed_pages(memory: Any, size: int, base: Any | None, base_size: int) -> array:
    """Indices of the 4 KiB pages of ``memory`` (``size`` bytes) that differ from ``base``
    (``base_size`` bytes; past its end, from zeros). memcmp releases the GIL."""
    out = array("I")
    with _compared(memory, base, base_size) as (cmp, a, ref, zeros):
        for start in range(0, size, CHUNK):
            n = min(CHUNK, size - start)
            if ref is not None and start + n <= base_size:
                if not cmp(a + start, ref + start, n):
                    continue
            elif start >= base_size and not cmp(a + start, zeros, n):
                continue
            for p in range(start, start + n, PAGE):
                other = ref + p if ref is not None and p + PAGE <= base_size else zeros
                if cmp(a + p, other, PAGE):
                    out.append(p // PAGE)
    return out


def changed_among(memory: Any, size: int, base: Any | None, base_size: int,
                  candidates: list[int]) -> array:
    """The pages among ``candidates`` where ``memory`` differs from ``base`` (as
    :func:`changed_pages`, comparing only those)."""
    out = array("I")
    with _compared(memory, base, base_size) as (cmp, a, ref, zeros):
        for p in candidates:
            at = p * PAGE
            if at + PAGE > size:
                continue
            other = ref + at if ref is not None and at + PAGE <= base_size else zeros
            if cmp(a + at, other, PAGE):
                out.append(p)
    return out


def gather(memory: Any, pages: array, size: int | None = None) -> bytes:
    """The contents of ``pages`` of ``memory``, one after the other (zeros past ``size``)."""
    view = memoryview(memory)
    end = len(view) if size is None else size
    parts = []
    for p in pages:
        at = p * PAGE
        if at + PAGE <= end:
            parts.append(view[at:at + PAGE])
        else:
            parts.append(ZEROS[:PAGE])
    try:
        return b"".join(parts)
    finally:
        del parts
        view.release()
