"""Header fields in request and response heads, and their HTTP/3 mapping (sans-IO)."""

from __future__ import annotations

import msgpack
import pytest
from aioquic.buffer import encode_uint_var

from netsched_client.errors import FramingError
from netsched_client.proto import h3
from netsched_client.proto.framing import (
    MAX_HEADER_FIELDS,
    Headers,
    HeadReader,
    RequestHead,
    ResponseHead,
    encode_response_head,
)


def _response_from_wire(wire: dict[str, object]) -> ResponseHead:
    payload = msgpack.packb(wire, use_bin_type=True)
    head, rest = HeadReader("response").feed(encode_uint_var(len(payload)) + payload)
    assert head is not None and rest == b""
    return head


def test_header_names_are_lowercased_and_order_and_repeats_kept() -> None:
    head = RequestHead("api", headers={"Accept": "a"})
    assert head.headers == (("accept", "a"),)
    pairs = [("X-A", "1"), ("b", "2"), ("x-a", "3")]
    assert RequestHead("api", headers=pairs).headers == (("x-a", "1"), ("b", "2"), ("x-a", "3"))


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ([("x", "a\r\nInjected: 1")], "CR, LF or NUL"),
        ([("x", "a\x00")], "CR, LF or NUL"),
        ([("bad name", "v")], "RFC 9110 token"),
        ([("", "v")], "RFC 9110 token"),
        ([("netsched-backend", "me")], "are the edge's"),
        ([("x", "v" * 8193)], "0..8192 characters"),
        ([("x", "1", "2")], "pair"),
        (["xy"], "pair"),
        ("x: y", "pairs or a map"),
        ([(f"x{i}", "v") for i in range(MAX_HEADER_FIELDS + 1)], "at most 128 fields"),
    ],
)
def test_bad_header_fields_are_refused(headers: object, match: str) -> None:
    with pytest.raises(FramingError, match=match):
        RequestHead("api", headers=headers)  # type: ignore[arg-type]
    with pytest.raises(FramingError, match=match):
        ResponseHead(200, headers=headers)  # type: ignore[arg-type]


def test_response_fields_decode_from_the_wire() -> None:
    wire = {"v": 1, "s": 404, "h": [["content-type", "text/html"]], "fb": True}
    assert _response_from_wire(wire) == ResponseHead(
        404, headers=(("content-type", "text/html"),), from_backend=True
    )
    with pytest.raises(FramingError, match="from_backend: must be a bool"):
        _response_from_wire({"v": 1, "s": 200, "fb": 1})
    with pytest.raises(FramingError, match="pair"):
        _response_from_wire({"v": 1, "s": 200, "h": [["a"]]})


def test_headers_mapping_joins_repeats_but_keeps_them_apart_on_request() -> None:
    headers = Headers([("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("x", "y")])
    assert headers["SET-COOKIE"] == "a=1, b=2"
    assert headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert list(headers) == ["set-cookie", "x"] and len(headers) == 2
    assert headers.get("missing") is None
    assert RequestHead("api", headers=headers).headers == headers.fields


@pytest.mark.parametrize(
    ("path", "service", "target"),
    [
        ("/api", "api", "/"),
        ("/api?q=1", "api", "/?q=1"),
        ("/api/", "api", "/"),
        ("/api/users/1?full=1&a=b", "api", "/users/1?full=1&a=b"),
        ("/api/a?b/c", "api", "/a?b/c"),
    ],
)
def test_h3_path_maps_to_service_and_target(path: str, service: str, target: str) -> None:
    head = h3.request_head([(b":method", b"GET"), (b":path", path.encode())])
    assert (head.service, head.meta["path"]) == (service, target)


def test_h3_request_fields_round_trip_without_connection_specific_ones() -> None:
    head = RequestHead(
        "api",
        meta={"method": "PUT", "path": "/x?y=1"},
        headers=[
            ("accept", "*/*"),
            ("connection", "keep-alive"),
            ("host", "api.example"),
            ("te", "gzip"),
            ("content-length", "3"),
            ("x-multi", "1"),
            ("x-multi", "2"),
        ],
    )
    fields = h3.request_headers(head, "edge:4433")
    names = [name for name, _ in fields]
    assert b"connection" not in names and b"host" not in names and b"te" not in names
    back = h3.request_head(fields)
    assert back.meta["method"] == "PUT" and back.meta["path"] == "/x?y=1"
    assert back.headers == (("accept", "*/*"), ("x-multi", "1"), ("x-multi", "2"))


def test_h3_response_carries_backend_fields_and_origin() -> None:
    head = ResponseHead(
        501,
        backend="b1",
        headers=[("content-type", "text/html"), ("content-length", "9"), ("x-a", "1")],
        from_backend=True,
    )
    back = h3.response_head(h3.response_headers(head))
    assert (back.status, back.backend, back.from_backend) == (501, "b1", True)
    assert back.headers == (("content-type", "text/html"), ("x-a", "1"))
    edge_error = h3.response_head(h3.response_headers(ResponseHead(503, message="no backend")))
    assert not edge_error.from_backend and edge_error.headers == ()


def test_native_response_head_with_fields_round_trips() -> None:
    head = ResponseHead(200, headers=[("etag", '"x"')], from_backend=True)
    reader = HeadReader("response")
    assert reader.feed(encode_response_head(head) + b"body") == (head, b"body")


@pytest.mark.parametrize(
    ("target", "wire"),
    [("/", "/files"), ("/?q=1", "/files?q=1"), ("/a/b", "/files/a/b"), ("/a?q", "/files/a?q")],
)
def test_h3_path_adds_no_slash_for_the_root_target(target: str, wire: str) -> None:
    # A plain HTTP/3 server (the interop runner's) finds /files, not /files/; the edge reads
    # both as the backend's "/".
    head = RequestHead("files", meta={"method": "GET", "path": target})
    fields = dict(h3.request_headers(head, "edge:4433"))
    assert fields[b":path"] == wire.encode()
    assert h3.request_head(list(fields.items())).meta["path"] == target
