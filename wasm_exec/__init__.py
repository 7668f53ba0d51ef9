"""wasm-exec: run agent-written Python in a persistent CPython-on-WebAssembly sandbox.

>>> from wasm_exec import PythonExecExecutor
>>> with PythonExecExecutor() as ex:
...     ex.execute("x = 41")
...     ex.execute("x += 1", return_globals=["x"]).globals["x"]
42
"""

from .config import Limits, Policy
from .errors import (
    ConfigurationError,
    ExecutorClosedError,
    ImageError,
    InputError,
    ReentrantCallError,
    RuntimeNotFoundError,
    RuntimeVerificationError,
    WasmExecError,
)
from .executor import DisplayValue, ExecutionResult, PythonExecExecutor
from .output import OutputChunk
from .pool import SessionPool
from .resolver import PythonExecExecutorResolver

__all__ = [
    "ConfigurationError",
    "DisplayValue",
    "ExecutionResult",
    "ExecutorClosedError",
    "ImageError",
    "InputError",
    "Limits",
    "OutputChunk",
    "Policy",
    "PythonExecExecutor",
    "PythonExecExecutorResolver",
    "ReentrantCallError",
    "RuntimeNotFoundError",
    "RuntimeVerificationError",
    "SessionPool",
    "WasmExecError",
]
