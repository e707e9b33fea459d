"""NetSched client SDK: SLO-aware requests over QUIC.

async with netsched_client.connect("127.0.0.1", 4433, slo=SLO(deadline_ms=100)) as s:
    response = await s.request("api", b"payload")
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    __version__: str
    from .errors import (
        BackendFailed,
        BackendStatusError,
        BadRequest,
        CertificateError,
        ConnectError,
        ConnectionLost,
        ConnectionRefused,
        DeadlineExceeded,
        EdgeGoingAway,
        FramingError,
        HostNotFound,
        NegotiationError,
        NetSchedError,
        NoBackend,
        ReconnectFailed,
        RequestError,
        RequestInterrupted,
        RequestTimeout,
        ResponseTruncated,
        ServiceNotFound,
        SLOError,
        SLORefused,
        Status,
    )
    from .fec.control import FecMode, FecOverride
    from .proto.fec_link import FecConfig
    from .proto.framing import Headers
    from .proto.slo import SLO
    from .runtime.paths import PathError, PathStats
    from .runtime.reconnect import ReconnectPolicy, ReconnectStats
    from .runtime.session import (
        Response,
        ResumptionTicket,
        Session,
        Stream,
        TicketStore,
        connect,
        open_session,
    )
else:
    # Imported on first use: `import netsched_client.cli` (the `netsched` command)
    # starts in milliseconds and a Ctrl-C during the imports below is the CLI's
    # to report. Each name is imported from its module once, then cached here.
    import importlib

    _EXPORTS = {
        **dict.fromkeys(
            (
                "BackendFailed",
                "BackendStatusError",
                "BadRequest",
                "CertificateError",
                "ConnectError",
                "ConnectionLost",
                "ConnectionRefused",
                "DeadlineExceeded",
                "EdgeGoingAway",
                "FramingError",
                "HostNotFound",
                "NegotiationError",
                "NetSchedError",
                "NoBackend",
                "ReconnectFailed",
                "RequestError",
                "RequestInterrupted",
                "RequestTimeout",
                "ResponseTruncated",
                "ServiceNotFound",
                "SLOError",
                "SLORefused",
                "Status",
            ),
            ".errors",
        ),
        "FecMode": ".fec.control",
        "FecOverride": ".fec.control",
        "FecConfig": ".proto.fec_link",
        "Headers": ".proto.framing",
        "SLO": ".proto.slo",
        "PathError": ".runtime.paths",
        "PathStats": ".runtime.paths",
        "ReconnectPolicy": ".runtime.reconnect",
        "ReconnectStats": ".runtime.reconnect",
        **dict.fromkeys(
            (
                "Response",
                "ResumptionTicket",
                "Session",
                "Stream",
                "TicketStore",
                "connect",
                "open_session",
            ),
            ".runtime.session",
        ),
    }

    def __getattr__(name: str) -> object:
        if name == "__version__":
            value = globals()[name] = _distribution_version()
            return value
        module = _EXPORTS.get(name)
        if module is None:  # a subpackage, as `netsched_client.fec` after `import netsched_client`
            try:
                return importlib.import_module(f".{name}", __name__)
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":
                    raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value

    def _distribution_version() -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("netsched")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"

    def __dir__() -> list[str]:
        return sorted({*globals(), *_EXPORTS, "__version__"})


__all__ = [
    "SLO",
    "BackendFailed",
    "BackendStatusError",
    "BadRequest",
    "CertificateError",
    "ConnectError",
    "ConnectionLost",
    "ConnectionRefused",
    "DeadlineExceeded",
    "EdgeGoingAway",
    "FecConfig",
    "FecMode",
    "FecOverride",
    "FramingError",
    "Headers",
    "HostNotFound",
    "NegotiationError",
    "NetSchedError",
    "NoBackend",
    "PathError",
    "PathStats",
    "ReconnectFailed",
    "ReconnectPolicy",
    "ReconnectStats",
    "RequestError",
    "RequestInterrupted",
    "RequestTimeout",
    "Response",
    "ResponseTruncated",
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
