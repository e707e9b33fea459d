"""What the TLS key log (SSLKEYLOGFILE) lets the observer read (sans-IO).

With the traffic secrets an endpoint wrote, the tap's packets open up further:
- 1-RTT header protection comes off, which shows the key phase bit of every
  short-header packet (the runner's keyupdate rule);
- Handshake packets decrypt, which shows the server's EncryptedExtensions and
  in it its transport parameters (the runner's multiplexing rule reads
  initial_max_streams_bidi there).
The negotiated cipher suite comes from the ServerHello, read from the server's
Initial with the public Initial keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aioquic.quic.crypto import CryptoContext, CryptoError, CryptoPair, derive_key_iv_hp
from aioquic.tls import CipherSuite
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .wire import Packet, WireError, crypto_frames, read_varint, reassemble

SAMPLE_SIZE = 16
KEY_PHASE_BIT = 0x04
TRANSPORT_PARAMETERS_EXTENSION = 0x39  # RFC 9001 §8.2
INITIAL_MAX_STREAMS_BIDI = 0x08
ENCRYPTED_EXTENSIONS = 8
SERVER_HELLO = 2


@dataclass(frozen=True, slots=True)
class Secrets:
    """Traffic secrets of one connection, as a key log names them."""

    client_handshake: bytes | None = None
    server_handshake: bytes | None = None
    client_traffic: bytes | None = None
    server_traffic: bytes | None = None


_LABELS = {
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET": "client_handshake",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET": "server_handshake",
    "CLIENT_TRAFFIC_SECRET_0": "client_traffic",
    "SERVER_TRAFFIC_SECRET_0": "server_traffic",
}


def parse_keylog(text: str) -> Secrets:
    """The first connection's secrets in NSS key log text (later connections are ignored)."""
    found: dict[str, bytes] = {}
    client_random = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] not in _LABELS:
            continue
        client_random = client_random or parts[1]
        if parts[1] != client_random:
            continue
        try:
            found.setdefault(_LABELS[parts[0]], bytes.fromhex(parts[2]))
        except ValueError:
            continue  # a malformed secret reads as absent
    return Secrets(**found)


def server_cipher_suite(
    server_initials: Sequence[Packet], client_dcids: Iterable[bytes]
) -> int | None:
    """The cipher suite of the ServerHello, from the server's Initial packets.

    The server protects its Initials with keys from the client's current
    destination CID (after a Retry, the Retry's CID), so each candidate is tried.
    """
    for cid in dict.fromkeys(client_dcids):
        chunks = [chunk for packet in server_initials for chunk in _decrypt_initial(packet, cid)]
        suite = _server_hello_suite(reassemble(chunks))
        if suite is not None:
            return suite
    return None


def _decrypt_initial(packet: Packet, cid: bytes) -> list[tuple[int, bytes]]:
    pair = CryptoPair()
    pair.setup_initial(cid=cid, is_client=True, version=packet.version)
    try:
        _, payload, _ = pair.decrypt_packet(packet.data, packet.payload_offset, 0)
        return list(crypto_frames(payload))
    except (CryptoError, ValueError, IndexError, WireError):
        return []


def _server_hello_suite(handshake: bytes) -> int | None:
    # type (2), length (3), legacy_version (2), random (32), legacy_session_id_echo <0..32>,
    # cipher_suite (2).
    if len(handshake) < 4 + 2 + 32 + 1 or handshake[0] != SERVER_HELLO:
        return None
    offset = 4 + 2 + 32
    offset += 1 + handshake[offset]
    if offset + 2 > len(handshake):
        return None
    return int.from_bytes(handshake[offset : offset + 2], "big")


def key_phases(
    short_headers: Iterable[bytes], dcid_length: int, secret: bytes, suite: int, version: int
) -> tuple[int, int]:
    """(packets in key phase 0, in key phase 1) among 1-RTT packet prefixes.

    The header protection key stays the same across key updates (RFC 9001
    §6), so the first traffic secret unmasks every packet's key phase bit.
    """
    _, _, hp = derive_key_iv_hp(cipher_suite=CipherSuite(suite), secret=secret, version=version)
    counts = [0, 0]
    offset = 1 + dcid_length + 4  # the sample assumes a 4-byte packet number (RFC 9001 §5.4.2)
    for prefix in short_headers:
        sample = prefix[offset : offset + SAMPLE_SIZE]
        if len(sample) < SAMPLE_SIZE:
            continue
        first = prefix[0] ^ (_mask(suite, hp, sample)[0] & 0x1F)
        counts[1 if first & KEY_PHASE_BIT else 0] += 1
    return counts[0], counts[1]


def _mask(suite: int, hp: bytes, sample: bytes) -> bytes:
    if suite == CipherSuite.CHACHA20_POLY1305_SHA256:
        # The sample is the 4-byte block counter then the 12-byte nonce, as
        # cryptography's 16-byte ChaCha20 nonce expects.
        cipher = Cipher(algorithms.ChaCha20(hp, sample), mode=None)
        return cipher.encryptor().update(bytes(5))
    return Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sample)


def server_transport_parameters(
    server_handshakes: Sequence[Packet], secret: bytes, suite: int
) -> dict[int, bytes] | None:
    """The server's transport parameters, from EncryptedExtensions in its Handshake packets."""
    context = CryptoContext()
    chunks: list[tuple[int, bytes]] = []
    for number, packet in enumerate(server_handshakes):
        context.setup(cipher_suite=CipherSuite(suite), secret=secret, version=packet.version)
        try:
            _, payload, _, _ = context.decrypt_packet(packet.data, packet.payload_offset, number)
            chunks.extend(crypto_frames(payload))
        except (CryptoError, ValueError, IndexError, WireError):
            continue
    return _encrypted_extensions_parameters(reassemble(chunks))


def _encrypted_extensions_parameters(handshake: bytes) -> dict[int, bytes] | None:
    if len(handshake) < 6 or handshake[0] != ENCRYPTED_EXTENSIONS:
        return None
    end = min(len(handshake), 6 + int.from_bytes(handshake[4:6], "big"))
    offset = 6
    while offset + 4 <= end:
        kind = int.from_bytes(handshake[offset : offset + 2], "big")
        length = int.from_bytes(handshake[offset + 2 : offset + 4], "big")
        offset += 4
        if kind == TRANSPORT_PARAMETERS_EXTENSION:
            return _transport_parameters(handshake[offset : offset + length])
        offset += length
    return None


def _transport_parameters(data: bytes) -> dict[int, bytes] | None:
    parameters: dict[int, bytes] = {}
    offset = 0
    try:
        while offset < len(data):
            param, offset = read_varint(data, offset)
            length, offset = read_varint(data, offset)
            parameters[param] = data[offset : offset + length]
            offset += length
    except WireError:
        return None
    return parameters


def varint_value(data: bytes) -> int | None:
    try:
        return read_varint(data, 0)[0]
    except WireError:
        return None
