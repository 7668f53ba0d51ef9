"""The WASI preview-1 ABI as the host sees it: errno values, file types, flags and rights,
the byte layouts of the structs the guest passes (little-endian, wasm32), and reading and
writing guest memory. Shared by the in-memory file system (vfs.py) and the session's own
host functions (session.py)."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from typing import Any

import wasmtime

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


MAX_IOVS = 1024  # POSIX IOV_MAX: the guest's libc never sends more
MAX_IO_BYTES = (1 << 31) - 1  # the most one read or write moves (SSIZE_MAX of wasm32)
M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1
memmove = ctypes.memmove
string_at = ctypes.string_at
c_char = ctypes.c_char
addressof = ctypes.addressof
MemGetter = Callable[[Any], tuple[int, int]]


# ------------------------------------------------------------------ memory access
def put_u32(base: int, size: int, ptr: int, value: int) -> int:
    """Store a u32 result at a guest pointer (EFAULT outside the memory)."""
    ptr &= M32
    if ptr + 4 > size:
        return EFAULT
    memmove(base + ptr, U32.pack(value), 4)
    return ESUCCESS


def no_memory(caller: Any) -> tuple[int, int]:
    raise RuntimeError("MemoryFS has no guest memory bound (call install or bind_memory)")


def memory_getter(memory: Any) -> MemGetter:
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
        return addressof(m.data_ptr(caller).contents), m.data_len(caller)

    return get


def iovecs(base: int, size: int, iovs: int, count: int) -> list[tuple[int, int]] | int:
    """The (pointer, length) pairs of an iovec array, every one inside guest memory
    (``iovs`` is a guest pointer as wasmtime hands it over: a signed i32, read as u32)."""
    if count < 0 or count > MAX_IOVS:
        return EINVAL
    iovs &= M32
    if iovs + 8 * count > size:
        return EFAULT
    if count == 0:
        return []
    vecs = list(IOVEC.iter_unpack(string_at(base + iovs, 8 * count)))
    for p, n in vecs:
        if p + n > size:
            return EFAULT
    return vecs
