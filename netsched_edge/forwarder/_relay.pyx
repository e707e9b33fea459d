# cython: language_level=3
"""The UDP forwarder's data path in C: clients ⇄ front socket ⇄ per-flow sockets ⇄ backends.

`relay_front` is one recvmmsg on the front socket, a flow-table lookup per
datagram, then one sendmmsg per flow (that flow's datagrams, in arrival
order, straight from the receive slots: no copy). `relay_upstream` is one
epoll_wait(0) over every flow's socket, a recvmmsg per ready flow into a
shared set of slots, then one sendmmsg on the front socket addressed to the
clients. Python runs only when a client without a flow arrives (`choose`),
once per call, and for stats. The flow-table rules are in flows.py.

With `gso`, a run of same-size datagrams of one flow (the last may be
shorter) leaves as one UDP GSO message: the stack is walked once per run and
the datagrams are cut apart at the end (receivers still see datagrams).
EIO/EINVAL on a GSO message switches GSO off for good and the run is resent
datagram by datagram, as in netsched_client/io/_udp.pyx.

Not carried: ECN marks (no per-datagram control messages are asked for);
UDP GRO stays off, so the kernel hands over datagrams one by one.

Other send errors drop datagrams and are counted (UDP; nothing is queued):
EAGAIN drops the rest of that send, ECONNREFUSED on a flow socket (the
backend answered ICMP port unreachable) drops the rest and closes the flow,
any other error drops the message it names.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree, PyMem_RawMalloc
from libc.errno cimport errno
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

from netsched_client.io.includes.system cimport (
    CMSG_DATA,
    CMSG_FIRSTHDR,
    CMSG_LEN,
    CMSG_SPACE,
    EINTR,
    EINVAL,
    EIO,
    MSG_TRUNC,
    NS_WOULD_BLOCK,
    SOL_UDP,
    UDP_SEGMENT,
    cmsghdr,
    msghdr,
    ns_recvmmsg,
    ns_sendmmsg,
    sockaddr,
)

from ._linux cimport (
    ECONNREFUSED,
    EPOLL_CLOEXEC,
    EPOLL_CTL_ADD,
    EPOLLIN,
    SO_RCVBUF,
    SOL_SOCKET,
    close,
    connect,
    epoll_create1,
    epoll_ctl,
    epoll_wait,
    ns_flow_socket,
    setsockopt,
)

import errno as _errno
import os

from netsched_client.io._common import enable_offloads

from .flows import (
    DEFAULT_BATCH,
    DEFAULT_BUFFER,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_FLOWS,
    FLOW_RCVBUF,
    ForwarderStats,
    address_of,
    backend_index,
    check_options,
    open_front,
    sockaddr_bytes,
    warn_once,
)


cdef extern from *:
    """
    #define NS_HASH_MULTIPLIER 0x9E3779B97F4A7C15ULL  /* 2^64 / golden ratio */
    """
    uint64_t NS_HASH_MULTIPLIER


cdef enum:
    SLOT = 65536  # the largest UDP payload fits
    NO_FLOW = -1
    CTRL_SPACE = 32  # one UDP_SEGMENT control message
    GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS on older kernels (newer allow 128)
    GSO_MAX_BYTES = 65507  # one IPv4 packet's UDP payload


cdef inline uint32_t _hash(const sockaddr_in6 *name, socklen_t length, uint64_t seed) noexcept:
    """A seeded multiplicative hash of the sockaddr's 32-bit words (clients pick their ports)."""
    cdef const unsigned char *p = <const unsigned char *>name
    cdef uint64_t h = seed
    cdef uint32_t word
    cdef socklen_t i = 0
    while i + 4 <= length:
        memcpy(&word, p + i, 4)
        h = (h ^ word) * NS_HASH_MULTIPLIER
        h ^= h >> 29
        i += 4
    return <uint32_t>(h ^ (h >> 32))


