"""Output handed to the caller while a call runs (``on_stdout`` / ``on_stderr``).

The guest writes; the session's thread takes each flush into a queue at once (the guest
never waits for the caller); the caller's thread decodes the chunks (UTF-8, a character
split between two chunks is put together) and calls the callbacks. A callback that
raises is reported in the result (``callback_error``) and not called again for that
call; the call goes on. See streams.py for when the guest's output is flushed.
"""

from __future__ import annotations

import asyncio
import codecs
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

OutputHandler = Callable[[str], object]

# pieces of output waiting for their consumer, at most: past that, a write joins the latest
# piece of its stream, so the host holds what was printed (itself capped by
# max_output_bytes) and never an object per write, whatever the guest writes and however
# slow the consumer is
MAX_PIECES = 1024

_active = threading.local()


@dataclass(frozen=True)
class OutputChunk:
    """A piece of a call's output, as ``astream`` yields it."""

    stream: Literal["stdout", "stderr"]
    text: str


class ChunkQueue:
    """A call's writes on fd 1 and 2, from the session's thread to the caller's: in order,
    the writes of one stream in a row joined into one piece, at most MAX_PIECES pieces."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._pieces: list[tuple[int, bytearray]] = []
        self._latest: dict[int, bytearray] = {}

    def put(self, fd: int, data: bytes) -> None:
        with self._lock:
            pieces = self._pieces
            if pieces and pieces[-1][0] == fd:
                pieces[-1][1].extend(data)
            elif len(pieces) < MAX_PIECES or fd not in self._latest:
                piece = bytearray(data)
                pieces.append((fd, piece))
                self._latest[fd] = piece
            else:
                self._latest[fd].extend(data)
        self.wake.set()

    def take(self) -> list[tuple[int, bytearray]]:
        """Everything written since the last take, in order."""
        with self._lock:
            pieces, self._pieces = self._pieces, []
            self._latest = {}
        return pieces


class Mailbox:
    """Chunks of text from a worker thread to an event loop (``astream``), joined like
    ChunkQueue's: the loop is woken once per batch, not once per chunk."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._parts: list[tuple[Literal["stdout", "stderr"], list[str]]] = []
        self._latest: dict[str, list[str]] = {}
        self._woken = False
        self._event = asyncio.Event()
        self.ended = False

    def sender(self, stream: Literal["stdout", "stderr"]) -> Callable[[str], None]:
        """A callback that posts text of ``stream`` (from any thread)."""
        def put(text: str) -> None:
            with self._lock:
                parts = self._parts
                if parts and parts[-1][0] == stream:
                    parts[-1][1].append(text)
                elif len(parts) < MAX_PIECES or stream not in self._latest:
                    texts = [text]
                    parts.append((stream, texts))
                    self._latest[stream] = texts
                else:
                    self._latest[stream].append(text)
                if self._woken:
                    return
                self._woken = True
            self._loop.call_soon_threadsafe(self._event.set)
        return put

    def end(self) -> None:
        """(On the loop.) Nothing more will be posted."""
        self.ended = True
        self._event.set()

    async def take(self) -> list[OutputChunk]:
        """(On the loop.) The chunks posted since the last take, once there are some or
        the end came (then possibly none; after the end it does not wait)."""
        if not self.ended:
            await self._event.wait()
        self._event.clear()
        with self._lock:
            parts, self._parts = self._parts, []
            self._latest = {}
            self._woken = False
        return [OutputChunk(stream, "".join(texts)) for stream, texts in parts]


def in_callback_of(owner: object) -> bool:
    """Whether this thread is inside an output callback of ``owner``'s running call."""
    return owner in getattr(_active, "owners", ())


class OutputDispatch:
    """Turns a call's chunks (fd, bytes) into text for its two callbacks."""

    def __init__(self, owner: object, on_stdout: OutputHandler | None,
                 on_stderr: OutputHandler | None) -> None:
        for name, fn in (("on_stdout", on_stdout), ("on_stderr", on_stderr)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable (it is given each piece of text)")
        self._owner = owner
        self._handlers = {1: on_stdout, 2: on_stderr}
        self._decoders = {fd: codecs.getincrementaldecoder("utf-8")(errors="replace")
                          for fd in (1, 2)}
        self.error: str | None = None
        self.interrupt: BaseException | None = None

    def __call__(self, fd: int, data: bytes) -> None:
        self._deliver(fd, self._decoders[fd].decode(data))

    def finish(self) -> None:
        """The call has ended: what is left of a split character."""
        for fd, decoder in self._decoders.items():
            self._deliver(fd, decoder.decode(b"", final=True))

    def _deliver(self, fd: int, text: str) -> None:
        handler = self._handlers[fd]
        if not text or handler is None:
            return
        owners = getattr(_active, "owners", ())
        _active.owners = (*owners, self._owner)
        try:
            handler(text)
        except Exception as e:  # noqa: BLE001 - reported in the result, the call goes on
            self._handlers[fd] = None
            if self.error is None:
                name = "on_stdout" if fd == 1 else "on_stderr"
                self.error = f"{name} raised {type(e).__name__}: {e}"
        finally:
            _active.owners = owners


__all__ = ["ChunkQueue", "Mailbox", "OutputChunk", "OutputDispatch", "OutputHandler",
           "in_callback_of"]
