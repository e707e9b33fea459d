"""A loopback UDP forwarder between client and server that records what it sees.

It stands where the interop runner's network simulator and pcap stand: the
client talks to the tap's port, the tap talks to the server from one socket per
client address (a NAT, so the server sees a stable address and Retry tokens
stay valid), and every datagram is parsed with `wire.parse_datagram` into a
`Trace` that the pass rules read. Each upstream socket is bound to its client's
own loopback IP, so a multipath client on 127.0.0.1 and 127.0.0.2 stays two
paths for the relay (which impairs per client IP) and the server; the trace
counts bytes per client address, which is per path. It neither drops nor
delays anything; loss and delay belong to the path lab relay (netsched_lab).

It is also the NAT of the rebinding cases: `rebind` gives every client a new
upstream socket (a new port, or a new loopback IP too), closing the old one,
and the trace keeps the packets the rebinding rules decrypt afterwards: the
server's first 1-RTT packet on the new socket and the client's next ones.
It listens on IPv4 or IPv6 loopback (`host`), whichever the case wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from .wire import SHORT_HEADER_PREFIX, Packet, PacketType, WireError, parse_datagram

LOOPBACK = "127.0.0.1"
LOOPBACK6 = "::1"
MAX_CLIENT_ADDRESSES = 64  # a case opens a few connections; more means a runaway peer
MAX_RECORDED_PACKETS = 100_000  # long-header packets kept, and 1-RTT prefixes per direction
MAX_MARKS = 16  # the runner marks a handful of network events per test
SUMMARY_PATHS = 8  # per-path counters in the summary up to this many client addresses
SOCKET_BUFFER = 8 << 20  # bursts of a fast peer must not overflow the tap's receive queue
SO_RCVBUFFORCE = 33  # Linux: as root, beyond net.core.rmem_max
SO_SNDBUFFORCE = 32
MAX_DATAGRAM_LOG = 4096  # datagrams kept in order (the amplification rule reads the first few)
MAX_REBINDS = 16
MAX_CAPTURED_AFTER_REBIND = 1024  # client 1-RTT packets kept whole after each rebinding
# Client 1-RTT packets kept whole from the start (zerortt decrypts them all): a
# downloading client sends mostly ACKs, so this is a few hundred kB at most.
MAX_CAPTURED_CLIENT = 4096
Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Observed:
    from_client: bool
    packet: Packet


@dataclass(slots=True)
class PathTraffic:
    """What one client address (one path, as the tap sees it) carried, in bytes."""

    client_bytes: int = 0
    server_bytes: int = 0
    # All paths' server bytes when this path's last server datagram passed: what
    # the server sent after it is `Trace.server_total - server_total_at_last`.
    server_total_at_last: int = 0


@dataclass(frozen=True, slots=True)
class Datagram:
    """One datagram in arrival order: who sent it, its UDP payload size, its packets' types."""

    from_client: bool
    size: int
    kinds: tuple[PacketType, ...]


@dataclass(frozen=True, slots=True)
class Captured:
    """A whole 1-RTT packet, and how many 1-RTT packets its direction had before it."""

    data: bytes
    seen_before: int


@dataclass(slots=True)
class Rebind:
    """The client seen at a new address: a NAT rebinding by the tap (a client address
    got a new upstream socket) or a move of the client itself (a new client address)."""

    client: Address
    local: Address | None = None  # the new socket's address: what the server sees
    first_server: Captured | None = None  # the server's first 1-RTT packet to it
    client_after: list[Captured] = field(default_factory=list)
    client_first: Captured | None = None  # the client's first 1-RTT packet from it
    client_before: bytes = b""  # the start of the client's last 1-RTT packet before


@dataclass(frozen=True, slots=True)
class Mark:
    """Something the runner did to the network, with the server bytes per path at that moment."""

    label: str
    server_bytes: Mapping[Address, int]


