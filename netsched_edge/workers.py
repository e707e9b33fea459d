"""`netsched-edge --workers N`: N shared-nothing edge processes on one UDP port.

Every worker binds the port with SO_REUSEPORT, and a classic BPF program
steers each datagram by the second octet of its destination CID. Our CIDs
are QUIC-LB (draft-ietf-quic-load-balancers-21) with a one-byte server ID
there, equal to the worker's index, so every packet of a connection — on
every path, after any migration — reaches the worker that owns it, with no
shared state. A client's first Initial carries a CID it chose; the same
byte of it picks a worker deterministically, so its retransmissions and
0-RTT packets follow it.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import multiprocessing as mp
import os
import signal
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any

from netsched_client.proto.quic_lb import QuicLbConfig

from .config import EdgeConfig
from .keys import EdgeKeys
from .tls import generate_self_signed

log = logging.getLogger("netsched.edge.workers")

SO_ATTACH_REUSEPORT_CBPF = 51
# Classic BPF opcodes (linux/filter.h).
_LDB_ABS = 0x30  # A = packet[k]
_JSET = 0x45  # if A & k: skip jt else skip jf
_JA = 0x05  # skip k
_MOD = 0x94  # A %= k
_RET_A = 0x16  # return A
# Offsets into the UDP payload of the CID's second octet (the server ID).
_LONG_HEADER_SERVER_ID = 7  # flags(1) version(4) dcid_len(1) dcid[0](1)
_SHORT_HEADER_SERVER_ID = 2  # flags(1) dcid[0](1)


def steering_program(workers: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions: the socket index for a QUIC datagram."""
    return [
        (_LDB_ABS, 0, 0, 0),
        (_JSET, 0, 2, 0x80),  # long header?
        (_LDB_ABS, 0, 0, _LONG_HEADER_SERVER_ID),
        (_JA, 0, 0, 1),
        (_LDB_ABS, 0, 0, _SHORT_HEADER_SERVER_ID),
        (_MOD, 0, 0, workers),
        (_RET_A, 0, 0, 0),
    ]


class ReuseportSteering:
    """SO_REUSEPORT before bind (`__call__`), the steering program after (`attach`).

    The kernel keeps one program per reuseport group; a program attached to a
    socket before it joined the group would make it a group of its own.
    """

    def __init__(self, workers: int) -> None:
        program = steering_program(workers)
        self._filters = (ctypes.c_uint64 * len(program))(
            *(struct.unpack("<Q", struct.pack("<HBBI", *insn))[0] for insn in program)
        )
        self._fprog = struct.pack("HxxxxxxQ", len(program), ctypes.addressof(self._filters))

    def __call__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)

    def attach(self, fd: int) -> None:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, self._fprog)


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerIdentity:
    index: int
    count: int

    def quic_lb(self) -> QuicLbConfig:
        return QuicLbConfig(server_id=bytes([self.index]))


def _worker_main(config: EdgeConfig, identity: WorkerIdentity, ready: Any) -> None:
    from .server import EdgeServer  # in the child: nothing of the parent's loop is shared

    async def run() -> None:
        server = EdgeServer(config, worker=identity)
        await server.start()
        ready.put(server.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.close()

    asyncio.run(run())


class WorkerPool:
    """Starts the workers in index order (the kernel numbers reuseport sockets by bind order)."""

    def __init__(self, config: EdgeConfig, count: int) -> None:
        if not 1 <= count <= 255:
            raise ValueError(f"workers must be 1..255, got {count}")
        self.count = count
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.ca_certificate: Path | None = None
        self.config = self._with_shared_secrets(config)
        self._procs: list[Any] = []
        self.port = config.port

    def _with_shared_secrets(self, config: EdgeConfig) -> EdgeConfig:
        """All workers present one certificate and share one set of keys (Retry,
        stateless reset, tickets): those the config names, or made once here."""
        if config.certificate is not None and config.keys_file is not None:
            return config
        self._tmp = tempfile.TemporaryDirectory(prefix="netsched-workers-")
        tmp = Path(self._tmp.name)
        if config.certificate is None:
            pair = generate_self_signed(tmp)
            self.ca_certificate = pair.ca_certificate
            config = dataclasses.replace(
                config, certificate=pair.certificate, private_key=pair.private_key
            )
        if config.keys_file is None:
            keys_file = tmp / "keys.toml"
            EdgeKeys.generate().write(keys_file)
            config = dataclasses.replace(config, keys_file=keys_file)
        return config

    def start(self, timeout: float = 30.0) -> int:
        ctx = mp.get_context("spawn")
        for index in range(self.count):
            config = self.config if index == 0 else self._follower_config()
            ready = ctx.Queue()
            proc = ctx.Process(
                target=_worker_main,
                args=(config, WorkerIdentity(index, self.count), ready),
                daemon=True,
            )
            proc.start()
            self._procs.append(proc)
            self.port = ready.get(timeout=timeout)
        return self.port

    def _follower_config(self) -> EdgeConfig:
        # Same port as worker 0 (which may have picked it); admin endpoint on worker 0 only.
        return dataclasses.replace(self.config, port=self.port, admin_host=None, admin_port=None)

    def stop(self, timeout: float = 10.0) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
        if self._tmp is not None:
            self._tmp.cleanup()
