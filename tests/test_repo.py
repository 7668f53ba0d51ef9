"""The repository itself: no build outputs committed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="not a git checkout")
def test_no_large_or_built_files_are_tracked():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    tracked = [f for f in files if f]
    too_big = [f for f in tracked if (ROOT / f).is_file() and (ROOT / f).stat().st_size > 1 << 20]
    built = [f for f in tracked if f.endswith((".wasm", ".cwasm", ".whl", ".zip"))]
    assert too_big == [] and built == []
