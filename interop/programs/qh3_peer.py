"""qh3 as an interop endpoint (hq-interop and h3, client or server).

Runs in qh3's own venv. qh3 keeps aioquic's API shape (asyncio serve/connect,
QuicConnectionProtocol, H3Connection); HTTP/0.9 is written here since qh3 has
no h0 module. Test cases map to its configuration: retry → serve(retry=True),
chacha20 → cipher_suites, keyupdate → request_key_update() after the first
response bytes, v2 → original v1 + supported [v2, v1], transfer → small
initial flow-control windows on the client; resumption and zerortt → the
first file over one connection, the rest over a second one that resumes the
first's session with its ticket (zerortt: without waiting for the handshake,
so the requests go in 0-RTT); the server keeps the tickets it issued.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from qh3.asyncio import QuicConnectionProtocol, connect, serve  # type: ignore[import-not-found, unused-ignore]
from qh3.h3.connection import H3Connection  # type: ignore[import-not-found, unused-ignore]
from qh3.h3.events import DataReceived, HeadersReceived  # type: ignore[import-not-found, unused-ignore]
from qh3.quic.configuration import QuicConfiguration  # type: ignore[import-not-found, unused-ignore]
from qh3.quic.events import (  # type: ignore[import-not-found, unused-ignore]
    ConnectionTerminated,
    ProtocolNegotiated,
    StreamDataReceived,
    StreamReset,
)
from qh3.quic.packet import QuicProtocolVersion  # type: ignore[import-not-found, unused-ignore]
from qh3.tls import CipherSuite  # type: ignore[import-not-found, unused-ignore]

from .contract import (
    EXIT_FAILED,
    EXIT_OK,
    Contract,
    ContractError,
    run_endpoint,
    unsupported,
    url_target,
)

HQ = "hq-interop"
H3 = "h3"
SMALL_WINDOW = 256 << 10
SMALL_STREAM_WINDOW = 128 << 10
MAX_REQUEST_LINE = 2048
# qh3's H3Connection always announces SETTINGS_H3_DATAGRAM=1 (qh3 2.1.0
# h3/connection.py `_get_local_settings`), and a peer that checks RFC 9297 §2.1.1
# (aioquic, qh3 itself) closes the connection unless the same endpoint also sent
# max_datagram_frame_size. So every qh3 endpoint sends it.
MAX_DATAGRAM_FRAME_SIZE = 65536
STREAM_LIMIT_POLL_S = 0.01
CASES = (
    "handshake",
    "transfer",
    "retry",
    "http3",
    "chacha20",
    "keyupdate",
    "v2",
    "multiconnect",
    "resumption",
    "zerortt",
)
RESUMING = ("resumption", "zerortt")
MAX_TICKETS = 1000  # tickets the server keeps (a test opens a few connections)


def configuration(contract: Contract, *, is_client: bool) -> Any:
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[contract.alpn],
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
    )
    if contract.keylog:
        config.secrets_log_file = open(contract.keylog, "a", buffering=1)  # noqa: SIM115
    if is_client:
        config.load_verify_locations(cafile=str(contract.ca_certificate))
        config.server_name = "localhost"
    else:
        config.load_cert_chain(str(contract.certificate), str(contract.private_key))
    if contract.testcase == "chacha20":
        config.cipher_suites = [CipherSuite.CHACHA20_POLY1305_SHA256]
    elif contract.testcase == "v2":
        # qh3 accepts only v1 unless told (QuicConfiguration.supported_versions).
        config.supported_versions = [QuicProtocolVersion.VERSION_2, QuicProtocolVersion.VERSION_1]
        if is_client:
            config.original_version = QuicProtocolVersion.VERSION_1
    elif contract.testcase == "transfer" and is_client:
        config.max_data = SMALL_WINDOW
        config.max_stream_data = SMALL_STREAM_WINDOW
    return config


class Server(QuicConnectionProtocol):  # type: ignore[misc]
    contract: Contract

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._h3: Any = None
        self._lines: dict[int, bytes] = {}
        self._answered: set[int] = set()

    def quic_event_received(self, event: Any) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol == H3:
            self._h3 = H3Connection(self._quic)
        if self._h3 is not None:
            for h3_event in self._h3.handle_event(event):
                if isinstance(h3_event, HeadersReceived):
                    self._answer_h3(h3_event.stream_id, dict(h3_event.headers).get(b":path", b""))
        elif isinstance(event, StreamDataReceived) and event.stream_id not in self._answered:
            self._on_hq_data(event)

    def _on_hq_data(self, event: Any) -> None:
        line = self._lines.pop(event.stream_id, b"") + event.data
        if b"\n" not in line and not event.end_stream and len(line) <= MAX_REQUEST_LINE:
            self._lines[event.stream_id] = line
            return
        self._answered.add(event.stream_id)
        parts = line.split(b"\n", 1)[0].strip().split(b" ")
        file = None
        if len(parts) == 2 and parts[0] == b"GET":
            file = self.contract.www_file(parts[1].decode("ascii", "replace"))
        if file is None:
            self._quic.reset_stream(event.stream_id, 1)
        else:
            self._quic.send_stream_data(event.stream_id, file.read_bytes(), end_stream=True)
        self.transmit()

    def _answer_h3(self, stream_id: int, path: bytes) -> None:
        file = self.contract.www_file(path.decode("ascii", "replace"))
        body = file.read_bytes() if file is not None else b""
        status = b"200" if file is not None else b"404"
        headers = [(b":status", status), (b"content-length", str(len(body)).encode())]
        self._h3.send_headers(stream_id, headers)
        self._h3.send_data(stream_id, body, end_stream=True)
        self.transmit()


class Client(QuicConnectionProtocol):  # type: ignore[misc]
    contract: Contract

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._h3 = H3Connection(self._quic) if self.contract.alpn == H3 else None
        self._bodies: dict[int, list[bytes]] = {}
        self._done: dict[int, asyncio.Future[bytes]] = {}
        self._key_update = self.contract.testcase == "keyupdate"
        self._opening = asyncio.Lock()

    async def get(self, authority: str, path: str) -> bytes:
        async with self._opening:  # one request at a time waits for a stream
            stream_id = await self._open(authority, path)
        self._bodies[stream_id] = []
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._done[stream_id] = done
        self.transmit()
        return await done

    async def _open(self, authority: str, path: str) -> int:
        while True:
            stream_id = self._quic.get_next_available_stream_id()
            try:
                self._request(stream_id, authority, path)
                return int(stream_id)
            except ValueError as exc:
                # qh3 refuses a stream past the peer's MAX_STREAMS limit ("Bidirectional
                # stream limit 100 exceeded", raised by its Rust core, _hazmat.abi3.so)
                # where aioquic queues it, and tells no event when the limit rises.
                if "stream limit" not in str(exc):
                    raise
                self.transmit()
                await asyncio.sleep(STREAM_LIMIT_POLL_S)

    def _request(self, stream_id: int, authority: str, path: str) -> None:
        if self._h3 is None:
            self._quic.send_stream_data(stream_id, f"GET {path}\r\n".encode(), end_stream=True)
            return
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
        ]
        self._h3.send_headers(stream_id, headers, end_stream=True)

    def quic_event_received(self, event: Any) -> None:
        if isinstance(event, ConnectionTerminated):
            for stream_id in list(self._done):
                self._finish(stream_id, f"connection closed: {event.reason_phrase}")
        elif isinstance(event, StreamReset) and event.stream_id in self._done:
            self._finish(event.stream_id, f"stream reset with error {event.error_code}")
        elif self._h3 is not None:
            for h3_event in self._h3.handle_event(event):
                self._on_h3(h3_event)
        elif isinstance(event, StreamDataReceived) and event.stream_id in self._done:
            self._on_body(event.stream_id, event.data, event.end_stream)

    def _on_h3(self, event: Any) -> None:
        if event.stream_id not in self._done:
            return
        if isinstance(event, HeadersReceived):
            status = dict(event.headers).get(b":status")
            if status != b"200":
                self._finish(event.stream_id, f"status {status!r}")
                return
        data = event.data if isinstance(event, DataReceived) else b""
        if isinstance(event, HeadersReceived | DataReceived):
            self._on_body(event.stream_id, data, event.stream_ended)

    def _on_body(self, stream_id: int, data: bytes, end: bool) -> None:
        self._bodies[stream_id].append(data)
        if data and self._key_update:
            self._key_update = False  # once, early: the runner wants it in the first MB
            self.request_key_update()
        if end:
            self._finish(stream_id, None)

    def _finish(self, stream_id: int, error: str | None) -> None:
        done = self._done.pop(stream_id)
        body = b"".join(self._bodies.pop(stream_id))
        if error is None:
            done.set_result(body)
        else:
            done.set_exception(ConnectionError(error))


class TicketStore:
    """The server's issued session tickets, by ticket label (each resumes once)."""

    def __init__(self) -> None:
        self._tickets: dict[bytes, Any] = {}

    def add(self, ticket: Any) -> None:
        if len(self._tickets) < MAX_TICKETS:
            self._tickets[ticket.ticket] = ticket

    def pop(self, label: bytes) -> Any:
        return self._tickets.pop(label, None)


