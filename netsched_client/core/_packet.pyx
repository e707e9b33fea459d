# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False
"""The packet layer in C: varints, packet numbers, headers, batch parsing, ACK ranges and frames.

`_packet_py.py` is the pure-Python reference of the same API (tests run
both and compare). Parsing writes int64 records into one array('q') with
no Python object per packet; errors are codes in C, turned into
`PacketError` at the Python boundary only.
"""

from cpython.array cimport array, resize_smart
from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcmp, memcpy, memmove

from netsched_client.core.errors import PacketError

VERSION_NEGOTIATION = 0x00000000
VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF

KIND_ONE_RTT = 0
KIND_INITIAL = 1
KIND_ZERO_RTT = 2
KIND_HANDSHAKE = 3
KIND_RETRY = 4
KIND_VERSION_NEGOTIATION = 5
KIND_UNSUPPORTED_VERSION = 6
KIND_INVALID = 7

F_DATAGRAM = 0
F_OFFSET = 1
F_LENGTH = 2
F_KIND = 3
F_VERSION = 4
F_DCID_OFFSET = 5
F_DCID_LENGTH = 6
F_SCID_OFFSET = 7
F_SCID_LENGTH = 8
F_TOKEN_OFFSET = 9
F_TOKEN_LENGTH = 10
F_PN_OFFSET = 11
RECORD_FIELDS = RECORD_N

MAX_CID_LENGTH = 20
MAX_VARINT = (1 << 62) - 1
MAX_PACKET_NUMBER = (1 << 62) - 1
ACK_FRAME = 0x02
ACK_ECN_FRAME = 0x03
PATH_ACK_FRAME = 0x3E
PATH_ACK_ECN_FRAME = 0x3F
DEFAULT_MAX_RANGES = 256
MAX_PATH_ID = (1 << 32) - 1
RETRY_TAG_LENGTH = 16

cdef enum:
    C_VERSION_1 = 0x00000001
    C_VERSION_2 = 0x6B3343CF
    C_ONE_RTT = 0
    C_INITIAL = 1
    C_ZERO_RTT = 2
    C_HANDSHAKE = 3
    C_RETRY = 4
    C_VN = 5
    C_UNSUPPORTED = 6
    C_INVALID = 7
    C_MAX_CID = 20
    C_TAG = 16

cdef uint64_t C_MAX_VARINT = (<uint64_t>1 << 62) - 1
cdef int64_t C_MAX_PN = (<int64_t>1 << 62) - 1

cdef int V1_TYPES[4]
V1_TYPES[:] = [C_INITIAL, C_ZERO_RTT, C_HANDSHAKE, C_RETRY]
cdef int V2_TYPES[4]
V2_TYPES[:] = [C_RETRY, C_INITIAL, C_ZERO_RTT, C_HANDSHAKE]

# Error codes of parse_record (0 is success); the messages match the reference's.
_ERRORS = (
    None,
    "packet: empty",
    "short header: fixed bit is 0",
    "short header: truncated",
    "long header: truncated",
    "long header: truncated connection ID",
    "version negotiation: version list length",
    "long header: connection ID longer than 20 bytes",
    "long header: fixed bit is 0",
    "retry: truncated",
    "varint: truncated",
    "initial: truncated token",
    "long header: length beyond the datagram",
    "long header: no packet number",
)

# -- varints and packet numbers -----------------------------------------------------------------


cdef int read_varint(const uint8_t *data, Py_ssize_t end, Py_ssize_t *pos,
                            uint64_t *value) noexcept nogil:
    """Reads the varint at *pos (advanced past it); -1 if it runs past `end`."""
    cdef Py_ssize_t p = pos[0]
    cdef Py_ssize_t size, i
    cdef uint64_t v
    if p < 0 or p >= end:
        return -1
    size = 1 << (data[p] >> 6)
    if p + size > end:
        return -1
    v = data[p] & 0x3F
    for i in range(1, size):
        v = v << 8 | data[p + i]
    value[0] = v
    pos[0] = p + size
    return 0


cdef Py_ssize_t write_varint(uint8_t *out, uint64_t value) noexcept nogil:
    """Writes `value` (at most 2**62 - 1) in its shortest form; returns the bytes written."""
    if value < 0x40:
        out[0] = <uint8_t>value
        return 1
    if value < 0x4000:
        out[0] = <uint8_t>(value >> 8 | 0x40)
        out[1] = <uint8_t>value
        return 2
    if value < 0x40000000:
        out[0] = <uint8_t>(value >> 24 | 0x80)
        out[1] = <uint8_t>(value >> 16)
        out[2] = <uint8_t>(value >> 8)
        out[3] = <uint8_t>value
        return 4
    cdef int i
    for i in range(8):
        out[i] = <uint8_t>(value >> (56 - 8 * i))
    out[0] |= 0xC0
    return 8


