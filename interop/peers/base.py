"""What every peer offers the runner: install, capabilities, and how to launch it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..cases import H3, HQ, Case, Feature, Side
from ..procs import Launch

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = "interop.programs"
INSTALL_TIMEOUT_S = 900.0
READY_MARKER = "READY"
APT_LOCK_WAIT_S = 600  # another install may hold the dpkg lock: wait rather than fail

Log = Callable[[str], None]


class SetupError(Exception):
    """A peer cannot be installed here; the message says what to do about it."""


@dataclass(frozen=True, slots=True)
class Job:
    """One endpoint's part in one test, in the terms of the runner's endpoint contract."""

    side: Side
    testcase: str  # TESTCASE as the runner names it to this side
    alpn: str
    port: int  # server: where to listen; client: where to connect (the tap)
    workdir: Path  # scratch space for this endpoint (configs, tickets)
    certs: Path  # cert.pem (leaf + CA), priv.key, ca.pem
    keylog: Path
    www: Path | None = None  # server
    downloads: Path | None = None  # client
    requests: tuple[str, ...] = ()  # client: https URLs
    qlog_dir: Path | None = None
    host: str = LOOPBACK

    @property
    def certificate(self) -> Path:
        return self.certs / "cert.pem"

    @property
    def private_key(self) -> Path:
        return self.certs / "priv.key"

    @property
    def ca_certificate(self) -> Path:
        return self.certs / "ca.pem"

    def contract_env(self) -> dict[str, str]:
        """The environment our endpoint programs read (programs/contract.py)."""
        env = {
            "ROLE": str(self.side),
            "TESTCASE": self.testcase,
            "ALPN": self.alpn,
            "HOST": self.host,
            "PORT": str(self.port),
            "CERTS": str(self.certs),
            "SSLKEYLOGFILE": str(self.keylog),
            "REQUESTS": " ".join(self.requests),
            # The programs import interop.programs.contract from the repository.
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        for name, path in (("WWW", self.www), ("DOWNLOADS", self.downloads)):
            if path is not None:
                env[name] = str(path)
        if self.qlog_dir is not None:
            env["QLOGDIR"] = str(self.qlog_dir)
        return env


class Peer:
    """A QUIC stack under test. Subclasses fill in the class attributes and methods."""

    name = ""
    description = ""
    client_alpns: tuple[str, ...] = (HQ, H3)
    server_alpns: tuple[str, ...] = (HQ, H3)
    client_features: frozenset[Feature] = frozenset()
    server_features: frozenset[Feature] = frozenset()

    def __init__(self, cache: Path) -> None:
        self.home = cache / self.name

    def alpns(self, side: Side) -> tuple[str, ...]:
        return self.client_alpns if side is Side.CLIENT else self.server_alpns

    def unsupported(self, case: Case, side: Side) -> str | None:
        """Why this peer cannot play `side` in `case`, or None when it can."""
        features = self.client_features if side is Side.CLIENT else self.server_features
        missing = sorted(case.needs(side) - features)
        if missing:
            return f"{self.name} {side} cannot be told to do: {', '.join(missing)}"
        return None

    def url_path(self, name: str, alpn: str) -> str:
        """The request path of www file `name` on this peer's server."""
        return "/" + name

    def status(self) -> str | None:
        """None when installed and ready, else why not."""
        marker = self.home / READY_MARKER
        if not marker.is_file():
            return f"not installed (python -m interop setup --peers {self.name})"
        if marker.read_text().strip() != self.description:
            return f"installed for another version (python -m interop setup --peers {self.name})"
        return None

    def install(self, log: Log) -> None:
        """Install into self.home (idempotent); SetupError says why it cannot."""

    def launch(self, job: Job) -> Launch:
        raise NotImplementedError

    def mark_ready(self) -> None:
        """Record a finished install; the description names the versions installed."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / READY_MARKER).write_text(self.description + "\n")


# ---------------------------------------------------------------- install helpers


def run(argv: Sequence[str], log: Log, *, env: dict[str, str] | None = None) -> None:
    """Run an install step; SetupError with the tail of its output when it fails."""
    log("$ " + " ".join(argv))
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            env={**os.environ, **(env or {})},
            check=False,
        )
    except FileNotFoundError:
        raise SetupError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise SetupError(f"{' '.join(argv)} took more than {INSTALL_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise SetupError(f"{' '.join(argv)} failed (exit {done.returncode}):\n{tail}")


def apt_install(packages: Sequence[str], log: Log) -> None:
    """apt-get install `packages` (as root); refreshes the package lists if the first try
    fails, and waits for the dpkg lock another install may hold."""
    if os.geteuid() != 0:
        raise SetupError(f"needs root to run: apt-get install -y {' '.join(packages)}")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    lock = f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S}"
    install = ["apt-get", "-o", lock, "install", "-y", "--no-install-recommends", *packages]
    try:
        run(install, log, env=env)
    except SetupError:
        # A fresh machine may have no package lists yet.
        run(["apt-get", "-o", lock, "update"], log, env=env)
        run(install, log, env=env)


def make_venv(path: Path, python: str, log: Log) -> Path:
    """A virtual environment at `path` made by `python`; returns its interpreter."""
    interpreter = path / "bin" / "python"
    if not interpreter.exists():
        if python == sys.executable:
            log(f"creating venv {path}")
            venv.create(path, with_pip=True, clear=True)
        else:
            run([python, "-m", "venv", "--clear", str(path)], log)
    return interpreter


def pip_install(interpreter: Path, requirements: Sequence[str], log: Log) -> None:
    pip = [str(interpreter), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run([*pip, *requirements], log)


def python_program(interpreter: Path | str, module: str, job: Job) -> Launch:
    """Launch one of our endpoint programs (interop/programs) under `interpreter`."""
    return Launch(
        argv=(str(interpreter), "-m", f"{PROGRAMS}.{module}"),
        env=job.contract_env(),
        cwd=job.workdir,
    )


def which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/bin") if (p := Path(d) / name).exists()), None
    )
