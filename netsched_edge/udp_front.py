"""Plain UDP services at the edge: the Cython forwarder in front of udp backends.

One forwarder per service with `udp_listen`. The backend of a client flow is
chosen once, by the service's policy and health (the same pool requests use);
every later datagram of the flow is relayed in C without Python.

Health feedback: the relay reports each flow's first reply as a success and a
backend that refuses (ICMP port unreachable) or leaves a sending client
unanswered for `reply_timeout` as a failure, to the pool's `HealthTracker` of
that backend; the flow is closed and the client's next datagram chooses again
(the rules: netsched_edge/forwarder/flows.py). The relay's `now` is the event
loop's clock, which is the pool's too (the dispatcher's default clock).
"""

from __future__ import annotations

import logging

from .backends.udp import UDPBackend
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
    ) -> None:
        backends = [b for b in pool.backends.values() if isinstance(b, UDPBackend)]
        self._names = tuple(backend.name for backend in backends)
        self._index = {name: i for i, name in enumerate(self._names)}
        self._pool = pool
        self._metrics = metrics
        addresses = [(backend.host, backend.port) for backend in backends]
        relay = UdpRelay(
            listen, addresses, self._choose, reply_timeout=reply_timeout, report=self._report
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
        was = tracker.state
        if outcome is FlowOutcome.ANSWERED:
            tracker.on_success(now)
        else:
            tracker.on_failure(now)
        if tracker.state is not was:  # once per transition, not once per flow
            log.info("UDP backend %s is %s (a flow: %s)", name, tracker.state.value, outcome.value)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.remove_forwarder(self._pool.config.name)
        self.forwarder.close()