cdef inline int varint_size(uint64_t value) noexcept nogil:
    if value < 0x40:
        return 1
    if value < 0x4000:
        return 2
    if value < 0x40000000:
        return 4
    return 8


def encode_varint(value):
    """`value` as a QUIC variable-length integer of the shortest form (RFC 9000 §16)."""
    if value < 0 or value > MAX_VARINT:
        raise PacketError(f"varint out of range: {value}")
    cdef uint8_t out[8]
    cdef Py_ssize_t n = write_varint(out, <uint64_t>value)
    return PyBytes_FromStringAndSize(<char *>out, n)


cdef class _View:
    """A buffer held for the duration of a call (bytes, bytearray, memoryview)."""
    cdef Py_buffer view
    cdef const uint8_t *data
    cdef Py_ssize_t size

    def __cinit__(self, obj):
        PyObject_GetBuffer(obj, &self.view, PyBUF_SIMPLE)
        self.data = <const uint8_t *>self.view.buf
        self.size = self.view.len

    def __dealloc__(self):
        PyBuffer_Release(&self.view)


def decode_varint(data, Py_ssize_t offset=0):
    """The varint at `offset` and the offset after it."""
    cdef _View view = _View(data)
    cdef uint64_t value
    cdef Py_ssize_t pos = offset
    if read_varint(view.data, view.size, &pos, &value) < 0:
        raise PacketError("varint: truncated")
    return value, pos


def encode_packet_number(packet_number, largest_acked):
    """(truncated value, length in bytes) to send `packet_number` (RFC 9000 A.2).

    `largest_acked` is -1 while nothing of the space has been acknowledged.
    """
    if not 0 <= packet_number <= MAX_PACKET_NUMBER or not -1 <= largest_acked < packet_number:
        raise PacketError(f"packet number {packet_number} after {largest_acked}")
    cdef uint64_t unacked = <uint64_t>(<int64_t>packet_number - <int64_t>largest_acked)
    cdef int length
    if unacked <= (<uint64_t>1 << 7):
        length = 1
    elif unacked <= (<uint64_t>1 << 15):
        length = 2
    elif unacked <= (<uint64_t>1 << 23):
        length = 3
    elif unacked <= (<uint64_t>1 << 31):
        length = 4
    else:
        raise PacketError(f"packet number {packet_number}: {unacked} unacknowledged")
    return <int64_t>packet_number & ((<int64_t>1 << (8 * length)) - 1), length


cdef int64_t decode_pn(uint64_t truncated, int length, int64_t largest_pn) noexcept nogil:
    """RFC 9000 A.3, for a validated `truncated` of `length` bytes."""
    cdef int64_t expected = largest_pn + 1
    cdef int64_t window = (<int64_t>1) << (8 * length)
    cdef int64_t half = window >> 1
    cdef int64_t candidate = (expected & ~(window - 1)) | <int64_t>truncated
    if candidate <= expected - half and candidate < ((<int64_t>1) << 62) - window:
        return candidate + window
    if candidate > expected + half and candidate >= window:
        return candidate - window
    return candidate


def decode_packet_number(truncated, int length, largest_pn):
    """The full packet number closest to `largest_pn` + 1 (RFC 9000 A.3); -1: none received."""
    if not 1 <= length <= 4 or not 0 <= truncated < (<int64_t>1) << (8 * length):
        raise PacketError(f"truncated packet number {truncated} of {length} bytes")
    if not -1 <= largest_pn <= MAX_PACKET_NUMBER:
        raise PacketError(f"largest packet number {largest_pn}")
    return decode_pn(<uint64_t>truncated, length, <int64_t>largest_pn)


# -- headers -----------------------------------------------------------------------------------


