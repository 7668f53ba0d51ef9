"""The command line (issues 4 and 16): commands, exit statuses, messages."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import wasm_exec
from wasm_exec import runtime


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


# ---------------------------------------------------------------- issue 16: options
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args, option, accepts", [
    (["--memory", "lots"], "--memory", "a size such as 256M"),
    (["--memory", "1k"], "--memory", "from 32M to 4G"),
    (["--memory", "8G"], "--memory", "from 32M to 4G"),
    (["--fuel", "abc"], "--fuel", "or 'none' to turn metering off"),
    (["--fuel", "5"], "--fuel", "from 1,000,000 to 2**64 - 1"),
    (["--fuel", "1e30"], "--fuel", "from 1,000,000 to 2**64 - 1"),
    (["--timeout", "-1"], "--timeout", "more than 0 and at most 86400"),
    (["--timeout", "soon"], "--timeout", "a number of seconds"),
    (["--runtime", "huge"], "--runtime", "choose from 'minimal', 'scientific'"),
    (["--allow", "os;rm"], "--allow", "is not a module name"),
    (["--allow", "gc"], "--allow", "cannot be allowed"),
    (["--default-import", "np"], "--default-import", "ALIAS=MODULE"),
    (["--default-import", "1x=json"], "--default-import", "not a plain identifier"),
    (["--globals", "[1, 2]"], "--globals", "expected a JSON object"),
    (["--globals", "{oops"], "--globals", "expected a JSON object or @file.json"),
    (["--globals", "@/nonexistent/g.json"], "--globals", "cannot read"),
    (["--return", "1x"], "--return", "the name of a global"),
])
def test_bad_option_value_is_one_line_exit_2(args, option, accepts):
    p = cli("run", "-c", "print(1)", *args)
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert option in lines[0] and accepts in lines[0]
    assert "Traceback" not in p.stderr and "http" not in p.stderr


@pytest.mark.parametrize("args, accepts", [
    (["mcp", "--port", "http"], "a TCP port from 0 to 65535"),
    (["mcp", "--max-sessions", "0"], "a whole number of at least 1"),
    (["mcp", "--max-file-size", "1T"], "from 1K to 256M"),
    (["mcp", "--max-file-size", "10"], "from 1K to 256M"),
    (["mcp", "--transport", "carrier-pigeon"], "choose from 'stdio', 'http'"),
    (["clean", "--profile", "huge"], "choose from 'minimal', 'scientific'"),
    (["build-runtime", "--profile", "huge"], "choose from 'minimal', 'scientific'"),
    (["bench", "--repeat", "none"], "a whole number of at least 1"),
    (["frobnicate"], "invalid choice"),
])
def test_other_commands_bad_values_one_line(args, accepts):
    p = cli(*args)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
    assert accepts in p.stderr and "Traceback" not in p.stderr


def test_missing_file_is_one_line():
    p = cli("run", "/nonexistent/agent.py")
    assert p.returncode == 2 and p.stderr == ("wasm-exec: cannot read '/nonexistent/agent.py': "
                                              "No such file or directory\n")


def test_good_values_are_accepted():
    p = cli("run", "-c", "print('ok')", "--fuel", "5e9", "--memory", "64M", "--timeout",
            "2.5", "--default-import", "js=json")
    assert p.returncode == 0 and p.stdout == "ok\n", p.stderr


# ---------------------------------------------------------------- version
def _pyproject_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_version_has_one_source():
    assert wasm_exec.__version__ == _pyproject_version()
    p = cli("--version")
    assert p.returncode == 0
    assert p.stdout == (f"wasm-exec {_pyproject_version()} "
                        f"(wasmtime {runtime.wasmtime_version()})\n")


# ---------------------------------------------------------------- the REPL
def test_repl_banner_names_the_runtime_python():
    from wasm_exec import PythonExecExecutor

    with PythonExecExecutor(whitelisted_imports=["sys"]) as ex:
        guest = ex.execute("import sys\nv = sys.version.split()[0]",
                           return_globals=["v"]).globals["v"]
    p = cli("repl", stdin="")
    first = p.stdout.splitlines()[0]
    assert f"CPython {guest} on WebAssembly (minimal runtime)" in first
    assert f"wasm-exec {wasm_exec.__version__}" in first


def _read_until(proc: subprocess.Popen, marker: bytes, seen: bytearray) -> None:
    """Read the process's stdout into ``seen`` until ``marker`` is in it (at most 120 s)."""
    import select

    deadline = time.monotonic() + 120
    while marker not in seen:
        assert time.monotonic() < deadline, bytes(seen)
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, bytes(seen)  # (the REPL ended early)
            seen += chunk


