"""An in-memory network for QUIC connections, in virtual time: a client with several
local addresses, a server, a link per client address, a fake clock.

The lab's other half: `relay.py` impairs real UDP on loopback, this runs the same
protocol objects (`NetSchedConnection` both sides) with no socket and no event
loop, so a run is as fast as the CPU allows and independent of host load. Links
are `Link` (fixed delay, deterministic loss, a rate, blackholes: for tests that
assert exact timings) or `ImpairedLink` (a `PathProfile`, both directions: the
same impairment model as the relay, seeded). Addresses are labels only.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.events import QuicEvent, StreamDataReceived

from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.multipath.pmtu import DEFAULT_MAX_SIZE, PmtuConfig

from .impairment import Link as ImpairmentLink
from .impairment import PathProfile

SERVER: NetworkAddress = ("127.0.0.3", 4433)
C1: NetworkAddress = ("127.0.0.1", 5001)
C2: NetworkAddress = ("127.0.0.2", 5002)
C3: NetworkAddress = ("127.0.0.4", 5003)
# The addresses above label network paths, not a real loopback: PMTU discovery
# caps them as it caps Internet paths (tests may pass their own `pmtud`).
NETWORK_PMTUD = PmtuConfig(loopback_max_size=DEFAULT_MAX_SIZE)


@dataclass
class Link:
    """One client address's link to the server (both directions)."""

    delay: float = 0.010
    up: bool = True
    drop_every: int = 0  # drop every Nth datagram (deterministic loss), 0: none
    rate_bps: float | None = None  # serialization rate per direction; None: unlimited
    reorder_every: int = 0  # hold every Nth datagram back by reorder_s, 0: never
    reorder_s: float = 0.015
    max_queue_s: float = 0.1  # tail drop beyond this much queued delay
    mtu: int | None = None  # largest UDP payload carried (both ways); None: any
    sent: int = 0
    busy_until: dict[bool, float] = field(default_factory=dict)

    def arrival(self, now: float, size: int, upstream: bool) -> float | None:
        """When a datagram sent now arrives, or None when the link drops it."""
        self.sent += 1
        if not self.up or (self.drop_every and self.sent % self.drop_every == 0):
            return None
        if self.mtu is not None and size > self.mtu:
            return None
        extra = (
            self.reorder_s if self.reorder_every and self.sent % self.reorder_every == 0 else 0.0
        )
        if self.rate_bps is None:
            return now + self.delay + extra
        start = max(now, self.busy_until.get(upstream, now))
        if start - now > self.max_queue_s:
            return None
        self.busy_until[upstream] = start + size * 8 / self.rate_bps
        return self.busy_until[upstream] + self.delay + extra


class MemoryLink(Protocol):
    def arrival(self, now: float, size: int, upstream: bool) -> float | None:
        """When a datagram of `size` bytes sent now arrives, or None when it is lost."""
        ...


class ImpairedLink:
    """Both directions of one path through the relay's impairment model (seeded)."""

    def __init__(self, profile: PathProfile, seed: int) -> None:
        self.up = ImpairmentLink(profile.up, random.Random(seed))
        self.down = ImpairmentLink(profile.down, random.Random(seed + 1))

    def arrival(self, now: float, size: int, upstream: bool) -> float | None:
        deliveries = (self.up if upstream else self.down).submit(bytes(size), now)
        return deliveries[0][0] if deliveries else None  # a duplicate is one arrival here

    def set_blackhole(self, on: bool) -> None:
        """Drop everything both ways (on) or carry it again (off), from now on."""
        for link in (self.up, self.down):
            link.spec = dataclasses.replace(link.spec, blackhole=on)


