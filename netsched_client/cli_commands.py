"""The `netsched` commands: arguments, `get`, `request`, failures as one line.

`netsched_client.cli` is the entry point; it imports this module inside its
Ctrl-C handling, and this module imports the SDK when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from . import __version__
from .cli import add_loop_option, run_on_loop

if TYPE_CHECKING:
    # The SDK is imported when a command runs (in `_open` and `_slo`), so that
    # --help and --version are quick and a Ctrl-C during the imports is one line.
    from . import SLO, ResumptionTicket, Session, Stream
    from .proto.framing import ResponseHead
    from .runtime.paths import PathStats


# URL schemes `get` takes and the edge port each implies when the URL has none.
DEFAULT_PORTS: Final = {"netsched": 4433, "https": 443}
PROGRESS_AFTER_S: Final = 1.0  # a transfer shorter than this shows no progress line
PROGRESS_EVERY_S: Final = 0.5
CHUNK: Final = 64 * 1024
DEADLINE_GRACE_S: Final = 0.25  # past --deadline-ms, the edge's own DeadlineExceeded may arrive


class UsageError(Exception):
    """Bad input caught before connecting: exit code 2."""


class NetSchedTimeout(Exception):
    """The client-side deadline passed: reported as DeadlineExceeded."""


class BackendAnswered(Exception):
    """The backend answered with a 4xx/5xx status: exit code 1 (curl --fail)."""


class ConnectFailed(Exception):
    """The connection could not be set up (resolution, TLS material, sockets): exit code 1."""


# -- arguments -------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    trust = group.add_mutually_exclusive_group()
    trust.add_argument("--ca", metavar="FILE", help="CA certificate (PEM) to trust")
    trust.add_argument(
        "-k", "--insecure", action="store_true", help="do not verify the certificate"
    )
    group.add_argument(
        "--paths",
        metavar="ADDR[,ADDR...]",
        action="append",
        help="local addresses or interface names to open paths from (multipath; "
        "'auto': every non-loopback address); repeatable",
    )
    group.add_argument("--fec", action="store_true", help="offer forward error correction")
    group.add_argument(
        "--session",
        metavar="FILE",
        help="resume the TLS session kept in FILE, and keep the edge's newest ticket there",
    )
    group.add_argument(
        "--early-data",
        action="store_true",
        help="with --session: send the request in 0-RTT when the ticket allows it",
    )
    group.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for the handshake (default: 10)",
    )
    group.add_argument(
        "-v", "--verbose", action="store_true", help="show the negotiated features on stderr"
    )
    add_loop_option(common)
    slo = common.add_argument_group("SLO")
    slo.add_argument("--deadline-ms", type=int, metavar="MS", help="deadline of the request")
    slo.add_argument("--urgency", type=int, help="0 (most urgent) .. 7")
    slo.add_argument("--affinity", help="affinity key (consistent-hash services)")
    slo.add_argument("--idempotent", action="store_true", default=None)
    return common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netsched",
        description="NetSched client: fetch from and send requests to a NetSched edge.",
    )
    parser.add_argument("--version", action="version", version=f"netsched {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _connection_options()
    get = sub.add_parser(
        "get",
        parents=[common],
        help="fetch a URL, like curl",
        description="Fetch netsched://HOST[:PORT]/SERVICE[/PATH][?QUERY] (or https://...): "
        "SERVICE routes the request at the edge, /PATH?QUERY is what the backend sees "
        "(default /). Port 4433 for netsched://, 443 for https://.",
    )
    get.add_argument("url")
    get.add_argument("-o", "--output", metavar="FILE", help="write the body to FILE")
    get.add_argument("-X", "--request", dest="method", default="GET", metavar="METHOD")
    get.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="request header for HTTP backends; repeatable",
    )
    get.add_argument("-d", "--data", help="request body (text); implies POST without -X")
    progress = get.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show the progress line (default: when stderr is a terminal)",
    )
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    req = sub.add_parser(
        "request",
        parents=[common],
        help="send one unary request",
        description="Send one request with a body to SERVICE and print the response body.",
    )
    req.add_argument("edge", help="HOST:PORT of the edge")
    req.add_argument("service")
    req.add_argument("--data", default="", help="request body (text)")
    return parser


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    service: str
    path: str  # what the backend sees, with the query


def parse_url(url: str) -> Target:
    """netsched://HOST[:PORT]/SERVICE[/PATH][?QUERY], or https://...; UsageError if not."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise UsageError(
            f"URL must start with netsched:// or https:// (got {url!r}), "
            "e.g. netsched://127.0.0.1:4433/api/users/1"
        )
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise UsageError(f"bad port in URL {url!r}") from None
    if not parts.hostname:
        raise UsageError(f"URL {url!r} has no host")
    service, _, rest = parts.path.lstrip("/").partition("/")
    if not service:
        raise UsageError(f"URL {url!r} names no service: netsched://HOST:PORT/SERVICE/PATH")
    path = "/" + rest + (f"?{parts.query}" if parts.query else "")
    return Target(parts.hostname, port, service, path)


