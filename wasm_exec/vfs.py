"""An in-memory WASI preview-1 file system, served by host functions.

Used by every runtime (pre-initialised CPython reactors): every WASI file-system
import is shadowed by a method of one :class:`MemoryFS`, one per interpreter. Nothing here
touches the host file system on the guest's behalf.

The file system's parts, one concept per module: the WASI ABI (errno values, flags, struct
layouts, guest memory access) in ``wasi.py``; the layout, nodes and tree copies in
``fsnodes.py``; the runtime's read-only archives in ``zipfs.py``; the state as JSON for
image files in ``fsimage.py``; the host's own file API in ``hostfiles.py``; the guest's
WASI calls (``MemoryFS``) here.

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

The host puts files in and reads them out with ``host_write``, ``host_read``,
``host_list`` and ``host_delete`` (hostfiles.py; the executor's file API), on paths that
:func:`~wasm_exec.hostfiles.host_path` made: only under the scratch root, charged to the
same budget as the guest's own writes.
"""

from __future__ import annotations

import itertools
import mmap
import os
import time
from collections.abc import Callable
from typing import Any

import wasmtime

from .fsnodes import (  # (the layout's names are this module's too)
    CONSOLE_CAP,
    DEFAULT_MAX_FDS,
    DEFAULT_SCRATCH_BYTES,
    DEV_DEVICES,
    DEV_RO,
    DEV_SCRATCH,
    FIRST_FD,
    FIXED_TIME_NS,
    GUEST_CWD,
    GUEST_DIRS,
    GUEST_ENV,
    NAME_MAX,
    NODE_COST,
    PATH_MAX,
    PREOPEN_FD,
    SCRATCH_ROOT,
    STDIO_FDS,
    ZIP_OVERLAYS,
    ZIP_PATH,
    Dir,
    Fd,
    File,
    FSState,
    Node,
    clone_tree,
    filetype,
    freeze,
)
from .hostfiles import HostFiles
from .wasi import (
    DIR_RIGHTS,
    DIRENT,
    EBADF,
    EEXIST,
    EFAULT,
    EFBIG,
    EILSEQ,
    EINVAL,
    EIO,
    EISDIR,
    EMFILE,
    ENAMETOOLONG,
    ENOENT,
    ENOSPC,
    ENOTCAPABLE,
    ENOTDIR,
    ENOTEMPTY,
    ENOTSUP,
    EOVERFLOW,
    EPERM,
    EROFS,
    ESPIPE,
    ESUCCESS,
    FDFLAG_APPEND,
    FDFLAGS_ALL,
    FDSTAT,
    FILE_RIGHTS,
    FILESTAT,
    FST_ATIM,
    FST_ATIM_NOW,
    FST_MTIM,
    FST_MTIM_NOW,
    FT_CHARACTER_DEVICE,
    FT_DIRECTORY,
    FT_REGULAR_FILE,
    FT_UNKNOWN,
    M32,
    M64,
    MAX_IO_BYTES,
    O_CREAT,
    O_DIRECTORY,
    O_EXCL,
    O_TRUNC,
    PRESTAT,
    R_FD_ALLOCATE,
    R_FD_FILESTAT_SET_SIZE,
    R_FD_READ,
    R_FD_WRITE,
    R_POLL_FD_READWRITE,
    RIGHTS_ALL,
    U32,
    U64,
    WRITE_RIGHTS,
    MemGetter,
    addressof,
    c_char,
    iovecs,
    memmove,
    memory_getter,
    no_memory,
    put_u32,
    string_at,
)
from .zipfs import (
    inflate,
    shared_zip,
    zip_overlay,
)


