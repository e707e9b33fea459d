"""The receiver's control of its decoding window: FEC_WINDOW (docs/FEC.md §6, §10), sans-IO.

The server announces windows and the client sends protected messages to it
(upstream), on the fake clock and in-memory network of test_fec_connection.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from aioquic.buffer import Buffer, encode_uint_var
from aioquic.quic.connection import QuicReceiveContext
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicErrorCode
from test_fec_connection import (
    DELAY,
    FEC,
    Lossy,
    _BadRepairs,
    drop_sent_in,
    latency,
    lossy,
    payload,
    stream_messages,
)

from netsched_client.fec.codec import FecDecoder, FecEncoder
from netsched_client.fec.control import FecMode, FecOverride
from netsched_client.fec.frames import FEC_WINDOW, FecWindow, Repair
from netsched_client.fec.params import FecParameters, NegotiatedFec
from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.fec_link import FecConfig, FecReceiver

OFF = FecOverride(FecMode.OFF)


class _Recording(NetSchedConnection):
    """Records every FEC_WINDOW frame it receives, retransmissions included."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.windows: list[FecWindow] = []

    def _handle_fec_frame(self, context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
        if frame_type == FEC_WINDOW:
            start = buf.tell()
            self.windows.append(FecWindow.read(buf))
            buf.seek(start)
        super()._handle_fec_frame(context, frame_type, buf)


def recording(tmp: Path, client_fec: FecConfig = FEC) -> tuple[Lossy, _Recording]:
    net = lossy(tmp, client_fec=client_fec, client_class=_Recording)
    assert isinstance(net.client, _Recording)
    return net, net.client


def assert_intact(net: Lossy, sent: dict[int, tuple[int, float]]) -> None:
    assert {s: net.delivered[s][1] for s in sent} == {s: payload(i) for s, (i, _) in sent.items()}
    assert not [e for e in net.client_events if isinstance(e, ConnectionTerminated)]


def down_messages(net: Lossy, count: int) -> None:
    """`count` messages from the server, 10 ms apart, each due 50 ms after a loss-free delivery."""
    server = net.fec_server
    for index in range(count):
        stream_id = server.get_next_available_stream_id(is_unidirectional=True)
        server.send_stream_data(stream_id, payload(100 + index), end_stream=True)
        server.set_stream_fec(stream_id, deadline_at=net.now + DELAY + 0.05, loss_tolerance=0.01)
        net.run(0.01)
    net.run(1.0)


# -- the peer's sender follows the window -------------------------------------------------------


def test_window_zero_stops_repairs_and_a_window_resumes_them(tmp_path: Path) -> None:
    net, client = recording(tmp_path)
    assert_intact(net, stream_messages(net, 10))
    assert client.fec_stats().repairs_sent > 0

    net.fec_server.set_fec_decoding_window(0)
    net.run(0.3)
    paused = client.fec_stats()
    sent = stream_messages(net, 10)
    assert_intact(net, sent)
    # No repairs, and no SOURCE_SYMBOL_ID either: the server holds no symbols.
    assert client.fec_stats().repairs_sent == paused.repairs_sent
    assert client.fec_stats().symbols_sent == paused.symbols_sent

    net.fec_server.set_fec_decoding_window(64)
    net.run(0.3)
    assert_intact(net, stream_messages(net, 10))
    assert client.fec_stats().repairs_sent > paused.repairs_sent
    assert client.windows == [FecWindow(0, 0), FecWindow(1, 64)]  # each sent once, epochs rise


def test_epochs_count_changes_from_zero() -> None:
    receiver = FecReceiver(NegotiatedFec(64, 8, 8), window_limit=8)
    latest = []
    for size in (0, 0, 4, 8, 8, 2):
        receiver.set_window(size)
        assert receiver.window_frame is not None
        latest.append((receiver.window_frame.epoch, receiver.window_frame.window))
    # An unchanged size sends nothing: the latest frame already says it.
    assert latest == [(0, 0), (0, 0), (1, 4), (2, 8), (2, 8), (3, 2)]


# -- loss ---------------------------------------------------------------------------------------


def drop_downstream_at(at: float, dropped: list[bytes]) -> object:
    def drop(net: Lossy, upstream: bool, data: bytes) -> bool:
        if not upstream and net.now == at:
            dropped.append(data)
            return True
        return False

    return drop


def test_a_lost_window_is_sent_again(tmp_path: Path) -> None:
    net, client = recording(tmp_path)
    dropped: list[bytes] = []
    net.drop = drop_downstream_at(net.now, dropped)  # type: ignore[assignment]
    net.fec_server.set_fec_decoding_window(0)
    net.run(2.0)
    assert len(dropped) == 1  # the idle server sent only the FEC_WINDOW packet then
    assert client.windows == [FecWindow(0, 0)]  # the retransmission
    assert_intact(net, stream_messages(net, 5))
    assert client.fec_stats().repairs_sent == 0


def test_only_the_latest_epoch_is_sent_again(tmp_path: Path) -> None:
    net, client = recording(tmp_path)
    dropped: list[bytes] = []
    net.drop = drop_downstream_at(net.now, dropped)  # type: ignore[assignment]
    net.fec_server.set_fec_decoding_window(0)  # lost
    net.run(0.013)
    net.fec_server.set_fec_decoding_window(32)  # supersedes it before its loss is seen
    net.run(2.0)
    assert len(dropped) == 1
    assert net.fec_server.path_info()[0]["packets_lost"] >= 1  # epoch 0 was declared lost
    assert client.windows == [FecWindow(1, 32)]


# -- shrinking ----------------------------------------------------------------------------------


def symbols(count: int) -> list[bytes]:
    return [random.Random(i).randbytes(20 + i % 30) for i in range(count)]


def test_shrinking_keeps_the_newest_symbols_and_equations() -> None:
    data = symbols(12)
    encoder, decoder = FecEncoder(64, 16), FecDecoder(64, 16)
    for i, item in enumerate(data):
        encoder.add_source(i, item)
        if i not in (3, 8, 9):
            decoder.receive_source(i, item)
    # One equation over 6..11, two unknowns: nothing decodes yet.
    assert decoder.receive_repair(1, 6, 6, 15, encoder.repair(1, 6, 6)) == []
    decoder.resize(5)
    assert decoder.max_window == 5 and decoder.window == (7, 12)
    assert not decoder.has(6) and decoder.has(7) and decoder.pending_repairs == 1
    # Too old now: the repair over 0..4 needs the dropped columns.
    assert decoder.receive_repair(2, 0, 5, 15, encoder.repair(2, 0, 5)) == []
    # The kept equation and one more over 7..11 rebuild 8 and 9.
    recovered = decoder.receive_repair(3, 7, 5, 15, encoder.repair(3, 7, 5))
    assert [(r.symbol_id, r.payload) for r in recovered] == [(8, data[8]), (9, data[9])]
    decoder.resize(40)  # growing keeps everything
    assert decoder.window == (7, 47) and decoder.has(9)


@pytest.mark.parametrize("seed", range(20))
def test_recovery_stays_exact_across_random_resizes(seed: int) -> None:
    rng = random.Random(seed)
    data = symbols(200)
    encoder, decoder = FecEncoder(64, 64), FecDecoder(64, 32)
    window, received = 32, set()
    for i, item in enumerate(data):
        encoder.add_source(i, item)
        if rng.random() > 0.15:
            decoder.receive_source(i, item)
            received.add(i)
        if rng.random() < 0.3:
            count = rng.randint(1, min(window, i + 1))
            first = i + 1 - count
            for r in decoder.receive_repair(
                i % 65536, first, count, 15, encoder.repair(i, first, count)
            ):
                assert r.payload == data[r.symbol_id] and r.symbol_id not in received
                received.add(r.symbol_id)
        if rng.random() < 0.05:
            window = rng.randint(1, 64)
            decoder.resize(window)
            assert decoder.max_window == window
    assert len(received) > 170  # most losses recovered


def test_a_shrinking_window_keeps_recovering_on_a_connection(tmp_path: Path) -> None:
    """Messages 12 and 31 are lost; the server shrinks its window to 3 at message 20.
    Repairs sent before the client saw it are ignored, not an error; later ones
    span 3 symbols and rebuild message 31 in time."""
    net = lossy(tmp_path)
    net.drop = drop_sent_in({net.now + 0.01 * i for i in (12, 31)})
    sent = {}
    for index in range(40):
        if index == 20:
            net.fec_server.set_fec_decoding_window(3)
            recovered_before = net.fec_server.fec_stats().symbols_recovered
        stream_id, at = net.send_message(index)
        sent[stream_id] = (index, at)
        net.run(0.01)
    net.run(2.0)
    assert_intact(net, sent)
    assert recovered_before == 1
    assert net.fec_server.fec_stats().symbols_recovered == 2
    (late,) = [s for s, (i, _) in sent.items() if i == 31]
    assert latency(net, late, sent[late][1]) <= DELAY + 0.05  # no retransmission needed


def test_a_repair_wider_than_the_current_window_is_ignored() -> None:
    receiver = FecReceiver(NegotiatedFec(64, 8, 8), window_limit=8)
    encoder = FecEncoder(64, 8)
    data = symbols(4)
    for i, item in enumerate(data):
        encoder.add_source(i, item)
        if i != 2:
            receiver.on_source(i, item)
    receiver.set_window(2)
    receiver.on_repair(Repair(1, 0, 4, 15, encoder.repair(1, 0, 4)))
    assert receiver.repairs_received == 1 and not receiver.backlog
    assert receiver.widest_window == 8  # the connection's PROTOCOL_VIOLATION bound


def test_a_repair_wider_than_any_window_announced_is_a_violation(tmp_path: Path) -> None:
    server_fec = FecConfig(FecParameters(initial_decoding_window=4))
    net = lossy(tmp_path, server_fec=server_fec, client_class=_BadRepairs)
    client = net.client
    assert isinstance(client, _BadRepairs)
    client.body = b"\x00\x01\xf0\x08" + encode_uint_var(0) + encode_uint_var(1120) + bytes(1120)
    net.send_message(0)
    net.run(1.0)
    (closed,) = [e for e in net.client_events if isinstance(e, ConnectionTerminated)]
    assert closed.error_code == QuicErrorCode.PROTOCOL_VIOLATION
    assert "decoding window is at most 4" in closed.reason_phrase


# -- the session's switch -----------------------------------------------------------------------


def test_session_fec_off_announces_window_zero_and_on_restores_it(tmp_path: Path) -> None:
    """Off from the start: the offer says 0, so the server never sends a repair; on again:
    the configured window; off: 0 again."""
    net = lossy(tmp_path, client_fec=FecConfig(session=OFF))
    client, server = net.client, net.fec_server
    assert client.fec_enabled and client.fec_decoding_window == 0
    down_messages(net, 10)
    assert server.fec_stats().repairs_sent == 0 and server.fec_stats().symbols_sent == 0

    client.set_session_fec(FecOverride(FecMode.AUTO))
    assert client.fec_decoding_window == 256
    net.run(0.3)
    down_messages(net, 10)
    on = server.fec_stats()
    assert on.repairs_sent > 0

    client.set_session_fec(OFF)
    assert client.fec_decoding_window == 0
    net.run(0.3)
    down_messages(net, 10)
    assert server.fec_stats().repairs_sent == on.repairs_sent
    # The session's override governs the client's own data too.
    stream_messages(net, 5)
    assert client.fec_stats().repairs_sent == 0


def test_turning_fec_on_keeps_a_window_the_app_chose_meanwhile(tmp_path: Path) -> None:
    net = lossy(tmp_path)
    client = net.client
    client.set_fec_decoding_window(100)
    client.set_session_fec(OFF)
    client.set_session_fec(FecOverride())
    assert client.fec_decoding_window == 100  # the window held before turning off
    client.set_session_fec(OFF)
    client.set_fec_decoding_window(16)  # an explicit choice while off stands
    client.set_session_fec(FecOverride())
    assert client.fec_decoding_window == 16


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [-1, 257, 4096, True, 1.5])
def test_bad_sizes_raise(tmp_path: Path, size: object) -> None:
    net = lossy(tmp_path)  # the server's Max Coding Window is 256
    with pytest.raises(ValueError, match="FEC decoding window"):
        net.client.set_fec_decoding_window(size)  # type: ignore[arg-type]
    assert net.client.fec_decoding_window == 256


def test_the_bound_is_the_peers_max_coding_window(tmp_path: Path) -> None:
    net = lossy(tmp_path, server_fec=FecConfig(FecParameters(max_coding_window=4095)))
    net.client.set_fec_decoding_window(4095)
    with pytest.raises(ValueError, match=r"0\.\.4095"):
        net.client.set_fec_decoding_window(4096)


def test_without_negotiated_fec_the_window_cannot_be_set(tmp_path: Path) -> None:
    net = lossy(tmp_path, server_fec=None)
    with pytest.raises(ValueError, match="not negotiated"):
        net.client.set_fec_decoding_window(0)
    net.client.set_session_fec(OFF)  # harmless: it only governs what would be decided
    plain = lossy(tmp_path, client_fec=None)
    with pytest.raises(ValueError, match="without fec="):
        plain.client.set_session_fec(OFF)
