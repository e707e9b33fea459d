"""The core's frame table (#16 stage 3): which packet kinds carry which frames (RFC 9000
§12.4, Table 3), the dispatch table stage 4 binds, and the stream-direction rules of §19."""

from __future__ import annotations

import pytest

from netsched_client.core import frames, packet, stream
from netsched_client.core.errors import FrameError, StreamStateError

INITIAL, ZERO_RTT, HANDSHAKE, ONE_RTT = (
    packet.KIND_INITIAL,
    packet.KIND_ZERO_RTT,
    packet.KIND_HANDSHAKE,
    packet.KIND_ONE_RTT,
)


def test_table_3_packet_kinds() -> None:
    rows = frames.FRAMES
    assert rows[packet.ACK_FRAME].kinds == {INITIAL, HANDSHAKE, ONE_RTT}
    assert rows[stream.CRYPTO_FRAME].kinds == {INITIAL, HANDSHAKE, ONE_RTT}
    for frame_type in [*range(0x04, 0x06), *range(0x08, 0x18), 0x30, 0x31]:
        assert rows[frame_type].kinds == {ZERO_RTT, ONE_RTT}, hex(frame_type)
    assert rows[packet.PATH_ACK_FRAME].kinds == {ONE_RTT}  # multipath: 1-RTT only


def test_every_stream_frame_type_is_a_row_of_one_name() -> None:
    assert {frames.FRAMES[t].name for t in range(0x08, 0x10)} == {"stream"}
    assert frames.FRAMES[0x13].name == frames.FRAMES[0x12].name == "max_streams"


def test_bind_maps_types_to_handlers_and_leaves_unhandled_names_out() -> None:
    def on_stream() -> None: ...
    def on_ack() -> None: ...

    table = frames.bind({"stream": on_stream, "ack": on_ack})
    assert set(table) == {*range(0x08, 0x10), packet.ACK_FRAME, packet.ACK_ECN_FRAME}
    assert table[0x0B] == (on_stream, frozenset({ZERO_RTT, ONE_RTT}))
    assert table[packet.ACK_ECN_FRAME][0] is on_ack


CLIENT_UNI, SERVER_UNI, CLIENT_BIDI = 2, 3, 0


@pytest.mark.parametrize("frame_type", [0x08, 0x0F, stream.RESET_STREAM_FRAME, 0x15])
def test_data_side_frames_on_our_send_only_stream_are_a_state_error(frame_type: int) -> None:
    with pytest.raises(StreamStateError):
        frames.check_stream_direction(frame_type, CLIENT_UNI, is_client=True)
    with pytest.raises(StreamStateError):
        frames.check_stream_direction(frame_type, SERVER_UNI, is_client=False)
    frames.check_stream_direction(frame_type, SERVER_UNI, is_client=True)
    frames.check_stream_direction(frame_type, CLIENT_BIDI, is_client=True)


@pytest.mark.parametrize("frame_type", [stream.STOP_SENDING_FRAME, stream.MAX_STREAM_DATA_FRAME])
def test_sender_side_frames_on_a_receive_only_stream_are_a_state_error(frame_type: int) -> None:
    with pytest.raises(StreamStateError):
        frames.check_stream_direction(frame_type, SERVER_UNI, is_client=True)
    frames.check_stream_direction(frame_type, CLIENT_UNI, is_client=True)
    frames.check_stream_direction(frame_type, CLIENT_BIDI, is_client=False)


def test_direction_of_a_frame_without_a_stream_is_refused() -> None:
    with pytest.raises(FrameError):
        frames.check_stream_direction(stream.MAX_DATA_FRAME, 0, is_client=True)
