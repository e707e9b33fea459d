"""The edge under handshake loss: an Initial without CRYPTO may be the first to arrive.

RFC 9000 §17.2.2 makes the client's first *sent* Initial carry CRYPTO; when it
is lost, the first to *arrive* can be a PING+PADDING probe (qh3, picoquic probe
so) or an ACK. The edge used to close the connection on it (aioquic's
"Packet contains no CRYPTO frame"); it must process it and let the
retransmitted ClientHello finish the handshake. Real UDP on loopback, aioquic's
client, its first datagram dropped and a probe sent in its place.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilder


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
