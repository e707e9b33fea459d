"""The edge's QUIC front: accepts connections and serves their requests.

One `EdgeConnection` per QUIC connection picks the application protocol from
the negotiated ALPN (`netsched/1`, `h3`, `hq-interop`), turns each request
into an `IncomingRequest` for the dispatcher, and streams the outcome back.
All three protocol objects share one interface, so this file has a single
request path.

Resumption and 0-RTT: session tickets are sealed with the shared ticket key
(`tls_tickets.EdgeTickets`, `[edge] session_tickets`), so a client resumes on
any worker or host that has the key; each process accepts 0-RTT once per
ticket. Requests that arrive in 0-RTT can be replayed by an attacker (RFC 9001
§9.2), so only some are served before the handshake completes (RFC 8470 §3):
`[edge] early_data = "safe"` (the default) serves the safe methods (GET, HEAD,
OPTIONS), "idempotent" also requests whose SLO says idempotent; the others
wait for the handshake, which a replayed flight never reaches. A request
served early reaches HTTP backends with `Early-Data: 1`; a backend's 425 Too
Early makes the edge wait for the handshake and ask once more (a unary request),
or reaches the client (a stream, whose body is gone). "off" rejects 0-RTT in
the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import errno
import functools
import itertools
import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    END_STATES,
    NEW_CONNECTION_ID_FRAME_CAPACITY,
    QuicConnection,
    QuicConnectionError,
    QuicConnectionId,
    QuicReceiveContext,
)
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    QuicEvent,
    StreamDataReceived,
)
from aioquic.quic.packet import QuicErrorCode, QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.tls import CipherSuite
from prometheus_client import CollectorRegistry, Counter, Gauge

from netsched_client.errors import Status
from netsched_client.proto import h3 as h3proto
from netsched_client.proto import hq as hqproto
from netsched_client.proto import session as native
from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.events import (
    BodyReceived,
    DatagramReceived,
    ProtocolEvent,
    RequestReceived,
    RequestRejected,
    StreamAborted,
)
from netsched_client.proto.fec_link import FecConfig
from netsched_client.proto.framing import RequestHead, ResponseHead
from netsched_client.proto.multipath.connection import MultipathConnection
from netsched_client.proto.multipath.events import PathAbandoned, PathAvailable
from netsched_client.proto.send_order import DeadlineMissed
from netsched_client.proto.slo import SLO
from netsched_client.runtime.debug import enable_debug_logs
from netsched_client.runtime.driver import ConnectionDriver
from netsched_client.runtime.endpoint import (
    EndpointKeys,
    EndpointLimits,
    ServerEndpoint,
    open_server_endpoint,
)
from netsched_client.runtime.planner import BurstPlanner
from netsched_client.runtime.ticker import TickedFlow

from .access_log import Access, configure_logging, log_access, logging_from_environment
from .admin import AdminServer
from .config import EdgeConfig
from .datagrams import DatagramRelay
from .dispatch import Dispatcher, Held, IncomingRequest, Outcome
from .keys import edge_keys
from .lifecycle import restart_note, restart_only_changes
from .overload import LagGovernor, watch_lag
from .planner_metrics import PlannerCollector
from .pool import ServicePool
from .tls import (
    CertificatePair,
    certificate_names,
    generate_self_signed,
    keep_credentials,
    load_credentials,
)
from .tls_tickets import EdgeTickets, SealedTicketContext, adopt
from .udp_front import UdpFront
from .workers import ReuseportSteering, WorkerIdentity

if TYPE_CHECKING:  # the fleet package needs httpx (the `fleet` extra); serving does not
    from .fleet.host import FleetStatus
    from .fleet.reissue import CidRefresh
    from .fleet.shared_keys import KeyRing

log = logging.getLogger("netsched.edge")


def _egress_rate(config: EdgeConfig) -> float | None:
    """The planner's budget in bytes per second, from `[edge] egress_mbps`."""
    return None if config.egress_mbps is None else config.egress_mbps * 1e6 / 8


# Body chunks buffered per request before the backend reads them; QUIC flow
# control bounds the bytes, this bounds the chunk objects.
MAX_QUEUED_CHUNKS = 1024

# Response bytes a stream may hold unacknowledged (aioquic's send buffer is
# unbounded): above `[limits] max_stream_buffer` the writer stops reading the
# backend and waits until the client has acknowledged down to half of it, so a
# slow or stalled client costs the edge at most about the limit + one chunk per
# stream, not the whole response. A response that fits is read whole at once,
# so its backend slot goes back whatever the client's pace.
# aioquic raises no event when an ACK frees send buffer, so a writer over the
# limit polls; half the limit leaves tens of ms of data queued at loopback
# rates, so the poll never starves the stream. While nothing is acknowledged
# the poll backs off, so stalled streams cost few wake-ups; after
# `[limits] send_timeout_s` without progress the stream is reset.
SEND_BUFFER_POLL_S = 0.005
SEND_BUFFER_POLL_MAX_S = 0.2

# RFC 9114 §8.1: the stream could not be completed (a backend broke mid-response);
# the request was not processed (refused after GOAWAY, safe to retry elsewhere).
H3_INTERNAL_ERROR = 0x102
H3_REQUEST_REJECTED = 0x10B
# How often a drain looks whether the requests under way have finished.
DRAIN_POLL_S = 0.02

# RFC 9110 §9.2.1: the safe methods, served from 0-RTT by default (a replay is a
# repeat, and repeating these changes nothing). PUT and DELETE are idempotent but
# not safe: a replay could undo a later change, so they wait for the handshake.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Fetches: an HTTP/3 GET or HEAD is served as a stream (the response flows as
# the backend produces it, under the send-buffer bound) rather than collected
# whole up to the service's max_body.
_FETCH_METHODS = frozenset({"GET", "HEAD"})

# aioquic's reason for a first Initial without CRYPTO (pinned by tests/test_edge_handshake_loss.py).
NO_CRYPTO_FRAME = "Packet contains no CRYPTO frame"
# Path 0's CIDs a connection holds at most after a re-issue (EdgeQuicConnection.reissue_cids):
# aioquic's 8 active, 8 fresh ones, 8 the client was asked to retire and has not yet.
MAX_HELD_CIDS = 24


class ListenError(OSError):
    """An address the edge cannot listen on, said in one line for the operator."""


@contextlib.contextmanager
def binding(what: str, host: str, port: int) -> Iterator[None]:
    """Turn the OSError of binding `host:port` (`what`: its use and protocol) into a
    ListenError that names the address: asyncio's own messages leave it out or bury it."""
    try:
        yield
    except ListenError:
        raise
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"{where} ({what}) is in use by another process") from None
        reason = exc.strerror or str(exc)
        raise ListenError(f"cannot listen on {where} ({what}): {reason}") from None


