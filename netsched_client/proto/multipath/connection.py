"""Multipath QUIC (draft-ietf-quic-multipath-21) as a subclass of aioquic's connection.

Path 0 *is* aioquic: its state lives in aioquic's own attributes, so a peer
without multipath sees plain RFC 9000. Every other path keeps its own copies
of the per-path attributes (`PATH_ATTRIBUTES`: packet numbers, packet space,
recovery, pacing, CIDs, 4-tuples, 1-RTT nonce) and `_on_path(path)` swaps them
in around aioquic's unmodified methods. Nothing else in the project touches
aioquic's private attributes: everything goes through this module, and
`tests/test_mp_aioquic_contract.py` fails loudly when an aioquic upgrade moves
what it relies on.

Each path also runs its own datagram PMTU search (`pmtu.py`): its datagram
size (`_max_datagram_size`, swapped with the rest) starts at 1200 and rises as
PING+PADDING probes are acknowledged, up to the `pmtud` cap (higher on
loopback) and the peer's max_udp_payload_size; a black hole drops it back.

Where aioquic is path-0 specific, this class overrides it from the draft:
ACK frames, NEW/RETIRE_CONNECTION_ID are path 0's; PATH_ACK and the PATH_*
CID frames carry a path ID; a failed validation abandons one path, not the
connection; the idle timeout uses the largest PTO over paths.

Driving contract: as aioquic's `QuicConnection`, plus
- `datagrams_with_paths(now)` → (data, addr, path_id) for runtimes that bind
  one socket per local address (`datagrams_to_send` drops the path ID);
- client: `open_path(local_addr, remote_addr, now)`, and for both sides
  `abandon_path`, `set_path_backup`, `path_info()`; path events (`events.py`)
  come out of `next_event()` with aioquic's;
- `pmtud=PmtuConfig(max_size=..., loopback_max_size=...)` sets the PMTU
  search's caps, `pmtud=None` turns it off (every path then sends the
  configuration's max_datagram_size);
- `scheduler="deadline" | "lowest-rtt"` picks the policy (`scheduler.py`);
  `decision_totals`, a Counter shared by connections, sums their decisions.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from operator import itemgetter
from typing import Any, Final

from aioquic.buffer import Buffer
from aioquic.quic import connection as aioquic_connection
from aioquic.quic import packet_builder as aioquic_packet_builder
from aioquic.quic.connection import (
    ACK_FRAME_CAPACITY,
    END_STATES,
    NetworkAddress,
    QuicConnection,
    QuicConnectionError,
    QuicConnectionId,
    QuicNetworkPath,
    QuicReceiveContext,
)
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    QuicProtocolVersion,
    push_ack_frame,
)
from aioquic.quic.packet_builder import (
    QuicDeliveryState,
    QuicPacketBuilder,
    QuicPacketBuilderStop,
)
from aioquic.quic.recovery import QuicPacketRecovery, QuicPacketSpace
from aioquic.quic.stream import QuicStream
from aioquic.tls import Epoch

from ..cc.aioquic_adapter import ControllerAdapter
from ..send_order import StreamPriority
from ..slo import DEFAULT_URGENCY
from ..transport_parameters import (
    decode_varint_value,
    encode_transport_parameter,
    find_transport_parameter,
)
from . import events as mp_events
from . import frames as f
from .cids import CidConflictError, CidLimitError, CidUpdate, PathCids, PeerCids, receive_cid
from .completion import Backlog, PathView
from .crypto import KeyHistory, PathCrypto
from .path import Path, PathState, UsedPathIds
from .pmtu import DEFAULT_PMTUD, MAX_UDP_PAYLOAD, PmtuConfig, PmtuSearch
from .recovery import CountingRecovery
from .reinjection import Copy, UrgentCopies, make_safe, sender_of
from .scheduler import LossRisk, Scheduler

log = logging.getLogger("netsched.multipath")

# The aioquic attributes that belong to one path (DESIGN.md §2).
PATH_ATTRIBUTES: Final = (
    "_packet_number",
    "_spaces",
    "_loss",
    "_loss_at",
    "_pacing_at",
    "_probe_pending",
    "_host_cids",
    "host_cid",
    "_host_cid_seq",
    "_peer_cid",
    "_peer_cid_available",
    "_peer_cid_sequence_numbers",
    "_peer_retire_prior_to",
    "_retire_connection_ids",
    "_network_paths",
    "_spin_bit",
    "_spin_highest_pn",
    "_cryptos",
    "_max_datagram_size",  # the path's PMTU search result
)

DEFAULT_MAX_PATH_ID: Final = 3
CIDS_PER_PATH: Final = 2
MAX_PEER_CIDS_PER_PATH: Final = 8  # our active_connection_id_limit, applied per path
MAX_PATH_IDS_TRACKED: Final = 16  # unused path IDs we hold CIDs for, whatever the peer allows
# Our CIDs a path ID other than 0 keeps at most after a re-issue (`reissue_path_cids`): as
# many as we ever issue it (up to the per-path limit, PATH_CIDS_BLOCKED), as many fresh
# ones, as many the peer was asked to retire and has not yet.
MAX_HELD_PATH_CIDS: Final = 3 * MAX_PEER_CIDS_PER_PATH
MULTIPATH_FRAME_CAPACITY: Final = 64
MAX_CLOSED_STATS: Final = 16  # closed paths whose totals path_info/closed_stats keep
_PATH_STATE: Final = itemgetter(*PATH_ATTRIBUTES)
TP_MAX_UDP_PAYLOAD_SIZE: Final = 0x03  # RFC 9000 §18.2


def _mark_path_ack_non_eliciting() -> None:
    """PATH_ACK, like ACK, must not elicit an ACK, or peers ping-pong ACKs forever.

    aioquic reads this set from module globals in two modules. Adding the two
    PATH_ACK types changes nothing for connections that never negotiate
    multipath: to them these frame types are unknown and refused anyway.
    """
    extra = frozenset({f.PATH_ACK, f.PATH_ACK_ECN})
    patches = (
        (aioquic_connection, "NON_ACK_ELICITING_FRAME_TYPES"),
        (aioquic_packet_builder, "NON_ACK_ELICITING_FRAME_TYPES"),
        (aioquic_packet_builder, "NON_IN_FLIGHT_FRAME_TYPES"),
    )
    for module, name in patches:
        setattr(module, name, frozenset(getattr(module, name)) | extra)


_mark_path_ack_non_eliciting()


class MultipathError(Exception):
    """A path operation that cannot be done (no path ID left, not negotiated)."""


class PathIdNotReady(MultipathError):
    """No path ID is ready yet: wait for a `PathIdReady` event and try again."""


class MultipathConnection(QuicConnection):
    def __init__(
        self,
        *args: Any,
        max_path_id: int | None = DEFAULT_MAX_PATH_ID,
        cid_factory: Callable[[], bytes] | None = None,
        reset_token: Callable[[bytes], bytes] | None = None,
        pmtud: PmtuConfig | None = DEFAULT_PMTUD,
        scheduler: str = "deadline",
        decision_totals: Counter[str] | None = None,
        **kwargs: Any,
    ):
        if max_path_id is not None and not 0 <= max_path_id <= f.MAX_PATH_ID_VALUE:
            raise ValueError(f"max_path_id must be in 0..2^32-1, got {max_path_id}")
        if pmtud is not None and not isinstance(pmtud, PmtuConfig):
            raise TypeError(f"pmtud must be a PmtuConfig or None, got {pmtud!r:.80}")
        self._pmtud = pmtud
        self._peer_max_udp_payload = MAX_UDP_PAYLOAD  # until the peer says otherwise
        self._now = 0.0  # clock of the datagram or timer being handled (aioquic passes none down)
        self._local_max_path_id = max_path_id
        self._peer_max_path_id: int | None = None
        self._cid_factory = cid_factory
        self._reset_token = reset_token
        super().__init__(*args, **kwargs)
        if cid_factory is not None and not self._is_client:
            # Our first CID is the one clients route on from the first Handshake packet.
            cid = self._host_cids[0].cid = cid_factory()
            self.host_cid = self._local_initial_source_connection_id = cid
        if reset_token is not None and not self._is_client:
            # Derived from the CID with a key the edge's workers share: any of them can
            # reset a connection another one lost (RFC 9000 §10.3).
            first = self._host_cids[0]
            first.stateless_reset_token = reset_token(first.cid)
        # The same recovery aioquic builds, plus a loss counter (nothing was sent yet).
        self._loss = self._new_recovery(peer_completed_address_validation=not self._is_client)
        self._path0 = Path(0, PathState.ACTIVE)
        self._live = self._path0
        self._paths: dict[int, Path] = {0: self._path0}
        self._used_path_ids = UsedPathIds()
        self._used_path_ids.add(0)
        self._next_issued_path_id = 1  # path IDs below this one got CIDs (or were used)
        # Path IDs not opened yet: our CIDs for them and the peer's.
        self._host_pool: dict[int, list[QuicConnectionId]] = {}
        self._peer_pool: dict[int, list[QuicConnectionId]] = {}
        self._peer_pool_rpt: dict[int, int] = {}  # Retire Prior To per pooled path ID
        self._pool_next_seq: dict[int, int] = {}  # our next CID sequence per pooled path ID
        self._host_rpt: dict[int, int] = {}  # Retire Prior To we asked, per path ID but 0
        self._cid_path: dict[bytes, int] = {}
        self._announce: deque[f.PathNewConnectionId] = deque()
        self._acked_cid_paths: set[int] = set()
        self._control: deque[f.MultipathFrame] = deque()
        self.scheduler = Scheduler(policy=scheduler, totals=decision_totals)
        self.urgent_copies = UrgentCopies()
        self._stalls_checked_at = 0.0  # silence deadlines up to here were judged
        self._active_at = 0.0  # last ack-eliciting send that was not a keep-alive
        self._multipath_ready = False  # path 0's crypto view installed
        self.closed_stats: dict[int, Any] = {}
        if max_path_id is not None:
            # Without multipath these stay unknown frame types, as in aioquic.
            handlers = self._QuicConnection__frame_handlers  # type: ignore[attr-defined]
            for frame_type in f.FRAME_CLASSES:
                handlers[frame_type] = (self._handle_multipath_frame, frozenset([Epoch.ONE_RTT]))

    # -- negotiation ------------------------------------------------------------

    @property
    def multipath_enabled(self) -> bool:
        return (
            self._local_max_path_id is not None
            and self._peer_max_path_id is not None
            and self._handshake_complete
        )

    def _serialize_transport_parameters(self) -> bytes:
        data: bytes = super()._serialize_transport_parameters()
        if self._local_max_path_id is not None:
            value = Buffer(capacity=8)
            value.push_uint_var(self._local_max_path_id)
            data += encode_transport_parameter(f.TP_INITIAL_MAX_PATH_ID, value.data)
        return data

    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        super()._parse_transport_parameters(data, from_session_ticket)
        if from_session_ticket:
            return  # neither parameter is remembered (RFC 9000 §7.4.1, draft-21 §2.1)
        self._limit_datagram_size(data)
        raw = find_transport_parameter(data, f.TP_INITIAL_MAX_PATH_ID)
        if raw is None:
            return
        value = decode_varint_value(raw)
        if value is None or value > f.MAX_PATH_ID_VALUE:
            raise QuicConnectionError(
                error_code=QuicErrorCode.TRANSPORT_PARAMETER_ERROR,
                frame_type=QuicFrameType.CRYPTO,
                reason_phrase="initial_max_path_id must be a varint <= 2^32-1",
            )
        self._peer_max_path_id = value

    def _limit_datagram_size(self, data: bytes) -> None:
        """The peer's max_udp_payload_size (aioquic checked it is >= 1200) caps every search."""
        raw = find_transport_parameter(data, TP_MAX_UDP_PAYLOAD_SIZE)
        value = None if raw is None else decode_varint_value(raw)
        self._peer_max_udp_payload = MAX_UDP_PAYLOAD if value is None else value
        for path in self._paths.values():
            search = self._attr(path, "_loss").pmtu
            if search is not None:
                search.set_limit(self._peer_max_udp_payload, self._now)

    # -- the swap -----------------------------------------------------------------

    def _on_path(self, path: Path) -> _OnPath:
        """Make `path` the one aioquic works on, for the duration of the block."""
        return _OnPath(self, path)

    def _park(self, path: Path) -> None:
        # Plain instance attributes (the contract test checks): read and written through
        # the instance dict, at C speed, as a swap happens several times per flush.
        path.parked = dict(zip(PATH_ATTRIBUTES, _PATH_STATE(vars(self)), strict=True))

    def _load(self, path: Path) -> None:
        vars(self).update(path.parked)
        path.parked = {}
        path.version += 1
        self._live = path

    def _attr(self, path: Path, name: str) -> Any:
        return getattr(self, name) if path is self._live else path.parked[name]

    # -- public path API ----------------------------------------------------------------

    def stream_priorities(self) -> Mapping[int, StreamPriority]:
        """Deadline and urgency per stream, for deadline-aware path choice (none here)."""
        return {}

    @property
    def paths(self) -> dict[int, Path]:
        return dict(self._paths)

    def path_pto_count(self, path: Path) -> int:
        loss: QuicPacketRecovery = self._attr(path, "_loss")
        return int(loss._pto_count)

    def path_acked_sent_time(self, path: Path) -> float | None:
        """Send time of the newest packet of this path an ACK covered."""
        loss: CountingRecovery = self._attr(path, "_loss")
        return loss.acked_sent_time

    def path_last_ack(self, path: Path) -> float | None:
        """When an ACK last acknowledged a newer packet of this path."""
        loss: CountingRecovery = self._attr(path, "_loss")
        return loss.last_ack_at

    def path_ack_gap(self, path: Path) -> float | None:
        """The longest recent gap between this path's ACKs."""
        loss: CountingRecovery = self._attr(path, "_loss")
        return loss.ack_gap

    def path_first_ack_after(self, path: Path, sent: float) -> float | None:
        """When an ACK first covered a packet of this path sent after `sent` (recent ACKs)."""
        loss: CountingRecovery = self._attr(path, "_loss")
        return loss.first_ack_after(sent)

    def path_oldest_unacked(self, path: Path) -> float | None:
        """Send time of this path's oldest ack-eliciting packet still in flight, if any."""
        space: QuicPacketSpace = self._attr(path, "_spaces")[Epoch.ONE_RTT]
        if not space.ack_eliciting_in_flight:
            return None  # a receiver's path holds ACK-only packets: no scan
        # Packets are kept in send order: the first match is the oldest.
        packets = space.sent_packets.values()
        return next(
            (p.sent_time for p in packets if p.is_ack_eliciting and p.delivery_handlers), None
        )

    def silence_inputs(self) -> tuple[object, ...]:
        """What the scheduler's silence deadlines depend on, per path (see `refresh_silence`)."""
        inputs: list[object] = []
        for path in self._paths.values():
            loss = self._recovery_of(path)
            space: QuicPacketSpace = self._attr(path, "_spaces")[Epoch.ONE_RTT]
            flying = space.ack_eliciting_in_flight > 0
            inputs += (path.path_id, path.state, path.stalled_since, loss.changes, flying)
        return tuple(inputs)

    def path_rtt(self, path: Path) -> float | None:
        loss: QuicPacketRecovery = self._attr(path, "_loss")
        return loss._rtt_smoothed if loss._rtt_initialized else None

    def path_latest_rtt(self, path: Path) -> float | None:
        loss: QuicPacketRecovery = self._attr(path, "_loss")
        return float(loss._rtt_latest) if loss._rtt_initialized else None

    def path_view(self, path: Path, now: float, guard: bool = False) -> PathView:
        """What the scheduler weighs for this path this round (`completion.py`); `guard`:
        cap deadline-free data to a short queue."""
        loss = self._recovery_of(path)
        size = self._attr(path, "_max_datagram_size")
        rate = loss.delivery_rate()
        return PathView(
            path_id=path.path_id,
            rtt=self._model_rtt(path, loss),
            measured=self.path_rtt(path) is not None,
            cwnd=loss.congestion_window,
            in_flight=loss.bytes_in_flight,
            datagram_size=size,
            loss=loss.steady_loss_rate,
            recovering=path.recovering(now),
            delivery_rate=rate,
            bulk_cap=self._bulk_cap(loss, size, rate) if guard else None,
            repair=self._repair_time(loss),
        )

    @staticmethod
    def _repair_time(loss: CountingRecovery) -> float:
        """From sending to a lost packet's resend arriving: a probe timeout (the time
        threshold needs later packets acknowledged, which a lone message lacks), one way."""
        if not loss._rtt_initialized:
            return 0.0
        return loss.get_probe_timeout() + loss._rtt_smoothed / 2

    def _bulk_cap(self, loss: CountingRecovery, datagram_size: int, rate: float | None) -> int:
        """Bytes in flight deadline-free data may fill: the window less `urgent_reserve`
        datagrams (room for deadline data and its copies, which would otherwise wait
        for an ACK behind bulk), and no more than keeps the path's bottleneck queue near
        `bulk_queue_s` once the delivery rate is measured: that rate times (minimum RTT
        + that queue), two datagrams more so that the rate can grow."""
        cwnd = loss.congestion_window
        cap = max(cwnd - self.scheduler.urgent_reserve * datagram_size, cwnd // 2)
        if rate is not None and loss._rtt_initialized:
            flight = rate * (loss._rtt_min + self.scheduler.bulk_queue_s)
            cap = min(cap, max(4 * datagram_size, int(flight) + 2 * datagram_size))
        return cap

    def _model_rtt(self, path: Path, loss: CountingRecovery) -> float:
        """The RTT new data would see: the smoothed one while the path is busy; its
        minimum when nothing is in flight (no queue then: a path left idle keeps a
        stale smoothed RTT, e.g. the handshake's, and would never be chosen again)."""
        rtt = self.path_rtt(path)
        if rtt is None:
            return self._optimistic_rtt()
        if loss.bytes_in_flight == 0 and loss._rtt_min < rtt:
            return float(loss._rtt_min)
        return rtt

    def _optimistic_rtt(self) -> float:
        """A path without an RTT sample yet is taken to be as fast as the fastest one, so
        that it gets data and learns its own (the initial RTT, 100 ms, would starve it)."""
        sampled = [r for p in self._paths.values() if (r := self.path_rtt(p)) is not None]
        return min(sampled, default=self._configuration.initial_rtt)

    def window_room_anywhere(self) -> bool:
        """Some active path's congestion window has room for a datagram."""
        return any(self._has_room(path) for path in self._paths.values())

    def _has_room(self, path: Path) -> bool:
        """An active path whose congestion window has room for a datagram."""
        if path.state is not PathState.ACTIVE:
            return False
        loss = self._recovery_of(path)
        room = loss.congestion_window - loss.bytes_in_flight
        return room >= int(self._attr(path, "_max_datagram_size"))

    def stream_backlog(self) -> list[Backlog]:
        """Streams with data to send, in send order, with how much and their priority."""
        priorities = self.stream_priorities()
        default = StreamPriority(None)
        backlog = []
        for stream in self._streams_queue:
            sender = stream.sender
            if sender.buffer_is_empty or stream.is_blocked or stream.stream_id is None:
                continue
            size = sum(r.stop - r.start for r in sender._pending)
            priority = priorities.get(stream.stream_id, default)
            backlog.append(Backlog(stream.stream_id, size, priority))
        return backlog

    def peer_reset_tokens(self) -> set[bytes]:
        """The stateless reset tokens of the connection IDs the peer gave us, every path's
        (a parked path keeps its own, `PATH_ATTRIBUTES`)."""
        held: list[QuicConnectionId] = []
        for path in self._paths.values():
            state = vars(self) if path is self._live else path.parked
            if "_peer_cid" in state:
                held += [state["_peer_cid"], *state["_peer_cid_available"]]
        return {cid.stateless_reset_token for cid in held if cid.stateless_reset_token}

    def path_cids(self, path_id: int) -> PathCids:
        """A path ID's CIDs now: ours (open, or issued ahead) and those in use each way."""
        path = self._paths.get(path_id)
        if path is None:
            return PathCids(tuple(c.cid for c in self._host_pool.get(path_id, ())), None, None)
        held: list[QuicConnectionId] = self._attr(path, "_host_cids")
        peer: QuicConnectionId = self._attr(path, "_peer_cid")
        return PathCids(tuple(c.cid for c in held), self._attr(path, "host_cid"), peer.cid)

    def path_info(self) -> list[dict[str, Any]]:
        """A snapshot per path: state, tuple, RTT, congestion window, bytes, loss."""
        out = []
        for path in self._paths.values():
            loss: QuicPacketRecovery = self._attr(path, "_loss")
            network_paths: list[QuicNetworkPath] = self._attr(path, "_network_paths")
            out.append(
                {
                    "path_id": path.path_id,
                    "state": path.state.value,
                    "backup": path.backup,
                    "local": path.local_addr,
                    "remote": network_paths[0].addr if network_paths else None,
                    "rtt": self.path_rtt(path),
                    "cwnd": loss.congestion_window,
                    "max_datagram_size": self._attr(path, "_max_datagram_size"),
                    "bytes_in_flight": loss.bytes_in_flight,
                    "bytes_sent": path.stats.bytes_sent,
                    "bytes_received": path.stats.bytes_received,
                    "packets_lost": path.stats.packets_lost + getattr(loss, "packets_lost", 0),
                    "packets_reinjected": path.stats.packets_reinjected,
                    "stream_bytes": dict(path.stats.stream_bytes),
                    "loss_rate": getattr(loss, "loss_rate", 0.0),
                    "recovering": path.recovering(self._now),
                    "stalled": path.stalled_since is not None,
                    "decisions": {
                        reason: n
                        for (path_id, reason), n in self.scheduler.decisions.items()
                        if path_id == path.path_id
                    },
                }
            )
        return out

    def open_path(
        self, local_addr: NetworkAddress | None, remote_addr: NetworkAddress, now: float
    ) -> int:
        """Client: open a new path on a new 4-tuple; it is validated before carrying data."""
        if not self._is_client:
            raise MultipathError("only clients open paths (draft-21 §3)")
        if not self.multipath_enabled:
            raise MultipathError("multipath was not negotiated on this connection")
        path_id = self._free_path_id()
        host = self._host_pool.pop(path_id)
        peer = self._peer_pool.pop(path_id)
        path = self._new_path(path_id, PathState.VALIDATING, host, peer, remote_addr)
        path.local_addr = local_addr
        return path.path_id

    def prepare_migration(self) -> None:
        """Client, single path: the next datagrams leave from a new local address (RFC 9000
        §9 active migration). Switch to an unused connection ID of the server's, so the two
        addresses cannot be linked (§9.5), and send a PING there for the server to see the
        move and validate the new address. MultipathError when there is no spare ID."""
        problem = self._migration_problem()
        if problem is not None:
            raise MultipathError(problem)
        self.change_connection_id()
        self.send_ping(0)

    @property
    def can_migrate(self) -> bool:
        """`prepare_migration` would succeed now."""
        return self._migration_problem() is None

    def _migration_problem(self) -> str | None:
        if not self._is_client or self.multipath_enabled or self._live is not self._path0:
            return "migration moves a single-path client's path 0"
        if not self._handshake_complete:
            return "migration waits for the handshake to complete (RFC 9000 §9)"
        if not self._peer_cid_available:
            return "the server issued no spare connection ID to migrate with (RFC 9000 §9.5)"
        return None

    def abandon_path(
        self, path_id: int, error_code: int = f.APPLICATION_ABANDON_PATH, *, now: float
    ) -> None:
        path = self._paths.get(path_id)
        if path is None or path.state is PathState.CLOSING:
            return
        path.abandon_error = error_code
        self._start_closing(path, now)

    def set_path_backup(self, path_id: int, backup: bool) -> None:
        """Tell the peer our preference (PATH_STATUS_BACKUP/AVAILABLE) and schedule by it."""
        path = self._paths[path_id]
        path.backup = backup
        path.status_seq_sent += 1
        self._control.append(f.PathStatus(path_id, path.status_seq_sent, available=not backup))

    def _free_path_id(self) -> int:
        assert self._local_max_path_id is not None and self._peer_max_path_id is not None
        # Only path IDs whose CIDs the peer has acknowledged: it can answer on them at once.
        candidates = sorted(set(self._host_pool) & set(self._peer_pool) & self._acked_cid_paths)
        if candidates:
            return candidates[0]
        limit = min(self._local_max_path_id, self._peer_max_path_id)
        if len(self._used_path_ids) > limit:
            self._control.append(f.PathsBlocked(self._peer_max_path_id))
            raise MultipathError(f"all path IDs up to {limit} are used")
        blocked = min(set(self._host_pool) - set(self._peer_pool), default=None)
        if blocked is not None:
            self._control.append(f.PathCidsBlocked(blocked, 0))
        raise PathIdNotReady("no path ID has connection IDs on both sides yet")

    def _use_path_id(self, path_id: int) -> None:
        self._used_path_ids.add(path_id)
        self._acked_cid_paths.discard(path_id)

    def _check_path_id_ready(self, path_id: int) -> None:
        if (
            self._is_client
            and path_id in self._host_pool
            and path_id in self._peer_pool
            and path_id in self._acked_cid_paths
        ):
            self._events.append(mp_events.PathIdReady(path_id))

    # -- path creation and teardown -------------------------------------------------------

    def _new_path(
        self,
        path_id: int,
        state: PathState,
        host_cids: list[QuicConnectionId],
        peer_cids: list[QuicConnectionId],
        remote_addr: NetworkAddress | None,
    ) -> Path:
        path = Path(path_id, state)
        space = QuicPacketSpace(is_application_data=True)
        base_loss: QuicPacketRecovery = self._attr(self._path0, "_loss")
        loss = self._new_recovery(peer_completed_address_validation=True)
        loss.spaces = [space]
        loss.handshake_confirmed = True
        loss.max_ack_delay = base_loss.max_ack_delay
        base_cryptos = self._attr(self._path0, "_cryptos")
        network_paths = [] if remote_addr is None else [QuicNetworkPath(remote_addr)]
        peer = sorted(peer_cids, key=lambda c: c.sequence_number or 0)
        path.parked = {
            "_packet_number": 0,
            "_spaces": {Epoch.ONE_RTT: space},
            "_loss": loss,
            "_loss_at": None,
            "_pacing_at": None,
            "_probe_pending": False,
            "_host_cids": host_cids,
            "host_cid": host_cids[0].cid,
            "_host_cid_seq": self._pool_next_seq.pop(path_id),
            "_peer_cid": peer[0],
            "_peer_cid_available": peer[1:],
            "_peer_cid_sequence_numbers": {c.sequence_number for c in peer},
            "_peer_retire_prior_to": self._peer_pool_rpt.pop(path_id, 0),
            "_retire_connection_ids": [],
            "_network_paths": network_paths,
            "_spin_bit": False,
            "_spin_highest_pn": 0,
            # Other epochs are aioquic's (long torn down): its code still looks them up.
            "_cryptos": {
                **base_cryptos,
                Epoch.ONE_RTT: self._path_crypto(path_id),
            },
            "_max_datagram_size": self._configuration.max_datagram_size,
        }
        self._paths[path_id] = path
        self._use_path_id(path_id)
        return path

    def _path_crypto(self, path_id: int) -> PathCrypto:
        """Path `path_id`'s view of the one 1-RTT CryptoPair (path 0's, wrapped on first use)."""
        cryptos = self._attr(self._path0, "_cryptos")
        base = cryptos[Epoch.ONE_RTT]
        if not isinstance(base, PathCrypto):
            # Path 0 gets the same view (its nonce is unchanged) so that all
            # paths share one key history across key updates.
            base = cryptos[Epoch.ONE_RTT] = PathCrypto(base, 0, KeyHistory())
        return base if path_id == 0 else PathCrypto(base.base, path_id, base.history)

    def _recovery_class(self) -> type[CountingRecovery]:
        """What recovers each path (a subclass may measure more)."""
        return CountingRecovery

    def _new_recovery(self, *, peer_completed_address_validation: bool) -> CountingRecovery:
        """A path's recovery, at the base datagram size, with the path's PMTU search."""
        base = self._configuration.max_datagram_size
        loss = self._recovery_class()(
            congestion_control_algorithm=self._configuration.congestion_control_algorithm,
            initial_rtt=self._configuration.initial_rtt,
            max_datagram_size=base,
            peer_completed_address_validation=peer_completed_address_validation,
            quic_logger=self._quic_logger,
            send_probe=self._send_probe,
            logger=self._logger,
        )
        if self._pmtud is not None:
            loss.pmtu = PmtuSearch(self._pmtud, base)
            loss.pmtu.set_limit(self._peer_max_udp_payload, self._now)
        return loss

    def _start_closing(self, path: Path, now: float) -> None:
        """Abandon a path: announce it, retire the peer's CIDs, resend its data elsewhere."""
        if path.state is PathState.CLOSING:
            return
        if not path.abandon_sent:
            path.abandon_sent = True
            self._control.append(f.PathAbandon(path.path_id, path.abandon_error))
        path.state = PathState.CLOSING
        path.closing_until = now + 3 * self._largest_pto()
        with self._on_path(path):
            self._declare_in_flight_lost()
        self._events.append(
            mp_events.PathAbandoned(path.path_id, path.abandon_error, path.abandon_received)
        )
        if not any(p.state is not PathState.CLOSING for p in self._paths.values()):
            self.close(
                error_code=QuicErrorCode.NO_VIABLE_PATH,
                reason_phrase="every path was abandoned",
            )

    def _declare_in_flight_lost(self) -> None:
        """The live path's unacknowledged packets: lost (their data goes out on other paths)."""
        space: QuicPacketSpace = self._spaces[Epoch.ONE_RTT]
        packets = list(space.sent_packets.values())
        self._loss.discard_space(space)
        for packet in packets:
            self._live.stats.packets_lost += 1
            for handler, args in packet.delivery_handlers:
                handler(QuicDeliveryState.LOST, *args)

    def _track_stalls(self, now: float) -> None:
        """Judge every path: stalled (no new data; its data resent elsewhere) or working again.

        A path stalls when the scheduler finds it silent (its oldest packet overdue while
        another path had later packets acknowledged: about one RTT after a blackhole) or,
        failing that evidence, at its `stall_ptos`-th PTO in a row. An ACK for anything
        sent since ends it.
        """
        for path in self._paths.values():
            acked = self.path_acked_sent_time(path)
            if path.stalled_at is not None and acked is not None and acked >= path.stalled_at:
                self._end_stall(path, now)
            elif (
                path.stalled_since is None
                and self.path_pto_count(path) >= self.scheduler.stall_ptos
            ):
                self._start_stall(path, self.path_oldest_unacked(path) or now, now)
        for path in self.scheduler.silent_paths(self, now):
            self._start_stall(path, self.path_oldest_unacked(path) or now, now)
            path.silence_at = None
            with self._on_path(path):
                self._reinject_in_flight()
        self._stalls_checked_at = now

    def _cap_probes_while_silent(self, path: Path) -> None:
        """The only path went silent (a PTO fired): its probes back off no further than
        `probe_cap_s`, so that the connection is found again within that time of an
        outage's end, not after the next doubled PTO (one or two seconds later, past
        every deadline of the requests waiting). A few packets per second while silent."""
        loss = self._recovery_of(path)
        # Not before multipath is on: without it, the connection keeps aioquic's (and RFC
        # 9002's) timeline exactly (tests/test_aioquic_compat.py).
        silent = self.multipath_enabled and self.path_pto_count(path) > 0
        if silent and loss.probe_cap is None:
            loss.probe_cap = self.scheduler.probe_cap_s
        elif not silent and loss.probe_cap is not None:
            loss.probe_cap = None

    def _start_stall(self, path: Path, since: float, now: float) -> None:
        """No new data for this path; while others exist, probe it often enough to find
        it again soon after an outage (failback). Only an ACK for something sent from
        now on (a probe) ends the stall: packets that were already on their way before
        an outage can still be acknowledged after it began."""
        end = path.last_stall_end
        if end is not None and since - end > self.scheduler.flap_window_s:
            path.stalls = 0
        path.stalled_since = since
        path.stalled_at = now
        path.stalls += 1
        if len(self._paths) > 1:
            self._recovery_of(path).probe_cap = self.scheduler.probe_cap_s
            path.version += 1  # its loss timer moves
            # Probe at once: a stall that was only a queue ends one RTT from now.
            self._set_attr(path, "_probe_pending", True)

    def _end_stall(self, path: Path, now: float) -> None:
        """An ACK for something sent since the stall: the path works again, and carries
        no deadline data while it recovers (hysteresis against flapping)."""
        assert path.stalled_since is not None
        stalled_for = now - path.stalled_since
        path.stalled_since = path.stalled_at = None
        path.last_stall_end = now
        path.recovering_until = now + self.scheduler.recovery_time(path, stalled_for)
        self._recovery_of(path).probe_cap = None
        path.version += 1  # its loss timer moves
        self.scheduler.count(path.path_id, "back")

    def _recovery_of(self, path: Path) -> CountingRecovery:
        loss: CountingRecovery = self._attr(path, "_loss")
        return loss

    def _reinject_in_flight(self) -> None:
        """Resend the live path's unacknowledged data on other paths, now (XLINK-style).

        The packets stay in flight for this path's congestion control; only their
        frames are handed back for retransmission, once (a later ACK of the original
        packet finds no handlers left, and the copy's ACK completes the delivery).
        """
        space: QuicPacketSpace = self._spaces[Epoch.ONE_RTT]
        self._live.reinjected_pto = self._loss._pto_count
        self._recovery().changes += 1  # the oldest packet with data may be a later one now
        for packet in list(space.sent_packets.values()):
            if not packet.delivery_handlers:
                continue
            handlers, packet.delivery_handlers = packet.delivery_handlers, []
            for handler, args in handlers:
                handler(QuicDeliveryState.LOST, *args)
            self._live.stats.packets_reinjected += 1

    def _forget_closed_paths(self, now: float) -> None:
        for path in list(self._paths.values()):
            if path.closing_until is None or now < path.closing_until:
                continue
            path.closing_until = None  # the 3 x PTO wait is over
            if path is self._path0:
                continue  # path 0's state is aioquic's own: it stays, unused
            for cid in self._attr(path, "_host_cids"):
                self._cid_path.pop(cid.cid, None)
                self._events.append(aioquic_connection.events.ConnectionIdRetired(cid.cid))
            self._host_rpt.pop(path.path_id, None)
            path.stats.packets_lost += self._attr(path, "_loss").packets_lost
            self.closed_stats[path.path_id] = path.stats
            # A peer may open and close paths for as long as the connection lives: keep
            # the latest closed paths' totals and no decisions of forgotten ones.
            while len(self.closed_stats) > MAX_CLOSED_STATS:
                del self.closed_stats[next(iter(self.closed_stats))]
            self.scheduler.forget(path.path_id)
            del self._paths[path.path_id]
            self._raise_max_path_id()

    def _raise_max_path_id(self) -> None:
        """A path ID retired: the peer may use one more, so as many paths as at first may
        be open at once for the whole connection (a client that moves keeps opening)."""
        assert self._local_max_path_id is not None
        if self.multipath_enabled and self._local_max_path_id < f.MAX_PATH_ID_VALUE:
            self._local_max_path_id += 1
            self._control.append(f.MaxPathId(self._local_max_path_id))

    def _largest_pto(self) -> float:
        ptos: list[float] = [
            self._attr(p, "_loss").get_probe_timeout() for p in self._paths.values()
        ]
        return max(ptos)

    # -- connection IDs per path ---------------------------------------------------------------

    def _issue_path_cids(self) -> None:
        """Proactively issue CIDs for every unused path ID both sides allow (draft-21 §3.2.1)."""
        assert self._local_max_path_id is not None and self._peer_max_path_id is not None
        limit = min(self._local_max_path_id, self._peer_max_path_id)
        while self._next_issued_path_id <= limit and len(self._host_pool) < MAX_PATH_IDS_TRACKED:
            path_id = self._next_issued_path_id
            self._next_issued_path_id += 1
            if path_id in self._used_path_ids or path_id in self._host_pool:
                continue
            self._pool_next_seq[path_id] = CIDS_PER_PATH
            self._host_pool[path_id] = [
                self._make_host_cid(path_id, seq) for seq in range(CIDS_PER_PATH)
            ]

    def reissue_path_cids(self, stale: Callable[[bytes], bool]) -> int:
        """Give every path ID but 0, open or issued ahead for the client to open, a fresh CID
        from the CID factory for each of its CIDs for which `stale` holds (those of a
        rotated-out QUIC-LB configuration), each in a PATH_NEW_CONNECTION_ID whose Retire
        Prior To covers the stale ones (RFC 9000 §5.1.2, per path ID in draft-21): the peer
        moves the path to a fresh one and retires them by PATH_RETIRE_CONNECTION_ID; they
        are served until it has. The frames go out at the next flush. Returns the CIDs
        issued (0: none stale, or closing). Path 0's are aioquic's NEW_CONNECTION_ID (the
        edge's `reissue_cids`)."""
        if self._state in END_STATES or not self.multipath_enabled:
            return 0
        issued = 0
        for path in self._paths.values():
            if path is not self._path0 and path.state is not PathState.CLOSING:
                issued += self._reissue(path.path_id, path, stale)
        for path_id in self._host_pool:
            issued += self._reissue(path_id, None, stale)
        return issued

    def _reissue(self, path_id: int, path: Path | None, stale: Callable[[bytes], bool]) -> int:
        """One path ID's re-issue (`path` None: issued ahead). As many fresh CIDs as the new
        Retire Prior To retires, so the peer's count of active ones stays within its limit."""
        held: list[QuicConnectionId]  # a parked path's state holds this very list
        if path is None:
            held, in_use = self._host_pool[path_id], None
        else:
            held, in_use = self._attr(path, "_host_cids"), self._attr(path, "host_cid")
        asked = self._host_rpt.get(path_id, 0)
        stale_seqs = [
            c.sequence_number for c in held if c.sequence_number >= asked and stale(c.cid)
        ]
        if not stale_seqs:
            return 0
        rpt = max(stale_seqs) + 1
        replaced = sum(1 for c in held if asked <= c.sequence_number < rpt)
        # A peer that ignores Retire Prior To must not make us hold more at every rotation:
        # the CIDs an earlier re-issue asked it to retire go first, but not the one it uses.
        overdue = [c for c in held if c.sequence_number < asked and c.cid != in_use]
        for old in overdue[: max(0, len(held) + replaced - MAX_HELD_PATH_CIDS)]:
            self._drop_host_cid(held, old)
        self._host_rpt[path_id] = rpt
        for _ in range(replaced):
            seq = self._next_pool_seq(path_id) if path is None else self._next_host_seq(path)
            held.append(self._make_host_cid(path_id, seq))
        return replaced

    def _next_pool_seq(self, path_id: int) -> int:
        seq = self._pool_next_seq[path_id]
        self._pool_next_seq[path_id] = seq + 1
        return seq

    def _new_cid(self) -> bytes:
        if self._cid_factory is not None:
            return self._cid_factory()
        return os.urandom(self._configuration.connection_id_length)

    def _replenish_connection_ids(self) -> None:
        super()._replenish_connection_ids()
        for cid in self._host_cids:
            if not cid.was_sent:  # not announced yet: still ours to choose
                if self._cid_factory is not None:
                    cid.cid = self._new_cid()
                cid.stateless_reset_token = self._new_reset_token(cid.cid)

    def _new_reset_token(self, cid: bytes) -> bytes:
        return os.urandom(16) if self._reset_token is None else self._reset_token(cid)

    def _make_host_cid(self, path_id: int, sequence: int) -> QuicConnectionId:
        raw = self._new_cid()
        cid = QuicConnectionId(
            cid=raw,
            sequence_number=sequence,
            stateless_reset_token=self._new_reset_token(raw),
            was_sent=True,  # announced by PATH_NEW_CONNECTION_ID, never by aioquic
        )
        self._cid_path[cid.cid] = path_id
        self._events.append(aioquic_connection.events.ConnectionIdIssued(cid.cid))
        assert cid.stateless_reset_token is not None
        # Every announcement repeats the path ID's Retire Prior To (≤ any new sequence): a
        # peer that lost the frame of a re-issue still learns it from a later one.
        rpt = self._host_rpt.get(path_id, 0)
        self._announce.append(
            f.PathNewConnectionId(path_id, sequence, rpt, cid.cid, cid.stateless_reset_token)
        )
        return cid

    def _drop_host_cid(self, cids: list[QuicConnectionId], cid: QuicConnectionId) -> None:
        """Stop serving one of our CIDs (retired by the peer, or overdue)."""
        cids.remove(cid)
        self._cid_path.pop(cid.cid, None)
        self._events.append(aioquic_connection.events.ConnectionIdRetired(cid.cid))

    def _on_peer_cid(self, frame: f.PathNewConnectionId) -> None:
        cid = QuicConnectionId(
            cid=frame.cid,
            sequence_number=frame.sequence,
            stateless_reset_token=frame.reset_token,
        )
        path = self._paths.get(frame.path_id)
        if path is None:
            if frame.path_id in self._used_path_ids:
                return  # abandoned path: ignore silently (draft-21 §4)
            pool = self._peer_pool.get(frame.path_id, [])
            known = PeerCids(None, tuple(pool), self._peer_pool_rpt.get(frame.path_id, 0))
            update = self._receive_cid(frame, known, cid)
            if update.cids.available:  # a pooled path ID always has a CID to open with
                self._peer_pool[frame.path_id] = list(update.cids.available)
            self._peer_pool_rpt[frame.path_id] = update.cids.retire_prior_to
            self._control.extend(f.PathRetireConnectionId(frame.path_id, s) for s in update.retire)
            if update.cids.available and not pool:
                self._check_path_id_ready(frame.path_id)
            return
        if path.state is PathState.CLOSING:
            return
        with self._on_path(path):
            known = PeerCids(
                self._peer_cid, tuple(self._peer_cid_available), self._peer_retire_prior_to
            )
            update = self._receive_cid(frame, known, cid)
            assert update.cids.current is not None
            self._peer_cid = update.cids.current
            self._peer_cid_available = list(update.cids.available)
            self._peer_cid_sequence_numbers = {c.sequence_number for c in update.cids.held()}
            self._peer_retire_prior_to = update.cids.retire_prior_to
            path.retire_pending.extend(update.retire)

    def _receive_cid(
        self, frame: f.PathNewConnectionId, known: PeerCids, cid: QuicConnectionId
    ) -> CidUpdate:
        try:
            return receive_cid(known, cid, frame.retire_prior_to, MAX_PEER_CIDS_PER_PATH)
        except CidLimitError as exc:
            code, reason = QuicErrorCode.CONNECTION_ID_LIMIT_ERROR, str(exc)
        except CidConflictError as exc:
            code, reason = QuicErrorCode.PROTOCOL_VIOLATION, str(exc)
        raise QuicConnectionError(code, f.PATH_NEW_CONNECTION_ID, f"path {frame.path_id}: {reason}")

    def _on_retire_host_cid(self, frame: f.PathRetireConnectionId) -> None:
        path = self._paths.get(frame.path_id)
        cids: list[QuicConnectionId] | None = (
            self._attr(path, "_host_cids")
            if path is not None
            else self._host_pool.get(frame.path_id)
        )
        if not cids:
            return
        for cid in list(cids):
            if cid.sequence_number == frame.sequence:
                if len(cids) == 1 and path is not None and path.state is not PathState.CLOSING:
                    cids.append(self._make_host_cid(frame.path_id, self._next_host_seq(path)))
                self._drop_host_cid(cids, cid)
                if path is not None and self._attr(path, "host_cid") == cid.cid:
                    self._set_attr(path, "host_cid", cids[0].cid)
                return

    def _next_host_seq(self, path: Path) -> int:
        seq: int = self._attr(path, "_host_cid_seq")
        self._set_attr(path, "_host_cid_seq", seq + 1)
        return seq

    def _set_attr(self, path: Path, name: str, value: Any) -> None:
        if path is self._live:
            setattr(self, name, value)
        else:
            path.parked[name] = value
            path.version += 1

    # -- receiving ---------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        self._now = now
        crypto = self._attr(self._path0, "_cryptos").get(Epoch.ONE_RTT)
        if isinstance(crypto, PathCrypto) and crypto.history.previous is not None:
            crypto.history.expire(now, 3 * self._largest_pto())
        path = self._route(data, now)
        if path is None:
            return
        if path is self._live:  # the common case: no swap, no context manager
            super().receive_datagram(data, addr, now)
            self._after_receive(path, len(data))
        else:
            with self._on_path(path):
                super().receive_datagram(data, addr, now)
                self._after_receive(path, len(data))

    def _route(self, data: bytes, now: float) -> Path | None:
        """The path a datagram belongs to, by the DCID of its (short header) packet."""
        cid_length = self._configuration.connection_id_length
        if not data or data[0] & 0x80 or len(data) < 1 + cid_length:
            return self._path0
        path_id = self._cid_path.get(data[1 : 1 + cid_length], 0)
        path = self._paths.get(path_id)
        if path is not None:
            return path
        if path_id in self._host_pool and not self._is_client and self.multipath_enabled:
            return self._accept_path(path_id)
        return None if path_id in self._used_path_ids else self._path0

    def _accept_path(self, path_id: int) -> Path | None:
        """Server: the client opened path `path_id` with one of our CIDs."""
        peer = self._peer_pool.pop(path_id, [])
        host = self._host_pool.pop(path_id)
        if not peer:
            self._peer_pool_rpt.pop(path_id, None)
            self._pool_next_seq.pop(path_id, None)
            # We cannot answer on a path we hold no client CID for (draft-21 §3.1).
            self._use_path_id(path_id)
            self._control.append(f.PathAbandon(path_id, f.NO_CID_AVAILABLE_FOR_PATH))
            return None
        path = self._new_path(path_id, PathState.ACTIVE, host, peer, None)
        self._events.append(mp_events.PathAvailable(path_id))
        return path

    def _after_receive(self, path: Path, size: int) -> None:
        """Count what the live path received; a validated new path becomes active."""
        path.stats.bytes_received += size
        path.stats.packets_received += 1
        if path.state is PathState.VALIDATING and self._network_paths[0].is_validated:
            path.state = PathState.ACTIVE
            self._events.append(mp_events.PathValidated(path.path_id))

    def _handle_multipath_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        if not self.multipath_enabled:
            # The peer did not negotiate multipath: to us these are unknown frames (RFC 9000 §12.4).
            raise QuicConnectionError(
                QuicErrorCode.FRAME_ENCODING_ERROR, frame_type, "Unknown frame type"
            )
        try:
            frame = f.decode_frame(frame_type, buf)
        except f.PathIdTooLarge as exc:
            raise QuicConnectionError(
                QuicErrorCode.PROTOCOL_VIOLATION, frame_type, str(exc)
            ) from exc
        except f.FrameEncodingError as exc:
            raise QuicConnectionError(
                QuicErrorCode.FRAME_ENCODING_ERROR, frame_type, str(exc)
            ) from exc
        self._check_path_limits(frame, frame_type)
        self._dispatch_multipath_frame(frame, context)

    def _check_path_limits(self, frame: f.MultipathFrame, frame_type: int) -> None:
        assert self._local_max_path_id is not None
        path_id = (
            frame.maximum if isinstance(frame, f.PathsBlocked) else getattr(frame, "path_id", None)
        )
        if path_id is not None and path_id > self._local_max_path_id:
            raise QuicConnectionError(
                QuicErrorCode.PROTOCOL_VIOLATION,
                frame_type,
                f"path ID {path_id} above our maximum {self._local_max_path_id}",
            )

    def _dispatch_multipath_frame(
        self, frame: f.MultipathFrame, context: QuicReceiveContext
    ) -> None:
        if isinstance(frame, f.PathAck):
            self._on_path_ack(frame, context.time)
        elif isinstance(frame, f.PathNewConnectionId):
            self._on_peer_cid(frame)
        elif isinstance(frame, f.PathRetireConnectionId):
            self._on_retire_host_cid(frame)
        elif isinstance(frame, f.PathAbandon):
            self._on_path_abandon(frame, context.time)
        elif isinstance(frame, f.PathStatus):
            self._on_path_status(frame)
        elif isinstance(frame, f.MaxPathId):
            assert self._peer_max_path_id is not None
            self._peer_max_path_id = max(self._peer_max_path_id, frame.maximum)
        elif isinstance(frame, f.PathCidsBlocked):
            self._on_cids_blocked(frame)
        # PATHS_BLOCKED is informational: we raise no limits at run time yet.

    def _on_path_ack(self, frame: f.PathAck, now: float) -> None:
        path = self._paths.get(frame.path_id)
        if path is None:
            return  # abandoned and forgotten: ignore silently (draft-21 §3.4.3)
        with self._on_path(path):
            self._loss.on_ack_received(
                ack_rangeset=frame.ranges,
                ack_delay=(frame.ack_delay << self._remote_ack_delay_exponent) / 1_000_000,
                now=now,
                space=self._spaces[Epoch.ONE_RTT],
            )

    def _on_path_abandon(self, frame: f.PathAbandon, now: float) -> None:
        path = self._paths.get(frame.path_id)
        if path is None:
            # An unused path ID: nobody will use it.
            self._host_pool.pop(frame.path_id, None)
            self._peer_pool.pop(frame.path_id, None)
            self._peer_pool_rpt.pop(frame.path_id, None)
            self._use_path_id(frame.path_id)
            return
        path.abandon_received = True
        path.abandon_error = frame.error_code
        self._start_closing(path, now)

    def _on_path_status(self, frame: f.PathStatus) -> None:
        path = self._paths.get(frame.path_id)
        if path is None or frame.sequence <= path.peer_status_seq:
            return  # stale or reordered (draft-21 §3.3)
        path.peer_status_seq = frame.sequence
        path.peer_backup = not frame.available
        self._events.append(mp_events.PathStatusChanged(frame.path_id, path.peer_backup))

    def _on_cids_blocked(self, frame: f.PathCidsBlocked) -> None:
        path = self._paths.get(frame.path_id)
        if path is None or path.state is PathState.CLOSING:
            return
        next_seq: int = self._attr(path, "_host_cid_seq")
        if frame.next_sequence > next_seq:
            raise QuicConnectionError(
                QuicErrorCode.PROTOCOL_VIOLATION,
                f.PATH_CIDS_BLOCKED,
                "PATH_CIDS_BLOCKED names a sequence number we never reached",
            )
        cids: list[QuicConnectionId] = self._attr(path, "_host_cids")
        if len(cids) < MAX_PEER_CIDS_PER_PATH:
            cids.append(self._make_host_cid(path.path_id, self._next_host_seq(path)))

    # Frames that RFC 9000 defines and draft-21 confines to path 0.

    def _handle_ack_frame(self, context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
        with self._on_path(self._path0):
            super()._handle_ack_frame(context, frame_type, buf)
            if self._is_client and not self._handshake_complete:
                # RFC 9002 §6.2.2.1 keeps a client's PTO armed only until its first Handshake
                # ACK, then waits for the server to resend what it lost. A server that drops
                # lost CRYPTO from its queue (picoquic 1.1.53, interop handshakeloss: it sent a
                # PING where the data was) then waits for us, forever: keep probing until the
                # handshake completes; an ack-eliciting packet makes it look again.
                self._loss.peer_completed_address_validation = False

    def _handle_new_connection_id_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        start = buf.tell()
        sequence = buf.pull_uint_var()
        buf.seek(start)
        with self._on_path(self._path0):
            super()._handle_new_connection_id_frame(context, frame_type, buf)
            # aioquic drops a late CID below Retire Prior To without retiring it; RFC 9000
            # §19.15 wants it retired, or the peer waits for it forever.
            if (
                sequence < self._peer_retire_prior_to
                and sequence not in self._peer_cid_sequence_numbers
                and sequence not in self._retire_connection_ids
            ):
                self._retire_connection_ids.append(sequence)

    def _handle_retire_connection_id_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        with self._on_path(self._path0):
            super()._handle_retire_connection_id_frame(context, frame_type, buf)

    # -- sending -------------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        return [(data, addr) for data, addr, _ in self.datagrams_with_paths(now)]

    def datagrams_with_paths(self, now: float) -> list[tuple[bytes, NetworkAddress, int]]:
        if len(self._paths) == 1 and self._live is self._path0 and self._path0.usable:
            self._cap_probes_while_silent(self._path0)
            sent = self._challenge_new_address(now) + self._send_mtu_probe(now)
            with self._holding_back(self._blocked_streams()):
                sent += self._note_full(super().datagrams_to_send(now))
            self._account(self._path0, sent)
            self._note_app_limited(paced=set() if self._pacing_at is None else {0})
            return [(data, addr, 0) for data, addr in sent]
        self._forget_closed_paths(now)
        # Once per flush, not per datagram: a receive batch holds every path's latest ACKs,
        # and judging in the middle of one would take a late ACK for a silent path.
        self._track_stalls(now)
        out: list[tuple[bytes, NetworkAddress, int]] = []
        plan = self.scheduler.plan(self, now)
        if not plan and self._close_pending:
            # Every path is closing: CONNECTION_CLOSE still has to leave on one of them.
            plan = [(next(iter(self._paths.values())), False)]
        backlog = self.stream_backlog()
        guard = self.scheduler.guarding(backlog, now)
        # No stream data queued (most rounds: an ACK came, a timer fired): nothing to
        # weigh, each path sends its own frames.
        views = {
            path.path_id: self.path_view(path, now, guard)
            for path, allowed in plan
            if allowed and backlog
        }
        assignment = self.scheduler.assign(list(views.values()), backlog, now)
        paced: set[int] = set()
        for index, (path, data_allowed) in enumerate(plan):
            share = None
            if data_allowed:
                view = views.get(path.path_id)
                wants_data = view is not None
                if assignment is not None and view is not None:
                    share = (
                        assignment.held_back(path.path_id, backlog),
                        assignment.budget(path.path_id, view),
                    )
                    wants_data = assignment.queued[path.path_id] > 0
                # The first path in the plan also carries connection-level frames.
                if index > 0 and self._idle(path, now, view, wants_data):
                    self._set_attr(path, "_pacing_at", None)  # nothing waits for the pacer
                    continue
            with self._on_path(path):
                eliciting = self._spaces[Epoch.ONE_RTT].ack_eliciting_in_flight
                sent = self._send_on_live_path(path, now, data_allowed, share, bool(backlog))
                if self._spaces[Epoch.ONE_RTT].ack_eliciting_in_flight > eliciting:
                    self._note_activity(path, now)
                if self._pacing_at is not None:
                    paced.add(path.path_id)
            self._account(path, sent)
            out.extend((data, addr, path.path_id) for data, addr in sent)
            if self._state in END_STATES:
                break
        self.urgent_copies.next_round()
        self._note_app_limited(paced)
        if out:
            self.scheduler.refresh_silence(self)  # what was just sent may be the oldest now
        return out

    def _note_app_limited(self, paced: set[int]) -> None:
        """After a round: a path whose window still has room and whose pacer did not stop
        it sent all it was given, and is application-limited, for a model-based controller
        (BBR) must not take the delivery rates measured until its flight drains for the
        path's capacity. It was given less than its window either because no stream
        data was left, or because the scheduler kept the rest for another path or for
        later (the bulk cap that keeps queues short for deadline data): a path held
        below its window that way never shows BBR it is window-limited, and its
        `inflight_hi`, cut at each lossy probe, could never grow back (Wi-Fi with bursty
        loss beside cellular fell from 45 to 14 Mbit/s of model bandwidth in 8 s)."""
        for path in self._paths.values():
            loss = self._recovery_of(path)
            if path.path_id in paced or not isinstance(loss._cc, ControllerAdapter):
                continue
            if (
                loss.bytes_in_flight + self._attr(path, "_max_datagram_size")
                <= loss.congestion_window
            ):
                loss._cc.sampler.mark_app_limited(loss.bytes_in_flight)

    def datagrams_on_open_paths(self, now: float) -> list[tuple[bytes, NetworkAddress, int]]:
        """A light second round, right after `datagrams_with_paths`: only the active paths
        whose window has room, and none of the streams' data (the round served it), for
        what a subclass kept for another path that had no room (FEC repairs)."""
        out: list[tuple[bytes, NetworkAddress, int]] = []
        for path in list(self._paths.values()):
            if not self._has_room(path) or not self._attr(path, "_network_paths"):
                continue
            with self._on_path(path), self._holding_back(None):
                self._retire_on_own_path(path)
                sent: list[tuple[bytes, NetworkAddress]] = super().datagrams_to_send(now)
            self._account(path, sent)
            out.extend((data, addr, path.path_id) for data, addr in sent)
        return out

    def _idle(self, path: Path, now: float, view: PathView | None, wants_data: bool) -> bool:
        """This path has provably nothing to send this round (the scheduler gave it no
        data, or its window has no room, and nothing of its own is due): skipping it
        spares a whole packet-building pass, the cost of a second path (issue #3)."""
        if path.state is not PathState.ACTIVE or self._close_pending:
            return False
        if wants_data and view is not None and view.room() >= view.datagram_size:
            return False
        if self.urgent_copies.pending or self._wants_to_send(path):
            return False
        space: QuicPacketSpace = self._attr(path, "_spaces")[Epoch.ONE_RTT]
        if space.ack_at is not None and space.ack_at <= now:
            return False
        if self._attr(path, "_probe_pending") or self._attr(path, "_retire_connection_ids"):
            return False
        if not all(cid.was_sent for cid in self._attr(path, "_host_cids")):
            return False
        network_paths: list[QuicNetworkPath] = self._attr(path, "_network_paths")
        if not network_paths or network_paths[0].remote_challenges:
            return not network_paths
        if not network_paths[0].is_validated:
            return False
        search = self._recovery_of(path).pmtu
        return search is None or search.probe_due(now) is None

    def _wants_to_send(self, path: Path) -> bool:
        """Something of a subclass's (FEC repairs) may leave on this path this round."""
        return False

    def _send_on_live_path(
        self,
        path: Path,
        now: float,
        data_allowed: bool,
        share: tuple[set[int], int | None] | None = None,
        backlog: bool = True,
    ) -> list[tuple[bytes, NetworkAddress]]:
        if not self._network_paths:
            return []  # server side: no packet decrypted on this path yet
        self._retire_on_own_path(path)
        if path.state is PathState.VALIDATING:
            return self._send_path_challenge(now)
        sent = self._challenge_new_address(now)
        if not data_allowed:
            self._sync_datagram_size(now)  # a backup path probes once it carries data
            with self._holding_back(None):
                return sent + super().datagrams_to_send(now)
        sent += self._send_mtu_probe(now)
        return sent + self._note_full(self._send_data(path, now, share, backlog))

    def _retire_on_own_path(self, path: Path) -> None:
        """Before aioquic writes a packet on the live `path`: the peer's CIDs it gave up on
        it (switching when the peer switched, `change_connection_id`) are queued for
        RETIRE_CONNECTION_ID, which names path 0's CIDs once multipath is on (draft-21);
        another path's go in its PATH_RETIRE_CONNECTION_ID."""
        if path is not self._path0 and self._retire_connection_ids:
            path.retire_pending += self._retire_connection_ids
            self._retire_connection_ids.clear()

    def _send_data(
        self,
        path: Path,
        now: float,
        share: tuple[set[int], int | None] | None,
        backlog: bool = True,
    ) -> list[tuple[bytes, NetworkAddress]]:
        """Flush the live path: with the "deadline" policy's `share` (streams to leave to
        other paths, byte budget), or, in a round it has none, the "lowest-rtt" policy's
        rule (a path leaves alone what it would deliver late and another would not).
        `backlog`: some stream has data queued (else there is nothing to hold back)."""
        priorities = self.stream_priorities()
        if share is not None:
            held, budget = share
        elif priorities and backlog:
            held, budget = self.scheduler.late_streams(self, path, priorities, now), None
        else:
            held, budget = set(), None
        held |= self._blocked_streams()
        copies = self._send_urgent_copies(path, now, priorities)
        if copies:
            held = held - {c.stream_id for c in copies}  # the hand-out gave them elsewhere
        if budget is not None:
            budget += sum(c.size for c in copies)
        first = self._packet_number
        with self._holding_back(held), self._recovery().window_budget(budget):
            sent: list[tuple[bytes, NetworkAddress]] = super().datagrams_to_send(now)
        self.urgent_copies.withdraw(copies)
        if priorities:
            self._offer_urgent_copies(path, first, priorities, now)
        return sent

    def _blocked_streams(self) -> set[int]:
        """Streams the peer has not let us open yet (RFC 9000 §4.6): nothing may be sent
        on them, a RESET_STREAM included (aioquic would send one: STREAM_LIMIT_ERROR).
        aioquic lists them until MAX_STREAMS lets them open."""
        blocked = (*self._streams_blocked_bidi, *self._streams_blocked_uni)
        return {s.stream_id for s in blocked if s.stream_id is not None}

    @contextmanager
    def _holding_back(self, stream_ids: Collection[int] | None) -> Iterator[None]:
        """Keep these streams' data (None: all application data) off the live path.

        A backup path carries ACKs and control frames only while others work; a slow
        path leaves a stream alone when it would deliver after the stream's deadline
        and a faster path would not.
        """
        if stream_ids is not None and not stream_ids:
            yield  # nothing to hold back: no pass over the queue
            return
        streams, datagrams = self._streams_queue, self._datagrams_pending
        if stream_ids is None:
            held, self._datagrams_pending = streams, deque()
        else:
            held = [s for s in streams if s.stream_id in stream_ids]
        if not held:
            yield
            return
        kept = set(held)
        self._streams_queue = [s for s in streams if s not in kept]
        try:
            yield
        finally:
            # aioquic may have dropped finished streams and rotated the ones it served.
            self._streams_queue = held + [s for s in self._streams_queue if s not in kept]
            self._datagrams_pending = datagrams

    def _send_urgent_copies(
        self, path: Path, now: float, priorities: Mapping[int, StreamPriority]
    ) -> list[Copy]:
        """Queue, first on this path, the urgent ranges other paths sent (within its cwnd),
        but for streams whose deadline passes before this path would deliver them. (Not
        the round's hand-out: it gave the stream to the path the original rides.)"""
        room = self._loss.congestion_window - self._loss.bytes_in_flight
        if not self.urgent_copies.pending or room <= 0:
            return []
        arrival = now + (self.path_rtt(path) or self._configuration.initial_rtt) / 2
        late = set()
        for copy in self.urgent_copies.pending:
            priority = priorities.get(copy.stream_id)
            due = None if priority is None else priority.deadline_at
            if due is not None and due < arrival:
                late.add(copy.stream_id)
        copies = self.urgent_copies.send_on(path.path_id, room, late)
        if copies:
            self.scheduler.count(path.path_id, "urgent-copy", len(copies))
        return copies

    def _offer_urgent_copies(
        self, path: Path, first: int, priorities: Mapping[int, StreamPriority], now: float
    ) -> None:
        """Offer copies of what just left on this path for streams too urgent to retransmit.

        Only the streams whose data just left are weighed (a flush carries a few of the
        hundreds a busy connection may have queued)."""
        if first == self._packet_number or len(self.scheduler.working_paths(self)) < 2:
            return
        rtt = self.path_rtt(path) or self._configuration.initial_rtt
        loss = self._recovery_of(path)
        risk = LossRisk(loss.steady_loss_rate, self._repair_time(loss))
        urgent: dict[int, bool] = {}

        def is_urgent(stream_id: int) -> bool:
            if stream_id not in urgent:
                priority = priorities.get(stream_id)
                urgent[stream_id] = priority is not None and self.scheduler.is_urgent(
                    priority, now, rtt, risk
                )
            return urgent[stream_id]

        if len(self.urgent_copies.copied) > 2 * len(self._streams) + 16:
            self.urgent_copies.forget(self._streams)
        bytes_sent: int | None = None
        space: QuicPacketSpace = self._spaces[Epoch.ONE_RTT]
        for number in range(first, self._packet_number):
            packet = space.sent_packets.get(number)
            copied = set()
            for handler, args in packet.delivery_handlers if packet else ():
                sender = sender_of(handler)
                if sender is None or sender._stream_id is None:
                    continue
                stream_id = sender._stream_id
                if not is_urgent(stream_id):
                    continue
                if bytes_sent is None:
                    bytes_sent = sum(p.stats.bytes_sent for p in self._paths.values())
                if self.urgent_copies.offer(path.path_id, stream_id, sender, args, bytes_sent):
                    copied.add(id(sender))
            if packet is not None and copied:
                make_safe(packet.delivery_handlers, copied)

    def _challenge_new_address(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """Server: the live path's client moved (NAT rebinding, migration) to an address
        not validated yet; the first datagram sent there must carry its PATH_CHALLENGE.

        aioquic writes the challenge after the ACK in its next packet, and, being in
        flight, only within the congestion window: with the window full of packets sent
        to the old address, the ACK went alone (issue #4; the interop runner's rebind
        rule wants the challenge first), and with less than a datagram of room the
        challenge is not padded to 1200 bytes (RFC 9000 §8.2.1). Then, and only then
        (aioquic's packet is left alone otherwise), the challenge goes first, in a
        datagram of its own: a probing frame (§9.1), sent beyond a window filled on
        the old path (§9.4), within the anti-amplification limit."""
        network_path = self._network_paths[0]
        if self._is_client or network_path.is_validated or not self._handshake_complete:
            return []  # aioquic's own condition for writing the challenge
        if self._close_pending or self._state in END_STATES:
            return []  # only CONNECTION_CLOSE leaves now
        if self._loss.congestion_window - self._loss.bytes_in_flight >= self._max_datagram_size:
            return []  # aioquic's next packet carries it, padded
        return self._send_path_challenge(now)

    def _send_path_challenge(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """Probe the live path's peer address once: a client's new path, or the address
        a server's client moved to. The validation deadline, set by the first challenge
        as aioquic does (RFC 9000 §8.2.4), abandons the path if it goes unanswered."""
        network_path = self._network_paths[0]
        if network_path.local_challenge_sent:
            return []
        # A server answers an unvalidated address within 3x what came from it (RFC 9000
        # §8.1); the padding to 1200 bytes stops there (§8.2.1). A client sends first.
        allowance = None
        if not self._is_client:
            allowance = 3 * network_path.bytes_received - network_path.bytes_sent
        try:
            builder = self._one_rtt_builder(self._max_datagram_size, allowance)
            self._write_path_challenge_frame(builder=builder, network_path=network_path)
        except QuicPacketBuilderStop:
            return []  # no allowance left: the client's next datagram brings more
        if network_path.validation_deadline is None:
            network_path.validation_deadline = now + 3 * max(
                self._loss.get_probe_timeout(), 2 * self._configuration.initial_rtt
            )
        sent: list[tuple[bytes, NetworkAddress]] = self._flush_builder(
            builder=builder, network_path=network_path, peer_cid=self._peer_cid.cid, now=now
        )
        return sent

    def _one_rtt_builder(
        self, max_datagram_size: int, max_total_bytes: int | None = None
    ) -> QuicPacketBuilder:
        """A builder for the live path with a 1-RTT packet started (aioquic's stays unused),
        its datagrams within `max_total_bytes` (the anti-amplification limit) if given."""
        builder = QuicPacketBuilder(
            host_cid=self.host_cid,
            is_client=self._is_client,
            max_datagram_size=max_datagram_size,
            packet_number=self._packet_number,
            peer_cid=self._peer_cid.cid,
            quic_logger=self._quic_logger,
            version=self._version or QuicProtocolVersion.VERSION_1,
        )
        builder.max_total_bytes = max_total_bytes  # read when the packet starts a datagram
        builder.start_packet(QuicPacketType.ONE_RTT, self._cryptos[Epoch.ONE_RTT])
        return builder

    # -- PMTU discovery --------------------------------------------------------------------------

    def _recovery(self) -> CountingRecovery:
        loss = self._loss
        assert isinstance(loss, CountingRecovery)  # what _new_recovery builds for every path
        return loss

    def _sync_datagram_size(self, now: float) -> PmtuSearch | None:
        """The live path sends at its search's size (BASE again on a new 4-tuple)."""
        search = self._recovery().pmtu
        if search is None or not self._network_paths:
            return None
        addr = self._network_paths[0].addr
        if addr != search.addr:
            search.moved(addr, now)
        if search.size != self._max_datagram_size:
            self._max_datagram_size = search.size
            self._recovery().set_max_datagram_size(search.size)
        return search

    def _send_mtu_probe(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """A due PMTU probe on the live path: PING+PADDING, ahead of the data.

        Like any packet it needs room in the congestion window, but only some, as
        quic-go does: a probe larger than the room would otherwise never leave a
        window kept full."""
        search = self._sync_datagram_size(now)
        if search is None or not self._may_probe():
            return []
        size = search.probe_due(now)
        if size is None:
            return []
        builder = self._one_rtt_builder(size)
        builder.start_frame(
            QuicFrameType.PING, handler=self._on_mtu_probe_delivery, handler_args=(search, size)
        )
        padding = builder.remaining_buffer_space
        builder.start_frame(QuicFrameType.PADDING, capacity=padding).push_bytes(bytes(padding - 1))
        number = self._packet_number
        sent: list[tuple[bytes, NetworkAddress]] = self._flush_builder(
            builder=builder,
            network_path=self._network_paths[0],
            peer_cid=self._peer_cid.cid,
            now=now,
        )
        self._recovery().mtu_probes.add(number)
        search.on_probe_sent(size)
        return sent

    def _note_full(
        self, sent: list[tuple[bytes, NetworkAddress]]
    ) -> list[tuple[bytes, NetworkAddress]]:
        """Count full datagrams for the live path's search until it may probe."""
        search = self._recovery().pmtu
        if search is not None and not search.wanted and self._handshake_confirmed:
            size = self._max_datagram_size
            search.on_full_datagrams(sum(len(data) >= size for data, _ in sent))
        return sent

    def _may_probe(self) -> bool:
        loss = self._loss
        return (
            self._handshake_confirmed
            and self._live.usable
            and self._network_paths[0].is_validated
            and not self._close_pending
            and self._state not in END_STATES
            and loss.bytes_in_flight < loss.congestion_window
        )

    def _on_mtu_probe_delivery(
        self, delivery: QuicDeliveryState, search: PmtuSearch, size: int
    ) -> None:
        if delivery == QuicDeliveryState.ACKED:
            search.on_probe_acked(size, self._now)
            if self._recovery().pmtu is search:
                # The path's size follows at once, not at its next send (an idle path's
                # stats would show the old one).
                self._sync_datagram_size(self._now)
        elif delivery == QuicDeliveryState.LOST:
            search.on_probe_lost(size, self._now)

    def _write_stream_frame(
        self,
        builder: QuicPacketBuilder,
        space: QuicPacketSpace,
        stream: QuicStream,
        max_offset: int,
    ) -> int:
        room = builder.remaining_buffer_space
        used = int(super()._write_stream_frame(builder, space, stream, max_offset))
        written = room - builder.remaining_buffer_space
        if written > 0:
            priority = self.stream_priorities().get(stream.stream_id or 0)
            urgency = DEFAULT_URGENCY if priority is None else priority.urgency
            counts = self._live.stats.stream_bytes
            counts[urgency] = counts.get(urgency, 0) + written
        return used

    def _account(self, path: Path, sent: list[tuple[bytes, NetworkAddress]]) -> None:
        path.stats.packets_sent += len(sent)
        path.stats.bytes_sent += sum(len(data) for data, _ in sent)

    def _write_ack_frame(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, now: float
    ) -> None:
        if self._live is self._path0:
            super()._write_ack_frame(builder=builder, space=space, now=now)
            return
        assert space.largest_received_time is not None
        delay = (
            int((now - space.largest_received_time) * 1_000_000) >> self._local_ack_delay_exponent
        )
        buf = builder.start_frame(
            f.PATH_ACK,
            capacity=ACK_FRAME_CAPACITY + 5,
            handler=self._on_ack_delivery,
            handler_args=(space, space.largest_received_packet),
        )
        buf.push_uint_var(self._live.path_id)
        push_ack_frame(buf, space.ack_queue, delay, builder.remaining_buffer_space)
        space.ack_at = None

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        # aioquic calls this once per 1-RTT packet after the handshake: our frames ride along.
        super()._write_connection_limits(builder=builder, space=space)
        if self._peer_max_path_id is not None and self.multipath_enabled:
            if not self._multipath_ready:
                self._path_crypto(0)  # every path shares path 0's key history from now on
                self._multipath_ready = True
            self._issue_path_cids()
            self._write_multipath_frames(builder)

    def _write_multipath_frames(self, builder: QuicPacketBuilder) -> None:
        for queue in (self._announce, self._control):
            while queue:
                self._write_frame(builder, queue[0])
                queue.popleft()
        for path in self._paths.values():
            while path.retire_pending:
                frame = f.PathRetireConnectionId(path.path_id, path.retire_pending[0])
                self._write_frame(builder, frame)
                path.retire_pending.pop(0)

    def _write_frame(self, builder: QuicPacketBuilder, frame: f.MultipathFrame) -> None:
        """Write one frame (QuicPacketBuilderStop when the packet is full: it stays queued)."""
        frame_type, body = frame.split()
        buf = builder.start_frame(
            frame_type,
            capacity=len(body) + 8,
            handler=self._on_multipath_frame_delivery,
            handler_args=(frame,),
        )
        buf.push_bytes(body)

    def _on_multipath_frame_delivery(
        self, delivery: QuicDeliveryState, frame: f.MultipathFrame
    ) -> None:
        if (
            delivery == QuicDeliveryState.ACKED
            and isinstance(frame, f.PathNewConnectionId)
            and frame.path_id not in self._acked_cid_paths
            and frame.path_id not in self._used_path_ids
        ):
            self._acked_cid_paths.add(frame.path_id)
            self._check_path_id_ready(frame.path_id)
        if delivery != QuicDeliveryState.LOST or self._state in END_STATES:
            return
        if isinstance(frame, f.PathNewConnectionId):
            if self._cid_path.get(frame.cid) == frame.path_id:
                self._announce.append(frame)  # still valid: announce again
        elif isinstance(frame, f.PathStatus):
            path = self._paths.get(frame.path_id)
            if path is not None and path.status_seq_sent == frame.sequence:
                self._control.append(frame)  # resend only the latest status
        elif isinstance(frame, f.PathRetireConnectionId):
            path = self._paths.get(frame.path_id)
            if path is not None:
                path.retire_pending.append(frame.sequence)
            elif frame.path_id in self._peer_pool:
                self._control.append(frame)  # a path ID not in use yet
        else:
            self._control.append(frame)

    # -- timers ---------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        if len(self._paths) == 1 or self._state in END_STATES:
            return super().get_timer()
        timers: list[float] = []
        for path in self._paths.values():
            timer = self._path_timer(path)
            if timer is not None:
                timers.append(timer)
            if path.closing_until is not None:
                timers.append(path.closing_until)
            silence = path.silence_at  # as of the last flush or timer
            if silence is not None and silence > self._stalls_checked_at:
                timers.append(silence)  # judged once; later evidence comes with an ACK
            if (keepalive := self._keepalive_at(path)) is not None:
                timers.append(keepalive)
        return min(timers, default=None)

    def _path_timer(self, path: Path) -> float | None:
        """aioquic's timer for this path; for a parked path, the one computed when it was
        last parked unless its state (or the connection's close timer) changed since."""
        if path is self._live:
            return self._live_path_timer(path)
        if path.timer_key == (path.version, path.state, self._close_at, self._state):
            return path.timer_at
        with self._on_path(path):
            path.timer_at = self._live_path_timer(path)
        path.timer_key = (path.version, path.state, self._close_at, self._state)
        return path.timer_at

    def _live_path_timer(self, path: Path) -> float | None:
        if path.state is PathState.CLOSING:
            # It sends nothing more: an ACK or pacing deadline of its own would stay due
            # forever (the peer abandoned it; its packets were lost).
            self._spaces[Epoch.ONE_RTT].ack_at = None
            self._pacing_at = None
        timer: float | None = super().get_timer()
        return timer

    def handle_timer(self, now: float) -> None:
        if self._close_at is None and self._state in END_STATES:
            return  # terminated: nothing is due (aioquic would compare against None)
        self._now = now
        if len(self._paths) == 1:
            super().handle_timer(now)
            self._keep_handshake_alive(now)
            self._forget_closed_paths(now)
            return
        # Path 0 first: aioquic's idle/close handling must run in its own context.
        with self._on_path(self._path0):
            super().get_timer()  # refreshes this path's loss timer
            super().handle_timer(now)
        for path in [p for p in self._paths.values() if p is not self._path0]:
            if self._state in END_STATES:
                return
            with self._on_path(path):
                super().get_timer()
                super().handle_timer(now)
        if self._state in END_STATES:
            return
        self._track_stalls(now)
        for path in self.scheduler.suspect_paths(self):
            with self._on_path(path):
                self._reinject_in_flight()
        for path in self.scheduler.need_evidence(self):
            self._set_attr(path, "_probe_pending", True)  # its ACK will tell whether it works
        for path in self._paths.values():
            keepalive = self._keepalive_at(path)
            if keepalive is not None and keepalive <= now:
                path.last_sent_at = now  # one PING per interval, even before it leaves
                path.keepalive_pending = True
                self._set_attr(path, "_probe_pending", True)
        for path in self.scheduler.dead_paths(self, now):
            path.abandon_error = f.PATH_UNSTABLE_OR_POOR
            self._start_closing(path, now)
        self._forget_closed_paths(now)

    def _note_activity(self, path: Path, now: float) -> None:
        """The live path sent something ack-eliciting: a keep-alive, or the connection at work."""
        path.last_sent_at = now
        if path.keepalive_pending:
            path.keepalive_pending = False
        else:
            self._active_at = now

    def _keepalive_at(self, path: Path) -> float | None:
        """When an idle path (a backup, say) sends a PING: it keeps NAT bindings open
        and the path's RTT fresh (often, for the "deadline" policy, which chooses by
        it), and an unanswered one is how a dead backup shows.
        Only while the connection is in use (something else was sent since this path's
        last packet): keep-alives never keep an idle connection from timing out."""
        if path.state is not PathState.ACTIVE or path.last_sent_at is None:
            return None
        if path.last_sent_at >= self._active_at:
            return None
        interval = min(
            self._configuration.idle_timeout / 3, self.scheduler.idle_ping_interval(path.backup)
        )
        return path.last_sent_at + interval

    def _idle_timeout(self) -> float:
        idle: float = super()._idle_timeout()
        if len(self._paths) > 1:
            idle = max(idle, 3 * self._largest_pto())
        if self._is_client and not self._handshake_complete:
            # RFC 9000 §10.1: at least three times the *current* PTO. Under heavy loss the
            # handshake's PTO doubles with each probe; a flat timeout gives it up between
            # two probes (interop handshakeloss). The caller's handshake timeout bounds it.
            idle = max(idle, 3 * self._loss.get_probe_timeout() * 2**self._loss._pto_count)
        return idle

    def _keep_handshake_alive(self, now: float) -> None:
        """Client, handshake under way: the idle deadline set at the last restart used the
        PTO of then; with the current (backed-off) one, 3x it always reaches past the next
        probe, so a handshake that still probes is not idle. Only the caller's handshake
        timeout ends it (the SDK's `open_session(timeout=...)`)."""
        if (
            self._is_client
            and not self._handshake_complete
            and self._state not in END_STATES
            and self._close_at is not None
            and not self._close_pending
        ):
            self._close_at = max(self._close_at, now + self._idle_timeout())

    def _abandon_path_validation(self) -> None:
        if self._live is self._path0 and len(self._paths) == 1:
            super()._abandon_path_validation()
            return
        # A failed validation costs this path, never the connection (draft-21 §3.1).
        path = self._live
        path.abandon_error = f.PATH_UNSTABLE_OR_POOR
        network_path = self._network_paths[0]
        network_path.validation_deadline = None
        self._start_closing(path, self._now)


class _OnPath:
    """`MultipathConnection._on_path`'s block: a plain class, not a generator-based
    context manager, as it runs several times per flush and per timer (a third of
    the cost)."""

    __slots__ = ("_conn", "_path", "_previous")

    def __init__(self, conn: MultipathConnection, path: Path) -> None:
        self._conn = conn
        self._path = path
        self._previous = conn._live

    def __enter__(self) -> None:
        if self._path is not self._previous:
            self._conn._park(self._previous)
            self._conn._load(self._path)

    def __exit__(self, *exc: object) -> None:
        if self._path is not self._previous:
            self._conn._park(self._path)
            self._conn._load(self._previous)
