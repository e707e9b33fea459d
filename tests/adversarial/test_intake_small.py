"""Small faults at the intake (issue #12, fault 10): version negotiation under
1200 bytes, and a connection whose packets cannot be built.

Real UDP on loopback: a raw socket for the version probes, aioquic's asyncio
client against a ServerEndpoint whose connections fail on purpose.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent
from aioquic.quic.packet import QuicErrorCode, QuicPacketType
from intake_support import eventually, header_of, raw_peer
from support import http_backend, service

from netsched_client.runtime.driver import ConnectionDriver
from netsched_client.runtime.endpoint import ServerEndpoint, open_server_endpoint
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.tls import generate_self_signed

UNKNOWN_VERSION = 0x1A2A3A4A


def _unknown_version(size: int) -> bytes:
    """A long header of a version we do not speak (laid out as a v1 Initial)."""
    head = bytes([0xC0]) + UNKNOWN_VERSION.to_bytes(4, "big")
    head += b"\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\x00"  # no token
    rest = size - len(head) - 2
    return head + (0x4000 | rest).to_bytes(2, "big") + os.urandom(rest)


async def test_version_negotiation_answers_only_full_size_datagrams(
    start_edge, start_server
) -> None:
    port = await start_server(DemoHTTPServer("b", base_ms=0, cold_ms=0))
    edge = await start_edge(service("api", http_backend("b", port)))
    peer = await raw_peer(edge.port)
    try:
        for size in (55, 1199):
            peer.send(_unknown_version(size))
        assert await peer.recv_all(quiet=0.3) == []  # RFC 9000 §5.2.2: dropped
        peer.send(_unknown_version(1200))
        answer = await peer.recv(2.0)
        assert answer is not None
        assert header_of(answer).packet_type == QuicPacketType.VERSION_NEGOTIATION
    finally:
        peer.close()


class FailingConnection(QuicConnection):
    """Builds no packet once `fail` is set (a bug in the core), until it is closed."""

    fail = False

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        if self.fail:
            raise RuntimeError("cannot build a packet")
        return super().datagrams_to_send(now)

    def close(self, *args: Any, **kwargs: Any) -> None:
        self.fail = False  # the CONNECTION_CLOSE itself can be built
        super().close(*args, **kwargs)


class Watcher(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.terminated: asyncio.Future[ConnectionTerminated] = asyncio.Future()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated) and not self.terminated.done():
            self.terminated.set_result(event)


async def test_a_connection_that_cannot_send_is_closed_once_and_freed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pair = generate_self_signed(tmp_path)
    server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["hq-interop"])
    server_cfg.load_cert_chain(pair.certificate, pair.private_key)
    drivers: list[ConnectionDriver] = []

    def on_connection(driver: ConnectionDriver) -> None:
        drivers.append(driver)

        def on_event(event: QuicEvent) -> None:
            if isinstance(event, HandshakeCompleted):
                assert isinstance(driver.quic, FailingConnection)
                driver.quic.fail = True
                driver.quic.send_ping(1)  # something to send: every tick now fails
                driver.schedule_transmit()

        driver.add_event_handler(on_event)

    endpoint = await open_server_endpoint(
        "127.0.0.1",
        0,
        lambda: ServerEndpoint(server_cfg, on_connection, connection_factory=FailingConnection),
    )
    client_cfg = QuicConfiguration(
        is_client=True,
        alpn_protocols=["hq-interop"],
        server_name="localhost",
        verify_mode=ssl.CERT_NONE,
        idle_timeout=10.0,
    )
    try:
        async with asyncio.timeout(10):
            async with connect(
                "127.0.0.1",
                int(endpoint.local_address[1]),
                configuration=client_cfg,
                create_protocol=Watcher,
                wait_connected=True,
            ) as client:
                assert isinstance(client, Watcher)
                client.ping()  # keeps the server side busy: ACKs to send, every tick
                ended = await client.terminated
        assert ended.error_code == QuicErrorCode.INTERNAL_ERROR
        await eventually(lambda: not endpoint.connections)
        assert drivers[0].closed.is_set()
        await asyncio.sleep(0.3)  # ticks that would have logged again
        tracebacks = [r for r in caplog.records if r.exc_info is not None]
        assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
    finally:
        endpoint.close()
