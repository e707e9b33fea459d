"""Backend kinds against real loopback servers: the demo servers and small ad-hoc ones."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netsched_edge.backends.base import BackendRequest, BackendResponse, BackendUnavailable
from netsched_edge.backends.http1 import HTTPBackend
from netsched_edge.backends.static import StaticBackend
from netsched_edge.backends.tcp import ReleasingBody, TCPBackend
from netsched_edge.backends.udp import UDPBackend
from netsched_edge.demo_backends import DemoHTTPServer, TCPEchoServer, UDPEchoServer

HOST = "127.0.0.1"
TIMEOUT = 5.0  # generous: only the timeout tests expect to hit a deadline

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# ---------------------------------------------------------------- helpers


async def chunks(*parts: bytes, gate: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """Yield `parts`; with a gate, wait for it before the last part."""
    for index, part in enumerate(parts):
        if gate is not None and index == len(parts) - 1:
            await gate.wait()
        await asyncio.sleep(0)
        yield part


async def read_all(response: BackendResponse) -> bytes:
    return b"".join([chunk async for chunk in response.body])


async def abandon(response: BackendResponse) -> None:
    assert isinstance(response.body, ReleasingBody)
    await response.body.aclose()


async def eventually(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.01)


def unused_port(kind: socket.SocketKind) -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    """An ad-hoc server running `handler` per connection, which it then closes."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(run, HOST, 0)
    return server, server.sockets[0].getsockname()[1]


async def h11_next(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event:
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Event):
            return event
        conn.receive_data(await reader.read(65536))


def h11_write(conn: h11.Connection, writer: asyncio.StreamWriter, *events: h11.Event) -> None:
    for event in events:
        writer.write(conn.send(event) or b"")


@pytest.fixture
async def demo() -> AsyncIterator[DemoHTTPServer]:
    server = DemoHTTPServer("a", base_ms=1, cold_ms=5)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def demo_backend(demo: DemoHTTPServer) -> AsyncIterator[HTTPBackend]:
    backend = HTTPBackend("a", HOST, demo.port)
    yield backend
    await backend.close()


# ---------------------------------------------------------------- HTTP


async def test_http_unary_echo_and_cache_headers(
    demo: DemoHTTPServer, demo_backend: HTTPBackend
) -> None:
    async def call(affinity: str) -> tuple[str, bytes]:
        request = BackendRequest("svc", affinity=affinity, length=5)
        response = await demo_backend.exchange(request, chunks(b"hel", b"lo"), TIMEOUT)
        assert response.status == 200
        assert response.headers["x-backend"] == "a"
        return response.headers["x-cache"], await read_all(response)

    assert await call("k1") == ("miss", b"hello")
    assert await call("k1") == ("hit", b"hello")
    assert await call("k2") == ("miss", b"hello")
    assert (demo.requests, demo.hits, demo.misses) == (3, 1, 2)


async def test_http_chunked_request_is_echoed(
    demo: DemoHTTPServer, demo_backend: HTTPBackend
) -> None:
    request = BackendRequest("svc")  # no length: chunked transfer encoding
    response = await demo_backend.exchange(request, chunks(b"a" * 10, b"", b"b" * 70000), TIMEOUT)
    assert await read_all(response) == b"a" * 10 + b"b" * 70000
    # Without affinity the cache key is the target, "/" + service.
    response = await demo_backend.exchange(request, chunks(b"x"), TIMEOUT)
    assert response.headers["x-cache"] == "hit"
    assert await read_all(response) == b"x"


