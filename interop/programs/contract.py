"""The interop runner's endpoint contract, as environment variables (stdlib only).

Runner variables: ROLE (client|server), TESTCASE, REQUESTS (space-separated
URLs), DOWNLOADS (client output folder), WWW (server root), CERTS (folder with
cert.pem — leaf then CA — priv.key and ca.pem), SSLKEYLOGFILE, QLOGDIR.
Ours, since there is no Docker network to fix them: HOST and PORT (where a
server listens) and ALPN (hq-interop or h3: the suite picks h3 for peers that
speak only HTTP/3, not just for the http3 case).

Imported by programs running under Python 3.11 and 3.12 in other stacks'
virtual environments, so it must import nothing outside the standard library.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNSUPPORTED = 127  # the runner's "this endpoint does not implement the test case"
ALPNS = ("hq-interop", "h3")
MAX_REQUESTS = 10_000


class ContractError(ValueError):
    """An environment variable is missing or malformed."""


@dataclass(frozen=True, slots=True)
class Contract:
    role: str
    testcase: str
    alpn: str
    host: str
    port: int
    requests: tuple[str, ...]
    downloads: Path | None
    www: Path | None
    certs: Path | None
    keylog: str | None
    qlog_dir: str | None

    @property
    def certificate(self) -> Path:
        return self._cert_file("cert.pem")

    @property
    def private_key(self) -> Path:
        return self._cert_file("priv.key")

    @property
    def ca_certificate(self) -> Path:
        return self._cert_file("ca.pem")

    def _cert_file(self, name: str) -> Path:
        if self.certs is None:
            raise ContractError("CERTS is not set")
        return self.certs / name

    def download_path(self, url: str) -> Path:
        """Where the file of `url` goes: DOWNLOADS/<last path segment>, as the runner checks."""
        if self.downloads is None:
            raise ContractError("DOWNLOADS is not set")
        name = os.path.basename(urlsplit(url).path)
        if name in ("", ".", ".."):
            raise ContractError(f"REQUESTS: URL {url!r} names no file")
        return self.downloads / name

    def www_file(self, path: str) -> Path | None:
        """The file under WWW that a request path names, or None (missing or outside WWW)."""
        if self.www is None:
            raise ContractError("WWW is not set")
        root = self.www.resolve()
        candidate = (root / path.lstrip("/")).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
        return candidate


def from_environment(environ: Mapping[str, str] | None = None) -> Contract:
    env = os.environ if environ is None else environ
    role = _choice(env, "ROLE", ("client", "server"))
    requests = tuple(env.get("REQUESTS", "").split())
    if role == "client" and not requests:
        raise ContractError("REQUESTS: a client needs at least one URL")
    if len(requests) > MAX_REQUESTS:
        raise ContractError(f"REQUESTS: at most {MAX_REQUESTS} URLs, got {len(requests)}")
    return Contract(
        role=role,
        testcase=_required(env, "TESTCASE"),
        alpn=_choice(env, "ALPN", ALPNS),
        host=env.get("HOST", "127.0.0.1"),
        port=_port(env),
        requests=requests,
        downloads=_path(env, "DOWNLOADS"),
        www=_path(env, "WWW"),
        certs=_path(env, "CERTS"),
        keylog=env.get("SSLKEYLOGFILE") or None,
        qlog_dir=env.get("QLOGDIR") or None,
    )


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise ContractError(f"{name} is not set")
    return value


def _choice(env: Mapping[str, str], name: str, options: tuple[str, ...]) -> str:
    value = _required(env, name)
    if value not in options:
        raise ContractError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value


def _port(env: Mapping[str, str]) -> int:
    text = env.get("PORT", "443")
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ContractError(f"PORT must be 1..65535, got {text!r}")
    return int(text)


def _path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name)
    return Path(value) if value else None


def url_target(url: str) -> tuple[str, int, str]:
    """(host, port, path) of an https URL from REQUESTS."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ContractError(f"REQUESTS: expected an https URL, got {url!r}")
    return parts.hostname, parts.port or 443, parts.path or "/"


def unsupported(contract: Contract, why: str) -> int:
    print(f"test case {contract.testcase!r} unsupported: {why}", file=sys.stderr)
    return EXIT_UNSUPPORTED


def run_endpoint(name: str, body: Callable[[Contract], int]) -> int:
    """An endpoint program's main: read the contract, make the downloads folder, run
    `body`; any failure is a failed test, said on stderr with `name` in front."""
    try:
        contract = from_environment()
        if contract.downloads is not None:
            Path(contract.downloads).mkdir(parents=True, exist_ok=True)
        return body(contract)
    except ContractError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # any failure is a failed test; say what it was
        print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
