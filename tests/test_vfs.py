"""The in-memory WASI file system (wasm_exec.vfs) of the scientific profile.

Unit tests drive the host functions directly on a fake guest memory; guest tests run the
pre-initialised CPython reactor (``turn`` exports) with a minimal harness. The guest tests
are skipped when the artifacts are not at SCI_CWASM / SCI_ZIP (overridable by the
environment variables of the same names).
"""

from __future__ import annotations

import ctypes
import os
import struct
import uuid
from pathlib import Path

import pytest
import wasmtime

from wasm_exec import fsimage, fsnodes, vfs, wasi


def _installed() -> tuple[Path, Path]:
    """The scientific runtime's precompiled module and stdlib zip, when it is installed."""
    from wasm_exec.errors import WasmExecError
    from wasm_exec.runtime import EngineSettings, load_runtime

    try:
        image = load_runtime(EngineSettings(fuel=True), "scientific")
    except WasmExecError:
        return Path("/nonexistent/scientific.cwasm"), Path("/nonexistent/python-stdlib.zip")
    return image.cwasm, image.file("python-stdlib.zip")


_CWASM, _ZIP = _installed()
SCI_CWASM = Path(os.environ.get("SCI_CWASM", str(_CWASM)))
SCI_ZIP = Path(os.environ.get("SCI_ZIP", str(_ZIP)))

pytestmark = pytest.mark.scientific

needs_zip = pytest.mark.skipif(
    not SCI_ZIP.is_file(), reason=f"scientific runtime stdlib zip not found at {SCI_ZIP}")
needs_runtime = pytest.mark.skipif(
    not (SCI_CWASM.is_file() and SCI_ZIP.is_file()),
    reason=f"scientific runtime artifacts not found ({SCI_CWASM}, {SCI_ZIP})")


# ====================================================================== fake memory
class FakeMem:
    """A guest memory in a ctypes buffer, bound to a MemoryFS through bind_memory."""

    SIZE = 1 << 16

    def __init__(self, fs: vfs.MemoryFS) -> None:
        self.buf = ctypes.create_string_buffer(self.SIZE)
        self.base = ctypes.addressof(self.buf)
        self.top = 0x1000  # bump allocator
        fs.bind_memory(lambda caller: (self.base, self.SIZE))

    def alloc(self, data: bytes | int) -> int:
        raw = bytes(data) if isinstance(data, int) else data
        ptr = self.top
        self.top = (self.top + len(raw) + 15) & ~7
        ctypes.memmove(self.base + ptr, raw, len(raw))
        return ptr

    def read(self, ptr: int, n: int) -> bytes:
        return ctypes.string_at(self.base + ptr, n)

    def u32(self, ptr: int) -> int:
        return struct.unpack("<I", self.read(ptr, 4))[0]

    def u64(self, ptr: int) -> int:
        return struct.unpack("<Q", self.read(ptr, 8))[0]

    def iovs(self, *bufs: tuple[int, int]) -> int:
        return self.alloc(b"".join(struct.pack("<II", p, n) for p, n in bufs))


@pytest.fixture
def zip_bytes() -> bytes:
    return b"PK\x05\x06" + bytes(18)  # an empty zip: no overlays to find


@pytest.fixture
def fm(zip_bytes: bytes) -> tuple[vfs.MemoryFS, FakeMem]:
    fs = vfs.MemoryFS(zip_bytes, scratch_bytes=64 * 1024)
    return fs, FakeMem(fs)


def _open(fs: vfs.MemoryFS, m: FakeMem, path: str, oflags: int = 0,
          rights: int = wasi.R_FD_READ | wasi.R_FD_SEEK | wasi.R_FD_READDIR,
          fdflags: int = 0, dirfd: int = vfs.PREOPEN_FD) -> tuple[int, int]:
    raw = path.encode()
    p, out = m.alloc(raw), m.alloc(4)
    err = fs.path_open(None, dirfd, 1, p, len(raw), oflags, rights, wasi.RIGHTS_ALL, fdflags,
                       out)
    return err, m.u32(out) if err == 0 else -1


def _write(fs: vfs.MemoryFS, m: FakeMem, fd: int, data: bytes) -> tuple[int, int]:
    iov = m.iovs((m.alloc(data), len(data)))
    out = m.alloc(4)
    err = fs.fd_write(None, fd, iov, 1, out)
    return err, m.u32(out)


def _read(fs: vfs.MemoryFS, m: FakeMem, fd: int, n: int) -> tuple[int, bytes]:
    buf = m.alloc(n)
    iov, out = m.iovs((buf, n)), m.alloc(4)
    err = fs.fd_read(None, fd, iov, 1, out)
    return err, m.read(buf, m.u32(out)) if err == 0 else b""


def _path_call(fs: vfs.MemoryFS, m: FakeMem, name: str, path: str) -> int:
    raw = path.encode()
    return getattr(fs, name)(None, vfs.PREOPEN_FD, m.alloc(raw), len(raw))


