"""A file system's state as plain JSON data, for an interpreter image saved to a file,
and back (images.py writes and reads the file). Reading treats the data as untrusted:
counts, sizes and names are checked, and everything it brings is charged to the scratch
budget again."""

from __future__ import annotations

import base64
from typing import Any

from .fsnodes import (
    DEV_DEVICES,
    DEV_RO,
    DEV_SCRATCH,
    Dir,
    Fd,
    File,
    FSState,
    Node,
)
from .vfs import (
    DEFAULT_MAX_FDS,
    NAME_MAX,
    NODE_COST,
    PREOPEN_FD,
    SCRATCH_ROOT,
    MemoryFS,
)
from .wasi import (
    DIR_RIGHTS,
    FDFLAGS_ALL,
    FILE_RIGHTS,
    R_FD_ALLOCATE,
    R_FD_FILESTAT_SET_SIZE,
    R_FD_WRITE,
    RIGHTS_ALL,
)
from .zipfs import (
    zip_overlay,
)

# ------------------------------------------------------------------ saving to a file
# An FSState as plain JSON data (for an interpreter image saved to a file) and back. Only
# node kinds of this module, numbers, strings and bytes are written; reading builds the
# same kinds again (nothing in the file names a type or a function to call).

def encode_fs_state(state: FSState, fs: MemoryFS) -> dict[str, Any]:
    shared = _shared_paths(fs)
    index: dict[int, int] = {}
    nodes: list[Node] = []

    def ref(node: Node) -> Any:
        if node.shared:
            path = shared.get(id(node))
            if path is None:
                raise ValueError("a read-only library file could not be named")
            return {"shared": path}
        at = index.get(id(node))
        if at is None:
            at = index[id(node)] = len(nodes)
            nodes.append(node)
        return at

    root = ref(state.root)
    fds = {}
    opens: dict[int, int] = {}  # (counted here: a snapshot's copies may keep an old count)
    for f in state.fds.values():
        if type(f.node) is File and f.node.dev == DEV_SCRATCH:
            opens[id(f.node)] = opens.get(id(f.node), 0) + 1
    for fd, f in state.fds.items():
        fds[str(fd)] = {"node": ref(f.node), "pos": f.pos, "flags": f.flags, "base": f.base,
                        "inh": f.inh, "preopen": f.preopen}
    out: list[Any] = []
    i = 0
    while i < len(nodes):  # (nodes grows as directories name their children)
        node = nodes[i]
        i += 1
        entry: dict[str, Any] = {"ino": node.ino, "dev": node.dev, "writable": node.writable,
                                 "times": [node.atim, node.mtim, node.ctim]}
        if type(node) is Dir:
            entry["kind"] = "dir"
            entry["removed"] = node.removed
            entry["hidden"] = node.hidden
            entry["entries"] = {name: ref(child) for name, child in node.entries.items()}
        elif type(node) is File:
            entry["kind"] = "file"
            entry["opens"] = opens.get(id(node), 0)
            entry["linked"] = node.linked
            if node.member is not None:
                raise ValueError("an unloaded archive member outside the library")
            data = node.data
            if data is None:
                entry["data"] = None
            elif data is state.zip_data:
                entry["data"] = {"zip": True}
            else:
                entry["data"] = {"b64": base64.b64encode(bytes(data)).decode("ascii"),
                                 "mutable": isinstance(data, bytearray)}
        else:
            raise ValueError(f"unknown node kind {type(node).__name__}")
        out.append(entry)
    return {"root": root, "nodes": out, "fds": fds, "next_ino": state.next_ino}


def max_image_nodes(scratch_bytes: int, max_fds: int = DEFAULT_MAX_FDS) -> int:
    """How many nodes a saved file system can hold: what its scratch budget pays for,
    directories removed while a descriptor holds them, and the skeleton."""
    return scratch_bytes // NODE_COST + max_fds + 64


