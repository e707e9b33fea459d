"""What an on-path observer can read of QUIC packets (sans-IO).

The interop runner checks its pass rules on a pcap; we check the same rules on
the datagrams our loopback tap forwards. Long headers are unprotected
(RFC 8999/9000 §17.2): version, connection IDs, packet type, the Initial token,
Retry. Initial packets are encrypted with keys derived from the client's first
destination connection ID (RFC 9001 §5.2), so an observer can also read the
ClientHello's cipher suites, which is what the `chacha20` rule needs. Handshake
and 1-RTT packets need the TLS key log: `keylog.py` reads those.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from aioquic.quic.crypto import CryptoError, CryptoPair

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF  # RFC 9369
QUIC_V2_DRAFT = 0x709A50C4  # draft-ietf-quic-v2-01..08, all that ngtcp2 0.12 knows
RETRY_TAG_SIZE = 16
# Bytes of a 1-RTT packet kept: flags, a DCID of up to 20 bytes, and the
# header-protection sample after a 4-byte packet number (RFC 9001 §5.4.2).
SHORT_HEADER_PREFIX = 1 + 20 + 4 + 16
MAX_CID_LENGTH = 20
CHACHA20_POLY1305_SHA256 = 0x1303
TRANSPORT_PARAMETERS_EXTENSION = 0x39  # RFC 9001 §8.2
# Bounds on what the observer reassembles: a ClientHello is a few kB even with
# post-quantum key shares; anything past this is not a ClientHello we can read.
MAX_CLIENT_HELLO = 64 * 1024


class PacketType(StrEnum):
    INITIAL = "initial"
    ZERO_RTT = "0rtt"
    HANDSHAKE = "handshake"
    RETRY = "retry"
    VERSION_NEGOTIATION = "vn"
    ONE_RTT = "1rtt"
    PADDING = "padding"  # zero bytes after the last packet of a datagram


# Long-header packets kept whole, for the key log (or, for Initials, the public keys) to open.
_DECRYPTABLE = (PacketType.INITIAL, PacketType.ZERO_RTT, PacketType.HANDSHAKE)
_V1_TYPES = (PacketType.INITIAL, PacketType.ZERO_RTT, PacketType.HANDSHAKE, PacketType.RETRY)
# QUIC v2 renumbered the long packet types (RFC 9369 §3.2), and its drafts did too.
_V2_TYPES = (PacketType.RETRY, PacketType.INITIAL, PacketType.ZERO_RTT, PacketType.HANDSHAKE)


@dataclass(frozen=True, slots=True)
class Packet:
    """One QUIC packet as an observer sees it.

    `token` is the Initial's token or the Retry's token. `data` holds the raw
    bytes of Initial, 0-RTT and Handshake packets (to decrypt them) and the first
    SHORT_HEADER_PREFIX bytes of a 1-RTT packet (to read its key phase), else
    b"". Of a 1-RTT packet only `kind`, `size` and that prefix are known.
    """

    kind: PacketType
    size: int
    version: int = 0
    dcid: bytes = b""
    scid: bytes = b""
    token: bytes = b""
    data: bytes = b""
    payload_offset: int = 0  # Initial, 0-RTT, Handshake: where the protected packet number starts


class WireError(ValueError):
    """Bytes that cannot be a QUIC packet."""


def packet_type(first_byte: int, version: int) -> PacketType:
    if version == 0:
        return PacketType.VERSION_NEGOTIATION
    table = _V2_TYPES if version in (QUIC_V2, QUIC_V2_DRAFT) else _V1_TYPES
    return table[(first_byte >> 4) & 0x03]


def read_varint(data: bytes, offset: int) -> tuple[int, int]:
    """(value, next offset) of the QUIC variable-length integer at `offset`."""
    if offset >= len(data):
        raise WireError(f"varint at offset {offset} runs past the end ({len(data)} bytes)")
    length = 1 << (data[offset] >> 6)
    if offset + length > len(data):
        raise WireError(f"{length}-byte varint at offset {offset} runs past the end")
    value = data[offset] & 0x3F
    for byte in data[offset + 1 : offset + length]:
        value = (value << 8) | byte
    return value, offset + length


def parse_datagram(data: bytes) -> list[Packet]:
    """The packets coalesced in one UDP datagram, in order.

    A short-header packet ends the datagram (it has no length field). Bytes that
    do not parse end it too, and are reported as a WireError only when not even
    the first packet could be read.
    """
    packets: list[Packet] = []
    offset = 0
    while offset < len(data):
        try:
            packet = _parse_packet(data, offset)
        except WireError:
            if not packets:
                raise
            break
        packets.append(packet)
        offset += packet.size
    return packets


def _parse_packet(data: bytes, start: int) -> Packet:
    first = data[start]
    if not first & 0x80:
        if data.count(0, start) == len(data) - start:
            # Zeros after a padded Initial (aioquic pads the datagram, not the packet).
            return Packet(PacketType.PADDING, size=len(data) - start)
        prefix = data[start : start + SHORT_HEADER_PREFIX]
        return Packet(PacketType.ONE_RTT, size=len(data) - start, data=prefix)
    if len(data) - start < 7:
        raise WireError(f"long header of {len(data) - start} bytes is too short")
    version = int.from_bytes(data[start + 1 : start + 5], "big")
    dcid, offset = _cid(data, start + 5)
    scid, offset = _cid(data, offset)
    kind = packet_type(first, version)
    if kind in (PacketType.VERSION_NEGOTIATION, PacketType.RETRY):
        token = data[offset : len(data) - RETRY_TAG_SIZE] if kind is PacketType.RETRY else b""
        return Packet(kind, len(data) - start, version, dcid, scid, token)
    token = b""
    if kind is PacketType.INITIAL:
        token_length, offset = read_varint(data, offset)
        token = data[offset : offset + token_length]
        offset += token_length
    length, offset = read_varint(data, offset)
    end = offset + length
    if end > len(data):
        raise WireError(f"{kind} packet length {length} runs past the datagram")
    raw = data[start:end] if kind in _DECRYPTABLE else b""
    return Packet(kind, end - start, version, dcid, scid, token, raw, offset - start)


def _cid(data: bytes, offset: int) -> tuple[bytes, int]:
    if offset >= len(data):
        raise WireError("connection ID length runs past the end")
    length = data[offset]
    if length > MAX_CID_LENGTH or offset + 1 + length > len(data):
        raise WireError(f"bad connection ID length {length} at offset {offset}")
    return data[offset + 1 : offset + 1 + length], offset + 1 + length


# ---------------------------------------------------------------- Initial decryption


def initial_crypto_data(
    packet: Packet, *, from_client: bool, cid: bytes | None = None
) -> list[tuple[int, bytes]]:
    """The (offset, data) CRYPTO frames of one Initial, decrypted with the public keys.

    Initial keys come from the client's first DCID (`cid`; by default the
    packet's own DCID, which is that one until the client has heard from the
    server), so this reads every ClientHello. Undecryptable packets give [].
    """
    if packet.kind is not PacketType.INITIAL or not packet.data:
        return []
    pair = CryptoPair()
    # We decrypt what the client sent, so we take the server's side of the keys.
    pair.setup_initial(
        cid=packet.dcid if cid is None else cid, is_client=not from_client, version=packet.version
    )
    try:
        _, payload, _ = pair.decrypt_packet(packet.data, packet.payload_offset, 0)
    except (CryptoError, ValueError, IndexError):
        return []
    try:
        return list(crypto_frames(payload))
    except WireError:
        return []


def crypto_frames(payload: bytes) -> Iterable[tuple[int, bytes]]:
    """CRYPTO frames of an Initial payload; only the frame types an Initial may carry."""
    offset = 0
    while offset < len(payload):
        frame_type, offset = read_varint(payload, offset)
        if frame_type in (0x00, 0x01):  # PADDING, PING
            continue
        if frame_type == 0x06:  # CRYPTO
            at, offset = read_varint(payload, offset)
            length, offset = read_varint(payload, offset)
            if offset + length > len(payload):
                raise WireError("CRYPTO frame runs past the payload")
            yield at, payload[offset : offset + length]
            offset += length
        elif frame_type in (0x02, 0x03):  # ACK, ACK_ECN
            offset = _skip_ack(payload, offset, ecn=frame_type == 0x03)
        else:  # CONNECTION_CLOSE or garbage: nothing more to read
            return


def _skip_ack(payload: bytes, offset: int, *, ecn: bool) -> int:
    _, offset = read_varint(payload, offset)  # largest acknowledged
    _, offset = read_varint(payload, offset)  # delay
    ranges, offset = read_varint(payload, offset)
    _, offset = read_varint(payload, offset)  # first range
    for _ in range(2 * ranges + (3 if ecn else 0)):
        _, offset = read_varint(payload, offset)
    return offset


def reassemble(chunks: Iterable[tuple[int, bytes]], limit: int = MAX_CLIENT_HELLO) -> bytes:
    """The contiguous bytes from offset 0 of (offset, data) chunks, up to `limit`."""
    buffer = bytearray()
    pending = sorted(chunks)
    progressed = True
    while progressed and len(buffer) < limit:
        progressed = False
        for at, data in pending:
            if at <= len(buffer) < at + len(data):
                buffer += data[len(buffer) - at :]
                progressed = True
    return bytes(buffer[:limit])


def client_hello_cipher_suites(handshake: bytes) -> tuple[int, ...] | None:
    """Cipher suites offered by the TLS ClientHello at the start of `handshake`.

    None when the bytes are not (yet) a whole enough ClientHello.
    """
    found = _cipher_suites_field(handshake)
    if found is None:
        return None
    offset, length = found
    return tuple(
        int.from_bytes(handshake[i : i + 2], "big") for i in range(offset, offset + length, 2)
    )


def client_hello_extensions(handshake: bytes) -> dict[int, bytes] | None:
    """The extensions of the TLS ClientHello at the start of `handshake`, by type.

    None when the bytes are not (yet) a whole enough ClientHello.
    """
    found = _cipher_suites_field(handshake)
    if found is None:
        return None
    offset = sum(found)
    # legacy_compression_methods <1..2^8-1>, then extensions <8..2^16-1>.
    if offset + 1 > len(handshake):
        return None
    offset += 1 + handshake[offset]
    if offset + 2 > len(handshake):
        return None
    end = offset + 2 + int.from_bytes(handshake[offset : offset + 2], "big")
    if end > len(handshake):
        return None
    extensions: dict[int, bytes] = {}
    offset += 2
    while offset + 4 <= end:
        kind = int.from_bytes(handshake[offset : offset + 2], "big")
        length = int.from_bytes(handshake[offset + 2 : offset + 4], "big")
        offset += 4
        if offset + length > end:
            return None
        extensions.setdefault(kind, handshake[offset : offset + length])
        offset += length
    return extensions


def _cipher_suites_field(handshake: bytes) -> tuple[int, int] | None:
    """(offset, length) of a ClientHello's cipher_suites, or None."""
    # Handshake header: type (1 = ClientHello), 24-bit length; then legacy_version,
    # random (32), legacy_session_id <0..32>, cipher_suites <2..2^16-2>.
    if len(handshake) < 4 + 2 + 32 + 1 or handshake[0] != 1:
        return None
    offset = 4 + 2 + 32
    offset += 1 + handshake[offset]
    if offset + 2 > len(handshake):
        return None
    length = int.from_bytes(handshake[offset : offset + 2], "big")
    offset += 2
    if length % 2 or offset + length > len(handshake):
        return None
    return offset, length


