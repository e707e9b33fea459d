"""aioquic 1.7.2 through its own example endpoints (examples/http3_{client,server}.py).

The examples ship only in the sdist, so setup downloads it with
`pip download --no-binary :all:` and keeps the two scripts. The server is
given our stdlib ASGI app (programs/aioquic_www.py) instead of aioquic's demo
app, which would pull in starlette and jinja2 just to serve files.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

from ..cases import HQ, Feature, Side
from ..procs import Launch
from .base import PROGRAMS, REPO_ROOT, Job, Log, Peer, SetupError, make_venv, pip_install, run

VERSION = "1.7.2"
EXAMPLES = ("http3_client.py", "http3_server.py")
SMALL_WINDOW = 256 << 10  # the transfer case's "small initial flow-control windows"
SMALL_STREAM_WINDOW = 128 << 10
RESUMING = ("resumption", "zerortt")  # two connections, the second resuming the first
TICKET_FILE = "session-ticket.pickle"  # http3_client.py --session-ticket, in the workdir


class Aioquic(Peer):
    name = "aioquic"
    description = f"aioquic {VERSION} (PyPI), examples/http3_client.py and http3_server.py"
    client_features = frozenset(
        {
            Feature.CHACHA20,
            Feature.KEY_UPDATE,
            Feature.V2,
            Feature.IPV6,
            Feature.RESUMPTION,
            Feature.ZERO_RTT,
        }
    )
    # http3_server.py keeps the session tickets it issues (its SessionTicketStore).
    server_features = frozenset(
        {
            Feature.RETRY,
            Feature.V2,
            Feature.IPV6,
            Feature.MIGRATION,
            Feature.RESUMPTION,
            Feature.ZERO_RTT,
        }
    )

    @property
    def _python(self) -> Path:
        return self.home / "venv" / "bin" / "python"

    def install(self, log: Log) -> None:
        python = make_venv(self.home / "venv", sys.executable, log)
        # http3_client/server import wsproto at module level (WebSocket support).
        pip_install(python, [f"aioquic=={VERSION}", "wsproto"], log)
        sdist_dir = self.home / "sdist"
        pip = [str(python), "-m", "pip", "download", "--disable-pip-version-check", "-q"]
        run(
            [
                *pip,
                "--no-deps",
                "--no-binary",
                ":all:",
                f"aioquic=={VERSION}",
                "-d",
                str(sdist_dir),
            ],
            log,
        )
        self._extract_examples(sdist_dir / f"aioquic-{VERSION}.tar.gz", self.home / "examples")
        self.mark_ready()

    def _extract_examples(self, sdist: Path, target: Path) -> None:
        if not sdist.is_file():
            raise SetupError(f"pip download left no {sdist.name} in {sdist.parent}")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as archive:
            for name in EXAMPLES:
                member = archive.extractfile(f"aioquic-{VERSION}/examples/{name}")
                if member is None:
                    raise SetupError(f"{sdist.name} has no examples/{name}")
                (target / name).write_bytes(member.read())

    def launch(self, job: Job) -> Launch:
        examples = self.home / "examples"
        env = {
            "PYTHONPATH": str(REPO_ROOT),  # for interop.programs.aioquic_www
            "PYTHONUNBUFFERED": "1",
        }
        if job.side is Side.SERVER:
            assert job.www is not None
            argv = [str(self._python), str(examples / "http3_server.py")]
            argv += ["--host", job.host, "--port", str(job.port)]
            argv += ["--certificate", str(job.certificate), "--private-key", str(job.private_key)]
            argv += ["--secrets-log", str(job.keylog)]
            argv += ["--retry"] if job.testcase == "retry" else []
            argv += ["--quic-log", str(job.qlog_dir)] if job.qlog_dir else []
            argv.append("interop.programs.aioquic_www:app")
            return Launch(tuple(argv), {**env, "WWW": str(job.www)}, job.workdir)
        env["REQUESTS"] = " ".join(job.requests)  # read by each_url for multiconnect
        return Launch(tuple(self._client_argv(job)), env, job.workdir)

    def _client_argv(self, job: Job) -> list[str]:
        assert job.downloads is not None
        argv = [str(self._python), str(self.home / "examples" / "http3_client.py")]
        each_url = [str(self._python), "-m", f"{PROGRAMS}.each_url"]
        if job.testcase == "multiconnect":
            # One connection per file: run the client once per URL (programs/each_url.py).
            argv = [*each_url, *argv]
        elif job.testcase in RESUMING:
            # The first file, then the rest over a connection resuming the first's session.
            second = ["--second=--zero-rtt"] if job.testcase == "zerortt" else []
            argv = [*each_url, "--split", *second, "--", *argv]
            argv += ["--session-ticket", str(job.workdir / TICKET_FILE)]
        argv += ["--ca-certs", str(job.ca_certificate), "--output-dir", str(job.downloads)]
        argv += ["--secrets-log", str(job.keylog)]
        argv += ["--legacy-http"] if job.alpn == HQ else []
        argv += ["--quic-log", str(job.qlog_dir)] if job.qlog_dir else []
        argv += _CASE_OPTIONS.get(job.testcase, [])
        appended = job.testcase == "multiconnect" or job.testcase in RESUMING
        return argv if appended else argv + list(job.requests)


_CASE_OPTIONS: dict[str, list[str]] = {
    "transfer": ["--max-data", str(SMALL_WINDOW), "--max-stream-data", str(SMALL_STREAM_WINDOW)],
    "chacha20": ["--cipher-suites", "CHACHA20_POLY1305_SHA256"],
    "keyupdate": ["--key-update"],
    "v2": ["--negotiate-v2"],
}
