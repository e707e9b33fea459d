"""What both UDP socket implementations share: setup, validation, the send queue, stats.

The Cython socket (`_udp.pyx`) keeps only the per-datagram hot path in C; socket
creation, option probing, error messages and the EAGAIN queue live here once,
so the native class and the pure-Python reference cannot drift apart.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("netsched.io")

Address = tuple[Any, ...]  # asyncio's shape: (host, port) or (host, port, flowinfo, scope_id)
Datagram = tuple[bytes, Address]

SOL_UDP = 17
UDP_SEGMENT = 103  # GSO: the segment size, per socket or per sendmsg (cmsg)
UDP_GRO = 104  # GRO: deliver coalesced datagrams plus their segment size (cmsg)
# Linux's don't-fragment controls (the socket module does not name them): PROBE sets DF
# and ignores the kernel's path MTU cache, as a PMTU search (RFC 8899) wants.
IP_MTU_DISCOVER = 10
IPV6_MTU_DISCOVER = 23
PMTUDISC_PROBE = 3  # IP_PMTUDISC_PROBE and IPV6_PMTUDISC_PROBE
ECN_MASK = 0b11  # the low two bits of the TOS / traffic-class byte
MAX_BATCH = 1024  # UIO_MAXIOV: the kernel's cap on one sendmmsg/recvmmsg vector
DEFAULT_MAX_PENDING = 4096  # datagrams held after EAGAIN (~5 MB at 1200 B)

# Linux reports twice the asked buffer size (it counts its own bookkeeping).
_BUFFER_FACTOR = 2 if sys.platform == "linux" else 1
_BUFFERS = {
    socket.SO_RCVBUF: ("receive", "net.core.rmem_max"),
    socket.SO_SNDBUF: ("send", "net.core.wmem_max"),
}
_warned: set[int] = set()


@dataclass(frozen=True, slots=True)
class UdpStats:
    """Counters since the socket was opened (a snapshot; read `stats` again for fresh ones)."""

    syscalls_send: int  # sendmmsg/sendto calls, EAGAIN answers included
    syscalls_recv: int  # recvmmsg/recvmsg calls, EAGAIN answers included
    datagrams_sent: int  # handed to the kernel
    datagrams_received: int  # after GRO splitting
    gso_sends: int  # sendmmsg messages that carried a UDP_SEGMENT run
    gso_fallbacks: int  # times the kernel refused GSO at run time (then switched off)
    gro_batches: int  # received super-datagrams split into more than one datagram
    send_errors: int  # datagrams dropped on a hard send error (EMSGSIZE, ENETUNREACH…)
    send_overflow: int  # datagrams dropped because the pending queue was full
    recv_truncated: int  # datagrams dropped because they did not fit the receive buffer


class UdpSocket(Protocol):
    """The interface of `BatchedUdpSocket` and of its pure-Python reference `PyUdpSocket`."""

    on_blocked: Callable[[], None] | None

    @property
    def local_address(self) -> Address: ...
    @property
    def pending(self) -> int: ...
    @property
    def stats(self) -> UdpStats: ...
    @property
    def gso_enabled(self) -> bool: ...
    @property
    def gro_enabled(self) -> bool: ...
    @property
    def last_ecn(self) -> bytes: ...
    def fileno(self) -> int: ...
    def recv_batch(self) -> list[Datagram]: ...
    def send_batch(self, datagrams: list[Datagram]) -> int: ...
    def flush(self) -> int: ...
    def close(self) -> None: ...


class SendQueue:
    """Datagrams the kernel answered EAGAIN to, oldest first, at most `limit` of them.

    Kept as a list plus a head index so that a flush hands the sender the list
    and a start position without copying. The sending itself is the socket's
    `send_from`, so this ordering logic is shared by both implementations.
    """

    __slots__ = ("_head", "_items", "limit", "overflow")

    def __init__(self, limit: int) -> None:
        self._items: list[Datagram] = []
        self._head = 0
        self.limit = limit
        self.overflow = 0

    def __len__(self) -> int:
        return len(self._items) - self._head

    def push(self, datagrams: list[Datagram], start: int) -> None:
        """Queue `datagrams[start:]` behind what is queued; drop what exceeds the limit.

        Tail drop: the newest datagrams are the ones QUIC loss recovery can
        resend at least cost, and order among the kept ones is preserved.
        """
        if self._head:
            del self._items[: self._head]
            self._head = 0
        room = max(self.limit - len(self._items), 0)
        stop = min(len(datagrams), start + room)
        self._items.extend(datagrams[start:stop])
        self.overflow += len(datagrams) - stop

    def send(
        self,
        datagrams: list[Datagram],
        send_from: Callable[[list[Datagram], int], int],
        on_blocked: Callable[[], None] | None,
    ) -> None:
        """Send `datagrams` in order behind anything queued; queue what the kernel refuses.

        `send_from(items, i)` sends items[i:] and returns the index of the first
        datagram it could not hand over (EAGAIN). `on_blocked` is called when
        the queue turns non-empty: the caller then waits for writability and
        calls `flush`.
        """
        if len(self):
            self.push(datagrams, 0)
            self.flush(send_from)
            return
        next_index = send_from(datagrams, 0)
        if next_index < len(datagrams):
            self.push(datagrams, next_index)
            if len(self) and on_blocked is not None:
                on_blocked()

    def flush(self, send_from: Callable[[list[Datagram], int], int]) -> None:
        """Retry the queued datagrams, oldest first."""
        if len(self):
            self._advance(send_from(self._items, self._head))

    def _advance(self, head: int) -> None:
        """Forget everything before `head` (it was sent or dropped)."""
        if head >= len(self._items):
            self._items = []
            head = 0
        self._head = head

    def clear(self) -> None:
        self._items = []
        self._head = 0


def check_options(
    family: int, batch: int, rcvbuf: int, sndbuf: int, ecn: int, max_pending: int
) -> None:
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"family must be AF_INET or AF_INET6, got {family!r}")
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be 1..{MAX_BATCH}, got {batch!r}")
    for name, size in (("rcvbuf", rcvbuf), ("sndbuf", sndbuf)):
        if size <= 0:
            raise ValueError(f"{name} must be positive, got {size!r}")
    if not 0 <= ecn <= ECN_MASK:
        raise ValueError(f"ecn must be an ECN codepoint 0..3, got {ecn!r}")
    if max_pending < 0:
        raise ValueError(f"max_pending must be >= 0, got {max_pending!r}")


SocketSetup = Callable[[socket.socket], None]


def open_socket(
    family: int,
    local: Address,
    rcvbuf: int,
    sndbuf: int,
    ecn: int,
    setup: SocketSetup | None = None,
) -> socket.socket:
    """A bound, non-blocking UDP socket with buffers sized and ECN set up.

    `setup` runs just before bind (e.g. SO_REUSEPORT and a steering program).
    """
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        _set_buffer(sock, socket.SO_RCVBUF, rcvbuf)
        _set_buffer(sock, socket.SO_SNDBUF, sndbuf)
        _setup_ecn(sock, family, ecn)
        if setup is not None:
            setup(sock)
        sock.bind(local)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_buffer(sock: socket.socket, option: int, size: int) -> None:
    sock.setsockopt(socket.SOL_SOCKET, option, size)
    got = sock.getsockopt(socket.SOL_SOCKET, option) // _BUFFER_FACTOR
    if got < size and option not in _warned:
        _warned.add(option)  # once per process: an edge opens many sockets
        direction, sysctl = _BUFFERS[option]
        log.warning(
            "UDP %s buffer capped by the kernel at %d bytes (asked for %d): "
            "raise the limit with `sysctl -w %s=%d`",
            direction,
            got,
            size,
            sysctl,
            size,
        )


def _setup_ecn(sock: socket.socket, family: int, ecn: int) -> None:
    """Ask for the TOS/traffic class of received datagrams; mark outgoing ones with `ecn`.

    An AF_INET6 socket also gets the IPv4 options, for v4-mapped peers.
    ECN is best effort: options the platform lacks or refuses are skipped.
    """
    levels = [(socket.IPPROTO_IP, "IP_RECVTOS", "IP_TOS")]
    if family == socket.AF_INET6:
        levels.append((socket.IPPROTO_IPV6, "IPV6_RECVTCLASS", "IPV6_TCLASS"))
    for level, receive, mark in levels:
        _try_option(sock, level, getattr(socket, receive, None), 1)
        if ecn:  # else leave the default traffic class alone
            _try_option(sock, level, getattr(socket, mark, None), ecn)


def enable_offloads(sock: socket.socket, gso: bool, gro: bool) -> tuple[bool, bool]:
    """Probe UDP GSO and switch on UDP GRO; each is False where the kernel refuses."""
    gso_ok = gso and _try_option(sock, SOL_UDP, UDP_SEGMENT, 0)  # 0: no socket-wide size
    gro_ok = gro and _try_option(sock, SOL_UDP, UDP_GRO, 1)
    return gso_ok, gro_ok


def set_dont_fragment(sock: socket.socket) -> bool:
    """Send with DF and never fragment locally: a datagram too big for the interface fails
    (EMSGSIZE, counted as a drop) instead of leaving in fragments. QUIC sockets only: the
    forwarder relays whatever the apps send. False where the platform refuses."""
    done = _try_option(sock, socket.IPPROTO_IP, IP_MTU_DISCOVER, PMTUDISC_PROBE)
    if sock.family == socket.AF_INET6:
        done = _try_option(sock, socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, PMTUDISC_PROBE) or done
    return done


def _try_option(sock: socket.socket, level: int, optname: int | None, value: int) -> bool:
    if optname is None:
        return False
    try:
        sock.setsockopt(level, optname, value)
    except OSError as exc:  # ENOPROTOOPT on old kernels and other platforms
        log.debug("socket option %d/%d refused: %s", level, optname, exc)
        return False
    return True


def check_datagram(family: int, index: int, item: object) -> None:
    """Raise TypeError/ValueError unless `item` is a sendable (bytes, address) pair."""
    if not isinstance(item, tuple) or len(item) != 2:
        raise TypeError(
            f"send_batch: datagrams[{index}] must be a (bytes, address) tuple, got {item!r:.80}"
        )
    data, addr = item
    if not isinstance(data, bytes):
        raise TypeError(
            f"send_batch: datagrams[{index}][0] must be bytes, got {type(data).__name__}"
        )
    check_address(family, addr)


def check_address(family: int, addr: object) -> None:
    """Raise TypeError/ValueError unless `addr` is a numeric destination for `family`."""
    v6 = family == socket.AF_INET6
    shape = "(host, port[, flowinfo[, scope_id]])" if v6 else "(host, port)"
    sizes = (2, 3, 4) if v6 else (2,)
    if not isinstance(addr, tuple) or len(addr) not in sizes:
        raise TypeError(f"destination address must be a tuple {shape}, got {addr!r:.80}")
    host, port, *rest = addr
    if not isinstance(host, str):
        raise TypeError(f"destination host must be a str, got {host!r:.80}")
    if type(port) is not int or not 0 < port < 65536:
        raise ValueError(f"destination port must be an int 1..65535, got {port!r:.80}")
    try:
        socket.inet_pton(family, host)
    except OSError:
        kind = "IPv6 address (scope as the 4th item)" if v6 else "IPv4 address"
        raise ValueError(
            f"destination host must be a numeric {kind} for this socket, got {host!r:.80}"
        ) from None
    for name, value, top in zip(("flowinfo", "scope_id"), rest, (1 << 20, 1 << 32), strict=False):
        if type(value) is not int or not 0 <= value < top:
            raise ValueError(f"destination {name} must be an int 0..{top - 1}, got {value!r:.80}")