cdef int parse_record(const uint8_t *data, Py_ssize_t offset, Py_ssize_t end,
                      int cid_length, int64_t datagram, int64_t *rec) noexcept nogil:
    """Fills `rec` (RECORD_N fields) for the packet at `offset`; 0, or an error code (_ERRORS)."""
    cdef uint8_t first
    cdef Py_ssize_t pos, dcid_offset, scid_offset, i
    cdef int dcid_length, scid_length, kind
    cdef uint64_t version, value
    if offset >= end:
        return 1
    for i in range(RECORD_N):
        rec[i] = 0
    rec[0] = datagram
    rec[1] = offset
    rec[2] = end - offset
    first = data[offset]
    if not first & 0x80:
        if not first & 0x40:
            return 2
        pos = offset + 1 + cid_length
        if pos >= end:
            return 3
        rec[3] = C_ONE_RTT
        rec[5] = offset + 1
        rec[6] = cid_length
        rec[11] = pos
        return 0
    if offset + 6 > end:
        return 4
    version = (<uint64_t>data[offset + 1] << 24 | <uint64_t>data[offset + 2] << 16
               | <uint64_t>data[offset + 3] << 8 | data[offset + 4])
    pos = offset + 5
    dcid_length = data[pos]
    dcid_offset = pos + 1
    pos = dcid_offset + dcid_length
    if pos >= end:
        return 5
    scid_length = data[pos]
    scid_offset = pos + 1
    pos = scid_offset + scid_length
    if pos > end:
        return 5
    rec[4] = <int64_t>version
    rec[5] = dcid_offset
    rec[6] = dcid_length
    rec[7] = scid_offset
    rec[8] = scid_length
    rec[11] = pos
    if version == 0:
        if (end - pos) % 4 or pos == end:
            return 6
        rec[3] = C_VN
        return 0
    if version == C_VERSION_1:
        kind = V1_TYPES[first >> 4 & 3]
    elif version == C_VERSION_2:
        kind = V2_TYPES[first >> 4 & 3]
    else:
        rec[3] = C_UNSUPPORTED
        return 0
    if dcid_length > C_MAX_CID or scid_length > C_MAX_CID:
        return 7
    if not first & 0x40:
        return 8
    rec[3] = kind
    if kind == C_RETRY:
        if end - pos < C_TAG + 1:
            return 9
        rec[9] = pos
        rec[10] = end - pos - C_TAG
        rec[11] = end - C_TAG
        return 0
    if kind == C_INITIAL:
        if read_varint(data, end, &pos, &value) < 0:
            return 10
        if value > <uint64_t>(end - pos):
            return 11
        rec[9] = pos
        rec[10] = <int64_t>value
        pos += <Py_ssize_t>value
    if read_varint(data, end, &pos, &value) < 0:
        return 10
    if value > <uint64_t>(end - pos):
        return 12
    if value < 1:
        return 13
    rec[2] = pos + <Py_ssize_t>value - offset
    rec[11] = pos
    return 0


cdef inline int _check_cid_length(int cid_length) except -1:
    if not 0 <= cid_length <= C_MAX_CID:
        raise PacketError(f"connection ID length {cid_length}")
    return 0


def parse_packet(data, Py_ssize_t offset=0, int cid_length=8):
    """The record (RECORD_FIELDS ints, F_* indices) of the packet at `offset` in a datagram.

    `cid_length` is the length of this endpoint's connection IDs (short headers
    carry no length). F_LENGTH is where the next coalesced packet starts.
    """
    _check_cid_length(cid_length)
    cdef _View view = _View(data)
    cdef int64_t rec[RECORD_N]
    if offset < 0 or offset > view.size:
        raise PacketError(f"offset {offset}")
    cdef int error = parse_record(view.data, offset, view.size, cid_length, 0, rec)
    if error:
        raise PacketError(_ERRORS[error])
    return tuple([rec[i] for i in range(RECORD_N)])


cdef Py_ssize_t _parse_datagram(array out, Py_ssize_t used, int64_t index, const uint8_t *data,
                                Py_ssize_t start, Py_ssize_t end, int cid_length) except -1:
    """Appends the records of one datagram to `out` (grown as needed); returns the fields used."""
    cdef Py_ssize_t offset = start, i
    cdef int64_t *rec
    cdef int64_t dcid_offset = -1, dcid_length = 0
    cdef int error
    while offset < end:
        if used + RECORD_N > len(out):
            resize_smart(out, 2 * (used + RECORD_N))
        rec = <int64_t *>out.data.as_longlongs + used
        used += RECORD_N
        error = parse_record(data, offset, end, cid_length, index, rec)
        if not error:
            if dcid_offset < 0:
                dcid_offset, dcid_length = rec[5], rec[6]
            elif rec[6] != dcid_length or memcmp(data + rec[5], data + dcid_offset, dcid_length):
                error = 1  # RFC 9000 §12.2: coalesced packets share the first one's DCID
        if error:
            rec[1] = offset
            rec[2] = end - offset
            rec[3] = C_INVALID
            for i in range(4, RECORD_N):
                rec[i] = 0
            return used
        offset += <Py_ssize_t>rec[2]
    return used


