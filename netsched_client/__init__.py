"""NetSched client SDK: SLO-aware requests over QUIC.

async with netsched_client.connect("127.0.0.1", 4433, slo=SLO(deadline_ms=100)) as s:
    response = await s.request("api", b"payload")
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

try:
    __version__ = _distribution_version("netsched")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

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
from .fec.control import FecMode, FecOverride
from .proto.fec_link import FecConfig
from .proto.slo import SLO
from .runtime.paths import PathError, PathStats
from .runtime.session import (
    Response,
    ResumptionTicket,
    Session,
    Stream,
    TicketStore,
    connect,
    open_session,
)

__all__ = [
    "SLO",
    "BackendFailed",
    "BadRequest",
    "ConnectionLost",
    "DeadlineExceeded",
    "FecConfig",
    "FecMode",
    "FecOverride",
    "FramingError",
    "NegotiationError",
    "NetSchedError",
    "NoBackend",
    "PathError",
    "PathStats",
    "RequestError",
    "Response",
    "ResumptionTicket",
    "SLOError",
    "SLORefused",
    "ServiceNotFound",
    "Session",
    "Status",
    "Stream",
    "TicketStore",
    "__version__",
    "connect",
    "open_session",
]
