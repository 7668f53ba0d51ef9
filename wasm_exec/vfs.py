"""An in-memory WASI preview-1 file system, served by host functions.

Used by every runtime (pre-initialised CPython reactors): every WASI file-system
import is shadowed by a method of one :class:`MemoryFS`, one per interpreter. Nothing here
touches the host file system on the guest's behalf.

The guest sees one preopened directory, ``/`` on fd 3 (the snapshot's libc finds it by
asking ``fd_prestat_get`` for fds 3, 4, ... on its first path call), holding:

- the stdlib zip at the runtime's ``zip_path`` (``/usr/local/lib/python313.zip`` for the
  default runtime, ``python315.zip`` for the scientific one): read-only, served from one bytes-like
  object (an mmap) shared by every interpreter of the process (see :func:`shared_zip`);
- ``/tmp``: a writable scratch area in host memory, limited to ``scratch_bytes`` (file
  contents plus ``NODE_COST`` per file or directory), with ``/tmp/work`` (the working
  directory), ``/tmp/home`` (HOME) and ``/tmp/mpl`` (MPLCONFIGDIR) made at start;
- ``/dev/null``.

The rest (``/``, ``/usr``, ...) is a read-only skeleton: creating or changing anything
there fails with EROFS, missing names with ENOENT. There are no symbolic or hard links.

fds 0, 1 and 2 stay with the caller: ``fd_read``/``fd_write`` on them go to the
``stdio_read``/``stdio_write`` callbacks given to :meth:`MemoryFS.install` (same signature
as the WASI call plus the caller first); the other calls answer for them as wasmtime does
for a non-terminal stream (file type unknown, not seekable).

The snapshot's ``os.environ`` and working directory were fixed when it was made (empty,
``/``), so the guest learns its places from :func:`setup_source`, run as the first turn.

The host puts files in and reads them out with :meth:`MemoryFS.host_write`,
``host_read``, ``host_list`` and ``host_delete`` (the executor's file API), on paths that
:func:`host_path` made: only under the scratch root, charged to the same budget as the
guest's own writes.
"""

from __future__ import annotations

import base64
import copy
import ctypes
import io
import itertools
import mmap
import os
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import wasmtime

from .errors import InputError

# ------------------------------------------------------------------ WASI constants
ESUCCESS = 0
EACCES = 2
EBADF = 8
EEXIST = 20
EFAULT = 21
EFBIG = 22
EILSEQ = 25
EINVAL = 28
EIO = 29
EISDIR = 31
EMFILE = 33
ENAMETOOLONG = 37
ENOENT = 44
ENOSPC = 51
ENOTDIR = 54
ENOTEMPTY = 55
ENOTSUP = 58
EOVERFLOW = 61
EPERM = 63
EROFS = 69
ESPIPE = 70
ENOTCAPABLE = 76

FT_UNKNOWN = 0
FT_CHARACTER_DEVICE = 2
FT_DIRECTORY = 3
FT_REGULAR_FILE = 4

O_CREAT = 1
O_DIRECTORY = 2
O_EXCL = 4
O_TRUNC = 8

FDFLAG_APPEND = 1
FDFLAGS_ALL = 0x1F

FST_ATIM = 1
FST_ATIM_NOW = 2
FST_MTIM = 4
FST_MTIM_NOW = 8

R_FD_DATASYNC = 1 << 0
R_FD_READ = 1 << 1
R_FD_SEEK = 1 << 2
R_FD_FDSTAT_SET_FLAGS = 1 << 3
R_FD_SYNC = 1 << 4
R_FD_TELL = 1 << 5
R_FD_WRITE = 1 << 6
R_FD_ADVISE = 1 << 7
R_FD_ALLOCATE = 1 << 8
R_PATH_CREATE_DIRECTORY = 1 << 9
R_PATH_CREATE_FILE = 1 << 10
R_PATH_LINK_SOURCE = 1 << 11
R_PATH_LINK_TARGET = 1 << 12
R_PATH_OPEN = 1 << 13
R_FD_READDIR = 1 << 14
R_PATH_READLINK = 1 << 15
R_PATH_RENAME_SOURCE = 1 << 16
R_PATH_RENAME_TARGET = 1 << 17
R_PATH_FILESTAT_GET = 1 << 18
R_PATH_FILESTAT_SET_SIZE = 1 << 19
R_PATH_FILESTAT_SET_TIMES = 1 << 20
R_FD_FILESTAT_GET = 1 << 21
R_FD_FILESTAT_SET_SIZE = 1 << 22
R_FD_FILESTAT_SET_TIMES = 1 << 23
R_PATH_SYMLINK = 1 << 24
R_PATH_REMOVE_DIRECTORY = 1 << 25
R_PATH_UNLINK_FILE = 1 << 26
R_POLL_FD_READWRITE = 1 << 27
RIGHTS_ALL = (1 << 30) - 1

FILE_RIGHTS = (R_FD_DATASYNC | R_FD_READ | R_FD_SEEK | R_FD_FDSTAT_SET_FLAGS | R_FD_SYNC
               | R_FD_TELL | R_FD_WRITE | R_FD_ADVISE | R_FD_ALLOCATE | R_FD_FILESTAT_GET
               | R_FD_FILESTAT_SET_SIZE | R_FD_FILESTAT_SET_TIMES | R_POLL_FD_READWRITE)
DIR_RIGHTS = (R_FD_FDSTAT_SET_FLAGS | R_FD_SYNC | R_FD_ADVISE | R_PATH_CREATE_DIRECTORY
              | R_PATH_CREATE_FILE | R_PATH_LINK_SOURCE | R_PATH_LINK_TARGET | R_PATH_OPEN
              | R_FD_READDIR | R_PATH_READLINK | R_PATH_RENAME_SOURCE | R_PATH_RENAME_TARGET
              | R_PATH_FILESTAT_GET | R_PATH_FILESTAT_SET_SIZE | R_PATH_FILESTAT_SET_TIMES
              | R_FD_FILESTAT_GET | R_FD_FILESTAT_SET_TIMES | R_PATH_SYMLINK
              | R_PATH_REMOVE_DIRECTORY | R_PATH_UNLINK_FILE)
WRITE_RIGHTS = R_FD_WRITE | R_FD_ALLOCATE | R_FD_FILESTAT_SET_SIZE

# struct layouts of wasi_snapshot_preview1 (little-endian, natural alignment)
FILESTAT = struct.Struct("<QQB7xQQQQQ")  # dev ino filetype nlink size atim mtim ctim: 64
FDSTAT = struct.Struct("<BxH4xQQ")  # filetype flags rights_base rights_inheriting: 24
PRESTAT = struct.Struct("<B3xI")  # tag (0 = dir) name_len: 8
DIRENT = struct.Struct("<QQIB3x")  # d_next d_ino d_namlen d_type: 24, then the name
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
IOVEC = struct.Struct("<II")
assert (FILESTAT.size, FDSTAT.size, PRESTAT.size, DIRENT.size) == (64, 24, 8, 24)

# ------------------------------------------------------------------ layout and limits
ZIP_PATH = "/usr/local/lib/python315.zip"
SCRATCH_ROOT = "/tmp"
GUEST_CWD = "/tmp/work"
GUEST_HOME = "/tmp/home"
GUEST_MPLCONFIGDIR = "/tmp/mpl"
GUEST_DIRS = (GUEST_CWD, GUEST_HOME, GUEST_MPLCONFIGDIR)
# archives inside the stdlib zip served as read-only folders under the zip's own path,
# where the packages look for their data (matplotlib: Path(__file__).with_name("mpl-data"))
ZIP_OVERLAYS = (("matplotlib/mpl-data.zip", "matplotlib/mpl-data"),)
GUEST_ENV = {"HOME": GUEST_HOME, "MPLCONFIGDIR": GUEST_MPLCONFIGDIR, "TMPDIR": SCRATCH_ROOT,
             "PWD": GUEST_CWD}

PREOPEN_FD = 3  # the one preopened directory, "/"
FIRST_FD = 4  # fds the guest opens start here
STDIO_FDS = 3  # 0, 1, 2 belong to the caller
MAX_IOVS = 1024
MAX_IO_BYTES = (1 << 31) - 1
PATH_MAX = 4096
NAME_MAX = 255
# budget charged per scratch file or directory: its host cost (node, a name of up to 255
# bytes, its copy in the latest image) was measured at up to about 1.2 KB
NODE_COST = 1536
DEFAULT_SCRATCH_BYTES = 256 << 20
DEFAULT_MAX_FDS = 1024
CONSOLE_CAP = 1 << 20
FIXED_TIME_NS = 1_767_225_600 * 10**9  # 2026-01-01: times of the read-only part
DEV_RO, DEV_SCRATCH, DEV_DEVICES = 1, 2, 3
_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1

_memmove = ctypes.memmove
_string_at = ctypes.string_at
_c_char = ctypes.c_char
_addressof = ctypes.addressof


