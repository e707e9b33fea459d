"""The Initial packet that turns a new client away without keeping any state.

A server over a connection cap may close a connection attempt at once with a
CONNECTION_CLOSE frame carrying CONNECTION_REFUSED in an Initial packet (RFC
9000 §5.2.2, §10.2.3). The client then fails in one round trip with the
reason, where a dropped Initial costs it its whole handshake timeout. The
Initial keys come from the client's Destination CID, so nothing is held: the
packet is built from the client's first datagram alone.
"""

from __future__ import annotations

import os

from aioquic.quic.packet import QuicErrorCode

from netsched_client.core.keys import initial_keys
from netsched_client.core.packet import KIND_INITIAL, build_long_header, encode_varint
from netsched_client.core.protection import TAG_LENGTH, PacketProtection

CONNECTION_CLOSE_TRANSPORT = 0x1C  # RFC 9000 §19.19: a transport error
MAX_REASON_BYTES = 64  # the reason is for a log line; keeps the answer far below the Initial
SERVER_CID_BYTES = 8


def connection_close_frame(error_code: int, reason: str) -> bytes:
    """A transport CONNECTION_CLOSE frame (no frame to blame: frame type 0)."""
    phrase = reason.encode()[:MAX_REASON_BYTES]
    return b"".join(
        (
            encode_varint(CONNECTION_CLOSE_TRANSPORT),
            encode_varint(error_code),
            encode_varint(0),
            encode_varint(len(phrase)),
            phrase,
        )
    )


def refusal_initial(
    version: int,
    client_dcid: bytes,
    client_scid: bytes,
    reason: str,
    server_cid: bytes | None = None,
) -> bytes:
    """A server Initial refusing the connection the client opened with `client_dcid`.

    Packet number 0 of the server's Initial space: the client has seen no other
    server packet. Raises `PacketError` for a version without Initial keys
    (the caller checked the Initial decrypts, so its version has them).
    """
    keys = initial_keys(version, client_dcid)[1]
    payload = connection_close_frame(QuicErrorCode.CONNECTION_REFUSED, reason)
    header = build_long_header(
        KIND_INITIAL,
        version,
        client_scid,
        server_cid if server_cid is not None else os.urandom(SERVER_CID_BYTES),
        b"",
        len(payload) + TAG_LENGTH,
        0,
        1,
    )
    protection = PacketProtection(keys.cipher, keys.key, keys.iv, keys.hp_key)
    return protection.seal(header, payload, 0)
