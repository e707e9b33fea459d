"""`netsched-edge`: run the edge from a config file, check a config, or run the demo.

netsched-edge [serve] --config edge.toml  serve; SIGTERM/SIGINT drain, SIGHUP reloads
netsched-edge check-config edge.toml      validate and exit (0 ok, 2 error)
netsched-edge generate-keys FILE          write a keys file to share among hosts (`keys_file`)
netsched-edge demo [--duration 10]        self-contained demo with built-in backends
netsched-edge --version
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import sys

from netsched_client.cli import add_loop_option, run_on_loop

from .config import ConfigError, EdgeConfig
from .keys import EdgeKeys, KeysError
from .lifecycle import Lifecycle, read_config
from .server import EdgeServer


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="netsched-edge",
        description="Run the NetSched edge (serve is the default command).",
    )
    parser.add_argument("--version", action="version", version=f"netsched-edge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve from a config file (the default)")
    serve.add_argument("--config", "-c", required=True, help="edge TOML config file")
    serve.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT + QUIC-LB)"
    )
    add_loop_option(serve)
    serve.add_argument("--verbose", "-v", action="store_true")
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")
    keys = commands.add_parser("generate-keys", help="write a keys file (`keys_file`)")
    keys.add_argument("file")
    _add_demo(commands.add_parser("demo", help="self-contained demo with built-in backends"))
    return parser


def _add_demo(parser: argparse.ArgumentParser) -> None:
    from .demo import SETUP_KEYS

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


COMMANDS = ("serve", "check-config", "generate-keys", "demo")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0].startswith("-") and args[0] not in ("-h", "--help", "--version"):
        args.insert(0, "serve")  # `netsched-edge --config FILE`: serve, as always
    opts = _parser().parse_args(args)
    if opts.command is None:
        _parser().print_usage(sys.stderr)
        return 2
    if opts.command == "demo":
        return _demo(opts)
    if opts.command == "generate-keys":
        try:
            EdgeKeys.generate().write(opts.file)
        except OSError as exc:
            print(f"netsched-edge: {opts.file}: {exc.strerror}", file=sys.stderr)
            return 2
        return 0
    if opts.command == "check-config":
        config = _load(opts.file)
        if config is None:
            return 2
        print(f"{opts.file}: ok ({len(config.services)} services)")
        return 0
    _logging(opts.verbose)
    config = _load(opts.config)
    if config is None:
        return 2
    _raise_file_limit()
    if opts.workers > 1:
        return _serve_workers(config, opts.config, opts.workers)
    return run_on_loop(_serve(config, opts.config), opts.loop)


def _demo(opts: argparse.Namespace) -> int:
    from .demo import run_demo

    _logging(opts.verbose)
    only = ["wifi"] if opts.single_path else opts.only
    return run_on_loop(
        run_demo(duration=opts.duration, rate=opts.rate, seed=opts.seed, only=only), opts.loop
    )


def _raise_file_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one (nginx's worker_rlimit_nofile, Go's default):
    connections, backend sockets and UDP flows each take a descriptor, and the flow cap
    derives from this limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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
