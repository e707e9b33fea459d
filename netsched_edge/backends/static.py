"""Static-file backends: serve the files under one root directory.

The requested path is resolved (following symlinks) before it is checked, so
neither `..` segments nor symlinks can reach outside the root. File reads run
in a worker thread so that large files do not block the event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

from netsched_client.proto.framing import Headers
from netsched_edge.backends.base import (
    Backend,
    BackendRequest,
    BackendResponse,
    collect,
    iter_chunks,
)
from netsched_edge.backends.tcp import ReleasingBody

_MAX_PATH = 4096  # PATH_MAX on Linux: a longer request path cannot name a file
_METHODS = frozenset({"GET", "HEAD"})


class StaticBackend(Backend):
    """A backend serving files under `root`."""

    kind = "static"

    def __init__(self, name: str, root: Path, *, chunk_size: int = 65536) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        super().__init__(name)
        # Resolved once so that containment checks compare like with like.
        self.root = root.resolve()
        self.chunk_size = chunk_size

    async def exchange(
        self, request: BackendRequest, body: AsyncIterator[bytes], timeout: float
    ) -> BackendResponse:
        method = request.meta.get("method", "GET").upper()
        if method not in _METHODS:
            return _empty(405)
        path = request.meta.get("path")
        if path is None:
            path = await _path_from_body(body)
            if path is None:
                return _empty(400)
        status, file = await asyncio.to_thread(self._open, path)
        if file is None:
            return _empty(status)
        size = os.fstat(file.fileno()).st_size
        headers = Headers({"content-length": str(size)})
        if method == "HEAD":
            file.close()
            return BackendResponse(200, iter_chunks(), headers)
        return BackendResponse(200, self._stream(file), headers)

    async def check(self, timeout: float) -> bool:
        return self.root.is_dir()

    def _open(self, path: str) -> tuple[int, BinaryIO | None]:
        """(status, open file) for a request path; runs in a worker thread."""
        try:
            # A URL path: no query, percent-decoded; its leading "/" means the root.
            name = unquote(path.partition("?")[0], errors="strict")
            candidate = (self.root / name.lstrip("/")).resolve()
        except (ValueError, OSError):  # an embedded NUL, bad percent-encoding, a symlink loop
            return 400, None
        if not candidate.is_relative_to(self.root):
            return 403, None
        try:
            # is_file() first: opening a FIFO or device would block the worker thread.
            # It raises for names the filesystem cannot hold (a component over 255 bytes).
            if not candidate.is_file():
                return 404, None
            return 200, candidate.open("rb")
        except PermissionError:
            return 403, None
        except OSError:
            return 404, None

    def _stream(self, file: BinaryIO) -> ReleasingBody:
        async def read() -> bytes | None:
            return await asyncio.to_thread(file.read, self.chunk_size) or None

        return ReleasingBody(read, lambda complete: file.close())


async def _path_from_body(body: AsyncIterator[bytes]) -> str | None:
    """The path a request body names, or None when it cannot be a path."""
    try:
        return (await collect(body, _MAX_PATH)).decode("utf-8")
    except ValueError:  # too long, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return None


def _empty(status: int) -> BackendResponse:
    return BackendResponse(status, iter_chunks())
