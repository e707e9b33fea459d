"""NetSched's client as an interop endpoint: downloads REQUESTS into DOWNLOADS.

Runs under the project's interpreter. Per test case:
- transfer / multiplexing: small initial flow-control windows, so the
  transfer needs MAX_DATA / MAX_STREAM_DATA updates (the runner's rule);
- chacha20: offer only TLS_CHACHA20_POLY1305_SHA256;
- v2: start in v1 and offer v2 for compatible version negotiation;
- keyupdate: `Session.request_key_update()` right after the handshake;
- resumption / zerortt: the first URL over one connection, whose session
  ticket goes into a `TicketStore`; the rest over a second connection that
  resumes with it (zerortt: `early_data=True`, so the requests leave in 0-RTT);
  it fails unless the second connection resumed;
- connectionmigration: `Session.migrate()` once MIGRATE_AT bytes have arrived:
  path 0 moves to a new local port under a new connection ID (RFC 9000 §9;
  with a multipath server: a new path, then the old one abandoned);
- mp-*: fail unless multipath was negotiated; mp-transfer, mp-failover and
  mp-abandon open a path from each LOCALS address (`open_session(paths=...)`)
  and fail unless two are active before the requests go out; mp-abandon
  abandons path 0 once ABANDON_AT bytes have arrived (`Session.remove_path`).
  Steps are reported as JSON lines (`programs/multipath.py`).
Requests go out concurrently on one connection, as the runner asks; for
multiconnect (handshakeloss) each URL gets a connection of its own, in turn.
"""

from __future__ import annotations

import asyncio
import sys

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.tls import CipherSuite

from netsched_client import Session, TicketStore, open_session
from netsched_client.proto import hq
from netsched_client.runtime.paths import PathStats
from netsched_client.runtime.session import client_configuration

from .contract import (
    EXIT_FAILED,
    EXIT_OK,
    Contract,
    run_endpoint,
    unsupported,
    url_target,
)
from .multipath import ABANDON_AT, MULTIPATH_CASES, local_addresses, report

MAX_SERVICE_CHARS = 64  # proto/slo.py's service names
SMALL_WINDOW = 256 << 10  # aioquic's default is 1 MiB; the 5 MB file needs many updates
SMALL_STREAM_WINDOW = 128 << 10
KNOWN_CASES = (
    "handshake",
    "transfer",
    "retry",
    "http3",
    "chacha20",
    "v2",
    "multiconnect",
    "keyupdate",
    "resumption",
    "zerortt",
    "connectionmigration",
    *MULTIPATH_CASES,
)
RESUMING_CASES = ("resumption", "zerortt")
TICKET_WAIT_S = 5.0  # the server sends its ticket after the handshake, maybe after the data
TICKET_POLL_S = 0.01
# Generous: under handshakeloss's 30 % loss a handshake can take many PTOs, which
# double each time (seen here: one of 50 handshakes with picoquic took over 30 s);
# the case's timeout bounds the whole run anyway.
HANDSHAKE_TIMEOUT_S = 60.0
PATHS_WANTED = 2  # mp-transfer, mp-failover, mp-abandon
MIGRATE_AT = 512 * 1024  # connectionmigration moves once this much arrived (of 2 MB)
MIGRATE_POLL_S = 0.005
ABANDON_POLL_S = 0.002  # how often mp-abandon looks at the bytes received


class MultipathError(Exception):
    """The session cannot do what an mp-* case needs."""


class MigrationError(Exception):
    """The transfer ended before connectionmigration could move the session."""


class CaseUnsupported(Exception):
    """The server does not let this case run (said as the endpoint's exit 127)."""


def configuration(contract: Contract, server_name: str) -> QuicConfiguration:
    config = client_configuration(
        server_name, alpns=(contract.alpn,), ca_file=str(contract.ca_certificate)
    )
    if contract.testcase == "transfer":
        config.max_data = SMALL_WINDOW
        config.max_stream_data = SMALL_STREAM_WINDOW
    elif contract.testcase == "chacha20":
        config.cipher_suites = [CipherSuite.CHACHA20_POLY1305_SHA256]
    elif contract.testcase == "v2":
        config.original_version = QuicProtocolVersion.VERSION_1
        config.supported_versions = [QuicProtocolVersion.VERSION_2, QuicProtocolVersion.VERSION_1]
    return config


def request_args(alpn: str, path: str) -> tuple[str, dict[str, str]]:
    """(service, meta) that make the SDK put `path` on the wire.

    HTTP/0.9 reaches only the file service, with the path as is; over HTTP/3
    the SDK sends `/<service><meta path>`, so the first segment is the service.
    """
    if alpn == hq.ALPN:
        return hq.SERVICE, {"path": path}
    service, slash, rest = path[1:].partition("/")
    # The SDK sends "/" + service + meta path: a first segment longer than a service
    # name may be (the runner's file names can be) continues in the meta path.
    service, overflow = service[:MAX_SERVICE_CHARS], service[MAX_SERVICE_CHARS:]
    meta = {"method": "GET"}
    if overflow or rest:
        meta["path"] = overflow + slash + rest
    return service, meta


async def download(session: Session, contract: Contract, url: str) -> None:
    _, _, path = url_target(url)
    service, meta = request_args(contract.alpn, path)
    response = await session.request(service, meta=meta)
    contract.download_path(url).write_bytes(response.body)


