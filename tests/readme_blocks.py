"""Code blocks of README.md, for the tests that run them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in _BLOCK.findall(README.read_text()) if kind == lang]


def python_blocks(*, rustic: bool) -> list[str]:
    return [b for b in blocks("python") if b.startswith("# requires: rustic") == rustic]
