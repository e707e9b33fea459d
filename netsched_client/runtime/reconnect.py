"""When and how a session replaces its connection: the policy, the backoff, the record.

A session reconnects after the edge's GOAWAY (new requests go to the new
connection, those under way finish on the draining one) and after the
connection is lost (idle timeout, stateless reset, CONNECTION_CLOSE with an
error, every path dead), once a request or a datagram needs a connection (an
idle session makes none). The attempts back off with full jitter (the first
leaves at once: a stateless reset or a GOAWAY says an edge is there), up to
`max_attempts` and `max_time_s`; then the session is closed with
`ReconnectFailed`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

# RFC 9110 §9.2.1/§9.2.2: requests with these methods may be sent twice without harm.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# The edge serves these from 0-RTT before the handshake completes (PROTOCOL.md §4.4); any
# other request waits for the handshake, so a connection that never completed one
# cannot have processed it.
EARLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """`connect(reconnect=...)`: True (this default policy), False (never), or a policy.

    On by default: a request is sent again only when that cannot do harm (it is
    idempotent, or the edge refused it unprocessed) and only once, inside its
    deadline; every other one raises `RequestInterrupted`. An application that
    must see every loss itself passes False.
    """

    max_attempts: int = 8  # connection attempts per outage
    max_time_s: float = 20.0  # from the loss until the session gives up
    first_delay_s: float = 0.1  # backoff before the 2nd attempt (doubled each time)
    max_delay_s: float = 2.0
    retry_idempotent: bool = True  # send in-flight idempotent requests once more
    early_data: bool = True  # resume in 0-RTT when the ticket allows it
    max_waiting: int = 1024  # requests waiting for the new connection at once

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_waiting < 1:
            raise ValueError("max_attempts and max_waiting must be at least 1")
        if not 0 < self.first_delay_s <= self.max_delay_s or self.max_time_s <= 0:
            raise ValueError("need 0 < first_delay_s <= max_delay_s and max_time_s > 0")

    def delays(self, rng: random.Random) -> Iterator[float]:
        """The wait before each attempt: 0, then full jitter under a doubling cap."""
        yield 0.0
        cap = self.first_delay_s
        for _ in range(self.max_attempts - 1):
            yield rng.uniform(0, cap)
            cap = min(2 * cap, self.max_delay_s)


class Outage:
    """One outage's budget: attempts and time from its start, and the waits between them.

    A connection lost soon after it was made (within `max_delay_s`) continues the
    outage it was meant to end, budget and backoff included: an edge that completes
    handshakes and then refuses (a draining one) gets no fresh budget each time.
    """

    def __init__(self, policy: ReconnectPolicy, rng: random.Random, now: float) -> None:
        self.give_up_at = now + policy.max_time_s
        self.attempts = 0
        self._delays = policy.delays(rng)

    def next_delay(self, now: float) -> float | None:
        """The wait before the next attempt; None: the budget is spent."""
        delay = next(self._delays, None)
        if delay is None or now + delay >= self.give_up_at:
            return None
        self.attempts += 1
        return delay


def policy_of(reconnect: ReconnectPolicy | bool) -> ReconnectPolicy | None:
    """The policy `connect(reconnect=...)` asks for; None: never reconnect."""
    if reconnect is True:
        return ReconnectPolicy()
    if reconnect is False:
        return None
    return reconnect


@dataclass(frozen=True, slots=True)
class ReconnectStats:
    """`Session.reconnect_stats`: what the session's reconnects did (a snapshot)."""

    reconnects: int  # new connections in service after a GOAWAY or a loss
    attempts: int  # connection attempts made for them, failed ones included
    retried: int  # requests sent again on a new connection
    interrupted: int  # requests and datagram receivers that raised RequestInterrupted
    last_reason: str | None  # why the last connection was replaced ("goaway", ...)


def may_resend(method: str, idempotent: bool | None) -> bool:
    """A request the SDK may send twice: idempotent by its SLO or by its method."""
    return bool(idempotent) or method in IDEMPOTENT_METHODS


def served_early(method: str, idempotent: bool | None) -> bool:
    """A request the edge may serve from 0-RTT, before the handshake completes."""
    return bool(idempotent) or method in EARLY_METHODS
