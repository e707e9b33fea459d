"""The core's packet layer (#16 stage 1): packet numbers, headers, batch parsing, ACK ranges/frames.

Every test runs on both backends (the Cython module and its pure-Python
reference); the property tests also check that both give the same answer.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from types import ModuleType

import pytest
from core_backends import backends, compiled_check
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_client.core import _packet_py, packet
from netsched_client.core.errors import PacketError

BACKENDS = list(packet.BACKENDS.values())


m = backends(packet)


test_the_compiled_backend_is_built_here = compiled_check(packet)


# -- varints and packet numbers ----------------------------------------------------------------


def test_varint_examples_of_rfc_9000_a1(m: ModuleType) -> None:
    examples = {
        "c2197c5eff14e88c": 151288809941952652,
        "9d7f3e7d": 494878333,
        "7bbd": 15293,
        "25": 37,
        "4025": 37,
    }
    for encoded, value in examples.items():
        assert m.decode_varint(bytes.fromhex(encoded)) == (value, len(encoded) // 2)
    assert m.encode_varint(151288809941952652).hex() == "c2197c5eff14e88c"
    assert m.encode_varint(37) == b"\x25"
    with pytest.raises(PacketError):
        m.encode_varint(1 << 62)
    with pytest.raises(PacketError):
        m.decode_varint(bytes.fromhex("9d7f3e"))


def test_packet_number_encoding_of_rfc_9000_a2(m: ModuleType) -> None:
    assert m.encode_packet_number(0xAC5C02, 0xABE8B3) == (0x5C02, 2)
    assert m.encode_packet_number(0xACE8FE, 0xABE8B3) == (0xACE8FE, 3)
    assert m.encode_packet_number(0, -1) == (0, 1)
    assert m.encode_packet_number(127, -1) == (127, 1)  # 128 unacknowledged: one byte
    assert m.encode_packet_number(128, -1) == (128, 2)
    with pytest.raises(PacketError):
        m.encode_packet_number(5, 5)
    with pytest.raises(PacketError):
        m.encode_packet_number(1 << 32, -1)


def test_packet_number_decoding_of_rfc_9000_a3(m: ModuleType) -> None:
    assert m.decode_packet_number(0x9B32, 2, 0xA82F30EA) == 0xA82F9B32
    assert m.decode_packet_number(0, 1, -1) == 0
    assert m.decode_packet_number(0xFF, 1, 0x100) == 0xFF  # just below the window
    assert m.decode_packet_number(0x01, 1, 0x1FF) == 0x201  # wrapped forward
    with pytest.raises(PacketError):
        m.decode_packet_number(256, 1, 0)


@given(
    pn=st.integers(0, (1 << 62) - 1),
    behind=st.integers(1, 1 << 31),
    received=st.integers(0, 1 << 20),
)
def test_packet_numbers_round_trip(pn: int, behind: int, received: int) -> None:
    """Sent after `largest_acked`, decoded by a receiver that saw anything in between."""
    largest_acked = pn - behind
    if largest_acked < -1:
        largest_acked = -1
    largest_seen = min(pn - 1, max(largest_acked, pn - 1 - received))
    for module in BACKENDS:
        truncated, length = module.encode_packet_number(pn, largest_acked)
        assert module.decode_packet_number(truncated, length, largest_seen) == pn


# -- headers -----------------------------------------------------------------------------------

DCID = bytes.fromhex("8394c8f03e515708")
SCID = bytes.fromhex("f067a5502a4262b5")


def _get(record: tuple[int, ...], data: bytes, field: int, length_field: int) -> bytes:
    return data[record[field] : record[field] + record[length_field]]


@pytest.mark.parametrize("version", [_packet_py.VERSION_1, _packet_py.VERSION_2])
@pytest.mark.parametrize(
    "kind", [_packet_py.KIND_INITIAL, _packet_py.KIND_ZERO_RTT, _packet_py.KIND_HANDSHAKE]
)
def test_long_headers_round_trip(m: ModuleType, version: int, kind: int) -> None:
    token = b"tok" if kind == m.KIND_INITIAL else b""
    header = m.build_long_header(kind, version, DCID, SCID, token, 40, 0x1234, 2)
    data = header + bytes(40)
    record = m.parse_packet(data, 0, 8)
    assert len(record) == m.RECORD_FIELDS
    assert record[m.F_KIND] == kind
    assert record[m.F_VERSION] == version
    assert record[m.F_LENGTH] == len(data)
    assert _get(record, data, m.F_DCID_OFFSET, m.F_DCID_LENGTH) == DCID
    assert _get(record, data, m.F_SCID_OFFSET, m.F_SCID_LENGTH) == SCID
    assert _get(record, data, m.F_TOKEN_OFFSET, m.F_TOKEN_LENGTH) == token
    assert record[m.F_PN_OFFSET] == len(header) - 2
    assert data[record[m.F_PN_OFFSET] : record[m.F_PN_OFFSET] + 2] == b"\x12\x34"


def test_v1_and_v2_use_different_type_bits(m: ModuleType) -> None:
    v1 = m.build_long_header(m.KIND_INITIAL, m.VERSION_1, DCID, b"", b"", 20, 0, 1)
    v2 = m.build_long_header(m.KIND_INITIAL, m.VERSION_2, DCID, b"", b"", 20, 0, 1)
    assert v1[0] >> 4 & 3 == 0  # RFC 9000 §17.2.2
    assert v2[0] >> 4 & 3 == 1  # RFC 9369 §3.2
    hs2 = m.build_long_header(m.KIND_HANDSHAKE, m.VERSION_2, DCID, b"", b"", 20, 0, 1)
    assert hs2[0] >> 4 & 3 == 3
    with pytest.raises(PacketError):
        m.build_long_header(m.KIND_RETRY, m.VERSION_1, DCID, b"", b"", 20, 0, 1)
    with pytest.raises(PacketError):
        m.build_long_header(m.KIND_HANDSHAKE, m.VERSION_1, DCID, b"", b"x", 20, 0, 1)
    with pytest.raises(PacketError):
        m.build_long_header(m.KIND_INITIAL, 0x12345678, DCID, b"", b"", 20, 0, 1)


def test_short_header_round_trip_with_a_fixed_cid_length(m: ModuleType) -> None:
    header = m.build_short_header(DCID, 0xBEEF, 2, key_phase=True, spin=True)
    assert header[0] == 0x40 | 0x20 | 0x04 | 0x01
    data = header + bytes(30)
    record = m.parse_packet(data, 0, len(DCID))
    assert record[m.F_KIND] == m.KIND_ONE_RTT
    assert record[m.F_LENGTH] == len(data)
    assert _get(record, data, m.F_DCID_OFFSET, m.F_DCID_LENGTH) == DCID
    assert record[m.F_PN_OFFSET] == 1 + len(DCID)
    # A zero-length CID (a client that uses none) is legal too.
    assert m.parse_packet(b"\x40\x01\x02", 0, 0)[m.F_PN_OFFSET] == 1


def test_retry_and_version_negotiation(m: ModuleType) -> None:
    tag = bytes(range(16))
    retry = bytes((0xF0,)) + (1).to_bytes(4, "big") + b"\x00\x08" + SCID + b"token" + tag
    record = m.parse_packet(retry, 0, 8)
    assert record[m.F_KIND] == m.KIND_RETRY
    assert _get(record, retry, m.F_TOKEN_OFFSET, m.F_TOKEN_LENGTH) == b"token"
    assert retry[record[m.F_PN_OFFSET] :] == tag
    vn = b"\x80" + bytes(4) + b"\x08" + DCID + b"\x08" + SCID + b"\x00\x00\x00\x01\x6b\x33\x43\xcf"
    record = m.parse_packet(vn, 0, 8)
    assert record[m.F_KIND] == m.KIND_VERSION_NEGOTIATION
    assert vn[record[m.F_PN_OFFSET] :] == b"\x00\x00\x00\x01\x6b\x33\x43\xcf"
    unknown = b"\xc0\x1a\x2a\x3a\x4a" + b"\x08" + DCID + b"\x00" + bytes(1200)
    record = m.parse_packet(unknown, 0, 8)
    assert record[m.F_KIND] == m.KIND_UNSUPPORTED_VERSION
    assert record[m.F_VERSION] == 0x1A2A3A4A


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" + bytes(20),  # short header, fixed bit 0
        b"\x40" + bytes(8),  # short header without a packet number
        b"\xc0\x00\x00\x00",  # long header cut in the version
        b"\xc0\x00\x00\x00\x01\x15" + bytes(40),  # v1 with a 21-byte DCID
        b"\x80\x00\x00\x00\x01\x00\x00\x00\x01",  # v1 Initial, fixed bit 0
        b"\xc0\x00\x00\x00\x01\x00\x00\x05ab",  # token beyond the end
        b"\xe0\x00\x00\x00\x01\x00\x00\x44\x00\x00",  # Handshake, length beyond the end
        b"\xe0\x00\x00\x00\x01\x00\x00\x00",  # Handshake of length 0
        b"\xf0\x00\x00\x00\x01\x00\x00" + bytes(10),  # Retry without its tag
        b"\x80\x00\x00\x00\x00\x00\x00\x01\x02",  # VN, version list not a multiple of 4
    ],
)
def test_malformed_headers_raise_packet_error(m: ModuleType, data: bytes) -> None:
    with pytest.raises(PacketError):
        m.parse_packet(data, 0, 8)


def _initial(m: ModuleType, pn: int, size: int) -> bytes:
    header: bytes = m.build_long_header(m.KIND_INITIAL, m.VERSION_1, DCID, SCID, b"", size, pn, 1)
    return header + bytes(size)


def test_coalesced_packets_and_batches(m: ModuleType) -> None:
    initial = _initial(m, 1, 30)
    handshake = m.build_long_header(m.KIND_HANDSHAKE, m.VERSION_1, DCID, SCID, b"", 25, 2, 1)
    handshake += bytes(25)
    short = m.build_short_header(DCID, 3, 1) + bytes(40)
    datagram = initial + handshake + short
    records = m.parse_datagrams([datagram, short, b"\x00junk"], 8)
    n = m.RECORD_FIELDS
    assert len(records) == 5 * n
    rows = [tuple(records[i : i + n]) for i in range(0, len(records), n)]
    assert [r[m.F_DATAGRAM] for r in rows] == [0, 0, 0, 1, 2]
    assert [r[m.F_KIND] for r in rows] == [
        m.KIND_INITIAL,
        m.KIND_HANDSHAKE,
        m.KIND_ONE_RTT,
        m.KIND_ONE_RTT,
        m.KIND_INVALID,
    ]
    assert [r[m.F_OFFSET] for r in rows[:3]] == [0, len(initial), len(initial) + len(handshake)]
    assert [r[m.F_LENGTH] for r in rows] == [
        len(initial),
        len(handshake),
        len(short),
        len(short),
        5,
    ]
    # The same datagrams in one GRO buffer: offsets into the buffer.
    segment = len(datagram)
    gro = datagram + short.ljust(segment, b"\x00") + datagram[:10]  # the last one shorter
    records = m.parse_buffer(gro, segment, 8)
    rows = [tuple(records[i : i + n]) for i in range(0, len(records), n)]
    assert [r[m.F_DATAGRAM] for r in rows] == [0, 0, 0, 1, 2]
    assert rows[3][m.F_OFFSET] == segment and rows[3][m.F_LENGTH] == segment
    assert rows[4][m.F_OFFSET] == 2 * segment and rows[4][m.F_KIND] == m.KIND_INVALID
    with pytest.raises(PacketError):
        m.parse_buffer(gro, 0, 8)


def test_a_bad_packet_after_a_good_one_invalidates_the_rest_of_its_datagram(m: ModuleType) -> None:
    good = _initial(m, 0, 30)
    records = m.parse_datagrams([good + b"\xc0\x00"], 8)
    n = m.RECORD_FIELDS
    assert records[m.F_KIND] == m.KIND_INITIAL
    assert records[n + m.F_KIND] == m.KIND_INVALID
    assert records[n + m.F_OFFSET] == len(good) and records[n + m.F_LENGTH] == 2


# -- property tests: never a crash, both backends agree ------------------------------------------


def _outcome(fn: object, *args: object) -> object:
    try:
        result = fn(*args)  # type: ignore[operator]
    except PacketError as exc:
        return ("error", type(exc))
    if hasattr(result, "tolist"):
        return result.tolist()
    return result


headers = st.one_of(
    st.binary(max_size=80),
    st.sampled_from(
        [b"\xc0\x00\x00\x00\x01", b"\xd0\x6b\x33\x43\xcf", b"\x40", b"\x80" + bytes(4)]
    ).flatmap(lambda prefix: st.binary(max_size=60).map(lambda tail: prefix + tail)),
)


@settings(max_examples=400)
@given(data=headers, cid_length=st.integers(0, 20))
def test_parsers_agree_and_only_raise_packet_error(data: bytes, cid_length: int) -> None:
    outcomes = [_outcome(m.parse_packet, data, 0, cid_length) for m in BACKENDS]
    assert all(o == outcomes[0] for o in outcomes)
    batches = [_outcome(m.parse_datagrams, [data, data[1:]], cid_length) for m in BACKENDS]
    assert all(b == batches[0] for b in batches)
    assert isinstance(batches[0], list)
    assert len(batches[0]) >= (
        packet.RECORD_FIELDS if data else 0
    )  # a record per datagram at least
    gro = [_outcome(m.parse_buffer, data * 3, max(1, len(data)), cid_length) for m in BACKENDS]
    assert all(g == gro[0] for g in gro)


@settings(max_examples=400)
@given(data=st.binary(max_size=60), offset=st.integers(0, 4))
def test_ack_decoders_agree_and_only_raise_packet_error(data: bytes, offset: int) -> None:
    def decoded(m: ModuleType) -> object:
        result = _outcome(m.decode_ack, data, offset, 8)
        if isinstance(result, tuple) and result[0] != "error":
            (kind, path_id, ranges, delay, ecn), end = result
            return kind, path_id, list(ranges), delay, ecn, end
        return result

    outcomes = [decoded(m) for m in BACKENDS]
    assert all(o == outcomes[0] for o in outcomes)


# -- ACK ranges --------------------------------------------------------------------------------


def test_range_set_merges_and_splits(m: ModuleType) -> None:
    r = m.RangeSet()
    for pn in (5, 1, 2, 3, 9, 7, 8):
        r.add_packet(pn)
    assert list(r) == [(1, 4), (5, 6), (7, 10)]
    r.add(4, 5)
    assert list(r) == [(1, 6), (7, 10)]
    assert 6 not in r and 7 in r and 0 not in r and 9 in r and 10 not in r
    assert (r.smallest(), r.largest(), len(r)) == (1, 9, 2)
    r.subtract(3, 8)
    assert list(r) == [(1, 3), (8, 10)]
    r.subtract(9, 9)
    r.subtract(8, 9)
    assert list(r) == [(1, 3), (9, 10)]
    r.remove_below(2)
    assert list(r) == [(2, 3), (9, 10)]
    r.add(0, 20)
    assert list(r) == [(0, 20)]
    with pytest.raises(PacketError):
        r.add(5, 5)
    empty = m.RangeSet()
    assert not empty
    with pytest.raises(PacketError):
        empty.largest()


def test_range_set_keeps_the_highest_ranges(m: ModuleType) -> None:
    r = m.RangeSet(max_ranges=3)
    for pn in range(0, 20, 2):
        r.add_packet(pn)
    assert list(r) == [(14, 15), (16, 17), (18, 19)]
    r.subtract(15, 17)  # a split that stays within the limit
    assert list(r) == [(14, 15), (18, 19)]


@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 200), st.integers(1, 20)), max_size=60))
def test_range_set_matches_a_plain_set(ops: list[tuple[bool, int, int]]) -> None:
    for module in BACKENDS:
        r = module.RangeSet(max_ranges=1000)
        model: set[int] = set()
        for is_add, start, size in ops:
            if is_add:
                r.add(start, start + size)
                model |= set(range(start, start + size))
            else:
                r.subtract(start, start + size)
                model -= set(range(start, start + size))
        assert {pn for lo, hi in r for pn in range(lo, hi)} == model
        bounds = list(r)
        assert all(a[1] < b[0] for a, b in itertools.pairwise(bounds))  # disjoint, gapped
        assert all(pn in r for pn in model)


# -- ACK and PATH_ACK frames -------------------------------------------------------------------


def test_ack_frame_bytes(m: ModuleType) -> None:
    r = m.RangeSet([(1, 4), (7, 9), (20, 21)])
    # type 2, largest 20, delay 5, 2 more ranges, first 0; gap 10 len 1; gap 2 len 2
    assert m.encode_ack(r, 5).hex() == "02140502000a010202"
    frame = m.encode_ack(r, 5, (1, 2, 3), path_id=7)
    assert frame.hex() == "3f07140502000a010202010203"
    (kind, path_id, ranges, delay, ecn), end = m.decode_ack(frame)
    assert (kind, path_id, list(ranges), delay, ecn, end) == (
        m.PATH_ACK_ECN_FRAME,
        7,
        list(r),
        5,
        (1, 2, 3),
        len(frame),
    )
    assert m.encode_ack(r, 0, max_ranges=1).hex() == "0214000000"
    with pytest.raises(PacketError):
        m.encode_ack(m.RangeSet(), 0)
    with pytest.raises(PacketError):
        m.decode_ack(bytes.fromhex("0205000106"))  # first range below zero
    with pytest.raises(PacketError):
        m.decode_ack(bytes.fromhex("02050001010004"))  # second range below zero
    with pytest.raises(PacketError):
        m.decode_ack(bytes.fromhex("04050000"))  # not an ACK


@given(
    bounds=st.lists(st.integers(0, 1 << 40), min_size=2, max_size=40, unique=True),
    delay=st.integers(0, 1 << 30),
    path_id=st.integers(-1, (1 << 32) - 1),
    ecn=st.none() | st.tuples(*[st.integers(0, 1 << 40)] * 3),
)
def test_ack_frames_round_trip(
    bounds: list[int], delay: int, path_id: int, ecn: tuple[int, int, int] | None
) -> None:
    points = sorted(bounds)
    pairs = [(points[i], points[i + 1]) for i in range(0, len(points) - 1, 2)]
    frames = []
    for module in BACKENDS:
        r = module.RangeSet(pairs)
        frame = module.encode_ack(r, delay, ecn, path_id)
        (kind, pid, ranges, d, e), end = module.decode_ack(b"xx" + frame, 2)
        assert (list(ranges), d, e, pid, end) == (list(r), delay, ecn, path_id, len(frame) + 2)
        assert kind == (0x3E if path_id >= 0 else 0x02) | (1 if ecn else 0)
        frames.append(frame)
    assert all(f == frames[0] for f in frames)


def test_aioquic_reads_our_ack_frames(m: ModuleType) -> None:
    from aioquic.buffer import Buffer
    from aioquic.quic.packet import pull_ack_frame

    r = m.RangeSet([(0, 3), (10, 12), (1000, 1500)])
    frame = m.encode_ack(r, 77)
    buf = Buffer(data=frame[1:])
    ranges, delay = pull_ack_frame(buf)
    assert [(x.start, x.stop) for x in ranges] == list(r)
    assert delay == 77 and buf.eof()


def test_the_pure_python_build_is_importable_and_used_without_extensions() -> None:
    code = (
        "from netsched_client.core import packet, protection, keys\n"
        "assert not packet.COMPILED and not protection.COMPILED\n"
        "assert list(packet.BACKENDS) == ['python'] == list(protection.BACKENDS)\n"
        "k = keys.packet_keys(1, 0x1301, bytes(32))\n"
        "p = protection.protection(k)\n"
        "h = packet.build_short_header(b'12345678', 7, 1)\n"
        "sealed = p.seal(h, bytes(30), 7)\n"
        "record = packet.parse_packet(sealed, 0, 8)\n"
        "print(p.open(sealed, record[packet.F_PN_OFFSET], 6)[1])\n"
    )
    env = {**os.environ, "NETSCHED_NO_EXTENSIONS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "7"
    assert "NativeFallbackWarning" in run.stderr  # said once, not silent


# -- routing by destination CID ----------------------------------------------------------------


def test_cid_map_routes_a_batch_by_dcid(m: ModuleType) -> None:
    cids = m.CidMap(8)
    path0, path1 = bytes(range(8)), bytes(range(8, 16))
    cids.add(path0, 0)
    cids.add(path1, 1)
    short0 = m.build_short_header(path0, 1, 1) + bytes(30)
    short1 = m.build_short_header(path1, 2, 1) + bytes(30)
    unknown = m.build_short_header(bytes(8), 3, 1) + bytes(30)
    handshake = m.build_long_header(m.KIND_HANDSHAKE, m.VERSION_1, path1, b"", b"", 20, 0, 1)
    other_length = m.build_long_header(m.KIND_HANDSHAKE, m.VERSION_1, b"abc", b"", b"", 20, 0, 1)
    datagrams = [short0, short1, unknown, handshake + bytes(20), other_length + bytes(20), b"\x00"]
    buffer = b"".join(d.ljust(60, b"\x00") for d in datagrams)  # long headers + padding: invalid
    records = m.parse_buffer(buffer, 60, 8)
    kinds = records[m.F_KIND :: m.RECORD_FIELDS]
    routes = list(cids.route(buffer, records))
    assert len(routes) == len(kinds) == 8
    assert [r for r, k in zip(routes, kinds, strict=True) if k != m.KIND_INVALID] == [
        0,
        1,
        -1,
        1,
        -1,
    ]
    assert all(r == -1 for r, k in zip(routes, kinds, strict=True) if k == m.KIND_INVALID)
    cids.remove(path1)
    cids.remove(path1)  # unknown: no-op
    assert (len(cids), cids.get(path1), cids.get(path0), cids.cid_length) == (1, -1, 0, 8)
    with pytest.raises(PacketError):
        cids.add(b"short", 3)
    with pytest.raises(PacketError):
        cids.add(path0, -2)


@given(
    ops=st.lists(
        st.tuples(st.booleans(), st.binary(min_size=4, max_size=4), st.integers(0, 1 << 40)),
        max_size=300,
    )
)
def test_cid_map_matches_a_dict(ops: list[tuple[bool, bytes, int]]) -> None:
    for module in BACKENDS:
        cids = module.CidMap(4)
        model: dict[bytes, int] = {}
        for is_add, cid, value in ops:
            if is_add:
                cids.add(cid, value)
                model[cid] = value
            else:
                cids.remove(cid)
                model.pop(cid, None)
        assert len(cids) == len(model)
        for _, cid, _ in ops:
            assert cids.get(cid) == model.get(cid, -1)


def test_a_coalesced_packet_with_another_dcid_is_dropped(m: ModuleType) -> None:
    first = _initial(m, 0, 30)
    other = m.build_long_header(m.KIND_HANDSHAKE, m.VERSION_1, bytes(8), SCID, b"", 25, 1, 1)
    other += bytes(25)
    records = m.parse_datagrams([first + other], 8)
    n = m.RECORD_FIELDS
    assert len(records) == 2 * n
    assert records[m.F_KIND] == m.KIND_INITIAL
    assert records[n + m.F_KIND] == m.KIND_INVALID
    assert records[n + m.F_OFFSET] == len(first)
