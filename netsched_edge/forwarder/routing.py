"""Routing QUIC datagrams by connection ID: the fleet front's rules, in Python.

The Cython `QuicLbRouter` (_relay.pyx, _quic_lb.pxd) implements them in C and
is tested equal to `PyQuicLbRouter`, which the pure-Python relay uses:

- The DCID: a long header names its length (octet 5, DCID from octet 6); a
  short header's is the CID length of the configuration its first octet's
  codepoint names, else the current configuration's. A datagram too short
  for either is dropped (no backend).
- A DCID of the fleet's length or longer, with a config rotation codepoint
  the router accepts (the current configuration's, and the previous one's
  during a rotation's grace: `set_schemes`), is decrypted with that
  configuration (QUIC-LB: `QuicLbScheme.server_id`); the server ID
  is the host's ID followed by one worker octet. When that host is a live
  member with that worker, the datagram goes there.
- Anything else goes by rendezvous hashing of the DCID over the live
  members, then to the worker the same hash picks among its workers up: the client's
  Initials and 0-RTT packets (a DCID it chose), and CIDs that decrypt to no
  live member (a dead host's: the host it lands on answers with a stateless
  reset). Every packet of every type is decrypted first, so the client's
  Initials that carry the server's CID (after its first flight) reach the
  host that issued it, and a retransmitted Initial, with the same DCID, is
  routed as the first one was: decryption and hash are deterministic.
- The hash is seeded from the fleet's key (`rendezvous_seed`), so every front
  routes a DCID alike (a client's packets may reach any of them), and a
  member joining or leaving moves only the DCIDs it wins or held.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from netsched_client.proto.quic_lb import QuicLbScheme

MAX_CID = 20  # QUIC v1
LONG_HEADER = 0x80
LONG_DCID_AT = 6  # flags(1) version(4) length(1)
MAX_HOST_ID_BYTES = 2  # the C router's table is indexed by host ID
DOWN = -1  # a worker whose port refused: its CIDs and new connections go elsewhere
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


@dataclass(frozen=True, slots=True)
class HostRoute:
    """One live member: its host ID and the backend slot of each of its workers."""

    host_id: int
    backends: tuple[int, ...]  # worker i -> the relay's backend index, or DOWN

    def __post_init__(self) -> None:
        if self.host_id < 0 or not self.backends or min(self.backends) < DOWN:
            raise ValueError(f"bad route {self}")

    @property
    def up(self) -> tuple[int, ...]:
        """The backends of the workers not down, in worker order (rendezvous picks here)."""
        return tuple(backend for backend in self.backends if backend != DOWN)


def rendezvous_seed(key: bytes | None) -> int:
    """The hash seed every front of a fleet derives alike from the fleet's key."""
    return int.from_bytes(hashlib.sha256(b"netsched front rendezvous" + (key or b"")).digest()[:8])


def check_routes(scheme: QuicLbScheme, routes: Sequence[HostRoute]) -> tuple[HostRoute, ...]:
    """The routes, checked: one per host ID, each fitting the scheme's host ID.

    Any scheme decrypts (`server_id`), but routes need a server ID of a host ID
    of 1-2 octets (the C router indexes a table by it) and a worker octet.
    """
    routes = tuple(routes)
    host_bytes = scheme.server_id_length - 1
    if routes and not 1 <= host_bytes <= MAX_HOST_ID_BYTES:
        raise ValueError(
            f"routes need a server ID of a 1-{MAX_HOST_ID_BYTES} octet host ID and a "
            f"worker octet, not {scheme.server_id_length} octets"
        )
    for route in routes:
        if not isinstance(route, HostRoute) or route.host_id >> (8 * host_bytes):
            raise ValueError(f"not a route for {host_bytes}-octet host IDs: {route!r}")
    if len({route.host_id for route in routes}) != len(routes):
        raise ValueError("one route per host ID")
    return routes