W = wasi.R_FD_READ | wasi.R_FD_WRITE | wasi.R_FD_SEEK | wasi.R_FD_FILESTAT_SET_SIZE


def test_struct_layouts_match_preview1() -> None:
    # sizes and offsets of wasi_snapshot_preview1's filestat, fdstat, prestat and dirent
    assert wasi.FILESTAT.size == 64 and wasi.FDSTAT.size == 24
    assert wasi.PRESTAT.size == 8 and wasi.DIRENT.size == 24
    raw = wasi.FILESTAT.pack(1, 2, 4, 3, 5, 6, 7, 8)
    assert struct.unpack_from("<QQ", raw, 0) == (1, 2) and raw[16] == 4
    assert struct.unpack_from("<QQQQQ", raw, 24) == (3, 5, 6, 7, 8)
    raw = wasi.FDSTAT.pack(3, 1, 0xAA, 0xBB)
    assert raw[0] == 3 and struct.unpack_from("<H", raw, 2)[0] == 1
    assert struct.unpack_from("<QQ", raw, 8) == (0xAA, 0xBB)
    raw = wasi.DIRENT.pack(9, 10, 11, 4)
    assert struct.unpack_from("<QQI", raw) == (9, 10, 11) and raw[20] == 4


def test_preopen_and_stat_structs(fm) -> None:
    fs, m = fm
    buf = m.alloc(64)
    assert fs.fd_prestat_get(None, 3, buf) == 0
    assert m.read(buf, 1) == b"\0" and m.u32(buf + 4) == 1
    assert fs.fd_prestat_dir_name(None, 3, buf, 1) == 0 and m.read(buf, 1) == b"/"
    assert fs.fd_prestat_dir_name(None, 3, buf, 0) == wasi.ENAMETOOLONG
    assert fs.fd_prestat_get(None, 4, buf) == wasi.EBADF  # ends libc's preopen scan
    assert fs.fd_fdstat_get(None, 3, buf) == 0
    assert m.read(buf, 1)[0] == wasi.FT_DIRECTORY
    assert m.u64(buf + 16) == wasi.RIGHTS_ALL
    # the zip: a read-only regular file of the zip's size
    raw = b"usr/local/lib/python315.zip"
    assert fs.path_filestat_get(None, 3, 0, m.alloc(raw), len(raw), buf) == 0
    dev, ino, ftype = struct.unpack_from("<QQB", m.read(buf, 17))
    assert ftype == wasi.FT_REGULAR_FILE and ino > 0
    assert m.u64(buf + 32) == len(fs._zip)
    # stdio is answered like wasmtime's non-terminal streams
    assert fs.fd_fdstat_get(None, 1, buf) == 0 and m.read(buf, 1)[0] == wasi.FT_UNKNOWN
    assert fs.fd_seek(None, 1, 0, 1, buf) == wasi.ESPIPE


def test_open_read_write_seek_readdir(fm) -> None:
    fs, m = fm
    err, fd = _open(fs, m, "tmp/work/a.txt", wasi.O_CREAT, W)
    assert err == 0 and fd == vfs.FIRST_FD
    assert _write(fs, m, fd, b"hello world") == (0, 11)
    out = m.alloc(8)
    assert fs.fd_seek(None, fd, 6, 0, out) == 0 and m.u64(out) == 6
    assert _read(fs, m, fd, 100) == (0, b"world")
    assert fs.fd_tell(None, fd, out) == 0 and m.u64(out) == 11
    # two iovecs, pread
    b1, b2 = m.alloc(3), m.alloc(4)
    iov, n = m.iovs((b1, 3), (b2, 4)), m.alloc(4)
    assert fs.fd_pread(None, fd, iov, 2, 2, n) == 0 and m.u32(n) == 7
    assert m.read(b1, 3) + m.read(b2, 4) == b"llo wor"
    st = m.alloc(64)
    assert fs.fd_filestat_get(None, fd, st) == 0 and m.u64(st + 32) == 11
    assert fs.fd_filestat_set_size(None, fd, 5) == 0
    assert fs.fd_filestat_get(None, fd, st) == 0 and m.u64(st + 32) == 5
    assert fs.fd_close(None, fd) == 0 and fs.fd_close(None, fd) == wasi.EBADF
    # append
    err, fd = _open(fs, m, "tmp/work/a.txt", 0, W, wasi.FDFLAG_APPEND)
    assert _write(fs, m, fd, b"!") == (0, 1)
    assert fs.fd_seek(None, fd, 0, 0, out) == 0
    assert _read(fs, m, fd, 100) == (0, b"hello!")
    fs.fd_close(None, fd)
    # readdir of /tmp/work: ".", "..", "a.txt" with correct dirents
    err, dfd = _open(fs, m, "tmp/work", wasi.O_DIRECTORY)
    assert err == 0
    buf, used = m.alloc(256), m.alloc(4)
    assert fs.fd_readdir(None, dfd, buf, 256, 0, used) == 0
    blob = m.read(buf, m.u32(used))
    names, pos = [], 0
    while pos < len(blob):
        nxt, ino, namlen, dtype = struct.unpack_from("<QQIB", blob, pos)
        names.append((blob[pos + 24:pos + 24 + namlen].decode(), dtype, nxt))
        pos += 24 + namlen
    assert names == [(".", 3, 1), ("..", 3, 2), ("a.txt", 4, 3)]
    # a cookie resumes; a small buffer is filled completely (libc then retries bigger)
    assert fs.fd_readdir(None, dfd, buf, 256, 2, used) == 0 and m.u32(used) == 24 + 5
    assert fs.fd_readdir(None, dfd, buf, 10, 0, used) == 0 and m.u32(used) == 10
    assert fs.fd_readdir(None, dfd, buf, 256, 99, used) == 0 and m.u32(used) == 0


