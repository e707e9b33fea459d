"""Graceful drain and reload of the edge (issue #12, fault 8: the edge's side).

`EdgeServer.drain(timeout_s)`: requests under way finish, new ones are refused
(GOAWAY on h3, our GOAWAY on netsched/1, honoured by the SDK), then every
connection closes with NO_ERROR. `EdgeServer.reload(config)`: new services,
backends, limits and certificate without dropping a connection. Real edge,
real TCP backends, the SDK and aioquic's HTTP/3 client over real UDP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent
from aioquic.quic.packet import QuicErrorCode
from hypothesis import given, settings
from hypothesis import strategies as st
from request_support import (
    RawBackend,
    eventually,
    finished,
    h3_client,
    in_flight,
    raw_client,
    stall,
)
from support import http_backend, service

from netsched_client import ConnectionLost
from netsched_client.errors import ConnectionRefused, EdgeGoingAway, FramingError
from netsched_client.proto.framing import (
    ControlReader,
    Goaway,
    RequestHead,
    encode_goaway,
    encode_request_head,
)
from netsched_client.proto.session import ERROR_REFUSED
from netsched_client.runtime.session import client_configuration
from netsched_edge.server import EdgeServer
from netsched_edge.tls import generate_self_signed

H3_REQUEST_REJECTED = 0x10B
H3_GOAWAY = 0x07
SLOW_S = 0.5


def answer_after(seconds: float, body: bytes = b"ok"):
    async def handler(reader, writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(seconds)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
        )
        await writer.drain()

    return handler


async def _edge(start_server, start_edge, handler=None) -> EdgeServer:
    port = await start_server(RawBackend(handler or answer_after(SLOW_S)))
    edge: EdgeServer = await start_edge(service("api", http_backend("b1", port)))
    return edge


def _h3_goaways(control: bytes) -> list[int]:
    """Stream IDs of the GOAWAY frames on an HTTP/3 control stream (type byte first)."""
    buf = Buffer(data=control)
    assert buf.pull_uint_var() == 0x00  # stream type: control
    found = []
    while not buf.eof():
        frame_type, length = buf.pull_uint_var(), buf.pull_uint_var()
        payload = buf.pull_bytes(length)
        if frame_type == H3_GOAWAY:
            found.append(Buffer(data=payload).pull_uint_var())
    return found


# -- drain over netsched/1 ----------------------------------------------------------


async def test_drain_finishes_requests_under_way_and_refuses_new_ones(
    start_server, start_edge, open_client
) -> None:
    edge = await _edge(start_server, start_edge)
    session = await open_client(edge, reconnect=False)  # the edge's side, seen plainly
    under_way = asyncio.create_task(session.request("api", meta={"method": "GET"}))
    await eventually(lambda: in_flight(edge, "api") == 1, what="the request reached the backend")
    loop = asyncio.get_running_loop()
    started = loop.time()
    drain = asyncio.create_task(edge.drain(5.0))
    await eventually(lambda: session.going_away, what="the SDK heard the goaway")
    with pytest.raises(EdgeGoingAway):
        await session.request("api")
    response = await under_way
    assert response.status == 200 and response.body == b"ok"
    await asyncio.wait_for(drain, 3)
    assert loop.time() - started < SLOW_S + 1.0  # done when the request was, not at 5 s
    await eventually(lambda: session.closed, what="the connection closed")
    await eventually(lambda: not edge.connections, what="the edge's side ended")


async def test_requests_sent_before_the_goaway_arrived_are_refused_unprocessed(
    start_server, start_edge
) -> None:
    backend = RawBackend(answer_after(SLOW_S))
    port = await start_server(backend)
    edge = await start_edge(service("api", http_backend("b1", port)))
    get = encode_request_head(RequestHead(service="api", meta={"method": "GET"}))
    async with raw_client(edge) as client:  # a client that ignores the goaway
        first = client.open(get, end_stream=True)
        await eventually(
            lambda: in_flight(edge, "api") == 1, what="the request reached the backend"
        )
        drain = asyncio.create_task(edge.drain(5.0))
        await asyncio.sleep(0.05)
        late = client.open(get, end_stream=True)
        await finished(client.exchanges[late], timeout=3)
        assert client.exchanges[late].reset == ERROR_REFUSED
        await finished(client.exchanges[first], timeout=3)
        head = client.exchanges[first].head()
        assert head is not None and head.status == 200
        await asyncio.wait_for(drain, 3)
    assert len(backend.heads) == 1  # the refused request never reached the backend


async def test_drain_timeout_closes_connections_and_frees_slots(
    start_server, start_edge, open_client
) -> None:
    edge = await _edge(start_server, start_edge, stall)
    session = await open_client(edge, reconnect=False)  # the edge's side, seen plainly
    stuck = asyncio.create_task(session.request("api", meta={"method": "GET"}))
    await eventually(lambda: in_flight(edge, "api") == 1, what="the request reached the backend")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(edge.drain(0.4), 3)
    assert 0.35 < loop.time() - started < 1.5
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(stuck, 3)
    await eventually(lambda: in_flight(edge, "api") == 0, what="slot back")


async def test_new_connections_are_refused_while_draining(
    start_server, start_edge, open_client
) -> None:
    edge = await _edge(start_server, start_edge)
    session = await open_client(edge)
    under_way = asyncio.create_task(session.request("api", meta={"method": "GET"}))
    await eventually(lambda: in_flight(edge, "api") == 1, what="the request reached the backend")
    drain = asyncio.create_task(edge.drain(5.0))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectionLost):
        # Refused at the handshake, or closed right after it: never served.
        late = await open_client(edge, timeout=2.0, reconnect=False)
        await late.request("api", meta={"method": "GET"})
    assert loop.time() - started < 1.0  # refused, not left to time out
    assert (await under_way).body == b"ok"
    await asyncio.wait_for(drain, 3)


class _Refusal(QuicConnectionProtocol):
    """aioquic's client, keeping the ConnectionTerminated the edge's close frame made."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.terminated: asyncio.Future[ConnectionTerminated] = (
            asyncio.get_running_loop().create_future()
        )

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated) and not self.terminated.done():
            self.terminated.set_result(event)


