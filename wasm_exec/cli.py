"""The ``wasm-exec`` command line: run code, a REPL, build the runtime, show its state."""

from __future__ import annotations

import argparse
import codeop
import json
import sys
from pathlib import Path
from typing import Any

from . import runtime
from .errors import WasmExecError


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if args.fuel is not None:
        limits["fuel"] = None if args.fuel.lower() in ("none", "off") else int(args.fuel)
    if args.timeout is not None:
        limits["timeout_seconds"] = args.timeout
    if args.memory is not None:
        limits["memory_bytes"] = _size(args.memory)
    return limits


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def _executor(args: argparse.Namespace):  # noqa: ANN202 - lazy import keeps --help fast
    from .executor import PythonExecExecutor

    defaults = {}
    for item in args.default_import or []:
        alias, sep, module = item.partition("=")
        if not sep:
            raise SystemExit(f"--default-import expects ALIAS=MODULE, got {item!r}")
        defaults[alias] = module
    return PythonExecExecutor(whitelisted_imports=args.allow or [], default_imports=defaults,
                              limits=_limits(args), runtime=args.runtime)


def _read_code(args: argparse.Namespace) -> str:
    if args.code is not None:
        return args.code
    if args.file in (None, "-"):
        return sys.stdin.read()
    return Path(args.file).read_text(encoding="utf-8")


def _globals(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    value = json.loads(text)
    if not isinstance(value, dict):
        raise SystemExit("--globals must be a JSON object")
    return value


def _echo(stream: Any) -> Any:
    """An output callback that writes each piece to ``stream`` as it arrives."""
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()
    return write


def _run(args: argparse.Namespace) -> int:
    live = not args.json  # (the output is streamed as the code prints it)
    try:
        with _executor(args) as ex:
            r = ex.execute(_read_code(args), globals_dict=_globals(args.globals),
                           return_globals=args.ret or None,
                           on_stdout=_echo(sys.stdout) if live else None,
                           on_stderr=_echo(sys.stderr) if live else None)
    except WasmExecError as e:
        print(f"wasm-exec: {e}", file=sys.stderr)
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
    try:
        ex = _executor(args)
    except WasmExecError as e:
        print(f"wasm-exec: {e}", file=sys.stderr)
        return 2
    version = runtime.load_pin(ex.runtime).python_version
    print(f"wasm-exec sandbox REPL (CPython {version} on WebAssembly, {ex.runtime} runtime). "
          "State persists between inputs; Ctrl-D quits.")
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
            r = ex.execute(source, on_stdout=_echo(sys.stdout), on_stderr=_echo(sys.stderr))
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


def _build_runtime(args: argparse.Namespace) -> int:
    try:
        runtime.install(Path(args.dest) if args.dest else None, profile=args.profile,
                        precompile_all=args.all_variants,
                        log=lambda m: print(f"[build-runtime] {m}", flush=True))
    except WasmExecError as e:
        print(f"[build-runtime] error: {e}", file=sys.stderr)
        return 1
    return 0


def _info(args: argparse.Namespace) -> int:
    pin = runtime.load_pin(args.profile)
    info: dict[str, Any] = {"wasmtime": runtime.wasmtime_version(), "profile": pin.profile,
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


def _add_policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow", action="append", metavar="MODULE",
                   help="a module the code may import (repeatable)")
    p.add_argument("--default-import", action="append", metavar="ALIAS=MODULE",
                   help="bind ALIAS to MODULE before the code runs (repeatable)")
    p.add_argument("--fuel", help="fuel budget per call, or 'none' to turn metering off")
    p.add_argument("--timeout", type=float, help="wall-clock seconds per call")
    p.add_argument("--memory", help="memory cap, e.g. 256M or 1G")
    p.add_argument("--runtime", default="minimal", help="runtime profile: minimal or scientific")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wasm-exec",
        description="Run Python in a persistent CPython-on-WebAssembly sandbox.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run code (-c CODE, a FILE, or - for stdin)")
    src = r.add_mutually_exclusive_group()
    src.add_argument("-c", dest="code", help="the code to run")
    src.add_argument("file", nargs="?", help="a file to run, or - for stdin")
    _add_policy_args(r)
    r.add_argument("--globals", help="JSON object of globals, or @file.json")
    r.add_argument("--return", dest="ret", action="append", metavar="NAME",
                   help="a global to print after the run (repeatable)")
    r.add_argument("--json", action="store_true", help="print the whole result as JSON")
    r.set_defaults(func=_run)

    rp = sub.add_parser("repl", help="an interactive session in one sandbox")
    _add_policy_args(rp)
    rp.set_defaults(func=_repl)

    b = sub.add_parser("build-runtime", help="build (default runtime, from pinned sources: "
                       "about 6 minutes on 2 cores, once) or fetch (scientific) the runtime, "
                       "verify and precompile it")
    b.add_argument("--dest", help="install directory (default: see 'wasm-exec info')")
    b.add_argument("--profile", default="minimal", choices=runtime.profiles(),
                   help="which runtime: minimal (default: CPython 3.13 built here, about 18 "
                   "MB) or scientific (numpy, "
                   "pandas, matplotlib...; 160 MB download, 1-2 min to precompile)")
    b.add_argument("--all-variants", action="store_true",
                   help="also precompile the fuel-off engine variant")
    b.set_defaults(func=_build_runtime)

    sub.add_parser("bench", help="benchmark against native CPython (prints a table, writes "
                   "JSON); see 'wasm-exec bench --help'")

    i = sub.add_parser("info", help="where the runtime is, whether it is verified and compiled")
    i.add_argument("--json", action="store_true")
    i.add_argument("--profile", default="minimal", choices=runtime.profiles())
    i.set_defaults(func=_info)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as e:
        print(f"wasm-exec: {e}", file=sys.stderr)
        return 2
