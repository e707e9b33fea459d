"""What the TLS key log (SSLKEYLOGFILE) lets the observer read (sans-IO).

With the traffic secrets an endpoint wrote, the tap's packets open up further:
- 1-RTT header protection comes off, which shows the key phase bit of every
  short-header packet (the runner's keyupdate rule);
- Handshake packets decrypt, which shows the server's EncryptedExtensions and
  in it its transport parameters (the runner's multiplexing rule reads
  initial_max_streams_bidi there), whether it sent a Certificate (resumption)
  and how much CRYPTO data it sent (amplificationlimit);
- whole 1-RTT packets decrypt, which shows PATH_CHALLENGE and PATH_RESPONSE
  frames (the rebinding rules), and 0-RTT and 1-RTT packets the STREAM data
  the client sent in each (zerortt).
The negotiated cipher suite comes from the ServerHello, read from the server's
Initial with the public Initial keys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aioquic.quic.crypto import (
    CryptoContext,
    CryptoError,
    CryptoPair,
    derive_key_iv_hp,
    next_key_phase,
)
from aioquic.quic.packet import decode_packet_number
from aioquic.tls import CipherSuite
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .wire import Packet, WireError, crypto_frames, read_varint, reassemble

SAMPLE_SIZE = 16
KEY_PHASE_BIT = 0x04
RESERVED_BITS = 0x18  # of a short header (RFC 9000 §17.3.1)
TRANSPORT_PARAMETERS_EXTENSION = 0x39  # RFC 9001 §8.2
INITIAL_MAX_STREAMS_BIDI = 0x08
ENCRYPTED_EXTENSIONS = 8
CERTIFICATE = 11
SERVER_HELLO = 2
# Packet numbers tried per 1-RTT packet: the observer knows only a lower bound
# (the packets it saw before in that direction); gaps (drops before the tap,
# skipped numbers) move the real one up by whole truncation windows.
MAX_PACKET_NUMBER_TRIES = 64
MAX_CONNECTIONS = 64  # key log entries past this many connections are ignored
# Key updates tried when opening a 1-RTT packet: some stacks update keys on their own
# every so many packets, several times in a 10 MB transfer.
MULTIPATH_IDS = 4  # path IDs tried: a move or a second path, not a path-rich session
MAX_KEY_UPDATES = 8


@dataclass(frozen=True, slots=True)
class Secrets:
    """Traffic secrets of one connection, as a key log names them."""

    client_handshake: bytes | None = None
    server_handshake: bytes | None = None
    client_traffic: bytes | None = None
    server_traffic: bytes | None = None
    client_early: bytes | None = None  # 0-RTT: only a connection that resumed with early data


_LABELS = {
    "CLIENT_EARLY_TRAFFIC_SECRET": "client_early",
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET": "client_handshake",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET": "server_handshake",
    "CLIENT_TRAFFIC_SECRET_0": "client_traffic",
    "SERVER_TRAFFIC_SECRET_0": "server_traffic",
}


def parse_keylog(text: str) -> Secrets:
    """The first connection's secrets in NSS key log text (later connections are ignored)."""
    connections = parse_keylog_connections(text)
    return connections[0] if connections else Secrets()


def parse_keylog_connections(text: str) -> list[Secrets]:
    """Each connection's secrets (one per client random), in the order they first appear."""
    found: dict[str, dict[str, bytes]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] not in _LABELS:
            continue
        if parts[1] not in found and len(found) >= MAX_CONNECTIONS:
            continue
        try:
            secret = bytes.fromhex(parts[2])
        except ValueError:
            continue  # a malformed secret reads as absent
        found.setdefault(parts[1], {}).setdefault(_LABELS[parts[0]], secret)
    return [Secrets(**secrets) for secrets in found.values()]


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
    chunks = handshake_crypto_frames(server_handshakes, secret, suite)
    return _encrypted_extensions_parameters(reassemble(chunks))


def handshake_crypto_frames(
    handshakes: Sequence[Packet], secret: bytes, suite: int
) -> list[tuple[int, bytes]]:
    """The (offset, data) CRYPTO frames of Handshake packets that `secret` decrypts."""
    chunks: list[tuple[int, bytes]] = []
    for number, packet in enumerate(handshakes):
        payload = open_long_header(packet, secret, suite, number)
        if payload is None:
            continue
        with contextlib.suppress(WireError):
            chunks.extend(crypto_frames(payload))
    return chunks