def test_errors_like_a_real_fs(fm) -> None:
    fs, m = fm
    assert _open(fs, m, "tmp/nope")[0] == wasi.ENOENT
    assert _open(fs, m, "tmp/work", 0, W)[0] == wasi.EISDIR
    assert _open(fs, m, "usr/local/lib/python315.zip", 0, W)[0] == wasi.EROFS
    assert _open(fs, m, "usr/x", wasi.O_CREAT, W)[0] == wasi.EROFS
    assert _open(fs, m, "nope/x", wasi.O_CREAT, W)[0] == wasi.ENOENT
    assert _open(fs, m, "usr/local/lib/python315.zip", wasi.O_DIRECTORY)[0] == wasi.ENOTDIR
    assert _open(fs, m, "usr/local/lib/python315.zip/")[0] == wasi.ENOTDIR
    assert _open(fs, m, "/tmp/work")[0] == wasi.ENOTCAPABLE  # absolute: libc never sends
    assert _open(fs, m, "tmp/../../../tmp/work", wasi.O_DIRECTORY)[0] == 0  # ".." stops at /
    err, fd = _open(fs, m, "tmp/work/x", wasi.O_CREAT | wasi.O_EXCL, W)
    assert err == 0
    assert _open(fs, m, "tmp/work/x", wasi.O_CREAT | wasi.O_EXCL, W)[0] == wasi.EEXIST
    assert _open(fs, m, "tmp/work/x/y", wasi.O_CREAT, W)[0] == wasi.ENOTDIR
    assert _read(fs, m, fd, 4)[0] == 0
    err, ro = _open(fs, m, "tmp/work/x")
    assert _write(fs, m, ro, b"no")[0] == wasi.EBADF  # opened without FD_WRITE
    # a directory fd other than the root cannot be escaped with ".."
    err, dfd = _open(fs, m, "tmp/work", wasi.O_DIRECTORY)
    assert _open(fs, m, "../home", wasi.O_DIRECTORY, dirfd=dfd)[0] == wasi.ENOTCAPABLE
    assert _open(fs, m, "x", dirfd=dfd)[0] == 0
    assert _open(fs, m, "x", dirfd=fd)[0] == wasi.ENOTDIR
    assert _open(fs, m, "x", dirfd=77)[0] == wasi.EBADF
    # no links of any kind
    raw = m.alloc(b"tmp/work/x")
    assert fs.path_symlink(None, raw, 10, 3, raw, 10) == wasi.ENOTSUP
    assert fs.path_link(None, 3, 0, raw, 10, 3, raw, 10) == wasi.EPERM
    out = m.alloc(8)
    assert fs.path_readlink(None, 3, raw, 10, out, 8, out) == wasi.EINVAL
    assert fs.path_readlink(None, 3, m.alloc(b"tmp/q"), 5, out, 8, out) == wasi.ENOENT
    # directories
    assert _path_call(fs, m, "path_create_directory", "tmp/work") == wasi.EEXIST
    assert _path_call(fs, m, "path_create_directory", "usr/new") == wasi.EROFS
    assert _path_call(fs, m, "path_create_directory", "tmp/d/") == 0
    assert _path_call(fs, m, "path_remove_directory", "tmp/work") == wasi.ENOTEMPTY
    assert _path_call(fs, m, "path_remove_directory", "tmp/work/x") == wasi.ENOTDIR
    assert _path_call(fs, m, "path_remove_directory", "tmp") == wasi.EROFS
    assert _path_call(fs, m, "path_unlink_file", "tmp/d") == wasi.EISDIR
    assert _path_call(fs, m, "path_unlink_file", "usr/local/lib/python315.zip") == wasi.EROFS
    assert _path_call(fs, m, "path_unlink_file", "tmp/work/x/") == wasi.ENOTDIR
    assert _path_call(fs, m, "path_remove_directory", "tmp/d") == 0
    # bad flags
    assert fs.fd_fdstat_set_flags(None, fd, 0x100) == wasi.EINVAL
    assert fs.fd_seek(None, fd, -1, 0, out) == wasi.EINVAL
    assert fs.fd_seek(None, fd, 0, 7, out) == wasi.EINVAL


