"""A single-threaded socket loop around one picoquic context, and its control channel.

picoquic's own `picoquic_packet_loop` binds the wildcard address; this loop
binds only the loopback addresses it is given, and knows which socket is which
path, so a test stays on 127.0.0.1/127.0.0.2. picoquic is driven the way its
packet loop does: `incoming_packet_ex` for each datagram, `prepare_next_packet_ex`
until it has nothing to send, then sleep until `get_next_wake_delay`. All
callbacks therefore run on this thread, as picoquic requires.

Reports go to stdout as one JSON object per line. stdin, when it is the
control channel (the tests' programs), takes the line `stats` (a path-quality
snapshot) and stops at end of file; SIGTERM stops the loop too (the interop
runner's way), so the context is freed and its qlog and key log are complete.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any

from ..multipath import report
from . import capi

MAX_WAIT_US = 20_000  # the app's tick runs at least this often
RECV_BUFFER = 65536
SEND_BUFFER = 1536  # one packet per prepare call (no GSO)
SOCKET_BUFFER = 4 << 20
RECV_BURST = 64  # datagrams taken per wake-up before sending again, as picoquic's loop does
SEND_BURST = 64


def guarded(function: Callable[..., int]) -> Callable[..., int]:
    """A picoquic callback that reports its exception instead of swallowing it.

    ctypes would print the traceback and return 0 ("all is well") to C.
    """

    @functools.wraps(function)
    def wrapper(*args: Any) -> int:
        try:
            return function(*args)
        except Exception as exc:
            traceback.print_exc()
            report("error", where=function.__name__, error=f"{type(exc).__name__}: {exc}")
            return -1

    return wrapper


def udp_socket(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


class PacketLoop:
    def __init__(self, quic: int, sockets: list[socket.socket], *, control: bool = True) -> None:
        self.quic = quic
        self.sockets = {sock.getsockname(): sock for sock in sockets}
        self._local = {sock: capi.sockaddr(sock.getsockname()) for sock in sockets}
        self._default = sockets[0]
        self._recv = ctypes.create_string_buffer(RECV_BUFFER)
        self._send = ctypes.create_string_buffer(SEND_BUFFER)
        self._selector = selectors.DefaultSelector()
        for sock in sockets:
            self._selector.register(sock, selectors.EVENT_READ)
        if control:
            self._selector.register(sys.stdin.fileno(), selectors.EVENT_READ)
        self._stdin = b""
        self.running = True
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.on_tick: Callable[[int], None] = lambda now: None
        self.on_stats: Callable[[], None] = lambda: None

    def run(self) -> None:
        while self.running:
            now = int(capi.current_time())
            self.on_tick(now)
            self._send_all(now)
            if not self.running:
                break
            delay = capi.get_next_wake_delay(self.quic, now, MAX_WAIT_US)
            for key, _ in self._selector.select(max(delay, 0) / 1e6):
                if isinstance(key.fileobj, socket.socket):
                    self._receive(key.fileobj)
                else:
                    self._control()

    def _receive(self, sock: socket.socket) -> None:
        first_cnx = ctypes.c_void_p()
        for _ in range(RECV_BURST):
            try:
                size, peer = sock.recvfrom_into(self._recv)
            except BlockingIOError:
                return
            capi.incoming_packet_ex(
                self.quic,
                self._recv,
                size,
                ctypes.byref(capi.sockaddr(peer)),
                ctypes.byref(self._local[sock]),
                0,
                0,
                ctypes.byref(first_cnx),
                capi.current_time(),
            )

    def _send_all(self, now: int) -> None:
        length = ctypes.c_size_t()
        to, source = capi.SockaddrStorage(), capi.SockaddrStorage()
        if_index = ctypes.c_int()
        log_cid = ctypes.create_string_buffer(64)
        last_cnx = ctypes.c_void_p()
        for _ in range(SEND_BURST):
            ret = capi.prepare_next_packet_ex(
                self.quic,
                now,
                self._send,
                SEND_BUFFER,
                ctypes.byref(length),
                ctypes.byref(to),
                ctypes.byref(source),
                ctypes.byref(if_index),
                log_cid,
                ctypes.byref(last_cnx),
                None,
            )
            destination = capi.address_of(to)
            if ret != 0 or length.value == 0 or destination is None:
                return
            sock = self.sockets.get(capi.address_of(source) or ("", 0), self._default)
            # A full socket buffer is a lost packet; QUIC recovers it.
            with contextlib.suppress(BlockingIOError):
                sock.sendto(memoryview(self._send)[: length.value], destination)

    def _on_sigterm(self, _signal: int, _frame: Any) -> None:
        # select() is resumed after the handler (PEP 475) and returns within MAX_WAIT_US.
        self.running = False

    def _control(self) -> None:
        data = os.read(sys.stdin.fileno(), 4096)
        if not data:
            self.running = False
            return
        self._stdin += data
        *lines, self._stdin = self._stdin.split(b"\n")
        for line in lines:
            if line.strip() == b"stats":
                self.on_stats()