async def _draining_edge(start_server, start_edge, open_client):
    """An edge draining with a request under way (so it stays up while the test connects)."""
    edge = await _edge(start_server, start_edge)
    session = await open_client(edge, reconnect=False)
    under_way = asyncio.create_task(session.request("api", meta={"method": "GET"}))
    await eventually(lambda: in_flight(edge, "api") == 1, what="the request reached the backend")
    drain = asyncio.create_task(edge.drain(5.0))
    await eventually(lambda: edge.draining, what="the drain began")
    return edge, under_way, drain


async def test_a_draining_edge_refuses_a_handshake_with_a_transport_connection_refused(
    start_server, start_edge, open_client
) -> None:
    edge, under_way, drain = await _draining_edge(start_server, start_edge, open_client)
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["netsched/1"])
    configuration.load_verify_locations(str(edge.ca_certificate))
    configuration.server_name = "localhost"
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        lambda: _Refusal(QuicConnection(configuration=configuration)),
        remote_addr=("127.0.0.1", edge.port),
    )
    try:
        client.connect(("127.0.0.1", edge.port))
        event = await asyncio.wait_for(client.terminated, 3)
    finally:
        transport.close()
    # RFC 9000 §10.2.3/§20.1: a transport CONNECTION_CLOSE (frame type 0x1c, which gives
    # a frame type; an application close gives none) with CONNECTION_REFUSED (0x02).
    assert event.frame_type is not None
    assert event.error_code == QuicErrorCode.CONNECTION_REFUSED
    assert event.reason_phrase == "edge draining"
    assert (await under_way).body == b"ok"
    await asyncio.wait_for(drain, 3)


async def test_the_sdk_reports_a_refused_handshake_as_connection_refused(
    start_server, start_edge, open_client
) -> None:
    edge, under_way, drain = await _draining_edge(start_server, start_edge, open_client)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectionRefused) as caught:
        await open_client(edge, timeout=3.0)
    assert loop.time() - started < 1.0  # refused at once, not at the timeout
    assert caught.value.error_code == QuicErrorCode.CONNECTION_REFUSED
    assert "refused the connection: edge draining" in str(caught.value)
    assert (await under_way).body == b"ok"
    await asyncio.wait_for(drain, 3)


# -- drain over h3 -------------------------------------------------------------------


async def test_h3_drain_sends_goaway_and_rejects_later_requests(start_server, start_edge) -> None:
    edge = await _edge(start_server, start_edge)
    async with h3_client(edge) as client:
        first = client.request("GET", "/api/slow")
        await eventually(
            lambda: in_flight(edge, "api") == 1, what="the request reached the backend"
        )
        (connection,) = edge.connections
        connection.go_away()
        await eventually(lambda: bool(_h3_goaways(bytes(client.control_data))), what="GOAWAY")
        assert _h3_goaways(bytes(client.control_data)) == [first + 4]
        late = client.request("GET", "/api/late")  # as a client that missed the GOAWAY
        drain = asyncio.create_task(edge.drain(5.0))
        await asyncio.wait_for(client.exchanges[late].done.wait(), 3)
        assert client.exchanges[late].reset == H3_REQUEST_REJECTED
        await asyncio.wait_for(client.exchanges[first].done.wait(), 3)
        assert client.exchanges[first].status == b"200"
        await asyncio.wait_for(drain, 3)


async def test_sdk_over_h3_sees_a_refused_request_as_going_away(
    start_server, start_edge, open_client
) -> None:
    edge = await _edge(start_server, start_edge)
    h3_only = client_configuration("127.0.0.1", ("h3",), ca_file=str(edge.ca_certificate))
    session = await open_client(edge, configuration=h3_only, reconnect=False)
    under_way = asyncio.create_task(session.request("api", meta={"method": "GET"}))
    await eventually(lambda: in_flight(edge, "api") == 1, what="the request reached the backend")
    (connection,) = edge.connections
    connection.go_away()
    with pytest.raises(EdgeGoingAway):
        await asyncio.wait_for(session.request("api", meta={"method": "GET"}), 3)
    assert (await under_way).body == b"ok"