class Trace:
    """Packets seen by the tap, in arrival order (long headers), plus counters.

    `short_headers[from_client]` keeps the first bytes of each 1-RTT packet
    (enough to read its key phase with the key log); `keylog` is the key log
    text an endpoint wrote, and `client_reports` what the client program
    reported (programs/multipath.py), both set by the runner once the test is
    over. `paths` counts bytes per client address; `marks` are the runner's
    network events (`mark`); `datagrams_in_order` the first datagrams each way
    as they passed; `rebinds` the tap's NAT rebindings and the client's own
    moves, with the packets kept for the rules; `client_one_rtt` the client's
    first MAX_CAPTURED_CLIENT 1-RTT packets whole; `server_one_rtt_span`
    when the first and the last server datagram with 1-RTT packets passed.
    """

    def __init__(self) -> None:
        self.packets: list[Observed] = []
        self.short_headers: dict[bool, list[bytes]] = {True: [], False: []}
        self.keylog = ""
        self.datagrams: Counter[bool] = Counter()  # from_client -> count
        self.bytes: Counter[bool] = Counter()
        self.one_rtt: Counter[bool] = Counter()
        self.one_rtt_bytes: Counter[bool] = Counter()
        self.unparsable = 0
        self.dropped_records = 0
        self.paths: dict[Address, PathTraffic] = {}
        self.marks: list[Mark] = []
        self.client_reports: list[dict[str, Any]] = []
        self.datagrams_in_order: list[Datagram] = []
        self.rebinds: list[Rebind] = []
        self.client_one_rtt: list[Captured] = []
        self.server_one_rtt_span: tuple[float, float] | None = None

    @property
    def server_total(self) -> int:
        return self.bytes[False]

    def record(
        self,
        data: bytes,
        *,
        from_client: bool,
        client: Address | None = None,
        at: float | None = None,
        rebind: Rebind | None = None,
    ) -> None:
        """Count and parse one datagram.

        `client` is the client address it came from or went to, `at` when it
        passed (a monotonic clock), `rebind` the record of the rebound socket or
        moved client address it passed through: its first 1-RTT packet each way
        is kept whole.
        """
        self.datagrams[from_client] += 1
        self.bytes[from_client] += len(data)
        if client is not None:
            self._count_path(client, len(data), from_client=from_client)
        try:
            packets = parse_datagram(data)
        except WireError:
            self.unparsable += 1
            return
        if len(self.datagrams_in_order) < MAX_DATAGRAM_LOG:
            kinds = tuple(p.kind for p in packets)
            self.datagrams_in_order.append(Datagram(from_client, len(data), kinds))
        for packet in packets:
            if packet.kind is PacketType.PADDING:
                continue
            if packet.kind is PacketType.ONE_RTT:
                self._record_one_rtt(data[len(data) - packet.size :], from_client, at, rebind)
            elif len(self.packets) < MAX_RECORDED_PACKETS:
                self.packets.append(Observed(from_client, packet))
            else:
                self.dropped_records += 1

    def _record_one_rtt(
        self, packet: bytes, from_client: bool, at: float | None, rebind: Rebind | None
    ) -> None:
        seen = self.one_rtt[from_client]
        self.one_rtt[from_client] += 1
        self.one_rtt_bytes[from_client] += len(packet)
        if len(self.short_headers[from_client]) < MAX_RECORDED_PACKETS:
            self.short_headers[from_client].append(packet[:SHORT_HEADER_PREFIX])
        if from_client and len(self.client_one_rtt) < MAX_CAPTURED_CLIENT:
            self.client_one_rtt.append(Captured(packet, seen))
        if not from_client and at is not None:
            first = self.server_one_rtt_span[0] if self.server_one_rtt_span else at
            self.server_one_rtt_span = (first, at)
        if rebind is not None and not from_client and rebind.first_server is None:
            rebind.first_server = Captured(packet, seen)
        if rebind is not None and from_client and rebind.client_first is None:
            rebind.client_first = Captured(packet, seen)
        if from_client and self.rebinds:
            after = self.rebinds[-1].client_after
            if len(after) < MAX_CAPTURED_AFTER_REBIND:
                after.append(Captured(packet, seen))

    def _count_path(self, client: Address, size: int, *, from_client: bool) -> None:
        path = self.paths.get(client)
        if path is None:
            if len(self.paths) >= MAX_CLIENT_ADDRESSES:
                return
            path = self.paths[client] = PathTraffic()
        if from_client:
            path.client_bytes += size
        else:
            path.server_bytes += size
            path.server_total_at_last = self.server_total

    def mark(self, label: str) -> None:
        """Note a network event now, against the bytes each path carried so far."""
        if len(self.marks) < MAX_MARKS:
            snapshot = {client: path.server_bytes for client, path in self.paths.items()}
            self.marks.append(Mark(label, snapshot))

    def of(self, kind: PacketType, *, from_client: bool) -> list[Packet]:
        return [
            o.packet for o in self.packets if o.from_client == from_client and o.packet.kind is kind
        ]

    def first(self, kind: PacketType, *, from_client: bool) -> Packet | None:
        return next(iter(self.of(kind, from_client=from_client)), None)

    def handshakes(self) -> int:
        """Connections the server answered: distinct SCIDs of its Initials (runner's count)."""
        return len({p.scid for p in self.of(PacketType.INITIAL, from_client=False)})

    def versions(self, kind: PacketType, *, from_client: bool) -> set[int]:
        return {p.version for p in self.of(kind, from_client=from_client)}

    def summary(self) -> dict[str, object]:
        kinds = Counter(
            f"{'client' if o.from_client else 'server'} {o.packet.kind}" for o in self.packets
        )
        paths: dict[str, object] = {"client_addresses": len(self.paths)}
        if len(self.paths) <= SUMMARY_PATHS:
            paths = {
                f"{host}:{port}": {"client": p.client_bytes, "server": p.server_bytes}
                for (host, port), p in self.paths.items()
            }
        marks = {
            m.label: {f"{h}:{p}": n for (h, p), n in m.server_bytes.items()} for m in self.marks
        }
        rebinds = [
            {
                "local": f"{r.local[0]}:{r.local[1]}" if r.local else None,
                "server_answered": r.first_server is not None,
            }
            for r in self.rebinds
        ]
        return {
            "datagrams": {"client": self.datagrams[True], "server": self.datagrams[False]},
            "bytes": {"client": self.bytes[True], "server": self.bytes[False]},
            "long_header_packets": dict(sorted(kinds.items())),
            "one_rtt_packets": {"client": self.one_rtt[True], "server": self.one_rtt[False]},
            "handshakes": self.handshakes(),
            "server_initial_versions": sorted(
                f"{v:#010x}" for v in self.versions(PacketType.INITIAL, from_client=False)
            ),
            "unparsable_datagrams": self.unparsable,
            "paths": paths,
            **({"marks": marks} if marks else {}),
            **({"rebinds": rebinds} if rebinds else {}),
        }


