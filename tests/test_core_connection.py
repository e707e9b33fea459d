"""The core's connection (#16, stage 4 part 2): a core pair in memory, interop with
aioquic's own QuicConnection both ways, loss, malformed input, the phase table.

Everything runs on a virtual clock: an in-memory wire with a fixed one-way
latency delivers datagrams in order, and the clock jumps to the next arrival
or the earliest timer. Drops are chosen by datagram index, so every run is the
same run. Each test runs on both backends of the compiled core modules.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import pytest
from aioquic.buffer import Buffer
from aioquic.quic import events as aioquic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import encode_quic_retry, pull_quic_header
from aioquic.quic.retry import QuicRetryTokenHandler
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netsched_client.core import control_frames, keys, packet, protection
from netsched_client.core.connection import (
    LIVE,
    TRANSITIONS,
    Backends,
    Connection,
    ConnectionConfig,
    ConnectionStateError,
    Phase,
    PhaseEvent,
    next_phase,
)
from netsched_client.core.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    StreamDataReceived,
    StreamReset,
)
from netsched_client.core.streams import StreamLimitError
from netsched_client.core.tls_adapter import TlsConfig
from netsched_edge.tls import generate_self_signed
from netsched_lab import memory

ALPN = "netsched/1"
CLIENT_ADDR = ("10.0.0.1", 50000)
SERVER_ADDR = ("10.0.0.2", 443)
BULK = 200_000


@pytest.fixture(params=sorted(packet.BACKENDS))
def backends(request: pytest.FixtureRequest) -> Backends:
    """Every core module on one backend: "cython" (where built) and "python"."""
    return Backends.named(request.param)


@dataclass(frozen=True)
class Certificates:
    ca_file: Path
    certificate: Path
    private_key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    pair = generate_self_signed(tmp_path_factory.mktemp("core-connection-tls"))
    return Certificates(pair.ca_certificate, pair.certificate, pair.private_key)


def core_configs(certs: Certificates, **options: Any) -> tuple[ConnectionConfig, ConnectionConfig]:
    """A core client trusting the test CA, a core server presenting its certificate."""
    certificate = x509.load_pem_x509_certificate(certs.certificate.read_bytes())
    key = serialization.load_pem_private_key(certs.private_key.read_bytes(), None)
    client = TlsConfig(
        is_client=True,
        alpn_protocols=(ALPN,),
        server_name="localhost",
        cafile=str(certs.ca_file),
    )
    server = TlsConfig(
        is_client=False,
        alpn_protocols=(ALPN,),
        certificate=certificate,
        private_key=key,  # type: ignore[arg-type]
    )
    return ConnectionConfig(client, **options), ConnectionConfig(server, **options)


def aioquic_configs(certs: Certificates) -> tuple[QuicConfiguration, QuicConfiguration]:
    return memory.quic_configurations(certs.ca_file, certs.certificate, certs.private_key, ALPN)


# -- endpoints: one surface over the core and over aioquic -------------------------------------


@dataclass
class Seen:
    """What an endpoint's application saw."""

    handshake: bool = False
    streams: dict[int, bytearray] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)
    resets: dict[int, int] = field(default_factory=dict)  # stream ID -> error code
    terminated: tuple[int, bool] | None = None  # (error code, by peer)


class Endpoint(Protocol):
    seen: Seen

    def receive(self, data: bytes, now: float) -> None: ...
    def send(self, now: float) -> list[bytes]: ...
    def timer(self) -> float | None: ...
    def fire(self, now: float) -> None: ...
    def drain(self) -> None: ...
    def open_and_send(self, data: bytes) -> int: ...
    def send_on(self, stream_id: int, data: bytes) -> None: ...
    def close(self, now: float) -> None: ...


