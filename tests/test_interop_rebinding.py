"""The rebinding rules end to end: real aioquic connections, a client that moves, the key log.

The client and server are sans-IO aioquic connections; the test plays the NAT:
after the handshake it delivers the client's datagrams from a new address,
records the server's first datagram to it as the tap would (`rebind=`), and
the rule decrypts it and the client's answers with the key log.
"""

from __future__ import annotations

import asyncio
import io
import ssl
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from interop.cases import address_changed, path_validated
from interop.tap import Rebind, Tap, Trace
from netsched_edge.tls import generate_self_signed

OLD = ("127.0.0.1", 40000)
NEW = ("127.0.0.1", 40001)
SERVER = ("127.0.0.1", 4433)


class Migration:
    """A client and a server connection, moved from OLD to NEW by `rebind`."""

    def __init__(self, tmp: Path) -> None:
        certs = generate_self_signed(tmp)
        self.keylog = io.StringIO()
        client = QuicConfiguration(
            is_client=True, alpn_protocols=["hq-interop"], secrets_log_file=self.keylog
        )
        client.verify_mode = ssl.CERT_NONE
        server = QuicConfiguration(is_client=False, alpn_protocols=["hq-interop"])
        server.load_cert_chain(certs.certificate, certs.private_key)
        self.client = QuicConnection(configuration=client)
        self.server = QuicConnection(
            configuration=server,
            original_destination_connection_id=self.client.original_destination_connection_id,
        )
        self.trace = Trace()
        self.address = OLD
        self.rebind: Rebind | None = None
        self.now = 1.0
        self.client.connect(SERVER, now=self.now)
        self.pump()

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            moved = 0
            for data, _ in self.client.datagrams_to_send(now=self.now):
                self.trace.record(data, from_client=True, client=OLD, at=self.now)
                self.server.receive_datagram(data, self.address, now=self.now)
                moved += 1
            for data, addr in self.server.datagrams_to_send(now=self.now):
                # The NAT forgets the old mapping: only packets to the current address pass.
                if addr != self.address:
                    continue
                rebind = self.rebind if addr == NEW else None
                self.trace.record(data, from_client=False, client=OLD, at=self.now, rebind=rebind)
                self.client.receive_datagram(data, SERVER, now=self.now)
                moved += 1
            self.now += 0.01
            if not moved:
                return

    def transfer(self, size: int) -> None:
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_stream_data(stream_id, b"GET /x\r\n", end_stream=True)
        self.pump()
        self.server.send_stream_data(stream_id, b"y" * size, end_stream=True)
        self.pump()

    def move(self) -> None:
        self.rebind = Rebind(OLD, local=NEW)
        self.trace.rebinds.append(self.rebind)
        self.address = NEW


def test_path_validation_read_from_decrypted_packets(tmp_path: Path) -> None:
    run = Migration(tmp_path)
    run.transfer(200_000)  # packet numbers well past one byte's worth
    run.move()
    run.transfer(50_000)
    run.trace.keylog = run.keylog.getvalue()
    assert run.rebind is not None and run.rebind.first_server is not None
    assert path_validated(run.trace) is None
    # Without the key log the rule cannot look inside the packets, and says so.
    run.trace.keylog = ""
    assert "no key log" in str(path_validated(run.trace))


def test_path_validation_fails_without_the_client_response(tmp_path: Path) -> None:
    run = Migration(tmp_path)
    run.transfer(20_000)
    run.move()
    run.transfer(20_000)
    assert run.rebind is not None
    run.rebind.client_after.clear()  # as if every client packet after the move were lost
    run.trace.keylog = run.keylog.getvalue()
    assert "PATH_CHALLENGE without a PATH_RESPONSE" in str(path_validated(run.trace))


def test_rules_when_the_server_never_answers_the_new_address() -> None:
    trace = Trace()
    trace.rebinds.append(Rebind(OLD, local=("127.0.1.1", 5000)))
    assert "server saw only a single path" in str(path_validated(trace))
    assert address_changed(trace) == "server saw only a single client IP address in use"


def test_address_changed_wants_a_new_ip_the_server_answered() -> None:
    trace = Trace()
    trace.record(b"\x40" + bytes(30), from_client=True, client=OLD)
    moved = Rebind(OLD, local=("127.0.1.1", 5000))
    trace.rebinds.append(moved)
    trace.record(b"\x40" + bytes(60), from_client=False, client=OLD, rebind=moved)
    assert moved.first_server is not None
    assert address_changed(trace) is None


async def test_tap_rebind_moves_the_client_to_a_new_socket() -> None:
    loop = asyncio.get_running_loop()
    seen: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            seen.put_nowait(addr)
            self.transport.sendto(b"\x40" + bytes(40), addr)  # type: ignore[attr-defined]

    server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    tap = Tap(server.get_extra_info("sockname"))
    port = await tap.start()
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            answers.put_nowait(data)

    client, _ = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
    try:
        sources = []
        for host in (None, "127.0.1.7", None):
            client.sendto(b"\x40" + bytes(30), ("127.0.0.1", port))
            sources.append(await asyncio.wait_for(seen.get(), 5))
            await asyncio.wait_for(answers.get(), 5)  # the answer reached the client
            assert tap.rebind(host) == 1
    finally:
        client.close()
        server.close()
        tap.close()
    assert len(set(sources)) == 3  # a new socket each time: the server saw the client move
    assert [s[0] for s in sources] == ["127.0.0.1", "127.0.0.1", "127.0.1.7"]
    rebinds = tap.trace.rebinds
    assert [r.local for r in rebinds[:2]] == sources[1:]
    assert all(r.first_server is not None for r in rebinds[:2])
    with pytest.raises(ValueError, match="loopback IP"):
        tap.rebind("192.0.2.1")


def test_path_validation_read_after_key_updates(tmp_path: Path) -> None:
    run = Migration(tmp_path)
    for _ in range(3):  # three updates: packets in generation 3, key phase 1
        run.transfer(20_000)
        run.client.request_key_update()
    run.transfer(20_000)
    run.move()
    run.transfer(20_000)
    run.trace.keylog = run.keylog.getvalue()
    assert path_validated(run.trace) is None
