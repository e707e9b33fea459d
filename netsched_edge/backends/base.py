"""What every backend kind offers the edge's dispatcher.

A backend turns one request (service, metadata, a body that may arrive in
chunks) into one response (status, headers, a body that may leave in chunks).
Unary requests are the one-chunk case of the same call, so that the dispatcher
has a single code path for requests and streams.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from netsched_client.proto.framing import HeaderFields, Headers


class BackendUnavailable(Exception):
    """The backend could not be reached or broke before answering.

    Raised only when no response byte has been passed to the caller, so an
    idempotent request may be retried on another backend.
    """


@dataclass(frozen=True, slots=True)
class BackendRequest:
    service: str
    # Request metadata: "method" and "path" for HTTP-like backends, free-form otherwise.
    meta: Mapping[str, str] = field(default_factory=dict)
    headers: HeaderFields = ()  # the client's header fields, for HTTP backends
    affinity: str | None = None
    # Body length when known up front (unary requests); None for streams.
    length: int | None = None
    # The client sent it in 0-RTT and the edge served it before the handshake
    # completed: HTTP backends get `Early-Data: 1` (RFC 8470 §5.1) and may answer 425.
    early_data: bool = False


@dataclass(slots=True)
class BackendResponse:
    status: int
    body: AsyncIterator[bytes]
    headers: Headers = field(default_factory=Headers)


async def iter_chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    """An async iterator over the given chunks (a unary body)."""
    for chunk in chunks:
        if chunk:
            yield chunk


async def aclose_body(body: AsyncIterator[bytes]) -> None:
    """Stop reading `body` early, releasing what it holds (a connection, a file).

    Every body the backends return has `aclose` (async generators, ReleasingBody);
    a plain iterator without one holds nothing to release.
    """
    close = getattr(body, "aclose", None)
    if close is not None:
        await close()


class IdleTimeoutBody(AsyncIterator[bytes]):
    """`body`, each chunk of which must come within `idle_s` seconds (else TimeoutError).

    The anchors' read timeouts (nginx `client_body_timeout`, `proxy_read_timeout`):
    a peer that sends slowly is fine, one that goes silent is not.
    """

    def __init__(self, body: AsyncIterator[bytes], idle_s: float) -> None:
        self._body = body
        self._idle_s = idle_s

    def __aiter__(self) -> IdleTimeoutBody:
        return self

    async def __anext__(self) -> bytes:
        async with asyncio.timeout(self._idle_s):
            return await anext(self._body)

    async def aclose(self) -> None:
        await aclose_body(self._body)


async def collect(body: AsyncIterator[bytes], limit: int) -> bytes:
    """Read a whole body, refusing one longer than `limit` bytes."""
    parts: list[bytes] = []
    size = 0
    async for chunk in body:
        size += len(chunk)
        if size > limit:
            raise ValueError(f"body exceeds {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


class Backend(ABC):
    """One backend server of a service."""

    kind: str = "abstract"

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    async def exchange(
        self, request: BackendRequest, body: AsyncIterator[bytes], timeout: float
    ) -> BackendResponse:
        """Send `request` with `body`; return once the response head is known.

        Raises `BackendUnavailable` when nothing was received, and
        `TimeoutError` when no response head came within `timeout` seconds.
        The response body is read from the returned iterator; breaking out of
        it early must release the backend connection.
        """

    @abstractmethod
    async def check(self, timeout: float) -> bool:
        """Active health check: True when the backend answers within `timeout`."""

    async def close(self) -> None:  # noqa: B027 - optional hook: most kinds pool nothing
        """Release pooled resources."""
