"""Hostile and hand-made QUIC datagrams for the intake tests, and a raw UDP peer.

Everything goes over real loopback sockets; the datagrams are built with
aioquic's public packet code (no private attributes).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from typing import cast

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicFrameType,
    QuicHeader,
    QuicPacketType,
    QuicProtocolVersion,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder

CID_LENGTH = 8


def garbage_initial(size: int = 1200, dcid: bytes | None = None) -> bytes:
    """A datagram whose long header parses as a v1 Initial; the rest is random (no keys open it)."""
    dcid = dcid or os.urandom(CID_LENGTH)
    scid = os.urandom(CID_LENGTH)
    head = bytes([0xC3]) + QuicProtocolVersion.VERSION_1.to_bytes(4, "big")
    head += bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + b"\x00"  # no token
    rest = size - len(head) - 2
    return head + (0x4000 | rest).to_bytes(2, "big") + os.urandom(rest)


def ping_initial(dcid: bytes | None = None) -> bytes:
    """A client Initial that decrypts but holds no CRYPTO (PING + PADDING): no ClientHello."""
    dcid = dcid or os.urandom(CID_LENGTH)
    crypto = CryptoPair()
    crypto.setup_initial(cid=dcid, is_client=True, version=QuicProtocolVersion.VERSION_1)
    builder = QuicPacketBuilder(
        host_cid=os.urandom(CID_LENGTH),
        peer_cid=dcid,
        version=QuicProtocolVersion.VERSION_1,
        is_client=True,
        max_datagram_size=1200,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    builder.start_frame(QuicFrameType.PING)
    (datagram,), _ = builder.flush()
    return datagram


def client_hello_initial(alpn: str = "hq-interop") -> bytes:
    """The first datagram of a real aioquic client: its ClientHello in an Initial."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=[alpn], server_name="localhost", verify_mode=ssl.CERT_NONE
    )
    client = QuicConnection(configuration=configuration)
    client.connect(("127.0.0.1", 4433), now=0.0)
    (data, _), *_ = client.datagrams_to_send(now=0.0)
    return data


def short_header(dcid: bytes, size: int) -> bytes:
    """A 1-RTT packet to `dcid`: random protected bytes after the header."""
    return bytes([0x40 | (os.urandom(1)[0] & 0x3F)]) + dcid + os.urandom(size - 1 - len(dcid))


def header_of(datagram: bytes) -> QuicHeader:
    return pull_quic_header(Buffer(data=datagram), host_cid_length=CID_LENGTH)


class RawPeer(asyncio.DatagramProtocol):
    """A bare UDP socket on loopback: sends what it is given, keeps what comes back."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def recv(self, timeout: float) -> bytes | None:
        try:
            return await asyncio.wait_for(self.received.get(), timeout)
        except TimeoutError:
            return None

    async def recv_all(self, quiet: float) -> list[bytes]:
        """Every datagram until none came for `quiet` seconds."""
        out = []
        while (data := await self.recv(quiet)) is not None:
            out.append(data)
        return out

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def raw_peer(port: int, local_host: str = "127.0.0.1") -> RawPeer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(
        RawPeer, local_addr=(local_host, 0), remote_addr=("127.0.0.1", port)
    )
    return peer


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `check()` holds (polled every 20 ms), or fail after `timeout`."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)
