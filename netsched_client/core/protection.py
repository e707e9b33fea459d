"""Packet protection in use: the compiled `_protect` (OpenSSL), else its reference `_protect_py`.

`PacketProtection(cipher, key, iv, hp_key)` is one direction of one key
phase: `seal(header, payload, packet_number, path_id)` returns the protected
packet, `open(packet, pn_offset, largest_pn, path_id)` returns (first byte,
packet number, plaintext) or raises `CryptoError`. Ciphers: aes-128-gcm,
aes-256-gcm, chacha20-poly1305. The nonce carries the path ID
(draft-ietf-quic-multipath-21 §2.4); path 0 is RFC 9001's nonce. Keys come
from `keys.packet_keys` / `keys.initial_keys`. `COMPILED` says which backend
is in use; `BACKENDS` holds both for the tests.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from netsched_client import _native
from netsched_client.core import _protect_py
from netsched_client.core.errors import CryptoError
from netsched_client.core.keys import PacketKeys

if TYPE_CHECKING:
    from netsched_client.core._protect import (
        CIPHERS,
        SAMPLE_LENGTH,
        TAG_LENGTH,
        PacketProtection,
    )

    COMPILED: bool
    BACKENDS: dict[str, ModuleType]
else:
    _compiled = _native.load("netsched_client.core._protect")
    COMPILED = _compiled is not None
    BACKENDS = {"python": _protect_py} | ({"cython": _compiled} if COMPILED else {})
    _core = _compiled if COMPILED else _protect_py
    CIPHERS = _core.CIPHERS
    SAMPLE_LENGTH = _core.SAMPLE_LENGTH
    TAG_LENGTH = _core.TAG_LENGTH
    PacketProtection = _core.PacketProtection


def protection(keys: PacketKeys) -> PacketProtection:
    """The `PacketProtection` of a set of derived keys."""
    return PacketProtection(keys.cipher, keys.key, keys.iv, keys.hp_key)


__all__ = [
    "BACKENDS",
    "CIPHERS",
    "COMPILED",
    "SAMPLE_LENGTH",
    "TAG_LENGTH",
    "CryptoError",
    "PacketProtection",
    "protection",
]
