"""Connections outlive a QUIC-LB rotation: a host moves them to CIDs of the new
configuration before the replaced one stops being routed (docs/FLEET.md).

A rotation's grace routes the replaced configuration's CIDs for `grace_s`; a
connection still sending to one after that is hashed to some host, which answers
with a stateless reset. So once a host issues CIDs under the new codepoint
(`FleetStatus.cids`, followed from etcd), `CidRefresh` visits each connection it
had then and gives it fresh CIDs for the stale ones, announced with a Retire
Prior To that covers the stale ones: path 0's in NEW_CONNECTION_ID
(`EdgeQuicConnection.reissue_cids`), every other path ID's, open or issued ahead,
in PATH_NEW_CONNECTION_ID (`MultipathConnection.reissue_path_cids`). The client
switches each path to a fresh CID and retires the others (RFC 9000 §5.1.2,
draft-ietf-quic-multipath-21 PATH_NEW_CONNECTION_ID).

The work is spread: the connections are visited in batches, one per tick, over
`SPREAD_FRACTION` of the time left in the grace (the rest leaves the clients
time to switch, and the frames time to be lost and sent again), at most
`MAX_PER_TICK` a tick: a host with 10,000 connections and an hour of grace
re-issues a few every tick, not 10,000 at once.

The server runs it (it holds the connections) and learns the rotations from the
fleet status it follows (`EdgeServer.follow_fleet`): that status is the one link
every way of joining a fleet gives the server.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # the host module needs httpx; this one is imported by the server
    from .host import FleetStatus

log = logging.getLogger("netsched.edge.fleet")

TICK_S = 0.05  # between two batches of a sweep
IDLE_S = 0.25  # between two looks at the status when no sweep is under way
SPREAD_FRACTION = 0.5  # of the grace left when the rotation is seen
MAX_PER_TICK = 32  # connections a tick (each ~0.2 ms: 8 CIDs made, one packet built)


def codepoint(cid: bytes) -> int:
    """The QUIC-LB config rotation codepoint a CID carries (its first octet's 3 high bits)."""
    return cid[0] >> 5


class Driver(Protocol):
    """What a sweep needs of a connection's driver (Driver)."""

    @property
    def quic(self) -> object: ...
    @property
    def closed(self) -> asyncio.Event: ...
    def schedule_transmit(self) -> None: ...


@runtime_checkable
class Reissuing(Protocol):
    """A connection that can replace its stale CIDs (EdgeQuicConnection): path 0's, and
    the other path IDs' of a multipath connection."""

    def reissue_cids(self, stale: Callable[[bytes], bool]) -> int: ...
    def reissue_path_cids(self, stale: Callable[[bytes], bool]) -> int: ...


class CidRefresh(Collector):
    """Sweeps the server's connections after each QUIC-LB rotation the host follows;
    counts what it did (`describe`, and its metrics as a Prometheus collector)."""

    def __init__(
        self,
        status: Callable[[], FleetStatus],
        connections: Callable[[], Collection[Driver]],
    ) -> None:
        self._status = status
        self._connections = connections
        self._codepoint: int | None = None  # swept for (or being swept for)
        self._pending: deque[Driver] = deque()
        self._finish_by = 0.0  # loop time the sweep should be done by
        self._replaced_until: float | None = None  # wall clock: the old CIDs' route ends
        self.rotations = 0  # followed with connections to look at
        self.connections = 0  # given fresh CIDs
        self.cids = 0  # issued
        self.late = 0  # connections reached after their old CIDs' route had ended
        self.largest_batch = 0

    def collect(self) -> Iterator[Metric]:
        """Read at scrape time (prefix `netsched_edge_fleet_cid_reissue_`)."""
        prefix = "netsched_edge_fleet_cid_reissue"
        for name, doc, value in (
            ("connections", "Connections given fresh CIDs after QUIC-LB rotations.",
             self.connections),
            ("cids", "CIDs issued to replace those of rotated-out QUIC-LB configurations.",
             self.cids),
            ("late", "Connections reached after their old CIDs had stopped being routed.",
             self.late),
        ):  # fmt: skip
            yield CounterMetricFamily(f"{prefix}_{name}", doc, value=value)
        yield GaugeMetricFamily(
            f"{prefix}_pending", "Connections left to visit in the sweep under way.", self.pending
        )

    @property
    def pending(self) -> int:
        return len(self._pending)

    def summary(self) -> str:
        """One line for /readyz (`describe` is the collector's, for the registry)."""
        return (
            f"CIDs re-issued after {self.rotations} QUIC-LB rotations: {self.connections}"
            f" connections, {self.cids} CIDs ({self.pending} pending, {self.late} late)"
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._look(loop.time())
            if self._pending:
                self._step(loop.time())
            await asyncio.sleep(TICK_S if self._pending else IDLE_S)

    def _look(self, now: float) -> None:
        """A codepoint not swept for yet: sweep every connection held now (those made
        later have CIDs of it already; a sweep under way gives way, its connections are
        in the new one)."""
        state = self._status().cids
        if state is None or state.codepoint == self._codepoint:
            return
        first = self._codepoint is None
        self._codepoint = state.codepoint
        self._replaced_until = state.replaced_until
        self._pending = deque(self._connections())
        if self._pending and not first:
            self.rotations += 1
        left = 0.0 if state.replaced_until is None else state.replaced_until - time.time()
        self._finish_by = now + SPREAD_FRACTION * max(0.0, left)

    def _step(self, now: float) -> None:
        """One batch: what is left, shared over the ticks left (at least one)."""
        ticks_left = max(1, math.floor((self._finish_by - now) / TICK_S))
        batch = min(MAX_PER_TICK, math.ceil(len(self._pending) / ticks_left))
        self.largest_batch = max(self.largest_batch, batch)
        late = self._replaced_until is not None and time.time() > self._replaced_until
        for _ in range(batch):
            self._visit(self._pending.popleft(), late)

    def _visit(self, driver: Driver, late: bool) -> None:
        quic = driver.quic
        if driver.closed.is_set() or not isinstance(quic, Reissuing):
            return
        current = self._codepoint
        issued = 0
        for reissue in (quic.reissue_cids, quic.reissue_path_cids):
            try:
                issued += reissue(lambda cid: codepoint(cid) != current)
            except Exception:  # one connection's state: the sweep, and the next ones, go on
                log.exception("fresh CIDs for a connection failed: it keeps its CIDs")
        if issued:
            driver.schedule_transmit()  # an idle connection would hold them till its timer
            self.connections += 1
            self.cids += issued
            self.late += late