def test_rename_semantics(fm) -> None:
    fs, m = fm

    def rename(a: str, b: str) -> int:
        ra, rb = a.encode(), b.encode()
        return fs.path_rename(None, 3, m.alloc(ra), len(ra), 3, m.alloc(rb), len(rb))

    for name in ("tmp/a", "tmp/b"):
        err, fd = _open(fs, m, name, wasi.O_CREAT, W)
        _write(fs, m, fd, name.encode())
        fs.fd_close(None, fd)
    _path_call(fs, m, "path_create_directory", "tmp/d")
    _path_call(fs, m, "path_create_directory", "tmp/d/e")
    used = fs.used_bytes
    assert rename("tmp/a", "tmp/b") == 0  # replaces b, gives back its budget
    assert fs.used_bytes == used - vfs.NODE_COST - len(b"tmp/b")
    err, fd = _open(fs, m, "tmp/b")
    assert _read(fs, m, fd, 10) == (0, b"tmp/a")
    assert _open(fs, m, "tmp/a")[0] == wasi.ENOENT
    assert rename("tmp/b", "tmp/d") == wasi.EISDIR
    assert rename("tmp/d", "tmp/b") == wasi.ENOTDIR
    assert rename("tmp/d", "tmp/d/e/f") == wasi.EINVAL  # into itself
    assert rename("tmp/b", "usr/b") == wasi.EROFS
    assert rename("usr/local/lib/python315.zip", "tmp/z") == wasi.EROFS
    assert rename("tmp", "tmp2") == wasi.EROFS  # the mount point
    _open(fs, m, "tmp/home/full", wasi.O_CREAT, W)
    assert rename("tmp/d/e", "tmp/home") == wasi.ENOTEMPTY
    _path_call(fs, m, "path_create_directory", "tmp/empty")
    assert rename("tmp/empty", "tmp/d/e") == 0  # a folder replaces an empty one
    assert rename("tmp/nope", "tmp/x") == wasi.ENOENT
    assert rename("tmp/d", "tmp/d2") == 0
    assert _open(fs, m, "tmp/d2/e", wasi.O_DIRECTORY)[0] == 0


def test_scratch_budget(zip_bytes) -> None:
    fs = vfs.MemoryFS(zip_bytes, scratch_bytes=10_000)
    m = FakeMem(fs)
    base = fs.used_bytes  # the made folders
    err, fd = _open(fs, m, "tmp/big", wasi.O_CREAT, W)
    room = 10_000 - base - vfs.NODE_COST
    assert _write(fs, m, fd, b"x" * 20_000)[0] == 0  # a short write: what fits
    assert fs.used_bytes == 10_000
    st = m.alloc(64)
    fs.fd_filestat_get(None, fd, st)
    assert m.u64(st + 32) == room
    assert _write(fs, m, fd, b"y") == (wasi.ENOSPC, 0)
    assert fs.fd_filestat_set_size(None, fd, room + 1) == wasi.ENOSPC
    assert _open(fs, m, "tmp/other", wasi.O_CREAT, W)[0] == wasi.ENOSPC
    assert _path_call(fs, m, "path_create_directory", "tmp/dd") == wasi.ENOSPC
    # an unlinked file keeps its bytes until its last fd closes
    assert _path_call(fs, m, "path_unlink_file", "tmp/big") == 0
    assert fs.used_bytes == 10_000
    assert fs.fd_close(None, fd) == 0
    assert fs.used_bytes == base
    assert _open(fs, m, "tmp/other", wasi.O_CREAT, W)[0] == 0


def test_guest_pointers_are_checked(fm) -> None:
    fs, m = fm
    err, fd = _open(fs, m, "tmp/f", wasi.O_CREAT, W)
    size = FakeMem.SIZE
    out = m.alloc(4)
    assert fs.fd_write(None, fd, size - 4, 1, out) == wasi.EFAULT  # iovec array outside
    assert fs.fd_write(None, fd, m.iovs((size - 2, 4)), 1, out) == wasi.EFAULT
    assert fs.fd_write(None, fd, m.iovs((0, 1)), 1025, out) == wasi.EINVAL
    assert fs.fd_write(None, fd, -8, 1, out) == wasi.EFAULT  # i32 -8 is 0xFFFFFFF8
    assert fs.fd_read(None, fd, m.iovs((size - 1, 2)), 1, out) == wasi.EFAULT
    assert fs.fd_fdstat_get(None, fd, size - 8) == wasi.EFAULT
    assert fs.fd_filestat_get(None, fd, size - 63) == wasi.EFAULT
    assert fs.fd_prestat_get(None, 3, size) == wasi.EFAULT
    assert fs.path_open(None, 3, 0, size - 2, 10, 0, 0, 0, 0, out) == wasi.EFAULT
    assert fs.path_open(None, 3, 0, 0, 5000, 0, 0, 0, 0, out) == wasi.ENAMETOOLONG
    assert fs.path_open(None, 3, 0, m.alloc(b"tmp/\xff"), 5, 0, 0, 0, 0, out) == wasi.EILSEQ
    assert fs.fd_readdir(None, 3, size - 10, 100, 0, out) == wasi.EFAULT
    # a failed path_open leaves no fd behind
    before = dict(fs._fds)
    assert _open(fs, m, "tmp/g", wasi.O_CREAT, W)[0] == 0
    raw = m.alloc(b"tmp/g")
    assert fs.path_open(None, 3, 0, raw, 5, 0, W, 0, 0, size) == wasi.EFAULT
    assert len(fs._fds) == len(before) + 1


