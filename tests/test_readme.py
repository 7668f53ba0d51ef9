"""Every code block in the README runs (issue 4)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .readme_blocks import README, blocks, python_blocks

ROOT = README.parent


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_block_runs(index):
    code = python_blocks()[index]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.scientific
@pytest.mark.parametrize("index", range(len(python_blocks(scientific=True))))
def test_scientific_python_block_runs(index):
    from wasm_exec.errors import WasmExecError
    from wasm_exec.runtime import EngineSettings, load_runtime

    try:
        load_runtime(EngineSettings(fuel=True), "scientific")
    except WasmExecError as e:
        pytest.skip(f"the scientific runtime is not installed: {e}")
    code = python_blocks(scientific=True)[index]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def test_cli_block_runs():
    (cli,) = [b for b in blocks("bash") if b.startswith("wasm-exec run")]
    assert shutil.which("wasm-exec", path=_cli_env()["PATH"])
    proc = subprocess.run(["bash", "-e", "-c", cli], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=_cli_env())
    assert proc.returncode == 0, proc.stderr
    assert "2\n" in proc.stdout and "total = 6" in proc.stdout and "stopped, exit 1" in proc.stdout


@pytest.mark.slow
def test_quick_start_first_command():
    # the README's first quick-start command, verbatim (it reuses .venv when it exists)
    (quick,) = [b for b in blocks("bash") if b.startswith("# 1.")]
    first = [line for line in quick.splitlines() if line.startswith("bash build_runtime.sh")]
    proc = subprocess.run(["bash", "-e", "-c", first[0]], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "the answer is 42" in proc.stdout
    # the second command is `bash .ci/run`: CI itself
    assert "bash .ci/run" in quick
