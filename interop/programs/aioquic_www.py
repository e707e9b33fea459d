"""The www folder as an ASGI app, for aioquic's examples/http3_server.py (stdlib only).

aioquic's own demo app needs starlette and jinja2; the interop runner only asks
a server for the files in WWW, which this does for both HTTP/3 and HTTP/0.9
(http3_server.py hands both to the app). Runs in aioquic's venv.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Message = MutableMapping[str, Any]


async def app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    root = Path(os.environ["WWW"]).resolve()
    candidate = (root / str(scope["path"]).lstrip("/")).resolve()
    found = candidate.is_relative_to(root) and candidate.is_file()
    body = candidate.read_bytes() if found else b"not found\n"
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200 if found else 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})
