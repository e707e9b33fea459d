"""picoquic (through aiopquic 0.6.1) as an hq-interop endpoint, client or server.

Runs under Python 3.12 in aiopquic's venv. aiopquic's asyncio API drives
picoquic on its own network thread; test cases map to its configuration:
retry → serve(retry=True), chacha20 → cipher_suite 0x1303, keyupdate →
key_update_interval, v2 → supported_versions [v2, v1], transfer → small
initial flow-control windows on the client; resumption and zerortt → the
first file over one connection, the rest over a second one that resumes the
session from picoquic's ticket store (session_ticket_file; zerortt: requests
written before the handshake completes, which picoquic sends in 0-RTT).
aiopquic's API has no multipath call, so the mp-* cases go to `picoquic_mp`
(picoquic's C API through ctypes).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

from aiopquic.asyncio import connect, serve  # type: ignore[import-not-found, unused-ignore]
from aiopquic.asyncio.protocol import (  # type: ignore[import-not-found, unused-ignore]
    QuicConnectionProtocol,
)
from aiopquic.quic.configuration import (  # type: ignore[import-not-found, unused-ignore]
    QUIC_V1,
    QUIC_V2,
    QuicConfiguration,
)
from aiopquic.quic.events import (  # type: ignore[import-not-found, unused-ignore]
    ConnectionTerminated,
    StreamDataReceived,
    StreamReset,
)

from .contract import (
    EXIT_OK,
    Contract,
    ContractError,
    run_endpoint,
    unsupported,
    url_target,
)
from .multipath import MULTIPATH_CASES
from .picoquic_mp import endpoint as multipath_endpoint

ALPN = "hq-interop"
CHACHA20 = 0x1303
# aiopquic refuses one stream write at or above its 4 MiB stream ring
# (stream_ring_cap; AGENTS.md "TX backpressure": ValueError "exceeds
# stream_ring_cap"), so the 5 MB transfer file goes out in slices.
WRITE_SLICE = 1 << 20
# Packets the client sends per key phase. A downloading client sends few (ACKs),
# so the update must come early to happen in the first MB, as the case asks.
KEY_UPDATE_PACKETS = 16
SMALL_WINDOW = 256 << 10
SMALL_STREAM_WINDOW = 128 << 10
MAX_REQUEST_LINE = 2048
SERVER_CASES = (
    "handshake",
    "transfer",
    "retry",
    "chacha20",
    "keyupdate",
    "v2",
    "multiconnect",
    "resumption",
    "zerortt",
)
CLIENT_CASES = SERVER_CASES
RESUMING = ("resumption", "zerortt")
TICKET_FILE = "session-tickets.bin"  # in the client's working directory


def configuration(contract: Contract, *, is_client: bool) -> Any:
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        secrets_log_file=contract.keylog,
        qlog_dir=contract.qlog_dir,
        ip_family=socket.AF_INET6 if ":" in contract.host else socket.AF_INET,
    )
    if is_client:
        config.load_verify_locations(str(contract.ca_certificate))
        config.server_name = "localhost"
    else:
        config.load_cert_chain(str(contract.certificate), str(contract.private_key))
    if is_client and contract.testcase in RESUMING:
        config.session_ticket_file = str(Path.cwd() / TICKET_FILE)
    if contract.testcase == "chacha20":
        config.cipher_suite = CHACHA20
    elif contract.testcase == "keyupdate" and is_client:
        config.key_update_interval = KEY_UPDATE_PACKETS
    elif contract.testcase == "v2" and is_client:
        config.supported_versions = [QUIC_V2, QUIC_V1]
    elif contract.testcase == "transfer" and is_client:
        config.max_data = SMALL_WINDOW
        config.max_stream_data = SMALL_STREAM_WINDOW
    return config


class HqServer(QuicConnectionProtocol):  # type: ignore[misc]
    contract: Contract

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lines: dict[int, bytes] = {}  # request lines still arriving
        self._answered: set[int] = set()  # later bytes on these streams are not requests
        self._tasks: set[asyncio.Task[None]] = set()

    def quic_event_received(self, event: Any) -> None:
        if not isinstance(event, StreamDataReceived) or event.stream_id in self._answered:
            return
        line = self._lines.pop(event.stream_id, b"") + bytes(event.data)
        if b"\n" not in line and not event.end_stream and len(line) <= MAX_REQUEST_LINE:
            self._lines[event.stream_id] = line
            return
        self._answered.add(event.stream_id)
        task = asyncio.get_running_loop().create_task(self._answer(event.stream_id, line))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, stream_id: int, line: bytes) -> None:
        parts = line.split(b"\n", 1)[0].strip().split(b" ")
        path = parts[1].decode("ascii", "replace") if len(parts) == 2 else ""
        file = self.contract.www_file(path) if parts[0] == b"GET" else None
        if file is None:
            self._quic.reset_stream(stream_id, 1)
            return
        data = file.read_bytes()
        for start in range(0, len(data), WRITE_SLICE):
            await self._quic.send_stream_data_drained(stream_id, data[start : start + WRITE_SLICE])
        await self._quic.send_stream_data_drained(stream_id, b"", end_stream=True)


class HqClient(QuicConnectionProtocol):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bodies: dict[int, list[bytes]] = {}
        self._done: dict[int, asyncio.Future[bytes]] = {}

    async def get(self, path: str) -> bytes:
        stream_id = self._quic.get_next_available_stream_id()
        self._bodies[stream_id] = []
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._done[stream_id] = done
        await self._quic.send_stream_data_drained(
            stream_id, f"GET {path}\r\n".encode("ascii"), end_stream=True
        )
        return await done

    def quic_event_received(self, event: Any) -> None:
        if isinstance(event, StreamDataReceived) and event.stream_id in self._done:
            self._bodies[event.stream_id].append(bytes(event.data))
            if event.end_stream:
                self._finish(event.stream_id, None)
        elif isinstance(event, StreamReset) and event.stream_id in self._done:
            self._finish(event.stream_id, f"stream reset with error {event.error_code}")
        elif isinstance(event, ConnectionTerminated):
            for stream_id in list(self._done):
                self._finish(stream_id, f"connection closed: {event.reason_phrase}")

    def _finish(self, stream_id: int, error: str | None) -> None:
        done = self._done.pop(stream_id)
        body = b"".join(self._bodies.pop(stream_id))
        if not done.done():
            if error is None:
                done.set_result(body)
            else:
                done.set_exception(ConnectionError(error))


async def run_server(contract: Contract) -> int:
    if contract.testcase not in SERVER_CASES:
        return unsupported(contract, "not implemented by the picoquic server endpoint")
    HqServer.contract = contract
    server = await serve(
        contract.host,
        contract.port,
        configuration=configuration(contract, is_client=False),
        create_protocol=HqServer,
        retry=contract.testcase == "retry",
    )
    try:
        await asyncio.Event().wait()  # serve until the runner stops us
    finally:
        server.close()
    return EXIT_OK


async def run_client(contract: Contract) -> int:
    if contract.testcase not in CLIENT_CASES:
        return unsupported(contract, "not implemented by the picoquic client endpoint")
    if contract.testcase in RESUMING:
        if len(contract.requests) < 2:
            raise ContractError(f"REQUESTS: {contract.testcase} needs at least 2 URLs")
        # The store is saved when the first connection's transport stops.
        await fetch(contract, contract.requests[:1])
        early = contract.testcase == "zerortt"
        await fetch(contract, contract.requests[1:], early=early)
        return EXIT_OK
    # multiconnect (handshakeloss): a connection per URL, in turn.
    batches = (
        [(url,) for url in contract.requests]
        if contract.testcase == "multiconnect"
        else [contract.requests]
    )
    for urls in batches:
        await fetch(contract, urls)
    return EXIT_OK


async def fetch(contract: Contract, urls: tuple[str, ...], *, early: bool = False) -> None:
    """Download `urls` concurrently over one connection (`early`: before the handshake)."""
    host, port, _ = url_target(urls[0])
    config = configuration(contract, is_client=True)
    async with connect(
        host, port, configuration=config, create_protocol=HqClient, wait_connected=not early
    ) as client:
        paths = [url_target(url)[2] for url in urls]
        bodies = await asyncio.gather(*(client.get(path) for path in paths))
    for url, body in zip(urls, bodies, strict=True):
        contract.download_path(url).write_bytes(body)


def main() -> int:
    return run_endpoint("picoquic endpoint", _run)


def _run(contract: Contract) -> int:
    if contract.alpn != ALPN:
        return unsupported(contract, f"the picoquic endpoint speaks only {ALPN}")
    if contract.testcase in MULTIPATH_CASES:
        return multipath_endpoint.run(contract)
    if contract.role == "server":
        return asyncio.run(run_server(contract))
    return asyncio.run(run_client(contract))


if __name__ == "__main__":
    sys.exit(main())
