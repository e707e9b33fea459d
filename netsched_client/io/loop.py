"""Drive a batched UDP socket from an asyncio (or uvloop) event loop.

Readiness callbacks only: one wake-up reads up to MAX_BATCHES_PER_WAKEUP
batches and hands each to `on_batch` once, so Python runs once per batch,
never once per datagram. A writer is registered only while sends are pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ._common import Datagram, UdpSocket, log

# Bounded so one busy socket cannot starve timers and other sockets on the loop.
MAX_BATCHES_PER_WAKEUP = 4


def read_waiting(sock: UdpSocket, on_batch: Callable[[list[Datagram]], None]) -> None:
    """Read what the kernel holds for `sock` (up to MAX_BATCHES_PER_WAKEUP batches) into
    `on_batch`; a receive error (an ICMP error reported on the socket) is logged and ends
    the read, the rest waits for the next one."""
    for _ in range(MAX_BATCHES_PER_WAKEUP):
        try:
            batch = sock.recv_batch()
        except OSError as exc:
            log.debug("UDP receive error: %s", exc)
            return
        if not batch:
            return
        on_batch(batch)


def attach(
    loop: asyncio.AbstractEventLoop,
    sock: UdpSocket,
    on_batch: Callable[[list[Datagram]], None],
) -> Callable[[], None]:
    """Start reading `sock` into `on_batch` and flushing its pending sends; return `detach`.

    Call `detach()` before `sock.close()`. A readiness wake-up is one `read_waiting`.
    """
    fd = sock.fileno()

    def on_readable() -> None:
        read_waiting(sock, on_batch)

    def on_writable() -> None:
        sock.flush()
        if not sock.pending:
            loop.remove_writer(fd)

    def on_blocked() -> None:
        loop.add_writer(fd, on_writable)

    def detach() -> None:
        loop.remove_reader(fd)
        loop.remove_writer(fd)
        sock.on_blocked = None

    sock.on_blocked = on_blocked
    loop.add_reader(fd, on_readable)
    if sock.pending:
        on_blocked()
    return detach
