"""``wasm-exec mcp``: the sandbox as a Model Context Protocol server.

Built on the official MCP Python SDK (``pip install 'wasm-exec[mcp]'``). Tools:

- ``run_python(code, session=None, inputs=None, return_globals=None)``: run code in a
  persistent sandboxed interpreter. Variables, functions and imports live on between
  calls to the same sandbox.
- ``reset_session(session=None)``: throw a sandbox's state away.
- ``write_file(path, content, encoding="text", session=None)``, ``read_file(path,
  encoding="auto", session=None)``, ``list_files(path=".", recursive=False, session=None)``,
  ``delete_file(path, session=None)``: the sandbox's files (the executor's file API), text
  as it is or bytes as base64, each file at most ``--max-file-size``.

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
running code and rolls it back.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import mimetypes
import secrets
import socket
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from ._version import __version__
from .errors import WasmExecError
from .executor import PythonExecExecutor
from .files import FileInfo
from .resolver import PythonExecExecutorResolver

SESSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
SessionName = Annotated[str | None, Field(
    pattern=SESSION_PATTERN,
    description="Name of the sandbox to run in (letters, digits, '.', '_', ':', '-'; up to "
    "128). Calls with the same name share variables. Omit it to use this connection's own "
    "sandbox; where the connection has none, the result names a new one to pass next time.")]

# what one file moved by write_file / read_file may hold (``--max-file-size``), and how many
# entries one list_files returns
DEFAULT_MAX_FILE_BYTES = 8 * 2**20
MAX_LIST_ENTRIES = 1000
# images read_file also returns as image content, for clients that show them to the model
IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
FilePath = Annotated[str, Field(
    min_length=1, max_length=4096,
    description="a name relative to the sandbox's working directory /tmp/work (like "
    "'data.csv' or 'out/chart.png') or an absolute path under /tmp")]

INSTRUCTIONS = (
    "Runs Python in sandboxed, persistent CPython interpreters compiled to WebAssembly: no "
    "host files, network or processes; CPU time, memory and output are capped; imports are "
    "limited to an allow-list. Variables, functions and imports persist between run_python "
    "calls to the same session. A call stopped by a limit is rolled back: the session keeps "
    "its state from its previous call. write_file / read_file / list_files / delete_file "
    "move files into and out of a session's sandbox (the code opens them by name, relative "
    "to its working directory).")


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


class FileOutput(BaseModel):
    """What ``write_file`` / ``read_file`` / ``delete_file`` return (also as text)."""

    session: str = Field(description="the sandbox (pass it as `session` to continue there)")
    path: str = Field(description="the file's absolute path in the sandbox")
    size: int = Field(description="bytes of the file")
    encoding: Literal["text", "base64"] | None = Field(
        None, description="how `content` holds the bytes (read_file only)")
    content: str | None = Field(None, description="the file's contents (read_file only)")
    mime_type: str | None = Field(None, description="guessed from the name (read_file only)")


class FileEntry(BaseModel):
    name: str = Field(description="relative to the directory listed")
    path: str
    size: int
    is_dir: bool


class ListOutput(BaseModel):
    """What ``list_files`` returns (also as text)."""

    session: str
    path: str = Field(description="the directory listed, as asked")
    entries: list[FileEntry]
    truncated: bool = Field(False, description=f"more than {MAX_LIST_ENTRIES} entries: the "
                            "first ones by name are here; list a subdirectory for the rest")


class FileToolError(Exception):
    """A file tool's bad input or missing file: comes back as an error result."""


