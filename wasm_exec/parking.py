"""Parked agents: an idle interpreter kept as a compact image instead of a live instance.

An interpreter between turns is its linear memory plus its file system (see
:mod:`wasm_exec.session`). Most of that memory is the same as its configuration's boot
image (the warm-start template every agent of the configuration starts from), so a
parked agent keeps only the 4 KiB pages that differ from that image, each XOR-ed with the
boot image's page (a page with a few changed bytes becomes mostly zeros) and the lot
compressed with zlib: an agent holding a few variables parks in about 50 KB, against
27 MiB live (the default runtime). Its next call writes those pages back into an
interpreter of the same configuration: one freed by an agent parked to make room for it
(only the pages either agent changed are written), or a fresh one.

:class:`ParkingLot` holds the parked images of a resolver: in memory or as files in a
directory (signed with a key of the lot's own, so only files it wrote load back), within
a byte budget; past the budget the oldest images are dropped (or the newest agent is not
parked), and the agent's next result says so (``reset_reason="park_dropped"``).
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import itertools
import json
import mmap
import os
import threading
import zlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from .atomic import write_atomically
from .errors import ConfigurationError, ImageError
from .fsimage import decode_fs_state, encode_fs_state
from .fsnodes import FSState
from .pages import PAGE, Pinned, changed_among, changed_pages, gather
from .snapshot import Snapshot
from .streams import StreamLayout
from .vfs import MemoryFS

_PARKED_MAGIC = b"WASM-EXEC-PARKED"
ENTRY_OVERHEAD = 512  # what an entry costs the host besides its pages and files

Overflow = Literal["drop_oldest", "refuse"]
OVERFLOWS = ("drop_oldest", "refuse")

# pages compressed together, their base's bytes as zlib's preset dictionary: a page's
# bytes are then found a run's length back, which must stay within deflate's reach (32 KiB
# less 262 bytes): 7 pages (8 would halve the matches, and double the size)
RUN_PAGES = 7


def runs(pages: array) -> list[tuple[int, int]]:
    """``pages`` (ascending) as runs of consecutive pages, at most RUN_PAGES long:
    (first, end) pairs."""
    out: list[tuple[int, int]] = []
    start = prev = -2
    for p in pages:
        if p == prev + 1 and p - start < RUN_PAGES:
            prev = p
            continue
        if start >= 0:
            out.append((start, prev + 1))
        start = prev = p
    if start >= 0:
        out.append((start, prev + 1))
    return out


def _base_run(base: Any | None, base_size: int, first: int, end: int) -> bytes | memoryview:
    """The base's bytes of pages [first, end) (zeros past its end): the dictionary."""
    lo, hi = first * PAGE, end * PAGE
    if base is None or hi > base_size:
        return gather(base, array("I", range(first, end)), base_size) if base is not None \
            else bytes(hi - lo)
    return memoryview(base)[lo:hi]


@dataclass(frozen=True)
class ParkedImage:
    """An interpreter between turns, as the pages that differ from ``base``."""

    base: Snapshot | None  # the boot image the pages are relative to (None: zeros)
    size: int                 # its linear memory, in bytes
    pages: array              # indices of the pages that differ from ``base`` (ascending)
    # each run of those pages (see runs()) compressed with zlib, the base's bytes of the
    # same pages as preset dictionary (a page that changed a little compresses to a few
    # bytes); None while in a file
    delta: bytes | None
    sizes: array              # the compressed size of each run
    fs: FSState | None        # its file system (None while in a file)
    default_import_errors: dict[str, str]
    monotonic_ns: int
    runtime_sha256: str
    token: bytes
    nbytes: int               # what it costs where it is kept (memory or disk)
    streams: StreamLayout | None = None  # (its interpreter's, found at its boot)

    @property
    def base_size(self) -> int:
        return self.base.size if self.base is not None else 0

    def base_pages(self, pages: array | list[int]) -> bytes:
        """The base's contents of ``pages`` (zeros where the base has none)."""
        if self.base is None:
            return bytes(PAGE * len(pages))
        return gather(self.base.memory, array("I", pages), self.base.size)

    def contents(self) -> bytes:
        """The contents of ``pages`` in this interpreter, one after the other."""
        if self.delta is None:
            raise ValueError("the image is in a file; take it from its lot first")
        spans = runs(self.pages)
        if len(spans) != len(self.sizes) or sum(self.sizes) != len(self.delta):
            raise ImageError("a parked image's pages do not match its index")
        base = self.base.memory if self.base is not None else None
        out = []
        at = 0
        view = memoryview(self.delta)
        try:
            for (first, end), n in zip(spans, self.sizes, strict=True):
                d = zlib.decompressobj(zdict=_base_run(base, self.base_size, first, end))
                want = (end - first) * PAGE
                raw = d.decompress(view[at:at + n], want)
                if len(raw) != want or not d.eof:
                    raise ImageError("a parked image's pages do not have the size it gives")
                out.append(raw)
                at += n
        except zlib.error as e:
            raise ImageError(f"a parked image's pages are damaged: {e}") from e
        finally:
            view.release()
        return b"".join(out)

    def materialize(self) -> Snapshot:
        """The whole image (a full copy of the memory): for a fresh interpreter."""
        if self.fs is None:
            raise ValueError("the image is in a file; take it from its lot first")
        memory = mmap.mmap(-1, max(self.size, 1))
        if self.base is not None:
            n = min(self.base.size, self.size)
            src = Pinned(self.base.memory)
            dst = Pinned(memory)
            try:
                ctypes.memmove(dst.address, src.address, n)
            finally:
                src.release()
                dst.release()
        contents = self.contents()
        view = memoryview(contents)
        for i, p in enumerate(self.pages):
            memory[p * PAGE:(p + 1) * PAGE] = view[i * PAGE:(i + 1) * PAGE]
        view.release()
        return Snapshot(memory, self.fs, dict(self.default_import_errors),
                        self.monotonic_ns, self.runtime_sha256, self.token, self.streams)


