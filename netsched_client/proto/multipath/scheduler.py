"""Which paths send, in which order, and which data each may carry (sans-IO).

Two policies (draft-21 leaves scheduling to implementations):
- "deadline" (the default): once per round of flushes the queued stream data is
  handed out to the paths by expected arrival time, deadline and loss
  (`completion.py`): urgent data waits for the fast path on purpose when the
  slow one would deliver later, only rides a path that meets its deadline, and
  avoids a path just back from a stall; deadline-free data aggregates over
  every path with its tail on the fast one, but while deadline data is about
  only up to a short queue per path, leaving room in each window for the next
  deadline (`guard_s`, `bulk_queue_s`, `urgent_reserve`). Each path then serves, in the
  connection's send order (deadline, then urgency), only what it was given,
  within a byte budget. A path left unused PINGs every `explore_s` while the
  connection sends, so the RTT it is chosen by stays measured.
- "lowest-rtt" (the earlier policy, the benchmarks' baseline): paths
  send in order of smoothed RTT and each fills its congestion window before
  the next gets a turn; a slower path only leaves alone a stream it would
  deliver after its deadline.
In both:
- a path marked backup (by us, or by the peer's PATH_STATUS_BACKUP) carries
  data only when no available path works; it still sends ACKs and control;
- a *silent* path stalls: its oldest unacknowledged packet is overdue (RFC
  9002's time threshold, 9/8 of the path's RTT, plus the peer's ACK timer), no
  later packet of the path was acknowledged (that would be a loss, for loss
  detection), and another path had packets sent later acknowledged, so the
  network delivers and this path does not. A stalled path gets no new data and
  its unacknowledged data is re-injected on the working paths at once
  (XLINK-style): failover costs about one RTT of the dead path plus one of the
  survivor, not several PTOs. Without that evidence (a paused peer looks the
  same on every path) the path stalls at its second PTO in a row instead (`stall_ptos`).
- loss is not death: a stalled path is probed at least every `probe_cap_s`
  and works again as soon as a probe is acknowledged (failback); it then
  carries no deadline data while it *recovers* (as long as it was stalled, up
  to `recover_s`, doubling with each recent stall: a flapping path does not
  flap the traffic). It is abandoned only after `dead_after_s` of silence
  with `dead_ptos` PTOs while another path works; the client then opens a
  new path from that address when it answers again (runtime/paths.py).
Every decision is counted per path and reason in `decisions`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..send_order import StreamPriority
from .completion import Assignment, Backlog, PathView, assign
from .path import Path, PathState

GRANULARITY = 0.001  # RFC 9002's kGranularity
SCHEDULER_POLICIES = ("deadline", "lowest-rtt")

if TYPE_CHECKING:
    from .connection import MultipathConnection


@dataclass(frozen=True, slots=True)
class LossRisk:
    """What a loss costs on one path: its recent loss rate, and how long the repair of a
    lost packet takes (to detect it, resend it, and have it arrive)."""

    loss: float
    repair_s: float


@dataclass(slots=True)
class Scheduler:
    policy: str = "deadline"
    # A path stalls (no new data) at its second PTO in a row without evidence from
    # another path: on a path with bursty loss and a small window, one burst can take a
    # whole flight and its ACKs (one PTO), and stalling then parks the best path for good
    # ("loss is not death"). Its unacknowledged data is re-injected at the first PTO.
    stall_ptos: int = 2
    reinject_ptos: int = 1
    dead_ptos: int = 2
    # A stalled path is abandoned only after this long without an answer (bursty loss
    # costs PTOs, not the path); a stalled path is probed at least this often.
    dead_after_s: float = 5.0
    probe_cap_s: float = 0.25
    # Back from a stall: no deadline data for as long as it was stalled, at most
    # recover_s, doubled for each other stall within flap_window_s (up to 2^4): a
    # spurious stall costs a few milliseconds, an outage a quarter second, a flapping
    # path more each time.
    recover_s: float = 0.25
    flap_window_s: float = 10.0
    # RFC 9002 §6.1.2's time threshold: a queue that grows within one RTT stays inside it.
    silence_rtts: float = 9 / 8
    # ... and no ACK on the path for this many of its recent longest ACK gaps (at least an
    # eighth of an RTT, at most half of one): a busy path's ACKs come every packet or two.
    quiet_gaps: float = 2.0
    quiet_rtts: tuple[float, float] = (1 / 8, 1 / 2)
    # The peer's ACK timer (aioquic's is kGranularity) plus our clock's resolution. Not
    # the advertised max_ack_delay (25 ms, far above what aioquic-based peers delay).
    ack_allowance: float = 0.002
    # Stream data with less slack than this many RTTs of its path cannot wait for a
    # retransmission (9/8 RTT to detect the loss, half an RTT to resend): it is urgent.
    urgent_rtts: float = 1.75
    # A path losing at least this share of its packets (bursty Wi-Fi, say) has deadline
    # data that a loss would make late copied to another path (within the copies'
    # budget). Above a clean path's random loss, so that the clean case copies nothing.
    copy_loss: float = 0.02
    # An idle path PINGs this often (at most a third of the idle timeout): NAT bindings
    # on UDP commonly last 30 s or more (RFC 4787 asks for >= 2 min).
    keepalive_s: float = 15.0
    # "deadline": a path left unused while the connection sends PINGs this often, so its
    # RTT stays measured. The choice rests on each path's RTT; an estimate that only
    # data could refresh (the handshake's, crypto-inflated, say) would starve the path
    # for good (ECF's "rich get richer").
    explore_s: float = 0.1
    # While deadline data is about (queued within guard_s), deadline-free data keeps each
    # path's bottleneck queue at most bulk_queue_s long (PathView.bulk_cap): 64 kB of bulk
    # ahead at 15 Mbit/s is 34 ms, most of a 40 ms deadline.
    guard_s: float = 1.0
    bulk_queue_s: float = 0.005
    # ... and leaves this many datagrams of each window to deadline data and its copies.
    urgent_reserve: int = 2
    deadline_seen_at: float | None = None
    decisions: Counter[tuple[int, str]] = field(default_factory=Counter)
    _silence_inputs: tuple[object, ...] = ()
    # Shared by every connection of an edge: decisions by reason, for its metrics.
    totals: Counter[str] | None = None

    def idle_ping_interval(self, backup: bool) -> float:
        """How often a path that carries nothing PINGs while the connection is in use."""
        if self.policy == "deadline" and not backup:
            return min(self.explore_s, self.keepalive_s)
        return self.keepalive_s

    def count(self, path_id: int, reason: str, n: int = 1) -> None:
        self.decisions[(path_id, reason)] += n
        if self.totals is not None:
            self.totals[reason] += n

    def forget(self, path_id: int) -> None:
        """The path is gone: its decisions go too (the shared totals keep them)."""
        for key in [k for k in self.decisions if k[0] == path_id]:
            del self.decisions[key]

    def __post_init__(self) -> None:
        if self.policy not in SCHEDULER_POLICIES:
            raise ValueError(f"scheduler policy must be one of {', '.join(SCHEDULER_POLICIES)}")

    def guarding(self, backlog: list[Backlog], now: float) -> bool:
        """Deadline data was queued within the last `guard_s`: deadline-free data keeps
        the paths' queues short ("deadline" policy; see `PathView.bulk_cap`)."""
        if self.policy != "deadline":
            return False
        if any(b.priority.deadline_at is not None for b in backlog):
            self.deadline_seen_at = now
        return self.deadline_seen_at is not None and now - self.deadline_seen_at < self.guard_s

    def assign(
        self, views: list[PathView], backlog: list[Backlog], now: float
    ) -> Assignment | None:
        """The "deadline" policy's hand-out of `backlog` to the paths that may carry data
        this round, seen as `views` (None: nothing queued, the "lowest-rtt" policy, or
        one path that may send everything: one open path, no cap on its queue)."""
        if self.policy != "deadline" or not views or not backlog:
            return None
        capped = any(v.bulk_cap is not None for v in views)
        if len(views) < 2 and not capped:
            return None
        open_ = [v for v in views if v.room() >= v.datagram_size]
        if not open_:
            return None  # no window has room: only probes leave, with whatever is first
        if not capped and len(open_) == 1 and open_[0] is min(views, key=self._base_arrival):
            return None  # the one path with room is also the earliest for every byte
        assignment = assign(views, backlog, now, retransmit_rtts=self.urgent_rtts)
        for (path_id, reason), n in assignment.reasons.items():
            self.count(path_id, reason, n)
        return assignment

    def _base_arrival(self, view: PathView) -> tuple[float, float]:
        return (view.arrival(0.0, 0, self.urgent_rtts), view.rtt)

    def recovery_time(self, path: Path, stalled_for: float) -> float:
        """How long a path back from a stall of `stalled_for` carries no deadline data."""
        return min(stalled_for, self.recover_s) * float(2 ** min(max(path.stalls - 1, 0), 4))

    def plan(self, conn: MultipathConnection, now: float) -> list[tuple[Path, bool]]:
        """The paths to flush this round, in order, each with "may carry data"."""
        candidates = [p for p in conn.paths.values() if p.state is not PathState.CLOSING]
        working = [p for p in candidates if self._works(conn, p)]
        preferred = [p for p in working if not self._is_backup(p)]
        # Working paths first: the first path's packets also carry the connection's own
        # frames (MAX_DATA, MAX_STREAMS, ...), which a stalled path would lose again and
        # again; the fastest first among them, backups last.
        order = sorted(
            candidates,
            key=lambda p: (p not in working, self._is_backup(p), self._rtt(conn, p)),
        )
        plan = []
        for path in order:
            allowed, reason = self._data_allowed(path, path in working, bool(preferred))
            self.count(path.path_id, reason)
            plan.append((path, allowed))
        return plan

    def working_paths(self, conn: MultipathConnection) -> list[Path]:
        return [p for p in conn.paths.values() if self._works(conn, p) and not self._is_backup(p)]

    def is_urgent(
        self, priority: StreamPriority, now: float, rtt: float, risk: LossRisk | None = None
    ) -> bool:
        """Worth a copy on a second path: RFC 9218 urgency 0; a deadline within reach of
        one delivery but not of a retransmission; or, on a path that loses at least
        `copy_loss` of its packets (`risk`), a deadline that a lost packet's repair (a
        probe timeout, then one way) would miss: there one loss is one miss, and a copy
        on a second path turns the path's loss rate into the product of both."""
        if priority.urgency == 0:
            return True
        deadline = priority.deadline_at
        if deadline is None or deadline < now:
            return False
        slack = deadline - now
        if slack < self.urgent_rtts * rtt:
            return True
        return risk is not None and risk.loss >= self.copy_loss and slack < risk.repair_s

    def late_streams(
        self,
        conn: MultipathConnection,
        path: Path,
        priorities: Mapping[int, StreamPriority],
        now: float,
    ) -> set[int]:
        """Streams this path would deliver after their deadline while a faster path exists.

        Delivery takes about half a path's RTT (a path without an RTT sample promises
        nothing). The fastest path serves every stream; a slower one only the streams it
        can still deliver in time, so a backlog spreads over both exactly when the fast
        path alone cannot meet the deadline and the slow one can.
        """
        own = self._rtt(conn, path)
        faster = [self._rtt(conn, other) for other in self.working_paths(conn) if other is not path]
        if not faster or min(faster) >= own:
            return set()
        arrival = now + own / 2
        return {
            sid
            for sid, p in priorities.items()
            if p.deadline_at is not None and p.deadline_at < arrival
        }

    def silence_deadline(self, conn: MultipathConnection, path: Path) -> float | None:
        """When this path counts as silent, or None (nothing to wait for, or no evidence yet).

        Silent: its oldest unacknowledged packet is overdue, no ACK came on the path for
        half an RTT, no later packet of its own
        was acknowledged (that is a loss, for loss detection), and another path's ACK for
        something sent later came long enough ago that this path's ACK would have come
        with it. A peer that paused answers on every path at once after the pause, so the
        other path's ACK is no evidence until the difference in path delays has passed.
        (A pause that falls between a packet's arrival and its ACK timer on this path,
        while the other path's ACK already left, looks exactly like an outage of this
        path: it costs one re-injection, never the path, which needs PTOs to die.)
        """
        if path.state is not PathState.ACTIVE or path.stalled_since is not None:
            return None
        oldest = conn.path_oldest_unacked(path)
        rtt = conn.path_rtt(path)
        latest = conn.path_latest_rtt(path)
        if oldest is None or rtt is None or latest is None:
            return None
        own = conn.path_acked_sent_time(path)
        if own is not None and own > oldest:
            return None
        evidence = self._evidence(conn, path, oldest, rtt)
        if evidence is None:
            return None
        wait = max(rtt, latest)
        overdue = oldest + max(self.silence_rtts * wait, GRANULARITY)
        # And no ACK for a while: a queue that filled faster than the time threshold
        # allows delays the oldest packet, but its ACKs keep coming.
        return max(overdue + self.ack_allowance, evidence, self._quiet(conn, path, oldest, wait))

    def _quiet(self, conn: MultipathConnection, path: Path, oldest: float, wait: float) -> float:
        """When the path's ACKs have stopped for longer than its ACK rhythm explains."""
        shortest, longest = (wait * share for share in self.quiet_rtts)
        gap = conn.path_ack_gap(path)
        pause = longest if gap is None else min(longest, max(shortest, self.quiet_gaps * gap))
        return (conn.path_last_ack(path) or oldest) + pause + self.ack_allowance

    def _evidence(
        self, conn: MultipathConnection, path: Path, sent: float, rtt: float
    ) -> float | None:
        """Earliest time another path proves that packets sent after `sent` get through."""
        times = []
        for other in conn.paths.values():
            if other is path or other.state is not PathState.ACTIVE:
                continue
            acked_at = conn.path_first_ack_after(other, sent)
            other_rtt = conn.path_rtt(other)
            if acked_at is not None and other_rtt is not None:
                times.append(acked_at + abs(rtt - other_rtt) / 2 + self.ack_allowance)
        return min(times, default=None)

    def silent_paths(self, conn: MultipathConnection, now: float) -> list[Path]:
        """Working paths to stall now (see `silence_deadline`); every path's next
        deadline is kept in `Path.silence_at` for the connection's timer."""
        self.refresh_silence(conn)
        paths = conn.paths.values()
        silent = [p for p in paths if p.silence_at is not None and now >= p.silence_at]
        for path in silent:
            self.count(path.path_id, "silent")
        return silent

    def refresh_silence(self, conn: MultipathConnection) -> None:
        """Every path's `silence_at`, recomputed only when its inputs changed (an ACK, a
        loss, a timeout, a path's state, a flight starting or ending): several times
        per flush otherwise, for the same answer."""
        inputs = conn.silence_inputs()
        if inputs == self._silence_inputs:
            return
        self._silence_inputs = inputs
        for path in conn.paths.values():
            path.silence_at = self.silence_deadline(conn, path)

    def suspect_paths(self, conn: MultipathConnection) -> list[Path]:
        """Stalled paths whose unacknowledged data should go out on a working path now."""
        active = [p for p in conn.paths.values() if p.state is PathState.ACTIVE]
        working = [p for p in active if conn.path_pto_count(p) == 0]
        if not working:
            return []
        return [
            p
            for p in active
            if conn.path_pto_count(p) >= self.reinject_ptos
            and conn.path_pto_count(p) > p.reinjected_pto
        ]

    def dead_paths(self, conn: MultipathConnection, now: float) -> list[Path]:
        """Paths to abandon now: stalled for `dead_ptos` PTOs and `dead_after_s` while
        another path demonstrably works.

        "Works" needs evidence: an ACK on another path for something sent after this
        path's oldest unacknowledged packet. A paused peer (nothing acknowledged
        anywhere) or an idle second path proves nothing, and costs no path.
        """
        active = [p for p in conn.paths.values() if p.state is PathState.ACTIVE]
        dead = [
            p
            for p in active
            if conn.path_pto_count(p) >= self.dead_ptos
            and p.stalled_since is not None
            and now - p.stalled_since >= self.dead_after_s
            and self._others_deliver(conn, p, active, p.stalled_since)
        ]
        return dead if len(dead) < len(active) else []

    def need_evidence(self, conn: MultipathConnection) -> list[Path]:
        """Paths to probe (PING) because another path stalled and nothing shows they work."""
        active = [p for p in conn.paths.values() if p.state is PathState.ACTIVE]
        stalled = [
            p
            for p in active
            if conn.path_pto_count(p) >= self.stall_ptos
            and not self._others_deliver(conn, p, active, p.stalled_since)
        ]
        return [o for o in active if stalled and o not in stalled]

    @staticmethod
    def _others_deliver(
        conn: MultipathConnection, path: Path, active: list[Path], since: float | None
    ) -> bool:
        """Another path had a packet sent after `since` acknowledged."""
        others = (conn.path_acked_sent_time(o) for o in active if o is not path)
        return since is not None and any(t is not None and t > since for t in others)

    def _data_allowed(self, path: Path, works: bool, have_preferred: bool) -> tuple[bool, str]:
        if path.state is PathState.VALIDATING:
            return False, "validating"
        if not works:
            return False, "stalled"
        if self._is_backup(path) and have_preferred:
            return False, "backup-standby"
        return True, "backup-in-use" if self._is_backup(path) else "data"

    def _works(self, conn: MultipathConnection, path: Path) -> bool:
        return (
            path.usable
            and path.stalled_since is None
            and conn.path_pto_count(path) < self.stall_ptos
        )

    @staticmethod
    def _is_backup(path: Path) -> bool:
        return path.backup or bool(path.peer_backup)

    @staticmethod
    def _rtt(conn: MultipathConnection, path: Path) -> float:
        rtt = conn.path_rtt(path)
        return rtt if rtt is not None else float("inf")
