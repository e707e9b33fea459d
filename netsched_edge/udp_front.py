"""Plain UDP services at the edge: the Cython forwarder in front of udp backends.

One forwarder per service with `udp_listen`. The backend of a client flow is
chosen once, by the service's policy and health (the same pool requests use);
every later datagram of the flow is relayed in C without Python.

Bounds ([limits]): `max_flows` flows (default: half of what is left of the
soft RLIMIT_NOFILE after a quarter is reserved for the rest of the edge, at
most 65536),
`max_flows_per_source` per client address, and no flow socket ever takes one
of the reserved descriptors: a client that would need one is dropped and
counted, and static files, backend connections and QUIC keep working (the
rules: netsched_edge/forwarder/flows.py).

Health feedback: the relay reports each flow's first reply as a success and a
backend that refuses (ICMP port unreachable) or leaves a sending client
unanswered for `reply_timeout` as a failure, to the pool's health tracking of
that backend (`ServicePool.observe`, under the service's ejection ceiling);
the flow is closed and the client's next datagram chooses again (the rules:
netsched_edge/forwarder/flows.py). The relay's `now` is the event loop's
clock, which is the pool's too (the dispatcher's default clock).

Silence is weak evidence: anyone can send a backend garbage it rightly
ignores, from any (spoofed) source address. So an unanswered flow counts
against its backend only when the backend answered nothing else in that time:
the relay reports IGNORED instead of SILENT when another of its flows got a
reply, and a SILENT report is discounted here when the backend succeeded
otherwise (an active health check) within the last `reply_timeout`. An
attacker can make flows go unanswered; it cannot make a serving backend stop
answering others. When every backend is truly silent to everyone, the
ejection ceiling still keeps `max_ejection_percent` of them in rotation.
"""

from __future__ import annotations

import logging

from .backends.udp import UDPBackend
from .config import LimitsConfig
from .forwarder import UdpForwarder, UdpRelay
from .forwarder.flows import DEFAULT_REPLY_TIMEOUT, FlowOutcome
from .metrics import EdgeMetrics
from .pool import ServicePool

log = logging.getLogger("netsched.edge.udp")


class UdpFront:
    def __init__(
        self,
        pool: ServicePool,
        listen: tuple[str, int],
        *,
        metrics: EdgeMetrics | None = None,
        reply_timeout: float | None = DEFAULT_REPLY_TIMEOUT,
        limits: LimitsConfig | None = None,
    ) -> None:
        backends = [b for b in pool.backends.values() if isinstance(b, UDPBackend)]
        self._names = tuple(backend.name for backend in backends)
        self._index = {name: i for i, name in enumerate(self._names)}
        self._pool = pool
        self._metrics = metrics
        self._reply_timeout = reply_timeout
        addresses = [(backend.host, backend.port) for backend in backends]
        limits = LimitsConfig() if limits is None else limits
        relay = UdpRelay(
            listen,
            addresses,
            self._choose,
            reply_timeout=reply_timeout,
            report=self._report,
            max_flows=limits.max_flows,  # None: from RLIMIT_NOFILE (forwarder/flows.py)
            max_flows_per_source=limits.max_flows_per_source,
        )
        self.forwarder = UdpForwarder(relay)
        if metrics is not None:
            metrics.add_forwarder(pool.config.name, self._names, self.forwarder)

    @property
    def local_address(self) -> tuple[str, int]:
        address = self.forwarder.local_address
        return (str(address[0]), int(address[1]))

    def _choose(self, client: tuple[object, ...]) -> int | None:
        backend = self._pool.pick(f"{client[0]}:{client[1]}")
        return None if backend is None else self._index.get(backend.name)

    def _report(self, backend: int, outcome: FlowOutcome, now: float) -> None:
        """A flow's word on its backend: a passive outcome for the pool's health tracking."""
        name = self._names[backend]
        tracker = self._pool.health[name]
        if outcome is FlowOutcome.IGNORED or (
            outcome is FlowOutcome.SILENT and self._answered_lately(tracker.succeeded_at, now)
        ):
            return  # the client went unanswered, not the backend silent (module doc)
        self._pool.observe(name, ok=outcome is FlowOutcome.ANSWERED, now=now)

    def _answered_lately(self, succeeded_at: float, now: float) -> bool:
        return self._reply_timeout is not None and now - succeeded_at <= self._reply_timeout

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.remove_forwarder(self._pool.config.name)
        self.forwarder.close()