def open_long_header(packet: Packet, secret: bytes, suite: int, expected: int) -> bytes | None:
    """The decrypted payload of a Handshake or 0-RTT packet, or None when `secret` does not
    open it. `expected`: the packet number the observer expects (its count of the
    connection's packets of that type before it), from which the truncated one is decoded."""
    context = CryptoContext()
    context.setup(cipher_suite=CipherSuite(suite), secret=secret, version=packet.version)
    try:
        return context.decrypt_packet(packet.data, packet.payload_offset, expected)[1]
    except (CryptoError, ValueError, IndexError):
        return None


def handshake_message_types(handshake: bytes) -> list[int]:
    """The TLS handshake message types in a reassembled CRYPTO stream, in order."""
    types: list[int] = []
    offset = 0
    while offset + 4 <= len(handshake):
        types.append(handshake[offset])
        offset += 4 + int.from_bytes(handshake[offset + 1 : offset + 4], "big")
    return types


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
            return transport_parameters(handshake[offset : offset + length])
        offset += length
    return None


def transport_parameters(data: bytes) -> dict[int, bytes] | None:
    """Transport parameters (RFC 9000 §18) by ID, or None when `data` does not parse."""
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


def open_short_header(
    packet: bytes, dcid_length: int, secret: bytes, suite: int, version: int, at_least: int
) -> bytes | None:
    """The decrypted payload of a whole 1-RTT packet, or None when the keys do not open it.

    `secret` is the first 1-RTT traffic secret; the keys of up to MAX_KEY_UPDATES
    updates are tried too. `at_least` is a lower bound on the packet number: the
    number of 1-RTT packets the observer saw before it in the same direction.
    Candidates go up from there one truncation window at a time, then up from 0
    (a stack that starts a new number space for a new path, as picoquic does
    between its own endpoints), then the same numbers on multipath path IDs 1 to
    MULTIPATH_IDS - 1 (draft-ietf-quic-multipath-21 §2.4: the path ID sits above the
    packet number in the nonce; aioquic's AEAD takes it as bits 64 and up of the
    number); the AEAD tag picks the right one.
    """
    context = CryptoContext()
    context.setup(cipher_suite=CipherSuite(suite), secret=secret, version=version)
    number_offset = 1 + dcid_length
    if len(packet) < number_offset + 4 + SAMPLE_SIZE or context.hp is None:
        return None
    plain_header, truncated = context.hp.remove(packet, number_offset)
    bits = 8 * ((plain_header[0] & 0x03) + 1)
    numbers = [n for lower in (at_least, 0) for n in _packet_numbers(truncated, bits, lower)]
    numbers += [n | path_id << 64 for path_id in range(1, MULTIPATH_IDS) for n in numbers]
    # The reserved bits are header-protected (RFC 9000 §17.3.1), unless the endpoints
    # negotiated the loss bits extension (draft-ferrieuxhamchaoui-quic-lossbits), which
    # carries its Q and L bits there unprotected, as picoquic does with itself. Then the
    # unmasked first byte is off by the mask's bits there: a second try undoes them.
    masked = (plain_header[0] ^ packet[0]) & RESERVED_BITS
    candidates = [packet] + ([bytes([packet[0] ^ masked]) + packet[1:]] if masked else [])
    # A context opens packets of its own key phase and, through the next keys, of the
    # other one: every second generation covers them all. Header protection keys never
    # change (RFC 9001 §6), but next_key_phase derives new ones: keep the first.
    hp = context.hp
    for _ in range(0, MAX_KEY_UPDATES, 2):
        for number in numbers:
            for candidate in candidates:
                try:
                    return context.decrypt_packet(candidate, number_offset, number)[1]
                except (CryptoError, ValueError, IndexError):
                    continue
        context = next_key_phase(next_key_phase(context))
        context.hp = hp
    return None


def _packet_numbers(truncated: int, bits: int, lower: int) -> range:
    """Full packet numbers >= `lower` that end in `truncated`, nearest first."""
    first = decode_packet_number(truncated, bits, lower)
    if first < lower:
        first += 1 << bits
    return range(first, first + (MAX_PACKET_NUMBER_TRIES << bits), 1 << bits)
