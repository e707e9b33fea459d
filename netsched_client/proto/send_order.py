"""Which stream's data goes out first: earliest deadline, then RFC 9218 urgency.

aioquic serves streams round-robin. NetSched orders its send queue by each
stream's deadline, then urgency, then when it was opened, before every
flush, and gives up on a stream whose deadline has passed while it still had
data to send: that data would arrive too late to matter, and sending it
would delay everyone else's (the stream is reset with ERROR_DEADLINE and the
application is told through a `DeadlineMissed` event).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Final

from aioquic.quic.events import QuicEvent
from aioquic.quic.stream import QuicStream

from .slo import DEFAULT_URGENCY

ERROR_DEADLINE = 0x3  # application error code of a stream reset for a missed deadline


@dataclass
class DeadlineMissed(QuicEvent):
    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamPriority:
    deadline_at: float | None  # absolute, on the connection's clock
    urgency: int = DEFAULT_URGENCY
    sequence: int = 0
    # The send order's sort key, built once: the queue is sorted before every flush.
    sort_key: tuple[float, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        deadline = math.inf if self.deadline_at is None else self.deadline_at
        object.__setattr__(self, "sort_key", (deadline, self.urgency, self.sequence))


_DEFAULT: Final = StreamPriority(None)


@dataclass(slots=True)
class SendOrder:
    priorities: dict[int, StreamPriority] = field(default_factory=dict)
    _sequence: itertools.count[int] = field(default_factory=itertools.count)
    missed: int = 0

    def set(self, stream_id: int, deadline_at: float | None, urgency: int) -> None:
        self.priorities[stream_id] = StreamPriority(deadline_at, urgency, next(self._sequence))

    def order(self, queue: list[QuicStream]) -> list[QuicStream]:
        """The queue sorted by priority; streams without one keep their order after urgency 3."""
        if len(queue) < 2:
            return queue
        priorities, default = self.priorities, _DEFAULT.sort_key
        return sorted(
            queue,
            key=lambda s: p.sort_key if (p := priorities.get(s.stream_id or 0)) else default,
        )

    def expired(self, queue: list[QuicStream], now: float) -> list[int]:
        """Streams past their deadline that still have data queued (each reported once)."""
        late = []
        for stream in queue:
            priority = self.priorities.get(stream.stream_id or 0)
            if (
                priority is not None
                and priority.deadline_at is not None
                and priority.deadline_at < now
                and not stream.sender.buffer_is_empty
                and not stream.sender.reset_pending
            ):
                late.append(stream.stream_id or 0)
                del self.priorities[stream.stream_id or 0]
        self.missed += len(late)
        return late

    def prune(self, live: Collection[int]) -> None:
        """Drop the priorities of streams that no longer exist (bounded memory)."""
        self.priorities = {sid: p for sid, p in self.priorities.items() if sid in live}
