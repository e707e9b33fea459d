"""The exceptions of the packet layer, shared by the compiled core and its pure-Python reference."""

from __future__ import annotations


class PacketError(ValueError):
    """Malformed input: a header, packet number, varint or frame that does not parse or build."""


class CryptoError(PacketError):
    """A packet that does not open: authentication failed, or too short to sample or hold a tag."""
