"""Drive a relay from an asyncio (or uvloop) event loop.

Readiness callbacks only, as netsched_client.io.loop: one wake-up relays up to
MAX_BATCHES_PER_WAKEUP batches each way, so Python runs once per batch, never
once per datagram; a timer expires idle flows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from netsched_client.io import MAX_BATCHES_PER_WAKEUP, Address

from .flows import ForwarderStats, Relay, log, sweep_interval


class UdpForwarder:
    """A relay attached to the running event loop until `close()`."""

    def __init__(self, relay: Relay, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.relay = relay
        self._loop = loop or asyncio.get_running_loop()
        self._closed = False
        self._loop.add_reader(relay.fileno(), self._drain, relay.relay_front)
        self._loop.add_reader(relay.upstream_fileno(), self._drain, relay.relay_upstream)
        self._timer = self._loop.call_later(sweep_interval(relay.idle_timeout), self._sweep)

    @property
    def local_address(self) -> Address:
        return self.relay.local_address

    @property
    def stats(self) -> ForwarderStats:
        return self.relay.stats

    def _drain(self, step: Callable[[float], int]) -> None:
        now = self._loop.time()
        for _ in range(MAX_BATCHES_PER_WAKEUP):
            try:
                if step(now) < self.relay.batch:
                    return  # the socket is drained: no need for an EAGAIN round trip
            except OSError as exc:
                log.debug("UDP forwarder receive error: %s", exc)
                return

    def _sweep(self) -> None:
        self.relay.expire(self._loop.time())
        self._timer = self._loop.call_later(sweep_interval(self.relay.idle_timeout), self._sweep)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._timer.cancel()
        self._loop.remove_reader(self.relay.fileno())
        self._loop.remove_reader(self.relay.upstream_fileno())
        self.relay.close()