class CoreEnd:
    def __init__(self, connection: Connection, peer: tuple[str, int]) -> None:
        self.conn = connection
        self.peer = peer
        self.seen = Seen()

    def receive(self, data: bytes, now: float) -> None:
        self.conn.receive(data, self.peer, now)

    def send(self, now: float) -> list[bytes]:
        return [data for data, _ in self.conn.datagrams_to_send(now)]

    def timer(self) -> float | None:
        return self.conn.get_timer()

    def fire(self, now: float) -> None:
        self.conn.handle_timer(now)

    def drain(self) -> None:
        while (event := self.conn.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                assert event.alpn_protocol == ALPN
                self.seen.handshake = True
            elif isinstance(event, StreamDataReceived):
                self.seen.streams.setdefault(event.stream_id, bytearray()).extend(event.data)
                if event.end_stream:
                    self.seen.ended.add(event.stream_id)
            elif isinstance(event, StreamReset):
                self.seen.resets[event.stream_id] = event.error_code
            elif isinstance(event, ConnectionTerminated):
                self.seen.terminated = (event.error_code, event.by_peer)

    def open_and_send(self, data: bytes) -> int:
        stream_id = self.conn.open_stream()
        self.conn.send_stream_data(stream_id, data, end_stream=True)
        return stream_id

    def send_on(self, stream_id: int, data: bytes) -> None:
        self.conn.send_stream_data(stream_id, data, end_stream=True)

    def close(self, now: float) -> None:
        self.conn.close(now)


class AioquicEnd:
    def __init__(
        self, connection: QuicConnection | None, config: QuicConfiguration, peer: tuple[str, int]
    ) -> None:
        self.conn = connection
        self.config = config
        self.peer = peer  # an aioquic client drops datagrams from other addresses
        self.seen = Seen()

    def receive(self, data: bytes, now: float) -> None:
        if self.conn is None:  # a server: the first Initial names the connection
            record = packet.parse_packet(data, 0, 8)
            start, length = record[packet.F_DCID_OFFSET], record[packet.F_DCID_LENGTH]
            self.conn = QuicConnection(
                configuration=self.config,
                original_destination_connection_id=data[start : start + length],
            )
        self.conn.receive_datagram(data, self.peer, now)

    def send(self, now: float) -> list[bytes]:
        if self.conn is None:
            return []
        return [data for data, _ in self.conn.datagrams_to_send(now)]

    def timer(self) -> float | None:
        return None if self.conn is None else self.conn.get_timer()

    def fire(self, now: float) -> None:
        assert self.conn is not None
        self.conn.handle_timer(now)

    def drain(self) -> None:
        while self.conn is not None and (event := self.conn.next_event()) is not None:
            if isinstance(event, aioquic_events.HandshakeCompleted):
                self.seen.handshake = True
            elif isinstance(event, aioquic_events.StreamDataReceived):
                self.seen.streams.setdefault(event.stream_id, bytearray()).extend(event.data)
                if event.end_stream:
                    self.seen.ended.add(event.stream_id)
            elif isinstance(event, aioquic_events.StreamReset):
                self.seen.resets[event.stream_id] = event.error_code
            elif isinstance(event, aioquic_events.ConnectionTerminated):
                self.seen.terminated = (event.error_code, True)

    def open_and_send(self, data: bytes) -> int:
        assert self.conn is not None
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_stream_data(stream_id, data, end_stream=True)
        return stream_id

    def send_on(self, stream_id: int, data: bytes) -> None:
        assert self.conn is not None
        self.conn.send_stream_data(stream_id, data, end_stream=True)

    def close(self, now: float) -> None:
        assert self.conn is not None
        self.conn.close()


class AioquicRetryServer(AioquicEnd):
    """aioquic's server with Retry on, in memory: the step `QuicServer.datagram_received`
    takes before a connection exists (asyncio/server.py), through aioquic's public
    `encode_quic_retry` and `QuicRetryTokenHandler`: a first Initial gets a Retry, one
    carrying a valid token starts the QuicConnection, told both CIDs."""

    def __init__(self, config: QuicConfiguration) -> None:
        super().__init__(None, config, CLIENT_ADDR)
        self._outgoing: list[bytes] = []
        self.tokens = QuicRetryTokenHandler()
        self.retries: list[bytes] = []
        self.retry_cid = bytes(range(40, 48))

    def receive(self, data: bytes, now: float) -> None:
        if self.conn is None:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
            if not header.token:
                token = self.tokens.create_token(
                    address=CLIENT_ADDR,
                    original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=self.retry_cid,
                    now=now,
                )
                retry = encode_quic_retry(
                    version=header.version,
                    source_cid=self.retry_cid,
                    destination_cid=header.source_cid,
                    original_destination_cid=header.destination_cid,
                    retry_token=token,
                )
                self.retries.append(retry)
                self._outgoing.append(retry)
                return
            original = self.tokens.validate_token(
                address=CLIENT_ADDR,
                destination_cid=header.destination_cid,
                token=header.token,
                now=now,
            )
            self.conn = QuicConnection(
                configuration=self.config,
                original_destination_connection_id=original,
                retry_source_connection_id=header.destination_cid,
            )
        self.conn.receive_datagram(data, self.peer, now)

    def send(self, now: float) -> list[bytes]:
        out, self._outgoing = self._outgoing, []
        return out + super().send(now)


# -- the wire ------------------------------------------------------------------------------------

Drop = Callable[[str, int], bool]  # (direction "c2s" / "s2c", index in it) -> dropped


@dataclass
class Wire:
    """Two endpoints, a one-way latency, deterministic drops, a virtual clock."""

    client: Endpoint
    server: Endpoint
    latency: float = 0.010
    drop: Drop = lambda direction, index: False
    now: float = 0.0
    sent: dict[str, int] = field(default_factory=lambda: {"c2s": 0, "s2c": 0})
    volume: dict[str, int] = field(default_factory=lambda: {"c2s": 0, "s2c": 0})
    versions: set[int] = field(default_factory=set)  # of the long headers sent
    dropped: int = 0
    _queue: list[tuple[float, int, str, bytes]] = field(default_factory=list)
    _fired: dict[int, tuple[float, float]] = field(default_factory=dict)  # by endpoint
    _seq: int = 0

    def _transmit(self) -> None:
        for direction, source in (("c2s", self.client), ("s2c", self.server)):
            for data in source.send(self.now):
                index = self.sent[direction]
                self.sent[direction] += 1
                self.volume[direction] += len(data)
                if data[0] & 0x80:
                    self.versions.add(int.from_bytes(data[1:5], "big"))
                if self.drop(direction, index):
                    self.dropped += 1
                    continue
                self._seq += 1
                heapq.heappush(self._queue, (self.now + self.latency, self._seq, direction, data))

    def run(self, until: Callable[[], bool], limit: float = 30.0) -> None:
        """Steps the clock until `until()` holds (AssertionError at `limit` seconds)."""
        while True:
            self._transmit()
            for end in (self.client, self.server):
                end.drain()
            if until():
                return
            deadlines = [self._deadline(end) for end in (self.client, self.server)]
            if self._queue:
                deadlines.append(self._queue[0][0])
            assert min(deadlines) < math.inf, "nothing left to happen"
            self.now = max(self.now, min(deadlines))
            assert self.now <= limit, f"not done by {limit} s"
            while self._queue and self._queue[0][0] <= self.now:
                _, _, direction, data = heapq.heappop(self._queue)
                (self.server if direction == "c2s" else self.client).receive(data, self.now)
            for end in (self.client, self.server):
                deadline = end.timer()
                if deadline is not None and deadline <= self.now:
                    end.fire(self.now)

    def _deadline(self, end: Endpoint) -> float:
        """An endpoint's next timer. A deadline already past is fired at once (a PTO whose
        backoff an ACK reset may fall in the past). One still due after it fired at this
        very time is a timer that does not move: a bug in the core; aioquic has one (its
        loss timer at the exact deadline re-arms itself there), and a real clock, always a
        little late, steps over it: so does this one, by a microsecond."""
        deadline = end.timer()
        if deadline is None:
            return math.inf
        if deadline > self.now:
            return deadline
        if self._fired.get(id(end)) != (self.now, deadline):
            self._fired[id(end)] = (self.now, deadline)
            return self.now
        assert not isinstance(end, CoreEnd), f"a core timer stuck at {deadline}"
        return self.now + 1e-6


def core_pair(certs: Certificates, backends: Backends, seed: int = 1, **options: Any) -> Wire:
    client_config, server_config = core_configs(certs, **options)
    rng = random.Random(seed)
    client = Connection(client_config, rng.randbytes, backends)
    server = Connection(server_config, rng.randbytes, backends)
    client.connect(SERVER_ADDR, 0.0)
    return Wire(CoreEnd(client, SERVER_ADDR), CoreEnd(server, CLIENT_ADDR))


def pattern(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def exchange(wire: Wire, size: int = BULK, limit: float = 30.0) -> None:
    """The client sends `size` bytes on a new stream; the server answers `size` other
    bytes on the same stream; both arrive whole and ended."""
    wire.run(lambda: wire.client.seen.handshake and wire.server.seen.handshake, limit)
    upload, download = pattern(size, 1), pattern(size, 2)
    stream_id = wire.client.open_and_send(upload)
    wire.run(lambda: stream_id in wire.server.seen.ended, limit)
    assert bytes(wire.server.seen.streams[stream_id]) == upload
    wire.server.send_on(stream_id, download)
    wire.run(lambda: stream_id in wire.client.seen.ended, limit)
    assert bytes(wire.client.seen.streams[stream_id]) == download


def close_cleanly(wire: Wire, limit: float = 30.0) -> None:
    """The client closes (application, NO_ERROR); the server hears it from the peer."""
    wire.client.close(wire.now)
    wire.run(lambda: wire.server.seen.terminated is not None, limit)
    assert wire.server.seen.terminated == (0, True)


# -- core and core -------------------------------------------------------------------------------


def test_two_core_connections_handshake_exchange_both_ways_and_close(
    certs: Certificates, backends: Backends
) -> None:
    wire = core_pair(certs, backends)
    exchange(wire)
    client, server = wire.client, wire.server
    assert isinstance(client, CoreEnd) and isinstance(server, CoreEnd)
    assert client.conn.phase is Phase.CONFIRMED and server.conn.phase is Phase.CONFIRMED
    # Both sides read the other's transport parameters (RFC 9000 §7.4).
    assert client.conn.peer_transport_parameters is not None
    assert client.conn.peer_transport_parameters.initial_source_connection_id == (
        server.conn.host_cid
    )
    close_cleanly(wire)
    assert client.seen.terminated == (0, False)
    assert server.conn.phase is Phase.DRAINING
    # Closing and draining each end three PTOs later, and nothing is armed after.
    wire.run(lambda: client.conn.phase is Phase.CLOSED and server.conn.phase is Phase.CLOSED)
    assert client.conn.get_timer() is None and server.conn.get_timer() is None


def test_a_client_initial_fills_1200_bytes_and_the_handshake_takes_one_round_trip(
    certs: Certificates, backends: Backends
) -> None:
    client_config, _ = core_configs(certs)
    client = Connection(client_config, random.Random(3).randbytes, backends)
    client.connect(SERVER_ADDR, 0.0)
    first = client.datagrams_to_send(0.0)
    assert [len(data) for data, _ in first] == [1200]
    assert first[0][1] == SERVER_ADDR
    wire = core_pair(certs, backends)
    wire.run(lambda: wire.client.seen.handshake and wire.server.seen.handshake)
    # Client Initial out, server flight back (one RTT of 20 ms), then the client's Finished.
    assert wire.now == pytest.approx(0.030)


def test_an_application_close_during_the_handshake_is_application_error(
    certs: Certificates, backends: Backends
) -> None:
    """RFC 9000 §10.2.3: before 1-RTT keys, an application close goes out as a transport
    CONNECTION_CLOSE with APPLICATION_ERROR and no reason."""
    wire = core_pair(certs, backends)
    client, server = wire.client, wire.server
    assert isinstance(client, CoreEnd) and isinstance(server, CoreEnd)
    wire.run(lambda: server.conn.phase is not Phase.HANDSHAKING or wire.now > 0)
    client.conn.close(wire.now, error_code=7, reason="secret reason")
    assert client.conn.phase is Phase.CLOSING
    wire.run(lambda: server.seen.terminated is not None)
    assert server.seen.terminated == (0x0C, True)
    assert server.conn.phase is Phase.DRAINING
    wire.run(lambda: client.conn.phase is Phase.CLOSED)
    # Closed at 10 ms, for three PTOs at the initial RTT: 3 x (333 + 4 x 166.5 + 25) ms.
    assert wire.now == pytest.approx(0.010 + 3 * (0.333 + 4 * 0.1665 + 0.025))


def test_the_idle_timeout_closes_both_sides_silently(
    certs: Certificates, backends: Backends
) -> None:
    wire = core_pair(certs, backends, idle_timeout=2.0)
    wire.run(lambda: wire.client.seen.handshake and wire.server.seen.handshake)
    wire.run(lambda: wire.client.seen.terminated is not None and wire.server.seen.terminated)
    assert wire.client.seen.terminated == (0, False)
    assert 2.0 <= wire.now <= 2.1


# -- interop with aioquic ------------------------------------------------------------------------


def test_interop_core_client_against_aioquic_server(
    certs: Certificates, backends: Backends
) -> None:
    core_client_config, _ = core_configs(certs)
    _, server_config = aioquic_configs(certs)
    client = Connection(core_client_config, random.Random(5).randbytes, backends)
    client.connect(SERVER_ADDR, 0.0)
    wire = Wire(CoreEnd(client, SERVER_ADDR), AioquicEnd(None, server_config, CLIENT_ADDR))
    exchange(wire)
    close_cleanly(wire)
    assert client.phase in (Phase.CLOSING, Phase.CLOSED)


def test_interop_aioquic_client_against_core_server(
    certs: Certificates, backends: Backends
) -> None:
    client_config, _ = aioquic_configs(certs)
    _, core_server_config = core_configs(certs)
    aioquic_client = QuicConnection(configuration=client_config)
    aioquic_client.connect(SERVER_ADDR, now=0.0)
    server = Connection(core_server_config, random.Random(6).randbytes, backends)
    wire = Wire(
        AioquicEnd(aioquic_client, client_config, SERVER_ADDR), CoreEnd(server, CLIENT_ADDR)
    )
    exchange(wire)
    close_cleanly(wire)
    assert server.phase is Phase.DRAINING


# -- loss ------------------------------------------------------------------------------------------


def every(n: int, offset: int = 0) -> Drop:
    return lambda direction, index: index % n == offset


@pytest.mark.parametrize(
    "drop",
    [
        every(5),  # the client's first Initial and the server's first flight's first datagram
        every(7, 3),
        lambda direction, index: direction == "s2c" and index in (0, 1, 2, 3),
        lambda direction, index: index % 10 in (4, 5, 6),  # bursts of three
    ],
    ids=["every-5th", "every-7th", "server-flight", "bursts"],
)
def test_a_lossy_path_still_completes_the_handshake_and_both_transfers(
    certs: Certificates, backends: Backends, drop: Drop
) -> None:
    wire = core_pair(certs, backends, max_data=64 << 10, max_stream_data=32 << 10)
    wire.drop = drop
    exchange(wire, limit=60.0)
    assert wire.dropped > 0
    close_cleanly(wire, limit=60.0)


def test_a_lossy_path_to_aioquic_completes_too(certs: Certificates, backends: Backends) -> None:
    core_client_config, _ = core_configs(certs)
    _, server_config = aioquic_configs(certs)
    client = Connection(core_client_config, random.Random(8).randbytes, backends)
    client.connect(SERVER_ADDR, 0.0)
    wire = Wire(
        CoreEnd(client, SERVER_ADDR), AioquicEnd(None, server_config, CLIENT_ADDR), drop=every(6, 2)
    )
    exchange(wire, limit=60.0)
    assert wire.dropped > 0


@pytest.mark.parametrize("version", [packet.VERSION_1, packet.VERSION_2])
def test_a_core_client_follows_a_retry_from_aioquic(
    certs: Certificates, backends: Backends, version: int
) -> None:
    """RFC 9000 §8.1.2, §17.2.5: the client checks the Retry's integrity tag, resends its
    ClientHello with the token to the Retry's CID under new Initial keys, and checks the
    server's retry_source_connection_id (§7.3)."""
    core_client_config, _ = core_configs(certs, version=version)
    _, server_config = aioquic_configs(certs)
    client = Connection(core_client_config, random.Random(14).randbytes, backends)
    client.connect(SERVER_ADDR, 0.0)
    server = AioquicRetryServer(server_config)
    wire = Wire(CoreEnd(client, SERVER_ADDR), server)
    wire.run(lambda: wire.client.seen.handshake and wire.server.seen.handshake)
    assert wire.now == pytest.approx(0.050)  # one round trip more than without a Retry
    assert len(server.retries) == 1
    exchange(wire, size=50_000)
    close_cleanly(wire)


def test_a_retry_with_a_bad_tag_or_a_second_retry_is_ignored(
    certs: Certificates, backends: Backends
) -> None:
    core_client_config, _ = core_configs(certs)
    _, server_config = aioquic_configs(certs)
    client = Connection(core_client_config, random.Random(14).randbytes, backends)
    client.connect(SERVER_ADDR, 0.0)
    server = AioquicRetryServer(server_config)
    server.receive(client.datagrams_to_send(0.0)[0][0], 0.0)
    retry = server.send(0.0)[0]
    forged = retry[:-1] + bytes([retry[-1] ^ 1])
    client.receive(forged, SERVER_ADDR, 0.01)
    resent = client.datagrams_to_send(0.01)
    assert resent == []  # nothing new: the forged Retry changed nothing
    client.receive(retry, SERVER_ADDR, 0.01)
    first = client.datagrams_to_send(0.01)[0][0]
    record = packet.parse_packet(first, 0, 8)
    dcid = first[record[packet.F_DCID_OFFSET] : record[packet.F_DCID_OFFSET] + 8]
    assert dcid == server.retry_cid and record[packet.F_TOKEN_LENGTH] > 0
    client.receive(retry, SERVER_ADDR, 0.02)  # a second Retry: ignored
    assert client.datagrams_to_send(0.02) == []
    assert client.phase is Phase.HANDSHAKING


def test_an_aioquic_client_moving_to_another_connection_id_is_followed(
    certs: Certificates, backends: Backends
) -> None:
    """aioquic's client switches to our next CID and retires the first (NEW_CONNECTION_ID
    and RETIRE_CONNECTION_ID both ways); the core server routes the new one, issues a
    replacement, and the connection carries on."""
    client_config, _ = aioquic_configs(certs)
    _, core_server_config = core_configs(certs)
    aioquic_client = QuicConnection(configuration=client_config)
    aioquic_client.connect(SERVER_ADDR, now=0.0)
    server = Connection(core_server_config, random.Random(6).randbytes, backends)
    wire = Wire(
        AioquicEnd(aioquic_client, client_config, SERVER_ADDR), CoreEnd(server, CLIENT_ADDR)
    )
    dcids: set[bytes] = set()
    inner = wire.client.send

    def recording(now: float) -> list[bytes]:
        out = inner(now)
        for data in out:
            record = packet.parse_packet(data, 0, 8)
            if record[packet.F_KIND] == packet.KIND_ONE_RTT:
                dcids.add(data[1:9])
        return out

    wire.client.send = recording  # type: ignore[method-assign]
    exchange(wire, size=10_000)
    for _ in range(5):  # more than the 4 IDs first issued: replacements are needed
        aioquic_client.change_connection_id()
        exchange(wire, size=10_000)
    assert len(dcids) == 6 and server.host_cid in dcids
    assert server.phase is Phase.CONFIRMED


@pytest.mark.parametrize("core_side", ["server", "client"])
def test_interop_in_quic_version_2(certs: Certificates, backends: Backends, core_side: str) -> None:
    """RFC 9369 with aioquic: its v2 Initial salt, labels and packet types, both ways."""
    aioquic_client_config, aioquic_server_config = aioquic_configs(certs)
    core_client_config, core_server_config = core_configs(certs, version=packet.VERSION_2)
    if core_side == "server":
        aioquic_client_config.original_version = packet.VERSION_2
        aioquic_client = QuicConnection(configuration=aioquic_client_config)
        aioquic_client.connect(SERVER_ADDR, now=0.0)
        server = Connection(core_server_config, random.Random(13).randbytes, backends)
        wire = Wire(
            AioquicEnd(aioquic_client, aioquic_client_config, SERVER_ADDR),
            CoreEnd(server, CLIENT_ADDR),
        )
    else:
        client = Connection(core_client_config, random.Random(13).randbytes, backends)
        client.connect(SERVER_ADDR, 0.0)
        wire = Wire(
            CoreEnd(client, SERVER_ADDR), AioquicEnd(None, aioquic_server_config, CLIENT_ADDR)
        )
    wire.run(lambda: wire.client.seen.handshake and wire.server.seen.handshake)
    assert wire.versions == {packet.VERSION_2}  # every long header, both ways
    exchange(wire, size=50_000)
    close_cleanly(wire)


def interop_wire(certs: Certificates, backends: Backends, core_side: str) -> Wire:
    """A core endpoint on `core_side` and aioquic's QuicConnection on the other."""
    aioquic_client_config, aioquic_server_config = aioquic_configs(certs)
    core_client_config, core_server_config = core_configs(certs)
    if core_side == "server":
        aioquic_client = QuicConnection(configuration=aioquic_client_config)
        aioquic_client.connect(SERVER_ADDR, now=0.0)
        core = Connection(core_server_config, random.Random(12).randbytes, backends)
        return Wire(
            AioquicEnd(aioquic_client, aioquic_client_config, SERVER_ADDR),
            CoreEnd(core, CLIENT_ADDR),
        )
    core = Connection(core_client_config, random.Random(12).randbytes, backends)
    core.connect(SERVER_ADDR, 0.0)
    return Wire(CoreEnd(core, SERVER_ADDR), AioquicEnd(None, aioquic_server_config, CLIENT_ADDR))


@pytest.mark.parametrize("core_side", ["server", "client"])
def test_eight_concurrent_streams_each_way_with_aioquic_over_loss(
    certs: Certificates, backends: Backends, core_side: str
) -> None:
    wire = interop_wire(certs, backends, core_side)
    wire.drop = every(8, 5)
    wire.run(lambda: wire.client.seen.handshake and wire.server.seen.handshake, 60.0)
    ids = [wire.client.open_and_send(pattern(25_000, n)) for n in range(8)]
    wire.run(lambda: wire.server.seen.ended >= set(ids), 60.0)
    for n, stream_id in enumerate(ids):
        assert bytes(wire.server.seen.streams[stream_id]) == pattern(25_000, n)
        wire.server.send_on(stream_id, pattern(25_000, 100 + n))
    wire.run(lambda: wire.client.seen.ended >= set(ids), 60.0)
    for n, stream_id in enumerate(ids):
        assert bytes(wire.client.seen.streams[stream_id]) == pattern(25_000, 100 + n)


@pytest.mark.parametrize("core_side", ["server", "client"])
def test_key_updates_by_aioquic_are_followed_both_ways(
    certs: Certificates, backends: Backends, core_side: str
) -> None:
    """aioquic updates its 1-RTT keys (RFC 9001 §6) three times, with lost packets around
    each update; the core follows in both directions and the transfers go on."""
    wire = interop_wire(certs, backends, core_side)
    core = wire.client if core_side == "client" else wire.server
    aioquic_end = wire.server if core_side == "client" else wire.client
    assert isinstance(core, CoreEnd) and isinstance(aioquic_end, AioquicEnd)
    wire.drop = every(9, 4)
    exchange(wire, size=30_000, limit=60.0)
    for _ in range(3):
        assert aioquic_end.conn is not None
        aioquic_end.conn.request_key_update()
        exchange(wire, size=30_000, limit=60.0)
    assert core.conn.phase is Phase.CONFIRMED
    # The previous keys' discard timer, like every other, is gone once closed. (A close
    # goes once, and again only for what arrives after: no loss for it here.)
    wire.drop = lambda direction, index: False
    close_cleanly(wire, limit=60.0)
    wire.run(lambda: core.conn.phase is Phase.CLOSED, limit=60.0)
    assert core.conn.get_timer() is None


def core_and_aioquic(wire: Wire) -> tuple[CoreEnd, AioquicEnd]:
    ends = (wire.client, wire.server)
    core = next(end for end in ends if isinstance(end, CoreEnd))
    other = next(end for end in ends if isinstance(end, AioquicEnd))
    return core, other


@pytest.mark.parametrize("core_side", ["server", "client"])
def test_a_core_reset_stream_reaches_aioquic(
    certs: Certificates, backends: Backends, core_side: str
) -> None:
    wire = interop_wire(certs, backends, core_side)
    core, other = core_and_aioquic(wire)
    wire.run(lambda: wire.client.seen.handshake and wire.server.seen.handshake)
    request = wire.client.open_and_send(b"request")
    wire.run(lambda: request in wire.server.seen.ended)
    # The core sends on a stream it may send on: the response, or a stream of its own.
    target = request if core is wire.server else core.conn.open_stream()
    core.conn.send_stream_data(target, pattern(300_000, 1))
    wire.run(lambda: bool(other.seen.streams.get(target)))
    core.conn.reset_stream(target, 7)
    wire.run(lambda: target in other.seen.resets)
    assert other.seen.resets[target] == 7
    assert len(other.seen.streams[target]) < 300_000
    exchange(wire, size=20_000)


@pytest.mark.parametrize("core_side", ["server", "client"])
def test_a_core_stop_sending_makes_aioquic_reset(
    certs: Certificates, backends: Backends, core_side: str
) -> None:
    wire = interop_wire(certs, backends, core_side)
    core, other = core_and_aioquic(wire)
    wire.run(lambda: wire.client.seen.handshake and wire.server.seen.handshake)
    request = wire.client.open_and_send(b"request")
    wire.run(lambda: request in wire.server.seen.ended)
    assert other.conn is not None
    # aioquic sends on the request's answer, or on a stream of its own.
    target = request if core is wire.client else other.conn.get_next_available_stream_id()
    other.conn.send_stream_data(target, pattern(300_000, 2))
    wire.run(lambda: bool(core.seen.streams.get(target)))
    core.conn.stop_stream(target, 9)
    wire.run(lambda: target in core.seen.resets)
    assert core.seen.resets[target] == 9  # aioquic resets with the code it was given
    exchange(wire, size=20_000)


def test_a_server_sends_at_most_three_times_what_it_received_before_validation(
    certs: Certificates, backends: Backends
) -> None:
    wire = core_pair(certs, backends)
    wire.drop = lambda direction, index: direction == "c2s" and index >= 1
    wire.run(lambda: wire.now >= 5.0, limit=30.0)
    # The client's one 1200-byte Initial arrived: the server's flight and its PTO probes
    # (the last one cut to what is left) stop at 3600 bytes, whatever the PTO asks for.
    assert wire.sent["s2c"] >= 2
    assert 3 * 1200 - 64 < wire.volume["s2c"] <= 3 * 1200


def test_a_client_probes_with_nothing_in_flight_until_its_handshake_is_acknowledged(
    certs: Certificates, backends: Backends
) -> None:
    """RFC 9002 §6.2.2.1: a server flight of three datagrams (a longer certificate chain)
    loses its second, and the client's acknowledgement is lost: the server has sent
    all that 3x the client's 1200 bytes allows, the client has nothing in flight. The
    client's PTO, armed anyway, sends the probe that unblocks the server."""
    client_config, server_config = core_configs(certs)
    ca = x509.load_pem_x509_certificate(certs.ca_file.read_bytes())
    server_tls = replace(server_config.tls, certificate_chain=(ca,) * 4)
    rng = random.Random(1)
    client = Connection(client_config, rng.randbytes, backends)
    server = Connection(replace(server_config, tls=server_tls), rng.randbytes, backends)
    client.connect(SERVER_ADDR, 0.0)
    wire = Wire(CoreEnd(client, SERVER_ADDR), CoreEnd(server, CLIENT_ADDR))
    wire.drop = lambda direction, index: index == 1
    wire.run(lambda: wire.client.seen.handshake and wire.server.seen.handshake, limit=5.0)
    assert wire.volume["s2c"] > 2 * 1200  # more than a flight the limit lets through at once
    assert wire.now < 2.0


def test_stream_limits_grow_as_the_peers_streams_close(
    certs: Certificates, backends: Backends
) -> None:
    """With 2 bidirectional streams allowed, six exchanges one after the other each wait
    for the MAX_STREAMS the server sends as earlier streams close (RFC 9000 §4.6)."""
    wire = core_pair(certs, backends, max_streams_bidi=2)
    client, server = wire.client, wire.server
    assert isinstance(client, CoreEnd) and isinstance(server, CoreEnd)
    wire.run(lambda: client.seen.handshake and server.seen.handshake)
    assert client.conn.streams_available() == 2
    for round_ in range(6):
        wire.run(lambda: client.conn.streams_available() > 0)
        stream_id = client.open_and_send(pattern(3000, round_))
        assert stream_id == 4 * round_
        wire.run(lambda sid=stream_id: sid in server.seen.ended)  # type: ignore[misc]
        server.send_on(stream_id, b"ok")
        wire.run(lambda sid=stream_id: sid in client.seen.ended)  # type: ignore[misc]
    with pytest.raises(StreamLimitError):
        for _ in range(3):
            client.conn.open_stream()
    # Our six streams, both sides done, are forgotten too: nothing more can go on them.
    for round_ in range(6):
        with pytest.raises(ValueError, match="no sending side"):
            client.conn.send_stream_data(4 * round_, b"late")


# -- malformed input ---------------------------------------------------------------------------


def test_garbage_and_truncated_datagrams_raise_nothing_and_change_nothing(
    certs: Certificates, backends: Backends
) -> None:
    wire = core_pair(certs, backends)
    recorded: list[bytes] = []
    inner = wire.client.send

    def recording(now: float) -> list[bytes]:
        out = inner(now)
        recorded.extend(out)
        return out

    wire.client.send = recording  # type: ignore[method-assign]
    wire.run(lambda: wire.client.seen.handshake and wire.server.seen.handshake)
    server = wire.server
    assert isinstance(server, CoreEnd)
    rng = random.Random(11)
    junk = [b"", b"\x00", b"\xff" * 5, rng.randbytes(1200), bytes([0x40]) + rng.randbytes(40)]
    # Every prefix of what the client really sent, and each with one bit flipped.
    for data in recorded:
        junk += [data[:cut] for cut in range(0, len(data), 97)]
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x10
        junk.append(bytes(flipped))
    for data in junk:
        server.conn.receive(data, CLIENT_ADDR, wire.now)
    assert server.conn.phase is Phase.CONFIRMED
    assert server.conn.next_event() is None
    exchange(wire, size=20_000)


def test_a_stateless_reset_drains_the_client_and_nothing_else_does(
    certs: Certificates, backends: Backends
) -> None:
    """RFC 9000 §10.3.1: a datagram that opens as nothing, short-header shaped, ending with
    the server's stateless_reset_token: the client drains, silently. The same datagram
    with another ending is dropped."""
    wire = core_pair(certs, backends)
    client = wire.client
    assert isinstance(client, CoreEnd)
    wire.run(lambda: client.conn.phase is Phase.CONFIRMED)
    peer = client.conn.peer_transport_parameters
    assert peer is not None and peer.stateless_reset_token is not None
    body = bytes([0x5A]) + random.Random(4).randbytes(30)
    client.conn.receive(body + bytes(16), SERVER_ADDR, wire.now)
    client.conn.receive(body + peer.stateless_reset_token[:15], SERVER_ADDR, wire.now)
    assert client.conn.phase is Phase.CONFIRMED and client.conn.next_event() is None
    client.conn.receive(body + peer.stateless_reset_token, SERVER_ADDR, wire.now)
    assert client.conn.phase is Phase.DRAINING
    event = client.conn.next_event()
    assert isinstance(event, ConnectionTerminated) and event.reason == "stateless reset"
    assert event.by_peer
    assert client.conn.datagrams_to_send(wire.now) == []


class HandCrafted:
    """A client written by hand from the core's packet layer: Initial packets with any
    payload, to a core server, and the server's answer opened with its Initial keys."""

    def __init__(self, backends: Backends, server: Connection) -> None:
        self.dcid = bytes(range(8))
        self.scid = bytes(range(8, 16))
        client_keys, server_keys = keys.initial_keys(packet.VERSION_1, self.dcid)
        self.seal = protection.protection(client_keys)
        self.open = protection.protection(server_keys)
        self.server = server
        self.pn = 0

    def send_initial(self, payload: bytes, now: float = 0.0) -> list[bytes]:
        payload = payload + bytes(1160 - len(payload))  # PADDING to a full datagram
        header = packet.build_long_header(
            packet.KIND_INITIAL,
            packet.VERSION_1,
            self.dcid,
            self.scid,
            b"",
            len(payload) + protection.TAG_LENGTH,
            self.pn,
            1,
        )
        self.server.receive(self.seal.seal(header, payload, self.pn), CLIENT_ADDR, now)
        self.pn += 1
        return [data for data, _ in self.server.datagrams_to_send(now)]

    def close_frame(self, datagram: bytes) -> tuple[bool, int, int, str, int]:
        """The CONNECTION_CLOSE in the server's Initial answer."""
        record = packet.parse_packet(datagram, 0, 8)
        assert record[packet.F_KIND] == packet.KIND_INITIAL
        _, _, plain = self.open.open(
            datagram[: record[packet.F_LENGTH]], record[packet.F_PN_OFFSET], -1
        )
        pos = 0
        while plain[pos] == control_frames.PADDING_FRAME:
            pos += 1
        return control_frames.parse_connection_close(plain, pos)


@pytest.mark.parametrize(
    ("payload", "error_code", "frame_type"),
    [
        (bytes([0x40, 0x99]), 0x07, 0x99),  # unknown frame type: FRAME_ENCODING_ERROR
        (bytes([0x06, 0x00, 0x7F, 0xFF]), 0x07, 0x06),  # CRYPTO past the packet: FRAME_ENCODING
        (bytes([0x08, 0x00, 0x01, 0x61]), 0x0A, 0x08),  # STREAM in an Initial: PROTOCOL_VIOLATION
        (bytes([0x1E]), 0x0A, 0x1E),  # HANDSHAKE_DONE from a client: PROTOCOL_VIOLATION
        (bytes([0x02, 0x05, 0x00, 0x00, 0x00]), 0x0A, 0x02),  # ACK of a packet never sent
        (bytes([0x06, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00]), 0x10A, 0x06),  # a ServerHello: alert
        (bytes([0x40, 0x00]), 0x0A, 0x00),  # PADDING's type in two bytes: PROTOCOL_VIOLATION
    ],
    ids=[
        "unknown-frame",
        "truncated-crypto",
        "stream-in-initial",
        "handshake-done",
        "ack-unsent",
        "tls-unexpected-message",
        "padding-type-in-two-bytes",
    ],
)
def test_a_malformed_initial_closes_with_the_error_rfc_9000_names(
    certs: Certificates,
    backends: Backends,
    payload: bytes,
    error_code: int,
    frame_type: int,
) -> None:
    _, server_config = core_configs(certs)
    server = Connection(server_config, random.Random(9).randbytes, backends)
    client = HandCrafted(backends, server)
    answer = client.send_initial(payload)
    assert server.phase is Phase.CLOSING
    event = server.next_event()
    assert isinstance(event, ConnectionTerminated) and event.error_code == error_code
    # One datagram; not padded: §14.1 pads a server's ack-eliciting Initials, and a close is not.
    assert len(answer) == 1 and len(answer[0]) < 1200
    application, code, offending, _, _ = client.close_frame(answer[0])
    assert (application, code, offending) == (False, error_code, frame_type)
    # Closing: each later datagram gets the close again, nothing else happens.
    assert len(client.send_initial(b"\x01")) == 1
    assert server.next_event() is None


KNOWN_ERRORS = {0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x0A, 0x0D}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 0x20), st.binary(max_size=48))
def test_random_frames_in_an_initial_never_escape_nor_fail_inside(
    certs: Certificates, frame_type: int, body: bytes
) -> None:
    """Whatever frames a client's Initial carries, `receive` raises nothing; the server
    carries on, drains on the peer's close, or closes with a transport error RFC 9000
    §20 names (or a TLS alert), never INTERNAL_ERROR."""
    _, server_config = core_configs(certs)
    server = Connection(server_config, random.Random(0).randbytes)
    HandCrafted(Backends(), server).send_initial(bytes([frame_type]) + body)
    event = server.next_event()
    if event is None:
        assert server.phase is Phase.HANDSHAKING
    else:
        assert isinstance(event, ConnectionTerminated)
        if not event.by_peer:  # a CONNECTION_CLOSE the PADDING completed is the peer's
            assert event.error_code in KNOWN_ERRORS or event.error_code >= 0x100, event


