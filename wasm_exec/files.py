"""Files in and out of the agent's file system: what the executor's file methods and
``execute(files=..., output_files=...)`` check before anything reaches the sandbox.

The agent's files live in its interpreter's in-memory file system (:mod:`wasm_exec.vfs`):
a scratch area under ``/tmp`` (the working directory is ``/tmp/work``), charged against a
budget of a quarter of ``memory_bytes`` (at least 16 MiB). They persist between calls and
travel with the interpreter's images (roll-back, save/load).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from .errors import InputError
from .hostfiles import host_path
from .vfs import MemoryFS

# how many files one call may put in or ask back
MAX_FILES = 10_000

FileData = bytes | bytearray | memoryview | str


class FileInfo(BaseModel):
    """One entry of :meth:`PythonExecExecutor.list_files`."""

    model_config = ConfigDict(frozen=True)

    name: str
    """The entry's name relative to the directory listed (``sub/x.csv`` when recursive)."""
    path: str
    """Its absolute path in the sandbox (``/tmp/work/sub/x.csv``)."""
    size: int
    """Bytes of a file (0 for a directory)."""
    is_dir: bool


def file_bytes(data: Any, what: str) -> bytes:
    """``data`` as bytes: bytes-like as it is, a str as UTF-8."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        try:
            return data.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"{what} has a lone surrogate at index {e.start}, which UTF-8 "
                             "cannot hold: pass bytes instead") from None
    raise InputError(f"{what} must be bytes or str, not {type(data).__name__}")


def check_files(files: Mapping[str, Any] | None) -> list[tuple[str, bytes]]:
    """``execute``'s ``files`` as (guest path, bytes) pairs, every name checked."""
    if files is None:
        return []
    if not isinstance(files, Mapping):
        raise InputError("files must be a mapping of names to bytes or str, like "
                         "{'data.csv': b'a,b\\n1,2\\n'}")
    if len(files) > MAX_FILES:
        raise InputError(f"files names {len(files)} files; a call may put in at most "
                         f"{MAX_FILES}")
    return [(host_path(name, "files key"), file_bytes(data, f"files[{name!r}]"))
            for name, data in files.items()]


def check_output_files(names: Iterable[str] | None) -> list[tuple[str, str]]:
    """``execute``'s ``output_files`` as (name as given, guest path) pairs."""
    if names is None:
        return []
    if isinstance(names, (str, bytes)):
        raise InputError("output_files must be a list of names, not a string (did you "
                         f"mean [{names!r}]?)")
    out = []
    for name in names:
        out.append((name, host_path(name, "output_files entry")))
        if len(out) > MAX_FILES:
            raise InputError(f"output_files names more than {MAX_FILES} files")
    return out


def write_all(items: list[tuple[str, bytes]]) -> Any:
    """A session files job writing every item, all or nothing."""

    def job(fs: MemoryFS) -> None:
        if len(items) == 1:  # (one write is all or nothing by itself)
            fs.host_write(*items[0])
            return
        before = fs.snapshot()
        try:
            for path, data in items:
                fs.host_write(path, data)
        except BaseException:
            fs.restore(before)
            raise

    return job


def read_all(items: list[tuple[str, str]]) -> Any:
    """A session files job reading each named file: (contents, errors) by given name."""

    def job(fs: MemoryFS) -> tuple[dict[str, bytes], dict[str, str]]:
        found: dict[str, bytes] = {}
        errors: dict[str, str] = {}
        for name, path in items:
            try:
                found[name] = fs.host_read(path)
            except FileNotFoundError:
                errors[name] = f"no such file: {path} (the code did not write it)"
            except IsADirectoryError:
                errors[name] = f"{path} is a directory, not a file"
            except NotADirectoryError:
                errors[name] = f"{path}: a file is in the way (not a directory)"
        return found, errors

    return job


def listing(path: str, recursive: bool) -> Any:
    """A session files job listing a directory as :class:`FileInfo` entries."""

    def job(fs: MemoryFS) -> list[FileInfo]:
        base = path.rstrip("/")
        return [FileInfo(name=name, path=f"{base}/{name}", size=size, is_dir=is_dir)
                for name, size, is_dir in fs.host_list(path, recursive)]

    return job


__all__ = ["FileInfo"]
