"""UDP datagram backends: one request datagram, one reply datagram; and flows.

Each exchange and each flow uses a fresh connected socket, so the kernel
filters replies by source address and reports ICMP unreachable as an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar, cast

from netsched_edge.backends.base import (
    Backend,
    BackendRequest,
    BackendResponse,
    BackendUnavailable,
    collect,
    iter_chunks,
)
from netsched_edge.forwarder.flows import default_fd_reserve, nofile_limit

MAX_UDP_PAYLOAD = 65507
HEALTH_PROBE = b"\x00netsched-health"

_P = TypeVar("_P", bound=asyncio.DatagramProtocol)


class _Reply(asyncio.DatagramProtocol):
    """Resolves a future with the first reply datagram, or the first socket error."""

    def __init__(self, reply: asyncio.Future[bytes]) -> None:
        self._reply = reply

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not self._reply.done():
            self._reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self._reply.done():
            self._reply.set_exception(exc)


class UDPFlow(asyncio.DatagramProtocol):
    """One relayed flow: datagrams both ways over its own connected socket."""

    def __init__(self, on_reply: Callable[[bytes], None], max_datagram: int) -> None:
        self._on_reply = on_reply
        self._max_datagram = max_datagram
        self._transport: asyncio.DatagramTransport | None = None
        self._loop = asyncio.get_running_loop()
        # Loop time of the last datagram either way, for the relay's idle timeout.
        self.last_activity = self._loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: before Python 3.12 the selector loop's
        # datagram transport does not subclass asyncio.DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.last_activity = self._loop.time()
        self._on_reply(data)

    def error_received(self, exc: Exception) -> None:
        # Datagram semantics: an unreachable backend looks like loss to the
        # flow; health checks are what take the backend out of rotation.
        pass

    def send(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise RuntimeError("send on a closed UDP flow")
        _check_datagram(data, self._max_datagram)
        self._transport.sendto(data)
        self.last_activity = self._loop.time()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class UDPBackend(Backend):
    """A backend answering each request datagram with one reply datagram."""

    kind = "udp"

    def __init__(
        self, name: str, host: str, port: int, *, max_datagram: int = MAX_UDP_PAYLOAD
    ) -> None:
        if not 1 <= max_datagram <= MAX_UDP_PAYLOAD:
            raise ValueError(f"max_datagram must be in 1..{MAX_UDP_PAYLOAD}, got {max_datagram}")
        super().__init__(name)
        self.host = host
        self.port = port
        self.max_datagram = max_datagram

    async def exchange(
        self, request: BackendRequest, body: AsyncIterator[bytes], timeout: float
    ) -> BackendResponse:
        try:
            payload = await collect(body, self.max_datagram)
        except ValueError as exc:
            raise ValueError(
                f"udp backend {self.name!r}: request body exceeds "
                f"max_datagram={self.max_datagram} bytes"
            ) from exc
        _check_datagram(payload, self.max_datagram)
        return BackendResponse(200, iter_chunks(await self._round_trip(payload, timeout)))

    async def check(self, timeout: float) -> bool:
        try:
            await self._round_trip(HEALTH_PROBE, timeout)
        except (BackendUnavailable, TimeoutError):
            return False
        return True

    async def open_flow(self, on_reply: Callable[[bytes], None]) -> UDPFlow:
        """A new flow whose reply datagrams are passed to `on_reply`.

        A flow lives long, so it may not take one of the descriptors the edge keeps
        for everything else (the UDP forwarder's reserve, forwarder/flows.py).
        """
        transport, flow = await self._open(lambda: UDPFlow(on_reply, self.max_datagram))
        sock = transport.get_extra_info("socket")
        nofile = nofile_limit()
        if sock is not None and sock.fileno() >= nofile - default_fd_reserve(nofile):
            transport.close()
            raise BackendUnavailable(
                f"udp backend {self.name!r}: no flow, file descriptors are short "
                f"(RLIMIT_NOFILE {nofile})"
            )
        return flow

    async def _round_trip(self, payload: bytes, timeout: float) -> bytes:
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(timeout):
            transport, _ = await self._open(lambda: _Reply(reply))
            try:
                transport.sendto(payload)
                return await reply
            except OSError as exc:
                raise BackendUnavailable(
                    f"udp backend {self.name!r} at {self.host}:{self.port}: {exc}"
                ) from exc
            finally:
                transport.close()

    async def _open(self, factory: Callable[[], _P]) -> tuple[asyncio.DatagramTransport, _P]:
        try:
            return await asyncio.get_running_loop().create_datagram_endpoint(
                factory, remote_addr=(self.host, self.port)
            )
        except OSError as exc:
            raise BackendUnavailable(
                f"udp backend {self.name!r}: cannot open a socket to {self.host}:{self.port}: {exc}"
            ) from exc


def _check_datagram(data: bytes, limit: int) -> None:
    # asyncio silently drops empty datagrams (before Python 3.13), so refuse them loudly.
    if not data:
        raise ValueError("UDP payload is empty: empty datagrams cannot be sent")
    if len(data) > limit:
        raise ValueError(f"UDP payload of {len(data)} bytes exceeds max_datagram={limit}")
