"""The exceptions of the packet layer, shared by the compiled core and its pure-Python reference."""

from __future__ import annotations


class PacketError(ValueError):
    """Malformed input: a header, packet number, varint or frame that does not parse or build."""


class CryptoError(PacketError):
    """A packet that does not open: authentication failed, or too short to sample or hold a tag."""


class FrameError(PacketError):
    """A frame that does not parse or build: truncated, or a value out of its range.

    The connection closes with FRAME_ENCODING_ERROR (RFC 9000 §20.1), the
    `error_code` of this class and of the transport errors below.
    """

    error_code = 0x07


class FlowControlError(PacketError):
    """The peer sent more than the credit it was given (RFC 9000 §4.1): FLOW_CONTROL_ERROR."""

    error_code = 0x03


class StreamStateError(PacketError):
    """A frame for a stream whose state does not allow it (RFC 9000 §19.8): STREAM_STATE_ERROR."""

    error_code = 0x05


class FinalSizeError(PacketError):
    """A stream's final size changed or was exceeded (RFC 9000 §4.5): FINAL_SIZE_ERROR."""

    error_code = 0x06


class ProtocolViolation(PacketError):
    """The peer broke a rule no more specific error names (RFC 9000 §20.1): PROTOCOL_VIOLATION."""

    error_code = 0x0A


class ConnectionIdLimitError(PacketError):
    """The peer gave more connection IDs than active_connection_id_limit, or left more
    retirements pending than we track (RFC 9000 §5.1.1, §5.1.2): CONNECTION_ID_LIMIT_ERROR."""

    error_code = 0x09


class PathStateError(ProtocolViolation):
    """A path event its state does not allow (core/path.py's table)."""
