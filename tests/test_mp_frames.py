"""Multipath frame codecs and the per-path nonce (draft-ietf-quic-multipath-21)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.rangeset import RangeSet
from hypothesis import given
from hypothesis import strategies as st

from netsched_client.proto.multipath import frames as f
from netsched_client.proto.multipath.crypto import PathCrypto, path_nonce

U32 = st.integers(0, 2**32 - 1)
U62 = st.integers(0, 2**62 - 1)


def test_draft_nonce_vector() -> None:
    # draft-ietf-quic-multipath-21 §2.4, "Example Nonce Calculation".
    iv = bytes.fromhex("6b26114b9cba2b63a9e8dd4f")
    assert path_nonce(iv, 3, 54321).hex() == "6b2611489cba2b63a9e8097e"


def test_path_crypto_uses_the_draft_nonce() -> None:
    client, server = CryptoPair(), CryptoPair()
    client.setup_initial(cid=b"\x01" * 8, is_client=True, version=1)
    server.setup_initial(cid=b"\x01" * 8, is_client=False, version=1)
    header = bytes([0x41]) + b"\x11" * 8 + b"\x00\x01"  # short header, 2-byte PN
    sealed = PathCrypto(client, 3).encrypt_packet(header, b"x" * 40, 1)
    # Path 3's packet does not open as path 0's or path 2's: the nonce differs.
    for wrong in (server, PathCrypto(server, 2)):
        with pytest.raises(ValueError):
            wrong.decrypt_packet(sealed, len(header) - 2, 0)
    _, payload, pn = PathCrypto(server, 3).decrypt_packet(sealed, len(header) - 2, 0)
    assert (payload, pn) == (b"x" * 40, 1)
    # Path 0 is plain QUIC (RFC 9001): identical bytes to aioquic's own pair.
    plain = b"y" * 40
    assert PathCrypto(client, 0).encrypt_packet(header, plain, 7) == client.encrypt_packet(
        header, plain, 7
    )


VECTORS = [
    (f.PathAbandon(3, f.PATH_UNSTABLE_OR_POOR), "7e75037e76"),
    (f.PathStatus(1, 5, available=False), "7e760105"),
    (f.PathStatus(1, 6, available=True), "7e770106"),
    (f.PathRetireConnectionId(2, 0), "7e790200"),
    (f.MaxPathId(4), "7e7a04"),
    (f.PathsBlocked(4), "7e7b04"),
    (f.PathCidsBlocked(2, 1), "7e7c0201"),
    (
        f.PathNewConnectionId(1, 0, 0, b"\xaa" * 8, b"\xbb" * 16),
        "7e7801000008" + "aa" * 8 + "bb" * 16,
    ),
]


@pytest.mark.parametrize(("frame", "hex_"), VECTORS)
def test_vectors(frame: f.MultipathFrame, hex_: str) -> None:
    assert frame.encode().hex() == hex_
    assert f.parse_frame(bytes.fromhex(hex_)) == frame


def test_path_ack_round_trip_and_ecn() -> None:
    ranges = RangeSet([range(0, 3), range(5, 9)])
    frame = f.PathAck(7, ranges, 12)
    assert frame.encode()[:2] == b"\x3e\x07"
    assert f.parse_frame(frame.encode()) == frame
    ecn = f.PathAck(7, ranges, 12, ecn=(1, 2, 3))
    assert ecn.encode()[0] == 0x3F and f.parse_frame(ecn.encode()) == ecn


@pytest.mark.parametrize(
    "bad",
    [
        "7e75",  # truncated
        "7e7a" + "c0000001" + "00000000",  # path ID above 2^32-1
        "7e780100000015" + "aa" * 21 + "bb" * 16,  # CID longer than 20
        "7e780101020008" + "aa" * 8 + "bb" * 16,  # retire_prior_to > sequence
        "7e7a0400",  # trailing byte
        "3e01050a",  # PATH_ACK with a negative range
    ],
)
def test_malformed_frames(bad: str) -> None:
    with pytest.raises(f.FrameEncodingError):
        f.parse_frame(bytes.fromhex(bad))


@given(st.sampled_from(sorted(f.FRAME_CLASSES)), st.binary(max_size=64))
def test_arbitrary_bytes_only_raise_frame_errors(frame_type: int, body: bytes) -> None:
    with contextlib.suppress(f.FrameEncodingError):
        f.decode_frame(frame_type, Buffer(data=body))


@given(U32, U62, U62, st.binary(min_size=1, max_size=20), st.binary(min_size=16, max_size=16))
def test_new_connection_id_round_trip(
    path_id: int, a: int, b: int, cid: bytes, token: bytes
) -> None:
    frame = f.PathNewConnectionId(path_id, max(a, b), min(a, b), cid, token)
    assert f.parse_frame(frame.encode()) == frame


def _pair() -> tuple[CryptoPair, CryptoPair]:
    client, server = CryptoPair(), CryptoPair()
    client.setup_initial(cid=b"\x02" * 8, is_client=True, version=1)
    server.setup_initial(cid=b"\x02" * 8, is_client=False, version=1)
    return client, server


def test_previous_keys_open_packets_delayed_across_a_key_update() -> None:
    client, server = _pair()
    sender = PathCrypto(client, 1)
    receiver = PathCrypto(server, 1)
    header = bytes([0x41]) + b"\x11" * 8 + b"\x00\x01"
    late = sender.encrypt_packet(header, b"L" * 40, 1)  # sent before the update, delayed
    sender.update_key()
    new_header = bytes([0x41 | 0x04]) + header[1:-1] + b"\x02"  # key phase 1
    fresh = sender.encrypt_packet(new_header, b"F" * 40, 2)
    assert receiver.decrypt_packet(fresh, len(header) - 2, 0)[1] == b"F" * 40  # update applied
    assert receiver.decrypt_packet(late, len(header) - 2, 0)[1] == b"L" * 40  # old keys kept
    receiver.history.expire(now=10.0, hold=0.3)
    receiver.history.expire(now=10.5, hold=0.3)  # 3 x PTO later: old keys gone
    assert receiver.history.previous is None
    with pytest.raises(ValueError):
        receiver.decrypt_packet(late, len(header) - 2, 0)


def test_protocol_doc_examples_match_the_codec() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "PROTOCOL.md").read_text()
    section = doc[doc.index("## 8. Multipath") :]
    examples = {
        "PATH_ABANDON(path 3, PATH_UNSTABLE_OR_POOR)": f.PathAbandon(3, f.PATH_UNSTABLE_OR_POOR),
        "PATH_STATUS_BACKUP(path 1, seq 5)": f.PathStatus(1, 5, available=False),
        "MAX_PATH_ID(4)": f.MaxPathId(4),
        "PATH_RETIRE_CONNECTION_ID(path 2, seq 0)": f.PathRetireConnectionId(2, 0),
    }
    for line in section.splitlines():
        for name, frame in examples.items():
            if line.startswith(name):
                assert line[len(name) :].replace(" ", "") == frame.encode().hex(), line
    lines = section.splitlines()
    found = [name for name in examples if any(line.startswith(name) for line in lines)]
    assert found == list(examples)