@dataclass
class Net:
    client: NetSchedConnection
    server: NetSchedConnection
    links: dict[NetworkAddress, MemoryLink]
    now: float = 1.0
    queue: list[tuple[float, int, bool, bytes, NetworkAddress]] = field(default_factory=list)
    client_events: list[QuicEvent] = field(default_factory=list)
    server_events: list[QuicEvent] = field(default_factory=list)
    received: dict[int, bytearray] = field(default_factory=dict)  # client-side stream data
    stream_ends: dict[int, float] = field(default_factory=dict)  # when a client stream's FIN came
    server_started: bool = False
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def client_local(self, path_id: int) -> NetworkAddress:
        path = self.client.paths.get(path_id)
        return path.local_addr if path is not None and path.local_addr else C1

    def _collect(self) -> None:
        for data, _, path_id in self.client.datagrams_with_paths(self.now):
            src = self.client_local(path_id)
            at = self.links[src].arrival(self.now, len(data), upstream=True)
            if at is not None:
                self._schedule(at, True, data, src)
        if not self.server_started:
            return  # like aioquic's own server: no sending before the first datagram
        for data, dst, _ in self.server.datagrams_with_paths(self.now):
            link = self.links.get(dst)
            at = None if link is None else link.arrival(self.now, len(data), upstream=False)
            if at is not None:
                self._schedule(at, False, data, SERVER)

    def _schedule(self, at: float, to_server: bool, data: bytes, src: NetworkAddress) -> None:
        heapq.heappush(self.queue, (at, next(self._seq), to_server, data, src))

    def _drain_events(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
            if isinstance(event, StreamDataReceived):
                self.received.setdefault(event.stream_id, bytearray()).extend(event.data)
                if event.end_stream:
                    self.stream_ends[event.stream_id] = self.now
        while (event := self.server.next_event()) is not None:
            self.server_events.append(event)

    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Advance the clock up to `seconds`; stop early when `until()` holds."""
        end = self.now + seconds
        fired_at: float | None = None
        self._collect()
        while True:
            self._drain_events()
            if until is not None and until():
                return True
            timers = [
                t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None
            ]
            candidates = [*timers, *(q[0] for q in self.queue[:1])]
            if not candidates:
                return False
            step = max(self.now, min(candidates))
            if step == fired_at:
                # A timer handled at this instant is still due: aioquic's loss timer can
                # sit on a float rounding edge. Real clocks move on; so does this one.
                step += 1e-6
            fired_at = step
            if step > end:
                self.now = end
                return until is None
            self.now = step
            while self.queue and self.queue[0][0] <= self.now:
                _, _, to_server, data, src = heapq.heappop(self.queue)
                if to_server:
                    self.server_started = True
                    self.server.receive_datagram(data, src, self.now)
                else:
                    self.client.receive_datagram(data, src, self.now)
            for conn in (self.client, self.server):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(self.now)
            self._collect()

    def events(self, side: str, kind: type) -> list[Any]:
        source = self.client_events if side == "client" else self.server_events
        return [e for e in source if isinstance(e, kind)]


def quic_configurations(
    ca_file: Path, certificate: Path, private_key: Path, alpn: str = "netsched/1"
) -> tuple[QuicConfiguration, QuicConfiguration]:
    """A client configuration trusting `ca_file`, a server one presenting `certificate`."""
    client = QuicConfiguration(is_client=True, alpn_protocols=[alpn], server_name="localhost")
    client.load_verify_locations(str(ca_file))
    server = QuicConfiguration(is_client=False, alpn_protocols=[alpn])
    server.load_cert_chain(certificate, private_key)
    return client, server


def make_net(
    client_configuration: QuicConfiguration,
    server_configuration: QuicConfiguration,
    *,
    client_max_path_id: int | None = 3,
    server_max_path_id: int | None = 3,
    links: dict[NetworkAddress, MemoryLink] | None = None,
    client_class: type[NetSchedConnection] = NetSchedConnection,
    **options: Any,
) -> Net:
    """A client and a server, connecting; `options` go to both connections."""
    options.setdefault("pmtud", NETWORK_PMTUD)
    client = client_class(
        configuration=client_configuration, max_path_id=client_max_path_id, **options
    )
    server = NetSchedConnection(
        configuration=server_configuration,
        original_destination_connection_id=client.original_destination_connection_id,
        max_path_id=server_max_path_id,
        **options,
    )
    net = Net(client, server, links or {C1: Link(), C2: Link(), C3: Link()})
    client.connect(SERVER, now=net.now)
    return net
