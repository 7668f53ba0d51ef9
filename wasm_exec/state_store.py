"""Agents that outlive their process: images of their interpreters kept in a state store.

With ``state_store`` an executor saves its agent's interpreter after each answered call
(in the background, after the result is returned) under a name derived from the agent's
identity, and an executor created later with the same identity and store, in this
process or another, on this machine or another, continues from it::

    ex = PythonExecExecutor(state_store="/var/lib/agents", state_key=("alice", "guild-1"))

A store is a directory (one file per agent, replaced atomically) or a Redis server
(``"redis://host:6379/0"``; one string value per agent). What is stored is the image file
of :meth:`PythonExecExecutor.save` (the same format: ``PythonExecExecutor.load`` reads a
directory store's file too), so a store holds the agent's state as of its last answered
call whose save has finished.

Saving costs time proportional to what a call changed, not to the interpreter's size: the
memory is cut into chunks, a chunk whose SHA-256 is the one it had at the previous save
keeps its compressed bytes, and only changed chunks are compressed again (each chunk is
a self-contained piece of one zlib stream, so the file stays a plain image).

Images in a store are untrusted on load, like any image file: their size is bounded
before they are read, their header before it is parsed, and with ``state_store_key`` each
image is signed with HMAC-SHA256 under a key derived from that key and the agent's
identity, so only images this deployment saved load, and only for the agent that saved
them (an image copied to another agent's name is refused).
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import hmac
import logging
import mmap
import os
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import images
from .atomic import write_atomically
from .errors import ImageError, WasmExecError

if TYPE_CHECKING:
    from .session import Session
    from .snapshot import Snapshot
    from .vfs import MemoryFS

log = logging.getLogger("wasm_exec.state_store")

# an agent's identity: its id and scope parts, kept apart (never joined)
Identity = tuple[str, ...]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
CHUNK = 16 << 10  # (a changed byte costs compressing this much again)
LEVEL = 1
# how long a save waits for the image of the call it follows (taken as the call ends)
IMAGE_WAIT_SECONDS = 30.0


class StateStoreError(WasmExecError):
    """A state store cannot be used (unreachable, not writable, misconfigured), or the
    last save of an agent's state failed."""


# ------------------------------------------------------------------ names and keys
def encode_identity(identity: Identity) -> bytes:
    """An unambiguous byte string for ``identity``: each part length-prefixed, so that
    ``("alice", "g")`` and ``("alice/g",)`` (or ``("alice", "", "g")``) never meet."""
    out = bytearray(b"wasm-exec agent identity\0")
    for part in identity:
        data = part.encode("utf-8", "surrogatepass")
        out += len(data).to_bytes(8, "little") + data
    return bytes(out)


def check_identity(value: Any) -> Identity:
    """``value`` (a str, or a tuple or list of str) as an identity tuple."""
    parts = (value,) if isinstance(value, str) else value
    if not isinstance(parts, (tuple, list)) or not parts:
        raise TypeError(f"state_key must be a str or a non-empty tuple of str, not {value!r}")
    out = []
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"state_key parts must be str, not {type(part).__name__} "
                            f"({part!r})")
        out.append(str.__str__(part))  # (a subclass's own methods play no part)
    return tuple(out)


def state_name(identity: Identity) -> str:
    """The name an agent's image has in a store: the SHA-256 (hex) of its encoded identity
    (a fixed-length name, safe as a file name or a Redis key, whatever the ids hold)."""
    return hashlib.sha256(encode_identity(identity)).hexdigest()


def agent_key(key: bytes, identity: Identity) -> bytes:
    """The HMAC key of one agent's images, derived from the store's key and its identity."""
    return hmac.new(key, b"wasm-exec state store image key\0" + encode_identity(identity),
                    hashlib.sha256).digest()


def check_key(key: Any) -> bytes | None:
    """``state_store_key`` as bytes (a str is taken as its UTF-8 bytes)."""
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"state_store_key must be bytes or str, not {type(key).__name__}")
    key = bytes(key)
    if len(key) < 16:
        raise ValueError("state_store_key must be at least 16 bytes (a random secret, e.g. "
                         "secrets.token_bytes(32))")
    return key


