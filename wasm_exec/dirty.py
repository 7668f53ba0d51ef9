"""Which pages of an interpreter's memory a call wrote, from the kernel (Linux >= 6.7).

A roll-back image has to follow the interpreter's memory after every call. Copying the
whole memory each time costs its size (25 MiB for the default runtime, 40-100 MiB for the
scientific one) whatever the call did; a call like ``x += 1`` writes about 2 MiB of it.
The kernel can say which pages were written: the memory range is registered with a
userfaultfd in asynchronous write-protect mode (``UFFD_FEATURE_WP_ASYNC``: a write to a
protected page is let through at once and the page marked written, no fault handler
thread), and the ``PAGEMAP_SCAN`` ioctl of ``/proc/self/pagemap`` lists the written pages
and protects them again, in one call. Both work for any user (``UFFD_USER_MODE_ONLY``)
and cost a few microseconds per call plus the pages listed.

Where the kernel lacks them (older kernels, other systems, a sandbox that forbids the
system call), :func:`open_tracker` returns None and images are copied whole, as before.
Nothing here is reachable by the guest: it only reads its host's page tables.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import platform
import struct
import sys
import threading

PAGE = mmap.PAGESIZE

# <linux/userfaultfd.h>, <linux/fs.h> (the ioctl numbers are _IOWR(type, nr, size))
_UFFD_API = 0xAA
_UFFD_USER_MODE_ONLY = 1
_UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
_UFFD_FEATURE_WP_ASYNC = 1 << 15
_UFFDIO_REGISTER_MODE_WP = 1 << 1
_UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
_PM_SCAN_WP_MATCHING = 1 << 0
_PM_SCAN_CHECK_WPASYNC = 1 << 1
_PAGE_IS_WRITTEN = 1 << 1
_SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282, "arm64": 282}.get(platform.machine())


def _iowr(kind: int, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | nr


_UFFDIO_API = _iowr(0xAA, 0x3F, 24)
_UFFDIO_REGISTER = _iowr(0xAA, 0x00, 32)
_UFFDIO_WRITEPROTECT = _iowr(0xAA, 0x06, 24)
_PAGEMAP_SCAN = _iowr(0x66, 16, 96)

_REGIONS = 1024  # regions one scan returns (a longer list takes more scans)
# A call writes mostly the same pages each time (the stack, the allocator's and the
# runner's own state: about 450 of the 480 pages a call like `x += 1` writes). Those are
# left unprotected (a protected page costs a fault at its first write in each call) and
# copied after every call; only the others are protected. Which pages are hot is learnt
# from two calls in a row, again every RELEARN calls.
RELEARN = 32

_lock = threading.Lock()
_state: dict[str, object] = {}  # "libc", "pagemap" (fd), "ok" (bool), once per process


def _libc() -> ctypes.CDLL:
    return _state["libc"]  # type: ignore[return-value]


def _setup() -> bool:
    """Whether this kernel offers both mechanisms (checked once per process)."""
    with _lock:
        if "ok" in _state:
            return bool(_state["ok"])
        ok = False
        if sys.platform.startswith("linux") and _SYS_USERFAULTFD is not None \
                and os.environ.get("WASM_EXEC_DIRTY_PAGES", "1") != "0":
            try:
                _state["libc"] = ctypes.CDLL(None, use_errno=True)
                _libc().syscall.restype = ctypes.c_long
                _libc().ioctl.restype = ctypes.c_int
                _state["pagemap"] = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
                ok = _self_test()
            except (OSError, AttributeError):
                ok = False
            if not ok and "pagemap" in _state:
                os.close(_state.pop("pagemap"))  # type: ignore[arg-type]
        _state["ok"] = ok
        return ok


def _self_test() -> bool:
    """Track a scratch mapping: a write must be seen, once."""
    tracker = DirtyPages._open()
    if tracker is None:
        return False
    buf = mmap.mmap(-1, 4 * PAGE)
    try:
        start = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        tracker.track(start, 4 * PAGE)
        buf[PAGE + 5:PAGE + 6] = b"x"
        first = tracker.written(start, 4 * PAGE)
        second = tracker.written(start, 4 * PAGE)
        return first == [(PAGE, 2 * PAGE)] and second == []
    except OSError:
        return False
    finally:
        tracker.close()
        # (the ctypes view is gone: the mapping can close)
        try:
            buf.close()
        except BufferError:
            pass


def open_tracker() -> DirtyPages | None:
    """A tracker for one interpreter's memory, or None where the kernel cannot."""
    if not _setup():
        return None
    return DirtyPages._open()


