"""Plain UDP services at the edge: the Cython forwarder in front of udp backends.

One forwarder per service with `udp_listen`. The backend of a client flow is
chosen once, by the service's policy and health (the same pool requests use);
every later datagram of the flow is relayed in C without Python.
"""

from __future__ import annotations

import logging

from .backends.udp import UDPBackend
from .forwarder import UdpForwarder, UdpRelay
from .pool import ServicePool

log = logging.getLogger("netsched.edge.udp")


class UdpFront:
    def __init__(self, pool: ServicePool, listen: tuple[str, int]) -> None:
        backends = [b for b in pool.backends.values() if isinstance(b, UDPBackend)]
        self._index = {backend.name: i for i, backend in enumerate(backends)}
        self._pool = pool
        addresses = [(backend.host, backend.port) for backend in backends]
        self.forwarder = UdpForwarder(UdpRelay(listen, addresses, self._choose))

    @property
    def local_address(self) -> tuple[str, int]:
        address = self.forwarder.local_address
        return (str(address[0]), int(address[1]))

    def _choose(self, client: tuple[object, ...]) -> int | None:
        backend = self._pool.pick(f"{client[0]}:{client[1]}")
        return None if backend is None else self._index.get(backend.name)

    def close(self) -> None:
        self.forwarder.close()
