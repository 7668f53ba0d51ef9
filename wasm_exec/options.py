"""Command-line option values: each parser checks one option and, when the value is bad,
says in one line which option it is and what it accepts (the ranges come from the Limits
and Policy models). Shared by ``wasm-exec``, ``wasm-exec bench`` and ``wasm-exec mcp``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NoReturn

from .config import Limits, Policy


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (the option and what it accepts) and
    exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def explain(exc: BaseException, *, fields: bool = True) -> str:
    """One line for an error: pydantic's validation text (several lines, a web address)
    becomes "field: what is wrong"."""
    from pydantic import ValidationError

    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ValidationError):
        cause = cause.__cause__
    if isinstance(cause, ValidationError):
        parts = []
        for err in cause.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if not isinstance(x, int))
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where and fields else msg)
        return "; ".join(parts)
    lines = [ln.strip() for ln in str(exc).splitlines()
             if ln.strip() and "errors.pydantic.dev" not in ln]
    return " ".join(lines) or type(exc).__name__


def _bounds(field: str) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in Limits.model_fields[field].metadata:
        lo = getattr(m, "ge", getattr(m, "gt", lo))
        hi = getattr(m, "le", hi)
    return lo, hi


def _checked(field: str, value: Any, accepts: str, text: str) -> Any:
    try:
        Limits(**{field: value})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {accepts}; got {text!r}") from None
    return value


def _fmt_size(n: float | None) -> str:
    n = int(n or 0)
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def fuel_arg(text: str) -> int | None:
    """``--fuel``: a number of instructions, or none/off."""
    lo, _ = _bounds("fuel")
    accepts = (f"a number of WebAssembly instructions from {int(lo or 0):,} to 2**64 - 1 "
               "(e.g. 5e9), or 'none' to turn metering off")
    t = text.strip().lower().replace("_", "").replace(",", "")
    if t in ("none", "off"):
        return None
    try:
        value = int(t) if t.isdigit() else int(float(t))
        if not t.isdigit() and float(t) != value:
            raise ValueError
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected {accepts}; got {text!r}") from None
    return int(_checked("fuel", value, accepts, text))


def timeout_arg(text: str) -> float:
    """``--timeout``: seconds, more than 0."""
    _, hi = _bounds("timeout_seconds")
    accepts = f"a number of seconds, more than 0 and at most {hi:g}"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {accepts}; got {text!r}") from None
    return float(_checked("timeout_seconds", value, accepts, text))


def size_arg(text: str) -> int:
    """``--memory``: bytes, or a size with K, M or G (powers of 1024)."""
    lo, hi = _bounds("memory_bytes")
    accepts = (f"a size such as 256M or 1G (K, M, G: powers of 1024; a plain number is "
               f"bytes), from {_fmt_size(lo)} to {_fmt_size(hi)}")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if t and t[-1] in units:
            value = int(float(t[:-1]) * units[t[-1]])
        else:
            value = int(t)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected {accepts}; got {text!r}") from None
    return int(_checked("memory_bytes", value, accepts, text))


def file_size_arg(text: str) -> int:
    """``--max-file-size``: bytes, or a size with K, M or G, from 1K to 256M."""
    accepts = ("a size such as 512K or 16M (K, M, G: powers of 1024; a plain number is "
               "bytes), from 1K to 256M")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        value = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, OverflowError):
        value = -1
    if not 1 << 10 <= value <= 256 << 20:
        raise argparse.ArgumentTypeError(f"expected {accepts}; got {text!r}")
    return value


def module_arg(text: str) -> str:
    """``--allow``: a module name."""
    try:
        Policy(whitelisted_imports=[text])
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"expected a module name such as json or xml.etree.ElementTree; "
            f"{explain(e, fields=False)}") from None
    return text


def default_import_arg(text: str) -> tuple[str, str]:
    """``--default-import``: ALIAS=MODULE."""
    alias, sep, module = text.partition("=")
    try:
        if not sep:
            raise ValueError(f"got {text!r}")
        Policy(default_imports={alias.strip(): module.strip()})
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"expected ALIAS=MODULE, such as np=numpy; {explain(e, fields=False)}"
        ) from None
    return alias.strip(), module.strip()


def name_arg(text: str) -> str:
    """``--return``: a global's name."""
    if not text.isidentifier():
        raise argparse.ArgumentTypeError(f"expected the name of a global (an identifier); "
                                         f"got {text!r}")
    return text


def limits_from_args(args: argparse.Namespace) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if args.fuel is not ...:  # (... : not given; None: metering off)
        limits["fuel"] = args.fuel
    if args.timeout is not None:
        limits["timeout_seconds"] = args.timeout
    if args.memory is not None:
        limits["memory_bytes"] = args.memory
    return limits


def port_arg(text: str) -> int:
    """``--port``: 0 to 65535."""
    try:
        value = int(text)
        if not 0 <= value <= 65535:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a TCP port from 0 to 65535 (0: any free one); got {text!r}") from None
    return value


def positive_int_arg(option: str) -> Callable[[str], int]:
    """A whole number of at least 1 (``option`` names it in the help)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
            if value < 1:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number of at least 1; got {text!r}") from None
        return value

    return parse