class _Upstream(asyncio.DatagramProtocol):
    """One client address's socket towards the server."""

    def __init__(self, tap: Tap, client: Address, rebind: Rebind | None = None) -> None:
        self._tap = tap
        self.client = client
        self.rebind = rebind  # set when this socket replaced another (NAT rebinding)
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        _enlarge_buffers(self.transport)
        if self.rebind is not None:
            self.rebind.local = transport.get_extra_info("sockname")[:2]
        for data in self.pending:
            self.transport.sendto(data)
        self.pending.clear()

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.sendto(data)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        now = asyncio.get_running_loop().time()
        self._tap.trace.record(
            data, from_client=False, client=self.client, at=now, rebind=self.rebind
        )
        self._tap.to_client(data, self.client)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while a server restarts: QUIC recovers, so do we


class Tap(asyncio.DatagramProtocol):
    """Forward datagrams between clients (on our port) and `server`, recording both ways."""

    def __init__(
        self, server: Address, *, host: str = LOOPBACK, follow_moves: bool = False
    ) -> None:
        if not _is_loopback(host) or not _is_loopback(server[0]):
            raise ValueError(f"the tap runs on loopback only, got {host} -> {server[0]}")
        if _family(host) != _family(server[0]):
            raise ValueError(f"the tap cannot translate IPv4 and IPv6: {host} -> {server[0]}")
        self.trace = Trace()
        self._server = server
        self._host = host
        self._downstream: asyncio.DatagramTransport | None = None
        self._upstreams: dict[Address, _Upstream] = {}
        self._follow_moves = follow_moves  # a new client address after the first is a move
        self.refused_clients = 0

    async def start(self) -> int:
        """Bind the client-facing socket; returns its port."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self._host, 0), family=_family(self._host)
        )
        self._downstream = transport
        _enlarge_buffers(transport)
        return int(transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: Address) -> None:
        addr = addr[:2]  # IPv6 adds flow info and scope ID
        now = asyncio.get_running_loop().time()
        upstream = self._upstreams.get(addr)
        if upstream is None:
            if len(self._upstreams) >= MAX_CLIENT_ADDRESSES:
                self.trace.record(data, from_client=True, client=addr, at=now)
                self.refused_clients += 1
                return
            upstream = self._upstreams[addr] = _Upstream(self, addr, self._move(addr))
            asyncio.get_running_loop().create_task(self._open(upstream))
        self.trace.record(data, from_client=True, client=addr, at=now, rebind=upstream.rebind)
        upstream.send(data)

    def _move(self, addr: Address) -> Rebind | None:
        """The record of a client that moved to `addr`, when moves are followed."""
        if not (self._follow_moves and self._upstreams) or len(self.trace.rebinds) >= MAX_REBINDS:
            return None
        before = self.trace.short_headers[True]
        move = Rebind(addr, client_before=before[-1] if before else b"")
        self.trace.rebinds.append(move)
        return move

    def error_received(self, exc: Exception) -> None:
        pass

    async def _open(self, upstream: _Upstream, host: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        # The client's own IP: the relay and the server tell paths apart by it.
        if host is None:
            host = upstream.client[0] if _is_loopback(upstream.client[0]) else self._host
        with contextlib.suppress(OSError):
            await loop.create_datagram_endpoint(
                lambda: upstream, local_addr=(host, 0), remote_addr=self._server
            )

    def rebind(self, host: str | None = None) -> int:
        """NAT rebinding: each client's upstream socket is replaced by a new one.

        A new port, and on `host` (a loopback IP) when given, so the server
        sees the client move; the old socket closes, as a NAT forgets the old
        mapping. Returns how many clients were rebound.
        """
        if host is not None and not (_is_loopback(host) and _family(host) == _family(self._host)):
            raise ValueError(f"rebind host must be a loopback IP of the tap's family, got {host}")
        rebound = 0
        for client, old in list(self._upstreams.items()):
            if len(self.trace.rebinds) >= MAX_REBINDS:
                break
            rebind = Rebind(client)
            self.trace.rebinds.append(rebind)
            new = self._upstreams[client] = _Upstream(self, client, rebind)
            asyncio.get_running_loop().create_task(self._open(new, host))
            if old.transport is not None:
                old.transport.close()
            rebound += 1
        return rebound

    def to_client(self, data: bytes, client: Address) -> None:
        if self._downstream is not None and not self._downstream.is_closing():
            self._downstream.sendto(data, client)

    def close(self) -> None:
        for upstream in self._upstreams.values():
            if upstream.transport is not None:
                upstream.transport.close()
        if self._downstream is not None:
            self._downstream.close()


def _enlarge_buffers(transport: asyncio.DatagramTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for forced, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
        except OSError:  # not root: take what net.core.[rw]mem_max allows
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"
