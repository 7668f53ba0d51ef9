"""The one atomic file write that image files, state stores, parked agents and the
runtime's caches share."""

from __future__ import annotations

import pytest

from wasm_exec.atomic import write_atomically


def test_the_whole_file_replaces_the_old_one(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    assert write_atomically(target, [b"ab", b"", b"cd"], prefix=".x-", fsync=True) == 4
    assert target.read_bytes() == b"abcd"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def parts():
        yield b"half"
        raise RuntimeError("the writer failed")

    with pytest.raises(RuntimeError):
        write_atomically(target, parts())
    with pytest.raises(TypeError):
        write_atomically(target, ["not bytes"])  # type: ignore[list-item]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
