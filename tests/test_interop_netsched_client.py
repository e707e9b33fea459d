"""Our interop client program: how runner URLs become SDK requests."""

from __future__ import annotations

from interop.programs.netsched_client import request_args
from netsched_client.proto import h3, hq
from netsched_client.proto.framing import RequestHead


def _wire_path(alpn: str, path: str) -> str:
    service, meta = request_args(alpn, path)
    if alpn == hq.ALPN:
        return meta["path"]
    headers = dict(h3.request_headers(RequestHead(service, meta=meta), "localhost"))
    return headers[b":path"].decode()


def test_paths_reach_the_wire_unchanged() -> None:
    long_name = "x" * 150  # the runner's file names can be longer than a service name
    for path in ("/www/file", "/file", f"/{long_name}", f"/{long_name}/more", "/a/b/c"):
        assert _wire_path(h3.ALPN, path) == path
        assert _wire_path(hq.ALPN, path) == path
