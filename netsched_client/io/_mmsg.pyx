# cython: language_level=3
"""The batched UDP send loop, in C, for `_udp.BatchedUdpSocket` and the edge's `UdpRelay`.

The caller queues datagrams in an `Outbox` (pointers to its own buffers, no
copy) and calls `outbox_send`; the datagrams leave in order, `messages` per
sendmmsg. With `gso`, a run of datagrams to one destination, all the size of
the first except that the last may be shorter, within the kernel's segment
and byte limits, leaves as one message with a UDP_SEGMENT control message.

Send errors, per message:
- EINTR is retried.
- EIO/EINVAL on a GSO message: the kernel cannot segment here; GSO is
  switched off for good and the run is planned again datagram by datagram
  (quinn-udp does the same).
- EAGAIN, and ECONNREFUSED on a connected socket (ICMP port unreachable):
  the send stops; `outbox_send` returns the first datagram not sent and
  `stop` says why. What to do with the rest is the caller's choice.
- Anything else drops that message's datagrams (counted) and goes on.

No Python objects and no GIL: logging is the caller's, from the counters.
"""

from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree
from libc.errno cimport errno
from libc.stdint cimport uint16_t
from libc.string cimport memcmp, memcpy, memset

from .includes.system cimport (
    CMSG_DATA,
    CMSG_FIRSTHDR,
    CMSG_LEN,
    CMSG_SPACE,
    ECONNREFUSED,
    EINTR,
    EINVAL,
    EIO,
    NS_WOULD_BLOCK,
    SOL_UDP,
    UDP_SEGMENT,
    cmsghdr,
    msghdr,
    ns_sendmmsg,
)


cdef enum:
    CTRL_SPACE = 32  # one UDP_SEGMENT control message (CMSG_SPACE(2) is 24 on LP64)


cdef int outbox_open(Outbox *box, int messages, int capacity) except -1:
    """Allocate room for `capacity` datagrams in `messages` messages; GSO starts off."""
    cdef size_t m = messages
    cdef size_t d = capacity
    memset(box, 0, sizeof(Outbox))
    box.iov = <iovec *>PyMem_RawCalloc(d, sizeof(iovec))
    box.name = <void **>PyMem_RawCalloc(d, sizeof(void *))
    box.namelen = <socklen_t *>PyMem_RawCalloc(d, sizeof(socklen_t))
    box.msgs = <ns_mmsghdr *>PyMem_RawCalloc(m, sizeof(ns_mmsghdr))
    box.first = <int *>PyMem_RawCalloc(m, sizeof(int))
    box.count = <int *>PyMem_RawCalloc(m, sizeof(int))
    box.size = <size_t *>PyMem_RawCalloc(m, sizeof(size_t))
    box.ctrl = <char *>PyMem_RawCalloc(m, CTRL_SPACE)
    if (box.iov == NULL or box.name == NULL or box.namelen == NULL or box.msgs == NULL
            or box.first == NULL or box.count == NULL or box.size == NULL or box.ctrl == NULL):
        outbox_close(box)
        raise MemoryError("cannot allocate the UDP send batch buffers")
    box.capacity = capacity
    box.messages = messages
    return 0


cdef void outbox_close(Outbox *box) noexcept:
    """Free the buffers (idempotent; a zeroed Outbox is closed already)."""
    PyMem_RawFree(box.iov)
    PyMem_RawFree(box.name)
    PyMem_RawFree(box.namelen)
    PyMem_RawFree(box.msgs)
    PyMem_RawFree(box.first)
    PyMem_RawFree(box.count)
    PyMem_RawFree(box.size)
    PyMem_RawFree(box.ctrl)
    memset(box, 0, sizeof(Outbox))


