"""The core's packet protection (#16 stage 1): RFC 9001/9369 vectors, aioquic interop, fuzzing.

Every test runs on both backends (OpenSSL from Cython, and the reference over
`cryptography`), and the property tests check that both agree byte for byte.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from aioquic.quic.crypto import CryptoContext
from aioquic.tls import CipherSuite
from core_backends import backends, compiled_check
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_client.core import packet, protection
from netsched_client.core.errors import CryptoError, PacketError
from netsched_client.core.keys import (
    PacketKeys,
    initial_keys,
    initial_secrets,
    next_secret,
    packet_keys,
)

BACKENDS = list(protection.BACKENDS.values())
V1, V2 = packet.VERSION_1, packet.VERSION_2
DCID = bytes.fromhex("8394c8f03e515708")


m = backends(protection)


def _protect(m: ModuleType, keys: PacketKeys) -> Any:
    return m.PacketProtection(keys.cipher, keys.key, keys.iv, keys.hp_key)


test_the_compiled_backend_is_built_here = compiled_check(protection)


# -- RFC 9001 Appendix A (v1) and RFC 9369 Appendix A (v2) ----------------------------------------

CLIENT_HELLO_CRYPTO = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
)
CLIENT_PAYLOAD = CLIENT_HELLO_CRYPTO + bytes(917)
V1_CLIENT_PACKET = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)
# RFC 9369 A.2: the v2 client Initial's first and last 32 bytes (the tag covers the rest).
V2_CLIENT_HEAD = bytes.fromhex("d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485")
V2_CLIENT_TAIL = bytes.fromhex("a18b2faa745b6fe189cf772a9f84cbfc")
SERVER_PAYLOAD = bytes.fromhex(
    "02000000000600405a020000560303eefce7f7b37ba1d1632e96677825ddf739"
    "88cfc79825df566dc5430b9a045a1200130100002e00330024001d00209d3c94"
    "0d89690b84d08a60993c144eca684d1081287c834d5311bcf32bb9da1a002b00"
    "020304"
)
SERVER_PACKETS = {
    V1: (
        "c1000000010008f067a5502a4262b50040750001",
        "cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a"
        "5816b6394100f37a1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3"
        "dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84"
        "022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc4"
        "2158407dd074ee",
    ),
    V2: (
        "d16b3343cf0008f067a5502a4262b50040750001",
        "dc6b3343cf0008f067a5502a4262b5004075d92faaf16f05d8a4398c47089698"
        "baeea26b91eb761d9b89237bbf87263017915358230035f7fd3945d88965cf17"
        "f9af6e16886c61bfc703106fbaf3cb4cfa52382dd16a393e42757507698075b2"
        "c984c707f0a0812d8cd5a6881eaf21ceda98f4bd23f6fe1a3e2c43edd9ce7ca8"
        "4bed8521e2e140",
    ),
}
CHACHA_SECRET = bytes.fromhex("9ac312a7f877468ebe69422748ad00a15443f18203a07d6060f688f30f21632b")
CHACHA_PACKETS = {
    V1: "4cfe4189655e5cd55c41f69080575d7999c25a5bfb",
    V2: "5558b1c60ae7b6b932bc27d786f4bc2bb20f2162ba",
}
CHACHA_PN = 654360564


def test_initial_key_derivation_of_rfc_9001_a1_and_rfc_9369_a1() -> None:
    client, server = initial_secrets(V1, DCID)
    assert client.hex() == "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea"
    assert server.hex() == "3c199828fd139efd216c155ad844cc81fb82fa8d7446fa7d78be803acdda951b"
    c, s = initial_keys(V1, DCID)
    assert (c.key.hex(), c.iv.hex(), c.hp_key.hex()) == (
        "1f369613dd76d5467730efcbe3b1a22d",
        "fa044b2f42a3fd3b46fb255c",
        "9f50449e04a0e810283a1e9933adedd2",
    )
    assert (s.key.hex(), s.iv.hex(), s.hp_key.hex()) == (
        "cf3a5331653c364c88f0f379b6067e37",
        "0ac1493ca1905853b0bba03e",
        "c206b8d9b9f0f37644430b490eeaa314",
    )
    c, s = initial_keys(V2, DCID)
    assert (c.key.hex(), c.iv.hex(), c.hp_key.hex()) == (
        "8b1a0bc121284290a29e0971b5cd045d",
        "91f73e2351d8fa91660e909f",
        "45b95e15235d6f45a6b19cbcb0294ba9",
    )
    assert (s.key.hex(), s.iv.hex(), s.hp_key.hex()) == (
        "82db637861d55e1d011f19ea71d5d2a7",
        "dd13c276499c0249d3310652",
        "edf6d05c83121201b436e16877593c3a",
    )
    v2 = packet_keys(V2, 0x1303, CHACHA_SECRET)
    assert v2.key.hex() == "3bfcddd72bcf02541d7fa0dd1f5f9eeea817e09a6963a0e6c7df0f9a1bab90f2"
    assert v2.hp_key.hex() == "d659760d2ba434a226fd37b35c69e2da8211d10c4f12538787d65645d5d1b8e2"
    assert len(next_secret(V1, 0x1301, CHACHA_SECRET)) == 32
    with pytest.raises(PacketError):
        initial_keys(0x12345678, DCID)


def test_client_initial_of_rfc_9001_a2(m: ModuleType) -> None:
    client, _ = initial_keys(V1, DCID)
    header = packet.build_long_header(
        packet.KIND_INITIAL, V1, DCID, b"", b"", len(CLIENT_PAYLOAD) + 16, 2, 4
    )
    assert header.hex() == "c300000001088394c8f03e5157080000449e00000002"
    sealed = _protect(m, client).seal(header, CLIENT_PAYLOAD, 2)
    assert sealed == V1_CLIENT_PACKET
    # The server's side: parse, then open with the client's keys.
    record = packet.parse_packet(V1_CLIENT_PACKET, 0, 8)
    assert record[packet.F_KIND] == packet.KIND_INITIAL
    assert record[packet.F_LENGTH] == len(V1_CLIENT_PACKET) == 1200
    first, pn, plain = _protect(m, client).open(V1_CLIENT_PACKET, record[packet.F_PN_OFFSET], -1)
    assert (first, pn, plain) == (0xC3, 2, CLIENT_PAYLOAD)


def test_client_initial_of_rfc_9369_a2(m: ModuleType) -> None:
    client, _ = initial_keys(V2, DCID)
    header = packet.build_long_header(
        packet.KIND_INITIAL, V2, DCID, b"", b"", len(CLIENT_PAYLOAD) + 16, 2, 4
    )
    assert header.hex() == "d36b3343cf088394c8f03e5157080000449e00000002"
    sealed = _protect(m, client).seal(header, CLIENT_PAYLOAD, 2)
    assert len(sealed) == 1200
    assert sealed.startswith(V2_CLIENT_HEAD) and sealed.endswith(V2_CLIENT_TAIL)
    assert _protect(m, client).open(sealed, 18, 0)[1:] == (2, CLIENT_PAYLOAD)


@pytest.mark.parametrize("version", [V1, V2])
def test_server_initial_of_rfc_9001_a3_and_rfc_9369_a3(m: ModuleType, version: int) -> None:
    _, server = initial_keys(version, DCID)
    header_hex, packet_hex = SERVER_PACKETS[version]
    sealed = _protect(m, server).seal(bytes.fromhex(header_hex), SERVER_PAYLOAD, 1)
    assert sealed.hex() == packet_hex
    record = packet.parse_packet(sealed, 0, 0)
    assert record[packet.F_VERSION] == version and record[packet.F_KIND] == packet.KIND_INITIAL
    first, pn, plain = _protect(m, server).open(sealed, record[packet.F_PN_OFFSET], 0)
    assert (first, pn, plain) == (int(header_hex[:2], 16), 1, SERVER_PAYLOAD)


@pytest.mark.parametrize("version", [V1, V2])
def test_chacha20_short_header_of_rfc_9001_a5_and_rfc_9369_a5(m: ModuleType, version: int) -> None:
    keys = packet_keys(version, 0x1303, CHACHA_SECRET)
    header = packet.build_short_header(b"", CHACHA_PN & 0xFFFFFF, 3)
    assert header.hex() == "4200bff4"
    sealed = _protect(m, keys).seal(header, b"\x01", CHACHA_PN)
    assert sealed.hex() == CHACHA_PACKETS[version]
    assert _protect(m, keys).open(sealed, 1, CHACHA_PN - 1) == (0x42, CHACHA_PN, b"\x01")


# -- interop with aioquic's packet protection -----------------------------------------------------

SUITES = {
    0x1301: CipherSuite.AES_128_GCM_SHA256,
    0x1302: CipherSuite.AES_256_GCM_SHA384,
    0x1303: CipherSuite.CHACHA20_POLY1305_SHA256,
}


@pytest.mark.parametrize("suite", list(SUITES))
@pytest.mark.parametrize("version", [V1, V2])
def test_aioquic_opens_what_we_seal_and_the_reverse(
    m: ModuleType, suite: int, version: int
) -> None:
    secret = bytes(range(48 if suite == 0x1302 else 32))
    theirs = CryptoContext()
    theirs.setup(cipher_suite=SUITES[suite], secret=secret, version=version)
    ours = _protect(m, packet_keys(version, suite, secret))
    dcid = bytes.fromhex("0102030405060708")
    payload = bytes(range(256)) * 5
    for pn in (0, 1, 300, 70000):
        truncated, length = packet.encode_packet_number(pn, pn - 1)
        header = packet.build_short_header(dcid, truncated, length, key_phase=False)
        sealed = ours.seal(header, payload, pn)
        assert sealed == theirs.encrypt_packet(header, payload, pn)
        plain_header, plain, number, _ = theirs.decrypt_packet(sealed, 1 + len(dcid), pn)
        assert (plain_header, plain, number) == (header, payload, pn)
        assert ours.open(sealed, 1 + len(dcid), pn - 1) == (header[0], pn, payload)


def test_multipath_nonce_is_aioquics_nonce_of_path_id_above_64_bits(m: ModuleType) -> None:
    """draft-21: IV XOR (path ID (32) || packet number (64)); aioquic's AEAD does IV XOR pn."""
    secret = bytes(32)
    theirs = CryptoContext()
    theirs.setup(cipher_suite=CipherSuite.AES_128_GCM_SHA256, secret=secret, version=V1)
    ours = _protect(m, packet_keys(V1, 0x1301, secret))
    header = packet.build_short_header(DCID, 5, 1)
    payload = b"multipath" * 10
    for path_id in (1, 7, 0xFFFFFFFF):
        sealed = ours.seal(header, payload, 5, path_id)
        assert sealed == theirs.encrypt_packet(header, payload, path_id << 64 | 5)
        assert sealed != ours.seal(header, payload, 5, 0)
        assert ours.open(sealed, 9, 4, path_id)[2] == payload
        with pytest.raises(CryptoError):
            ours.open(sealed, 9, 4, path_id - 1)


