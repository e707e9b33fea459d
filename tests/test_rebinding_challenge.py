"""A client's NAT rebinds while the edge's congestion window is full (issue #4).

RFC 9000 §9.3 has the server validate a client's new address; the QUIC Interop
Runner's rebind-* rule wants the server's first packet to the new address to
carry the PATH_CHALLENGE. aioquic writes the challenge after the ACK in the same
packet, and the challenge, being in flight, needs room in the congestion window:
with the window full of packets sent to the old address, an ACK-only packet went
first. Here the tap's NAT is in memory, the clock fake: the client's local
addresses map to public ones, a rebinding gives one a new public address, and
server datagrams to a forgotten address are lost, as behind a real NAT. What the
server's first datagram to the new address carried, the client's own frame
parsing says (its qlog).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.events import HandshakeCompleted, QuicEvent, StreamDataReceived
from aioquic.quic.logger import QuicLogger

from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.multipath import events as mpe
from netsched_edge.server import EdgeQuicConnection
from netsched_edge.tls import generate_self_signed

SERVER: NetworkAddress = ("127.0.0.3", 4433)
LOCAL = (("127.0.0.1", 5001), ("127.0.0.2", 5002))  # the client's address per path ID
DELAY = 0.010  # one way
STEP = 0.001
RATE = 10e6 / 8  # bytes per second, server to client: the server's window fills
DOWNLOAD = 8_000_000  # more than the test sends: the server's window stays full


@dataclass
class NatNet:
    """Client, NAT, server; datagrams in flight on a heap ordered by arrival."""

    client: NetSchedConnection
    server: EdgeQuicConnection
    client_log: QuicLogger
    now: float = 1.0
    public: dict[NetworkAddress, NetworkAddress] = field(default_factory=dict)
    first_to: dict[NetworkAddress, bytes] = field(default_factory=dict)  # server's, by address
    frames_of_first: dict[NetworkAddress, list[str]] = field(default_factory=dict)
    received_from: Counter[NetworkAddress] = field(default_factory=Counter)  # server, bytes
    queue: list[tuple[float, int, bool, bytes, NetworkAddress]] = field(default_factory=list)
    server_started: bool = False
    link_busy_until: float = 0.0  # server to client
    downstream_lost: bool = False  # a loss burst towards the client
    client_events: list[QuicEvent] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _rebinds: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def rebind(self, local: NetworkAddress) -> NetworkAddress:
        """The NAT gives `local` a new public port and IP and forgets the old mapping."""
        n = next(self._rebinds)
        self.public[local] = (f"127.0.1.{n}", 40000 + n)
        return self.public[local]

    def step(self) -> None:
        for data, _, path_id in self.client.datagrams_with_paths(self.now):
            self._send(True, data, self.public[LOCAL[path_id]])
        if self.server_started:
            for data, dst, _ in self.server.datagrams_with_paths(self.now):
                self.first_to.setdefault(dst, data)
                self.link_busy_until = max(self.now, self.link_busy_until) + len(data) / RATE
                self._send(False, data, dst, self.link_busy_until)
        self.now += STEP
        while self.queue and self.queue[0][0] <= self.now:
            _, _, to_server, data, addr = heapq.heappop(self.queue)
            if to_server:
                self.server_started = True
                self.received_from[addr] += len(data)
                self.server.receive_datagram(data, addr, self.now)
            elif not self.downstream_lost and addr in self.public.values():
                self._deliver_to_client(data, addr)
        for conn in (self.client, self.server):
            timer = conn.get_timer()
            if timer is not None and timer <= self.now:
                conn.handle_timer(self.now)
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        while self.server.next_event() is not None:
            pass

    def _send(
        self, to_server: bool, data: bytes, addr: NetworkAddress, at: float | None = None
    ) -> None:
        at = (self.now if at is None else at) + DELAY
        heapq.heappush(self.queue, (at, next(self._seq), to_server, data, addr))

    def _deliver_to_client(self, data: bytes, public: NetworkAddress) -> None:
        if public in self.frames_of_first or data is not self.first_to.get(public):
            self.client.receive_datagram(data, SERVER, self.now)
            return
        # The client's own frame parsing, read back from its qlog, says what the
        # server's first datagram to this address carried.
        seen = len(self._received_packets())
        self.client.receive_datagram(data, SERVER, self.now)
        self.frames_of_first[public] = [
            frame["frame_type"]
            for event in self._received_packets()[seen:]
            for frame in event["data"]["frames"]
        ]

    def _received_packets(self) -> list[dict[str, object]]:
        (trace,) = self.client_log.to_dict()["traces"]
        return [e for e in trace["events"] if e["name"] == "transport:packet_received"]

    def run_until(self, done: Callable[[], bool], seconds: float) -> bool:
        end = self.now + seconds
        while self.now < end:
            if done():
                return True
            self.step()
        return False

    def run(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)

    def has(self, kind: type) -> bool:
        return any(isinstance(e, kind) for e in self.client_events)

    def downloaded(self) -> int:
        return sum(len(e.data) for e in self.client_events if isinstance(e, StreamDataReceived))

    def server_window_full(self, path_id: int) -> bool:
        (path,) = [p for p in self.server.path_info() if p["path_id"] == path_id]
        return bool(path["bytes_in_flight"] >= path["cwnd"])


def _net(tmp: Path, *, multipath: bool) -> NatNet:
    certs = generate_self_signed(tmp)
    client_log = QuicLogger()
    client_cfg = QuicConfiguration(
        is_client=True,
        alpn_protocols=["hq-interop"],
        server_name="localhost",
        quic_logger=client_log,
    )
    client_cfg.load_verify_locations(str(certs.ca_certificate))
    server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["hq-interop"])
    server_cfg.load_cert_chain(certs.certificate, certs.private_key)
    client = NetSchedConnection(
        configuration=client_cfg, max_path_id=3 if multipath else None, pmtud=None
    )
    server = EdgeQuicConnection(
        configuration=server_cfg,
        original_destination_connection_id=client.original_destination_connection_id,
        max_path_id=3,
        pmtud=None,
    )
    net = NatNet(client, server, client_log, public={local: local for local in LOCAL})
    client.connect(SERVER, now=net.now)
    assert net.run_until(lambda: net.has(HandshakeCompleted), 2.0)
    return net


def _rebind_under_full_window(net: NatNet, path_id: int) -> NetworkAddress:
    """A download; a loss burst fills the server's window with unacknowledged data, the
    NAT rebinds the path's address, and the idle client sends again (a PING) from the
    new one. Returns the new address."""
    sid = net.server.get_next_available_stream_id(is_unidirectional=True)
    net.server.send_stream_data(sid, bytes(DOWNLOAD))
    net.run(0.3)
    net.downstream_lost = True
    net.run(0.1)
    net.downstream_lost = False
    moved = net.rebind(LOCAL[path_id])
    assert net.server_window_full(path_id)  # what held the challenge back
    net.client.send_ping(1)
    assert net.run_until(lambda: moved in net.frames_of_first, 0.5)
    return moved


def _check_validated(net: NatNet, moved: NetworkAddress) -> None:
    assert net.frames_of_first[moved][:1] == ["path_challenge"]
    assert len(net.first_to[moved]) <= 3 * net.received_from[moved]  # anti-amplification
    before = net.downloaded()
    net.run(0.5)  # the client answers, the server validates the address and goes on
    assert net.downloaded() > before + 100_000


def test_plain_client_gets_a_path_challenge_first_at_its_new_address(tmp_path: Path) -> None:
    net = _net(tmp_path, multipath=False)
    _check_validated(net, _rebind_under_full_window(net, 0))


@pytest.mark.parametrize("path_id", [0, 1])
def test_multipath_client_gets_a_path_challenge_first_on_the_rebound_path(
    tmp_path: Path, path_id: int
) -> None:
    """With two paths, the server sends each through its scheduler's plan (a plain
    client's single path takes a shorter way); the other path, a backup, leaves the
    client's PING to the rebound one."""
    net = _net(tmp_path, multipath=True)
    net.run(0.2)  # HANDSHAKE_DONE, CIDs for new paths
    net.client.open_path(LOCAL[1], SERVER, net.now)
    assert net.run_until(lambda: net.has(mpe.PathValidated), 2.0)
    net.client.set_path_backup(1 - path_id, True)
    _check_validated(net, _rebind_under_full_window(net, path_id))
