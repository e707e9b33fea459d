"""Stream heads, the incremental head reader, DATAGRAM framing, and the docs/PROTOCOL.md vectors."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aioquic.buffer import Buffer, encode_uint_var  # type: ignore[attr-defined]
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_client.errors import FramingError, SLOError
from netsched_client.proto.framing import (
    MAX_HEAD_BYTES,
    ControlReader,
    Goaway,
    HeadReader,
    RequestHead,
    ResponseHead,
    decode_datagram,
    encode_datagram,
    encode_goaway,
    encode_request_head,
    encode_response_head,
)
from netsched_client.proto.slo import (
    SLO,
    SLO_TRANSPORT_PARAMETER,
    decode_slo,
    decode_slo_header,
    encode_slo,
    encode_slo_header,
)

fuzz = settings(deadline=None, max_examples=100)


def pack(value: object) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def framed(wire: object) -> bytes:
    payload = pack(wire)
    return encode_uint_var(len(payload)) + payload


def read_request(data: bytes) -> tuple[RequestHead | None, bytes]:
    return HeadReader("request").feed(data)


def read_response(data: bytes) -> tuple[ResponseHead | None, bytes]:
    return HeadReader("response").feed(data)


# -- docs/PROTOCOL.md vectors --------------------------------------------

PROTOCOL_MD = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
_BLOCK_RE = re.compile(r"^```(hex|text) ([\w-]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def protocol_vectors() -> dict[str, bytes]:
    """Name -> bytes of every `hex <name>` / `text <name>` block in PROTOCOL.md."""
    vectors: dict[str, bytes] = {}
    for kind, name, body in _BLOCK_RE.findall(PROTOCOL_MD.read_text()):
        assert name not in vectors, f"duplicate vector {name}"
        if kind == "hex":
            vectors[name] = bytes.fromhex(
                "".join(line.split("#", 1)[0] for line in body.splitlines())
            )
        else:
            vectors[name] = body.strip().encode("ascii")
    return vectors


def pull_transport_parameter(data: bytes) -> SLO:
    buf = Buffer(data=data)
    assert buf.pull_uint_var() == SLO_TRANSPORT_PARAMETER
    value = buf.pull_bytes(buf.pull_uint_var())
    assert buf.eof()
    return decode_slo(value)


EXAMPLE_SLO = SLO(
    deadline_ms=150,
    urgency=1,
    incremental=True,
    loss_tolerance=0.05,
    min_rate=2_000_000,
    service="video",
    affinity="user-42",
)
REQUEST = RequestHead(
    "video", slo=SLO(deadline_ms=150, urgency=1), meta={"method": "GET", "path": "/seg/1"}
)
HTTP_REQUEST = RequestHead(
    "api",
    meta={"method": "GET", "path": "/users/1?full=1"},
    headers=[("accept", "application/json")],
)
STREAMING_REQUEST = RequestHead("chat", streaming=True)
RESPONSE = ResponseHead(200, backend="b1", queue_ms=0.5, backend_ms=3.25)
ERROR_RESPONSE = ResponseHead(504, message="deadline exceeded")
BACKEND_RESPONSE = ResponseHead(
    404, backend="b1", headers=[("content-type", "text/plain")], from_backend=True
)

# name -> (the value, its encoding by our code, our decoding of the doc's bytes)
VECTORS: dict[str, tuple[object, Callable[[], bytes], Callable[[bytes], object]]] = {
    "slo-example": (EXAMPLE_SLO, lambda: encode_slo(EXAMPLE_SLO), decode_slo),
    "slo-transport-parameter": (
        EXAMPLE_SLO,
        lambda: (
            encode_uint_var(SLO_TRANSPORT_PARAMETER)
            + encode_uint_var(len(encode_slo(EXAMPLE_SLO)))
            + encode_slo(EXAMPLE_SLO)
        ),
        pull_transport_parameter,
    ),
    "slo-header": (
        EXAMPLE_SLO,
        lambda: encode_slo_header(EXAMPLE_SLO).encode("ascii"),
        decode_slo_header,
    ),
    "request-head": (REQUEST, lambda: encode_request_head(REQUEST), read_request),
    "request-head-http": (HTTP_REQUEST, lambda: encode_request_head(HTTP_REQUEST), read_request),
    "request-head-streaming": (
        STREAMING_REQUEST,
        lambda: encode_request_head(STREAMING_REQUEST),
        read_request,
    ),
    "response-head": (RESPONSE, lambda: encode_response_head(RESPONSE), read_response),
    "response-head-backend": (
        BACKEND_RESPONSE,
        lambda: encode_response_head(BACKEND_RESPONSE),
        read_response,
    ),
    "response-head-error": (
        ERROR_RESPONSE,
        lambda: encode_response_head(ERROR_RESPONSE),
        read_response,
    ),
    "datagram": (
        ("voice", b"\xde\xad\xbe\xef"),
        lambda: encode_datagram("voice", b"\xde\xad\xbe\xef"),
        decode_datagram,
    ),
    "goaway": (
        [Goaway(8)],
        lambda: encode_goaway(Goaway(8)),
        lambda data: ControlReader().feed(data),
    ),
}


def test_every_protocol_vector_is_checked() -> None:
    assert set(protocol_vectors()) == set(VECTORS)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_protocol_vector(name: str) -> None:
    value, encode, decode = VECTORS[name]
    documented = protocol_vectors()[name]
    assert encode() == documented
    decoded = decode(documented)
    if isinstance(value, RequestHead | ResponseHead):
        assert decoded == (value, b"")
    else:
        assert decoded == value


# -- head dataclasses ----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"service": ""}, r"^request\.service: must be 1\.\.64 characters"),
        ({"service": "a b"}, r"^request\.service: "),
        ({"service": 5}, r"^request\.service: .*\(got 5\)$"),
        ({"service": "a", "slo": {"dl": 5}}, r"^request\.slo: must be an SLO"),
        ({"service": "a", "streaming": 1}, r"^request\.streaming: must be a bool"),
        ({"service": "a", "meta": [("k", "v")]}, r"^request\.meta: must be a map"),
        (
            {"service": "a", "meta": {str(i): "" for i in range(17)}},
            r"^request\.meta: must have at most 16 entries \(got 17\)$",
        ),
        ({"service": "a", "meta": {"": "v"}}, r"^request\.meta key: "),
        ({"service": "a", "meta": {"k" * 65: "v"}}, r"^request\.meta key: "),
        ({"service": "a", "meta": {1: "v"}}, r"^request\.meta key: "),
        ({"service": "a", "meta": {"k": "v" * 1025}}, r"^request\.meta\['k'\]: "),
        ({"service": "a", "meta": {"k": 1}}, r"^request\.meta\['k'\]: "),
        ({"service": "a", "meta": {"k": "\udc80"}}, r"^request\.meta\['k'\]: "),
    ],
)
def test_request_head_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(FramingError, match=message):
        RequestHead(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"status": 99}, r"^response\.status: must be an int in 100\.\.999 \(got 99\)$"),
        ({"status": 1000}, r"^response\.status: "),
        ({"status": True}, r"^response\.status: "),
        ({"status": "200"}, r"^response\.status: "),
        ({"status": 200, "message": "m" * 1025}, r"^response\.message: "),
        ({"status": 200, "message": None}, r"^response\.message: "),
        ({"status": 200, "backend": ""}, r"^response\.backend: "),
        ({"status": 200, "backend": "b" * 257}, r"^response\.backend: "),
        ({"status": 200, "queue_ms": -0.1}, r"^response\.queue_ms: "),
        ({"status": 200, "queue_ms": math.nan}, r"^response\.queue_ms: "),
        ({"status": 200, "queue_ms": math.inf}, r"^response\.queue_ms: "),
        ({"status": 200, "backend_ms": 10**400}, r"^response\.backend_ms: "),
        ({"status": 200, "backend_ms": False}, r"^response\.backend_ms: "),
        ({"status": 200, "backend_ms": "1"}, r"^response\.backend_ms: "),
        ({"status": 200, "meta": {"k": b"v"}}, r"^response\.meta\['k'\]: "),
    ],
)
def test_response_head_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(FramingError, match=message):
        ResponseHead(**kwargs)


def test_meta_is_a_frozen_copy() -> None:
    meta = {"method": "GET"}
    head = RequestHead("api", meta=meta)
    meta["method"] = "x" * 5000  # must not reach the validated head
    assert head.meta == {"method": "GET"}
    with pytest.raises(TypeError):
        head.meta["method"] = "PUT"  # type: ignore[index]


def test_durations_become_float() -> None:
    head = ResponseHead(200, queue_ms=2, backend_ms=0)
    assert (type(head.queue_ms), type(head.backend_ms)) == (float, float)
    assert encode_response_head(head) == encode_response_head(
        ResponseHead(200, queue_ms=2.0, backend_ms=0.0)
    )


# -- encoding ------------------------------------------------------------


def decoded_map(encoded: bytes) -> Any:
    buf = Buffer(data=encoded)
    size = buf.pull_uint_var()
    assert size == len(encoded) - buf.tell()
    return msgpack.unpackb(encoded[buf.tell() :])


def test_encoders_write_version_first_and_skip_defaults() -> None:
    assert list(decoded_map(encode_request_head(RequestHead("a"))).items()) == [
        ("v", 1),
        ("svc", "a"),
    ]
    assert decoded_map(encode_response_head(ResponseHead(200))) == {"v": 1, "s": 200}
    # 0.0 is a measurement, not the default (None): it is sent.
    assert decoded_map(encode_response_head(ResponseHead(503, queue_ms=0.0))) == {
        "v": 1,
        "s": 503,
        "tq": 0.0,
    }
    assert decoded_map(encode_request_head(RequestHead("a", slo=SLO()))) == {
        "v": 1,
        "svc": "a",
        "slo": {"v": 1},
    }


def test_long_head_uses_a_two_byte_length() -> None:
    encoded = encode_request_head(RequestHead("a", meta={"k": "v" * 100}))
    assert encoded[0] >> 6 == 1
    assert read_request(encoded) == (RequestHead("a", meta={"k": "v" * 100}), b"")


def test_encoding_an_oversize_head_fails() -> None:
    head = RequestHead("a", headers=[(f"k{i}", "v" * 1000) for i in range(17)])
    with pytest.raises(FramingError, match=f"the limit is {MAX_HEAD_BYTES}"):
        encode_request_head(head)


# -- HeadReader ----------------------------------------------------------


def test_whole_input_with_body() -> None:
    data = encode_request_head(REQUEST) + b"body bytes"
    assert read_request(data) == (REQUEST, b"body bytes")


def test_byte_by_byte() -> None:
    data = encode_response_head(RESPONSE) + b"xy"
    reader = HeadReader("response")
    results = [reader.feed(data[i : i + 1]) for i in range(len(data) - 2)]
    assert results[:-1] == [(None, b"")] * (len(results) - 1)
    assert results[-1] == (RESPONSE, b"")
    reader.finish()


def test_every_split_point() -> None:
    data = encode_request_head(REQUEST) + b"tail"
    for cut in range(len(data) + 1):
        reader = HeadReader("request")
        first = reader.feed(data[:cut])
        if first[0] is not None:
            assert first == (REQUEST, data[len(data) - 4 : cut])
            continue
        assert first == (None, b"")
        assert reader.feed(data[cut:]) == (REQUEST, b"tail")


def test_empty_feed_is_harmless() -> None:
    reader = HeadReader("request")
    assert reader.feed(b"") == (None, b"")
    assert reader.feed(encode_request_head(STREAMING_REQUEST)) == (STREAMING_REQUEST, b"")


def test_feeding_after_the_head_is_a_bug() -> None:
    reader = HeadReader("request")
    reader.feed(encode_request_head(STREAMING_REQUEST))
    reader.finish()  # FIN right after the head: an empty body is fine
    with pytest.raises(RuntimeError):
        reader.feed(b"more")


def test_feeding_after_an_error_is_a_bug() -> None:
    reader = HeadReader("request")
    with pytest.raises(FramingError):
        reader.feed(framed([1]))
    with pytest.raises(RuntimeError):
        reader.feed(b"\x00")


@pytest.mark.parametrize("data", [b"", b"\x40", b"\x05\x84", encode_request_head(REQUEST)[:-1]])
def test_fin_inside_the_head(data: bytes) -> None:
    reader = HeadReader("request")
    assert reader.feed(data) == (None, b"")
    with pytest.raises(FramingError, match="stream ended before the head was complete"):
        reader.finish()


def test_oversize_length_is_rejected_from_the_varint_alone() -> None:
    with pytest.raises(FramingError, match="length 16385 exceeds the limit of 16384 bytes"):
        read_request(encode_uint_var(MAX_HEAD_BYTES + 1))
    with pytest.raises(FramingError, match="exceeds the limit"):
        read_request(bytes.fromhex("ffffffffffffffff"))
    small = HeadReader("request", limit=10)
    with pytest.raises(FramingError, match="length 17 exceeds the limit of 10 bytes"):
        small.feed(encode_request_head(RequestHead("abcdefgh")))


def test_non_minimal_length_is_accepted() -> None:
    payload = pack({"v": 1, "svc": "a"})
    data = bytes([0x40, len(payload)]) + payload
    assert read_request(data) == (RequestHead("a"), b"")


def test_unknown_keys_are_ignored() -> None:
    data = framed({"v": 1, "svc": "a", "new": {"x": [1, 2.5, None]}, "slo": {"v": 1, "z": 0}})
    assert read_request(data) == (RequestHead("a", slo=SLO()), b"")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00", "length is 0"),
        (framed([1, 2]), "must be a msgpack map"),
        (framed("v"), "must be a msgpack map"),
        (b"\x02\xc1\xc1", "not a single valid msgpack object"),
        (b"\x05" + pack({"v": 1}) + b"\x00", "not a single valid msgpack object"),  # map + 1
        (b"\x03\x81\xa1\xff", "not a single valid msgpack object"),  # bad UTF-8
        (b"\x05\xdf\xff\xff\xff\xff", "not a single valid msgpack object"),  # map32 of 4G
        (framed({1: 2}), "not a single valid msgpack object"),
        (framed({"svc": "a"}), "missing version key 'v'"),
        (framed({"v": 2, "svc": "a"}), r"unsupported head version.*\(got 2\)"),
        (framed({"v": True, "svc": "a"}), "unsupported head version"),
        (framed({"v": 1}), r"missing key 'svc' \(service\)"),
        (framed({"v": 1, "svc": None}), "request.service: null is not allowed"),
        (framed({"v": 1, "svc": "a", "st": None}), "request.streaming: null is not allowed"),
        (framed({"v": 1, "svc": 7}), r"request\.service: .*\(got 7\)"),
        (framed({"v": 1, "svc": "a", "st": 1}), "request.streaming: must be a bool"),
        (framed({"v": 1, "svc": "a", "m": {"k": 1}}), r"request\.meta\['k'\]"),
        (framed({"v": 1, "svc": "a", "m": ["k"]}), r"request\.meta: must be a map"),
    ],
)
def test_malformed_request_heads(data: bytes, message: str) -> None:
    with pytest.raises(FramingError, match=message):
        read_request(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (framed({"v": 1}), r"missing key 's' \(status\)"),
        (framed({"v": 1, "s": 200.0}), r"response\.status"),
        (framed({"v": 1, "s": 200, "tq": "1"}), r"response\.queue_ms"),
        (framed({"v": 1, "s": 200, "be": None}), "response.backend: null is not allowed"),
        (encode_request_head(REQUEST), r"missing key 's'"),
    ],
)
def test_malformed_response_heads(data: bytes, message: str) -> None:
    with pytest.raises(FramingError, match=message):
        read_response(data)


def test_invalid_embedded_slo_is_an_slo_error() -> None:
    for slo in ({"v": 1, "dl": 0}, {"v": 2}, {"dl": 5}, [1], "x"):
        with pytest.raises(SLOError) as info:
            read_request(framed({"v": 1, "svc": "a", "slo": slo}))
        assert not isinstance(info.value, FramingError)


def test_malformed_head_wins_over_invalid_slo() -> None:
    # Both wrong: a 400 describes the request better than a 422.
    with pytest.raises(FramingError, match=r"request\.service"):
        read_request(framed({"v": 1, "svc": "a b", "slo": {"v": 1, "dl": 0}}))


def test_reader_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="kind must be"):
        HeadReader("reply")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="limit must be positive"):
        HeadReader("request", limit=0)


# -- DATAGRAM ------------------------------------------------------------


def test_datagram_round_trip_and_empty_payload() -> None:
    assert decode_datagram(encode_datagram("dns", b"")) == ("dns", b"")
    name = "n" * 64
    assert decode_datagram(encode_datagram(name, b"\x00" * 3)) == (name, b"\x00" * 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "datagram: empty"),
        (b"\x00abc", r"service length must be 1\.\.64 \(got 0\)"),
        (b"\x41" + b"a" * 70, r"service length must be 1\.\.64 \(got 65\)"),
        (b"\x05voi", "service length is 5 but only 3 bytes follow"),
        (b"\x03a ba", r"datagram\.service: "),
        (b"\x02\xc3\xa9x", r"datagram\.service: "),
    ],
)
def test_bad_datagrams(data: bytes, message: str) -> None:
    with pytest.raises(FramingError, match=message):
        decode_datagram(data)


@pytest.mark.parametrize("service", ["", "a/b", "s" * 65])
def test_datagram_encoder_checks_the_service(service: str) -> None:
    with pytest.raises(FramingError, match=r"^datagram\.service: "):
        encode_datagram(service, b"x")


# -- property tests ------------------------------------------------------

services = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
texts = st.text(st.characters(codec="utf-8"), max_size=40)
metas = st.dictionaries(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=10), texts, max_size=5
)
durations = st.none() | st.floats(0, 86_400_000) | st.integers(0, 86_400_000)
slos = st.none() | st.builds(
    SLO,
    deadline_ms=st.none() | st.integers(1, 3_600_000),
    urgency=st.none() | st.integers(0, 7),
    loss_tolerance=st.none() | st.floats(0, 1),
    service=st.none() | services,
)
request_heads = st.builds(
    RequestHead, service=services, slo=slos, streaming=st.booleans(), meta=metas
)
response_heads = st.builds(
    ResponseHead,
    status=st.integers(100, 999),
    message=texts,
    backend=st.none() | texts.filter(bool),
    queue_ms=durations,
    backend_ms=durations,
    meta=metas,
)


def feed_in_chunks(reader: HeadReader[Any], data: bytes, cuts: list[int]) -> tuple[Any, bytes]:
    """Feed `data` split at `cuts`; return the head and all body bytes after it."""
    head, body, start = None, b"", 0
    for end in [*sorted(cuts), len(data)]:
        chunk = data[start:end]
        start = max(start, end)
        if head is None:
            head, body = reader.feed(chunk)
        else:
            body += chunk
    reader.finish()
    return head, body


@given(request_heads, st.binary(max_size=20), st.lists(st.integers(0, 300), max_size=6))
@fuzz
def test_request_round_trip(head: RequestHead, body: bytes, cuts: list[int]) -> None:
    data = encode_request_head(head) + body
    assert feed_in_chunks(HeadReader("request"), data, cuts) == (head, body)


@given(response_heads, st.binary(max_size=20), st.lists(st.integers(0, 300), max_size=6))
@fuzz
def test_response_round_trip(head: ResponseHead, body: bytes, cuts: list[int]) -> None:
    data = encode_response_head(head) + body
    assert feed_in_chunks(HeadReader("response"), data, cuts) == (head, body)


@given(
    st.sampled_from(["request", "response"]),
    st.binary(max_size=300),
    st.lists(st.integers(0, 300), max_size=4),
)
@fuzz
def test_arbitrary_bytes_raise_only_framing_or_slo_errors(
    kind: Any, data: bytes, cuts: list[int]
) -> None:
    try:
        head, body = feed_in_chunks(HeadReader(kind), data, cuts)
    except (FramingError, SLOError):
        return
    assert head is not None  # finish() passed, so the head was complete
    assert data.endswith(body)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
head_keys = st.sampled_from(["v", "svc", "slo", "st", "m", "s", "msg", "be", "tq", "tb", "dl", "x"])


@given(
    st.sampled_from(["request", "response"]),
    st.dictionaries(head_keys, msgpack_values | st.just(1) | services, max_size=8),
)
@fuzz
def test_arbitrary_maps_decode_or_raise_framing_or_slo_errors(
    kind: Any, wire: dict[str, Any]
) -> None:
    try:
        head, rest = HeadReader(kind).feed(framed(wire))
    except (FramingError, SLOError):
        return
    assert rest == b""
    assert wire["v"] == 1
    encode = encode_request_head if isinstance(head, RequestHead) else encode_response_head
    assert HeadReader(kind).feed(encode(head)) == (head, b"")  # type: ignore[arg-type]


@given(services, st.binary(max_size=50))
@fuzz
def test_datagram_round_trip(service: str, payload: bytes) -> None:
    assert decode_datagram(encode_datagram(service, payload)) == (service, payload)


@given(st.binary(max_size=80))
@fuzz
def test_arbitrary_datagrams_raise_only_framing_error(data: bytes) -> None:
    try:
        service, payload = decode_datagram(data)
    except FramingError:
        return
    assert encode_datagram(service, payload) == data
