"""Pre-initialise a WebAssembly module: run its start-up once, bake the result into it.

The published runtime is the interpreter *after* start-up: its linear memory becomes the
module's data segments and its mutable globals their initial values, so every new
instance begins booted, and wasmtime maps that memory copy-on-write from the compiled
file (a new interpreter costs an instantiation; idle ones share every page they have not
written). The idea is that of a wizer-style snapshot; this is the small part of it we
need, on wasmtime-py alone.

Steps (:func:`snapshot`): parse the module's sections; export every defined global under
a private name (wasmtime-py can only read exported globals); instantiate that copy with
the caller's linker set-up; run the caller's start-up; read memory and globals; write the
original module back with (1) globals' initialisers set to what they held, (2) one
memory's data as active segments over its non-zero runs, (3) the memory's minimum raised
to its size then, and (4) the named exports (``_initialize``) removed.

Only what a C toolchain emits for a single-memory, non-shared module is supported (active
data segments, no passive ones); anything else is refused with a clear error.
"""

from __future__ import annotations

import ctypes
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import wasmtime

MAGIC = b"\x00asm\x01\x00\x00\x00"
SEC_IMPORT, SEC_MEMORY, SEC_GLOBAL, SEC_EXPORT, SEC_DATA, SEC_DATACOUNT = 2, 5, 6, 7, 11, 12
EXPORT_GLOBAL = 0x03
PAGE = 65536
# zero runs shorter than this stay inside one data segment (fewer, larger segments)
MERGE_GAP = 256
GLOBAL_PREFIX = "__preinit_global_"


class PreinitError(Exception):
    """The module has a shape this pre-initialiser does not handle."""


# ------------------------------------------------------------------ LEB128

def uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise PreinitError("truncated module")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    def bytes(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise PreinitError("truncated module")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def name(self) -> str:
        return self.bytes(self.u32()).decode("utf-8")

    def const_expr(self) -> bytes:
        """The raw bytes of a constant expression, its final 0x0B included."""
        start = self.pos
        while True:
            op = self.byte()
            if op == 0x0B:
                return self.data[start:self.pos]
            if op in (0x41, 0x42):  # i32.const / i64.const
                self.u32()  # (a signed LEB has the same length rules)
            elif op == 0x43:
                self.bytes(4)
            elif op == 0x44:
                self.bytes(8)
            elif op == 0x23:  # global.get
                self.u32()
            else:
                raise PreinitError(f"unsupported opcode 0x{op:02x} in a constant expression")

    def limits(self) -> tuple[int, int, int | None]:
        flags = self.byte()
        if flags & ~0x01:
            raise PreinitError(f"memory/table limits flags 0x{flags:02x} (shared or 64-bit) "
                               "are not supported")
        lo = self.u32()
        hi = self.u32() if flags & 1 else None
        return flags, lo, hi


@dataclass
class _Module:
    header: bytes
    sections: list[tuple[int, bytes]]

    def section(self, sid: int) -> bytes | None:
        for s, body in self.sections:
            if s == sid:
                return body
        return None

    def replace(self, sid: int, body: bytes | None) -> None:
        for i, (s, _) in enumerate(self.sections):
            if s == sid:
                if body is None:
                    del self.sections[i]
                else:
                    self.sections[i] = (sid, body)
                return
        if body is not None:
            raise PreinitError(f"section {sid} is missing")

    def encode(self) -> bytes:
        out = bytearray(self.header)
        for sid, body in self.sections:
            out.append(sid)
            out += uleb(len(body))
            out += body
        return bytes(out)


def _parse(data: bytes) -> _Module:
    if data[:8] != MAGIC:
        raise PreinitError("not a WebAssembly 1.0 module")
    r = _Reader(data, 8)
    sections: list[tuple[int, bytes]] = []
    while r.pos < r.end:
        sid = r.byte()
        size = r.u32()
        sections.append((sid, r.bytes(size)))
    return _Module(data[:8], sections)


def _imported_globals(mod: _Module) -> int:
    body = mod.section(SEC_IMPORT)
    if body is None:
        return 0
    r = _Reader(body)
    count = 0
    for _ in range(r.u32()):
        r.name()
        r.name()
        kind = r.byte()
        if kind == 0x00:
            r.u32()
        elif kind == 0x01:
            r.byte()
            r.limits()
        elif kind == 0x02:
            r.limits()
        elif kind == 0x03:
            r.byte()
            r.byte()
            count += 1
        else:
            raise PreinitError(f"unknown import kind {kind}")
    return count


def _globals(mod: _Module) -> list[tuple[int, int, bytes]]:
    """(value type, mutability, init expression) of each defined global."""
    body = mod.section(SEC_GLOBAL)
    if body is None:
        return []
    r = _Reader(body)
    return [(r.byte(), r.byte(), r.const_expr()) for _ in range(r.u32())]


def _exports(mod: _Module) -> list[tuple[str, int, int]]:
    body = mod.section(SEC_EXPORT)
    if body is None:
        return []
    r = _Reader(body)
    return [(r.name(), r.byte(), r.u32()) for _ in range(r.u32())]


def _encode_exports(exports: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(uleb(len(exports)))
    for name, kind, index in exports:
        raw = name.encode("utf-8")
        out += uleb(len(raw)) + raw + bytes([kind]) + uleb(index)
    return bytes(out)


def _const(valtype: int, value: Any) -> bytes:
    if valtype == 0x7F:  # i32
        v = int(value) & 0xFFFFFFFF
        return b"\x41" + sleb(v - (1 << 32) if v >= 1 << 31 else v) + b"\x0b"
    if valtype == 0x7E:  # i64
        v = int(value) & (1 << 64) - 1
        return b"\x42" + sleb(v - (1 << 64) if v >= 1 << 63 else v) + b"\x0b"
    if valtype == 0x7D:
        return b"\x43" + struct.pack("<f", float(value)) + b"\x0b"
    if valtype == 0x7C:
        return b"\x44" + struct.pack("<d", float(value)) + b"\x0b"
    raise PreinitError(f"a mutable global of value type 0x{valtype:02x} cannot be baked")


def _check_data(mod: _Module) -> None:
    body = mod.section(SEC_DATA)
    if body is None:
        return
    r = _Reader(body)
    for _ in range(r.u32()):
        flag = r.u32()
        if flag != 0:
            raise PreinitError(f"data segment kind {flag} (passive or for another memory) is "
                               "not supported")
        r.const_expr()
        r.bytes(r.u32())


def _data_segments(memory: bytes) -> tuple[bytes, int]:
    """Active data segments covering every non-zero run of ``memory`` (zero gaps shorter
    than MERGE_GAP stay inside a segment)."""
    runs = re.finditer(rb"[^\x00]+(?:\x00{1,%d}[^\x00]+)*" % (MERGE_GAP - 1), memory)
    out = bytearray()
    count = 0
    for m in runs:
        out += b"\x00\x41" + sleb(m.start()) + b"\x0b" + uleb(m.end() - m.start()) + m.group()
        count += 1
    return uleb(count) + bytes(out), count


def snapshot(wasm: bytes, *, instantiate: Callable[[wasmtime.Module, wasmtime.Engine],
                                                    tuple[wasmtime.Store, wasmtime.Instance]],
             start: Callable[[wasmtime.Store, wasmtime.Instance], None],
             drop_exports: tuple[str, ...] = ("_initialize",),
             drop_custom: Callable[[str], bool] = lambda name: name.startswith(".debug")
             ) -> bytes:
    """The module ``wasm`` pre-initialised by ``start``.

    ``instantiate(module, engine)`` links and instantiates (the caller's imports);
    ``start(store, instance)`` runs the start-up. Returns the new module's bytes.
    """
    mod = _parse(wasm)
    _check_data(mod)
    mems = mod.section(SEC_MEMORY)
    if mems is None:
        raise PreinitError("the module defines no memory")
    r = _Reader(mems)
    if r.u32() != 1:
        raise PreinitError("only a module with exactly one memory is supported")
    flags, _, hi = r.limits()
    base = _imported_globals(mod)
    globals_ = _globals(mod)
    exports = _exports(mod)
    memory_name = next((n for n, k, i in exports if k == 0x02 and i == 0), None)
    if memory_name is None:
        raise PreinitError("the module does not export its memory")

    # an instrumented copy that exports every mutable global
    extra = [(f"{GLOBAL_PREFIX}{i}", EXPORT_GLOBAL, base + i)
             for i, (_, mut, _) in enumerate(globals_) if mut]
    probe = _Module(mod.header, list(mod.sections))
    probe.replace(SEC_EXPORT, _encode_exports(exports + extra))
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, probe.encode())
    store, instance = instantiate(module, engine)
    start(store, instance)
    ex = instance.exports(store)
    memory = ex[memory_name]
    assert isinstance(memory, wasmtime.Memory)
    values: dict[int, Any] = {}
    for name, _, index in extra:
        g = ex[name]
        assert isinstance(g, wasmtime.Global)
        values[index - base] = g.value(store)
    size = memory.data_len(store)
    ptr = ctypes.addressof(memory.data_ptr(store).contents)
    image = ctypes.string_at(ptr, size)
    del memory, ex, instance
    store.close()

    # the original module, booted
    gbody = bytearray(uleb(len(globals_)))
    for i, (vt, mut, init) in enumerate(globals_):
        gbody += bytes([vt, mut]) + (_const(vt, values[i]) if i in values else init)
    data, count = _data_segments(image)
    pages = size // PAGE
    mbody = uleb(1) + bytes([flags]) + uleb(pages) + (uleb(hi) if hi is not None else b"")
    out = _Module(mod.header, [])
    for sid, body in mod.sections:
        if sid == 0:
            nr = _Reader(body)
            if drop_custom(nr.name()):
                continue
        if sid == SEC_GLOBAL:
            body = bytes(gbody)
        elif sid == SEC_MEMORY:
            body = mbody
        elif sid == SEC_EXPORT:
            body = _encode_exports([e for e in exports if e[0] not in drop_exports])
        elif sid == SEC_DATA:
            body = data
        elif sid == SEC_DATACOUNT:
            body = uleb(count)
        out.sections.append((sid, body))
    if mod.section(SEC_DATA) is None:
        raise PreinitError("the module has no data section")
    return out.encode()

