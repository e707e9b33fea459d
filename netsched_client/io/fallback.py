"""The pure-Python UDP socket: one sendto/recvmsg per datagram.

Selected where the Cython socket is unavailable (no compiler, not Linux) and
used as the reference the native socket is tested against. Same interface,
same validation, same EAGAIN queue (all from `_common`); no GSO or GRO.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Callable

from ._common import (
    DEFAULT_MAX_PENDING,
    ECN_MASK,
    Address,
    Datagram,
    SendQueue,
    SocketSetup,
    UdpStats,
    check_datagram,
    check_options,
    log,
    open_socket,
)

_MAX_PAYLOAD = 65535
_ECN_LEVELS = {
    (socket.IPPROTO_IP, getattr(socket, "IP_TOS", -1)),
    (socket.IPPROTO_IPV6, getattr(socket, "IPV6_TCLASS", -1)),
}
_ANCILLARY_SPACE = 2 * socket.CMSG_SPACE(4)  # IP_TOS and IPV6_TCLASS at most


class PyUdpSocket:
    """A bound, non-blocking UDP socket with the `BatchedUdpSocket` interface."""

    def __init__(
        self,
        family: int,
        local: Address,
        *,
        batch: int = 64,
        gso: bool = True,
        gro: bool = True,
        rcvbuf: int = 4 << 20,
        sndbuf: int = 4 << 20,
        ecn: int = 0,
        max_pending: int = DEFAULT_MAX_PENDING,
        setup: SocketSetup | None = None,
    ) -> None:
        # gso/gro are accepted for a common signature; this socket has neither.
        check_options(family, batch, rcvbuf, sndbuf, ecn, max_pending)
        self._sock = open_socket(family, local, rcvbuf, sndbuf, ecn, setup)
        self._family = family
        self._batch = batch
        self._queue = SendQueue(max_pending)
        self._fd = self._sock.fileno()
        self.local_address: Address = self._sock.getsockname()
        self.on_blocked: Callable[[], None] | None = None
        self._last_ecn = b""
        self._syscalls_send = self._syscalls_recv = 0
        self._sent = self._received = self._send_errors = self._truncated = 0

    def fileno(self) -> int:
        return self._fd

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def gso_enabled(self) -> bool:
        return False

    @property
    def gro_enabled(self) -> bool:
        return False

    @property
    def last_ecn(self) -> bytes:
        return self._last_ecn

    @property
    def stats(self) -> UdpStats:
        return UdpStats(
            syscalls_send=self._syscalls_send,
            syscalls_recv=self._syscalls_recv,
            datagrams_sent=self._sent,
            datagrams_received=self._received,
            gso_sends=0,
            gso_fallbacks=0,
            gro_batches=0,
            send_errors=self._send_errors,
            send_overflow=self._queue.overflow,
            recv_truncated=self._truncated,
        )

    def close(self) -> None:
        if self._fd < 0:
            return
        self._fd = -1
        self._queue.clear()
        self._sock.close()

    def _check_open(self) -> None:
        if self._fd < 0:
            raise OSError(errno.EBADF, "PyUdpSocket is closed")

    def recv_batch(self) -> list[Datagram]:
        self._check_open()
        out: list[Datagram] = []
        ecn = bytearray()
        for _ in range(self._batch):
            self._syscalls_recv += 1
            try:
                data, ancillary, flags, addr = self._sock.recvmsg(_MAX_PAYLOAD, _ANCILLARY_SPACE)
            except BlockingIOError:
                break
            if flags & socket.MSG_TRUNC:
                self._truncated += 1
                continue
            out.append((data, addr))
            ecn.append(_ecn_of(ancillary))
        self._received += len(out)
        self._last_ecn = bytes(ecn)
        return out

    def send_batch(self, datagrams: list[Datagram]) -> int:
        self._check_open()
        for index, item in enumerate(datagrams):
            check_datagram(self._family, index, item)
        before = self._sent
        self._queue.send(datagrams, self._send_from, self.on_blocked)
        return self._sent - before

    def flush(self) -> int:
        self._check_open()
        before = self._sent
        self._queue.flush(self._send_from)
        return self._sent - before

    def _send_from(self, items: list[Datagram], index: int) -> int:
        """Send items[index:]; return the index of the first datagram not yet handled."""
        while index < len(items):
            data, addr = items[index]
            self._syscalls_send += 1
            try:
                self._sock.sendto(data, addr)
            except BlockingIOError:
                return index
            except OSError as exc:  # dropped: QUIC treats it as loss
                self._send_errors += 1
                log.debug("UDP send to %r failed, 1 datagram(s) dropped: %s", addr, exc)
            else:
                self._sent += 1
            index += 1
        return index


def _ecn_of(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, value in ancillary:
        if (level, kind) in _ECN_LEVELS and value:
            # IP_TOS arrives as one byte, IPV6_TCLASS as a native int
            return int.from_bytes(value, sys.byteorder) & ECN_MASK
    return 0
