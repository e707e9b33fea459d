"""A sans-IO QUIC v1/v2 connection over the core (#16, stage 4 part 2): one path, path 0.

Nothing here touches a socket, an event loop or a clock: every input carries
`now`. The driving contract, in the order a runtime calls it:

    Connection(config, random_bytes)       client or server (config.tls.is_client)
    connect(addr, now)                     client only: the first flight is queued
    receive(datagram, addr, now)           each datagram that arrives (never raises)
    next_event() -> Event | None           drain until None
    poll_transmit(now) -> [Transmit]       or datagrams_to_send(now): send them all
    get_timer() -> float | None            the next deadline (pure); sleep until it
    handle_timer(now)                      at that deadline, then drain and send again
    open_stream(), send_stream_data(...), reset_stream(...), stop_stream(...),
    close(now, ...) between those calls

Phases (`TRANSITIONS`; anything else raises `ConnectionStateError`):

    HANDSHAKING --HANDSHAKE_COMPLETE--> ESTABLISHED --HANDSHAKE_CONFIRMED--> CONFIRMED
    HANDSHAKING, ESTABLISHED, CONFIRMED --LOCAL_CLOSE--> CLOSING
                                        --PEER_CLOSE--> DRAINING
                                        --IDLE_TIMEOUT--> CLOSED
    CLOSING --PEER_CLOSE--> DRAINING;  CLOSING, DRAINING --CLOSE_TIMEOUT--> CLOSED

HANDSHAKE_COMPLETE: TLS finished here (RFC 9001 §4.1.1). HANDSHAKE_CONFIRMED:
at once on a server, on HANDSHAKE_DONE on a client (§4.1.2); the Handshake
keys go then, the Initial keys when a client first sends a Handshake packet
or a server first opens one (§4.9.1). LOCAL_CLOSE: we sent CONNECTION_CLOSE
(`close`, or an error in what the peer sent); a closing endpoint answers
each datagram with it again (RFC 9000 §10.2.1). PEER_CLOSE: the peer's
CONNECTION_CLOSE. CLOSE_TIMEOUT: three PTOs after either (§10.2).

The receive path: parse the datagram's packets (stage 1's records), check
the DCID, open with the space's keys, parse every frame through one table
(`frames.FRAMES` joined with `control_frames.ROWS`), record the packet
(duplicates dropped before any frame acts), then apply the frames. The send
path, per datagram: select the path -> build one packet per space with keys
(`frame_writer.FrameWriter` fills each; acknowledged and lost frames go back
through it) -> protect (packet
numbers, headers, padding, `seal`) -> batch equal-size datagrams for GSO.
Errors in what the peer sent close the connection with the RFC 9000 §20
code the exception carries (`error_code`).
"""

from __future__ import annotations

import math
import os
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from functools import partial
from types import ModuleType
from typing import Final

from netsched_client.core import (
    control_frames,
    frames,
    keys,
    ledger,
    packet,
    protection,
    stream,
    transport_params,
)
from netsched_client.core.cids import LocalCids, PeerCids
from netsched_client.core.control_frames import NOT_ACK_ELICITING, PATH_RESPONSE_FRAME
from netsched_client.core.errors import FlowControlError, PacketError, ProtocolViolation
from netsched_client.core.events import (
    ConnectionTerminated,
    Event,
    HandshakeCompleted,
    StreamDataReceived,
    StreamReset,
)
from netsched_client.core.frame_writer import (
    ACK_DELAY_EXPONENT,
    MIN_PAYLOAD,
    FrameWriter,
    put,
)
from netsched_client.core.key_update import KeyPhases
from netsched_client.core.ledger import FLAG_ACK_ELICITING, FLAG_IN_FLIGHT, LossResult
from netsched_client.core.packet import (
    F_DCID_LENGTH,
    F_DCID_OFFSET,
    F_KIND,
    F_LENGTH,
    F_OFFSET,
    F_PN_OFFSET,
    F_SCID_LENGTH,
    F_SCID_OFFSET,
    F_TOKEN_LENGTH,
    F_TOKEN_OFFSET,
    F_VERSION,
    KIND_HANDSHAKE,
    KIND_INITIAL,
    KIND_INVALID,
    KIND_ONE_RTT,
    KIND_RETRY,
    RECORD_FIELDS,
)
from netsched_client.core.path import (
    AckState,
    Address,
    Path,
    PathConfig,
    PathTuple,
    new_recovery,
)
from netsched_client.core.retry import check_retry
from netsched_client.core.spaces import PacketSpace, SentFrame, SentKind
from netsched_client.core.streams import StreamTable
from netsched_client.core.timers import TimerKind, Timers
from netsched_client.core.tls_adapter import Epoch, TlsAdapter, TlsConfig, TrafficKeys
from netsched_client.core.transport_params import TransportParameterError, TransportParameters
from netsched_client.proto.cc.base import PathCongestionController
from netsched_client.proto.cc.bbr import Bbr

# RFC 9000 §20.1 codes the connection raises itself.
NO_ERROR: Final = 0x00
INTERNAL_ERROR: Final = 0x01
PROTOCOL_VIOLATION: Final = 0x0A
FRAME_ENCODING_ERROR: Final = 0x07
APPLICATION_ERROR: Final = 0x0C
# RFC 9000 §14.1: datagrams carrying Initial packets are at least this long.
MIN_INITIAL_DATAGRAM: Final = 1200
# A server held by the 3x limit sends nothing smaller than this (an ACK and a little).
MIN_AMPLIFICATION_ROOM: Final = 64
# RFC 9000 §10.3: a stateless reset is at least 21 bytes (5 unpredictable, 16 token).
MIN_STATELESS_RESET: Final = 21
# RFC 9000 §7.2: a client's first Destination CID has at least 8 bytes.
MIN_ORIGINAL_DCID: Final = 8
# Datagrams one poll_transmit builds at most (the runtime polls again after sending).
MAX_BATCH: Final = 64
CLOSE_PTOS: Final = 3  # RFC 9000 §10.2: the closing and draining periods


