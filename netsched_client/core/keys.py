"""Packet protection keys: HKDF-Expand-Label (RFC 8446 §7.1), Initial secrets (RFC 9001 §5.2).

Cold code (once per key, not per packet), so plain Python over
`cryptography`'s HMAC. QUIC v2 (RFC 9369 §3.3) has its own Initial salt and
labels. A TLS secret and cipher suite give (key, iv, hp key) for
`protection.PacketProtection`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from hashlib import sha256, sha384
from typing import Final

from netsched_client.core.errors import PacketError

VERSION_1: Final = 0x00000001
VERSION_2: Final = 0x6B3343CF

INITIAL_SALTS: Final = {
    VERSION_1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
    VERSION_2: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
}
_LABEL_PREFIX: Final = {VERSION_1: b"quic ", VERSION_2: b"quicv2 "}

# TLS 1.3 cipher suite code -> (AEAD name, key length, hash).
CIPHER_SUITES: Final = {
    0x1301: ("aes-128-gcm", 16, "sha256"),
    0x1302: ("aes-256-gcm", 32, "sha384"),
    0x1303: ("chacha20-poly1305", 32, "sha256"),
}
_HASHES: Final = {"sha256": (sha256, 32), "sha384": (sha384, 48)}
IV_LENGTH: Final = 12


@dataclass(frozen=True, slots=True)
class PacketKeys:
    """One direction of one epoch: the AEAD, its key and IV, the header protection key."""

    cipher: str
    key: bytes
    iv: bytes
    hp_key: bytes


def hkdf_extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt, ikm, _HASHES[hash_name][0])


def hkdf_expand_label(
    hash_name: str, secret: bytes, label: bytes, context: bytes, length: int
) -> bytes:
    """TLS 1.3 HKDF-Expand-Label: the label gets the "tls13 " prefix."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + bytes((len(context),)) + context
    digest = _HASHES[hash_name][0]
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(secret, block + info + bytes((counter,)), digest)
        out += block
        counter += 1
    return out[:length]


def _prefix(version: int) -> bytes:
    try:
        return _LABEL_PREFIX[version]
    except KeyError:
        raise PacketError(f"no keys for version {version:#x}") from None


def packet_keys(version: int, cipher_suite: int, secret: bytes) -> PacketKeys:
    """The packet protection keys derived from a TLS traffic secret (RFC 9001 §5.1)."""
    try:
        cipher, key_length, hash_name = CIPHER_SUITES[cipher_suite]
    except KeyError:
        raise PacketError(f"cipher suite {cipher_suite:#x}") from None
    prefix = _prefix(version)
    return PacketKeys(
        cipher=cipher,
        key=hkdf_expand_label(hash_name, secret, prefix + b"key", b"", key_length),
        iv=hkdf_expand_label(hash_name, secret, prefix + b"iv", b"", IV_LENGTH),
        hp_key=hkdf_expand_label(hash_name, secret, prefix + b"hp", b"", key_length),
    )


def next_secret(version: int, cipher_suite: int, secret: bytes) -> bytes:
    """The traffic secret of the next key phase (RFC 9001 §6.1; "quicv2 ku" in v2)."""
    _, _, hash_name = CIPHER_SUITES[cipher_suite]
    size = _HASHES[hash_name][1]
    return hkdf_expand_label(hash_name, secret, _prefix(version) + b"ku", b"", size)


def initial_secrets(version: int, dcid: bytes) -> tuple[bytes, bytes]:
    """(client, server) Initial secrets for the client's first Destination CID."""
    salt = INITIAL_SALTS.get(version)
    if salt is None:
        raise PacketError(f"no Initial salt for version {version:#x}")
    initial = hkdf_extract("sha256", salt, dcid)
    client = hkdf_expand_label("sha256", initial, b"client in", b"", 32)
    server = hkdf_expand_label("sha256", initial, b"server in", b"", 32)
    return client, server


def initial_keys(version: int, dcid: bytes) -> tuple[PacketKeys, PacketKeys]:
    """(client, server) Initial packet keys: AES-128-GCM always."""
    client, server = initial_secrets(version, dcid)
    return packet_keys(version, 0x1301, client), packet_keys(version, 0x1301, server)
