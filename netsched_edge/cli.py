"""`netsched-edge`: run the edge from a config file, check a config, or run the demo.

netsched-edge --config edge.toml      serve; SIGTERM/SIGINT drain and exit, SIGHUP reloads
netsched-edge check-config edge.toml  validate and exit (0 ok, 2 error)
netsched-edge generate-keys FILE      write a keys file to share among hosts (`keys_file`)
netsched-edge demo [--duration 10]    self-contained demo with built-in backends
"""

from __future__ import annotations

import argparse
import logging
import sys

from netsched_client.cli import add_loop_option, run_on_loop

from .config import ConfigError, EdgeConfig
from .keys import EdgeKeys, KeysError
from .lifecycle import Lifecycle, read_config
from .server import EdgeServer


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="netsched-edge", description="Run the NetSched edge.")
    parser.add_argument("--config", "-c", required=True, help="edge TOML config file")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT + QUIC-LB)"
    )
    add_loop_option(parser)
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def _demo_parser() -> argparse.ArgumentParser:
    from .demo import SETUP_KEYS

    parser = argparse.ArgumentParser(
        prog="netsched-edge demo", description="Run the built-in demo."
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of workload per setup")
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--only",
        action="append",
        choices=SETUP_KEYS,
        help="run only this setup (repeatable; default: all three, compared): "
        "wifi = Wi-Fi alone, lowest-rtt / deadline = both paths with that scheduler",
    )
    parser.add_argument("--single-path", action="store_true", help="same as --only wifi")
    add_loop_option(parser)
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


async def _serve(config: EdgeConfig, config_path: str) -> int:
    """Serve until SIGTERM/SIGINT (then drain); SIGHUP reloads `config_path`."""
    lifecycle = Lifecycle(config_path)
    lifecycle.install()  # before anything else: no signal may find the default action
    server = EdgeServer(config)
    try:
        try:
            await server.start()
        except (OSError, KeysError) as exc:
            print(f"netsched-edge: cannot start: {exc}", file=sys.stderr)
            return 1
        print(
            f"netsched-edge listening on {config.host}:{server.port} (from {config.source})",
            flush=True,
        )
        await lifecycle.serve(server)
    finally:
        await server.close()  # also removes a generated key and CA
        lifecycle.uninstall()
    return 0


def _load(path: str) -> EdgeConfig | None:
    """The config at `path` with its keys file checked; None (the error printed) if bad."""
    try:
        return read_config(path)
    except (ConfigError, KeysError) as exc:
        print(f"netsched-edge: config error: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["demo"]:
        from .demo import run_demo

        opts = _demo_parser().parse_args(args[1:])
        _logging(opts.verbose)
        only = ["wifi"] if opts.single_path else opts.only
        return run_on_loop(
            run_demo(duration=opts.duration, rate=opts.rate, seed=opts.seed, only=only),
            opts.loop,
        )
    if args[:1] == ["generate-keys"]:
        if len(args) != 2:
            print("usage: netsched-edge generate-keys FILE", file=sys.stderr)
            return 2
        try:
            EdgeKeys.generate().write(args[1])
        except OSError as exc:
            print(f"netsched-edge: {args[1]}: {exc.strerror}", file=sys.stderr)
            return 2
        return 0
    if args[:1] == ["check-config"]:
        if len(args) != 2:
            print("usage: netsched-edge check-config FILE", file=sys.stderr)
            return 2
        config = _load(args[1])
        if config is None:
            return 2
        print(f"{args[1]}: ok ({len(config.services)} services)")
        return 0
    opts = _serve_parser().parse_args(args)
    _logging(opts.verbose)
    config = _load(opts.config)
    if config is None:
        return 2
    if opts.workers > 1:
        return _serve_workers(config, opts.config, opts.workers)
    return run_on_loop(_serve(config, opts.config), opts.loop)


def _serve_workers(config: EdgeConfig, config_path: str, count: int) -> int:
    from .workers import WorkerError, WorkerPool, supervise

    pool = WorkerPool(config, count, config_path)

    def announce(port: int) -> None:
        print(f"netsched-edge listening on {config.host}:{port} ({count} workers)", flush=True)

    try:
        return supervise(pool, announce)
    except WorkerError as exc:
        print(f"netsched-edge: cannot start: {exc}", file=sys.stderr)
        return 1


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


if __name__ == "__main__":
    sys.exit(main())
