"""`netsched`: send one request to an edge and print the response.

netsched request 127.0.0.1:4433 api --data hello --deadline-ms 100 --urgency 1

Runs on uvloop (`--loop uvloop`, the default) when it is installed, else on
asyncio; `run_on_loop` and `add_loop_option` are shared with `netsched-edge`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from . import SLO, NetSchedError, connect

log = logging.getLogger("netsched.cli")

LOOPS = ("uvloop", "asyncio")
T = TypeVar("T")


def add_loop_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="uvloop",
        help="event loop (default: uvloop; asyncio when uvloop is not installed)",
    )


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory of the named event loop; asyncio's, with one warning, without uvloop."""
    if name not in LOOPS:
        raise ValueError(f"loop must be one of {', '.join(LOOPS)}, got {name!r}")
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed: running on the asyncio event loop")
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_on_loop(coro: Coroutine[Any, Any, T], loop: str) -> T:
    """`asyncio.run(coro)` on the event loop named by `--loop`."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(coro)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="netsched", description="NetSched client.")
    sub = parser.add_subparsers(dest="command", required=True)
    req = sub.add_parser("request", help="send one request")
    req.add_argument("edge", help="HOST:PORT of the edge")
    req.add_argument("service")
    req.add_argument("--data", default="", help="request body (text)")
    req.add_argument("--deadline-ms", type=int)
    req.add_argument("--urgency", type=int)
    req.add_argument("--affinity")
    req.add_argument("--idempotent", action="store_true", default=None)
    req.add_argument("--ca", help="CA certificate file to trust")
    req.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    add_loop_option(req)
    return parser


def _split(edge: str) -> tuple[str, int]:
    host, sep, port = edge.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"netsched: edge must be HOST:PORT (got {edge!r})")
    return host.strip("[]"), int(port)


async def _request(opts: argparse.Namespace) -> int:
    host, port = _split(opts.edge)
    slo = SLO(
        deadline_ms=opts.deadline_ms,
        urgency=opts.urgency,
        affinity=opts.affinity,
        idempotent=opts.idempotent,
    )
    async with connect(host, port, ca_file=opts.ca, verify=not opts.insecure) as session:
        response = await session.request(opts.service, opts.data.encode(), slo=slo)
    print(
        f"status {response.status} from {response.backend} in {response.latency_ms:.1f} ms",
        file=sys.stderr,
    )
    sys.stdout.buffer.write(response.body)
    return 0


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    try:
        return run_on_loop(_request(opts), opts.loop)
    except NetSchedError as exc:
        print(f"netsched: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
