"""Errors raised by wasm-exec on the host side.

Errors raised *by the agent's code* never surface as host exceptions: they come back in
:class:`wasm_exec.ExecutionResult`. These exceptions are for the caller's mistakes and for
a missing or broken runtime.
"""

from __future__ import annotations


class WasmExecError(Exception):
    """Base class of every error raised by wasm-exec."""


class RuntimeNotFoundError(WasmExecError):
    """The CPython-on-WASI runtime is not installed where wasm-exec looks for it."""


class RuntimeVerificationError(WasmExecError):
    """A runtime file does not match its pinned size or SHA-256."""


class ConfigurationError(WasmExecError, ValueError):
    """An executor was configured with values it cannot honour."""


class InputError(WasmExecError, ValueError):
    """The code or globals passed to ``execute`` cannot be sent to the sandbox."""


class ExecutorClosedError(WasmExecError):
    """The executor was closed; create a new one."""


class ImageError(WasmExecError, ValueError):
    """A saved interpreter image cannot be used: damaged, truncated, from another runtime
    build or another version of wasm-exec, or saved by a runtime that cannot be imaged."""


class RuntimeBuildError(WasmExecError):
    """Building the runtime from source failed; the message names the missing tool or
    package and the command that installs it, or the step and its log."""


class ReentrantCallError(WasmExecError, RuntimeError):
    """An executor was called from inside one of its own output callbacks (``on_stdout``
    / ``on_stderr``), while its call runs; call it after that call returns."""
