"""Code blocks of README.md, for the tests that run them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in _BLOCK.findall(README.read_text()) if kind == lang]


def python_blocks(*, rustic: bool = False, scientific: bool = False,
                  mcp: bool = False, smolagents: bool = False) -> list[str]:
    """Python blocks; those that need Rustic AI, the scientific runtime, the MCP SDK or
    smolagents say so on their first line (``# requires: rustic`` / ``scientific`` /
    ``mcp`` / ``smolagents``)."""
    out = []
    for b in blocks("python"):
        is_rustic = b.startswith("# requires: rustic")
        is_scientific = b.startswith("# requires: scientific")
        is_mcp = b.startswith("# requires: mcp")
        is_smol = b.startswith("# requires: smolagents")
        if (is_rustic == rustic and is_scientific == scientific and is_mcp == mcp
                and is_smol == smolagents):
            out.append(b)
    return out