async def run(contract: Contract) -> int:
    if contract.testcase not in KNOWN_CASES:
        return unsupported(contract, "not implemented by the NetSched client endpoint")
    if contract.testcase == "multiconnect":
        for url in contract.requests:
            await fetch(contract, (url,))
    elif contract.testcase in RESUMING_CASES:
        return await resume(contract)
    else:
        try:
            await fetch(contract, contract.requests)
        except CaseUnsupported as exc:
            return unsupported(contract, str(exc))
    return EXIT_OK


async def resume(contract: Contract) -> int:
    """The first URL on one connection, the rest on a second one resumed from its ticket."""
    store = TicketStore()
    first, rest = contract.requests[:1], contract.requests[1:]
    await fetch(contract, first, store=store)
    second = await fetch(contract, rest, store=store, early=contract.testcase == "zerortt")
    if not second.session_resumed:
        print("netsched client: the second connection did not resume", file=sys.stderr)
        return EXIT_FAILED
    print(f"netsched client: resumed, early data {second.early_data}", file=sys.stderr)
    return EXIT_OK


async def fetch(
    contract: Contract,
    urls: tuple[str, ...],
    *,
    store: TicketStore | None = None,
    early: bool = False,
) -> Session:
    """Download `urls` concurrently over one connection (with `store`: resume from it if
    it holds a ticket, and leave this connection's ticket in it)."""
    host, port, _ = url_target(urls[0])
    session = await open_session(
        host,
        port,
        configuration=configuration(contract, host),
        timeout=HANDSHAKE_TIMEOUT_S,
        paths=paths_for(contract),
        ticket_store=store,
        early_data=early,
    )
    try:
        if contract.testcase == "keyupdate":
            session.request_key_update()
        if contract.testcase in MULTIPATH_CASES:
            check_paths(session, contract.testcase)
        downloads = asyncio.gather(*(download(session, contract, url) for url in urls))
        during = MIDWAY.get(contract.testcase)
        if during is not None:
            try:
                await during(session, downloads)
            except BaseException:
                downloads.cancel()  # the session closes next; nothing is left unawaited
                await asyncio.gather(downloads, return_exceptions=True)
                raise
        await downloads
        if store is not None:
            await wait_for_ticket(session)
    finally:
        if contract.testcase in MULTIPATH_CASES:
            report("paths", paths=[_path_report(p) for p in session.paths])
        await session.close()
    return session


async def wait_for_ticket(session: Session) -> None:
    """Bounded: a server that sends no ticket makes the next connection a full handshake."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TICKET_WAIT_S
    while session.session_ticket is None and loop.time() < deadline:
        await asyncio.sleep(TICKET_POLL_S)


def paths_for(contract: Contract) -> list[str] | None:
    """The local addresses to open paths from: all of LOCALS, or its first for mp-handshake."""
    if contract.testcase not in MULTIPATH_CASES:
        return None
    locals_ = list(local_addresses())
    return locals_[:1] if contract.testcase == "mp-handshake" else locals_


def check_paths(session: Session, testcase: str) -> None:
    if not session.multipath:
        raise MultipathError("the server did not negotiate multipath (no initial_max_path_id)")
    report("multipath", negotiated=True)
    active = [p.path_id for p in session.paths if p.state == "active"]
    if testcase != "mp-handshake" and len(active) < PATHS_WANTED:
        raise MultipathError(f"expected {PATHS_WANTED} active paths, got {session.paths}")


async def abandon_first_path(session: Session, downloads: asyncio.Future[list[None]]) -> None:
    """Abandon path 0 once ABANDON_AT bytes arrived; the downloads must still be running."""
    while sum(p.bytes_received for p in session.paths) < ABANDON_AT:
        if downloads.done():
            raise MultipathError(f"the transfer ended before {ABANDON_AT} bytes arrived")
        await asyncio.sleep(ABANDON_POLL_S)
    first = next(p for p in session.paths if p.path_id == 0)
    received = sum(p.bytes_received for p in session.paths)
    session.remove_path(0)
    report("abandon", path_id=0, local=first.local[0] if first.local else None, at=received)


async def migrate_midway(session: Session, downloads: asyncio.Future[list[None]]) -> None:
    """Move the session to a new local port once MIGRATE_AT bytes arrived."""
    while (received := sum(p.bytes_received for p in session.paths)) < MIGRATE_AT:
        if downloads.done():
            raise MigrationError(f"the transfer ended before {MIGRATE_AT} bytes arrived")
        await asyncio.sleep(MIGRATE_POLL_S)
    if not session.can_migrate:
        raise CaseUnsupported("the server issued no spare connection ID to migrate with")
    path_id = await session.migrate()
    report("migrate", path_id=path_id, at=received)


# What a case does while its downloads run.
MIDWAY = {"mp-abandon": abandon_first_path, "connectionmigration": migrate_midway}


def _path_report(path: PathStats) -> dict[str, object]:
    return {
        "path_id": path.path_id,
        "state": path.state,
        "local": list(path.local) if path.local else None,
        "bytes_received": path.bytes_received,
        "bytes_sent": path.bytes_sent,
    }


def main() -> int:
    return run_endpoint("netsched client", lambda contract: asyncio.run(run(contract)))


if __name__ == "__main__":
    sys.exit(main())
