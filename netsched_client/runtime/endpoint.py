"""UDP endpoints that host sans-IO QUIC connections.

`ServerEndpoint` routes datagrams to connections by destination connection ID
and creates a connection for each new client Initial; its connections share
one `Ticker`, so each tick's sends, every connection's, leave as one batch
(the burst planner's order and grouping). `open_client_endpoint` binds one
socket for one outgoing connection. Batches go out through
`UdpSender.send_batch`, on the batched Cython socket of `netsched_client.io`
(sendmmsg/GSO out, recvmmsg/GRO in).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, cast

from aioquic.buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import ConnectionIdIssued, ConnectionIdRetired, ConnectionTerminated
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler

from ..io import BatchedUdpSocket, UdpSocket, UdpStats, attach
from ..io._common import set_dont_fragment
from .driver import ConnectionDriver, Datagram
from .planner import BurstPlanner
from .ticker import TickedFlow, Ticker

log = logging.getLogger("netsched.endpoint")

ConnectionFactory = Callable[..., QuicConnection]


class UdpSender:
    """Owns one batched UDP socket (recvmmsg/GRO in, sendmmsg/GSO out).

    A connection's flush leaves as one `send_batch`; received datagrams come in
    batches, one wake-up each, and are handed to `datagram_received`.
    """

    _sock: UdpSocket | None = None
    _detach: Callable[[], None] | None = None

    def bind(
        self,
        family: socket.AddressFamily,
        local: tuple[str, int],
        setup: Callable[[socket.socket], None] | None = None,
    ) -> None:
        self._sock = BatchedUdpSocket(family, local, setup=quic_socket_setup(setup))
        self._detach = attach(asyncio.get_running_loop(), self._sock, self._on_batch)

    def _on_batch(self, batch: list[tuple[bytes, Any]]) -> None:
        for data, addr in batch:
            self.datagram_received(data, addr)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        raise NotImplementedError

    def send_batch(self, datagrams: list[Datagram]) -> None:
        if self._sock is not None:
            self._sock.send_batch([(data, addr) for data, addr, _ in datagrams])

    def close(self) -> None:
        if self._detach is not None:
            self._detach()
            self._detach = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    @property
    def udp_stats(self) -> UdpStats | None:
        """The socket's counters (send syscalls, datagrams, GSO messages); None once closed."""
        return None if self._sock is None else self._sock.stats

    @property
    def local_address(self) -> NetworkAddress:
        assert self._sock is not None
        return cast(NetworkAddress, self._sock.local_address)


class ServerEndpoint(UdpSender):
    """Accepts QUIC connections on one UDP socket.

    `planner` orders and groups the connections' sends (default: EDF, no
    egress budget); `ticker` runs it and holds the counters.
    """

    def __init__(
        self,
        configuration: QuicConfiguration,
        on_connection: Callable[[ConnectionDriver], None],
        *,
        connection_factory: ConnectionFactory = QuicConnection,
        retry: bool = False,
        max_connections: int = 10_000,
        planner: BurstPlanner[TickedFlow] | None = None,
    ) -> None:
        self._configuration = configuration
        self._on_connection = on_connection
        self._factory = connection_factory
        self._retry = QuicRetryTokenHandler() if retry else None
        self._max_connections = max_connections
        self._routes: dict[bytes, ConnectionDriver] = {}
        self._drivers: set[ConnectionDriver] = set()
        self._loop = asyncio.get_running_loop()
        self.ticker = Ticker(self.send_batch, self._loop, planner=planner)

    @property
    def connections(self) -> frozenset[ConnectionDriver]:
        return frozenset(self._drivers)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._configuration.connection_id_length
            )
        except ValueError:
            return  # not QUIC, or mangled beyond parsing: drop
        driver = self._routes.get(header.destination_cid)
        if driver is not None:
            driver.datagram_received(data, addr)
            return
        if header.packet_type == QuicPacketType.VERSION_NEGOTIATION:
            return  # never answer a VN with a VN (reflection loops)
        if (
            header.version is not None
            and header.version not in self._configuration.supported_versions
        ):
            self._send(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=self._configuration.supported_versions,
                ),
                addr,
            )
            return
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            return
        if len(self._drivers) >= self._max_connections:
            log.warning("connection limit %d reached: dropping Initial", self._max_connections)
            return
        self._accept(
            data, addr, header.destination_cid, header.source_cid, header.token, header.version
        )

    def _accept(
        self,
        data: bytes,
        addr: NetworkAddress,
        dcid: bytes,
        scid: bytes,
        token: bytes,
        version: int | None,
    ) -> None:
        original_dcid: bytes | None = dcid
        retry_scid: bytes | None = None
        if self._retry is not None:
            if not token:
                self._send_retry(addr, dcid, scid, version)
                return
            try:
                original_dcid = self._retry.validate_token(
                    address=addr, destination_cid=dcid, token=token, now=self._loop.time()
                )
            except ValueError:
                return  # forged or stale token: drop (RFC 9000 §8.1.3 allows it)
            retry_scid = dcid
        quic = self._factory(
            configuration=self._configuration,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_scid,
        )
        driver = ConnectionDriver(quic, ticker=self.ticker)
        driver.add_event_handler(lambda event: self._on_event(driver, event))
        self._drivers.add(driver)
        self._routes[dcid] = driver
        self._routes[quic.host_cid] = driver
        self._on_connection(driver)
        driver.datagram_received(data, addr)

    def _send_retry(
        self, addr: NetworkAddress, dcid: bytes, scid: bytes, version: int | None
    ) -> None:
        assert self._retry is not None and version is not None
        source_cid = os.urandom(8)
        token = self._retry.create_token(
            address=addr,
            original_destination_connection_id=dcid,
            retry_source_connection_id=source_cid,
            now=self._loop.time(),
        )
        self._send(
            encode_quic_retry(
                version=version,
                source_cid=source_cid,
                destination_cid=scid,
                original_destination_cid=dcid,
                retry_token=token,
            ),
            addr,
        )

    def _on_event(self, driver: ConnectionDriver, event: object) -> None:
        if isinstance(event, ConnectionIdIssued):
            self._routes[event.connection_id] = driver
        elif isinstance(event, ConnectionIdRetired):
            self._routes.pop(event.connection_id, None)
        elif isinstance(event, ConnectionTerminated):
            self._drivers.discard(driver)
            for cid in [cid for cid, d in self._routes.items() if d is driver]:
                del self._routes[cid]

    def _send(self, data: bytes, addr: NetworkAddress) -> None:
        self.send_batch([(data, addr, 0)])

    def close_all(self, error_code: int = 0, reason: str = "") -> None:
        for driver in list(self._drivers):
            driver.close(error_code, reason)

    def close(self) -> None:
        self.ticker.close()
        super().close()


