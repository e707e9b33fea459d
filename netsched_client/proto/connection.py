"""aioquic's `QuicConnection` extended with NetSched's transport parameters.

The client announces its connection-wide SLO defaults in transport parameter
`SLO_TRANSPORT_PARAMETER`; the server reads them. aioquic keeps its parameter
table in a module global, so instead of mutating it we append our parameter
after aioquic serializes its own and scan for it after aioquic parses.
Multipath (draft-21) comes from `MultipathConnection`; FEC will hang off
this class too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aioquic.quic.connection import NetworkAddress, QuicConnectionError
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from ..errors import SLOError
from .multipath.connection import MultipathConnection
from .send_order import ERROR_DEADLINE, DeadlineMissed, SendOrder, StreamPriority
from .slo import SLO, SLO_TRANSPORT_PARAMETER, decode_slo, encode_slo
from .transport_parameters import encode_transport_parameter, find_transport_parameter


class NetSchedConnection(MultipathConnection):
    """A QUIC connection that carries NetSched's SLO transport parameter.

    `local_slo` (client only) is sent to the peer; `peer_slo` holds what the
    peer sent, or None for a plain QUIC peer.
    """

    def __init__(self, *args: Any, local_slo: SLO | None = None, **kwargs: Any) -> None:
        self._local_slo = local_slo
        self.peer_slo: SLO | None = None
        self.send_order = SendOrder()
        super().__init__(*args, **kwargs)

    def set_stream_priority(self, stream_id: int, deadline_at: float | None, urgency: int) -> None:
        """Serve this stream by deadline (absolute, connection clock), then urgency."""
        self.send_order.set(stream_id, deadline_at, urgency)

    def stream_priorities(self) -> Mapping[int, StreamPriority]:
        return self.send_order.priorities

    def datagrams_with_paths(self, now: float) -> list[tuple[bytes, NetworkAddress, int]]:
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
        return data

    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        super()._parse_transport_parameters(data, from_session_ticket)
        if from_session_ticket:
            # Connection defaults are announced afresh by every handshake.
            return
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
