"""picoquic's endpoint for the mp-* test cases: the contract mapped onto `server` and `client`.

Per test case, as the client: mp-handshake fetches over one path (multipath
negotiated, shown by the `path_allowed` report); mp-transfer and mp-failover
request at once and open a second path from LOCALS[1] once PROBE_AT bytes have
arrived, mid-transfer, the way picoquic's applications add a path
(picoquic_probe_new_path on a running connection); mp-abandon opens it before
requesting (our first way, kept) and abandons path 0 (LOCALS[0]) once
ABANDON_AT bytes have arrived. As the server, every mp-* case is the same
multipath file server.
"""

from __future__ import annotations

from pathlib import Path

from ..contract import EXIT_OK, Contract, ContractError, url_target
from ..multipath import ABANDON_AT, local_addresses
from . import client
from .server import serve

# Well before the cut of mp-failover (a fifth of the file): the second path is up by then.
PROBE_AT = 256 << 10
PROBE_MID_TRANSFER = frozenset({"mp-transfer", "mp-failover"})
# Under the cases' 60 s: a stuck client then says itself where it got stuck.
CLIENT_TIMEOUT_S = 50.0
DEFAULT_LOCAL = "127.0.0.1"


def run(contract: Contract) -> int:
    if contract.qlog_dir is not None:
        Path(contract.qlog_dir).mkdir(parents=True, exist_ok=True)  # picoquic writes none if absent
    if contract.role == "server":
        if contract.www is None:
            raise ContractError("WWW is not set")
        serve(
            (contract.host, contract.port),
            cert=str(contract.certificate),
            key=str(contract.private_key),
            www=contract.www,
            qlog=contract.qlog_dir,
            keylog=contract.keylog,
            control=False,
        )
        return EXIT_OK
    return client.run(client_options(contract, local_addresses()))


def client_options(contract: Contract, locals_: tuple[str, ...]) -> client.Options:
    host, port, _ = url_target(contract.requests[0])
    two_paths = contract.testcase != "mp-handshake" and len(locals_) > 1
    return client.Options(
        server=(host, port),
        local=locals_[0] if locals_ else DEFAULT_LOCAL,
        second_local=locals_[1] if two_paths else None,
        gets=tuple(url_target(url)[2] for url in contract.requests),
        downloads=contract.downloads,
        abandon_at=ABANDON_AT if contract.testcase == "mp-abandon" else None,
        abandon_path=0,
        probe_at=PROBE_AT if contract.testcase in PROBE_MID_TRANSFER else None,
        timeout_s=CLIENT_TIMEOUT_S,
        qlog=contract.qlog_dir,
        keylog=contract.keylog,
        control=False,
    )