class SendTimeout(Exception):
    """The client left response data unacknowledged for `[limits] send_timeout_s`."""


class EdgeQuicConnection(NetSchedConnection):
    """NetSchedConnection as the edge accepts it: HelloRetryRequest, lenient first
    Initial, session tickets from `tickets`, 0-RTT when `early_data`.

    TLS: `tls.HelloRetryContext` (clients that lead with a post-quantum share).
    First Initial: RFC 9000 §17.2.2 makes the first Initial a client *sends*
    carry CRYPTO. When that one is lost, the first to *arrive* may be a
    PING+PADDING probe or an ACK, and aioquic would close the connection on it
    ("Packet contains no CRYPTO frame"). Such a packet is ignored instead, without
    an answer: the client's retransmitted ClientHello starts the handshake, and a
    straggler of a connection that already ended (or a datagram whose header was
    corrupted into an unknown connection ID) gets nothing back. Until a ClientHello
    arrives the connection sends nothing and ends silently at its idle timeout.

    0-RTT: aioquic accepts early data with any valid ticket; we accept it only when
    `tickets` admits the ticket (once per ticket and process, a recent one);
    `early_streams` records the streams whose data came in 0-RTT packets.

    Closing before any client packet was processed (the connection was made by a
    corrupted, stray or CRYPTO-less Initial) is silent: a CONNECTION_CLOSE would go to a
    connection ID nobody chose, from a connection that never was (and the interop
    runner counts it as one more handshake).
    """

    def __init__(
        self,
        *args: Any,
        tickets: EdgeTickets | None = None,
        early_data: bool = False,
        **kwargs: Any,
    ) -> None:
        self._tickets = tickets
        self._early_data = early_data
        self.early_streams: set[int] = set()  # bounded by the stream limit (aioquic checks it)
        self._heard_peer = False  # a packet of the client's was processed (not just ignored)
        super().__init__(*args, **kwargs)

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        adopt(self.tls, self._tickets, early_data=self._early_data)

    def close(
        self,
        error_code: int = QuicErrorCode.NO_ERROR,
        frame_type: int | None = None,
        reason_phrase: str = "",
    ) -> None:
        if self._heard_peer or self._close_event is not None:
            super().close(error_code, frame_type, reason_phrase)
            return
        self._close_event = ConnectionTerminated(
            error_code=error_code, frame_type=frame_type, reason_phrase=reason_phrase
        )
        self._close_end()

    def in_early_data(self, stream_id: int) -> bool:
        """The stream's data came in 0-RTT and the handshake is still under way."""
        return stream_id in self.early_streams and not self._handshake_complete

    def _update_traffic_key(
        self,
        direction: tls.Direction,
        epoch: tls.Epoch,
        cipher_suite: tls.CipherSuite,
        secret: bytes,
    ) -> None:
        if epoch == tls.Epoch.ZERO_RTT and not self._admit_early_data():
            # Reject 0-RTT: no keys to read it, and EncryptedExtensions (built
            # after this call) tells the client, which resends it in 1-RTT.
            self.tls.early_data_accepted = False
            return
        super()._update_traffic_key(direction, epoch, cipher_suite, secret)

    def _admit_early_data(self) -> bool:
        # Called once the PSK binder verified: a replayed flight is the ticket's second use.
        context = self.tls
        ticket = context.resumed_ticket if isinstance(context, SealedTicketContext) else None
        if not self._early_data or self._tickets is None or ticket is None:
            return False
        return self._tickets.admit_early_data(ticket, datetime.datetime.now(datetime.UTC))

    def _handle_stream_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        start = buf.tell()
        super()._handle_stream_frame(context, frame_type, buf)
        if context.epoch == tls.Epoch.ZERO_RTT:
            end = buf.tell()
            buf.seek(start)
            self.early_streams.add(buf.pull_uint_var())
            buf.seek(end)

    def _payload_received(
        self, context: QuicReceiveContext, plain: bytes, crypto_frame_required: bool = False
    ) -> tuple[bool, bool]:
        try:
            received = super()._payload_received(
                context, plain, crypto_frame_required=crypto_frame_required
            )
        except QuicConnectionError as exc:
            if not (crypto_frame_required and exc.reason_phrase == NO_CRYPTO_FRAME):
                self._heard_peer = True  # a real peer, owed a CONNECTION_CLOSE
                raise
            return False, False  # not ack-eliciting: no answer before a ClientHello
        self._heard_peer = True
        return received

    # -- a fleet's QUIC-LB rotation: fresh CIDs for a connection (docs/FLEET.md) -------------
    # The one place that changes aioquic's CID state for it (pinned 1.7.2: `_host_cids`,
    # `_host_cid_seq`, `_events` and its NEW_CONNECTION_ID writer), called by
    # fleet.reissue.CidRefresh. Path 0 only: other paths' CIDs are the multipath module's.

    _cid_retire_prior_to = 0  # what our NEW_CONNECTION_ID frames ask the client to retire

    def reissue_cids(self, stale: Callable[[bytes], bool]) -> int:
        """Give path 0 a fresh CID from the CID factory for each of its CIDs for which
        `stale` holds (those of a rotated-out QUIC-LB configuration), announced with a
        Retire Prior To covering the stale ones: the client moves to a fresh one and
        retires them (RFC 9000 §5.1.2, §19.15); they are served until it has. The frames
        go out at the next flush. Returns the CIDs issued (0: none stale, or closing).

        CIDs a previous call asked the client to retire and that it still has not are
        forgotten beyond `MAX_HELD_CIDS` held: a peer that ignores Retire Prior To does
        not make a connection hold more CIDs at every rotation."""
        if self._state in END_STATES:
            return 0
        with self._on_path(self._path0):
            held = self._host_cids
            asked = self._cid_retire_prior_to
            replace = [c for c in held if c.sequence_number >= asked and stale(c.cid)]
            if not replace:
                return 0
            overdue = [c for c in held if c.sequence_number < asked and c.cid != self.host_cid]
            for old in overdue[: max(0, len(held) + len(replace) - MAX_HELD_CIDS)]:
                held.remove(old)
                self._events.append(ConnectionIdRetired(connection_id=old.cid))
            self._cid_retire_prior_to = max(c.sequence_number for c in replace) + 1
            for _ in replace:
                cid = self._new_cid()
                held.append(QuicConnectionId(cid, self._host_cid_seq, self._new_reset_token(cid)))
                self._host_cid_seq += 1
        return len(replace)

    def _write_new_connection_id_frame(
        self, builder: QuicPacketBuilder, connection_id: QuicConnectionId
    ) -> None:
        # aioquic's writer, with our Retire Prior To where it writes 0 ("FIXME"); a frame's
        # may not exceed its own sequence number (RFC 9000 §19.15).
        retire_prior_to = min(self._cid_retire_prior_to, connection_id.sequence_number)
        buf = builder.start_frame(
            QuicFrameType.NEW_CONNECTION_ID,
            capacity=NEW_CONNECTION_ID_FRAME_CAPACITY,
            handler=self._on_new_connection_id_delivery,
            handler_args=(connection_id,),
        )
        buf.push_uint_var(connection_id.sequence_number)
        buf.push_uint_var(retire_prior_to)
        buf.push_uint8(len(connection_id.cid))
        buf.push_bytes(connection_id.cid)
        buf.push_bytes(connection_id.stateless_reset_token)
        connection_id.was_sent = True
        self._events.append(ConnectionIdIssued(connection_id=connection_id.cid))
        logged = builder.quic_logger_frames
        if self._quic_logger is not None and logged is not None:
            logged.append(
                self._quic_logger.encode_new_connection_id_frame(
                    connection_id=connection_id.cid,
                    retire_prior_to=retire_prior_to,
                    sequence_number=connection_id.sequence_number,
                    stateless_reset_token=connection_id.stateless_reset_token,
                )
            )


