"""The NetSched protocol core, sans-IO: two connections in memory, a fake clock."""

from __future__ import annotations

from pathlib import Path

import msgpack
from aioquic.buffer import encode_uint_var
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted
from support import MemoryPair, events_of, memory_pair

from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.events import (
    BodyReceived,
    DatagramReceived,
    ProtocolEvent,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    StreamAborted,
)
from netsched_client.proto.framing import RequestHead, ResponseHead
from netsched_client.proto.session import NetSchedProtocol
from netsched_client.proto.slo import SLO, SLO_TRANSPORT_PARAMETER
from netsched_client.proto.transport_parameters import (
    encode_transport_parameter,
    find_transport_parameter,
)


def _connected(
    tmp_path: Path, slo: SLO | None = None
) -> tuple[MemoryPair, NetSchedProtocol, NetSchedProtocol]:
    pair = memory_pair(local_slo=slo, ca_dir=tmp_path)
    pair.flush()
    assert any(isinstance(e, HandshakeCompleted) for e in events_of(pair.client))
    events_of(pair.server)
    return pair, NetSchedProtocol(pair.client), NetSchedProtocol(pair.server)


def _pump(
    pair: MemoryPair, client: NetSchedProtocol, server: NetSchedProtocol
) -> tuple[list[ProtocolEvent], list[ProtocolEvent]]:
    pair.flush()
    c = [pe for e in events_of(pair.client) for pe in client.handle_event(e)]
    s = [pe for e in events_of(pair.server) for pe in server.handle_event(e)]
    return c, s


def test_transport_parameter_codec() -> None:
    blob = encode_transport_parameter(0x01, b"\x00") + encode_transport_parameter(
        SLO_TRANSPORT_PARAMETER, b"ab"
    )
    assert find_transport_parameter(blob, SLO_TRANSPORT_PARAMETER) == b"ab"
    assert find_transport_parameter(blob, 0x99) is None
    assert find_transport_parameter(blob[:-1], SLO_TRANSPORT_PARAMETER) is None  # truncated


def test_connection_slo_reaches_server(tmp_path: Path) -> None:
    pair, _, _ = _connected(tmp_path, SLO(deadline_ms=80, urgency=2))
    assert isinstance(pair.server, NetSchedConnection)
    assert pair.server.peer_slo == SLO(deadline_ms=80, urgency=2)
    assert pair.client.peer_slo is None  # the server announces none


def test_plain_peer_has_no_slo(tmp_path: Path) -> None:
    pair, _, _ = _connected(tmp_path)
    assert pair.server.peer_slo is None


class _BadSLOClient(NetSchedConnection):
    """Announces an out-of-range urgency, which our own SLO class refuses to build."""

    def _serialize_transport_parameters(self) -> bytes:
        bad = encode_transport_parameter(SLO_TRANSPORT_PARAMETER, msgpack.packb({"v": 1, "u": 42}))
        return super()._serialize_transport_parameters() + bad


def test_bad_slo_transport_parameter_closes_with_reason(tmp_path: Path) -> None:
    pair = memory_pair(ca_dir=tmp_path, client_class=_BadSLOClient)
    pair.flush()
    pair.advance(5)
    closed = [e for e in events_of(pair.client) if isinstance(e, ConnectionTerminated)]
    assert closed and closed[0].error_code == 0x08  # TRANSPORT_PARAMETER_ERROR
    assert "SLO transport parameter" in closed[0].reason_phrase


def test_request_response_round_trip(tmp_path: Path) -> None:
    pair, client, server = _connected(tmp_path)
    head = RequestHead(service="api", slo=SLO(deadline_ms=50, urgency=1), meta={"path": "/x"})
    sid = client.send_request(head, b"hello")
    _, s_events = _pump(pair, client, server)
    assert s_events == [RequestReceived(sid, head), BodyReceived(sid, b"hello", True)]
    server.send_response(sid, ResponseHead(status=200, backend="b1", queue_ms=1.5), b"wor")
    server.send_body(sid, b"ld", end_stream=True)
    c_events, _ = _pump(pair, client, server)
    assert isinstance(c_events[0], ResponseReceived) and c_events[0].head.backend == "b1"
    body = b"".join(e.data for e in c_events if isinstance(e, BodyReceived))
    assert body == b"world" and isinstance(c_events[-1], BodyReceived) and c_events[-1].end_stream


