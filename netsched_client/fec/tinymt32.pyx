# cython: language_level=3
"""TinyMT32, the PRNG of RFC 8682, with the one parameter set that RFC fixes.

Written from the RFC's description of the algorithm. RFC 8681 seeds it with a
repair key to derive coding coefficients, so both ends must produce the same
stream bit for bit: C `uint32_t` arithmetic gives the mod-2^32 wrap-around.
"""

from libc.stdint cimport uint32_t

# RFC 8682 §2.1: the parameter set (first entry of Rikitake's tinymt32dc batch).
cdef uint32_t MAT1 = 0x8F7011EE
cdef uint32_t MAT2 = 0xFC78FF1F
cdef uint32_t TMAT = 0x3793FDFF
cdef uint32_t MASK = 0x7FFFFFFF


cdef enum:
    SH0 = 1
    SH1 = 10
    SH8 = 8
    MIN_LOOP = 8
    PRE_LOOP = 8


cdef void tinymt32_next_state(tinymt32_t* s) noexcept nogil:
    cdef uint32_t x = (s.status[0] & MASK) ^ s.status[1] ^ s.status[2]
    cdef uint32_t y = s.status[3]
    x ^= x << SH0
    y ^= (y >> SH0) ^ x
    s.status[0] = s.status[1]
    s.status[1] = s.status[2]
    s.status[2] = x ^ (y << SH1)
    s.status[3] = y
    if y & 1:
        s.status[1] ^= s.mat1
        s.status[2] ^= s.mat2


cdef uint32_t tinymt32_temper(tinymt32_t* s) noexcept nogil:
    cdef uint32_t t0 = s.status[3]
    cdef uint32_t t1 = s.status[0] + (s.status[2] >> SH8)
    t0 ^= t1
    if t1 & 1:
        t0 ^= s.tmat
    return t0


cdef void tinymt32_init(tinymt32_t* s, uint32_t seed) noexcept nogil:
    cdef int i
    cdef uint32_t prev
    s.mat1 = MAT1
    s.mat2 = MAT2
    s.tmat = TMAT
    s.status[0] = seed
    s.status[1] = MAT1
    s.status[2] = MAT2
    s.status[3] = TMAT
    for i in range(1, MIN_LOOP):
        prev = s.status[(i - 1) & 3]
        s.status[i & 3] ^= <uint32_t>i + <uint32_t>1812433253 * (prev ^ (prev >> 30))
    # RFC 8682 drops period_certification(): with this parameter set no seed
    # yields the all-zero state.
    for i in range(PRE_LOOP):
        tinymt32_next_state(s)


cdef uint32_t tinymt32_generate_uint32(tinymt32_t* s) noexcept nogil:
    tinymt32_next_state(s)
    return tinymt32_temper(s)


cdef class TinyMT32:
    """One generator instance; `seed` is any 32-bit unsigned integer (0 included)."""

    cdef tinymt32_t _state

    def __init__(self, seed: int) -> None:
        if not 0 <= seed <= 0xFFFFFFFF:
            raise ValueError(f"TinyMT32 seed={seed} is out of range 0..2^32-1")
        tinymt32_init(&self._state, seed)

    def generate_uint32(self) -> int:
        """The next pseudorandom value in 0..2^32-1."""
        return tinymt32_generate_uint32(&self._state)
