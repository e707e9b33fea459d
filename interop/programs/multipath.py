"""The multipath test cases' part of the endpoint contract (standard library only).

The runner's contract has no multipath cases; ours add, for the client:
- LOCALS: the client's local addresses, space-separated (loopback IPv4), the
  first for the handshake and each further one a path of its own;
- reports: a client prints JSON objects, one a line, each with an "event" key.
  The runner keeps them for the pass rules (`parse_reports`). mp-abandon reads
  `{"event": "abandon", "local": <ip of the abandoned path>, "at": <bytes>}`.
The first path (LOCALS[0]) is the one mp-abandon abandons, once ABANDON_AT
bytes of the responses have arrived, so the rest of the transfer must move.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from typing import Any

from .contract import ContractError

LOCALS = "LOCALS"
MULTIPATH_CASES = ("mp-handshake", "mp-transfer", "mp-failover", "mp-abandon")
ABANDON_AT = 1 << 20
MAX_LOCALS = 8
MAX_REPORTS = 1000  # a client reports a handful of steps; more is a runaway program
MAX_REPORT_LINE = 64 * 1024


def local_addresses(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """LOCALS as a tuple of loopback IPv4 addresses (empty when unset)."""
    env = os.environ if environ is None else environ
    addresses = tuple(env.get(LOCALS, "").split())
    if len(addresses) > MAX_LOCALS:
        raise ContractError(f"{LOCALS}: at most {MAX_LOCALS} addresses, got {len(addresses)}")
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise ContractError(f"{LOCALS}: {address!r} is not an IP address") from None
        if ip.version != 4 or not ip.is_loopback:
            raise ContractError(f"{LOCALS}: {address!r} is not a loopback IPv4 address")
    return addresses


def report(event: str, **fields: Any) -> None:
    """One report line on stdout (flushed: the runner may stop the program at any time)."""
    print(json.dumps({"event": event, **fields}), flush=True)


def parse_reports(text: str) -> list[dict[str, Any]]:
    """The report lines of a program's output, in order; other lines are skipped."""
    found: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line.startswith('{"event"') or len(line) > MAX_REPORT_LINE:
            continue
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("event"), str):
            found.append(item)
            if len(found) == MAX_REPORTS:
                break
    return found