class _AppProtocol(Protocol):
    def send_response(
        self, stream_id: int, head: ResponseHead, body: bytes = ..., *, end_stream: bool = ...
    ) -> bool: ...
    def send_body(self, stream_id: int, data: bytes, *, end_stream: bool = ...) -> bool: ...
    def send_datagram(self, service: str, payload: bytes) -> None: ...
    def abort(self, stream_id: int, error_code: int = ...) -> None: ...
    def forget(self, stream_id: int) -> None: ...
    def handle_event(self, event: QuicEvent) -> list[ProtocolEvent]: ...
    @property
    def open_streams(self) -> int: ...


class _RequestBody(AsyncIterator[bytes]):
    """A request body on its way from QUIC to the backend, bounded in chunks and bytes.

    Bytes queued count against the stream's `[limits] max_stream_buffer` (`put` says
    False beyond it) and the process budget, until the backend reads them or the
    request ends (`discard`).
    """

    def __init__(self, held: Held, limit: int) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(MAX_QUEUED_CHUNKS)
        self._held = held
        self._limit = limit
        self._discarded = False

    def put(self, data: bytes, *, end: bool) -> bool:
        """Queue a piece (and the end); False when the stream is over its bound."""
        if self._discarded:
            return True  # the request is over: late pieces go nowhere
        if self._held.bytes + len(data) > self._limit or self._queue.full():
            return False
        if data:
            self._queue.put_nowait(data)
            self._held.update(self._held.bytes + len(data))
        if end:
            try:
                self._queue.put_nowait(None)
            except asyncio.QueueFull:
                return False
        return True

    def __aiter__(self) -> _RequestBody:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._queue.get()
        if chunk is None:
            self._queue.put_nowait(None)  # the end stays the end for a second reader
            raise StopAsyncIteration
        if not self._discarded:
            self._held.update(self._held.bytes - len(chunk))
        return chunk

    def discard(self) -> None:
        """The request is over: what is still queued no longer counts (nor is read)."""
        self._discarded = True
        self._held.clear()
        while not self._queue.empty():
            self._queue.get_nowait()


@dataclass(slots=True)
class _Served:
    """What a request's response got to, for its access-log line."""

    status: int = 0  # the head sent; 0: none yet
    backend: str | None = None
    bytes_out: int = 0
    end: str = "cancelled"  # until the response completes or the edge resets it


@dataclass(slots=True)
class _Request:
    body: _RequestBody
    task: asyncio.Task[None] | None = None
    held: IncomingRequest | None = None  # came in 0-RTT, waits for the handshake
    received: int = 0  # request body bytes so far
    ended: bool = False  # the whole request body has arrived


_TENANTS = itertools.count()


