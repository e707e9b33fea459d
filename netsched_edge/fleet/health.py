"""The front's active health checks of the fleet's workers: is anyone home?

A worker whose process died on a living machine refuses (ICMP port
unreachable: the front's relay reports it at once). A machine that died, a
process that is stopped (SIGSTOP, a debugger) or a firewall that drops
packets sends nothing back, and the member lease only runs out after `ttl_s`.
So the front asks each worker now and then, with a packet every QUIC server
must answer: a long header of a version reserved to force version
negotiation (RFC 9000 §15, 0x?a?a?a?a), padded to 1200 octets (an edge sends
no Version Negotiation for anything smaller, §14.1), with random CIDs. The
edge answers with a Version Negotiation packet that echoes them swapped
(§17.2.1), cheap for both sides and without state at the edge; the
reply is about 30 octets, so a forged probe reflects nothing bigger.

Per worker, one probe is outstanding at a time: at each round an unanswered
one is a miss, then a new one goes out. `down_after` misses in a row mark the
worker down (its CIDs then go by hash to workers up, whose host answers them
with a stateless reset, as for a refusal); `up_after` answers in a row mark it
up again. Only a reply from the worker's address that echoes the outstanding
probe's random CIDs counts, so an off-path sender cannot keep a dead worker
up, and nothing but the worker's silence makes it down. Replies waiting in
the socket are read before misses are counted, so a front that was itself
slow to run does not blame the workers.

Bounded: one socket per address family, one probe state per worker the
front routes to (dropped when the member leaves), at most `max_probes_per_s`
probes a second over all workers (the round's period stretches beyond
`interval_s` when there are more workers than that allows), and at most
`MAX_REPLIES_PER_READ` datagrams read per wake-up (before a round: one per
worker more).

Detection time: a worker stopped right after answering is marked down
between `down_after` and `down_after + 1` periods later.

Panic: the verdicts can be wrong all at once, when the front's own probing
breaks (its probe socket, its host's firewall dropping the answers): every
worker would be marked down and nothing routed. So when the share of workers
up falls below `panic_threshold` (Envoy's rule: panic when the share up is
*below* it, so 1 of 2 up at 0.5 is no panic), the verdicts are ignored and
every worker is routed to; probing goes on, and the verdicts are applied
again as soon as the share is back. Hosts that really died still leave: their
member lease runs out. The share counts only workers with a verdict of their
own (answered once, or marked down): a worker that just joined and was never
answered would otherwise end a panic caused by the front alone for the
`down_after` rounds it takes to find it silent too. No hysteresis of its own:
the share changes only when a verdict does, and verdicts already need
`down_after` misses or `up_after` answers in a row.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from netsched_client.io import Address

log = logging.getLogger("netsched.edge.fleet")

PROBE_VERSION = 0x1A2A3A4A  # RFC 9000 §15: reserved, a server answers Version Negotiation
PROBE_SIZE = 1200  # the smallest datagram an edge answers with Version Negotiation
PROBE_CID_BYTES = 8
MAX_REPLIES_PER_READ = 64
_LONG_HEADER_FIXED = 0xC0
_VN_HEADER = struct.Struct("!BI")  # first octet, version (0 for Version Negotiation)


@dataclass(frozen=True, slots=True)
class HealthSettings:
    interval_s: float = 0.5  # between two probes of one worker (at least)
    down_after: int = 3  # unanswered probes in a row
    up_after: int = 2  # answered probes in a row
    max_probes_per_s: float = 200.0  # over every worker
    panic_threshold: float = 0.5  # a share of workers up below it: route to all; 0: never

    def __post_init__(self) -> None:
        if not all(0 < rate < math.inf for rate in (self.interval_s, self.max_probes_per_s)):
            raise ValueError(f"health checks need positive rates: {self}")
        if self.down_after < 1 or self.up_after < 1:
            raise ValueError(f"health checks need counts of 1 or more: {self}")
        if not 0 <= self.panic_threshold <= 1:
            raise ValueError(f"health checks need a panic threshold from 0 to 1: {self}")

    def panics(self, up: int, judged: int) -> bool:
        """Whether `up` of `judged` workers up is too few to trust the verdicts."""
        return judged > 0 and up / judged < self.panic_threshold

    def period(self, workers: int) -> float:
        """Seconds between two rounds over `workers` workers, within the probe budget."""
        return max(self.interval_s, workers / self.max_probes_per_s)


@dataclass(slots=True)
class WorkerHealth:
    """One worker's probe state; a worker starts up (its member just joined)."""

    up: bool = True
    misses: int = 0  # in a row, while up
    answers: int = 0  # in a row, while down
    awaited: bytes | None = None  # the reply's CIDs (DCID ‖ SCID) the outstanding probe asks for
    judged: bool = False  # answered once or marked down: counted in the panic share