def test_malformed_head_rejected_other_streams_continue(tmp_path: Path) -> None:
    pair, client, server = _connected(tmp_path)
    good = client.send_request(RequestHead(service="api"), b"ok", end_stream=False)
    bad_slo = pair.client.get_next_available_stream_id()
    packed = msgpack.packb({"v": 1, "svc": "api", "slo": {"v": 1, "dl": -5}})
    pair.client.send_stream_data(bad_slo, encode_uint_var(len(packed)) + packed, end_stream=True)
    garbage = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(garbage, b"\x02\xc1\xc1", end_stream=True)
    _, s_events = _pump(pair, client, server)
    rejected = {e.stream_id: e.status for e in s_events if isinstance(e, RequestRejected)}
    assert rejected == {bad_slo: 422, garbage: 400}
    # The good stream is untouched and still open.
    client.send_body(good, b"!", end_stream=True)
    _, s_events = _pump(pair, client, server)
    assert BodyReceived(good, b"!", True) in s_events
    assert not any(isinstance(e, ConnectionTerminated) for e in events_of(pair.server))


def test_byte_at_a_time_head(tmp_path: Path) -> None:
    pair, client, server = _connected(tmp_path)
    head = RequestHead(service="api", streaming=True)
    sid = pair.client.get_next_available_stream_id()
    from netsched_client.proto.framing import encode_request_head

    received: list[ProtocolEvent] = []
    for byte in encode_request_head(head):
        pair.client.send_stream_data(sid, bytes([byte]))
        received += _pump(pair, client, server)[1]
    assert received == [RequestReceived(sid, head)]


def test_datagrams_both_ways_and_bad_ones_counted(tmp_path: Path) -> None:
    pair, client, server = _connected(tmp_path)
    client.send_datagram("telemetry", b"t1")
    pair.client.send_datagram_frame(b"\x00bad")  # zero-length service name
    _, s_events = _pump(pair, client, server)
    assert s_events == [DatagramReceived("telemetry", b"t1")]
    assert server.datagrams_dropped == 1
    server.send_datagram("telemetry", b"ack")
    c_events, _ = _pump(pair, client, server)
    assert c_events == [DatagramReceived("telemetry", b"ack")]


def test_abort_reaches_the_peer(tmp_path: Path) -> None:
    pair, client, server = _connected(tmp_path)
    sid = client.send_request(RequestHead(service="api"), b"", end_stream=False)
    _pump(pair, client, server)
    client.abort(sid)
    _, s_events = _pump(pair, client, server)
    assert [type(e) for e in s_events] == [StreamAborted]
    assert server.send_body(sid, b"late") is False  # our side was reset by STOP_SENDING


def test_response_survives_loss(tmp_path: Path) -> None:
    pair, client, server = _connected(tmp_path)
    sid = client.send_request(RequestHead(service="api"), b"q")
    _pump(pair, client, server)
    server.send_response(sid, ResponseHead(status=200), b"x" * 5000, end_stream=True)
    pair.server.datagrams_to_send(now=pair.now)  # these datagrams are lost
    pair.advance(2.0)  # loss detection (PTO) retransmits
    c_events = [pe for e in events_of(pair.client) for pe in client.handle_event(e)]
    body = b"".join(e.data for e in c_events if isinstance(e, BodyReceived))
    assert body == b"x" * 5000


def test_abandoning_the_only_path_closes_the_connection_visibly(tmp_path: Path) -> None:
    pair, _, _ = _connected(tmp_path)
    pair.client.abandon_path(0, now=pair.now)
    pair.flush()
    pair.advance(5)
    closed = [e for e in events_of(pair.server) if isinstance(e, ConnectionTerminated)]
    assert closed and closed[0].error_code == 0x10  # NO_VIABLE_PATH, not an idle timeout