def test_repl_ctrl_c_cancels_the_call_and_keeps_state():
    proc = subprocess.Popen([sys.executable, "-m", "wasm_exec", "repl", "--timeout", "120"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    seen = bytearray()
    try:
        _read_until(proc, b"\n>>> ", seen)  # the banner, then the first prompt
        proc.stdin.write(b"x = 41\n")
        proc.stdin.flush()
        _read_until(proc, b">>> >>> ", seen)  # x = 41 ran: the REPL waits for input again
        proc.stdin.write(b"while True: x += 1\n")
        proc.stdin.flush()
        time.sleep(2)  # (the loop runs: its deadline is two minutes away)
        proc.send_signal(signal.SIGINT)
        proc.stdin.write(b"x + 1\n")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0  # the REPL survived (and did not wait 120 s)
        out = (bytes(seen) + proc.stdout.read()).decode()
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    assert "KeyboardInterrupt: the input was stopped and rolled back" in err
    assert "Traceback" not in err
    assert re.search(r"^(>>> )*42$", out, re.M), out  # x is as before the stopped input


# ---------------------------------------------------------------- where runtimes live
def test_runtimes_never_live_in_the_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(runtime.ENV_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert runtime.search_dirs() == [tmp_path / "wasm-exec"]
    assert runtime.default_install_dir() == tmp_path / "wasm-exec"
    monkeypatch.setenv(runtime.ENV_DIR, str(tmp_path / "rt"))
    assert runtime.search_dirs() == [tmp_path / "rt", tmp_path / "wasm-exec"]
    assert runtime.default_install_dir() == tmp_path / "rt"
    with pytest.raises(wasm_exec.RuntimeNotFoundError) as e:
        runtime.find_runtime(runtime.load_pin("scientific"))
    assert str(ROOT) not in str(e.value) and "wasm-exec build-runtime" in str(e.value)


# ---------------------------------------------------------------- clean
def _fake_runtime_dir(base: Path) -> dict[str, Path]:
    """A runtime directory shaped like a real one (small files), with stale parts, a
    stranger's file and a link out of it."""
    pin = runtime.load_pin("minimal")
    current = base / pin.subdir
    current.mkdir(parents=True)
    (current / "python.wasm").write_bytes(b"\0asm" * 1000)
    (current / "python313.zip").write_bytes(b"z" * 5000)
    (current / "python.00000000000000000000.cwasm").write_bytes(b"c" * 9000)  # stale
    (current / "licenses").mkdir()
    (base / "minimal-0123456789abcdef").mkdir()  # another build's runtime
    (base / "minimal-0123456789abcdef" / "python.wasm").write_bytes(b"old" * 1000)
    (base / "scientific").mkdir()
    (base / "scientific" / "python-snapshot.wasm").write_bytes(b"s" * 20000)
    (base / "build" / "sources").mkdir(parents=True)
    (base / "build" / "sources" / "cpython.tar.xz").write_bytes(b"t" * 50000)
    (base / ".cwasm-x1y2z3").write_bytes(b"partial")
    (base / "notes.txt").write_text("mine")
    outside = base.parent / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    (base / "scientific-link").symlink_to(outside)
    return {"current": current, "outside": outside}


def test_clean_dry_run_removes_nothing(tmp_path):
    base = tmp_path / "rt"
    _fake_runtime_dir(base)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    p = cli("clean", "--dry-run", "--dir", str(base))
    assert p.returncode == 0, p.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert "would remove" in p.stdout and re.search(r"would free \d", p.stdout)
    assert "notes.txt: not made by wasm-exec: left alone" in p.stdout


def test_clean_keep_runtimes_removes_build_tree_and_stale(tmp_path):
    base = tmp_path / "rt"
    made = _fake_runtime_dir(base)
    p = cli("clean", "--keep-runtimes", "--dir", str(base))
    assert p.returncode == 0, p.stderr
    current = made["current"]
    assert (current / "python.wasm").is_file() and (current / "python313.zip").is_file()
    assert not (current / "python.00000000000000000000.cwasm").exists()
    assert (base / "scientific" / "python-snapshot.wasm").is_file()
    for gone in ("build", "minimal-0123456789abcdef", ".cwasm-x1y2z3"):
        assert not (base / gone).exists(), gone
    assert (base / "notes.txt").is_file() and (made["outside"] / "precious.txt").is_file()
    assert re.search(r"removing +\S+ +\S+/build: the build tree", p.stdout)
    freed = re.search(r"^freed (\S+) in ", p.stdout, re.M)
    assert freed and freed.group(1) != "0B"


def test_clean_everything_and_one_profile(tmp_path):
    base = tmp_path / "rt"
    made = _fake_runtime_dir(base)
    p = cli("clean", "--profile", "scientific", "--dir", str(base))
    assert p.returncode == 0 and not (base / "scientific").exists()
    assert (made["current"] / "python.wasm").is_file() and (base / "build").is_dir()
    p = cli("clean", "--dir", str(base))
    assert p.returncode == 0, p.stderr
    left = sorted(x.name for x in base.iterdir())
    assert left == ["notes.txt", "scientific-link"]  # a stranger's file, a link (as a link)
    assert (made["outside"] / "precious.txt").read_text() == "keep me"


def test_clean_sizes_match_du(tmp_path):
    from wasm_exec import clean

    base = tmp_path / "rt"
    _fake_runtime_dir(base)
    du = subprocess.run(["du", "-s", "-B1", str(base / "build")], capture_output=True,
                        text=True, check=True)
    assert clean.disk_usage(base / "build") == int(du.stdout.split()[0])


# ---------------------------------------------------------------- compiled variants
def _runtime_copy(tmp_path: Path, *, without_fuel_off: bool) -> Path:
    """A runtime directory whose minimal runtime links to the installed one's files."""
    pin = runtime.load_pin("minimal")
    wasm = runtime.find_runtime(pin)
    folder = tmp_path / "rt" / pin.subdir
    folder.mkdir(parents=True)
    fuel_off = runtime.compiled_path(wasm, runtime.EngineSettings(fuel=False), pin).name
    for f in wasm.parent.iterdir():
        if without_fuel_off and f.name == fuel_off:
            continue
        if f.name.endswith(".cwasm") and f.name not in {
                runtime.compiled_path(wasm, s, pin).name for s in runtime.variants()}:
            continue
        (folder / f.name).symlink_to(f)
    return folder


@pytest.mark.slow
def test_fuel_off_variant_is_announced_when_first_compiled(tmp_path):
    folder = _runtime_copy(tmp_path, without_fuel_off=True)
    env = dict(os.environ, WASM_EXEC_RUNTIME_DIR=str(folder.parent))
    p = subprocess.run([sys.executable, "-m", "wasm_exec", "run", "--fuel", "none", "-c",
                        "print('ran')"], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0 and p.stdout == "ran\n", p.stderr
    assert "wasm-exec: precompiling the minimal runtime" in p.stderr
    assert "fuel metering off" in p.stderr and re.search(r"precompiled \S+ in \d+ s", p.stderr)


@pytest.mark.slow
def test_build_runtime_compiles_every_variant(tmp_path):
    folder = _runtime_copy(tmp_path, without_fuel_off=True)
    env = dict(os.environ, WASM_EXEC_RUNTIME_DIR=str(folder.parent))
    p = subprocess.run([sys.executable, "-m", "wasm_exec", "build-runtime"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""  # (progress goes to stderr)
    assert "build: up to date" in p.stderr and "fuel metering off" in p.stderr
    p = subprocess.run([sys.executable, "-m", "wasm_exec", "run", "--fuel", "none", "-c",
                        "print('ran')"], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0 and p.stdout == "ran\n" and "precompiling" not in p.stderr


# ---------------------------------------------------------------- installing
def test_build_extra_pins_the_toolchain_the_build_wants():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["build"] == [f"ziglang=={runtime.build_recipe('minimal').ziglang}"]
    assert any(r.startswith("mcp") for r in extras["mcp"])
    assert set(extras["mcp"]) <= set(extras["test"])  # CI runs the MCP tests


@pytest.mark.slow
def test_installs_as_a_package(tmp_path):
    """A wheel built from a copy of the checkout holds the code and the runtime's recipe
    (never a runtime); installed elsewhere, it finds the runtime in the user cache."""
    import shutil
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "*.egg-info", "build", ".*_cache", "*.wasm",
        "*.cwasm", "*.codeindex.json", "scientific", "licenses", "bench-results*.json"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                        "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    (wheel,) = (tmp_path / "dist").glob("wasm_exec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("wasm_exec/_spec/pins.json", "wasm_exec/_spec/runner.py",
                   "wasm_exec/_spec/reactor.c", "wasm_exec/py.typed",
                   "wasm_exec/mcp_server.py", "wasm_exec/clean.py"):
        assert needed in names, needed
    assert not [n for n in names if n.endswith((".wasm", ".cwasm", ".zip"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "wasm-exec = wasm_exec.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                        "--disable-pip-version-check", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    env = dict(os.environ, PYTHONPATH=str(site))
    p = subprocess.run([sys.executable, "-c", "import wasm_exec, sys; "
                        "print(wasm_exec.__file__); print(wasm_exec.__version__)"],
                       capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    where, version = p.stdout.split()
    assert where.startswith(str(site)) and version == _pyproject_version()
    p = subprocess.run([sys.executable, "-m", "wasm_exec", "run", "-c", "print(6 * 7)"],
                       capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert p.returncode == 0 and p.stdout == "42\n", p.stderr