def park(image: Snapshot, base: Snapshot | None,
         candidates: list[int] | None = None) -> ParkedImage:
    """``image`` as the pages that differ from ``base`` (an image of the same runtime
    build; None compares with zeros). ``candidates``: the only pages that can differ
    (sorted; see Session.pages_changed_from), else all are compared."""
    if base is not None and base.runtime_sha256 != image.runtime_sha256:
        base, candidates = None, None
    base_size = base.size if base is not None else 0
    if candidates is not None and base is not None:
        pages = changed_among(image.memory, image.size, base.memory, base_size, candidates)
    else:
        pages = changed_pages(image.memory, image.size, base.memory if base else None,
                              base_size)
    mem = memoryview(image.memory)
    parts = []
    sizes = array("I")
    try:
        for first, end in runs(pages):
            c = zlib.compressobj(1, zdict=_base_run(base.memory if base else None, base_size,
                                                   first, end))
            blob = c.compress(mem[first * PAGE:end * PAGE]) + c.flush()
            parts.append(blob)
            sizes.append(len(blob))
    finally:
        mem.release()
    delta = b"".join(parts)
    fs_cost = image.fs.used if isinstance(image.fs, FSState) else 0
    return ParkedImage(base, image.size, pages, delta, sizes, image.fs,
                       dict(image.default_import_errors), image.monotonic_ns,
                       image.runtime_sha256, image.token,
                       nbytes=len(delta) + 2 * pages.itemsize * len(pages) + fs_cost
                       + ENTRY_OVERHEAD, streams=image.streams)


# ------------------------------------------------------------------------- the lot