async def run_server(contract: Contract) -> int:
    Server.contract = contract
    tickets = TicketStore()
    server = await serve(
        contract.host,
        contract.port,
        configuration=configuration(contract, is_client=False),
        create_protocol=Server,
        retry=contract.testcase == "retry",
        session_ticket_fetcher=tickets.pop,
        session_ticket_handler=tickets.add,
    )
    try:
        await asyncio.Event().wait()  # serve until the runner stops us
    finally:
        server.close()
    return EXIT_OK


async def run_client(contract: Contract) -> int:
    Client.contract = contract
    if contract.testcase in RESUMING:
        return await resume(contract)
    # multiconnect (handshakeloss): a connection per URL, in turn.
    batches = (
        [(url,) for url in contract.requests]
        if contract.testcase == "multiconnect"
        else [contract.requests]
    )
    for urls in batches:
        await fetch(contract, urls)
    return EXIT_OK


async def resume(contract: Contract) -> int:
    """The first URL over one connection, the rest over a second that resumes its session."""
    if len(contract.requests) < 2:
        raise ContractError(f"REQUESTS: {contract.testcase} needs at least 2 URLs")
    tickets: list[Any] = []
    await fetch(contract, contract.requests[:1], on_ticket=tickets.append)
    if not tickets:
        print("qh3 endpoint: the server sent no session ticket", file=sys.stderr)
        return EXIT_FAILED
    early = contract.testcase == "zerortt"
    await fetch(contract, contract.requests[1:], ticket=tickets[-1], early=early)
    return EXIT_OK


