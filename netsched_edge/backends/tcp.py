"""Raw TCP byte-stream backends, and the stream plumbing the HTTP backend shares.

A TCP exchange is one connection: the request body is written as it arrives,
the write side is half-closed when it ends, and the response body is whatever
the backend sends until it closes its side.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from netsched_edge.backends.base import Backend, BackendRequest, BackendResponse, BackendUnavailable

READ_SIZE = 65536


class ReleasingBody(AsyncIterator[bytes]):
    """A response body read from a resource that must be released exactly once.

    `read` returns the next chunk, or None at the end. `release(complete)` runs
    once: with True when the body was read to its end, with False when reading
    failed or the consumer stopped early and called `aclose`.
    """

    def __init__(
        self, read: Callable[[], Awaitable[bytes | None]], release: Callable[[bool], None]
    ) -> None:
        self._read = read
        self._release = release
        self._released = False

    def __aiter__(self) -> ReleasingBody:
        return self

    async def __anext__(self) -> bytes:
        if self._released:
            raise StopAsyncIteration
        try:
            chunk = await self._read()
        except BaseException:
            self._release_once(complete=False)
            raise
        if chunk is None:
            self._release_once(complete=True)
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Stop reading; the resource is released without being reused."""
        self._release_once(complete=False)

    def _release_once(self, *, complete: bool) -> None:
        if not self._released:
            self._released = True
            self._release(complete)


async def open_stream(
    kind: str, name: str, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a backend; any socket error means it is unavailable."""
    try:
        return await asyncio.open_connection(host, port)
    except OSError as exc:
        raise BackendUnavailable(
            f"{kind} backend {name!r}: cannot connect to {host}:{port}: {exc}"
        ) from exc


async def pump_body(
    body: AsyncIterator[bytes],
    writer: asyncio.StreamWriter,
    send_chunk: Callable[[bytes], None],
    finish: Callable[[], None],
) -> None:
    """Write `body` through `send_chunk` as it arrives, then call `finish`.

    A broken connection ends the copy quietly: the read side sees the same
    breakage and reports it. Any other failure (the body source's, a framing
    error) aborts the connection, so the read side does not wait for bytes
    that will never come, and is re-raised.
    """
    try:
        async for chunk in body:
            if chunk:
                send_chunk(chunk)
                if not await _drained(writer):
                    return
        finish()
        await _drained(writer)
    except BaseException:
        writer.transport.abort()
        raise


async def _drained(writer: asyncio.StreamWriter) -> bool:
    try:
        await writer.drain()
    except OSError:
        return False
    return True


def settle(task: asyncio.Task[Any]) -> bool:
    """Stop `task` if still running; True when it finished without error.

    Retrieves the task's exception so that a failure already reported another
    way is not logged again as never retrieved.
    """
    if not task.done():
        task.cancel()
        return False
    return not task.cancelled() and task.exception() is None


async def read_until_eof(reader: asyncio.StreamReader) -> bytes | None:
    """The next chunk of a stream, or None at its end."""
    return await reader.read(READ_SIZE) or None


class TCPBackend(Backend):
    """A backend speaking a raw byte stream over TCP."""

    kind = "tcp"

    def __init__(self, name: str, host: str, port: int) -> None:
        super().__init__(name)
        self.host = host
        self.port = port

    async def exchange(
        self, request: BackendRequest, body: AsyncIterator[bytes], timeout: float
    ) -> BackendResponse:
        async with asyncio.timeout(timeout):
            reader, writer = await open_stream(self.kind, self.name, self.host, self.port)
        # The body is written in its own task so that both directions progress.
        sender = asyncio.create_task(pump_body(body, writer, writer.write, writer.write_eof))

        def release(complete: bool) -> None:
            settle(sender)
            if complete:
                writer.close()
            else:
                writer.transport.abort()

        return BackendResponse(200, ReleasingBody(lambda: read_until_eof(reader), release))

    async def check(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                _, writer = await open_stream(self.kind, self.name, self.host, self.port)
        except (BackendUnavailable, TimeoutError):
            return False
        writer.close()
        return True
