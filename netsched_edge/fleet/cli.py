"""`python -m netsched_edge.fleet` (to become `netsched-edge fleet`): the fleet's
state in etcd, for an operator.

    put-config FILE   check an edge config file, then make it the fleet's config
    get-config        print the fleet's config (TOML)
    members           live members, their server IDs, addresses, lease and config
                      status; server IDs held for dead hosts; the key rotator
    rotate-cids [--grace S]
                      a new QUIC-LB key under the next config rotation codepoint;
                      the current one stays routed S seconds (default 3600)
    cid-schedule EVERY|off [--grace S]
                      the key rotator rotates the QUIC-LB configuration every EVERY
                      seconds, each replaced one routed S seconds more (EVERY >= S)
    front --listen ADDR [--probe-interval S] [--panic-threshold SHARE]
                      the fleet's front: QUIC on ADDR routed to the members by
                      connection ID (netsched_edge/fleet/front.py), until SIGINT/SIGTERM;
                      workers that leave health probes unanswered are routed around,
                      unless fewer than SHARE of them answer (then all are routed to)

Exit status: 0 done, 1 a refused config or an etcd error, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
import os
import signal
import sys
import time
from pathlib import Path

from ..config import ConfigError, load_config
from .cid_config import FleetCidConfig, rotate_cid_config, set_cid_schedule
from .config_watch import ConfigStatus, config_statuses
from .election import leader
from .etcd import Etcd, EtcdError
from .front import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_BACKENDS, FleetFront, FrontSettings
from .health import HealthSettings
from .layout import Layout
from .membership import MemberInfo, held_server_ids, members
from .shared_keys import ROTATOR_ROLE

DEFAULT_ETCD = "http://127.0.0.1:2379"
DEFAULT_CID_GRACE_S = 3600


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netsched-edge fleet", description="The edge fleet's state in etcd."
    )
    parser.add_argument(
        "--etcd",
        default=os.environ.get("NETSCHED_ETCD", DEFAULT_ETCD),
        help="etcd client URLs, comma-separated (default: $NETSCHED_ETCD, else %(default)s)",
    )
    parser.add_argument("--prefix", default=Layout().prefix, help="the fleet's etcd key prefix")
    commands = parser.add_subparsers(dest="command", required=True)
    put = commands.add_parser("put-config", help="check a config file, then put it in etcd")
    put.add_argument("file", type=Path)
    commands.add_parser("get-config", help="print the fleet's config")
    commands.add_parser("members", help="members and their health")
    rotate = commands.add_parser("rotate-cids", help="rotate the QUIC-LB configuration's key")
    rotate.add_argument("--grace", type=int, default=DEFAULT_CID_GRACE_S,
                        help="seconds the current configuration stays routed; above the "
                        "hosts' idle timeout and restart time (default %(default)s)")  # fmt: skip
    schedule = commands.add_parser(
        "cid-schedule", help="rotate the QUIC-LB configuration on a schedule"
    )
    schedule.add_argument(
        "every", type=schedule_every, help="seconds between two rotations, or 'off' (by hand)"
    )
    schedule.add_argument("--grace", type=int, default=DEFAULT_CID_GRACE_S,
                          help="seconds a replaced configuration stays routed; at most EVERY "
                          "(default %(default)s)")  # fmt: skip
    front = commands.add_parser("front", help="run the fleet's front forwarder")
    # Also accepted after the command (`front --etcd URL --listen ADDR`).
    front.add_argument(
        "--etcd", default=argparse.SUPPRESS, help="etcd client URLs (as before the command)"
    )
    front.add_argument(
        "--listen", required=True, type=listen_address, help="HOST:PORT ([v6]:PORT) to serve"
    )
    front.add_argument("--max-backends", type=int, default=DEFAULT_MAX_BACKENDS,
                       help="worker ports over all members (default %(default)s)")  # fmt: skip
    front.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S,
                       help="seconds a client's flow outlives its last datagram; above the "
                       "edges' idle_timeout_s (default %(default)s)")  # fmt: skip
    health = HealthSettings()
    front.add_argument("--probe-interval", type=float, default=health.interval_s,
                       help="seconds between two health probes of a worker; one is down after "
                       f"{health.down_after} unanswered (default %(default)s)")  # fmt: skip
    front.add_argument("--panic-threshold", type=share, default=health.panic_threshold,
                       help="below this share of workers answering probes, every worker is "
                       "routed to; 0: never (default %(default)s)")  # fmt: skip
    return parser


def share(text: str) -> float:
    """A number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"not a share from 0 to 1: {text!r}")
    return value


def schedule_every(text: str) -> float | None:
    """Seconds (> 0), or 'off'."""
    if text == "off":
        return None
    try:
        every = float(text)
    except ValueError:
        every = 0.0
    if not 0 < every < float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds > 0 or 'off': {text!r}")
    return every


def listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT or [HOST]:PORT, numeric."""
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a numeric HOST:PORT: {text!r}") from None
    if not 0 <= number < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {text!r}")
    return host, number


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    try:
        layout = Layout(opts.prefix)
    except ValueError as exc:
        print(f"netsched-edge fleet: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(opts, layout))
    except EtcdError as exc:
        print(f"netsched-edge fleet: {exc}", file=sys.stderr)
        return 1


async def _run(opts: argparse.Namespace, layout: Layout) -> int:
    if opts.command == "front":
        return await _front(opts, layout)
    async with Etcd(opts.etcd) as etcd:
        if opts.command == "put-config":
            return await _put_config(etcd, layout, opts.file)
        if opts.command == "get-config":
            return await _get_config(etcd, layout)
        if opts.command == "rotate-cids":
            if opts.grace < 1:
                print("netsched-edge fleet: rotate-cids: --grace must be >= 1", file=sys.stderr)
                return 2
            configs = await rotate_cid_config(etcd, layout, opts.grace)
            assert configs.previous is not None
            print(f"QUIC-LB codepoint {configs.current.config_rotation} in force; "
                  f"{configs.previous.config_rotation} routed for {opts.grace} s more")  # fmt: skip
            return 0
        if opts.command == "cid-schedule":
            return await _cid_schedule(etcd, layout, opts.every, opts.grace)
        print(await render_members(etcd, layout), end="")
        return 0


async def _front(opts: argparse.Namespace, layout: Layout) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        settings = FrontSettings(
            opts.etcd,
            opts.listen,
            prefix=layout.prefix,
            max_backends=opts.max_backends,
            idle_timeout=opts.idle_timeout,
            health=HealthSettings(
                interval_s=opts.probe_interval, panic_threshold=opts.panic_threshold
            ),
        )
        async with FleetFront(settings) as front:
            host, port = front.local_address[:2]
            print(f"listening on {host}:{port}; {front.status().describe()}", flush=True)
            await stop.wait()
    except (OSError, ValueError) as exc:  # the address cannot be bound, a bad option
        print(f"netsched-edge fleet: front: {exc}", file=sys.stderr)
        return 1
    return 0


async def _cid_schedule(etcd: Etcd, layout: Layout, every: float | None, grace: int) -> int:
    try:
        made = await set_cid_schedule(etcd, layout, every, grace)
    except ValueError as exc:
        print(f"netsched-edge fleet: cid-schedule: {exc}", file=sys.stderr)
        return 2
    print(_cid_line(made))
    return 0


def _cid_line(config: FleetCidConfig) -> str:
    """The QUIC-LB configuration's codepoint and schedule, for an operator."""
    head = f"QUIC-LB codepoint {config.config_rotation}"
    due_in = config.due_in(time.time())
    if due_in is None:
        return f"{head}, rotated by hand (fleet rotate-cids)"
    return (
        f"{head}, rotated every {config.rotate_every_s:g} s by the key rotator (next in "
        f"{max(due_in, 0):.0f} s), each replaced one routed {config.grace_s} s more"
    )


async def _put_config(etcd: Etcd, layout: Layout, file: Path) -> int:
    """Only a config that loads here goes to etcd (each host checks it again: paths
    in it must exist there too)."""
    try:
        load_config(file)
    except ConfigError as exc:
        print(f"netsched-edge fleet: refused, etcd unchanged: {exc}", file=sys.stderr)
        return 1
    revision = await etcd.put(layout.config, file.read_bytes())
    print(f"{file}: the fleet's config at revision {revision} ({_where(etcd, layout)})")
    return 0


async def _get_config(etcd: Etcd, layout: Layout) -> int:
    kv = await etcd.get(layout.config)
    if kv is None:
        print(f"no config in etcd ({_where(etcd, layout)})", file=sys.stderr)
        return 1
    sys.stdout.write(kv.value.decode("utf-8", errors="replace"))
    return 0


def _where(etcd: Etcd, layout: Layout) -> str:
    return f"{etcd.endpoint}, {layout.config}"


async def render_members(etcd: Etcd, layout: Layout) -> str:
    """The `members` report: one line per live member, then held IDs and roles."""
    live = await members(etcd, layout)
    held = await held_server_ids(etcd, layout)
    statuses = await config_statuses(etcd, layout)
    config = await etcd.get(layout.config)
    current = 0 if config is None else config.mod_revision
    lines = [f"{'server ID':>9}  {'name':<16} {'address':<22} {'lease':>6}  config"]
    for info in live:
        ttl = await etcd.time_to_live(info.lease)
        lines.append(_member_line(info, ttl, _status_of(info.name, statuses), current))
    if not live:
        lines.append("(no live members)")
    for h in held:
        if not h.alive:
            lines.append(
                f"server ID {h.server_id} held for {h.holder} (gone):"
                f" free in {max(h.expires_in_s, 0)} s"
            )
    lines.append(f"key rotator: {await leader(etcd, layout, ROTATOR_ROLE) or '(none)'}")
    cids = await etcd.get(layout.quic_lb)
    if cids is not None:
        lines.append(_cid_line(FleetCidConfig.decode(cids.value, f"etcd:{cids.key}")))
    lines.append(f"config: {'none' if config is None else f'revision {current}'}")
    return "\n".join(lines) + "\n"


def _member_line(info: MemberInfo, ttl: int, status: ConfigStatus | None, current: int) -> str:
    """`lease`: seconds left before the member counts as dead (renewed every third)."""
    address = info.address + (f" :{','.join(map(str, info.ports))}" if info.ports else "")
    lease = "gone" if ttl < 0 else f"{ttl}s"
    return f"{info.server_id:>9}  {info.name:<16} {address:<22} {lease:>6}  " + _verdict(
        status, current
    )


def _status_of(name: str, statuses: dict[str, ConfigStatus]) -> ConfigStatus | None:
    """A member's verdict; a host of workers (fleet/pool.py) has one per worker, under
    NAME/INDEX: the first refusal, else the oldest revision applied."""
    if name in statuses:
        return statuses[name]
    workers = [status for key, status in sorted(statuses.items()) if key.startswith(f"{name}/")]
    refused = [status for status in workers if not status.applied]
    if refused:
        return refused[0]
    return min(workers, key=lambda status: status.revision, default=None)


def _verdict(status: ConfigStatus | None, current: int) -> str:
    if status is None:
        return "no verdict yet" if current else "-"
    if not status.applied:
        return f"REFUSED revision {status.revision}: {status.error}"
    if status.revision != current:
        return f"applied revision {status.revision}, behind {current}"
    return f"applied revision {status.revision}"