def test_fd_numbers_and_limits(zip_bytes) -> None:
    fs = vfs.MemoryFS(zip_bytes, max_fds=6)
    m = FakeMem(fs)
    fds = [_open(fs, m, "tmp", wasi.O_DIRECTORY) for _ in range(5)]
    assert [f for _, f in fds] == [4, 5, 6, 7, 8]
    assert _open(fs, m, "tmp", wasi.O_DIRECTORY)[0] == wasi.EMFILE
    fs.fd_close(None, 6)
    assert _open(fs, m, "tmp", wasi.O_DIRECTORY) == (0, 6)  # lowest free, never 0-3
    assert fs.fd_renumber(None, 6, 8) == 0 and fs.fd_fdstat_get(None, 6, m.alloc(24)) == 8
    assert fs.fd_renumber(None, 3, 8) == wasi.ENOTSUP
    assert fs.fd_renumber(None, 1, 8) == wasi.ENOTSUP


def test_stdio_is_delegated(fm) -> None:
    fs, m = fm
    seen = []

    def stdio_write(caller, fd, iovs, n, out):
        seen.append(("w", fd, n))
        return 0

    def stdio_read(caller, fd, iovs, n, out):
        seen.append(("r", fd, n))
        return 0

    fs._stdio_read, fs._stdio_write = stdio_read, stdio_write
    fs.fd_write(None, 1, 0, 2, 0)
    fs.fd_write(None, 2, 0, 3, 0)
    fs.fd_read(None, 0, 0, 4, 0)
    assert seen == [("w", 1, 2), ("w", 2, 3), ("r", 0, 4)]
    assert fs.fd_close(None, 1) == 0  # a no-op: the session keeps its fds
    assert fs.fd_prestat_get(None, 0, m.alloc(8)) == wasi.EBADF


def test_snapshot_restore_unit(fm, zip_bytes) -> None:
    fs, m = fm
    err, fd = _open(fs, m, "tmp/work/s.txt", wasi.O_CREAT, W)
    _write(fs, m, fd, b"one")
    state = fs.snapshot()
    assert state.zip_data is fs._zip  # shared, not copied
    _write(fs, m, fd, b"two")
    fs.fd_close(None, fd)
    _path_call(fs, m, "path_unlink_file", "tmp/work/s.txt")
    fs.restore(state)
    assert _read(fs, m, fd, 10) == (0, b"")  # the fd came back, at its position
    fs.fd_seek(None, fd, 0, 0, m.alloc(8))
    assert _read(fs, m, fd, 10) == (0, b"one")
    other = vfs.MemoryFS(zip_bytes)
    m2 = FakeMem(other)
    other.restore(state)
    assert _read(other, m2, fd, 10) == (0, b"")
    assert _write(other, m2, fd, b"!") == (0, 1)
    fs.restore(state)  # a state can be restored again: it was not changed
    fs.fd_seek(None, fd, 0, 0, m.alloc(8))
    assert _read(fs, m, fd, 10) == (0, b"one")
    with pytest.raises(ValueError):
        vfs.MemoryFS(zip_bytes, scratch_bytes=100).restore(state)


@needs_zip
def test_every_fs_import_is_served() -> None:
    if not SCI_CWASM.is_file():
        pytest.skip(f"no precompiled module at {SCI_CWASM}")
    module = wasmtime.Module.deserialize_file(_engine(), str(SCI_CWASM))
    fs_imports = {i.name for i in module.imports
                  if i.module == "wasi_snapshot_preview1"
                  and i.name.startswith(("fd_", "path_"))}
    assert fs_imports <= set(vfs.WASI_FS_CALLS)


