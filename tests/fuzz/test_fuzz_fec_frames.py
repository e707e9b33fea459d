"""Property tests of the FEC frame codecs (netsched_client/fec/frames.py, docs/FEC.md).

Round trip for every frame; every strict prefix and any trailing bytes are
errors; arbitrary and mutated bytes give a frame or `FrameEncodingError`; a
field out of range is refused by the frame's constructor, whichever side
builds it.
"""

from __future__ import annotations

import random

import pytest
from aioquic.buffer import Buffer, encode_uint_var
from fuzz_support import TARGETS, fuzz_settings, holds_contract, mutate
from hypothesis import given
from hypothesis import strategies as st

from netsched_client.fec import frames as fec
from netsched_client.fec._rlc import MAX_SYMBOL_ID, MAX_SYMBOL_SIZE, MAX_WINDOW, MIN_SYMBOL_SIZE

SYMBOL_ID = st.integers(0, MAX_SYMBOL_ID)


@st.composite
def repairs(draw: st.DrawFn) -> fec.Repair:
    count = draw(st.integers(1, MAX_WINDOW))
    return fec.Repair(
        repair_key=draw(st.integers(0, fec.MAX_REPAIR_KEY)),
        first_id=draw(st.integers(0, MAX_SYMBOL_ID - count + 1)),
        count=count,
        dt=draw(st.integers(0, fec.MAX_DT)),
        symbol=draw(st.binary(min_size=MIN_SYMBOL_SIZE, max_size=min(MAX_SYMBOL_SIZE, 300))),
    )


@st.composite
def symbol_acks(draw: st.DrawFn) -> fec.SymbolAck:
    """Ascending ranges with gaps of at least one ID, as the frame requires."""
    count = draw(st.integers(1, fec.MAX_SYMBOL_ACK_RANGES))
    bounds = sorted(
        draw(st.sets(st.integers(0, MAX_SYMBOL_ID + 1), min_size=2 * count, max_size=2 * count))
    )
    ranges = [range(a, b) for a, b in zip(bounds[::2], bounds[1::2], strict=True)]
    merged: list[range] = []
    for item in ranges:  # ranges one apart would be adjacent: join them
        if merged and item.start <= merged[-1].stop:
            merged[-1] = range(merged[-1].start, item.stop)
        else:
            merged.append(item)
    return fec.SymbolAck(tuple(merged))


FRAMES = st.one_of(
    st.builds(fec.SourceSymbolId, SYMBOL_ID),
    repairs(),
    symbol_acks(),
    st.builds(fec.FecWindow, SYMBOL_ID, st.integers(0, MAX_WINDOW)),
)


@fuzz_settings()
@given(FRAMES, st.binary(max_size=16))
def test_round_trip_whole_and_with_the_packet_after_it(
    frame: fec.FecFrame, trailing: bytes
) -> None:
    encoded = frame.encode()
    assert fec.parse_frame(encoded) == frame
    buf = Buffer(data=encoded + trailing)
    assert fec.decode_frame(buf.pull_uint_var(), buf) == frame
    assert buf.tell() == len(encoded)
    assert len(encoded) - len(encode_uint_var(frame.frame_type)) == len(frame.encode_body())


@fuzz_settings(200)
@given(FRAMES, st.data())
def test_every_prefix_and_any_trailing_bytes_are_errors(
    frame: fec.FecFrame, data: st.DataObject
) -> None:
    encoded = frame.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(fec.FrameEncodingError):
        fec.parse_frame(encoded[:cut])
    with pytest.raises(fec.FrameEncodingError):
        fec.parse_frame(encoded + data.draw(st.binary(min_size=1, max_size=8)))


@fuzz_settings()
@given(st.sampled_from(sorted(fec.FRAME_CLASSES)), st.binary(max_size=300))
def test_arbitrary_body_after_a_fec_type(frame_type: int, body: bytes) -> None:
    holds_contract("fec_frame", encode_uint_var(frame_type) + body)


@fuzz_settings()
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    holds_contract("fec_frame", data)


@fuzz_settings()
@given(st.randoms(use_true_random=False), st.sampled_from(TARGETS["fec_frame"].seeds))
def test_mutated_encodings(rng: random.Random, seed: bytes) -> None:
    holds_contract("fec_frame", mutate(rng, seed, TARGETS["fec_frame"].seeds, text=False))


@fuzz_settings(200)
@given(
    st.integers(0, 2**16 - 1),
    st.integers(0, 2**16 - 1),
    st.integers(0, 2**62 - 1),
    st.integers(0, 2**62 - 1),
)
def test_repair_fields_out_of_range_are_encoding_errors(
    key: int, word: int, first_id: int, length: int
) -> None:
    """Huge varints in REPAIR's first ID and length: refused before any allocation."""
    body = key.to_bytes(2, "big") + word.to_bytes(2, "big")
    body += encode_uint_var(first_id) + encode_uint_var(length) + bytes(64)
    data = encode_uint_var(fec.REPAIR) + body
    try:
        frame = fec.parse_frame(data)
    except fec.FrameEncodingError:
        return
    assert isinstance(frame, fec.Repair) and len(frame.symbol) == length == 64
