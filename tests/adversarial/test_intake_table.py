"""The connection table under garbage and floods (issue #12, fault 3).

A real edge on loopback, raw UDP sockets for the hostile side, the SDK for the
honest clients: Initials that do not decrypt take no state, connections count
against the caps (total, per source address) once a ClientHello was taken,
Retry is required above `retry_above` of the table, and the log says so once
per interval, not once per datagram.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicErrorCode, QuicPacketType
from intake_support import (
    client_hello_initial,
    eventually,
    garbage_initial,
    header_of,
    ping_initial,
    raw_peer,
)
from support import http_backend, service

from netsched_client import Session, open_session
from netsched_client.errors import ConnectionRefused
from netsched_client.runtime.endpoint import EndpointLimits, ServerEndpoint, open_server_endpoint
from netsched_edge.config import LimitsConfig
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.server import EdgeQuicConnection, EdgeServer
from netsched_edge.tls import generate_self_signed


@pytest.fixture
async def api(start_server) -> int:
    return int(await start_server(DemoHTTPServer("b", base_ms=0, cold_ms=0)))


async def _edge(start_edge, api: int, **limits: object) -> EdgeServer:
    edge: EdgeServer = await start_edge(
        service("api", http_backend("b", api)), limits=LimitsConfig(**limits)
    )
    return edge


async def _session(edge: EdgeServer, local: str = "127.0.0.1", timeout: float = 5.0) -> Session:
    return await open_session(
        "127.0.0.1",
        edge.port,
        ca_file=str(edge.ca_certificate),
        paths=[local],
        timeout=timeout,
        pmtud=None,
    )


async def _refused(edge: EdgeServer, reason: str, local: str = "127.0.0.1") -> None:
    """Over a cap, the handshake fails at once with CONNECTION_REFUSED and the reason
    (a stateless Initial from the edge), not at the client's handshake timeout."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectionRefused) as caught:
        session = await _session(edge, local, timeout=3.0)
        await session.close()
    assert loop.time() - started < 1.0
    assert caught.value.error_code == QuicErrorCode.CONNECTION_REFUSED
    assert f"refused the connection: {reason}" in str(caught.value)


async def test_garbage_initials_take_no_state_and_log_once(
    start_edge, api: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="netsched.endpoint")
    edge = await _edge(start_edge, api)
    peer = await raw_peer(edge.port)
    try:
        for _ in range(300):
            peer.send(garbage_initial())
        assert await peer.recv_all(quiet=0.3) == []  # garbage gets no answer
        assert edge.quic_connections() == []  # and takes no slot
        lines = [r for r in caplog.records if r.name == "netsched.endpoint"]
        assert len(lines) <= 1, [r.getMessage() for r in lines]
    finally:
        peer.close()
    session = await _session(edge)
    try:
        assert (await session.request("api", b"after the garbage")).body == b"after the garbage"
        assert len(edge.quic_connections()) == 1
    finally:
        await session.close()


async def test_per_source_cap_counts_each_address_apart(start_edge, api: int) -> None:
    edge = await _edge(start_edge, api, max_connections_per_source=2)
    first, second = await _session(edge), await _session(edge)
    try:
        await _refused(edge, "too many connections from this address")  # a third
        other = await _session(edge, local="127.0.0.2")  # another address has its own count
        await other.close()
        await first.close()
        await eventually(lambda: len(edge.quic_connections()) == 1)
        again = await _session(edge)  # the closed one's slot is free again
        await again.close()
    finally:
        await second.close()


async def test_retry_is_required_above_the_threshold_and_the_total_cap_holds(
    start_edge, api: int
) -> None:
    edge = await _edge(start_edge, api, max_connections=4, retry_above=0.5)
    peer, late = await raw_peer(edge.port), await raw_peer(edge.port)
    sessions: list[Session] = []
    try:
        peer.send(client_hello_initial())  # held: 0 of 4: served at once
        answer = await peer.recv(2.0)
        assert answer is not None and header_of(answer).packet_type == QuicPacketType.INITIAL
        sessions.append(await _session(edge))  # held: 1
        late.send(client_hello_initial())  # held: 2 of 4 = retry_above: Retry first
        answer = await late.recv(2.0)
        assert answer is not None and header_of(answer).packet_type == QuicPacketType.RETRY
        assert len(edge.quic_connections()) == 2  # the Retry kept no state
        sessions.append(await _session(edge))  # the SDK answers the Retry
        sessions.append(await _session(edge))  # 4 of 4
        await _refused(edge, "server busy")
        await sessions.pop().close()
        await eventually(lambda: len(edge.quic_connections()) == 3)  # its draining ended
        sessions.append(await _session(edge))
        for session in sessions:
            assert (await session.request("api", b"x")).body == b"x"
    finally:
        peer.close()
        late.close()
        for session in sessions:
            await session.close()