class ParkingLot:
    """Where a resolver keeps its parked agents (thread-safe).

    ``directory``: None keeps the images in host memory; a path keeps each as a file
    there (created if missing; the lot deletes its files when they are taken, dropped or
    the lot is closed), so that only a few hundred bytes per agent stay in memory.
    ``budget_bytes``: the most the images may take (memory or disk). ``overflow``: past
    the budget, ``"drop_oldest"`` drops the images parked longest ago, ``"refuse"``
    parks no more (the agent being evicted is reset instead).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *,
                 budget_bytes: int = 1 << 30, overflow: Overflow = "drop_oldest") -> None:
        if type(budget_bytes) is not int or budget_bytes < 0:
            raise ConfigurationError(f"the parking budget must be an int of bytes >= 0, not "
                                     f"{budget_bytes!r}")
        if overflow not in OVERFLOWS:
            raise ConfigurationError(f"park_overflow must be one of {OVERFLOWS}, not "
                                     f"{overflow!r}")
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigurationError(f"cannot use {self.directory} for parked agents: "
                                         f"{e}") from e
        self.budget_bytes = budget_bytes
        self.overflow = overflow
        self._entries: OrderedDict[int, ParkedImage] = OrderedDict()
        self._files: dict[int, Path] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._key = os.urandom(32)  # signs the files: only those this lot wrote load
        self._nbytes = 0
        self.dropped = 0  # images dropped to stay within the budget
        self._closed = False

    # ------------------------------------------------------------------ API
    def new_ticket(self) -> int:
        """A fresh name for one agent's place in the lot."""
        return next(self._ids)

    def put(self, ticket: int, parked: ParkedImage, fs: MemoryFS) -> bool:
        """Park ``parked`` under ``ticket`` (``fs``: the file system it was taken from, to
        name the library's files in a file). False when it does not fit (it is not kept)."""
        if self.directory is not None:
            parked, path = self._write(ticket, parked, fs)
        else:
            path = None
        dropped: list[Path] = []
        with self._lock:
            if self._closed or parked.nbytes > self.budget_bytes or (
                    self.overflow == "refuse"
                    and self._nbytes + parked.nbytes > self.budget_bytes):
                fits = False
            else:
                fits = True
                old = self._entries.pop(ticket, None)
                if old is not None:
                    self._nbytes -= old.nbytes
                    stale = self._files.pop(ticket, None)
                    if stale is not None and stale != path:
                        dropped.append(stale)
                while self._entries and self._nbytes + parked.nbytes > self.budget_bytes:
                    gone_ticket, gone = self._entries.popitem(last=False)
                    self._nbytes -= gone.nbytes
                    self.dropped += 1
                    file = self._files.pop(gone_ticket, None)
                    if file is not None:
                        dropped.append(file)
                self._entries[ticket] = parked
                self._nbytes += parked.nbytes
                if path is not None:
                    self._files[ticket] = path
        if not fits and path is not None:
            dropped.append(path)
        for file in dropped:
            _unlink(file)
        return fits

    def take(self, ticket: int) -> tuple[ParkedImage, Path | None] | None:
        """The image parked under ``ticket``, removed from the lot (None when it was
        dropped), and its file when it is in one (read it with :meth:`load`)."""
        with self._lock:
            parked = self._entries.pop(ticket, None)
            path = self._files.pop(ticket, None)
            if parked is not None:
                self._nbytes -= parked.nbytes
        if parked is None:
            if path is not None:
                _unlink(path)
            return None
        return parked, path

    def load(self, parked: ParkedImage, path: Path | None, fs: MemoryFS) -> ParkedImage:
        """``parked`` with its pages and file system read back from ``path`` (deleted
        then); ImageError when the file cannot be used (changed since it was written, or
        gone). ``fs``: a file system of the interpreter it goes to."""
        if path is None:
            return parked
        try:
            return self._read(path, parked, fs)
        finally:
            _unlink(path)

    def discard(self, ticket: int) -> None:
        """Free the image parked under ``ticket`` (its agent was closed or reset)."""
        with self._lock:
            parked = self._entries.pop(ticket, None)
            path = self._files.pop(ticket, None)
            if parked is not None:
                self._nbytes -= parked.nbytes
        if path is not None:
            _unlink(path)

    def __contains__(self, ticket: int) -> bool:
        with self._lock:
            return ticket in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes the parked images take (in memory, or on disk with a directory)."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Drop every image (and delete their files)."""
        with self._lock:
            self._closed = True
            files = list(self._files.values())
            self._entries.clear()
            self._files.clear()
            self._nbytes = 0
        for file in files:
            _unlink(file)

    # ------------------------------------------------------------- files
    def _write(self, ticket: int, parked: ParkedImage, fs: MemoryFS) -> tuple[ParkedImage, Path]:
        assert self.directory is not None and parked.delta is not None and parked.fs is not None
        header = json.dumps({"ticket": ticket, "fs": encode_fs_state(parked.fs, fs)},
                            separators=(",", ":")).encode("utf-8")
        body = [_PARKED_MAGIC, len(header).to_bytes(4, "little"), header, parked.delta]
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in body:
            mac.update(part)
        path = self.directory / f"agent-{os.getpid()}-{id(self):x}-{ticket}.parked"
        size = write_atomically(path, [*body, mac.digest()])
        return replace(parked, delta=None, fs=None, nbytes=size + ENTRY_OVERHEAD
                       + 2 * parked.pages.itemsize * len(parked.pages)), path

    def _read(self, path: Path, parked: ParkedImage, fs: MemoryFS) -> ParkedImage:
        expected = parked.nbytes - ENTRY_OVERHEAD - 2 * parked.pages.itemsize * len(parked.pages)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != expected:
                    raise ImageError(f"the parked image {path} changed size since it was "
                                     "written")
                data = f.read(size + 1)
        except OSError as e:
            raise ImageError(f"the parked image {path} cannot be read: {e}") from e
        if len(data) != expected or not hmac.compare_digest(
                hmac.new(self._key, data[:-32], hashlib.sha256).digest(), data[-32:]):
            raise ImageError(f"the parked image {path} was changed since it was written")
        at = len(_PARKED_MAGIC)
        head_size = int.from_bytes(data[at:at + 4], "little")
        header = json.loads(data[at + 4:at + 4 + head_size].decode("utf-8"))
        try:
            state = decode_fs_state(header["fs"], fs)
        except (KeyError, TypeError, ValueError, RecursionError) as e:
            raise ImageError(f"the parked image {path} has a damaged file system: {e}") from e
        return replace(parked, delta=data[at + 4 + head_size:-32], fs=state)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
