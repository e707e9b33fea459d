"""A connection's streams: IDs and counts, both directions' credit (RFC 9000 §2-§4).

`StreamTable` owns the `SendStream`s and `RecvStream`s of `stream` by ID,
the connection-level credit both ways (MAX_DATA), the stream counts both
ways (MAX_STREAMS), and what flow-control frames are owed. The connection
calls it from its frame handlers and its send path; it never builds packets.

Rules (§2.1, §4.6, §19.8): a peer-initiated stream opens every lower stream
of its type with it, and one past the MAX_STREAMS we advertised is
STREAM_LIMIT_ERROR; a frame for a locally initiated stream not yet opened
is STREAM_STATE_ERROR; a frame for a stream already closed and forgotten is
ignored. A stream is closed, and forgotten, when its receive side is read
to the end (or reset) and its send side is acknowledged (or its reset is);
each closed peer stream gives the peer one more (MAX_STREAMS once half the
initial count is due).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType

from netsched_client.core import frames, stream
from netsched_client.core.errors import PacketError, StreamStateError
from netsched_client.core.transport_params import TransportParameters


class StreamLimitError(PacketError):
    """A stream beyond the advertised MAX_STREAMS (RFC 9000 §4.6): STREAM_LIMIT_ERROR."""

    error_code = 0x04


def is_local(stream_id: int, is_client: bool) -> bool:
    return (stream_id & 1) == (0 if is_client else 1)


def is_unidirectional(stream_id: int) -> bool:
    return bool(stream_id & 2)


@dataclass(slots=True)
class StreamCount:
    """One type's count (bidi or uni) in one direction: the limit and what is opened."""

    limit: int
    opened: int = 0  # streams of this type opened so far (the next index)
    closed: int = 0  # peer streams closed (only counted for the peer's)


@dataclass(slots=True)
class Pending:
    """Flow-control frames owed to the peer."""

    max_data: bool = False
    max_stream_data: set[int] = field(default_factory=set)
    max_streams: set[bool] = field(default_factory=set)  # by "bidirectional"
    resets: dict[int, int] = field(default_factory=dict)  # stream ID -> error code
    stops: dict[int, int] = field(default_factory=dict)  # STOP_SENDING: stream ID -> code


