"""ngtcp2 0.12.1 from Debian: the gtlsclient / gtlsserver examples (GnuTLS, HTTP/3 only)."""

from __future__ import annotations

import sys

from ..cases import H3, Case, Feature, Side
from ..procs import Launch
from .base import PROGRAMS, REPO_ROOT, Job, Log, Peer, SetupError, apt_install, which

PACKAGES = ("ngtcp2-client", "ngtcp2-server")
CLIENT = "gtlsclient"
SERVER = "gtlsserver"
# GnuTLS priority string with ChaCha20-Poly1305 as the only TLS 1.3 cipher.
CHACHA20_ONLY = "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305"
HANDSHAKE_TIMEOUT = "30s"
SMALL_WINDOW = "256K"
SMALL_STREAM_WINDOW = "128K"
MIGRATE_AFTER = "500ms"
RESUMING = ("resumption", "zerortt")  # two connections, the second resuming the first
SESSION_FILE = "tls-session.pem"  # gtlsclient --session-file / --tp-file, in the workdir
TRANSPORT_PARAMETERS_FILE = "transport-parameters.pem"


class Ngtcp2(Peer):
    name = "ngtcp2"
    description = "ngtcp2 0.12.1 (Debian ngtcp2-client/-server: gtlsclient, gtlsserver)"
    # Debian builds only the HTTP/3 examples; the suite runs the runner's
    # hq-interop cases over h3 with this peer and says so in the results.
    client_alpns = (H3,)
    server_alpns = (H3,)
    client_features = frozenset(
        {
            Feature.CHACHA20,
            Feature.KEY_UPDATE,
            Feature.IPV6,
            Feature.RESUMPTION,
            Feature.ZERO_RTT,
            Feature.ACTIVE_MIGRATION,
        }
    )
    server_features = frozenset(
        {Feature.RETRY, Feature.IPV6, Feature.MIGRATION, Feature.RESUMPTION, Feature.ZERO_RTT}
    )

    def unsupported(self, case: Case, side: Side) -> str | None:
        if Feature.V2 in case.needs(side):
            # `gtlsclient --help`: -v accepts "v1" and "v2draft" only; 0x709a50c4
            # is draft-ietf-quic-v2, not RFC 9369's 0x6b3343cf that the v2 rule wants.
            return "ngtcp2 0.12.1 knows only the QUIC v2 draft (0x709a50c4), not v2 (0x6b3343cf)"
        return super().unsupported(case, side)

    def status(self) -> str | None:
        missing = [name for name in (CLIENT, SERVER) if which(name) is None]
        if not missing:
            return None
        return f"{', '.join(missing)} not found (apt-get install {' '.join(PACKAGES)})"

    def install(self, log: Log) -> None:
        if self.status() is None:
            log("ngtcp2: gtlsclient and gtlsserver already installed")
            return
        apt_install(PACKAGES, log)
        if (problem := self.status()) is not None:
            raise SetupError(problem)

    def launch(self, job: Job) -> Launch:
        env = {"SSLKEYLOGFILE": str(job.keylog), "REQUESTS": " ".join(job.requests)}
        env["PYTHONPATH"] = str(REPO_ROOT)  # for interop.programs.each_url
        if job.side is Side.SERVER:
            assert job.www is not None
            argv = [which(SERVER) or SERVER, job.host, str(job.port)]
            argv += [str(job.private_key), str(job.certificate), "-d", str(job.www)]
            argv += ["-q", "--no-quic-dump", "--no-http-dump"]
            argv += ["-V"] if job.testcase == "retry" else []
            argv += [f"--ciphers={CHACHA20_ONLY}"] if job.testcase == "chacha20" else []
            argv += ["--qlog-dir", str(job.qlog_dir)] if job.qlog_dir else []
            return Launch(tuple(argv), env, job.workdir)
        return Launch(tuple(self._client_argv(job)), env, job.workdir)

    def _client_argv(self, job: Job) -> list[str]:
        assert job.downloads is not None
        argv = [which(CLIENT) or CLIENT, job.host, str(job.port)]
        each_url = [sys.executable, "-m", f"{PROGRAMS}.each_url"]
        if job.testcase == "multiconnect":
            # One connection per file: run the client once per URL (programs/each_url.py).
            argv = [*each_url, *argv]
        elif job.testcase in RESUMING:
            # The first file, then the rest over a connection resuming the first's
            # session (gtlsclient sends 0-RTT when its session file allows it).
            second = [] if job.testcase == "zerortt" else ["--second=--disable-early-data"]
            argv = [*each_url, "--split", *second, "--", *argv]
            argv += [f"--session-file={job.workdir / SESSION_FILE}"]
            argv += [f"--tp-file={job.workdir / TRANSPORT_PARAMETERS_FILE}"]
        else:
            argv += job.requests
        argv += ["--download", str(job.downloads), "--exit-on-all-streams-close"]
        # Its default of 10 s gives up on handshakes that handshakeloss's 30 % loss
        # legitimately stretches (seen here: ERR_HANDSHAKE_TIMEOUT, one file missing).
        argv += [f"--handshake-timeout={HANDSHAKE_TIMEOUT}"]
        argv += ["-q", "--no-quic-dump", "--no-http-dump"]
        argv += ["--qlog-dir", str(job.qlog_dir)] if job.qlog_dir else []
        argv += _CLIENT_CASE_OPTIONS.get(job.testcase, [])
        return argv


_CLIENT_CASE_OPTIONS: dict[str, list[str]] = {
    "transfer": [
        f"--max-data={SMALL_WINDOW}",
        f"--max-stream-data-bidi-local={SMALL_STREAM_WINDOW}",
    ],
    "chacha20": [f"--ciphers={CHACHA20_ONLY}"],
    "keyupdate": ["--key-update=1ms"],
    # A new local port (and a new DCID, with path validation) mid-transfer: the 2 MB
    # file takes some 1.7 s over the case's 10 Mbit/s link.
    "connectionmigration": [f"--change-local-addr={MIGRATE_AFTER}"],
}
