"""`NetSchedTransport` under httpx's own client API, against a real edge (issue #18).

The edge and its backends are those of tests/test_http_semantics.py: a real
edge on loopback UDP with its generated CA, `python -m http.server` in its own
process (service `files`), an h11 echo server (service `echo`) and a service
whose only backend is down (`down`). Requests go through `httpx.AsyncClient`.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from netsched_client import SLO
from netsched_client.httpx import (
    DeadlineMissed,
    EdgeRefused,
    NetSchedInfo,
    NetSchedTransport,
    ServiceNotServed,
)
from netsched_edge.server import EdgeServer
from tests.test_http_semantics import edge, http_server, unused_port

__all__ = ["edge", "http_server"]  # fixtures, used by name


def _transport(edge: EdgeServer, **kwargs: object) -> NetSchedTransport:
    return NetSchedTransport(
        f"127.0.0.1:{edge.port}",
        ca_file=str(edge.ca_certificate),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
async def client(edge: EdgeServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=_transport(edge)) as c:
        yield c


def _info(response: httpx.Response) -> NetSchedInfo:
    info = response.extensions["netsched"]
    assert isinstance(info, NetSchedInfo)
    return info


async def test_get_with_query_and_headers(client: httpx.AsyncClient) -> None:
    r = await client.get("http://echo/users/1", params={"full": "1"}, headers={"x-trace": "t1"})
    assert r.status_code == 200
    seen = r.json()
    assert (seen["method"], seen["target"]) == ("GET", "/users/1?full=1")
    assert ["x-trace", "t1"] in seen["headers"]
    assert ["user-agent", f"python-httpx/{httpx.__version__}"] in seen["headers"]
    names = [name for name, _ in seen["headers"]]
    assert "connection" not in names and names.count("host") == 1  # the edge's own
    assert r.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert r.headers["content-type"] == "application/json"
    info = _info(r)
    assert info.backend == "h11" and info.alpn == "netsched/1" and info.paths == 1
    assert info.latency_ms is not None and info.latency_ms > 0
    assert info.queue_ms is not None and info.backend_ms is not None


async def test_post_with_a_streamed_body_and_put_json(client: httpx.AsyncClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b"part 1, ", b"part 2, ", b"part 3"):
            yield part

    r = await client.post("http://echo/upload", content=body())
    seen = r.json()
    assert (seen["method"], seen["body"]) == ("POST", "part 1, part 2, part 3")
    r = await client.put("http://echo/items/7", json={"n": 7})
    seen = r.json()
    assert (seen["method"], json.loads(seen["body"])) == ("PUT", {"n": 7})
    head = await client.head("http://echo/items/7")
    assert (head.status_code, head.content) == (200, b"")


async def test_stream_a_file_from_http_server(client: httpx.AsyncClient) -> None:
    received = bytearray()
    async with client.stream("GET", "http://files/big.bin") as r:
        assert r.status_code == 200 and r.headers["content-length"] == str(1 << 20)
        chunks = 0
        async for chunk in r.aiter_bytes():
            received += chunk
            chunks += 1
    assert bytes(received) == bytes(range(256)) * 4096
    assert chunks > 1  # it streamed, not one buffered piece
    assert _info(r).latency_ms is not None


async def test_backend_errors_are_responses(client: httpx.AsyncClient) -> None:
    r = await client.get("http://files/missing.txt")
    assert r.status_code == 404 and b"File not found" in r.content
    with pytest.raises(httpx.HTTPStatusError):
        r.raise_for_status()
    r = await client.delete("http://files/hello.txt")  # http.server: 501
    assert r.status_code == 501 and _info(r).backend == "pyhttp"


async def test_redirects_are_left_to_httpx(client: httpx.AsyncClient) -> None:
    r = await client.get("http://echo/old?status=302", follow_redirects=True)
    assert r.status_code == 200 and r.json()["target"] == "/landed"
    assert [h.status_code for h in r.history] == [302]
    r = await client.get("http://echo/old?status=302")
    assert r.status_code == 302 and r.headers["location"] == "/landed"


async def test_a_missed_deadline_is_an_httpx_timeout(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException) as caught:
        await client.get("http://echo/slow?sleep=2", extensions={"netsched": {"deadline_ms": 150}})
    assert isinstance(caught.value, DeadlineMissed)
    assert time.monotonic() - started < 1.5
    # The SLO extension met: the same service answers in time.
    r = await client.get("http://echo/fast", extensions={"netsched": {"deadline_ms": 2000}})
    info = _info(r)
    assert info.deadline_ms == 2000 and info.deadline_met is True


async def test_httpx_read_timeout_is_honoured(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ReadTimeout) as caught:
        await client.get("http://echo/slow?sleep=2", timeout=httpx.Timeout(5, read=0.2))
    assert not isinstance(caught.value, DeadlineMissed)


async def test_transport_default_slo_applies(edge: EdgeServer) -> None:
    transport = _transport(edge, slo=SLO(deadline_ms=150))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(DeadlineMissed):
            await client.get("http://echo/slow?sleep=2")
        # A request's own SLO wins over the transport's.
        slow_ok = {"netsched": {"deadline_ms": 3000}}
        r = await client.get("http://echo/slow?sleep=0.3", extensions=slow_ok)
        assert r.status_code == 200


async def test_edge_decisions_map_onto_httpx_errors(client: httpx.AsyncClient) -> None:
    with pytest.raises(EdgeRefused) as refused:
        await client.get("http://down/")
    assert refused.value.status == 502 and isinstance(refused.value, httpx.TransportError)
    with pytest.raises(ServiceNotServed) as unserved:
        await client.get("http://nosuch/")
    assert isinstance(unserved.value, httpx.UnsupportedProtocol)
    with pytest.raises(ValueError, match="unknown SLO fields"):
        await client.get("http://echo/", extensions={"netsched": {"deadline": 5}})


async def test_fallback_only_when_asked(edge: EdgeServer, http_server: int) -> None:
    direct = f"http://127.0.0.1:{http_server}/hello.txt"  # host 127.0.0.1: no such service
    transport = _transport(edge, fallback=httpx.AsyncHTTPTransport())
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get(direct)
        assert (r.status_code, r.content) == (200, b"hello, world\n")
        assert _info(r).fallback == "edge has no service '127.0.0.1'"
        r = await client.get("http://files/hello.txt")  # served by the edge
        assert _info(r).fallback is None and _info(r).backend == "pyhttp"
    # Without a fallback transport the same URL is an error, not a silent detour.
    async with httpx.AsyncClient(transport=_transport(edge)) as client:
        with pytest.raises(ServiceNotServed):
            await client.get(direct)


async def test_an_unreachable_edge(http_server: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free again: the kernel refuses datagrams to it
    direct = f"http://127.0.0.1:{http_server}/hello.txt"
    alone = NetSchedTransport(f"127.0.0.1:{port}", verify=False)
    async with httpx.AsyncClient(transport=alone) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ConnectError, match="nothing listens"):
            await client.get(direct)
        assert time.monotonic() - started < 2
    backed = NetSchedTransport(
        f"127.0.0.1:{port}", verify=False, fallback=httpx.AsyncHTTPTransport()
    )
    async with httpx.AsyncClient(transport=backed) as client:
        r = await client.get(direct)
        assert r.status_code == 200
        fallback = _info(r).fallback
        assert fallback is not None and fallback.startswith("edge unreachable: nothing listens")


async def test_one_session_reused_then_resumed_with_0rtt(edge: EdgeServer) -> None:
    transport = _transport(edge)
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get("http://echo/1")
        first = transport.session
        await client.get("http://echo/2")
        assert transport.session is first and first is not None
        await first.close()  # as after a network change or an edge restart
        r = await client.get("http://echo/3")
        second = transport.session
        assert second is not None and second is not first
        assert second.session_resumed
        assert _info(r).early_data in ("pending", "accepted")
        assert r.json()["method"] == "GET"


async def test_services_map_hosts(edge: EdgeServer) -> None:
    transport = _transport(edge, services={"api.example": "echo"})
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get("https://api.example/users/1")
        assert r.json()["target"] == "/users/1"
        with pytest.raises(ServiceNotServed, match="not an edge service"):
            await client.get("https://echo/")


async def test_h3_when_that_is_what_the_edge_speaks(start_edge, http_server: int) -> None:
    from netsched_edge.config import BackendConfig, ServiceConfig

    h3_edge = await start_edge(
        ServiceConfig("files", (BackendConfig("pyhttp", "http", "127.0.0.1", http_server),)),
        alpn=("h3",),
    )
    async with httpx.AsyncClient(transport=_transport(h3_edge)) as client:
        r = await client.get("http://files/hello.txt?x=1")
        assert (r.status_code, r.content) == (200, b"hello, world\n")
        assert _info(r).alpn == "h3" and r.http_version == "h3"
        missing = await client.get("http://files/nope")
        assert missing.status_code == 404


def test_edge_must_be_host_and_port() -> None:
    with pytest.raises(ValueError, match="host:port"):
        NetSchedTransport("edge.example")
    assert unused_port() > 0
