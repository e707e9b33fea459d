"""XLINK-style copies of urgent stream data on a second path (sans-IO).

Data whose deadline is too close for a retransmission to make it (the
scheduler's `is_urgent`) is sent twice: once where the scheduler put it, and
once more on another working path with congestion window room, so that one
loss or one slow path does not make it late. Copies are capped as a share of
the bytes the connection sent (XLINK's lesson: unbounded redundancy starves the bulk
traffic it shares the paths with).

A copy is made the way aioquic retransmits: the range's delivery handler is
called with LOST, which puts it back at the front of the stream's queue, and
the next path that flushes sends it. Copies wait only for the next round of
flushes; one that found no other path by then is dropped (the original is
still in flight, and its own loss recovery stands behind it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from aioquic.quic.packet_builder import QuicDeliveryState

DEFAULT_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class Copy:
    origin: int  # path ID the data left on first
    stream_id: int
    round: int
    handler: Callable[..., None]  # the stream sender's delivery handler
    args: tuple[Any, ...]  # (start, stop, fin)
    size: int


@dataclass(slots=True)
class UrgentCopies:
    share: float = DEFAULT_SHARE  # copy bytes at most this share of all bytes sent
    copy_bytes: int = 0
    round: int = 0
    pending: list[Copy] = field(default_factory=list)
    # Per stream, the end of the data copied so far: a copy is never copied again.
    copied: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be in 0..1, got {self.share!r}")

    def offer(
        self,
        origin: int,
        stream_id: int,
        handler: Callable[..., None],
        args: tuple[Any, ...],
        bytes_sent: int,
    ) -> bool:
        """Queue a copy of a range sent on path `origin`; False when over budget
        (`bytes_sent`: everything the connection sent so far, copies included)."""
        start, stop = int(args[0]), int(args[1])
        if stop <= self.copied.get(stream_id, 0):
            return False
        size = stop - start
        if self.copy_bytes + size > self.share * bytes_sent:
            return False
        self.copied[stream_id] = stop
        self.copy_bytes += size
        self.pending.append(Copy(origin, stream_id, self.round, handler, args, size))
        return True

    def send_on(self, path_id: int, room: int, late: Collection[int]) -> int:
        """Hand the copies from other paths that fit in `room` bytes back to their streams,
        but for the streams this path would deliver `late`; returns how many."""
        taken, count, keep = 0, 0, []
        for copy in self.pending:
            fits = taken + copy.size <= room
            if copy.origin != path_id and copy.stream_id not in late and fits:
                copy.handler(QuicDeliveryState.LOST, *copy.args)
                taken += copy.size
                count += 1
            else:
                keep.append(copy)
        self.pending = keep
        return count

    def forget(self, live: Collection[int]) -> None:
        """Drop what is known of streams that no longer exist (bounded memory)."""
        self.copied = {sid: end for sid, end in self.copied.items() if sid in live}

    def next_round(self) -> None:
        """Forget copies that waited a whole round of flushes (their budget is spent)."""
        self.pending = [c for c in self.pending if c.round == self.round]
        self.round += 1