# ------------------------------------------------------------------------- stores
class StateStore(ABC):
    """Where agents' images live: a name (see :func:`state_name`) maps to one image file's
    bytes. Subclass it to keep images elsewhere; ``put`` must replace a value atomically
    (a reader sees the old bytes or the new ones, never a mix)."""

    @abstractmethod
    def get(self, name: str, max_bytes: int) -> bytes | None:
        """The bytes stored under ``name`` (None when there are none). Raises
        :class:`StateStoreError` when they are longer than ``max_bytes`` (without reading
        more than that much)."""

    @abstractmethod
    def put(self, name: str, parts: Sequence[bytes]) -> None:
        """Store the concatenation of ``parts`` under ``name``, atomically."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Drop what is stored under ``name`` (nothing when there is nothing)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections (stores given as a path or URL are closed with their
        executor or resolver)."""


class DirectoryStateStore(StateStore):
    """One file per agent in ``path`` (created, mode 0700, if missing); each save writes a
    temporary file in the same directory and renames it over the old one. ``fsync=True``
    also flushes each file to disk before the rename (surviving a power loss, not only
    the death of the process, at the cost of a disk flush per save)."""

    SUFFIX = ".wasm-exec-image"

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = bool(fsync)
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StateStoreError(f"cannot create the state directory {self.path}: {e}") \
                from e
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StateStoreError(f"the state directory {self.path} is not writable")

    def file(self, name: str) -> Path:
        if len(name) != 64 or not all(c in "0123456789abcdef" for c in name):
            raise ValueError(f"not a state name: {name!r}")
        return self.path / (name + self.SUFFIX)

    def get(self, name: str, max_bytes: int) -> bytes | None:
        try:
            with open(self.file(name), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > max_bytes:
                    raise StateStoreError(
                        f"the stored image {self.file(name)} is {size} bytes, more than an "
                        f"image within this executor's limits can be ({max_bytes})")
                return f.read(max_bytes + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateStoreError(f"cannot read {self.file(name)}: {e}") from e

    def put(self, name: str, parts: Sequence[bytes]) -> None:
        target = self.file(name)
        try:
            write_atomically(target, parts, prefix=".saving-", fsync=self.fsync)
        except OSError as e:
            raise StateStoreError(f"cannot write {target}: {e}") from e

    def delete(self, name: str) -> None:
        try:
            os.unlink(self.file(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StateStoreError(f"cannot delete {self.file(name)}: {e}") from e

    def __repr__(self) -> str:
        return f"DirectoryStateStore({str(self.path)!r})"


class RedisStateStore(StateStore):
    """One string value per agent, under ``prefix + name``, in a Redis server (needs the
    ``redis`` package: ``pip install wasm-exec[redis]``). ``url``: ``redis://host:port/db``
    (``rediss://`` for TLS, ``unix://`` for a socket); or pass a ``redis.Redis`` client."""

    def __init__(self, url: str | None = None, *, client: Any = None,
                 prefix: str = "wasm-exec:state:", timeout_seconds: float = 10.0) -> None:
        if (url is None) == (client is None):
            raise ValueError("RedisStateStore needs a url or a client (one of them)")
        self.prefix = prefix
        self._owned = client is None
        if client is None:
            try:
                import redis
            except ImportError as e:
                raise StateStoreError(
                    f"a Redis state store ({url}) needs the redis package: "
                    "pip install 'wasm-exec[redis]' (or pip install redis)") from e
            client = redis.Redis.from_url(url, socket_timeout=timeout_seconds,
                                          socket_connect_timeout=timeout_seconds)
        self.client = client
        self.url = url

    def _errors(self) -> tuple[type[BaseException], ...]:
        try:
            import redis
        except ImportError:  # (a client of another package)
            return (OSError,)
        return (redis.RedisError, OSError)

    def get(self, name: str, max_bytes: int) -> bytes | None:
        try:
            data = self.client.getrange(self.prefix + name, 0, max_bytes)
        except self._errors() as e:
            raise StateStoreError(f"cannot read the state of {name} from {self}: {e}") from e
        if not data:  # (missing: a stored image is never empty)
            return None
        if len(data) > max_bytes:
            raise StateStoreError(
                f"the stored image {self.prefix + name} is more than {max_bytes} bytes, more "
                "than an image within this executor's limits can be")
        return bytes(data)

    def put(self, name: str, parts: Sequence[bytes]) -> None:
        try:
            self.client.set(self.prefix + name, b"".join(parts))
        except self._errors() as e:
            raise StateStoreError(f"cannot write the state of {name} to {self}: {e}") from e

    def delete(self, name: str) -> None:
        try:
            self.client.delete(self.prefix + name)
        except self._errors() as e:
            raise StateStoreError(f"cannot delete the state of {name} from {self}: {e}") \
                from e

    def close(self) -> None:
        if self._owned:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def __repr__(self) -> str:
        return f"RedisStateStore({self.url or self.client!r})"


def open_state_store(spec: StateStore | str | os.PathLike[str]) -> StateStore:
    """A store from ``spec``: a :class:`StateStore` as it is, a ``redis://``,
    ``rediss://`` or ``unix://`` URL, or a directory path."""
    if isinstance(spec, StateStore):
        return spec
    if isinstance(spec, str) and spec.startswith(REDIS_SCHEMES):
        return RedisStateStore(spec)
    if isinstance(spec, (str, os.PathLike)):
        if not str(spec):
            raise StateStoreError("state_store is an empty path")
        return DirectoryStateStore(spec)
    raise TypeError("state_store must be a directory path, a redis:// URL or a StateStore, "
                    f"not {type(spec).__name__}")


# ------------------------------------------------------------- the delta compressor
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, fastest
_FINAL_BLOCK = b"\x03\x00"  # an empty final block (fixed codes, end of block)
_ADLER_BASE = 65521


def _adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """The Adler-32 of A + B from those of A and B (zlib's adler32_combine)."""
    rem = len2 % _ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 += (adler2 & 0xFFFF) + _ADLER_BASE - 1
    sum2 += ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + _ADLER_BASE - rem
    sum1 %= _ADLER_BASE
    sum2 %= _ADLER_BASE
    return sum1 | (sum2 << 16)


class ChunkedDeflate:
    """Compresses successive versions of one agent's memory as one zlib stream, doing
    again only the chunks that changed since the previous version.

    Each chunk is compressed on its own (a fresh compressor, ended by a full flush), so
    its bytes do not depend on its neighbours: the stream of a new version reuses the
    compressed bytes of every chunk whose SHA-256 is unchanged. All-zero chunks (most of
    an interpreter's memory) are recognised by comparison, without hashing. Holds the
    compressed memory (about a tenth of the memory's size)."""

    _ZERO = b"zero"  # (the digest recorded for an all-zero chunk: no SHA-256 is 4 bytes)

    def __init__(self, chunk: int = CHUNK, level: int = LEVEL) -> None:
        self.chunk = chunk
        self.level = level
        self._zeros = bytes(chunk)
        self._zero_block = self._pack(self._zeros)
        self._zero_adler = zlib.adler32(self._zeros)
        self._digests: list[bytes] = []
        self._blocks: list[bytes] = []
        self._adlers: list[int] = []
        self.last_changed = 0  # chunks compressed again by the last call

    def _pack(self, piece: Any) -> bytes:
        packer = zlib.compressobj(self.level, zlib.DEFLATED, -15)
        return packer.compress(piece) + packer.flush(zlib.Z_FULL_FLUSH)

    def compress(self, memory: Any) -> bytes:
        """``memory`` (bytes, bytearray or mmap) as one zlib stream."""
        chunk, zeros, zero = self.chunk, self._zeros, self._ZERO
        old_digests, old_blocks, old_adlers = self._digests, self._blocks, self._adlers
        digests: list[bytes] = []
        blocks: list[bytes] = []
        adlers: list[int] = []
        changed = 0
        adler = 1
        with memoryview(memory) as view:
            size = len(view)
            for i, at in enumerate(range(0, size, chunk)):
                piece = view[at:at + chunk]
                if len(piece) == chunk and piece.tobytes() == zeros:
                    digests.append(zero)
                    blocks.append(self._zero_block)
                    adlers.append(self._zero_adler)
                    adler = _adler32_combine(adler, self._zero_adler, chunk)
                    piece.release()
                    continue
                digest = hashlib.sha256(piece).digest()
                if i < len(old_digests) and old_digests[i] == digest:
                    block, part_adler = old_blocks[i], old_adlers[i]
                else:
                    block, part_adler = self._pack(piece), zlib.adler32(piece)
                    changed += 1
                digests.append(digest)
                blocks.append(block)
                adlers.append(part_adler)
                adler = _adler32_combine(adler, part_adler, len(piece))
                piece.release()
        self._digests, self._blocks, self._adlers = digests, blocks, adlers
        self.last_changed = changed
        return b"".join([_ZLIB_HEADER, *blocks, _FINAL_BLOCK, adler.to_bytes(4, "big")])

    def clear(self) -> None:
        self._digests, self._blocks, self._adlers = [], [], []


# --------------------------------------------------------------- one agent's state
class AgentState:
    """One agent's place in a store: saves (in the background, newest first) and loads.

    Holds no reference to its executor: a save is handed the session that answered the
    call and takes that call's image from it."""

    def __init__(self, store: StateStore, identity: Identity, *, key: bytes | None,
                 runtime: str, allowed: frozenset[str], default_imports: dict[str, str],
                 owns_store: bool = False) -> None:
        self.store = store
        self.identity = identity
        self.name = state_name(identity)
        self.key = agent_key(key, identity) if key is not None else None
        self.runtime = runtime
        self.allowed = allowed
        self.default_imports = dict(default_imports)
        self.owns_store = owns_store
        self._deflate = ChunkedDeflate()
        self._cv = threading.Condition()
        self._io = threading.Lock()  # held while a save writes, and by forget()
        self._source: Session | None = None
        self._wanted = 0  # saves asked for
        self._done = 0  # ... and finished (or given up), counted the same way
        self._queued = False
        self.error: str | None = None  # why the last save failed (None: it did not)
        self.saves = 0
        self.last_save_seconds = 0.0  # wall-clock time of the last save
        self.last_save_cpu_seconds = 0.0  # ... and the CPU time its thread spent
        self.last_save_bytes = 0

    # ------------------------------------------------------------------ save
    def request_save(self, session: Session) -> None:
        """Save the image of the call ``session`` answered last (soon, on a worker
        thread; a newer request replaces one not yet started)."""
        with self._cv:
            self._source = session
            self._wanted += 1
            queue = not self._queued
            self._queued = True
        if queue:
            _worker.submit(self)

    def save_image(self, image: Snapshot, fs: MemoryFS) -> int:
        """Save ``image`` now, on this thread; returns the bytes written."""
        started, cpu = time.perf_counter(), time.thread_time()
        body = self._deflate.compress(image.memory)
        parts = images.encode(image, runtime=self.runtime, allowed=self.allowed,
                              default_imports=self.default_imports, fs=fs, key=self.key,
                              body=body)
        self.store.put(self.name, parts)
        self.saves += 1
        self.last_save_seconds = time.perf_counter() - started
        self.last_save_cpu_seconds = time.thread_time() - cpu
        self.last_save_bytes = sum(len(p) for p in parts)
        return self.last_save_bytes

    def _run_save(self) -> None:
        """One save (on the worker): the newest request's image."""
        with self._cv:
            self._queued = False
            target, session = self._wanted, self._source
            self._source = None
        with self._io:
            # (an older request that lost the race to a newer one saves nothing)
            if session is None or self._done >= target:
                with self._cv:
                    self._done = max(self._done, target)
                    self._cv.notify_all()
                return
            error = None
            try:
                image = session.answered_snapshot(IMAGE_WAIT_SECONDS)
                if image is not None:
                    # a copy of its memory (a few ms, into pages this thread has mapped
                    # already), so that the session gets its image's pages back at once:
                    # it copies the next image into them (a tenth of the cost of new ones)
                    image = _scratch_copy(image)
                    self.save_image(image, session.fs)
            except (WasmExecError, ValueError, OSError) as e:
                error = str(e)
            except Exception as e:  # noqa: BLE001 - a store's own error type
                error = f"{type(e).__name__}: {e}"
            if error is not None:
                log.warning("saving the state of agent %r to %r failed: %s", self.identity,
                            self.store, error)
            with self._cv:
                self.error = error
                self._done = max(self._done, target)
                self._cv.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every save asked for so far has finished; False on timeout.
        Raises :class:`StateStoreError` when the last one failed."""
        with self._cv:
            target = self._wanted
            if not self._cv.wait_for(lambda: self._done >= target, timeout):
                return False
            if self.error is not None:
                raise StateStoreError(f"the last save of this agent's state failed: "
                                      f"{self.error}")
        return True

    @property
    def pending(self) -> bool:
        with self._cv:
            return self._done < self._wanted

    def forget(self) -> None:
        """Drop pending saves and the stored image (the agent's state is gone)."""
        with self._cv:
            self._done = self._wanted
            self._source = None
            self._cv.notify_all()
        with self._io:  # (a save being written finishes first, then is deleted)
            self._deflate.clear()
            self.store.delete(self.name)

    # ------------------------------------------------------------------ load
    def load(self, memory_bytes: int, scratch_bytes: int, fs: MemoryFS,
             runtime_sha256: str) -> Snapshot | None:
        """The stored image of this agent, checked against this executor's configuration
        (None when there is none). Raises :class:`ImageError` when one is stored but
        cannot be used (damaged, not signed with this key, another runtime build or
        wasm-exec version, another allow-list or default imports, too large)."""
        bounds = images.ReadLimits.for_load(memory_bytes, scratch_bytes)
        most = images.PREAMBLE + bounds.max_header + bounds.max_body + images.TRAILER
        where = f"the stored image of agent {self.identity!r} in {self.store!r}"
        data = self.store.get(self.name, most)
        if data is None:
            return None
        header, body = images.read_bytes(data, key=self.key, limits=bounds, name=where)
        if header.get("runtime") != self.runtime:
            raise ImageError(f"{where} is of the {header.get('runtime')!r} runtime, not "
                             f"{self.runtime!r}")
        images.check_compatible(header, runtime_sha256=runtime_sha256, path=where)
        try:
            allowed = frozenset(str(a) for a in header["whitelisted_imports"])
            defaults = {str(k): str(v) for k, v in dict(header["default_imports"]).items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ImageError(f"{where} has a damaged header") from e
        if allowed != self.allowed or defaults != self.default_imports:
            raise ImageError(f"{where} was saved with another import policy (allowed "
                             f"{sorted(allowed)}, default imports {defaults}); an agent "
                             "resumes only under the policy it was saved with")
        size = header.get("memory_size")
        if type(size) is int and size > memory_bytes:
            raise ImageError(f"{where} holds {size} bytes of memory, more than the memory "
                             f"limit of {memory_bytes} bytes")
        return images.decode(header, body, fs, max_memory=memory_bytes)

    def close(self) -> None:
        if self.owns_store:
            self.store.close()


_scratch = threading.local()  # (per worker thread: freed when the thread ends)


def _scratch_copy(image: Snapshot) -> Snapshot:
    """``image`` with its memory copied into this thread's scratch buffer."""
    size = image.size
    buffer: mmap.mmap | None = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _scratch.buffer = mmap.mmap(-1, max(size, 1))
    target = (ctypes.c_char * size).from_buffer(buffer)
    source = image.memory
    if isinstance(source, bytes):
        ctypes.memmove(target, source, size)
    else:
        view = (ctypes.c_char * size).from_buffer(source)
        ctypes.memmove(target, view, size)  # (releases the GIL)
        del view
    del target
    return dataclasses.replace(image, memory=memoryview(buffer)[:size])


class _SaveWorker:
    """Runs agents' saves on up to ``threads`` background threads (started when there is
    work, ended when there is none), one save per agent at a time, newest state only."""

    def __init__(self, threads: int = 2) -> None:
        self._lock = threading.Lock()
        self._queue: deque[AgentState] = deque()
        self._threads = 0
        self._most = threads

    def submit(self, state: AgentState) -> None:
        with self._lock:
            self._queue.append(state)
            if self._threads >= self._most:
                return
            self._threads += 1
        threading.Thread(target=self._run, daemon=True, name="wasm-exec-state-save").start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._threads -= 1
                    return
                state = self._queue.popleft()
            state._run_save()


_worker = _SaveWorker()


__all__ = [
    "DirectoryStateStore",
    "RedisStateStore",
    "StateStore",
    "StateStoreError",
    "open_state_store",
    "state_name",
]
