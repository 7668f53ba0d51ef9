"""``wasm-exec mcp``: the sandbox as a Model Context Protocol server.

Built on the official MCP Python SDK (``pip install 'wasm-exec[mcp]'``). Tools:

- ``run_python(code, session=None, inputs=None, return_globals=None)``: run code in a
  persistent sandboxed interpreter. Variables, functions and imports live on between
  calls to the same sandbox.
- ``reset_session(session=None)``: throw a sandbox's state away.

Which sandbox a call uses: the one named by ``session`` when the client passes it (any
client naming it reaches it: use unguessable names where clients do not trust each
other), else the connection's own: the one of the process on stdio, the one of the HTTP
session (``Mcp-Session-Id``) on streamable HTTP. A connection with no session of its own
(the sessionless 2026 protocol over HTTP) gets a new sandbox whose name comes back in the
result, to pass as ``session`` in the next call.

Sandboxes are the executors of one :class:`~wasm_exec.PythonExecExecutorResolver`: at most
``--max-sessions`` interpreters live at once (the least recently used idle one is released
beyond that) and one idle for ``--idle-timeout`` is released; a released sandbox's next
call runs on a fresh interpreter and says so. A tool call the client cancels stops the
running code and rolls it back. More tools (files in and out) are methods of
:class:`SandboxServer` that take a sandbox from :meth:`SandboxServer.sandbox`.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import sys
import threading
from collections import OrderedDict
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from ._version import __version__
from .errors import WasmExecError
from .executor import PythonExecExecutor
from .resolver import PythonExecExecutorResolver

SESSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
SessionName = Annotated[str | None, Field(
    pattern=SESSION_PATTERN,
    description="Name of the sandbox to run in (letters, digits, '.', '_', ':', '-'; up to "
    "128). Calls with the same name share variables. Omit it to use this connection's own "
    "sandbox; where the connection has none, the result names a new one to pass next time.")]

INSTRUCTIONS = (
    "Runs Python in sandboxed, persistent CPython interpreters compiled to WebAssembly: no "
    "host files, network or processes; CPU time, memory and output are capped; imports are "
    "limited to an allow-list. Variables, functions and imports persist between run_python "
    "calls to the same session. A call stopped by a limit is rolled back: the session keeps "
    "its state from its previous call.")


class RunOutput(BaseModel):
    """What a ``run_python`` call returns (also as text for the model)."""

    session: str = Field(description="the sandbox the call ran in (pass it as `session` to "
                         "continue there)")
    success: bool = Field(description="False when the code raised or a limit stopped it")
    stdout: str
    stderr: str
    error: str | None = Field(None, description="one line: the exception, or the limit")
    traceback: str | None = None
    limit: str | None = Field(None, description="fuel, timeout, stack_overflow, cancelled, "
                              "exit, crash, protocol, or null")
    rolled_back: bool = Field(False, description="a limit stopped the call and the sandbox "
                              "was put back as it was after the previous call")
    state_reset: bool = Field(False, description="the call ran on a fresh interpreter: "
                              "earlier variables are gone")
    globals: dict[str, Any] = Field(default_factory=dict,
                                    description="the names asked for in return_globals")
    globals_errors: dict[str, str] = Field(default_factory=dict)
    duration_seconds: float = 0.0


class SandboxServer:
    """One resolver of sandboxes behind an :class:`MCPServer`, with the tools registered.

    ``config`` holds the resolver's keyword arguments (allow-list, default imports,
    runtime, limits, ``max_agents``, ``idle_timeout_seconds``); it is checked by starting
    one interpreter before anything is served, so a bad configuration fails at once.
    """

    def __init__(self, *, stdio: bool, max_names: int = 4096, **config: Any) -> None:
        self.stdio = stdio
        # a configuration the runtime cannot honour fails here, before serving
        check = {k: v for k, v in config.items() if k not in ("max_agents",
                                                               "idle_timeout_seconds")}
        limits = check.pop("limits", None)
        PythonExecExecutor(limits=limits, rollback=False, **check).close()
        self.resolver = PythonExecExecutorResolver(pool_size=1, limits=limits, **{
            k: v for k, v in config.items() if k != "limits"})
        self.max_names = max_names
        self._names: OrderedDict[str, None] = OrderedDict()  # known sandboxes, oldest first
        self._lock = threading.Lock()
        self.mcp = MCPServer("wasm-exec", version=__version__, instructions=INSTRUCTIONS,
                             log_level="WARNING")
        self.mcp.add_tool(self.run_python, name="run_python", title="Run Python (sandboxed)",
                          annotations=ToolAnnotations(readOnlyHint=False,
                                                      destructiveHint=False,
                                                      idempotentHint=False,
                                                      openWorldHint=False))
        self.mcp.add_tool(self.reset_session, name="reset_session",
                          title="Reset a Python sandbox",
                          annotations=ToolAnnotations(readOnlyHint=False,
                                                      destructiveHint=True,
                                                      idempotentHint=True,
                                                      openWorldHint=False))

    # ------------------------------------------------------------------ sandboxes
    def connection_session(self, ctx: Context) -> str | None:
        """The name of this connection's own sandbox, or None when it has none."""
        if self.stdio:
            return "stdio"  # one client per server process
        headers = ctx.headers or {}
        sid = headers.get("mcp-session-id")
        return f"http:{sid}" if sid else None

    async def sandbox(self, ctx: Context, session: str | None
                      ) -> tuple[str, PythonExecExecutor]:
        """The sandbox a call names (``session``) or its connection's own; a new one when
        there is neither. Returns its name and executor (made off the event loop: a new
        one may wait for an interpreter to boot)."""
        name = session or self.connection_session(ctx) or f"new:{secrets.token_urlsafe(16)}"
        return name, await anyio.to_thread.run_sync(self._executor, name)

    def _executor(self, name: str) -> PythonExecExecutor:
        with self._lock:
            self._names[name] = None
            self._names.move_to_end(name)
            dropped = []
            while len(self._names) > self.max_names:  # bounded, whatever clients name
                dropped.append(self._names.popitem(last=False)[0])
        for old in dropped:
            self.resolver.forget(old)
        return self.resolver.resolve(name)

    # ------------------------------------------------------------------ tools
    async def run_python(
        self,
        code: Annotated[str, Field(description="Python source to run, as in a notebook cell. "
                                   "If it is a single expression statement, its value is "
                                   "printed.")],
        ctx: Context,
        session: SessionName = None,
        inputs: Annotated[dict[str, Any] | None, Field(
            description="JSON values bound as global variables before the code runs")] = None,
        return_globals: Annotated[list[str] | None, Field(
            description="names of globals to return as JSON values", max_length=1000)] = None,
    ) -> Annotated[CallToolResult, RunOutput]:
        """Run Python code in a persistent sandbox and return what it printed, the error
        if it raised, and the globals asked for. Variables, functions and imports persist
        between calls to the same session."""
        name, ex = await self.sandbox(ctx, session)
        try:
            r = await ex.aexecute(code, globals_dict=inputs, return_globals=return_globals,
                                  display=True)
        except WasmExecError as e:  # bad input: nothing ran, the sandbox is as it was
            return CallToolResult(content=[TextContent(
                type="text", text=f"{type(e).__name__}: {e} (nothing ran; the session "
                f"{name!r} is unchanged)")], is_error=True)
        out = RunOutput(session=name, success=r.success, stdout=r.stdout, stderr=r.stderr,
                        error=r.error, traceback=r.traceback, limit=r.limit,
                        rolled_back=r.rolled_back, state_reset=r.state_reset,
                        globals=r.globals, globals_errors=r.globals_errors,
                        duration_seconds=r.duration_seconds)
        return CallToolResult(content=[TextContent(type="text", text=render(out, session))],
                              structured_content=out.model_dump(mode="json"),
                              is_error=not r.success)

    async def reset_session(self, ctx: Context, session: SessionName = None) -> str:
        """Throw away a sandbox's variables, functions and imports: its next call starts
        on a fresh interpreter (default imports bound again)."""
        name = session or self.connection_session(ctx)
        if name is None:
            raise ValueError("this connection has no sandbox of its own: name the session "
                             "to reset")
        _, ex = await self.sandbox(ctx, name)
        await anyio.to_thread.run_sync(ex.reset)
        return f"session {name!r} reset: its next call starts on a fresh interpreter"

    def close(self) -> None:
        self.resolver.close()


