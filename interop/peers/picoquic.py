"""picoquic 1.1.53 as bundled by aiopquic 0.6.1 (PyPI, Python >= 3.12).

Its endpoint is programs/picoquic_peer.py: aiopquic's asyncio API, except for
the mp-* cases, which drive picoquic's C API through ctypes (programs/picoquic_mp).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

from ..cases import HQ, Feature
from ..procs import Launch
from .base import Job, Log, Peer, SetupError, make_venv, pip_install, python_program

VERSION = "0.6.1"
PYTHON_ENV = "INTEROP_PYTHON312"


class Picoquic(Peer):
    name = "picoquic"
    description = f"picoquic via aiopquic {VERSION} (PyPI), interop/programs/picoquic_peer.py"
    client_alpns = (HQ,)
    server_alpns = (HQ,)
    client_features = frozenset(
        {
            Feature.CHACHA20,
            Feature.KEY_UPDATE,
            Feature.V2,
            Feature.MULTIPATH,
            Feature.IPV6,
            Feature.RESUMPTION,
            Feature.ZERO_RTT,
        }
    )
    # Multipath through picoquic's C API (programs/picoquic_mp), not aiopquic's.
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

    def install(self, log: Log) -> None:
        python = make_venv(self.home / "venv", find_python312(), log)
        pip_install(python, [f"aiopquic=={VERSION}"], log)
        self.mark_ready()

    def launch(self, job: Job) -> Launch:
        return python_program(self.home / "venv" / "bin" / "python", "picoquic_peer", job)


def find_python312() -> str:
    """A Python >= 3.12 interpreter: $INTEROP_PYTHON312, else 3.12 (pyenv or PATH), else newer."""
    candidates = [os.environ.get(PYTHON_ENV, "")]
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    # 3.12 first: the version aiopquic 0.6.1 was measured with here (DESIGN.md §4).
    candidates += sorted(glob.glob(f"{root}/versions/3.12*/bin/python3"), reverse=True)
    candidates += [shutil.which("python3.12") or ""]
    candidates += sorted(glob.glob(f"{root}/versions/3.1[3-9]*/bin/python3"), reverse=True)
    for candidate in filter(None, candidates):
        if _is_python312(candidate):
            return candidate
    raise SetupError(
        f"aiopquic needs Python >= 3.12: none found (set {PYTHON_ENV}, "
        "or `pyenv install 3.12`, or apt-get install python3.12)"
    )


def _is_python312(interpreter: str) -> bool:
    try:
        done = subprocess.run(
            [interpreter, "-c", "import sys; print(sys.version_info >= (3, 12))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.stdout.strip() == "True"