# -- reload --------------------------------------------------------------------------


async def test_reload_switches_backends_without_dropping_the_connection(
    start_server, start_edge, open_client
) -> None:
    port_a = await start_server(RawBackend(answer_after(0, b"a")))
    port_b = await start_server(RawBackend(answer_after(0, b"b")))
    edge: EdgeServer = await start_edge(service("api", http_backend("a", port_a)))
    session = await open_client(edge)
    assert (await session.request("api")).body == b"a"
    old_pool = edge.dispatcher.pools["api"]
    config = replace(
        edge.config,
        services=(
            service("api", http_backend("b", port_b)),
            service("more", http_backend("a", port_a)),
        ),
    )
    edge.reload(config)
    assert (await session.request("api")).body == b"b"  # same connection, new backend
    assert (await session.request("more")).body == b"a"
    assert not session.closed and len(edge.connections) == 1
    assert edge.dispatcher.pools["api"] is not old_pool


async def test_reload_keeps_the_pool_of_an_unchanged_service(start_server, start_edge) -> None:
    port = await start_server(RawBackend(answer_after(0)))
    edge: EdgeServer = await start_edge(service("api", http_backend("a", port)))
    pool = edge.dispatcher.pools["api"]
    edge.reload(replace(edge.config, idle_timeout_s=12.0))
    assert edge.dispatcher.pools["api"] is pool


async def test_reload_lets_requests_under_way_finish_on_the_old_backend(
    start_server, start_edge, open_client
) -> None:
    port_a = await start_server(RawBackend(answer_after(SLOW_S, b"a")))
    port_b = await start_server(RawBackend(answer_after(0, b"b")))
    edge: EdgeServer = await start_edge(service("api", http_backend("a", port_a)))
    session = await open_client(edge)
    under_way = asyncio.create_task(session.request("api"))
    await eventually(lambda: in_flight(edge, "api") == 1, what="the request reached the backend")
    edge.reload(replace(edge.config, services=(service("api", http_backend("b", port_b)),)))
    assert (await session.request("api")).body == b"b"
    assert (await under_way).body == b"a"


async def test_reload_takes_a_new_certificate_for_new_connections(
    start_server, start_edge, open_client, tmp_path: Path
) -> None:
    edge = await _edge(start_server, start_edge, answer_after(0))
    old_ca = edge.ca_certificate
    before = await open_client(edge)
    pair = generate_self_signed(tmp_path)
    edge.reload(replace(edge.config, certificate=pair.certificate, private_key=pair.private_key))
    assert (await before.request("api")).body == b"ok"  # established: untouched
    after = await open_client(edge, configuration=_verifying(str(pair.ca_certificate)))
    assert (await after.request("api")).body == b"ok"
    with pytest.raises(ConnectionLost):  # the old CA no longer vouches for the edge
        await open_client(edge, configuration=_verifying(str(old_ca)), timeout=2.0)


def _verifying(ca: str):
    configuration = client_configuration("127.0.0.1", ca_file=ca)
    assert configuration.verify_mode != ssl.CERT_NONE
    return configuration


# -- the control stream's parser -------------------------------------------------------


def test_control_reader_whole_byte_by_byte_and_back_to_back() -> None:
    data = encode_goaway(Goaway(8)) + encode_goaway(Goaway(12))
    assert ControlReader().feed(data) == [Goaway(8), Goaway(12)]
    reader = ControlReader()
    got = [m for i in range(len(data)) for m in reader.feed(data[i : i + 1])]
    assert got == [Goaway(8), Goaway(12)]


def test_control_reader_ignores_later_kinds_and_rejects_garbage() -> None:
    later = _message({"v": 1, "x": 0})
    assert ControlReader().feed(later + encode_goaway(Goaway(0))) == [Goaway(0)]
    for bad in (b"\x00", _message({"v": 2, "ga": 4}), _message({"v": 1, "ga": 5}), b"\x03abc"):
        with pytest.raises(FramingError):
            ControlReader().feed(bad)


def _message(wire: dict[str, int]) -> bytes:
    payload = bytes(msgpack.packb(wire))
    return bytes([len(payload)]) + payload


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=64))
def test_control_reader_raises_only_framing_errors(data: bytes) -> None:
    with contextlib.suppress(FramingError):
        ControlReader().feed(data)


async def test_reload_applies_connection_caps_to_new_clients(
    start_server, start_edge, open_client
) -> None:
    edge = await _edge(start_server, start_edge, answer_after(0))
    first = await open_client(edge)
    second = await open_client(edge)
    capped = replace(edge.config.limits, max_connections_per_source=2)
    edge.reload(replace(edge.config, limits=capped))
    with pytest.raises(ConnectionRefused, match="too many connections from this address"):
        await open_client(edge, timeout=1.0)
    for session in (first, second):  # established: untouched
        assert (await session.request("api")).body == b"ok"
