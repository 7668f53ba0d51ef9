"""The ``wasm-exec`` command line: run code, a REPL, an MCP server, build the runtime,
show its state, remove it.

Every bad option value ends the command with one line on stderr that names the option and
what it accepts, and exit status 2 (no traceback). Long steps (building, fetching and
precompiling a runtime, the benchmark) say what they do on stderr as they go: a line per
step with its time is all they need, so no progress-bar library is a dependency.
"""

from __future__ import annotations

import argparse
import codeop
import json
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import runtime
from ._version import __version__
from .errors import WasmExecError
from .options import (
    OneLineParser,
    default_import_arg,
    explain,
    file_size_arg,
    fuel_arg,
    limits_from_args,
    module_arg,
    name_arg,
    port_arg,
    positive_int_arg,
    size_arg,
    timeout_arg,
)

T = TypeVar("T")


def _executor(args: argparse.Namespace):  # noqa: ANN202 - lazy import keeps --help fast
    from .executor import PythonExecExecutor

    return PythonExecExecutor(whitelisted_imports=args.allow or [],
                              default_imports=dict(args.default_import or []),
                              limits=limits_from_args(args), runtime=args.runtime)


def _read_code(args: argparse.Namespace) -> str:
    if args.code is not None:
        return args.code
    if args.file in (None, "-"):
        return sys.stdin.read()
    try:
        return Path(args.file).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {args.file!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{args.file!r} is not UTF-8 text") from None


def _globals(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"--globals: cannot read {text[1:]!r}: {e.strerror}") from None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--globals: expected a JSON object or @file.json; {e}") from None
    if not isinstance(value, dict):
        raise UsageError("--globals: expected a JSON object (such as '{\"n\": 3}') or "
                         f"@file.json; got a JSON {type(value).__name__}")
    return value


class UsageError(Exception):
    """A bad option value found after parsing: one line, exit status 2."""


def _echo(stream: Any) -> Any:
    """An output callback that writes each piece to ``stream`` as it arrives."""
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()
    return write


def _run(args: argparse.Namespace) -> int:
    code, globals_dict = _read_code(args), _globals(args.globals)
    live = not args.json  # (the output is streamed as the code prints it)
    try:
        with _executor(args) as ex:
            r = interruptible(ex, lambda: ex.execute(
                code, globals_dict=globals_dict, return_globals=args.ret or None,
                on_stdout=_echo(sys.stdout) if live else None,
                on_stderr=_echo(sys.stderr) if live else None))
    except WasmExecError as e:
        print(f"wasm-exec: {explain(e)}", file=sys.stderr)
        return 2
    if args.json:
        print(r.model_dump_json(indent=2))
    else:
        if not r.success and r.exit_code is None:
            sys.stderr.write(r.traceback or "")
            if not r.traceback or r.limit:
                sys.stderr.write((r.error or "failed") + "\n")
        for name, value in r.globals.items():
            print(f"{name} = {json.dumps(value, ensure_ascii=False)}")
        for name, err in r.globals_errors.items():
            print(f"{name}: {err}", file=sys.stderr)
    if r.exit_code is not None:
        return r.exit_code  # sys.exit(n) in the code
    return 0 if r.success else 1


def _repl(args: argparse.Namespace) -> int:
    try:
        import readline  # noqa: F401 - line editing and history where available
    except ImportError:
        pass
    probe: list[str] = []
    asked = threading.Thread(target=lambda: probe.append(guest_python_version(args.runtime)),
                             daemon=True)
    asked.start()  # (alongside the executor's own start: both run wasm without the GIL)
    try:
        ex = _executor(args)
    except WasmExecError as e:
        print(f"wasm-exec: {explain(e)}", file=sys.stderr)
        return 2
    asked.join()
    version = probe[0] if probe else "?"
    print(f"wasm-exec {__version__} sandbox REPL: CPython {version} on WebAssembly "
          f"({ex.runtime} runtime). State persists between inputs; Ctrl-C stops a running "
          "input (its changes are rolled back), Ctrl-D quits.")
    try:
        while True:
            lines: list[str] = []
            prompt = ">>> "
            while True:
                try:
                    line = input(prompt)
                except EOFError:
                    print()
                    return 0
                except KeyboardInterrupt:
                    print("\nKeyboardInterrupt")
                    lines = []
                    break
                lines.append(line)
                source = "\n".join(lines)
                try:
                    complete = codeop.compile_command(source, "<input>", "exec") is not None
                except (SyntaxError, ValueError, OverflowError):
                    complete = True  # let the sandbox report it
                if complete and (len(lines) == 1 or line.strip() == ""):
                    break
                prompt = "... "
            if not lines or not "\n".join(lines).strip():
                continue
            source = "\n".join(lines)
            r = interruptible(ex, lambda src=source: ex.execute(
                src, on_stdout=_echo(sys.stdout), on_stderr=_echo(sys.stderr)))
            if r.limit == "cancelled":
                print("KeyboardInterrupt: the input was stopped and rolled back; the "
                      "sandbox's state is as after the previous input", file=sys.stderr)
                continue
            if r.value is not None:
                print(r.value.text)
            if r.exit_code is not None:
                return r.exit_code  # exit() ends the session, as in Python's REPL
            if not r.success:
                if r.limit:
                    print(f"[stopped by the {r.limit} limit] {r.error}", file=sys.stderr)
                else:
                    sys.stderr.write(r.traceback or (r.error or "") + "\n")
            sys.stdout.flush()
    finally:
        ex.close()


def interruptible(ex: Any, call: Callable[[], T]) -> T:
    """Run ``call`` (an ``ex.execute``) on a worker thread; Ctrl-C stops the running call
    (``ex.cancel()``: it is rolled back, the interpreter keeps its earlier state) and the
    call's result is returned as usual (``limit="cancelled"``)."""
    box: list[Any] = []
    done = threading.Event()  # (not Thread.join: an interrupted join can misreport)

    def work() -> None:
        try:
            box.append((True, call()))
        except BaseException as e:  # handed to the caller's thread below
            box.append((False, e))
        finally:
            done.set()

    threading.Thread(target=work, name="wasm-exec-cli-call", daemon=True).start()
    while True:
        try:
            if done.wait(0.2):
                break
        except KeyboardInterrupt:
            ex.cancel()
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def guest_python_version(profile: str) -> str:
    """The runtime's own ``sys.version`` (its first word), asked of a throwaway interpreter
    allowed ``sys`` (about 0.3 s)."""
    from .executor import PythonExecExecutor

    try:
        with PythonExecExecutor(whitelisted_imports=["sys"], runtime=profile,
                                rollback=False) as probe:
            r = probe.execute("import sys\nv = sys.version.split()[0]", return_globals=["v"])
        return str(r.globals.get("v", "?"))
    except WasmExecError:
        return "?"


def _build_runtime(args: argparse.Namespace) -> int:
    try:
        runtime.install(Path(args.dest) if args.dest else None, profile=args.profile,
                        precompile_all=not args.default_variant_only,
                        log=lambda m: print(f"[build-runtime] {m}", file=sys.stderr,
                                            flush=True))
    except WasmExecError as e:
        print(f"[build-runtime] error: {explain(e)}", file=sys.stderr)
        return 1
    return 0


def _clean(args: argparse.Namespace) -> int:
    from . import clean

    base = Path(args.dir) if args.dir else runtime.default_install_dir()
    try:
        entries = clean.plan(base, keep_runtimes=args.keep_runtimes, profiles=args.profile)
    except ValueError as e:
        raise UsageError(f"--profile: {e}") from None
    if not entries:
        print(f"nothing to remove: {base} does not exist or is empty")
        return 0
    verb = "would remove" if args.dry_run else "removing"
    for e in entries:
        print(f"{verb if e.remove else 'keeping':12} {clean.human(e.size):>6}  {e.path}: "
              f"{e.what}")
    freed = sum(e.size for e in entries if e.remove)
    if not args.dry_run:
        clean.remove(entries)
        try:
            base.rmdir()  # only when it is empty now
        except OSError:
            pass
    print(f"{'would free' if args.dry_run else 'freed'} {clean.human(freed)} in {base}")
    return 0


def _mcp(args: argparse.Namespace) -> int:
    try:
        from . import mcp_server
    except ImportError as e:
        raise UsageError(f"the mcp command needs the MCP SDK ({e.name} is missing); "
                         "install it with: pip install 'wasm-exec[mcp]'") from None
    return mcp_server.main(args)


def _info(args: argparse.Namespace) -> int:
    pin = runtime.load_pin(args.profile)
    info: dict[str, Any] = {"wasm_exec": __version__, "wasmtime": runtime.wasmtime_version(),
                            "profile": pin.profile,
                            "pinned_file": pin.file, "pinned_sha256": pin.sha256,
                            "search_dirs": [str(d) for d in runtime.search_dirs()]}
    try:
        path = runtime.find_runtime(pin)
        info["runtime"] = str(path)
        try:
            runtime.verify(path, pin)
            info["verified"] = True
        except runtime.RuntimeVerificationError as e:
            info["verified"] = False
            info["verify_error"] = str(e)
        for fuel in (True, False):
            s = runtime.EngineSettings(fuel=fuel)
            cw = runtime.compiled_path(path, s, pin)
            info[f"precompiled_fuel_{'on' if fuel else 'off'}"] = str(cw) if cw.is_file() else None
        info["engine_settings"] = {"fuel": "per executor", "epoch_interruption": True,
                                   "cranelift_opt_level": "speed"}
    except runtime.RuntimeNotFoundError as e:
        info["runtime"] = None
        info["error"] = str(e)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:24} {v}")
    return 0 if info.get("runtime") and info.get("verified") else 1


