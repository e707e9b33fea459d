"""quiche 0.18.0 through the napi binding in @matrixai/quic 2.0.9 (npm, prebuilt linux-x64).

The endpoint is our Node program `programs/quiche/peer.mjs`, which drives
quiche's Connection API (accept/connect, recv/send, stream_send/stream_recv)
directly rather than @matrixai/quic's own client and server classes: those
always answer a first Initial with a Retry (QUICServer.acceptConnection,
"Stateless Retry"), which would fail every case's handshake rule and make the
retry case trivial. The binding has no HTTP/3, so the peer speaks hq-interop.
"""

from __future__ import annotations

import re
import subprocess

from ..cases import HQ, Case, Feature, Side
from ..procs import Launch
from .base import REPO_ROOT, Job, Log, Peer, SetupError, run, which

PACKAGE = "@matrixai/quic"
VERSION = "2.0.9"
QUICHE_VERSION = "0.18.0"  # the quiche crate in @matrixai/quic 2.0.9's Cargo.lock
BINDING = "@matrixai/quic-linux-x64"  # the prebuilt quiche napi module, an optional dependency
PROGRAM = REPO_ROOT / "interop" / "programs" / "quiche" / "peer.mjs"
MIN_NODE_MAJOR = 18  # @matrixai/quic 2.x targets Node 18+ (napi6, ES modules)
CHECK_TIMEOUT_S = 60.0

# What quiche 0.18.0 cannot be told to do, in the words the results print. Its
# tls.rs sets no TLS 1.3 cipher suites (BoringSSL picks), its key phase flips
# only on a RemoteUpdate (lib.rs), and the binding's versionIsSupported(0x6b3343cf)
# is false.
_V1_ONLY = "quiche 0.18 speaks QUIC v1 only (versionIsSupported(0x6b3343cf) is false)"
_CANNOT: dict[tuple[Feature, Side], str] = {
    (Feature.CHACHA20, Side.CLIENT): (
        "quiche 0.18 (BoringSSL) offers no choice of TLS 1.3 cipher suites"
    ),
    (Feature.KEY_UPDATE, Side.CLIENT): "quiche 0.18 answers key updates but never starts one",
    (Feature.V2, Side.CLIENT): _V1_ONLY,
    (Feature.V2, Side.SERVER): _V1_ONLY,
}


class Quiche(Peer):
    name = "quiche"
    description = (
        f"quiche {QUICHE_VERSION} via {PACKAGE} {VERSION} (npm, prebuilt linux-x64), "
        "interop/programs/quiche/peer.mjs"
    )
    client_alpns = (HQ,)
    server_alpns = (HQ,)
    client_features = frozenset({Feature.IPV6, Feature.RESUMPTION, Feature.ZERO_RTT})
    server_features = frozenset(
        {Feature.RETRY, Feature.IPV6, Feature.MIGRATION, Feature.RESUMPTION, Feature.ZERO_RTT}
    )

    @property
    def node_modules(self) -> str:
        return str(self.home / "node_modules")

    def unsupported(self, case: Case, side: Side) -> str | None:
        for feature in sorted(case.needs(side)):
            if (why := _CANNOT.get((feature, side))) is not None:
                return why
        return super().unsupported(case, side)

    def status(self) -> str | None:
        if which("node") is None:
            return "node not found (apt-get install nodejs npm)"
        if (problem := super().status()) is not None:
            return problem
        if not (self.home / "node_modules" / BINDING).is_dir():
            return f"{BINDING} missing (python -m interop setup --peers {self.name})"
        return None

    def install(self, log: Log) -> None:
        node = _node(log)
        npm = which("npm")
        if npm is None:
            raise SetupError("npm not found (apt-get install npm)")
        self.home.mkdir(parents=True, exist_ok=True)
        quiet = ["--no-audit", "--no-fund", "--save-exact", "--loglevel=error"]
        run([npm, "install", "--prefix", str(self.home), *quiet, f"{PACKAGE}@{VERSION}"], log)
        try:
            run([node, str(PROGRAM), self.node_modules, "--check"], log)
        except SetupError as exc:
            raise SetupError(
                f"{PACKAGE} {VERSION} installed but its prebuilt quiche binding does not "
                f"load here (it ships linux-x64 only): {exc}"
            ) from None
        self.mark_ready()

    def launch(self, job: Job) -> Launch:
        argv = (which("node") or "node", str(PROGRAM), self.node_modules)
        return Launch(argv=argv, env=job.contract_env(), cwd=job.workdir)


def _node(log: Log) -> str:
    """The node interpreter, if it is new enough; SetupError says what to install."""
    node = which("node")
    if node is None:
        raise SetupError("node not found (apt-get install nodejs npm)")
    try:
        done = subprocess.run(
            [node, "--version"],
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"{node} --version failed: {exc}") from None
    found = re.match(r"v(\d+)\.", done.stdout.strip())
    if found is None or int(found.group(1)) < MIN_NODE_MAJOR:
        raise SetupError(f"{PACKAGE} needs Node >= {MIN_NODE_MAJOR}, {node} is {done.stdout!r}")
    log(f"quiche: {node} {done.stdout.strip()}")
    return node