def offered_cipher_suites(client_initials: Sequence[Packet]) -> tuple[int, ...] | None:
    """The ClientHello's cipher suites, read from the client's Initial packets.

    Only the first connection attempt is read (its DCID's packets): a client
    offers the same suites again after a Retry.
    """
    return client_hello_cipher_suites(client_hello(client_initials))


def offered_transport_parameters(client_initials: Sequence[Packet]) -> bytes | None:
    """The ClientHello's quic_transport_parameters extension (RFC 9001 §8.2), undecoded."""
    extensions = client_hello_extensions(client_hello(client_initials))
    return None if extensions is None else extensions.get(TRANSPORT_PARAMETERS_EXTENSION)


def client_hello(client_initials: Sequence[Packet]) -> bytes:
    """The ClientHello bytes of the first connection attempt (its DCID's Initials)."""
    if not client_initials:
        return b""
    first_dcid = client_initials[0].dcid
    chunks = [
        chunk
        for packet in client_initials
        if packet.dcid == first_dcid
        for chunk in initial_crypto_data(packet, from_client=True)
    ]
    return reassemble(chunks)


def client_hello_sends(client_initials: Sequence[Packet]) -> int:
    """How many of the client's Initial packets carry the ClientHello's start (CRYPTO offset 0).

    The first send and every retransmission of it (the runner's longrtt rule
    counts ClientHellos). Keys come from the first Initial's DCID, which all
    of them use until the server's first Initial arrives.
    """
    if not client_initials:
        return 0
    first_dcid = client_initials[0].dcid
    return sum(
        any(at == 0 for at, _ in initial_crypto_data(p, from_client=True, cid=first_dcid))
        for p in client_initials
    )