def parse_buffer(data, Py_ssize_t segment_size, int cid_length=8):
    """Records of every packet of a GRO buffer: datagrams of `segment_size` (the last shorter).

    One flat array('q') of RECORD_FIELDS ints a packet; offsets are into `data`.
    A packet that does not parse, or whose DCID differs from the first packet's
    of its datagram, yields a KIND_INVALID record over the rest of the datagram
    (which is then discarded, RFC 9000 §12.2); nothing raises.
    """
    _check_cid_length(cid_length)
    if segment_size <= 0:
        raise PacketError(f"segment size {segment_size}")
    cdef _View view = _View(data)
    cdef Py_ssize_t datagrams = (view.size + segment_size - 1) // segment_size
    cdef array out = array("q")
    resize_smart(out, datagrams * RECORD_N)
    cdef Py_ssize_t used = 0, start = 0
    cdef int64_t index = 0
    while start < view.size:
        used = _parse_datagram(out, used, index, view.data, start,
                               min(start + segment_size, view.size), cid_length)
        start += segment_size
        index += 1
    resize_smart(out, used)
    return out


def parse_datagrams(datagrams, int cid_length=8):
    """Records of every packet of many datagrams; offsets are into each datagram."""
    _check_cid_length(cid_length)
    cdef array out = array("q")
    resize_smart(out, len(datagrams) * RECORD_N)
    cdef Py_ssize_t used = 0
    cdef int64_t index = 0
    cdef _View view
    for item in datagrams:
        view = _View(item)
        used = _parse_datagram(out, used, index, view.data, 0, view.size, cid_length)
        index += 1
    resize_smart(out, used)
    return out


def build_short_header(dcid, truncated_pn, int pn_length, bint key_phase=False,
                       bint spin=False):
    """A 1-RTT header, unprotected, ending with its packet number (RFC 9000 §17.3.1)."""
    if not 1 <= pn_length <= 4 or not 0 <= truncated_pn < (<int64_t>1) << (8 * pn_length):
        raise PacketError(f"packet number {truncated_pn} in {pn_length} bytes")
    cdef _View cid = _View(dcid)
    _check_cid_length(cid.size)
    cdef uint64_t pn = truncated_pn
    out = PyBytes_FromStringAndSize(NULL, 1 + cid.size + pn_length)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    p[0] = 0x40 | spin << 5 | key_phase << 2 | (pn_length - 1)
    memcpy(p + 1, cid.data, cid.size)
    _write_pn(p + 1 + cid.size, pn, pn_length)
    return out


cdef inline void _write_pn(uint8_t *out, uint64_t pn, int length) noexcept nogil:
    cdef int i
    for i in range(length):
        out[i] = <uint8_t>(pn >> (8 * (length - 1 - i)))


def build_long_header(int kind, version, dcid, scid, token, payload_length, truncated_pn,
                      int pn_length):
    """An Initial, 0-RTT or Handshake header, unprotected, ending with its packet number.

    `payload_length` counts the protected payload after the packet number (the
    AEAD tag included); the Length field adds the packet number's length.
    """
    cdef int bits = -1, i
    cdef int *table
    if version == VERSION_1:
        table = V1_TYPES
    elif version == VERSION_2:
        table = V2_TYPES
    else:
        raise PacketError(f"version {version:#x}")
    for i in range(4):
        if table[i] == kind:
            bits = i
    if bits < 0 or kind == C_RETRY:
        raise PacketError(f"packet kind {kind}")
    if not 1 <= pn_length <= 4 or not 0 <= truncated_pn < (<int64_t>1) << (8 * pn_length):
        raise PacketError(f"packet number {truncated_pn} in {pn_length} bytes")
    cdef _View d = _View(dcid)
    cdef _View s = _View(scid)
    cdef _View t = _View(token)
    _check_cid_length(d.size)
    _check_cid_length(s.size)
    if payload_length < 0:
        raise PacketError(f"payload length {payload_length}")
    if kind != C_INITIAL and t.size:
        raise PacketError("only an Initial carries a token")
    cdef uint64_t length_field = <uint64_t>pn_length + <uint64_t>payload_length
    if length_field > C_MAX_VARINT:
        raise PacketError(f"varint out of range: {length_field}")
    cdef Py_ssize_t size = 7 + d.size + s.size + varint_size(length_field) + pn_length
    if kind == C_INITIAL:
        size += varint_size(t.size) + t.size
    out = PyBytes_FromStringAndSize(NULL, size)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    cdef uint64_t v = version
    p[0] = 0xC0 | bits << 4 | (pn_length - 1)
    _write_pn(p + 1, v, 4)
    p[5] = <uint8_t>d.size
    memcpy(p + 6, d.data, d.size)
    cdef Py_ssize_t pos = 6 + d.size
    p[pos] = <uint8_t>s.size
    memcpy(p + pos + 1, s.data, s.size)
    pos += 1 + s.size
    if kind == C_INITIAL:
        pos += write_varint(p + pos, t.size)
        memcpy(p + pos, t.data, t.size)
        pos += t.size
    pos += write_varint(p + pos, length_field)
    _write_pn(p + pos, <uint64_t>truncated_pn, pn_length)
    return out


