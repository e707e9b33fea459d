# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False
"""Streams and flow control in C: frame codecs, send and receive rings, credit (RFC 9000).

`_stream_py.py` is the pure-Python reference of the same API (tests run
both and compare). One C parser and one C writer serve every frame of this
stage; the per-frame functions are thin Python wrappers around them. Rings
are malloc'd byte arrays indexed by stream offset modulo their power-of-two
capacity, filled and drained with memcpy; ranges are stage 1's `RangeSet`.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport INFINITY
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy, memset

from netsched_client.core._packet cimport RangeSet, pn_range, read_varint, write_varint

from netsched_client.core.errors import (
    FinalSizeError,
    FlowControlError,
    FrameError,
    StreamStateError,
)

RESET_STREAM_FRAME = 0x04
STOP_SENDING_FRAME = 0x05
CRYPTO_FRAME = 0x06
STREAM_FRAME = 0x08
MAX_DATA_FRAME = 0x10
MAX_STREAM_DATA_FRAME = 0x11
MAX_STREAMS_BIDI_FRAME = 0x12
MAX_STREAMS_UNI_FRAME = 0x13
DATA_BLOCKED_FRAME = 0x14
STREAM_DATA_BLOCKED_FRAME = 0x15
STREAMS_BLOCKED_BIDI_FRAME = 0x16
STREAMS_BLOCKED_UNI_FRAME = 0x17
DATAGRAM_FRAME = 0x30
DATAGRAM_LEN_FRAME = 0x31
MAX_STREAM_OFFSET = (1 << 62) - 1
MAX_STREAMS = 1 << 60
MAX_RECEIVE_GAPS = 1024

cdef enum:
    C_OFF = 0x04
    C_LEN = 0x02
    C_FIN = 0x01
    C_MAX_RECEIVE_GAPS = 1024
    C_MIN_CAPACITY = 1024
    # parse_frame_c's results (0 is success); the messages match the reference's
    E_VARINT = 1
    E_TYPE = 2
    E_STREAMS = 3
    E_DATA = 4
    E_BEYOND = 5

cdef uint64_t C_MAX_OFFSET = (<uint64_t>1 << 62) - 1
cdef uint64_t C_MAX_STREAMS = <uint64_t>1 << 60
cdef int64_t C_SEND_RANGES = 1 << 30

# Per frame family (the F_* of the .pxd): its lowest and highest type, its name.
cdef uint64_t FAMILY_LOW[11]
FAMILY_LOW[:] = [0x08, 0x06, 0x04, 0x05, 0x10, 0x11, 0x12, 0x14, 0x15, 0x16, 0x30]
cdef uint64_t FAMILY_HIGH[11]
FAMILY_HIGH[:] = [0x0F, 0x06, 0x04, 0x05, 0x10, 0x11, 0x13, 0x14, 0x15, 0x17, 0x31]
FAMILY_NAMES = ("STREAM", "CRYPTO", "RESET_STREAM", "STOP_SENDING", "MAX_DATA",
                "MAX_STREAM_DATA", "MAX_STREAMS", "DATA_BLOCKED", "STREAM_DATA_BLOCKED",
                "STREAMS_BLOCKED", "DATAGRAM")


# -- parsing ---------------------------------------------------------------------------------------


cdef int parse_frame_c(const uint8_t *p, Py_ssize_t end, Py_ssize_t *pos, int family,
                       frame_t *f) noexcept nogil:
    """Reads one frame of `family` at *pos (advanced past it) into *f; 0, else an E_* code."""
    cdef uint64_t low = FAMILY_LOW[family]
    cdef uint64_t length = 0
    memset(f, 0, sizeof(frame_t))
    if read_varint(p, end, pos, &f.type) < 0:
        return E_VARINT
    if f.type < low or f.type > FAMILY_HIGH[family]:
        return E_TYPE
    if family == F_STREAM:
        if read_varint(p, end, pos, &f.stream_id) < 0:
            return E_VARINT
        if f.type & C_OFF and read_varint(p, end, pos, &f.offset) < 0:
            return E_VARINT
        if f.type & C_LEN:
            if read_varint(p, end, pos, &length) < 0:
                return E_VARINT
        else:
            length = end - pos[0]
        f.fin = f.type & C_FIN
    elif family == F_CRYPTO:
        if read_varint(p, end, pos, &f.offset) < 0 or read_varint(p, end, pos, &length) < 0:
            return E_VARINT
    elif family == F_DATAGRAM:
        if f.type == 0x31:
            if read_varint(p, end, pos, &length) < 0:
                return E_VARINT
        else:
            length = end - pos[0]
    elif family == F_RESET_STREAM:
        if (read_varint(p, end, pos, &f.stream_id) < 0 or read_varint(p, end, pos, &f.value) < 0
                or read_varint(p, end, pos, &f.offset) < 0):
            return E_VARINT
    elif family == F_STOP_SENDING or family == F_MAX_STREAM_DATA or family == F_STREAM_DATA_BLOCKED:
        if read_varint(p, end, pos, &f.stream_id) < 0 or read_varint(p, end, pos, &f.value) < 0:
            return E_VARINT
    else:
        if read_varint(p, end, pos, &f.value) < 0:
            return E_VARINT
        if (family == F_MAX_STREAMS or family == F_STREAMS_BLOCKED) and f.value > C_MAX_STREAMS:
            return E_STREAMS
    if family == F_STREAM or family == F_CRYPTO or family == F_DATAGRAM:
        if length > <uint64_t>(end - pos[0]):
            return E_DATA
        if f.offset + length > C_MAX_OFFSET:
            return E_BEYOND
        f.data_offset = pos[0]
        f.data_length = <Py_ssize_t>length
        pos[0] += <Py_ssize_t>length
    return 0


cdef int parse(data, Py_ssize_t offset, Py_ssize_t end, int family, frame_t *f) except -1:
    """parse_frame_c over a Python buffer; raises FrameError as the reference does."""
    cdef Py_buffer view
    cdef int code
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if end < 0 or end > view.len:
            end = view.len
        code = parse_frame_c(<const uint8_t *>view.buf, end, &offset, family, f)
    finally:
        PyBuffer_Release(&view)
    if code == 0:
        return offset
    name = FAMILY_NAMES[family]
    if code == E_VARINT:
        raise FrameError("varint: truncated")
    if code == E_TYPE:
        raise FrameError(f"not a {name} frame: {f.type:#x}")
    if code == E_STREAMS:
        raise FrameError(f"{name}: {f.value} streams")
    if code == E_DATA:
        raise FrameError(f"{name}: data truncated")
    raise FrameError(f"{name}: data beyond 2^62-1")


def parse_stream(data, Py_ssize_t offset=0, Py_ssize_t end=-1):
    """(stream ID, stream offset, data offset, data length, fin, offset after) of a STREAM frame.

    `end` is where the packet's payload ends (-1: the buffer's end), which is
    where the data of a frame without the LEN bit ends.
    """
    cdef frame_t f
    after = parse(data, offset, end, F_STREAM, &f)
    return f.stream_id, f.offset, f.data_offset, f.data_length, bool(f.fin), after


def parse_crypto(data, Py_ssize_t offset=0, Py_ssize_t end=-1):
    """(crypto offset, data offset, data length, offset after) of a CRYPTO frame."""
    cdef frame_t f
    after = parse(data, offset, end, F_CRYPTO, &f)
    return f.offset, f.data_offset, f.data_length, after


def parse_reset_stream(data, Py_ssize_t offset=0, Py_ssize_t end=-1):
    """(stream ID, application error code, final size, offset after) of a RESET_STREAM frame."""
    cdef frame_t f
    after = parse(data, offset, end, F_RESET_STREAM, &f)
    return f.stream_id, f.value, f.offset, after


def parse_stop_sending(data, Py_ssize_t offset=0, Py_ssize_t end=-1):
    """(stream ID, application error code, offset after) of a STOP_SENDING frame."""
    cdef frame_t f
    after = parse(data, offset, end, F_STOP_SENDING, &f)
    return f.stream_id, f.value, after


def parse_max_data(data, Py_ssize_t offset=0, Py_ssize_t end=-1):
    """(maximum data, offset after) of a MAX_DATA frame."""
    cdef frame_t f
    after = parse(data, offset, end, F_MAX_DATA, &f)
    return f.value, after


def parse_max_stream_data(data, Py_ssize_t offset=0, Py_ssize_t end=-1):
    """(stream ID, maximum stream data, offset after) of a MAX_STREAM_DATA frame."""
    cdef frame_t f
    after = parse(data, offset, end, F_MAX_STREAM_DATA, &f)
    return f.stream_id, f.value, after


def parse_max_streams(data, Py_ssize_t offset=0, Py_ssize_t end=-1):
    """(bidirectional, maximum streams, offset after) of a MAX_STREAMS frame; at most 2^60."""
    cdef frame_t f
    after = parse(data, offset, end, F_MAX_STREAMS, &f)
    return f.type == 0x12, f.value, after


def parse_data_blocked(data, Py_ssize_t offset=0, Py_ssize_t end=-1):
    """(maximum data it is blocked at, offset after) of a DATA_BLOCKED frame."""
    cdef frame_t f
    after = parse(data, offset, end, F_DATA_BLOCKED, &f)
    return f.value, after


def parse_stream_data_blocked(data, Py_ssize_t offset=0, Py_ssize_t end=-1):
    """(stream ID, maximum stream data it is blocked at, offset after) of a STREAM_DATA_BLOCKED."""
    cdef frame_t f
    after = parse(data, offset, end, F_STREAM_DATA_BLOCKED, &f)
    return f.stream_id, f.value, after


def parse_streams_blocked(data, Py_ssize_t offset=0, Py_ssize_t end=-1):
    """(bidirectional, maximum streams it is blocked at, offset after) of a STREAMS_BLOCKED."""
    cdef frame_t f
    after = parse(data, offset, end, F_STREAMS_BLOCKED, &f)
    return f.type == 0x16, f.value, after


def parse_datagram(data, Py_ssize_t offset=0, Py_ssize_t end=-1):
    """(data offset, data length, offset after) of a DATAGRAM frame (RFC 9221 §4)."""
    cdef frame_t f
    after = parse(data, offset, end, F_DATAGRAM, &f)
    return f.data_offset, f.data_length, after


# -- writing ---------------------------------------------------------------------------------------


cdef inline Py_ssize_t varint_size(uint64_t value) noexcept nogil:
    return 1 if value < 0x40 else 2 if value < 0x4000 else 4 if value < 0x40000000 else 8


cdef Py_ssize_t put_frame(uint8_t *out, Py_ssize_t pos, Py_ssize_t end, const uint64_t *fields,
                          int count, const uint8_t *payload, Py_ssize_t length) noexcept nogil:
    """Writes the varints `fields` (the type first), then `payload`; the offset after, or -1
    when it does not fit in out[pos:end]."""
    cdef Py_ssize_t size = length
    cdef int i
    for i in range(count):
        size += varint_size(fields[i])
    if pos < 0 or size > end - pos:
        return -1
    for i in range(count):
        pos += write_varint(out + pos, fields[i])
    if length:
        memcpy(out + pos, payload, length)
    return pos + length


cdef uint64_t field(value) except? 0:
    if not 0 <= value <= MAX_STREAM_OFFSET:
        raise FrameError(f"varint out of range: {value}")
    return value


cdef Py_ssize_t write(buf, Py_ssize_t pos, const uint64_t *fields, int count,
                      payload) except -1:
    """put_frame over Python buffers; raises FrameError as the reference does."""
    cdef Py_buffer out, data
    cdef Py_ssize_t after
    PyObject_GetBuffer(buf, &out, PyBUF_WRITABLE)
    try:
        if payload is None:
            after = put_frame(<uint8_t *>out.buf, pos, out.len, fields, count, NULL, 0)
        else:
            PyObject_GetBuffer(payload, &data, PyBUF_SIMPLE)
            try:
                after = put_frame(<uint8_t *>out.buf, pos, out.len, fields, count,
                                  <const uint8_t *>data.buf, data.len)
            finally:
                PyBuffer_Release(&data)
    finally:
        PyBuffer_Release(&out)
    if after < 0:
        raise FrameError("no room for the frame")
    return after


cdef int check_data(stream_offset, Py_ssize_t length) except -1:
    if not 0 <= stream_offset <= MAX_STREAM_OFFSET - length:
        raise FrameError(f"data beyond 2^62-1: offset {stream_offset}")
    return 0


cdef int check_streams(count) except -1:
    if not 0 <= count <= MAX_STREAMS:
        raise FrameError(f"stream count out of range: {count}")
    return 0


def write_stream(buf, Py_ssize_t pos, stream_id, stream_offset, data, bint fin=False):
    """A STREAM frame with the LEN bit (OFF when the offset is not 0) at `pos`; the offset after."""
    check_data(stream_offset, len(data))
    cdef uint64_t fields[4]
    cdef int n = 0
    fields[n] = STREAM_FRAME | C_LEN | (C_OFF if stream_offset else 0) | (C_FIN if fin else 0)
    n += 1
    fields[n] = field(stream_id)
    n += 1
    if stream_offset:
        fields[n] = field(stream_offset)
        n += 1
    fields[n] = len(data)
    return write(buf, pos, fields, n + 1, data)


def write_crypto(buf, Py_ssize_t pos, crypto_offset, data):
    """A CRYPTO frame at `pos`; the offset after."""
    check_data(crypto_offset, len(data))
    cdef uint64_t fields[3]
    fields[0] = CRYPTO_FRAME
    fields[1] = field(crypto_offset)
    fields[2] = len(data)
    return write(buf, pos, fields, 3, data)


def write_reset_stream(buf, Py_ssize_t pos, stream_id, error_code, final_size):
    """A RESET_STREAM frame at `pos`; the offset after."""
    cdef uint64_t fields[4]
    fields[0] = RESET_STREAM_FRAME
    fields[1] = field(stream_id)
    fields[2] = field(error_code)
    fields[3] = field(final_size)
    return write(buf, pos, fields, 4, None)


cdef Py_ssize_t write_two(buf, Py_ssize_t pos, uint64_t frame_type, first, second) except -1:
    cdef uint64_t fields[3]
    fields[0] = frame_type
    fields[1] = field(first)
    fields[2] = field(second)
    return write(buf, pos, fields, 3, None)


cdef Py_ssize_t write_one(buf, Py_ssize_t pos, uint64_t frame_type, value) except -1:
    cdef uint64_t fields[2]
    fields[0] = frame_type
    fields[1] = field(value)
    return write(buf, pos, fields, 2, None)


def write_stop_sending(buf, Py_ssize_t pos, stream_id, error_code):
    """A STOP_SENDING frame at `pos`; the offset after."""
    return write_two(buf, pos, STOP_SENDING_FRAME, stream_id, error_code)


def write_max_data(buf, Py_ssize_t pos, maximum):
    """A MAX_DATA frame at `pos`; the offset after."""
    return write_one(buf, pos, MAX_DATA_FRAME, maximum)


def write_max_stream_data(buf, Py_ssize_t pos, stream_id, maximum):
    """A MAX_STREAM_DATA frame at `pos`; the offset after."""
    return write_two(buf, pos, MAX_STREAM_DATA_FRAME, stream_id, maximum)


def write_max_streams(buf, Py_ssize_t pos, bint bidirectional, maximum):
    """A MAX_STREAMS frame at `pos`; the offset after."""
    check_streams(maximum)
    return write_one(buf, pos, MAX_STREAMS_BIDI_FRAME if bidirectional else MAX_STREAMS_UNI_FRAME,
                     maximum)


def write_data_blocked(buf, Py_ssize_t pos, limit):
    """A DATA_BLOCKED frame at `pos`; the offset after."""
    return write_one(buf, pos, DATA_BLOCKED_FRAME, limit)


def write_stream_data_blocked(buf, Py_ssize_t pos, stream_id, limit):
    """A STREAM_DATA_BLOCKED frame at `pos`; the offset after."""
    return write_two(buf, pos, STREAM_DATA_BLOCKED_FRAME, stream_id, limit)


def write_streams_blocked(buf, Py_ssize_t pos, bint bidirectional, limit):
    """A STREAMS_BLOCKED frame at `pos`; the offset after."""
    check_streams(limit)
    return write_one(
        buf, pos, STREAMS_BLOCKED_BIDI_FRAME if bidirectional else STREAMS_BLOCKED_UNI_FRAME, limit)


def write_datagram(buf, Py_ssize_t pos, data):
    """A DATAGRAM frame with its length (type 0x31) at `pos`; the offset after."""
    cdef uint64_t fields[2]
    fields[0] = DATAGRAM_LEN_FRAME
    fields[1] = len(data)
    return write(buf, pos, fields, 2, data)


# -- flow-control credit ---------------------------------------------------------------------------


cdef class SendCredit:
    """What the peer lets us send (RFC 9000 §4.1): a connection's MAX_DATA or a stream's
    MAX_STREAM_DATA, and what of it is used."""

    def __init__(self, int64_t limit):
        self.limit = limit
        self.used = 0
        self.blocked_reported = -1

    @property
    def available(self):
        return self.limit - self.used

    def raise_limit(self, int64_t limit):
        """A MAX_DATA or MAX_STREAM_DATA: whether it raised the limit (lower ones are stale)."""
        if limit <= self.limit:
            return False
        self.limit = limit
        return True

    def take_blocked(self):
        """The limit for a DATA_BLOCKED or STREAM_DATA_BLOCKED when the credit is used up and
        that limit was not reported yet (§4.1: once per limit), else -1."""
        if self.used < self.limit or self.blocked_reported == self.limit:
            return -1
        self.blocked_reported = self.limit
        return self.limit


cdef class ReceiveCredit:
    """What we let the peer send (RFC 9000 §4.1-4.2): the limit advertised, the bytes received
    against it, and the window behind the next limit (see the reference for the tuning)."""

    def __init__(self, int64_t window, int64_t max_window=0):
        if window <= 0:
            raise ValueError(f"window {window}")
        self.window = window
        self.max_window = max(window, max_window)
        self.limit = window
        self.received = 0
        self.last_update = -INFINITY

    cdef int on_received_c(self, int64_t count) except -1:
        self.received += count
        if self.received > self.limit:
            raise FlowControlError(f"{self.received} bytes received, the limit is {self.limit}")
        return 0

    def on_received(self, int64_t count):
        """`count` more bytes count against the limit; FlowControlError past it."""
        self.on_received_c(count)

    def update(self, int64_t consumed, double now, double rtt):
        """The new limit to advertise (MAX_DATA, MAX_STREAM_DATA) once half the window is
        consumed, else -1."""
        if 2 * (self.limit - consumed) > self.window:
            return -1
        if now - self.last_update < 2 * rtt:
            self.window = min(2 * self.window, self.max_window)
        self.limit = consumed + self.window
        self.last_update = now
        return self.limit


# -- rings -----------------------------------------------------------------------------------------


cdef Py_ssize_t capacity_for(int64_t size) noexcept:
    cdef Py_ssize_t capacity = C_MIN_CAPACITY
    while capacity < size:
        capacity *= 2
    return capacity


cdef inline void ring_read(const uint8_t *ring, Py_ssize_t capacity, int64_t offset,
                           uint8_t *out, Py_ssize_t length) noexcept nogil:
    """`length` bytes at stream offset `offset` (index = offset mod capacity) into `out`."""
    cdef Py_ssize_t start = offset & (capacity - 1)
    cdef Py_ssize_t first = length if length < capacity - start else capacity - start
    memcpy(out, ring + start, first)
    memcpy(out + first, ring, length - first)


cdef inline void ring_write(uint8_t *ring, Py_ssize_t capacity, int64_t offset,
                            const uint8_t *data, Py_ssize_t length) noexcept nogil:
    cdef Py_ssize_t start = offset & (capacity - 1)
    cdef Py_ssize_t first = length if length < capacity - start else capacity - start
    memcpy(ring + start, data, first)
    memcpy(ring, data + first, length - first)


cdef uint8_t *new_ring(Py_ssize_t capacity) except NULL:
    cdef uint8_t *ring = <uint8_t *>PyMem_Malloc(capacity)
    if ring == NULL:
        raise MemoryError()
    return ring


cdef uint8_t *regrow(uint8_t *ring, Py_ssize_t capacity, int64_t low, int64_t high,
                     Py_ssize_t grown) except NULL:
    """A ring of `grown` bytes holding the bytes at offsets [low, high) of `ring` (freed)."""
    cdef uint8_t *fresh = new_ring(grown)
    # The old ring's bytes in offset order, then into the new ring at the same offsets.
    cdef uint8_t *line = <uint8_t *>PyMem_Malloc(high - low + 1)
    if line == NULL:
        PyMem_Free(fresh)
        raise MemoryError()
    ring_read(ring, capacity, low, line, high - low)
    ring_write(fresh, grown, low, line, high - low)
    PyMem_Free(line)
    PyMem_Free(ring)
    return fresh


cdef object ring_bytes(const uint8_t *ring, Py_ssize_t capacity, int64_t offset,
                       Py_ssize_t length):
    cdef object data = PyBytes_FromStringAndSize(NULL, length)
    ring_read(ring, capacity, offset, <uint8_t *>PyBytes_AS_STRING(data), length)
    return data


cdef inline int64_t first_stop(RangeSet ranges) noexcept:
    return <int64_t>ranges.items[0].stop


# -- send side -------------------------------------------------------------------------------------


cdef class SendStream:
    """One stream's send side (or a packet-number space's CRYPTO data, stream ID -1); see the
    reference for the rules."""

    def __cinit__(self, int64_t stream_id, int64_t max_stream_data):
        self.capacity = capacity_for(0)
        self.ring = new_ring(self.capacity)

    def __init__(self, int64_t stream_id, int64_t max_stream_data):
        self.stream_id = stream_id
        self.credit = SendCredit(MAX_STREAM_OFFSET if stream_id < 0 else max_stream_data)
        self.acked_offset = 0
        self.next_offset = 0
        self.write_offset = 0
        self.final_size = -1
        self.fin_sent = False
        self.fin_acked = False
        self.was_reset = False
        self.acked = RangeSet(max_ranges=C_SEND_RANGES)
        self.lost = RangeSet(max_ranges=C_SEND_RANGES)

    def __dealloc__(self):
        PyMem_Free(self.ring)

    @property
    def is_complete(self):
        """Everything, FIN included, is acknowledged."""
        return self.fin_acked and self.acked_offset == self.final_size

    def write(self, data, bint fin=False):
        """Queues `data` (copied) and, with `fin`, ends the stream there."""
        cdef Py_buffer view
        cdef int64_t need
        cdef Py_ssize_t grown
        if self.final_size >= 0:
            raise StreamStateError(f"stream {self.stream_id}: write after FIN")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if self.write_offset + view.len > MAX_STREAM_OFFSET:
                raise FlowControlError(f"stream {self.stream_id}: data beyond 2^62-1")
            need = self.write_offset + view.len - self.acked_offset
            if need > self.capacity:
                grown = capacity_for(need)
                self.ring = regrow(self.ring, self.capacity, self.acked_offset,
                                   self.write_offset, grown)
                self.capacity = grown
            ring_write(self.ring, self.capacity, self.write_offset,
                       <const uint8_t *>view.buf, view.len)
            self.write_offset += view.len
        finally:
            PyBuffer_Release(&view)
        if fin:
            self.final_size = self.write_offset

    cdef void next_range(self, SendCredit connection, int64_t *start,
                         int64_t *stop) noexcept:
        """The data the next frame carries if it fits: the lowest lost range, else new data
        within the credit, else none (at `next_offset`, where a FIN alone goes)."""
        if self.lost.count:
            start[0] = <int64_t>self.lost.items[0].start
            stop[0] = <int64_t>self.lost.items[0].stop
            return
        start[0] = stop[0] = self.next_offset
        if self.next_offset >= self.write_offset:
            return
        stop[0] += min(self.write_offset - self.next_offset, self.credit.limit - self.credit.used)
        if connection is not None:
            stop[0] = min(stop[0], self.next_offset + connection.limit - connection.used)

    cdef Py_ssize_t room(self, int64_t start, Py_ssize_t space) noexcept:
        """The data that fits in `space` bytes after the frame's type, ID, offset and length."""
        if self.stream_id < 0:
            space -= 1 + varint_size(start)
        else:
            space -= 1 + varint_size(self.stream_id) + (varint_size(start) if start else 0)
        return space - varint_size(space if space > 0 else 0)

    cdef Py_ssize_t write_frame_c(self, uint8_t *out, Py_ssize_t pos, Py_ssize_t end,
                                  SendCredit connection, frame_t *sent) except -2:
        """Writes the next frame into out[pos:end]; the offset after (what it carries in
        *sent), or -1 when there is nothing to send or no room."""
        cdef int64_t start, stop, grown
        cdef Py_ssize_t room, length
        cdef bint fin
        cdef uint64_t fields[4]
        cdef int n = 0
        self.next_range(connection, &start, &stop)
        room = self.room(start, end - pos)
        if room < 0:
            return -1
        length = min(stop - start, room)
        fin = self.final_size == start + length and not self.fin_acked
        if length == 0 and (self.fin_sent or not fin):
            return -1
        if start + length > self.next_offset:
            grown = start + length - self.next_offset
            self.credit.used += grown
            if connection is not None:
                connection.used += grown
            self.next_offset = start + length
        if self.lost.count:
            self.lost.subtract_c(start, start + length)
        self.fin_sent = self.fin_sent or fin
        if self.stream_id < 0:
            fields[n] = CRYPTO_FRAME
            n += 1
        else:
            fields[n] = STREAM_FRAME | C_LEN | (C_OFF if start else 0) | (C_FIN if fin else 0)
            fields[n + 1] = self.stream_id
            n += 2
        if start or self.stream_id < 0:
            fields[n] = start
            n += 1
        fields[n] = length
        pos = put_frame(out, pos, end, fields, n + 1, NULL, 0)  # room() made it fit
        ring_read(self.ring, self.capacity, start, out + pos, length)
        sent.offset = start
        sent.data_length = length
        sent.fin = fin
        return pos + length

    def write_frame(self, out, Py_ssize_t pos, Py_ssize_t end, SendCredit connection):
        """Writes the next STREAM (or CRYPTO) frame into out[pos:end]: (stream offset, length,
        fin, offset after), or None when there is nothing to send or no room."""
        cdef Py_buffer view
        cdef frame_t sent
        cdef Py_ssize_t after
        PyObject_GetBuffer(out, &view, PyBUF_WRITABLE)
        try:
            if end > view.len or pos < 0:
                raise FrameError("no room for the frame")
            after = self.write_frame_c(<uint8_t *>view.buf, pos, end, connection, &sent)
        finally:
            PyBuffer_Release(&view)
        if after < 0:
            return None
        return sent.offset, sent.data_length, bool(sent.fin), after

    def take_blocked(self):
        """The limit for a STREAM_DATA_BLOCKED when data waits on the stream's credit (once
        per limit), else -1."""
        if self.next_offset >= self.write_offset:
            return -1
        return self.credit.take_blocked()

    cdef int on_acked_c(self, int64_t stream_offset, int64_t length, bint fin) except -1:
        if length:
            self.acked.add_c(stream_offset, stream_offset + length)
            self.lost.subtract_c(stream_offset, stream_offset + length)
        self.fin_acked = self.fin_acked or fin
        if self.acked.count and <int64_t>self.acked.items[0].start <= self.acked_offset:
            self.acked_offset = max(self.acked_offset, first_stop(self.acked))
            self.acked.subtract_c(0, self.acked_offset)
        return 0

    def on_acked(self, int64_t stream_offset, int64_t length, bint fin):
        """A frame sent as (stream_offset, length, fin) is acknowledged."""
        self.on_acked_c(stream_offset, length, fin)

    cdef int on_lost_c(self, int64_t stream_offset, int64_t length, bint fin) except -1:
        cdef int64_t start = max(stream_offset, self.acked_offset)
        cdef int64_t stop = stream_offset + length
        cdef Py_ssize_t i
        cdef pn_range acked
        if self.was_reset:
            return 0  # RESET_STREAM replaces the data: nothing is sent again (§3.1)
        if start < stop:
            self.lost.add_c(start, stop)
            for i in range(self.acked.count):
                acked = self.acked.items[i]
                if <int64_t>acked.start < stop and <int64_t>acked.stop > start:
                    self.lost.subtract_c(acked.start, acked.stop)
        if fin and not self.fin_acked:
            self.fin_sent = False
        return 0

    def on_lost(self, int64_t stream_offset, int64_t length, bint fin):
        """A frame sent as (stream_offset, length, fin) is lost: what of it is not
        acknowledged since is sent again."""
        self.on_lost_c(stream_offset, length, fin)

    def reset(self):
        """Stops sending (RESET_STREAM): drops what waits; the final size to announce."""
        self.lost.subtract_c(0, MAX_STREAM_OFFSET)
        self.write_offset = self.final_size = self.next_offset
        self.fin_sent = self.was_reset = True
        return self.next_offset


