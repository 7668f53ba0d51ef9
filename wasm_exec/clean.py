"""What ``wasm-exec clean`` removes from a runtime directory, and how much it frees.

A runtime directory (``$WASM_EXEC_RUNTIME_DIR`` or ``~/.cache/wasm-exec``) holds, per
runtime profile, a folder with the runtime's files, its compiled modules (one per variant:
fuel on, fuel off) and the import policy's code index, plus the build tree of the runtime
built from source (``build/``). Only entries of those known shapes are ever removed: the
directory may be shared (``$WASM_EXEC_RUNTIME_DIR``), so anything else in it is listed as
left alone. Symbolic links are removed as links, never followed.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import runtime

BUILD_DIR = "build"
# leftovers of interrupted writes (precompiling, indexing, building, fetching)
_TEMP = re.compile(r"^(\.cwasm-.*|\.codeindex-.*|tmp[a-z0-9_]{8}|.*\.staging)$")


@dataclass(frozen=True)
class Entry:
    """One file or folder: what it is, its disk usage, and what clean does with it."""

    path: Path
    what: str
    size: int  # bytes on disk (allocated blocks, as du counts them)
    remove: bool


def disk_usage(path: Path) -> int:
    """Bytes on disk under ``path`` (allocated blocks, hard links once, links not
    followed): what ``du -s`` reports."""
    seen: set[tuple[int, int]] = set()

    def one(st: os.stat_result) -> int:
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return 0
        seen.add(key)
        return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size

    try:
        st = path.lstat()
    except OSError:
        return 0
    total = one(st)
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    total += one(os.lstat(os.path.join(root, name)))
                except OSError:
                    pass
    return total


def human(n: int) -> str:
    """A size as ``du -h`` prints it (powers of 1024): ``597M``, ``1.4G``, ``4.0K``."""
    value = float(n)
    unit = "B"
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            break
        value /= 1024
    return f"{value:.1f}{unit}" if value < 10 and unit != "B" else f"{value:.0f}{unit}"


def _current_files(folder: Path, pin: runtime.Pin) -> set[str]:
    """Names in a profile's current folder that this version of wasm-exec uses."""
    if pin.built:
        lock = runtime.build.read_lock(folder) or {}
        sums = {o.get("file"): o.get("sha256", "") for o in lock.get("outputs", ())}
        sha = str(sums.get(pin.file, ""))
        pin = runtime.dataclasses.replace(pin, files=tuple(
            runtime.PinnedFile(f.file, f.member, f.size, str(sums.get(f.file, "")))
            for f in pin.files))
    else:
        sha = pin.sha256
    wasm = folder / pin.file
    names = {f.file for f in pin.files} | {"licenses", runtime.build.LOCK_FILE}
    if sha:
        names |= {runtime.compiled_path(wasm, s, pin).name for s in runtime.variants()}
        names.add(f"{wasm.stem}.{sha[:16]}.codeindex.json")
    return names


def plan(base: Path, *, keep_runtimes: bool = False,
         profiles: Iterable[str] | None = None) -> list[Entry]:
    """Every entry of ``base`` that clean looks at, each marked removed or kept.

    Without ``keep_runtimes`` every runtime (of this version or an older one), its compiled
    modules and the build tree go. With it, the runtimes this version uses stay with their
    current compiled modules; the build tree, runtimes of other builds, compiled modules
    for another wasmtime and leftovers of interrupted writes go. ``profiles`` limits
    clean to those runtimes (the build tree belongs to the built one, ``minimal``).
    """
    known = runtime.profiles()
    chosen = set(known if profiles is None else profiles)
    unknown = chosen - set(known)
    if unknown:
        raise ValueError(f"unknown runtime {sorted(unknown)[0]!r}; known: {', '.join(known)}")
    pins = {p: runtime.load_pin(p) for p in known}
    entries: list[Entry] = []
    try:
        children = sorted(base.iterdir())
    except FileNotFoundError:
        return []

    def add(path: Path, what: str, remove: bool) -> None:
        entries.append(Entry(path, what, disk_usage(path), remove))

    for child in children:
        name = child.name
        owner = None
        current = False
        for p, pin in pins.items():
            if pin.built and (name == pin.subdir or re.fullmatch(rf"{p}-[0-9a-f]{{8,}}", name)):
                owner, current = p, name == pin.subdir
            elif not pin.built and pin.subdir and name == pin.subdir:
                owner, current = p, True
        if name == BUILD_DIR and child.is_dir() and not child.is_symlink():
            built = [p for p, pin in pins.items() if pin.built]
            mine = bool(chosen & set(built))
            add(child, "the build tree, only needed to build the minimal runtime again"
                + ("" if mine else " (not chosen)"), mine)
        elif owner is not None and child.is_dir() and not child.is_symlink():
            if owner not in chosen:
                add(child, f"the {owner} runtime (not chosen)", False)
            elif not current:
                add(child, f"a {owner} runtime of another build, which this version does "
                           "not use", True)
            elif not keep_runtimes:
                add(child, f"the {owner} runtime with its compiled modules", True)
            else:
                entries.extend(_inside(child, pins[owner]))
        elif _TEMP.match(name):
            add(child, "a leftover of an interrupted write"
                + ("" if chosen == set(known) else " (not chosen)"), chosen == set(known))
        else:
            add(child, "not made by wasm-exec: left alone", False)
    return entries


def _inside(folder: Path, pin: runtime.Pin) -> list[Entry]:
    """A kept runtime folder: its stale compiled modules and leftovers go."""
    keep = _current_files(folder, pin)
    out: list[Entry] = []
    for child in sorted(folder.iterdir()):
        if child.name in keep:
            continue
        if child.name.endswith(".cwasm"):
            out.append(Entry(child, "a compiled module for another wasmtime or build",
                             disk_usage(child), True))
        elif child.name.endswith(".codeindex.json") or _TEMP.match(child.name):
            out.append(Entry(child, "a stale index or a leftover of an interrupted write",
                             disk_usage(child), True))
    kept = disk_usage(folder) - sum(e.size for e in out)
    return [Entry(folder, f"the {pin.profile} runtime this version uses", kept, False),
            *out]


def remove(entries: Iterable[Entry]) -> None:
    """Delete the entries marked for removal (links as links, folders whole)."""
    for e in entries:
        if not e.remove:
            continue
        if e.path.is_symlink() or not e.path.is_dir():
            e.path.unlink(missing_ok=True)
        else:
            shutil.rmtree(e.path)
