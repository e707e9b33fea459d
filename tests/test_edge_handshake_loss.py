"""The edge under handshake loss: an Initial without CRYPTO may be the first to arrive.

RFC 9000 §17.2.2 makes the client's first *sent* Initial carry CRYPTO; when it
is lost, the first to *arrive* can be a PING+PADDING probe (qh3, picoquic probe
so) or an ACK. The edge used to close the connection on it (aioquic's
"Packet contains no CRYPTO frame"); it must ignore it, answer nothing, and let
the retransmitted ClientHello finish the handshake. Real UDP on loopback,
aioquic's client, its first datagram dropped and a probe sent in its place; and
the same probe alone (a straggler of an ended connection, or a header corrupted
into an unknown connection ID), which must get no answer at all.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilder

from netsched_edge.server import NO_CRYPTO_FRAME, EdgeQuicConnection
from netsched_edge.tls import generate_self_signed


def probe_initial(quic: QuicConnection, frame: QuicFrameType) -> bytes:
    """A client Initial with one `frame` (and PADDING), on the client's next packet number."""
    dcid = quic._peer_cid.cid
    crypto = CryptoPair()
    crypto.setup_initial(cid=dcid, is_client=True, version=quic._version)
    builder = QuicPacketBuilder(
        host_cid=quic.host_cid,
        peer_cid=dcid,
        version=quic._version,
        is_client=True,
        max_datagram_size=1200,
        packet_number=quic._packet_number,
    )
    quic._packet_number += 1  # the client's own next packet must not reuse the number
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    buf = builder.start_frame(frame)
    if frame == QuicFrameType.ACK:
        buf.push_uint_var(0)  # largest acknowledged
        buf.push_uint_var(0)  # ACK delay
        buf.push_uint_var(0)  # no further ranges
        buf.push_uint_var(0)  # first range
    (datagram,), _ = builder.flush()
    assert len(datagram) >= 1200
    return datagram


class FirstFlightLost(QuicConnectionProtocol):
    """A client whose ClientHello datagram is lost; a CRYPTO-less Initial arrives instead."""

    probe_frame = QuicFrameType.PING

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._lost_first = False

    def transmit(self) -> None:
        if not self._lost_first:
            self._lost_first = True
            lost = self._quic.datagrams_to_send(now=self._loop.time())
            assert lost, "the ClientHello should be ready to go"
            self._transport.sendto(probe_initial(self._quic, self.probe_frame), lost[0][1])
        super().transmit()  # arms the loss timer: the ClientHello is retransmitted


class AckFirst(FirstFlightLost):
    probe_frame = QuicFrameType.ACK


async def _fetch(edge, protocol: type[FirstFlightLost], expected: bytes) -> None:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["hq-interop"], server_name="localhost"
    )
    configuration.load_verify_locations(str(edge.ca_certificate))
    async with asyncio.timeout(20):
        async with connect(
            "127.0.0.1", edge.port, configuration=configuration, create_protocol=protocol
        ) as client:
            reader, writer = await client.create_stream()
            writer.write(b"GET /hello.txt\r\n")
            writer.write_eof()
            assert await reader.read() == expected


async def test_ping_only_initial_first_does_not_close(start_edge, www: Path) -> None:
    edge = await start_edge(www=www)
    await _fetch(edge, FirstFlightLost, (www / "hello.txt").read_bytes())


async def test_ack_only_initial_first_does_not_close(start_edge, www: Path) -> None:
    edge = await start_edge(www=www)
    await _fetch(edge, AckFirst, (www / "hello.txt").read_bytes())


def _client() -> QuicConnection:
    client = QuicConnection(
        configuration=QuicConfiguration(
            is_client=True, alpn_protocols=["hq-interop"], server_name="localhost"
        )
    )
    client.connect(("127.0.0.1", 4433), now=0.0)
    return client


def _server(
    factory: type[QuicConnection], client: QuicConnection, tmp_path: Path
) -> QuicConnection:
    pair = generate_self_signed(tmp_path)
    configuration = QuicConfiguration(is_client=False, alpn_protocols=["hq-interop"])
    configuration.load_cert_chain(pair.certificate, pair.private_key)
    return factory(
        configuration=configuration,
        original_destination_connection_id=client.original_destination_connection_id,
    )


def test_aioquic_closes_on_a_crypto_less_first_initial(tmp_path: Path) -> None:
    """What the edge overrides, with the reason it matches on."""
    client = _client()
    server = _server(QuicConnection, client, tmp_path)
    server.receive_datagram(probe_initial(client, QuicFrameType.PING), ("127.0.0.1", 5000), 0.0)
    assert server._close_event is not None
    assert server._close_event.reason_phrase == NO_CRYPTO_FRAME


@pytest.mark.parametrize("frame", [QuicFrameType.PING, QuicFrameType.ACK])
def test_edge_answers_nothing_before_the_client_hello(tmp_path: Path, frame: QuicFrameType) -> None:
    client = _client()
    hello = client.datagrams_to_send(now=0.0)
    server = _server(EdgeQuicConnection, client, tmp_path)
    server.receive_datagram(probe_initial(client, frame), ("127.0.0.1", 5000), 0.0)
    assert server.datagrams_to_send(now=0.0) == []
    assert server._close_event is None
    for data, _ in hello:  # the ClientHello comes after all: the handshake goes on
        server.receive_datagram(data, ("127.0.0.1", 5000), 0.01)
    assert server.datagrams_to_send(now=0.01)


async def test_a_lone_crypto_less_initial_gets_no_answer(start_edge, www: Path) -> None:
    edge = await start_edge(www=www)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendto(
            sock, probe_initial(_client(), QuicFrameType.PING), ("127.0.0.1", edge.port)
        )
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await loop.sock_recv(sock, 2048)
    finally:
        sock.close()


def test_edge_closes_silently_before_any_client_hello(tmp_path: Path) -> None:
    """A connection made by an Initial whose header was corrupted (its keys do not open
    it) ends without a word when the edge closes: no CONNECTION_CLOSE to a made-up CID."""
    client = _client()
    (hello, _), *_ = client.datagrams_to_send(now=0.0)
    corrupted = bytearray(hello)
    corrupted[6] ^= 0x08  # a bit of the Destination Connection ID
    server = _server(EdgeQuicConnection, client, tmp_path)
    server.receive_datagram(bytes(corrupted), ("127.0.0.1", 5000), 0.0)
    server.close(reason_phrase="edge shutting down")
    assert server.datagrams_to_send(now=0.01) == []
    assert any(isinstance(e, ConnectionTerminated) for e in iter(server.next_event, None))


def test_edge_still_says_goodbye_after_a_client_hello(tmp_path: Path) -> None:
    client = _client()
    server = _server(EdgeQuicConnection, client, tmp_path)
    for data, _ in client.datagrams_to_send(now=0.0):
        server.receive_datagram(data, ("127.0.0.1", 5000), 0.0)
    server.datagrams_to_send(now=0.0)
    server.close(reason_phrase="edge shutting down")
    assert server.datagrams_to_send(now=0.01)  # the CONNECTION_CLOSE
