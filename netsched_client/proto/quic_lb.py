"""Routable connection IDs (draft-ietf-quic-load-balancers-21, plaintext algorithm).

First octet: 3 config-rotation bits, then 5 bits of length self-description
(CID length - 1); then the server ID; then a random nonce. Any load balancer,
or the kernel's SO_REUSEPORT steering program (netsched_edge/workers.py),
reads the server ID and sends every packet of a connection, on every path,
to the same server without per-connection state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

UNROUTABLE_ROTATION = 0b111  # reserved: "no routing information in this CID"
MIN_NONCE = 4


@dataclass(frozen=True, slots=True)
class QuicLbConfig:
    server_id: bytes
    config_rotation: int = 0
    cid_length: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.config_rotation < UNROUTABLE_ROTATION:
            raise ValueError(f"config_rotation must be 0..6, got {self.config_rotation}")
        if not 1 <= len(self.server_id) <= 15:
            raise ValueError(f"server ID must be 1..15 bytes, got {len(self.server_id)}")
        if not 1 + len(self.server_id) + MIN_NONCE <= self.cid_length <= 20:
            raise ValueError(
                f"cid_length {self.cid_length} leaves no room for a {MIN_NONCE}-byte nonce"
            )

    def first_octet(self) -> int:
        return self.config_rotation << 5 | (self.cid_length - 1)

    def generate(self) -> bytes:
        nonce = os.urandom(self.cid_length - 1 - len(self.server_id))
        return bytes([self.first_octet()]) + self.server_id + nonce


def server_id_of(cid: bytes, server_id_length: int) -> bytes | None:
    """The server ID a routable CID carries, or None when the CID says it is unroutable."""
    if len(cid) < 1 + server_id_length or cid[0] >> 5 == UNROUTABLE_ROTATION:
        return None
    return cid[1 : 1 + server_id_length]
