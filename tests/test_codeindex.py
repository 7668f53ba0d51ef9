"""The list of the runtime's genuine compiled modules (wasm_exec/codeindex.py)."""

import base64
import hashlib
import io
import json
import zipfile

from wasm_exec import codeindex
from wasm_exec.runtime import EngineSettings, load_runtime


def H(data):
    return hashlib.blake2b(data, digest_size=16)


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


def test_zip_is_indexed():
    pyc = b"\x00" * 16 + b"payload-of-json"
    archive = zipfile.ZipFile(io.BytesIO(zip_bytes(
        {"json/__init__.pyc": pyc, "json/README": b"not code", "re/_parser.py": b"x = 1\r\n"})))
    entries = codeindex.index_zips([archive])
    assert entries[H(b"payload-of-json").digest()] == "json"
    # sources are listed raw and with normalised line endings
    assert entries[H(b"x = 1\r\n").digest()] == "re._parser"
    assert entries[H(b"x = 1\n").digest()] == "re._parser"
    assert len(entries) == 3


def test_index_is_cached_and_a_damaged_cache_is_rebuilt(tmp_path):
    pyc = b"\x01" * 16 + b"code"
    wasm = tmp_path / "rt.wasm"
    wasm.write_bytes(b"\0asm\1\0\0\0")
    lib = tmp_path / "lib.zip"
    lib.write_bytes(zip_bytes({"m.pyc": pyc}))
    first = codeindex.load_or_build(wasm, [lib], "ab" * 32)
    (cache,) = tmp_path.glob("*.codeindex.json")
    assert json.loads(cache.read_text())["index"] == first
    assert first["names"] == "m"
    assert base64.b64decode(first["digests"]) == H(b"code").digest()
    cache.write_text("{not json")
    assert codeindex.load_or_build(wasm, [lib], "ab" * 32) == first
    # another build of the runtime does not reuse the list
    other = json.loads(cache.read_text())
    other["build"] = "cd" * 32
    cache.write_text(json.dumps(other))
    assert codeindex.load_or_build(wasm, [lib], "ab" * 32) == first


def test_minimal_runtime_lists_its_standard_library():
    index = load_runtime(EngineSettings()).code_index()
    names = index["names"].split("\n")
    assert {"json", "json.decoder", "re", "subprocess", "encodings.utf_8"} <= set(names)
    assert len(base64.b64decode(index["digests"])) == 16 * len(names)
