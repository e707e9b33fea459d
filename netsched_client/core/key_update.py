"""1-RTT key phases (RFC 9001 §6): the keys both ways across key updates.

`KeyPhases` holds the current 1-RTT secrets and the key phase bit. The next
phase's receive keys are derived ahead (`keys.next_secret`), so a packet
that does not open with the current keys is tried with them: if it opens and
its key phase bit differs, the peer updated its keys and we follow in both
directions (§6.2). The previous phase's receive keys stay for reordered
packets until `discard_previous` (the connection's KEY_DISCARD timer, three
PTOs later, §6.5). Header protection keys never change (§6.1). We do not
start a key update ourselves yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from netsched_client.core.errors import PacketError
from netsched_client.core.keys import PacketKeys, next_secret, packet_keys
from netsched_client.core.protection import PacketProtection

KEY_PHASE_BIT = 0x04  # of a short header's first byte, unprotected


@dataclass(frozen=True, slots=True)
class Opened:
    first: int
    pn: int
    payload: bytes
    updated: bool  # this packet moved us to the peer's next key phase


class KeyPhases:
    """Both directions' 1-RTT keys, the next phase's derived ahead."""

    def __init__(
        self,
        version: int,
        cipher_suite: int,
        send_secret: bytes,
        recv_secret: bytes,
        make: Callable[[PacketKeys], PacketProtection],
    ) -> None:
        self._version = version
        self._suite = cipher_suite
        self._make = make
        first_send = packet_keys(version, cipher_suite, send_secret)
        first_recv = packet_keys(version, cipher_suite, recv_secret)
        self._send_hp = first_send.hp_key
        self._recv_hp = first_recv.hp_key
        self._send_secret = send_secret
        self._recv_secret = recv_secret
        self.phase = False  # the key phase bit we send and expect
        self.sealer = make(first_send)
        self.opener = make(first_recv)
        self.previous: PacketProtection | None = None
        self._next_opener = self._derive(next_secret(version, cipher_suite, recv_secret), False)

    def open(self, packet: bytes, pn_offset: int, largest_pn: int) -> Opened:
        """Opens a 1-RTT packet with the current keys, else the next phase's (a key update
        by the peer), else the previous phase's; `PacketError` when none opens it."""
        try:
            return Opened(*self.opener.open(packet, pn_offset, largest_pn, 0), False)
        except PacketError:
            pass
        try:
            first, pn, payload = self._next_opener.open(packet, pn_offset, largest_pn, 0)
        except PacketError:
            if self.previous is None:
                raise
            return Opened(*self.previous.open(packet, pn_offset, largest_pn, 0), False)
        if bool(first & KEY_PHASE_BIT) == self.phase:
            raise PacketError("key phase bit unchanged with the next phase's keys")
        self._update()
        return Opened(first, pn, payload, True)

    def discard_previous(self) -> None:
        self.previous = None

    def _update(self) -> None:
        self._send_secret = next_secret(self._version, self._suite, self._send_secret)
        self._recv_secret = next_secret(self._version, self._suite, self._recv_secret)
        self.previous = self.opener
        self.opener = self._next_opener
        self.sealer = self._derive(self._send_secret, True)
        self._next_opener = self._derive(
            next_secret(self._version, self._suite, self._recv_secret), False
        )
        self.phase = not self.phase

    def _derive(self, secret: bytes, sending: bool) -> PacketProtection:
        derived = packet_keys(self._version, self._suite, secret)
        hp_key = self._send_hp if sending else self._recv_hp
        return self._make(PacketKeys(derived.cipher, derived.key, derived.iv, hp_key))
