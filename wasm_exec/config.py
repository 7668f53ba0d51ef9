"""Limits and policy, as validated pydantic models."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigurationError
from .protocol import CallLimits

_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

MiB = 1024 * 1024
# the most fuel wasmtime can hold (an unsigned 64-bit count: a larger budget would wrap)
MAX_FUEL = 2**64 - 1

# modules the sandbox keeps for itself, with the reason shown to the user
RESERVED_MODULES = {
    "gc": "the sandbox runs the garbage collector itself (agent finalizers must never run "
          "inside the runner)",
    "_host": "it is the sandbox's channel to the host, kept by the runner: give the "
             "executor tools instead (PythonExecExecutor(tools={...}))",
}


class Limits(BaseModel):
    """Resource limits for one call. Every field can be overridden per call.

    >>> Limits(fuel=2_000_000_000, timeout_seconds=5).timeout_seconds
    5.0
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fuel: int | None = Field(
        default=200_000_000_000,
        ge=1_000_000,
        description="WebAssembly instruction budget for one call (None: no fuel metering; "
        "faster, and the timeout still applies).",
    )
    timeout_seconds: float = Field(default=30.0, gt=0, le=24 * 3600,
                                   description="Wall-clock deadline for one call.")
    memory_bytes: int = Field(default=512 * MiB, ge=32 * MiB, le=4096 * MiB,
                              description="Cap on the interpreter's linear memory.")
    max_output_bytes: int = Field(default=1 * MiB, ge=1024, le=1024 * MiB,
                                  description="Cap on stdout and on stderr, each, per call "
                                  "(the host holds that much per stream).")
    max_code_bytes: int = Field(default=4 * MiB, ge=1024, le=256 * MiB,
                                description="Largest accepted source code.")
    max_globals_bytes: int = Field(default=16 * MiB, ge=1024, le=1024 * MiB,
                                   description="Cap on globals passed in and on globals "
                                   "returned, each, as JSON (and on each tool call's "
                                   "arguments and result).")
    max_tool_calls: int = Field(default=10_000, ge=0, le=1_000_000_000,
                                description="Most calls of the host's tools one call may "
                                "make (each also costs fuel and its time counts against "
                                "the deadline).")

    @model_validator(mode="before")
    @classmethod
    def _no_bools(cls, data: Any) -> Any:
        # True and False are ints (and floats) to pydantic: `timeout_seconds=True` would be
        # a deadline of one second, a flag given to the wrong option
        if isinstance(data, dict):
            for name, value in data.items():
                if isinstance(value, bool):
                    raise ValueError(f"{name} must be a number, not {value!r}")
        return data

    @field_validator("fuel")
    @classmethod
    def _check_fuel(cls, value: int | None) -> int | None:
        if value is not None and value > MAX_FUEL:
            raise ValueError(f"fuel must be at most {MAX_FUEL} (2**64 - 1, the most "
                             "wasmtime can meter); use fuel=None to turn metering off")
        return value

    @classmethod
    def build(cls, limits: Limits | dict[str, Any] | None = None, *,
              fuel: int | None | str = "default", timeout_seconds: float | None = None,
              memory_bytes: int | None = None,
              max_output_bytes: int | None = None) -> Limits:
        """``limits`` (a Limits, a mapping or None) with the keyword shortcuts applied."""
        base = limits if isinstance(limits, Limits) else cls.model_validate(limits or {})
        return base.merged(cls.shortcuts(fuel=fuel, timeout_seconds=timeout_seconds,
                                         memory_bytes=memory_bytes,
                                         max_output_bytes=max_output_bytes))

    @staticmethod
    def shortcuts(*, fuel: int | None | str = "default", timeout_seconds: float | None = None,
                  memory_bytes: int | None = None,
                  max_output_bytes: int | None = None) -> dict[str, Any]:
        """The keyword shortcuts that were given, as overrides."""
        out: dict[str, Any] = {}
        if fuel != "default":
            out["fuel"] = fuel
        for name, value in (("timeout_seconds", timeout_seconds),
                            ("memory_bytes", memory_bytes),
                            ("max_output_bytes", max_output_bytes)):
            if value is not None:
                out[name] = value
        return out

    def merged(self, overrides: dict[str, Any] | None) -> Limits:
        """These limits with ``overrides`` applied (validated)."""
        if not overrides:
            return self
        data = self.model_dump()
        unknown = set(overrides) - set(data)
        if unknown:
            raise ValueError(f"unknown limit(s) {sorted(unknown)}; known: {sorted(data)}")
        data.update(overrides)
        return Limits.model_validate(data)

    def for_call(self, return_names: Sequence[str] = ()) -> CallLimits:
        """What the session enforces for one call under these limits. A reply may hold
        the values' cap, the error texts, and per returned name its key and message
        (each character at most 6 bytes as an escape)."""
        return CallLimits(
            fuel=self.fuel, timeout_seconds=self.timeout_seconds,
            max_output_bytes=self.max_output_bytes,
            max_reply_bytes=self.max_globals_bytes + 1_000_000
            + sum(6 * len(n) + 3_100 for n in return_names),
            max_globals_bytes=self.max_globals_bytes)