@dataclass(slots=True)
class ProbeCounters:
    sent: int = 0
    answered: int = 0  # replies that matched an outstanding probe
    missed: int = 0
    send_errors: int = 0
    panics: int = 0  # times the share up fell below the panic threshold


def probe_datagram(dcid: bytes, scid: bytes) -> bytes:
    """A long-header packet of a version nobody speaks, padded to PROBE_SIZE."""
    head = _VN_HEADER.pack(_LONG_HEADER_FIXED | (os.urandom(1)[0] & 0x3F), PROBE_VERSION)
    packet = head + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    return packet.ljust(PROBE_SIZE, b"\0")


def version_negotiation_cids(data: bytes) -> bytes | None:
    """DCID ‖ SCID of a Version Negotiation packet; None for anything else."""
    at = _VN_HEADER.size
    if len(data) <= at:
        return None
    first, version = _VN_HEADER.unpack_from(data)
    if not first & 0x80 or version != 0:
        return None
    dcid_end = at + 1 + data[at]
    if dcid_end >= len(data):
        return None
    scid_end = dcid_end + 1 + data[dcid_end]
    if scid_end > len(data):
        return None
    return data[at + 1 : dcid_end] + data[dcid_end + 1 : scid_end]


def canonical(address: Address) -> Address:
    """(host, port) with the host written one way, to match a reply's source."""
    return ipaddress.ip_address(address[0]).compressed, address[1]


