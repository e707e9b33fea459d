"""Run a one-connection client once per URL of REQUESTS, or twice (stdlib only).

The runner's multiconnect test case (handshakeloss) wants a new connection per
file. Clients that fetch all their URLs over one connection (aioquic's
http3_client.py, ngtcp2's gtlsclient) get it by being run once per URL:

    python -m interop.programs.each_url CLIENT ARGS...   # each URL is appended in turn

resumption and zerortt want the first file over one connection and the rest
over a second one that resumes the first's session: `--split` runs the client
with the first URL, then with the rest, and `--second=ARG` (repeatable) adds
ARG to the second run only (a client's "use 0-RTT" option, say). The client
keeps its session ticket in a file both runs name:

    python -m interop.programs.each_url --split --second=--zero-rtt -- CLIENT ARGS...

Exits with the first failing run's status, else 0.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .contract import EXIT_FAILED, EXIT_OK

RUN_TIMEOUT_S = 60.0  # one connection; the case's own timeout bounds the whole loop
USAGE = "usage: python -m interop.programs.each_url [--split [--second=ARG]... --] CLIENT ARGS..."
SECOND = "--second="


def runs(argv: list[str], urls: list[str]) -> list[list[str]]:
    """The command lines to run in turn; ValueError on bad usage."""
    if argv[:1] != ["--split"]:
        if not argv:
            raise ValueError(USAGE)
        return [[*argv, url] for url in urls]
    if "--" not in argv:
        raise ValueError(USAGE)
    options, client = argv[1 : argv.index("--")], argv[argv.index("--") + 1 :]
    unknown = [o for o in options if not o.startswith(SECOND)]
    if unknown or not client:
        raise ValueError(f"{USAGE} (got {' '.join(unknown) or 'no client'})")
    if len(urls) < 2:
        raise ValueError(f"--split needs at least 2 URLs in REQUESTS, got {len(urls)}")
    second = [o.removeprefix(SECOND) for o in options]
    return [[*client, urls[0]], [*client, *second, *urls[1:]]]


def main(argv: list[str]) -> int:
    try:
        commands = runs(argv, os.environ.get("REQUESTS", "").split())
    except ValueError as exc:
        print(f"each_url: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for command in commands:
        try:
            status = subprocess.run(command, timeout=RUN_TIMEOUT_S, check=False).returncode
        except subprocess.TimeoutExpired:
            print(f"each_url: {command[-1]} took more than {RUN_TIMEOUT_S:.0f} s", file=sys.stderr)
            return EXIT_FAILED
        if status != EXIT_OK:
            print(f"each_url: {command[-1]} failed with status {status}", file=sys.stderr)
            return status
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
