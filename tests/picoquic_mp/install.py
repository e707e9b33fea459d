"""A Python 3.12 venv with aiopquic 0.6.1, made once and reused (runs in the test process)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

AIOPQUIC = "aiopquic==0.6.1"
PYENV_VERSION = "3.12.1"  # the interpreter aiopquic 0.6.1 was measured with (DESIGN.md §4)
PYTHON_ENV = "INTEROP_PYTHON312"  # an explicit interpreter, as interop/peers/picoquic.py takes
INSTALL_TIMEOUT_S = 300
PROBE_TIMEOUT_S = 30
READY_MARK = ".aiopquic-0.6.1-ready"


class Unavailable(Exception):
    """Why the picoquic peer cannot run on this machine (the tests skip with it)."""


def ensure_venv(venv: Path) -> Path:
    """The venv's interpreter, creating the venv and installing aiopquic when not done yet."""
    python = venv / "bin" / "python"
    if (venv / READY_MARK).exists() and python.exists():
        return python
    _run([find_python312(), "-m", "venv", "--clear", str(venv)], "creating the venv")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", AIOPQUIC]
    _run(pip, f"pip install {AIOPQUIC}")
    _run([str(python), "-c", "import aiopquic._binding._transport"], "importing aiopquic")
    (venv / READY_MARK).touch()
    return python


def find_python312() -> str:
    """$INTEROP_PYTHON312, else `PYENV_VERSION=3.12.1 python3.12`, else any 3.12+ pyenv has."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [os.environ.get(PYTHON_ENV, ""), shutil.which("python3.12") or ""]
    candidates += sorted(glob.glob(f"{root}/versions/3.12*/bin/python3"), reverse=True)
    candidates += sorted(glob.glob(f"{root}/versions/3.1[3-9]*/bin/python3"), reverse=True)
    for candidate in filter(None, candidates):
        if _is_python312(candidate):
            return candidate
    raise Unavailable(
        f"aiopquic 0.6.1 needs Python >= 3.12 and none was found (set {PYTHON_ENV}, "
        f"or `pyenv install {PYENV_VERSION}`)"
    )


def _environment() -> dict[str, str]:
    # pyenv's python3.12 shim picks the version from here.
    return {**os.environ, "PYENV_VERSION": PYENV_VERSION}


def _is_python312(interpreter: str) -> bool:
    try:
        done = subprocess.run(
            [interpreter, "-c", "import sys; print(sys.version_info >= (3, 12))"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
            env=_environment(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.stdout.strip() == "True"


def _run(argv: list[str], what: str) -> None:
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
            env=_environment(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise Unavailable(f"{what} failed (exit {done.returncode}): {tail}")
