"""Retry packets' integrity tags (RFC 9001 §5.8; RFC 9369 §3.3.3 for QUIC v2).

The tag is AES-128-GCM over nothing, with a fixed key and nonce per version,
authenticating the Retry packet (without its tag) behind the client's
original Destination CID. A client accepts a Retry only when the tag
matches (`check_retry`); a server would build one with `retry_tag`.
"""

from __future__ import annotations

import hmac
from typing import Final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from netsched_client.core.errors import PacketError
from netsched_client.core.packet import RETRY_TAG_LENGTH, VERSION_1, VERSION_2

_KEYS: Final = {
    VERSION_1: (
        bytes.fromhex("be0c690b9f66575a1d766b54e368c84e"),
        bytes.fromhex("461599d35d632bf2239825bb"),
    ),
    VERSION_2: (
        bytes.fromhex("8fb4b01b56ac48e260fbcbcead7ccc92"),
        bytes.fromhex("d86969bc2d7c6d9990efb04a"),
    ),
}


def retry_tag(version: int, original_dcid: bytes, packet_without_tag: bytes) -> bytes:
    """The integrity tag of a Retry packet (`packet_without_tag`: up to the token's end)."""
    try:
        key, nonce = _KEYS[version]
    except KeyError:
        raise PacketError(f"no Retry keys for version {version:#x}") from None
    pseudo = bytes((len(original_dcid),)) + original_dcid + packet_without_tag
    return AESGCM(key).encrypt(nonce, b"", pseudo)


def check_retry(version: int, original_dcid: bytes, packet: bytes) -> bool:
    """Whether a whole Retry packet carries the right tag for `original_dcid`."""
    if len(packet) <= RETRY_TAG_LENGTH:
        return False
    body, tag = packet[:-RETRY_TAG_LENGTH], packet[-RETRY_TAG_LENGTH:]
    return hmac.compare_digest(retry_tag(version, original_dcid, body), tag)