def _bench(rest: list[str]) -> int:
    from .bench import main as bench_main

    return bench_main(rest)


def add_policy_args(p: argparse.ArgumentParser) -> None:
    """The allow-list, default imports, limits and runtime options (run, repl, mcp)."""
    p.add_argument("--allow", action="append", metavar="MODULE", type=module_arg,
                   help="a module the code may import (repeatable)")
    p.add_argument("--default-import", action="append", metavar="ALIAS=MODULE",
                   type=default_import_arg,
                   help="bind ALIAS to MODULE before the code runs (repeatable)")
    p.add_argument("--fuel", type=fuel_arg, default=...,
                   help="WebAssembly instructions per call (default 2e11), or 'none' to turn "
                   "metering off (faster; the timeout still applies)")
    p.add_argument("--timeout", type=timeout_arg, metavar="SECONDS",
                   help="wall-clock seconds per call (default 30)")
    p.add_argument("--memory", type=size_arg, metavar="SIZE",
                   help="memory cap, e.g. 256M or 1G (default 512M)")
    p.add_argument("--runtime", default="minimal", choices=runtime.profiles(),
                   help="runtime: minimal (default) or scientific (numpy, pandas...)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="wasm-exec",
        description="Run Python in a persistent CPython-on-WebAssembly sandbox.")
    p.add_argument("--version", action="version",
                   version=f"wasm-exec {__version__} (wasmtime {runtime.wasmtime_version()})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run code (-c CODE, a FILE, or - for stdin)")
    src = r.add_mutually_exclusive_group()
    src.add_argument("-c", dest="code", help="the code to run")
    src.add_argument("file", nargs="?", help="a file to run, or - for stdin")
    add_policy_args(r)
    r.add_argument("--globals", help="JSON object of globals, or @file.json")
    r.add_argument("--return", dest="ret", action="append", metavar="NAME", type=name_arg,
                   help="a global to print after the run (repeatable)")
    r.add_argument("--json", action="store_true", help="print the whole result as JSON")
    r.set_defaults(func=_run)

    rp = sub.add_parser("repl", help="an interactive session in one sandbox")
    add_policy_args(rp)
    rp.set_defaults(func=_repl)

    b = sub.add_parser("build-runtime", help="build (default runtime, from pinned sources: "
                       "about 4 minutes on 2 cores, once) or fetch (scientific) the runtime, "
                       "verify and precompile it")
    b.add_argument("--dest", help="install directory (default: $WASM_EXEC_RUNTIME_DIR, else "
                   "~/.cache/wasm-exec)")
    b.add_argument("--profile", default="minimal", choices=runtime.profiles(),
                   help="which runtime: minimal (default: CPython 3.13 built here; 72M on "
                   "disk with both compiled variants, plus a 597M build tree that 'wasm-exec "
                   "clean --keep-runtimes' removes) or scientific (numpy, pandas, "
                   "matplotlib...; a 98 MB download, 751M on disk with both variants, a few "
                   "minutes to precompile)")
    b.add_argument("--default-variant-only", action="store_true",
                   help="precompile only the fuel-metered variant (the one for --fuel none "
                   "is then compiled on first use, and announced; saves 26M of disk, or "
                   "273M for scientific)")
    b.add_argument("--all-variants", action="store_true",
                   help=argparse.SUPPRESS)  # (the default now; kept for old scripts)
    b.set_defaults(func=_build_runtime)

    c = sub.add_parser("clean", help="remove the runtimes, their compiled modules and the "
                       "build tree (says what and how much; --dry-run to only look)")
    c.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    c.add_argument("--keep-runtimes", action="store_true",
                   help="keep the runtimes this version uses (and their compiled modules); "
                   "remove the build tree and anything stale")
    c.add_argument("--profile", action="append", choices=runtime.profiles(),
                   help="only this runtime (repeatable; the build tree belongs to minimal)")
    c.add_argument("--dir", help="the runtime directory (default: $WASM_EXEC_RUNTIME_DIR, "
                   "else ~/.cache/wasm-exec)")
    c.set_defaults(func=_clean)

    m = sub.add_parser("mcp", help="serve the sandbox to MCP clients (stdio, or streamable "
                       "HTTP on loopback); needs wasm-exec[mcp]")
    add_mcp_args(m)
    m.set_defaults(func=_mcp)

    sub.add_parser("bench", help="benchmark against native CPython (prints a table, writes "
                   "JSON; progress on stderr); see 'wasm-exec bench --help'")

    i = sub.add_parser("info", help="where the runtime is, whether it is verified and compiled")
    i.add_argument("--json", action="store_true")
    i.add_argument("--profile", default="minimal", choices=runtime.profiles())
    i.set_defaults(func=_info)
    return p