class StreamTable:
    """Streams by ID, credit and counts both ways."""

    def __init__(
        self, is_client: bool, local: TransportParameters, max_window: int, backend: ModuleType
    ) -> None:
        self.is_client = is_client
        self.local = local
        self.peer = TransportParameters()  # until the handshake gives the peer's
        self.max_window = max_window
        self._m = backend
        self.send: dict[int, stream.SendStream] = {}
        self.recv: dict[int, stream.RecvStream] = {}
        self.send_credit = backend.SendCredit(0)
        self.recv_credit = backend.ReceiveCredit(local.initial_max_data, max_window)
        self.consumed = 0  # bytes delivered to the application, all streams
        # Counts by "bidirectional": the peer's limit on ours, ours on the peer's.
        self.local_counts = {True: StreamCount(0), False: StreamCount(0)}
        self.peer_counts = {
            True: StreamCount(local.initial_max_streams_bidi),
            False: StreamCount(local.initial_max_streams_uni),
        }
        self.pending = Pending()
        self.resets_acked: set[int] = set()  # our RESET_STREAMs the peer acknowledged

    def set_peer(self, peer: TransportParameters) -> None:
        """The peer's transport parameters: our credit and stream limits."""
        self.peer = peer
        self.send_credit.raise_limit(peer.initial_max_data)
        self.local_counts[True].limit = peer.initial_max_streams_bidi
        self.local_counts[False].limit = peer.initial_max_streams_uni

    # -- opening --------------------------------------------------------------------------

    def open_local(self, unidirectional: bool) -> int:
        """The next stream of ours, opened; StreamLimitError when the peer allows no more."""
        count = self.local_counts[not unidirectional]
        if count.opened >= count.limit:
            raise StreamLimitError(f"the peer allows {count.limit} streams of this type")
        stream_id = count.opened * 4 + (2 if unidirectional else 0) + (0 if self.is_client else 1)
        count.opened += 1
        self._create(stream_id)
        return stream_id

    def _create(self, stream_id: int) -> None:
        local = is_local(stream_id, self.is_client)
        uni = is_unidirectional(stream_id)
        if local or not uni:
            if uni:
                credit = self.peer.initial_max_stream_data_uni
            elif local:
                credit = self.peer.initial_max_stream_data_bidi_remote
            else:
                credit = self.peer.initial_max_stream_data_bidi_local
            self.send[stream_id] = self._m.SendStream(stream_id, credit)
        if not local or not uni:
            if uni:
                window = self.local.initial_max_stream_data_uni
            elif local:
                window = self.local.initial_max_stream_data_bidi_local
            else:
                window = self.local.initial_max_stream_data_bidi_remote
            self.recv[stream_id] = self._m.RecvStream(window, self.max_window)

    def _reach(self, stream_id: int) -> bool:
        """Opens `stream_id` (a frame names it) and what it implies; False when it was
        closed and forgotten (the frame is then ignored)."""
        if stream_id in self.send or stream_id in self.recv:
            return True
        index = stream_id >> 2
        if is_local(stream_id, self.is_client):
            count = self.local_counts[not is_unidirectional(stream_id)]
            if index >= count.opened:
                raise StreamStateError(f"stream {stream_id} is not open")
            return False
        count = self.peer_counts[not is_unidirectional(stream_id)]
        if index >= count.limit:
            raise StreamLimitError(f"stream {stream_id} beyond the limit {count.limit}")
        if index < count.opened:
            return False
        for lower in range(count.opened, index + 1):
            self._create((lower << 2) | (stream_id & 3))
        count.opened = index + 1
        return True

    # -- frames received ------------------------------------------------------------------

    def on_stream(
        self, data: bytes, stream_id: int, offset: int, data_offset: int, length: int, fin: bool
    ) -> tuple[bytes, bool] | None:
        """A STREAM frame: (the bytes now readable, whether the stream ended) or None when
        the stream is closed. The connection's credit counts the new bytes (§4.1)."""
        frames.check_stream_direction(stream.STREAM_FRAME, stream_id, self.is_client)
        if not self._reach(stream_id):
            return None
        receiver = self.recv[stream_id]
        grown = receiver.on_data(data, data_offset, length, offset, fin)
        self.recv_credit.on_received(grown)
        chunk = receiver.read()
        self.consumed += len(chunk)
        ended = receiver.is_finished
        return chunk, ended

    def on_reset(self, stream_id: int, final_size: int) -> bool:
        """A RESET_STREAM: True when it reset a live stream (an event for the user)."""
        frames.check_stream_direction(stream.RESET_STREAM_FRAME, stream_id, self.is_client)
        if not self._reach(stream_id):
            return False
        receiver = self.recv[stream_id]
        already = receiver.reset_received
        self.recv_credit.on_received(receiver.on_reset(final_size))
        return not already

    def on_stop_sending(self, stream_id: int, error_code: int) -> None:
        """A STOP_SENDING: reset our side, RESET_STREAM owed (§3.5)."""
        frames.check_stream_direction(stream.STOP_SENDING_FRAME, stream_id, self.is_client)
        if self._reach(stream_id):
            self.reset(stream_id, error_code)

    def reset(self, stream_id: int, error_code: int) -> None:
        """Stops sending on a stream (the application, or the peer's STOP_SENDING): the data
        waiting is dropped, RESET_STREAM owed (§3.1)."""
        sender = self.send.get(stream_id)
        if sender is None:
            raise StreamStateError(f"stream {stream_id}: no sending side here")
        if not sender.was_reset and not sender.is_complete:
            sender.reset()
            self.pending.resets[stream_id] = error_code

    def stop(self, stream_id: int, error_code: int) -> None:
        """The application reads no more of a stream: STOP_SENDING owed (§3.5)."""
        receiver = self.recv.get(stream_id)
        if receiver is None:
            raise StreamStateError(f"stream {stream_id}: no receiving side here")
        if not receiver.is_finished and not receiver.reset_received:
            self.pending.stops[stream_id] = error_code

    def on_max_stream_data(self, stream_id: int, maximum: int) -> None:
        frames.check_stream_direction(stream.MAX_STREAM_DATA_FRAME, stream_id, self.is_client)
        if self._reach(stream_id):
            self.send[stream_id].credit.raise_limit(maximum)

    def on_stream_data_blocked(self, stream_id: int) -> None:
        frames.check_stream_direction(stream.STREAM_DATA_BLOCKED_FRAME, stream_id, self.is_client)
        self._reach(stream_id)

    def on_max_streams(self, bidirectional: bool, maximum: int) -> None:
        count = self.local_counts[bidirectional]
        count.limit = max(count.limit, maximum)

    # -- what to send -----------------------------------------------------------------------

    def window_updates(self, now: float, rtt: float) -> None:
        """Queues MAX_DATA / MAX_STREAM_DATA where the application consumed half a window."""
        if self.recv_credit.update(self.consumed, now, rtt) >= 0:
            self.pending.max_data = True
        for stream_id, receiver in self.recv.items():
            if receiver.window_update(now, rtt) >= 0:
                self.pending.max_stream_data.add(stream_id)

    def sendable(self) -> list[stream.SendStream]:
        """Streams with data, a FIN or lost data waiting, lowest ID first."""
        return [
            sender
            for sender in self.send.values()
            if not sender.was_reset
            and (
                sender.lost
                or sender.next_offset < sender.write_offset
                or (sender.final_size >= 0 and not sender.fin_sent)
            )
        ]

    def has_data(self) -> bool:
        return bool(self.sendable())

    def release_closed(self) -> list[int]:
        """Forgets closed streams, ours and the peer's; each closed peer stream gives the
        peer one more (MAX_STREAMS once half the initial count is due). Returns the IDs."""
        closed = [stream_id for stream_id in {*self.send, *self.recv} if self._closed(stream_id)]
        for stream_id in closed:
            self.recv.pop(stream_id, None)
            self.send.pop(stream_id, None)
            self.resets_acked.discard(stream_id)
            if not is_local(stream_id, self.is_client):
                self.peer_counts[not is_unidirectional(stream_id)].closed += 1
        for bidirectional, count in self.peer_counts.items():
            initial = (
                self.local.initial_max_streams_bidi
                if bidirectional
                else self.local.initial_max_streams_uni
            )
            if count.closed + initial - count.limit >= max(initial // 2, 1):
                count.limit = count.closed + initial
                self.pending.max_streams.add(bidirectional)
        return closed

    def _closed(self, stream_id: int) -> bool:
        """Both sides done: the receive side read to its end or reset, the send side
        acknowledged to its end or its RESET_STREAM acknowledged."""
        receiver = self.recv.get(stream_id)
        if receiver is not None and not (receiver.is_finished or receiver.reset_received):
            return False
        sender = self.send.get(stream_id)
        return sender is None or sender.is_complete or stream_id in self.resets_acked