@cython.final
cdef class UdpRelay:
    """A UDP load balancer's data path (see the module doc and flows.py)."""

    def __cinit__(self):
        self._front_fd = -1  # closed until __init__ has opened everything
        self._epfd = -1

    def __init__(self, listen, backends, choose, *, max_flows=DEFAULT_MAX_FLOWS,
                 idle_timeout=DEFAULT_IDLE_TIMEOUT, batch=DEFAULT_BATCH, rcvbuf=DEFAULT_BUFFER,
                 sndbuf=DEFAULT_BUFFER, gso=True):
        options = check_options(listen, backends, max_flows=max_flows,
                                idle_timeout=idle_timeout, batch=batch, rcvbuf=rcvbuf,
                                sndbuf=sndbuf)
        if not callable(choose):
            raise TypeError(f"choose must be callable, got {choose!r:.80}")
        if self._flows != NULL:
            raise RuntimeError("UdpRelay is already initialised")
        self._allocate(options.batch, options.max_flows, len(options.backends))
        for b, backend in enumerate(options.backends):
            raw = sockaddr_bytes(backend)
            memcpy(&self._backends[b], PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
            self._backend_len[b] = PyBytes_GET_SIZE(raw)
        self.batch = options.batch
        self.idle_timeout = options.idle_timeout
        self._choose = choose
        self._flow_rcvbuf = FLOW_RCVBUF
        self._seed = int.from_bytes(os.urandom(8), "little")
        self._prepare()
        self._epfd = epoll_create1(EPOLL_CLOEXEC)
        if self._epfd < 0:
            raise OSError(errno, os.strerror(errno))
        sock = open_front(options)
        self._gso = enable_offloads(sock, bool(gso), False)[0]  # probes the kernel
        self._sock = sock
        self._front_fd = sock.fileno()
        self.local_address = sock.getsockname()

    def __dealloc__(self):
        cdef int f
        if self._flows != NULL:
            for f in range(self._max_flows):
                if self._flows[f].fd >= 0:
                    close(self._flows[f].fd)
        if self._epfd >= 0:
            close(self._epfd)
        PyMem_RawFree(self._flows)
        PyMem_RawFree(self._buckets)
        PyMem_RawFree(self._backends)
        PyMem_RawFree(self._backend_len)
        PyMem_RawFree(self._refused)
        PyMem_RawFree(self._rmsgs)
        PyMem_RawFree(self._riov)
        PyMem_RawFree(self._rnames)
        PyMem_RawFree(self._rbuf)
        PyMem_RawFree(self._rnext)
        PyMem_RawFree(self._active)
        PyMem_RawFree(self._events)
        PyMem_RawFree(self._pmsgs)
        PyMem_RawFree(self._piov)
        PyMem_RawFree(self._pbuf)
        PyMem_RawFree(self._smsgs)
        PyMem_RawFree(self._siov)
        PyMem_RawFree(self._sflow)
        PyMem_RawFree(self._sfirst)
        PyMem_RawFree(self._scount)
        PyMem_RawFree(self._sctrl)

    cdef int _allocate(self, int batch, int max_flows, int nbackends) except -1:
        cdef size_t b = batch
        cdef uint32_t buckets = 1
        while buckets < <uint32_t>max_flows:  # a load factor of at most 1
            buckets <<= 1
        self._mask = buckets - 1
        self._max_flows = max_flows
        self._nbackends = nbackends
        self._flows = <Flow *>PyMem_RawCalloc(max_flows, sizeof(Flow))
        self._buckets = <int *>PyMem_RawMalloc(buckets * sizeof(int))
        self._backends = <sockaddr_in6 *>PyMem_RawCalloc(nbackends, sizeof(sockaddr_in6))
        self._backend_len = <socklen_t *>PyMem_RawCalloc(nbackends, sizeof(socklen_t))
        self._refused = <uint64_t *>PyMem_RawCalloc(nbackends, sizeof(uint64_t))
        self._rmsgs = <ns_mmsghdr *>PyMem_RawCalloc(b, sizeof(ns_mmsghdr))
        self._riov = <iovec *>PyMem_RawCalloc(b, sizeof(iovec))
        self._rnames = <sockaddr_in6 *>PyMem_RawCalloc(b, sizeof(sockaddr_in6))
        self._rbuf = <char *>PyMem_RawMalloc(b * SLOT)  # pages fault in as used
        self._rnext = <int *>PyMem_RawCalloc(b, sizeof(int))
        self._active = <int *>PyMem_RawCalloc(b, sizeof(int))
        self._events = <epoll_event *>PyMem_RawCalloc(b, sizeof(epoll_event))
        self._pmsgs = <ns_mmsghdr *>PyMem_RawCalloc(b, sizeof(ns_mmsghdr))
        self._piov = <iovec *>PyMem_RawCalloc(b, sizeof(iovec))
        self._pbuf = <char *>PyMem_RawMalloc(b * SLOT)
        self._smsgs = <ns_mmsghdr *>PyMem_RawCalloc(b, sizeof(ns_mmsghdr))
        self._siov = <iovec *>PyMem_RawCalloc(b, sizeof(iovec))
        self._sflow = <int *>PyMem_RawCalloc(b, sizeof(int))
        self._sfirst = <int *>PyMem_RawCalloc(b, sizeof(int))
        self._scount = <int *>PyMem_RawCalloc(b, sizeof(int))
        self._sctrl = <char *>PyMem_RawCalloc(b, CTRL_SPACE)
        if (self._flows == NULL or self._buckets == NULL or self._backends == NULL
                or self._backend_len == NULL or self._refused == NULL or self._rmsgs == NULL
                or self._riov == NULL or self._rnames == NULL or self._rbuf == NULL
                or self._rnext == NULL or self._active == NULL or self._events == NULL
                or self._pmsgs == NULL or self._piov == NULL or self._pbuf == NULL
                or self._smsgs == NULL or self._siov == NULL or self._sflow == NULL
                or self._sfirst == NULL or self._scount == NULL or self._sctrl == NULL):
            raise MemoryError("UdpRelay: cannot allocate the flow table and batch buffers")
        return 0

    cdef void _prepare(self) noexcept:
        """Empty table (every slot on the free list); receive slots wired to their buffers."""
        cdef int i
        cdef msghdr *hdr
        for i in range(self._mask + 1):
            self._buckets[i] = NO_FLOW
        for i in range(self._max_flows):
            self._flows[i].fd = -1
            self._flows[i].next = i + 1 if i + 1 < self._max_flows else NO_FLOW
        self._free = 0
        self._oldest = self._newest = self._last = NO_FLOW
        for i in range(self.batch):
            self._riov[i].iov_base = self._rbuf + <size_t>i * SLOT
            self._riov[i].iov_len = SLOT
            hdr = &self._rmsgs[i].msg_hdr
            hdr.msg_iov = &self._riov[i]
            hdr.msg_iovlen = 1
            hdr.msg_name = &self._rnames[i]
            self._piov[i].iov_base = self._pbuf + <size_t>i * SLOT
            self._piov[i].iov_len = SLOT
            hdr = &self._pmsgs[i].msg_hdr  # connected sockets: no source address needed
            hdr.msg_iov = &self._piov[i]
            hdr.msg_iovlen = 1

    cdef int _check_open(self) except -1:
        if self._front_fd < 0:
            raise OSError(_errno.EBADF, "UdpRelay is closed")
        return 0

    # -- the Python surface --------------------------------------------------

    def fileno(self):
        """The front socket: readable when clients have sent datagrams."""
        return self._front_fd

    def upstream_fileno(self):
        """The epoll descriptor over every flow socket: readable when backends have replied."""
        return self._epfd

    @property
    def stats(self):
        return ForwarderStats(
            from_clients=self._from_clients,
            to_backends=self._to_backends,
            from_backends=self._from_backends,
            to_clients=self._to_clients,
            active_flows=self._count,
            flows_opened=self._flows_opened,
            flows_expired=self._flows_expired,
            flows_failed=self._flows_failed,
            flows_refused=self._flows_refused,
            backend_refused=self._backend_refused,
            no_backend=self._no_backend,
            choose_errors=self._choose_errors,
            open_errors=self._open_errors,
            unrouted=self._unrouted,
            send_errors=self._send_errors,
            gso_sends=self._gso_sends,
            gso_fallbacks=self._gso_fallbacks,
            recv_truncated=self._recv_truncated,
            syscalls_recv=self._syscalls_recv,
            syscalls_send=self._syscalls_send,
            refused_by_backend=tuple(self._refused[b] for b in range(self._nbackends)),
        )

    def close(self):
        """Close every flow, the epoll descriptor and the front socket (idempotent)."""
        cdef int f
        if self._front_fd < 0:
            return
        for f in range(self._max_flows):
            if self._flows[f].fd >= 0:
                self._close_flow(f)
        close(self._epfd)
        self._epfd = -1
        self._front_fd = -1
        self._sock.close()

    def expire(self, double now):
        """Close the flows idle at `now`; return how many."""
        cdef int closed = 0
        while self._evict_idle(now):
            closed += 1
        return closed

    # -- clients → backends --------------------------------------------------

    def relay_front(self, double now):
        """One recvmmsg from clients, relayed per flow; return the datagrams read (0: none)."""
        cdef int i, n, f
        cdef msghdr *hdr
        self._check_open()
        for i in range(self.batch):  # the kernel shrank these to what it wrote last time
            self._rmsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in6)
        n = self._recv(self._front_fd, self._rmsgs, self.batch)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        self._from_clients += n
        self._seq += 1
        self._nactive = 0
        for i in range(n):
            hdr = &self._rmsgs[i].msg_hdr
            if hdr.msg_flags & MSG_TRUNC:
                self._recv_truncated += 1
                continue
            f = self._find(<sockaddr_in6 *>hdr.msg_name, hdr.msg_namelen, now)
            if f == NO_FLOW:
                f = self._open_flow(<sockaddr_in6 *>hdr.msg_name, hdr.msg_namelen, now)
                if self._front_fd < 0:
                    return n  # `choose` closed the relay: its flows are gone
                if f == NO_FLOW:
                    self._unrouted += 1
                    continue
            self._queue(f, i)
        for i in range(self._nactive):
            self._send_upstream(self._active[i])
        return n

    cdef void _queue(self, int f, int i) noexcept:
        """Append datagram i to flow f's chain for this batch."""
        cdef Flow *flow = &self._flows[f]
        self._rnext[i] = NO_FLOW
        if flow.seq != self._seq:
            flow.seq = self._seq
            flow.first = i
            self._active[self._nactive] = f
            self._nactive += 1
        else:
            self._rnext[flow.tail] = i
        flow.tail = i

    cdef int _send_upstream(self, int f) except -1:
        """Send flow f's datagrams of this batch, in order, from their receive slots."""
        cdef Flow *flow = &self._flows[f]
        cdef int i = flow.first
        cdef int n = 0
        cdef int fatal = 0
        while i != NO_FLOW:
            self._siov[n].iov_base = self._riov[i].iov_base
            self._siov[n].iov_len = self._rmsgs[i].msg_len
            self._sflow[n] = f
            n += 1
            i = self._rnext[i]
        self._to_backends += self._transmit(flow.fd, n, True, &fatal)
        if fatal:
            self._fail(f, fatal)
        return 0

    # -- backends → clients --------------------------------------------------

    def relay_upstream(self, double now):
        """Replies from every ready flow, relayed to their clients; return how many (0: none)."""
        cdef int e, n, f, got
        cdef int k = 0  # receive slots used
        cdef uint64_t data
        cdef uint64_t before = self._from_backends
        self._check_open()
        n = epoll_wait(self._epfd, self._events, self.batch, 0)
        if n < 0:
            if errno == EINTR:
                return 0
            raise OSError(errno, os.strerror(errno))
        self._nqueued = 0
        for e in range(n):
            data = self._events[e].data.u64
            f = <int><uint32_t>data
            if self._flows[f].fd < 0 or self._flows[f].gen != <uint32_t>(data >> 32):
                continue  # closed since the event was queued
            if k == self.batch:
                self._to_clients += self._transmit(self._front_fd, self._nqueued, False, NULL)
                k = self._nqueued = 0
            got = self._receive_replies(f, k)
            if got > 0:
                self._touch(f, now)
                k += got
        if self._nqueued:
            self._to_clients += self._transmit(self._front_fd, self._nqueued, False, NULL)
        return self._from_backends - before

    cdef int _receive_replies(self, int f, int k) noexcept:
        """recvmmsg flow f's replies into slots k.. and queue them for its client.

        Return how many slots were filled (truncated replies are counted, not
        queued); a receive error closes the flow.
        """
        cdef Flow *flow = &self._flows[f]
        cdef int got = self._recv(flow.fd, &self._pmsgs[k], self.batch - k)
        cdef int j
        cdef int q = self._nqueued
        if got < 0:
            self._fail(f, -got)
            return 0
        self._from_backends += got
        for j in range(k, k + got):
            if self._pmsgs[j].msg_hdr.msg_flags & MSG_TRUNC:
                self._recv_truncated += 1
                continue
            self._siov[q].iov_base = self._piov[j].iov_base
            self._siov[q].iov_len = self._pmsgs[j].msg_len
            self._sflow[q] = f
            q += 1
        self._nqueued = q
        return got

    # -- syscalls --------------------------------------------------------------

    cdef int _recv(self, int fd, ns_mmsghdr *msgs, int count) noexcept:
        """recvmmsg, EINTR retried: the datagrams read, 0 if none are waiting, -errno."""
        cdef int n, err
        while True:
            n = ns_recvmmsg(fd, msgs, count)
            self._syscalls_recv += 1
            if n >= 0:
                return n
            err = errno
            if err == EINTR:
                continue
            if NS_WOULD_BLOCK(err):
                return 0
            return -err

    cdef int _transmit(self, int fd, int n, bint connected, int *fatal) except -1:
        """Send the n datagrams queued in _siov/_sflow; return how many the kernel took."""
        cdef int j = 0
        cdef int sent = 0
        cdef int m, k, r, err
        while j < n:
            m = self._plan(j, n, connected)
            k = 0
            while k < m:
                r = ns_sendmmsg(fd, &self._smsgs[k], m - k)
                self._syscalls_send += 1
                if r > 0:
                    sent += self._count_sent(k, k + r)
                    k += r
                    continue
                err = errno
                if err == EINTR:
                    continue
                if self._scount[k] > 1 and (err == EIO or err == EINVAL):
                    self._refuse_gso(err)
                    break  # re-plan from this run without GSO
                if NS_WOULD_BLOCK(err) or (connected and err == ECONNREFUSED):
                    self._send_errors += n - self._sfirst[k]
                    if connected and err == ECONNREFUSED:
                        fatal[0] = err
                    return sent
                self._send_errors += self._scount[k]
                k += 1
            j = self._sfirst[k] if k < m else n
        return sent

    cdef int _plan(self, int j, int n, bint connected) noexcept:
        """Plan datagrams j..n-1 into _smsgs, a GSO run per message if allowed; return how many.

        Replies carry their client's address (a run never spans two flows);
        flow sockets are connected and carry none.
        """
        cdef int m = 0
        cdef int count
        cdef Flow *flow
        cdef msghdr *hdr
        while j < n:
            count = self._run_length(j, n) if self._gso else 1
            hdr = &self._smsgs[m].msg_hdr
            hdr.msg_iov = &self._siov[j]
            hdr.msg_iovlen = count
            if connected:
                hdr.msg_name = NULL
                hdr.msg_namelen = 0
            else:
                flow = &self._flows[self._sflow[j]]
                hdr.msg_name = &flow.client
                hdr.msg_namelen = flow.client_len
            self._set_segment(hdr, m, self._siov[j].iov_len if count > 1 else 0)
            self._sfirst[m] = j
            self._scount[m] = count
            j += count
            m += 1
        return m

    cdef int _run_length(self, int j, int n) noexcept:
        """How many datagrams from j form a GSO run: one flow, one size (the last may be less)."""
        cdef size_t size = self._siov[j].iov_len
        cdef size_t total = size
        cdef size_t next_size
        cdef int count = 1
        if size == 0:
            return 1
        while (j + count < n and count < GSO_MAX_SEGMENTS
               and self._sflow[j + count] == self._sflow[j]):
            next_size = self._siov[j + count].iov_len
            if next_size == 0 or next_size > size or total + next_size > GSO_MAX_BYTES:
                break
            count += 1
            total += next_size
            if next_size < size:
                break  # a short datagram can only end a run
        return count

    cdef void _set_segment(self, msghdr *hdr, int m, size_t segment) noexcept:
        """Attach a UDP_SEGMENT control message (segment > 0) or none."""
        cdef cmsghdr *cmsg
        cdef uint16_t value = <uint16_t>segment
        if segment == 0:
            hdr.msg_control = NULL
            hdr.msg_controllen = 0
            return
        hdr.msg_control = self._sctrl + <size_t>m * CTRL_SPACE
        hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
        cmsg = CMSG_FIRSTHDR(hdr)
        cmsg.cmsg_level = SOL_UDP
        cmsg.cmsg_type = UDP_SEGMENT
        cmsg.cmsg_len = CMSG_LEN(sizeof(uint16_t))
        memcpy(CMSG_DATA(cmsg), &value, sizeof(uint16_t))

    cdef int _count_sent(self, int first, int last) noexcept:
        cdef int k
        cdef int sent = 0
        for k in range(first, last):
            sent += self._scount[k]
            if self._scount[k] > 1:
                self._gso_sends += 1
        return sent

    cdef int _refuse_gso(self, int err) except -1:
        self._gso = False
        self._gso_fallbacks += 1
        warn_once("gso", "UDP forwarder: GSO refused by the kernel (%s): sending datagrams one "
                  "by one", os.strerror(err))
        return 0

    # -- the flow table ----------------------------------------------------------

    cdef int _find(self, sockaddr_in6 *name, socklen_t length, double now) noexcept:
        """The client's flow, refreshed at `now`; NO_FLOW if it has none."""
        cdef int f = self._last
        if f == NO_FLOW or not self._same(f, name, length):
            f = self._buckets[_hash(name, length, self._seed) & self._mask]
            while f != NO_FLOW and not self._same(f, name, length):
                f = self._flows[f].next
            if f == NO_FLOW:
                return NO_FLOW
            self._last = f
        self._touch(f, now)
        return f

    cdef bint _same(self, int f, sockaddr_in6 *name, socklen_t length) noexcept:
        return (self._flows[f].client_len == length
                and memcmp(&self._flows[f].client, name, length) == 0)

    cdef void _touch(self, int f, double now) noexcept:
        """Mark flow f active at `now`: it moves to the newest end of the list."""
        self._flows[f].last_active = now
        if self._newest == f:
            return
        self._unlink(f)
        self._flows[f].older = self._newest
        self._flows[f].newer = NO_FLOW
        if self._newest != NO_FLOW:
            self._flows[self._newest].newer = f
        self._newest = f
        if self._oldest == NO_FLOW:
            self._oldest = f

    cdef void _unlink(self, int f) noexcept:
        """Take flow f out of the least-recently-active list (a no-op if it is not in it)."""
        cdef Flow *flow = &self._flows[f]
        if flow.older != NO_FLOW:
            self._flows[flow.older].newer = flow.newer
        elif self._oldest == f:
            self._oldest = flow.newer
        if flow.newer != NO_FLOW:
            self._flows[flow.newer].older = flow.older
        elif self._newest == f:
            self._newest = flow.older
        flow.older = flow.newer = NO_FLOW

    cdef int _open_flow(self, sockaddr_in6 *name, socklen_t length, double now) except -2:
        """A new flow for this client, or NO_FLOW (counted); the only Python per flow."""
        cdef int f, fd
        if self._count >= self._max_flows and not self._evict_idle(now):
            self._flows_refused += 1
            return NO_FLOW
        client = address_of(PyBytes_FromStringAndSize(<char *>name, length))
        try:
            choice = backend_index(self._choose(client), self._nbackends)
        except Exception as exc:
            self._choose_errors += 1
            warn_once("choose", "UDP forwarder: choose(%r) failed, datagram dropped: %r",
                      client, exc)
            return NO_FLOW
        if choice is None:
            self._no_backend += 1
            return NO_FLOW
        if self._front_fd < 0:
            return NO_FLOW  # `choose` closed the relay
        f = self._free
        fd = self._connect(choice, f)
        if fd < 0:
            self._open_errors += 1
            warn_once("open", "UDP forwarder: cannot open a socket to backend %d: %s",
                      choice, os.strerror(-fd))
            return NO_FLOW
        self._insert(f, fd, choice, name, length, now)
        return f

    cdef int _connect(self, int b, int f) noexcept:
        """A socket connected to backend b, registered for slot f; -errno on failure."""
        cdef int size = self._flow_rcvbuf
        cdef int err
        cdef epoll_event event
        cdef int fd = ns_flow_socket((<sockaddr *>&self._backends[b]).sa_family)
        if fd < 0:
            return -errno
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size))  # best effort
        event.events = EPOLLIN
        event.data.u64 = (<uint64_t>self._flows[f].gen << 32) | <uint32_t>f
        if (connect(fd, <sockaddr *>&self._backends[b], self._backend_len[b]) < 0
                or epoll_ctl(self._epfd, EPOLL_CTL_ADD, fd, &event) < 0):
            err = errno
            close(fd)
            return -err
        return fd

    cdef void _insert(self, int f, int fd, int b, sockaddr_in6 *name, socklen_t length,
                      double now) noexcept:
        cdef Flow *flow = &self._flows[f]
        self._free = flow.next
        memcpy(&flow.client, name, length)
        flow.client_len = length
        flow.hash = _hash(name, length, self._seed)
        flow.fd = fd
        flow.backend = b
        flow.seq = 0
        flow.older = flow.newer = NO_FLOW
        flow.next = self._buckets[flow.hash & self._mask]
        self._buckets[flow.hash & self._mask] = f
        self._touch(f, now)
        self._count += 1
        self._flows_opened += 1
        self._last = f

    cdef bint _evict_idle(self, double now) noexcept:
        """Close the least recently active flow if it is idle at `now`; True if one was."""
        cdef int f = self._oldest
        if f == NO_FLOW or now - self._flows[f].last_active < self.idle_timeout:
            return False
        self._close_flow(f)
        self._flows_expired += 1
        return True

    cdef void _fail(self, int f, int err) noexcept:
        """Close flow f after a socket error; ECONNREFUSED means its backend is down."""
        if err == ECONNREFUSED:
            self._backend_refused += 1
            self._refused[self._flows[f].backend] += 1
        self._flows_failed += 1
        self._close_flow(f)

    cdef void _close_flow(self, int f) noexcept:
        cdef Flow *flow = &self._flows[f]
        cdef int *link = &self._buckets[flow.hash & self._mask]
        while link[0] != f and link[0] != NO_FLOW:
            link = &self._flows[link[0]].next
        link[0] = flow.next
        self._unlink(f)
        close(flow.fd)  # which also takes it out of the epoll set
        flow.fd = -1
        flow.gen += 1
        flow.next = self._free
        self._free = f
        self._count -= 1
        if self._last == f:
            self._last = NO_FLOW
