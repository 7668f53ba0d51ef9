"""The in-memory file system's tree: its layout (where the guest's places are, and the
limits), its nodes (files, directories, open descriptors, a whole tree's state: FSState),
and copying and freezing trees for snapshots (a frozen node is shared between snapshots
until one of them changes it)."""

from __future__ import annotations

import copy
from typing import Any

from .wasi import (
    FT_CHARACTER_DEVICE,
    FT_DIRECTORY,
    FT_REGULAR_FILE,
)

DEV_RO, DEV_SCRATCH, DEV_DEVICES = 1, 2, 3
FIXED_TIME_NS = 1_767_225_600 * 10**9  # 2026-01-01: times of the read-only part

# ------------------------------------------------------------------ layout and limits
ZIP_PATH = "/usr/local/lib/python315.zip"
SCRATCH_ROOT = "/tmp"
GUEST_CWD = "/tmp/work"
GUEST_HOME = "/tmp/home"
GUEST_MPLCONFIGDIR = "/tmp/mpl"
GUEST_DIRS = (GUEST_CWD, GUEST_HOME, GUEST_MPLCONFIGDIR)
# archives inside the stdlib zip served as read-only folders under the zip's own path,
# where the packages look for their data (matplotlib: Path(__file__).with_name("mpl-data"))
ZIP_OVERLAYS = (("matplotlib/mpl-data.zip", "matplotlib/mpl-data"),)
GUEST_ENV = {"HOME": GUEST_HOME, "MPLCONFIGDIR": GUEST_MPLCONFIGDIR, "TMPDIR": SCRATCH_ROOT,
             "PWD": GUEST_CWD}

PREOPEN_FD = 3  # the one preopened directory, "/"
FIRST_FD = 4  # fds the guest opens start here
STDIO_FDS = 3  # 0, 1, 2 belong to the caller
PATH_MAX = 4096
NAME_MAX = 255
# budget charged per scratch file or directory: its host cost (node, a name of up to 255
# bytes, its copy in the latest image) was measured at up to about 1.2 KB
NODE_COST = 1536
DEFAULT_SCRATCH_BYTES = 256 << 20
DEFAULT_MAX_FDS = 1024
CONSOLE_CAP = 1 << 20


# ------------------------------------------------------------------ nodes
class Node:
    __slots__ = ("ino", "dev", "writable", "atim", "mtim", "ctim", "shared", "parent", "snap")

    def __init__(self, ino: int, dev: int, writable: bool, now: int) -> None:
        self.ino = ino
        self.dev = dev
        self.writable = writable
        self.atim = self.mtim = self.ctim = now
        self.shared = False  # part of a process-wide read-only tree: never copied
        # the directory that holds it (itself for the root and for a node no directory
        # holds any more); in a snapshot's copies it means nothing (restore recomputes it)
        self.parent: Node = self
        # the copy of this node (and of everything below it) in the latest snapshot, or
        # None once it changed since: a snapshot copies only what changed (and the path
        # to it), the rest of the tree is shared between snapshots (see MemoryFS._dirty)
        self.snap: Node | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> Node:
        if self.shared:
            return self
        new = object.__new__(type(self))
        memo[id(self)] = new
        for cls in type(self).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                setattr(new, slot, copy.deepcopy(getattr(self, slot), memo))
        return new


class File(Node):
    """A regular file: ``data`` a bytearray (scratch) or bytes-like (read-only), or None
    for /dev/null or a member of an overlay archive not loaded yet (``member`` set)."""

    __slots__ = ("data", "opens", "linked", "member")

    def __init__(self, ino: int, dev: int, writable: bool, now: int, data: Any,
                 member: tuple[Any, int, int, int, int] | None = None) -> None:
        super().__init__(ino, dev, writable, now)
        self.data = data
        self.opens = 0  # open fds (kept for scratch files only)
        self.linked = True
        self.member = member  # (archive, data offset, compressed size, size, method)


class Dir(Node):
    __slots__ = ("entries", "removed", "hidden")

    def __init__(self, ino: int, dev: int, writable: bool, now: int,
                 parent: Dir | None) -> None:
        super().__init__(ino, dev, writable, now)
        self.entries: dict[str, Node] = {}
        if parent is not None:
            self.parent = parent
        self.removed = False
        self.hidden = False  # can be walked through, but does not exist itself