async def test_http_request_head_comes_from_request_and_meta() -> None:
    seen: list[h11.Request] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        request = await h11_next(conn, reader)
        assert isinstance(request, h11.Request)
        seen.append(request)
        while not isinstance(await h11_next(conn, reader), h11.EndOfMessage):
            pass
        headers = [("X-Reply", "Yes"), ("Set-Thing", "1"), ("set-thing", "2")]
        h11_write(conn, writer, h11.Response(status_code=201, headers=headers), h11.EndOfMessage())

    server, port = await serve(handler)
    backend = HTTPBackend("cap", HOST, port)
    meta = {"method": "PUT", "path": "/x/y?z=1", "other": "ignored"}
    # The edge sets framing, Host and its own fields; the client's are dropped, not sent.
    forged = [("Host", "evil"), ("content-length", "9"), ("early-data", "1"), ("te", "x")]
    fields = (("x-trace", "t1"), ("x-multi", "a"), ("x-multi", "b"), *forged)
    request = BackendRequest("svc", meta=meta, headers=fields, affinity="aff", length=2)
    response = await backend.exchange(request, chunks(b"hi"), TIMEOUT)
    assert response.status == 201
    assert response.headers["x-reply"] == "Yes"
    assert response.headers["set-thing"] == "1, 2"
    assert response.headers.get_list("set-thing") == ["1", "2"]
    assert await read_all(response) == b""
    [head] = seen
    assert (head.method, head.target) == (b"PUT", b"/x/y?z=1")
    headers = dict(head.headers)
    assert headers[b"host"] == f"{HOST}:{port}".encode()
    assert headers[b"x-netsched-service"] == b"svc"
    assert headers[b"x-netsched-affinity"] == b"aff"
    assert headers[b"x-trace"] == b"t1"
    assert headers[b"content-length"] == b"2"
    assert b"other" not in headers and b"transfer-encoding" not in headers
    assert [v for k, v in head.headers if k == b"x-multi"] == [b"a", b"b"]
    assert b"early-data" not in headers and b"te" not in headers
    assert [k for k, _ in head.headers].count(b"host") == 1
    await backend.close()
    server.close()


@pytest.mark.parametrize(
    ("meta", "fields", "match"),
    [
        ({"method": "CONNECT"}, (), "CONNECT"),
        ({"path": "/a b"}, (), "'/a b'"),
        ({}, (("x-bad", "a\r\nb"),), "invalid request metadata"),
    ],
)
async def test_http_bad_metadata_is_refused_before_connecting(
    meta: dict[str, str], fields: tuple[tuple[str, str], ...], match: str
) -> None:
    backend = HTTPBackend("a", HOST, unused_port(socket.SOCK_STREAM))
    request = BackendRequest("svc", meta=meta, headers=fields)
    with pytest.raises(ValueError, match=match):
        await backend.exchange(request, chunks(), TIMEOUT)


@pytest.mark.parametrize("parts", [(b"abc",), (b"abc", b"defgh")])
async def test_http_body_must_match_declared_length(
    demo: DemoHTTPServer, demo_backend: HTTPBackend, parts: tuple[bytes, ...]
) -> None:
    request = BackendRequest("svc", length=5)
    with pytest.raises(ValueError, match="Content-Length"):
        await demo_backend.exchange(request, chunks(*parts), TIMEOUT)
    await eventually(lambda: demo.open_connections == 0)


async def test_http_pool_reuses_and_caps_idle_connections(demo: DemoHTTPServer) -> None:
    backend = HTTPBackend("a", HOST, demo.port, pool_size=1)

    async def call() -> bytes:
        response = await backend.exchange(BackendRequest("svc", length=1), chunks(b"x"), TIMEOUT)
        return await read_all(response)

    for _ in range(3):
        assert await call() == b"x"
    assert demo.connections == 1
    # Three at once: the idle connection plus two new ones; only one stays pooled.
    assert list(await asyncio.gather(call(), call(), call())) == [b"x"] * 3
    assert demo.connections == 3
    await eventually(lambda: demo.open_connections == 1)
    await backend.close()
    await eventually(lambda: demo.open_connections == 0)


async def test_http_pool_discards_connection_closed_by_server(demo: DemoHTTPServer) -> None:
    backend = HTTPBackend("a", HOST, demo.port)
    response = await backend.exchange(BackendRequest("svc", length=1), chunks(b"x"), TIMEOUT)
    assert await read_all(response) == b"x"
    await demo.stop()  # closes the idle keep-alive connection
    restarted = DemoHTTPServer("b", base_ms=1, cold_ms=1, port=demo.port)
    await restarted.start()
    await asyncio.sleep(0.2)  # let the loop see the closed connection's EOF
    response = await backend.exchange(BackendRequest("svc", length=1), chunks(b"y"), TIMEOUT)
    assert response.headers["x-backend"] == "b"
    assert await read_all(response) == b"y"
    await backend.close()
    await restarted.stop()


