# cython: language_level=3
"""C-level API of streams and flow control, for the later stages of the core to cimport."""

from libc.stdint cimport int64_t, uint8_t, uint64_t

from netsched_client.core._packet cimport RangeSet

ctypedef struct frame_t:
    uint64_t type
    uint64_t stream_id
    uint64_t offset        # stream or crypto offset; RESET_STREAM's final size
    uint64_t value         # an error code, a maximum or a limit
    Py_ssize_t data_offset # STREAM, CRYPTO, DATAGRAM: where the data starts in the buffer
    Py_ssize_t data_length
    bint fin

cdef enum:
    # frame families for parse_frame_c: each covers its frame's type bits
    F_STREAM = 0
    F_CRYPTO = 1
    F_RESET_STREAM = 2
    F_STOP_SENDING = 3
    F_MAX_DATA = 4
    F_MAX_STREAM_DATA = 5
    F_MAX_STREAMS = 6
    F_DATA_BLOCKED = 7
    F_STREAM_DATA_BLOCKED = 8
    F_STREAMS_BLOCKED = 9
    F_DATAGRAM = 10

# 0, or an error (the first byte past *pos is not `family`'s, truncated, out of range)
cdef int parse_frame_c(const uint8_t *data, Py_ssize_t end, Py_ssize_t *pos, int family,
                       frame_t *frame) noexcept nogil

cdef class SendCredit:
    cdef readonly int64_t limit
    cdef readonly int64_t used
    cdef readonly int64_t blocked_reported

cdef class ReceiveCredit:
    cdef readonly int64_t window
    cdef readonly int64_t max_window
    cdef readonly int64_t limit
    cdef readonly int64_t received
    cdef readonly double last_update
    cdef int on_received_c(self, int64_t count) except -1

cdef class SendStream:
    cdef uint8_t *ring
    cdef Py_ssize_t capacity   # a power of two; offset x lives at x & (capacity - 1)
    cdef readonly int64_t stream_id
    cdef readonly SendCredit credit
    cdef readonly int64_t acked_offset
    cdef readonly int64_t next_offset
    cdef readonly int64_t write_offset
    cdef readonly int64_t final_size
    cdef readonly bint fin_sent
    cdef readonly bint fin_acked
    cdef readonly bint was_reset
    cdef readonly RangeSet acked
    cdef readonly RangeSet lost
    cdef void next_range(self, SendCredit connection, int64_t *start, int64_t *stop) noexcept
    cdef Py_ssize_t room(self, int64_t start, Py_ssize_t space) noexcept
    cdef Py_ssize_t write_frame_c(self, uint8_t *out, Py_ssize_t pos, Py_ssize_t end,
                                  SendCredit connection, frame_t *sent) except -2
    cdef int on_acked_c(self, int64_t stream_offset, int64_t length, bint fin) except -1
    cdef int on_lost_c(self, int64_t stream_offset, int64_t length, bint fin) except -1

cdef class RecvStream:
    cdef uint8_t *ring
    cdef Py_ssize_t capacity
    cdef readonly ReceiveCredit credit
    cdef readonly int64_t read_offset
    cdef readonly int64_t highest
    cdef readonly int64_t final_size
    cdef readonly bint reset_received
    cdef readonly RangeSet received
    cdef int64_t grow_final(self, int64_t end, bint fin) except -1
    cdef int64_t on_data_c(self, const uint8_t *data, int64_t length, int64_t stream_offset,
                           bint fin) except -1
    cdef int64_t readable_c(self) noexcept
