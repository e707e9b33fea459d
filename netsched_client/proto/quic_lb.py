"""Routable connection IDs (draft-ietf-quic-load-balancers-21 and its successor).

A CID is the first octet (3 config-rotation bits, then 5 bits of length
self-description: CID length - 1), then a plaintext block of server ID and
nonce. Without a key the block goes on the wire as it is, and any load
balancer, or the kernel's SO_REUSEPORT steering program
(netsched_edge/workers.py), reads the server ID in it. With a 16-byte key the
block is encrypted, so that only holders of the key learn the server and two
CIDs of one connection cannot be linked by an observer:

- server ID + nonce = 16 bytes: one AES-128-ECB block (single pass);
- any other length (5..19): a four-round Feistel network whose round function
  is AES-128-ECB over `expand(half)`; a load balancer needs three rounds back
  when the server ID fits in the left half, four otherwise.

`QuicLbScheme` is what a configuration agent hands every load balancer and
server (rotation, lengths, key); `QuicLbConfig` adds one server's ID and makes
its CIDs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

UNROUTABLE_ROTATION = 0b111  # reserved: "no routing information in this CID"
MIN_NONCE = 4
MAX_PLAINTEXT = 19  # a QUIC v1 CID is at most 20 bytes, one of them the first octet
KEY_BYTES = 16
AES_BLOCK = 16


@dataclass(frozen=True, slots=True)
class QuicLbScheme:
    """One QUIC-LB configuration, shared by every server and load balancer using it."""

    server_id_length: int
    nonce_length: int
    config_rotation: int = 0
    key: bytes | None = None
    _encrypt: CipherContext | None = field(default=None, init=False, repr=False, compare=False)
    _decrypt: CipherContext | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.config_rotation < UNROUTABLE_ROTATION:
            raise ValueError(f"config_rotation must be 0..6, got {self.config_rotation}")
        if self.server_id_length < 1:
            raise ValueError(f"server ID must be 1 byte or more, got {self.server_id_length}")
        if self.nonce_length < MIN_NONCE:
            raise ValueError(f"nonce must be {MIN_NONCE} bytes or more, got {self.nonce_length}")
        if self.plaintext_length > MAX_PLAINTEXT:
            raise ValueError(
                f"server ID + nonce must be at most {MAX_PLAINTEXT} bytes,"
                f" got {self.plaintext_length}"
            )
        if self.key is not None:
            if len(self.key) != KEY_BYTES:
                raise ValueError(f"key must be {KEY_BYTES} bytes, got {len(self.key)}")
            # ECB keeps no state between blocks: one context of each serves every CID.
            cipher = Cipher(algorithms.AES(self.key), modes.ECB())
            object.__setattr__(self, "_encrypt", cipher.encryptor())
            object.__setattr__(self, "_decrypt", cipher.decryptor())

    @property
    def plaintext_length(self) -> int:
        return self.server_id_length + self.nonce_length

    @property
    def cid_length(self) -> int:
        return 1 + self.plaintext_length

    def first_octet(self) -> int:
        return self.config_rotation << 5 | (self.cid_length - 1)

    def encode(self, server_id: bytes, nonce: bytes) -> bytes:
        """The CID carrying `server_id` with this `nonce` (deterministic)."""
        if len(server_id) != self.server_id_length or len(nonce) != self.nonce_length:
            raise ValueError("server ID or nonce of the wrong length for this scheme")
        return bytes([self.first_octet()]) + self._seal(server_id + nonce)

    def decode(self, cid: bytes) -> tuple[bytes, bytes] | None:
        """(server ID, nonce) of a CID made with this scheme; None for a CID of
        another length or config rotation (unroutable ones included)."""
        if not self._is_ours(cid):
            return None
        plain = self._open(cid[1 : self.cid_length], rounds=4)
        return plain[: self.server_id_length], plain[self.server_id_length :]

    def server_id(self, cid: bytes) -> bytes | None:
        """The server ID only, as a load balancer extracts it (the fewest AES passes)."""
        if not self._is_ours(cid):
            return None
        block = cid[1 : self.cid_length]
        # Three Feistel rounds back give the left half; the fourth only when the
        # server ID reaches into the right half.
        rounds = 3 if self.server_id_length <= self.plaintext_length // 2 else 4
        return self._open(block, rounds)[: self.server_id_length]

    def _is_ours(self, cid: bytes) -> bool:
        return len(cid) >= self.cid_length and cid[0] >> 5 == self.config_rotation

    def _seal(self, plain: bytes) -> bytes:
        if self._encrypt is None:
            return plain
        if len(plain) == AES_BLOCK:
            return self._encrypt.update(plain)
        return _Feistel(self._encrypt, len(plain)).passes(plain, (1, 2, 3, 4))

    def _open(self, block: bytes, rounds: int) -> bytes:
        """The plaintext block; with rounds=3 only its left half is right."""
        if self._encrypt is None:
            return block
        if len(block) == AES_BLOCK:
            assert self._decrypt is not None
            return self._decrypt.update(block)
        return _Feistel(self._encrypt, len(block)).passes(block, (4, 3, 2, 1)[:rounds])


class _Feistel:
    """The four-pass algorithm's halves and round function for one block length.

    An odd length splits its middle octet: the left half keeps its high nibble,
    the right half its low one, and each half's other nibble stays zero.
    """

    __slots__ = ("_aes", "half", "left_mask", "length", "odd", "right_mask")

    def __init__(self, aes: CipherContext, length: int) -> None:
        self._aes = aes
        self.length = length
        self.half = (length + 1) // 2
        self.odd = length % 2 == 1
        self.left_mask = (0xF0 if self.odd else 0xFF, -1)  # (mask, index of the octet)
        self.right_mask = (0x0F if self.odd else 0xFF, 0)

    def split(self, block: bytes) -> tuple[bytes, bytes]:
        left = _masked(block[: self.half], self.left_mask)
        right = _masked(block[self.length - self.half :], self.right_mask)
        return left, right

    def join(self, left: bytes, right: bytes) -> bytes:
        if not self.odd:
            return left + right
        return left[:-1] + bytes([left[-1] | right[0]]) + right[1:]

    def passes(self, block: bytes, order: tuple[int, ...]) -> bytes:
        """Run the passes in `order` (1-4 encrypts, 4-1 decrypts): an odd pass mixes
        the left half into the right one, an even pass the right into the left."""
        left, right = self.split(block)
        for pass_ in order:
            if pass_ % 2:
                right = self.round(right, pass_, left, self.right_mask)
            else:
                left = self.round(left, pass_, right, self.left_mask)
        return self.join(left, right)

    def round(self, target: bytes, pass_: int, source: bytes, mask: tuple[int, int]) -> bytes:
        """target XOR truncate(AES(expand(length, pass, source)), half), masked."""
        expanded = source + bytes(AES_BLOCK - 2 - self.half) + bytes([self.length, pass_])
        pad = self._aes.update(expanded)
        mixed = bytes(a ^ b for a, b in zip(target, pad, strict=False))
        return _masked(mixed, mask)


def _masked(half: bytes, mask: tuple[int, int]) -> bytes:
    bits, index = mask
    if bits == 0xFF:
        return half
    out = bytearray(half)
    out[index] &= bits
    return bytes(out)


@dataclass(frozen=True, slots=True)
class QuicLbConfig:
    """One server's side of a scheme: its server ID, and the CIDs it issues."""

    server_id: bytes
    config_rotation: int = 0
    cid_length: int = 8
    key: bytes | None = None
    scheme: QuicLbScheme = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nonce_length = self.cid_length - 1 - len(self.server_id)
        if nonce_length < MIN_NONCE:
            raise ValueError(
                f"cid_length {self.cid_length} leaves no room for a {MIN_NONCE}-byte nonce"
            )
        scheme = QuicLbScheme(len(self.server_id), nonce_length, self.config_rotation, self.key)
        object.__setattr__(self, "scheme", scheme)

    def first_octet(self) -> int:
        return self.scheme.first_octet()

    def generate(self) -> bytes:
        """A fresh CID: random nonce (unique with overwhelming odds: at least 32 bits)."""
        return self.scheme.encode(self.server_id, os.urandom(self.scheme.nonce_length))


def server_id_of(cid: bytes, server_id_length: int) -> bytes | None:
    """The server ID a plaintext CID carries, or None when the CID says it is unroutable."""
    if len(cid) < 1 + server_id_length or cid[0] >> 5 == UNROUTABLE_ROTATION:
        return None
    return cid[1 : 1 + server_id_length]
