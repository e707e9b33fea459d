"""aioquic's own test suite, run against `NetSchedConnection` (see test_aioquic_compat.py).

This module has two roles:

- in our test session: `fetch_sdist_tests` downloads aioquic's sdist once and
  extracts its `tests/` folder; `start_suite` runs chosen files of it in a
  pytest subprocess and `SuiteRun.wait` returns each test's outcome;
- inside that subprocess, loaded with `-p aioquic_suite`: the pytest hooks at
  the bottom put a `NetSchedConnection` subclass in place of `QuicConnection`
  in aioquic's test modules (their harness looks the name up in the module's
  globals at call time) and write the outcomes to a JSON file.

aioquic's tests are a test input fetched at test time, never code of ours.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import pytest

AIOQUIC_VERSION: Final = "1.7.2"
# sha256 of aioquic-1.7.2.tar.gz as served by PyPI: we execute its tests, so
# check we got exactly that file.
SDIST_SHA256: Final = "4def7cb0a692dc12c995cc397a93f41b78cc30b7bf078769c3a3bb1ba9dcf362"
DOWNLOAD_TIMEOUT_S: Final = 180.0
SUITE_TIMEOUT_S: Final = 300.0  # one mode's run; ~30 s on an idle 2-core machine
FAILURE_TEXT_LIMIT: Final = 2000

Mode = Literal["off", "on"]
MODES: Final[tuple[Mode, ...]] = ("off", "on")
MODE_ENV: Final = "NETSCHED_AIOQUIC_MODE"
REPORT_ENV: Final = "NETSCHED_AIOQUIC_REPORT"
# The test modules whose `QuicConnection` global becomes ours (test_h3 builds its
# real connections through test_connection's harness).
PATCHED_MODULES: Final = ("tests.test_connection", "tests.test_h3")
PYTEST_INI: Final = "[pytest]\n"  # stops pytest from finding our pyproject.toml above


class SdistUnavailable(Exception):
    """The sdist could not be downloaded (no network, PyPI down)."""


# -- parent side: download ---------------------------------------------------------


def fetch_sdist_tests(cache_dir: Path) -> Path:
    """The root of an extracted `aioquic-<AIOQUIC_VERSION>/` holding its `tests/` folder.

    Cached in `cache_dir`; a concurrent session racing us just finds it there.
    """
    version = AIOQUIC_VERSION
    root = cache_dir / f"aioquic-{version}"
    if (root / "tests" / "test_connection.py").is_file():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        sdist = _download(Path(tmp), version)
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise AssertionError(f"{sdist.name}: sha256 {digest}, expected {SDIST_SHA256}")
        staged = Path(tmp) / "staged"
        _extract_tests(sdist, staged, version)
        (staged / "pytest.ini").write_text(PYTEST_INI)
        try:
            staged.rename(root)
        except OSError:
            if not root.is_dir():
                raise
    return root


def _download(into: Path, version: str) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--disable-pip-version-check",
        "--dest",
        str(into),
        f"aioquic=={version}",
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SdistUnavailable(f"pip download timed out after {exc.timeout:.0f} s") from exc
    found = sorted(into.glob(f"aioquic-{version}.tar.gz"))
    if done.returncode != 0 or not found:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SdistUnavailable(f"pip download aioquic=={version} failed: {tail}")
    return found[0]


def _extract_tests(sdist: Path, into: Path, version: str) -> None:
    """Extract only `aioquic-<version>/tests/` (the package itself comes from site-packages)."""
    prefix = f"aioquic-{version}/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix + "tests/")]
        if not members:
            raise AssertionError(f"{sdist.name} has no {prefix}tests/ folder")
        archive.extractall(into.parent / "raw", members=members, filter="data")
    shutil.move(into.parent / "raw" / prefix, into)


# -- parent side: running ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    outcome: str  # "passed", "failed", "skipped" or "error" (collection)
    message: str  # why it failed or was skipped; empty when it passed


@dataclass(frozen=True, slots=True)
class SuiteResult:
    mode: Mode
    tests: dict[str, Outcome]  # by aioquic test id, e.g. "test_connection.py::Class::test_x"
    substituted: int  # connections of our class the suite built: 0 means it tested aioquic
    exit_status: int


@dataclass(slots=True)
class SuiteRun:
    mode: Mode
    process: subprocess.Popen[str]
    report: Path

    def wait(self) -> SuiteResult:
        try:
            output, _ = self.process.communicate(timeout=SUITE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"aioquic suite ({self.mode}) ran over {SUITE_TIMEOUT_S:.0f} s"
            ) from None
        if not self.report.is_file():
            raise AssertionError(f"aioquic suite ({self.mode}) wrote no report:\n{output[-4000:]}")
        data = json.loads(self.report.read_text())
        return SuiteResult(
            mode=self.mode,
            tests={name: Outcome(**value) for name, value in data["tests"].items()},
            substituted=data["substituted"],
            exit_status=self.process.returncode,
        )

    def stop(self) -> None:
        """Kill the run if it is still going (after another run failed)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def start_suite(root: Path, mode: Mode, files: Sequence[str], report: Path) -> SuiteRun:
    """Start aioquic's tests `files` (names under `tests/`) against our class, in `mode`."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    env[MODE_ENV] = mode
    env[REPORT_ENV] = str(report)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "aioquic_suite",
        "-p",
        "no:cacheprovider",
        "-c",
        str(root / "pytest.ini"),
        "--rootdir",
        str(root),
        "--confcutdir",
        str(root),
        "-o",
        "timeout=60",
        *(f"tests/{name}" for name in files),
    ]
    process = subprocess.Popen(
        command,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return SuiteRun(mode, process, report)


# -- subprocess side: the pytest plugin -------------------------------------------
# Active only when this module is loaded with `-p aioquic_suite` and MODE_ENV is set.


@dataclass(slots=True)
class _Recorder:
    """What the subprocess reports back: each test's outcome, and our connections built."""

    outcomes: dict[str, dict[str, str]] = field(default_factory=dict)
    substituted: int = 0

    def record(self, test_id: str, outcome: str, message: str) -> None:
        # A test's subtests report under its id: any failure fails the test.
        entry = self.outcomes.setdefault(test_id, {"outcome": "passed", "message": ""})
        if _SEVERITY[outcome] > _SEVERITY[entry["outcome"]]:
            entry.update(outcome=outcome, message=message)


