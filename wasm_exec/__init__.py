"""wasm-exec: run agent-written Python in a persistent CPython-on-WebAssembly sandbox.

>>> from wasm_exec import PythonExecExecutor
>>> with PythonExecExecutor() as ex:
...     ex.execute("x = 41")
...     ex.execute("x += 1", return_globals=["x"]).globals["x"]
42
"""

from ._version import __version__
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
from .files import FileInfo
from .output import OutputChunk
from .protocol import StopReason
from .resolver import PythonExecExecutorResolver
from .state_store import DirectoryStateStore, RedisStateStore, StateStore, StateStoreError
from .supply import SessionPool

__all__ = [
    "ConfigurationError",
    "DirectoryStateStore",
    "DisplayValue",
    "ExecutionResult",
    "ExecutorClosedError",
    "FileInfo",
    "ImageError",
    "InputError",
    "Limits",
    "OutputChunk",
    "Policy",
    "PythonExecExecutor",
    "PythonExecExecutorResolver",
    "RedisStateStore",
    "ReentrantCallError",
    "RuntimeNotFoundError",
    "RuntimeVerificationError",
    "SessionPool",
    "StateStore",
    "StateStoreError",
    "StopReason",
    "WasmExecError",
    "__version__",
]