class EdgeConnection:
    def __init__(self, driver: ConnectionDriver, edge: EdgeServer) -> None:
        self._driver = driver
        self._edge = edge
        self._proto: _AppProtocol | None = None
        self._requests: dict[int, _Request] = {}
        self._relay: DatagramRelay | None = None
        # Its share of the service queues: a number, not the connection (the queue must
        # not keep a closed connection alive).
        self._tenant = next(_TENANTS)
        # Client streams whose request head has not come yet: each must complete it
        # within header_timeout_s (nginx client_header_timeout) or is reset. Bounded by
        # the number of streams the client may open (QUIC stream limits).
        self._heads_due: dict[int, asyncio.TimerHandle] = {}
        self._handshake_done = asyncio.Event()  # what a 425 Too Early waits for
        self._goaway: int | None = None  # draining: the first stream ID refused
        self._last_stream_seen = -4  # the highest client request stream seen (none: -4)
        self._alpn = "-"  # negotiated (access log)
        driver.add_event_handler(self._on_quic_event)

    def _on_quic_event(self, event: QuicEvent) -> None:
        if isinstance(event, PathAvailable | PathAbandoned):
            self._edge.dispatcher.metrics.observe_path(event)
        elif isinstance(event, DeadlineMissed):
            self._edge.dispatcher.metrics.deadline_missed.inc()
        if isinstance(event, ProtocolNegotiated):
            self._proto = self._make_protocol(event.alpn_protocol)
        elif isinstance(event, HandshakeCompleted):
            self._handshake_done.set()
            self._release_held()
        elif isinstance(event, ConnectionTerminated):
            self._on_terminated()
            return
        if self._proto is None:
            return
        if isinstance(event, StreamDataReceived):
            self._watch_head(event.stream_id)
        for pevent in self._proto.handle_event(event):
            self._dispatch(pevent)

    def _watch_head(self, stream_id: int) -> None:
        """Bytes on a client request stream: start the head timer of each stream it opened."""
        if stream_id % 4 != 0 or stream_id <= self._last_stream_seen:
            return
        # A stream opens every lower one of its kind (RFC 9000 §3.2), even when their
        # first bytes come later or never: each gets its timer now. QUIC's stream limit
        # bounds how many that can be.
        timeout = self._edge.config.limits.header_timeout_s
        loop = asyncio.get_running_loop()
        for opened in range(self._last_stream_seen + 4, stream_id + 1, 4):
            self._heads_due[opened] = loop.call_later(timeout, self._head_overdue, opened)
        self._last_stream_seen = stream_id

    def _head_done(self, stream_id: int) -> None:
        timer = self._heads_due.pop(stream_id, None)
        if timer is not None:
            timer.cancel()

    def _head_overdue(self, stream_id: int) -> None:
        self._heads_due.pop(stream_id, None)
        if self._proto is None or stream_id in self._requests:
            return
        log.info("resetting stream %d: no complete request head in time", stream_id)
        self._edge.dispatcher.metrics.rejected.labels(str(Status.REQUEST_TIMEOUT)).inc()
        self._proto.abort(stream_id)
        self._proto.forget(stream_id)
        self._driver.schedule_transmit()

    def _make_protocol(self, alpn: str | None) -> _AppProtocol:
        self._alpn = alpn or "-"
        quic = self._driver.quic
        limits = self._edge.config.limits
        if alpn == h3proto.ALPN:
            return h3proto.H3Protocol(quic, max_header_bytes=limits.max_header_bytes)
        if alpn == hqproto.ALPN:
            return hqproto.HQProtocol(quic, max_header_bytes=limits.max_header_bytes)
        self._relay = DatagramRelay(
            self._edge.dispatcher, self._send_datagram, connection=quic, limits=limits
        )
        return native.NetSchedProtocol(quic)

    def _dispatch(self, event: ProtocolEvent) -> None:
        if isinstance(event, RequestReceived | RequestRejected | StreamAborted):
            self._head_done(event.stream_id)
        if isinstance(event, RequestReceived):
            self._start_request(event.stream_id, event.head)
        elif isinstance(event, BodyReceived):
            self._feed_body(event)
        elif isinstance(event, StreamAborted):
            self._cancel(event.stream_id)
        elif isinstance(event, RequestRejected):
            self._edge.dispatcher.metrics.rejected.labels(str(event.status)).inc()
            self._driver.schedule_transmit()
            self._unserved(event.stream_id, "-", event.status, "rejected")
        elif isinstance(event, DatagramReceived) and self._relay is not None:
            self._relay.on_datagram(event.service, event.payload)

    @property
    def in_flight(self) -> int:
        """Requests begun and not yet finished (held 0-RTT ones included)."""
        return len(self._requests)

    def go_away(self) -> None:
        """Drain: finish the requests begun, refuse later ones, and tell the client.

        h3: a GOAWAY frame; netsched/1: our GOAWAY control message (the SDK stops
        opening requests here); hq-interop has neither, its requests just finish.
        """
        if self._goaway is not None:
            return
        # Streams open in order: everything past the last one seen is new.
        self._goaway = self._last_stream_seen + 4
        if isinstance(self._proto, native.NetSchedProtocol | h3proto.H3Protocol):
            self._proto.send_goaway(self._goaway)
        self._driver.schedule_transmit()

    def _refused(self, stream_id: int, service: str) -> bool:
        """A request past the GOAWAY: reset unprocessed, the client may send it elsewhere."""
        if self._goaway is None or stream_id < self._goaway or self._proto is None:
            return False
        self._edge.dispatcher.metrics.rejected.labels("refused").inc()
        self._proto.abort(stream_id, _refused_code(self._proto))
        self._proto.forget(stream_id)
        self._driver.schedule_transmit()
        self._unserved(stream_id, service, 0, "refused")
        return True

    def _shed(self, stream_id: int, service: str) -> bool:
        """Over the process's memory budget, or overloaded (its loop too far behind):
        answer 503 at once, read nothing more."""
        if self._proto is None:
            return False
        why = self._edge.overloaded()
        if why is None and self._edge.dispatcher.budget.over():
            why = "the edge is over its memory budget"
        if why is None:
            return False
        self._edge.dispatcher.metrics.rejected.labels(str(Status.NO_BACKEND)).inc()
        head = ResponseHead(status=Status.NO_BACKEND, message=why)
        if isinstance(self._proto, native.NetSchedProtocol):
            self._proto.refuse(stream_id, head)
        else:
            self._proto.send_response(stream_id, head, end_stream=True)
            self._proto.forget(stream_id)
        self._driver.schedule_transmit()
        self._unserved(stream_id, service, Status.NO_BACKEND, "shed")
        return True

    @property
    def tracked_streams(self) -> int:
        """Streams this connection keeps any state for (requests, head timers, framing)."""
        framing = 0 if self._proto is None else self._proto.open_streams
        return len(self._requests) + len(self._heads_due) + framing

    def _start_request(self, stream_id: int, head: RequestHead) -> None:
        if self._refused(stream_id, head.service) or self._shed(stream_id, head.service):
            return
        limits = self._edge.config.limits
        body = _RequestBody(Held(self._edge.dispatcher.budget), limits.max_stream_buffer)
        request = self._requests[stream_id] = _Request(body)
        slo = self._effective_slo(head.slo)
        received_at = asyncio.get_running_loop().time()
        incoming = IncomingRequest(
            service=head.service,
            slo=slo,
            body=request.body,
            received_at=received_at,
            meta=head.meta,
            headers=head.headers,  # passed on to HTTP backends
            streaming=head.streaming or self._is_fetch(head),
            tenant=self._tenant,  # fair queuing between connections
        )
        quic = self._driver.quic
        if isinstance(quic, NetSchedConnection) and self._edge.config.send_order == "edf":
            # The response leaves by deadline, then urgency, whatever else is queued.
            # Streams (long-lived by nature) are ordered by urgency only.
            deadline = None
            if slo.deadline_ms is not None and not head.streaming:
                deadline = received_at + slo.deadline_ms / 1000
            quic.set_stream_priority(stream_id, deadline, slo.urgency or 0)
        if isinstance(quic, NetSchedConnection) and quic.fec_enabled and not head.streaming:
            # Repairs as this request's deadline and loss tolerance need (docs/FEC.md §8).
            due = None if slo.deadline_ms is None else received_at + slo.deadline_ms / 1000
            quic.set_stream_fec(stream_id, deadline_at=due, loss_tolerance=slo.loss_tolerance)
        if isinstance(quic, EdgeQuicConnection) and quic.in_early_data(stream_id):
            if not _served_early(self._edge.config.early_data, head, slo):
                request.held = incoming
                self._edge.early_requests.labels("held").inc()
                return
            self._edge.early_requests.labels("served").inc()
            incoming.early = True
            incoming.confirmed = self._handshake_done.wait
        request.task = asyncio.create_task(self._serve(stream_id, incoming))

    def _release_held(self) -> None:
        """The handshake completed: the client is live, its 0-RTT requests no replay."""
        for stream_id, request in self._requests.items():
            if request.held is not None:
                request.task = asyncio.create_task(self._serve(stream_id, request.held))
                request.held = None

    def _is_fetch(self, head: RequestHead) -> bool:
        # Only h3: a native request states `streaming` itself, and every hq-interop
        # request already streams.
        method = head.meta.get("method", "").upper()
        return isinstance(self._proto, h3proto.H3Protocol) and method in _FETCH_METHODS

    def _effective_slo(self, request_slo: SLO | None) -> SLO:
        quic = self._driver.quic
        peer = quic.peer_slo if isinstance(quic, NetSchedConnection) else None
        return self._edge.config.default_slo.merged(peer).merged(request_slo).resolved()

    def _feed_body(self, event: BodyReceived) -> None:
        request = self._requests.get(event.stream_id)
        if request is None:
            return
        request.received += len(event.data)
        request.ended = event.end_stream
        if not request.body.put(event.data, end=event.end_stream):
            self._abort(event.stream_id, "request body arrived faster than the backend reads it")

    async def _serve(self, stream_id: int, request: IncomingRequest) -> None:
        assert self._proto is not None
        state = self._requests.get(stream_id)
        if state is not None and state.ended:
            # The body came with the head (the events of one packet are handled before
            # this task runs): a streamed request can announce its size to the backend.
            request.length = state.received
        outcome: Outcome | None = None
        served = _Served()
        sending = Held(self._edge.dispatcher.budget)  # response bytes not yet acknowledged
        try:
            outcome = await self._edge.dispatcher.handle(request)
            if not 200 <= outcome.head.status < 300:
                self._untime(stream_id, request)  # an error status must arrive, late or not
            served.status, served.backend = outcome.head.status, outcome.head.backend
            self._proto.send_response(stream_id, self._edge.stamp(outcome.head))
            self._driver.schedule_transmit()
            await self._send_body(stream_id, outcome.body, sending, served)
        except SendTimeout as exc:
            log.info("resetting stream %d: %s", stream_id, exc)
            served.end = "reset"
            self._proto.abort(stream_id)
            self._driver.schedule_transmit()
        except Exception as exc:
            self._fail(stream_id, exc, served)
        finally:
            sending.clear()
            if outcome is not None:
                await outcome.aclose()  # frees the backend slot whatever happened above
            done = self._requests.pop(stream_id, None)
            if done is not None:
                done.body.discard()
            self._proto.forget(stream_id)
            received = 0 if done is None else done.received
            self._edge.finished(self._access(stream_id, request, served, received))

    async def _send_body(
        self, stream_id: int, body: AsyncIterator[bytes], sending: Held, served: _Served
    ) -> None:
        assert self._proto is not None
        quic = self._driver.quic
        async for chunk in body:
            if not self._proto.send_body(stream_id, chunk):
                return  # the client went away; the caller closes the body
            served.bytes_out += len(chunk)
            self._driver.schedule_transmit()
            sending.update(unacked_bytes(quic, stream_id))
            await self._acknowledged(stream_id, sending)
        self._proto.send_body(stream_id, b"", end_stream=True)
        served.end = "complete"
        self._driver.schedule_transmit()

    def _fail(self, stream_id: int, exc: Exception, served: _Served) -> None:
        """Answer a failed request: a 502 head, or, once a head is out, a stream reset.

        After the head, a status can no longer be told: anything written now would
        read as body bytes, so the client must see the stream end abnormally.
        """
        assert self._proto is not None
        if served.status:
            log.info("response on stream %d broke after its head: %r", stream_id, exc)
            self._proto.abort(stream_id, _internal_error_code(self._proto))
            served.end = "reset"
        else:
            log.error("request on stream %d failed", stream_id, exc_info=exc)
            self._proto.send_response(
                stream_id,
                ResponseHead(status=Status.BACKEND_ERROR, message="internal error at the edge"),
                end_stream=True,
            )
            served.status, served.end = Status.BACKEND_ERROR, "complete"
        self._driver.schedule_transmit()

    def _access(
        self, stream_id: int, request: IncomingRequest, served: _Served, received: int
    ) -> Access:
        """The access-log record of a request that ends now."""
        return Access(
            service=request.service,
            backend=served.backend,
            status=served.status,
            bytes_in=received,
            bytes_out=served.bytes_out,
            latency_ms=(asyncio.get_running_loop().time() - request.received_at) * 1000,
            deadline_ms=request.slo.deadline_ms,
            paths=usable_paths(self._driver.quic),
            protocol=self._alpn,
            stream=stream_id,
            end=served.end,
        )

    def _unserved(self, stream_id: int, service: str, status: int, end: str) -> None:
        """Log a request refused before it was served (no backend, no body read)."""
        paths = usable_paths(self._driver.quic)
        self._edge.finished(Access(service, status, paths, self._alpn, stream_id, end))

    async def _acknowledged(self, stream_id: int, sending: Held) -> None:
        """Wait, when over the stream buffer limit, until the client acknowledged down to
        half of it; SendTimeout when it acknowledges nothing for send_timeout_s."""
        quic = self._driver.quic
        limits = self._edge.config.limits
        unacked = unacked_bytes(quic, stream_id)
        if unacked <= limits.max_stream_buffer:
            return
        loop = asyncio.get_running_loop()
        delay = SEND_BUFFER_POLL_S
        last_progress = loop.time()
        while unacked > limits.max_stream_buffer // 2:
            await asyncio.sleep(delay)
            before, unacked = unacked, unacked_bytes(quic, stream_id)
            sending.update(unacked)
            if unacked < before:
                last_progress, delay = loop.time(), SEND_BUFFER_POLL_S
                continue
            if loop.time() - last_progress >= limits.send_timeout_s:
                raise SendTimeout(f"client acknowledged nothing for {limits.send_timeout_s:g} s")
            delay = min(2 * delay, SEND_BUFFER_POLL_MAX_S, limits.send_timeout_s / 4)

    def _untime(self, stream_id: int, request: IncomingRequest) -> None:
        quic = self._driver.quic
        if isinstance(quic, NetSchedConnection):
            quic.set_stream_priority(stream_id, None, request.slo.urgency or 0)

    def _abort(self, stream_id: int, reason: str) -> None:
        log.info("aborting stream %d: %s", stream_id, reason)
        if self._proto is not None:
            self._proto.abort(stream_id)
            self._driver.schedule_transmit()
        self._cancel(stream_id)

    def _cancel(self, stream_id: int) -> None:
        request = self._requests.pop(stream_id, None)
        if request is not None:
            request.body.discard()
            if request.task is not None:
                request.task.cancel()  # its finally forgets the stream
                return
        # No task will (a request held for the handshake, or a head never completed).
        if self._proto is not None:
            self._proto.forget(stream_id)

    def _send_datagram(self, service: str, payload: bytes) -> None:
        if self._proto is not None:
            self._proto.send_datagram(service, payload)
            self._driver.schedule_transmit()

    def _on_terminated(self) -> None:
        for timer in self._heads_due.values():
            timer.cancel()
        self._heads_due.clear()
        for stream_id in list(self._requests):
            self._cancel(stream_id)
        if self._relay is not None:
            self._relay.close()


