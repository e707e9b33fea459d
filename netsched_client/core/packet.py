"""The packet layer in use: the compiled `_packet`, else its pure-Python reference `_packet_py`.

Varints (RFC 9000 §16); truncated packet numbers (§17.1, A.2, A.3); QUIC v1
and v2 (RFC 9369) long and short headers, parsed into records of
RECORD_FIELDS ints (F_* indices) and built unprotected; batch parsing of a
GRO buffer or many datagrams into one flat array('q') of records, coalesced
packets included; `CidMap`, fixed-length DCIDs to paths, over a whole
batch of records at once; ACK ranges (`RangeSet`); ACK, ACK_ECN and draft-21
PATH_ACK(_ECN) frames. Malformed input raises `PacketError` (batch parsing
marks it KIND_INVALID instead). `COMPILED` says which backend is in use;
`BACKENDS` holds both for the tests.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from netsched_client import _native
from netsched_client.core import _packet_py
from netsched_client.core.errors import PacketError

if TYPE_CHECKING:
    from netsched_client.core._packet import (
        ACK_ECN_FRAME,
        ACK_FRAME,
        DEFAULT_MAX_RANGES,
        F_DATAGRAM,
        F_DCID_LENGTH,
        F_DCID_OFFSET,
        F_KIND,
        F_LENGTH,
        F_OFFSET,
        F_PN_OFFSET,
        F_SCID_LENGTH,
        F_SCID_OFFSET,
        F_TOKEN_LENGTH,
        F_TOKEN_OFFSET,
        F_VERSION,
        KIND_HANDSHAKE,
        KIND_INITIAL,
        KIND_INVALID,
        KIND_ONE_RTT,
        KIND_RETRY,
        KIND_UNSUPPORTED_VERSION,
        KIND_VERSION_NEGOTIATION,
        KIND_ZERO_RTT,
        MAX_CID_LENGTH,
        MAX_PACKET_NUMBER,
        MAX_PATH_ID,
        MAX_VARINT,
        PATH_ACK_ECN_FRAME,
        PATH_ACK_FRAME,
        RECORD_FIELDS,
        RETRY_TAG_LENGTH,
        VERSION_1,
        VERSION_2,
        VERSION_NEGOTIATION,
        CidMap,
        RangeSet,
        build_long_header,
        build_short_header,
        decode_ack,
        decode_packet_number,
        decode_varint,
        encode_ack,
        encode_packet_number,
        encode_varint,
        parse_buffer,
        parse_datagrams,
        parse_packet,
    )

    COMPILED: bool
    BACKENDS: dict[str, ModuleType]
else:
    _compiled = _native.load("netsched_client.core._packet")
    COMPILED = _compiled is not None
    BACKENDS = {"python": _packet_py} | ({"cython": _compiled} if COMPILED else {})
    _core = _compiled if COMPILED else _packet_py
    globals().update({name: getattr(_core, name) for name in _packet_py.__all__})

__all__ = [
    "ACK_ECN_FRAME",
    "ACK_FRAME",
    "BACKENDS",
    "COMPILED",
    "DEFAULT_MAX_RANGES",
    "F_DATAGRAM",
    "F_DCID_LENGTH",
    "F_DCID_OFFSET",
    "F_KIND",
    "F_LENGTH",
    "F_OFFSET",
    "F_PN_OFFSET",
    "F_SCID_LENGTH",
    "F_SCID_OFFSET",
    "F_TOKEN_LENGTH",
    "F_TOKEN_OFFSET",
    "F_VERSION",
    "KIND_HANDSHAKE",
    "KIND_INITIAL",
    "KIND_INVALID",
    "KIND_ONE_RTT",
    "KIND_RETRY",
    "KIND_UNSUPPORTED_VERSION",
    "KIND_VERSION_NEGOTIATION",
    "KIND_ZERO_RTT",
    "MAX_CID_LENGTH",
    "MAX_PACKET_NUMBER",
    "MAX_PATH_ID",
    "MAX_VARINT",
    "PATH_ACK_ECN_FRAME",
    "PATH_ACK_FRAME",
    "RECORD_FIELDS",
    "RETRY_TAG_LENGTH",
    "VERSION_1",
    "VERSION_2",
    "VERSION_NEGOTIATION",
    "CidMap",
    "PacketError",
    "RangeSet",
    "build_long_header",
    "build_short_header",
    "decode_ack",
    "decode_packet_number",
    "decode_varint",
    "encode_ack",
    "encode_packet_number",
    "encode_varint",
    "parse_buffer",
    "parse_datagrams",
    "parse_packet",
]
