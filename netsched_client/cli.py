"""`netsched`: talk to an edge from the shell.

    netsched get netsched://127.0.0.1:4433/www/big.bin -o big.bin --ca ca.pem
    netsched request 127.0.0.1:4433 api --data hello --deadline-ms 100 --urgency 1

`get URL` fetches like curl: the URL's first path segment names the service,
the rest (with the query) is the path the backend sees, sent as a GET (or
`-X METHOD`); the body streams to stdout or `-o FILE`, with a progress line
(rate, bytes per path) on stderr when stderr is a terminal or with
`--progress`. `request HOST:PORT SERVICE` sends one unary request with a body.
`-v` shows what the connection negotiated (ALPN, multipath and its paths,
FEC, resumption and 0-RTT) and the response's timings.

Every expected failure (bad URL or host, missing CA file, no answer, a
refused request, Ctrl-C) prints one line, `netsched: ...`, and exits with a
non-zero code: 2 for bad usage, 1 for a failed connection or request, 130
after Ctrl-C.

Runs on uvloop (`--loop uvloop`, the default) when it is installed, else on
asyncio; `run_on_loop` and `add_loop_option` are shared with `netsched-edge`.
This module imports next to nothing at the top, so that a Ctrl-C at any
point of start-up is reported in one line; the commands are in
`cli_commands`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import argparse
    import asyncio
    from collections.abc import Callable, Coroutine

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
    import asyncio
    import logging

    if name not in LOOPS:
        raise ValueError(f"loop must be one of {', '.join(LOOPS)}, got {name!r}")
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        logging.getLogger("netsched.cli").warning(
            "uvloop is not installed: running on the asyncio event loop"
        )
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_on_loop(coro: Coroutine[Any, Any, T], loop: str) -> T:
    """`asyncio.run(coro)` on the event loop named by `--loop`."""
    import asyncio

    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None) -> int:
    """The `netsched` command; its exit code."""
    try:
        from .cli_commands import run

        return run(argv)
    except KeyboardInterrupt:
        print("netsched: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
