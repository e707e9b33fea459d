"""Load shedding when the event loop falls behind (Envoy's overload manager, on the one
signal a single-threaded edge has for a saturated CPU: its loop's lag).

A loop that is late is late for everyone it serves: a request that arrives while the
loop runs seconds behind waits those seconds before anything looks at it, then
competes with every other for the same core. Taking more work in then only makes all
of it late; at a 1,000-connection soak on 2 cores, requests went unanswered for 20 s
and connections died of idle timeouts. So once the smoothed lag passes
`[limits] shed_loop_lag_ms`, the edge refuses a share of the new work, growing to all
of it at twice that lag, in the forms that are cheap:

- a refused request gets 503 at once ("overloaded"): no backend, no queue, no body read;
- a refused client gets a stateless CONNECTION_REFUSED Initial (no TLS, no state);
- /readyz answers 503 while any is refused, so a load balancer sends traffic elsewhere.

Requests and connections under way go on: they are what the edge is late for. The
lag is smoothed (a GC pause or one long batch is not overload).

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
SMOOTHING = 0.3  # weight of a new sample in the smoothed lag (~0.3 s memory at 100 ms)
RECOVER_S = 1.0  # nothing refused for this long ends an episode (its log line)


@dataclass
class LagGovernor:
    """What share of new work to refuse, from the loop's lag samples; `threshold_s` 0
    never refuses.

    Proportional, not all or nothing: from `threshold_s` of smoothed lag the share grows
    linearly to all at twice that. An all-or-nothing switch locked a loaded host (1,000
    connections opening at once, the loop 400-500 ms behind) into refusing every new
    client, each of which came back; a share lets the load find a level the loop keeps
    up with. The refusals are spread evenly (a credit counter, no randomness)."""

    threshold_s: float
    smoothing: float = SMOOTHING
    recover_s: float = RECOVER_S
    lag_s: float = 0.0  # smoothed
    last_lag_s: float = 0.0
    share: float = 0.0  # of new requests and clients refused now
    shedding: bool = False  # an episode: refusing now, or within `recover_s` of it
    episodes: int = 0
    shed: int = 0  # requests and clients refused (`admit`)
    _credit: float = field(default=0.0, repr=False)
    _calm_since: float | None = field(default=None, repr=False)
    _began: float = field(default=0.0, repr=False)
    _shed_at_start: int = field(default=0, repr=False)

    def observe(self, lag_s: float, now: float) -> None:
        """One sample: the loop ran `lag_s` late at `now`."""
        self.last_lag_s = lag_s
        self.lag_s += self.smoothing * (lag_s - self.lag_s)
        if self.threshold_s <= 0:
            return
        over = (self.lag_s - self.threshold_s) / self.threshold_s
        self.share = min(1.0, max(0.0, over))
        if self.share > 0:
            self._calm_since = None
            if not self.shedding:
                self._start(now)
        elif self.shedding:
            if self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= self.recover_s:
                self._stop(now)

    def admit(self) -> str | None:
        """For one new request or client: None to take it, else why it is refused."""
        if self.share <= 0:
            return None
        self._credit += self.share
        if self._credit < 1:
            return None
        self._credit -= 1
        self.shed += 1
        return self.reason()

    def reason(self) -> str:
        return f"overloaded: event loop {self.lag_s * 1000:.0f} ms behind"

    def _start(self, now: float) -> None:
        self.shedding, self.episodes = True, self.episodes + 1
        self._began, self._shed_at_start, self._credit = now, self.shed, 0.0
        log.warning(
            "event loop %.0f ms behind (limits.shed_loop_lag_ms %.0f): refusing %.0f %% of "
            "new requests and connections, all of them at twice that lag",
            self.lag_s * 1000,
            self.threshold_s * 1000,
            self.share * 100,
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
