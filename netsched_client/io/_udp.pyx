# cython: language_level=3
"""Batched UDP I/O for Linux: recvmmsg + UDP GRO in, sendmmsg + UDP GSO out.

One `recv_batch` is one recvmmsg; one `send_batch` is one sendmmsg per
`batch` messages, where a run of same-size datagrams to one destination
travels as a single GSO message (one iovec per datagram, no copy): the send
loop is _mmsg.pyx's, shared with the edge's relay. The only Python objects
made per datagram are the received `bytes` and its (bytes, address) pair;
address tuples are cached both ways.

Send errors, per message (_mmsg.pyx): EAGAIN stops the flush and the rest
waits in the pending queue; EIO/EINVAL on a GSO message switches GSO off for
good and the run is resent datagram by datagram; any other error drops that
message's datagrams (QUIC recovers from loss) and is counted.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree, PyMem_RawMalloc
from libc.errno cimport errno
from libc.string cimport memcmp, memcpy, memset, strlen

from ._mmsg cimport GSO_MAX_SEGMENTS, outbox_close, outbox_open, outbox_send
from .includes.system cimport (
    AF_INET,
    AF_INET6,
    CMSG_DATA,
    CMSG_FIRSTHDR,
    CMSG_NXTHDR,
    EINTR,
    INET6_ADDRSTRLEN,
    IP_TOS,
    IPPROTO_IP,
    IPPROTO_IPV6,
    IPV6_TCLASS,
    MSG_TRUNC,
    NS_WOULD_BLOCK,
    SOL_UDP,
    UDP_GRO,
    cmsghdr,
    htonl,
    htons,
    inet_ntop,
    inet_pton,
    ns_recvmmsg,
    ntohl,
    ntohs,
    sockaddr_in,
    sockaddr_in6,
)

import errno as _errno
import os

from ._common import (
    DEFAULT_MAX_PENDING,
    SendQueue,
    UdpStats,
    check_address,
    check_datagram,
    check_options,
    enable_offloads,
    log,
    open_socket,
)


cdef enum:
    RECV_SLOT = 65536  # the largest UDP payload, and a full GRO super-datagram, fit
    CTRL_SPACE = 128  # room for UDP_GRO + IP_TOS + IPV6_TCLASS control messages
    ECN_MASK = 3


@cython.final
cdef class BatchedUdpSocket:
    """A bound, non-blocking UDP socket that moves datagrams in batches (see module doc)."""

    def __cinit__(self):
        self._fd = -1  # closed until __init__ has bound a socket

    def __init__(self, family, local, *, batch=64, gso=True, gro=True, rcvbuf=4 << 20,
                 sndbuf=4 << 20, ecn=0, max_pending=DEFAULT_MAX_PENDING, setup=None):
        check_options(family, batch, rcvbuf, sndbuf, ecn, max_pending)
        if self._rmsgs != NULL:
            raise RuntimeError("BatchedUdpSocket is already initialised")
        self._allocate(batch)
        sock = open_socket(family, local, rcvbuf, sndbuf, ecn, setup)
        self._out.gso, self._gro = enable_offloads(sock, bool(gso), bool(gro))
        self._sock = sock
        self._fd = sock.fileno()
        self._family = family
        self._batch = batch
        self.local_address = sock.getsockname()
        self._queue = SendQueue(max_pending)
        self._rkeys = [None] * ADDR_CACHE
        self._dkeys = [None] * ADDR_CACHE
        self._prepare_recv()

    def __dealloc__(self):
        PyMem_RawFree(self._rmsgs)
        PyMem_RawFree(self._riov)
        PyMem_RawFree(self._rnames)
        PyMem_RawFree(self._rctrl)
        PyMem_RawFree(self._rbuf)
        PyMem_RawFree(self._recn)
        PyMem_RawFree(self._rsegs)
        PyMem_RawFree(self._snames)
        outbox_close(&self._out)

    cdef int _allocate(self, int batch) except -1:
        cdef size_t b = batch
        self._rmsgs = <ns_mmsghdr *>PyMem_RawCalloc(b, sizeof(ns_mmsghdr))
        self._riov = <iovec *>PyMem_RawCalloc(b, sizeof(iovec))
        self._rnames = <sockaddr_storage *>PyMem_RawCalloc(b, sizeof(sockaddr_storage))
        self._rctrl = <char *>PyMem_RawCalloc(b, CTRL_SPACE)
        self._rbuf = <char *>PyMem_RawMalloc(b * RECV_SLOT)  # pages fault in as used
        self._recn = <unsigned char *>PyMem_RawCalloc(b, 1)
        self._rsegs = <int *>PyMem_RawCalloc(b, sizeof(int))
        # up to `batch` messages of up to GSO_MAX_SEGMENTS datagrams per sendmmsg
        self._snames = <sockaddr_in6 *>PyMem_RawCalloc(b * GSO_MAX_SEGMENTS, sizeof(sockaddr_in6))
        if (self._rmsgs == NULL or self._riov == NULL or self._rnames == NULL
                or self._rctrl == NULL or self._rbuf == NULL or self._recn == NULL
                or self._rsegs == NULL or self._snames == NULL):
            raise MemoryError("BatchedUdpSocket: cannot allocate batch buffers")
        outbox_open(&self._out, batch, batch * GSO_MAX_SEGMENTS)
        return 0

    cdef void _prepare_recv(self) noexcept:
        cdef int i
        cdef msghdr *hdr
        for i in range(self._batch):
            self._riov[i].iov_base = self._rbuf + <size_t>i * RECV_SLOT
            self._riov[i].iov_len = RECV_SLOT
            hdr = &self._rmsgs[i].msg_hdr
            hdr.msg_iov = &self._riov[i]
            hdr.msg_iovlen = 1
            hdr.msg_name = &self._rnames[i]
            hdr.msg_control = self._rctrl + <size_t>i * CTRL_SPACE

    cdef int _check_open(self) except -1:
        if self._fd < 0:
            raise OSError(_errno.EBADF, "BatchedUdpSocket is closed")
        return 0

    # -- the Python surface --------------------------------------------------

    def fileno(self):
        return self._fd

    @property
    def pending(self):
        """Datagrams waiting for the socket to become writable (then call `flush`)."""
        return len(self._queue) if self._queue is not None else 0

    @property
    def gso_enabled(self):
        return self._out.gso

    @property
    def gro_enabled(self):
        return self._gro

    @property
    def stats(self):
        return UdpStats(
            syscalls_send=self._out.syscalls,
            syscalls_recv=self._syscalls_recv,
            datagrams_sent=self._out.sent,
            datagrams_received=self._datagrams_received,
            gso_sends=self._out.gso_sends,
            gso_fallbacks=self._out.gso_fallbacks,
            gro_batches=self._gro_batches,
            send_errors=self._out.dropped,
            send_overflow=self._queue.overflow if self._queue is not None else 0,
            recv_truncated=self._recv_truncated,
        )

    @property
    def last_ecn(self):
        """The ECN codepoint of each datagram the last `recv_batch` returned, one byte each."""
        cdef bytearray out = bytearray()
        cdef int i
        for i in range(self._rn):
            out += bytes((self._recn[i],)) * self._rsegs[i]
        return bytes(out)

    def close(self):
        if self._fd < 0:
            return
        self._fd = -1
        self._queue.clear()
        self._sock.close()

    # -- receive ---------------------------------------------------------------

    def recv_batch(self):
        """Up to `batch` messages with one recvmmsg, GRO ones split; [] when none are waiting."""
        cdef int i, n, err
        self._check_open()
        for i in range(self._batch):  # the kernel shrank these to what it wrote last time
            self._rmsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
            self._rmsgs[i].msg_hdr.msg_controllen = CTRL_SPACE
        self._rn = 0
        while True:
            n = ns_recvmmsg(self._fd, self._rmsgs, self._batch)
            self._syscalls_recv += 1
            if n >= 0:
                break
            err = errno
            if err == EINTR:
                continue
            if NS_WOULD_BLOCK(err):
                return []
            raise OSError(err, os.strerror(err))
        self._rn = n
        return self._collect(n)

    cdef list _collect(self, int n):
        cdef list out = []
        cdef int i, count
        cdef int segment
        cdef int tclass
        cdef unsigned char ecn
        cdef Py_ssize_t length, offset, piece
        cdef char *base
        cdef msghdr *hdr
        cdef cmsghdr *cmsg
        for i in range(n):
            hdr = &self._rmsgs[i].msg_hdr
            self._rsegs[i] = 0
            if hdr.msg_flags & MSG_TRUNC:
                self._recv_truncated += 1
                continue
            segment = 0
            ecn = 0
            cmsg = CMSG_FIRSTHDR(hdr)
            while cmsg != NULL:
                if cmsg.cmsg_level == SOL_UDP and cmsg.cmsg_type == UDP_GRO:
                    memcpy(&segment, CMSG_DATA(cmsg), sizeof(int))
                elif cmsg.cmsg_level == IPPROTO_IP and cmsg.cmsg_type == IP_TOS:
                    ecn = CMSG_DATA(cmsg)[0] & ECN_MASK
                elif cmsg.cmsg_level == IPPROTO_IPV6 and cmsg.cmsg_type == IPV6_TCLASS:
                    memcpy(&tclass, CMSG_DATA(cmsg), sizeof(int))
                    ecn = tclass & ECN_MASK
                cmsg = CMSG_NXTHDR(hdr, cmsg)
            addr = self._source(<sockaddr_storage *>hdr.msg_name, hdr.msg_namelen)
            base = self._rbuf + <size_t>i * RECV_SLOT
            length = self._rmsgs[i].msg_len
            if segment <= 0 or segment >= length:
                out.append((PyBytes_FromStringAndSize(base, length), addr))
                count = 1
            else:  # a GRO super-datagram: every segment but the last is `segment` long
                count = 0
                offset = 0
                while offset < length:
                    piece = min(<Py_ssize_t>segment, length - offset)
                    out.append((PyBytes_FromStringAndSize(base + offset, piece), addr))
                    offset += piece
                    count += 1
                self._gro_batches += 1
            self._recn[i] = ecn
            self._rsegs[i] = count
            self._datagrams_received += count
        return out

    cdef object _source(self, sockaddr_storage *sa, socklen_t salen):
        cdef int k = self._rlast
        if salen == 0:
            return ()
        if self._rclen[k] == salen and memcmp(&self._rcache[k], sa, salen) == 0:
            return self._rkeys[k]
        for k in range(ADDR_CACHE):
            if self._rclen[k] == salen and memcmp(&self._rcache[k], sa, salen) == 0:
                self._rlast = k
                return self._rkeys[k]
        addr = _sockaddr_to_tuple(sa)
        k = self._rnext
        self._rnext = (k + 1) % ADDR_CACHE
        memcpy(&self._rcache[k], sa, salen)
        self._rclen[k] = salen
        self._rkeys[k] = addr
        self._rlast = k
        return addr

    # -- send ------------------------------------------------------------------

    def send_batch(self, list datagrams):
        """Send (bytes, address) pairs in order; return how many the kernel took now.

        Raises TypeError/ValueError, sending nothing, if any item is malformed.
        If datagrams are already pending, these queue behind them. What the
        kernel refuses with EAGAIN stays queued (`pending`; tail-dropped
        beyond `max_pending`) and `on_blocked` is called when the queue
        becomes non-empty: wait for writability, then `flush`.
        """
        self._check_open()
        self._validate(datagrams)
        cdef unsigned long long before = self._out.sent
        self._queue.send(datagrams, self._send_from, self.on_blocked)
        return self._out.sent - before

    def flush(self):
        """Retry the pending datagrams; return how many the kernel took."""
        self._check_open()
        cdef unsigned long long before = self._out.sent
        self._queue.flush(self._send_from)
        return self._out.sent - before

    cdef int _validate(self, list datagrams) except -1:
        # All or nothing: a bad item must not leave half a flush on the wire.
        cdef Py_ssize_t i
        for i in range(len(datagrams)):
            item = datagrams[i]
            if not (isinstance(item, tuple) and len(<tuple>item) == 2
                    and isinstance((<tuple>item)[0], bytes)):
                check_datagram(self._family, i, item)
                raise TypeError(f"send_batch: datagrams[{i}] is not sendable: {item!r:.80}")
            self._dest_slot((<tuple>item)[1])
        return 0

    cpdef Py_ssize_t _send_from(self, list items, Py_ssize_t i) except -1:
        """Send items[i:]; return the index of the first datagram not yet handled."""
        cdef Py_ssize_t n = len(items)
        cdef int count, done
        cdef unsigned long long fallbacks, dropped
        while i < n:
            count = self._load(items, i, n)
            fallbacks = self._out.gso_fallbacks
            dropped = self._out.dropped
            done = outbox_send(&self._out, self._fd, count, False)
            self._log_faults(items, i, fallbacks, dropped)
            i += done
            if done < count:
                break  # EAGAIN: the rest waits for writability
        return i

    cdef int _load(self, list items, Py_ssize_t i, Py_ssize_t n) except -1:
        """Queue items[i:n] in the outbox, as many as fit; return how many."""
        cdef int j = 0
        cdef int slot
        last = None
        while i + j < n and j < self._out.capacity:
            item = <tuple>items[i + j]
            data = <bytes>item[0]
            addr = item[1]
            self._out.iov[j].iov_base = PyBytes_AS_STRING(data)
            self._out.iov[j].iov_len = PyBytes_GET_SIZE(data)
            if addr is last:  # a burst to one peer: the same name, and a GSO run may follow
                self._out.name[j] = self._out.name[j - 1]
                self._out.namelen[j] = self._out.namelen[j - 1]
            else:  # a copy: the address cache may reuse the slot within this send
                slot = self._dest_slot(addr)
                memcpy(&self._snames[j], &self._dcache[slot], self._dclen[slot])
                self._out.name[j] = &self._snames[j]
                self._out.namelen[j] = self._dclen[slot]
                last = addr
            j += 1
        return j

    cdef int _log_faults(self, list items, Py_ssize_t i, unsigned long long fallbacks,
                         unsigned long long dropped) except -1:
        """Log what the last outbox_send of items[i:] refused (the stats count it)."""
        if self._out.gso_fallbacks != fallbacks:
            log.info("UDP GSO refused by the kernel (%s): sending datagrams one by one",
                     os.strerror(self._out.gso_errno))
        if self._out.dropped != dropped:
            log.debug("UDP send to %r failed, %d datagram(s) dropped: %s",
                      (<tuple>items[i + self._out.drop_at])[1], self._out.dropped - dropped,
                      os.strerror(self._out.drop_errno))
        return 0

    # -- destination addresses --------------------------------------------------

    cdef int _dest_slot(self, object addr) except -1:
        """The cache slot holding addr's sockaddr, parsing it on a miss."""
        cdef int k = self._dlast
        if self._dkeys[k] is addr:
            return k
        for k in range(ADDR_CACHE):
            if self._dkeys[k] is addr:
                self._dlast = k
                return k
        for k in range(ADDR_CACHE):
            key = self._dkeys[k]
            if key is not None and key == addr:
                self._dkeys[k] = addr  # the next lookup of this object hits by identity
                self._dlast = k
                return k
        k = self._dnext
        self._parse_dest(addr, k)
        self._dnext = (k + 1) % ADDR_CACHE
        self._dlast = k
        return k

    cdef int _parse_dest(self, object addr, int slot) except -1:
        """Parse addr into cache slot `slot`, or raise the reference checker's error."""
        cdef sockaddr_storage parsed
        cdef socklen_t length = 0
        memset(&parsed, 0, sizeof(parsed))
        if not _fill_sockaddr(self._family, addr, &parsed, &length):
            check_address(self._family, addr)
            raise ValueError(f"unusable destination address {addr!r:.80}")
        memcpy(&self._dcache[slot], &parsed, sizeof(parsed))
        self._dclen[slot] = length
        self._dkeys[slot] = addr
        return 0


