"""The ``wasm-exec`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import runtime


def _build_runtime(args: argparse.Namespace) -> int:
    try:
        runtime.install(Path(args.dest) if args.dest else None,
                        precompile_all=args.all_variants,
                        log=lambda m: print(f"[build-runtime] {m}", flush=True))
    except Exception as e:  # shown to a person at a terminal: message, not traceback
        print(f"[build-runtime] error: {e}", file=sys.stderr)
        return 1
    return 0


def _info(args: argparse.Namespace) -> int:
    pin = runtime.load_pin()
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
    except runtime.RuntimeNotFoundError as e:
        info["runtime"] = None
        info["error"] = str(e)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:24} {v}")
    return 0 if info.get("runtime") and info.get("verified") else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wasm-exec", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build-runtime", help="fetch, verify and precompile the runtime")
    b.add_argument("--dest", help="install directory (default: see 'wasm-exec info')")
    b.add_argument("--all-variants", action="store_true",
                   help="also precompile the fuel-off engine variant")
    b.set_defaults(func=_build_runtime)
    i = sub.add_parser("info", help="where the runtime is, whether it is verified and compiled")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
