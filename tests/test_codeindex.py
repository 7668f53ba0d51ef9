"""The list of the runtime's genuine compiled modules (wasm_exec/codeindex.py)."""

import base64
import hashlib
import io
import json
import zipfile

import pytest

from wasm_exec import codeindex
from wasm_exec.runtime import EngineSettings, get_image


def H(data):
    return hashlib.blake2b(data, digest_size=16)


def make_wasm_with_data(segments):
    """A tiny WebAssembly module with only a data section (active segments)."""
    def leb(n):
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def sleb(n):
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            done = (n == 0 and not b & 0x40) or (n == -1 and b & 0x40)
            out.append(b | (0 if done else 0x80))
            if done:
                return bytes(out)

    body = leb(len(segments))
    for offset, data in segments:
        body += b"\x00\x41" + sleb(offset) + b"\x0b" + leb(len(data)) + data
    return b"\0asm\x01\0\0\0" + b"\x0b" + leb(len(body)) + body


def zip_bytes(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_module_names_of_library_files():
    assert codeindex.module_name("json/__init__.pyc") == "json"
    assert codeindex.module_name("json/decoder.pyc") == "json.decoder"
    assert codeindex.module_name("_sysconfigdata__wasi_wasm32-wasi.pyc") == \
        "_sysconfigdata__wasi_wasm32-wasi"
    assert codeindex.module_name("numpy/core/_methods.py") == "numpy.core._methods"
    assert codeindex.module_name("numpy-1.0.dist-info/METADATA") is None
    assert codeindex.module_name("a.b/c.pyc") is None


def test_zip_inside_data_segments_is_found_and_indexed():
    pyc = b"\x00" * 16 + b"payload-of-json"
    archive = zip_bytes({"json/__init__.pyc": pyc, "json/README": b"not code",
                         "re/_parser.py": b"x = 1\r\n"})
    # the zip split over two segments, with other data around it
    half = len(archive) // 2
    wasm = make_wasm_with_data([(100, b"junk"), (1000, archive[:half]),
                                (1000 + half, archive[half:]), (9000, b"PK\x05\x06tail")])
    memory = codeindex.initial_memory(wasm)
    assert memory[1000:1000 + len(archive)] == archive
    (found,) = codeindex.embedded_zips(memory)
    entries = codeindex.index_zips([found])
    digest = H(b"payload-of-json").digest()
    assert entries[digest] == "json"
    # sources are listed raw and with normalised line endings
    assert entries[H(b"x = 1\r\n").digest()] == "re._parser"
    assert entries[H(b"x = 1\n").digest()] == "re._parser"
    assert len(entries) == 3


def test_not_a_module_is_refused():
    with pytest.raises(ValueError, match="not a WebAssembly module"):
        codeindex.initial_memory(b"PK\x03\x04 something else")


def test_index_is_cached_and_a_damaged_cache_is_rebuilt(tmp_path):
    pyc = b"\x01" * 16 + b"code"
    wasm = tmp_path / "rt.wasm"
    wasm.write_bytes(make_wasm_with_data([(64, zip_bytes({"m.pyc": pyc}))]))
    first = codeindex.load_or_build(wasm, [], "ab" * 32)
    (cache,) = tmp_path.glob("*.codeindex.json")
    assert json.loads(cache.read_text())["index"] == first
    assert first["names"] == "m"
    assert base64.b64decode(first["digests"]) == H(b"code").digest()
    cache.write_text("{not json")
    assert codeindex.load_or_build(wasm, [], "ab" * 32) == first
    # another build of the runtime does not reuse the list
    other = json.loads(cache.read_text())
    other["build"] = "cd" * 32
    cache.write_text(json.dumps(other))
    assert codeindex.load_or_build(wasm, [], "ab" * 32) == first


def test_minimal_runtime_lists_its_standard_library():
    index = get_image(EngineSettings()).code_index()
    names = index["names"].split("\n")
    assert {"json", "json.decoder", "re", "subprocess", "encodings.utf_8"} <= set(names)
    assert len(base64.b64decode(index["digests"])) == 16 * len(names)