cdef int outbox_send(Outbox *box, int fd, int n, bint connected) noexcept nogil:
    """Send queued datagrams 0..n-1 in order; return the first not handled (n: all were).

    Handled means sent or dropped on a hard error (module doc); a return
    below n means the send stopped, and `box.stop` holds the errno why.
    """
    cdef int j = 0
    cdef int m, k, sent, err
    box.stop = 0
    while j < n:
        m = _plan(box, j, n, connected)
        k = 0
        while k < m:
            sent = ns_sendmmsg(fd, &box.msgs[k], m - k)
            box.syscalls += 1
            if sent > 0:
                _count_sent(box, k, k + sent)
                k += sent
                continue
            err = errno
            if err == EINTR:
                continue
            if box.count[k] > 1 and (err == EIO or err == EINVAL):
                box.gso = False
                box.gso_fallbacks += 1
                box.gso_errno = err
                break  # plan again from this run, without GSO
            if NS_WOULD_BLOCK(err) or (connected and err == ECONNREFUSED):
                box.stop = err
                return box.first[k]
            box.dropped += box.count[k]
            box.drop_errno = err
            box.drop_at = box.first[k]
            k += 1
        j = box.first[k] if k < m else box.first[m - 1] + box.count[m - 1]
    return n


cdef int _plan(Outbox *box, int j, int n, bint connected) noexcept nogil:
    """Plan datagrams from j into at most `messages` messages; return how many."""
    cdef int m = 0
    cdef int count = 1
    cdef size_t size
    cdef msghdr *hdr
    while j < n and m < box.messages:
        size = box.iov[j].iov_len
        if box.gso:
            count = _run_length(box, j, n, connected, &size)
        hdr = &box.msgs[m].msg_hdr
        hdr.msg_iov = &box.iov[j]
        hdr.msg_iovlen = count
        if connected:
            hdr.msg_name = NULL
            hdr.msg_namelen = 0
        else:
            hdr.msg_name = box.name[j]
            hdr.msg_namelen = box.namelen[j]
        _set_segment(box, hdr, m, box.iov[j].iov_len if count > 1 else 0)
        box.first[m] = j
        box.count[m] = count
        box.size[m] = size
        j += count
        m += 1
    return m


cdef int _run_length(Outbox *box, int j, int n, bint connected, size_t *total) noexcept nogil:
    """How many datagrams from j form a GSO run: one destination, one size (the last may be less).

    `total` is the first datagram's size on entry, the run's bytes on return.
    """
    cdef size_t size = total[0]
    cdef size_t next_size
    cdef int count = 1
    if size == 0:
        return 1
    while j + count < n and count < GSO_MAX_SEGMENTS:
        next_size = box.iov[j + count].iov_len
        if next_size == 0 or next_size > size or total[0] + next_size > GSO_MAX_BYTES:
            break
        if not connected and not _same_name(box, j, j + count):
            break
        count += 1
        total[0] += next_size
        if next_size < size:
            break  # a short datagram can only end a run
    return count


cdef inline bint _same_name(Outbox *box, int a, int b) noexcept nogil:
    return box.name[a] == box.name[b] or (
        box.namelen[a] == box.namelen[b] and memcmp(box.name[a], box.name[b], box.namelen[a]) == 0)


cdef void _set_segment(Outbox *box, msghdr *hdr, int m, size_t segment) noexcept nogil:
    """Attach a UDP_SEGMENT control message (segment > 0) or none."""
    cdef cmsghdr *cmsg
    cdef uint16_t value = <uint16_t>segment
    if segment == 0:
        hdr.msg_control = NULL
        hdr.msg_controllen = 0
        return
    hdr.msg_control = box.ctrl + <size_t>m * CTRL_SPACE
    hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
    cmsg = CMSG_FIRSTHDR(hdr)
    cmsg.cmsg_level = SOL_UDP
    cmsg.cmsg_type = UDP_SEGMENT
    cmsg.cmsg_len = CMSG_LEN(sizeof(uint16_t))
    memcpy(CMSG_DATA(cmsg), &value, sizeof(uint16_t))


cdef void _count_sent(Outbox *box, int first, int last) noexcept nogil:
    cdef int k
    for k in range(first, last):
        box.sent += box.count[k]
        box.bytes_sent += box.size[k]
        if box.count[k] > 1:
            box.gso_sends += 1