# -- failures --------------------------------------------------------------------------------------


def test_tampering_and_short_packets_fail_cleanly(m: ModuleType) -> None:
    keys = packet_keys(V1, 0x1301, bytes(32))
    p = _protect(m, keys)
    header = packet.build_short_header(DCID, 9, 2)
    sealed = p.seal(header, bytes(100), 9)
    for i in (0, 5, 9, 40, len(sealed) - 1):
        bad = bytearray(sealed)
        bad[i] ^= 0x01
        with pytest.raises(CryptoError):
            p.open(bytes(bad), 9, 8)
    with pytest.raises(CryptoError):
        p.open(sealed[:28], 9, 8)
    with pytest.raises(PacketError):
        p.seal(header, b"", 9)  # 2-byte pn + 0 bytes: no sample
    with pytest.raises(PacketError):
        p.seal(b"", bytes(20), 9)
    with pytest.raises(PacketError):
        p.seal(header, bytes(20), 1 << 62)
    with pytest.raises(PacketError):
        m.PacketProtection("aes-128-gcm", bytes(15), bytes(12), bytes(16))
    with pytest.raises(PacketError):
        m.PacketProtection("aes-128-ccm", bytes(16), bytes(12), bytes(16))


@settings(max_examples=300)
@given(
    data=st.binary(max_size=120),
    pn_offset=st.integers(0, 40),
    largest=st.integers(-1, 1 << 40),
    path_id=st.integers(0, 3),
)
def test_open_of_garbage_agrees_and_only_raises_crypto_errors(
    data: bytes, pn_offset: int, largest: int, path_id: int
) -> None:
    keys = packet_keys(V1, 0x1303, bytes(32))
    outcomes = []
    for module in BACKENDS:
        p = module.PacketProtection(keys.cipher, keys.key, keys.iv, keys.hp_key)
        try:
            outcomes.append(p.open(data, pn_offset, largest, path_id))
        except PacketError as exc:
            outcomes.append(type(exc))
    assert outcomes[0] in (CryptoError, PacketError)
    assert all(o == outcomes[0] for o in outcomes)


