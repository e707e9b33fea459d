"""Property tests of the draft-ietf-quic-multipath-21 frame codecs (proto/multipath/frames.py).

Round trip for every frame; every strict prefix of an encoding is an error;
trailing bytes are an error for `parse_frame` and left in the buffer by
`decode_frame`; arbitrary and mutated bytes give a frame or
`FrameEncodingError`, nothing else.
"""

from __future__ import annotations

from aioquic.buffer import Buffer, encode_uint_var
from aioquic.quic.rangeset import RangeSet
from fuzz_support import TARGETS, fuzz_settings, holds_contract, mutate
from hypothesis import given
from hypothesis import strategies as st

from netsched_client.proto.multipath import frames as mp

VARINT = st.integers(0, 2**62 - 1)
PATH_ID = st.integers(0, mp.MAX_PATH_ID_VALUE)


@st.composite
def range_sets(draw: st.DrawFn) -> RangeSet:
    """1..16 disjoint, non-adjacent ranges (what an ACK can express)."""
    count = draw(st.integers(1, 16))
    bounds = sorted(draw(st.sets(st.integers(0, 2**40), min_size=2 * count, max_size=2 * count)))
    ranges = RangeSet()
    for start, stop in zip(bounds[::2], bounds[1::2], strict=True):
        ranges.add(start, stop)
    return ranges


@st.composite
def new_connection_ids(draw: st.DrawFn) -> mp.PathNewConnectionId:
    sequence = draw(VARINT)
    return mp.PathNewConnectionId(
        draw(PATH_ID),
        sequence,
        draw(st.integers(0, sequence)),
        draw(st.binary(min_size=1, max_size=20)),
        draw(st.binary(min_size=16, max_size=16)),
    )


FRAMES = st.one_of(
    st.builds(
        mp.PathAck,
        PATH_ID,
        range_sets(),
        VARINT,
        st.none() | st.tuples(VARINT, VARINT, VARINT),
    ),
    st.builds(mp.PathAbandon, PATH_ID, VARINT),
    st.builds(mp.PathStatus, PATH_ID, VARINT, st.booleans()),
    new_connection_ids(),
    st.builds(mp.PathRetireConnectionId, PATH_ID, VARINT),
    st.builds(mp.MaxPathId, PATH_ID),
    st.builds(mp.PathsBlocked, PATH_ID),
    st.builds(mp.PathCidsBlocked, PATH_ID, VARINT),
)


def _same(a: mp.MultipathFrame, b: mp.MultipathFrame) -> bool:
    if isinstance(a, mp.PathAck) and isinstance(b, mp.PathAck):
        return (a.path_id, list(a.ranges), a.ack_delay, a.ecn) == (
            b.path_id,
            list(b.ranges),
            b.ack_delay,
            b.ecn,
        )
    return a == b


@fuzz_settings()
@given(FRAMES, st.binary(max_size=16))
def test_round_trip_whole_and_with_the_packet_after_it(
    frame: mp.MultipathFrame, trailing: bytes
) -> None:
    encoded = frame.encode()
    assert _same(mp.parse_frame(encoded), frame)
    buf = Buffer(data=encoded + trailing)
    frame_type = buf.pull_uint_var()
    assert _same(mp.decode_frame(frame_type, buf), frame)
    assert buf.tell() == len(encoded)  # the packet's next frame is left in place
    frame_type, body = frame.split()
    assert encode_uint_var(frame_type) + body == encoded


@fuzz_settings(200)
@given(FRAMES, st.data())
def test_every_prefix_and_any_trailing_bytes_are_errors(
    frame: mp.MultipathFrame, data: st.DataObject
) -> None:
    encoded = frame.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    try:
        mp.parse_frame(encoded[:cut])
    except mp.FrameEncodingError:
        pass
    else:
        raise AssertionError(f"a {cut}-byte prefix of {encoded.hex()} parsed")
    extra = data.draw(st.binary(min_size=1, max_size=8))
    try:
        mp.parse_frame(encoded + extra)
    except mp.FrameEncodingError:
        pass
    else:
        raise AssertionError("trailing bytes were accepted")


@fuzz_settings()
@given(st.sampled_from(sorted(mp.FRAME_CLASSES)), st.binary(max_size=200))
def test_arbitrary_body_after_a_multipath_type(frame_type: int, body: bytes) -> None:
    holds_contract("mp_frame", encode_uint_var(frame_type) + body)


@fuzz_settings()
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    holds_contract("mp_frame", data)


@fuzz_settings()
@given(st.randoms(use_true_random=False), st.sampled_from(TARGETS["mp_frame"].seeds))
def test_mutated_encodings(rng: object, seed: bytes) -> None:
    seeds = TARGETS["mp_frame"].seeds
    holds_contract("mp_frame", mutate(rng, seed, seeds, text=False))  # type: ignore[arg-type]


@fuzz_settings(100)
@given(st.sampled_from(sorted(mp.FRAME_CLASSES)), st.integers(mp.MAX_PATH_ID_VALUE + 1, 2**62 - 1))
def test_a_path_id_above_2_to_the_32_is_a_protocol_violation(frame_type: int, path_id: int) -> None:
    data = encode_uint_var(frame_type) + encode_uint_var(path_id) + bytes(40)
    try:
        mp.parse_frame(data)
    except mp.PathIdTooLarge:
        return
    raise AssertionError(f"path ID {path_id} was accepted in frame 0x{frame_type:x}")