# -- routing by destination CID ------------------------------------------------------------------

cdef enum:
    SLOT_EMPTY = 0
    SLOT_USED = 1
    SLOT_DELETED = 2

cdef extern from *:
    """
    #define NS_FNV_OFFSET 0xCBF29CE484222325ULL
    #define NS_FNV_PRIME 0x100000001B3ULL
    """
    uint64_t FNV_OFFSET "NS_FNV_OFFSET"
    uint64_t FNV_PRIME "NS_FNV_PRIME"

ctypedef struct cid_slot:
    uint8_t key[20]
    uint8_t state
    int64_t value


cdef inline uint64_t _cid_hash(const uint8_t *key, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = FNV_OFFSET  # FNV-1a
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ key[i]) * FNV_PRIME
    return h ^ (h >> 29)


cdef class CidMap:
    """Connection IDs of one fixed length -> an int (a path ID, a connection slot).

    `route` looks up the DCID of every record of a batch at once: a short
    header's DCID is `cid_length` bytes (RFC 9000 §17.3), so with fixed-length
    CIDs every packet of a multipath connection finds its path without parsing
    further. Records whose DCID is unknown, or of another length, get -1.
    An open-addressing table in C: no Python object per lookup.
    """

    cdef cid_slot *slots
    cdef Py_ssize_t capacity   # a power of two
    cdef Py_ssize_t used       # live entries
    cdef Py_ssize_t filled     # live and deleted slots
    cdef int length

    def __cinit__(self, int cid_length):
        _check_cid_length(cid_length)
        self.length = cid_length
        self.capacity = 16
        self.slots = <cid_slot *>PyMem_Malloc(self.capacity * sizeof(cid_slot))
        if self.slots == NULL:
            raise MemoryError()
        self._clear(self.slots, self.capacity)

    def __dealloc__(self):
        PyMem_Free(self.slots)

    @property
    def cid_length(self):
        return self.length

    cdef void _clear(self, cid_slot *slots, Py_ssize_t n) noexcept:
        cdef Py_ssize_t i
        for i in range(n):
            slots[i].state = SLOT_EMPTY

    cdef Py_ssize_t _find(self, const uint8_t *key) noexcept nogil:
        """The slot holding `key`, or -1."""
        cdef Py_ssize_t mask = self.capacity - 1
        cdef Py_ssize_t i = <Py_ssize_t>(_cid_hash(key, self.length) & <uint64_t>mask)
        while self.slots[i].state != SLOT_EMPTY:
            if (self.slots[i].state == SLOT_USED
                    and memcmp(self.slots[i].key, key, self.length) == 0):
                return i
            i = (i + 1) & mask
        return -1

    cdef int _grow(self) except -1:
        cdef cid_slot *old = self.slots
        cdef Py_ssize_t old_capacity = self.capacity, i, j, mask
        cdef Py_ssize_t capacity = old_capacity * 2 if self.used * 2 >= old_capacity else old_capacity
        cdef cid_slot *slots = <cid_slot *>PyMem_Malloc(capacity * sizeof(cid_slot))
        if slots == NULL:
            raise MemoryError()
        self._clear(slots, capacity)
        mask = capacity - 1
        for i in range(old_capacity):
            if old[i].state == SLOT_USED:
                j = <Py_ssize_t>(_cid_hash(old[i].key, self.length) & <uint64_t>mask)
                while slots[j].state != SLOT_EMPTY:
                    j = (j + 1) & mask
                slots[j] = old[i]
        self.slots = slots
        self.capacity = capacity
        self.filled = self.used
        PyMem_Free(old)
        return 0

    cdef const uint8_t *_key(self, _View view) except NULL:
        if view.size != self.length:
            raise PacketError(f"connection ID of {view.size} bytes, not {self.length}")
        return view.data if view.size else <const uint8_t *>b"-"

    def add(self, cid, value):
        """Maps `cid` to `value` (>= 0), replacing what it mapped to."""
        if not 0 <= value < 1 << 63:
            raise PacketError(f"value {value}")
        cdef _View view = _View(cid)
        cdef const uint8_t *key = self._key(view)
        cdef Py_ssize_t i = self._find(key), mask
        if i >= 0:
            self.slots[i].value = value
            return
        if (self.filled + 1) * 4 > self.capacity * 3:
            self._grow()
        mask = self.capacity - 1
        i = <Py_ssize_t>(_cid_hash(key, self.length) & <uint64_t>mask)
        while self.slots[i].state == SLOT_USED:
            i = (i + 1) & mask
        if self.slots[i].state == SLOT_EMPTY:
            self.filled += 1
        memcpy(self.slots[i].key, key, self.length)
        self.slots[i].state = SLOT_USED
        self.slots[i].value = value
        self.used += 1

    def remove(self, cid):
        """Forgets `cid` (a no-op when unknown)."""
        cdef _View view = _View(cid)
        cdef Py_ssize_t i = self._find(self._key(view))
        if i >= 0:
            self.slots[i].state = SLOT_DELETED
            self.used -= 1

    def get(self, cid):
        """The value of `cid`, -1 when unknown."""
        cdef _View view = _View(cid)
        cdef Py_ssize_t i = self._find(self._key(view))
        return self.slots[i].value if i >= 0 else -1

    def __len__(self):
        return self.used

    def route(self, data, array records):
        """The value of each record's DCID (-1: unknown or another length), offsets into `data`."""
        cdef _View view = _View(data)
        cdef Py_ssize_t n = len(records) // RECORD_N, k, slot
        cdef const int64_t *rec
        cdef array out = array("q")
        resize_smart(out, n)
        cdef int64_t *values = <int64_t *>out.data.as_longlongs
        for k in range(n):
            rec = <const int64_t *>records.data.as_longlongs + k * RECORD_N
            values[k] = -1
            if rec[3] == C_INVALID or rec[6] != self.length:
                continue
            if rec[5] < 0 or rec[5] + rec[6] > view.size:
                raise PacketError("record beyond the buffer")
            slot = self._find(view.data + rec[5])
            if slot >= 0:
                values[k] = self.slots[slot].value
        return out


