"""Interpreter images saved to a file, so that an agent outlives its host process.

A file holds one reactor interpreter between turns: its linear memory (zlib-compressed),
the host-side file system, the configuration it was booted with, and the identity of the
runtime build and of the runner that made it. Layout::

    MAGIC (16 bytes) | header length (4, little-endian) | header (JSON, UTF-8)
    | memory (zlib) | SHA-256 of everything before it (32 bytes)

A file saved with a key starts with MAGIC_KEYED and ends with the HMAC-SHA256 of
everything before it under that key instead: loading with the key accepts only files
saved with it (so "load only images you saved" is enforced, not just advised).

Loading reads nothing it has not bounded first: the file's size and the header's length
against what the load's limits allow, then the checksum (or HMAC: a truncated, altered
or foreign file is refused before anything in it is parsed), then the header's count of
JSON containers and items (so parsing it costs a bounded multiple of the limits, never
of a crafted shape), then that the runtime build and the runner are the ones installed:
an image only ever runs on the exact runtime that made it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import zlib
from dataclasses import dataclass
from typing import Any

from .atomic import write_atomically
from .errors import ImageError
from .fsimage import decode_fs_state, encode_fs_state, max_image_nodes
from .runtime import runner_identity
from .snapshot import Snapshot
from .streams import layout_from_json, layout_to_json
from .vfs import DEFAULT_MAX_FDS, MemoryFS

MAGIC = b"WASM-EXEC-IMAGE\n"
MAGIC_KEYED = b"WASM-EXEC-KEYED\n"  # ends with an HMAC-SHA256 instead of a SHA-256
FORMAT = 1
MAX_HEADER = 256 << 20
MAX_MEMORY = 4 << 30  # wasm32: linear memory is at most 4 GiB
PREAMBLE = len(MAGIC) + 4
TRAILER = 32
# what one node, one descriptor and the rest of a header may take in JSON text, in
# containers ({ or [) and in items (, or :), with a wide margin over what save writes
# (a node: 3 containers, 23 items; a descriptor: 1 and 12)
NODE_TEXT, NODE_CONTAINERS, NODE_ITEMS = 2048, 4, 32
FD_TEXT, FD_CONTAINERS, FD_ITEMS = 1024, 4, 48
REST_TEXT, REST_CONTAINERS, REST_ITEMS = 4 << 20, 4096, 100_000


@dataclass(frozen=True)
class ReadLimits:
    """How big an image file, and its header, may be for a load with given limits."""

    max_header: int
    max_body: int
    max_containers: int
    max_items: int

    @classmethod
    def for_load(cls, memory_bytes: int, scratch_bytes: int,
                 max_fds: int = DEFAULT_MAX_FDS) -> ReadLimits:
        nodes = max_image_nodes(scratch_bytes, max_fds)
        return cls(
            # the scratch contents in base64, the nodes and descriptors, the rest
            max_header=min(MAX_HEADER, scratch_bytes * 4 // 3 + 4 + nodes * NODE_TEXT
                           + max_fds * FD_TEXT + REST_TEXT),
            # zlib never grows data by more than a few bytes in 16 KiB
            max_body=memory_bytes + memory_bytes // 1000 + 4096,
            max_containers=nodes * NODE_CONTAINERS + max_fds * FD_CONTAINERS
            + REST_CONTAINERS,
            max_items=nodes * NODE_ITEMS + max_fds * FD_ITEMS + REST_ITEMS)


_UNBOUNDED = ReadLimits(MAX_HEADER, MAX_MEMORY + (MAX_MEMORY >> 9), MAX_HEADER, MAX_HEADER)


def _key(key: bytes | None) -> bytes | None:
    if key is None:
        return None
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"an image key is bytes, not {type(key).__name__}")
    key = bytes(key)
    if not key:
        raise ValueError("an image key must not be empty")
    return key


def runner_sha256() -> str:
    return runner_identity()[1]


@dataclass(frozen=True)
class SavedImage:
    """What a file holds: the image and the configuration it needs."""

    image: Snapshot
    runtime: str
    whitelisted_imports: list[str]
    default_imports: dict[str, str]


def save(path: str | os.PathLike[str], image: Snapshot, *, runtime: str,
         allowed: frozenset[str], default_imports: dict[str, str], fs: MemoryFS,
         level: int = 1, key: bytes | None = None) -> int:
    """Write ``image`` to ``path`` (atomically); returns the file's size in bytes.

    ``key``: sign the file with HMAC-SHA256 under this key (see :func:`read`)."""
    parts = encode(image, runtime=runtime, allowed=allowed, default_imports=default_imports,
                   fs=fs, level=level, key=key)
    return write_atomically(path, parts, prefix=".wasm-exec-image-")


def encode(image: Snapshot, *, runtime: str, allowed: frozenset[str],
           default_imports: dict[str, str], fs: MemoryFS, level: int = 1,
           key: bytes | None = None, body: bytes | None = None) -> list[bytes]:
    """The bytes of an image file, in parts (written one after the other they are the
    file :func:`save` writes). ``body``: the memory already compressed as one zlib stream
    (else it is compressed here, at ``level``)."""
    key = _key(key)
    if body is None:
        body = zlib.compress(image.memory, level)
    header = {
        "format": FORMAT, "runtime": runtime, "runtime_sha256": image.runtime_sha256,
        "runner_sha256": runner_sha256(), "whitelisted_imports": sorted(allowed),
        "default_imports": dict(default_imports), "memory_size": image.size,
        "monotonic_ns": image.monotonic_ns, "token": image.token.hex(),
        "streams": layout_to_json(image.streams),
        "default_import_errors": dict(image.default_import_errors),
        "fs": encode_fs_state(image.fs, fs), "body_size": len(body),
    }
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    digest = hashlib.sha256() if key is None else hmac.new(key, digestmod=hashlib.sha256)
    parts = [MAGIC if key is None else MAGIC_KEYED, len(head).to_bytes(4, "little"), head,
             body]
    for part in parts:
        digest.update(part)
    parts.append(digest.digest())
    return parts


def read(path: str | os.PathLike[str], *, key: bytes | None = None,
         limits: ReadLimits | None = None) -> tuple[dict[str, Any], memoryview]:
    """The verified header and memory of an image file (ImageError when unusable).

    ``key``: accept only a file saved with this key (HMAC-SHA256). ``limits``: what the
    file and its header may hold (:meth:`ReadLimits.for_load`); checked before the file
    is read whole, and before its header is parsed."""
    key = _key(key)
    limits = limits or _UNBOUNDED
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = f.read(PREAMBLE)
            _check_size(start, size, limits, path)
            data = start + f.read(size - PREAMBLE)
    except OSError as e:
        raise ImageError(f"cannot read the image {path}: {e}") from e
    return _verify(data, key, limits, path)


def read_bytes(data: bytes, *, key: bytes | None = None, limits: ReadLimits | None = None,
               name: object = "the image") -> tuple[dict[str, Any], memoryview]:
    """:func:`read` for an image held in memory (``name`` names it in errors)."""
    key = _key(key)
    limits = limits or _UNBOUNDED
    _check_size(data[:PREAMBLE], len(data), limits, name)
    return _verify(data, key, limits, name)


def _check_size(start: bytes, size: int, limits: ReadLimits, path: object) -> None:
    """Refuse a file by its first bytes and its size, before it is read whole."""
    magic = start[:len(MAGIC)]
    if magic not in (MAGIC, MAGIC_KEYED):
        raise ImageError(f"{path} is not a wasm-exec interpreter image")
    if len(start) < PREAMBLE or size < PREAMBLE + TRAILER:
        raise ImageError(f"{path} is truncated")
    head_size = int.from_bytes(start[len(MAGIC):], "little")
    if head_size > limits.max_header:
        raise ImageError(
            f"{path} has a header of {head_size} bytes, more than an image within "
            f"these limits can have ({limits.max_header}); it was not read")
    if size > PREAMBLE + head_size + limits.max_body + TRAILER:
        raise ImageError(
            f"{path} is {size} bytes, more than an image within these limits can "
            "be (its memory is larger than the memory limit allows); it was not read")


def _verify(data: bytes, key: bytes | None, limits: ReadLimits,
            path: object) -> tuple[dict[str, Any], memoryview]:
    """The header and memory of ``data`` (the whole file, its size checked already)."""
    magic = data[:len(MAGIC)]
    head_size = int.from_bytes(data[len(MAGIC):PREAMBLE], "little")
    view = memoryview(data)  # (slices of it copy nothing)
    signed, trailer = view[:-TRAILER], data[-TRAILER:]
    if key is not None:
        if magic != MAGIC_KEYED:
            if hmac.compare_digest(hashlib.sha256(signed).digest(), trailer):
                raise ImageError(f"{path} was saved without a key; a load with a key "
                                 "accepts only images saved with that key")
            raise ImageError(f"{path} is damaged or truncated (its checksum does not match)"
                             "; it was not loaded")
        if not hmac.compare_digest(hmac.new(key, signed, hashlib.sha256).digest(), trailer):
            raise ImageError(f"{path} was not saved with this key (or it was altered since); "
                             "it was not loaded")
    elif magic == MAGIC_KEYED:
        raise ImageError(f"{path} was saved with a key: load it with key=... (the same "
                         "bytes as save was given)")
    elif hashlib.sha256(signed).digest() != trailer:
        raise ImageError(f"{path} is damaged or truncated (its checksum does not match); "
                         "it was not loaded")
    if PREAMBLE + head_size > len(signed):
        raise ImageError(f"{path} has a damaged header")
    head = data[PREAMBLE:PREAMBLE + head_size]
    # parsing JSON makes a Python object of every container and item (up to 60 bytes
    # for 3 of text): bounded by counting them first (brackets and separators inside
    # strings count too, which only errs on the safe side)
    containers = head.count(b"{") + head.count(b"[")
    items = head.count(b",") + head.count(b":")
    if containers > limits.max_containers or items > limits.max_items:
        raise ImageError(f"{path} has a header with {containers} JSON containers and {items} "
                         f"items, more than an image within these limits can have "
                         f"({limits.max_containers}, {limits.max_items}); it was not parsed")
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ImageError(f"{path} has a damaged header") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ImageError(f"{path} is an image of another format "
                         f"({header.get('format') if isinstance(header, dict) else '?'}); "
                         f"this wasm-exec reads format {FORMAT}")
    body = view[PREAMBLE + head_size:-TRAILER]
    if len(body) != header.get("body_size"):
        raise ImageError(f"{path} is damaged or truncated")
    return header, body


def check_compatible(header: dict[str, Any], *, runtime_sha256: str, path: object) -> None:
    if header.get("runtime_sha256") != runtime_sha256:
        raise ImageError(
            f"{path} was saved by another build of the {header.get('runtime')!r} runtime "
            f"(sha256 {str(header.get('runtime_sha256'))[:16]}...; installed: "
            f"{runtime_sha256[:16]}...); an image runs only on the build that made it")
    if header.get("runner_sha256") != runner_sha256():
        raise ImageError(f"{path} was saved by another version of wasm-exec (its sandbox "
                         "runner differs from this one); load it with that version")


def decode(header: dict[str, Any], body: bytes | memoryview, fs: MemoryFS,
           max_memory: int = MAX_MEMORY) -> Snapshot:
    size = header.get("memory_size")
    if type(size) is not int or not 0 < size <= max_memory:
        raise ImageError(f"the image's memory size ({size!r}) is not between 1 byte and "
                         f"{max_memory} bytes")
    try:
        # never more than the header announced (a file that inflates further is refused
        # before it can take the host's memory)
        inflater = zlib.decompressobj()
        memory = inflater.decompress(body, size + 1)
    except zlib.error as e:
        raise ImageError(f"the image's memory cannot be decompressed: {e}") from e
    if len(memory) != size or not inflater.eof or inflater.unconsumed_tail:
        raise ImageError("the image's memory does not have the size its header gives")
    try:
        state = decode_fs_state(header["fs"], fs)
        errors = {str(k): str(v) for k, v in dict(header["default_import_errors"]).items()}
        token = bytes.fromhex(str(header["token"]))
        if len(token) != 16:
            raise ValueError("token")
        monotonic = int(header["monotonic_ns"])
        if not 0 <= monotonic < 1 << 63:
            raise ValueError("monotonic_ns")
        layout = layout_from_json(header.get("streams"))
        return Snapshot(memory, state, errors, monotonic, str(header["runtime_sha256"]),
                        token, layout)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError,
            RecursionError) as e:
        raise ImageError(f"the image's file system or header is damaged: {e}") from e
