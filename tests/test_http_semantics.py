"""HTTP semantics through a real edge (issue #14 item 3), over netsched/1 and h3.

Real UDP sockets, QUIC and TLS between the SDK and the edge; real HTTP/1.1
backends behind it: `python -m http.server` in its own process, and an h11
server in the test's process that echoes what it received. What the backend
sees (method, target with its query, headers, body) and what the client gets
back (the backend's status, headers and body, never mistaken for the edge's
own refusals) are asserted on both sides.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import h11
import pytest

from netsched_client import (
    BackendFailed,
    BackendStatusError,
    RequestError,
    ServiceNotFound,
    Session,
    open_session,
)
from netsched_client.runtime.session import client_configuration
from netsched_edge.config import BackendConfig, HealthConfig, ServiceConfig
from netsched_edge.server import EdgeServer

EdgeFactory = Callable[..., Awaitable[EdgeServer]]
HEALTH = HealthConfig(interval_s=0.5, path="/health")


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """h11: answers every request with JSON of what it saw; `?status=N` picks the status
    (a 3xx redirects to /landed), `?sleep=S` waits S seconds first, `?fat=N` adds N
    header fields of 200 bytes."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await _next(conn, reader)
            if not isinstance(request, h11.Request):
                return
            body = b""
            while isinstance(event := await _next(conn, reader), h11.Data):
                body += event.data
            target = request.target.decode()
            query = parse_qs(urlsplit(target).query)
            status = int(query.get("status", ["200"])[0])
            await asyncio.sleep(float(query.get("sleep", ["0"])[0]))
            seen = {
                "method": request.method.decode(),
                "target": target,
                "headers": [[k.decode(), v.decode()] for k, v in request.headers],
                "body": body.decode(),
            }
            payload = json.dumps(seen).encode()
            headers = [
                ("content-type", "application/json"),
                ("content-length", str(len(payload))),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("netsched-backend", "spoofed"),  # the edge's own name: never passed on
            ]
            if 300 <= status < 400:
                headers.append(("location", "/landed"))
            headers += [(f"x-fat-{i}", "f" * 200) for i in range(int(query.get("fat", ["0"])[0]))]
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            if request.method != b"HEAD":
                writer.write(conn.send(h11.Data(data=payload)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            conn.start_next_cycle()
    except (ConnectionError, h11.ProtocolError):
        pass
    finally:
        writer.close()


async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await reader.read(65536))
    assert isinstance(event, h11.Event)
    return event


@pytest.fixture
async def http_server(tmp_path: Path) -> AsyncIterator[int]:
    """`python -m http.server` serving a folder, in its own process; its port."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello, world\n")
    (root / "health").write_bytes(b"ok")
    (root / "big.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    port = unused_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "127.0.0.1",
        "--directory",
        str(root),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(200):  # until it listens
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            break
        yield port
    finally:
        proc.terminate()
        await proc.wait()


@pytest.fixture
async def edge(start_edge: EdgeFactory, http_server: int) -> AsyncIterator[EdgeServer]:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    nowhere = unused_port()
    yield await start_edge(
        ServiceConfig(
            "files", (BackendConfig("pyhttp", "http", "127.0.0.1", http_server),), health=HEALTH
        ),
        ServiceConfig(
            "echo", (BackendConfig("h11", "http", "127.0.0.1", echo_port),), health=HEALTH
        ),
        ServiceConfig("down", (BackendConfig("gone", "http", "127.0.0.1", nowhere),), retries=0),
    )
    echo.close()


@pytest.fixture(params=["netsched/1", "h3"])
async def session(request: pytest.FixtureRequest, edge: EdgeServer) -> AsyncIterator[Session]:
    configuration = client_configuration(
        "127.0.0.1", (request.param,), ca_file=str(edge.ca_certificate)
    )
    s = await open_session("127.0.0.1", edge.port, configuration=configuration)
    assert s.alpn == request.param
    try:
        yield s
    finally:
        await s.close()


def _seen(body: bytes) -> dict[str, object]:
    seen = json.loads(body)
    assert isinstance(seen, dict)
    return seen


async def test_http_server_get_and_head_pass_status_headers_and_body(session: Session) -> None:
    r = await session.request("files", path="/hello.txt?x=1")
    assert (r.status, r.body, r.backend) == (200, b"hello, world\n", "pyhttp")
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["server"].startswith("SimpleHTTP/")
    head = await session.request("files", method="HEAD", path="/hello.txt")
    assert (head.status, head.body) == (200, b"")
    if session.alpn == "netsched/1":  # h3 frames the body itself: no Content-Length
        assert head.headers["content-length"] == "13"


async def test_backend_404_and_501_are_the_backends_answers(session: Session) -> None:
    missing = await session.request("files", path="/missing.txt")
    assert missing.status == 404 and not missing.is_success
    assert b"File not found" in missing.body
    with pytest.raises(BackendStatusError) as caught:
        missing.raise_for_status()
    assert (caught.value.status, caught.value.body) == (404, missing.body)
    assert not isinstance(caught.value, RequestError)
    # http.server has no POST: its own 501 page arrives, not the edge's 502.
    post = await session.request("files", b"data", path="/hello.txt")
    assert post.status == 501 and b"Unsupported method" in post.body
    assert post.backend == "pyhttp"


async def test_edge_decisions_stay_typed_errors(session: Session) -> None:
    with pytest.raises(ServiceNotFound) as unknown:
        await session.request("nosuch", path="/missing.txt")
    assert unknown.value.status == 404 and "unknown service" in str(unknown.value)
    with pytest.raises(BackendFailed) as failed:
        await session.request("down")
    assert failed.value.status == 502 and isinstance(failed.value, RequestError)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
async def test_method_target_and_body_reach_the_backend(session: Session, method: str) -> None:
    body = b"" if method in ("GET", "DELETE") else b'{"n": 1}'
    r = await session.request("echo", body, method=method, path="/users/1?full=1&x=a%20b")
    assert r.status == 200
    seen = _seen(r.body)
    assert (seen["method"], seen["target"], seen["body"]) == (
        method,
        "/users/1?full=1&x=a%20b",
        body.decode(),
    )


async def test_status_and_repeated_headers_come_back(session: Session) -> None:
    r = await session.request("echo", path="/teapot?status=418")
    assert r.status == 418 and _seen(r.body)["target"] == "/teapot?status=418"
    assert r.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert r.headers["content-type"] == "application/json"
    assert "netsched-backend" not in r.headers  # a backend cannot speak for the edge
    assert r.backend == "h11"
    head = await session.request("echo", method="HEAD", path="/?status=204")
    assert (head.status, head.body) == (204, b"")


async def test_a_head_too_large_to_pass_on_is_the_edges_502(session: Session) -> None:
    r = await session.request("echo", path="/?fat=60")  # 12 KB of fields: they fit
    assert len([k for k in r.headers if k.startswith("x-fat-")]) == 60
    with pytest.raises(BackendFailed, match="the limit is 16384") as caught:
        await session.request("echo", path="/?fat=100")  # 20 KB: over the head limit
    assert caught.value.status == 502


async def test_a_query_on_the_service_root(session: Session) -> None:
    r = await session.request("echo", path="/?q=1")
    assert _seen(r.body)["target"] == "/?q=1"


async def test_a_stream_gets_the_backends_error_status_and_body(session: Session) -> None:
    stream = await session.open_stream("echo", method="PUT", path="/up?status=409")
    await stream.write(b"part 1, ")
    await stream.write(b"part 2")
    stream.write_eof()
    head = await stream.response()
    assert (head.status, head.from_backend) == (409, True)
    seen = _seen(await stream.read())
    assert (seen["method"], seen["body"]) == ("PUT", "part 1, part 2")


async def test_request_headers_reach_the_backend(session: Session) -> None:
    headers = [("Accept", "application/json"), ("X-Trace", "t1"), ("x-trace", "t2")]
    r = await session.request("echo", method="GET", path="/h", headers=headers)
    seen = _seen(r.body)["headers"]
    assert isinstance(seen, list)
    assert ["accept", "application/json"] in seen
    assert [v for k, v in seen if k == "x-trace"] == ["t1", "t2"]


async def test_forged_edge_fields_never_reach_the_backend(session: Session) -> None:
    forged = {"host": "evil.example", "x-netsched-service": "other", "early-data": "1"}
    r = await session.request("echo", path="/f", headers=forged)
    seen = _seen(r.body)["headers"]
    assert isinstance(seen, list)
    names = [k.lower() for k, _ in seen]
    assert names.count("host") == 1 and ["x-netsched-service", "echo"] in seen
    assert "early-data" not in names
    assert not any(re.search("evil", v) for _, v in seen)