async def test_http_abandoned_body_closes_the_connection(
    demo: DemoHTTPServer, demo_backend: HTTPBackend
) -> None:
    big = b"z" * 1_000_000
    response = await demo_backend.exchange(BackendRequest("svc"), chunks(big), TIMEOUT)
    first = await anext(response.body)
    assert 0 < len(first) < len(big)
    await abandon(response)
    await eventually(lambda: demo.open_connections == 0)
    response = await demo_backend.exchange(BackendRequest("svc"), chunks(b"q"), TIMEOUT)
    assert await read_all(response) == b"q"
    assert demo.connections == 2  # the abandoned connection was not reused


async def test_http_connection_refused_is_unavailable() -> None:
    backend = HTTPBackend("gone", HOST, unused_port(socket.SOCK_STREAM))
    with pytest.raises(BackendUnavailable, match="cannot connect"):
        await backend.exchange(BackendRequest("svc"), chunks(b"x"), TIMEOUT)
    assert not await backend.check(TIMEOUT)


async def test_http_silent_server_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass  # never answers

    server, port = await serve(handler)
    backend = HTTPBackend("mute", HOST, port)
    with pytest.raises(TimeoutError):
        await backend.exchange(BackendRequest("svc", length=1), chunks(b"x"), 0.2)
    server.close()


async def test_http_kill_mid_request_is_unavailable() -> None:
    server = DemoHTTPServer("slow", base_ms=1, cold_ms=60_000)
    await server.start()
    backend = HTTPBackend("slow", HOST, server.port)
    request = BackendRequest("svc", length=1)
    call = asyncio.create_task(backend.exchange(request, chunks(b"x"), TIMEOUT))
    await eventually(lambda: server.requests == 1)
    await server.kill()
    with pytest.raises(BackendUnavailable, match="before the response head"):
        await call
    assert server.open_connections == 0