class Phase(Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CONFIRMED = "confirmed"
    CLOSING = "closing"
    DRAINING = "draining"
    CLOSED = "closed"


class PhaseEvent(Enum):
    HANDSHAKE_COMPLETE = "handshake_complete"
    HANDSHAKE_CONFIRMED = "handshake_confirmed"
    LOCAL_CLOSE = "local_close"
    PEER_CLOSE = "peer_close"
    IDLE_TIMEOUT = "idle_timeout"
    CLOSE_TIMEOUT = "close_timeout"


_ENDINGS: Final = {
    PhaseEvent.LOCAL_CLOSE: Phase.CLOSING,
    PhaseEvent.PEER_CLOSE: Phase.DRAINING,
    PhaseEvent.IDLE_TIMEOUT: Phase.CLOSED,
}
TRANSITIONS: Final[dict[Phase, dict[PhaseEvent, Phase]]] = {
    Phase.HANDSHAKING: {PhaseEvent.HANDSHAKE_COMPLETE: Phase.ESTABLISHED, **_ENDINGS},
    Phase.ESTABLISHED: {PhaseEvent.HANDSHAKE_CONFIRMED: Phase.CONFIRMED, **_ENDINGS},
    Phase.CONFIRMED: dict(_ENDINGS),
    Phase.CLOSING: {PhaseEvent.PEER_CLOSE: Phase.DRAINING, PhaseEvent.CLOSE_TIMEOUT: Phase.CLOSED},
    Phase.DRAINING: {PhaseEvent.CLOSE_TIMEOUT: Phase.CLOSED},
    Phase.CLOSED: {},
}
LIVE: Final = frozenset({Phase.HANDSHAKING, Phase.ESTABLISHED, Phase.CONFIRMED})


class ConnectionStateError(RuntimeError):
    """A call or event the connection's phase does not allow."""


def next_phase(phase: Phase, event: PhaseEvent) -> Phase:
    try:
        return TRANSITIONS[phase][event]
    except KeyError:
        raise ConnectionStateError(f"{event.value} while {phase.value}") from None


class CryptoBufferExceeded(PacketError):
    """More CRYPTO data ahead of TLS than a space buffers (RFC 9000 §7.5)."""

    error_code = 0x0D


class Failure(Exception):
    """Why we close: an error code, the offending frame type (transport errors), a reason."""

    def __init__(
        self, error_code: int, frame_type: int, reason: str, application: bool = False
    ) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.frame_type = frame_type
        self.reason = reason
        self.application = application


@dataclass(frozen=True, slots=True)
class Backends:
    """The core modules a connection runs on: the facades (compiled where built), or one
    backend's modules for the tests. ACK frames always use the `packet` facade: the
    `AckState` keeps its ranges in the facade's `RangeSet`."""

    packet: ModuleType = packet
    protection: ModuleType = protection
    ledger: ModuleType = ledger
    stream: ModuleType = stream

    @classmethod
    def named(cls, name: str) -> Backends:
        """Every module's `name` backend ("python" or "cython")."""
        return cls(
            packet.BACKENDS[name],
            protection.BACKENDS[name],
            ledger.BACKENDS[name],
            stream.BACKENDS[name],
        )


def _default_controller(max_datagram_size: int) -> PathCongestionController:
    # Seeded: a connection's behaviour follows from its inputs alone.
    return Bbr(max_datagram_size=max_datagram_size, rng=random.Random(0))


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    tls: TlsConfig
    version: int = packet.VERSION_1
    cid_length: int = 8
    idle_timeout: float = 30.0  # seconds; 0: none
    max_data: int = 1 << 20  # the connection's initial receive window
    max_stream_data: int = 256 << 10  # each stream's
    max_window: int = 16 << 20  # how far the windows may grow
    max_streams_bidi: int = 100
    max_streams_uni: int = 100
    active_connection_id_limit: int = 4
    max_datagram_size: int = 1200
    initial_rtt: float = ledger.INITIAL_RTT
    max_ack_delay: float = ledger.MAX_ACK_DELAY
    controller: Callable[[int], PathCongestionController] = _default_controller


@dataclass(frozen=True, slots=True)
class Transmit:
    """Datagrams for one destination as one GSO run: `segment_size` each, the last may
    be shorter. The io layer sends it whole or splits it (`datagrams`)."""

    destination: Address
    segment_size: int
    data: bytes

    def datagrams(self) -> list[bytes]:
        size = self.segment_size
        return [self.data[start : start + size] for start in range(0, len(self.data), size)]


@dataclass(frozen=True, slots=True)
class Received:
    """The packet a frame arrived in, for its handler."""

    space: PacketSpace
    dcid: bytes
    now: float


Apply = Callable[[Received], None]
Parser = Callable[[bytes, int, int], tuple[Apply, int]]


@dataclass(slots=True)
class BuiltPacket:
    """A packet's plaintext and what it carries, between build and protect."""

    space: PacketSpace
    payload: bytearray
    frames: list[SentFrame]
    ack_eliciting: bool
    padded: bool = False
    pn: int = -1


def _noop(received: Received) -> None:
    del received


def _error_code(exc: PacketError, default: int) -> int:
    code = getattr(exc, "error_code", None)
    return code if isinstance(code, int) else default


class Connection:
    """One QUIC connection, client or server, on path 0. See the module's contract."""

    def __init__(
        self,
        config: ConnectionConfig,
        random_bytes: Callable[[int], bytes] = os.urandom,
        backends: Backends = Backends(),
    ) -> None:
        self.config = config
        self.is_client = config.tls.is_client
        self.version = config.version
        self.phase = Phase.HANDSHAKING
        self._random = random_bytes
        self._m = backends
        self._events: deque[Event] = deque()
        self._timers = Timers()
        self._tls: TlsAdapter | None = None
        self._path: Path | None = None
        self._spaces: dict[Epoch, PacketSpace] = {}
        self._host_cid = random_bytes(config.cid_length)
        self._original_dcid = b""
        self._peer_scid = b""  # the peer's first Source CID (its initial_source_connection_id)
        self._local_cids = LocalCids()
        self._peer_cids = PeerCids(config.active_connection_id_limit)
        self._peer: TransportParameters | None = None
        self._streams = StreamTable(
            self.is_client, self._local_parameters(b"", None), config.max_window, backends.stream
        )
        self._finished: set[int] = set()  # streams whose end was reported
        self._writer = FrameWriter(
            backends.stream, self._streams, self._local_cids, self._peer_cids
        )
        self._owed = self._writer.owed
        self._close: Failure | None = None
        self._close_due = False  # a CONNECTION_CLOSE is owed (closing: once per arrival)
        self._close_deadline = math.inf
        self._idle_since = 0.0
        self._idle_restart_on_send = False
        self._pacing_until = math.inf
        self._handshake_acked = False  # the peer acknowledged one of our Handshake packets
        self._one_rtt_secrets: dict[bool, TrafficKeys] = {}  # by "sending"
        self._key_discard_at = math.inf  # the previous key phase's receive keys go then
        # RFC 9000 §8.1: until the client's address is validated (its Handshake packet),
        # a server sends at most 3 times what it received.
        self._address_validated = self.is_client
        self._bytes_received = 0
        self._bytes_sent = 0
        self._packets_opened = 0  # packets that authenticated, all spaces
        self._retry_scid: bytes | None = None  # a client's: the Retry's Source CID
        self._retry_token = b""  # a client's: the token its Initials carry after a Retry
        self._table = self._frame_table()

    # -- the public surface ---------------------------------------------------------------

    @property
    def peer_transport_parameters(self) -> TransportParameters | None:
        return self._peer

    @property
    def host_cid(self) -> bytes:
        return self._host_cid

    def connect(self, addr: Address, now: float) -> None:
        """Client: starts the handshake towards `addr` (the first flight is then queued)."""
        if not self.is_client or self._tls is not None:
            raise ConnectionStateError("connect: a client, once")
        self._original_dcid = self._random(MIN_ORIGINAL_DCID)
        self._start(addr, self._original_dcid, b"", now)
        assert self._tls is not None
        self._tls.start()
        self._after_tls(now)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When `handle_timer` is due next (None: nothing armed). Pure."""
        deadline = self._timers.next_timer()
        return None if deadline is None else deadline.when

    def open_stream(self, unidirectional: bool = False) -> int:
        """Opens our next stream of that type; `StreamLimitError` past the peer's limit."""
        if self.phase not in LIVE:
            raise ConnectionStateError(f"open_stream while {self.phase.value}")
        return self._streams.open_local(unidirectional)

    def streams_available(self, unidirectional: bool = False) -> int:
        """How many more streams of that type the peer lets us open now."""
        count = self._streams.local_counts[not unidirectional]
        return count.limit - count.opened

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queues `data` on a stream we may send on (opened by `open_stream` or the peer)."""
        if self.phase not in LIVE:
            raise ConnectionStateError(f"send_stream_data while {self.phase.value}")
        sender = self._streams.send.get(stream_id)
        if sender is None:
            raise ValueError(f"stream {stream_id}: no sending side here")
        sender.write(data, end_stream)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Stops sending on a stream: what waits is dropped, RESET_STREAM goes out."""
        if self.phase not in LIVE:
            raise ConnectionStateError(f"reset_stream while {self.phase.value}")
        self._streams.reset(stream_id, error_code)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        """Asks the peer to stop sending on a stream (STOP_SENDING)."""
        if self.phase not in LIVE:
            raise ConnectionStateError(f"stop_stream while {self.phase.value}")
        self._streams.stop(stream_id, error_code)

    def close(
        self, now: float, error_code: int = NO_ERROR, reason: str = "", application: bool = True
    ) -> None:
        """Closes with CONNECTION_CLOSE (the application's, by default); no-op once closing."""
        if self.phase in LIVE:
            self._enter_closing(Failure(error_code, 0, reason, application), now)
            self._rearm(now)

    # -- receive ----------------------------------------------------------------------------

    def receive(self, datagram: bytes, addr: Address, now: float) -> None:
        """One datagram from `addr`. Nothing raises: what the peer got wrong closes the
        connection with the error RFC 9000 names; a bug closes it with INTERNAL_ERROR."""
        if self.phase in (Phase.DRAINING, Phase.CLOSED):
            return
        try:
            opened = self._packets_opened
            records = self._m.packet.parse_datagrams([datagram], self.config.cid_length)
            for index in range(0, len(records), RECORD_FIELDS):
                record = records[index : index + RECORD_FIELDS]
                if not self._receive_packet(datagram, record, addr, now):
                    break
            if self._packets_opened == opened and self._is_stateless_reset(datagram):
                self._on_stateless_reset(now)
            self._finished.difference_update(self._streams.release_closed())
        except Failure as failure:
            self._enter_closing(failure, now)
        except Exception as exc:  # a bug must close, not escape (h11's ERROR)
            self._enter_closing(Failure(INTERNAL_ERROR, 0, repr(exc)), now)
        if self.phase is Phase.CLOSING:
            self._close_due = True
        self._rearm(now)

    def _receive_packet(
        self, datagram: bytes, record: Iterable[int], addr: Address, now: float
    ) -> bool:
        """One packet of a datagram; False when the rest of the datagram is to be dropped."""
        fields = list(record)
        kind = fields[F_KIND]
        if kind == KIND_INVALID:
            return False
        if kind == KIND_RETRY:
            self._on_retry(datagram, fields)
            return False  # a Retry has no length: nothing can follow it
        if kind not in (KIND_INITIAL, KIND_HANDSHAKE, KIND_ONE_RTT):
            return True  # Version Negotiation, 0-RTT: not in this stage
        start = fields[F_OFFSET]
        data = datagram[start : start + fields[F_LENGTH]]
        dcid = datagram[fields[F_DCID_OFFSET] : fields[F_DCID_OFFSET] + fields[F_DCID_LENGTH]]
        scid = datagram[fields[F_SCID_OFFSET] : fields[F_SCID_OFFSET] + fields[F_SCID_LENGTH]]
        if not self._admits(fields, dcid, scid, len(datagram), addr, now):
            return True
        self._bytes_received += len(data)
        space = self._spaces.get(_EPOCHS[kind])
        if space is None or space.opener is None:
            return True  # no keys (yet, or any more): dropped, the peer will resend
        received = space.acks.received
        largest = received.largest() if received else -1
        opened = self._open(space, data, fields[F_PN_OFFSET] - start, largest, now)
        if opened is None:
            return True  # RFC 9001 §5.5: a packet that does not open is dropped
        first, pn, payload = opened
        self._packets_opened += 1
        if first & (0x18 if kind == KIND_ONE_RTT else 0x0C):
            raise Failure(PROTOCOL_VIOLATION, 0, "reserved header bits set")  # RFC 9000 §17.2
        self._on_opened(kind, scid)
        self._process_payload(space, pn, payload, Received(space, dcid, now))
        return True

    def _on_retry(self, datagram: bytes, fields: list[int]) -> None:
        """RFC 9000 §17.2.5.2: a client's one Retry, before anything else from the server,
        sent to our CID in our version, with a token and a valid integrity tag (RFC 9001
        §5.8): the next Initials go to the Retry's Source CID with its token, under Initial
        keys for that CID, the ClientHello again; packet numbers carry on."""
        start, length = fields[F_OFFSET], fields[F_LENGTH]
        dcid = datagram[fields[F_DCID_OFFSET] : fields[F_DCID_OFFSET] + fields[F_DCID_LENGTH]]
        scid = datagram[fields[F_SCID_OFFSET] : fields[F_SCID_OFFSET] + fields[F_SCID_LENGTH]]
        token = datagram[fields[F_TOKEN_OFFSET] : fields[F_TOKEN_OFFSET] + fields[F_TOKEN_LENGTH]]
        if (
            not self.is_client
            or self._path is None
            or self._peer_scid
            or self._retry_scid is not None
            or fields[F_VERSION] != self.version
            or dcid != self._host_cid
            or not token
            or not check_retry(self.version, self._original_dcid, datagram[start : start + length])
        ):
            return
        self._retry_scid, self._retry_token = scid, token
        self._path.tuple.peer_cid = scid
        initial = self._spaces[Epoch.INITIAL]
        client_keys, server_keys = keys.initial_keys(self.version, scid)
        initial.sealer = self._protection(client_keys)
        initial.opener = self._protection(server_keys)
        initial.crypto_send.on_lost(0, initial.crypto_send.next_offset, False)

    def _is_stateless_reset(self, datagram: bytes) -> bool:
        """RFC 9000 §10.3.1: a datagram none of whose packets opened, shaped like a short
        header, ending with the reset token of a CID we send to."""
        if len(datagram) < MIN_STATELESS_RESET or datagram[0] & 0xC0 != 0x40:
            return False
        return self._peer_cids.is_stateless_reset(bytes(datagram[-16:]))

    def _on_stateless_reset(self, now: float) -> None:
        """The peer lost our state: drain, silently (RFC 9000 §10.3.1)."""
        if self.phase in LIVE:
            self._events.append(ConnectionTerminated(NO_ERROR, 0, "stateless reset", False, True))
        self._advance(PhaseEvent.PEER_CLOSE)
        self._close_due = False
        self._close_deadline = now + CLOSE_PTOS * self._require_path().pto_period()

    def _open(
        self, space: PacketSpace, data: bytes, pn_offset: int, largest: int, now: float
    ) -> tuple[int, int, bytes] | None:
        """(first byte, packet number, payload), or None when it does not open. A 1-RTT
        packet may carry the peer's next key phase: we follow it both ways (RFC 9001 §6.2)
        and keep the previous receive keys for three PTOs (§6.5)."""
        phases = space.key_phases
        try:
            if phases is None:
                assert space.opener is not None
                opened: tuple[int, int, bytes] = space.opener.open(data, pn_offset, largest, 0)
                return opened
            result = phases.open(data, pn_offset, largest)
        except PacketError:
            return None
        if result.updated:
            space.sealer, space.opener = phases.sealer, phases.opener
            self._key_discard_at = now + CLOSE_PTOS * self._require_path().pto_period()
        return result.first, result.pn, result.payload

    def _install_one_rtt_keys(self) -> None:
        """The 1-RTT keys once TLS gave both directions' secrets."""
        space = self._spaces[Epoch.ONE_RTT]
        secrets = self._one_rtt_secrets
        if space.key_phases is not None or len(secrets) < 2:
            return
        phases = KeyPhases(
            self.version,
            secrets[True].cipher_suite,
            secrets[True].secret,
            secrets[False].secret,
            self._protection,
        )
        space.key_phases = phases
        space.sealer, space.opener = phases.sealer, phases.opener

    def _admits(
        self, fields: list[int], dcid: bytes, scid: bytes, size: int, addr: Address, now: float
    ) -> bool:
        """Whether a packet is for this connection (a server's first Initial starts it,
        in the version of that Initial: v1 or v2, RFC 9369)."""
        kind, version = fields[F_KIND], fields[F_VERSION]
        if self._tls is not None and kind != KIND_ONE_RTT and version != self.version:
            return False  # long headers of another version (no version negotiation yet)
        if self._local_cids.lookup(dcid) is not None:
            return True
        if self.is_client or kind != KIND_INITIAL:
            return False
        if self._tls is None:
            # RFC 9000 §14.1, §7.2: a first Initial in a full datagram, with a long DCID.
            if size < MIN_INITIAL_DATAGRAM or len(dcid) < MIN_ORIGINAL_DCID or not scid:
                return False
            self.version = version
            self._original_dcid = dcid
            self._start(addr, dcid, scid, now)
            return True
        return dcid == self._original_dcid  # the client's Initials before it learns ours

    def _on_opened(self, kind: int, scid: bytes) -> None:
        """An authenticated packet: a client learns the server's CID from its first one;
        a server drops its Initial keys on the first Handshake packet (RFC 9001 §4.9.1)."""
        if self.is_client and kind != KIND_ONE_RTT and not self._peer_scid and scid:
            # Sent to from now on; registered with its reset token with the parameters.
            self._peer_scid = scid
            self._require_path().tuple.peer_cid = scid
        if not self.is_client and kind == KIND_HANDSHAKE:
            self._address_validated = True
            self._discard(Epoch.INITIAL)

    def _process_payload(self, space: PacketSpace, pn: int, payload: bytes, rx: Received) -> None:
        parsed = self._parse_frames(space.kind, payload)
        eliciting = any(frame_type not in NOT_ACK_ELICITING for frame_type, _ in parsed)
        if not space.acks.on_received(pn, eliciting, rx.now):
            return  # a duplicate: its frames already acted (RFC 9000 §12.3)
        if space.acks.received.largest() == pn:
            space.largest_received_time = rx.now
        self._idle_since = max(self._idle_since, rx.now)
        self._idle_restart_on_send = True
        for frame_type, apply in parsed:
            if self.phase is Phase.CLOSING and frame_type not in _CLOSE_FRAMES:
                continue  # closing: only the peer's close matters (RFC 9000 §10.2.1)
            try:
                apply(rx)
            except PacketError as exc:
                raise Failure(_error_code(exc, PROTOCOL_VIOLATION), frame_type, str(exc)) from None

    def _parse_frames(self, kind: int, payload: bytes) -> list[tuple[int, Apply]]:
        """Every frame of a packet, parsed, with what applying it does; FRAME_ENCODING_ERROR
        for an unknown or malformed frame, PROTOCOL_VIOLATION for one its packet type may not
        carry or for a packet without frames (RFC 9000 §12.4)."""
        if not payload:
            raise Failure(PROTOCOL_VIOLATION, 0, "a packet without frames")
        parsed = []
        pos, end = 0, len(payload)
        while pos < end:
            frame_type = 0
            try:
                frame_type, type_end = self._m.packet.decode_varint(payload, pos)
                if type_end - pos > 1 and frame_type < 0x40:
                    # §12.4: frame types are minimally encoded (PADDING, PING and
                    # HANDSHAKE_DONE are then one byte each).
                    raise Failure(PROTOCOL_VIOLATION, frame_type, "frame type not minimal")
                row = self._table.get(frame_type)
                if row is None:
                    raise Failure(FRAME_ENCODING_ERROR, frame_type, "unknown frame type")
                parser, kinds = row
                if kind not in kinds:
                    raise Failure(PROTOCOL_VIOLATION, frame_type, "frame not allowed here")
                apply, pos = parser(payload, pos, end)
            except PacketError as exc:
                code = _error_code(exc, FRAME_ENCODING_ERROR)
                raise Failure(code, frame_type, str(exc)) from None
            parsed.append((frame_type, apply))
        return parsed

    # -- frame parsers (the table's handlers) and what applying each does ------------------

    def _frame_table(self) -> dict[int, tuple[Parser, frozenset[int]]]:
        handlers: dict[str, Parser] = {
            "padding": self._parse_padding,
            "ping": self._parse_ping,
            "ack": self._parse_ack,
            "crypto": self._parse_crypto,
            "stream": self._parse_stream,
            "reset_stream": self._parse_reset_stream,
            "stop_sending": self._parse_stop_sending,
            "max_data": self._parse_max_data,
            "max_stream_data": self._parse_max_stream_data,
            "max_streams": self._parse_max_streams,
            "data_blocked": self._parse_data_blocked,
            "stream_data_blocked": self._parse_stream_data_blocked,
            "streams_blocked": self._parse_streams_blocked,
            "datagram": self._parse_datagram,
            "new_token": self._parse_new_token,
            "new_connection_id": self._parse_new_connection_id,
            "retire_connection_id": self._parse_retire_connection_id,
            "path_challenge": self._parse_path_data,
            "path_response": self._parse_path_data,
            "connection_close": self._parse_connection_close,
            "handshake_done": self._parse_handshake_done,
        }
        table = frames.bind(handlers)
        for frame_type, rule in control_frames.ROWS.items():
            table[frame_type] = (handlers[rule.name], rule.kinds)
        return table

    def _parse_padding(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        return _noop, control_frames.skip_padding(data, pos, end)

    def _parse_ping(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        return _noop, pos + 1

    def _parse_ack(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        (_, _, ranges, delay, _), after = self._m.packet.decode_ack(data, pos)
        return partial(self._on_ack, ranges, delay), after

    def _parse_crypto(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        offset, data_offset, length, after = self._m.stream.parse_crypto(data, pos, end)
        return partial(self._on_crypto, data, offset, data_offset, length), after

    def _parse_stream(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        fields = self._m.stream.parse_stream(data, pos, end)
        return partial(self._on_stream, data, *fields[:5]), fields[5]

    def _parse_reset_stream(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        stream_id, error_code, final_size, after = self._m.stream.parse_reset_stream(data, pos, end)
        return partial(self._on_reset_stream, stream_id, error_code, final_size), after

    def _parse_stop_sending(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        stream_id, error_code, after = self._m.stream.parse_stop_sending(data, pos, end)
        return partial(self._on_stop_sending, stream_id, error_code), after

    def _parse_max_data(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        maximum, after = self._m.stream.parse_max_data(data, pos, end)
        return partial(self._on_max_data, maximum), after

    def _parse_max_stream_data(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        stream_id, maximum, after = self._m.stream.parse_max_stream_data(data, pos, end)
        return partial(self._on_max_stream_data, stream_id, maximum), after

    def _parse_max_streams(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        bidirectional, maximum, after = self._m.stream.parse_max_streams(data, pos, end)
        return partial(self._on_max_streams, bidirectional, maximum), after

    def _parse_data_blocked(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        return _noop, self._m.stream.parse_data_blocked(data, pos, end)[1]

    def _parse_stream_data_blocked(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        stream_id, _, after = self._m.stream.parse_stream_data_blocked(data, pos, end)
        return partial(self._on_stream_data_blocked, stream_id), after

    def _parse_streams_blocked(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        return _noop, self._m.stream.parse_streams_blocked(data, pos, end)[2]

    def _parse_datagram(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        # RFC 9221 §3: DATAGRAM frames without max_datagram_frame_size advertised.
        raise ProtocolViolation("DATAGRAM frames were not offered")

    def _parse_new_token(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        if not self.is_client:
            raise ProtocolViolation("NEW_TOKEN from a client")  # RFC 9000 §19.7
        return _noop, control_frames.parse_new_token(data, pos, end)[1]

    def _parse_new_connection_id(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        sequence, retire_prior_to, cid, token, after = control_frames.parse_new_connection_id(
            data, pos, end
        )
        return partial(self._on_new_cid, sequence, retire_prior_to, cid, token), after

    def _parse_retire_connection_id(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        sequence, after = control_frames.parse_retire_connection_id(data, pos, end)
        return partial(self._on_retire_cid, sequence), after

    def _parse_path_data(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        frame_type, payload, after = control_frames.parse_path_data(data, pos, end)
        if frame_type == PATH_RESPONSE_FRAME:
            return _noop, after  # we send no PATH_CHALLENGE on path 0 (no migration yet)
        return partial(self._on_path_challenge, payload), after

    def _parse_connection_close(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        application, code, frame_type, reason, after = control_frames.parse_connection_close(
            data, pos, end
        )
        return partial(self._on_connection_close, application, code, frame_type, reason), after

    def _parse_handshake_done(self, data: bytes, pos: int, end: int) -> tuple[Apply, int]:
        if not self.is_client:
            raise ProtocolViolation("HANDSHAKE_DONE from a client")  # RFC 9000 §19.20
        return self._on_handshake_done, pos + 1

    def _on_ack(self, ranges: Iterable[tuple[int, int]], delay: int, rx: Received) -> None:
        space = rx.space
        ack_delay = 0.0
        if space.kind == KIND_ONE_RTT and self._peer is not None:
            ack_delay = (delay << self._peer.ack_delay_exponent) / 1e6
        try:
            acked, lost = space.on_ack(ranges, ack_delay, rx.now)
        except PacketError as exc:
            raise ProtocolViolation(f"ACK: {exc}") from None  # RFC 9000 §13.1: never sent
        for pn in acked.pns:
            for frame in space.sent.pop(pn, ()):
                self._writer.on_acked(space, frame)
        if space.kind == KIND_HANDSHAKE and len(acked.pns):
            self._handshake_acked = True
        self._on_lost(space, lost)

    def _on_lost(self, space: PacketSpace, lost: LossResult) -> None:
        for pn in lost.pns:
            for frame in space.sent.pop(pn, ()):
                self._writer.on_lost(space, frame)

    def _on_crypto(
        self, data: bytes, offset: int, data_offset: int, length: int, rx: Received
    ) -> None:
        space = rx.space
        try:
            space.crypto_recv.on_data(data, data_offset, length, offset, False)
        except FlowControlError:
            raise CryptoBufferExceeded("CRYPTO data too far ahead") from None
        chunk = space.crypto_recv.read()
        if chunk and self._tls is not None:
            self._tls.receive(space.epoch, chunk)
            self._after_tls(rx.now)

    def _on_stream(
        self,
        data: bytes,
        stream_id: int,
        offset: int,
        data_offset: int,
        length: int,
        fin: bool,
        rx: Received,
    ) -> None:
        result = self._streams.on_stream(data, stream_id, offset, data_offset, length, fin)
        if result is None:
            return
        chunk, ended = result
        ended = ended and stream_id not in self._finished
        if ended:
            self._finished.add(stream_id)
        if chunk or ended:
            self._events.append(StreamDataReceived(stream_id, chunk, ended))

    def _on_reset_stream(
        self, stream_id: int, error_code: int, final_size: int, rx: Received
    ) -> None:
        if self._streams.on_reset(stream_id, final_size):
            self._events.append(StreamReset(stream_id, error_code))

    def _on_stop_sending(self, stream_id: int, error_code: int, rx: Received) -> None:
        self._streams.on_stop_sending(stream_id, error_code)

    def _on_max_data(self, maximum: int, rx: Received) -> None:
        self._streams.send_credit.raise_limit(maximum)

    def _on_max_stream_data(self, stream_id: int, maximum: int, rx: Received) -> None:
        self._streams.on_max_stream_data(stream_id, maximum)

    def _on_max_streams(self, bidirectional: bool, maximum: int, rx: Received) -> None:
        self._streams.on_max_streams(bidirectional, maximum)

    def _on_stream_data_blocked(self, stream_id: int, rx: Received) -> None:
        self._streams.on_stream_data_blocked(stream_id)

    def _on_new_cid(
        self, sequence: int, retire_prior_to: int, cid: bytes, token: bytes, rx: Received
    ) -> None:
        self._peer_cids.on_new_cid(0, sequence, cid, token, retire_prior_to)
        path = self._require_path()
        if all(issued.cid != path.tuple.peer_cid for issued in self._peer_cids.active(0)):
            # Retire Prior To took the ID we send to: move to the next one (§5.1.2).
            chosen = self._peer_cids.choose(0)
            if chosen is None:
                raise ProtocolViolation("every connection ID retired")
            path.tuple.peer_cid = chosen.cid

    def _on_retire_cid(self, sequence: int, rx: Received) -> None:
        if self._local_cids.on_retire(0, sequence, rx.dcid) is not None:
            self._owed.new_cids.discard(sequence)
            self._issue_cids()

    def _on_path_challenge(self, data: bytes, rx: Received) -> None:
        self._owed.answer(data)

    def _on_connection_close(
        self, application: bool, code: int, frame_type: int, reason: str, rx: Received
    ) -> None:
        if self.phase in LIVE:
            self._events.append(ConnectionTerminated(code, frame_type, reason, application, True))
        self._advance(PhaseEvent.PEER_CLOSE)
        self._close_due = False
        self._close_deadline = rx.now + CLOSE_PTOS * self._require_path().pto_period()

    def _on_handshake_done(self, rx: Received) -> None:
        if self.phase is Phase.ESTABLISHED:
            self._confirm()

    # -- the handshake ----------------------------------------------------------------------

    def _start(self, addr: Address, original_dcid: bytes, peer_scid: bytes, now: float) -> None:
        """The path, the spaces, the Initial keys and TLS, for either side."""
        config = self.config
        token = self._random(16)
        self._local_cids.issue(0, self._host_cid, token)
        path_config = PathConfig(
            max_datagram_size=config.max_datagram_size,
            initial_rtt=config.initial_rtt,
            local_max_ack_delay=config.max_ack_delay,
        )
        recovery = new_recovery(
            config.controller(config.max_datagram_size), path_config, self._m.ledger
        )
        first = PathTuple(("", 0), addr, self._host_cid, original_dcid)
        self._path = Path(0, first, recovery, path_config)
        self._spaces = self._new_spaces(self._path)
        client_keys, server_keys = keys.initial_keys(self.version, original_dcid)
        initial = self._spaces[Epoch.INITIAL]
        mine, theirs = (client_keys, server_keys) if self.is_client else (server_keys, client_keys)
        initial.sealer = self._protection(mine)
        initial.opener = self._protection(theirs)
        if peer_scid:
            self._peer_scid = peer_scid
            self._adopt_peer_cid(peer_scid, None)
        reset_token = None if self.is_client else token
        local = self._local_parameters(original_dcid, reset_token)
        self._tls = TlsAdapter(config.tls, self.version, transport_params.encode(local))
        self._idle_since = now

    def _new_spaces(self, path: Path) -> dict[Epoch, PacketSpace]:
        rtt = path.recovery.ledger.rtt
        backend = self._m.ledger

        def handshake_space(epoch: Epoch, kind: int) -> PacketSpace:
            # RFC 9000 §13.2.1: Initial and Handshake packets are acknowledged at once.
            acks = AckState(0.0)
            return PacketSpace(epoch, kind, acks, backend.Ledger(rtt, False), None, self._m.stream)

        return {
            Epoch.INITIAL: handshake_space(Epoch.INITIAL, KIND_INITIAL),
            Epoch.HANDSHAKE: handshake_space(Epoch.HANDSHAKE, KIND_HANDSHAKE),
            Epoch.ONE_RTT: PacketSpace(
                Epoch.ONE_RTT,
                KIND_ONE_RTT,
                path.acks,
                path.recovery.ledger,
                path.recovery,
                self._m.stream,
            ),
        }

    def _local_parameters(
        self, original_dcid: bytes, reset_token: bytes | None
    ) -> TransportParameters:
        config = self.config
        return TransportParameters(
            original_destination_connection_id=None if self.is_client else original_dcid,
            max_idle_timeout=int(config.idle_timeout * 1000),
            stateless_reset_token=reset_token,
            initial_max_data=config.max_data,
            initial_max_stream_data_bidi_local=config.max_stream_data,
            initial_max_stream_data_bidi_remote=config.max_stream_data,
            initial_max_stream_data_uni=config.max_stream_data,
            initial_max_streams_bidi=config.max_streams_bidi,
            initial_max_streams_uni=config.max_streams_uni,
            ack_delay_exponent=ACK_DELAY_EXPONENT,
            max_ack_delay=round(config.max_ack_delay * 1000),
            active_connection_id_limit=config.active_connection_id_limit,
            initial_source_connection_id=self._host_cid,
        )

    def _protection(self, packet_keys: keys.PacketKeys) -> protection.PacketProtection:
        made: protection.PacketProtection = self._m.protection.PacketProtection(
            packet_keys.cipher, packet_keys.key, packet_keys.iv, packet_keys.hp_key
        )
        return made

    def _adopt_peer_cid(self, cid: bytes, reset_token: bytes | None) -> None:
        """The peer's sequence-0 CID (its first Source CID), in use from now. A server's
        comes with its stateless_reset_token; a client's has none (RFC 9000 §18.2), and
        an unguessable placeholder holds its place so nothing matches it."""
        token = reset_token if reset_token is not None else self._random(16)
        self._peer_cids.on_new_cid(0, 0, cid, token, 0)
        chosen = self._peer_cids.choose(0)
        assert chosen is not None
        self._require_path().tuple.peer_cid = chosen.cid

    def _after_tls(self, now: float) -> None:
        """Installs the keys TLS derived, queues its output, applies the peer's transport
        parameters, and moves the phase when the handshake completed."""
        tls = self._tls
        assert tls is not None
        for traffic in tls.take_keys():
            if traffic.epoch is Epoch.ONE_RTT:
                self._one_rtt_secrets[traffic.sending] = traffic
                continue
            space = self._spaces[traffic.epoch]
            if traffic.sending:
                space.sealer = self._protection(traffic.keys)
            else:
                space.opener = self._protection(traffic.keys)
        self._install_one_rtt_keys()
        for epoch, data in tls.take_crypto().items():
            self._spaces[epoch].crypto_send.write(data)
        raw = tls.peer_transport_parameters
        if self._peer is None and raw is not None:
            self._apply_peer_parameters(transport_params.decode(raw))
        if tls.handshake_complete and self.phase is Phase.HANDSHAKING:
            if self._peer is None:
                raise TransportParameterError("no transport parameters from the peer")
            self._advance(PhaseEvent.HANDSHAKE_COMPLETE)
            self._events.append(HandshakeCompleted(tls.alpn_protocol))
            self._issue_cids()
            if not self.is_client:
                self._owed.handshake_done = True
                self._confirm()

    def _apply_peer_parameters(self, peer: TransportParameters) -> None:
        """RFC 9000 §7.3: the CIDs the peer names must be the ones the packets showed;
        §18.2: a client sends no server-only parameter."""
        if peer.initial_source_connection_id != self._peer_scid:
            raise TransportParameterError("initial_source_connection_id does not match")
        if self.is_client:
            if peer.original_destination_connection_id != self._original_dcid:
                raise TransportParameterError("original_destination_connection_id mismatch")
            if peer.retry_source_connection_id != self._retry_scid:
                raise TransportParameterError("retry_source_connection_id mismatch")
        elif (
            peer.original_destination_connection_id is not None
            or peer.stateless_reset_token is not None
            or peer.retry_source_connection_id is not None
        ):
            raise TransportParameterError("a server-only parameter from a client")
        self._peer = peer
        if self.is_client:
            self._adopt_peer_cid(self._peer_scid, peer.stateless_reset_token)
        self._streams.set_peer(peer)
        self._local_cids.peer_limit = max(peer.active_connection_id_limit, 2)
        path = self._require_path()
        path.peer_max_ack_delay = peer.max_ack_delay / 1000
        path.recovery.ledger.rtt.max_ack_delay = peer.max_ack_delay / 1000

    def _confirm(self) -> None:
        """The handshake is confirmed: Initial and Handshake keys go (RFC 9001 §4.9.2)."""
        self._advance(PhaseEvent.HANDSHAKE_CONFIRMED)
        self._handshake_acked = True  # RFC 9002 §6.2.2.1: confirmation implies it
        self._discard(Epoch.INITIAL)
        self._discard(Epoch.HANDSHAKE)

    def _discard(self, epoch: Epoch) -> None:
        space = self._spaces.get(epoch)
        if space is not None and not space.discarded:
            space.discard()

    def _issue_cids(self) -> None:
        """Our IDs up to the smaller of both limits, each owed a NEW_CONNECTION_ID."""
        wanted = min(self._local_cids.peer_limit, self.config.active_connection_id_limit)
        while len(self._local_cids.active(0)) < wanted:
            cid = self._random(self.config.cid_length)
            if self._local_cids.lookup(cid) is not None:
                continue
            issued = self._local_cids.issue(0, cid, self._random(16))
            self._owed.new_cids.add(issued.sequence)

    # -- phases and closing -----------------------------------------------------------------

    def _advance(self, event: PhaseEvent) -> None:
        self.phase = next_phase(self.phase, event)

    def _enter_closing(self, failure: Failure, now: float) -> None:
        if self.phase not in LIVE:
            return
        self._close = failure
        self._close_due = True
        self._advance(PhaseEvent.LOCAL_CLOSE)
        pto = self._path.pto_period() if self._path is not None else self.config.initial_rtt
        self._close_deadline = now + CLOSE_PTOS * pto
        self._events.append(
            ConnectionTerminated(
                failure.error_code, failure.frame_type, failure.reason, failure.application, False
            )
        )

    def _close_frame(self, space: PacketSpace) -> bytes:
        """Our CONNECTION_CLOSE for `space`: an application close outside 1-RTT becomes
        APPLICATION_ERROR without its reason (RFC 9000 §10.2.3)."""
        close = self._close
        assert close is not None
        if close.application and space.kind != KIND_ONE_RTT:
            close = Failure(APPLICATION_ERROR, 0, "")
        return control_frames.write_connection_close(
            close.application, close.error_code, close.frame_type, close.reason
        )

    # -- timers -----------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """Acts on every timer due at `now` (see `timers.Timers.fire`'s order)."""
        for kind, _ in self._timers.fire(now):
            _ON_TIMER[kind](self, now)
        self._rearm(now)

    def _on_idle_timer(self, now: float) -> None:
        """The idle timeout while live; the end of closing or draining otherwise (the
        connection-wide deadline both use)."""
        if self.phase in LIVE:
            self._advance(PhaseEvent.IDLE_TIMEOUT)
            self._events.append(ConnectionTerminated(NO_ERROR, 0, "idle timeout", False, False))
        elif self.phase in (Phase.CLOSING, Phase.DRAINING):
            self._advance(PhaseEvent.CLOSE_TIMEOUT)

    def _on_key_discard_timer(self, now: float) -> None:
        phases = self._spaces[Epoch.ONE_RTT].key_phases
        if phases is not None:
            phases.discard_previous()
        self._key_discard_at = math.inf

    def _on_loss_timer(self, now: float) -> None:
        for space in self._live_spaces():
            if space.loss_time() <= now:
                self._on_lost(space, space.on_loss_timer(now))

    def _on_pto_timer(self, now: float) -> None:
        """RFC 9002 §6.2.4: the space whose PTO fired probes; a handshake space sends its
        unacknowledged CRYPTO data again with it."""
        deadline, space = self._pto()
        if space is None or deadline > now:
            return
        space.on_pto(now)
        if space.kind != KIND_ONE_RTT:
            for sent in space.sent.values():
                for frame in sent:
                    if frame.kind is SentKind.CRYPTO:
                        space.crypto_send.on_lost(frame.offset, frame.length, False)

    def _pto(self) -> tuple[float, PacketSpace | None]:
        """The next PTO and the space that probes then. A client whose handshake the
        server has not acknowledged keeps one armed with nothing in flight (RFC 9002
        §6.2.2.1), from its last activity: a server held by anti-amplification may be
        waiting for it. It probes with a Handshake packet, else a padded Initial."""
        if self._amplification_room() < MIN_AMPLIFICATION_ROOM:
            return math.inf, None  # §6.2.2.1: a server held by the 3x limit arms no PTO
        space = min(self._probing_spaces(), key=PacketSpace.pto_deadline, default=None)
        if space is not None and space.pto_deadline() < math.inf:
            return space.pto_deadline(), space
        if not self.is_client or self._handshake_acked or self._path is None:
            return math.inf, None
        handshake = self._spaces[Epoch.HANDSHAKE]
        target = handshake if handshake.sealer is not None else self._spaces[Epoch.INITIAL]
        if target.discarded:
            return math.inf, None
        rtt = target.ledger.rtt
        return self._idle_since + math.ldexp(rtt.pto_period(0.0), rtt.pto_count), target

    def _on_send_timer(self, now: float) -> None:
        """ACK delay and pacing: the send path sends what is due."""

    def _live_spaces(self) -> list[PacketSpace]:
        return [space for space in self._spaces.values() if not space.discarded]

    def _probing_spaces(self) -> list[PacketSpace]:
        """The spaces whose PTO counts: 1-RTT only once the handshake is confirmed
        (RFC 9002 §6.2.1); until then the handshake spaces' probes carry it."""
        confirmed = self.phase is Phase.CONFIRMED
        return [s for s in self._live_spaces() if confirmed or s.kind != KIND_ONE_RTT]

    def _rearm(self, now: float) -> None:
        """Sets every timer from the state now (after receive, send or a timer)."""
        timers = self._timers
        if self.phase not in LIVE:
            # Closing or draining: only the end of that period; closed: nothing.
            ending = math.inf if self.phase is Phase.CLOSED else self._close_deadline
            timers.arm(TimerKind.IDLE, ending)
            timers.disarm(TimerKind.KEY_DISCARD)
            timers.remove_path(0)
            return
        timers.arm(TimerKind.IDLE, self._idle_deadline())
        if self._path is None:
            return
        spaces = self._live_spaces()
        loss = min((space.loss_time() for space in spaces), default=math.inf)
        pto, _ = self._pto()
        ack = min(
            (space.acks.ack_due for space in spaces if space.sealer is not None),
            default=math.inf,
        )
        if self._amplification_room() < MIN_AMPLIFICATION_ROOM:
            ack = math.inf  # nothing can go before more arrives, which re-arms it
        timers.arm(TimerKind.LOSS, loss, 0)
        timers.arm(TimerKind.PTO, pto if loss == math.inf else math.inf, 0)
        timers.arm(TimerKind.ACK_DELAY, ack, 0)
        timers.arm(TimerKind.PACING, self._pacing_until, 0)
        timers.arm(TimerKind.KEY_DISCARD, self._key_discard_at)

    def _idle_deadline(self) -> float:
        """RFC 9000 §10.1: the smaller of both idle timeouts, at least 3 PTOs, from the last
        packet received or the first ack-eliciting one sent after it."""
        ours = self.config.idle_timeout
        theirs = self._peer.max_idle_timeout / 1000 if self._peer is not None else 0.0
        timeouts = [value for value in (ours, theirs) if value > 0]
        if not timeouts or self._path is None:
            return math.inf
        return self._idle_since + max(min(timeouts), CLOSE_PTOS * self._path.pto_period())

    # -- send: select path -> build -> protect -> batch --------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """`poll_transmit`'s runs split into datagrams, each with its destination."""
        return [
            (datagram, transmit.destination)
            for transmit in self.poll_transmit(now)
            for datagram in transmit.datagrams()
        ]

    def poll_transmit(self, now: float) -> list[Transmit]:
        """What to send now, as GSO runs; the timers are re-armed after (unless nothing
        went and the pacing deadline stayed: then no timer's input moved)."""
        pacing = self._pacing_until
        self._pacing_until = math.inf
        datagrams: list[bytes] = []
        path = self._select_path()
        destination = path.tuple.remote if path is not None else ("", 0)
        while path is not None and len(datagrams) < MAX_BATCH:
            built = self._build_datagram(path, now)
            if not built:
                break
            datagrams.append(self._protect(path, built, now))
            self._bytes_sent += len(datagrams[-1])
            path = self._select_path()
        if datagrams or self._pacing_until != pacing:
            self._rearm(now)
        return _batch(destination, datagrams)

    def _select_path(self) -> Path | None:
        """The path to send on: path 0, while anything may be sent at all."""
        if self.phase in (Phase.DRAINING, Phase.CLOSED):
            return None
        if self.phase is Phase.CLOSING and not self._close_due:
            return None
        path = self._path
        if path is not None and self._amplification_room() < MIN_AMPLIFICATION_ROOM:
            return None
        return path

    def _amplification_room(self) -> float:
        """What a server may still send before the client's address is validated."""
        if self._address_validated:
            return math.inf
        return 3 * self._bytes_received - self._bytes_sent

    def _build_datagram(self, path: Path, now: float) -> list[BuiltPacket]:
        """One packet per space that has something to send, coalesced (RFC 9000 §12.2)."""
        room = int(min(path.max_datagram_size, self._amplification_room()))
        built = []
        for space in self._live_spaces():
            if space.sealer is None:
                continue
            item = self._build_packet(space, path, room, now)
            if item is not None:
                built.append(item)
                room -= self._header_bound(space, path) + len(item.payload) + protection.TAG_LENGTH
        if self.phase is Phase.CLOSING and built:
            self._close_due = False
        return built

    def _build_packet(
        self, space: PacketSpace, path: Path, room: int, now: float
    ) -> BuiltPacket | None:
        budget = room - self._header_bound(space, path) - protection.TAG_LENGTH
        if budget < MIN_PAYLOAD:
            return None
        buf = bytearray(budget)
        frames_sent: list[SentFrame] = []
        if self.phase is Phase.CLOSING:
            pos = put(buf, 0, self._close_frame(space))
            return BuiltPacket(space, buf[:pos], frames_sent, False) if pos else None
        allowed = self._may_send_eliciting(space, path, now)
        pos, frames_sent, eliciting = self._writer.fill(space, buf, now, allowed)
        if not frames_sent:
            return None
        return BuiltPacket(space, buf[:pos], frames_sent, eliciting)

    def _may_send_eliciting(self, space: PacketSpace, path: Path, now: float) -> bool:
        """Handshake spaces always (not congestion controlled here); 1-RTT once the
        handshake completed, within the window and when the pacer lets it go."""
        if space.probes or space.recovery is None:
            return True
        if self.phase is Phase.HANDSHAKING:
            return False
        if not space.recovery.can_send(path.max_datagram_size):
            return False
        release = space.recovery.next_send_time(now)
        if release > now:
            if self._streams.has_data():
                self._pacing_until = min(self._pacing_until, release)
            return False
        return True

    def _header_bound(self, space: PacketSpace, path: Path) -> int:
        """The longest header a packet of `space` gets (packet number of 4 bytes, a Length
        of 2: a datagram is under 16 KB)."""
        dcid = len(path.tuple.peer_cid)
        if space.kind == KIND_ONE_RTT:
            return 1 + dcid + 4
        token = 0
        if space.kind == KIND_INITIAL:
            token = len(self._m.packet.encode_varint(len(self._retry_token)))
            token += len(self._retry_token)
        return 1 + 4 + 1 + dcid + 1 + len(self._host_cid) + token + 2 + 4

    def _protect(self, path: Path, built: list[BuiltPacket], now: float) -> bytes:
        """Seals the datagram's packets; pads the last one where an Initial needs it."""
        initial = next((item for item in built if item.space.kind == KIND_INITIAL), None)
        pad_to = 0
        if initial is not None and (self.is_client or initial.ack_eliciting):
            # RFC 9000 §14.1, within what the 3x limit still allows a server (§8.1).
            pad_to = int(min(MIN_INITIAL_DATAGRAM, self._amplification_room()))
        sealed: list[bytes] = []
        for index, item in enumerate(built):
            minimum = pad_to - sum(map(len, sealed)) if index == len(built) - 1 else 0
            sealed.append(self._seal(path, item, minimum))
        for item, data in zip(built, sealed, strict=True):
            self._on_packet_sent(item, len(data), now)
        return b"".join(sealed)

    def _seal(self, path: Path, item: BuiltPacket, minimum: int) -> bytes:
        """Packet number, header, padding (to sample the header protection, and to
        `minimum` bytes), then the AEAD."""
        space = item.space
        assert space.sealer is not None
        item.pn = pn = space.ledger.next_pn
        truncated, pn_length = self._m.packet.encode_packet_number(pn, space.ledger.largest_acked)
        payload = item.payload
        shortfall = 4 - pn_length - len(payload)  # RFC 9001 §5.4.2
        if shortfall > 0:
            payload += bytes(shortfall)
            item.padded = True
        header = self._header(space, path, len(payload), truncated, pn_length)
        extra = minimum - len(header) - len(payload) - protection.TAG_LENGTH
        if extra > 0:
            payload += bytes(extra)
            item.padded = True
            header = self._header(space, path, len(payload), truncated, pn_length)
        sealed: bytes = space.sealer.seal(header, payload, pn, 0)
        return sealed

    def _header(
        self, space: PacketSpace, path: Path, payload: int, truncated: int, pn_length: int
    ) -> bytes:
        dcid = path.tuple.peer_cid
        built: bytes
        if space.kind == KIND_ONE_RTT:
            phases = space.key_phases
            key_phase = phases is not None and phases.phase
            built = self._m.packet.build_short_header(dcid, truncated, pn_length, key_phase)
        else:
            built = self._m.packet.build_long_header(
                space.kind,
                self.version,
                dcid,
                self._host_cid,
                self._retry_token if space.kind == KIND_INITIAL else b"",
                payload + protection.TAG_LENGTH,
                truncated,
                pn_length,
            )
        return built

    def _on_packet_sent(self, item: BuiltPacket, size: int, now: float) -> None:
        space = item.space
        if item.ack_eliciting:
            flags = FLAG_ACK_ELICITING | FLAG_IN_FLIGHT
        else:
            flags = FLAG_IN_FLIGHT if item.padded else 0  # RFC 9002 §2: PADDING is in flight
        space.on_sent(item.pn, size, now, flags)
        if item.frames:
            space.sent[item.pn] = item.frames
        if item.ack_eliciting and self._idle_restart_on_send:
            self._idle_since = now
            self._idle_restart_on_send = False
        if self.is_client and space.kind == KIND_HANDSHAKE:
            self._discard(Epoch.INITIAL)  # RFC 9001 §4.9.1

    def _require_path(self) -> Path:
        if self._path is None:
            raise ConnectionStateError("no path yet")
        return self._path


def _batch(destination: Address, datagrams: list[bytes]) -> list[Transmit]:
    """Runs of equal-size datagrams (the last of a run may be shorter), one Transmit each."""
    runs: list[list[bytes]] = []
    for datagram in datagrams:
        run = runs[-1] if runs else None
        if run and len(datagram) <= len(run[0]) and len(run[-1]) == len(run[0]):
            run.append(datagram)
        else:
            runs.append([datagram])
    return [Transmit(destination, len(run[0]), b"".join(run)) for run in runs]


_EPOCHS: Final = {
    KIND_INITIAL: Epoch.INITIAL,
    KIND_HANDSHAKE: Epoch.HANDSHAKE,
    KIND_ONE_RTT: Epoch.ONE_RTT,
}
_CLOSE_FRAMES: Final = frozenset(
    {control_frames.TRANSPORT_CLOSE_FRAME, control_frames.APPLICATION_CLOSE_FRAME}
)
_ON_TIMER: Final[dict[TimerKind, Callable[[Connection, float], None]]] = {
    TimerKind.IDLE: Connection._on_idle_timer,
    TimerKind.KEY_DISCARD: Connection._on_key_discard_timer,
    TimerKind.LOSS: Connection._on_loss_timer,
    TimerKind.PTO: Connection._on_pto_timer,
    TimerKind.ACK_DELAY: Connection._on_send_timer,
    TimerKind.PACING: Connection._on_send_timer,
}

__all__ = [
    "LIVE",
    "TRANSITIONS",
    "Backends",
    "Connection",
    "ConnectionConfig",
    "ConnectionStateError",
    "Failure",
    "Phase",
    "PhaseEvent",
    "Transmit",
    "next_phase",
]