# ---------------------------------------------------------------- 1-RTT frames

PATH_CHALLENGE = 0x1A
PATH_RESPONSE = 0x1B
_STREAM_FRAMES = range(0x08, 0x10)
# Frame types whose body is N varints (RFC 9000 §19).
_VARINT_FRAMES = {
    0x04: 3,  # RESET_STREAM
    0x05: 2,  # STOP_SENDING
    0x10: 1,  # MAX_DATA
    0x11: 2,  # MAX_STREAM_DATA
    0x12: 1,  # MAX_STREAMS (bidi)
    0x13: 1,  # MAX_STREAMS (uni)
    0x14: 1,  # DATA_BLOCKED
    0x15: 2,  # STREAM_DATA_BLOCKED
    0x16: 1,  # STREAMS_BLOCKED (bidi)
    0x17: 1,  # STREAMS_BLOCKED (uni)
    0x19: 1,  # RETIRE_CONNECTION_ID
}


def frames(payload: bytes) -> Iterable[tuple[int, bytes]]:
    """(frame type, frame bytes after the type) of a decrypted 1-RTT payload, in order.

    Reads the frame types of RFC 9000 and DATAGRAM (RFC 9221); an unknown type
    (an extension we do not parse) ends the walk, since its length is unknown.
    """
    offset = 0
    while offset < len(payload):
        kind, start = read_varint(payload, offset)
        end = _frame_end(kind, payload, start)
        if end is None:
            return
        if end > len(payload):
            raise WireError(f"frame {kind:#x} at offset {offset} runs past the payload")
        yield kind, payload[start:end]
        offset = end