class WorkerProber:
    """Probes the workers `track` names, every round; `on_change` runs when one goes
    down or up (the front routes again). `run` is the rounds, `close` the sockets.
    `silent` is the probes' verdict, `down` the workers to route around (none in panic)."""

    def __init__(self, settings: HealthSettings, on_change: Callable[[], None]) -> None:
        self.settings = settings
        self.on_change = on_change
        self.workers: dict[Address, WorkerHealth] = {}
        self.counters = ProbeCounters()
        self.changed_at = 0.0  # loop time of the last worker going down or up
        self.panic = False
        self._by_source: dict[Address, Address] = {}  # canonical -> as the member names it
        self._sockets: dict[int, socket.socket] = {}  # by address family, opened when needed

    @property
    def silent(self) -> frozenset[Address]:
        """The workers the probes mark down."""
        return frozenset(address for address, health in self.workers.items() if not health.up)

    @property
    def down(self) -> frozenset[Address]:
        """The workers to route around: the silent ones, unless too many are (panic)."""
        return frozenset() if self.panic else self.silent

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The probe sockets open now, one per address family (the answers' destination)."""
        return tuple(self._sockets.values())

    def track(self, addresses: Iterable[Address]) -> None:
        """Probe these workers from now on (the ones no longer named are forgotten)."""
        wanted = set(addresses)
        self.workers = {a: self.workers.get(a) or WorkerHealth() for a in wanted}
        self._by_source = {canonical(a): a for a in wanted}
        self._judge_panic()

    async def run(self) -> None:
        while True:
            self.round()
            await asyncio.sleep(self.settings.period(len(self.workers)))

    def round(self) -> None:
        """Count the probes still unanswered as misses, then probe every worker."""
        for sock in list(self._sockets.values()):
            # Every answer of the last round may be waiting (and as much noise at most).
            self._read(sock, len(self.workers) + MAX_REPLIES_PER_READ)
        changed = False
        for address, health in self.workers.items():
            if health.awaited is not None:
                changed |= self._missed(address, health)
            self._send(address, health)
        if changed:
            self._changed()

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets.values():
            loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()

    def _changed(self) -> None:
        self.changed_at = asyncio.get_running_loop().time()
        self._judge_panic()
        self.on_change()

    def _judge_panic(self) -> None:
        """Enter or leave panic after a verdict or the workers changed (module doc)."""
        judged = [health for health in self.workers.values() if health.judged]
        up, threshold = sum(health.up for health in judged), self.settings.panic_threshold
        panic = self.settings.panics(up, len(judged))
        if panic == self.panic:
            return
        self.panic = panic
        if panic:
            self.counters.panics += 1
            log.warning(
                "fleet front: only %d of %d workers probed answer (below %g): panic, every "
                "worker routed to until more answer", up, len(judged), threshold,
            )  # fmt: skip
        else:
            log.warning(
                "fleet front: %d of %d workers probed answer: panic over, the silent ones "
                "routed around again", up, len(judged),
            )  # fmt: skip

    def _socket(self, family: int) -> socket.socket:
        sock = self._sockets.get(family)
        if sock is None:
            loop = asyncio.get_running_loop()
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._read, sock, MAX_REPLIES_PER_READ)
            self._sockets[family] = sock
        return sock

    def _send(self, address: Address, health: WorkerHealth) -> None:
        dcid, scid = os.urandom(PROBE_CID_BYTES), os.urandom(PROBE_CID_BYTES)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        try:
            self._socket(family).sendto(probe_datagram(dcid, scid), address)
        except OSError as exc:
            # The front's own trouble (a full buffer, no descriptor): no probe, no verdict.
            self.counters.send_errors += 1
            log.debug("fleet front: probe to %s not sent: %s", address, exc)
            return
        health.awaited = scid + dcid  # the answer swaps them
        self.counters.sent += 1

    def _read(self, sock: socket.socket, limit: int) -> None:
        """Read at most `limit` datagrams, counting the answers among them."""
        changed = False
        for _ in range(limit):
            try:
                data, source = sock.recvfrom(PROBE_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error of an earlier probe: the miss will tell
                continue
            address = self._by_source.get(canonical(source[:2]))
            health = None if address is None else self.workers.get(address)
            if health is None or health.awaited is None:
                continue
            if version_negotiation_cids(data) == health.awaited:
                assert address is not None
                changed |= self._answered(address, health)
        if changed:
            self._changed()

    def _answered(self, address: Address, health: WorkerHealth) -> bool:
        """Count an answer; True when the worker comes up."""
        self.counters.answered += 1
        health.awaited = None
        health.misses = 0
        health.judged = True
        if health.up:
            return False
        health.answers += 1
        if health.answers < self.settings.up_after:
            return False
        health.up, health.answers = True, 0
        log.warning("fleet front: %s port %d answers probes again: up", *address[:2])
        return True

    def _missed(self, address: Address, health: WorkerHealth) -> bool:
        """Count a miss; True when the worker goes down."""
        self.counters.missed += 1
        health.awaited = None
        health.answers = 0
        if not health.up:
            return False
        health.misses += 1
        if health.misses < self.settings.down_after:
            return False
        health.up, health.misses, health.judged = False, 0, True
        log.warning(
            "fleet front: %s port %d left %d probes unanswered: down (its CIDs go elsewhere)",
            address[0], address[1], self.settings.down_after,
        )  # fmt: skip
        return True