class SandboxServer:
    """One resolver of sandboxes behind an :class:`MCPServer`, with the tools registered.

    ``config`` holds the resolver's keyword arguments (allow-list, default imports,
    runtime, limits, ``max_agents``, ``idle_timeout_seconds``); it is checked by starting
    one interpreter before anything is served, so a bad configuration fails at once.
    """

    def __init__(self, *, stdio: bool, max_names: int = 4096,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, **config: Any) -> None:
        self.stdio = stdio
        self.max_file_bytes = max_file_bytes
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
        for fn, title, read_only, destructive in (
                (self.write_file, "Put a file into a Python sandbox", False, True),
                (self.read_file, "Read a file of a Python sandbox", True, False),
                (self.list_files, "List a Python sandbox's files", True, False),
                (self.delete_file, "Delete a file of a Python sandbox", False, True)):
            self.mcp.add_tool(fn, name=fn.__name__, title=title,
                              annotations=ToolAnnotations(readOnlyHint=read_only,
                                                          destructiveHint=destructive,
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

    # ------------------------------------------------------------------ files
    async def _file_job(self, ctx: Context, session: str | None, create: bool,
                        job: Callable[[PythonExecExecutor], Any]) -> tuple[str, Any]:
        """``job(executor)`` off the event loop on the sandbox a file tool names; its bad
        input and missing files become :class:`FileToolError` (the sandbox is unchanged)."""
        if session is None and self.connection_session(ctx) is None and not create:
            raise FileToolError("this connection has no sandbox of its own: name the "
                                "session (the `session` a run_python or write_file result "
                                "gave)")
        name, ex = await self.sandbox(ctx, session)
        try:
            return name, await anyio.to_thread.run_sync(job, ex)
        except WasmExecError as e:  # a bad name, a file that does not fit
            raise FileToolError(f"{type(e).__name__}: {e}") from None
        except FileNotFoundError as e:
            raise FileToolError(f"no such file or directory in the sandbox: {e.filename}"
                                " (list_files shows what is there)") from None
        except IsADirectoryError as e:
            raise FileToolError(f"{e.filename} is a directory, not a file (list_files "
                                "shows what it holds)") from None
        except NotADirectoryError as e:
            raise FileToolError(f"{e.filename}: a file is in the way (not a directory)"
                                ) from None

    def _too_big(self, what: str, size: int) -> FileToolError:
        return FileToolError(
            f"{what} is {size:,} bytes; this server moves files of at most "
            f"{self.max_file_bytes:,} bytes (its --max-file-size): split it, or have the "
            "code write a smaller file")

    async def write_file(
        self,
        path: FilePath,
        content: Annotated[str, Field(description="the file's contents: text (written as "
                                      "UTF-8) or, with encoding='base64', bytes as base64")],
        ctx: Context,
        encoding: Annotated[Literal["text", "base64"], Field(
            description="'text' (default) or 'base64' for binary data")] = "text",
        session: SessionName = None,
    ) -> Annotated[CallToolResult, FileOutput]:
        """Put a file into a sandbox (its directories are made as needed; an existing file
        is replaced). The code then opens it by name, e.g. open('data.csv'). Files count
        against the sandbox's file space and persist between calls."""
        try:
            data = self._decode(content, encoding)
            name, target = await self._file_job(ctx, session, True,
                                                lambda ex: self._write(ex, path, data))
        except FileToolError as e:
            return _error(str(e), session)
        out = FileOutput(session=name, path=target, size=len(data))
        return _result(f"wrote {len(data):,} bytes to {target}", out, session)

    def _decode(self, content: str, encoding: str) -> bytes:
        cap = self.max_file_bytes
        if encoding == "base64":
            text = "".join(content.split())
            if len(text) > 4 * (cap // 3 + 1):
                raise self._too_big("the file", len(text) * 3 // 4)
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise FileToolError("content is not valid base64 (A-Z, a-z, 0-9, '+', '/', "
                                    "'=' padding): encode the bytes as standard base64, or "
                                    "pass encoding='text' for text") from None
        else:
            if len(content) > cap:  # (a character is at least a byte)
                raise self._too_big("the file", len(content))
            try:
                data = content.encode("utf-8")
            except UnicodeEncodeError as e:
                raise FileToolError(f"content has a lone surrogate at index {e.start}, "
                                    "which UTF-8 cannot hold: send the bytes as "
                                    "encoding='base64'") from None
        if len(data) > cap:
            raise self._too_big("the file", len(data))
        return data

    @staticmethod
    def _write(ex: PythonExecExecutor, path: str, data: bytes) -> str:
        from .hostfiles import host_path

        ex.write_file(path, data)
        return host_path(path)

    async def read_file(
        self,
        path: FilePath,
        ctx: Context,
        encoding: Annotated[Literal["auto", "text", "base64"], Field(
            description="'auto' (default): text when the file is UTF-8, else base64; "
            "'text': fail unless it is UTF-8; 'base64': always base64")] = "auto",
        session: SessionName = None,
    ) -> Annotated[CallToolResult, FileOutput]:
        """Read a file of a sandbox, e.g. one its code wrote: text as it is, other bytes as
        base64 (a PNG, JPEG, GIF or WebP image also as image content)."""
        from .hostfiles import host_path

        try:
            name, data = await self._file_job(ctx, session, False,
                                              lambda ex: ex.read_file(path))
            target = host_path(path)
            if len(data) > self.max_file_bytes:
                raise self._too_big(target, len(data))
            text: str | None = None
            if encoding != "base64":
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as e:
                    if encoding == "text":
                        raise FileToolError(f"{target} is not UTF-8 text (byte {e.start}): "
                                            "read it with encoding='base64'") from None
        except FileToolError as e:
            return _error(str(e), session)
        mime = mimetypes.guess_type(target)[0]
        out = FileOutput(session=name, path=target, size=len(data),
                         encoding="base64" if text is None else "text",
                         content=base64.b64encode(data).decode() if text is None else text,
                         mime_type=mime)
        if text is not None:
            return _result(text, out, session, header=False)
        content: list[TextContent | ImageContent] = [TextContent(type="text", text=(
            f"[{target}: {len(data):,} bytes{', ' + mime if mime else ''}; base64]\n"
            + (out.content or "")))]
        if mime in IMAGE_TYPES:
            content.append(ImageContent(type="image", data=out.content or "", mime_type=mime))
        return CallToolResult(content=list(content), structured_content=out.model_dump(
            mode="json"))

    async def list_files(
        self,
        ctx: Context,
        path: Annotated[str, Field(min_length=1, max_length=4096, description=(
            "the directory to list: relative to /tmp/work (default '.', the working "
            "directory) or absolute under /tmp"))] = ".",
        recursive: Annotated[bool, Field(description="everything below, not only the "
                                         "directory's own entries")] = False,
        session: SessionName = None,
    ) -> Annotated[CallToolResult, ListOutput]:
        """List a sandbox's files: names (relative to the directory listed), sizes, which
        are directories; sorted by name."""
        try:
            name, found = await self._file_job(ctx, session, False,
                                               lambda ex: ex.list_files(path,
                                                                        recursive=recursive))
        except FileToolError as e:
            return _error(str(e), session)
        entries: list[FileInfo] = found[:MAX_LIST_ENTRIES]
        out = ListOutput(session=name, path=path, truncated=len(found) > MAX_LIST_ENTRIES,
                         entries=[FileEntry(**e.model_dump()) for e in entries])
        lines = [f"{e.name}/" if e.is_dir else f"{e.name}\t{e.size}" for e in entries]
        if out.truncated:
            lines.append(f"[{len(found) - MAX_LIST_ENTRIES:,} more entries not shown: list "
                         "a subdirectory]")
        return _result("\n".join(lines) or "[empty directory]", out, session, header=False)

    async def delete_file(self, path: FilePath, ctx: Context, session: SessionName = None
                          ) -> Annotated[CallToolResult, FileOutput]:
        """Delete a file of a sandbox, or a directory with everything in it; its space is
        free again."""
        from .hostfiles import host_path

        try:
            name, _ = await self._file_job(ctx, session, False,
                                           lambda ex: ex.delete_file(path))
        except FileToolError as e:
            return _error(str(e), session)
        target = host_path(path)
        return _result(f"deleted {target}", FileOutput(session=name, path=target, size=0),
                       session)

    def close(self) -> None:
        self.resolver.close()


def _error(message: str, session: str | None) -> CallToolResult:
    where = f" (session {session!r} is unchanged)" if session else ""
    return CallToolResult(content=[TextContent(type="text", text=message + where)],
                          is_error=True)


def _result(text: str, out: BaseModel, asked: str | None, header: bool = True
            ) -> CallToolResult:
    session = getattr(out, "session", "")
    if asked is None and session.startswith("new:"):
        text = (f"[new session {session!r}: pass it as `session` to reach these files]\n"
                + text)
    elif header and asked is None:
        text = f"{text} (session {session!r})"
    return CallToolResult(content=[TextContent(type="text", text=text)],
                          structured_content=out.model_dump(mode="json"))


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
    from .options import limits_from_args as _limits

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
            idle_timeout_seconds=args.idle_timeout, max_file_bytes=args.max_file_size)
    except WasmExecError as e:
        from .options import explain

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