def _refuse_on_first_event(driver: ConnectionDriver, reason: str) -> Callable[[QuicEvent], None]:
    """An event handler that refuses the connection with a transport CONNECTION_CLOSE
    (CONNECTION_REFUSED, RFC 9000 §20.1) at its first event: the ClientHello was read
    (a connection that heard nothing closes silently) and the server's flight is not
    out yet, so the close alone goes, in the Initial packets the client reads during its
    handshake: the client's handshake fails with the code, nothing was processed."""
    refused = False

    def refuse(event: QuicEvent) -> None:
        nonlocal refused
        if not refused and not isinstance(event, ConnectionTerminated):
            refused = True
            driver.close(QuicErrorCode.CONNECTION_REFUSED, reason, transport=True)

    return refuse


def _refused_code(proto: _AppProtocol) -> int:
    """The reset code of a request refused unprocessed during a drain."""
    if isinstance(proto, h3proto.H3Protocol):
        return H3_REQUEST_REJECTED
    return native.ERROR_REFUSED  # hq-interop defines no codes; the reset itself says it


def _internal_error_code(proto: _AppProtocol) -> int:
    """The application error code that resets a stream the edge could not complete."""
    if isinstance(proto, h3proto.H3Protocol):
        return H3_INTERNAL_ERROR
    return native.ERROR_INTERNAL  # hq-interop defines no codes; the reset itself says it