class Policy(BaseModel):
    """What the agent's code may import, and what is bound before its first call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    whitelisted_imports: frozenset[str] = frozenset()
    default_imports: dict[str, str] = Field(default_factory=dict)

    @field_validator("whitelisted_imports", mode="before")
    @classmethod
    def _coerce_modules(cls, value: Any) -> Any:
        if value is None:
            return frozenset()
        if isinstance(value, str):
            raise ValueError("whitelisted_imports must be a list or set of module names, "
                             f"not a string (did you mean [{value!r}]?)")
        return value

    @field_validator("whitelisted_imports")
    @classmethod
    def _check_modules(cls, value: frozenset[str]) -> frozenset[str]:
        for name in value:
            if not _MODULE_RE.match(name):
                raise ValueError(f"{name!r} is not a module name (expected e.g. 'json' or "
                                 "'xml.etree.ElementTree')")
            top = name.split(".")[0]
            if top in RESERVED_MODULES:
                raise ValueError(f"{name!r} cannot be allowed: {RESERVED_MODULES[top]}")
        return value

    @field_validator("default_imports", mode="before")
    @classmethod
    def _coerce_defaults(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("default_imports")
    @classmethod
    def _check_defaults(cls, value: dict[str, str]) -> dict[str, str]:
        for alias, module in value.items():
            if not _ALIAS_RE.match(alias) or alias.startswith("__"):
                raise ValueError(f"default import alias {alias!r} is not a plain identifier")
            if not _MODULE_RE.match(module):
                raise ValueError(f"default import {alias!r}: {module!r} is not a module name")
            if module.split(".")[0] in RESERVED_MODULES:
                raise ValueError(f"default import {alias!r}: {module!r} cannot be allowed: "
                                 f"{RESERVED_MODULES[module.split('.')[0]]}")
        return value

    @property
    def allowed(self) -> frozenset[str]:
        """The allow-list including the modules named by default imports."""
        return self.whitelisted_imports | frozenset(self.default_imports.values())


def configure(
    whitelisted_imports: Iterable[str] | None = None,
    default_imports: Mapping[str, str] | None = None,
    limits: Limits | Mapping[str, Any] | None = None,
    *,
    fuel: int | None | Literal["default"] | str = "default",
    timeout_seconds: float | None = None,
    memory_bytes: int | None = None,
    max_output_bytes: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    owner: str = "",
) -> tuple[Policy, Limits]:
    """The one place where a policy and limits are made from what a caller gives: the
    executor's and resolver's keywords, a ``limits`` Limits or mapping (a framework's
    JSON properties), the keyword shortcuts (``fuel``, ``timeout_seconds``, ...) and
    further ``overrides`` (a resolver's ``**limit_overrides``), applied in that order.
    Anything invalid raises :class:`ConfigurationError` (prefixed with ``owner``)."""
    try:
        policy = Policy(whitelisted_imports=whitelisted_imports,  # type: ignore[arg-type]
                        default_imports=default_imports)  # type: ignore[arg-type]
        built = Limits.build(limits if isinstance(limits, Limits) else dict(limits or {}),
                             fuel=fuel, timeout_seconds=timeout_seconds,
                             memory_bytes=memory_bytes, max_output_bytes=max_output_bytes)
        return policy, built.merged(dict(overrides) if overrides else None)
    except (TypeError, ValueError) as e:
        raise ConfigurationError(f"{owner}: {e}" if owner else str(e)) from e
