"""qh3 (PyPI, Rust TLS core, aioquic's API) through our endpoint program."""

from __future__ import annotations

import sys

from ..cases import Feature
from ..procs import Launch
from .base import Job, Log, Peer, make_venv, pip_install, python_program


class Qh3(Peer):
    version = "2.1.0"
    name = "qh3"
    description = f"qh3 {version} (PyPI), interop/programs/qh3_peer.py"
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

    def install(self, log: Log) -> None:
        python = make_venv(self.home / "venv", sys.executable, log)
        pip_install(python, [f"qh3=={self.version}"], log)
        self.mark_ready()

    def launch(self, job: Job) -> Launch:
        return python_program(self.home / "venv" / "bin" / "python", "qh3_peer", job)


class Qh3Legacy(Qh3):
    """The 1.x line, still what many users run (and what aiopquic's own tests pin)."""

    version = "1.9.4"
    name = "qh3-1"
    description = f"qh3 {version} (PyPI), interop/programs/qh3_peer.py"
