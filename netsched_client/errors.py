"""Typed errors of the client SDK and the status codes that carry them on the wire.

A response status is an HTTP-like code so that the native protocol and the
HTTP/3 fallback share one table; `error_for_status` turns a non-2xx status into
the matching exception.
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    OK = 200
    BAD_REQUEST = 400
    NOT_FOUND = 404
    REQUEST_TIMEOUT = 408
    SLO_REFUSED = 422
    BACKEND_ERROR = 502
    NO_BACKEND = 503
    DEADLINE_EXCEEDED = 504


class NetSchedError(Exception):
    """Base class of every error the SDK raises."""


class SLOError(NetSchedError, ValueError):
    """SLO metadata is malformed or out of range (raised locally, before sending)."""


class FramingError(NetSchedError, ValueError):
    """A request or response head on a stream is malformed."""


class NegotiationError(NetSchedError):
    """The server speaks neither `netsched/1` nor a fallback protocol we support."""


class ConnectionLost(NetSchedError):
    """The QUIC connection closed before the operation completed."""

    error_code: int | None = None  # QUIC close code, when the peer or stack gave one


class EdgeGoingAway(ConnectionLost):
    """The edge is draining this connection (GOAWAY): the request was not processed.

    Send it again on a new connection; requests already under way finish.
    """


class RequestError(NetSchedError):
    """The edge answered a request with a non-success status."""

    status: Status = Status.BAD_REQUEST

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = Status(status)


class BadRequest(RequestError):
    status = Status.BAD_REQUEST


class ServiceNotFound(RequestError):
    status = Status.NOT_FOUND


class RequestTimeout(RequestError):
    """The edge stopped waiting for the request's body (it went silent too long)."""

    status = Status.REQUEST_TIMEOUT


class SLORefused(RequestError):
    status = Status.SLO_REFUSED


class BackendFailed(RequestError):
    status = Status.BACKEND_ERROR


class ResponseTruncated(BackendFailed):
    """The response broke after its head: the edge reset the stream mid-body.

    The status already received (usually 200) does not hold: the body is
    incomplete. `error_code` is the stream's reset code (docs/PROTOCOL.md).
    """

    def __init__(self, message: str, *, error_code: int | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code


class NoBackend(RequestError):
    status = Status.NO_BACKEND


class DeadlineExceeded(RequestError):
    status = Status.DEADLINE_EXCEEDED


_BY_STATUS: dict[int, type[RequestError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        ServiceNotFound,
        RequestTimeout,
        SLORefused,
        BackendFailed,
        NoBackend,
        DeadlineExceeded,
    )
}


def error_for_status(status: int, message: str) -> RequestError:
    """The exception for a non-success `status` (unknown codes map by class: 4xx/5xx)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = BadRequest if 400 <= status < 500 else BackendFailed
        return cls(f"{message} (status {status})", status=cls.status)
    return cls(message)