def decode_fs_state(data: dict[str, Any], fs: MemoryFS) -> FSState:
    """The FSState that ``encode_fs_state`` wrote, for ``fs``; ValueError when the data is
    not one. Nothing the data says about the host's own bookkeeping is believed: every
    number is range-checked, the tree's shape is rebuilt from the entries (each node under
    exactly one name, no loops), only the scratch device is writable and only it holds
    contents of the file's own, descriptors have no more rights than opening the node
    would give, and the scratch usage, the open counts, which nodes are linked and the
    parents are recounted: a file cannot lift ``fs``'s budget or loop the tree."""
    raw = data["nodes"]
    most = max_image_nodes(fs.scratch_bytes, fs.max_fds)
    if not isinstance(raw, list) or len(raw) > most:
        raise ValueError(f"nodes (at most {most} for this scratch budget)")
    made = [_decode_node(e, fs) for e in raw]
    refs = _Refs(made, zip_overlay(fs._zip, fs._overlays))
    root = refs.get(data["root"], in_tree=True)
    if type(root) is not Dir or root.dev != DEV_RO:
        raise ValueError("root")
    seen = _link_tree(root, raw, made, refs)
    fds = _decode_fds(data["fds"], fs, root, refs)
    used = _recount(made, seen, fds, root, fs)
    next_ino = _number(data["next_ino"], 1)
    if made and next_ino <= max(n.ino for n in made):
        raise ValueError("next_ino")
    return FSState(root, fds, used, next_ino, fs._zip)


def _number(value: Any, low: int = 0, high: int = 1 << 63) -> int:
    """``value`` when it is an int in [low, high); else ValueError."""
    if type(value) is not int or not low <= value < high:
        raise ValueError("a number out of range")
    return value


def _decode_node(e: Any, fs: MemoryFS) -> Node:
    """One node of the image, its flags checked (its entries are linked later)."""
    if not isinstance(e, dict):
        raise ValueError("node")
    dev = _number(e["dev"])
    if dev not in (DEV_RO, DEV_SCRATCH, DEV_DEVICES):
        raise ValueError("device")
    writable = e["writable"]
    if type(writable) is not bool:
        raise ValueError("writable")
    ino = _number(e["ino"], 1)
    node: Node
    if e["kind"] == "dir":
        # only the scratch device is writable, and all of it
        if writable != (dev == DEV_SCRATCH):
            raise ValueError("writable")
        node = Dir(ino, dev, writable, 0, None)
        if e["hidden"] is not False or type(e["removed"]) is not bool:
            raise ValueError("a directory's flags")
    elif e["kind"] == "file":
        d = e["data"]
        if d is None:
            # a device (/dev/null): no contents
            if dev != DEV_DEVICES:
                raise ValueError("a file without contents outside /dev")
            content: Any = None
        elif writable != (dev == DEV_SCRATCH):
            raise ValueError("writable")
        elif isinstance(d, dict) and d.get("zip") is True:
            if dev != DEV_RO:
                raise ValueError("the library zip as a writable file")
            content = fs._zip
        elif isinstance(d, dict) and isinstance(d.get("b64"), str):
            # contents of the file's own are scratch files (charged to the budget);
            # read-only ones come from the runtime, never from an image
            if dev != DEV_SCRATCH or d.get("mutable") is not True:
                raise ValueError("file contents outside the scratch area")
            content = bytearray(base64.b64decode(d["b64"], validate=True))
        else:
            raise ValueError("file contents")
        node = File(ino, dev, writable, 0, content)
        _number(e["opens"], 0, 1 << 20)  # (recounted by _recount)
        if type(e["linked"]) is not bool:
            raise ValueError("linked")
    else:
        raise ValueError("node kind")
    times = e["times"]
    if not isinstance(times, list) or len(times) != 3:
        raise ValueError("times")
    node.atim, node.mtim, node.ctim = (_number(t) for t in times)
    return node


class _Refs:
    """What a reference in the image names: a node of its own (an index) or a library
    file of this runtime (``{"shared": [path parts]}``, only outside the scratch tree)."""

    def __init__(self, made: list[Node], overlay: Dir | None) -> None:
        self.made = made
        self.overlay = overlay

    def get(self, r: Any, in_tree: bool) -> Node:
        if isinstance(r, dict):
            if in_tree:
                raise ValueError("a library file inside the scratch tree")
            return self._shared(r.get("shared"))
        return self.made[_number(r, 0, len(self.made))]

    def _shared(self, path: Any) -> Node:
        node: Any = self.overlay
        if node is None or not isinstance(path, list):
            raise ValueError("shared path")
        for part in path:
            if type(node) is not Dir or not isinstance(part, str) or part not in node.entries:
                raise ValueError("a library file of the image is not in this runtime")
            node = node.entries[part]
        return node  # type: ignore[no-any-return]


