"""Datagram PMTU discovery for one path (DPLPMTUD: RFC 8899, RFC 9000 §14.3).

Sans-IO: the connection asks `probe_due(now)`, sends a PING+PADDING packet of
that size and reports its fate; the path's recovery reports which packets were
acknowledged or lost. `size` is what the path sends; it only moves on evidence.

A path starts at BASE (1200 bytes, QUIC's minimum, or the configured
max_datagram_size when larger). Its cap is `max_size`, or `loopback_max_size`
on a loopback 4-tuple (the kernel's loopback MTU is 64 KiB and nothing lies
between), and never above the peer's max_udp_payload_size. Probing pays only
when datagrams are full, so the search waits until the path has sent
FULL_BEFORE_PROBING full-size datagrams since the handshake (path validation
pads one or two; a connection trading small messages never probes). Then,
once the path is validated, it first tries the limit: loopback and most LANs
pass it at once. A size lost MAX_PROBES times in a row bounds a binary search
from above. An acknowledged probe raises `size` at once. Within
SEARCH_GRANULARITY bytes of the smallest failed size the search rests, and
starts over after `raise_interval`, as the path may allow more by then.

A lost probe says nothing about congestion (RFC 8899 §4.3, RFC 9000 §14.4):
the recovery takes it out of flight without a congestion event.

Black holes (the path's MTU falls while in use): BLACK_HOLE_LOSSES packets
larger than BASE lost with no larger-than-BASE packet sent after them
acknowledged, or BLACK_HOLE_PTOS PTOs in a row, drop the path to BASE. Once a
packet sent since is acknowledged the search starts again, below the size
that failed.

    SEARCHING --converged--> SEARCH_COMPLETE --raise_interval--> SEARCHING
    SEARCHING/SEARCH_COMPLETE --black hole--> BASE --ACK of a packet sent since--> SEARCHING
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import Final

from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.connection import NetworkAddress

BASE_SIZE: Final = SMALLEST_MAX_DATAGRAM_SIZE  # 1200: every QUIC path carries it
DEFAULT_MAX_SIZE: Final = 1452  # a 1500-byte Ethernet MTU minus IPv6 and UDP headers
MAX_UDP_PAYLOAD: Final = 65527  # the largest max_udp_payload_size (RFC 9000 §18.2)
# aioquic writes STREAM and CRYPTO frame lengths as 2-byte varints: a larger packet
# could hold a frame it cannot encode.
MAX_SIZE: Final = (1 << 14) - 1
MAX_PROBES: Final = 3  # losses of one size before it counts as too big (RFC 8899 §5.1.2)
RAISE_INTERVAL: Final = 600.0  # RFC 8899 PMTU_RAISE_TIMER
SEARCH_GRANULARITY: Final = 20  # bytes: closer than this to a failed size is done
BLACK_HOLE_LOSSES: Final = 3
BLACK_HOLE_PTOS: Final = 2
FULL_BEFORE_PROBING: Final = 10  # an initial window of full datagrams: bulk data


@dataclass(frozen=True, slots=True)
class PmtuConfig:
    """How far a connection's paths may raise their datagram size.

    `max_size` caps the UDP payload probed for: 1452 suits the Internet; a
    jumbo-frame LAN carries more. `loopback_max_size` is the cap on loopback
    4-tuples. Both at most MAX_SIZE (16383)."""

    max_size: int = DEFAULT_MAX_SIZE
    loopback_max_size: int = MAX_SIZE
    raise_interval: float = RAISE_INTERVAL

    def __post_init__(self) -> None:
        for name in ("max_size", "loopback_max_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and BASE_SIZE <= value <= MAX_SIZE):
                raise ValueError(
                    f"PmtuConfig.{name} must be an int in {BASE_SIZE}..{MAX_SIZE}, got {value!r}"
                )
        if not self.raise_interval > 0:
            raise ValueError(
                f"PmtuConfig.raise_interval must be > 0 seconds, got {self.raise_interval!r}"
            )


DEFAULT_PMTUD: Final = PmtuConfig()


class PmtuState(Enum):
    SEARCHING = "searching"
    SEARCH_COMPLETE = "search_complete"
    BASE = "base"  # after a black hole, until BASE is confirmed


class PmtuSearch:
    """One path's search: `size` is the largest datagram the path has proven to carry."""

    def __init__(self, config: PmtuConfig, base: int = BASE_SIZE) -> None:
        self.base = base
        self.size = base
        self.state = PmtuState.SEARCHING
        self.addr: NetworkAddress | None = None  # the 4-tuple `size` holds for
        self.wanted = False  # the path sends bulk data: larger datagrams would help
        self._full = 0  # full-size datagrams sent until then
        self.probes_sent = 0
        self.probes_lost = 0
        self.black_holes = 0
        self._config = config
        self._peer_max = MAX_UDP_PAYLOAD
        self._limit = max(base, config.max_size)
        self._failed = self._limit + 1  # the smallest size known not to pass
        self._losses = 0  # of the size probed now
        self._probe: int | None = None  # size of the probe in flight
        self._next_at = 0.0
        self._large_acked = -1  # newest acknowledged packet larger than base
        self._large_lost = 0  # larger-than-base packets lost after it
        self._base_since = 0.0

    # -- what the connection asks ---------------------------------------------------------

    def probe_due(self, now: float) -> int | None:
        """The size to probe now, or None (one probe at a time)."""
        if self.state is PmtuState.SEARCH_COMPLETE and now >= self._next_at:
            self._restart(now)
        if not self.wanted or self.state is not PmtuState.SEARCHING or self._probe is not None:
            return None
        return self._candidate() if now >= self._next_at else None

    def set_limit(self, peer_max_udp_payload: int, now: float) -> None:
        """The peer's max_udp_payload_size bounds every probe."""
        self._peer_max = peer_max_udp_payload
        self._update_limit()
        self._settle(now)

    def moved(self, addr: NetworkAddress | None, now: float) -> None:
        """A new 4-tuple: nothing proven holds for it (RFC 9000 §14.3)."""
        self.addr = addr
        self._update_limit()
        self.wanted = False
        self._full = 0
        self.size = self.base
        self._large_acked = -1
        self._large_lost = 0
        self._restart(now)

    def on_full_datagrams(self, count: int) -> None:
        self._full += count
        self.wanted = self._full >= FULL_BEFORE_PROBING

    # -- probe outcomes ---------------------------------------------------------------------

    def on_probe_sent(self, size: int) -> None:
        self._probe = size
        self.probes_sent += 1

    def on_probe_acked(self, size: int, now: float) -> None:
        self._probe = None
        self._losses = 0
        if size > self.size:
            self.size = size
        self._settle(now)

    def on_probe_lost(self, size: int, now: float) -> None:
        self._probe = None
        self.probes_lost += 1
        self._losses += 1
        if self._losses >= MAX_PROBES:
            self._failed = min(self._failed, size)
            self._losses = 0
        self._settle(now)

    # -- black-hole evidence (from the path's recovery) -------------------------------------

    def on_acked(self, packet_number: int, sent_bytes: int, sent_time: float, now: float) -> None:
        """The newest packet an ACK newly covered."""
        if sent_bytes > self.base and packet_number > self._large_acked:
            self._large_acked = packet_number
            self._large_lost = 0
        if self.state is PmtuState.BASE and sent_time >= self._base_since:
            self.state = PmtuState.SEARCHING  # BASE confirmed: search below what failed
            self._next_at = now

    def on_lost(self, packet_number: int, sent_bytes: int, now: float) -> None:
        """A packet declared lost by loss detection (a congestion event, never a probe)."""
        if sent_bytes <= self.base or packet_number < self._large_acked:
            return  # a later large packet got through: congestion, not the MTU
        self._large_lost += 1
        if self._large_lost >= BLACK_HOLE_LOSSES:
            self._black_hole(now)

    def on_pto(self, pto_count: int, now: float) -> None:
        if pto_count >= BLACK_HOLE_PTOS:
            self._black_hole(now)

    # -- internals -------------------------------------------------------------------------------

    def _update_limit(self) -> None:
        config = self._config
        cap = config.loopback_max_size if is_loopback(self.addr) else config.max_size
        self._limit = max(self.base, min(cap, self._peer_max))
        self._failed = min(self._failed, self._limit + 1)

    def _candidate(self) -> int | None:
        if self._failed > self._limit:
            target = self._limit  # nothing failed yet: the common case passes at once
        elif self._failed - self.size > SEARCH_GRANULARITY:
            target = (self.size + self._failed) // 2
        else:
            return None
        return target if target > self.size else None

    def _settle(self, now: float) -> None:
        """Rest once nothing is left to probe."""
        if self.state is PmtuState.SEARCHING and self._candidate() is None:
            self.state = PmtuState.SEARCH_COMPLETE
            self._next_at = now + self._config.raise_interval

    def _restart(self, now: float) -> None:
        self.state = PmtuState.SEARCHING
        self._failed = self._limit + 1
        self._losses = 0
        self._next_at = now
        self._settle(now)

    def _black_hole(self, now: float) -> None:
        self._large_lost = 0
        if self.size <= self.base:
            return  # nothing to fall back from: the path itself is in trouble
        self.black_holes += 1
        self._failed = self.size
        self._losses = 0
        self.size = self.base
        self.state = PmtuState.BASE
        self._base_since = now


def is_loopback(addr: NetworkAddress | None) -> bool:
    """Whether a 4-tuple's remote address is loopback (IPv4-mapped IPv6 included)."""
    if addr is None:
        return False
    try:
        ip = ipaddress.ip_address(str(addr[0]).split("%")[0])
    except ValueError:
        return False  # a name, not an address: assume a network between
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
