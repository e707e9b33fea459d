"""Load shedding when the event loop falls behind (Envoy's overload manager, on the one
signal a single-threaded edge has for a saturated CPU: its loop's lag).

A loop that is late is late for everyone it serves: a request that arrives while the
loop runs seconds behind waits those seconds before anything looks at it, then
competes with every other for the same core. Taking more work in then only makes all
of it late; at a 1,000-connection soak on 2 cores, requests went unanswered for 20 s
and connections died of idle timeouts. So while the lag stays above
`[limits] shed_loop_lag_ms`, the edge takes in only what is cheap to refuse:

- a new request gets 503 at once ("overloaded"): no backend, no queue, no body read;
- a new client gets a stateless CONNECTION_REFUSED Initial (no TLS, no state);
- /readyz answers 503, so a load balancer sends new traffic elsewhere.

Requests and connections under way go on: they are what the edge is late for.
Entering needs `sustain` samples in a row over the threshold (a GC pause or one long
batch is not overload); leaving needs the lag under half the threshold for
`recover_s` (no flapping at the edge of the threshold).

`LagGovernor` decides from samples and times given to it (sans-IO, tested with a fake
clock); `watch_lag` samples a real loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("netsched.edge")

SAMPLE_INTERVAL_S = 0.1  # between two lag samples of an idle loop
SUSTAIN_SAMPLES = 3  # samples over the threshold, in a row, to start shedding
RECOVER_S = 1.0  # the lag stays under half the threshold this long to stop


@dataclass
class LagGovernor:
    """Shedding or not, from the loop's lag samples. `threshold_s` 0 never sheds."""

    threshold_s: float
    sustain: int = SUSTAIN_SAMPLES
    recover_s: float = RECOVER_S
    shedding: bool = False
    last_lag_s: float = 0.0
    episodes: int = 0  # times shedding started
    shed: int = 0  # requests and connections turned away (`count_shed`)
    _over: int = field(default=0, repr=False)
    _calm_since: float | None = field(default=None, repr=False)
    _began: float = field(default=0.0, repr=False)
    _shed_at_start: int = field(default=0, repr=False)

    def observe(self, lag_s: float, now: float) -> None:
        """One sample: the loop ran `lag_s` late at `now`."""
        self.last_lag_s = lag_s
        if self.threshold_s <= 0:
            return
        if not self.shedding:
            self._over = self._over + 1 if lag_s >= self.threshold_s else 0
            if self._over >= self.sustain:
                self._start(now)
            return
        if lag_s >= self.threshold_s / 2:
            self._calm_since = None
        elif self._calm_since is None:
            self._calm_since = now
        elif now - self._calm_since >= self.recover_s:
            self._stop(now)

    def reason(self) -> str | None:
        """Why new work is turned away now, or None."""
        if not self.shedding:
            return None
        return f"overloaded: event loop {self.last_lag_s * 1000:.0f} ms behind"

    def count_shed(self) -> None:
        self.shed += 1

    def _start(self, now: float) -> None:
        self.shedding, self._calm_since, self._over = True, None, 0
        self.episodes += 1
        self._began, self._shed_at_start = now, self.shed
        log.warning(
            "event loop %.0f ms behind for %d samples (limits.shed_loop_lag_ms %.0f): "
            "refusing new requests and connections",
            self.last_lag_s * 1000,
            self.sustain,
            self.threshold_s * 1000,
        )

    def _stop(self, now: float) -> None:
        self.shedding, self._calm_since = False, None
        log.warning(
            "event loop caught up after %.1f s of overload: %d requests and connections "
            "were turned away",
            now - self._began,
            self.shed - self._shed_at_start,
        )


async def watch_lag(
    governor: LagGovernor,
    clock: Callable[[], float],
    interval_s: float = SAMPLE_INTERVAL_S,
) -> None:
    """Sample the running loop's lag into `governor` until cancelled: how much later than
    asked a sleep of `interval_s` returns."""
    while True:
        asked = clock() + interval_s
        await asyncio.sleep(interval_s)
        now = clock()
        governor.observe(max(0.0, now - asked), now)