def render(out: RunOutput, asked: str | None) -> str:
    """The result as text for a language model: output first, then what went wrong."""
    parts: list[str] = []
    if asked is None and out.session.startswith("new:"):
        parts.append(f"[this ran in a new session {out.session!r}: pass it as `session` to "
                     "keep its variables]")
    if out.state_reset:
        parts.append("[fresh interpreter: earlier variables are gone]")
    if out.stdout:
        parts.append(out.stdout.rstrip("\n"))
    if out.stderr:
        parts.append("[stderr]\n" + out.stderr.rstrip("\n"))
    if not out.success:
        if out.limit:  # (the error says whether the call was rolled back)
            parts.append(f"[stopped by the {out.limit} limit] {out.error or ''}".rstrip())
        else:
            parts.append((out.traceback or out.error or "failed").rstrip("\n"))
    for key, value in out.globals.items():
        parts.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
    for key, err in out.globals_errors.items():
        parts.append(f"[{key}: {err}]")
    return "\n".join(parts) if parts else "[no output]"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def serve_http(server: SandboxServer, host: str, port: int) -> None:
    """Serve streamable HTTP at ``http://host:port/mcp`` until interrupted."""
    import uvicorn

    app = server.mcp.streamable_http_app(host=host)
    sock = _listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/mcp"
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    print(f"wasm-exec mcp: serving streamable HTTP at {url}", file=sys.stderr, flush=True)
    anyio.run(lambda: uvicorn.Server(config).serve(sockets=[sock]))


def main(args: argparse.Namespace) -> int:
    """``wasm-exec mcp`` (its options are parsed by the command line)."""
    from .cli import _limits

    if args.transport == "http" and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"wasm-exec mcp: listening on {args.host}, beyond loopback: the server has no "
              "authentication of its own; any client that reaches it can run code in its "
              "sandboxes", file=sys.stderr)
    try:
        server = SandboxServer(
            stdio=args.transport == "stdio",
            whitelisted_imports=args.allow or [],
            default_imports=dict(args.default_import or []),
            runtime=args.runtime, limits=_limits(args), max_agents=args.max_sessions,
            idle_timeout_seconds=args.idle_timeout)
    except WasmExecError as e:
        from .cli import explain

        print(f"wasm-exec mcp: {explain(e)}", file=sys.stderr)
        return 2
    try:
        if args.transport == "stdio":
            server.mcp.run("stdio")
        else:
            serve_http(server, args.host, args.port)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
