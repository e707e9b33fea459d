"""Windowed filters of BBR's model: a max over the last N rounds or cycles."""

from __future__ import annotations


class WindowedMax:
    """The largest value seen over the last `length` periods (draft-ietf-ccwg-bbr's
    MaxBwFilter keeps one slot per ProbeBW cycle: a cycle without a high sample does
    not forget the previous cycle's)."""

    __slots__ = ("_length", "_period", "_slots")

    def __init__(self, length: int) -> None:
        self._length = length
        self._period = 0
        self._slots = [0.0] * length

    @property
    def value(self) -> float:
        return max(self._slots)

    def advance(self) -> None:
        """A new period starts: the oldest period's sample is forgotten."""
        self._period += 1
        self._slots[self._period % self._length] = 0.0

    def update(self, sample: float) -> None:
        index = self._period % self._length
        if sample > self._slots[index]:
            self._slots[index] = sample

    def reset(self, sample: float) -> None:
        self._slots = [0.0] * self._length
        self._slots[self._period % self._length] = sample