class Fd:
    __slots__ = ("node", "pos", "flags", "base", "inh", "preopen", "listing")

    def __init__(self, node: Node, flags: int, base: int, inh: int,
                 preopen: str | None = None) -> None:
        self.node = node
        self.pos = 0
        self.flags = flags
        self.base = base
        self.inh = inh
        self.preopen = preopen
        # a directory's entries as of the read that started at cookie 0: later reads
        # continue that listing instead of building it again (a listing is linear work);
        # kept only within MemoryFS.max_listed_entries over all descriptors
        self.listing: list[tuple[str, Node]] | None = None


class FSState:
    """An opaque copy of a :class:`MemoryFS` (tree, fd table, usage); see ``snapshot``."""

    __slots__ = ("root", "fds", "used", "next_ino", "zip_data")

    def __init__(self, root: Dir, fds: dict[int, Fd], used: int, next_ino: int,
                 zip_data: Any) -> None:
        self.root = root
        self.fds = fds
        self.used = used
        self.next_ino = next_ino
        self.zip_data = zip_data


def filetype(node: Node) -> int:
    if type(node) is Dir:
        return FT_DIRECTORY
    if node.data is None and node.member is None:  # type: ignore[attr-defined]
        return FT_CHARACTER_DEVICE
    return FT_REGULAR_FILE


def copy_node(node: Node) -> Node:
    new = object.__new__(type(node))
    for cls in type(node).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            setattr(new, slot, getattr(node, slot))
    new.parent = new
    new.snap = None
    return new


def freeze(top: Node) -> None:
    """Give ``top`` and every node under it its snapshot copy (``snap``): a node that has
    one keeps it, the others are copied, children before their directory (no recursion:
    a deep tree must not exhaust Python's stack). Work: the nodes that changed since the
    last snapshot, the entries of the directories that hold them, and their contents."""
    if top.shared or top.snap is not None:
        return
    order: list[Node] = []
    stack: list[Node] = [top]
    while stack:
        node = stack.pop()
        order.append(node)
        if type(node) is Dir:
            for child in node.entries.values():
                if child.snap is None and not child.shared:
                    stack.append(child)
    for node in reversed(order):
        new = copy_node(node)
        if type(node) is Dir:
            new.entries = {name: child if child.shared else child.snap  # type: ignore
                           for name, child in node.entries.items()}
        elif isinstance(node.data, bytearray):  # type: ignore[attr-defined]
            new.data = bytearray(node.data)  # type: ignore[attr-defined]
        node.snap = new


def clone_tree(root: Dir, fds: dict[int, Fd], zip_from: Any, zip_to: Any,
           link: bool = False) -> tuple[Dir, dict[int, Fd]]:
    """A copy of a tree and its fd table, without recursion (a deep tree must not exhaust
    Python's stack): shared nodes are kept, scratch file contents copied, and file data
    that is ``zip_from`` becomes ``zip_to``. What a node's copy only keeps for the host
    (the directory above it, how many descriptors hold a file) is recounted from the
    tree and the fd table. ``link``: ``root`` is a snapshot (it never changes), so each
    copy starts as unchanged since it (its ``snap``)."""
    copies: dict[int, Node] = {}

    def make(node: Node) -> Node:
        new = copy_node(node)
        if link:
            new.snap = node
        if type(node) is File:
            new.opens = 0  # type: ignore[attr-defined]
            data = node.data
            if data is zip_from:
                new.data = zip_to  # type: ignore[attr-defined]
            elif isinstance(data, bytearray):
                new.data = bytearray(data)  # type: ignore[attr-defined]
        copies[id(node)] = new
        return new

    def walk(top: Node) -> Node:
        new_top = make(top)
        stack = [(top, new_top)]
        while stack:
            node, new = stack.pop()
            if type(node) is not Dir:
                continue
            entries: dict[str, Node] = {}
            for name, child in node.entries.items():
                if child.shared:
                    entries[name] = child
                    continue
                c = copies.get(id(child))
                if c is None:
                    c = make(child)
                    stack.append((child, c))
                c.parent = new
                entries[name] = c
            new.entries = entries  # type: ignore[attr-defined]
        return new_top

    new_root = walk(root)
    new_fds: dict[int, Fd] = {}
    for fd, f in fds.items():
        node = f.node
        if node.shared:
            target = node
        else:
            target = copies.get(id(node)) or walk(node)
            if type(target) is File and target.dev == DEV_SCRATCH:
                target.opens += 1
        g = object.__new__(Fd)
        for slot in Fd.__slots__:
            setattr(g, slot, getattr(f, slot))
        g.node = target
        g.listing = None  # (a cache)
        new_fds[fd] = g
    return new_root, new_fds  # type: ignore[return-value]
