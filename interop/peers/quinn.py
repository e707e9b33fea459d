"""quinn 0.9.3 from Debian's crate sources: our endpoint programs/quinn, built offline.

Debian's librust-*-dev packages install crate sources under
/usr/share/cargo/registry; a cargo directory source replacing crates-io points
the build there, so it needs no network beyond apt. The sources are copied into
the cache with that cargo config beside them: the lock file and target folder
never land in the checkout. hq-interop only (no HTTP/3 crate in bookworm).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from ..cases import HQ, Case, Feature, Side
from ..procs import Launch
from .base import REPO_ROOT, Job, Log, Peer, SetupError, apt_install, run, which

PACKAGES = (
    "librust-quinn-dev",
    "librust-rustls-pemfile-dev",
    "librust-tokio-dev",
    "librust-anyhow-dev",
    "librust-tracing-subscriber-dev",
)
REGISTRY = Path("/usr/share/cargo/registry")
# Crate folders that PACKAGES install in REGISTRY (bookworm versions).
CRATES = ("quinn-0.9.3", "rustls-pemfile-1.0.0", "anyhow-1.0.69", "tracing-subscriber-0.3.16")
SOURCE = REPO_ROOT / "interop" / "programs" / "quinn"
BINARY = "quinn-interop-peer"  # the package name in programs/quinn/Cargo.toml
SOURCE_DIGEST = "source.sha256"
CARGO_CONFIG = f"""\
# Written by interop/peers/quinn.py: crates come from Debian's packages only.
[source.crates-io]
replace-with = "debian"

[source.debian]
directory = "{REGISTRY}"

[net]
offline = true
"""


class Quinn(Peer):
    name = "quinn"
    description = (
        "quinn 0.9.3 (Debian librust-quinn-dev: quinn-proto 0.9.2, rustls 0.20.8, "
        "tokio 1.24.2), interop/programs/quinn"
    )
    client_alpns = (HQ,)
    server_alpns = (HQ,)
    client_features = frozenset(
        {Feature.CHACHA20, Feature.KEY_UPDATE, Feature.IPV6, Feature.RESUMPTION, Feature.ZERO_RTT}
    )
    # quinn's ServerConfig::migration is on by default: it validates a client's new path.
    server_features = frozenset(
        {Feature.RETRY, Feature.MIGRATION, Feature.IPV6, Feature.RESUMPTION, Feature.ZERO_RTT}
    )

    @property
    def build_dir(self) -> Path:
        return self.home / "build"

    @property
    def binary(self) -> Path:
        return self.home / "target" / "release" / BINARY

    def unsupported(self, case: Case, side: Side) -> str | None:
        if Feature.V2 in case.needs(side):
            # quinn-proto 0.9.2 src/lib.rs DEFAULT_SUPPORTED_VERSIONS: 0x1 and 0xff00001d..22.
            return "quinn 0.9 knows QUIC v1 and drafts 29-34 only, not v2 (0x6b3343cf)"
        return super().unsupported(case, side)

    def status(self) -> str | None:
        if (problem := super().status()) is not None:
            return problem
        if not self.binary.is_file():
            return f"{self.binary} missing (python -m interop setup --peers {self.name})"
        stamp = self.home / SOURCE_DIGEST
        if not stamp.is_file() or stamp.read_text().strip() != source_digest(SOURCE):
            return f"{SOURCE} changed since the build (python -m interop setup --peers quinn)"
        return None

    def install(self, log: Log) -> None:
        if not all((REGISTRY / crate).is_dir() for crate in CRATES):
            apt_install(PACKAGES, log)
        cargo = which("cargo")
        if cargo is None:
            # Debian's own toolchain (rustc 1.63) builds the program too.
            apt_install(("cargo",), log)
            cargo = which("cargo") or "cargo"
        self._build(cargo, log)
        (self.home / SOURCE_DIGEST).write_text(source_digest(SOURCE) + "\n")
        self.mark_ready()

    def _build(self, cargo: str, log: Log) -> None:
        """Copy the program into the cache and build it there, offline, from REGISTRY."""
        shutil.rmtree(self.build_dir / "src", ignore_errors=True)
        shutil.copytree(SOURCE / "src", self.build_dir / "src")
        shutil.copy2(SOURCE / "Cargo.toml", self.build_dir / "Cargo.toml")
        config = self.build_dir / ".cargo" / "config.toml"
        config.parent.mkdir(exist_ok=True)
        config.write_text(CARGO_CONFIG)
        # Resolved afresh each time: another cargo may not read an older lock file's format.
        (self.build_dir / "Cargo.lock").unlink(missing_ok=True)
        started = time.monotonic()
        # --config names the file: cargo would find it by itself only from a cwd below build/.
        argv = [cargo, "--config", str(config), "build", "--offline", "--release"]
        argv += ["--manifest-path", str(self.build_dir / "Cargo.toml")]
        run(argv, log, env={"CARGO_TARGET_DIR": str(self.home / "target")})
        if not self.binary.is_file():
            raise SetupError(f"cargo build succeeded but {self.binary} is missing")
        log(f"quinn: built {self.binary} in {time.monotonic() - started:.0f} s")

    def launch(self, job: Job) -> Launch:
        return Launch((str(self.binary),), job.contract_env(), job.workdir)


def source_digest(source: Path) -> str:
    """SHA-256 over the program's files (names and contents): a changed program is rebuilt."""
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
