"""What goes into a packet, and what a sent frame gives back when acknowledged or lost.

`FrameWriter` fills one packet of one packet-number space: an ACK when one is
due, then (when the connection lets ack-eliciting frames go) its writers in
a fixed order: HANDSHAKE_DONE, CRYPTO, PATH_RESPONSE, the flow-control
frames, RESET_STREAM and STOP_SENDING, the connection-ID frames, STREAM data
and the blocked frames; an ACK rides along with anything else; a PTO probe
with nothing else sends a PING. Each frame sent is recorded as a
`SentFrame`; `on_acked` and `on_lost` give the frame's data or duty back to
its owner (the CRYPTO or stream ring, the streams' owed frames, the
connection-ID state, `Owed`).
The connection owns the packet around it (header, padding, protection).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Final

from netsched_client.core import control_frames, packet
from netsched_client.core.cids import LocalCids, PeerCids
from netsched_client.core.control_frames import PATH_RESPONSE_FRAME
from netsched_client.core.packet import KIND_ONE_RTT
from netsched_client.core.spaces import PacketSpace, SentFrame, SentKind
from netsched_client.core.streams import StreamTable

ACK_DELAY_EXPONENT: Final = 3  # ours: the default, so the parameter is not sent
# ACK ranges in one frame: the newest, which are what loss detection needs.
ACK_RANGES: Final = 32
# Room a frame needs to be worth writing; a control frame's largest size.
MIN_PAYLOAD: Final = 24
CONTROL_ROOM: Final = 24
# PATH_RESPONSEs owed at once; more challenges than that are answered in part (§8.2.2).
MAX_PATH_RESPONSES: Final = 4


@dataclass(slots=True)
class Owed:
    """Connection-level frames owed to the peer (the streams keep their own)."""

    handshake_done: bool = False
    path_responses: list[bytes] = field(default_factory=list)
    new_cids: set[int] = field(default_factory=set)  # our sequences to announce
    retire_in_flight: set[int] = field(default_factory=set)  # RETIREs sent, not yet resolved

    def answer(self, challenge: bytes) -> None:
        """A PATH_CHALLENGE: its PATH_RESPONSE is owed (the newest few)."""
        self.path_responses = [*self.path_responses, challenge][-MAX_PATH_RESPONSES:]


class FrameWriter:
    """Fills packets with what is owed; resolves sent frames (see the module)."""

    def __init__(
        self,
        stream_backend: ModuleType,
        streams: StreamTable,
        local_cids: LocalCids,
        peer_cids: PeerCids,
    ) -> None:
        self._stream = stream_backend
        self.streams = streams
        self.local_cids = local_cids
        self.peer_cids = peer_cids
        self.owed = Owed()

    def fill(
        self, space: PacketSpace, buf: bytearray, now: float, eliciting_allowed: bool
    ) -> tuple[int, list[SentFrame], bool]:
        """Writes a packet's frames into `buf`: (length, frames, ack-eliciting)."""
        sent: list[SentFrame] = []
        pos = 0
        acked = space.acks.ack_due <= now
        if acked:
            pos = self._write_ack(space, buf, pos, sent, now)
        if eliciting_allowed:
            writers = _ONE_RTT_WRITERS if space.kind == KIND_ONE_RTT else _HANDSHAKE_WRITERS
            for writer in writers:
                pos = writer(self, space, buf, pos, sent, now)
        eliciting = any(frame.kind is not SentKind.ACK for frame in sent)
        if eliciting and not acked and space.acks.ack_eliciting:
            pos = self._write_ack(space, buf, pos, sent, now)  # it rides along
        if space.probes and not eliciting:
            after = put(buf, pos, bytes((control_frames.PING_FRAME,)))
            if after:
                pos = after
                sent.append(SentFrame(SentKind.PING))
                eliciting = True
        if eliciting:
            space.probes = 0
        return pos, sent, eliciting

    def on_acked(self, space: PacketSpace, frame: SentFrame) -> None:
        _ON_ACKED[frame.kind](self, space, frame)

    def on_lost(self, space: PacketSpace, frame: SentFrame) -> None:
        _ON_LOST[frame.kind](self, space, frame)

    def _write_ack(
        self, space: PacketSpace, buf: bytearray, pos: int, sent: list[SentFrame], now: float
    ) -> int:
        received = space.acks.received
        if not received:
            return pos
        delay = 0
        if space.kind == KIND_ONE_RTT:
            delay = max(int((now - space.largest_received_time) * 1e6), 0) >> ACK_DELAY_EXPONENT
        frame = packet.encode_ack(received, delay, max_ranges=ACK_RANGES)
        after = put(buf, pos, frame)
        if after:
            space.acks.on_ack_sent()
            sent.append(SentFrame(SentKind.ACK, received.largest()))
            return after
        return pos

    def _write_crypto(
        self, space: PacketSpace, buf: bytearray, pos: int, sent: list[SentFrame], now: float
    ) -> int:
        while len(buf) - pos >= MIN_PAYLOAD:
            written = space.crypto_send.write_frame(buf, pos, len(buf), None)
            if written is None:
                break
            offset, length, _, pos = written
            sent.append(SentFrame(SentKind.CRYPTO, 0, offset, length))
        return pos

    def _write_handshake_done(
        self, space: PacketSpace, buf: bytearray, pos: int, sent: list[SentFrame], now: float
    ) -> int:
        if not self.owed.handshake_done:
            return pos
        after = put(buf, pos, bytes((control_frames.HANDSHAKE_DONE_FRAME,)))
        if after:
            self.owed.handshake_done = False
            sent.append(SentFrame(SentKind.HANDSHAKE_DONE))
            return after
        return pos

    def _write_path_responses(
        self, space: PacketSpace, buf: bytearray, pos: int, sent: list[SentFrame], now: float
    ) -> int:
        while self.owed.path_responses and len(buf) - pos >= CONTROL_ROOM:
            data = self.owed.path_responses.pop(0)
            pos = put(buf, pos, control_frames.write_path_data(PATH_RESPONSE_FRAME, data))
            sent.append(SentFrame(SentKind.PING))  # ack-eliciting, never sent again
        return pos

    def _write_flow_control(
        self, space: PacketSpace, buf: bytearray, pos: int, sent: list[SentFrame], now: float
    ) -> int:
        """MAX_DATA, MAX_STREAM_DATA, MAX_STREAMS and RESET_STREAM owed, while they fit."""
        table = self.streams
        table.window_updates(now, space.ledger.rtt.smoothed_rtt)
        pending = table.pending
        m = self._stream
        if pending.max_data and len(buf) - pos >= CONTROL_ROOM:
            pos = m.write_max_data(buf, pos, table.recv_credit.limit)
            pending.max_data = False
            sent.append(SentFrame(SentKind.MAX_DATA))
        for stream_id in sorted(pending.max_stream_data):
            if len(buf) - pos < CONTROL_ROOM:
                return pos
            pending.max_stream_data.discard(stream_id)
            receiver = table.recv.get(stream_id)
            if receiver is not None and receiver.final_size < 0:
                pos = m.write_max_stream_data(buf, pos, stream_id, receiver.credit.limit)
                sent.append(SentFrame(SentKind.MAX_STREAM_DATA, stream_id))
        for bidirectional in sorted(pending.max_streams):
            if len(buf) - pos < CONTROL_ROOM:
                return pos
            pending.max_streams.discard(bidirectional)
            limit = table.peer_counts[bidirectional].limit
            pos = m.write_max_streams(buf, pos, bidirectional, limit)
            sent.append(SentFrame(SentKind.MAX_STREAMS, int(bidirectional)))
        return pos

    def _write_stream_signals(
        self, space: PacketSpace, buf: bytearray, pos: int, sent: list[SentFrame], now: float
    ) -> int:
        """RESET_STREAM and STOP_SENDING owed, while they fit."""
        table = self.streams
        pending = table.pending
        for stream_id, error_code in sorted(pending.resets.items()):
            if len(buf) - pos < CONTROL_ROOM:
                return pos
            del pending.resets[stream_id]
            final_size = table.send[stream_id].final_size  # kept until the reset is acked
            pos = self._stream.write_reset_stream(buf, pos, stream_id, error_code, final_size)
            sent.append(SentFrame(SentKind.RESET_STREAM, stream_id, error_code))
        for stream_id, error_code in sorted(pending.stops.items()):
            if len(buf) - pos < CONTROL_ROOM:
                return pos
            del pending.stops[stream_id]
            pos = self._stream.write_stop_sending(buf, pos, stream_id, error_code)
            sent.append(SentFrame(SentKind.STOP_SENDING, stream_id, error_code))
        return pos

    def _write_cids(
        self, space: PacketSpace, buf: bytearray, pos: int, sent: list[SentFrame], now: float
    ) -> int:
        """NEW_CONNECTION_ID for our IDs not yet announced, RETIRE_CONNECTION_ID owed."""
        announce = self.local_cids.active(0) if self.owed.new_cids else []
        for issued in announce:
            if issued.sequence not in self.owed.new_cids:
                continue
            if len(buf) - pos < CONTROL_ROOM + len(issued.cid) + 16:
                return pos
            self.owed.new_cids.discard(issued.sequence)
            frame = control_frames.write_new_connection_id(
                issued.sequence, 0, issued.cid, issued.reset_token
            )
            pos = put(buf, pos, frame)
            sent.append(SentFrame(SentKind.NEW_CONNECTION_ID, issued.sequence))
        for sequence in self.peer_cids.pending_retirements(0):
            if sequence in self.owed.retire_in_flight or len(buf) - pos < CONTROL_ROOM:
                continue
            self.owed.retire_in_flight.add(sequence)
            pos = put(buf, pos, control_frames.write_retire_connection_id(sequence))
            sent.append(SentFrame(SentKind.RETIRE_CONNECTION_ID, sequence))
        return pos

    def _write_streams(
        self, space: PacketSpace, buf: bytearray, pos: int, sent: list[SentFrame], now: float
    ) -> int:
        """STREAM frames, lowest stream first, within both credits; the blocked frames
        (once per limit) when credit stops data that waits."""
        table = self.streams
        for sender in table.sendable():
            while len(buf) - pos >= MIN_PAYLOAD:
                written = sender.write_frame(buf, pos, len(buf), table.send_credit)
                if written is None:
                    break
                offset, length, fin, pos = written
                sent.append(SentFrame(SentKind.STREAM, sender.stream_id, offset, length, fin))
            limit = sender.take_blocked()
            if limit >= 0 and len(buf) - pos >= CONTROL_ROOM:
                pos = self._stream.write_stream_data_blocked(buf, pos, sender.stream_id, limit)
        limit = table.send_credit.take_blocked() if table.sendable() else -1
        if limit >= 0 and len(buf) - pos >= CONTROL_ROOM:
            pos = self._stream.write_data_blocked(buf, pos, limit)
        return pos

    def _crypto_acked(self, space: PacketSpace, frame: SentFrame) -> None:
        space.crypto_send.on_acked(frame.offset, frame.length, False)

    def _crypto_lost(self, space: PacketSpace, frame: SentFrame) -> None:
        space.crypto_send.on_lost(frame.offset, frame.length, False)

    def _stream_acked(self, space: PacketSpace, frame: SentFrame) -> None:
        sender = self.streams.send.get(frame.number)
        if sender is not None:
            sender.on_acked(frame.offset, frame.length, frame.fin)

    def _stream_lost(self, space: PacketSpace, frame: SentFrame) -> None:
        sender = self.streams.send.get(frame.number)
        if sender is not None:
            sender.on_lost(frame.offset, frame.length, frame.fin)

    def _ack_acked(self, space: PacketSpace, frame: SentFrame) -> None:
        space.acks.on_ack_acked(frame.number)

    def _max_data_lost(self, space: PacketSpace, frame: SentFrame) -> None:
        self.streams.pending.max_data = True

    def _max_stream_data_lost(self, space: PacketSpace, frame: SentFrame) -> None:
        receiver = self.streams.recv.get(frame.number)
        if receiver is not None and receiver.final_size < 0:
            self.streams.pending.max_stream_data.add(frame.number)

    def _max_streams_lost(self, space: PacketSpace, frame: SentFrame) -> None:
        self.streams.pending.max_streams.add(bool(frame.number))

    def _reset_lost(self, space: PacketSpace, frame: SentFrame) -> None:
        if frame.number in self.streams.send:
            self.streams.pending.resets[frame.number] = frame.offset

    def _reset_acked(self, space: PacketSpace, frame: SentFrame) -> None:
        self.streams.resets_acked.add(frame.number)

    def _stop_lost(self, space: PacketSpace, frame: SentFrame) -> None:
        receiver = self.streams.recv.get(frame.number)
        if receiver is not None and not receiver.is_finished and not receiver.reset_received:
            self.streams.pending.stops[frame.number] = frame.offset

    def _new_cid_lost(self, space: PacketSpace, frame: SentFrame) -> None:
        if any(issued.sequence == frame.number for issued in self.local_cids.active(0)):
            self.owed.new_cids.add(frame.number)

    def _retire_acked(self, space: PacketSpace, frame: SentFrame) -> None:
        self.peer_cids.on_retire_acked(0, frame.number)
        self.owed.retire_in_flight.discard(frame.number)

    def _retire_lost(self, space: PacketSpace, frame: SentFrame) -> None:
        self.owed.retire_in_flight.discard(frame.number)

    def _handshake_done_lost(self, space: PacketSpace, frame: SentFrame) -> None:
        self.owed.handshake_done = True

    def _nothing(self, space: PacketSpace, frame: SentFrame) -> None:
        """PING and the like: nothing to do when acknowledged or lost."""


