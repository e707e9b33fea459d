"""Which path each piece of queued stream data should ride: earliest expected arrival.

The ECF / BLEST family (Lim et al., CoNEXT 2017; Ferlin et al., IFIP Networking
2016) sends a packet on a slower path only when it would arrive there before
the faster path, busy with what it already has, could deliver it. NetSched
adds what only it knows: each stream's deadline and urgency, and the loss
each path has shown.

Once per round of flushes, the stream data waiting to be sent (`Backlog`, in
the connection's send order: earliest deadline, then urgency) is handed out,
in quanta, to the path with the earliest expected arrival for it:

    arrival(p, x) = now + (max(0, in_flight - cwnd) + queued + x) / rate
                    + rtt / 2 + loss * retransmit_rtts * rtt

the time the path needs to send it behind what it was already given (paced,
or clocked by ACKs once its window is full, at rate = cwnd / rtt, or what the
path measurably delivered if that is less: a window that never fills says
nothing of capacity), plus one way, plus the expected cost of a retransmission at the
path's recent loss rate. Data with a deadline rides only paths that reach it
in time when one does (a path still recovering from a stall does not count:
hysteresis), and waits for the fast path on purpose when the slow one would
deliver later; of the paths that reach it in time, the one least likely to
lose it beyond repair wins (its loss rate, where a lost packet's repair, a
probe timeout and one way, would come after the deadline), then the earliest;
data no path can deliver in time stays with the fastest path (the send order
resets it at its deadline). Deadline-free data goes wherever
it arrives first, so a backlog spreads over every path and its tail stays on
the fast one; except that each round, a path with room that was given nothing
and is not much further away than the nearest (EXPLORE_RTT_RATIO) gets one
quantum of it first: a window is only as large as the data it carried, so by
this model alone a path left unused while another grew its window would stay
unused (the rich-get-richer of ECF on equal paths).

While deadline data is about, deadline-free data yields: each path takes it
only up to `PathView.bulk_cap` (its window less a reserve for deadline data,
and no more than its delivery rate needs to keep the bottleneck's queue a few
milliseconds long); the rest waits for the next round instead of queueing
ahead of the next deadline. The hand-out stops once every path has been given
more than its window has room for: later data cannot leave in this round anyway. What each path was
given is both the streams it may serve and a byte budget for the round, so a
slow path with room does not take more of a stream than its share.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..send_order import StreamPriority

QUANTUM = 16_384  # bytes handed out at a time: a stream of N quanta may spread over N paths
PACKET_OVERHEAD = 64  # header, AEAD tag and frame headers per datagram, for the byte budget
RISK_TIE = 0.01  # miss chances this close count as equal: the earlier path wins
EXPLORE_RTT_RATIO = 2.0  # paths within this factor of the nearest one's RTT get bulk each round


@dataclass(frozen=True, slots=True)
class PathView:
    """What the scheduler knows of one path for this round."""

    path_id: int
    rtt: float  # smoothed, seconds
    cwnd: int
    in_flight: int
    datagram_size: int
    loss: float = 0.0  # share of packets lost, over the last ~256 (steady_loss_rate)
    recovering: bool = False  # came back from a stall recently: no deadline data yet
    delivery_rate: float | None = None  # bytes/s acknowledged lately, when measured
    measured: bool = True  # False: no RTT sample yet (rtt is a guess: no deadline data)
    # While deadline data is about: bytes in flight deadline-free data may fill the path
    # up to (its delivery rate times its minimum RTT, plus a short queue), so that the
    # bottleneck's queue stays short for the deadline data behind it. None: no cap.
    bulk_cap: int | None = None
    # Seconds from sending a packet to its resend's arrival when it is lost (a probe
    # timeout, then one way): deadline data with less slack than this misses with the loss.
    repair: float = 0.0

    def room(self) -> int:
        return max(0, self.cwnd - self.in_flight)

    def bulk_room(self) -> int:
        """Room for deadline-free data (the window's, or less under `bulk_cap`)."""
        if self.bulk_cap is None:
            return self.room()
        return max(0, min(self.cwnd, self.bulk_cap) - self.in_flight)

    def arrival(self, now: float, queued: int, retransmit_rtts: float) -> float:
        """When `queued` more bytes sent on this path this round would have arrived."""
        window_rate = max(self.cwnd, self.datagram_size) / self.rtt
        rate = min(window_rate, self.delivery_rate or window_rate)
        # They leave at the path's rate (paced, or clocked by ACKs once the window is
        # full), behind what is over the window already.
        wait = (max(0, self.in_flight - self.cwnd) + queued) / rate
        return now + wait + self.rtt / 2 + self.loss * retransmit_rtts * self.rtt


@dataclass(frozen=True, slots=True)
class Backlog:
    """A stream with data to send: how much, and its priority."""

    stream_id: int
    size: int
    priority: StreamPriority


@dataclass(slots=True)
class Assignment:
    """Per path: the streams it may serve this round, and the bytes of stream data."""

    streams: dict[int, set[int]] = field(default_factory=dict)
    queued: dict[int, int] = field(default_factory=dict)
    # Streams the hand-out never reached (every path already full): any path may serve
    # them, after the rest, and no budget applies.
    unassigned: set[int] = field(default_factory=set)
    # Quanta handed out per (path ID, reason): "fastest"; "wait-for-fast" (a slower path
    # had room, but this one delivers sooner even after waiting for its window); "spread"
    # (the faster path's backlog made a slower one earlier); "deadline-only-path" (only
    # this one reaches the deadline); "no-path-in-time" (none does: the fastest);
    # "safer" (a later path in time, less likely to lose it beyond repair); "explore"
    # (deadline-free data for a near path left unused this round).
    reasons: Counter[tuple[int, str]] = field(default_factory=Counter)

    def held_back(self, path_id: int, backlog: Sequence[Backlog]) -> set[int]:
        """The backlog's streams this path leaves to others this round."""
        served = self.streams.get(path_id, set()) | self.unassigned
        return {b.stream_id for b in backlog if b.stream_id not in served}

    def budget(self, path_id: int, path: PathView) -> int | None:
        """Bytes in flight this path may add this round (None: its window decides)."""
        if self.unassigned:
            return None
        payload = self.queued.get(path_id, 0)
        datagrams = math.ceil(payload / max(1, path.datagram_size - PACKET_OVERHEAD))
        return datagrams * path.datagram_size


def assign(
    paths: Sequence[PathView],
    backlog: Sequence[Backlog],
    now: float,
    *,
    retransmit_rtts: float,
) -> Assignment:
    """Hand the backlog out to the paths (see the module's docstring)."""
    out = Assignment(
        streams={p.path_id: set() for p in paths}, queued={p.path_id: 0 for p in paths}
    )
    capped = all(p.bulk_cap is not None for p in paths)
    for index, item in enumerate(backlog):
        bulk = item.priority.deadline_at is None
        size = max(item.size, 1)  # a FIN alone still needs a packet
        remaining = size
        while remaining > 0:
            if all(out.queued[p.path_id] >= p.room() for p in paths):
                # Every path was given what its window has room for: the rest cannot
                # leave this round. Checked per quantum, not per stream: a stream of
                # 40 MB would otherwise be handed out whole, 2,500 quanta, every round.
                # A stream begun here keeps to the paths it was given.
                later = index + (remaining < size)
                out.unassigned = {b.stream_id for b in backlog[later:]}
                return out
            if bulk and capped and all(out.queued[p.path_id] >= p.bulk_room() for p in paths):
                # Deadline-free data comes last in the send order: the rest of it waits
                # for the queues to drain rather than lengthen the wait of deadline data.
                return out
            chunk = min(remaining, QUANTUM)
            chooser = _Chooser(paths, out.queued, chunk, now, retransmit_rtts)
            path, reason = chooser.choose(item.priority.deadline_at)
            if bulk and path.bulk_cap is not None:
                chunk = max(1, min(chunk, path.bulk_room() - out.queued[path.path_id]))
            out.queued[path.path_id] += chunk
            out.streams[path.path_id].add(item.stream_id)
            out.reasons[(path.path_id, reason)] += 1
            remaining -= chunk
    return out


@dataclass(slots=True)
class _Chooser:
    """The path for one quantum, and why."""

    paths: Sequence[PathView]
    queued: dict[int, int]
    chunk: int
    now: float
    retransmit_rtts: float

    def arrival(self, path: PathView) -> tuple[float, float]:
        queued = self.queued[path.path_id] + self.chunk
        return (path.arrival(self.now, queued, self.retransmit_rtts), path.rtt)

    def choose(self, deadline: float | None) -> tuple[PathView, str]:
        if deadline is None:
            unused = self._unused()
            if unused is not None:
                return unused, "explore"
            # A path without a cap may be given more than its window has room for (its
            # arrival counts the wait); a capped one no more than its cap.
            open_ = [
                p
                for p in self.paths
                if p.bulk_cap is None or self.queued[p.path_id] < p.bulk_room()
            ]
            return self._earliest(open_ or self.paths)
        # A path just back from a stall, or not measured yet, promises no deadline.
        steady = [p for p in self.paths if p.measured and not p.recovering] or list(self.paths)
        in_time = [p for p in steady if self.arrival(p)[0] <= deadline]
        if len(in_time) == 1:
            return in_time[0], "deadline-only-path"
        if not in_time:
            # Late anyway (and reset at its deadline if still queued): it waits for the
            # fastest path rather than take a slower one's room from data it can help.
            return min(steady, key=lambda p: (p.rtt, p.path_id)), "no-path-in-time"
        # Of the paths in time, those least likely to lose it beyond repair (within
        # RISK_TIE), and of those the earliest.
        risks = {p.path_id: self._risk(p, deadline) for p in in_time}
        safest = min(risks.values())
        path, reason = self._earliest([p for p in in_time if risks[p.path_id] <= safest + RISK_TIE])
        if path is not self._earliest(in_time)[0]:
            reason = "safer"  # a later path, for a smaller chance of a loss beyond repair
        return path, reason

    def _risk(self, path: PathView, deadline: float) -> float:
        """The chance this quantum misses its deadline on this path: the path's loss rate
        when a lost packet's repair would come after the deadline, else (nearly) none."""
        slack = deadline - self.arrival(path)[0]
        return path.loss if slack < path.repair else 0.0

    def _unused(self) -> PathView | None:
        """A near path with room that this round gave nothing yet (see the module doc)."""
        nearest = min(p.rtt for p in self.paths)
        for path in self.paths:
            if (
                self.queued[path.path_id] == 0
                and path.bulk_room() >= path.datagram_size
                and path.rtt <= EXPLORE_RTT_RATIO * nearest
            ):
                return path
        return None

    def _earliest(self, candidates: Sequence[PathView]) -> tuple[PathView, str]:
        best = min(candidates, key=self.arrival)
        if best.rtt > min(p.rtt for p in candidates):
            return best, "spread"  # the faster path's backlog makes this one earlier
        idle = any(self.queued[p.path_id] < p.room() for p in candidates if p is not best)
        full = self.queued[best.path_id] + self.chunk > best.room()
        return best, "wait-for-fast" if idle and full else "fastest"
