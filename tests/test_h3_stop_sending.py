"""A server may stop reading a request and still answer it (RFC 9114 §4.1).

quic-go's HTTP/3 server sends STOP_SENDING (H3_NO_ERROR) on the request stream
right before its response; our client used to throw the response away.
"""

from __future__ import annotations

from pathlib import Path

from aioquic.h3.connection import H3Connection
from aioquic.h3.events import HeadersReceived
from support import events_of, memory_pair

from netsched_client.proto.events import BodyReceived, ResponseReceived, StreamAborted
from netsched_client.proto.framing import RequestHead
from netsched_client.proto.h3 import H3Protocol

H3_NO_ERROR = 0x100


def _exchange(tmp_path: Path, *, request_done: bool) -> list[object]:
    pair = memory_pair(alpn="h3", ca_dir=tmp_path)
    pair.flush()
    client = H3Protocol(pair.client, authority="localhost")
    server = H3Connection(pair.server)
    events_of(pair.client)
    stream_id = client.send_request(RequestHead(service="files"), b"x", end_stream=request_done)
    pair.flush()
    heads = [e for q in events_of(pair.server) for e in server.handle_event(q)]
    assert any(isinstance(e, HeadersReceived) for e in heads)
    pair.server.stop_stream(stream_id, H3_NO_ERROR)
    server.send_headers(stream_id, [(b":status", b"200")])
    server.send_data(stream_id, b"answer", end_stream=True)
    pair.flush()
    return [e for q in events_of(pair.client) for e in client.handle_event(q)]


def test_response_after_stop_sending_is_delivered(tmp_path: Path) -> None:
    events = _exchange(tmp_path, request_done=True)
    assert not [e for e in events if isinstance(e, StreamAborted)]
    assert [e.head.status for e in events if isinstance(e, ResponseReceived)] == [200]
    body = [e for e in events if isinstance(e, BodyReceived)]
    assert b"".join(e.data for e in body) == b"answer" and body[-1].end_stream


def test_stop_sending_mid_upload_still_delivers_the_response(tmp_path: Path) -> None:
    events = _exchange(tmp_path, request_done=False)
    assert not [e for e in events if isinstance(e, StreamAborted)]
    assert any(isinstance(e, ResponseReceived) for e in events)
