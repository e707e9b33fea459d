"""NetSched client SDK: SLO-aware requests over QUIC.

async with netsched_client.connect("127.0.0.1", 4433, slo=SLO(deadline_ms=100)) as s:
    response = await s.request("api", b"payload")
"""

from .errors import (
    BackendFailed,
    BadRequest,
    ConnectionLost,
    DeadlineExceeded,
    FramingError,
    NegotiationError,
    NetSchedError,
    NoBackend,
    RequestError,
    ServiceNotFound,
    SLOError,
    SLORefused,
    Status,
)
from .proto.slo import SLO
from .runtime.paths import PathError, PathStats
from .runtime.session import Response, Session, Stream, connect, open_session

__all__ = [
    "SLO",
    "BackendFailed",
    "BadRequest",
    "ConnectionLost",
    "DeadlineExceeded",
    "FramingError",
    "NegotiationError",
    "NetSchedError",
    "NoBackend",
    "PathError",
    "PathStats",
    "RequestError",
    "Response",
    "SLOError",
    "SLORefused",
    "ServiceNotFound",
    "Session",
    "Status",
    "Stream",
    "connect",
    "open_session",
]