@needs_zip
def test_mpl_data_overlay_is_shared() -> None:
    a = vfs.MemoryFS(SCI_ZIP)
    b = vfs.MemoryFS(str(SCI_ZIP))
    assert a._zip is b._zip  # one mapping per process
    ma, mb = FakeMem(a), FakeMem(b)
    path = "usr/local/lib/python315.zip/matplotlib/mpl-data/matplotlibrc"
    err, fd = _open(a, ma, path)
    assert err == 0
    assert _read(a, ma, fd, 200)[1].startswith(b"##")
    assert _open(b, mb, path)[0] == 0
    hidden = "usr/local/lib/python315.zip/matplotlib"
    assert _open(a, ma, hidden, wasi.O_DIRECTORY)[0] == wasi.ENOENT  # zipimport must fail here
    assert _open(a, ma, hidden + "/mpl-data/fonts", wasi.O_DIRECTORY)[0] == 0
    assert _open(a, ma, path, 0, W)[0] == wasi.EROFS


# ====================================================================== guest harness
_ENGINE: wasmtime.Engine | None = None
_MODULE: wasmtime.Module | None = None


def _engine() -> wasmtime.Engine:
    global _ENGINE
    if _ENGINE is None:
        cfg = wasmtime.Config()
        cfg.consume_fuel = True
        cfg.epoch_interruption = True
        _ENGINE = wasmtime.Engine(cfg)
    return _ENGINE


def _module() -> wasmtime.Module:
    global _MODULE
    if _MODULE is None:
        _MODULE = wasmtime.Module.deserialize_file(_engine(), str(SCI_CWASM))
    return _MODULE


class Guest:
    """One reactor instance whose file system is ``fs``; ``run`` is one turn."""

    def __init__(self, fs: vfs.MemoryFS | None = None, *, setup: bool = True) -> None:
        self.fs = fs or vfs.MemoryFS(SCI_ZIP, scratch_bytes=32 << 20)
        self.out = bytearray()
        self.err = bytearray()
        engine = _engine()
        self.store = wasmtime.Store(engine)
        self.store.set_fuel(1 << 40)
        self.store.set_epoch_deadline(1 << 30)
        self.store.set_wasi(wasmtime.WasiConfig())
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        self.fs.install(linker, lambda: self.memory, stdio_write=self._stdio_write)
        i32 = wasmtime.ValType.i32()
        linker.define_func("host", "call", wasmtime.FuncType([i32] * 4, [i32]),
                           lambda *args: -1)
        self.instance = linker.instantiate(self.store, _module())
        exports = self.instance.exports(self.store)
        self.memory = exports["memory"]
        self._turn = exports["turn"]
        self._alloc = exports["host_alloc"]
        if setup:
            assert self.run(vfs.setup_source()) == 0, self.err.decode()

    def _stdio_write(self, caller, fd, iovs, iovs_len, nwritten_ptr) -> int:
        base = ctypes.addressof(self.memory.data_ptr(caller).contents)
        total = 0
        for i in range(iovs_len):
            p, n = struct.unpack("<II", ctypes.string_at(base + iovs + 8 * i, 8))
            (self.out if fd == 1 else self.err).extend(ctypes.string_at(base + p, n))
            total += n
        ctypes.memmove(base + nwritten_ptr, struct.pack("<I", total), 4)
        return 0

    def run(self, source: str) -> int:
        raw = source.encode()
        ptr = self._alloc(self.store, len(raw))
        self.memory.write(self.store, raw, ptr)
        return self._turn(self.store, ptr, len(raw))

    def ok(self, source: str) -> str:
        """Run ``source``; it must succeed; returns (and forgets) its stdout."""
        self.out.clear()
        self.err.clear()
        rc = self.run(source)
        assert rc == 0, self.err.decode()
        return self.out.decode()

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def guest():
    made: list[Guest] = []

    def make(*args, **kwargs) -> Guest:
        g = Guest(*args, **kwargs)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


@needs_runtime
def test_guest_places(guest) -> None:
    g = guest()
    out = g.ok("import os, sys\n"
               "print(os.getcwd(), os.environ['HOME'], os.environ['MPLCONFIGDIR'])\n"
               "print(sorted(os.listdir('/')), sys.path)\n")
    assert out.splitlines() == ["/tmp/work /tmp/home /tmp/mpl",
                                "['dev', 'tmp', 'usr'] ['/usr/local/lib/python315.zip']"]


@needs_runtime
def test_guest_numpy_pandas(guest) -> None:
    g = guest()
    out = g.ok("import json, numpy, pandas\n"
               "d = pandas.DataFrame({'a': [1, 2]}).describe()\n"
               "print(d.loc['mean', 'a'], numpy.arange(4).sum())\n"
               "d.to_csv('d.csv')\n"
               "print(pandas.read_csv('/tmp/work/d.csv', index_col=0).loc['max', 'a'])\n")
    assert out.split() == ["1.5", "6", "2.0"]


@needs_runtime
def test_guest_matplotlib(guest) -> None:
    g = guest()
    g.ok("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n")
    out = g.ok("plt.plot([1, 3, 2])\nplt.savefig('/tmp/work/f.png')\n"
               "data = open('/tmp/work/f.png', 'rb').read()\n"
               "print(data[:8].hex(), len(data) > 1000)\n"
               "import os\nprint(os.listdir('/tmp/mpl'))\n")
    assert out.split()[:2] == [b"\x89PNG\r\n\x1a\n".hex(), "True"]
    assert "fontlist" in out  # the font cache was written where MPLCONFIGDIR says


