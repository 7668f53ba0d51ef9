"""Writing a file so that readers see the old one or the whole new one, never a part."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_atomically(target: str | os.PathLike[str], parts: Iterable[bytes], *,
                     prefix: str | None = None, fsync: bool = False) -> int:
    """Write ``parts`` one after the other to a new file beside ``target`` (named
    ``prefix`` + random, owner-only), then rename it over ``target``; returns the bytes
    written. On any failure the new file is removed and ``target`` is as it was.
    ``fsync``: the contents reach the disk before the rename."""
    path = Path(target)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=prefix or f".{path.name}.")
    try:
        written = 0
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
                written += len(part)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return written
