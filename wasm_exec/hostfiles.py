"""The host's access to an agent's files (the executor's ``write_file``, ``read_file``,
``list_files``, ``delete_file`` and ``execute(files=..., output_files=...)``): paths the
host may name (:func:`host_path`: only under the scratch root) and the file system's
methods that serve them (:class:`HostFiles`, a base class of ``MemoryFS``), charged to the
same budget as the guest's own writes."""

from __future__ import annotations

import os
import time
from typing import Any

from .errors import InputError
from .fsnodes import (
    DEV_SCRATCH,
    GUEST_CWD,
    GUEST_DIRS,
    GUEST_HOME,
    GUEST_MPLCONFIGDIR,
    NAME_MAX,
    NODE_COST,
    PATH_MAX,
    SCRATCH_ROOT,
    Dir,
    File,
    Node,
)

# errno values of the host's own OSErrors (the file API raises them for the caller)
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


class HostFiles:
    """The host's file methods of :class:`~wasm_exec.vfs.MemoryFS` (a base class of it):
    they work on its tree (``_root``), its budget (``_used``, ``scratch_bytes``) and its
    bookkeeping (``_ino``, ``_dirty``, ``_drop``), on the session's thread between turns."""

    _root: Dir
    _used: int
    scratch_bytes: int

    def _ino(self) -> int:
        raise NotImplementedError  # (the file system's)

    def _dirty(self, node: Node) -> None:
        raise NotImplementedError  # (the file system's)

    def _drop(self, node: Node) -> None:
        raise NotImplementedError  # (the file system's)

    def _host_walk(self, path: str, *, missing_ok: bool = False
                   ) -> tuple[Dir, str, Node | None]:
        """(directory, name, node or None) of ``path``; a directory on the way that is
        missing raises FileNotFoundError (None for the node itself with ``missing_ok``)."""
        parts = path.strip("/").split("/")
        node: Node = self._root
        for i, part in enumerate(parts[:-1]):
            child = node.entries.get(part)  # type: ignore[attr-defined]
            if child is None:
                raise FileNotFoundError(_ENOENT_ERR, "no such directory in the sandbox",
                                        "/" + "/".join(parts[:i + 1]))
            if type(child) is not Dir:
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
        node: Node = self._root
        i = 0
        while i < len(parts) - 1:
            child = node.entries.get(parts[i])  # type: ignore[attr-defined]
            if child is None:
                break
            if type(child) is not Dir:
                raise NotADirectoryError(_ENOTDIR_ERR, "a file is in the way (not a "
                                         "directory)", "/" + "/".join(parts[:i + 1]))
            node = child
            i += 1
        folder: Dir = node  # type: ignore[assignment]
        new_dirs = parts[i:-1]
        name = parts[-1]
        existing = None if new_dirs else folder.entries.get(name)
        if existing is not None and type(existing) is Dir:
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
            child = Dir(self._ino(), DEV_SCRATCH, True, now, folder)
            self._dirty(folder)
            folder.entries[part] = child
            folder.mtim = folder.ctim = now
            self._used += NODE_COST
            folder = child
        if existing is None:
            f = File(self._ino(), DEV_SCRATCH, True, now, bytearray(data))
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
        if type(node) is Dir:
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
        if type(top) is not Dir:
            raise NotADirectoryError(_ENOTDIR_ERR, "a file, not a directory, in the sandbox",
                                     path)
        out: list[tuple[str, int, bool]] = []
        stack: list[tuple[str, Dir]] = [("", top)]  # type: ignore[list-item]
        while stack:
            prefix, folder = stack.pop()
            for name, child in folder.entries.items():
                if child.shared and type(child) is Dir and child.hidden:
                    continue
                rel = prefix + name
                if type(child) is Dir:
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
        stack: list[Node] = [node]
        while stack:
            item = stack.pop()
            if type(item) is Dir:
                stack.extend(item.entries.values())
            self._drop(item)