def scratch_budget(memory_bytes: int) -> int:
    """The scratch budget of an interpreter with this memory limit: a quarter of it, at
    least 16 MiB."""
    return max(16 << 20, int(memory_bytes) // 4)


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


# ------------------------------------------------------------------ the file system
StdioFunc = Callable[[Any, int, int, int, int], int]


class MemoryFS(HostFiles):
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
        self._mem: MemGetter = no_memory
        self._stdio_read: StdioFunc = self._default_stdio_read
        self._stdio_write: StdioFunc = self._default_stdio_write
        self.console: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}

        now = FIXED_TIME_NS
        self._root = Dir(self._ino(), DEV_RO, False, now, None)
        zip_dir = self._mkdirs(zip_path.rsplit("/", 1)[0], False, DEV_RO, now)
        name = zip_path.rsplit("/", 1)[1]
        zip_dir.entries[name] = File(self._ino(), DEV_RO, False, now, self._zip)
        dev = self._mkdirs("/dev", False, DEV_DEVICES, now)
        dev.entries["null"] = File(self._ino(), DEV_DEVICES, True, now, None)
        scratch = self._mkdirs(scratch_root, False, DEV_RO, now)
        scratch.writable = True
        scratch.dev = DEV_SCRATCH
        for d in dirs:
            self._mkdirs(d, True, DEV_SCRATCH, time.time_ns(), charge=True)
        self._fds: dict[int, Fd] = {
            PREOPEN_FD: Fd(self._root, 0, DIR_RIGHTS, RIGHTS_ALL, "/")}

    # -------------------------------------------------------------- setup helpers
    def _ino(self) -> int:
        n = self._next_ino
        self._next_ino = n + 1
        return n

    def _mkdirs(self, path: str, writable: bool, dev: int, now: int,
                charge: bool = False) -> Dir:
        node = self._root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            child = node.entries.get(part)
            if child is None:
                child = Dir(self._ino(), dev, writable, now, node)
                node.entries[part] = child
                if charge:
                    self._used += NODE_COST
            if type(child) is not Dir:
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
        self.bind_memory(memory_getter(memory))
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
        freeze(self._root)
        fds: dict[int, Fd] = {}
        for fd, f in self._fds.items():
            node = f.node
            if not node.shared and node.snap is None:
                freeze(node)  # a file or directory no directory holds any more
            g = object.__new__(Fd)
            for slot in Fd.__slots__:
                setattr(g, slot, getattr(f, slot))
            g.node = node if node.shared else node.snap  # type: ignore[assignment]
            g.listing = None  # (a cache)
            fds[fd] = g
        return FSState(self._root.snap, fds, self._used, self._next_ino,  # type: ignore
                       self._zip)

    def _full_snapshot(self) -> FSState:
        """A snapshot that copies everything (what :meth:`snapshot` must equal; tests)."""
        root, fds = clone_tree(self._root, self._fds, self._zip, self._zip)
        return FSState(root, fds, self._used, self._next_ino, self._zip)

    def _dirty(self, node: Node) -> None:
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
        root, fds = clone_tree(state.root, state.fds, state.zip_data, self._zip,
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
        vecs = iovecs(base, size, iovs & M32, iovs_len & M32)
        if type(vecs) is int:
            return vecs
        out = self.console[fd]
        total = sum(n for _, n in vecs)  # type: ignore[union-attr]
        if total > MAX_IO_BYTES:
            return EINVAL  # (more than nwritten, a u32, can count)
        for p, n in vecs:  # type: ignore[union-attr]
            take = min(n, CONSOLE_CAP - len(out))
            if take > 0:
                out += string_at(base + p, take)
        return self._put_u32(caller, nwritten_ptr, total)

    # -------------------------------------------------------------- small helpers
    def _put_u32(self, caller: Any, ptr: int, value: int) -> int:
        base, size = self._mem(caller)
        ptr &= M32
        if ptr + 4 > size:
            return EFAULT
        memmove(base + ptr, U32.pack(value), 4)
        return ESUCCESS

    def _put(self, caller: Any, ptr: int, blob: bytes) -> int:
        base, size = self._mem(caller)
        ptr &= M32
        if ptr + len(blob) > size:
            return EFAULT
        memmove(base + ptr, blob, len(blob))
        return ESUCCESS

    def _path(self, caller: Any, ptr: int, length: int) -> str | int:
        ptr &= M32
        length &= M32
        if length > PATH_MAX:
            return ENAMETOOLONG
        base, size = self._mem(caller)
        if ptr + length > size:
            return EFAULT
        raw = string_at(base + ptr, length)
        if b"\0" in raw:
            return EINVAL
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return EILSEQ

    def _dirfd(self, fd: int) -> Dir | int:
        e = self._fds.get(fd)
        if e is None:
            return EBADF if fd >= STDIO_FDS or fd < 0 else ENOTDIR
        node = e.node
        if type(node) is not Dir:
            return ENOTDIR
        return node  # type: ignore[return-value]

    def _resolve(self, start: Dir, path: str) -> tuple[Dir | None, str | None, Any,
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
            if type(child) is not Dir:
                if child.data is not self._zip:  # type: ignore[attr-defined]
                    return ENOTDIR
                child = zip_overlay(self._zip, self._overlays)  # the zip's data folders
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
        if node is not None and node.shared and type(node) is Dir and node.hidden:
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

    def _drop(self, node: Node) -> None:
        """``node`` left the tree: give back its budget unless an fd still holds it."""
        self._dirty(node)
        if type(node) is Dir:
            node.removed = True  # type: ignore[attr-defined]
            if node.writable:
                self._used -= NODE_COST
            return
        node.linked = False  # type: ignore[attr-defined]
        if node.opens == 0 and node.writable and node.dev == DEV_SCRATCH:  # type: ignore
            self._used -= NODE_COST + len(node.data)  # type: ignore[attr-defined]

    def _resize(self, node: File, new_size: int) -> int:
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

    def _filestat(self, node: Node) -> bytes:
        if type(node) is Dir:
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

    def _new_fd(self, entry: Fd) -> int:
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
        if (path_len & M32) < len(name):
            return ENAMETOOLONG
        return self._put(caller, path, name)

    def fd_fdstat_get(self, caller: Any, fd: int, buf: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            if 0 <= fd < STDIO_FDS:
                rights = (R_FD_READ if fd == 0 else R_FD_WRITE) | R_POLL_FD_READWRITE
                return self._put(caller, buf, FDSTAT.pack(FT_UNKNOWN, 0, rights, 0))
            return EBADF
        return self._put(caller, buf, FDSTAT.pack(filetype(e.node), e.flags, e.base, e.inh))

    def fd_fdstat_set_flags(self, caller: Any, fd: int, flags: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            return ESUCCESS if 0 <= fd < STDIO_FDS else EBADF
        flags &= M32
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
        if type(node) is Dir:
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

    def _set_times(self, node: Node, atim: int, mtim: int, fst_flags: int) -> int:
        f = fst_flags & M32
        if f & ~0xF or (f & FST_ATIM and f & FST_ATIM_NOW) or (f & FST_MTIM and
                                                                 f & FST_MTIM_NOW):
            return EINVAL
        if not node.writable or node.dev != DEV_SCRATCH:
            return EROFS if node.dev != DEV_DEVICES else ESUCCESS
        self._dirty(node)
        now = time.time_ns()
        if f & FST_ATIM:
            node.atim = atim & M64
        elif f & FST_ATIM_NOW:
            node.atim = now
        if f & FST_MTIM:
            node.mtim = mtim & M64
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
        return put_u32(base, size, nread_ptr, total)

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
        return put_u32(base, size, nread_ptr, total)

    def _read(self, base: int, size: int, e: Fd, iovs: int, iovs_len: int,
              pos: int) -> tuple[int, int]:
        node = e.node
        if type(node) is Dir:
            return EISDIR, 0
        if not e.base & R_FD_READ:
            return EBADF, 0
        vecs = iovecs(base, size, iovs & M32, iovs_len & M32)
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
                memmove(base + p, addressof(c_char.from_buffer(data, pos)), k)
                pos += k
                total += k
                if k < n:
                    break
        else:
            for p, n in vecs:  # type: ignore[union-attr]
                k = min(n, end - pos)
                if k <= 0:
                    break
                memmove(base + p, data[pos:pos + k], k)
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
        return put_u32(base, size, nwritten_ptr, total)

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
        return put_u32(base, size, nwritten_ptr, total)

    def _write(self, base: int, size: int, e: Fd, iovs: int, iovs_len: int,
               offset: int | None) -> tuple[int, int]:
        """Write the iovecs at ``offset`` (None: at the fd's position, which moves)."""
        node = e.node
        if type(node) is Dir:
            return EISDIR, 0
        if not e.base & R_FD_WRITE:
            return EBADF, 0
        vecs = iovecs(base, size, iovs & M32, iovs_len & M32)
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
            memmove(addressof(c_char.from_buffer(data, pos)), base + p, k)
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
        if type(node) is Dir:
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
        newoffset_ptr &= M32
        if newoffset_ptr + 8 > size:
            return EFAULT
        e.pos = new
        memmove(base + newoffset_ptr, U64.pack(new), 8)
        return ESUCCESS

    def fd_tell(self, caller: Any, fd: int, offset_ptr: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            return ESPIPE if 0 <= fd < STDIO_FDS else EBADF
        if type(e.node) is Dir:
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

    def _release(self, e: Fd) -> None:
        self._unlist(e)
        node = e.node
        if type(node) is File and node.dev == DEV_SCRATCH:
            node.opens -= 1
            if node.opens == 0 and not node.linked and node.dev == DEV_SCRATCH:
                self._used -= NODE_COST + len(node.data)

    def fd_readdir(self, caller: Any, fd: int, buf: int, buf_len: int, cookie: int,
                   bufused_ptr: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            return ENOTDIR if 0 <= fd < STDIO_FDS else EBADF
        node = e.node
        if type(node) is not Dir:
            return ENOTDIR
        buf &= M32
        buf_len &= M32
        base, size = self._mem(caller)
        if buf + buf_len > size:
            return EFAULT
        cookie &= M64
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
            parts.append(DIRENT.pack(i + 1, child.ino, len(raw), filetype(child)))
            parts.append(raw)
            have += DIRENT.size + len(raw)
            if have >= buf_len:
                break
        blob = b"".join(parts)[:buf_len]
        if blob:
            memmove(base + buf, blob, len(blob))
        return self._put_u32(caller, bufused_ptr, len(blob))

    def _unlist(self, e: Fd) -> None:
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
        return EBADF if type(e.node) is Dir else ESUCCESS

    def fd_allocate(self, caller: Any, fd: int, offset: int, length: int) -> int:
        e = self._fds.get(fd)
        if e is None:
            return ESPIPE if 0 <= fd < STDIO_FDS else EBADF
        node = e.node
        if type(node) is Dir:
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
        rights_base &= M64
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
            node = File(self._ino(), DEV_SCRATCH, True, now, bytearray())
            node.parent = parent
            self._dirty(parent)
            parent.entries[name] = node
            parent.mtim = parent.ctim = now
        elif oflags & O_CREAT and oflags & O_EXCL:
            return EEXIST
        is_dir = type(node) is Dir
        if is_dir:
            if want_write or oflags & O_CREAT:
                return EISDIR
            base = rights_base & DIR_RIGHTS
            inh = rights_inh & M64 & self._fds[dirfd].inh
        else:
            if slash or oflags & O_DIRECTORY:
                return ENOTDIR
            if want_write and not node.writable:
                return EROFS
            if node.data is None and node.member is not None:
                data = inflate(node.member)
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
        fd = self._new_fd(Fd(node, fdflags, base, inh))
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
        if slash and type(node) is not Dir:
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
        if slash and type(node) is not Dir:
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
        parent.entries[name] = Dir(self._ino(), DEV_SCRATCH, True, now, parent)
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
        if type(node) is not Dir:
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
        if name is None or type(node) is Dir:
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
        s_dir = type(snode) is Dir
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
            if type(dnode) is Dir:
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


