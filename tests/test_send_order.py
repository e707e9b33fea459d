"""SLO-aware send order in the protocol core: deadline, then urgency; late data dropped."""

from __future__ import annotations

from pathlib import Path

from aioquic.quic.events import StreamDataReceived, StreamReset
from support import SERVER_ADDR, events_of, memory_pair

from netsched_client.proto.send_order import ERROR_DEADLINE, DeadlineMissed


def _streams(tmp_path: Path):
    pair = memory_pair(ca_dir=tmp_path)
    pair.flush()
    events_of(pair.client), events_of(pair.server)
    ids = []
    for _ in range(3):
        sid = pair.client.get_next_available_stream_id()
        pair.client.send_stream_data(sid, b"req", end_stream=True)
        ids.append(sid)
    pair.flush()
    events_of(pair.server)
    return pair, ids


def test_earliest_deadline_then_urgency_goes_first(tmp_path: Path) -> None:
    pair, (bulk, soon, later) = _streams(tmp_path)
    now = pair.now
    pair.server.set_stream_priority(bulk, None, 6)
    pair.server.set_stream_priority(later, now + 2.0, 0)
    pair.server.set_stream_priority(soon, now + 1.0, 7)
    for sid in (bulk, later, soon):  # queued in the worst order
        pair.server.send_stream_data(sid, bytes(200_000), end_stream=True)
    first_flight = pair.server.datagrams_to_send(now=pair.now)  # one congestion window
    for data, _ in first_flight:
        pair.client.receive_datagram(data, SERVER_ADDR, pair.now)
    order = []
    for event in events_of(pair.client):
        if isinstance(event, StreamDataReceived) and event.stream_id not in order:
            order.append(event.stream_id)
    assert order[0] == soon  # the whole first window goes to the earliest deadline
    assert bulk not in order


def test_data_past_its_deadline_is_not_sent(tmp_path: Path) -> None:
    pair, (late, fine, _) = _streams(tmp_path)
    pair.server.set_stream_priority(fine, None, 3)
    pair.server.send_stream_data(fine, bytes(1000), end_stream=True)
    # The response is ready only after its deadline (e.g. a slow backend): not worth sending.
    pair.server.set_stream_priority(late, pair.now - 0.001, 1)
    pair.server.send_stream_data(late, bytes(500_000), end_stream=True)
    pair.flush()
    assert DeadlineMissed(late) in events_of(pair.server)
    client_events = events_of(pair.client)
    resets = [e for e in client_events if isinstance(e, StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(late, ERROR_DEADLINE)]
    got = sum(
        len(e.data)
        for e in client_events
        if isinstance(e, StreamDataReceived) and e.stream_id == fine
    )
    assert got == 1000
