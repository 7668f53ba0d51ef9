"""A snapshot: an interpreter between calls, held by the host (its whole linear memory,
its file system and what the host knows of it). How a session takes snapshots and
continues from them is in session_snapshots.py.

Three words, three things: the *runtime* is the WebAssembly module and standard library an
interpreter runs (runtime.py, ``LoadedRuntime``); a *snapshot* is one interpreter's state
in the host's memory (this module: what a roll-back, a fork or a warm start continues
from); an *image* is a snapshot written out as bytes: a saved file (images.py,
``ImageError``), a parked agent (parking.py) or a state store's entry (state_store.py).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Any

from .streams import StreamLayout


@dataclass(frozen=True)
class Snapshot:
    """A reactor interpreter between turns: its whole linear memory, the host-side file
    system (tree and descriptor table) and what the host knows of it. Restoring one into
    a fresh instance gives the same interpreter (with a new session token)."""

    memory: bytes | bytearray | mmap.mmap  # (never changed once taken)
    fs: Any  # vfs.FSState
    default_import_errors: dict[str, str]
    monotonic_ns: int  # the guest's monotonic clock when the snapshot was taken
    runtime_sha256: str
    token: bytes  # the session token the snapshot's runner holds
    # where the runner's streams keep their line-buffering flags (found at the
    # interpreter's boot; None: not known, and the host leaves them alone)
    streams: StreamLayout | None = None

    @property
    def size(self) -> int:
        return len(self.memory)