def _served_early(mode: str, head: RequestHead, slo: SLO) -> bool:
    """May this 0-RTT request be served before the handshake completes (`[edge] early_data`)?"""
    if head.meta.get("method", "").upper() in SAFE_METHODS:
        return True
    return mode == "idempotent" and bool(slo.idempotent)


def endpoint_limits(config: EdgeConfig) -> EndpointLimits:
    """The endpoint's caps from `[limits]` (the same at start and at a reload)."""
    limits = config.limits
    return EndpointLimits(
        max_connections=limits.max_connections,
        max_connections_per_source=limits.max_connections_per_source,
        retry_above=limits.retry_above,
    )


def cipher_suites(names: tuple[str, ...] | None) -> list[CipherSuite] | None:
    """aioquic's suites for configured IANA names (config.CIPHER_SUITES); None: its default."""
    if names is None:
        return None
    return [CipherSuite[name.removeprefix("TLS_")] for name in names]


def _no_healthy_backend(name: str, pool: ServicePool, now: float) -> str:
    """A service without a healthy backend, each backend's state, and whether it panics."""
    states = "; ".join(f"{backend} {t.describe(now)}" for backend, t in pool.health.items())
    panics = pool.config.health.panic_threshold_percent > 0  # 0 of N is under any threshold
    return f"service {name}: no healthy backend ({states})" + (
        ", panic: routing to all of them" if panics else ""
    )


def usable_paths(quic: QuicConnection) -> int:
    """The paths a connection may send on now (1 without multipath)."""
    if isinstance(quic, MultipathConnection):
        return max(1, sum(1 for path in quic.paths.values() if path.usable))
    return 1


def unacked_bytes(quic: QuicConnection, stream_id: int) -> int:
    """Bytes written to a stream and not yet acknowledged (0 once the stream is gone).

    aioquic (pinned 1.7.2) has no public accessor: the sender keeps exactly this
    span, [_buffer_start, _buffer_stop), until the peer acknowledges it.
    """
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    return stream.sender._buffer_stop - stream.sender._buffer_start