cdef bint _fill_sockaddr(int family, object addr, sockaddr_storage *out,
                         socklen_t *length) except -1:
    """Parse a numeric (host, port[, flowinfo, scope_id]) tuple; False if it is not one."""
    cdef sockaddr_in *v4
    cdef sockaddr_in6 *v6
    if not isinstance(addr, tuple):
        return False
    cdef tuple parts = <tuple>addr
    cdef Py_ssize_t n = len(parts)
    if n < 2 or n > (4 if family == AF_INET6 else 2):
        return False
    host, port = parts[0], parts[1]
    if not isinstance(host, str) or type(port) is not int or not 0 < port < 65536:
        return False
    try:
        host_bytes = (<str>host).encode("ascii")
    except UnicodeEncodeError:
        return False
    if family == AF_INET:
        v4 = <sockaddr_in *>out
        v4.sin_family = AF_INET
        v4.sin_port = htons(port)
        length[0] = sizeof(sockaddr_in)
        return inet_pton(AF_INET, host_bytes, &v4.sin_addr) == 1
    flowinfo = parts[2] if n > 2 else 0
    scope_id = parts[3] if n > 3 else 0
    if type(flowinfo) is not int or not 0 <= flowinfo < (1 << 20):
        return False
    if type(scope_id) is not int or not 0 <= scope_id < (1 << 32):
        return False
    v6 = <sockaddr_in6 *>out
    v6.sin6_family = AF_INET6
    v6.sin6_port = htons(port)
    v6.sin6_flowinfo = htonl(flowinfo)
    v6.sin6_scope_id = scope_id
    length[0] = sizeof(sockaddr_in6)
    return inet_pton(AF_INET6, host_bytes, &v6.sin6_addr) == 1


cdef object _sockaddr_to_tuple(sockaddr_storage *sa):
    """Python's own shapes: (host, port) and (host, port, flowinfo, scope_id)."""
    cdef char host[INET6_ADDRSTRLEN]
    cdef sockaddr_in *v4
    cdef sockaddr_in6 *v6
    if sa.ss_family == AF_INET:
        v4 = <sockaddr_in *>sa
        inet_ntop(AF_INET, &v4.sin_addr, host, sizeof(host))
        return (host[:strlen(host)].decode("ascii"), ntohs(v4.sin_port))
    if sa.ss_family == AF_INET6:
        v6 = <sockaddr_in6 *>sa
        inet_ntop(AF_INET6, &v6.sin6_addr, host, sizeof(host))
        return (host[:strlen(host)].decode("ascii"), ntohs(v6.sin6_port),
                ntohl(v6.sin6_flowinfo), v6.sin6_scope_id)
    return ()
