"""The runtime's read-only archives: the stdlib zip mapped once per process
(shared_zip), and archives inside it served as read-only folders (overlays: matplotlib's
mpl-data.zip as the mpl-data folder), built once per archive and shared by every
interpreter."""

from __future__ import annotations

import io
import itertools
import mmap
import os
import struct
import threading
import zipfile
import zlib
from typing import Any

from .fsnodes import (
    DEV_RO,
    FIXED_TIME_NS,
    Dir,
    File,
)

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


# ------------------------------------------------------------------ archive overlays
_overlay_lock = threading.Lock()
_overlay_cache: dict[tuple[int, tuple[tuple[str, str], ...]], tuple[Any, Dir | None]] = {}
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


def inflate(member: tuple[Any, int, int, int, int]) -> bytes | None:
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


def zip_overlay(zip_data: Any, overlays: tuple[tuple[str, str], ...]) -> Dir | None:
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


def _shared_dir(parent: Dir | None, hidden: bool) -> Dir:
    d = Dir(next(_overlay_ino), DEV_RO, False, FIXED_TIME_NS, parent)
    d.shared = True
    d.hidden = hidden
    return d


def _build_overlay(zip_data: Any, overlays: tuple[tuple[str, str], ...]) -> Dir | None:
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
            inner = inflate(where) if where is not None else None
            if inner is None:
                continue
            try:
                members = zipfile.ZipFile(io.BytesIO(inner)).infolist()
            except zipfile.BadZipFile:
                continue
            top = shared_path(root, guest_path.strip("/").split("/"), True)
            if top is None:
                continue
            top.hidden = False
            for m in members:
                if m.is_dir():
                    continue
                parts = [p for p in m.filename.split("/") if p]
                if not parts or any(p in (".", "..") for p in parts):
                    continue
                folder = shared_path(top, parts[:-1], False)
                found = _member(inner, m)
                if folder is None or found is None or parts[-1] in folder.entries:
                    continue
                f = File(next(_overlay_ino), DEV_RO, False, FIXED_TIME_NS, None, found)
                f.shared = True
                folder.entries[parts[-1]] = f
                if m.file_size == 0:
                    f.data = b""
    return root


def shared_path(start: Dir, parts: list[str], hidden: bool) -> Dir | None:
    """Walk down from ``start``, making the missing folders."""
    node = start
    for p in parts:
        child = node.entries.get(p)
        if child is None:
            child = _shared_dir(node, hidden)
            node.entries[p] = child
        if type(child) is not Dir:
            return None
        node = child  # type: ignore[assignment]
    return node