def check_schemes(
    schemes: Sequence[QuicLbScheme], server_id_length: int
) -> tuple[QuicLbScheme, ...]:
    """The configurations a router accepts, checked: the current one first, then those
    still accepted during a rotation's grace (draft-ietf-quic-load-balancers: the
    config rotation codepoint names a CID's configuration); each with its own
    codepoint (not 0b111, the unroutable one) and the router's server ID length
    (its routes index host IDs of that length)."""
    schemes = tuple(schemes)
    if not schemes:
        raise ValueError("a router needs a configuration")
    codepoints = [scheme.config_rotation for scheme in schemes]
    if len(set(codepoints)) != len(codepoints) or max(codepoints) > 6:
        raise ValueError(f"one configuration per codepoint 0-6, got {codepoints}")
    if any(scheme.server_id_length != server_id_length for scheme in schemes):
        raise ValueError(f"every configuration needs {server_id_length}-octet server IDs")
    return schemes


def dcid_of(datagram: bytes, short_length: int) -> bytes | None:
    """The datagram's destination CID (a short header's is `short_length` long)."""
    if not datagram:
        return None
    if datagram[0] & LONG_HEADER:
        if len(datagram) < LONG_DCID_AT:
            return None
        length = datagram[LONG_DCID_AT - 1]
        end = LONG_DCID_AT + length
        return datagram[LONG_DCID_AT:end] if length <= MAX_CID and end <= len(datagram) else None
    end = 1 + short_length
    return datagram[1:end] if end <= len(datagram) else None


def _mix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK64
    return h ^ (h >> 33)


def cid_hash(cid: bytes, seed: int) -> int:
    h = (seed ^ len(cid)) & _MASK64
    for i in range(0, len(cid), 8):
        h = _mix64(h ^ int.from_bytes(cid[i : i + 8], "little"))
    return h


def host_score(hashed: int, host_id: int) -> int:
    return _mix64(hashed ^ ((host_id * _GOLDEN) & _MASK64))


def pick_worker(hashed: int, workers: int) -> int:
    """The worker of the winning host (the C router computes the same)."""
    return (hashed >> 32) % workers


class PyQuicLbRouter:
    """A datagram's backend index by its DCID (the rules in the module doc)."""

    def __init__(self, scheme: QuicLbScheme, hash_seed: int) -> None:
        self.hash_seed = hash_seed & _MASK64
        self._hosts: dict[int, tuple[int, ...]] = {}
        self._members: tuple[HostRoute, ...] = ()
        self._server_id_length = scheme.server_id_length
        self.set_schemes((scheme,))

    def set_schemes(self, schemes: Sequence[QuicLbScheme]) -> None:
        """The configurations accepted (`check_schemes`): the current one first."""
        self.schemes = check_schemes(schemes, self._server_id_length)
        self.scheme = self.schemes[0]
        self._by_codepoint = {scheme.config_rotation: scheme for scheme in self.schemes}

    @property
    def native_aes(self) -> bool:
        return False

    def set_routes(self, routes: Sequence[HostRoute]) -> None:
        """Replace the live members (one route per host ID)."""
        checked = check_routes(self.scheme, routes)
        self._hosts = {route.host_id: route.backends for route in checked}
        self._members = tuple(route for route in checked if route.up)  # rendezvous over these

    def server_id(self, cid: bytes) -> bytes | None:
        scheme = self._by_codepoint.get(cid[0] >> 5) if cid else None
        return None if scheme is None else scheme.server_id(cid)

    def route_datagram(self, datagram: bytes) -> int | None:
        """The datagram's backend index, or None (too short, or no member at all)."""
        short_length = self.scheme.cid_length  # a short header's: its codepoint's scheme's
        if len(datagram) > 1 and datagram[1] >> 5 in self._by_codepoint:
            short_length = self._by_codepoint[datagram[1] >> 5].cid_length
        dcid = dcid_of(datagram, short_length)
        if dcid is None:
            return None
        server_id = self.server_id(dcid)
        if server_id is not None:
            workers = self._hosts.get(int.from_bytes(server_id[:-1], "big"), ())
            if server_id[-1] < len(workers) and workers[server_id[-1]] != DOWN:
                return workers[server_id[-1]]
        return self._rendezvous(dcid)

    def _rendezvous(self, dcid: bytes) -> int | None:
        if not self._members:
            return None
        hashed = cid_hash(dcid, self.hash_seed)
        # The highest score wins; the lower host ID breaks a tie (the C loop keeps the first).
        best = max(self._members, key=lambda m: (host_score(hashed, m.host_id), -m.host_id))
        up = best.up
        return up[pick_worker(hashed, len(up))]
