"""Run a one-connection client once per URL of REQUESTS, in order (stdlib only).

The runner's multiconnect test case (handshakeloss) wants a new connection per
file. Clients that fetch all their URLs over one connection (aioquic's
http3_client.py, ngtcp2's gtlsclient) get it by being run once per URL:

    python -m interop.programs.each_url CLIENT ARGS...   # each URL is appended in turn

Exits with the first failing run's status, else 0.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .contract import EXIT_FAILED, EXIT_OK

RUN_TIMEOUT_S = 60.0  # one connection; the case's own timeout bounds the whole loop


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m interop.programs.each_url CLIENT ARGS...", file=sys.stderr)
        return EXIT_FAILED
    for url in os.environ.get("REQUESTS", "").split():
        try:
            status = subprocess.run([*argv, url], timeout=RUN_TIMEOUT_S, check=False).returncode
        except subprocess.TimeoutExpired:
            print(f"each_url: {url} took more than {RUN_TIMEOUT_S:.0f} s", file=sys.stderr)
            return EXIT_FAILED
        if status != EXIT_OK:
            print(f"each_url: {url} failed with status {status}", file=sys.stderr)
            return status
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
