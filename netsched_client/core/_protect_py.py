"""Packet protection in pure Python over `cryptography`: the reference of `_protect.pyx`.

Same API and results as the compiled module; see `protection.py`.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from netsched_client.core._packet_py import MAX_PACKET_NUMBER, MAX_PATH_ID, decode_packet_number
from netsched_client.core.errors import CryptoError, PacketError

__all__ = ["CIPHERS", "SAMPLE_LENGTH", "TAG_LENGTH", "PacketProtection"]

_Buffer = bytes | bytearray | memoryview

TAG_LENGTH = 16
SAMPLE_LENGTH = 16
CIPHERS = ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305")
_KEY_LENGTHS = {"aes-128-gcm": 16, "aes-256-gcm": 32, "chacha20-poly1305": 32}


class PacketProtection:
    """One direction's packet protection: an AEAD with its key and IV, and a header protection key.

    `seal` protects a packet, `open` removes the protection of a received one.
    The AEAD nonce is the IV XOR (path ID (32 bits) || packet number (64
    bits)), draft-ietf-quic-multipath-21 §2.4: path 0 (and single-path QUIC)
    gives RFC 9001's nonce.
    """

    __slots__ = ("_aead", "_cipher", "_hp", "_iv")

    def __init__(self, cipher: str, key: bytes, iv: bytes, hp_key: bytes) -> None:
        if cipher not in _KEY_LENGTHS:
            raise PacketError(f"cipher {cipher!r}")
        size = _KEY_LENGTHS[cipher]
        if len(key) != size or len(hp_key) != size or len(iv) != 12:
            raise PacketError(f"{cipher}: key, IV or header protection key of the wrong length")
        self._cipher = cipher
        self._iv = int.from_bytes(iv, "big")
        if cipher == "chacha20-poly1305":
            self._aead: AESGCM | ChaCha20Poly1305 = ChaCha20Poly1305(key)
        else:
            self._aead = AESGCM(key)
        # Keyed once: ECB keeps no state between blocks, ChaCha20 takes each sample as its nonce.
        if cipher == "chacha20-poly1305":
            self._hp = Cipher(algorithms.ChaCha20(hp_key, bytes(SAMPLE_LENGTH)), None).encryptor()
        else:
            self._hp = Cipher(algorithms.AES(hp_key), modes.ECB()).encryptor()

    @property
    def cipher(self) -> str:
        return self._cipher

    def _mask(self, sample: bytes) -> bytes:
        if self._cipher == "chacha20-poly1305":
            self._hp.reset_nonce(sample)
            return self._hp.update(bytes(5))
        return self._hp.update(sample)[:5]

    def _nonce(self, packet_number: int, path_id: int) -> bytes:
        if not 0 <= packet_number <= MAX_PACKET_NUMBER or not 0 <= path_id <= MAX_PATH_ID:
            raise PacketError(f"packet number {packet_number}, path ID {path_id}")
        return (self._iv ^ (path_id << 64 | packet_number)).to_bytes(12, "big")

    def seal(
        self, header: _Buffer, payload: _Buffer, packet_number: int, path_id: int = 0
    ) -> bytes:
        """The protected packet: `header` (unprotected, ending with the truncated packet
        number whose length its first byte gives) and `payload` encrypted, tag appended.

        The payload must hold at least 4 - (packet number length) bytes, so the
        header protection sample fits (RFC 9001 §5.4.2); the caller pads.
        """
        header = bytes(header)
        if not header:
            raise PacketError("seal: empty header")
        pn_length = (header[0] & 3) + 1
        pn_offset = len(header) - pn_length
        if pn_offset < 1:
            raise PacketError("seal: header shorter than its packet number")
        if pn_length + len(payload) < 4:
            raise PacketError("seal: payload too short to sample")
        nonce = self._nonce(packet_number, path_id)
        body = self._aead.encrypt(nonce, bytes(payload), header)
        packet = bytearray(header + body)
        mask = self._mask(bytes(packet[pn_offset + 4 : pn_offset + 4 + SAMPLE_LENGTH]))
        packet[0] ^= mask[0] & (0x0F if packet[0] & 0x80 else 0x1F)
        for i in range(pn_length):
            packet[pn_offset + i] ^= mask[1 + i]
        return bytes(packet)

    def open(
        self, packet: _Buffer, pn_offset: int, largest_pn: int, path_id: int = 0
    ) -> tuple[int, int, bytes]:
        """(first byte unprotected, full packet number, plaintext) of one protected packet.

        `pn_offset` comes from the packet's record (F_PN_OFFSET, relative to the
        packet); `largest_pn` is the largest packet number received in its space
        (-1: none). CryptoError when it does not authenticate or is too short.
        """
        size = len(packet)
        if pn_offset < 1 or pn_offset + 4 + SAMPLE_LENGTH > size:
            raise CryptoError("open: packet too short to sample")
        if not -1 <= largest_pn <= MAX_PACKET_NUMBER:
            raise PacketError(f"largest packet number {largest_pn}")
        mask = self._mask(bytes(packet[pn_offset + 4 : pn_offset + 4 + SAMPLE_LENGTH]))
        first = packet[0] ^ (mask[0] & (0x0F if packet[0] & 0x80 else 0x1F))
        pn_length = (first & 3) + 1
        truncated = 0
        header = bytearray(packet[: pn_offset + pn_length])
        header[0] = first
        for i in range(pn_length):
            header[pn_offset + i] ^= mask[1 + i]
            truncated = truncated << 8 | header[pn_offset + i]
        pn = decode_packet_number(truncated, pn_length, largest_pn)
        try:
            plain = self._aead.decrypt(
                self._nonce(pn, path_id), bytes(packet[pn_offset + pn_length :]), bytes(header)
            )
        except InvalidTag:
            raise CryptoError("open: authentication failed") from None
        return first, pn, plain
