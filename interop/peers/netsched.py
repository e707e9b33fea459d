"""NetSched itself: the SDK client program and `netsched-edge` serving the www folder."""

from __future__ import annotations

import json
import sys

from ..cases import H3, HQ, Feature, Side
from ..procs import Launch
from ..results import NETSCHED as NAME
from .base import Job, Log, Peer, python_program

MAX_WWW_BODY = 64 << 20  # above the largest file a case serves (www.MAX_FILE_SIZE)


class NetSched(Peer):
    name = NAME
    description = "this repository: netsched_client (client) and netsched-edge (server)"
    client_features = frozenset(
        {
            Feature.CHACHA20,
            Feature.V2,
            Feature.MULTIPATH,
            Feature.IPV6,
            Feature.KEY_UPDATE,
            Feature.RESUMPTION,
            Feature.ZERO_RTT,
            Feature.ACTIVE_MIGRATION,
        }
    )
    # The edge accepts a ChaCha20-only client, which is what the runner's chacha20
    # rule checks. It follows a client's new address with path validation (aioquic's
    # connection does), issues session tickets and serves idempotent 0-RTT requests.
    server_features = frozenset(
        {
            Feature.RETRY,
            Feature.V2,
            Feature.MULTIPATH,
            Feature.IPV6,
            Feature.MIGRATION,
            Feature.RESUMPTION,
            Feature.ZERO_RTT,
        }
    )

    def status(self) -> str | None:
        return None  # runs from this checkout with the suite's own interpreter

    def install(self, log: Log) -> None:
        log("netsched: nothing to install (this checkout)")

    def url_path(self, name: str, alpn: str) -> str:
        # Over HTTP/3 the edge routes `/<service>/<rest>`; its file service is `www`.
        # HTTP/0.9 requests all go to that service, so their path is the file's.
        return f"/www/{name}" if alpn == H3 else f"/{name}"

    def launch(self, job: Job) -> Launch:
        if job.side is Side.CLIENT:
            return python_program(sys.executable, "netsched_client", job)
        config = job.workdir / "edge.toml"
        config.write_text(edge_config(job))
        return Launch(
            argv=(sys.executable, "-m", "netsched_edge.cli", "--config", str(config)),
            env={k: v for k, v in job.contract_env().items() if k in _EDGE_ENV},
            cwd=job.workdir,
        )


_EDGE_ENV = ("SSLKEYLOGFILE", "QLOGDIR", "PYTHONUNBUFFERED")


def edge_config(job: Job) -> str:
    """The edge's TOML for one test: listen, certificate, www, Retry per test case, multipath.

    The www service is declared rather than left to `[edge] www` alone: an
    HTTP/3 GET is a unary request, whose response the dispatcher collects up to
    the service's max_body (netsched_edge/dispatch.py `_attempt`; default 1 MiB),
    so the built-in service answers 502 to a GET of the 2-5 MB transfer files.
    HTTP/0.9 requests stream and are not limited.
    """
    assert job.www is not None
    # json.dumps writes a valid TOML basic string for any path.
    host = f"[{job.host}]" if ":" in job.host else job.host
    lines = [
        "[edge]",
        f"listen = {json.dumps(f'{host}:{job.port}')}",
        f"certificate = {json.dumps(str(job.certificate))}",
        f"private_key = {json.dumps(str(job.private_key))}",
        f"www = {json.dumps(str(job.www))}",
        f"alpn = {json.dumps([HQ, H3])}",
        f"retry = {'true' if job.testcase == 'retry' else 'false'}",
        "multipath = true",  # the default, said here because the mp-* cases rely on it
        "",
        "[[services]]",
        'name = "www"',
        'policy = "round-robin"',
        f"max_body = {MAX_WWW_BODY}",
        "[[services.backends]]",
        'name = "www"',
        'kind = "static"',
        f"root = {json.dumps(str(job.www))}",
    ]
    return "\n".join(lines) + "\n"
