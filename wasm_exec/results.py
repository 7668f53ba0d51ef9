"""What a call returns: :class:`ExecutionResult` and :class:`DisplayValue`, and how a
call that did not answer (a limit, a cancel, a crash) is worded."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer
from pydantic_core import PydanticSerializationError

from .protocol import ResetReason, StopReason

# (the name ExecutionResult.limit had before StopReason; kept for type annotations)
LimitName = StopReason

_STOP_TEXT = {
    StopReason.FUEL: "Fuel limit exceeded: the call used its whole budget of {fuel} fuel "
                     "units",
    StopReason.TIMEOUT: "Timeout: the call ran past its deadline of {timeout} s",
    StopReason.STACK_OVERFLOW: "The interpreter's WebAssembly stack overflowed (too deep "
                               "recursion in C code)",
    StopReason.EXIT: "The code ended the interpreter ({detail})",
    StopReason.CRASH: "The interpreter crashed ({detail})",
    StopReason.PROTOCOL: "The interpreter broke the sandbox protocol ({detail})",
    StopReason.CANCELLED: "The call was cancelled",
    StopReason.MEMORY: "Memory limit exceeded",
}
# the error_type of a stopped call
_STOP_ERROR_TYPE = {StopReason.FUEL: "FuelExhausted", StopReason.TIMEOUT: "TimeoutError",
                    StopReason.STACK_OVERFLOW: "StackOverflow",
                    StopReason.CANCELLED: "Cancelled"}


class DisplayValue(BaseModel):
    """The value of a cell's last expression, like a notebook's ``execute_result``.

    ``text`` is its ``repr()`` (shortened to 100,000 characters); ``json_value`` is the
    value itself when it is JSON data (``is_json``); ``html`` is its ``_repr_html_()``
    when its type offers one (a pandas DataFrame's table); ``png`` its ``_repr_png_()``.
    :meth:`mime_bundle` gives them keyed by MIME type, as Jupyter does.
    """

    model_config = ConfigDict(frozen=True, val_json_bytes="base64")

    text: str
    is_json: bool = False
    json_value: Any = None
    html: str | None = None
    png: bytes | None = None

    @field_serializer("png", when_used="json")
    def _png_as_base64(self, png: bytes | None) -> str | None:
        return None if png is None else _b64(png)

    def mime_bundle(self) -> dict[str, Any]:
        """``{"text/plain": ..., "application/json": ..., "text/html": ...,
        "image/png": <base64 str>}``, with the forms the value has."""
        bundle: dict[str, Any] = {"text/plain": self.text}
        if self.is_json:
            bundle["application/json"] = self.json_value
        if self.html is not None:
            bundle["text/html"] = self.html
        if self.png is not None:
            bundle["image/png"] = _b64(self.png)
        return bundle


class ExecutionResult(BaseModel):
    """What one ``execute`` call produced.

    ``success`` is False when the code raised (including ``SyntaxError`` and a
    ``SystemExit`` other than ``sys.exit(0)``) or when a limit stopped it; ``error`` then
    says what happened in one line and ``error_type`` / ``error_message`` / ``traceback``
    give the details. ``model_dump_json()`` works for every result (bytes as base64).
    """

    # (bytes travel in JSON as standard base64, and are read back from it)
    model_config = ConfigDict(frozen=True, val_json_bytes="base64")

    success: bool
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    globals: dict[str, Any] = Field(default_factory=dict)
    globals_errors: dict[str, str] = Field(
        default_factory=dict,
        description="Names from return_globals that could not be returned, with the reason.")
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    limit: LimitName | None = Field(
        default=None, description="The limit that stopped the call, if one did.")
    state_reset: bool = Field(
        default=False,
        description="True when this call ran on a fresh interpreter because the previous "
        "one was lost (a limit stopped it, it crashed, or it was evicted): variables from "
        "earlier calls are gone. Default imports are in place again.")
    reset_reason: ResetReason | None = Field(
        default=None,
        description="Why state_reset is True: 'reset' (reset() was called), 'evicted' (the "
        "interpreter was released to make room, or idle, without parking), 'lost' (an "
        "earlier call ended the interpreter and it could not be rolled back), "
        "'park_dropped' (the agent was parked and its image dropped to stay within the "
        "parking budget), 'park_failed' (its parked image could not be restored).")
    interpreter_lost: bool = Field(
        default=False,
        description="True when this call ended the interpreter: the next call starts fresh.")
    rolled_back: bool = Field(
        default=False,
        description="True when a limit (or a crash) stopped this call and the interpreter "
        "was put back as it was after the previous call (reactor runtimes): nothing this "
        "call did is kept; earlier variables, functions and imports are intact.")
    duration_seconds: float = 0.0
    fuel_used: int | None = None
    memory_bytes: int = Field(default=0, description="Guest linear memory after the call.")
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    figures: list[bytes] = Field(
        default_factory=list,
        description="PNG images of the matplotlib figures the call left open (scientific "
        "runtime); they are closed afterwards. Counted against max_globals_bytes.")
    imports: list[tuple[str, str | None]] | None = Field(
        default=None,
        description="With execute(..., trace_imports=True): each import the import guard was "
        "asked for during the call (the agent's and the libraries'), in order, with the "
        "name of the grant rule that allowed it, or None where it was refused (at most "
        "256). None when not asked for.")
    files: dict[str, bytes] = Field(
        default_factory=dict,
        description="The files named in output_files, read from the agent's file system "
        "after the call, by the name given.")
    files_errors: dict[str, str] = Field(
        default_factory=dict,
        description="Names from output_files that could not be read, with the reason.")

    @field_serializer("files", when_used="json")
    def _files_as_base64(self, files: dict[str, bytes]) -> dict[str, str]:
        # (in JSON, file contents are standard base64: they are often not text)
        return {name: base64.b64encode(data).decode("ascii") for name, data in files.items()}

    value: DisplayValue | None = Field(
        default=None,
        description="The value of the cell's last statement when that is an expression "
        "whose value is not None (like a notebook's execute_result); counted against "
        "max_globals_bytes.")
    exit_code: int | None = Field(
        default=None,
        description="The status the code exited with by SystemExit (sys.exit(), exit(), "
        "quit()): 0 for sys.exit() and sys.exit(0) (a success), n for sys.exit(n), 1 for "
        "sys.exit('message') (the message goes to stderr). None when it did not exit.")
    callback_error: str | None = Field(
        default=None,
        description="The first exception an on_stdout / on_stderr callback raised during "
        "the call (that callback was not called again; the call went on).")

    @field_serializer("figures", when_used="json")
    def _figures_as_base64(self, figures: list[bytes]) -> list[str]:
        return [_b64(f) for f in figures]

    def model_dump_json(self, *, indent: int | None = None, **kwargs: Any) -> str:
        """The result as JSON text: bytes (figures, a value's PNG) as base64, NaN and
        infinities as null. Whatever the agent returned: a str holding a lone surrogate
        (a valid str, not UTF-8) is written escaped (``"\\ud800"``, as Python's json
        module writes it: it reads back as the same str), and globals nested deeper than
        pydantic's serializer goes (about 250 levels; they may nest 400) are written
        too."""
        try:
            return super().model_dump_json(indent=indent, **kwargs)
        except PydanticSerializationError:
            return json.dumps(_json_safe(self.model_dump(**kwargs)), indent=indent,
                              ensure_ascii=True)


def _json_safe(value: Any) -> Any:
    """``value`` (a result dumped as Python data) as JSON data the way pydantic writes it:
    bytes as base64, NaN and infinities as None."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return _b64(value)
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def display_value(shown: dict[str, Any] | None) -> DisplayValue | None:
    if shown is None:
        return None
    return DisplayValue(text=shown["text"], is_json="json" in shown,
                        json_value=shown.get("json"), html=shown.get("html"),
                        png=shown.get("png"))


def not_run() -> ExecutionResult:
    text = ("The call was cancelled before it started: nothing ran, and the agent's state "
            "is unchanged.")
    return ExecutionResult(success=False, error=text, error_type="Cancelled",
                           error_message=text, limit="cancelled")




def stopped(reason: StopReason, detail: str, *, fuel: int | None, timeout: float,
            rolled_back: bool, closed: bool, **common: Any) -> ExecutionResult:
    """The result of a call that a limit, a cancel or a crash stopped: rolled back (the
    agent keeps its state from its last call) or with its interpreter lost. ``closed``:
    the executor was closed while the call ran (a cancel says so)."""
    text = _STOP_TEXT.get(reason, "The interpreter stopped ({detail})").format(
        fuel=fuel, timeout=timeout, detail=detail)
    if rolled_back:
        text += (". The call was rolled back: nothing it did is kept, and the "
                 "interpreter is as it was after the previous call (earlier variables, "
                 "functions and imports are intact).")
    else:
        text += ". The interpreter was lost: the next call starts a fresh one " \
                "(earlier variables are gone, default imports are rebound)."
    etype = _STOP_ERROR_TYPE.get(reason, "SandboxError")
    if reason == StopReason.CANCELLED and closed:
        text = "The executor was closed while the call ran."
    return ExecutionResult(success=False, error=text, error_type=etype,
                           error_message=text, limit=reason,
                           interpreter_lost=not rolled_back, rolled_back=rolled_back,
                           **common)