def test_an_initial_in_a_short_datagram_is_ignored(certs: Certificates, backends: Backends) -> None:
    _, server_config = core_configs(certs)
    server = Connection(server_config, random.Random(9).randbytes, backends)
    client = HandCrafted(backends, server)
    header = packet.build_long_header(
        packet.KIND_INITIAL, packet.VERSION_1, client.dcid, client.scid, b"", 40, 0, 1
    )
    server.receive(client.seal.seal(header, bytes([0x01]) + bytes(23), 0), CLIENT_ADDR, 0.0)
    assert server.phase is Phase.HANDSHAKING
    assert server.datagrams_to_send(0.0) == []
    assert server.get_timer() is None


# -- the phase table -----------------------------------------------------------------------------


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("event", list(PhaseEvent))
def test_every_phase_and_event_moves_by_the_table_or_raises(
    phase: Phase, event: PhaseEvent
) -> None:
    expected = TRANSITIONS[phase].get(event)
    if expected is None:
        with pytest.raises(ConnectionStateError):
            next_phase(phase, event)
    else:
        assert next_phase(phase, event) is expected


def test_the_table_ends_in_closed_from_every_live_phase() -> None:
    for phase in LIVE:
        assert TRANSITIONS[phase][PhaseEvent.IDLE_TIMEOUT] is Phase.CLOSED
        closing = TRANSITIONS[phase][PhaseEvent.LOCAL_CLOSE]
        assert TRANSITIONS[closing][PhaseEvent.CLOSE_TIMEOUT] is Phase.CLOSED
    assert TRANSITIONS[Phase.CLOSED] == {}


def test_streams_of_a_closed_connection_refuse_data(
    certs: Certificates, backends: Backends
) -> None:
    wire = core_pair(certs, backends)
    wire.run(lambda: wire.client.seen.handshake)
    client = wire.client
    assert isinstance(client, CoreEnd)
    stream_id = client.conn.open_stream()
    client.conn.close(wire.now)
    with pytest.raises(ConnectionStateError):
        client.conn.send_stream_data(stream_id, b"late")
