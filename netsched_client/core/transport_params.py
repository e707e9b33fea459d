"""QUIC transport parameters (RFC 9000 §18): the TLS extension's payload, encoded and checked.

Each parameter is (id varint, length varint, value). Integer parameters are
varints; connection IDs and the reset token are bytes; the flag
`disable_active_migration` is empty. Parameters we do not know are skipped
(§18.1: reserved ids must be ignored); a value that does not parse, a
repeated id, or a value out of its range (§18.2) is
`TransportParameterError` (TRANSPORT_PARAMETER_ERROR).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

from netsched_client.core.errors import PacketError
from netsched_client.core.packet import MAX_CID_LENGTH, decode_varint, encode_varint


class TransportParameterError(PacketError):
    """Transport parameters that break §18.2 or §7.3: TRANSPORT_PARAMETER_ERROR."""

    error_code = 0x08


@dataclass(frozen=True, slots=True)
class TransportParameters:
    """The parameters this core sends and reads; the defaults are §18.2's."""

    original_destination_connection_id: bytes | None = None
    max_idle_timeout: int = 0  # milliseconds; 0: none
    stateless_reset_token: bytes | None = None
    max_udp_payload_size: int = 65527
    initial_max_data: int = 0
    initial_max_stream_data_bidi_local: int = 0
    initial_max_stream_data_bidi_remote: int = 0
    initial_max_stream_data_uni: int = 0
    initial_max_streams_bidi: int = 0
    initial_max_streams_uni: int = 0
    ack_delay_exponent: int = 3
    max_ack_delay: int = 25  # milliseconds
    disable_active_migration: bool = False
    active_connection_id_limit: int = 2
    initial_source_connection_id: bytes | None = None
    retry_source_connection_id: bytes | None = None


# id -> (field, kind): "int" varint, "cid" bytes up to 20, "token" 16 bytes, "flag" empty.
_IDS: Final[dict[int, tuple[str, str]]] = {
    0x00: ("original_destination_connection_id", "cid"),
    0x01: ("max_idle_timeout", "int"),
    0x02: ("stateless_reset_token", "token"),
    0x03: ("max_udp_payload_size", "int"),
    0x04: ("initial_max_data", "int"),
    0x05: ("initial_max_stream_data_bidi_local", "int"),
    0x06: ("initial_max_stream_data_bidi_remote", "int"),
    0x07: ("initial_max_stream_data_uni", "int"),
    0x08: ("initial_max_streams_bidi", "int"),
    0x09: ("initial_max_streams_uni", "int"),
    0x0A: ("ack_delay_exponent", "int"),
    0x0B: ("max_ack_delay", "int"),
    0x0C: ("disable_active_migration", "flag"),
    0x0E: ("active_connection_id_limit", "int"),
    0x0F: ("initial_source_connection_id", "cid"),
    0x10: ("retry_source_connection_id", "cid"),
}
_DEFAULTS: Final = TransportParameters()
# §18.2: the ranges a peer's values must respect.
_MAX_STREAMS: Final = 1 << 60
_MAX_ACK_DELAY_EXPONENT: Final = 20
_MAX_ACK_DELAY: Final = 1 << 14
_MIN_UDP_PAYLOAD: Final = 1200
_MIN_CID_LIMIT: Final = 2


def encode(params: TransportParameters) -> bytes:
    """The extension payload: every parameter that is set and differs from its default."""
    parts = []
    for param_id, (name, kind) in _IDS.items():
        value = getattr(params, name)
        if value is None or value == getattr(_DEFAULTS, name):
            continue
        if kind == "int":
            body = encode_varint(value)
        elif kind == "flag":
            body = b""
        else:
            body = bytes(value)
        parts += [encode_varint(param_id), encode_varint(len(body)), body]
    return b"".join(parts)


def decode(data: bytes) -> TransportParameters:
    """The parameters in an extension payload; `TransportParameterError` when malformed."""
    values: dict[str, object] = {}
    seen: set[int] = set()
    pos = 0
    try:
        while pos < len(data):
            param_id, pos = decode_varint(data, pos)
            length, pos = decode_varint(data, pos)
            if pos + length > len(data):
                raise TransportParameterError(f"parameter {param_id:#x} beyond the extension")
            if param_id in seen:
                raise TransportParameterError(f"parameter {param_id:#x} repeated")
            seen.add(param_id)
            body = data[pos : pos + length]
            pos += length
            if param_id in _IDS:
                name, kind = _IDS[param_id]
                values[name] = _value(param_id, kind, body)
    except TransportParameterError:
        raise
    except PacketError as exc:
        raise TransportParameterError(f"transport parameters: {exc}") from None
    params = dataclasses.replace(_DEFAULTS, **values)  # type: ignore[arg-type]
    _check_ranges(params)
    return params


def _value(param_id: int, kind: str, body: bytes) -> object:
    if kind == "int":
        value, end = decode_varint(body, 0)
        if end != len(body):
            raise TransportParameterError(f"parameter {param_id:#x}: trailing bytes")
        return value
    if kind == "flag":
        if body:
            raise TransportParameterError(f"parameter {param_id:#x} carries a value")
        return True
    if kind == "token" and len(body) != 16:
        raise TransportParameterError("stateless_reset_token is 16 bytes")
    if kind == "cid" and len(body) > MAX_CID_LENGTH:
        raise TransportParameterError(f"parameter {param_id:#x}: connection ID too long")
    return bytes(body)


def _check_ranges(params: TransportParameters) -> None:
    if params.max_udp_payload_size < _MIN_UDP_PAYLOAD:
        raise TransportParameterError("max_udp_payload_size below 1200")
    if params.ack_delay_exponent > _MAX_ACK_DELAY_EXPONENT:
        raise TransportParameterError("ack_delay_exponent above 20")
    if params.max_ack_delay >= _MAX_ACK_DELAY:
        raise TransportParameterError("max_ack_delay of 2^14 or more")
    if params.active_connection_id_limit < _MIN_CID_LIMIT:
        raise TransportParameterError("active_connection_id_limit below 2")
    if max(params.initial_max_streams_bidi, params.initial_max_streams_uni) > _MAX_STREAMS:
        raise TransportParameterError("initial_max_streams above 2^60")
