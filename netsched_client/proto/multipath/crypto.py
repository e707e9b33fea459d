"""1-RTT packet protection per path (draft-ietf-quic-multipath-21 §2.4).

The nonce is IV XOR (path_id(32) || 0b00 || pn(62)). aioquic forms its nonce
as `iv ^ packet_number`, so handing its AEAD `pn | path_id << 64` as the
packet number yields exactly the multipath nonce. `PathCrypto` is a view of
the connection's one 1-RTT `CryptoPair`: keys, key phase and key updates stay
shared by all paths, only the nonce differs.
"""

from __future__ import annotations

from aioquic.quic.crypto import CryptoContext, CryptoPair, next_key_phase
from aioquic.quic.packet import decode_packet_number, is_long_header

PN_BITS = 64  # path ID sits above the 62-bit packet number and 2 zero bits


def path_nonce(iv: bytes, path_id: int, packet_number: int) -> bytes:
    """The AEAD nonce of a 1-RTT packet on a path (for tests and documentation)."""
    ppn = path_id << PN_BITS | packet_number
    return (int.from_bytes(iv, "big") ^ ppn).to_bytes(len(iv), "big")


class PathCrypto:
    """The 1-RTT CryptoPair as seen from one path ID (same interface aioquic uses)."""

    def __init__(self, base: CryptoPair, path_id: int) -> None:
        self.base = base
        self.path_id = path_id
        self._shift = path_id << PN_BITS
        self.aead_tag_size = base.aead_tag_size

    @property
    def recv(self) -> CryptoContext:
        return self.base.recv

    @property
    def send(self) -> CryptoContext:
        return self.base.send

    @property
    def key_phase(self) -> int:
        return self.base.key_phase

    def update_key(self) -> None:
        self.base.update_key()

    def teardown(self) -> None:
        self.base.teardown()

    def encrypt_packet(
        self, plain_header: bytes, plain_payload: bytes, packet_number: int
    ) -> bytes:
        if self.base._update_key_requested:
            self.base._update_key("local_update")
        send = self.base.send
        assert send.aead is not None and send.hp is not None, "1-RTT keys not available"
        protected = send.aead.encrypt(plain_payload, plain_header, packet_number | self._shift)
        return send.hp.apply(plain_header, protected)

    def decrypt_packet(
        self, packet: bytes, encrypted_offset: int, expected_packet_number: int
    ) -> tuple[bytes, bytes, int]:
        recv = self.base.recv
        if recv.aead is None or recv.hp is None:
            from aioquic.quic.crypto import KeyUnavailableError

            raise KeyUnavailableError("Decryption key is not available")
        plain_header, truncated = recv.hp.remove(packet, encrypted_offset)
        first_byte = plain_header[0]
        pn_length = (first_byte & 0x03) + 1
        packet_number = decode_packet_number(truncated, pn_length * 8, expected_packet_number)
        context = recv
        if not is_long_header(first_byte) and (first_byte & 4) >> 2 != recv.key_phase:
            context = next_key_phase(recv)
        assert context.aead is not None
        payload = context.aead.decrypt(
            packet[len(plain_header) :], plain_header, packet_number | self._shift
        )
        if context is not recv:
            self.base._update_key("remote_update")
        return plain_header, payload, packet_number
