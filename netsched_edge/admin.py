"""The edge's admin endpoint: Prometheus `/metrics`, `/livez`, `/readyz` over HTTP/1.1.

`/readyz` answers 200 `ready`, or 503 with one `not ready: REASON` line per
reason (draining; a service with no healthy backend, each backend's state; a
fleet membership lost); lines that say what the edge runs on follow either
(a fleet host's state: etcd reachable or not, the config and keys revisions).

Operators scrape and probe it the usual way; it listens only where the config
says (`[edge] admin = "127.0.0.1:9100"`), never on the QUIC port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import h11

log = logging.getLogger("netsched.edge.admin")

MAX_REQUEST_BYTES = 16 * 1024
READ_TIMEOUT_S = 5.0


class AdminServer:
    def __init__(
        self,
        metrics: Callable[[], bytes],
        unready: Callable[[], list[str]],
        notes: Callable[[], list[str]] = list,
    ) -> None:
        """`unready()`: why the edge is not ready, one line per reason; empty when it is.
        `notes()`: lines /readyz adds whatever the answer."""
        self._metrics = metrics
        self._unready = unready
        self._notes = notes
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _route(self, target: bytes) -> tuple[int, bytes, bytes]:
        path = target.split(b"?", 1)[0]
        if path == b"/metrics":
            return 200, b"text/plain; version=0.0.4; charset=utf-8", self._metrics()
        if path == b"/livez":
            return 200, b"text/plain", b"ok\n"
        if path == b"/readyz":
            reasons = self._unready()
            lines = [f"not ready: {r}" for r in reasons] or ["ready"]
            body = "".join(f"{line}\n" for line in lines + self._notes()).encode()
            return (503 if reasons else 200), b"text/plain", body
        return 404, b"text/plain", b"not found\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                request = await _next_request(conn, reader)
            if request is None:
                return
            status, content_type, body = self._route(request.target)
            headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            writer.write(conn.send(h11.Data(data=body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        except (TimeoutError, h11.RemoteProtocolError, ConnectionError) as exc:
            log.debug("admin request failed: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _next_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return event
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(4096))
        elif isinstance(event, h11.ConnectionClosed):
            return None
