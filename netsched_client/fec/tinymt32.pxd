# TinyMT32 (RFC 8682) for other Cython modules: `cimport` these, no Python in the loop.
from libc.stdint cimport uint32_t


cdef struct tinymt32_t:
    uint32_t status[4]
    uint32_t mat1
    uint32_t mat2
    uint32_t tmat


cdef void tinymt32_init(tinymt32_t* s, uint32_t seed) noexcept nogil
cdef uint32_t tinymt32_generate_uint32(tinymt32_t* s) noexcept nogil