# -- ACK ranges --------------------------------------------------------------------------------


cdef class RangeSet:
    """Disjoint half-open [start, stop) ranges of packet numbers, ascending.

    At most `max_ranges` ranges: past that the lowest range is dropped (an ACK
    frame reports the highest ones; the oldest matter least).
    """

    def __cinit__(self, ranges=(), Py_ssize_t max_ranges=DEFAULT_MAX_RANGES):
        if max_ranges < 1:
            raise PacketError(f"max_ranges {max_ranges}")
        self.limit = max_ranges
        self.capacity = 8
        self.count = 0
        self.items = <pn_range *>PyMem_Malloc(self.capacity * sizeof(pn_range))
        if self.items == NULL:
            raise MemoryError()

    def __init__(self, ranges=(), Py_ssize_t max_ranges=DEFAULT_MAX_RANGES):
        for start, stop in ranges:
            self.add(start, stop)

    def __dealloc__(self):
        PyMem_Free(self.items)

    @property
    def max_ranges(self):
        return self.limit

    cdef int add_c(self, uint64_t start, uint64_t stop) except -1:
        cdef Py_ssize_t i = self.count, j
        cdef pn_range *items
        while i > 0 and self.items[i - 1].start > stop:
            i -= 1
        j = i
        while j > 0 and self.items[j - 1].stop >= start:
            j -= 1
        if j == i:
            if self.count == self.capacity:
                items = <pn_range *>PyMem_Realloc(self.items, 2 * self.capacity * sizeof(pn_range))
                if items == NULL:
                    raise MemoryError()
                self.items = items
                self.capacity *= 2
            memmove(self.items + i + 1, self.items + i, (self.count - i) * sizeof(pn_range))
            self.items[i].start = start
            self.items[i].stop = stop
            self.count += 1
        else:
            if self.items[j].start < start:
                start = self.items[j].start
            if self.items[i - 1].stop > stop:
                stop = self.items[i - 1].stop
            self.items[j].start = start
            self.items[j].stop = stop
            memmove(self.items + j + 1, self.items + i, (self.count - i) * sizeof(pn_range))
            self.count -= i - j - 1
        if self.count > self.limit:
            memmove(self.items, self.items + 1, (self.count - 1) * sizeof(pn_range))
            self.count -= 1
        return 0

    def add(self, start, stop):
        """Adds [start, stop), merging with the ranges it touches."""
        if not 0 <= start < stop or stop > MAX_PACKET_NUMBER + 1:
            raise PacketError(f"range [{start}, {stop})")
        self.add_c(start, stop)

    def add_packet(self, packet_number):
        """Adds one packet number."""
        if not 0 <= packet_number <= MAX_PACKET_NUMBER:
            raise PacketError(f"range [{packet_number}, {packet_number + 1})")
        self.add_c(packet_number, packet_number + 1)

    cdef int subtract_c(self, uint64_t start, uint64_t stop) except -1:
        cdef Py_ssize_t i = 0
        cdef pn_range *items
        while i < self.count:
            if self.items[i].stop <= start or self.items[i].start >= stop:
                i += 1
                continue
            if self.items[i].start < start and self.items[i].stop > stop:
                # A hole in the middle: split in two.
                if self.count == self.capacity:
                    items = <pn_range *>PyMem_Realloc(
                        self.items, 2 * self.capacity * sizeof(pn_range))
                    if items == NULL:
                        raise MemoryError()
                    self.items = items
                    self.capacity *= 2
                memmove(self.items + i + 1, self.items + i, (self.count - i) * sizeof(pn_range))
                self.count += 1
                self.items[i].stop = start
                self.items[i + 1].start = stop
                return 0
            if self.items[i].start < start:
                self.items[i].stop = start
                i += 1
            elif self.items[i].stop > stop:
                self.items[i].start = stop
                i += 1
            else:
                memmove(self.items + i, self.items + i + 1,
                        (self.count - i - 1) * sizeof(pn_range))
                self.count -= 1
        return 0

    def subtract(self, start, stop):
        """Removes [start, stop)."""
        if not 0 <= start <= stop:
            raise PacketError(f"range [{start}, {stop})")
        if start < stop:
            self.subtract_c(start, min(stop, MAX_PACKET_NUMBER + 1))

    def remove_below(self, packet_number):
        """Removes every packet number below `packet_number`."""
        if packet_number > 0:
            self.subtract(0, packet_number)

    def largest(self):
        """The largest packet number in the set; PacketError when empty."""
        if not self.count:
            raise PacketError("empty range set")
        return self.items[self.count - 1].stop - 1

    def smallest(self):
        """The smallest packet number in the set; PacketError when empty."""
        if not self.count:
            raise PacketError("empty range set")
        return self.items[0].start

    def __contains__(self, packet_number):
        if not isinstance(packet_number, int) or packet_number < 0 or packet_number > MAX_PACKET_NUMBER:
            return False
        cdef uint64_t pn = packet_number
        cdef Py_ssize_t lo = 0, hi = self.count, mid
        while lo < hi:  # the first range whose stop is above pn
            mid = (lo + hi) // 2
            if self.items[mid].stop <= pn:
                lo = mid + 1
            else:
                hi = mid
        return lo < self.count and self.items[lo].start <= pn

    def __len__(self):
        return self.count

    def __bool__(self):
        return self.count > 0

    def __iter__(self):
        return iter([(self.items[i].start, self.items[i].stop) for i in range(self.count)])

    def __eq__(self, other):
        if not hasattr(other, "max_ranges") or not hasattr(other, "__iter__"):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None

    def __repr__(self):
        return f"RangeSet({list(self)!r})"


