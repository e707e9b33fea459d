"""Which paths send, in which order, and which may carry application data (sans-IO).

Default policy (draft-21 leaves scheduling to implementations):
- paths send in order of smoothed RTT, lowest first; aioquic fills each
  path's congestion window before the next path gets a turn, so a small burst
  rides the fastest path alone and a backlog spreads over all of them;
- a path marked backup (by us, or by the peer's PATH_STATUS_BACKUP) carries
  data only when no available path works; it still sends ACKs and control;
- a path whose PTO fired `stall_ptos` times in a row gets no new data, and its
  unacknowledged data is re-injected on a working path at once (XLINK-style:
  failover costs one PTO plus one RTT of the survivor, not several PTOs); after
  `dead_ptos` it is abandoned while another path works.
Every decision is counted per path and reason in `decisions`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .path import Path, PathState

if TYPE_CHECKING:
    from .connection import MultipathConnection


@dataclass(slots=True)
class Scheduler:
    stall_ptos: int = 1
    dead_ptos: int = 2
    decisions: Counter[tuple[int, str]] = field(default_factory=Counter)

    def plan(self, conn: MultipathConnection, now: float) -> list[tuple[Path, bool]]:
        """The paths to flush this round, in order, each with "may carry data"."""
        candidates = [p for p in conn.paths.values() if p.state is not PathState.CLOSING]
        working = [p for p in candidates if self._works(conn, p)]
        preferred = [p for p in working if not self._is_backup(p)]
        order = sorted(candidates, key=lambda p: (self._is_backup(p), self._rtt(conn, p)))
        plan = []
        for path in order:
            allowed, reason = self._data_allowed(path, path in working, bool(preferred))
            self.decisions[(path.path_id, reason)] += 1
            plan.append((path, allowed))
        return plan

    def suspect_paths(self, conn: MultipathConnection) -> list[Path]:
        """Stalled paths whose unacknowledged data should go out on a working path now."""
        active = [p for p in conn.paths.values() if p.state is PathState.ACTIVE]
        working = [p for p in active if conn.path_pto_count(p) == 0]
        if not working:
            return []
        return [
            p
            for p in active
            if conn.path_pto_count(p) >= self.stall_ptos
            and conn.path_pto_count(p) > p.reinjected_pto
        ]

    def dead_paths(self, conn: MultipathConnection) -> list[Path]:
        """Paths to abandon now: stalled for `dead_ptos` while another path demonstrably works.

        "Works" needs evidence: an ACK on another path for something sent after this
        path's oldest unacknowledged packet. A paused peer (nothing acknowledged
        anywhere) or an idle second path proves nothing, and costs no path.
        """
        active = [p for p in conn.paths.values() if p.state is PathState.ACTIVE]
        dead = [
            p
            for p in active
            if conn.path_pto_count(p) >= self.dead_ptos and self._others_deliver(conn, p, active)
        ]
        return dead if len(dead) < len(active) else []

    def need_evidence(self, conn: MultipathConnection) -> list[Path]:
        """Paths to probe (PING) because another path stalled and nothing shows they work."""
        active = [p for p in conn.paths.values() if p.state is PathState.ACTIVE]
        stalled = [
            p
            for p in active
            if conn.path_pto_count(p) >= self.stall_ptos
            and not self._others_deliver(conn, p, active)
        ]
        return [o for o in active if stalled and o not in stalled]

    @staticmethod
    def _others_deliver(conn: MultipathConnection, path: Path, active: list[Path]) -> bool:
        """Another path had a packet acknowledged after this one went silent."""
        since = path.stalled_since
        others = (conn.path_last_ack(o) for o in active if o is not path)
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
        return path.usable and conn.path_pto_count(path) < self.stall_ptos

    @staticmethod
    def _is_backup(path: Path) -> bool:
        return path.backup or bool(path.peer_backup)

    @staticmethod
    def _rtt(conn: MultipathConnection, path: Path) -> float:
        rtt = conn.path_rtt(path)
        return rtt if rtt is not None else float("inf")