def _link_tree(root: Dir, raw: list[Any], made: list[Node], refs: _Refs) -> set[int]:
    """Rebuild the tree from the directories' entries; returns the ids of the nodes in it.
    Every node is reached once from the root (so no cycles, no directory in two places,
    no file under two names); parents are those that hold them, never what the file
    says."""
    seen = {id(root)}
    walk = [(root, raw[made.index(root)])]
    while walk:
        parent, e = walk.pop()
        entries = e["entries"]
        if not isinstance(entries, dict):
            raise ValueError("entries")
        for name, r in entries.items():
            # (a name the guest could have made: UTF-8 text without NUL; a lone surrogate
            # would make every listing of its directory fail in the host)
            if (not isinstance(name, str) or not name or "/" in name or "\0" in name
                    or name in (".", "..") or not _utf8_name(name)):
                raise ValueError(f"a file name ({name[:40]!r})")
            child = refs.get(r, in_tree=True)
            if id(child) in seen:
                raise ValueError("a file or directory under more than one name, or a "
                                 "directory in two places (a loop)")
            seen.add(id(child))
            child.parent = parent
            if type(child) is Dir:
                walk.append((child, raw[_number(r)]))
            parent.entries[name] = child
    return seen


def _decode_fds(items: Any, fs: MemoryFS, root: Dir, refs: _Refs) -> dict[int, Fd]:
    """The open descriptors, each with no more rights than path_open gives its node."""
    fds: dict[int, Fd] = {}
    if not isinstance(items, dict) or len(items) > fs.max_fds:
        raise ValueError("fds")
    for key, f in items.items():
        fd_number = int(key)
        _number(fd_number, PREOPEN_FD, 1 << 31)
        preopen = f["preopen"]
        node = refs.get(f["node"], in_tree=False)
        if preopen is not None and (fd_number != PREOPEN_FD or preopen != "/" or node is not root):
            raise ValueError("preopen")
        base, inh = _number(f["base"], 0, 1 << 64), _number(f["inh"], 0, 1 << 64)
        if type(node) is Dir:
            if base & ~DIR_RIGHTS or inh & ~RIGHTS_ALL:
                raise ValueError("a descriptor's rights")
        elif (base & ~FILE_RIGHTS or inh
              or (not node.writable and base & (R_FD_WRITE | R_FD_ALLOCATE
                                                | R_FD_FILESTAT_SET_SIZE))):
            raise ValueError("a descriptor's rights")
        fd = Fd(node, _number(f["flags"], 0, FDFLAGS_ALL + 1), base, inh, preopen)
        fd.pos = _number(f["pos"])
        fds[fd_number] = fd
    if fds.get(PREOPEN_FD) is None or fds[PREOPEN_FD].node is not root:
        raise ValueError("the preopened directory")
    return fds


def _recount(made: list[Node], seen: set[int], fds: dict[int, Fd], root: Dir,
             fs: MemoryFS) -> int:
    """What the host keeps for itself, recounted: which nodes are linked (in the tree),
    which directories were removed, how many descriptors hold each file; returns the
    bytes the scratch area holds (the tree's scratch nodes, and the files removed from it
    while a descriptor holds them: a removed directory gave its budget back already)."""
    for node in made:
        linked = id(node) in seen
        if type(node) is Dir:
            node.removed = not linked
        else:
            node.linked = linked  # type: ignore[attr-defined]
    for f in fds.values():
        if type(f.node) is File and f.node.dev == DEV_SCRATCH:
            f.node.opens += 1
    scratch_root: Any = root
    for part in SCRATCH_ROOT.strip("/").split("/"):
        scratch_root = scratch_root.entries.get(part) if type(scratch_root) is Dir else None
    held = {id(f.node): f.node for f in fds.values()}
    used = 0
    for node in made:
        if node.dev != DEV_SCRATCH or node is scratch_root:
            continue
        if id(node) in seen or (type(node) is File and id(node) in held):
            used += NODE_COST
            if type(node) is File:
                used += len(node.data)  # type: ignore[attr-defined]
    if used > fs.scratch_bytes:
        raise ValueError(f"the scratch files need {used} bytes, more than the budget of "
                         f"{fs.scratch_bytes}")
    return used


def _utf8_name(name: str) -> bool:
    """Whether ``name`` encodes as UTF-8 in at most NAME_MAX bytes."""
    try:
        return len(name.encode("utf-8")) <= NAME_MAX
    except UnicodeEncodeError:
        return False


def _shared_paths(fs: MemoryFS) -> dict[int, list[str]]:
    """id(node) -> its path in the process-wide read-only tree of ``fs``'s archives."""
    out: dict[int, list[str]] = {}
    top = zip_overlay(fs._zip, fs._overlays)
    if top is None:
        return out
    stack: list[tuple[Node, list[str]]] = [(top, [])]
    while stack:
        node, path = stack.pop()
        out[id(node)] = path
        if type(node) is Dir:
            for name, child in node.entries.items():
                stack.append((child, path + [name]))
    return out