def _frame_end(kind: int, payload: bytes, offset: int) -> int | None:
    """Where the frame of type `kind` whose body starts at `offset` ends; None: unknown type."""
    if kind in (0x00, 0x01, 0x1E):  # PADDING, PING, HANDSHAKE_DONE
        return offset
    if kind in (0x02, 0x03):
        return _skip_ack(payload, offset, ecn=kind == 0x03)
    if kind in _VARINT_FRAMES:
        for _ in range(_VARINT_FRAMES[kind]):
            _, offset = read_varint(payload, offset)
        return offset
    if kind in (0x06, 0x07):  # CRYPTO (offset, length, data), NEW_TOKEN (length, data)
        if kind == 0x06:
            _, offset = read_varint(payload, offset)
        length, offset = read_varint(payload, offset)
        return offset + length
    if kind in _STREAM_FRAMES:
        return _stream_end(kind, payload, offset)
    if kind == 0x18:  # NEW_CONNECTION_ID: sequence, retire prior to, CID, reset token
        _, offset = read_varint(payload, offset)
        _, offset = read_varint(payload, offset)
        if offset >= len(payload):
            raise WireError("NEW_CONNECTION_ID runs past the payload")
        return offset + 1 + payload[offset] + 16
    if kind in (PATH_CHALLENGE, PATH_RESPONSE):
        return offset + 8
    if kind in (0x1C, 0x1D):  # CONNECTION_CLOSE (transport has a frame type)
        for _ in range(2 if kind == 0x1C else 1):
            _, offset = read_varint(payload, offset)
        length, offset = read_varint(payload, offset)
        return offset + length
    if kind == 0x30:  # DATAGRAM without length: to the end
        return len(payload)
    if kind == 0x31:
        length, offset = read_varint(payload, offset)
        return offset + length
    return None


def _stream_end(kind: int, payload: bytes, offset: int) -> int:
    _, offset = read_varint(payload, offset)  # stream ID
    if kind & 0x04:  # OFF
        _, offset = read_varint(payload, offset)
    if not kind & 0x02:  # no LEN: the data runs to the end of the packet
        return len(payload)
    length, offset = read_varint(payload, offset)
    return offset + length


def path_frames(payload: bytes, kind: int) -> list[bytes]:
    """The 8-byte data of every PATH_CHALLENGE or PATH_RESPONSE (`kind`) frame in a payload."""
    found: list[bytes] = []
    with contextlib.suppress(WireError):  # a malformed tail: keep what came before it
        for frame_kind, body in frames(payload):
            if frame_kind == kind:
                found.append(body)
    return found


def stream_data_bytes(payload: bytes) -> int:
    """How many bytes of stream data the STREAM frames of a decrypted payload carry."""
    total = 0
    with contextlib.suppress(WireError):  # a malformed tail: count what came before it
        for kind, body in frames(payload):
            if kind in _STREAM_FRAMES:
                total += len(body) - _stream_header_length(kind, body)
    return total


def _stream_header_length(kind: int, body: bytes) -> int:
    """The bytes of a STREAM frame's body before its data: stream ID, offset, length."""
    _, offset = read_varint(body, 0)
    if kind & 0x04:  # OFF
        _, offset = read_varint(body, offset)
    if kind & 0x02:  # LEN
        _, offset = read_varint(body, offset)
    return offset


def frame_types(payload: bytes) -> list[int]:
    """The frame types of a decrypted payload, as far as they can be read."""
    found: list[int] = []
    with contextlib.suppress(WireError):
        found += (kind for kind, _ in frames(payload))
    return found
