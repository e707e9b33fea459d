"""The connection's timers: a fixed table of named kinds, per path where they are per path.

The connection arms and disarms entries as its state changes; the runtime
asks `next_timer()` (a pure minimum over what is armed) when to wake, and at
that time `fire(now)` hands back every due (kind, path ID), disarmed, in a
deterministic order for the connection to handle one by one. Time is always
passed in; nothing here reads a clock.

Rules:
    IDLE, KEY_DISCARD          connection-wide: path ID `CONNECTION`
    PATH_CLOSE, PATH_VALIDATION,
    LOSS, PTO, ACK_DELAY,
    PACING                     per path: path ID >= 0
    arm(kind, when, path_id)   sets the entry; when = inf disarms it
    fire(now)                  entries with when <= now, by (when, kind, path ID)

Equal deadlines fire in `TimerKind` order: idle first (it closes the
connection, and the rest is moot), key discard and path close next (they drop
state the others would touch), validation before recovery (a failed tuple
must not be probed), the loss timer before the PTO (RFC 9002 §6.2.1: an armed
loss timer holds the PTO back), the ACK delay before pacing (the ACK then
rides in the packet the pacer releases).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

CONNECTION = -1  # the path ID of the connection-wide kinds


class TimerKind(IntEnum):
    IDLE = 0
    KEY_DISCARD = 1
    PATH_CLOSE = 2
    PATH_VALIDATION = 3
    LOSS = 4
    PTO = 5
    ACK_DELAY = 6
    PACING = 7


CONNECTION_KINDS = frozenset({TimerKind.IDLE, TimerKind.KEY_DISCARD})


@dataclass(frozen=True, slots=True, order=True)
class Deadline:
    """One armed timer; ordered as `fire` hands them back."""

    when: float
    kind: TimerKind
    path_id: int


class Timers:
    """The table: at most one deadline per (kind, path ID)."""

    def __init__(self) -> None:
        self._armed: dict[tuple[TimerKind, int], float] = {}

    def arm(self, kind: TimerKind, when: float, path_id: int = CONNECTION) -> None:
        """Sets `kind`'s deadline (for `path_id` if per path); inf disarms it."""
        key = _key(kind, path_id)
        if when == math.inf:
            self._armed.pop(key, None)
        else:
            self._armed[key] = when

    def arm_path(self, path_id: int, deadlines: Mapping[TimerKind, float]) -> None:
        """Sets a path's timers at once (a `Path.deadlines()`), after anything moved them."""
        for kind, when in deadlines.items():
            self.arm(kind, when, path_id)

    def disarm(self, kind: TimerKind, path_id: int = CONNECTION) -> None:
        self._armed.pop(_key(kind, path_id), None)

    def deadline(self, kind: TimerKind, path_id: int = CONNECTION) -> float:
        """`kind`'s deadline, inf when disarmed."""
        return self._armed.get(_key(kind, path_id), math.inf)

    def remove_path(self, path_id: int) -> None:
        """Drops every timer of a path whose state is gone."""
        for key in [key for key in self._armed if key[1] == path_id]:
            del self._armed[key]

    def next_timer(self) -> Deadline | None:
        """The earliest armed deadline (ties as `fire` orders them), None when none is."""
        return min(self._deadlines(), default=None)

    def fire(self, now: float) -> list[tuple[TimerKind, int]]:
        """Disarms and returns every (kind, path ID) due at `now`, in firing order."""
        due = sorted(deadline for deadline in self._deadlines() if deadline.when <= now)
        for deadline in due:
            del self._armed[(deadline.kind, deadline.path_id)]
        return [(deadline.kind, deadline.path_id) for deadline in due]

    def __len__(self) -> int:
        return len(self._armed)

    def _deadlines(self) -> list[Deadline]:
        return [Deadline(when, kind, path_id) for (kind, path_id), when in self._armed.items()]


def _key(kind: TimerKind, path_id: int) -> tuple[TimerKind, int]:
    """The table key; a connection-wide kind takes no path, a per-path kind needs one."""
    if (kind in CONNECTION_KINDS) != (path_id == CONNECTION) or path_id < CONNECTION:
        raise ValueError(f"timer {kind.name} with path ID {path_id}")
    return (kind, path_id)