@needs_runtime
def test_guest_scratch_files(guest) -> None:
    g = guest()
    out = g.ok(
        "import os, shutil\n"
        "os.makedirs('/tmp/work/a/b', exist_ok=True)\n"
        "with open('a/b/one.txt', 'w') as f: f.write('hello')\n"
        "with open('a/b/one.txt', 'a') as f: f.write(' world')\n"
        "print(open('/tmp/work/a/b/one.txt').read())\n"
        "os.rename('a/b/one.txt', 'a/two.txt')\n"
        "print(sorted(os.listdir('a')), os.listdir('a/b'))\n"
        "print(os.path.getsize('a/two.txt'), os.path.isdir('a'), os.path.isfile('a/two.txt'))\n"
        "with open('a/two.txt', 'r+b') as f:\n"
        "    f.seek(6); f.write(b'W'); f.seek(0); print(f.read().decode())\n"
        "    f.truncate(5)\n"
        "print(open('a/two.txt').read())\n"
        "shutil.copy('a/two.txt', '/tmp/home/three.txt')\n"
        "os.remove('a/two.txt')\n"
        "shutil.rmtree('a')\n"
        "print(os.listdir('.'), os.listdir('/tmp/home'), os.path.exists('a'))\n"
        "import tempfile\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    print(d.startswith('/tmp/'))\n"
        "with open(os.devnull, 'w') as f: f.write('x')\n"
        "print(open(os.devnull).read() == '')\n")
    assert out.splitlines() == [
        "hello world",
        "['b', 'two.txt'] []",
        "11 True True",
        "hello World",
        "hello",
        "[] ['three.txt'] False",
        "True",
        "True",
    ]


@needs_runtime
def test_guest_read_only_and_outside(guest) -> None:
    g = guest()
    out = g.ok(
        "import errno, os\n"
        "def err(f, *a):\n"
        "    try:\n"
        "        f(*a)\n"
        "    except OSError as e:\n"
        "        return errno.errorcode[e.errno]\n"
        "    return 'ok'\n"
        "zp = '/usr/local/lib/python315.zip'\n"
        "print(err(open, zp, 'wb'), err(open, zp, 'ab'), err(os.remove, zp),\n"
        "      err(os.rename, zp, '/tmp/z'), err(open, '/usr/local/lib/x', 'w'),\n"
        "      err(os.mkdir, '/etc'), err(open, '/etc/passwd'), err(open, '/nope/x', 'w'),\n"
        "      err(os.rmdir, '/tmp'), err(open, '/tmp/../../etc/passwd'),\n"
        "      err(os.symlink, '/tmp/work', '/tmp/l'), err(os.link, '/tmp/work', '/tmp/l'),\n"
        "      err(os.readlink, '/tmp/work'), err(os.listdir, '/proc'))\n"
        "print(open(zp, 'rb').read(2), sorted(os.listdir('/')), os.listdir('/usr/local/lib'))\n")
    lines = out.splitlines()
    assert lines[0].split() == ["EROFS", "EROFS", "EROFS", "EROFS", "EROFS", "EROFS",
                                "ENOENT", "ENOENT", "EROFS", "ENOENT", "ENOTSUP", "EPERM",
                                "EINVAL", "ENOENT"]
    assert lines[1] == "b'PK' ['dev', 'tmp', 'usr'] ['python315.zip']"


@needs_runtime
def test_guest_scratch_budget(guest) -> None:
    g = guest(vfs.MemoryFS(SCI_ZIP, scratch_bytes=1 << 20))
    out = g.ok(
        "import errno, os\n"
        "try:\n"
        "    with open('big', 'wb') as f: f.write(b'x' * (2 << 20))\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
        "print(os.path.getsize('big') < (1 << 20))\n"
        "os.remove('big')\n"
        "with open('small', 'wb') as f: f.write(b'y' * 500_000)\n"
        "print(os.path.getsize('small'))\n")
    assert out.split() == ["ENOSPC", "True", "500000"]
    assert g.fs.used_bytes <= 1 << 20


