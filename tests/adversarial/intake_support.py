"""Hostile and hand-made QUIC datagrams for the intake tests, and a raw UDP peer.

Everything goes over real loopback sockets; the datagrams are built with
aioquic's public packet code (no private attributes).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicFrameType,
    QuicHeader,
    QuicPacketType,
    QuicProtocolVersion,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder

CID_LENGTH = 8


def garbage_initial(size: int = 1200, dcid: bytes | None = None) -> bytes:
    """A datagram whose long header parses as a v1 Initial; the rest is random (no keys open it)."""
    dcid = dcid or os.urandom(CID_LENGTH)
    scid = os.urandom(CID_LENGTH)
    head = bytes([0xC3]) + QuicProtocolVersion.VERSION_1.to_bytes(4, "big")
    head += bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + b"\x00"  # no token
    rest = size - len(head) - 2
    return head + (0x4000 | rest).to_bytes(2, "big") + os.urandom(rest)


def ping_initial(dcid: bytes | None = None) -> bytes:
    """A client Initial that decrypts but holds no CRYPTO (PING + PADDING): no ClientHello."""
    dcid = dcid or os.urandom(CID_LENGTH)
    crypto = CryptoPair()
    crypto.setup_initial(cid=dcid, is_client=True, version=QuicProtocolVersion.VERSION_1)
    builder = QuicPacketBuilder(
        host_cid=os.urandom(CID_LENGTH),
        peer_cid=dcid,
        version=QuicProtocolVersion.VERSION_1,
        is_client=True,
        max_datagram_size=1200,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    builder.start_frame(QuicFrameType.PING)
    (datagram,), _ = builder.flush()
    return datagram


def client_hello_initial(alpn: str = "hq-interop") -> bytes:
    """The first datagram of a real aioquic client: its ClientHello in an Initial."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=[alpn], server_name="localhost", verify_mode=ssl.CERT_NONE
    )
    client = QuicConnection(configuration=configuration)
    client.connect(("127.0.0.1", 4433), now=0.0)
    (data, _), *_ = client.datagrams_to_send(now=0.0)
    return data


def short_header(dcid: bytes, size: int) -> bytes:
    """A 1-RTT packet to `dcid`: random protected bytes after the header."""
    return bytes([0x40 | (os.urandom(1)[0] & 0x3F)]) + dcid + os.urandom(size - 1 - len(dcid))


def header_of(datagram: bytes) -> QuicHeader:
    return pull_quic_header(Buffer(data=datagram), host_cid_length=CID_LENGTH)


class RawPeer(asyncio.DatagramProtocol):
    """A bare UDP socket on loopback: sends what it is given, keeps what comes back."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def recv(self, timeout: float) -> bytes | None:
        try:
            return await asyncio.wait_for(self.received.get(), timeout)
        except TimeoutError:
            return None

    async def recv_all(self, quiet: float) -> list[bytes]:
        """Every datagram until none came for `quiet` seconds."""
        out = []
        while (data := await self.recv(quiet)) is not None:
            out.append(data)
        return out

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def raw_peer(port: int, local_host: str = "127.0.0.1") -> RawPeer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(
        RawPeer, local_addr=(local_host, 0), remote_addr=("127.0.0.1", port)
    )
    return peer


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `check()` holds (polled every 20 ms), or fail after `timeout`."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


# -- edge processes ---------------------------------------------------------------------------


def write_config(path: Path, services: dict[str, int], **edge: object) -> None:
    """An edge config: one HTTP backend per service (name -> port), `[edge]` extras."""
    lines = ["[edge]", 'listen = "127.0.0.1:0"']
    lines += [f"{key} = {value!r}".replace("'", '"') for key, value in edge.items()]
    for name, port in services.items():
        lines += ["", "[[services]]", f'name = "{name}"', ""]
        lines += ["[[services.backends]]", f'name = "{name}-b"', 'kind = "http"']
        lines += [f'address = "127.0.0.1:{port}"']
    path.write_text("\n".join(lines) + "\n")


class EdgeProcess:
    """`python -m netsched_edge.cli --config FILE [--workers N]` as a child process,
    with a TMPDIR of its own (to see what it leaves behind) and its stderr kept."""

    def __init__(self, config: Path, tmpdir: Path, workers: int = 1) -> None:
        self.config = config
        self.tmpdir = tmpdir
        self.workers = workers
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 60.0) -> int:
        args = [sys.executable, "-m", "netsched_edge.cli", "--config", str(self.config)]
        if self.workers > 1:
            args += ["--workers", str(self.workers)]
        self.tmpdir.mkdir(exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "TMPDIR": str(self.tmpdir)},
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._reader = asyncio.create_task(self._read(self.proc.stderr))
        line = (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode()
        assert "listening on" in line, (line, self.stderr)
        return int(line.split("listening on 127.0.0.1:")[1].split()[0])

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.stderr.append(line.decode())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return code

    def workers_pids(self) -> list[int]:
        """The live worker processes, oldest first (workers start in index order)."""
        return sorted(
            pid for pid in children_of(self.pid) if b"spawn_main" in _cmdline(pid) and alive(pid)
        )

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
