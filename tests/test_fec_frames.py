"""FEC frames and the netsched_fec transport parameter, against the docs/FEC.md vectors."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from aioquic.buffer import Buffer, encode_uint_var
from aioquic.quic.rangeset import RangeSet
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_client.fec import FecDecoder, FecEncoder, Recovered
from netsched_client.fec import frames as f
from netsched_client.fec.params import (
    FEC_TRANSPORT_PARAMETER,
    MAX_PARAMETER_BYTES,
    FecParameters,
    FecTransportParameterError,
    NegotiatedFec,
    decode_fec_parameters,
    negotiate,
)

fuzz = settings(deadline=None, max_examples=200)
U62 = st.integers(0, 2**62 - 1)

# -- docs/FEC.md vectors -------------------------------------------------------

FEC_MD = Path(__file__).resolve().parent.parent / "docs" / "FEC.md"
_BLOCK_RE = re.compile(r"^```hex ([\w-]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def fec_vectors() -> dict[str, bytes]:
    """Name -> bytes of every `hex <name>` block in FEC.md."""
    vectors: dict[str, bytes] = {}
    for name, body in _BLOCK_RE.findall(FEC_MD.read_text()):
        assert name not in vectors, f"duplicate vector {name}"
        vectors[name] = bytes.fromhex("".join(line.split("#", 1)[0] for line in body.splitlines()))
    return vectors


SYMBOL_7 = bytes.fromhex("0a0403616263")  # STREAM(4, "abc")
SYMBOL_8 = bytes.fromhex("0e040303646566")  # STREAM(4, offset 3, "def")
REPAIR_KEY, REPAIR_SIZE = 42, 16


def example_repair() -> f.Repair:
    """The REPAIR of FEC.md §4, its symbol computed by the codec."""
    encoder = FecEncoder(REPAIR_SIZE, 8, first_id=7)
    encoder.add_source(7, SYMBOL_7)
    encoder.add_source(8, SYMBOL_8)
    return f.Repair(REPAIR_KEY, 7, 2, 15, encoder.repair(REPAIR_KEY, 7, 2, 15))


def transport_parameter(params: FecParameters) -> bytes:
    value = params.encode()
    return encode_uint_var(FEC_TRANSPORT_PARAMETER) + encode_uint_var(len(value)) + value


def pull_transport_parameter(data: bytes) -> FecParameters | None:
    buf = Buffer(data=data)
    assert buf.pull_uint_var() == FEC_TRANSPORT_PARAMETER
    value = buf.pull_bytes(buf.pull_uint_var())
    assert buf.eof()
    return decode_fec_parameters(value)


def split_protected(packet: bytes) -> tuple[f.FecFrame, bytes]:
    """The leading SOURCE_SYMBOL_ID and the symbol after it."""
    buf = Buffer(data=packet)
    frame = f.decode_frame(buf.pull_uint_var(), buf)
    return frame, packet[buf.tell() :]


# name -> (the value, its encoding by our code, our decoding of the doc's bytes)
VECTORS: dict[str, tuple[object, Callable[[], bytes], Callable[[bytes], object]]] = {
    "fec-transport-parameter": (
        FecParameters(),
        lambda: transport_parameter(FecParameters()),
        pull_transport_parameter,
    ),
    "fec-source-symbol-id": (f.SourceSymbolId(1000), f.SourceSymbolId(1000).encode, f.parse_frame),
    "fec-protected-packet": (
        (f.SourceSymbolId(7), SYMBOL_7),
        lambda: f.SourceSymbolId(7).encode() + SYMBOL_7,
        split_protected,
    ),
    "fec-repair": (example_repair(), lambda: example_repair().encode(), f.parse_frame),
    "fec-symbol-ack": (
        f.SymbolAck((range(0, 6), range(8, 9), range(10, 13))),
        lambda: f.SymbolAck((range(0, 6), range(8, 9), range(10, 13))).encode(),
        f.parse_frame,
    ),
    "fec-window": (f.FecWindow(1, 512), f.FecWindow(1, 512).encode, f.parse_frame),
}


def test_every_fec_vector_is_checked() -> None:
    assert set(fec_vectors()) == set(VECTORS)


PROTOCOL_MD = FEC_MD.with_name("PROTOCOL.md")
# The FEC examples of PROTOCOL.md §9, by their label there.
PROTOCOL_EXAMPLES: dict[str, Callable[[], bytes]] = {
    "SOURCE_SYMBOL_ID(1000)": f.SourceSymbolId(1000).encode,
    "SYMBOL_ACK(0..5, 8, 10..12)": f.SymbolAck((range(0, 6), range(8, 9), range(10, 13))).encode,
    "FEC_WINDOW(epoch 1, 512)": f.FecWindow(1, 512).encode,
    "netsched_fec(1, 1120, 256, 256)": lambda: transport_parameter(FecParameters()),
}


def test_protocol_md_fec_examples() -> None:
    section = PROTOCOL_MD.read_text().split("## 9. Forward erasure correction", 1)[1]
    block = section.split("```\n", 2)[1]
    examples = {}
    for line in block.splitlines():
        label, _, hex_ = line.partition("  ")
        examples[label.strip()] = bytes.fromhex(hex_.replace(" ", ""))
    assert examples == {label: encode() for label, encode in PROTOCOL_EXAMPLES.items()}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_fec_vector(name: str) -> None:
    value, encode, decode = VECTORS[name]
    documented = fec_vectors()[name]
    assert encode() == documented
    assert decode(documented) == value


def test_documented_repair_rebuilds_the_lost_symbol() -> None:
    repair = f.parse_frame(fec_vectors()["fec-repair"])
    assert isinstance(repair, f.Repair)
    decoder = FecDecoder(REPAIR_SIZE, 8, first_id=7)
    assert decoder.receive_source(8, SYMBOL_8) == []
    recovered = decoder.receive_repair(
        repair.repair_key, repair.first_id, repair.count, repair.dt, repair.symbol
    )
    assert recovered == [Recovered(7, SYMBOL_7)]


def test_codepoints_are_one_four_byte_block_and_not_greasing() -> None:
    assert sorted(f.FRAME_CLASSES) == list(range(f.SOURCE_SYMBOL_ID, f.SOURCE_SYMBOL_ID + 4))
    for codepoint in (*f.FRAME_CLASSES, FEC_TRANSPORT_PARAMETER):
        assert (codepoint - 27) % 31 != 0
    assert all(len(encode_uint_var(t)) == 4 for t in f.FRAME_CLASSES)


# -- frames ---------------------------------------------------------------------


def test_repair_overhead_bound() -> None:
    largest = f.Repair(0xFFFF, 2**62 - 4095, 4095, 15, bytes(65535))
    assert len(largest.encode()) - len(largest.symbol) == f.REPAIR_MAX_OVERHEAD


def test_encode_is_type_then_body() -> None:
    frame = f.FecWindow(3, 7)
    assert frame.encode() == encode_uint_var(f.FEC_WINDOW) + frame.encode_body()


def test_symbol_ack_from_a_range_set_keeps_the_newest_ranges() -> None:
    received = RangeSet([range(2 * i, 2 * i + 1) for i in range(100)])
    frame = f.SymbolAck.newest(received)
    assert len(frame.ranges) == f.MAX_SYMBOL_ACK_RANGES
    assert frame.ranges[-1] == range(198, 199) and frame.ranges[0] == range(72, 73)
    assert f.parse_frame(frame.encode()) == frame


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: f.SourceSymbolId(-1), r"^SOURCE_SYMBOL_ID\.symbol_id: -1 is out of range"),
        (lambda: f.SourceSymbolId(2**62), r"SOURCE_SYMBOL_ID\.symbol_id"),
        (lambda: f.Repair(0x10000, 0, 1, 15, b"abc"), r"^REPAIR\.repair_key: 65536"),
        (lambda: f.Repair(0, 0, 1, 16, b"abc"), r"^REPAIR\.dt: 16 is out of range 0\.\.15$"),
        (lambda: f.Repair(0, 0, 0, 15, b"abc"), r"^REPAIR\.count: 0 is out of range 1\.\.4095$"),
        (lambda: f.Repair(0, 0, 4096, 15, b"abc"), r"^REPAIR\.count: 4096"),
        (lambda: f.Repair(0, 2**62 - 1, 2, 15, b"abc"), r"^REPAIR\.first_id: "),
        (lambda: f.Repair(0, 0, 1, 15, b"ab"), r"^REPAIR\.symbol length: 2 is out of range"),
        (lambda: f.SymbolAck(()), r"^SYMBOL_ACK\.range count: 0 is out of range 1\.\.64$"),
        (lambda: f.SymbolAck((range(3, 3),)), r"^SYMBOL_ACK\.ranges: range\(3, 3\) is empty"),
        (lambda: f.SymbolAck((range(0, 9, 2),)), r"^SYMBOL_ACK\.ranges: "),
        (lambda: f.SymbolAck((range(0, 3), range(3, 5))), r"range\(3, 5\) must start at 4 or"),
        (lambda: f.SymbolAck((range(4, 5), range(0, 2))), r"^SYMBOL_ACK\.ranges: range\(0, 2\)"),
        (lambda: f.SymbolAck((range(-2, 1),)), r"range\(-2, 1\) must start at 0 or above"),
        (lambda: f.SymbolAck(tuple(range(i * 2, i * 2 + 1) for i in range(65))), "range count"),
        (lambda: f.FecWindow(0, 4096), r"^FEC_WINDOW\.window: 4096 is out of range 0\.\.4095$"),
        (lambda: f.FecWindow(-1, 1), r"^FEC_WINDOW\.epoch: "),
    ],
)
def test_frames_check_their_fields(make: Callable[[], object], message: str) -> None:
    with pytest.raises(f.FrameEncodingError, match=message):
        make()


def repair_hex(word: str, first: str = "00", length: str = "03", symbol: str = "616263") -> str:
    return "8fec0001" + "0000" + word + first + length + symbol


@pytest.mark.parametrize(
    ("hex_", "message"),
    [
        ("", "no complete frame type"),
        ("8fec", "no complete frame type"),  # a varint cut short
        ("0a", r"not a FEC frame type: 0xa$"),
        ("8fec0004", "not a FEC frame type: 0xfec0004"),
        ("8fec0000", "truncated frame 0xfec0000"),
        ("8fec000001ff", "1 trailing bytes after frame"),
        (repair_hex("f000"), r"REPAIR\.count: 0 is out of range"),  # NSS 0
        (repair_hex("f001", length="02", symbol="6162"), r"REPAIR\.symbol length: 2 is out"),
        (repair_hex("f001", length="8000ffff"), "truncated frame 0xfec0001"),  # 65535 announced
        (repair_hex("f001", length="04"), "truncated frame 0xfec0001"),
        (repair_hex("f002", first="ffffffffffffffff"), r"REPAIR\.first_id: "),
        ("8fec0001002a", "truncated frame 0xfec0001"),
        ("8fec0002" + "05" + "4040", r"SYMBOL_ACK\.range count: 65 is out of range 1\.\.64$"),
        ("8fec0002" + "0500" + "06", r"SYMBOL_ACK: ranges go below symbol ID 0 \(to -1\)$"),
        ("8fec0002" + "050100" + "0400", r"SYMBOL_ACK: ranges go below symbol ID 0"),
        ("8fec0002" + "05010000", "truncated frame 0xfec0002"),
        ("8fec0003" + "01" + "5000", r"FEC_WINDOW\.window: 4096"),
    ],
)
def test_malformed_frames(hex_: str, message: str) -> None:
    with pytest.raises(f.FrameEncodingError, match=message):
        f.parse_frame(bytes.fromhex(hex_))


def test_repair_symbol_over_the_size_limit_is_refused_before_reading() -> None:
    data = bytes.fromhex(repair_hex("f001", length="80010000", symbol=""))  # 65536
    with pytest.raises(f.FrameEncodingError, match=r"symbol length: 65536 is out of range"):
        f.parse_frame(data)


def test_frames_follow_each_other_in_a_packet() -> None:
    frames = [f.SourceSymbolId(9), f.Repair(1, 2, 3, 4, b"\x00" * 5), f.FecWindow(0, 0)]
    buf = Buffer(data=b"".join(frame.encode() for frame in frames))
    decoded = []
    while not buf.eof():
        decoded.append(f.decode_frame(buf.pull_uint_var(), buf))
    assert decoded == frames


# -- property tests --------------------------------------------------------------


@st.composite
def symbol_acks(draw: st.DrawFn) -> f.SymbolAck:
    lengths = draw(st.lists(st.integers(0, 2**20), min_size=1, max_size=f.MAX_SYMBOL_ACK_RANGES))
    gaps = draw(st.lists(st.integers(1, 2**20), min_size=len(lengths), max_size=len(lengths)))
    start, ranges = draw(st.integers(0, 2**40)), []
    for length, gap in zip(lengths, gaps, strict=True):
        ranges.append(range(start, start + length + 1))
        start += length + 1 + gap
    return f.SymbolAck(tuple(ranges))


@st.composite
def repairs(draw: st.DrawFn) -> f.Repair:
    count = draw(st.integers(1, 4095))
    return f.Repair(
        draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 2**62 - count)),
        count,
        draw(st.integers(0, 15)),
        draw(st.binary(min_size=3, max_size=64)),
    )


frames = st.one_of(
    st.builds(f.SourceSymbolId, U62),
    repairs(),
    symbol_acks(),
    st.builds(f.FecWindow, U62, st.integers(0, 4095)),
)


@given(frames)
@fuzz
def test_round_trip(frame: f.FecFrame) -> None:
    assert f.parse_frame(frame.encode()) == frame


@given(frames, st.integers(0, 100))
@fuzz
def test_every_truncation_is_an_error(frame: f.FecFrame, cut: int) -> None:
    data = frame.encode()
    with pytest.raises(f.FrameEncodingError):
        f.parse_frame(data[: cut % len(data)])


@given(st.sampled_from(sorted(f.FRAME_CLASSES)), st.binary(max_size=80))
@fuzz
def test_arbitrary_bodies_only_raise_frame_errors(frame_type: int, body: bytes) -> None:
    with contextlib.suppress(f.FrameEncodingError):
        frame = f.decode_frame(frame_type, Buffer(data=body))
        assert frame.frame_type == frame_type
        # Whatever decodes re-encodes to a valid frame that decodes the same.
        assert f.parse_frame(frame.encode()) == frame


# -- transport parameter ----------------------------------------------------------


def test_parameters_round_trip_at_the_limits() -> None:
    for params in (FecParameters(3, 1, 0), FecParameters(65535, 4095, 4095)):
        assert decode_fec_parameters(params.encode()) == params


def test_non_minimal_varints_are_accepted() -> None:
    assert decode_fec_parameters(bytes.fromhex("4001800004604100c000000000000100")) == (
        FecParameters(1120, 256, 256)
    )


@pytest.mark.parametrize("scheme", ["00", "02", "c000000000000063"])
def test_unknown_scheme_means_no_fec(scheme: str) -> None:
    # The fields after an unknown scheme are that scheme's business: not read.
    assert decode_fec_parameters(bytes.fromhex(scheme + "ffff")) is None


@pytest.mark.parametrize(
    ("hex_", "message"),
    [
        ("", r"^netsched_fec: value of 0 bytes, expected 1\.\.32$"),
        ("01" + "00" * MAX_PARAMETER_BYTES, "value of 33 bytes"),
        ("01", r"^netsched_fec: truncated value 01$"),
        ("01446041", "truncated value"),
        ("0144604100410000", r"^netsched_fec: 1 trailing bytes$"),
        ("01024100 4100", r"^netsched_fec\.symbol_size: must be an int in 3\.\.65535 \(got 2\)$"),
        ("01800100004100 4100", r"symbol_size: .*\(got 65536\)$"),
        ("01446000 4100", r"^netsched_fec\.max_coding_window: must be an int in 1\.\.4095 \(got 0"),
        ("0144605000 4100", r"max_coding_window: .*\(got 4096\)$"),
        ("014460410050 00", r"initial_decoding_window: .*\(got 4096\)$"),
    ],
)
def test_malformed_parameter_values(hex_: str, message: str) -> None:
    with pytest.raises(FecTransportParameterError, match=message):
        decode_fec_parameters(bytes.fromhex(hex_))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"symbol_size": 2}, r"^netsched_fec\.symbol_size: .*\(got 2\)$"),
        ({"symbol_size": True}, r"symbol_size: .*\(got True\)$"),
        ({"symbol_size": 1120.0}, r"symbol_size: .*\(got 1120\.0\)$"),
        ({"max_coding_window": 0}, r"^netsched_fec\.max_coding_window: "),
        ({"initial_decoding_window": -1}, r"^netsched_fec\.initial_decoding_window: "),
    ],
)
def test_parameters_check_their_fields(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(FecTransportParameterError, match=message):
        FecParameters(**kwargs)  # type: ignore[arg-type]


def test_negotiation_takes_the_smaller_value_each_way() -> None:
    local = FecParameters(symbol_size=1200, max_coding_window=64, initial_decoding_window=512)
    peer = FecParameters(symbol_size=1000, max_coding_window=1024, initial_decoding_window=32)
    assert negotiate(local, peer) == NegotiatedFec(1000, send_window=32, receive_window=512)
    assert negotiate(peer, local) == NegotiatedFec(1000, send_window=512, receive_window=32)
    assert negotiate(local, None) is None


@given(
    st.builds(FecParameters, st.integers(3, 65535), st.integers(1, 4095), st.integers(0, 4095)),
    st.builds(FecParameters, st.integers(3, 65535), st.integers(1, 4095), st.integers(0, 4095)),
)
@fuzz
def test_a_peer_never_raises_what_we_offered(local: FecParameters, peer: FecParameters) -> None:
    agreed = negotiate(local, peer)
    assert agreed is not None
    assert agreed.symbol_size <= local.symbol_size
    assert agreed.send_window <= local.max_coding_window
    assert agreed.receive_window <= local.initial_decoding_window
    mirrored = negotiate(peer, local)
    assert mirrored == NegotiatedFec(agreed.symbol_size, agreed.receive_window, agreed.send_window)


@given(st.binary(max_size=40))
@fuzz
def test_arbitrary_values_decode_or_raise_parameter_errors(value: bytes) -> None:
    try:
        params = decode_fec_parameters(value)
    except FecTransportParameterError:
        return
    if params is not None:
        assert decode_fec_parameters(params.encode()) == params
