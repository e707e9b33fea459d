"""The packet layer in C: varints, packet numbers, headers, batch parsing, ACK ranges and frames."""

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

_Buffer = bytes | bytearray | memoryview

VERSION_NEGOTIATION: Final[int]
VERSION_1: Final[int]
VERSION_2: Final[int]
KIND_ONE_RTT: Final[int]
KIND_INITIAL: Final[int]
KIND_ZERO_RTT: Final[int]
KIND_HANDSHAKE: Final[int]
KIND_RETRY: Final[int]
KIND_VERSION_NEGOTIATION: Final[int]
KIND_UNSUPPORTED_VERSION: Final[int]
KIND_INVALID: Final[int]
F_DATAGRAM: Final[int]
F_OFFSET: Final[int]
F_LENGTH: Final[int]
F_KIND: Final[int]
F_VERSION: Final[int]
F_DCID_OFFSET: Final[int]
F_DCID_LENGTH: Final[int]
F_SCID_OFFSET: Final[int]
F_SCID_LENGTH: Final[int]
F_TOKEN_OFFSET: Final[int]
F_TOKEN_LENGTH: Final[int]
F_PN_OFFSET: Final[int]
RECORD_FIELDS: Final[int]
MAX_CID_LENGTH: Final[int]
MAX_VARINT: Final[int]
MAX_PACKET_NUMBER: Final[int]
ACK_FRAME: Final[int]
ACK_ECN_FRAME: Final[int]
PATH_ACK_FRAME: Final[int]
PATH_ACK_ECN_FRAME: Final[int]
DEFAULT_MAX_RANGES: Final[int]
MAX_PATH_ID: Final[int]
RETRY_TAG_LENGTH: Final[int]

def encode_varint(value: int) -> bytes: ...
def decode_varint(data: _Buffer, offset: int = 0) -> tuple[int, int]: ...
def encode_packet_number(packet_number: int, largest_acked: int) -> tuple[int, int]: ...
def decode_packet_number(truncated: int, length: int, largest_pn: int) -> int: ...
def parse_packet(data: _Buffer, offset: int = 0, cid_length: int = 8) -> tuple[int, ...]: ...
def parse_buffer(data: _Buffer, segment_size: int, cid_length: int = 8) -> array[int]: ...
def parse_datagrams(datagrams: Sequence[_Buffer], cid_length: int = 8) -> array[int]: ...
def build_short_header(
    dcid: _Buffer, truncated_pn: int, pn_length: int, key_phase: bool = False, spin: bool = False
) -> bytes: ...
def build_long_header(
    kind: int,
    version: int,
    dcid: _Buffer,
    scid: _Buffer,
    token: _Buffer,
    payload_length: int,
    truncated_pn: int,
    pn_length: int,
) -> bytes: ...

class RangeSet:
    def __init__(self, ranges: Iterable[tuple[int, int]] = (), max_ranges: int = ...) -> None: ...
    @property
    def max_ranges(self) -> int: ...
    def add(self, start: int, stop: int) -> None: ...
    def add_packet(self, packet_number: int) -> None: ...
    def subtract(self, start: int, stop: int) -> None: ...
    def remove_below(self, packet_number: int) -> None: ...
    def largest(self) -> int: ...
    def smallest(self) -> int: ...
    def __contains__(self, packet_number: object) -> bool: ...
    def __len__(self) -> int: ...
    def __bool__(self) -> bool: ...
    def __iter__(self) -> Iterator[tuple[int, int]]: ...

def encode_ack(
    ranges: RangeSet,
    ack_delay: int,
    ecn: tuple[int, int, int] | None = None,
    path_id: int = -1,
    max_ranges: int = ...,
) -> bytes: ...
def decode_ack(
    data: _Buffer, offset: int = 0, max_ranges: int = ...
) -> tuple[tuple[int, int, RangeSet, int, tuple[int, int, int] | None], int]: ...
