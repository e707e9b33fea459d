"""The `netsched_fec` transport parameter and what two endpoints agree from it (sans-IO).

draft-michel-quic-fec negotiates FEC with three parameters (enable_fec,
decoder_fec_scheme, initial_coding_window); we carry the same facts in one, so
that FEC is either fully described or absent:

    netsched_fec (0x4E464543) = FEC Scheme (i), then for scheme 1:
        Symbol Size (i), Max Coding Window (i), Initial Decoding Window (i)

Scheme 1 is RFC 8681's sliding-window RLC over GF(2^8) (its FEC Encoding ID
10) as `netsched_client.fec.codec` implements it. Each endpoint describes its
own encoder and decoder; `negotiate` takes the smaller value wherever the two
must agree, so a peer can never make us hold more than we offered. A scheme we
do not implement means "no FEC", not an error, so that a later scheme can be
offered without breaking this version. docs/FEC.md §2 is the normative text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aioquic.buffer import Buffer, BufferReadError, encode_uint_var

from netsched_client.fec.errors import FecError
from netsched_client.fec.rlc import MAX_SYMBOL_SIZE, MAX_WINDOW, MIN_SYMBOL_SIZE

# "NFEC"; a 4-byte value, so the 8-byte varint form on the wire. Not of the
# reserved greasing form 31 * N + 27 (it is 31 * N + 23).
FEC_TRANSPORT_PARAMETER: Final = 0x4E464543
SCHEME_RLC_GF256: Final = 1
MAX_PARAMETER_BYTES: Final = 32  # four 8-byte varints

# A REPAIR frame and its short-header packet fit a 1200-byte datagram (QUIC's
# smallest max_udp_payload_size): 1200 - 41 (20-byte CID, 4-byte PN, 16-byte
# AEAD tag, first byte) - 20 (REPAIR_MAX_OVERHEAD) = 1139, rounded down to a
# multiple of 32, the AVX2 kernel's stride.
DEFAULT_SYMBOL_SIZE: Final = 1120
DEFAULT_WINDOW: Final = 256

_NAME: Final = "netsched_fec"


class FecTransportParameterError(FecError):
    """The netsched_fec value is malformed (TRANSPORT_PARAMETER_ERROR)."""


def _check(name: str, value: object, low: int, high: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if not ok:
        raise FecTransportParameterError(
            f"{_NAME}.{name}: must be an int in {low}..{high} (got {value!r})"
        )


@dataclass(frozen=True, slots=True)
class FecParameters:
    """What one endpoint offers for scheme 1 (RLC over GF(2^8))."""

    symbol_size: int = DEFAULT_SYMBOL_SIZE  # bytes per symbol, its 2-byte length included
    max_coding_window: int = DEFAULT_WINDOW  # our repairs never span more source symbols
    initial_decoding_window: int = DEFAULT_WINDOW  # source symbols our decoder holds; 0: none yet

    def __post_init__(self) -> None:
        _check("symbol_size", self.symbol_size, MIN_SYMBOL_SIZE, MAX_SYMBOL_SIZE)
        _check("max_coding_window", self.max_coding_window, 1, MAX_WINDOW)
        _check("initial_decoding_window", self.initial_decoding_window, 0, MAX_WINDOW)

    def encode(self) -> bytes:
        """The parameter's value (without its ID and length)."""
        fields = (
            SCHEME_RLC_GF256,
            self.symbol_size,
            self.max_coding_window,
            self.initial_decoding_window,
        )
        return b"".join(map(encode_uint_var, fields))


def decode_fec_parameters(value: bytes) -> FecParameters | None:
    """The peer's offer, or None when it offers only schemes we do not implement.

    Raises `FecTransportParameterError` for a value that is too long, truncated,
    has trailing bytes, or holds a field out of range.
    """
    if not 1 <= len(value) <= MAX_PARAMETER_BYTES:
        raise FecTransportParameterError(
            f"{_NAME}: value of {len(value)} bytes, expected 1..{MAX_PARAMETER_BYTES}"
        )
    buf = Buffer(data=value)
    try:
        if buf.pull_uint_var() != SCHEME_RLC_GF256:
            return None
        fields = (buf.pull_uint_var(), buf.pull_uint_var(), buf.pull_uint_var())
    except BufferReadError:
        raise FecTransportParameterError(f"{_NAME}: truncated value {value.hex()}") from None
    if not buf.eof():
        raise FecTransportParameterError(f"{_NAME}: {len(value) - buf.tell()} trailing bytes")
    return FecParameters(*fields)


@dataclass(frozen=True, slots=True)
class NegotiatedFec:
    """What both endpoints use once each has sent netsched_fec."""

    symbol_size: int  # both directions
    send_window: int  # our repairs span at most this many source symbols; 0: none
    receive_window: int  # the peer's repairs span at most this: size our decoder by it


def negotiate(local: FecParameters, peer: FecParameters | None) -> NegotiatedFec | None:
    """FEC as agreed with the peer, or None (plain QUIC) when the peer offered none.

    The peer's FEC_WINDOW frames later replace `send_window`; the bounds here hold
    at the start of the connection.
    """
    if peer is None:
        return None
    return NegotiatedFec(
        symbol_size=min(local.symbol_size, peer.symbol_size),
        send_window=min(local.max_coding_window, peer.initial_decoding_window),
        receive_window=min(peer.max_coding_window, local.initial_decoding_window),
    )