def split_edge(edge: str) -> tuple[str, int]:
    host, sep, port = edge.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"edge must be HOST:PORT (got {edge!r})")
    return host.strip("[]"), int(port)


def _headers(values: list[str]) -> list[tuple[str, str]]:
    fields = []
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"header must be 'NAME: VALUE' (got {value!r})")
        fields.append((name.strip(), content.strip()))
    return fields


def _slo(opts: argparse.Namespace) -> SLO:
    from . import SLO

    return SLO(
        deadline_ms=opts.deadline_ms,
        urgency=opts.urgency,
        affinity=opts.affinity,
        idempotent=opts.idempotent,
    )


def _paths(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    locals_ = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if "auto" in locals_ and len(locals_) > 1:
        raise UsageError("--paths auto takes no other address")
    return locals_ or None


def _check_files(opts: argparse.Namespace) -> None:
    if opts.ca is not None:
        _check_ca(opts.ca)
    if opts.early_data and opts.session is None:
        raise UsageError("--early-data needs --session FILE (a ticket from an earlier session)")
    for written in (getattr(opts, "output", None), opts.session):
        if written not in (None, "-"):
            folder = Path(written).parent
            if not folder.is_dir():
                raise UsageError(f"cannot write {written!r}: folder {str(folder)!r} does not exist")


def _check_ca(ca_file: str) -> None:
    """A CA file that is missing, unreadable or holds no certificate is bad usage."""
    if not Path(ca_file).is_file():
        raise UsageError(f"CA file {ca_file!r} does not exist or is not a file")
    from .errors import CertificateError
    from .runtime.session import read_ca_file

    try:
        read_ca_file(ca_file)
    except CertificateError as exc:
        raise UsageError(str(exc)) from None


# -- session tickets ---------------------------------------------------------------

TICKET_FORMAT: Final = "netsched-session/1"
TICKET_WAIT_S: Final = 1.0  # longest wait at the end for the edge's new session ticket


def save_ticket(path: Path, ticket: ResumptionTicket) -> None:
    """The ticket as JSON, readable by its owner only: it holds the resumption secret."""
    t = ticket.ticket
    record = {
        "format": TICKET_FORMAT,
        "alpn": ticket.alpn,
        "server_name": t.server_name,
        "age_add": t.age_add,
        "cipher_suite": int(t.cipher_suite),
        "not_valid_before": t.not_valid_before.isoformat(),
        "not_valid_after": t.not_valid_after.isoformat(),
        "resumption_secret": t.resumption_secret.hex(),
        "ticket": t.ticket.hex(),
        "max_early_data_size": t.max_early_data_size,
        "other_extensions": [[kind, value.hex()] for kind, value in t.other_extensions],
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(record, out)


def load_ticket(path: Path) -> ResumptionTicket | None:
    """The ticket `save_ticket` wrote; None if there is no file yet; UsageError if not one."""
    from aioquic import tls

    from . import ResumptionTicket

    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read session file {str(path)!r}: {exc}") from None
    try:
        if record["format"] != TICKET_FORMAT:
            raise ValueError(f"format {record['format']!r}")
        ticket = tls.SessionTicket(
            age_add=int(record["age_add"]),
            cipher_suite=tls.CipherSuite(record["cipher_suite"]),
            not_valid_before=datetime.fromisoformat(record["not_valid_before"]),
            not_valid_after=datetime.fromisoformat(record["not_valid_after"]),
            resumption_secret=bytes.fromhex(record["resumption_secret"]),
            server_name=str(record["server_name"]),
            ticket=bytes.fromhex(record["ticket"]),
            max_early_data_size=record["max_early_data_size"],
            other_extensions=[(int(k), bytes.fromhex(v)) for k, v in record["other_extensions"]],
        )
        return ResumptionTicket(ticket, str(record["alpn"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{str(path)!r} is not a netsched session file: {exc}") from None


# -- connecting and reporting ------------------------------------------------------


async def _open(opts: argparse.Namespace, host: str, port: int) -> Session:
    from . import FecConfig, open_session

    paths = _paths(opts.paths)
    ticket = None if opts.session is None else load_ticket(Path(opts.session))
    try:
        return await open_session(
            host,
            port,
            ca_file=opts.ca,
            verify=not opts.insecure,
            timeout=opts.connect_timeout,
            paths=paths if paths != ["auto"] else "auto",
            fec=FecConfig() if opts.fec else None,
            session_ticket=ticket,
            early_data=opts.early_data and ticket is not None and ticket.allows_early_data,
        )
    except OSError as exc:
        raise ConnectFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None


def _address(addr: tuple[Any, ...] | None) -> str:
    if not addr:
        return "?"
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe(session: Session, host: str, port: int) -> list[str]:
    """The `-v` lines: what the connection to the edge negotiated."""
    paths = [p for p in session.paths if p.state != "closed"]
    early = session.early_data
    lines = [
        f"* connected to {host}:{port}, ALPN {session.alpn}",
        f"* multipath: {'yes' if session.multipath else 'no'}, {len(paths)} path(s)",
    ]
    lines += [
        f"*   path {p.path_id}: {_address(p.local)} -> {_address(p.remote)} {p.state}"
        + (f", rtt {p.rtt_ms:.1f} ms" if p.rtt_ms is not None else "")
        for p in paths
    ]
    lines += [
        f"* FEC: {'on' if session.fec_enabled else 'off'}",
        f"* resumed: {'yes' if session.session_resumed else 'no'}, 0-RTT: {early}",
    ]
    return lines


def _describe(session: Session, host: str, port: int) -> None:
    for line in describe(session, host, port):
        print(line, file=sys.stderr)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def progress_line(received: int, elapsed: float, paths: list[PathStats]) -> str:
    """`received 3.1 MB in 1.2 s, 2.6 MB/s | path 0: 2.0 MB | path 1: 1.1 MB`."""
    rate = received / elapsed if elapsed > 0 else 0.0
    per_path = " | ".join(f"path {p.path_id}: {_size(p.bytes_received)}" for p in paths)
    line = f"received {_size(received)} in {elapsed:.1f} s, {_size(rate)}/s"
    return f"{line} | {per_path}" if per_path else line


class Progress:
    """The progress line: redrawn in place on a terminal, one line a step elsewhere."""

    def __init__(self, session: Session, out: IO[str], enabled: bool) -> None:
        self._session = session
        self._out = out
        self._enabled = enabled
        self._tty = out.isatty()
        self._started = time.monotonic()
        self._shown = False
        self.received = 0

    async def run(self) -> None:
        if not self._enabled:
            return
        await asyncio.sleep(PROGRESS_AFTER_S)
        while True:
            self._show()
            await asyncio.sleep(PROGRESS_EVERY_S)

    def finish(self) -> None:
        """The last line, if any was shown: a long transfer ends with its totals."""
        if self._shown:
            self._show()
            if self._tty:
                self._out.write("\n")
                self._out.flush()

    def _show(self) -> None:
        line = progress_line(self.received, time.monotonic() - self._started, self._session.paths)
        self._out.write(f"\r{line}\x1b[K" if self._tty else f"{line}\n")
        self._out.flush()
        self._shown = True


# -- commands ----------------------------------------------------------------------


async def _get(opts: argparse.Namespace) -> int:
    target = parse_url(opts.url)
    headers = _headers(opts.header)
    method = opts.method if opts.method != "GET" or opts.data is None else "POST"
    session = await _open(opts, target.host, target.port)
    show = sys.stderr.isatty() if opts.progress is None else opts.progress
    progress = Progress(session, sys.stderr, show)
    try:
        # In 0-RTT the request leaves before the handshake has settled what to show.
        early = session.early_data == "pending"
        if opts.verbose and not early:
            _describe(session, target.host, target.port)
        started = time.monotonic()
        deadline_ms = opts.deadline_ms
        try:
            async with asyncio.timeout(
                None if deadline_ms is None else deadline_ms / 1000 + DEADLINE_GRACE_S
            ):
                stream = await session.open_stream(
                    target.service, method=method, path=target.path, headers=headers, slo=_slo(opts)
                )
                if opts.data:
                    await stream.write(opts.data.encode())
                stream.write_eof()
                head = await stream.response()
                _check_status(head.status, head.backend)
                await _receive(stream, opts.output, progress)
        except TimeoutError:
            raise NetSchedTimeout(f"no complete response within {deadline_ms} ms") from None
        progress.finish()
        if opts.verbose:
            if early:
                _describe(session, target.host, target.port)
            _report(session, head, progress.received, time.monotonic() - started)
        return 0
    finally:
        await _close(session, opts)


async def _receive(stream: Stream, output: str | None, progress: Progress) -> None:
    """The body into stdout or `output`; a file is removed again unless the body is whole."""
    path = None if output in (None, "-") else output
    sink = sys.stdout.buffer if path is None else open(path, "wb")  # noqa: SIM115
    ticker = asyncio.create_task(progress.run())
    whole = False
    try:
        while chunk := await stream.read(CHUNK):
            progress.received += len(chunk)
            sink.write(chunk)
        sink.flush()
        whole = True
    finally:
        ticker.cancel()
        with suppress(asyncio.CancelledError):
            await ticker
        if path is not None:
            sink.close()
            if not whole:
                with suppress(OSError):
                    os.unlink(path)


def _report(session: Session, head: ResponseHead, received: int, elapsed: float) -> None:
    print(
        f"* status {head.status} from {head.backend}, {received} bytes in {elapsed * 1000:.1f} ms",
        file=sys.stderr,
    )
    for p in session.paths:
        print(f"*   path {p.path_id}: {_size(p.bytes_received)} received", file=sys.stderr)


async def _request(opts: argparse.Namespace) -> int:
    host, port = split_edge(opts.edge)
    session = await _open(opts, host, port)
    try:
        early = session.early_data == "pending"
        if opts.verbose and not early:
            _describe(session, host, port)
        response = await session.request(opts.service, opts.data.encode(), slo=_slo(opts))
        if opts.verbose and early:
            _describe(session, host, port)
    finally:
        await _close(session, opts)
    sys.stdout.buffer.write(response.body)
    sys.stdout.buffer.flush()
    _check_status(response.status, response.backend)
    print(
        f"status {response.status} from {response.backend} in {response.latency_ms:.1f} ms",
        file=sys.stderr,
    )
    return 0


def _check_status(status: int, backend: str | None) -> None:
    """A backend's 4xx/5xx fails the command, as `curl --fail` does."""
    if status >= 400:
        raise BackendAnswered(f"backend {backend} answered status {status}")


async def _close(session: Session, opts: argparse.Namespace) -> None:
    """Close the session; with --session, keep the newest ticket the edge gave."""
    try:
        if opts.session is not None:
            await _await_ticket(session)
            if session.session_ticket is not None:
                save_ticket(Path(opts.session), session.session_ticket)
    finally:
        await session.close()


async def _await_ticket(session: Session) -> None:
    """The edge sends its ticket once the handshake is done: a request answered from
    0-RTT can end before it arrives, and the file's ticket was used (tickets are
    single use), so wait for it a little, not forever."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + TICKET_WAIT_S
    while session.session_ticket is None and not session.closed and loop.time() < give_up:
        await asyncio.sleep(0.01)


COMMANDS: Final = {"get": _get, "request": _request}


def _log_to_stderr(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("netsched: %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)
    # aioquic logs why a connection closed; the one error line already says it.
    logging.getLogger("quic").setLevel(logging.WARNING if verbose else logging.CRITICAL)


def run(argv: list[str] | None = None) -> int:
    """Parse the arguments and run the command; every expected failure is one line."""
    opts = _parser().parse_args(argv)
    _log_to_stderr(opts.verbose)
    try:
        _check_files(opts)
        from .errors import NetSchedError

        try:
            return run_on_loop(COMMANDS[opts.command](opts), opts.loop)
        except NetSchedError as exc:
            return _fail(f"{type(exc).__name__}: {exc}", 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except NetSchedTimeout as exc:
        return _fail(f"DeadlineExceeded: {exc}", 1)
    except (ConnectFailed, BackendAnswered) as exc:
        return _fail(str(exc), 1)
    except BrokenPipeError:
        # The reader went away (`netsched get ... | head`): nothing left to say.
        with suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 1
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), 1)


def _fail(message: str, code: int) -> int:
    print(f"netsched: {message}", file=sys.stderr)
    return code
