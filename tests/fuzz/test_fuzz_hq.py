"""Property tests of HTTP/0.9 request parsing (proto/hq.py).

`parse_request_line` accepts exactly what `request_line` writes (no control
characters, no blanks, bounded length); an `HQProtocol` server on an
in-memory QUIC pair, fed arbitrary bytes in arbitrary chunks, yields at most
one request per stream, with a valid path, and refuses a line longer than its
bound without keeping more than the bound.
"""

from __future__ import annotations

import itertools
import random

import pytest
from aioquic.quic.events import StopSendingReceived, StreamReset
from fuzz_support import TARGETS, connected_pair, fuzz_settings, holds_contract, mutate
from hypothesis import given
from hypothesis import strategies as st
from support import events_of

from netsched_client.proto import hq
from netsched_client.proto.events import (
    BodyReceived,
    ProtocolEvent,
    RequestReceived,
    StreamAborted,
)
from netsched_edge.tls import CertificatePair, generate_self_signed

PATHS = st.from_regex(r"/[!-~]{0,100}", fullmatch=True)


@fuzz_settings()
@given(PATHS)
def test_request_line_round_trip(path: str) -> None:
    line = hq.request_line(path)
    assert hq.parse_request_line(line) == path
    assert hq.parse_request_line(line.rstrip(b"\r\n") + b"\n") == path


@fuzz_settings(300)
@given(st.binary(max_size=200) | st.builds(lambda p: b"GET " + p, st.binary(max_size=60)))
def test_any_line_gives_a_path_request_line_accepts_or_none(line: bytes) -> None:
    path = hq.parse_request_line(line)
    if path is not None:
        assert hq.request_line(path)  # raises ValueError for a path it would not write
        assert all(0x21 <= ord(c) <= 0x7E for c in path)


@pytest.mark.parametrize(
    "line", [b"GET /a\x00b\r\n", b"GET /\x7f\n", b"GET /a\x1b[2J\n", b"GET /" + b"a" * 3000 + b"\n"]
)
def test_control_characters_and_long_lines_are_not_requests(line: bytes) -> None:
    assert hq.parse_request_line(line) is None


@fuzz_settings()
@given(st.randoms(use_true_random=False))
def test_mutated_request_lines(rng: random.Random) -> None:
    target = TARGETS["hq_request"]
    holds_contract("hq_request", mutate(rng, rng.choice(target.seeds), target.seeds, text=False))


# ------------------------------------------------------------------ HQProtocol on QUIC


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> CertificatePair:
    return generate_self_signed(tmp_path_factory.mktemp("hq-fuzz"))


def _serve(
    cert: CertificatePair, chunks: list[bytes], end: bool, limit: int = hq.MAX_REQUEST_LINE
) -> tuple[list[ProtocolEvent], list[object]]:
    pair = connected_pair(cert, hq.ALPN)
    protocol = hq.HQProtocol(pair.server, max_header_bytes=limit)
    out: list[ProtocolEvent] = []
    for i, chunk in enumerate(chunks or [b""]):
        try:
            pair.client.send_stream_data(0, chunk, end and i == len(chunks or [b""]) - 1)
        except ValueError:  # the server stopped the stream: our side was reset
            break
        pair.flush()
        for event in events_of(pair.server):
            out.extend(protocol.handle_event(event))
        pair.flush()
    return out, events_of(pair.client)


@fuzz_settings(50)
@given(
    st.binary(max_size=300) | st.builds(lambda p: b"GET /" + p, st.binary(max_size=300)),
    st.lists(st.integers(0, 400), max_size=5),
    st.booleans(),
)
def test_arbitrary_stream_bytes(
    certificate: CertificatePair, data: bytes, cuts: list[int], end: bool
) -> None:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    events, _ = _serve(certificate, [data[a:b] for a, b in itertools.pairwise(points)], end)
    requests = [e for e in events if isinstance(e, RequestReceived)]
    assert len(requests) <= 1
    for request in requests:
        assert hq.request_line(request.head.meta["path"])
    for event in events:
        assert isinstance(event, RequestReceived | BodyReceived | StreamAborted), event


@pytest.mark.parametrize("limit", [1024, hq.MAX_REQUEST_LINE])
@pytest.mark.parametrize("newline", [False, True])
def test_a_line_above_the_bound_is_refused(
    certificate: CertificatePair, limit: int, newline: bool
) -> None:
    line = b"GET /" + b"a" * limit + (b"\r\n" if newline else b"")
    events, client_events = _serve(certificate, [line[:700], line[700:]], end=False, limit=limit)
    assert [type(e) for e in events] == [StreamAborted]
    assert {type(e) for e in client_events} >= {StreamReset, StopSendingReceived}


def test_a_line_within_the_bound_is_served(certificate: CertificatePair) -> None:
    line = b"GET /" + b"a" * 1000 + b"\r\n"
    events, _ = _serve(certificate, [line[:3], line[3:]], end=True, limit=1024)
    assert [type(e) for e in events] == [RequestReceived, BodyReceived]


def test_no_request_is_read_from_a_unidirectional_stream(certificate: CertificatePair) -> None:
    """The request would run, and its answer could not be sent back on that stream."""
    pair = connected_pair(certificate, hq.ALPN)
    protocol = hq.HQProtocol(pair.server)
    uni = pair.client.get_next_available_stream_id(is_unidirectional=True)
    pair.client.send_stream_data(uni, b"GET /index.html\r\n", end_stream=True)
    pair.flush()
    assert [e for q in events_of(pair.server) for e in protocol.handle_event(q)] == []


@pytest.mark.parametrize("ending", ["fin", "stopped"])
def test_refused_requests_leave_no_state(certificate: CertificatePair, ending: str) -> None:
    pair = connected_pair(certificate, hq.ALPN)
    protocol = hq.HQProtocol(pair.server)
    events: list[ProtocolEvent] = []
    for i in range(60):
        if ending == "fin":  # a malformed request, whole
            pair.client.send_stream_data(4 * i, b"POST /x\r\n", end_stream=True)
        else:  # a line too long; the client's side ends when STOP_SENDING resets it
            pair.client.send_stream_data(4 * i, b"GET /" + b"a" * 3000, end_stream=False)
        pair.flush()
        events += [e for q in events_of(pair.server) for e in protocol.handle_event(q)]
        pair.flush()
        events += [e for q in events_of(pair.server) for e in protocol.handle_event(q)]
    assert [type(e) for e in events] == [StreamAborted] * 60
    assert protocol.open_streams == 0
