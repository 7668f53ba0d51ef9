"""The command line (issue 4)."""

from __future__ import annotations

import json
import subprocess
import sys


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wasm_exec", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_run_code():
    p = cli("run", "-c", "print(6 * 7)")
    assert p.returncode == 0 and p.stdout == "42\n"


def test_run_failure_exit_status():
    p = cli("run", "-c", "import os")
    assert p.returncode == 1 and "Import of 'os' is not allowed" in p.stderr


def test_run_allow_globals_return_json(tmp_path):
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"v": [1, 2, 3]}))
    p = cli("run", "-c", "import math\nt = math.fsum(v)", "--allow", "math", "--globals",
            f"@{g}", "--return", "t", "--json")
    assert p.returncode == 0
    out = json.loads(p.stdout)
    assert out["success"] and out["globals"] == {"t": 6.0}


def test_run_stdin_and_default_import():
    p = cli("run", "-", "--default-import", "js=json", "--return", "s",
            stdin="s = js.dumps({'a': 1})\n")
    assert p.returncode == 0 and p.stdout == 's = "{\\"a\\": 1}"\n'


def test_run_limits():
    p = cli("run", "-c", "while True: pass", "--timeout", "0.5", "--fuel", "none")
    assert p.returncode == 1 and "Timeout" in p.stderr


def test_repl_keeps_state_and_echoes():
    p = cli("repl", stdin="x = 41\nx + 1\ndef f(a):\n    return a * 2\n\nf(x)\nimport os\n")
    assert p.returncode == 0
    assert "42" in p.stdout and "82" in p.stdout
    assert "Import of 'os' is not allowed" in p.stderr


def test_info():
    p = cli("info", "--json")
    info = json.loads(p.stdout)
    assert p.returncode == 0 and info["verified"] is True and info["runtime"]