# -- ACK and PATH_ACK frames ---------------------------------------------------------------------


def encode_ack(RangeSet ranges, ack_delay, ecn=None, path_id=-1,
               Py_ssize_t max_ranges=DEFAULT_MAX_RANGES):
    """An ACK frame (RFC 9000 §19.3), or a PATH_ACK (draft-21 §4.1) when `path_id` >= 0.

    The type is included. `ack_delay` is already scaled by the ack_delay_exponent;
    at most `max_ranges` ranges are written, the highest first.
    """
    if not ranges.count:
        raise PacketError("ACK of no packets")
    if path_id > MAX_PATH_ID or max_ranges < 1:
        raise PacketError(f"path ID {path_id}, max_ranges {max_ranges}")
    if not 0 <= ack_delay <= MAX_VARINT:
        raise PacketError(f"varint out of range: {ack_delay}")
    cdef uint64_t counts[3]
    cdef int has_ecn = 0
    if ecn:
        for i in range(3):
            if not 0 <= ecn[i] <= MAX_VARINT:
                raise PacketError(f"varint out of range: {ecn[i]}")
            counts[i] = ecn[i]
        has_ecn = 1
    cdef Py_ssize_t n = min(ranges.count, max_ranges)
    cdef Py_ssize_t size = 8 * (7 + 2 * n)
    cdef uint8_t stack[512]
    cdef uint8_t *buf = stack
    if size > 512:
        buf = <uint8_t *>PyMem_Malloc(size)
        if buf == NULL:
            raise MemoryError()
    cdef Py_ssize_t pos = 0, k, top = ranges.count - 1
    cdef uint64_t previous
    cdef pn_range *items = ranges.items
    try:
        if path_id >= 0:
            pos += write_varint(buf + pos, 0x3F if has_ecn else 0x3E)
            pos += write_varint(buf + pos, <uint64_t>path_id)
        else:
            pos += write_varint(buf + pos, 0x03 if has_ecn else 0x02)
        pos += write_varint(buf + pos, items[top].stop - 1)
        pos += write_varint(buf + pos, <uint64_t>ack_delay)
        pos += write_varint(buf + pos, <uint64_t>(n - 1))
        pos += write_varint(buf + pos, items[top].stop - 1 - items[top].start)
        previous = items[top].start
        for k in range(top - 1, top - n, -1):
            pos += write_varint(buf + pos, previous - items[k].stop - 1)
            pos += write_varint(buf + pos, items[k].stop - 1 - items[k].start)
            previous = items[k].start
        if has_ecn:
            for k in range(3):
                pos += write_varint(buf + pos, counts[k])
        return PyBytes_FromStringAndSize(<char *>buf, pos)
    finally:
        if buf != stack:
            PyMem_Free(buf)


