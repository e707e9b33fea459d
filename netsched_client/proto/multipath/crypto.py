"""1-RTT packet protection per path (draft-ietf-quic-multipath-21 §2.4).

The nonce is IV XOR (path_id(32) || 0b00 || pn(62)). aioquic forms its nonce
as `iv ^ packet_number`, so handing its AEAD `pn | path_id << 64` as the
packet number yields exactly the multipath nonce. `PathCrypto` is a view of
the connection's one 1-RTT `CryptoPair`: keys, key phase and key updates stay
shared by all paths, only the nonce differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from aioquic._crypto import CryptoError
from aioquic.quic.crypto import CryptoContext, CryptoPair, KeyUnavailableError, next_key_phase
from aioquic.quic.packet import decode_packet_number, is_long_header

PN_BITS = 64  # path ID sits above the 62-bit packet number and 2 zero bits


def path_nonce(iv: bytes, path_id: int, packet_number: int) -> bytes:
    """The AEAD nonce of a 1-RTT packet on a path (for tests and documentation)."""
    ppn = path_id << PN_BITS | packet_number
    return (int.from_bytes(iv, "big") ^ ppn).to_bytes(len(iv), "big")


@dataclass(slots=True)
class KeyHistory:
    """The receive keys of the previous key phase, shared by all paths.

    Packets sent before a key update can arrive after it on a slower path, so
    the previous keys stay usable until `until` (3 x the largest PTO after the
    update, set by the connection, which owns the clock; draft-21 §2.5).
    """

    previous: CryptoContext | None = None
    until: float | None = None

    def retire(self, context: CryptoContext) -> None:
        kept = CryptoContext(key_phase=context.key_phase)
        kept.aead, kept.hp = context.aead, context.hp
        self.previous, self.until = kept, None

    def expire(self, now: float, hold: float) -> None:
        if self.previous is None:
            return
        if self.until is None:
            self.until = now + hold
        elif now >= self.until:
            self.previous = self.until = None


class PathCrypto:
    """The 1-RTT CryptoPair as seen from one path ID (same interface aioquic uses)."""

    def __init__(self, base: CryptoPair, path_id: int, history: KeyHistory | None = None) -> None:
        self.base = base
        self.path_id = path_id
        self.history = history or KeyHistory()
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
            raise KeyUnavailableError("Decryption key is not available")
        plain_header, truncated = recv.hp.remove(packet, encrypted_offset)
        first_byte = plain_header[0]
        pn_length = (first_byte & 0x03) + 1
        packet_number = decode_packet_number(truncated, pn_length * 8, expected_packet_number)
        nonce_pn = packet_number | self._shift
        body = packet[len(plain_header) :]
        phase = (first_byte & 4) >> 2
        if is_long_header(first_byte) or phase == recv.key_phase:
            return plain_header, self._open(recv, body, plain_header, nonce_pn), packet_number
        previous = self.history.previous
        if previous is not None and previous.key_phase == phase:
            # Most likely a packet sent before the last update, delayed on some path.
            try:
                return (
                    plain_header,
                    self._open(previous, body, plain_header, nonce_pn),
                    packet_number,
                )
            except CryptoError:
                pass
        payload = self._open(next_key_phase(recv), body, plain_header, nonce_pn)
        self.history.retire(recv)
        self.base._update_key("remote_update")
        return plain_header, payload, packet_number

    @staticmethod
    def _open(context: CryptoContext, body: bytes, header: bytes, nonce_pn: int) -> bytes:
        assert context.aead is not None
        return context.aead.decrypt(body, header, nonce_pn)