async def fetch(
    contract: Contract,
    urls: tuple[str, ...],
    *,
    ticket: Any = None,
    on_ticket: Any = None,
    early: bool = False,
) -> None:
    """Download `urls` concurrently over one connection.

    `ticket` resumes a session; `on_ticket` gets the tickets the server sends;
    `early`: the requests go out before the handshake completes (0-RTT).
    """
    host, port, _ = url_target(urls[0])
    config = configuration(contract, is_client=True)
    config.session_ticket = ticket
    async with connect(
        host,
        port,
        configuration=config,
        create_protocol=Client,
        session_ticket_handler=on_ticket,
        wait_connected=not early,
    ) as client:
        authority = f"{host}:{port}"
        paths = [url_target(url)[2] for url in urls]
        bodies = await asyncio.gather(*(client.get(authority, path) for path in paths))
        client.close()
        await client.wait_closed()
    for url, body in zip(urls, bodies, strict=True):
        contract.download_path(url).write_bytes(body)


def main() -> int:
    return run_endpoint("qh3 endpoint", _run)


def _run(contract: Contract) -> int:
    if contract.testcase not in CASES:
        return unsupported(contract, "not implemented by the qh3 endpoint")
    if contract.role == "server":
        return asyncio.run(run_server(contract))
    return asyncio.run(run_client(contract))


if __name__ == "__main__":
    sys.exit(main())