@needs_runtime
def test_guests_are_isolated_and_host_untouched(guest, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    token = uuid.uuid4().hex
    watched = [tmp_path, Path("/tmp"), Path("/tmp/work"), Path("/tmp/home"), Path("/tmp/mpl")]

    def listing() -> dict[str, list[str]]:
        return {str(p): sorted(n for n in os.listdir(p) if token in n) if p.is_dir() else []
                for p in watched} | {"tmp_path": sorted(os.listdir(tmp_path))}

    before = listing()
    a, b = guest(), guest()
    a.ok(f"open('/tmp/{token}.txt', 'w').write('a')\n"
         f"open('{token}-rel.txt', 'w').write('a')\n"
         f"import os; os.mkdir('/tmp/home/{token}')\n")
    assert b.ok(f"import os; print(os.path.exists('/tmp/{token}.txt'), "
                f"os.listdir('/tmp/work'))\n").split() == ["False", "[]"]
    b.ok(f"open('/tmp/{token}.txt', 'w').write('bbb')\n")
    assert a.ok(f"print(open('/tmp/{token}.txt').read())").strip() == "a"
    assert b.ok(f"print(open('/tmp/{token}.txt').read())").strip() == "bbb"
    assert listing() == before
    assert not any(token in n for n in os.listdir("/tmp"))


@needs_runtime
def test_guest_snapshot_restore(guest) -> None:
    g = guest()
    g.ok("open('kept.txt', 'w').write('saved')\nkeep = open('kept.txt')\n")
    state = g.fs.snapshot()
    g.ok("import os; os.remove('kept.txt'); open('later.txt', 'w').write('x')\n")
    g.fs.restore(state)
    out = g.ok("print(sorted(os.listdir('.')), keep.read())\n")
    assert out.split() == ["['kept.txt']", "saved"]
    # the same state in another interpreter: the files are there
    fs2 = vfs.MemoryFS(SCI_ZIP, scratch_bytes=32 << 20)
    fs2.restore(state)
    h = guest(fs2)
    assert h.ok("print(open('/tmp/work/kept.txt').read())").strip() == "saved"


# ------------------------------------------------------------ file system in an image file
def _encoded(fs: vfs.MemoryFS) -> dict:
    import json
    return json.loads(json.dumps(fsimage.encode_fs_state(fs.snapshot(), fs)))


def test_saved_file_system_round_trip(fm: tuple[vfs.MemoryFS, FakeMem]) -> None:
    fs, m = fm
    err, fd = _open(fs, m, "tmp/work/a.txt", oflags=wasi.O_CREAT, rights=W)
    assert err == 0 and _write(fs, m, fd, b"hello")[0] == 0
    data = _encoded(fs)
    other = vfs.MemoryFS(fs._zip, scratch_bytes=64 * 1024)
    state = fsimage.decode_fs_state(data, other)
    assert state.used == fs.snapshot().used  # recounted, equal to the live count
    other.restore(state)
    m2 = FakeMem(other)
    err, fd2 = _open(other, m2, "tmp/work/a.txt")
    assert err == 0 and _read(other, m2, fd2, 10) == (0, b"hello")
    # the descriptor that was open is open again, at its offset
    assert _write(other, m2, fd, b" world")[0] == 0


def test_crafted_file_systems_are_refused(fm: tuple[vfs.MemoryFS, FakeMem]) -> None:
    fs, m = fm
    assert _open(fs, m, "tmp/work/a.txt", oflags=wasi.O_CREAT, rights=W)[0] == 0
    good = _encoded(fs)
    nodes = good["nodes"]
    tmp = next(i for i, n in enumerate(nodes) if n["kind"] == "dir"
               and "work" in n.get("entries", {}))
    work = nodes[tmp]["entries"]["work"]
    home = nodes[tmp]["entries"].get("home")
    zip_file = next(i for i, n in enumerate(nodes) if n["kind"] == "file"
                    and n["data"] == {"zip": True})
    scratch_file = next(i for i, n in enumerate(nodes) if n["kind"] == "file"
                        and isinstance(n["data"], dict) and "b64" in n["data"])

    def crafted(change):
        import copy
        data = copy.deepcopy(good)
        change(data)
        return data

    cases = [
        # a directory in two places (a loop through parents hung the host's path walks)
        lambda d: d["nodes"][home]["entries"].__setitem__("loop", work),
        lambda d: d["nodes"][work]["entries"].__setitem__("up", tmp),
        # the library zip as a writable file, scratch contents on the read-only device
        lambda d: d["nodes"][zip_file].update(writable=True),
        lambda d: d["nodes"][scratch_file].update(dev=fsnodes.DEV_RO),
        # more scratch data than the budget (the "used" figure is recounted, not read)
        lambda d: d["nodes"][scratch_file]["data"].update(
            b64=__import__("base64").b64encode(bytes(200_000)).decode()),
        # numbers out of range, names that are paths, a moved preopen
        lambda d: d["nodes"][scratch_file].update(opens=-5),
        lambda d: d["nodes"][scratch_file].update(times=[0, 0, 2 ** 70]),
        lambda d: d["nodes"][tmp]["entries"].__setitem__("../x", scratch_file),
        lambda d: d["fds"][str(vfs.PREOPEN_FD)].update(node=work),
        lambda d: d.update(next_ino=1),
    ]
    assert home is not None
    for change in cases:
        with pytest.raises((ValueError, KeyError, TypeError)):
            fsimage.decode_fs_state(crafted(change), vfs.MemoryFS(fs._zip, scratch_bytes=64 * 1024))
