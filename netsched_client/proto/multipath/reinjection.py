"""XLINK-style copies of urgent stream data on a second path (sans-IO).

Data whose deadline is too close for a retransmission to make it, or, on a path
losing `copy_loss` or more, for a lost packet's repair (the scheduler's
`is_urgent`), is sent twice: once where the scheduler put it, and
once more on another working path with congestion window room, so that one
loss or one slow path does not make it late. Copies are capped as a share of
the bytes the connection sent (XLINK's lesson: unbounded redundancy starves the bulk
traffic it shares the paths with).

A copy is made the way aioquic retransmits: the range's delivery handler is
called with LOST, which puts it back at the front of the stream's queue, and
the next path that flushes sends it. Copies wait only for the next round of
flushes; one that found no other path by then is dropped (the original is
still in flight, and its own loss recovery stands behind it).

aioquic assumes one packet in flight per byte range; a copy breaks that,
and a range still queued when the other packet's ACK made aioquic drop those
bytes from its buffer would be sent from the wrong place (the peer closes
with FINAL_SIZE_ERROR). Three rules keep it safe:
- once a stream has a range copied, every packet carrying its data reports
  through `deliver_safely`: a loss re-queues only what is still
  unacknowledged, an ACK takes its range out of the queue (the original's
  packet is rewritten, later ones get the stream sender's own handler
  replaced: retransmissions are carriers too);
- a copy is in the stream's queue only while that one path flushes: what
  the flush did not send is taken back out at once (`withdraw`);
- a copy never reaches below what the stream already dropped, and a range
  aioquic itself re-queued (lost) is left to its retransmission.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from aioquic.quic.packet_builder import QuicDeliveryState
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.stream import QuicStreamSender

DEFAULT_SHARE = 0.1


def deliver_safely(
    delivery: QuicDeliveryState, sender: QuicStreamSender, start: int, stop: int, fin: bool
) -> None:
    """A stream frame's delivery handler for a range that two packets carry."""
    deliver = partial(QuicStreamSender.on_data_delivery, sender)  # the class's, unprotected
    if delivery == QuicDeliveryState.ACKED:
        # The other carrier may have been lost and its range re-queued: it arrived now.
        if start < stop:
            sender._pending.subtract(start, stop)
        # aioquic's ACK bookkeeping expects nothing below what it already dropped.
        deliver(delivery, max(start, sender._buffer_start), max(stop, sender._buffer_start), fin)
        return
    first = max(start, sender._buffer_start)
    gaps = RangeSet([range(first, stop)] if first < stop else [])
    for acked in sender._acked:
        gaps.subtract(acked.start, acked.stop)
    for gap in gaps:
        deliver(delivery, gap.start, gap.stop, fin and gap.stop == stop)
    if fin and len(gaps) == 0 and not sender._acked_fin:
        deliver(delivery, stop, stop, True)


def protect(sender: QuicStreamSender) -> None:
    """From now on, frames aioquic writes for this sender report loss safely."""
    if not isinstance(vars(sender).get("on_data_delivery"), partial):
        # aioquic looks the handler up on the sender for every frame it writes.
        setattr(sender, "on_data_delivery", partial(_safe_handler, sender))  # noqa: B010


def _safe_handler(
    sender: QuicStreamSender, delivery: QuicDeliveryState, start: int, stop: int, fin: bool
) -> None:
    deliver_safely(delivery, sender, start, stop, fin)


Handlers = list[tuple[Callable[..., None], tuple[Any, ...]]]  # a sent packet's


def sender_of(handler: Callable[..., None]) -> QuicStreamSender | None:
    """The stream sender a sent packet's delivery handler reports to, if any."""
    if isinstance(handler, partial) and handler.func is _safe_handler:
        sender = handler.args[0]
    else:
        sender = getattr(handler, "__self__", None)
    return sender if isinstance(sender, QuicStreamSender) else None


def make_safe(handlers: Handlers, senders: set[int]) -> None:
    """Route the stream frames of `senders` (by id) in one packet through `deliver_safely`."""
    for index, (handler, args) in enumerate(handlers):
        sender = getattr(handler, "__self__", None)  # an unprotected one
        if isinstance(sender, QuicStreamSender) and id(sender) in senders:
            handlers[index] = (deliver_safely, (sender, *args))


@dataclass(frozen=True, slots=True)
class Copy:
    origin: int  # path ID the data left on first
    stream_id: int
    round: int
    sender: QuicStreamSender
    args: tuple[int, int, bool]  # (start, stop, fin), as its delivery handler takes them
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
        sender: QuicStreamSender,
        args: tuple[int, int, bool],
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
        protect(sender)
        self.pending.append(Copy(origin, stream_id, self.round, sender, args, size))
        return True

    def send_on(self, path_id: int, room: int, late: Collection[int]) -> list[Copy]:
        """Queue in their streams, for this path's flush, the copies from other paths that
        fit in `room` bytes, but for the streams it would deliver `late`. Returns them:
        `withdraw` them right after the flush."""
        taken, handed, keep = 0, [], []
        for copy in self.pending:
            if copy.origin == path_id or copy.stream_id in late or taken + copy.size > room:
                keep.append(copy)
                continue
            start, stop, fin = copy.args
            start = max(start, copy.sender._buffer_start)  # else acknowledged meanwhile
            pending = copy.sender._pending
            if start < stop and not any(r.start < stop and start < r.stop for r in pending):
                deliver_safely(QuicDeliveryState.LOST, copy.sender, start, stop, fin)
                taken += stop - start
                handed.append(replace(copy, args=(start, stop, fin)))
        self.pending = keep
        return handed

    @staticmethod
    def withdraw(handed: list[Copy]) -> None:
        """Take back out of the streams' queues what the flush did not send."""
        for copy in handed:
            copy.sender._pending.subtract(copy.args[0], copy.args[1])

    def forget(self, live: Collection[int]) -> None:
        """Drop what is known of streams that no longer exist (bounded memory)."""
        self.copied = {sid: end for sid, end in self.copied.items() if sid in live}

    def next_round(self) -> None:
        """Forget copies that waited a whole round of flushes (their budget is spent)."""
        self.pending = [c for c in self.pending if c.round == self.round]
        self.round += 1
