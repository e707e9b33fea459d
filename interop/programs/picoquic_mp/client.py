"""A picoquic multipath client: handshake, optionally a second path, hq-interop GETs.

Run: `python -m interop.programs.picoquic_mp.client --port P [--second-local 127.0.0.2]
[--probe-at BYTES] [--get /path ...] [--downloads DIR] [--abandon-at BYTES --abandon-path ID]
[--qlog DIR]` (the tests), or through `Client` (the interop endpoint, `endpoint.py`).

Two ways to open the second path: by default the client probes it as soon as
the server allows it and asks for the files once it is up; with `--probe-at`
it asks at once and probes once that many bytes arrived, mid-transfer, the
way picoquic's own applications add a path to a running connection.

Steps, each reported on stdout: `ready` (transport parameters both ways),
`path_allowed` (the server sent CIDs for path ID 1, which it only does once
multipath is negotiated), `probe` (picoquic_probe_new_path's return code),
`path` events, `request` (one stream per path asked for, all at once),
`abandon` (return code of picoquic_abandon_path, the local address of the
path and the path qualities just before), `fetched` per response (size,
SHA-256, path qualities), then `done` — or `failed` with the reason. Exit
status 0 only after `done`.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..multipath import report
from . import capi
from .loop import PacketLoop, guarded, udp_socket

SNI = b"localhost"
CLOSE_GRACE_US = 1_000_000  # time to send CONNECTION_CLOSE before exiting
APPLICATION_ABANDON_PATH = 0x3E  # draft-21's PATH_ABANDON error code for "the application asked"
STREAM_ID_STEP = 4  # client-initiated bidirectional streams: 0, 4, 8, ...
DEFAULT_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Options:
    server: tuple[str, int]
    local: str = "127.0.0.1"
    second_local: str | None = None
    gets: tuple[str, ...] = ()  # request paths, one stream each
    downloads: Path | None = None  # bodies go to DOWNLOADS/<last path segment>; None: hash only
    abandon_at: int | None = None  # bytes received (all responses) when abandon_path goes
    abandon_path: int = 0  # unique path ID: 0 the handshake's path, 1 the second
    probe_at: int | None = None  # bytes received when the second path is probed; None: first
    timeout_s: float = DEFAULT_TIMEOUT_S
    qlog: str | None = None
    keylog: str | None = None
    control: bool = True  # stdin is the control channel (see loop.py)

    @property
    def locals(self) -> tuple[str, ...]:
        return (self.local, *((self.second_local,) if self.second_local else ()))


@dataclass(slots=True)
class Response:
    path: str
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    chunks: list[bytes] = field(default_factory=list)  # kept only when written to DOWNLOADS


@dataclass(slots=True)
class Progress:
    ready: bool = False
    path_allowed: bool = False
    probed: bool = False
    second_path_up: bool = False
    requested: bool = False
    abandoned: bool = False
    finished: bool = False
    received: int = 0
    responses: dict[int, Response] = field(default_factory=dict)  # by stream ID, until FIN
    closing_since: int | None = None


class Client:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.progress = Progress()
        self.callback = capi.StreamCallback(guarded(self.on_event))
        self.exit_code = 1
        self.cnx = 0
        self._loop: PacketLoop | None = None
        self._started = 0

    def start(self, loop: PacketLoop) -> None:
        self._loop = loop
        self._started = int(capi.current_time())
        self.cnx = capi.create_client_cnx(
            loop.quic,
            ctypes.byref(capi.sockaddr(self.options.server)),
            self._started,
            0,
            SNI,
            capi.ALPN,
            self.callback,
            None,
        )
        if not self.cnx:  # picoquic_create_client_cnx also starts it
            raise SystemExit("picoquic could not create the client connection")
        loop.on_tick = self.tick

    def on_event(
        self, cnx: int, stream_id: int, data: int, length: int, event: int, _ctx: int, _sctx: int
    ) -> int:
        p = self.progress
        if event == capi.EVENT_READY and not p.ready:
            p.ready = True
            report("ready", transport=capi.transport_info(cnx))
        elif event in (capi.EVENT_STREAM_DATA, capi.EVENT_STREAM_FIN):
            self._on_body(stream_id, ctypes.string_at(data, length) if length else b"")
            if event == capi.EVENT_STREAM_FIN:
                self._on_fin(stream_id)
        elif event == capi.EVENT_STREAM_RESET:
            self._fail(f"stream {stream_id} reset by the server")
        elif event in capi.PATH_EVENTS:
            report("path", kind=capi.PATH_EVENTS[event], unique_path_id=stream_id)
            p.second_path_up |= event == capi.EVENT_PATH_AVAILABLE and stream_id != 0
        elif event in (capi.EVENT_CLOSE, capi.EVENT_APPLICATION_CLOSE):
            report("closed", **capi.errors(cnx))
            if not p.finished:
                self._fail("connection closed before the transfer finished")
        return 0

    def tick(self, now: int) -> None:
        p = self.progress
        if p.closing_since is not None:
            closed = capi.get_cnx_state(self.cnx) >= capi.STATE_DISCONNECTED
            if closed or now - p.closing_since > CLOSE_GRACE_US:
                assert self._loop is not None
                self._loop.running = False
        elif now - self._started > self.options.timeout_s * 1e6:
            self._fail(f"timeout after {self.options.timeout_s} s ({self._where()})")
        elif p.ready and not p.path_allowed:
            self._check_path_allowed()
        elif self._may_probe():
            self._probe(now)
        elif self._may_request():
            self._request()
        elif p.path_allowed and not self.options.gets:
            self._finish()

    def _where(self) -> str:
        done = [name for name in Progress.__slots__ if getattr(self.progress, name) is True]
        return f"reached: {', '.join(done) or 'nothing'}; {self.progress.received} bytes received"

    def _check_path_allowed(self) -> None:
        allowed = ctypes.c_int()
        ret = capi.subscribe_new_path_allowed(self.cnx, ctypes.byref(allowed))
        if ret != 0:
            self._fail(f"picoquic_subscribe_new_path_allowed returned {ret:#x}")
        elif allowed.value:
            self.progress.path_allowed = True
            report("path_allowed")

    def _probe(self, now: int) -> None:
        assert self.options.second_local is not None
        assert self._loop is not None
        local = next(a for a in self._loop.sockets if a[0] == self.options.second_local)
        ret = capi.probe_new_path(
            self.cnx,
            ctypes.byref(capi.sockaddr(self.options.server)),
            ctypes.byref(capi.sockaddr(local)),
            now,
        )
        self.progress.probed = True
        report("probe", local=list(local), ret=ret)
        if ret != 0:
            self._fail(f"picoquic_probe_new_path returned {ret:#x}")

    def _may_probe(self) -> bool:
        p = self.progress
        if not (p.path_allowed and self.options.second_local) or p.probed:
            return False
        return self.options.probe_at is None or p.received >= self.options.probe_at

    def _may_request(self) -> bool:
        p = self.progress
        wanted = bool(self.options.gets) and not p.requested and p.path_allowed
        first_path_only = not self.options.second_local or self.options.probe_at is not None
        return wanted and (p.second_path_up or first_path_only)

    def _request(self) -> None:
        self.progress.requested = True
        for index, path in enumerate(self.options.gets):
            stream_id = index * STREAM_ID_STEP
            self.progress.responses[stream_id] = Response(path)
            line = f"GET {path}\r\n".encode("ascii")
            ret = capi.add_to_stream(self.cnx, stream_id, line, len(line), 1)
            report("request", path=path, stream_id=stream_id, ret=ret)

    def _on_body(self, stream_id: int, chunk: bytes) -> None:
        p = self.progress
        response = p.responses.get(stream_id)
        if response is None:
            self._fail(f"data on stream {stream_id}, which carries no request")
            return
        response.size += len(chunk)
        response.digest.update(chunk)
        if self.options.downloads is not None:
            response.chunks.append(chunk)
        p.received += len(chunk)
        at = self.options.abandon_at
        if at is not None and not p.abandoned and p.received >= at:
            self._abandon()

    def _abandon(self) -> None:
        p = self.progress
        p.abandoned = True
        before = capi.path_qualities(self.cnx)
        path_id = self.options.abandon_path
        ret = capi.abandon_path(self.cnx, path_id, APPLICATION_ABANDON_PATH, capi.current_time())
        locals_ = self.options.locals
        report(
            "abandon",
            unique_path_id=path_id,
            local=locals_[path_id] if path_id < len(locals_) else None,
            ret=ret,
            at=p.received,
            paths=before,
        )

    def _on_fin(self, stream_id: int) -> None:
        response = self.progress.responses.pop(stream_id, None)
        if response is None:
            return  # _on_body failed the connection already
        if self.options.downloads is not None:
            name = os.path.basename(response.path)
            (self.options.downloads / name).write_bytes(b"".join(response.chunks))
        report(
            "fetched",
            path=response.path,
            bytes=response.size,
            sha256=response.digest.hexdigest(),
            paths=capi.path_qualities(self.cnx),
        )
        if not self.progress.responses:
            self._finish()

    def _finish(self) -> None:
        self.progress.finished = True
        self.exit_code = 0
        report("done")
        self._close()

    def _fail(self, reason: str) -> None:
        if self.progress.closing_since is None:
            report("failed", reason=reason)
            self._close()

    def _close(self) -> None:
        self.progress.closing_since = int(capi.current_time())
        capi.close(self.cnx, 0)


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--local", default="127.0.0.1")
    parser.add_argument("--second-local")
    parser.add_argument("--get", action="append", default=[], help="a path to GET (repeatable)")
    parser.add_argument("--downloads", type=Path, help="folder for the responses")
    parser.add_argument("--probe-at", type=int, help="probe the second path mid-transfer")
    parser.add_argument("--abandon-at", type=int)
    parser.add_argument("--abandon-path", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--qlog", help="folder for picoquic's qlog traces")
    args = parser.parse_args(argv)
    return Options(
        server=(args.host, args.port),
        local=args.local,
        second_local=args.second_local,
        gets=tuple(args.get),
        downloads=args.downloads,
        abandon_at=args.abandon_at,
        abandon_path=args.abandon_path,
        probe_at=args.probe_at,
        timeout_s=args.timeout,
        qlog=args.qlog,
    )


def run(options: Options) -> int:
    """Run the client to the end; its exit status (0 only after `done`)."""
    client = Client(options)
    quic = capi.new_context(client.callback, qlog=options.qlog, keylog=options.keylog)
    capi.set_null_verifier(quic)  # the servers' certificates are self-signed
    loop = PacketLoop(quic, [udp_socket(host) for host in options.locals], control=options.control)
    client.start(loop)
    try:
        loop.run()
    finally:
        capi.free(quic)  # closes the qlog and the key log, so they are complete on disk
    return client.exit_code


def main() -> None:
    sys.exit(run(parse(sys.argv[1:])))


if __name__ == "__main__":
    main()