def put(buf: bytearray, pos: int, frame: bytes) -> int:
    """Writes `frame` at `pos`: the offset after, or 0 when it does not fit."""
    end = pos + len(frame)
    if end > len(buf):
        return 0
    buf[pos:end] = frame
    return end


Writer = Callable[[FrameWriter, PacketSpace, bytearray, int, list[SentFrame], float], int]
Resolver = Callable[[FrameWriter, PacketSpace, SentFrame], None]

# The order frames go into a packet: what unblocks the peer first, stream data last.
_HANDSHAKE_WRITERS: Final[tuple[Writer, ...]] = (FrameWriter._write_crypto,)
_ONE_RTT_WRITERS: Final[tuple[Writer, ...]] = (
    FrameWriter._write_handshake_done,
    FrameWriter._write_crypto,
    FrameWriter._write_path_responses,
    FrameWriter._write_flow_control,
    FrameWriter._write_stream_signals,
    FrameWriter._write_cids,
    FrameWriter._write_streams,
)
_ON_ACKED: Final[dict[SentKind, Resolver]] = {
    SentKind.CRYPTO: FrameWriter._crypto_acked,
    SentKind.STREAM: FrameWriter._stream_acked,
    SentKind.ACK: FrameWriter._ack_acked,
    SentKind.RETIRE_CONNECTION_ID: FrameWriter._retire_acked,
    SentKind.RESET_STREAM: FrameWriter._reset_acked,
    **{
        kind: FrameWriter._nothing
        for kind in (
            SentKind.PING,
            SentKind.MAX_DATA,
            SentKind.MAX_STREAM_DATA,
            SentKind.MAX_STREAMS,
            SentKind.STOP_SENDING,
            SentKind.NEW_CONNECTION_ID,
            SentKind.HANDSHAKE_DONE,
        )
    },
}
_ON_LOST: Final[dict[SentKind, Resolver]] = {
    SentKind.CRYPTO: FrameWriter._crypto_lost,
    SentKind.STREAM: FrameWriter._stream_lost,
    SentKind.ACK: FrameWriter._nothing,
    SentKind.PING: FrameWriter._nothing,
    SentKind.MAX_DATA: FrameWriter._max_data_lost,
    SentKind.MAX_STREAM_DATA: FrameWriter._max_stream_data_lost,
    SentKind.MAX_STREAMS: FrameWriter._max_streams_lost,
    SentKind.RESET_STREAM: FrameWriter._reset_lost,
    SentKind.STOP_SENDING: FrameWriter._stop_lost,
    SentKind.NEW_CONNECTION_ID: FrameWriter._new_cid_lost,
    SentKind.RETIRE_CONNECTION_ID: FrameWriter._retire_lost,
    SentKind.HANDSHAKE_DONE: FrameWriter._handshake_done_lost,
}