def decode_ack(data, Py_ssize_t offset=0, Py_ssize_t max_ranges=DEFAULT_MAX_RANGES):
    """((frame type, path ID or -1, ranges, ack delay, ECN counts or None), offset after).

    Reads an ACK, ACK_ECN, PATH_ACK or PATH_ACK_ECN frame starting at its type.
    """
    cdef _View view = _View(data)
    cdef const uint8_t *p = view.data
    cdef Py_ssize_t end = view.size, pos = offset, k
    cdef uint64_t frame_type, path_id = 0, largest, delay, count, first, gap, length
    cdef uint64_t smallest, stop
    cdef int64_t pid = -1
    if read_varint(p, end, &pos, &frame_type) < 0:
        raise PacketError("varint: truncated")
    if frame_type == 0x3E or frame_type == 0x3F:
        if read_varint(p, end, &pos, &path_id) < 0:
            raise PacketError("varint: truncated")
        if path_id > <uint64_t>MAX_PATH_ID:
            raise PacketError(f"PATH_ACK: path ID {path_id}")
        pid = <int64_t>path_id
    elif frame_type != 0x02 and frame_type != 0x03:
        raise PacketError(f"not an ACK frame: {frame_type:#x}")
    if (read_varint(p, end, &pos, &largest) < 0 or read_varint(p, end, &pos, &delay) < 0
            or read_varint(p, end, &pos, &count) < 0):
        raise PacketError("varint: truncated")
    if count > <uint64_t>(end - pos):
        raise PacketError("ACK: range count beyond the frame")
    if read_varint(p, end, &pos, &first) < 0:
        raise PacketError("varint: truncated")
    if first > largest:
        raise PacketError("ACK: first range below zero")
    cdef RangeSet result = RangeSet(max_ranges=max_ranges)
    # Ranges arrive highest first; collect them, then add lowest first (dropping the lowest
    # past max_ranges, as the reference does).
    cdef pn_range *bounds = <pn_range *>PyMem_Malloc((count + 1) * sizeof(pn_range))
    if bounds == NULL:
        raise MemoryError()
    try:
        bounds[0].start = largest - first
        bounds[0].stop = largest + 1
        smallest = largest - first
        for k in range(1, <Py_ssize_t>count + 1):
            if read_varint(p, end, &pos, &gap) < 0 or read_varint(p, end, &pos, &length) < 0:
                raise PacketError("varint: truncated")
            if gap + 1 > smallest or smallest - gap - 1 < length + 1:
                raise PacketError("ACK: range below zero")
            stop = smallest - gap - 1
            bounds[k].start = stop - 1 - length
            bounds[k].stop = stop
            smallest = stop - 1 - length
        for k in range(<Py_ssize_t>count, -1, -1):
            result.add_c(bounds[k].start, bounds[k].stop)
    finally:
        PyMem_Free(bounds)
    cdef uint64_t ect0, ect1, ce
    ecn = None
    if frame_type == 0x03 or frame_type == 0x3F:
        if (read_varint(p, end, &pos, &ect0) < 0 or read_varint(p, end, &pos, &ect1) < 0
                or read_varint(p, end, &pos, &ce) < 0):
            raise PacketError("varint: truncated")
        ecn = (ect0, ect1, ce)
    return (frame_type, pid, result, delay, ecn), pos
