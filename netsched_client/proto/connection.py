"""aioquic's `QuicConnection` extended with NetSched's transport parameters.

The client announces its connection-wide SLO defaults in transport parameter
`SLO_TRANSPORT_PARAMETER`; the server reads them. aioquic keeps its parameter
table in a module global, so instead of mutating it we append our parameter
after aioquic serializes its own and scan for it after aioquic parses.
Multipath (draft-21) comes from `MultipathConnection`.

FEC (docs/FEC.md), when configured with `fec=FecConfig(...)`: we offer the
`netsched_fec` parameter, and once both endpoints sent it, protect the packets
of the streams `set_stream_fec` names (or every ack-eliciting 1-RTT packet),
send REPAIR packets at the rate `fec.control.decide` sets per request, recover
the peer's lost packets and put them through the normal frame dispatch, and
answer recoveries with SYMBOL_ACK. `set_fec_decoding_window` resizes our
decoder and tells the peer with FEC_WINDOW; `set_session_fec` turns FEC off
(window 0: the peer stops sending repairs) and on for the whole connection.
The state lives in `fec_link`, the packet surgery in `fec_builder`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from aioquic.buffer import Buffer
from aioquic.quic.connection import NetworkAddress, QuicConnectionError, QuicReceiveContext
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import (
    QuicDeliveryState,
    QuicPacketBuilder,
    QuicPacketBuilderStop,
)
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream
from aioquic.tls import Epoch

from ..errors import SLOError
from ..fec.control import FecDecision, FecMode, FecOverride, decide
from ..fec.errors import CorruptRepairError, FecError
from ..fec.frames import (
    FEC_WINDOW,
    FRAME_CLASSES,
    REPAIR,
    SYMBOL_ACK,
    FecWindow,
    FrameEncodingError,
    Repair,
    SourceSymbolId,
    SymbolAck,
    decode_frame,
)
from ..fec.params import (
    FEC_TRANSPORT_PARAMETER,
    FecParameters,
    FecTransportParameterError,
    decode_fec_parameters,
    negotiate,
)
from . import fec_builder
from .cc.coupled import CoupledGroup, coupling
from .fec_builder import FecPacketBuilder, active_sink
from .fec_link import (
    FecConfig,
    FecReceiver,
    FecRedundancyCapped,
    FecSender,
    FecStats,
    MeasuredRecovery,
    StreamFec,
    decision_inputs,
    flush_delay,
)
from .multipath.connection import MultipathConnection
from .multipath.path import Path, PathState
from .multipath.recovery import CountingRecovery
from .send_order import ERROR_DEADLINE, DeadlineMissed, SendOrder, StreamPriority
from .slo import SLO, SLO_TRANSPORT_PARAMETER, decode_slo, encode_slo
from .transport_parameters import encode_transport_parameter, find_transport_parameter


class NetSchedConnection(MultipathConnection):
    """A QUIC connection that carries NetSched's SLO transport parameter.

    `local_slo` (client only) is sent to the peer; `peer_slo` holds what the
    peer sent, or None for a plain QUIC peer.
    """

    def __init__(
        self,
        *args: Any,
        local_slo: SLO | None = None,
        fec: FecConfig | None = None,
        **kwargs: Any,
    ) -> None:
        self._local_slo = local_slo
        self.peer_slo: SLO | None = None
        self.send_order = SendOrder()
        self._fec_config = fec
        self._fec_offer = None if fec is None else fec.offer  # sent once, negotiated with
        # Our decoding window follows the session's FEC switch (`_fec_follow_session`):
        # whether it is off now, and the window to return to once it is on again.
        self._fec_window_off = fec is not None and fec.session.mode is FecMode.OFF
        self._fec_window_on = 0
        self.peer_fec: FecParameters | None = None  # the peer's offer, scheme 1
        self._fec_sender: FecSender | None = None
        self._fec_receiver: FecReceiver | None = None
        self._fec_streams: dict[int, StreamFec] = {}
        # stream ID -> (decided at, decision, how long its repairs may wait)
        self._fec_decisions: dict[int, tuple[float, FecDecision, float | None]] = {}
        self._fec_capped = 0
        self._fec_in_symbol = False  # dispatching a recovered symbol's frames
        self._fec_symbol_seen = False  # this packet had its SOURCE_SYMBOL_ID
        # The paths' "lia" controllers link their increases (RFC 6356) in this group.
        self._cc_group = CoupledGroup()
        super().__init__(*args, **kwargs)
        if fec is not None:
            # Without FEC these stay unknown frame types, as in aioquic.
            handlers = self._QuicConnection__frame_handlers  # type: ignore[attr-defined]
            for frame_type in FRAME_CLASSES:
                handlers[frame_type] = (self._handle_fec_frame, frozenset([Epoch.ONE_RTT]))

    @property
    def congestion_group(self) -> CoupledGroup:
        """The paths' coupled controllers (congestion control "lia"); empty otherwise."""
        return self._cc_group

    def set_stream_priority(self, stream_id: int, deadline_at: float | None, urgency: int) -> None:
        """Serve this stream by deadline (absolute, connection clock), then urgency."""
        self.send_order.set(stream_id, deadline_at, urgency)

    def stream_priorities(self) -> Mapping[int, StreamPriority]:
        return self.send_order.priorities

    def datagrams_with_paths(self, now: float) -> list[tuple[bytes, NetworkAddress, int]]:
        self._fec_arm(now)
        sender = self._fec_sender
        with active_sink(sender):
            sent = self._send_in_order(now)
            if (
                sender is not None
                and sender.repair_due()
                and self._fec_other_path()
                and self.window_room_anywhere()
            ):
                # Repairs kept for another path that had no room this round go anywhere.
                sender.any_path = True
                try:
                    sent += self.datagrams_on_open_paths(now)
                finally:
                    sender.any_path = False
        return sent

    def _send_in_order(self, now: float) -> list[tuple[bytes, NetworkAddress, int]]:
        if self.send_order.priorities:
            if len(self.send_order.priorities) > 2 * len(self._streams) + 16:
                self.send_order.prune(self._streams)
            for stream_id in self.send_order.expired(self._streams_queue, now):
                self.reset_stream(stream_id, ERROR_DEADLINE)
                self._events.append(DeadlineMissed(stream_id))
            self._streams_queue = self.send_order.order(self._streams_queue)
        return super().datagrams_with_paths(now)

    def _serialize_transport_parameters(self) -> bytes:
        data: bytes = super()._serialize_transport_parameters()
        if self._local_slo is not None:
            data += encode_transport_parameter(SLO_TRANSPORT_PARAMETER, encode_slo(self._local_slo))
        if self._fec_offer is not None:
            offer = self._fec_offer.encode()
            data += encode_transport_parameter(FEC_TRANSPORT_PARAMETER, offer)
        return data

    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        super()._parse_transport_parameters(data, from_session_ticket)
        if from_session_ticket:
            # Connection defaults are announced afresh by every handshake.
            return
        self._parse_fec_parameter(data)
        value = find_transport_parameter(data, SLO_TRANSPORT_PARAMETER)
        if value is None:
            return
        try:
            self.peer_slo = decode_slo(value)
        except SLOError as exc:
            raise QuicConnectionError(
                error_code=QuicErrorCode.TRANSPORT_PARAMETER_ERROR,
                frame_type=QuicFrameType.CRYPTO,
                reason_phrase=f"SLO transport parameter: {exc}",
            ) from exc

    def _parse_fec_parameter(self, data: bytes) -> None:
        value = find_transport_parameter(data, FEC_TRANSPORT_PARAMETER)
        if value is None:
            return
        try:
            self.peer_fec = decode_fec_parameters(value)
        except FecTransportParameterError as exc:
            raise QuicConnectionError(
                error_code=QuicErrorCode.TRANSPORT_PARAMETER_ERROR,
                frame_type=QuicFrameType.CRYPTO,
                reason_phrase=str(exc),
            ) from exc
        config, offer, peer = self._fec_config, self._fec_offer, self.peer_fec
        if config is None or offer is None or peer is None:
            return
        negotiated = negotiate(offer, peer)
        if negotiated is not None:
            self._fec_sender = FecSender(negotiated, offer.max_coding_window, config.protect_all)
            self._fec_receiver = FecReceiver(negotiated, window_limit=peer.max_coding_window)
            self._fec_window_on = min(
                config.parameters.initial_decoding_window, peer.max_coding_window
            )
            self._fec_follow_session()  # a 0-RTT session may have switched since the offer

    # -- FEC: public API ---------------------------------------------------------------------

    @property
    def fec_enabled(self) -> bool:
        """Both endpoints sent netsched_fec with scheme 1: FEC frames may flow."""
        return self._fec_sender is not None

    def set_stream_fec(
        self,
        stream_id: int,
        *,
        deadline_at: float | None = None,
        loss_tolerance: float | None = None,
        override: FecOverride | None = None,
        size_hint: int | None = None,
    ) -> None:
        """Protect this stream's data as its SLO needs (absolute deadline, connection clock).

        `override` (merged over the session's, field by field) can turn FEC off or
        on or lower the overhead cap for this request; `size_hint` is the number
        of bytes it will send, when known (short responses get tail repairs).
        """
        if len(self._fec_streams) > 2 * len(self._streams) + 16:
            for known in [s for s in self._fec_streams if s not in self._streams]:
                self._fec_streams.pop(known)
                self._fec_decisions.pop(known, None)
        self._fec_streams[stream_id] = StreamFec(
            deadline_at, loss_tolerance, override or FecOverride(), size_hint
        )
        self._fec_decisions.pop(stream_id, None)

    def set_session_fec(self, override: FecOverride) -> None:
        """Replace the session's FEC override (`FecConfig.session`), which every request's
        refines, for the data sent from now on.

        Mode off also sets our decoding window to 0, so that the peer stops
        sending repairs; turning it on again restores the window held before.
        """
        config = self._fec_config
        if config is None:
            raise ValueError("FEC session override: the connection was made without fec=")
        if not isinstance(override, FecOverride):
            raise ValueError(f"FEC session override: must be a FecOverride (got {override!r})")
        self._fec_config = dataclasses.replace(config, session=override)
        self._fec_decisions.clear()  # decided under the old override
        self._fec_follow_session()

    def _fec_follow_session(self) -> None:
        """Window 0 while the session's FEC is off, the window held before once it is on."""
        receiver, config = self._fec_receiver, self._fec_config
        if receiver is None or config is None:
            return  # not negotiated (yet): negotiation catches up
        off = config.session.mode is FecMode.OFF
        if off == self._fec_window_off:
            return
        self._fec_window_off = off
        if off:
            self._fec_window_on = receiver.window
            receiver.set_window(0)
        elif receiver.window == 0:  # unless the app chose a window meanwhile
            receiver.set_window(self._fec_window_on)

    @property
    def fec_decoding_window(self) -> int | None:
        """Source symbols our decoder holds (the peer's repairs span no more); None
        without negotiated FEC."""
        receiver = self._fec_receiver
        return None if receiver is None else receiver.window

    def set_fec_decoding_window(self, size: int) -> None:
        """Hold `size` source symbols in our decoder from now on and tell the peer (FEC_WINDOW).

        0 asks the peer to send no repairs (and no source symbol IDs) at all.
        `size` is at most the peer's Max Coding Window, which its repairs never
        exceed. Shrinking forgets the oldest symbols held. ValueError for a
        size out of range or when FEC was not negotiated.
        """
        receiver = self._fec_receiver
        if receiver is None:
            raise ValueError("FEC decoding window: FEC was not negotiated with the peer")
        receiver.set_window(size)

    def fec_decision(self, stream_id: int) -> FecDecision | None:
        """The redundancy last decided for this stream, if it sent protected data."""
        entry = self._fec_decisions.get(stream_id)
        return None if entry is None else entry[1]

    def fec_stats(self) -> FecStats:
        sender, receiver = self._fec_sender, self._fec_receiver
        return FecStats(
            symbols_sent=sender.symbols_sent if sender else 0,
            repairs_sent=sender.repairs_sent if sender else 0,
            repair_bytes=sender.repair_bytes if sender else 0,
            symbols_recovered_by_peer=sender.recovered_by_peer if sender else 0,
            symbols_received=receiver.symbols_received if receiver else 0,
            repairs_received=receiver.repairs_received if receiver else 0,
            symbols_recovered=receiver.symbols_recovered if receiver else 0,
            capped_decisions=self._fec_capped,
            symbols_by_path=tuple(sorted(sender.symbols_by_path.items())) if sender else (),
            repairs_by_path=tuple(sorted(sender.repairs_by_path.items())) if sender else (),
        )

    # -- FEC: sending ------------------------------------------------------------------------

    def _fec_arm(self, now: float) -> None:
        """Protected packets are kept within the symbol size while protected data waits."""
        sender = self._fec_sender
        if sender is None:
            return
        sender.now = now
        sender.rtt = self._fec_rtt()
        sender.armed = any(
            stream is not None and not stream.sender.buffer_is_empty
            for stream in map(self._streams.get, self._fec_streams)
        )

    def _write_stream_frame(
        self,
        builder: QuicPacketBuilder,
        space: QuicPacketSpace,
        stream: QuicStream,
        max_offset: int,
    ) -> int:
        if self._fec_sender is None or not isinstance(builder, FecPacketBuilder):
            return int(super()._write_stream_frame(builder, space, stream, max_offset))
        before = builder.frames_end
        used = int(super()._write_stream_frame(builder, space, stream, max_offset))
        if builder.frames_end != before and stream.stream_id is not None:
            ratio = self._fec_ratio(stream.stream_id)
            if ratio > 0:
                builder.mark_protected(ratio)
        return used

    def _fec_ratio(self, stream_id: int) -> float:
        """Repairs per source symbol this stream's request wants now (0: unprotected)."""
        sender, config = self._fec_sender, self._fec_config
        assert sender is not None and config is not None
        request = self._fec_streams.get(stream_id)
        if request is None:
            if not config.protect_all:
                return 0.0
            request = StreamFec()
        now = sender.now
        cached = self._fec_decisions.get(stream_id)
        if cached is None or now - cached[0] > self._fec_rtt():
            decision, delay = self._fec_decide(request, now)
            self._fec_decisions[stream_id] = (now, decision, delay)
            if decision.capped and (cached is None or not cached[1].capped):
                self._fec_capped += 1
                self._events.append(FecRedundancyCapped(stream_id, decision))
        _, decision, delay = self._fec_decisions[stream_id]
        if not decision.enabled:
            return 0.0
        sender.note_request(decision.window, delay)
        return decision.overhead

    def _fec_decide(self, request: StreamFec, now: float) -> tuple[FecDecision, float | None]:
        """The request's decision now, and how long its repairs may wait."""
        sender, config, loss = self._fec_sender, self._fec_config, self._loss
        assert sender is not None and config is not None
        assert isinstance(loss, MeasuredRecovery)  # what _new_recovery builds with FEC
        rtt = self._fec_rtt()
        inputs = decision_inputs(
            request,
            config=config,
            loss=loss.stats_with_prior(config.prior_loss_rate),
            rtt=rtt,
            rate=sender.rate() or loss.congestion_window / rtt,
            now=now,
            sender=sender,
        )
        decision = decide(inputs, config.policy, config.session.merged(request.override))
        return decision, flush_delay(decision, inputs)

    def _fec_rtt(self) -> float:
        loss = self._loss
        if not loss._rtt_initialized:
            return float(self._configuration.initial_rtt)
        return max(float(loss._rtt_smoothed), 1e-3)

    def _write_application(self, builder: QuicPacketBuilder, network_path: Any, now: float) -> None:
        sender = self._fec_sender
        if sender is None or not isinstance(builder, FecPacketBuilder):
            super()._write_application(builder, network_path, now)
            return
        sender.path_id = self._live.path_id
        self._write_fec_window(builder, now)
        if sender.armed or sender.repair_due():
            # Protected data, then its due repairs, then everything else: a bulk stream
            # fills the window in every round (aioquic ends the round with
            # QuicPacketBuilderStop when it is full), and repairs written after it would
            # never leave. Credit bounds the repairs (the FEC budget). When protected data
            # alone fills the window, the stop ends the round here: repairs do not
            # take the room its own data needs.
            with self._fec_bulk_held():
                super()._write_application(builder, network_path, now)
            # No room left: the round still sends ACKs and control frames.
            with suppress(QuicPacketBuilderStop):
                self._write_fec_repairs(builder, now)
        super()._write_application(builder, network_path, now)
        self._write_fec_repairs(builder, now)  # for the sources this round just sent

    @contextmanager
    def _fec_bulk_held(self) -> Iterator[None]:
        """Streams without a FEC request stay out of the send queue meanwhile."""
        queue = self._streams_queue
        protected = [s for s in queue if s.stream_id in self._fec_streams]
        if len(protected) == len(queue):
            yield
            return
        held = [s for s in queue if s.stream_id not in self._fec_streams]
        self._streams_queue = protected
        try:
            yield
        finally:
            self._streams_queue = [*self._streams_queue, *held]

    def _write_fec_window(self, builder: FecPacketBuilder, now: float) -> None:
        """FEC_WINDOW in a packet of its own, ahead of the data (no source symbol may
        hold it): ack-eliciting, and its latest epoch is sent again when lost."""
        receiver, crypto = self._fec_receiver, self._cryptos[Epoch.ONE_RTT]
        if receiver is None or not receiver.window_pending or receiver.window_frame is None:
            return
        if not self._handshake_complete or not crypto.send.is_valid():
            return
        if self._loss._pacer.next_send_time(now=now) is not None:
            return  # aioquic's loop waits for the pacer too
        frame = receiver.window_frame
        body = frame.encode_body()
        try:
            builder.start_packet(QuicPacketType.ONE_RTT, crypto)
            builder.protectable = False
            buf = builder.start_frame(
                FEC_WINDOW,
                capacity=len(body),
                handler=self._on_fec_window_delivery,
                handler_args=(frame.epoch,),
            )
        except QuicPacketBuilderStop:
            return  # no room in the congestion window: a later round sends it
        buf.push_bytes(body)
        receiver.window_pending = False
        self._loss._pacer.update_after_send(now=now)

    def _on_fec_window_delivery(self, delivery: QuicDeliveryState, epoch: int) -> None:
        if delivery == QuicDeliveryState.LOST and self._fec_receiver is not None:
            self._fec_receiver.on_window_lost(epoch)

    def _wants_to_send(self, path: Path) -> bool:
        sender = self._fec_sender
        return sender is not None and sender.repair_due()

    def _fec_other_path(self) -> bool:
        """Another active path could carry repairs (loss on one path spares the other)."""
        config = self._fec_config
        if config is None or not config.cross_path_repairs:
            return False
        return any(
            path is not self._live and path.state is PathState.ACTIVE
            for path in self._paths.values()
        )

    def _write_fec_repairs(self, builder: FecPacketBuilder, now: float) -> None:
        """REPAIR frames in packets of their own: in flight, paced, never retransmitted."""
        sender = self._fec_sender
        crypto = self._cryptos[Epoch.ONE_RTT]
        if sender is None or not self._handshake_complete or not crypto.send.is_valid():
            return
        if (
            not sender.any_path
            and self._live.path_id == sender.source_path_id
            and self._fec_other_path()
        ):
            return  # another path carries them, so one path's loss burst spares them
        while sender.repair_due():
            self._pacing_at = self._loss._pacer.next_send_time(now=now)
            if self._pacing_at is not None:
                return
            frame = sender.next_repair()
            body = frame.encode_body()
            builder.start_packet(QuicPacketType.ONE_RTT, crypto)
            builder.protectable = False
            builder.start_frame(REPAIR, capacity=len(body)).push_bytes(body)
            sender.commit_repair(frame, len(body) + 4)
            self._loss._pacer.update_after_send(now=now)

    def _write_ack_frame(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, now: float
    ) -> None:
        receiver = self._fec_receiver
        frame = receiver.symbol_ack() if receiver and space.is_application_data else None
        if receiver is not None and frame is not None:
            # Ahead of the ACK: the sender settles recovered packets before loss detection
            # would hand their data back for retransmission.
            body = frame.encode_body()
            try:
                builder.start_frame(SYMBOL_ACK, capacity=len(body) + 4).push_bytes(body)
                receiver.ack_pending = False
            except QuicPacketBuilderStop:
                pass  # no room: the next ACK carries it
        super()._write_ack_frame(builder=builder, space=space, now=now)

    # -- FEC: timers and recovery -----------------------------------------------------------

    def get_timer(self) -> float | None:
        timer: float | None = super().get_timer()
        repair = self._fec_sender.timer() if self._fec_sender else None
        if repair is None:
            return timer
        return repair if timer is None else min(timer, repair)

    def handle_timer(self, now: float) -> None:
        if self._fec_sender is not None:
            self._fec_sender.on_timer(now)
        super().handle_timer(now)

    def _recovery_class(self) -> type[CountingRecovery]:
        return CountingRecovery if self._fec_config is None else MeasuredRecovery

    def _new_recovery(self, *, peer_completed_address_validation: bool) -> CountingRecovery:
        """Each path's recovery; a coupled controller ("lia") joins the connection's group."""
        with coupling(self._cc_group):
            return super()._new_recovery(
                peer_completed_address_validation=peer_completed_address_validation
            )

    def _forget_closed_paths(self, now: float) -> None:
        super()._forget_closed_paths(now)
        group = self._cc_group
        if group.members:
            # A closing or forgotten path's window no longer counts (path 0's recovery
            # stays with its path after it closed: it must leave all the same).
            active = {
                id(self._recovery_of(path)._cc)
                for path in self._paths.values()
                if path.state is not PathState.CLOSING
            }
            for member in group.members:
                if id(member) not in active:
                    group.leave(member)

    # -- FEC: receiving ------------------------------------------------------------------------

    def _payload_received(
        self, context: QuicReceiveContext, plain: bytes, crypto_frame_required: bool = False
    ) -> tuple[bool, bool]:
        self._fec_symbol_seen = False
        if self._fec_sender is not None:
            self._fec_sender.now = context.time  # losses found in this packet's ACKs
        result: tuple[bool, bool] = super()._payload_received(context, plain, crypto_frame_required)
        receiver = self._fec_receiver
        if receiver is not None and receiver.backlog:
            self._dispatch_recovered(receiver, context)
        return result

    def _dispatch_recovered(self, receiver: FecReceiver, context: QuicReceiveContext) -> None:
        """Recovered packets go through the frame dispatch as if they had arrived."""
        self._fec_in_symbol = True
        try:
            while receiver.backlog:
                super()._payload_received(context, receiver.backlog.popleft().payload)
        finally:
            self._fec_in_symbol = False
        self._spaces[Epoch.ONE_RTT].ack_at = context.time  # SYMBOL_ACK without delay

    def _handle_fec_frame(self, context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
        if self._fec_sender is None or self._fec_receiver is None:
            raise QuicConnectionError(
                QuicErrorCode.PROTOCOL_VIOLATION, frame_type, "FEC frame, FEC not negotiated"
            )
        if self._fec_in_symbol:
            raise QuicConnectionError(
                QuicErrorCode.PROTOCOL_VIOLATION, frame_type, "FEC frame inside a source symbol"
            )
        try:
            frame = decode_frame(frame_type, buf)
        except FrameEncodingError as exc:
            raise QuicConnectionError(
                QuicErrorCode.FRAME_ENCODING_ERROR, frame_type, str(exc)
            ) from exc
        if isinstance(frame, SourceSymbolId):
            self._on_source_symbol(frame, buf)
        elif isinstance(frame, Repair):
            self._on_repair(frame)
        elif isinstance(frame, SymbolAck):
            self._fec_sender.on_symbol_ack(frame.ranges)
        elif isinstance(frame, FecWindow):
            self._fec_sender.on_fec_window(frame.epoch, frame.window)

    def _on_source_symbol(self, frame: SourceSymbolId, buf: Buffer) -> None:
        receiver = self._fec_receiver
        assert receiver is not None
        if self._fec_symbol_seen:
            raise _fec_violation(frame, "a second SOURCE_SYMBOL_ID in one packet")
        self._fec_symbol_seen = True
        symbol = buf.data_slice(buf.tell(), buf.capacity)
        limit = receiver.symbol_size - 2
        if not 0 < len(symbol) <= limit:
            raise _fec_violation(
                frame, f"source symbol {frame.symbol_id} has {len(symbol)} bytes, not 1..{limit}"
            )
        receiver.on_source(frame.symbol_id, symbol)

    def _on_repair(self, frame: Repair) -> None:
        receiver = self._fec_receiver
        assert receiver is not None
        if len(frame.symbol) != receiver.symbol_size:
            raise _fec_violation(
                frame,
                f"REPAIR symbol of {len(frame.symbol)} bytes, "
                f"the negotiated Symbol Size is {receiver.symbol_size}",
            )
        if frame.count > receiver.widest_window:
            raise _fec_violation(
                frame,
                f"REPAIR spans {frame.count} symbols, "
                f"our decoding window is at most {receiver.widest_window}",
            )
        try:
            receiver.on_repair(frame)
        except CorruptRepairError as exc:
            raise _fec_violation(frame, f"REPAIR contradicts the symbols received: {exc}") from exc
        except FecError as exc:
            raise _fec_violation(frame, f"REPAIR refused: {exc}") from exc


def _fec_violation(frame: SourceSymbolId | Repair, reason: str) -> QuicConnectionError:
    return QuicConnectionError(QuicErrorCode.PROTOCOL_VIOLATION, frame.frame_type, reason)


fec_builder.install()