def add_mcp_args(m: argparse.ArgumentParser) -> None:
    m.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                   help="stdio (default: the client starts this command) or http (streamable "
                   "HTTP, served at http://HOST:PORT/mcp)")
    m.add_argument("--host", default="127.0.0.1",
                   help="address to listen on with --transport http (default 127.0.0.1, "
                   "loopback only; the server has no authentication of its own)")
    m.add_argument("--port", type=port_arg, default=8000,
                   help="port for --transport http (default 8000; 0 picks a free one)")
    add_policy_args(m)
    m.add_argument("--max-sessions", type=positive_int_arg("--max-sessions"), default=16,
                   metavar="N",
                   help="sandboxes alive at once; beyond that the least recently used idle "
                   "one is released (default 16)")
    m.add_argument("--idle-timeout", type=timeout_arg, default=1800.0, metavar="SECONDS",
                   help="release a sandbox idle this long (default 1800)")
    m.add_argument("--max-file-size", type=file_size_arg, default=8 * 2**20, metavar="SIZE",
                   help="largest file write_file / read_file move, e.g. 512K or 16M "
                   "(default 8M; the sandbox's file space, a quarter of --memory, also "
                   "bounds what it holds)")


def _show_progress() -> None:
    """The library's own progress lines (a runtime precompiled on first use) on stderr."""
    log = logging.getLogger("wasm_exec")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("wasm-exec: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _show_progress()
    try:
        if argv[:1] == ["bench"]:
            return _bench(argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except UsageError as e:
        print(f"wasm-exec: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wasm-exec: interrupted", file=sys.stderr)
        return 130
    except (WasmExecError, ValueError, OSError) as e:
        print(f"wasm-exec: {explain(e)}", file=sys.stderr)
        return 2