@settings(max_examples=200)
@given(
    cipher=st.sampled_from([0x1301, 0x1302, 0x1303]),
    payload=st.binary(min_size=3, max_size=1500),
    pn=st.integers(0, (1 << 62) - 1),
    path_id=st.integers(0, (1 << 32) - 1),
    cid=st.binary(max_size=20),
)
def test_seal_open_round_trip_and_backends_agree(
    cipher: int, payload: bytes, pn: int, path_id: int, cid: bytes
) -> None:
    keys = packet_keys(V1, cipher, bytes(48))
    truncated, length = packet.encode_packet_number(pn, max(-1, pn - 1000))
    header = packet.build_short_header(cid, truncated, length, key_phase=True)
    sealed = set()
    for module in BACKENDS:
        p = module.PacketProtection(keys.cipher, keys.key, keys.iv, keys.hp_key)
        out = p.seal(header, payload, pn, path_id)
        sealed.add(out)
        assert p.open(out, 1 + len(cid), max(-1, pn - 900), path_id) == (header[0], pn, payload)
        assert p.open(memoryview(out), 1 + len(cid), max(-1, pn - 900), path_id)[2] == payload
    assert len(sealed) == 1


def test_we_parse_and_open_an_aioquic_built_datagram(m: ModuleType) -> None:
    """aioquic's builder coalesces an Initial and a Handshake packet; we split and open both."""
    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import QuicFrameType, QuicPacketType
    from aioquic.quic.packet_builder import QuicPacketBuilder

    scid = bytes.fromhex("f067a5502a4262b5")
    crypto = CryptoPair()
    crypto.setup_initial(cid=DCID, is_client=True, version=V1)
    handshake_secret = bytes(range(32))
    hs = CryptoPair()
    hs.send.setup(cipher_suite=CipherSuite.AES_128_GCM_SHA256, secret=handshake_secret, version=V1)
    builder = QuicPacketBuilder(
        host_cid=scid, peer_cid=DCID, version=V1, is_client=True, max_datagram_size=1200
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    builder.start_frame(QuicFrameType.CRYPTO).push_bytes(b"\x00\x05hello")
    builder.start_packet(QuicPacketType.HANDSHAKE, hs)
    builder.start_frame(QuicFrameType.CRYPTO).push_bytes(b"\x00\x05world")
    (datagram,), _ = builder.flush()

    records = packet.parse_datagrams([datagram], 8)
    n = packet.RECORD_FIELDS
    kinds = list(records[packet.F_KIND :: n])
    # aioquic pads the datagram to 1200 bytes with zeros after the packets: junk to discard.
    assert kinds == [packet.KIND_INITIAL, packet.KIND_HANDSHAKE, packet.KIND_INVALID]
    padding_at = records[2 * n + packet.F_OFFSET]
    assert padding_at + records[2 * n + packet.F_LENGTH] == len(datagram) == 1200
    assert not any(datagram[padding_at:])
    client, _ = initial_keys(V1, DCID)
    opened = []
    for i, keys in ((0, client), (n, packet_keys(V1, 0x1301, handshake_secret))):
        start, length = records[i + packet.F_OFFSET], records[i + packet.F_LENGTH]
        one = datagram[start : start + length]
        assert one[records[i + packet.F_SCID_OFFSET] - start :][:8] == scid
        opened.append(_protect(m, keys).open(one, records[i + packet.F_PN_OFFSET] - start, -1))
    assert [pn for _, pn, _ in opened] == [0, 1]  # the builder numbers across spaces
    assert opened[0][2].startswith(b"\x06\x00\x05hello")
    assert opened[1][2].startswith(b"\x06\x00\x05world")
