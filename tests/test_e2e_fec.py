"""FEC end to end: real UDP sockets on loopback, through the impairment relay.

The client sends a stream of 1 KB messages, one every 10 ms, each on a stream
of its own, to a NetSched server behind `netsched_lab.relay.UdpRelay` (100 ms
RTT, loss on the way up). A message is late when it arrives more than its
deadline (50 ms) after a loss-free delivery would have: a retransmission needs
at least an RTT more, so without FEC every lost message is late.

Congestion control: at 5 % loss NewReno sustains about sqrt(8 / 3p) ≈ 7
packets per RTT, fewer than the 10 messages (plus repairs) sent per RTT here,
so with aioquic's Reno messages queue and are late with or without FEC (FEC
must not hide losses from it, RFC 9265). `LAB_CC` keeps Reno's response but
never goes below a window the stream fits in, so the runs measure what FEC
does about loss; bench/bench_fec.py prints the Reno numbers too.

`run_message_stream` is shared with bench/bench_fec.py.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.congestion.base import K_MINIMUM_WINDOW, register_congestion_control
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.events import HandshakeCompleted, QuicEvent, StreamDataReceived
from aioquic.quic.packet_builder import QuicSentPacket
from support import http_backend, service

from netsched_client import SLO, Session
from netsched_client.fec.control import FecMode, FecOverride, FecPolicy
from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.fec_link import FecConfig, FecStats
from netsched_client.runtime.driver import ConnectionDriver
from netsched_client.runtime.endpoint import (
    ServerEndpoint,
    open_client_endpoint,
    open_server_endpoint,
)
from netsched_edge.demo_backends import DemoHTTPServer
from netsched_edge.server import EdgeServer
from netsched_edge.tls import generate_self_signed
from netsched_lab.impairment import GilbertElliott, LinkSpec, PathProfile
from netsched_lab.relay import UdpRelay

LAB_CC = "netsched-lab-floor"
LAB_FLOOR_PACKETS = 32
ONE_WAY_MS = 50.0
MESSAGE_BYTES = 1000


class FloorReno(RenoCongestionControl):
    """NewReno whose window never drops below LAB_FLOOR_PACKETS (test and bench only)."""

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._floor = LAB_FLOOR_PACKETS * max_datagram_size

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        super().on_packets_lost(now=now, packets=packets)
        self.congestion_window = max(self.congestion_window, self._floor)

    def on_persistent_congestion(self) -> None:
        super().on_persistent_congestion()
        self.congestion_window = max(self.congestion_window, self._floor)


assert K_MINIMUM_WINDOW < LAB_FLOOR_PACKETS
register_congestion_control(LAB_CC, FloorReno)


@dataclass(frozen=True, slots=True)
class StreamResult:
    sent: int
    late: int  # later than the deadline, or never delivered
    stats: FecStats  # the sender's
    receiver: FecStats
    bytes_sent: int  # by the sender, datagrams on the wire

    @property
    def late_share(self) -> float:
        return self.late / self.sent

    @property
    def overhead(self) -> float:
        """Repair bytes per protected byte sent."""
        protected = self.bytes_sent - self.stats.repair_bytes
        return self.stats.repair_bytes / protected if protected else 0.0


def profile(loss: float = 0.0, burst: float | None = None) -> PathProfile:
    """100 ms RTT; `loss` on the way up, random or in bursts of mean length `burst`."""
    up = (
        LinkSpec(delay_ms=ONE_WAY_MS, loss=loss)
        if burst is None
        else LinkSpec(delay_ms=ONE_WAY_MS, bursty=GilbertElliott.from_loss_and_burst(loss, burst))
    )
    return PathProfile(up=up, down=LinkSpec(delay_ms=ONE_WAY_MS))


def _configs(tmp: Path, cc: str) -> tuple[QuicConfiguration, QuicConfiguration]:
    pair = generate_self_signed(tmp)
    client = QuicConfiguration(
        is_client=True,
        alpn_protocols=["x"],
        server_name="localhost",
        congestion_control_algorithm=cc,
    )
    client.load_verify_locations(str(pair.ca_certificate))
    server = QuicConfiguration(
        is_client=False, alpn_protocols=["x"], congestion_control_algorithm=cc
    )
    server.load_cert_chain(pair.certificate, pair.private_key)
    return client, server


async def run_message_stream(
    tmp: Path,
    path: PathProfile,
    *,
    fec: FecConfig | None,
    messages: int = 300,
    interval: float = 0.01,
    deadline: float = 0.05,
    loss_tolerance: float = 0.01,
    cc: str = LAB_CC,
    seed: int = 1,
) -> StreamResult:
    """Send `messages` 1 KB messages through the relay; count those later than `deadline`."""
    client_cfg, server_cfg = _configs(tmp, cc)
    arrived: dict[int, float] = {}
    server_drivers: list[ConnectionDriver] = []

    def on_server_connection(driver: ConnectionDriver) -> None:
        server_drivers.append(driver)

        def on_event(event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived) and event.end_stream:
                arrived[event.stream_id] = driver.now()

        driver.add_event_handler(on_event)

    factory = functools.partial(NetSchedConnection, fec=fec)
    server = await open_server_endpoint(
        "127.0.0.1",
        0,
        lambda: ServerEndpoint(server_cfg, on_server_connection, connection_factory=factory),
    )
    relay = UdpRelay(server.local_address, default=path, seed=seed)
    relay_addr = await relay.start()
    client_endpoint = await open_client_endpoint(socket.AF_INET, "127.0.0.1")
    quic = NetSchedConnection(configuration=client_cfg, fec=fec)
    driver = ConnectionDriver(quic, client_endpoint.send_batch)
    client_endpoint.driver = driver
    ready = asyncio.Event()
    driver.add_event_handler(lambda e: ready.set() if isinstance(e, HandshakeCompleted) else None)
    try:
        quic.connect(relay_addr, now=driver.now())
        driver.transmit()
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.sleep(0.3)  # the handshake's last ACKs settle, the RTT is measured
        sent = await _send_messages(quic, driver, messages, interval, deadline, loss_tolerance)
        await asyncio.sleep(0.6)  # stragglers: retransmissions arrive (RTT 100 ms)
        server_quic = server_drivers[0].quic
        assert isinstance(server_quic, NetSchedConnection)
        late_by = ONE_WAY_MS / 1000 + deadline
        late = sum(arrived.get(sid, float("inf")) - at > late_by for sid, at in sent.items())
        bytes_sent = client_endpoint_bytes(quic)
        return StreamResult(len(sent), late, quic.fec_stats(), server_quic.fec_stats(), bytes_sent)
    finally:
        driver.close()
        client_endpoint.close()
        await relay.stop()
        server.close_all()
        server.close()


def client_endpoint_bytes(quic: NetSchedConnection) -> int:
    return sum(int(info["bytes_sent"]) for info in quic.path_info())


async def _send_messages(
    quic: NetSchedConnection,
    driver: ConnectionDriver,
    count: int,
    interval: float,
    deadline: float,
    loss_tolerance: float,
) -> dict[int, float]:
    sent: dict[int, float] = {}
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index in range(count):
        # Paced by the schedule, not by sleep() drift: message i leaves at start + i * interval.
        await asyncio.sleep(max(0.0, start + index * interval - loop.time()))
        stream_id = quic.get_next_available_stream_id(is_unidirectional=True)
        now = driver.now()
        quic.send_stream_data(stream_id, bytes([index % 256]) * MESSAGE_BYTES, end_stream=True)
        if quic.fec_enabled:
            rtt_free_arrival = now + ONE_WAY_MS / 1000
            quic.set_stream_fec(
                stream_id, deadline_at=rtt_free_arrival + deadline, loss_tolerance=loss_tolerance
            )
        sent[stream_id] = now
        driver.transmit()
    return sent


def fec_config(max_overhead: float = 0.5) -> FecConfig:
    return FecConfig(policy=FecPolicy(max_overhead=max_overhead))


async def test_fec_cuts_late_messages_through_the_relay(tmp_path: Path) -> None:
    path = profile(loss=0.05)
    plain = await run_message_stream(tmp_path / "plain", path, fec=None, messages=250)
    protected = await run_message_stream(tmp_path / "fec", path, fec=fec_config(), messages=250)
    assert plain.stats.symbols_sent == 0
    assert protected.receiver.symbols_recovered >= 5, protected
    # About 5 % of the messages (12 here) are lost on the way up: without FEC each
    # one is late, with FEC most are recovered in time. The difference is compared,
    # not a ratio: a stall of a loaded machine makes messages late in both runs.
    assert plain.late >= 5, plain
    assert plain.late - protected.late >= 5, (protected, plain)
    assert protected.overhead <= 0.75, protected.overhead


async def test_session_offering_fec_to_an_edge_without_it(
    start_server: Callable[[object], Awaitable[int]],
    start_edge: Callable[..., Awaitable[EdgeServer]],
    open_client: Callable[..., Awaitable[Session]],
) -> None:
    """The SDK's fec= options are harmless when the edge does not negotiate FEC."""
    port = await start_server(DemoHTTPServer("b1", base_ms=1, cold_ms=1))
    edge = await start_edge(service("api", http_backend("b1", port)), fec=False)
    session = await open_client(edge, fec=fec_config())
    response = await session.request(
        "api", b"ping", slo=SLO(deadline_ms=500), fec=FecOverride(FecMode.ON)
    )
    assert response.body == b"ping"
    assert not session.fec_enabled
    assert session.fec_stats is not None and session.fec_stats.symbols_sent == 0