_SEVERITY: Final = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
_recorder = _Recorder()


def _substitute_class(mode: Mode) -> type[Any]:
    """`NetSchedConnection` with multipath off (max_path_id=None) or as the project uses it."""
    from netsched_client.proto.connection import NetSchedConnection
    from netsched_client.proto.multipath.connection import DEFAULT_MAX_PATH_ID

    max_path_id = None if mode == "off" else DEFAULT_MAX_PATH_ID

    class SuiteConnection(NetSchedConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("max_path_id", max_path_id)
            if mode == "off":
                kwargs.setdefault("pmtud", None)  # aioquic's tests count datagrams: no probes
            super().__init__(*args, **kwargs)
            _recorder.substituted += 1

    return SuiteConnection


def _active_mode() -> Mode | None:
    mode = os.environ.get(MODE_ENV)
    if mode is None:
        return None
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV} must be one of {MODES}, got {mode!r}")
    return mode


def pytest_configure(config: pytest.Config) -> None:
    if _active_mode() is None:
        return
    # The harness loads the same RSA key for every test and cryptography checks
    # an RSA key on each load (~0.1 s, most of the suite's time); key objects are
    # immutable, so each is loaded once. Our code never loads keys.
    from aioquic.quic import configuration

    configuration.load_pem_private_key = functools.cache(configuration.load_pem_private_key)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    mode = _active_mode()
    if mode is None:
        return
    substitute = _substitute_class(mode)
    for name in PATCHED_MODULES:
        module = sys.modules.get(name)
        if module is not None:
            module.QuicConnection = substitute  # type: ignore[attr-defined]


def _test_id(nodeid: str) -> str:
    return nodeid.removeprefix("tests/")


def _failure_text(report: pytest.TestReport | pytest.CollectReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return text[:FAILURE_TEXT_LIMIT]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _active_mode() is None:
        return
    message = "" if report.passed else _failure_text(report)
    _recorder.record(_test_id(report.nodeid), report.outcome, message)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if _active_mode() is not None and report.failed:
        _recorder.record(_test_id(report.nodeid), "error", _failure_text(report))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    report = os.environ.get(REPORT_ENV)
    if _active_mode() is None or report is None:
        return
    data = {"substituted": _recorder.substituted, "tests": _recorder.outcomes}
    Path(report).write_text(json.dumps(data))