def scratch_budget(memory_bytes: int) -> int:
    """The scratch budget of an interpreter with this memory limit: a quarter of it, at
    least 16 MiB."""
    return max(16 << 20, int(memory_bytes) // 4)


def guest_env() -> dict[str, str]:
    """Environment variables the guest should see (set by :func:`setup_source`)."""
    return dict(GUEST_ENV)


def setup_source() -> str:
    """Python source to run as the interpreter's first turn: environment and cwd.

    The runtime was pre-initialised with an empty environment and ``/`` as working
    directory, so they are set from inside: through ``posix`` (``os`` builds its environ
    from ``posix.environ`` when it is first imported), and through ``os.environ`` when a
    runtime has ``os`` loaded already. ``os`` is not imported here: modules the boot
    leaves loaded are reachable from library code without an import.
    """
    env = {k.encode(): v.encode() for k, v in GUEST_ENV.items()}
    return ("import posix as _p, sys as _s\n"
            f"_p.environ.update({env!r})\n"
            "for _k, _v in _p.environ.items():\n"
            "    _p.putenv(_k, _v)\n"
            "if 'os' in _s.modules:\n"
            f"    _s.modules['os'].environ.update({GUEST_ENV!r})\n"
            f"_p.chdir({GUEST_CWD!r})\n"
            "del _p, _s, _k, _v\n")


# ------------------------------------------------------------------ shared zip bytes
_zip_lock = threading.Lock()
_zips: dict[str, Any] = {}


def shared_zip(path: str | os.PathLike[str]) -> Any:
    """The stdlib zip at ``path`` as a read-only mmap, mapped once per process."""
    key = os.path.realpath(os.fspath(path))
    with _zip_lock:
        data = _zips.get(key)
        if data is None:
            with open(key, "rb") as f:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            _zips[key] = data
        return data


# ------------------------------------------------------------------ nodes
class _Node:
    __slots__ = ("ino", "dev", "writable", "atim", "mtim", "ctim", "shared", "parent", "snap")

    def __init__(self, ino: int, dev: int, writable: bool, now: int) -> None:
        self.ino = ino
        self.dev = dev
        self.writable = writable
        self.atim = self.mtim = self.ctim = now
        self.shared = False  # part of a process-wide read-only tree: never copied
        # the directory that holds it (itself for the root and for a node no directory
        # holds any more); in a snapshot's copies it means nothing (restore recomputes it)
        self.parent: _Node = self
        # the copy of this node (and of everything below it) in the latest snapshot, or
        # None once it changed since: a snapshot copies only what changed (and the path
        # to it), the rest of the tree is shared between snapshots (see MemoryFS._dirty)
        self.snap: _Node | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _Node:
        if self.shared:
            return self
        new = object.__new__(type(self))
        memo[id(self)] = new
        for cls in type(self).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                setattr(new, slot, copy.deepcopy(getattr(self, slot), memo))
        return new


class _File(_Node):
    """A regular file: ``data`` a bytearray (scratch) or bytes-like (read-only), or None
    for /dev/null or a member of an overlay archive not loaded yet (``member`` set)."""

    __slots__ = ("data", "opens", "linked", "member")

    def __init__(self, ino: int, dev: int, writable: bool, now: int, data: Any,
                 member: tuple[Any, int, int, int, int] | None = None) -> None:
        super().__init__(ino, dev, writable, now)
        self.data = data
        self.opens = 0  # open fds (kept for scratch files only)
        self.linked = True
        self.member = member  # (archive, data offset, compressed size, size, method)


class _Dir(_Node):
    __slots__ = ("entries", "removed", "hidden")

    def __init__(self, ino: int, dev: int, writable: bool, now: int,
                 parent: _Dir | None) -> None:
        super().__init__(ino, dev, writable, now)
        self.entries: dict[str, _Node] = {}
        if parent is not None:
            self.parent = parent
        self.removed = False
        self.hidden = False  # can be walked through, but does not exist itself


class _Fd:
    __slots__ = ("node", "pos", "flags", "base", "inh", "preopen", "listing")

    def __init__(self, node: _Node, flags: int, base: int, inh: int,
                 preopen: str | None = None) -> None:
        self.node = node
        self.pos = 0
        self.flags = flags
        self.base = base
        self.inh = inh
        self.preopen = preopen
        # a directory's entries as of the read that started at cookie 0: later reads
        # continue that listing instead of building it again (a listing is linear work);
        # kept only within MemoryFS.max_listed_entries over all descriptors
        self.listing: list[tuple[str, _Node]] | None = None


class FSState:
    """An opaque copy of a :class:`MemoryFS` (tree, fd table, usage); see ``snapshot``."""

    __slots__ = ("root", "fds", "used", "next_ino", "zip_data")

    def __init__(self, root: _Dir, fds: dict[int, _Fd], used: int, next_ino: int,
                 zip_data: Any) -> None:
        self.root = root
        self.fds = fds
        self.used = used
        self.next_ino = next_ino
        self.zip_data = zip_data


def _filetype(node: _Node) -> int:
    if type(node) is _Dir:
        return FT_DIRECTORY
    if node.data is None and node.member is None:  # type: ignore[attr-defined]
        return FT_CHARACTER_DEVICE
    return FT_REGULAR_FILE


# ------------------------------------------------------------------ the file system
MemGetter = Callable[[Any], tuple[int, int]]
StdioFunc = Callable[[Any, int, int, int, int], int]


class MemoryFS:
    """One interpreter's file system: the shared read-only zip and a private scratch area."""

    def __init__(self, stdlib_zip: Any, *, zip_path: str = ZIP_PATH,
                 scratch_bytes: int = DEFAULT_SCRATCH_BYTES,
                 scratch_root: str = SCRATCH_ROOT,
                 dirs: tuple[str, ...] = GUEST_DIRS,
                 overlays: tuple[tuple[str, str], ...] = ZIP_OVERLAYS,
                 max_fds: int = DEFAULT_MAX_FDS) -> None:
        if isinstance(stdlib_zip, (str, os.PathLike)):
            stdlib_zip = shared_zip(stdlib_zip)
        elif not isinstance(stdlib_zip, (bytes, mmap.mmap)):
            stdlib_zip = bytes(stdlib_zip)  # slices must be bytes
        self._zip = stdlib_zip
        self._overlays = tuple(overlays)
        self.scratch_bytes = int(scratch_bytes)
        self.max_fds = int(max_fds)
        # entries of directory listings kept for open descriptors (about 64 bytes of host
        # memory each), over all of them: as many as the scratch area can hold nodes, so
        # at most an eighth of its budget; a listing past the cap is read from the
        # directory itself at each call (slower, same answers)
        self.max_listed_entries = max(1024, self.scratch_bytes // NODE_COST)
        self._listed = 0
        self._used = 0
        self._next_ino = 1
        self._mem: MemGetter = _no_memory
        self._stdio_read: StdioFunc = self._default_stdio_read
        self._stdio_write: StdioFunc = self._default_stdio_write
        self.console: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}

        now = FIXED_TIME_NS
        self._root = _Dir(self._ino(), DEV_RO, False, now, None)
        zip_dir = self._mkdirs(zip_path.rsplit("/", 1)[0], False, DEV_RO, now)
        name = zip_path.rsplit("/", 1)[1]
        zip_dir.entries[name] = _File(self._ino(), DEV_RO, False, now, self._zip)
        dev = self._mkdirs("/dev", False, DEV_DEVICES, now)
        dev.entries["null"] = _File(self._ino(), DEV_DEVICES, True, now, None)
        scratch = self._mkdirs(scratch_root, False, DEV_RO, now)
        scratch.writable = True
        scratch.dev = DEV_SCRATCH
        for d in dirs:
            self._mkdirs(d, True, DEV_SCRATCH, time.time_ns(), charge=True)
        self._fds: dict[int, _Fd] = {
            PREOPEN_FD: _Fd(self._root, 0, DIR_RIGHTS, RIGHTS_ALL, "/")}

    # -------------------------------------------------------------- setup helpers
    def _ino(self) -> int:
        n = self._next_ino
        self._next_ino = n + 1
        return n

    def _mkdirs(self, path: str, writable: bool, dev: int, now: int,
                charge: bool = False) -> _Dir:
        node = self._root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            child = node.entries.get(part)
            if child is None:
                child = _Dir(self._ino(), dev, writable, now, node)
                node.entries[part] = child
                if charge:
                    self._used += NODE_COST
            if type(child) is not _Dir:
                raise ValueError(f"{path}: {part} is not a directory")
            node = child  # type: ignore[assignment]
        return node

    @property
    def used_bytes(self) -> int:
        """Scratch bytes in use (file contents plus NODE_COST per node)."""
        return self._used

    @property
    def listed_entries(self) -> int:
        """Directory entries kept for open descriptors' listings (see max_listed_entries)."""
        return self._listed

    def bind_memory(self, getter: MemGetter) -> None:
        """Set how to find guest memory: ``getter(caller) -> (base address, size)``."""
        self._mem = getter

    def install(self, linker: wasmtime.Linker, memory: Any = None, *,
                stdio_read: StdioFunc | None = None,
                stdio_write: StdioFunc | None = None) -> None:
        """Define every WASI file-system call on ``linker`` (after ``define_wasi()``).

        ``memory``: the guest's ``wasmtime.Memory``, a callable returning it (the instance
        does not exist yet when the linker is filled), or None to look up the ``memory``
        export through the caller. ``stdio_read``/``stdio_write(caller, fd, iovs, iovs_len,
        out_ptr) -> errno`` serve ``fd_read``/``fd_write`` on fds 0-2; without them stdin
        reads as end-of-file and output is kept in ``self.console`` (capped).
        """
        if stdio_read is not None:
            self._stdio_read = stdio_read
        if stdio_write is not None:
            self._stdio_write = stdio_write
        self.bind_memory(_memory_getter(memory))
        linker.allow_shadowing = True
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        for name, params in _SIGNATURES.items():
            ty = wasmtime.FuncType([i64 if p == "I" else i32 for p in params], [i32])
            linker.define_func("wasi_snapshot_preview1", name, ty, getattr(self, name),
                               access_caller=True)

    # -------------------------------------------------------------- snapshot
    def open_fds(self) -> list[int]:
        """The descriptors the guest holds (0, 1, 2 and the preopened ``/`` included)."""
        return sorted({0, 1, 2} | set(self._fds))

    def snapshot(self) -> FSState:
        """A copy of the tree and fd table that never changes (the zip bytes are shared).

        Only what changed since the previous snapshot is copied (with the directories
        above it); the rest is shared with that snapshot, so an unchanged tree costs the
        size of the fd table, whatever the number of files. Take it between turns (no
        wasm frame live)."""
        _freeze(self._root)
        fds: dict[int, _Fd] = {}
        for fd, f in self._fds.items():
            node = f.node
            if not node.shared and node.snap is None:
                _freeze(node)  # a file or directory no directory holds any more
            g = object.__new__(_Fd)
            for slot in _Fd.__slots__:
                setattr(g, slot, getattr(f, slot))
            g.node = node if node.shared else node.snap  # type: ignore[assignment]
            g.listing = None  # (a cache)
            fds[fd] = g
        return FSState(self._root.snap, fds, self._used, self._next_ino,  # type: ignore
                       self._zip)

    def _full_snapshot(self) -> FSState:
        """A snapshot that copies everything (what :meth:`snapshot` must equal; tests)."""
        root, fds = _clone(self._root, self._fds, self._zip, self._zip)
        return FSState(root, fds, self._used, self._next_ino, self._zip)

    def _dirty(self, node: _Node) -> None:
        """``node`` changes: it and the directories above it leave the latest snapshot.

        (A node out of the snapshot has every directory above it out too, so the walk
        stops at the first one already out.)"""
        while node.snap is not None:
            node.snap = None
            node = node.parent

    def restore(self, state: FSState) -> None:
        """Replace the tree and fd table by a copy of ``state`` (reusable many times)."""
        if not 0 <= state.used <= self.scratch_bytes:
            raise ValueError(f"the saved file system uses {state.used} bytes, more than "
                             f"this one's scratch budget of {self.scratch_bytes}")
        root, fds = _clone(state.root, state.fds, state.zip_data, self._zip,
                           link=state.zip_data is self._zip)
        self._root, self._fds = root, fds
        self._used = state.used
        self._next_ino = state.next_ino
        self._listed = 0

    # -------------------------------------------------------------- stdio defaults
    def _default_stdio_read(self, caller: Any, fd: int, iovs: int, iovs_len: int,
                            nread_ptr: int) -> int:
        if fd != 0:
            return EBADF
        return self._put_u32(caller, nread_ptr, 0)

    def _default_stdio_write(self, caller: Any, fd: int, iovs: int, iovs_len: int,
                             nwritten_ptr: int) -> int:
        if fd == 0:
            return EBADF
        base, size = self._mem(caller)
        vecs = _iovecs(base, size, iovs & _M32, iovs_len & _M32)
        if type(vecs) is int:
            return vecs
        out = self.console[fd]
        total = sum(n for _, n in vecs)  # type: ignore[union-attr]
        if total > MAX_IO_BYTES:
            return EINVAL  # (more than nwritten, a u32, can count)
        for p, n in vecs:  # type: ignore[union-attr]
            take = min(n, CONSOLE_CAP - len(out))
            if take > 0:
                out += _string_at(base + p, take)
        return self._put_u32(caller, nwritten_ptr, total)

    # -------------------------------------------------------------- small helpers
    def _put_u32(self, caller: Any, ptr: int, value: int) -> int:
        base, size = self._mem(caller)
        ptr &= _M32
        if ptr + 4 > size:
            return EFAULT
        _memmove(base + ptr, U32.pack(value), 4)
        return ESUCCESS

    def _put(self, caller: Any, ptr: int, blob: bytes) -> int:
        base, size = self._mem(caller)
        ptr &= _M32
        if ptr + len(blob) > size:
            return EFAULT
        _memmove(base + ptr, blob, len(blob))
        return ESUCCESS

    def _path(self, caller: Any, ptr: int, length: int) -> str | int:
        ptr &= _M32
        length &= _M32
        if length > PATH_MAX:
            return ENAMETOOLONG
        base, size = self._mem(caller)
        if ptr + length > size:
            return EFAULT
        raw = _string_at(base + ptr, length)
        if b"\0" in raw:
            return EINVAL
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return EILSEQ

    def _dirfd(self, fd: int) -> _Dir | int:
        e = self._fds.get(fd)
        if e is None:
            return EBADF if fd >= STDIO_FDS or fd < 0 else ENOTDIR
        node = e.node
        if type(node) is not _Dir:
            return ENOTDIR
        return node  # type: ignore[return-value]

    def _resolve(self, start: _Dir, path: str) -> tuple[_Dir | None, str | None, Any,
                                                         bool] | int:
        """(parent, name, node or None, trailing slash) for ``path`` relative to ``start``.

        ``name`` is None when the path names a directory through ``.`` or ``..``.
        """
        if not path:
            return ENOENT
        if path[0] == "/":
            return ENOTCAPABLE
        slash = path[-1] == "/"
        parts = path.rstrip("/").split("/")
        last = parts.pop()
        stack = [start]
        for p in parts:
            if not p or p == ".":
                continue
            if p == "..":
                if len(stack) > 1:
                    stack.pop()
                elif start is not self._root:
                    return ENOTCAPABLE
                continue
            child = stack[-1].entries.get(p)
            if child is None:
                return ENOENT
            if type(child) is not _Dir:
                if child.data is not self._zip:  # type: ignore[attr-defined]
                    return ENOTDIR
                child = _overlay(self._zip, self._overlays)  # the zip's data folders
                if child is None:
                    return ENOTDIR
            stack.append(child)  # type: ignore[arg-type]
        if last == "." or last == "..":
            if last == "..":
                if len(stack) > 1:
                    stack.pop()
                elif start is not self._root:
                    return ENOTCAPABLE
            node = stack[-1]
            return None, None, None if node.hidden else node, True
        if len(last) > NAME_MAX // 4 and len(last.encode()) > NAME_MAX:
            return ENAMETOOLONG
        parent = stack[-1]
        node = parent.entries.get(last)
        if node is not None and node.shared and type(node) is _Dir and node.hidden:
            node = None
        return parent, last, node, slash

    def _lookup(self, caller: Any, fd: int, path_ptr: int, path_len: int) -> Any:
        d = self._dirfd(fd)
        if type(d) is int:
            return d
        path = self._path(caller, path_ptr, path_len)
        if type(path) is int:
            return path
        return self._resolve(d, path)  # type: ignore[arg-type]

    def _charge(self, nbytes: int) -> bool:
        if self._used + nbytes > self.scratch_bytes:
            return False
        self._used += nbytes
        return True

    def _drop(self, node: _Node) -> None:
        """``node`` left the tree: give back its budget unless an fd still holds it."""
        self._dirty(node)
        if type(node) is _Dir:
            node.removed = True  # type: ignore[attr-defined]
            if node.writable:
                self._used -= NODE_COST
            return
        node.linked = False  # type: ignore[attr-defined]
        if node.opens == 0 and node.writable and node.dev == DEV_SCRATCH:  # type: ignore
            self._used -= NODE_COST + len(node.data)  # type: ignore[attr-defined]

    def _resize(self, node: _File, new_size: int) -> int:
        self._dirty(node)
        data = node.data
        old = len(data)
        if new_size > old:
            if not self._charge(new_size - old):
                return ENOSPC
            data.extend(bytes(new_size - old))
        elif new_size < old:
            del data[new_size:]
            self._used -= old - new_size
        return ESUCCESS

    def _filestat(self, node: _Node) -> bytes:
        if type(node) is _Dir:
            # nlink 1 (no hard links here): counting subdirectories on every stat would
            # make a stat of a large directory linear work for the host
            return FILESTAT.pack(node.dev, node.ino, FT_DIRECTORY, 1, 0,
                                 node.atim, node.mtim, node.ctim)
        data = node.data  # type: ignore[attr-defined]
        if data is None:
            member = node.member  # type: ignore[attr-defined]
            if member is not None:
                return FILESTAT.pack(node.dev, node.ino, FT_REGULAR_FILE, 1, member[3],
                                     node.atim, node.mtim, node.ctim)
            return FILESTAT.pack(node.dev, node.ino, FT_CHARACTER_DEVICE, 1, 0,
                                 node.atim, node.mtim, node.ctim)
        return FILESTAT.pack(node.dev, node.ino, FT_REGULAR_FILE,
                             1 if node.linked else 0, len(data),  # type: ignore
                             node.atim, node.mtim, node.ctim)

    def _new_fd(self, entry: _Fd) -> int:
        fds = self._fds
        if len(fds) >= self.max_fds:
            return -EMFILE
        fd = FIRST_FD
        while fd in fds:
            fd += 1
        fds[fd] = entry
        return fd

    # ============================================================== WASI calls: fds
    def fd_prestat_get(self, caller: Any, fd: int, buf: int) -> int:
        e = self._fds.get(fd)
        if e is None or e.preopen is None:
            return EBADF
        return self._put(caller, buf, PRESTAT.pack(0, len(e.preopen.encode())))

    def fd_prestat_dir_name(self, caller: Any, fd: int, path: int, path_len: int) -> int:
        e = self._fds.get(fd)
        if e is None or e.preopen is None:
            return EBADF
        name = e.preopen.encode()
        if (path_len & _M32) < len(name):
            return ENAMETOOLONG
        return self._put(caller, path, name)

    def fd_fdstat_get(self, caller: Any, fd: int, buf: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            if 0 <= fd < STDIO_FDS:
                rights = (R_FD_READ if fd == 0 else R_FD_WRITE) | R_POLL_FD_READWRITE
                return self._put(caller, buf, FDSTAT.pack(FT_UNKNOWN, 0, rights, 0))
            return EBADF
        return self._put(caller, buf, FDSTAT.pack(_filetype(e.node), e.flags, e.base, e.inh))

    def fd_fdstat_set_flags(self, caller: Any, fd: int, flags: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            return ESUCCESS if 0 <= fd < STDIO_FDS else EBADF
        flags &= _M32
        if flags & ~FDFLAGS_ALL:
            return EINVAL
        e.flags = flags
        return ESUCCESS

    def fd_filestat_get(self, caller: Any, fd: int, buf: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            if 0 <= fd < STDIO_FDS:
                return self._put(caller, buf, FILESTAT.pack(0, 0, FT_UNKNOWN, 0, 0, 0, 0, 0))
            return EBADF
        return self._put(caller, buf, self._filestat(e.node))

    def fd_filestat_set_size(self, caller: Any, fd: int, size: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            return EINVAL if 0 <= fd < STDIO_FDS else EBADF
        node = e.node
        if type(node) is _Dir:
            return EISDIR
        if not e.base & R_FD_WRITE:
            return EBADF
        if size < 0:
            return EINVAL
        if node.data is None:  # type: ignore[attr-defined]
            return ESUCCESS
        err = self._resize(node, size)  # type: ignore[arg-type]
        if err == ESUCCESS:
            node.mtim = node.ctim = time.time_ns()
        return err

    def fd_filestat_set_times(self, caller: Any, fd: int, atim: int, mtim: int,
                              fst_flags: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            return EINVAL if 0 <= fd < STDIO_FDS else EBADF
        return self._set_times(e.node, atim, mtim, fst_flags)

    def _set_times(self, node: _Node, atim: int, mtim: int, fst_flags: int) -> int:
        f = fst_flags & _M32
        if f & ~0xF or (f & FST_ATIM and f & FST_ATIM_NOW) or (f & FST_MTIM and
                                                                 f & FST_MTIM_NOW):
            return EINVAL
        if not node.writable or node.dev != DEV_SCRATCH:
            return EROFS if node.dev != DEV_DEVICES else ESUCCESS
        self._dirty(node)
        now = time.time_ns()
        if f & FST_ATIM:
            node.atim = atim & _M64
        elif f & FST_ATIM_NOW:
            node.atim = now
        if f & FST_MTIM:
            node.mtim = mtim & _M64
        elif f & FST_MTIM_NOW:
            node.mtim = now
        node.ctim = now
        return ESUCCESS

    def fd_read(self, caller: Any, fd: int, iovs: int, iovs_len: int, nread_ptr: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            if 0 <= fd < STDIO_FDS:
                return self._stdio_read(caller, fd, iovs, iovs_len, nread_ptr)
            return EBADF
        base, size = self._mem(caller)
        err, total = self._read(base, size, e, iovs, iovs_len, e.pos)
        if err:
            return err
        e.pos += total
        return _put_u32(base, size, nread_ptr, total)

    def fd_pread(self, caller: Any, fd: int, iovs: int, iovs_len: int, offset: int,
                 nread_ptr: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            return ESPIPE if 0 <= fd < STDIO_FDS else EBADF
        if offset < 0:
            return EINVAL
        base, size = self._mem(caller)
        err, total = self._read(base, size, e, iovs, iovs_len, offset)
        if err:
            return err
        return _put_u32(base, size, nread_ptr, total)

    def _read(self, base: int, size: int, e: _Fd, iovs: int, iovs_len: int,
              pos: int) -> tuple[int, int]:
        node = e.node
        if type(node) is _Dir:
            return EISDIR, 0
        if not e.base & R_FD_READ:
            return EBADF, 0
        vecs = _iovecs(base, size, iovs & _M32, iovs_len & _M32)
        if type(vecs) is int:
            return vecs, 0  # type: ignore[return-value]
        data = node.data  # type: ignore[attr-defined]
        if data is None:  # /dev/null
            return ESUCCESS, 0
        end = len(data)
        total = 0
        if type(data) is bytearray:
            for p, n in vecs:  # type: ignore[union-attr]
                k = min(n, end - pos)
                if k <= 0:
                    break
                _memmove(base + p, _addressof(_c_char.from_buffer(data, pos)), k)
                pos += k
                total += k
                if k < n:
                    break
        else:
            for p, n in vecs:  # type: ignore[union-attr]
                k = min(n, end - pos)
                if k <= 0:
                    break
                _memmove(base + p, data[pos:pos + k], k)
                pos += k
                total += k
                if k < n:
                    break
        return ESUCCESS, total

    def fd_write(self, caller: Any, fd: int, iovs: int, iovs_len: int,
                 nwritten_ptr: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            if 0 <= fd < STDIO_FDS:
                return self._stdio_write(caller, fd, iovs, iovs_len, nwritten_ptr)
            return EBADF
        base, size = self._mem(caller)
        err, total = self._write(base, size, e, iovs, iovs_len, None)
        if err:
            return err
        return _put_u32(base, size, nwritten_ptr, total)

    def fd_pwrite(self, caller: Any, fd: int, iovs: int, iovs_len: int, offset: int,
                  nwritten_ptr: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            return ESPIPE if 0 <= fd < STDIO_FDS else EBADF
        if offset < 0:
            return EINVAL
        base, size = self._mem(caller)
        err, total = self._write(base, size, e, iovs, iovs_len, offset)
        if err:
            return err
        return _put_u32(base, size, nwritten_ptr, total)

    def _write(self, base: int, size: int, e: _Fd, iovs: int, iovs_len: int,
               offset: int | None) -> tuple[int, int]:
        """Write the iovecs at ``offset`` (None: at the fd's position, which moves)."""
        node = e.node
        if type(node) is _Dir:
            return EISDIR, 0
        if not e.base & R_FD_WRITE:
            return EBADF, 0
        vecs = _iovecs(base, size, iovs & _M32, iovs_len & _M32)
        if type(vecs) is int:
            return vecs, 0  # type: ignore[return-value]
        want = sum(n for _, n in vecs)  # type: ignore[union-attr]
        if want > MAX_IO_BYTES:
            return EINVAL, 0
        data = node.data  # type: ignore[attr-defined]
        if data is None:  # /dev/null
            return ESUCCESS, want
        if want == 0:
            return ESUCCESS, 0
        self._dirty(node)
        pos = len(data) if e.flags & FDFLAG_APPEND else (e.pos if offset is None else offset)
        end = pos + want
        old = len(data)
        if end > old:
            # write what fits in the budget (a short write), ENOSPC when nothing does
            end = min(end, old + max(0, self.scratch_bytes - self._used))
            if end <= pos:
                return ENOSPC, 0
            self._used += end - old
            data.extend(bytes(end - old))
        total = 0
        for p, n in vecs:  # type: ignore[union-attr]
            k = min(n, end - pos)
            if k <= 0:
                break
            _memmove(_addressof(_c_char.from_buffer(data, pos)), base + p, k)
            pos += k
            total += k
        if offset is None:
            e.pos = pos
        node.mtim = node.ctim = time.time_ns()
        return ESUCCESS, total

    def fd_seek(self, caller: Any, fd: int, offset: int, whence: int, newoffset_ptr: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            return ESPIPE if 0 <= fd < STDIO_FDS else EBADF
        node = e.node
        if type(node) is _Dir:
            return ESPIPE
        if whence == 0:
            new = offset
        elif whence == 1:
            new = e.pos + offset
        elif whence == 2:
            data = node.data  # type: ignore[attr-defined]
            new = (len(data) if data is not None else 0) + offset
        else:
            return EINVAL
        if new < 0:
            return EINVAL
        if new > 0x7FFFFFFFFFFFFFFF:
            return EOVERFLOW
        base, size = self._mem(caller)
        newoffset_ptr &= _M32
        if newoffset_ptr + 8 > size:
            return EFAULT
        e.pos = new
        _memmove(base + newoffset_ptr, U64.pack(new), 8)
        return ESUCCESS

    def fd_tell(self, caller: Any, fd: int, offset_ptr: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            return ESPIPE if 0 <= fd < STDIO_FDS else EBADF
        if type(e.node) is _Dir:
            return ESPIPE
        return self._put(caller, offset_ptr, U64.pack(e.pos))

    def fd_close(self, caller: Any, fd: int) -> int:
        if fd == PREOPEN_FD:
            return ENOTSUP  # the preopened root stays: without it no path would resolve
        e = self._fds.pop(fd, None)
        if e is None:
            # fds 0-2 belong to the caller: closing them is a no-op
            return ESUCCESS if 0 <= fd < STDIO_FDS else EBADF
        self._release(e)
        return ESUCCESS

    def _release(self, e: _Fd) -> None:
        self._unlist(e)
        node = e.node
        if type(node) is _File and node.dev == DEV_SCRATCH:
            node.opens -= 1
            if node.opens == 0 and not node.linked and node.dev == DEV_SCRATCH:
                self._used -= NODE_COST + len(node.data)

    def fd_readdir(self, caller: Any, fd: int, buf: int, buf_len: int, cookie: int,
                   bufused_ptr: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            return ENOTDIR if 0 <= fd < STDIO_FDS else EBADF
        node = e.node
        if type(node) is not _Dir:
            return ENOTDIR
        buf &= _M32
        buf_len &= _M32
        base, size = self._mem(caller)
        if buf + buf_len > size:
            return EFAULT
        cookie &= _M64
        if cookie >= 1 << 62:  # (past any listing's end; islice takes at most sys.maxsize)
            return self._put_u32(caller, bufused_ptr, 0)
        items = e.listing
        if cookie == 0 or items is None:
            self._unlist(e)
            items = None
            count = len(node.entries) + 2  # type: ignore[attr-defined]
            if self._listed + count <= self.max_listed_entries:
                items = [(".", node), ("..", node.parent)]
                items.extend(node.entries.items())  # type: ignore[attr-defined]
                e.listing = items
                self._listed += count
        if items is not None:
            found: Any = itertools.islice(items, cookie, None)
        else:
            # past the cap: read from the directory as it is now (cookie-th entry on)
            found = itertools.islice(itertools.chain(
                ((".", node), ("..", node.parent)), node.entries.items()),  # type: ignore
                cookie, None)
        parts = []
        have = 0
        for i, (name, child) in enumerate(found, cookie):
            raw = name.encode()
            parts.append(DIRENT.pack(i + 1, child.ino, len(raw), _filetype(child)))
            parts.append(raw)
            have += DIRENT.size + len(raw)
            if have >= buf_len:
                break
        blob = b"".join(parts)[:buf_len]
        if blob:
            _memmove(base + buf, blob, len(blob))
        return self._put_u32(caller, bufused_ptr, len(blob))

    def _unlist(self, e: _Fd) -> None:
        if e.listing is not None:
            self._listed -= len(e.listing)
            e.listing = None

    def fd_sync(self, caller: Any, fd: int) -> int:
        return ESUCCESS if fd in self._fds or 0 <= fd < STDIO_FDS else EBADF

    def fd_datasync(self, caller: Any, fd: int) -> int:
        return ESUCCESS if fd in self._fds or 0 <= fd < STDIO_FDS else EBADF

    def fd_advise(self, caller: Any, fd: int, offset: int, length: int, advice: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            return ESPIPE if 0 <= fd < STDIO_FDS else EBADF
        if offset < 0 or length < 0 or not 0 <= advice <= 5:
            return EINVAL
        return EBADF if type(e.node) is _Dir else ESUCCESS

    def fd_allocate(self, caller: Any, fd: int, offset: int, length: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            return ESPIPE if 0 <= fd < STDIO_FDS else EBADF
        node = e.node
        if type(node) is _Dir:
            return EISDIR
        if not e.base & R_FD_WRITE:
            return EBADF
        if offset < 0 or length <= 0:
            return EINVAL
        if node.data is None:  # type: ignore[attr-defined]
            return ESUCCESS
        if offset + length > len(node.data):  # type: ignore[attr-defined]
            if offset + length > MAX_IO_BYTES * 2:
                return EFBIG
            return self._resize(node, offset + length)  # type: ignore[arg-type]
        return ESUCCESS

    def fd_renumber(self, caller: Any, fd: int, to: int) -> int:
        fds = self._fds
        src = fds.get(fd)
        dst = fds.get(to)
        if src is None or dst is None:
            return ENOTSUP if (0 <= fd < STDIO_FDS or 0 <= to < STDIO_FDS) else EBADF
        if src.preopen is not None or dst.preopen is not None:
            return ENOTSUP
        if fd != to:
            self._release(dst)
            fds[to] = fds.pop(fd)
        return ESUCCESS

    # ============================================================== WASI calls: paths
    def path_open(self, caller: Any, dirfd: int, dirflags: int, path_ptr: int, path_len: int,
                  oflags: int, rights_base: int, rights_inh: int, fdflags: int,
                  fd_ptr: int) -> int:
        d = self._dirfd(dirfd)
        if type(d) is int:
            return d
        path = self._path(caller, path_ptr, path_len)
        if type(path) is int:
            return path
        r = self._resolve(d, path)  # type: ignore[arg-type]
        if type(r) is int:
            return r
        parent, name, node, slash = r  # type: ignore[misc]
        oflags &= 0xFFFF
        fdflags &= 0xFFFF
        rights_base &= _M64
        if oflags & ~0xF or fdflags & ~FDFLAGS_ALL:
            return EINVAL
        want_write = bool(rights_base & WRITE_RIGHTS or fdflags & FDFLAG_APPEND
                          or oflags & O_TRUNC)
        if node is None:
            if not oflags & O_CREAT:
                return ENOENT
            if slash or oflags & O_DIRECTORY:
                return EISDIR
            if parent.removed:
                return ENOENT
            if not parent.writable:
                return EROFS
            if len(self._fds) >= self.max_fds:
                return EMFILE
            if not self._charge(NODE_COST):
                return ENOSPC
            now = time.time_ns()
            node = _File(self._ino(), DEV_SCRATCH, True, now, bytearray())
            node.parent = parent
            self._dirty(parent)
            parent.entries[name] = node
            parent.mtim = parent.ctim = now
        elif oflags & O_CREAT and oflags & O_EXCL:
            return EEXIST
        is_dir = type(node) is _Dir
        if is_dir:
            if want_write or oflags & O_CREAT:
                return EISDIR
            base = rights_base & DIR_RIGHTS
            inh = rights_inh & _M64 & self._fds[dirfd].inh
        else:
            if slash or oflags & O_DIRECTORY:
                return ENOTDIR
            if want_write and not node.writable:
                return EROFS
            if node.data is None and node.member is not None:
                data = _inflate(node.member)
                if data is None:
                    return EIO
                node.data = data  # shared by every interpreter from now on
            base = rights_base & FILE_RIGHTS
            if not node.writable:
                base &= ~(R_FD_WRITE | R_FD_ALLOCATE | R_FD_FILESTAT_SET_SIZE)
            inh = 0
            if oflags & O_TRUNC and node.data is not None and node.data:
                self._dirty(node)
                self._used -= len(node.data)
                node.data = bytearray()
                node.mtim = node.ctim = time.time_ns()
        fd = self._new_fd(_Fd(node, fdflags, base, inh))
        if fd < 0:
            return -fd
        if node.dev == DEV_SCRATCH and not is_dir:
            node.opens += 1
        err = self._put_u32(caller, fd_ptr, fd)
        if err:
            self._release(self._fds.pop(fd))
        return err

    def path_filestat_get(self, caller: Any, fd: int, flags: int, path_ptr: int,
                          path_len: int, buf: int) -> int:
        r = self._lookup(caller, fd, path_ptr, path_len)
        if type(r) is int:
            return r
        node, slash = r[2], r[3]
        if node is None:
            return ENOENT
        if slash and type(node) is not _Dir:
            return ENOTDIR
        return self._put(caller, buf, self._filestat(node))

    def path_filestat_set_times(self, caller: Any, fd: int, flags: int, path_ptr: int,
                                path_len: int, atim: int, mtim: int, fst_flags: int) -> int:
        r = self._lookup(caller, fd, path_ptr, path_len)
        if type(r) is int:
            return r
        node, slash = r[2], r[3]
        if node is None:
            return ENOENT
        if slash and type(node) is not _Dir:
            return ENOTDIR
        return self._set_times(node, atim, mtim, fst_flags)

    def path_create_directory(self, caller: Any, fd: int, path_ptr: int, path_len: int) -> int:
        r = self._lookup(caller, fd, path_ptr, path_len)
        if type(r) is int:
            return r
        parent, name, node, _slash = r
        if node is not None or name is None:
            return EEXIST
        if parent.removed:
            return ENOENT
        if not parent.writable:
            return EROFS
        if not self._charge(NODE_COST):
            return ENOSPC
        now = time.time_ns()
        self._dirty(parent)
        parent.entries[name] = _Dir(self._ino(), DEV_SCRATCH, True, now, parent)
        parent.mtim = parent.ctim = now
        return ESUCCESS

    def path_remove_directory(self, caller: Any, fd: int, path_ptr: int, path_len: int) -> int:
        r = self._lookup(caller, fd, path_ptr, path_len)
        if type(r) is int:
            return r
        parent, name, node, _slash = r
        if node is None:
            return ENOENT
        if name is None:
            return EINVAL
        if type(node) is not _Dir:
            return ENOTDIR
        if not parent.writable or not node.writable:
            return EROFS
        if node.entries:
            return ENOTEMPTY
        self._dirty(parent)
        del parent.entries[name]
        parent.mtim = parent.ctim = time.time_ns()
        self._drop(node)
        return ESUCCESS

    def path_unlink_file(self, caller: Any, fd: int, path_ptr: int, path_len: int) -> int:
        r = self._lookup(caller, fd, path_ptr, path_len)
        if type(r) is int:
            return r
        parent, name, node, slash = r
        if node is None:
            return ENOENT
        if name is None or type(node) is _Dir:
            return EISDIR
        if slash:
            return ENOTDIR
        if not parent.writable or node.dev != DEV_SCRATCH:
            return EROFS
        self._dirty(parent)
        del parent.entries[name]
        parent.mtim = parent.ctim = time.time_ns()
        self._drop(node)
        return ESUCCESS

    def path_rename(self, caller: Any, fd: int, old_ptr: int, old_len: int, new_fd: int,
                    new_ptr: int, new_len: int) -> int:
        src = self._lookup(caller, fd, old_ptr, old_len)
        if type(src) is int:
            return src
        dst = self._lookup(caller, new_fd, new_ptr, new_len)
        if type(dst) is int:
            return dst
        sp, sn, snode, sslash = src
        dp, dn, dnode, dslash = dst
        if snode is None:
            return ENOENT
        if sn is None or dn is None:
            return EINVAL  # renaming "." or ".."
        s_dir = type(snode) is _Dir
        if (sslash or dslash) and not s_dir:
            return ENOTDIR
        if not sp.writable or not dp.writable or snode.dev != DEV_SCRATCH:
            return EROFS
        if dp.removed:
            return ENOENT
        if snode is dnode:
            return ESUCCESS
        if s_dir:
            walk = dp
            while True:
                if walk is snode:
                    return EINVAL
                if walk.parent is walk:
                    break
                walk = walk.parent
        if dnode is not None:
            if type(dnode) is _Dir:
                if not s_dir:
                    return EISDIR
                if dnode.entries:
                    return ENOTEMPTY
            elif s_dir:
                return ENOTDIR
            self._dirty(dp)
            del dp.entries[dn]
            self._drop(dnode)
        self._dirty(sp)
        self._dirty(dp)
        self._dirty(snode)
        del sp.entries[sn]
        dp.entries[dn] = snode
        snode.parent = dp
        now = time.time_ns()
        sp.mtim = sp.ctim = dp.mtim = dp.ctim = snode.ctim = now
        return ESUCCESS

    def path_readlink(self, caller: Any, fd: int, path_ptr: int, path_len: int, buf: int,
                      buf_len: int, bufused_ptr: int) -> int:
        r = self._lookup(caller, fd, path_ptr, path_len)
        if type(r) is int:
            return r
        return ENOENT if r[2] is None else EINVAL  # nothing here is a symbolic link

    def path_symlink(self, caller: Any, old_ptr: int, old_len: int, fd: int, new_ptr: int,
                     new_len: int) -> int:
        d = self._dirfd(fd)
        return d if type(d) is int else ENOTSUP  # type: ignore[return-value]

    def path_link(self, caller: Any, old_fd: int, old_flags: int, old_ptr: int, old_len: int,
                  new_fd: int, new_ptr: int, new_len: int) -> int:
        for fd in (old_fd, new_fd):
            d = self._dirfd(fd)
            if type(d) is int:
                return d  # type: ignore[return-value]
        return EPERM

    # ============================================================== the host's file API
    # What the host puts into and reads out of the agent's files, between turns (the
    # session runs these on its own thread, so they never race a turn or an image). Paths
    # are absolute guest paths made by host_path(): under the scratch root, normalised.
    def _host_walk(self, path: str, *, missing_ok: bool = False
                   ) -> tuple[_Dir, str, _Node | None]:
        """(directory, name, node or None) of ``path``; a directory on the way that is
        missing raises FileNotFoundError (None for the node itself with ``missing_ok``)."""
        parts = path.strip("/").split("/")
        node: _Node = self._root
        for i, part in enumerate(parts[:-1]):
            child = node.entries.get(part)  # type: ignore[attr-defined]
            if child is None:
                raise FileNotFoundError(_ENOENT_ERR, "no such directory in the sandbox",
                                        "/" + "/".join(parts[:i + 1]))
            if type(child) is not _Dir:
                raise NotADirectoryError(_ENOTDIR_ERR, "not a directory in the sandbox",
                                         "/" + "/".join(parts[:i + 1]))
            node = child
        found = node.entries.get(parts[-1])  # type: ignore[attr-defined]
        if found is None and not missing_ok:
            raise FileNotFoundError(_ENOENT_ERR, "no such file or directory in the sandbox",
                                    path)
        return node, parts[-1], found  # type: ignore[return-value]

    def host_write(self, path: str, data: bytes) -> int:
        """Make ``path`` a file holding ``data`` (its directories too), charged to the
        scratch budget like the guest's own writes: nothing changes when it does not fit
        (InputError). An existing file keeps its identity (descriptors the guest holds see
        the new contents). Returns the bytes of budget the write took (or gave back)."""
        parts = path.strip("/").split("/")
        node: _Node = self._root
        i = 0
        while i < len(parts) - 1:
            child = node.entries.get(parts[i])  # type: ignore[attr-defined]
            if child is None:
                break
            if type(child) is not _Dir:
                raise NotADirectoryError(_ENOTDIR_ERR, "a file is in the way (not a "
                                         "directory)", "/" + "/".join(parts[:i + 1]))
            node = child
            i += 1
        folder: _Dir = node  # type: ignore[assignment]
        new_dirs = parts[i:-1]
        name = parts[-1]
        existing = None if new_dirs else folder.entries.get(name)
        if existing is not None and type(existing) is _Dir:
            raise IsADirectoryError(_EISDIR_ERR, "a directory has that name in the sandbox",
                                    path)
        if not folder.writable or folder.dev != DEV_SCRATCH or folder.removed:
            raise InputError(f"{path}: not in the agent's writable files")
        need = NODE_COST * len(new_dirs) + (
            NODE_COST + len(data) if existing is None
            else len(data) - len(existing.data))  # type: ignore[attr-defined]
        if need > 0 and self._used + need > self.scratch_bytes:
            free = max(0, self.scratch_bytes - self._used)
            raise InputError(
                f"writing {path} ({len(data):,} bytes) needs {need:,} bytes of the agent's "
                f"file space and {free:,} of {self.scratch_bytes:,} are free (file contents "
                f"plus {NODE_COST} per file or directory; the space is a quarter of "
                "memory_bytes, at least 16 MiB): write less, delete files first, or give "
                "the executor more memory_bytes. Nothing was written")
        now = time.time_ns()
        for part in new_dirs:
            child = _Dir(self._ino(), DEV_SCRATCH, True, now, folder)
            self._dirty(folder)
            folder.entries[part] = child
            folder.mtim = folder.ctim = now
            self._used += NODE_COST
            folder = child
        if existing is None:
            f = _File(self._ino(), DEV_SCRATCH, True, now, bytearray(data))
            f.parent = folder
            self._dirty(folder)
            folder.entries[name] = f
            folder.mtim = folder.ctim = now
            self._used += NODE_COST + len(data)
        else:
            self._dirty(existing)
            self._used += len(data) - len(existing.data)  # type: ignore[attr-defined]
            existing.data[:] = data  # type: ignore[attr-defined]
            existing.mtim = existing.ctim = now
        return need

    def host_read(self, path: str) -> bytes:
        """The contents of the file at ``path`` (FileNotFoundError, IsADirectoryError)."""
        _folder, _name, node = self._host_walk(path)
        if type(node) is _Dir:
            raise IsADirectoryError(_EISDIR_ERR, "a directory, not a file, in the sandbox",
                                    path)
        data = node.data  # type: ignore[union-attr]
        return b"" if data is None else bytes(data)

    def host_list(self, path: str, recursive: bool = False) -> list[tuple[str, int, bool]]:
        """(name relative to ``path``, size, is a directory) of what the directory at
        ``path`` holds, sorted by name; with ``recursive``, everything below it."""
        if path.strip("/"):
            _folder, _name, top = self._host_walk(path)
        else:
            top = self._root
        if type(top) is not _Dir:
            raise NotADirectoryError(_ENOTDIR_ERR, "a file, not a directory, in the sandbox",
                                     path)
        out: list[tuple[str, int, bool]] = []
        stack: list[tuple[str, _Dir]] = [("", top)]  # type: ignore[list-item]
        while stack:
            prefix, folder = stack.pop()
            for name, child in folder.entries.items():
                if child.shared and type(child) is _Dir and child.hidden:
                    continue
                rel = prefix + name
                if type(child) is _Dir:
                    out.append((rel, 0, True))
                    if recursive:
                        stack.append((rel + "/", child))  # type: ignore[arg-type]
                else:
                    data = child.data  # type: ignore[attr-defined]
                    out.append((rel, 0 if data is None else len(data), False))
        out.sort()
        return out

    def host_delete(self, path: str) -> None:
        """Remove the file or directory (with everything in it) at ``path``; the
        sandbox's own directories (the scratch root, the working directory, HOME,
        MPLCONFIGDIR) stay. A file the guest holds open keeps its budget until closed."""
        if path.rstrip("/") in (SCRATCH_ROOT,) + GUEST_DIRS:
            raise InputError(f"{path} is one of the sandbox's own directories (the working "
                             f"directory {GUEST_CWD}, HOME {GUEST_HOME}, MPLCONFIGDIR "
                             f"{GUEST_MPLCONFIGDIR}, or {SCRATCH_ROOT}): delete what is "
                             "inside it instead")
        folder, name, node = self._host_walk(path)
        if node is None or not node.writable or node.dev != DEV_SCRATCH:
            raise InputError(f"{path}: not in the agent's writable files")
        self._dirty(folder)
        del folder.entries[name]
        folder.mtim = folder.ctim = time.time_ns()
        stack: list[_Node] = [node]
        while stack:
            item = stack.pop()
            if type(item) is _Dir:
                stack.extend(item.entries.values())
            self._drop(item)


# errno values of the host's own OSErrors (the file API above raises them for the caller)
_ENOENT_ERR = 2
_ENOTDIR_ERR = 20
_EISDIR_ERR = 21


def host_path(path: Any, what: str = "path") -> str:
    """The absolute guest path the host's file API means by ``path``.

    A relative name is under the working directory (``/tmp/work``); an absolute path
    must be under the scratch root (``/tmp``), the agent's only writable tree. ``.``
    parts are dropped; ``..``, NUL, empty names, lone surrogates and names longer than the
    guest allows raise InputError, which says what to give instead.
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise InputError(f"{what} must be a str, not {type(path).__name__}")
    shown = repr(path) if len(path) <= 200 else repr(path[:200]) + "..."
    hint = (f"give a name relative to the working directory {GUEST_CWD} (like 'data.csv' "
            f"or 'out/chart.png') or an absolute path under {SCRATCH_ROOT}")
    if not path:
        raise InputError(f"{what} is empty: {hint}")
    if "\0" in path:
        raise InputError(f"{what} {shown} contains a NUL character: {hint}")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise InputError(f"{what} {shown} contains a lone surrogate, which no file name in "
                         "the sandbox can hold") from None
    if size > PATH_MAX:
        raise InputError(f"{what} is {size} bytes long; paths in the sandbox have at most "
                         f"{PATH_MAX}")
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise InputError(f"{what} {shown} contains '..': {hint} (the host's file API "
                             "never leaves the agent's files)")
        if len(part.encode("utf-8")) > NAME_MAX:
            raise InputError(f"{what} {shown} has a name longer than {NAME_MAX} bytes")
        parts.append(part)
    root = SCRATCH_ROOT.strip("/").split("/")
    if path.startswith("/"):
        if parts[:len(root)] != root:
            raise InputError(f"{what} {shown} is outside the agent's files: {hint}")
    else:
        parts = GUEST_CWD.strip("/").split("/") + parts
    return "/" + "/".join(parts)


# parameter kinds of each call after the caller: "i" i32, "I" i64 (results are one i32)
_SIGNATURES = {
    "fd_prestat_get": "ii",
    "fd_prestat_dir_name": "iii",
    "fd_fdstat_get": "ii",
    "fd_fdstat_set_flags": "ii",
    "fd_filestat_get": "ii",
    "fd_filestat_set_size": "iI",
    "fd_filestat_set_times": "iIIi",
    "fd_read": "iiii",
    "fd_pread": "iiiIi",
    "fd_write": "iiii",
    "fd_pwrite": "iiiIi",
    "fd_seek": "iIii",
    "fd_tell": "ii",
    "fd_close": "i",
    "fd_readdir": "iiiIi",
    "fd_sync": "i",
    "fd_datasync": "i",
    "fd_advise": "iIIi",
    "fd_allocate": "iII",
    "fd_renumber": "ii",
    "path_open": "iiiiiIIii",
    "path_filestat_get": "iiiii",
    "path_filestat_set_times": "iiiiIIi",
    "path_create_directory": "iii",
    "path_remove_directory": "iii",
    "path_unlink_file": "iii",
    "path_rename": "iiiiii",
    "path_readlink": "iiiiii",
    "path_symlink": "iiiii",
    "path_link": "iiiiiii",
}
WASI_FS_CALLS = tuple(_SIGNATURES)


def install(linker: wasmtime.Linker, fs: MemoryFS, memory: Any = None, *,
            stdio_read: StdioFunc | None = None,
            stdio_write: StdioFunc | None = None) -> MemoryFS:
    """Shadow the WASI file-system calls of ``linker`` with ``fs`` (see MemoryFS.install)."""
    fs.install(linker, memory, stdio_read=stdio_read, stdio_write=stdio_write)
    return fs


# ------------------------------------------------------------------ memory access
def _put_u32(base: int, size: int, ptr: int, value: int) -> int:
    """Store a u32 result at a guest pointer (EFAULT outside the memory)."""
    ptr &= _M32
    if ptr + 4 > size:
        return EFAULT
    _memmove(base + ptr, U32.pack(value), 4)
    return ESUCCESS


def _no_memory(caller: Any) -> tuple[int, int]:
    raise RuntimeError("MemoryFS has no guest memory bound (call install or bind_memory)")


def _memory_getter(memory: Any) -> MemGetter:
    cache: list[wasmtime.Memory] = []
    if isinstance(memory, wasmtime.Memory):
        cache.append(memory)

    def get(caller: Any) -> tuple[int, int]:
        if cache:
            m = cache[0]
        else:
            if memory is None:
                found = caller.get("memory")
            else:
                found = memory()
            if not isinstance(found, wasmtime.Memory):
                raise RuntimeError("the guest exports no memory")
            cache.append(found)
            m = found
        return _addressof(m.data_ptr(caller).contents), m.data_len(caller)

    return get


def _iovecs(base: int, size: int, iovs: int, count: int) -> list[tuple[int, int]] | int:
    """The (pointer, length) pairs of an iovec array, every one inside guest memory."""
    if count > MAX_IOVS:
        return EINVAL
    if iovs + 8 * count > size:
        return EFAULT
    if count == 0:
        return []
    vecs = list(IOVEC.iter_unpack(_string_at(base + iovs, 8 * count)))
    for p, n in vecs:
        if p + n > size:
            return EFAULT
    return vecs


# ------------------------------------------------------------------ archive overlays
_overlay_lock = threading.Lock()
_overlay_cache: dict[tuple[int, tuple[tuple[str, str], ...]], tuple[Any, _Dir | None]] = {}
_overlay_ino = itertools.count(1 << 40)  # apart from every MemoryFS's own numbers
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... name length, extra length


def _member(archive: Any, info: zipfile.ZipInfo) -> tuple[Any, int, int, int, int] | None:
    """Where ``info``'s bytes start in ``archive`` (after its local header)."""
    off = info.header_offset
    if off + _LOCAL_HEADER.size > len(archive):
        return None
    sig, nlen, xlen = _LOCAL_HEADER.unpack(archive[off:off + _LOCAL_HEADER.size])
    if sig != b"PK\x03\x04" or info.compress_type not in (zipfile.ZIP_STORED,
                                                            zipfile.ZIP_DEFLATED):
        return None
    start = off + _LOCAL_HEADER.size + nlen + xlen
    if start + info.compress_size > len(archive):
        return None
    return archive, start, info.compress_size, info.file_size, info.compress_type


def _inflate(member: tuple[Any, int, int, int, int]) -> bytes | None:
    archive, start, csize, size, method = member
    raw = archive[start:start + csize]
    if method == zipfile.ZIP_STORED:
        data = bytes(raw)
    else:
        try:
            data = zlib.decompress(raw, -15)
        except zlib.error:
            return None
    return data if len(data) == size else None


def _overlay(zip_data: Any, overlays: tuple[tuple[str, str], ...]) -> _Dir | None:
    """The read-only folders served under the zip's path (built once per process)."""
    key = (id(zip_data), overlays)
    hit = _overlay_cache.get(key)
    if hit is not None and hit[0] is zip_data:
        return hit[1]
    with _overlay_lock:
        hit = _overlay_cache.get(key)
        if hit is not None and hit[0] is zip_data:
            return hit[1]
        root = _build_overlay(zip_data, overlays)
        _overlay_cache[key] = (zip_data, root)
        return root


def _shared_dir(parent: _Dir | None, hidden: bool) -> _Dir:
    d = _Dir(next(_overlay_ino), DEV_RO, False, FIXED_TIME_NS, parent)
    d.shared = True
    d.hidden = hidden
    return d


def _build_overlay(zip_data: Any, overlays: tuple[tuple[str, str], ...]) -> _Dir | None:
    if not overlays:
        return None
    try:
        outer = zipfile.ZipFile(io.BytesIO(zip_data) if isinstance(zip_data, bytes)
                                else zip_data)
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    root = _shared_dir(None, True)
    with outer:
        for inner_name, guest_path in overlays:
            try:
                info = outer.getinfo(inner_name)
            except KeyError:
                continue
            where = _member(zip_data, info)
            inner = _inflate(where) if where is not None else None
            if inner is None:
                continue
            try:
                members = zipfile.ZipFile(io.BytesIO(inner)).infolist()
            except zipfile.BadZipFile:
                continue
            top = _shared_path(root, guest_path.strip("/").split("/"), True)
            if top is None:
                continue
            top.hidden = False
            for m in members:
                if m.is_dir():
                    continue
                parts = [p for p in m.filename.split("/") if p]
                if not parts or any(p in (".", "..") for p in parts):
                    continue
                folder = _shared_path(top, parts[:-1], False)
                found = _member(inner, m)
                if folder is None or found is None or parts[-1] in folder.entries:
                    continue
                f = _File(next(_overlay_ino), DEV_RO, False, FIXED_TIME_NS, None, found)
                f.shared = True
                folder.entries[parts[-1]] = f
                if m.file_size == 0:
                    f.data = b""
    return root


def _shared_path(start: _Dir, parts: list[str], hidden: bool) -> _Dir | None:
    """Walk down from ``start``, making the missing folders."""
    node = start
    for p in parts:
        child = node.entries.get(p)
        if child is None:
            child = _shared_dir(node, hidden)
            node.entries[p] = child
        if type(child) is not _Dir:
            return None
        node = child  # type: ignore[assignment]
    return node


def _copy_node(node: _Node) -> _Node:
    new = object.__new__(type(node))
    for cls in type(node).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            setattr(new, slot, getattr(node, slot))
    new.parent = new
    new.snap = None
    return new


def _freeze(top: _Node) -> None:
    """Give ``top`` and every node under it its snapshot copy (``snap``): a node that has
    one keeps it, the others are copied, children before their directory (no recursion:
    a deep tree must not exhaust Python's stack). Work: the nodes that changed since the
    last snapshot, the entries of the directories that hold them, and their contents."""
    if top.shared or top.snap is not None:
        return
    order: list[_Node] = []
    stack: list[_Node] = [top]
    while stack:
        node = stack.pop()
        order.append(node)
        if type(node) is _Dir:
            for child in node.entries.values():
                if child.snap is None and not child.shared:
                    stack.append(child)
    for node in reversed(order):
        new = _copy_node(node)
        if type(node) is _Dir:
            new.entries = {name: child if child.shared else child.snap  # type: ignore
                           for name, child in node.entries.items()}
        elif isinstance(node.data, bytearray):  # type: ignore[attr-defined]
            new.data = bytearray(node.data)  # type: ignore[attr-defined]
        node.snap = new


def _clone(root: _Dir, fds: dict[int, _Fd], zip_from: Any, zip_to: Any,
           link: bool = False) -> tuple[_Dir, dict[int, _Fd]]:
    """A copy of a tree and its fd table, without recursion (a deep tree must not exhaust
    Python's stack): shared nodes are kept, scratch file contents copied, and file data
    that is ``zip_from`` becomes ``zip_to``. What a node's copy only keeps for the host
    (the directory above it, how many descriptors hold a file) is recounted from the
    tree and the fd table. ``link``: ``root`` is a snapshot (it never changes), so each
    copy starts as unchanged since it (its ``snap``)."""
    copies: dict[int, _Node] = {}

    def make(node: _Node) -> _Node:
        new = _copy_node(node)
        if link:
            new.snap = node
        if type(node) is _File:
            new.opens = 0  # type: ignore[attr-defined]
            data = node.data
            if data is zip_from:
                new.data = zip_to  # type: ignore[attr-defined]
            elif isinstance(data, bytearray):
                new.data = bytearray(data)  # type: ignore[attr-defined]
        copies[id(node)] = new
        return new

    def walk(top: _Node) -> _Node:
        new_top = make(top)
        stack = [(top, new_top)]
        while stack:
            node, new = stack.pop()
            if type(node) is not _Dir:
                continue
            entries: dict[str, _Node] = {}
            for name, child in node.entries.items():
                if child.shared:
                    entries[name] = child
                    continue
                c = copies.get(id(child))
                if c is None:
                    c = make(child)
                    stack.append((child, c))
                c.parent = new
                entries[name] = c
            new.entries = entries  # type: ignore[attr-defined]
        return new_top

    new_root = walk(root)
    new_fds: dict[int, _Fd] = {}
    for fd, f in fds.items():
        node = f.node
        if node.shared:
            target = node
        else:
            target = copies.get(id(node)) or walk(node)
            if type(target) is _File and target.dev == DEV_SCRATCH:
                target.opens += 1
        g = object.__new__(_Fd)
        for slot in _Fd.__slots__:
            setattr(g, slot, getattr(f, slot))
        g.node = target
        g.listing = None  # (a cache)
        new_fds[fd] = g
    return new_root, new_fds  # type: ignore[return-value]


# ------------------------------------------------------------------ saving to a file
# An FSState as plain JSON data (for an interpreter image saved to a file) and back. Only
# node kinds of this module, numbers, strings and bytes are written; reading builds the
# same kinds again (nothing in the file names a type or a function to call).

def encode_fs_state(state: FSState, fs: MemoryFS) -> dict[str, Any]:
    shared = _shared_paths(fs)
    index: dict[int, int] = {}
    nodes: list[_Node] = []

    def ref(node: _Node) -> Any:
        if node.shared:
            path = shared.get(id(node))
            if path is None:
                raise ValueError("a read-only library file could not be named")
            return {"shared": path}
        at = index.get(id(node))
        if at is None:
            at = index[id(node)] = len(nodes)
            nodes.append(node)
        return at

    root = ref(state.root)
    fds = {}
    opens: dict[int, int] = {}  # (counted here: a snapshot's copies may keep an old count)
    for f in state.fds.values():
        if type(f.node) is _File and f.node.dev == DEV_SCRATCH:
            opens[id(f.node)] = opens.get(id(f.node), 0) + 1
    for fd, f in state.fds.items():
        fds[str(fd)] = {"node": ref(f.node), "pos": f.pos, "flags": f.flags, "base": f.base,
                        "inh": f.inh, "preopen": f.preopen}
    out: list[Any] = []
    i = 0
    while i < len(nodes):  # (nodes grows as directories name their children)
        node = nodes[i]
        i += 1
        entry: dict[str, Any] = {"ino": node.ino, "dev": node.dev, "writable": node.writable,
                                 "times": [node.atim, node.mtim, node.ctim]}
        if type(node) is _Dir:
            entry["kind"] = "dir"
            entry["removed"] = node.removed
            entry["hidden"] = node.hidden
            entry["entries"] = {name: ref(child) for name, child in node.entries.items()}
        elif type(node) is _File:
            entry["kind"] = "file"
            entry["opens"] = opens.get(id(node), 0)
            entry["linked"] = node.linked
            if node.member is not None:
                raise ValueError("an unloaded archive member outside the library")
            data = node.data
            if data is None:
                entry["data"] = None
            elif data is state.zip_data:
                entry["data"] = {"zip": True}
            else:
                entry["data"] = {"b64": base64.b64encode(bytes(data)).decode("ascii"),
                                 "mutable": isinstance(data, bytearray)}
        else:
            raise ValueError(f"unknown node kind {type(node).__name__}")
        out.append(entry)
    return {"root": root, "nodes": out, "fds": fds, "next_ino": state.next_ino}


def max_image_nodes(scratch_bytes: int, max_fds: int = DEFAULT_MAX_FDS) -> int:
    """How many nodes a saved file system can hold: what its scratch budget pays for,
    directories removed while a descriptor holds them, and the skeleton."""
    return scratch_bytes // NODE_COST + max_fds + 64


def decode_fs_state(data: dict[str, Any], fs: MemoryFS) -> FSState:
    """The FSState that ``encode_fs_state`` wrote, for ``fs``; ValueError when the data is
    not one. Nothing the data says about the host's own bookkeeping is believed: every
    number is range-checked, the tree's shape is rebuilt from the entries (each node under
    exactly one name, no loops), only the scratch device is writable and only it holds
    contents of the file's own, descriptors have no more rights than opening the node
    would give, and the scratch usage, the open counts, which nodes are linked and the
    parents are recounted: a file cannot lift ``fs``'s budget or loop the tree."""
    overlay = _overlay(fs._zip, fs._overlays)
    raw = data["nodes"]
    most = max_image_nodes(fs.scratch_bytes, fs.max_fds)
    if not isinstance(raw, list) or len(raw) > most:
        raise ValueError(f"nodes (at most {most} for this scratch budget)")
    limit = 1 << 63

    def number(value: Any, low: int = 0, high: int = limit) -> int:
        if type(value) is not int or not low <= value < high:
            raise ValueError("a number out of range")
        return value

    def shared_node(path: Any) -> _Node:
        node: Any = overlay
        if node is None or not isinstance(path, list):
            raise ValueError("shared path")
        for part in path:
            if type(node) is not _Dir or not isinstance(part, str) or part not in node.entries:
                raise ValueError("a library file of the image is not in this runtime")
            node = node.entries[part]
        return node  # type: ignore[no-any-return]

    made: list[_Node] = []
    for e in raw:
        if not isinstance(e, dict):
            raise ValueError("node")
        dev = number(e["dev"])
        if dev not in (DEV_RO, DEV_SCRATCH, DEV_DEVICES):
            raise ValueError("device")
        writable = e["writable"]
        if type(writable) is not bool:
            raise ValueError("writable")
        ino = number(e["ino"], 1)
        node: _Node
        if e["kind"] == "dir":
            # only the scratch device is writable, and all of it
            if writable != (dev == DEV_SCRATCH):
                raise ValueError("writable")
            node = _Dir(ino, dev, writable, 0, None)
            if e["hidden"] is not False or type(e["removed"]) is not bool:
                raise ValueError("a directory's flags")
        elif e["kind"] == "file":
            d = e["data"]
            if d is None:
                # a device (/dev/null): no contents
                if dev != DEV_DEVICES:
                    raise ValueError("a file without contents outside /dev")
                content: Any = None
            elif writable != (dev == DEV_SCRATCH):
                raise ValueError("writable")
            elif isinstance(d, dict) and d.get("zip") is True:
                if dev != DEV_RO:
                    raise ValueError("the library zip as a writable file")
                content = fs._zip
            elif isinstance(d, dict) and isinstance(d.get("b64"), str):
                # contents of the file's own are scratch files (charged to the budget);
                # read-only ones come from the runtime, never from an image
                if dev != DEV_SCRATCH or d.get("mutable") is not True:
                    raise ValueError("file contents outside the scratch area")
                content = bytearray(base64.b64decode(d["b64"], validate=True))
            else:
                raise ValueError("file contents")
            node = _File(ino, dev, writable, 0, content)
            number(e["opens"], 0, 1 << 20)  # (recounted below)
            if type(e["linked"]) is not bool:
                raise ValueError("linked")
        else:
            raise ValueError("node kind")
        times = e["times"]
        if not isinstance(times, list) or len(times) != 3:
            raise ValueError("times")
        node.atim, node.mtim, node.ctim = (number(t) for t in times)
        made.append(node)

    def get(r: Any, in_tree: bool) -> _Node:
        if isinstance(r, dict):
            if in_tree:
                raise ValueError("a library file inside the scratch tree")
            return shared_node(r.get("shared"))
        return made[number(r, 0, len(made))]

    root = get(data["root"], True)
    if type(root) is not _Dir or root.dev != DEV_RO:
        raise ValueError("root")
    # the shape: every node reached once from the root (so no cycles, no directory in two
    # places, no file under two names); parents are those that hold them, never what the
    # file says
    seen = {id(root)}
    walk = [(root, raw[made.index(root)])]
    while walk:
        parent, e = walk.pop()
        entries = e["entries"]
        if not isinstance(entries, dict):
            raise ValueError("entries")
        for name, r in entries.items():
            # (a name the guest could have made: UTF-8 text without NUL; a lone surrogate
            # would make every listing of its directory fail in the host)
            if (not isinstance(name, str) or not name or "/" in name or "\0" in name
                    or name in (".", "..") or not _utf8_name(name)):
                raise ValueError(f"a file name ({name[:40]!r})")
            child = get(r, True)
            if id(child) in seen:
                raise ValueError("a file or directory under more than one name, or a "
                                 "directory in two places (a loop)")
            seen.add(id(child))
            child.parent = parent
            if type(child) is _Dir:
                walk.append((child, raw[number(r)]))
            parent.entries[name] = child  # type: ignore[attr-defined]
    fds: dict[int, _Fd] = {}
    items = data["fds"]
    if not isinstance(items, dict) or len(items) > fs.max_fds:
        raise ValueError("fds")
    for key, f in items.items():
        fd_number = int(key)
        number(fd_number, PREOPEN_FD, 1 << 31)
        preopen = f["preopen"]
        node = get(f["node"], False)
        if preopen is not None and (fd_number != PREOPEN_FD or preopen != "/" or node is not root):
            raise ValueError("preopen")
        base, inh = number(f["base"], 0, 1 << 64), number(f["inh"], 0, 1 << 64)
        # no more rights than path_open gives for the node
        if type(node) is _Dir:
            if base & ~DIR_RIGHTS or inh & ~RIGHTS_ALL:
                raise ValueError("a descriptor's rights")
        elif (base & ~FILE_RIGHTS or inh
              or (not node.writable and base & (R_FD_WRITE | R_FD_ALLOCATE
                                                | R_FD_FILESTAT_SET_SIZE))):
            raise ValueError("a descriptor's rights")
        fd = _Fd(node, number(f["flags"], 0, FDFLAGS_ALL + 1), base, inh, preopen)
        fd.pos = number(f["pos"])
        fds[fd_number] = fd
    if fds.get(PREOPEN_FD) is None or fds[PREOPEN_FD].node is not root:
        raise ValueError("the preopened directory")
    # what the host keeps for itself, recounted: which nodes are linked (in the tree),
    # which directories were removed, how many descriptors hold each file
    for node in made:
        linked = id(node) in seen
        if type(node) is _Dir:
            node.removed = not linked
        else:
            node.linked = linked  # type: ignore[attr-defined]
    for f in fds.values():
        if type(f.node) is _File and f.node.dev == DEV_SCRATCH:
            f.node.opens += 1
    # what the scratch area holds: the tree's scratch nodes, and the files removed from it
    # while a descriptor holds them (a removed directory gave its budget back already)
    scratch_root: Any = root
    for part in SCRATCH_ROOT.strip("/").split("/"):
        scratch_root = scratch_root.entries.get(part) if type(scratch_root) is _Dir else None
    held = {id(f.node): f.node for f in fds.values()}
    used = 0
    for node in made:
        if node.dev != DEV_SCRATCH or node is scratch_root:
            continue
        if id(node) in seen or (type(node) is _File and id(node) in held):
            used += NODE_COST
            if type(node) is _File:
                used += len(node.data)  # type: ignore[attr-defined]
    if used > fs.scratch_bytes:
        raise ValueError(f"the scratch files need {used} bytes, more than the budget of "
                         f"{fs.scratch_bytes}")
    next_ino = number(data["next_ino"], 1)
    if made and next_ino <= max(n.ino for n in made):
        raise ValueError("next_ino")
    return FSState(root, fds, used, next_ino, fs._zip)


def _utf8_name(name: str) -> bool:
    """Whether ``name`` encodes as UTF-8 in at most NAME_MAX bytes."""
    try:
        return len(name.encode("utf-8")) <= NAME_MAX
    except UnicodeEncodeError:
        return False


def _shared_paths(fs: MemoryFS) -> dict[int, list[str]]:
    """id(node) -> its path in the process-wide read-only tree of ``fs``'s archives."""
    out: dict[int, list[str]] = {}
    top = _overlay(fs._zip, fs._overlays)
    if top is None:
        return out
    stack: list[tuple[_Node, list[str]]] = [(top, [])]
    while stack:
        node, path = stack.pop()
        out[id(node)] = path
        if type(node) is _Dir:
            for name, child in node.entries.items():
                stack.append((child, path + [name]))
    return out
