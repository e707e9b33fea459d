"""A picoquic multipath server answering hq-interop (HTTP/0.9) GETs from a folder.

Run: `python -m interop.programs.picoquic_mp.server --cert C --key K --www DIR [--port P]
[--qlog DIR]` (the tests), or through `serve` (the interop endpoint, `endpoint.py`).
Reports: `listening` (port), per connection `ready` (transport parameters
both ways), `path` (available/suspended/deleted with the unique path ID),
`served`, `closed` (error codes); `stats` on request (path quality per path).
"""

from __future__ import annotations

import argparse
import ctypes
from pathlib import Path

from ..multipath import report
from . import capi
from .loop import PacketLoop, guarded, udp_socket

MAX_REQUEST_LINE = 2048
NOT_FOUND = 1


class HqServer:
    def __init__(self, www: Path) -> None:
        self.www = www.resolve()
        self._lines: dict[tuple[int, int], bytes] = {}
        self._answered: set[tuple[int, int]] = set()
        self.callback = capi.StreamCallback(guarded(self.on_event))

    def on_event(
        self, cnx: int, stream_id: int, data: int, length: int, event: int, _ctx: int, _sctx: int
    ) -> int:
        if event in (capi.EVENT_STREAM_DATA, capi.EVENT_STREAM_FIN):
            chunk = ctypes.string_at(data, length) if length else b""
            self._on_request_bytes(cnx, stream_id, chunk, event == capi.EVENT_STREAM_FIN)
        elif event == capi.EVENT_READY:
            report("ready", transport=capi.transport_info(cnx))
        elif event in capi.PATH_EVENTS:
            report("path", kind=capi.PATH_EVENTS[event], unique_path_id=stream_id)
        elif event in (capi.EVENT_CLOSE, capi.EVENT_APPLICATION_CLOSE):
            report("closed", **capi.errors(cnx))
        return 0

    def _on_request_bytes(self, cnx: int, stream_id: int, chunk: bytes, fin: bool) -> None:
        key = (cnx, stream_id)
        if key in self._answered:
            return
        line = self._lines.pop(key, b"") + chunk
        if b"\n" not in line and not fin and len(line) <= MAX_REQUEST_LINE:
            self._lines[key] = line
            return
        self._answered.add(key)
        body = self._file(line.split(b"\n", 1)[0])
        if body is None:
            capi.reset_stream(cnx, stream_id, NOT_FOUND)
            return
        capi.add_to_stream(cnx, stream_id, body, len(body), 1)
        report("served", stream_id=stream_id, bytes=len(body))

    def _file(self, line: bytes) -> bytes | None:
        parts = line.strip().split(b" ")
        if len(parts) != 2 or parts[0] != b"GET" or not parts[1].startswith(b"/"):
            return None
        target = (self.www / parts[1].decode("ascii", "replace").lstrip("/")).resolve()
        if not target.is_relative_to(self.www) or not target.is_file():
            return None
        return target.read_bytes()


def serve(
    address: tuple[str, int],
    *,
    cert: str,
    key: str,
    www: Path,
    qlog: str | None = None,
    keylog: str | None = None,
    control: bool = True,
) -> None:
    """Serve `www` on `address` until the loop stops (stdin closed, or SIGTERM)."""
    server = HqServer(www)
    quic = capi.new_context(server.callback, cert=cert, key=key, qlog=qlog, keylog=keylog)
    sock = udp_socket(*address)
    loop = PacketLoop(quic, [sock], control=control)

    def stats() -> None:
        connections = []
        cnx = capi.get_first_cnx(quic)
        while cnx:
            connections.append(capi.path_qualities(cnx))
            cnx = capi.get_next_cnx(cnx)
        report("stats", connections=connections)

    loop.on_stats = stats
    report("listening", port=sock.getsockname()[1])
    try:
        loop.run()
    finally:
        capi.free(quic)  # closes the qlog and the key log, so they are complete on disk


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--www", type=Path, required=True)
    parser.add_argument("--qlog", help="folder for picoquic's qlog traces")
    args = parser.parse_args()
    serve((args.host, args.port), cert=args.cert, key=args.key, www=args.www, qlog=args.qlog)


if __name__ == "__main__":
    main()
