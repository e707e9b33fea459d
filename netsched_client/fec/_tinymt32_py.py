"""TinyMT32 (RFC 8682) in pure Python: the fallback for the compiled `tinymt32`.

Same algorithm, parameter set and output as `tinymt32.pyx`, value for value;
Python ints are masked to 32 bits where the C code relies on `uint32_t`
wrap-around. Used when the extension is not built (no C compiler).
"""

from __future__ import annotations

from typing import Final

MAT1: Final = 0x8F7011EE
MAT2: Final = 0xFC78FF1F
TMAT: Final = 0x3793FDFF
_MASK31: Final = 0x7FFFFFFF
_U32: Final = 0xFFFFFFFF
_MIN_LOOP: Final = 8
_PRE_LOOP: Final = 8


class TinyMT32:
    """One generator instance; `seed` is any 32-bit unsigned integer (0 included)."""

    __slots__ = ("_status",)

    def __init__(self, seed: int) -> None:
        if not 0 <= seed <= _U32:
            raise ValueError(f"TinyMT32 seed={seed} is out of range 0..2^32-1")
        status = [seed, MAT1, MAT2, TMAT]
        for i in range(1, _MIN_LOOP):
            prev = status[(i - 1) & 3]
            status[i & 3] ^= (i + 1812433253 * (prev ^ (prev >> 30))) & _U32
        self._status = status
        # RFC 8682 drops period_certification(): no seed yields the all-zero state.
        for _ in range(_PRE_LOOP):
            self._next_state()

    def _next_state(self) -> None:
        s0, s1, s2, y = self._status
        x = (s0 & _MASK31) ^ s1 ^ s2
        x = (x ^ (x << 1)) & _U32
        y ^= (y >> 1) ^ x
        s2_new = (x ^ (y << 10)) & _U32
        if y & 1:
            self._status = [s1, s2 ^ MAT1, s2_new ^ MAT2, y]
        else:
            self._status = [s1, s2, s2_new, y]

    def generate_uint32(self) -> int:
        """The next pseudorandom value in 0..2^32-1."""
        self._next_state()
        s0, _, s2, s3 = self._status
        t1 = (s0 + (s2 >> 8)) & _U32
        return s3 ^ t1 ^ (TMAT if t1 & 1 else 0)