# -- receive side ----------------------------------------------------------------------------------


cdef class RecvStream:
    """One stream's receive side: reassembly into a ring, final size and flow control; see
    the reference for the rules."""

    def __cinit__(self, int64_t window, int64_t max_window=0):
        self.capacity = capacity_for(0)
        self.ring = new_ring(self.capacity)

    def __init__(self, int64_t window, int64_t max_window=0):
        self.credit = ReceiveCredit(window, max_window)
        self.read_offset = 0
        self.highest = 0
        self.final_size = -1
        self.reset_received = False
        self.received = RangeSet(max_ranges=C_MAX_RECEIVE_GAPS + 1)

    def __dealloc__(self):
        PyMem_Free(self.ring)

    cdef int64_t readable_c(self) noexcept:
        if self.received.count and <int64_t>self.received.items[0].start == self.read_offset:
            return first_stop(self.received) - self.read_offset
        return 0

    @property
    def readable(self):
        """Bytes that can be read now, in order."""
        return self.readable_c()

    @property
    def is_finished(self):
        """Everything up to the final size was read."""
        return self.read_offset == self.final_size and not self.reset_received

    cdef int64_t grow_final(self, int64_t end, bint fin) except -1:
        """The §4.5 checks for data reaching `end`; takes the credit; the growth of `highest`."""
        cdef int64_t grown
        if self.final_size >= 0:
            if end > self.final_size or (fin and end != self.final_size):
                raise FinalSizeError(f"final size {self.final_size}, data up to {end}")
        elif fin and end < self.highest:
            raise FinalSizeError(f"final size {end} below data up to {self.highest}")
        grown = max(end - self.highest, 0)
        self.credit.on_received_c(grown)
        self.highest += grown
        if fin:
            self.final_size = end
        return grown

    cdef int64_t on_data_c(self, const uint8_t *data, int64_t length, int64_t stream_offset,
                           bint fin) except -1:
        """The frame's data at `data` (its first byte is at `stream_offset`)."""
        cdef int64_t before = self.highest
        cdef int64_t grown = self.grow_final(stream_offset + length, fin)
        cdef int64_t start = max(stream_offset, self.read_offset)
        cdef int64_t stop = stream_offset + length
        cdef Py_ssize_t capacity
        if self.reset_received or start >= stop:
            return grown
        if stop - self.read_offset > self.capacity:
            capacity = capacity_for(stop - self.read_offset)
            self.ring = regrow(self.ring, self.capacity, self.read_offset, before, capacity)
            self.capacity = capacity
        ring_write(self.ring, self.capacity, start, data + (start - stream_offset), stop - start)
        self.received.add_c(start, stop)
        if self.received.count > C_MAX_RECEIVE_GAPS:
            raise FlowControlError(f"more than {MAX_RECEIVE_GAPS} gaps in the received data")
        return grown

    def on_data(self, data, Py_ssize_t data_offset, Py_ssize_t length, int64_t stream_offset,
                bint fin):
        """A STREAM frame's data, data[data_offset:data_offset + length] at `stream_offset`."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if (min(data_offset, length, stream_offset) < 0
                    or data_offset + length > view.len):
                raise FrameError(
                    f"{length} bytes at {data_offset} of a {view.len}-byte buffer")
            return self.on_data_c(<const uint8_t *>view.buf + data_offset, length,
                                  stream_offset, fin)
        finally:
            PyBuffer_Release(&view)

    def on_reset(self, int64_t final_size):
        """A RESET_STREAM with `final_size`: the data is dropped, the credit still counts."""
        cdef int64_t grown = self.grow_final(final_size, True)
        self.reset_received = True
        self.received.subtract_c(0, MAX_STREAM_OFFSET)
        return grown

    def read(self, Py_ssize_t max_bytes=-1):
        """The next bytes in order (at most `max_bytes`, -1: all that are readable)."""
        cdef int64_t count = self.readable_c()
        if 0 <= max_bytes < count:
            count = max_bytes
        data = ring_bytes(self.ring, self.capacity, self.read_offset, count)
        self.read_offset += count
        if self.read_offset:
            self.received.subtract_c(0, self.read_offset)
        return data

    def window_update(self, double now, double rtt):
        """The MAX_STREAM_DATA limit to send (see `ReceiveCredit.update`), else -1; none once
        the final size is known (§4.5)."""
        if self.final_size >= 0:
            return -1
        return self.credit.update(self.read_offset, now, rtt)
