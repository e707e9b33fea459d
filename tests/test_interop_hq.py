"""HTTP/0.9 (hq-interop) client role of the SDK, against a real edge on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived

from netsched_client import ConnectionLost, NegotiationError, open_session
from netsched_client.proto.events import BodyReceived, ResponseReceived
from netsched_client.proto.framing import RequestHead
from netsched_client.proto.hq import HQProtocol, request_line
from netsched_client.runtime.session import client_configuration
from netsched_edge.tls import generate_self_signed


async def test_get_files_concurrently_from_the_edge(start_edge, www: Path) -> None:
    edge = await start_edge(www=www)
    config = client_configuration("127.0.0.1", alpns=("hq-interop",), verify=False)
    session = await open_session("127.0.0.1", edge.port, configuration=config)
    try:
        assert session.alpn == "hq-interop"
        small, big = await asyncio.wait_for(
            asyncio.gather(
                session.request("www", meta={"path": "/hello.txt"}),
                session.request("www", meta={"path": "/big.bin"}),
            ),
            20,
        )
        assert (small.status, small.body) == (200, (www / "hello.txt").read_bytes())
        assert (big.status, big.body) == (200, (www / "big.bin").read_bytes())
        # HTTP/0.9 has no status: a missing file is a reset stream.
        with pytest.raises(ConnectionLost, match="aborted"):
            await asyncio.wait_for(session.request("www", meta={"path": "/nope"}), 10)
        with pytest.raises(NegotiationError, match="only the 'www' file service"):
            await session.request("api", meta={"path": "/x"})
        with pytest.raises(NegotiationError, match="no body"):
            await session.request("www", b"payload", meta={"path": "/hello.txt"})
        # The connection survived all of that.
        again = await asyncio.wait_for(session.request("www", meta={"path": "/hello.txt"}), 10)
        assert again.body == small.body
    finally:
        await session.close()


def test_response_events_sans_io() -> None:
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["x"]))
    proto = HQProtocol(quic)
    stream_id = proto.send_request(RequestHead(service="www", meta={"path": "/a"}))
    assert proto.send_body(stream_id, b"more") is False  # the request ended the stream
    first = proto.handle_event(
        StreamDataReceived(data=b"ab", end_stream=False, stream_id=stream_id)
    )
    assert [type(e) for e in first] == [ResponseReceived, BodyReceived]
    assert isinstance(first[0], ResponseReceived) and first[0].head.status == 200
    last = proto.handle_event(StreamDataReceived(data=b"", end_stream=True, stream_id=stream_id))
    assert last == [BodyReceived(stream_id, b"", True)]
    # Bytes on a stream nobody asked on (a server-opened one) are ignored.
    assert proto.handle_event(StreamDataReceived(data=b"x", end_stream=True, stream_id=1)) == []


def test_request_line() -> None:
    assert request_line("/dir/file") == b"GET /dir/file\r\n"
    for bad in ("file", "/with space", "/t\u00e9st", "/" + "a" * 2048, "/ctl\x7f"):
        with pytest.raises(ValueError, match="meta\\['path'\\]"):
            request_line(bad)


def test_server_cannot_send_requests(tmp_path: Path) -> None:
    pair = generate_self_signed(tmp_path)
    config = QuicConfiguration(is_client=False, alpn_protocols=["x"])
    config.load_cert_chain(pair.certificate, pair.private_key)
    quic = QuicConnection(configuration=config, original_destination_connection_id=b"o" * 8)
    with pytest.raises(NegotiationError, match="only a client"):
        HQProtocol(quic).send_request(RequestHead(service="www", meta={"path": "/a"}))
