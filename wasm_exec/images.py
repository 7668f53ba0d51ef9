"""Interpreter images saved to a file, so that an agent outlives its host process.

A file holds one reactor interpreter between turns: its linear memory (zlib-compressed),
the host-side file system, the configuration it was booted with, and the identity of the
runtime build and of the runner that made it. Layout::

    MAGIC (16 bytes) | header length (4, little-endian) | header (JSON, UTF-8)
    | memory (zlib) | SHA-256 of everything before it (32 bytes)

Loading checks the checksum first (a truncated or altered file is refused before anything
in it is read), then that the runtime build and the runner are the ones installed: an
image only ever runs on the exact runtime that made it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ImageError
from .runtime import runner_identity
from .session import MemoryImage
from .vfs import MemoryFS, decode_fs_state, encode_fs_state

MAGIC = b"WASM-EXEC-IMAGE\n"
FORMAT = 1
MAX_HEADER = 256 << 20
MAX_MEMORY = 4 << 30  # wasm32: linear memory is at most 4 GiB


def runner_sha256() -> str:
    return runner_identity()[1]


@dataclass(frozen=True)
class SavedImage:
    """What a file holds: the image and the configuration it needs."""

    image: MemoryImage
    runtime: str
    whitelisted_imports: list[str]
    default_imports: dict[str, str]


def save(path: str | os.PathLike[str], image: MemoryImage, *, runtime: str,
         allowed: frozenset[str], default_imports: dict[str, str], fs: MemoryFS,
         level: int = 1) -> int:
    """Write ``image`` to ``path`` (atomically); returns the file's size in bytes."""
    body = zlib.compress(image.memory, level)
    header = {
        "format": FORMAT, "runtime": runtime, "runtime_sha256": image.runtime_sha256,
        "runner_sha256": runner_sha256(), "whitelisted_imports": sorted(allowed),
        "default_imports": dict(default_imports), "memory_size": image.size,
        "monotonic_ns": image.monotonic_ns, "token": image.token.hex(),
        "default_import_errors": dict(image.default_import_errors),
        "fs": encode_fs_state(image.fs, fs), "body_size": len(body),
    }
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    digest = hashlib.sha256()
    parts = [MAGIC, len(head).to_bytes(4, "little"), head, body]
    for part in parts:
        digest.update(part)
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=str(target.parent or "."), prefix=".wasm-exec-image-")
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.write(digest.digest())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return sum(len(p) for p in parts) + 32


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes]:
    """The verified header and memory of an image file (ImageError when unusable)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read the image {path}: {e}") from e
    if not data.startswith(MAGIC):
        raise ImageError(f"{path} is not a wasm-exec interpreter image")
    if len(data) < len(MAGIC) + 4 + 32:
        raise ImageError(f"{path} is truncated")
    if hashlib.sha256(data[:-32]).digest() != data[-32:]:
        raise ImageError(f"{path} is damaged or truncated (its checksum does not match); "
                         "it was not loaded")
    size = int.from_bytes(data[len(MAGIC):len(MAGIC) + 4], "little")
    start = len(MAGIC) + 4
    if size > MAX_HEADER or start + size > len(data) - 32:
        raise ImageError(f"{path} has a damaged header")
    try:
        header = json.loads(data[start:start + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ImageError(f"{path} has a damaged header") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ImageError(f"{path} is an image of another format "
                         f"({header.get('format') if isinstance(header, dict) else '?'}); "
                         f"this wasm-exec reads format {FORMAT}")
    body = data[start + size:-32]
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


def decode(header: dict[str, Any], body: bytes, fs: MemoryFS,
           max_memory: int = MAX_MEMORY) -> MemoryImage:
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
        return MemoryImage(memory, state, errors, monotonic, str(header["runtime_sha256"]),
                           token)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError,
            RecursionError) as e:
        raise ImageError(f"the image's file system or header is damaged: {e}") from e