async def test_http_both_directions_stream() -> None:
    """The head arrives and body chunks flow back while the request body is still open."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        assert isinstance(await h11_next(conn, reader), h11.Request)
        h11_write(conn, writer, h11.Response(status_code=200, headers=[]))
        while isinstance(event := await h11_next(conn, reader), h11.Data):
            h11_write(conn, writer, h11.Data(data=event.data))
        h11_write(conn, writer, h11.EndOfMessage())

    server, port = await serve(handler)
    backend = HTTPBackend("duplex", HOST, port)
    gate = asyncio.Event()
    response = await backend.exchange(
        BackendRequest("svc"), chunks(b"first", b"second", gate=gate), TIMEOUT
    )
    assert response.status == 200
    assert await anext(response.body) == b"first"
    gate.set()
    assert await read_all(response) == b"second"
    await backend.close()
    server.close()


async def test_http_health_check_needs_2xx(demo_backend: HTTPBackend) -> None:
    assert await demo_backend.check(TIMEOUT)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        request = await h11_next(conn, reader)
        assert isinstance(request, h11.Request) and request.target == b"/ready"
        headers = [("content-length", "0")]
        h11_write(conn, writer, h11.Response(status_code=503, headers=headers), h11.EndOfMessage())

    server, port = await serve(handler)
    sick = HTTPBackend("sick", HOST, port, health_path="/ready")
    assert not await sick.check(TIMEOUT)
    await sick.close()
    server.close()


# ---------------------------------------------------------------- demo HTTP server


async def test_demo_graceful_stop_finishes_in_flight_request() -> None:
    server = DemoHTTPServer("a", base_ms=1, cold_ms=200)
    await server.start()
    backend = HTTPBackend("a", HOST, server.port)
    request = BackendRequest("svc", length=4)
    call = asyncio.create_task(backend.exchange(request, chunks(b"last"), TIMEOUT))
    await eventually(lambda: server.requests == 1)
    await server.stop()
    response = await call
    assert await read_all(response) == b"last"
    assert server.open_connections == 0
    await backend.close()


async def test_demo_cache_is_lru_bounded() -> None:
    server = DemoHTTPServer("lru", base_ms=0, cold_ms=0, cache_size=1)
    backend = HTTPBackend("lru", HOST, await server.start())
    for key in ("a", "b", "a", "a"):
        request = BackendRequest("svc", affinity=key, length=0)
        await read_all(await backend.exchange(request, chunks(), TIMEOUT))
    assert (server.hits, server.misses) == (1, 3)
    await backend.close()
    await server.stop()


async def test_demo_answers_garbage_with_400(demo: DemoHTTPServer) -> None:
    reader, writer = await asyncio.open_connection(HOST, demo.port)
    writer.write(b"NOT HTTP\r\n\r\n")
    assert (await reader.read(12)) == b"HTTP/1.1 400"
    writer.close()


# ---------------------------------------------------------------- TCP


async def test_tcp_echo_streams_both_ways_until_half_close() -> None:
    server = TCPEchoServer()
    backend = TCPBackend("echo", HOST, await server.start())
    gate = asyncio.Event()
    response = await backend.exchange(
        BackendRequest("svc"), chunks(b"ping", b"pong", gate=gate), TIMEOUT
    )
    assert response.status == 200
    assert await anext(response.body) == b"ping"
    gate.set()
    # The server closes only after our half-close, so reading to EOF proves it.
    assert await read_all(response) == b"pong"
    await eventually(lambda: server.open_connections == 0)
    assert await backend.check(TIMEOUT)
    await server.stop()


async def test_tcp_refused_is_unavailable() -> None:
    backend = TCPBackend("gone", HOST, unused_port(socket.SOCK_STREAM))
    with pytest.raises(BackendUnavailable, match="cannot connect"):
        await backend.exchange(BackendRequest("svc"), chunks(b"x"), TIMEOUT)
    assert not await backend.check(TIMEOUT)


async def test_tcp_abandoned_body_aborts_connection() -> None:
    server = TCPEchoServer()
    backend = TCPBackend("echo", HOST, await server.start())
    gate = asyncio.Event()  # never set: the request stays open
    response = await backend.exchange(BackendRequest("svc"), chunks(b"a", b"b", gate=gate), 1)
    assert await anext(response.body) == b"a"
    await abandon(response)
    await eventually(lambda: server.open_connections == 0)
    await server.stop()


# ---------------------------------------------------------------- UDP


@pytest.fixture
async def udp_echo() -> AsyncIterator[UDPEchoServer]:
    server = UDPEchoServer()
    await server.start()
    yield server
    await server.stop()


async def test_udp_exchange_echoes_one_datagram(udp_echo: UDPEchoServer) -> None:
    backend = UDPBackend("echo", HOST, udp_echo.port)
    response = await backend.exchange(BackendRequest("svc"), chunks(b"he", b"llo"), TIMEOUT)
    assert response.status == 200
    assert await read_all(response) == b"hello"
    assert await backend.check(TIMEOUT)
    assert udp_echo.datagrams == 2


async def test_udp_refuses_oversize_and_empty_bodies(udp_echo: UDPEchoServer) -> None:
    backend = UDPBackend("echo", HOST, udp_echo.port, max_datagram=8)
    with pytest.raises(ValueError, match="max_datagram=8"):
        await backend.exchange(BackendRequest("svc"), chunks(b"12345", b"6789"), TIMEOUT)
    with pytest.raises(ValueError, match="empty"):
        await backend.exchange(BackendRequest("svc"), chunks(), TIMEOUT)
    assert udp_echo.datagrams == 0
    with pytest.raises(ValueError, match="max_datagram"):
        UDPBackend("echo", HOST, udp_echo.port, max_datagram=70000)


async def test_udp_silent_backend_times_out() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=(HOST, 0)
    )
    backend = UDPBackend("mute", HOST, transport.get_extra_info("sockname")[1])
    with pytest.raises(TimeoutError):
        await backend.exchange(BackendRequest("svc"), chunks(b"x"), 0.2)
    assert not await backend.check(0.2)
    transport.close()


async def test_udp_unreachable_port_is_unavailable() -> None:
    backend = UDPBackend("gone", HOST, unused_port(socket.SOCK_DGRAM))
    with pytest.raises(BackendUnavailable, match="refused"):
        await backend.exchange(BackendRequest("svc"), chunks(b"x"), TIMEOUT)
    assert not await backend.check(TIMEOUT)


async def test_udp_flow_relays_datagrams_both_ways(udp_echo: UDPEchoServer) -> None:
    backend = UDPBackend("echo", HOST, udp_echo.port, max_datagram=100)
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    flow = await backend.open_flow(replies.put_nowait)
    opened = flow.last_activity
    for payload in (b"one", b"two", b"three"):
        flow.send(payload)
    got = {await asyncio.wait_for(replies.get(), TIMEOUT) for _ in range(3)}
    assert got == {b"one", b"two", b"three"}
    assert flow.last_activity >= opened
    with pytest.raises(ValueError, match="max_datagram=100"):
        flow.send(b"x" * 101)
    flow.close()
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        flow.send(b"late")


# ---------------------------------------------------------------- static files


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "sub" / "b.txt").write_bytes(b"beta")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (root / "out").symlink_to(tmp_path / "secret.txt")
    (root / "in").symlink_to(root / "sub" / "b.txt")
    return root


async def fetch(backend: StaticBackend, path: str, method: str = "GET") -> tuple[int, bytes]:
    request = BackendRequest("files", meta={"path": path, "method": method})
    response = await backend.exchange(request, chunks(), TIMEOUT)
    return response.status, await read_all(response)


async def test_static_serves_files_by_meta_or_body_path(site: Path) -> None:
    backend = StaticBackend("files", site)
    assert await fetch(backend, "/a.txt") == (200, b"alpha")
    assert await fetch(backend, "in") == (200, b"beta")  # a symlink that stays inside
    response = await backend.exchange(BackendRequest("files"), chunks(b"sub/", b"b.txt"), TIMEOUT)
    assert (response.status, response.headers["content-length"]) == (200, "4")
    assert await read_all(response) == b"beta"
    assert await backend.check(TIMEOUT)
    assert not await StaticBackend("none", site / "missing").check(TIMEOUT)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("../secret.txt", 403),
        ("sub/../../secret.txt", 403),
        ("out", 403),  # symlink out of root
        ("missing.txt", 404),
        ("sub", 404),
        ("/", 404),
        ("a\x00.txt", 400),
    ],
)
async def test_static_refuses_paths(site: Path, path: str, status: int) -> None:
    assert await fetch(StaticBackend("files", site), path) == (status, b"")


async def test_static_absolute_path_stays_under_root(site: Path) -> None:
    # A leading "/" names the root, so an absolute path outside it is simply absent.
    secret = str(site.parent / "secret.txt")
    assert await fetch(StaticBackend("files", site), secret) == (404, b"")


async def test_static_methods(site: Path) -> None:
    backend = StaticBackend("files", site)
    assert await fetch(backend, "a.txt", "POST") == (405, b"")
    request = BackendRequest("files", meta={"path": "a.txt", "method": "HEAD"})
    response = await backend.exchange(request, chunks(), TIMEOUT)
    assert (response.status, response.headers["content-length"]) == (200, "5")
    assert await read_all(response) == b""


async def test_static_body_path_must_be_utf8(site: Path) -> None:
    response = await StaticBackend("files", site).exchange(
        BackendRequest("files"), chunks(b"\xff\xfe"), TIMEOUT
    )
    assert response.status == 400


async def test_static_large_file_streams_in_chunks(site: Path) -> None:
    data = bytes(range(256)) * (3 * 4096)  # 3 MiB
    (site / "big.bin").write_bytes(data)
    backend = StaticBackend("files", site, chunk_size=65536)
    response = await backend.exchange(
        BackendRequest("files", meta={"path": "big.bin"}), chunks(), TIMEOUT
    )
    parts = [chunk async for chunk in response.body]
    assert len(parts) == len(data) // 65536
    assert all(len(part) == 65536 for part in parts)
    assert b"".join(parts) == data


_SEGMENTS = st.sampled_from(["..", ".", "", "sub", "a.txt", "b.txt", "out", "in"])


# The fixture's tree is only read, so sharing it across examples is sound.
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_SEGMENTS, max_size=6))
def test_static_never_serves_outside_root(site: Path, segments: list[str]) -> None:
    status, body = asyncio.run(fetch(StaticBackend("files", site), "/".join(segments)))
    assert status in (200, 400, 403, 404)
    assert body in (b"alpha", b"beta") if status == 200 else body == b""
