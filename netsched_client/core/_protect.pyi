"""Packet protection in C over OpenSSL's libcrypto (EVP): AEAD and header protection."""

from typing import Final

_Buffer = bytes | bytearray | memoryview

TAG_LENGTH: Final[int]
SAMPLE_LENGTH: Final[int]
CIPHERS: Final[tuple[str, ...]]

class PacketProtection:
    def __init__(self, cipher: str, key: bytes, iv: bytes, hp_key: bytes) -> None: ...
    @property
    def cipher(self) -> str: ...
    def seal(
        self, header: _Buffer, payload: _Buffer, packet_number: int, path_id: int = 0
    ) -> bytes: ...
    def open(
        self, packet: _Buffer, pn_offset: int, largest_pn: int, path_id: int = 0
    ) -> tuple[int, int, bytes]: ...
