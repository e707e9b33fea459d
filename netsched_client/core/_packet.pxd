# cython: language_level=3
"""C-level API of the packet layer, for the later stages of the core to cimport."""

from libc.stdint cimport int64_t, uint8_t, uint64_t

cdef enum:
    RECORD_N = 12          # int64 fields of a packet record (F_* indices in the .pyx)

cdef int read_varint(const uint8_t *data, Py_ssize_t end, Py_ssize_t *pos,
                     uint64_t *value) noexcept nogil
cdef Py_ssize_t write_varint(uint8_t *out, uint64_t value) noexcept nogil
cdef int64_t decode_pn(uint64_t truncated, int length, int64_t largest_pn) noexcept nogil
cdef int parse_record(const uint8_t *data, Py_ssize_t offset, Py_ssize_t end,
                      int cid_length, int64_t datagram, int64_t *record) noexcept nogil

ctypedef struct pn_range:
    uint64_t start
    uint64_t stop

cdef class RangeSet:
    cdef pn_range *items
    cdef Py_ssize_t count
    cdef Py_ssize_t capacity
    cdef Py_ssize_t limit
    cdef int add_c(self, uint64_t start, uint64_t stop) except -1
    cdef int subtract_c(self, uint64_t start, uint64_t stop) except -1
