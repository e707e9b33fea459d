"""QUIC-LB connection IDs: the draft's test vectors, and round trips for every length."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsched_client.proto.quic_lb import QuicLbConfig, QuicLbScheme, server_id_of

# draft-ietf-quic-load-balancers (editor's copy after -21), "Load Balancer Test Vectors".
VECTOR_KEY = bytes.fromhex("8f95f09245765f80256934e50c66207f")
ENCRYPTED_VECTORS = [
    # (cr_bits, server ID, nonce, CID); in all of them the CID encodes its length.
    (0, "ed793a", "ee080dbf", "0720b1d07b359d3c"),  # four passes, odd length
    (1, "ed793a51d49b8f5fab65", "ee080dbf48", "2fcc381bc74cb4fbad2823a3d1f8fed2"),  # 4th pass
    (2, "ed793a51d49b8f5f", "ee080dbf48c0d1e5", "504dd2d05a7b0de9b2b9907afb5ecf8cc3"),  # 1 pass
    # The draft prints this one's first octet as 0x12 (rotation 0): with its cr_bits 3
    # and 18 bytes after it, the octet is 0x72; the 18 encrypted bytes are the draft's.
    (3, "ed793a51d49b8f5fab", "ee080dbf48c0d1e55d", "725779c9cc86beb3a3a4a3ca96fce4bfe0cdbc"),
]


def scheme_for(sid: bytes, nonce: bytes, rotation: int, key: bytes | None) -> QuicLbScheme:
    return QuicLbScheme(len(sid), len(nonce), rotation, key)


@pytest.mark.parametrize(("rotation", "sid", "nonce", "cid"), ENCRYPTED_VECTORS)
def test_draft_encrypted_vectors(rotation: int, sid: str, nonce: str, cid: str) -> None:
    server_id, nonce_bytes, expected = bytes.fromhex(sid), bytes.fromhex(nonce), bytes.fromhex(cid)
    scheme = scheme_for(server_id, nonce_bytes, rotation, VECTOR_KEY)
    assert scheme.encode(server_id, nonce_bytes) == expected
    assert scheme.decode(expected) == (server_id, nonce_bytes)
    assert scheme.server_id(expected) == server_id


def test_draft_four_pass_worked_example() -> None:
    """The draft's step-by-step example (odd length: the middle octet is split)."""
    key = bytes.fromhex("fdf726a9893ec05c0632d3956680baf0")
    scheme = QuicLbScheme(server_id_length=3, nonce_length=4, key=key)
    cid = scheme.encode(bytes.fromhex("31441a"), bytes.fromhex("9c69c275"))
    assert cid == bytes.fromhex("0767947d29be054a")


def test_draft_plaintext_vector() -> None:
    scheme = QuicLbScheme(server_id_length=3, nonce_length=4)
    cid = scheme.encode(bytes.fromhex("c4605e"), bytes.fromhex("4504cc4f"))
    assert cid == bytes.fromhex("07c4605e4504cc4f")
    assert scheme.server_id(cid) == server_id_of(cid, 3) == bytes.fromhex("c4605e")


def test_another_rotation_or_length_or_unroutable_is_not_decoded() -> None:
    scheme = QuicLbScheme(server_id_length=2, nonce_length=6, config_rotation=1, key=VECTOR_KEY)
    cid = scheme.encode(b"\x00\x07", bytes(6))
    assert scheme.decode(cid) == (b"\x00\x07", bytes(6))
    assert scheme.server_id(bytes([0b111_00000 | cid[0] & 0x1F]) + cid[1:]) is None
    assert scheme.server_id(bytes([0b010_00000 | cid[0] & 0x1F]) + cid[1:]) is None
    assert scheme.server_id(cid[:-1]) is None  # too short for this scheme


def test_a_wrong_key_recovers_another_server_id() -> None:
    right = QuicLbScheme(server_id_length=2, nonce_length=6, key=VECTOR_KEY)
    wrong = QuicLbScheme(server_id_length=2, nonce_length=6, key=bytes(16))
    cids = [right.encode(b"\x00\x01", i.to_bytes(6, "big")) for i in range(8)]
    assert {right.server_id(c) for c in cids} == {b"\x00\x01"}
    assert len({wrong.server_id(c) for c in cids}) > 1


def test_encrypted_cids_of_one_server_share_no_clear_bytes() -> None:
    """The server ID is not visible: 200 CIDs of one server differ in every
    encrypted byte position (a clear server ID would repeat there)."""
    config = QuicLbConfig(server_id=b"\x00\x05", cid_length=9, key=VECTOR_KEY)
    cids = [config.generate() for _ in range(200)]
    for position in range(1, 9):
        assert len({cid[position] for cid in cids}) > 100
    assert {config.scheme.server_id(cid) for cid in cids} == {b"\x00\x05"}
    assert {cid[0] for cid in cids} == {config.first_octet()} == {8}


def test_config_limits() -> None:
    with pytest.raises(ValueError, match="nonce"):
        QuicLbConfig(server_id=b"\x01" * 4, cid_length=8)  # 3 bytes left for the nonce
    with pytest.raises(ValueError, match="at most 19"):
        QuicLbScheme(server_id_length=10, nonce_length=10)
    with pytest.raises(ValueError, match="key"):
        QuicLbScheme(server_id_length=1, nonce_length=4, key=bytes(15))
    with pytest.raises(ValueError, match="config_rotation"):
        QuicLbScheme(server_id_length=1, nonce_length=4, config_rotation=7)


@st.composite
def scheme_and_plaintext(draw: st.DrawFn) -> tuple[QuicLbScheme, bytes, bytes]:
    sid_length = draw(st.integers(1, 15))
    nonce_length = draw(st.integers(4, 19 - sid_length))
    key = draw(st.one_of(st.none(), st.binary(min_size=16, max_size=16)))
    rotation = draw(st.integers(0, 6))
    scheme = QuicLbScheme(sid_length, nonce_length, rotation, key)
    sid = draw(st.binary(min_size=sid_length, max_size=sid_length))
    nonce = draw(st.binary(min_size=nonce_length, max_size=nonce_length))
    return scheme, sid, nonce


@given(scheme_and_plaintext())
def test_round_trip_every_length(case: tuple[QuicLbScheme, bytes, bytes]) -> None:
    scheme, sid, nonce = case
    cid = scheme.encode(sid, nonce)
    assert len(cid) == scheme.cid_length and cid[0] == scheme.first_octet()
    assert scheme.decode(cid) == (sid, nonce)
    assert scheme.server_id(cid) == sid  # three passes or four: the same server ID
    assert scheme.server_id(cid + b"\xaa") == sid  # bytes a server appends are not read


@given(scheme_and_plaintext(), st.integers(0, 18), st.integers(1, 255))
def test_a_changed_byte_changes_the_plaintext(
    case: tuple[QuicLbScheme, bytes, bytes], position: int, flip: int
) -> None:
    """Encryption is a permutation: another ciphertext never decodes to the same pair."""
    scheme, sid, nonce = case
    cid = bytearray(scheme.encode(sid, nonce))
    position = 1 + position % scheme.plaintext_length
    cid[position] ^= flip
    assert scheme.decode(bytes(cid)) != (sid, nonce)