class DirtyPages:
    """The written pages of one tracked range (one userfaultfd; close it when done)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._start = 0
        self._length = 0
        self._vec = (ctypes.c_uint64 * (3 * _REGIONS))()
        self._looks = 0  # calls of written() since track()
        self._hot: set[int] = set()  # pages left unprotected (always reported written)
        self._learnt: set[int] = set()

    @classmethod
    def _open(cls) -> DirtyPages | None:
        fd = _libc().syscall(_SYS_USERFAULTFD,
                             os.O_CLOEXEC | os.O_NONBLOCK | _UFFD_USER_MODE_ONLY)
        if fd < 0:
            return None
        try:
            api = bytearray(struct.pack("QQQ", _UFFD_API,
                                        _UFFD_FEATURE_WP_ASYNC | _UFFD_FEATURE_WP_UNPOPULATED,
                                        0))
            fcntl.ioctl(fd, _UFFDIO_API, api)
        except OSError:
            os.close(fd)
            return None
        return cls(fd)

    @property
    def tracked(self) -> tuple[int, int]:
        """(start address, length) of what is tracked."""
        return self._start, self._length

    def track(self, start: int, length: int) -> None:
        """Track ``length`` bytes from ``start`` (page-aligned): all of it counts as
        unwritten from now on. A range that extends the tracked one adds its new part;
        any other replaces it. OSError when the kernel refuses."""
        if start == self._start and self._length and length >= self._length:
            new_start, new_length = start + self._length, length - self._length
        else:
            new_start, new_length = start, length
            self._length = 0
        if new_length:
            reg = bytearray(struct.pack("QQQQ", new_start, new_length,
                                        _UFFDIO_REGISTER_MODE_WP, 0))
            fcntl.ioctl(self._fd, _UFFDIO_REGISTER, reg)
        self._start, self._length = start, length
        self._protect(start, length, True)
        self._looks = 0
        self._hot = set()

    def written(self, start: int, length: int) -> list[tuple[int, int]]:
        """The ranges (byte offsets from ``start``, page-aligned) written since the last
        look (and the hot pages, always). OSError when the kernel refuses (e.g. the range
        is not the tracked one)."""
        if start != self._start or length > self._length:
            raise OSError(errno.EINVAL, "not the tracked range")
        self._looks += 1
        phase = self._looks % RELEARN
        learning = phase in (1, 2)
        regions = self._scan(start, length, protect=learning)
        pages = {p for lo, hi in regions for p in range(lo // PAGE, hi // PAGE)}
        if phase == 1:
            self._learnt, self._hot = pages, set()  # (all protected again by the scan)
        elif phase == 2:
            self._hot = pages & self._learnt
            for lo, hi in _runs(self._hot):
                self._protect(start + lo * PAGE, (hi - lo) * PAGE, False)
        else:
            for lo, hi in _runs(pages - self._hot):
                self._protect(start + lo * PAGE, (hi - lo) * PAGE, True)
        return regions

    def _protect(self, start: int, length: int, on: bool) -> None:
        wp = bytearray(struct.pack("QQQ", start, length,
                                   _UFFDIO_WRITEPROTECT_MODE_WP if on else 0))
        fcntl.ioctl(self._fd, _UFFDIO_WRITEPROTECT, wp)

    def _scan(self, start: int, length: int, protect: bool) -> list[tuple[int, int]]:
        """The written ranges (offsets from ``start``); ``protect``: protect them again."""
        out: list[tuple[int, int]] = []
        at, end = start, start + length
        vec = self._vec
        flags = _PM_SCAN_CHECK_WPASYNC | (_PM_SCAN_WP_MATCHING if protect else 0)
        while at < end:
            arg = (ctypes.c_uint64 * 12)(
                96, flags, at, end, 0,
                ctypes.addressof(vec), _REGIONS, 0, 0, _PAGE_IS_WRITTEN, 0, _PAGE_IS_WRITTEN)
            n = _libc().ioctl(_state["pagemap"], ctypes.c_ulong(_PAGEMAP_SCAN),
                              ctypes.byref(arg))
            if n < 0:
                raise OSError(ctypes.get_errno(), "PAGEMAP_SCAN")
            for i in range(n):
                lo, hi = vec[3 * i] - start, vec[3 * i + 1] - start
                if out and out[-1][1] == lo:
                    out[-1] = (out[-1][0], hi)
                else:
                    out.append((lo, hi))
            walked = arg[4]
            if walked <= at:
                break
            at = walked
        return out

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


def _runs(pages: set[int]) -> list[tuple[int, int]]:
    """Sorted page numbers as (first, end) runs."""
    out: list[tuple[int, int]] = []
    for p in sorted(pages):
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out
