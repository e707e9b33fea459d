"""Small builders shared by the tests."""

from __future__ import annotations

from pathlib import Path

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import QuicEvent

from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.slo import SLO
from netsched_edge.config import BackendConfig, ServiceConfig
from netsched_edge.tls import generate_self_signed

CLIENT_ADDR: NetworkAddress = ("10.0.0.1", 4433)  # never on the wire: in-memory only
SERVER_ADDR: NetworkAddress = ("10.0.0.2", 4433)
PACING_STEP = 0.002


def http_backend(name: str, port: int, **kwargs: object) -> BackendConfig:
    return BackendConfig(name=name, kind="http", host="127.0.0.1", port=port, **kwargs)  # type: ignore[arg-type]


def service(name: str, *backends: BackendConfig, **kwargs: object) -> ServiceConfig:
    return ServiceConfig(name=name, backends=backends, **kwargs)  # type: ignore[arg-type]


class MemoryPair:
    """A client and a server QUIC connection joined in memory, on a fake clock.

    `drop` decides per datagram whether it is lost (direction, index) → bool,
    so tests express loss and reordering as plain list operations.
    """

    def __init__(self, client: QuicConnection, server: QuicConnection, now: float = 1.0) -> None:
        self.client = client
        self.server = server
        self.now = now
        self.client.connect(SERVER_ADDR, now=self.now)

    def flush(self, rounds: int = 200) -> None:
        """Deliver datagrams both ways until both sides are quiet.

        Timers due within PACING_STEP (the pacer's sub-millisecond waits) are
        fired on the way, so paced data goes out; longer ones wait for advance().
        """
        for _ in range(rounds):
            moved = self._move(self.client, self.server, CLIENT_ADDR)
            moved += self._move(self.server, self.client, SERVER_ADDR)
            if moved:
                continue
            due = self._next_timer()
            if due is None or due > self.now + PACING_STEP:
                return
            self._fire(due)

    def _next_timer(self) -> float | None:
        timers = [t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None]
        return min(timers, default=None)

    def _fire(self, at: float) -> None:
        self.now = max(self.now, at)
        for conn in (self.client, self.server):
            timer = conn.get_timer()
            if timer is not None and timer <= self.now:
                conn.handle_timer(self.now)

    def advance(self, seconds: float) -> None:
        """Move the clock, firing due timers on both sides."""
        target = self.now + seconds
        fired_at = None
        while (due := self._next_timer()) is not None and due <= target:
            if due == fired_at:
                due += 1e-6  # still due after firing (float rounding in aioquic's loss timer)
            fired_at = due
            self._fire(due)
            self.flush()
        self.now = target

    def _move(self, src: QuicConnection, dst: QuicConnection, src_addr: NetworkAddress) -> int:
        datagrams = src.datagrams_to_send(now=self.now)
        for data, _ in datagrams:
            dst.receive_datagram(data, src_addr, now=self.now)
        return len(datagrams)


def events_of(conn: QuicConnection) -> list[QuicEvent]:
    out = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


def memory_pair(
    *,
    local_slo: SLO | None = None,
    alpn: str = "netsched/1",
    ca_dir: Path,
    client_class: type[NetSchedConnection] = NetSchedConnection,
) -> MemoryPair:
    pair = generate_self_signed(ca_dir)
    client_cfg = QuicConfiguration(
        is_client=True,
        alpn_protocols=[alpn],
        server_name="localhost",
        max_datagram_frame_size=65536,
    )
    client_cfg.load_verify_locations(str(pair.ca_certificate))
    server_cfg = QuicConfiguration(
        is_client=False, alpn_protocols=[alpn], max_datagram_frame_size=65536
    )
    server_cfg.load_cert_chain(pair.certificate, pair.private_key)
    client = client_class(configuration=client_cfg, local_slo=local_slo)
    server = NetSchedConnection(
        configuration=server_cfg,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    return MemoryPair(client, server)
