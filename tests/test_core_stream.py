"""The core's streams and flow control (#16 stage 3): frame codecs, send and receive
buffers, flow-control credit (RFC 9000 §2-4, §19; DATAGRAM: RFC 9221).

Every test runs on both backends (the Cython module and its pure-Python
reference); the property tests also check that both give the same answers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from types import ModuleType
from typing import Any

import pytest
from core_backends import backends, compiled_check
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_client.core import stream
from netsched_client.core.errors import (
    FinalSizeError,
    FlowControlError,
    FrameError,
    PacketError,
    StreamStateError,
)

BACKENDS = list(stream.BACKENDS.values())
DATA = bytes(random.Random(16).randrange(256) for _ in range(50_000))


m = backends(stream)


test_the_compiled_backend_is_built_here = compiled_check(stream)


def test_transport_errors_carry_their_codes() -> None:
    assert (FrameError.error_code, FlowControlError.error_code) == (0x07, 0x03)
    assert (StreamStateError.error_code, FinalSizeError.error_code) == (0x05, 0x06)
    for error in (FrameError, FlowControlError, StreamStateError, FinalSizeError):
        assert issubclass(error, PacketError)


# -- frame codecs ----------------------------------------------------------------------------------


def written(write: Callable[..., int], *args: Any) -> bytes:
    buf = bytearray(64)
    return bytes(buf[: write(buf, 0, *args)])


def test_frames_are_written_as_section_19_lays_them_out(m: ModuleType) -> None:
    assert written(m.write_max_data, 0x1234) == b"\x10\x52\x34"
    assert written(m.write_max_stream_data, 4, 63) == b"\x11\x04\x3f"
    assert written(m.write_max_streams, True, 100) == b"\x12\x40\x64"
    assert written(m.write_max_streams, False, 3) == b"\x13\x03"
    assert written(m.write_data_blocked, 64) == b"\x14\x40\x40"
    assert written(m.write_stream_data_blocked, 8, 1) == b"\x15\x08\x01"
    assert written(m.write_streams_blocked, True, 2) == b"\x16\x02"
    assert written(m.write_streams_blocked, False, 2) == b"\x17\x02"
    assert written(m.write_reset_stream, 4, 0x101, 7) == b"\x04\x04\x41\x01\x07"
    assert written(m.write_stop_sending, 4, 9) == b"\x05\x04\x09"
    assert written(m.write_crypto, 0, b"hi") == b"\x06\x00\x02hi"
    assert written(m.write_datagram, b"abc") == b"\x31\x03abc"
    # STREAM: LEN always, OFF only past offset 0, FIN when asked
    assert written(m.write_stream, 4, 0, b"ab", False) == b"\x0a\x04\x02ab"
    assert written(m.write_stream, 4, 5, b"ab", True) == b"\x0f\x04\x05\x02ab"


def test_every_frame_round_trips_at_an_offset_with_trailing_bytes(m: ModuleType) -> None:
    cases: list[tuple[Callable[..., int], tuple[Any, ...], Callable[..., Any], tuple[Any, ...]]] = [
        (m.write_stream, (1 << 40, 1 << 50, b"xyz", True), m.parse_stream, (1 << 40, 1 << 50)),
        (m.write_crypto, (70000, b"tls"), m.parse_crypto, (70000,)),
        (m.write_reset_stream, (3, 4, 5), m.parse_reset_stream, (3, 4, 5)),
        (m.write_stop_sending, (3, 4), m.parse_stop_sending, (3, 4)),
        (m.write_max_data, (1 << 61,), m.parse_max_data, (1 << 61,)),
        (m.write_max_stream_data, (2, 3), m.parse_max_stream_data, (2, 3)),
        (m.write_max_streams, (False, 1 << 60), m.parse_max_streams, (False, 1 << 60)),
        (m.write_data_blocked, (9,), m.parse_data_blocked, (9,)),
        (m.write_stream_data_blocked, (2, 9), m.parse_stream_data_blocked, (2, 9)),
        (m.write_streams_blocked, (True, 7), m.parse_streams_blocked, (True, 7)),
        (m.write_datagram, (b"dgram",), m.parse_datagram, ()),
    ]
    for write, args, parse, expected in cases:
        buf = bytearray(b"\xee" * 100)
        after = write(buf, 10, *args)
        fields = parse(buf, 10)
        assert fields[: len(expected)] == expected
        assert fields[-1] == after
        assert parse(bytes(buf[:after]), 10)[-1] == after  # the whole input, nothing after


def test_stream_frames_of_all_eight_types(m: ModuleType) -> None:
    for frame_type in range(0x08, 0x10):
        frame = bytes([frame_type, 0x04])
        frame += b"\x07" if frame_type & 0x04 else b""
        frame += b"\x03" if frame_type & 0x02 else b""
        packet = b"\x00" + frame + b"abcdef"
        stream_id, offset, data_offset, length, fin, after = m.parse_stream(packet, 1)
        assert (stream_id, offset, fin) == (4, 7 if frame_type & 0x04 else 0, bool(frame_type & 1))
        # without LEN the data runs to the end of the packet's payload
        assert length == (3 if frame_type & 0x02 else 6)
        assert packet[data_offset : data_offset + length] == (
            b"abc" if frame_type & 0x02 else b"abcdef"
        )
        assert after == data_offset + length
        if not frame_type & 0x02:
            assert m.parse_stream(packet, 1, len(packet) - 2)[3] == 4


def test_a_datagram_without_length_runs_to_the_end(m: ModuleType) -> None:
    assert m.parse_datagram(b"\x30hello") == (1, 5, 6)


def test_truncated_frames_raise_frame_error(m: ModuleType) -> None:
    frame = written(m.write_stream, 4, 1000, b"payload", False)
    for cut in range(len(frame)):
        with pytest.raises(FrameError):
            m.parse_stream(frame[:cut])
    with pytest.raises(FrameError, match="not a MAX_DATA frame: 0x11"):
        m.parse_max_data(b"\x11\x00\x00")


def test_values_past_their_limits_raise_frame_error(m: ModuleType) -> None:
    too_many = b"\x12\xd0\x00\x00\x00\x00\x00\x00\x01"  # 2^60 + 1 streams (§19.11)
    with pytest.raises(FrameError, match="streams"):
        m.parse_max_streams(too_many)
    beyond = b"\x0e\x00\xff\xff\xff\xff\xff\xff\xff\xff\x01x"  # offset 2^62-1, one byte (§19.8)
    with pytest.raises(FrameError, match="beyond"):
        m.parse_stream(beyond)
    with pytest.raises(FrameError, match="out of range"):
        m.write_max_data(bytearray(16), 0, 1 << 62)
    with pytest.raises(FrameError, match="stream count"):
        m.write_max_streams(bytearray(16), 0, True, (1 << 60) + 1)
    with pytest.raises(FrameError, match="no room"):
        m.write_stream(bytearray(5), 0, 4, 0, b"abc", False)


PARSERS = [
    "parse_stream",
    "parse_crypto",
    "parse_reset_stream",
    "parse_stop_sending",
    "parse_max_data",
    "parse_max_stream_data",
    "parse_max_streams",
    "parse_data_blocked",
    "parse_stream_data_blocked",
    "parse_streams_blocked",
    "parse_datagram",
]


def outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:
        return (type(exc), str(exc))


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(PARSERS),
    first=st.integers(0x04, 0x31),
    garbage=st.binary(max_size=40),
    offset=st.integers(-2, 42),
    end=st.integers(-1, 45),
)
def test_garbage_raises_only_frame_error_and_both_backends_agree(
    name: str, first: int, garbage: bytes, offset: int, end: int
) -> None:
    data = bytes([first]) + garbage
    results = []
    for module in BACKENDS:
        result = outcome(partial(getattr(module, name), data, offset, end))
        if isinstance(result, tuple) and result and isinstance(result[0], type):
            assert result[0] is FrameError, result
        results.append(result)
    assert all(result == results[0] for result in results)


VALUES = st.one_of(
    st.integers(-3, 70),
    st.integers(0, 1 << 63),
    st.sampled_from([(1 << 62) - 1, 1 << 62, 1 << 60, (1 << 60) + 1]),
)
WRITES = st.one_of(
    st.tuples(st.just("write_stream"), st.tuples(VALUES, VALUES, st.binary(max_size=20))),
    st.tuples(st.just("write_crypto"), st.tuples(VALUES, st.binary(max_size=20))),
    st.tuples(st.just("write_reset_stream"), st.tuples(VALUES, VALUES, VALUES)),
    st.tuples(st.just("write_stop_sending"), st.tuples(VALUES, VALUES)),
    st.tuples(st.just("write_max_data"), st.tuples(VALUES)),
    st.tuples(st.just("write_max_streams"), st.tuples(st.booleans(), VALUES)),
    st.tuples(st.just("write_streams_blocked"), st.tuples(st.booleans(), VALUES)),
    st.tuples(st.just("write_datagram"), st.tuples(st.binary(max_size=20))),
)


@settings(max_examples=300, deadline=None)
@given(write=WRITES, size=st.integers(0, 40), pos=st.integers(-2, 40))
def test_both_backends_write_the_same_bytes_or_raise_the_same_error(
    write: tuple[str, tuple[Any, ...]], size: int, pos: int
) -> None:
    name, args = write
    results = []
    for module in BACKENDS:
        buf = bytearray(size)
        result = outcome(partial(getattr(module, name), buf, pos, *args))
        if isinstance(result, tuple) and isinstance(result[0], type):
            assert result[0] is FrameError, result
        results.append((result, bytes(buf)))
    assert all(result == results[0] for result in results)


# -- flow-control credit ---------------------------------------------------------------------------


def test_send_credit_reports_blocked_once_per_limit(m: ModuleType) -> None:
    credit = m.SendCredit(100)
    assert credit.take_blocked() == -1
    stream_ = m.SendStream(0, 1 << 20)
    stream_.write(DATA[:500])
    sent = stream_.write_frame(bytearray(1500), 0, 1500, credit)
    assert sent[:3] == (0, 100, False) and credit.available == 0
    assert credit.take_blocked() == 100
    assert credit.take_blocked() == -1
    assert not credit.raise_limit(50)  # stale: a lower limit changes nothing (§4.1)
    assert credit.raise_limit(300) and credit.available == 200


def test_receive_credit_moves_at_half_the_window_and_doubles_when_fast(m: ModuleType) -> None:
    with pytest.raises(ValueError):
        m.ReceiveCredit(0)
    credit = m.ReceiveCredit(1000, 4000)
    credit.on_received(1000)
    with pytest.raises(FlowControlError):
        credit.on_received(1)
    assert credit.update(499, now=1.0, rtt=0.1) == -1  # 501 of 1000 left: more than half
    assert credit.update(500, now=1.0, rtt=0.1) == 1500  # the first update: no doubling
    assert credit.update(1000, now=1.5, rtt=0.1) == 2000  # 2 RTTs later: same window
    assert credit.update(1500, now=1.6, rtt=0.1) == 3500  # within 2 RTTs: doubled
    assert credit.window == 2000
    assert credit.update(2500, now=1.61, rtt=0.1) == 6500  # capped at max_window
    assert credit.window == 4000


# -- send side -------------------------------------------------------------------------------------


def frames_of(sender: Any, end: int, connection: Any = None) -> list[tuple[int, int, bool, bytes]]:
    """Every frame `sender` writes now into `end`-byte packets: (offset, length, fin, bytes)."""
    out = []
    buf = bytearray(end)
    while (sent := sender.write_frame(buf, 0, end, connection)) is not None:
        out.append((*sent[:3], bytes(buf[: sent[3]])))
    return out


def test_frames_fill_the_space_and_never_pass_it(m: ModuleType) -> None:
    sender = m.SendStream(4, 1 << 30)
    sender.write(DATA[:20_000], fin=True)
    for end in (1200, 1452, 60):
        frames = frames_of(sender, end)
        assert all(len(frame) <= end for *_, frame in frames)
        assert all(end - len(frame) <= 2 for *_, frame in frames[:-1])  # at most a varint's slack
        for offset, length, fin, _ in frames:
            sender.on_lost(offset, length, fin)
    assert sender.next_offset == 20_000 and sender.fin_sent is False


def test_lost_ranges_go_first_lowest_first_and_acked_bytes_are_not_resent(m: ModuleType) -> None:
    sender = m.SendStream(4, 1 << 30)
    sender.write(DATA[:5000])
    first = frames_of(sender, 1000)
    offsets = [(offset, length) for offset, length, _, _ in first]
    (o0, l0), _, (o2, l2) = offsets[:3]
    sender.on_lost(o2, l2, False)
    sender.on_lost(o0, l0, False)
    sender.on_acked(o0 + 10, 20, False)  # a late ACK of part of it, by an earlier copy
    sender.write(DATA[5000:6000])
    again = frames_of(sender, 1000)
    assert [(o, n) for o, n, _, _ in again[:3]] == [(o0, 10), (o0 + 30, l0 - 30), (o2, l2)]
    assert again[3][0] == 5000  # then new data
    assert not sender.lost


def test_acks_free_the_ring_in_order_and_fin_completes(m: ModuleType) -> None:
    sender = m.SendStream(4, 1 << 30)
    sender.write(DATA[:3000], fin=True)
    frames = frames_of(sender, 1200)
    assert frames[-1][2] is True  # the FIN rides on the last data
    for offset, length, fin, _ in reversed(frames):
        assert sender.acked_offset == 0
        sender.on_acked(offset, length, fin)
    assert sender.acked_offset == 3000 and sender.is_complete


def test_a_fin_alone_is_sent_and_resent_when_lost(m: ModuleType) -> None:
    sender = m.SendStream(4, 1 << 30)
    sender.write(b"abc")
    assert len(frames_of(sender, 100)) == 1
    sender.write(b"", fin=True)
    (fin_frame,) = frames_of(sender, 100)
    assert fin_frame[:3] == (3, 0, True) and fin_frame[3] == b"\x0f\x04\x03\x00"
    assert frames_of(sender, 100) == []
    sender.on_lost(3, 0, True)
    assert frames_of(sender, 100) == [fin_frame]
    with pytest.raises(StreamStateError):
        sender.write(b"more")


def test_new_data_waits_on_the_stream_and_connection_credit(m: ModuleType) -> None:
    connection = m.SendCredit(1500)
    sender = m.SendStream(4, 1000)
    sender.write(DATA[:4000])
    assert sum(n for _, n, _, _ in frames_of(sender, 1200, connection)) == 1000
    assert sender.take_blocked() == 1000 and sender.take_blocked() == -1
    sender.credit.raise_limit(3000)
    assert sum(n for _, n, _, _ in frames_of(sender, 1200, connection)) == 500
    assert connection.available == 0 and connection.take_blocked() == 1500
    assert sender.take_blocked() == -1  # the stream has credit: the connection blocks it
    # retransmissions were counted when first sent: they need no credit
    sender.on_lost(0, 1000, False)
    assert sum(n for _, n, _, _ in frames_of(sender, 1200, connection)) == 1000


def test_crypto_data_is_framed_as_crypto_without_flow_control(m: ModuleType) -> None:
    sender = m.SendStream(-1, 0)
    sender.write(DATA[:3000])
    frames = frames_of(sender, 1200)
    assert sum(n for _, n, _, _ in frames) == 3000
    assert m.parse_crypto(frames[1][3])[0] == frames[1][0]


def test_reset_stops_sending_and_gives_the_final_size(m: ModuleType) -> None:
    sender = m.SendStream(4, 1 << 30)
    sender.write(DATA[:3000])
    frames_of(sender, 1200)
    sender.on_lost(0, 1000, False)
    assert sender.reset() == 3000
    assert frames_of(sender, 1200) == []
    sender.on_lost(1000, 1000, False)  # a loss after the reset sends nothing again
    assert frames_of(sender, 1200) == [] and sender.was_reset


# -- receive side ----------------------------------------------------------------------------------


def deliver(receiver: Any, frame: bytes) -> int:
    _, offset, data_offset, length, fin, _ = stream.BACKENDS["python"].parse_stream(frame)
    return int(receiver.on_data(frame, data_offset, length, offset, fin))


def chunks(data: bytes, rng: random.Random) -> list[bytes]:
    """STREAM frames over `data`: random sizes, overlapping, a FIN on the last."""
    frames = []
    offset = 0
    while offset < len(data):
        length = rng.randrange(1, 3000)
        start = max(0, offset - rng.randrange(0, 200))  # overlaps what came before
        piece = data[start : offset + length]
        fin = offset + length >= len(data)
        frames.append(written_big(start, piece, fin))
        offset += length
    return frames


def written_big(offset: int, data: bytes, fin: bool) -> bytes:
    buf = bytearray(len(data) + 32)
    return bytes(buf[: stream.BACKENDS["python"].write_stream(buf, 0, 4, offset, data, fin)])


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_duplicated_overlapping_chunks_reassemble(m: ModuleType, seed: int) -> None:
    rng = random.Random(seed)
    data = DATA[: rng.randrange(1, len(DATA))]
    frames = chunks(data, rng)
    frames += rng.sample(frames, len(frames) // 3)  # duplicates
    rng.shuffle(frames)
    receiver = m.RecvStream(1 << 16)
    grown = 0
    out = bytearray()
    for frame in frames:
        grown += deliver(receiver, frame)
        out += receiver.read(rng.randrange(0, 5000))
    out += receiver.read()
    assert bytes(out) == data
    assert grown == len(data) == receiver.highest == receiver.final_size
    assert receiver.is_finished and not receiver.received


def test_final_size_rules(m: ModuleType) -> None:
    receiver = m.RecvStream(10_000)
    deliver(receiver, written_big(0, b"x" * 100, False))
    with pytest.raises(FinalSizeError, match="below"):  # a FIN under data already received
        deliver(receiver, written_big(0, b"x" * 50, True))
    deliver(receiver, written_big(100, b"x" * 100, True))
    for offset, length, fin in ((150, 100, False), (150, 40, True), (200, 1, False)):
        with pytest.raises(FinalSizeError):  # past the final size, or a different one
            deliver(receiver, written_big(offset, b"x" * length, fin))
    deliver(receiver, written_big(150, b"x" * 50, True))  # the same final size again is fine
    with pytest.raises(FinalSizeError):
        receiver.on_reset(199)
    assert receiver.on_reset(200) == 0 and receiver.reset_received


def test_flow_control_violation(m: ModuleType) -> None:
    receiver = m.RecvStream(2000)
    deliver(receiver, written_big(1000, b"x" * 1000, False))  # exactly up to the limit
    with pytest.raises(FlowControlError):
        deliver(receiver, written_big(1999, b"xy", False))
    with pytest.raises(FlowControlError):
        m.RecvStream(2000).on_reset(2001)  # a reset's final size counts too (§4.5)


def test_data_after_a_reset_is_dropped_but_still_checked(m: ModuleType) -> None:
    receiver = m.RecvStream(2000)
    deliver(receiver, written_big(0, b"abc", False))
    assert receiver.on_reset(500) == 497
    assert deliver(receiver, written_big(3, b"def", False)) == 0
    assert receiver.read() == b"" and not receiver.is_finished
    with pytest.raises(FinalSizeError):
        deliver(receiver, written_big(499, b"zz", False))


def test_window_updates_at_half_the_window_and_the_ring_follows(m: ModuleType) -> None:
    receiver = m.RecvStream(2048, 8192)
    deliver(receiver, written_big(0, DATA[:2048], False))
    assert receiver.read(1000) == DATA[:1000]
    assert receiver.window_update(now=1.0, rtt=0.1) == -1
    assert receiver.read(24) == DATA[1000:1024]
    assert receiver.window_update(now=1.0, rtt=0.1) == 1024 + 2048
    receiver.read(1024)
    assert receiver.window_update(now=1.05, rtt=0.1) == 2048 + 4096  # fast reader: doubled
    deliver(receiver, written_big(2048, DATA[2048:6144], False))  # a window past the first ring
    assert receiver.read() == DATA[2048:6144]
    deliver(receiver, written_big(6144, b"", True))
    assert receiver.window_update(now=2.0, rtt=0.1) == -1  # the final size is known (§4.5)


def test_too_many_gaps_are_refused(m: ModuleType) -> None:
    receiver = m.RecvStream(1 << 20)
    for i in range(m.MAX_RECEIVE_GAPS):
        deliver(receiver, written_big(2 * i + 1, b"x", False))
    with pytest.raises(FlowControlError, match="gaps"):
        deliver(receiver, written_big(10_000, b"x", False))


def test_data_outside_the_buffer_is_refused(m: ModuleType) -> None:
    with pytest.raises(FrameError):
        m.RecvStream(1000).on_data(b"abc", 2, 2, 0, False)


def test_connection_credit_counts_the_highest_offset_of_every_stream(m: ModuleType) -> None:
    connection = m.ReceiveCredit(3000)
    first, second = m.RecvStream(2000), m.RecvStream(2000)
    connection.on_received(deliver(first, written_big(0, b"x" * 2000, False)))
    connection.on_received(deliver(first, written_big(500, b"x" * 1000, False)))  # no growth
    with pytest.raises(FlowControlError):  # each stream within its own window, not together
        connection.on_received(deliver(second, written_big(0, b"y" * 1001, False)))
    consumed = len(first.read()) + len(second.read())
    assert connection.update(consumed, now=1.0, rtt=0.1) == consumed + 3000


@pytest.mark.parametrize("seed", range(3))
def test_a_lossy_reordering_transfer_delivers_every_byte_within_the_windows(
    m: ModuleType, seed: int
) -> None:
    """200 KB through 16 KB stream and 24 KB connection windows over a path that loses 10 %
    of the frames and reorders the rest; ACKs come back with the delivery."""
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(200_000))
    send_connection, receive_connection = m.SendCredit(24_000), m.ReceiveCredit(24_000)
    sender, receiver = m.SendStream(4, 16_000), m.RecvStream(16_000)
    sender.write(data, fin=True)
    out = bytearray()
    now = 0.0
    while not (sender.is_complete and receiver.is_finished):
        now += 0.001
        flight = frames_of(sender, 1200, send_connection)
        rng.shuffle(flight)
        for offset, length, fin, frame in flight:
            if rng.random() < 0.1:
                sender.on_lost(offset, length, fin)
                continue
            receive_connection.on_received(deliver(receiver, frame))
            sender.on_acked(offset, length, fin)
        out += receiver.read()
        assert receiver.highest - receiver.read_offset <= 16_000
        if (limit := receiver.window_update(now, 0.002)) >= 0:
            sender.credit.raise_limit(limit)
        if (limit := receive_connection.update(len(out), now, 0.002)) >= 0:
            send_connection.raise_limit(limit)
    assert bytes(out) == data


# -- both backends, random operation sequences -----------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["write", "fin", "send", "ack", "lose", "deliver", "read", "update", "reset"]
        ),
        st.integers(0, 3000),
    ),
    max_size=60,
)


def state(sender: Any, receiver: Any, connection: Any) -> tuple[Any, ...]:
    return (
        sender.acked_offset,
        sender.next_offset,
        sender.write_offset,
        sender.final_size,
        sender.fin_sent,
        sender.fin_acked,
        sender.was_reset,
        receiver.reset_received,
        list(sender.acked),
        list(sender.lost),
        sender.credit.limit,
        connection.used,
        receiver.read_offset,
        receiver.highest,
        receiver.final_size,
        list(receiver.received),
        receiver.credit.limit,
        receiver.credit.window,
    )


def run(module: ModuleType, ops: list[tuple[str, int]]) -> list[Any]:
    """Drives one backend's sender and receiver through `ops`; every result and state."""
    connection = module.SendCredit(20_000)
    sender = module.SendStream(4, 4096)
    receiver = module.RecvStream(4096, 16384)
    in_flight: list[tuple[int, int, bool, bytes]] = []
    buf = bytearray(1500)
    trace: list[Any] = []
    now = 0.0
    for op, n in ops:
        now += 0.01
        if op == "write" and sender.final_size < 0:
            sender.write(DATA[sender.write_offset : sender.write_offset + n])
        elif op == "fin" and sender.final_size < 0:
            sender.write(b"", fin=True)
        elif op == "send":
            sent = sender.write_frame(buf, 0, 40 + n % 1400, connection)
            if sent is not None:
                in_flight.append((*sent[:3], bytes(buf[: sent[3]])))
            trace.append(sent)
        elif op in ("ack", "lose", "deliver") and in_flight:
            offset, length, fin, frame = in_flight.pop(n % len(in_flight))
            if op == "deliver":
                trace.append(outcome(partial(deliver, receiver, frame)))
                sender.on_acked(offset, length, fin)
            elif op == "ack":
                sender.on_acked(offset, length, fin)
            else:
                sender.on_lost(offset, length, fin)
        elif op == "reset" and n < 100 and not sender.was_reset:
            final_size = sender.reset()
            trace.append(outcome(partial(receiver.on_reset, final_size)))
        elif op == "read":
            got = receiver.read(n)
            assert got == DATA[receiver.read_offset - len(got) : receiver.read_offset]
            trace.append(got)
        elif op == "update":
            limit = receiver.window_update(now, 0.02)
            if limit >= 0:
                sender.credit.raise_limit(limit)
            trace.append((limit, sender.take_blocked(), connection.take_blocked()))
        trace.append(state(sender, receiver, connection))
    return trace


@settings(max_examples=150, deadline=None)
@given(ops=OPS)
def test_both_backends_agree_on_random_operation_sequences(ops: list[tuple[str, int]]) -> None:
    traces = [run(module, ops) for module in BACKENDS]
    assert all(trace == traces[0] for trace in traces)
