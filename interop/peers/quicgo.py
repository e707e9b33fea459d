"""quic-go 0.29.0 from Debian, through our endpoint program (interop/programs/quicgo).

Debian ships quic-go as Go source (golang-github-lucas-clemente-quic-go-dev);
`install` builds our small program against it offline, in GOPATH mode with the
tree the package installs as GOPATH, into the peer's cache folder.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from ..cases import Case, Feature, Side
from ..procs import Launch
from .base import REPO_ROOT, Job, Log, Peer, SetupError, apt_install, run, which

VERSION = "0.29.0"
LIBRARY = "golang-github-lucas-clemente-quic-go-dev"
PACKAGES = ("golang-go", LIBRARY)
IMPORT_PATH = "src/github.com/lucas-clemente/quic-go"
SOURCE = REPO_ROOT / "interop" / "programs" / "quicgo"
BINARY = "quicgo-peer"
STAMP = "source.sha256"  # which source the binary was built from


class QuicGo(Peer):
    name = "quic-go"
    description = f"quic-go {VERSION} (Debian {LIBRARY}, Go 1.19), interop/programs/quicgo/main.go"
    client_features = frozenset(
        {Feature.CHACHA20, Feature.KEY_UPDATE, Feature.IPV6, Feature.RESUMPTION, Feature.ZERO_RTT}
    )
    server_features = frozenset({Feature.RETRY, Feature.IPV6, Feature.RESUMPTION, Feature.ZERO_RTT})

    @property
    def binary(self) -> Path:
        return self.home / "bin" / BINARY

    def unsupported(self, case: Case, side: Side) -> str | None:
        if Feature.V2 in case.needs(side):
            # internal/protocol/version.go: Version2 = 0x709a50c4, and its transport
            # parameters have no version_information (RFC 9368).
            return (
                "quic-go 0.29 knows only the QUIC v2 draft (0x709a50c4) and no "
                "compatible version negotiation"
            )
        if Feature.MIGRATION in case.needs(side):
            # Seen here: after a NAT rebinding its server never sent to the client's new
            # address (rebind-port / rebind-addr, against our client and its own alike).
            return "quic-go 0.29's server does not follow a client to a new address"
        return super().unsupported(case, side)

    def status(self) -> str | None:
        if (problem := super().status()) is not None:
            return problem
        stamp = self.home / "bin" / STAMP
        if not self.binary.is_file() or not stamp.is_file():
            return f"{self.binary} missing (python -m interop setup --peers {self.name})"
        if stamp.read_text().strip() != source_digest():
            return (
                f"built from an older {SOURCE.name} (python -m interop setup --peers {self.name})"
            )
        return None

    def install(self, log: Log) -> None:
        gopath = debian_gopath(log)
        if self.status() is None:
            log(f"quic-go: {self.binary} is up to date")
            return
        self.build(gopath, log)
        self.mark_ready()

    def build(self, gopath: Path, log: Log) -> None:
        """Our program against Debian's quic-go tree, offline (no modules, no proxy)."""
        go = which("go")
        if go is None:
            raise SetupError("go not found after installing golang-go")
        sources = sorted(str(p) for p in SOURCE.glob("*.go") if not p.name.endswith("_test.go"))
        if not sources:
            raise SetupError(f"no Go source in {SOURCE}")
        env = {
            "GO111MODULE": "off",
            "GOPATH": str(gopath),
            "GOCACHE": str(self.home / "go-build"),
            "GOPROXY": "off",
            "GOFLAGS": "",
            "GOENV": "off",
            "CGO_ENABLED": "0",  # static, and no C compiler needed
        }
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        try:
            run([go, "build", "-trimpath", "-o", str(self.binary), *sources], log, env=env)
        except SetupError as exc:
            raise SetupError(f"building {SOURCE} against {gopath} failed: {exc}") from None
        (self.binary.parent / STAMP).write_text(source_digest() + "\n")

    def launch(self, job: Job) -> Launch:
        return Launch((str(self.binary),), job.contract_env(), job.workdir)


def debian_gopath(log: Log) -> Path:
    """The GOPATH that Debian's quic-go source lives in, installing the packages if needed."""
    if _installed_version() is None:
        apt_install(PACKAGES, log)
    version = _installed_version()
    if version is None or not version.startswith(VERSION + "-"):
        raise SetupError(f"{LIBRARY} {version} is installed; this peer is written for {VERSION}")
    for line in _output(["dpkg", "-L", LIBRARY]).splitlines():
        if line.endswith("/" + IMPORT_PATH):
            return Path(line.removesuffix("/" + IMPORT_PATH))
    raise SetupError(f"dpkg -L {LIBRARY} lists no .../{IMPORT_PATH}")


def source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE.glob("*.go")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _installed_version() -> str | None:
    """The installed version of the quic-go package when golang-go is there too, else None."""
    if which("go") is None:
        return None
    try:
        version = _output(["dpkg-query", "-W", "-f=${Status} ${Version}", LIBRARY])
    except SetupError:
        return None
    status, _, version = version.rpartition(" ")
    return version if status.endswith("installed") and version else None


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"{' '.join(argv)}: {exc}") from None
    if done.returncode != 0:
        raise SetupError(f"{' '.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout
