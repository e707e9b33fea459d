"""A fleet host of N workers for tests, as `serve --workers N --fleet-etcd` would run it
(cli.py refuses that pair today: netsched_edge.fleet.pool is the code it would call).

    python fleet_workers_process.py CONFIG ETCD PREFIX NAME WORKERS

Prints "listening on HOST:PORT" once the workers serve; exits with serve_fleet_workers'
status. Leases of 1 s, an ID hold of 2 s (tests).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from netsched_edge.fleet.host import FleetSettings
from netsched_edge.fleet.membership import MembershipSettings
from netsched_edge.fleet.pool import serve_fleet_workers
from netsched_edge.lifecycle import read_config


def main(path: str, etcd: str, prefix: str, name: str, workers: str) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    config = read_config(path)
    settings = FleetSettings(
        etcd, name, config.host, Path(path).parent, prefix=prefix,
        membership=MembershipSettings(ttl_s=1, idle_hold_s=2),
    )  # fmt: skip
    return serve_fleet_workers(
        config,
        path,
        int(workers),
        settings,
        lambda port: print(f"listening on {config.host}:{port}", flush=True),
    )


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