class ClientEndpoint(UdpSender):
    """The sockets of one outgoing connection: the primary one (path 0) and one
    per extra path, each bound to the local address the path was opened from."""

    def __init__(self) -> None:
        self.driver: ConnectionDriver | None = None
        self._path_sockets: dict[int, PathSocket] = {}

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        if self.driver is not None:
            self.driver.datagram_received(data, addr)

    def send_batch(self, datagrams: list[Datagram]) -> None:
        if not self._path_sockets:
            super().send_batch(datagrams)
            return
        # One batch per socket, each path's datagrams in their order.
        batches: dict[UdpSender, list[Datagram]] = {}
        for datagram in datagrams:
            sender: UdpSender = self._path_sockets.get(datagram[2], self)
            batches.setdefault(sender, []).append(datagram)
        for sender, batch in batches.items():
            if sender is self:
                super().send_batch(batch)
            else:
                sender.send_batch(batch)

    async def open_path_socket(self, family: socket.AddressFamily, local_host: str) -> PathSocket:
        sock = PathSocket(self)
        sock.bind(family, (local_host, 0))
        return sock

    def bind_path(self, path_id: int, sock: PathSocket) -> PathSocket | None:
        """`path_id`'s datagrams leave from `sock` now; the socket it replaces, if any."""
        previous = self._path_sockets.get(path_id)
        self._path_sockets[path_id] = sock
        return previous

    def release_path(self, path_id: int) -> None:
        sock = self._path_sockets.pop(path_id, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        for path_id in list(self._path_sockets):
            self.release_path(path_id)
        super().close()


class PathSocket(UdpSender):
    """An extra path's socket: what it receives goes to the owner's connection."""

    def __init__(self, owner: ClientEndpoint) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self._owner.datagram_received(data, addr)


async def resolve(host: str, port: int) -> tuple[socket.AddressFamily, NetworkAddress]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    return family, cast(NetworkAddress, sockaddr)


async def open_server_endpoint(
    host: str,
    port: int,
    endpoint_factory: Callable[[], ServerEndpoint],
    setup: Callable[[socket.socket], None] | None = None,
) -> ServerEndpoint:
    """Bind a server endpoint; `setup` prepares the socket before bind (e.g. SO_REUSEPORT)."""
    family, addr = await resolve(host, port)
    endpoint = endpoint_factory()
    endpoint.bind(family, addr[:2], setup)
    return endpoint


async def open_client_endpoint(
    family: socket.AddressFamily, local_host: str | None = None, local_port: int = 0
) -> ClientEndpoint:
    if local_host is None:
        local_host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    endpoint = ClientEndpoint()
    endpoint.bind(family, (local_host, local_port))
    return endpoint


def quic_socket_setup(
    setup: Callable[[socket.socket], None] | None,
) -> Callable[[socket.socket], None]:
    """DF on every QUIC socket (the path MTU search needs probes that fail, not fragment),
    then the caller's own setup."""

    def run(sock: socket.socket) -> None:
        set_dont_fragment(sock)
        if setup is not None:
            setup(sock)

    return run
