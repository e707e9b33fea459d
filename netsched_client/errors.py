"""Typed errors of the client SDK and the status codes that carry them on the wire.

Two kinds of answer never mix: a `RequestError` is the edge's own decision
(unknown service, no backend, queue full, deadline, a backend it could not
reach) and carries one of the statuses below; a backend's answer, whatever
its status, is a response the application reads (its status, headers and
body), as with httpx. `Response.raise_for_status()` turns a backend's 4xx/5xx
into a `BackendStatusError` that carries them. `error_for_status` maps an
edge status to its exception.

Connection set-up failures are `ConnectError`s, raised at once: the host does
not resolve (`HostNotFound`), the CA file cannot be read or the edge's
certificate does not verify (`CertificateError`), nothing listens
(`ConnectionRefused`).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import Protocol


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


class ConnectError(ConnectionLost):
    """No connection to the edge could be set up (a `ConnectionLost`, for callers that
    catch that)."""


class HostNotFound(ConnectError):
    """The edge's host name does not resolve."""


class ConnectionRefused(ConnectError):
    """The edge would not take the connection: its host answered that nothing listens
    on the port (ICMP port unreachable), or the edge itself refused it with
    CONNECTION_REFUSED (a draining edge; `error_code` 0x02 when it said so)."""


class CertificateError(ConnectError):
    """TLS trust failed: the CA file cannot be used, or the edge's certificate did not
    verify against it. `reason` says why, in a few words."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class EdgeGoingAway(ConnectionLost):
    """The edge is draining this connection (GOAWAY): the request was not processed.

    Send it again on a new connection; requests already under way finish.
    """


class RequestInterrupted(ConnectionLost):
    """The connection under a request, stream or datagram flow was lost, and the SDK did
    not send it again: it was not idempotent, its deadline left no time, or it was a
    stream or datagram flow (never replayed behind the application's back).

    `may_have_been_processed` is False only when the edge cannot have acted on it
    (it never left, or it waited in 0-RTT for a handshake that never completed);
    then sending it again is safe even when it is not idempotent.
    """

    def __init__(self, message: str, *, may_have_been_processed: bool) -> None:
        super().__init__(message)
        self.may_have_been_processed = may_have_been_processed


class ReconnectFailed(ConnectionLost):
    """The session could not reconnect within its policy's attempts and time; `attempts`
    says how many it made, `__cause__` is the last attempt's error. The session is closed."""

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class RequestError(NetSchedError):
    """The edge refused or failed the request itself (never a backend's own answer)."""

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


class BackendStatusError(NetSchedError):
    """The backend answered with a 4xx or 5xx status (`Response.raise_for_status()`).

    Not an edge decision: the request reached the backend, and `status`,
    `headers` and `body` are its answer (`response` is the whole of it).
    """

    def __init__(self, message: str, *, response: BackendAnswer) -> None:
        super().__init__(message)
        self.response = response

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def headers(self) -> Sequence[tuple[str, str]]:
        return self.response.header_fields

    @property
    def body(self) -> bytes:
        return self.response.body


class BackendAnswer(Protocol):
    """What a `BackendStatusError` carries (the SDK's `Response`)."""

    @property
    def status(self) -> int: ...
    @property
    def header_fields(self) -> Sequence[tuple[str, str]]: ...
    @property
    def body(self) -> bytes: ...


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
