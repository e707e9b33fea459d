"""Arbitrary peer bytes into each application protocol object, on an in-memory QUIC pair.

Both roles, all three ALPNs: the server's `NetSchedProtocol` fed arbitrary
request-stream bytes (bidirectional and unidirectional streams) and DATAGRAMs;
the clients (`NetSchedProtocol`, `H3Protocol`, `HQProtocol`) fed arbitrary
response bytes, and the native client arbitrary control-stream bytes. Nothing
may raise; every event is one of the protocol's; state for a rejected stream
goes once its sender is done. The GOAWAY control message round-trips through
`ControlReader` in any chunking.
"""

from __future__ import annotations

import contextlib
import itertools
import random

import pytest
from fuzz_support import connected_pair, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from support import MemoryPair, events_of

from netsched_client.errors import FramingError
from netsched_client.proto import h3, hq
from netsched_client.proto import session as native
from netsched_client.proto.events import (
    BodyReceived,
    DatagramReceived,
    ProtocolEvent,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    StreamAborted,
)
from netsched_client.proto.framing import (
    ControlReader,
    Goaway,
    RequestHead,
    encode_goaway,
    encode_request_head,
)
from netsched_edge.tls import CertificatePair, generate_self_signed

SERVER_EVENTS = RequestReceived | RequestRejected | BodyReceived | StreamAborted | DatagramReceived
CLIENT_EVENTS = ResponseReceived | BodyReceived | StreamAborted | native.GoawayReceived
CHUNKS = st.lists(st.integers(0, 2000), max_size=5)
PEER_BYTES = st.binary(max_size=500) | st.builds(
    lambda head, tail: head + tail,
    st.sampled_from([encode_request_head(RequestHead("api")), b"\x01\x80", b"\x40\x10"]),
    st.binary(max_size=100),
)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> CertificatePair:
    return generate_self_signed(tmp_path_factory.mktemp("streams-fuzz"))


def _pair(cert: CertificatePair, alpn: str) -> MemoryPair:
    pair = connected_pair(cert, alpn, datagrams=True)
    events_of(pair.server)
    return pair


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


def _deliver(pair: MemoryPair, receiver: object, side: str) -> list[ProtocolEvent]:
    pair.flush()
    quic = pair.server if side == "server" else pair.client
    out: list[ProtocolEvent] = []
    for event in events_of(quic):
        out.extend(receiver.handle_event(event))  # type: ignore[attr-defined]
    pair.flush()
    return out


@fuzz_settings(50)
@given(PEER_BYTES, CHUNKS, st.sampled_from([0, 4, 2]), st.booleans(), st.binary(max_size=80))
def test_native_server_on_arbitrary_streams_and_datagrams(
    certificate: CertificatePair,
    data: bytes,
    cuts: list[int],
    stream_id: int,
    end: bool,
    datagram: bytes,
) -> None:
    pair = _pair(certificate, native.ALPN)
    server = native.NetSchedProtocol(pair.server)
    events: list[ProtocolEvent] = []
    pieces = _pieces(data, cuts)
    for i, piece in enumerate(pieces):
        try:
            pair.client.send_stream_data(stream_id, piece, end and i == len(pieces) - 1)
        except ValueError:  # the server stopped the stream: our side was reset
            break
        events += _deliver(pair, server, "server")
    pair.client.send_datagram_frame(datagram)
    events += _deliver(pair, server, "server")
    for event in events:
        assert isinstance(event, SERVER_EVENTS), event
    rejected = any(isinstance(e, RequestRejected) for e in events)
    if rejected and end:
        assert server.open_streams == 0  # a rejected request's state goes with its FIN


@fuzz_settings(30)
@given(PEER_BYTES, CHUNKS, st.booleans(), st.sampled_from([native.ALPN, h3.ALPN, hq.ALPN]))
def test_clients_on_arbitrary_response_bytes(
    certificate: CertificatePair, data: bytes, cuts: list[int], end: bool, alpn: str
) -> None:
    pair = _pair(certificate, alpn)
    client: native.NetSchedProtocol | h3.H3Protocol | hq.HQProtocol
    if alpn == native.ALPN:
        client = native.NetSchedProtocol(pair.client)
        head = RequestHead("api")
    elif alpn == h3.ALPN:
        client = h3.H3Protocol(pair.client, authority="localhost")
        head = RequestHead("api")
    else:
        client = hq.HQProtocol(pair.client)
        head = RequestHead(hq.SERVICE, meta={"path": "/index.html"})
    stream_id = client.send_request(head)
    _deliver(pair, client, "client")
    events_of(pair.server)  # the request, unread: the server below is raw
    events: list[ProtocolEvent] = []
    pieces = _pieces(data, cuts)
    for i, piece in enumerate(pieces):
        try:
            pair.server.send_stream_data(stream_id, piece, end and i == len(pieces) - 1)
        except ValueError:
            break
        events += _deliver(pair, client, "client")
    for event in events:
        assert isinstance(event, CLIENT_EVENTS), event


@fuzz_settings(30)
@given(st.binary(max_size=300) | st.just(encode_goaway(Goaway(8))), CHUNKS)
def test_native_client_on_arbitrary_control_stream_bytes(
    certificate: CertificatePair, data: bytes, cuts: list[int]
) -> None:
    pair = _pair(certificate, native.ALPN)
    client = native.NetSchedProtocol(pair.client)
    control = pair.server.get_next_available_stream_id(is_unidirectional=True)
    events: list[ProtocolEvent] = []
    for piece in _pieces(data, cuts):
        pair.server.send_stream_data(control, piece)
        events += _deliver(pair, client, "client")
    for event in events:
        assert isinstance(event, native.GoawayReceived), event


@fuzz_settings(300)
@given(st.lists(st.integers(0, 2**20).map(lambda n: n * 4), max_size=4), CHUNKS)
def test_goaway_round_trip_in_any_chunking(stream_ids: list[int], cuts: list[int]) -> None:
    data = b"".join(encode_goaway(Goaway(sid)) for sid in stream_ids)
    reader = ControlReader()
    received = [m for piece in _pieces(data, cuts) for m in reader.feed(piece)]
    assert received == [Goaway(sid) for sid in stream_ids]


@fuzz_settings(300)
@given(st.binary(max_size=300), CHUNKS)
def test_control_reader_on_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    reader = ControlReader()
    try:
        for piece in _pieces(data, cuts):
            for message in reader.feed(piece):
                assert isinstance(message, Goaway)
    except FramingError:
        pass


@fuzz_settings(200)
@given(st.randoms(use_true_random=False))
def test_control_reader_on_mutated_messages(rng: random.Random) -> None:
    from fuzz_support import mutate

    seed = encode_goaway(Goaway(4 * rng.randrange(2**20)))
    data = mutate(rng, seed, [seed, encode_goaway(Goaway(0))], text=False)
    with contextlib.suppress(FramingError):
        ControlReader().feed(data)


def test_no_request_is_read_from_a_client_unidirectional_stream(
    certificate: CertificatePair,
) -> None:
    pair = _pair(certificate, native.ALPN)
    server = native.NetSchedProtocol(pair.server)
    uni = pair.client.get_next_available_stream_id(is_unidirectional=True)
    pair.client.send_stream_data(uni, encode_request_head(RequestHead("api")) + b"x", True)
    events = _deliver(pair, server, "server")
    assert not [e for e in events if isinstance(e, RequestReceived)]
    assert server.open_streams == 0
