"""Property tests of the HTTP/3 mapping (proto/h3.py): header codecs, the header bound, streams.

- `request_head(request_headers(head))` and `response_head(response_headers(head))`
  round-trip; arbitrary header lists give a head or `FramingError` / `SLOError`.
- `HeaderBound`, fed a request stream in any chunking, reports exactly the
  first HEADERS / PUSH_PROMISE frame whose declared length exceeds the bound.
- An `H3Protocol` server on an in-memory QUIC pair, fed arbitrary request
  stream bytes in arbitrary chunks, raises nothing and emits typed events; a
  header block declared above `max_header_bytes` is refused (stream reset and
  STOP_SENDING with H3_EXCESSIVE_LOAD, a 431 `RequestRejected`) before it is
  buffered; a QPACK block that decodes above the bound is refused too.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import tracemalloc

import pylsqpack
import pytest
from aioquic.buffer import Buffer, BufferReadError, encode_uint_var
from aioquic.h3.connection import ErrorCode, H3Connection, Setting
from aioquic.quic.events import StopSendingReceived, StreamDataReceived, StreamReset
from fuzz_support import SLOS, TARGETS, connected_pair, fuzz_settings, holds_contract, mutate
from hypothesis import given
from hypothesis import strategies as st
from support import MemoryPair, events_of

from netsched_client.proto import h3
from netsched_client.proto.events import (
    BodyReceived,
    ProtocolEvent,
    RequestReceived,
    RequestRejected,
    StreamAborted,
)
from netsched_client.proto.framing import RequestHead, ResponseHead
from netsched_edge.tls import CertificatePair, generate_self_signed

SERVICE = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
PATH = st.from_regex(r"(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,12}){0,4}", fullmatch=True)
METHOD = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"])
HEADERS = st.lists(
    st.tuples(
        st.sampled_from(
            [b":method", b":path", b":status", b"netsched-slo", b"priority", b"netsched-streaming"]
        )
        | st.binary(max_size=12),
        st.binary(max_size=40),
    ),
    max_size=8,
)


@fuzz_settings()
@given(SERVICE, st.none() | SLOS, st.booleans(), METHOD, PATH)
def test_request_round_trip(
    service: str, slo: object, streaming: bool, method: str, path: str
) -> None:
    head = RequestHead(service, slo, streaming, {"method": method, "path": path or "/"})  # type: ignore[arg-type]
    assert h3.request_head(h3.request_headers(head, "localhost")) == head


@fuzz_settings()
@given(
    st.integers(100, 999),
    st.text(max_size=30).filter(lambda s: s.isprintable()),
    st.none() | st.text(min_size=1, max_size=20).filter(lambda s: s.isprintable()),
    st.none() | st.floats(0, 86_400_000),
)
def test_response_round_trip(
    status: int, message: str, backend: str | None, queue_ms: float | None
) -> None:
    head = ResponseHead(status, message, backend, queue_ms)
    assert h3.response_head(h3.response_headers(head)) == head


@fuzz_settings()
@given(HEADERS)
def test_arbitrary_header_lists(headers: h3.Headers) -> None:
    for name, parse in (("h3_request", h3.request_head), ("h3_response", h3.response_head)):
        with contextlib.suppress(*TARGETS[name].errors):
            parse(headers)


@fuzz_settings()
@given(st.randoms(use_true_random=False), st.sampled_from(["h3_request", "h3_response"]))
def test_mutated_header_lists(rng: random.Random, name: str) -> None:
    target = TARGETS[name]
    holds_contract(name, mutate(rng, rng.choice(target.seeds), target.seeds, text=False))


# ------------------------------------------------------------------ HeaderBound


def _frame(kind: int, length: int, payload: bytes = b"") -> bytes:
    return encode_uint_var(kind) + encode_uint_var(length) + payload


FRAME_KINDS = st.sampled_from([0x0, 0x1, 0x5, 0x21, 0x7, 0x3F]) | st.integers(0, 2**62 - 1)


@st.composite
def request_streams(draw: st.DrawFn) -> bytes:
    """Frames with payloads, the last one possibly cut short, or its head cut."""
    frames = draw(
        st.lists(
            st.tuples(FRAME_KINDS, st.integers(0, 3000) | st.integers(0, 2**62 - 1)), max_size=6
        )
    )
    out = b""
    for kind, length in frames:
        payload = bytes(min(length, 200))
        out += _frame(kind, length, payload)
        if len(payload) < length:
            break
    return out + draw(st.binary(max_size=3))


def _reference(data: bytes, limit: int) -> int | None:
    """The first oversized HEADERS / PUSH_PROMISE frame, read from the whole stream at once."""
    buf = Buffer(data=data)
    try:
        while not buf.eof():
            kind, length = buf.pull_uint_var(), buf.pull_uint_var()
            if kind in (0x1, 0x5) and length > limit:
                return length
            buf.seek(min(buf.tell() + length, len(data)))
    except BufferReadError:
        return None
    return None


@fuzz_settings(300)
@given(request_streams(), st.integers(1, 4096), st.lists(st.integers(0, 10**6), max_size=8))
def test_header_bound_finds_the_first_oversized_block_in_any_chunking(
    data: bytes, limit: int, cuts: list[int]
) -> None:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    bound = h3.HeaderBound(limit)
    reports = [bound.feed(data[a:b]) for a, b in itertools.pairwise(points)]
    found = [r for r in reports if r is not None]
    expected = _reference(data, limit)
    assert found == ([] if expected is None else [expected])
    assert bound.exceeded == (expected is not None)


@fuzz_settings(300)
@given(st.binary(max_size=400), st.integers(1, 300))
def test_header_bound_on_arbitrary_bytes(data: bytes, limit: int) -> None:
    one = h3.HeaderBound(limit)
    by_byte = [one.feed(data[i : i + 1]) for i in range(len(data))]
    whole = h3.HeaderBound(limit).feed(data)
    assert [r for r in by_byte if r is not None] == ([] if whole is None else [whole])


# ------------------------------------------------------------------ H3Protocol on QUIC


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> CertificatePair:
    return generate_self_signed(tmp_path_factory.mktemp("h3-fuzz"))


def _pair(cert: CertificatePair) -> MemoryPair:
    return connected_pair(cert, "h3")


class Exchange:
    """A raw QUIC client writing request streams to an `H3Protocol` server."""

    def __init__(
        self, cert: CertificatePair, max_header_bytes: int = 1024, *, client_h3: bool = True
    ) -> None:
        self.pair = _pair(cert)
        if client_h3:  # else the test writes the client's control and QPACK streams itself
            self.client_h3 = H3Connection(self.pair.client)
        self.server = h3.H3Protocol(self.pair.server, max_header_bytes=max_header_bytes)
        self.events: list[ProtocolEvent] = []

    def send(self, stream_id: int, chunks: list[bytes], end: bool) -> None:
        for i, chunk in enumerate(chunks):
            try:
                self.pair.client.send_stream_data(stream_id, chunk, end and i == len(chunks) - 1)
            except ValueError:  # the server sent STOP_SENDING: our side of the stream was reset
                return
            self.pair.flush()
            self.drain()
        if end and not chunks:
            self.pair.client.send_stream_data(stream_id, b"", True)
            self.pair.flush()
            self.drain()

    def drain(self) -> None:
        for event in events_of(self.pair.server):
            self.events.extend(self.server.handle_event(event))
        self.pair.flush()

    def client_events(self) -> list[object]:
        self.pair.flush()
        return [
            e for q in events_of(self.pair.client) for e in [q, *self.client_h3.handle_event(q)]
        ]


@fuzz_settings(50)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=5), st.booleans())
def test_arbitrary_request_stream_bytes(
    certificate: CertificatePair, data: bytes, cuts: list[int], end: bool
) -> None:
    exchange = Exchange(certificate)
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    exchange.send(0, [data[a:b] for a, b in itertools.pairwise(points)], end)
    for event in exchange.events:
        assert isinstance(
            event, RequestReceived | BodyReceived | RequestRejected | StreamAborted
        ), event


@fuzz_settings(30)
@given(st.integers(1025, 2**62 - 1), st.integers(0, 1500), st.integers(1, 5))
def test_an_oversized_header_block_is_refused_before_it_is_buffered(
    certificate: CertificatePair, declared: int, sent: int, pieces: int
) -> None:
    exchange = Exchange(certificate, max_header_bytes=1024)
    data = _frame(0x1, declared, bytes(min(sent, declared)))
    step = max(1, len(data) // pieces)
    exchange.send(0, [data[i : i + step] for i in range(0, len(data), step)], end=False)
    (rejected,) = exchange.events
    assert isinstance(rejected, RequestRejected)
    assert rejected.status == h3.STATUS_HEADERS_TOO_LARGE
    assert rejected.message == f"a header block of {declared} bytes exceeds the limit of 1024 bytes"
    codes = {
        type(e): e.error_code
        for e in exchange.client_events()
        if isinstance(e, StreamReset | StopSendingReceived)
    }
    assert codes == {
        StreamReset: ErrorCode.H3_EXCESSIVE_LOAD,
        StopSendingReceived: ErrorCode.H3_EXCESSIVE_LOAD,
    }
    # A fresh stream on the same connection is served.
    exchange.client_h3.send_headers(4, h3.request_headers(RequestHead("api"), "x"), end_stream=True)
    exchange.pair.flush()
    exchange.drain()
    assert isinstance(exchange.events[1], RequestReceived)


def test_the_bound_is_advertised_in_settings(certificate: CertificatePair) -> None:
    exchange = Exchange(certificate, max_header_bytes=5000)
    exchange.client_events()
    settings = exchange.client_h3.received_settings
    assert settings is not None
    assert settings[Setting.MAX_FIELD_SECTION_SIZE] == 5000


def test_a_block_that_decodes_above_the_bound_is_refused(certificate: CertificatePair) -> None:
    """A small QPACK block can expand (literal fields here; dynamic table references too)."""
    exchange = Exchange(certificate, max_header_bytes=1024)
    headers = [*h3.request_headers(RequestHead("api"), "x"), *[(b"x-pad", b"a" * 30)] * 40]
    assert h3.field_section_size(headers) > 1024
    exchange.client_h3.send_headers(0, headers, end_stream=True)
    exchange.pair.flush()
    exchange.drain()
    (rejected,) = exchange.events
    assert isinstance(rejected, RequestRejected) and rejected.status == 431


# ------------------------------------------------------------------ QPACK expansion


def _prefix_int(bits: int, first: int, value: int) -> bytes:
    mask = (1 << bits) - 1
    if value < mask:
        return bytes([first | value])
    out = [first | mask]
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes([*out, value])


@fuzz_settings(200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b":path", b"accept", b"x-a", b"user-agent"])
            | st.binary(min_size=1, max_size=8),
            st.sampled_from([b"/", b"*/*", b"gzip"]) | st.binary(max_size=300),
        ),
        min_size=1,  # lsqpack refuses an empty section
        max_size=40,
    ),
    st.booleans(),
)
def test_field_lines_are_counted_as_the_decoder_decodes_them(
    headers: h3.Headers, dynamic: bool
) -> None:
    encoder = pylsqpack.Encoder()
    decoder = pylsqpack.Decoder(4096, 16)
    if dynamic:
        decoder.feed_encoder(encoder.apply_settings(4096, 16))
    for stream_id in (0, 4):  # the second block may refer to entries the first inserted
        instructions, block = encoder.encode(stream_id, headers)
        decoder.feed_encoder(instructions)
        _, decoded = decoder.feed_header(stream_id, block)
        assert h3.count_field_lines(block, 1000) == len(decoded) == len(headers)
        assert h3.count_field_lines(block, 3) == min(len(headers), 4)


@fuzz_settings(300)
@given(st.binary(max_size=300))
def test_counting_field_lines_of_arbitrary_bytes_never_raises(block: bytes) -> None:
    lines = h3.count_field_lines(block, 64)
    assert lines is None or 0 <= lines <= 65


def _qpack_bomb(references: int) -> tuple[bytes, bytes]:
    """Encoder instructions inserting a 4000-byte field, a block referring to it N times."""
    name, value = b"x-big", b"a" * 4000
    instructions = _prefix_int(5, 0x20, 4096)  # Set Dynamic Table Capacity
    instructions += _prefix_int(5, 0x40, len(name)) + name + _prefix_int(7, 0, len(value)) + value
    # Required Insert Count 1 (encoded as 2 with 128 entries), Delta Base 0, then
    # Indexed Field Line, dynamic, relative index 0: one byte each.
    block = bytes([2, 0]) + b"\x80" * references
    return instructions, block


def test_a_qpack_bomb_is_refused_before_it_is_decoded(certificate: CertificatePair) -> None:
    """20 KB of one-byte references to a 4 KB dynamic entry would decode to 80 MB."""
    exchange = Exchange(certificate, max_header_bytes=65536, client_h3=False)
    client = exchange.pair.client
    instructions, block = _qpack_bomb(20_000)
    client.send_stream_data(2, b"\x00" + _frame(0x4, 0))  # control stream, empty SETTINGS
    client.send_stream_data(6, b"\x02" + instructions)  # QPACK encoder stream
    exchange.pair.flush()
    exchange.drain()
    tracemalloc.start()
    try:
        exchange.send(0, [_frame(0x1, len(block), block)], end=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (rejected,) = exchange.events
    assert isinstance(rejected, RequestRejected) and rejected.status == 431
    assert "field lines" in rejected.message
    assert peak < 8 << 20, f"{peak} bytes traced while refusing a QPACK bomb"
    # The connection goes on: a fresh request on it is served.
    _, fine = pylsqpack.Encoder().encode(4, h3.request_headers(RequestHead("api"), "x"))
    exchange.send(4, [_frame(0x1, len(fine), fine)], end=True)
    assert isinstance(exchange.events[-2], RequestReceived)


def test_goaway_goes_on_the_control_stream(certificate: CertificatePair) -> None:
    exchange = Exchange(certificate, client_h3=False)
    assert exchange.server.send_goaway(8)
    exchange.pair.flush()
    control = b"".join(
        e.data
        for e in events_of(exchange.pair.client)
        if isinstance(e, StreamDataReceived) and e.stream_id == 3  # the server's first uni stream
    )
    assert control.startswith(b"\x00")  # stream type: control
    assert control.endswith(_frame(0x7, 1, b"\x08"))  # GOAWAY(8) after SETTINGS


@pytest.mark.parametrize("kind", ["bad path", "bad slo", "oversized block", "peer reset"])
def test_rejected_requests_leave_no_state(certificate: CertificatePair, kind: str) -> None:
    """Requests the core answers itself never reach the runtime, which never forgets them."""
    exchange = Exchange(certificate, max_header_bytes=1024)
    base = h3.request_headers(RequestHead("api"), "x")
    for i in range(60):
        sid = 4 * i
        if kind == "oversized block":
            exchange.send(sid, [_frame(0x1, 5000, bytes(100))], end=False)
            continue
        headers = base
        if kind == "bad path":
            headers = [(n, b"/" if n == b":path" else v) for n, v in base]
        elif kind == "bad slo":
            headers = [*base, (b"netsched-slo", b"!!")]
        exchange.client_h3.send_headers(sid, headers, end_stream=kind != "peer reset")
        exchange.pair.flush()
        if kind == "peer reset":
            exchange.drain()
            exchange.pair.client.reset_stream(sid, ErrorCode.H3_REQUEST_CANCELLED)
        exchange.drain()
    exchange.client_events()  # the client answers STOP_SENDING with RESET_STREAM
    exchange.drain()
    received = [e for e in exchange.events if isinstance(e, RequestReceived)]
    if kind == "peer reset":
        assert len(received) == 60  # the runtime has them: its forget() frees them
        for event in received:
            exchange.server.forget(event.stream_id)
    else:
        assert not received
        assert len([e for e in exchange.events if isinstance(e, RequestRejected)]) == 60
    assert exchange.server.open_streams == 0
