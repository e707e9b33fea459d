"""Packet-number spaces (RFC 9000 §12.3): Initial, Handshake and a path's 1-RTT space.

A `PacketSpace` holds what one space needs beyond a path: its keys both
ways, its CRYPTO streams, the received packets and ACK state, the sent
packets (a stage-2 `Ledger`) and, by packet number, the frames each sent
packet carried, to resolve acknowledgements and losses. The 1-RTT space of
path 0 borrows the path's `AckState` and `PathRecovery` (its ledger,
congestion controller and pacer); Initial and Handshake have a ledger of
their own on the path's RTT estimator and are not congestion controlled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from types import ModuleType

from netsched_client.core import stream
from netsched_client.core.key_update import KeyPhases
from netsched_client.core.ledger import AckResult, Ledger, LossResult
from netsched_client.core.path import AckState
from netsched_client.core.protection import PacketProtection
from netsched_client.core.recovery import PathRecovery
from netsched_client.core.tls_adapter import Epoch

# How much CRYPTO data a space buffers ahead of what TLS consumed (RFC 9000 §7.5: at
# least 4096; a certificate chain arrives whole in one flight).
CRYPTO_WINDOW = 1 << 16


class SentKind(Enum):
    CRYPTO = "crypto"
    STREAM = "stream"
    ACK = "ack"
    PING = "ping"
    MAX_DATA = "max_data"
    MAX_STREAM_DATA = "max_stream_data"
    MAX_STREAMS = "max_streams"
    RESET_STREAM = "reset_stream"
    STOP_SENDING = "stop_sending"
    NEW_CONNECTION_ID = "new_connection_id"
    RETIRE_CONNECTION_ID = "retire_connection_id"
    HANDSHAKE_DONE = "handshake_done"


@dataclass(frozen=True, slots=True)
class SentFrame:
    """A frame a packet carried, as much as its acknowledgement or loss needs: `number` is
    the stream ID (STREAM, MAX_STREAM_DATA, RESET_STREAM, STOP_SENDING), the largest
    packet acknowledged (ACK), the sequence (connection IDs) or 1 for bidirectional
    (MAX_STREAMS); `offset` is the error code of RESET_STREAM and STOP_SENDING."""

    kind: SentKind
    number: int = 0
    offset: int = 0
    length: int = 0
    fin: bool = False


class PacketSpace:
    """One packet-number space: keys, CRYPTO data, ACK state, sent packets."""

    def __init__(
        self,
        epoch: Epoch,
        kind: int,
        acks: AckState,
        ledger: Ledger,
        recovery: PathRecovery | None,
        backend: ModuleType = stream,
    ) -> None:
        self.epoch = epoch
        self.kind = kind  # the packet.KIND_* its packets have
        self.acks = acks
        self.ledger = ledger
        self.recovery = recovery  # the path's, for the 1-RTT space: congestion controlled
        self.crypto_send = backend.SendStream(-1, 0)
        self.crypto_recv = backend.RecvStream(CRYPTO_WINDOW)
        self.sealer: PacketProtection | None = None
        self.opener: PacketProtection | None = None
        self.key_phases: KeyPhases | None = None  # 1-RTT: the keys across key updates
        self.sent: dict[int, list[SentFrame]] = {}  # by packet number
        self.largest_received_time = math.inf  # when the largest packet number arrived
        self.probes = 0  # ack-eliciting packets the PTO asks for
        self.discarded = False

    def on_sent(self, pn: int, size: int, now: float, flags: int) -> None:
        if self.recovery is not None:
            self.recovery.on_sent(pn, size, now, flags, pn)
        else:
            self.ledger.on_sent(pn, now, size, flags, pn)

    def on_ack(
        self, ranges: Iterable[tuple[int, int]], ack_delay: float, now: float
    ) -> tuple[AckResult, LossResult]:
        if self.recovery is not None:
            return self.recovery.on_ack(ranges, ack_delay, now)
        acked = self.ledger.on_ack(ranges, ack_delay, now)
        return acked, self.ledger.detect_lost(now)

    def on_loss_timer(self, now: float) -> LossResult:
        """The losses the loss timer declares. For the 1-RTT space, an ACK of nothing
        through the recovery: it runs loss detection and tells the controller, and its
        result names the packets (`PathRecovery.on_timeout` keeps them to itself)."""
        if self.recovery is not None:
            return self.recovery.on_ack((), 0.0, now)[1]
        return self.ledger.detect_lost(now)

    def on_pto(self, now: float) -> None:
        """The PTO fired for this space: back off, and ask for probes (RFC 9002 §6.2.4)."""
        if self.recovery is not None:
            self.recovery.on_timeout(now)
        else:
            self.ledger.rtt.pto_count += 1
        self.probes = 1

    def loss_time(self) -> float:
        return math.inf if self.discarded else self.ledger.loss_time

    def pto_deadline(self) -> float:
        return math.inf if self.discarded else self.ledger.pto_deadline()

    def discard(self) -> None:
        """Drops the keys and what waits (RFC 9001 §4.9); the space sends nothing more."""
        self.discarded = True
        self.sealer = self.opener = None
        self.sent.clear()
        self.acks.on_ack_sent()
        self.probes = 0
        self.ledger.rtt.pto_count = 0  # RFC 9002 §A.11: dropping keys resets the backoff
