"""The package's version, read from one source: the ``version`` in ``pyproject.toml``.

An installed package reads it from its metadata (which the build copied from
``pyproject.toml``); a source checkout imported without installing (``PYTHONPATH``)
reads its own ``pyproject.toml``, so the version always names the code that runs.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

DIST_NAME = "wasm-exec"


def _from_checkout() -> str | None:
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text("utf-8")).get("project", {})
    except (OSError, ValueError):
        return None
    if project.get("name") != DIST_NAME or not isinstance(project.get("version"), str):
        return None
    return str(project["version"])


def _read() -> str:
    found = _from_checkout()
    if found is not None:
        return found
    try:
        return importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


__version__: str = _read()