class EdgeServer:
    """The edge: a QUIC endpoint in front of a dispatcher.

    `planner` orders and groups what the connections send (default: in
    `config.send_order`, no egress budget); give one to cap the edge's egress
    rate (`BurstPlanner(egress_rate=...)`) or to compare sending modes.
    """

    def __init__(
        self,
        config: EdgeConfig,
        dispatcher: Dispatcher | None = None,
        *,
        worker: WorkerIdentity | None = None,
        planner: BurstPlanner[TickedFlow] | None = None,
    ) -> None:
        self.config = config
        self.worker = worker
        self.dispatcher = dispatcher or Dispatcher(config)
        budget = _egress_rate(config)
        self._planner = planner or BurstPlanner(order=config.send_order, egress_rate=budget)
        self._endpoint: ServerEndpoint | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._generated: CertificatePair | None = None  # when no certificate is configured
        # Read once: what was generated there stays in use across reloads.
        self._state_dir = config.state_dir
        self._configuration: QuicConfiguration | None = None  # shared by new connections
        self.draining = False
        self.connections: set[EdgeConnection] = set()
        self.udp_fronts: dict[str, UdpFront] = {}
        self._admin = AdminServer(self.dispatcher.metrics.exposition, self.unready, self.notes)
        metrics = self.dispatcher.metrics
        metrics.registry.register(PlannerCollector(lambda: self._endpoint))
        metrics.watch_pools(lambda: self.dispatcher.pools, asyncio.get_running_loop().time)
        Gauge(
            "netsched_edge_requests_in_flight",
            "Requests under way over all connections (0-RTT ones held for the handshake too).",
            registry=metrics.registry,
        ).set_function(self.in_flight)
        self.early_requests = Counter(
            "netsched_edge_early_data_requests_total",
            "Requests that came in 0-RTT: served at once (idempotent) or held until "
            "the handshake completed.",
            ["action"],
            registry=self.dispatcher.metrics.registry,
        )
        self.tickets: EdgeTickets | None = None  # made at start, with the keys
        self._keys: EndpointKeys | None = None  # Retry and reset keys in force (install_keys)
        self._fleet_status: Callable[[], FleetStatus] | None = None
        self.cid_refresh: CidRefresh | None = None  # a fleet host's (follow_fleet)
        self._cid_refresh_task: asyncio.Task[None] | None = None
        self.admin_port: int | None = None
        self.overload = LagGovernor(config.limits.shed_loop_lag_ms / 1000)
        self._lag_watch: asyncio.Task[None] | None = None
        self._overload_gauges(metrics.registry)

    def _overload_gauges(self, registry: CollectorRegistry) -> None:
        governor = self.overload
        Gauge(
            "netsched_edge_overloaded",
            "1 while the edge refuses new requests and clients: its event loop is behind "
            "by more than limits.shed_loop_lag_ms.",
            registry=registry,
        ).set_function(lambda: float(governor.shedding))
        Gauge(
            "netsched_edge_loop_lag_seconds",
            "How late the event loop ran at its last lag sample.",
            registry=registry,
        ).set_function(lambda: governor.last_lag_s)
        Gauge(
            "netsched_edge_overload_refused_share",
            "Share of new requests and clients refused now (from the smoothed loop lag).",
            registry=registry,
        ).set_function(lambda: governor.share)
        self._shed_total = Counter(
            "netsched_edge_overload_shed",
            "Requests (503) and new clients (CONNECTION_REFUSED) turned away while overloaded.",
            registry=registry,
        )

    def overloaded(self) -> str | None:
        """For one new request or client: None to take it, or why it is turned away (the
        loop is too far behind: overload.py); each refusal is counted."""
        reason = self.overload.admit()
        if reason is not None:
            self._shed_total.inc()
        return reason

    def finished(self, access: Access) -> None:
        """A request ended: its access-log line and latency."""
        log_access(access)
        # Unknown names share one label: a peer must not grow our label set.
        label = access.service if access.service in self.dispatcher.pools else "_unknown"
        self.dispatcher.metrics.observe_request(label, access.latency_ms / 1000)

    def stamp(self, head: ResponseHead) -> ResponseHead:
        """Tell the client which worker answered (operators trace requests by it)."""
        if self.worker is None:
            return head
        return dataclasses.replace(head, meta={**head.meta, "edge-worker": str(self.worker.index)})

    def ready(self) -> bool:
        """Serving (not draining), and every service has a backend taking traffic."""
        return not self.unready()

    def unready(self) -> list[str]:
        """Why the edge is not ready, one line per reason (/readyz); empty when it is."""
        if self._endpoint is None:
            return ["not started"]
        if self.draining:
            return ["draining"]
        now = asyncio.get_running_loop().time()
        overload = self.overload
        reasons = [overload.reason()] if overload.share > 0 else []
        reasons += [
            _no_healthy_backend(name, pool, now)
            for name, pool in sorted(self.dispatcher.pools.items())
            if not pool.has_available_backend()
        ]
        if self._fleet_status is not None and not self._fleet_status().member:
            reasons.append("fleet membership lost: this host's server ID may be reused")
        return reasons

    def notes(self) -> list[str]:
        """What the edge runs on, for /readyz whatever its answer: a fleet host's state."""
        if self._fleet_status is None:
            return []
        refresh = [] if self.cid_refresh is None else [self.cid_refresh.summary()]
        return [self._fleet_status().describe(), *refresh]

    def follow_fleet(self, status: Callable[[], FleetStatus]) -> None:
        """Report the fleet host's state in /readyz: not ready once its membership is
        lost; with etcd unavailable it stays ready (it serves on its last config and
        keys) and says so. Its QUIC-LB rotations give the connections fresh CIDs."""
        self._fleet_status = status
        if status().cids is not None:
            self._refresh_cids(status)

    def _refresh_cids(self, status: Callable[[], FleetStatus]) -> None:
        """Move the connections to the CIDs of each QUIC-LB configuration the fleet host
        follows, before the replaced one stops being routed (fleet/reissue.py)."""
        from .fleet.reissue import CidRefresh  # the fleet's modules: fleet hosts only

        def drivers() -> frozenset[ConnectionDriver]:
            return frozenset() if self._endpoint is None else self._endpoint.connections

        self.cid_refresh = CidRefresh(status, drivers)
        self.dispatcher.metrics.registry.register(self.cid_refresh)
        self._cid_refresh_task = asyncio.get_running_loop().create_task(self.cid_refresh.run())

    def install_keys(self, ring: KeyRing) -> None:
        """Seal with the fleet's current keys, open with the current and previous ones
        (tickets, Retry tokens; stateless resets are sent for both): every change of
        the fleet's keys (`FleetHost(install_keys=...)`). Before `start`, the keys
        `start` would load give way to these."""
        previous = None if ring.previous is None else ring.previous.endpoint_keys()
        self._keys = dataclasses.replace(ring.current.endpoint_keys(), previous=previous)
        sealer = ring.ticket_sealer()
        if self.tickets is not None:
            self.tickets.sealer = sealer  # connections take it from this object
        elif self.config.session_tickets and self._endpoint is None:  # read at start only
            self.tickets = EdgeTickets(sealer)
        if self._endpoint is not None:
            self._endpoint.set_keys(self._keys)
        log.info("keys installed (revision %d)", ring.revision)

    def _reset_token(self, cid: bytes) -> bytes:
        """The stateless reset token of a CID issued now: the current key's."""
        assert self._keys is not None
        return self._keys.reset_token(cid)

    def quic_connections(self) -> list[NetSchedConnection]:
        """The QUIC connections open now (for statistics)."""
        if self._endpoint is None:
            return []
        return [
            d.quic for d in self._endpoint.connections if isinstance(d.quic, NetSchedConnection)
        ]

    @property
    def port(self) -> int:
        assert self._endpoint is not None
        return int(self._endpoint.local_address[1])

    @property
    def ca_certificate(self) -> Path | None:
        """The CA that signed a generated certificate (for clients to trust)."""
        return None if self._generated is None else self._generated.ca_certificate

    def _quic_configuration(self) -> QuicConfiguration:
        configuration = QuicConfiguration(is_client=False, max_datagram_frame_size=65536)
        if self.worker is not None:
            # Short headers are parsed with this length: a fleet's CIDs may be longer.
            configuration.connection_id_length = self.worker.quic_lb().cid_length
        self._configure_tls(configuration, self.config)
        enable_debug_logs(configuration)
        return configuration

    def _configure_tls(self, configuration: QuicConfiguration, config: EdgeConfig) -> None:
        """What new connections take from the configuration (in place: the endpoint's
        connection factory holds this object)."""
        cert, key = config.certificate, config.private_key
        if cert is None or key is None:
            if self._generated is None:
                self._generated = self._generate_credentials(config.host)
            cert, key = self._generated.certificate, self._generated.private_key
        load_credentials(configuration, cert, key)  # first: the one step that can fail
        configuration.alpn_protocols = list(config.alpn)
        configuration.idle_timeout = config.idle_timeout_s
        configuration.cipher_suites = cipher_suites(config.cipher_suites)
        # Per path, for what the edge sends (docs/CONGESTION.md); new connections take a
        # reloaded choice.
        configuration.congestion_control_algorithm = config.congestion_control

    def _generate_credentials(self, host: str) -> CertificatePair:
        """For a config without a certificate: those kept in the state folder (made there
        when missing), else new ones in a temporary folder that `close` removes."""
        if self._state_dir is not None:
            pair, _ = keep_credentials(self._state_dir, certificate_names(host))
            return pair
        self._tmp = tempfile.TemporaryDirectory(prefix="netsched-edge-")
        return generate_self_signed(Path(self._tmp.name))

    async def start(self) -> None:
        if self.worker is not None:
            # A worker process of `netsched-edge serve --workers N` starts with no logging
            # set up: its parent's choice comes through the environment.
            configure_logging(*logging_from_environment())
        configuration = self._configuration = self._quic_configuration()
        if self._keys is None:  # no fleet keys installed: the keys file's, or a fresh set
            keys = edge_keys(self.config.keys_file)
            self._keys = keys.endpoint_keys()
            if self.config.session_tickets:
                self.tickets = EdgeTickets(keys.ticket_sealer())
        endpoint_keys = self._keys
        self.dispatcher.start()

        def endpoint_factory() -> ServerEndpoint:
            cids = None if self.worker is None else self.worker.quic_lb().generate
            return ServerEndpoint(
                configuration,
                self._on_connection,
                connection_factory=functools.partial(
                    EdgeQuicConnection,
                    max_path_id=self.config.max_path_id if self.config.multipath else None,
                    scheduler=self.config.scheduler,
                    decision_totals=self.dispatcher.metrics.scheduler_decisions,
                    fec=FecConfig() if self.config.fec else None,
                    cid_factory=cids,
                    reset_token=self._reset_token,
                    tickets=self.tickets,
                    early_data=self.config.early_data != "off",
                ),
                retry=self.config.retry,
                limits=endpoint_limits(self.config),
                keys=endpoint_keys,
                cid_factory=cids,
                planner=self._planner,
            )

        steering = None if self.worker is None else ReuseportSteering(self.worker.count)
        with binding("QUIC, UDP", self.config.host, self.config.port):
            self._endpoint = await open_server_endpoint(
                self.config.host, self.config.port, endpoint_factory, setup=steering
            )
        if steering is not None:
            steering.attach(self._endpoint.fileno())
        self._endpoint.busy = self.overloaded
        loop = asyncio.get_running_loop()
        self._lag_watch = loop.create_task(watch_lag(self.overload, loop.time))
        for service in self.config.services:
            if service.udp_listen is not None:
                pool = self.dispatcher.pools[service.name]
                metrics = self.dispatcher.metrics
                with binding(f"service {service.name}, UDP", *service.udp_listen):
                    front = UdpFront(
                        pool, service.udp_listen, metrics=metrics, limits=self.config.limits
                    )
                self.udp_fronts[service.name] = front
        if self.config.admin_port is not None:
            assert self.config.admin_host is not None
            with binding("admin, TCP", self.config.admin_host, self.config.admin_port):
                self.admin_port = await self._admin.start(
                    self.config.admin_host, self.config.admin_port
                )
        log.info(
            "edge listening on %s:%d (ALPN %s)",
            self.config.host,
            self.port,
            ", ".join(self.config.alpn),
        )

    async def drain(self, timeout_s: float) -> None:
        """Graceful shutdown: refuse new connections and requests, let the requests under
        way finish for up to `timeout_s`, then close every connection (NO_ERROR).

        Each connection is told: GOAWAY on h3, our GOAWAY on netsched/1 (the SDK then
        opens no request on it), nothing on hq-interop. Requests still running at the
        timeout end with their connection (their backend slots go back).
        """
        self.draining = True
        for connection in list(self.connections):
            connection.go_away()
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + timeout_s
        while self.in_flight() and loop.time() < give_up_at:
            await asyncio.sleep(min(DRAIN_POLL_S, max(0.0, give_up_at - loop.time())))
        if self._endpoint is not None:
            self._endpoint.close_all(error_code=QuicErrorCode.NO_ERROR, reason="edge drained")
        await asyncio.sleep(0)  # the tasks of cancelled requests release their slots

    def in_flight(self) -> int:
        """Requests under way over all connections."""
        return sum(connection.in_flight for connection in self.connections)

    def reload(self, config: EdgeConfig) -> None:
        """Apply a new (validated) configuration without dropping a connection.

        Services, backends and limits apply to requests from now on (a service whose
        configuration changed gets a new pool; the old one finishes its requests,
        then closes); the certificate, ALPN list, idle timeout and cipher suites
        apply to new connections. Read once at start, and kept: the listening
        and admin addresses, retry, multipath, scheduler, FEC, send order, egress
        budget, session tickets, keys file, state folder, whether 0-RTT is accepted
        at all (early_data "off" versus not), and UDP fronts (udp_listen): a change
        to one of them (`lifecycle.restart_only_changes`) is logged in one WARNING
        line saying it takes a drain and a restart.
        """
        if self._configuration is not None:
            self._configure_tls(self._configuration, config)  # may raise: nothing applied yet
        if changed := restart_only_changes(self.config, config):
            log.warning("reload: %s", restart_note(changed))
        self.config = config
        # A UDP front holds its pool and socket: those services keep theirs.
        self.dispatcher.reload(config, keep=frozenset(self.udp_fronts))
        if self._endpoint is not None:
            self._endpoint.set_limits(endpoint_limits(config))  # caps for new clients
        self.overload.threshold_s = config.limits.shed_loop_lag_ms / 1000
        log.info("configuration reloaded from %s", config.source)

    def _on_connection(self, driver: ConnectionDriver) -> None:
        if self.draining:
            driver.add_event_handler(_refuse_on_first_event(driver, "edge draining"))
            return
        connection = EdgeConnection(driver, self)
        self.connections.add(connection)
        driver.add_event_handler(
            lambda event: (
                self.connections.discard(connection)
                if isinstance(event, ConnectionTerminated)
                else None
            )
        )

    async def close(self) -> None:
        for task in (self._cid_refresh_task, self._lag_watch):
            if task is not None:
                task.cancel()
        await self._admin.close()
        for front in self.udp_fronts.values():
            front.close()
        if self._endpoint is not None:
            self._endpoint.close_all(reason="edge shutting down")
            await asyncio.sleep(0)
            self._endpoint.close()
        await self.dispatcher.close()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