async def test_the_edge_negotiates_fec_by_default(
    start_server: Callable[[object], Awaitable[int]],
    start_edge: Callable[..., Awaitable[EdgeServer]],
    open_client: Callable[..., Awaitable[Session]],
) -> None:
    port = await start_server(DemoHTTPServer("b1", base_ms=1, cold_ms=1))
    edge = await start_edge(service("api", http_backend("b1", port)))
    session = await open_client(edge, fec=fec_config())
    response = await session.request("api", b"ping", slo=SLO(deadline_ms=500, loss_tolerance=0.0))
    assert response.body == b"ping"
    assert session.fec_enabled


async def test_window_zero_stops_the_edges_repairs(
    start_server: Callable[[object], Awaitable[int]],
    start_edge: Callable[..., Awaitable[EdgeServer]],
    open_client: Callable[..., Awaitable[Session]],
    stack: AsyncExitStack,
) -> None:
    """Session FEC off: FEC_WINDOW 0, after which the edge sends no repairs; on: repairs again.

    Through the relay's 100 ms RTT: on bare loopback a retransmission always
    meets the deadline, so the edge would send no repairs to stop.
    """
    port = await start_server(DemoHTTPServer("b1", base_ms=1, cold_ms=1))
    edge = await start_edge(service("api", http_backend("b1", port)))
    relay = UdpRelay(("127.0.0.1", edge.port), default=profile())
    relay_port = (await relay.start())[1]
    stack.push_async_callback(relay.stop)
    session = await open_client(edge, port=relay_port, fec=fec_config())
    # Slack 150 - 50 ms < 1.25 RTT at the edge: its responses are protected, and
    # with several packets back to back, the window (rate x slack) earns repairs.
    slo = SLO(deadline_ms=150, loss_tolerance=0.001)
    body = bytes(range(256)) * 32

    async def stats_after_requests() -> FecStats:
        for _ in range(3):
            assert (await session.request("api", body, slo=slo)).body == body
        await asyncio.sleep(0.15)  # repairs still in flight land
        assert session.fec_stats is not None
        return session.fec_stats

    on = await stats_after_requests()
    assert on.repairs_received > 0, on
    session.set_fec(FecOverride(FecMode.OFF))
    off = await stats_after_requests()
    assert (off.repairs_received, off.symbols_received) == (
        on.repairs_received,
        on.symbols_received,
    )
    session.set_fec(FecOverride())
    again = await stats_after_requests()
    assert again.repairs_received > off.repairs_received, again
