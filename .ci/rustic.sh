#!/usr/bin/env bash
# CI for the Rustic AI integration (Rustic AI needs Python >= 3.13; the main suite runs on
# the project's own Python and skips tests/rustic there).
# Creates .venv313 if missing (wasm-exec[test,ray]: rusticai-core, rusticai-ray and
# rusticai-redis; runtime checked/built), makes sure redis-server is installed (the Ray
# guild test starts its own Redis and Ray cluster on loopback), then runs tests/rustic and
# fails if a test failed or if the tests were skipped.
# Set PYTHON313=/path/to/python3.13 to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv313
rustic_spec="rusticai-core>=1.4.1,<2"

find_python313() {
    local root candidate
    if [[ -n "${PYTHON313:-}" ]]; then
        if "$PYTHON313" -c 'import sys; assert sys.version_info >= (3, 13)' 2>/dev/null; then
            echo "$PYTHON313"
        else
            echo "[rustic] PYTHON313=$PYTHON313 is not a working Python >= 3.13" >&2
        fi
        return
    fi
    if command -v pyenv >/dev/null 2>&1 && root="$(pyenv root 2>/dev/null)"; then
        for candidate in $(ls -d "$root"/versions/3.13*/bin/python3.13 2>/dev/null | sort -V -r); do
            if "$candidate" -c 'import sys; assert sys.version_info >= (3, 13)' 2>/dev/null; then
                echo "$candidate"
                return
            fi
        done
    fi
    if candidate="$(command -v python3.13 2>/dev/null)" \
            && "$candidate" -c 'import sys; assert sys.version_info >= (3, 13)' 2>/dev/null; then
        echo "$candidate"
        return
    fi
}

if [[ ! -x "$venv/bin/python" ]]; then
    python313="$(find_python313)"
    if [[ -z "$python313" ]]; then
        echo "[rustic] no Python 3.13 found (looked in \$PYTHON313, \$(pyenv root)/versions/3.13*," \
             "and python3.13 on PATH); Rustic AI needs Python >= 3.13: install one" \
             "(e.g. pyenv install 3.13) or set PYTHON313" >&2
        exit 1
    fi
    echo "[rustic] using $python313"
else
    python313="$venv/bin/python"
fi

# creates the venv if missing, installs wasm-exec[test,ray] (editable: Ray and Rustic's Ray
# engine and Redis messaging with it), checks/builds the runtime
started=$(date +%s)
PYTHON="$python313" bash build_runtime.sh --venv "$venv" --extras test,ray
echo "[rustic] installing $rustic_spec into $venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$rustic_spec"
echo "[rustic] environment ready in $(( $(date +%s) - started )) s"
bash .ci/services.sh
export WASM_EXEC_REQUIRE_REDIS=1

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
WASM_EXEC_REQUIRE_RUSTIC=1 "$venv/bin/python" -m pytest tests/rustic -q -rs -p no:cacheprovider \
    2>&1 | tee "$log" || status=$?
if [[ $status -ne 0 ]]; then
    echo "[rustic] tests failed (pytest exit status $status)" >&2
    exit "$status"
fi
summary="$(tail -n 1 "$log")"
if [[ "$summary" != *passed* || "$summary" == *skipped* ]]; then
    echo "[rustic] tests/rustic did not all run (summary: $summary)" >&2
    exit 1
fi
echo "[rustic] ok: $summary"