async def test_a_flood_over_the_per_source_cap_logs_one_line(
    start_edge, api: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="netsched.endpoint")
    edge = await _edge(start_edge, api, max_connections_per_source=1, retry_above=1.0)
    peer = await raw_peer(edge.port)
    try:
        for _ in range(50):
            peer.send(client_hello_initial())
        await eventually(lambda: sum("per-source" in r.getMessage() for r in caplog.records) > 0)
        await asyncio.sleep(0.3)
        assert len(edge.quic_connections()) == 1
        lines = [r for r in caplog.records if r.name == "netsched.endpoint"]
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    finally:
        peer.close()


async def test_embryonic_connections_are_bounded_and_time_out(tmp_path: Path) -> None:
    pair = generate_self_signed(tmp_path)
    configuration = QuicConfiguration(is_client=False, alpn_protocols=["hq-interop"])
    configuration.load_cert_chain(pair.certificate, pair.private_key)
    limits = EndpointLimits(max_embryonic=4, embryonic_timeout_s=0.5)
    endpoint = await open_server_endpoint(
        "127.0.0.1",
        0,
        lambda: ServerEndpoint(
            configuration,
            lambda driver: None,
            connection_factory=EdgeQuicConnection,  # keeps a CRYPTO-less Initial's state
            limits=limits,
        ),
    )
    peer = await raw_peer(int(endpoint.local_address[1]))
    try:
        for _ in range(10):
            peer.send(ping_initial())
        await eventually(lambda: endpoint.intake.embryonic + endpoint.intake.evicted == 10)
        assert len(endpoint.connections) == 4 and endpoint.intake.connections == 0
        await eventually(lambda: not endpoint.connections, timeout=2.0)
        assert endpoint.intake.evicted == 10
        assert await peer.recv_all(quiet=0.1) == []  # none of them was answered
    finally:
        peer.close()
        endpoint.close()


async def test_new_limits_apply_to_new_clients(tmp_path: Path) -> None:
    pair = generate_self_signed(tmp_path)
    configuration = QuicConfiguration(is_client=False, alpn_protocols=["hq-interop"])
    configuration.load_cert_chain(pair.certificate, pair.private_key)
    endpoint = await open_server_endpoint(
        "127.0.0.1",
        0,
        lambda: ServerEndpoint(
            configuration,
            lambda driver: None,
            limits=EndpointLimits(max_connections_per_source=1, retry_above=1.0),
        ),
    )
    peer = await raw_peer(int(endpoint.local_address[1]))
    try:
        for _ in range(2):
            peer.send(client_hello_initial())
        await eventually(lambda: endpoint.intake.over_limit == 1)
        assert endpoint.intake.connections == 1
        endpoint.set_limits(EndpointLimits(max_connections_per_source=2, retry_above=1.0))
        peer.send(client_hello_initial())
        await eventually(lambda: endpoint.intake.connections == 2)
        assert endpoint.intake.over_limit == 1
    finally:
        peer.close()
        endpoint.close()


async def test_refusals_over_a_cap_are_stateless_and_within_their_budget(tmp_path: Path) -> None:
    pair = generate_self_signed(tmp_path)
    configuration = QuicConfiguration(is_client=False, alpn_protocols=["hq-interop"])
    configuration.load_cert_chain(pair.certificate, pair.private_key)
    limits = EndpointLimits(max_connections_per_source=1, retry_above=1.0, refusals_per_second=20)
    endpoint = await open_server_endpoint(
        "127.0.0.1", 0, lambda: ServerEndpoint(configuration, lambda driver: None, limits=limits)
    )
    peer = await raw_peer(int(endpoint.local_address[1]))
    try:
        peer.send(client_hello_initial())  # takes the source's one connection
        await eventually(lambda: endpoint.intake.connections == 1)
        await peer.recv_all(quiet=0.3)  # its handshake flight
        for _ in range(200):
            peer.send(client_hello_initial())
        answers = await peer.recv_all(quiet=0.3)
        assert 20 <= len(answers) <= 22  # the burst, and what refilled while the flood ran
        assert endpoint.intake.refusals == len(answers)
        assert endpoint.intake.over_limit == 200
        assert all(header_of(a).packet_type == QuicPacketType.INITIAL for a in answers)
        assert all(len(a) < 100 for a in answers)  # far below the 1200-byte Initial
        assert len(endpoint.connections) == 1  # nothing kept for the refused
    finally:
        peer.close()
        endpoint.close()
