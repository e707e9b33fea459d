"""`netsched-edge`: run the edge from a config file, check a config, or run the demo.

netsched-edge [serve] --config edge.toml  serve; SIGTERM/SIGINT drain, SIGHUP reloads
netsched-edge check-config edge.toml [--running OLD.toml]  validate and exit (0 ok, 2 error)
netsched-edge generate-keys FILE          write a keys file to share among hosts (`keys_file`)
netsched-edge ca [--config FILE] [--path] print the CA of the generated certificate
netsched-edge fleet ...                   the fleet's state in etcd (netsched_edge.fleet.cli)
netsched-edge demo [--duration 10]        self-contained demo with built-in backends
netsched-edge --version
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import resource
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from netsched_client.cli import add_loop_option, run_on_loop

from .access_log import (
    DEFAULT_FORMAT,
    DEFAULT_LEVEL,
    FORMAT_VARIABLE,
    LEVEL_VARIABLE,
    LOG_FORMATS,
    LOG_LEVELS,
    configure_logging,
    logging_from_environment,
)
from .config import ConfigError, EdgeConfig
from .keys import EdgeKeys, KeysError
from .lifecycle import Lifecycle, read_config, restart_note, restart_only_changes
from .server import EdgeServer, ListenError, binding
from .tls import (
    CredentialsError,
    certificate_names,
    default_state_dir,
    keep_credentials,
    kept_ca,
)

if TYPE_CHECKING:  # the fleet package needs httpx (the `fleet` extra)
    from .fleet.host import FleetHost, FleetSettings

_STATE_DIR_HELP = (
    "folder for the generated certificate and its CA (default: [edge] state_dir, else "
    "$XDG_STATE_HOME/netsched-edge or ~/.local/state/netsched-edge)"
)


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
    serve.add_argument("--state-dir", type=Path, help=_STATE_DIR_HELP)
    add_loop_option(serve)
    level, log_format = logging_from_environment()
    serve.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=level,
        help=f"info: one access line per request; debug-quic: also aioquic's frames "
        f"(default: ${LEVEL_VARIABLE}, else {DEFAULT_LEVEL})",
    )
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=log_format,
        help=f"json: one object per line (default: ${FORMAT_VARIABLE}, else {DEFAULT_FORMAT})",
    )
    serve.add_argument("--verbose", "-v", action="store_true", help="same as --log-level debug")
    _add_fleet_options(serve)
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")
    check.add_argument(
        "--running",
        metavar="FILE",
        help="the config the edge serves now: also say which changes a SIGHUP reload "
        "cannot apply (they take a drain and a restart)",
    )
    keys = commands.add_parser("generate-keys", help="write a keys file (`keys_file`)")
    keys.add_argument("file")
    ca = commands.add_parser(
        "ca", help="print the CA that clients trust for the generated certificate (PEM)"
    )
    ca.add_argument("--config", "-c", help="the edge's config file (for its state_dir)")
    ca.add_argument("--state-dir", type=Path, help=_STATE_DIR_HELP)
    ca.add_argument("--path", action="store_true", help="print the CA file's path, not its PEM")
    _add_demo(commands.add_parser("demo", help="self-contained demo with built-in backends"))
    # Listed for --help; main() hands its arguments to netsched_edge.fleet.cli.
    commands.add_parser("fleet", help="the fleet's state in etcd (netsched-edge fleet --help)")
    return parser


def _add_fleet_options(serve: argparse.ArgumentParser) -> None:
    fleet = serve.add_argument_group("fleet (docs/FLEET.md; needs the 'fleet' extra)")
    fleet.add_argument(
        "--fleet-etcd",
        metavar="URLS",
        help="join the fleet in this etcd (client URLs, comma-separated)",
    )
    fleet.add_argument(
        "--fleet-name", metavar="NAME", help="this host's member name (default: the host name)"
    )
    fleet.add_argument(
        "--fleet-address",
        metavar="ADDR",
        help="where the fleet's forwarder reaches this host (default: the listening host)",
    )
    fleet.add_argument("--fleet-prefix", metavar="PREFIX", help="the fleet's etcd key prefix")
    fleet.add_argument(
        "--fleet-ttl",
        type=int,
        metavar="S",
        help="membership lease: a dead host leaves the member list this long after its last "
        "renewal (default: $NETSCHED_FLEET_TTL_S, else 10)",
    )
    fleet.add_argument(
        "--fleet-idle-hold",
        type=int,
        metavar="S",
        help="a lost host's server ID is reused only after this long: the edge's idle "
        "timeout (default: $NETSCHED_FLEET_IDLE_HOLD_S, else 60)",
    )


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


async def _serve(
    config: EdgeConfig, config_path: str, ca_note: str | None, fleet: FleetSettings | None
) -> int:
    """Serve until SIGTERM/SIGINT (then drain); SIGHUP reloads `config_path`. In a
    fleet, join it first: its keys, CIDs and config are the server's from the start."""
    lifecycle = Lifecycle(config_path)
    lifecycle.install()  # before anything else: no signal may find the default action
    server = EdgeServer(config)
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:
                if fleet is not None:
                    await stack.enter_async_context(_join_fleet(server, fleet, lifecycle))
                await server.start()
            except (OSError, KeysError, CredentialsError, FleetError) as exc:
                print(f"netsched-edge: cannot start: {exc}", file=sys.stderr)
                return 1
            print(
                f"netsched-edge listening on {config.host}:{server.port} (from {config.source})",
                flush=True,
            )
            _print_note(ca_note)
            await lifecycle.serve(server)
    finally:
        await server.close()
        lifecycle.uninstall()
    return 1 if lifecycle.failed else 0


class FleetError(RuntimeError):
    """The fleet could not be joined (etcd unreachable, the name taken, no ID left)."""


@contextlib.asynccontextmanager
async def _join_fleet(
    server: EdgeServer, settings: FleetSettings, lifecycle: Lifecycle
) -> AsyncIterator[None]:
    """Be a member of the fleet while the server runs: the fleet's keys installed, its
    config applied as a reload (keeping this host's address and credentials), its
    encrypted CIDs issued, its state in /readyz. A lost membership drains the server
    (another host may take its ID once the hold runs out) and ends `serve` with status
    1, so that its supervisor starts it again into the fleet."""
    from .fleet.etcd import EtcdError
    from .fleet.host import FleetHost, drain_on_loss, keep_local
    from .workers import WorkerIdentity

    drain = drain_on_loss(server, settings)

    async def lost() -> None:
        await drain()
        lifecycle.fail("fleet membership lost")

    local = server.config
    host = FleetHost(
        settings,
        ports=(local.port,),
        apply_config=lambda config: server.reload(keep_local(config, local)),
        install_keys=server.install_keys,
        on_lost=lost,
    )
    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(host)
        except EtcdError as exc:  # unreachable, the name taken, no server ID left
            raise FleetError(f"fleet: {exc}") from None
        assert host.cids is not None  # joined
        await _first_keys(host)
        server.worker = WorkerIdentity(0, 1, host.cids)
        server.follow_fleet(host.status)
        print(f"netsched-edge: {host.status().describe()}", flush=True)
        yield


# How long a joining host waits for the fleet's keys before it gives up.
FIRST_KEYS_TIMEOUT_S = 10.0


async def _first_keys(host: FleetHost) -> None:
    """Wait until the fleet's keys are installed: a ticket or Retry token the server
    made before would be sealed with keys no other host has."""
    try:
        async with asyncio.timeout(FIRST_KEYS_TIMEOUT_S):
            while host.keys.ring is None:
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise FleetError(f"fleet: no keys from etcd within {FIRST_KEYS_TIMEOUT_S:g} s") from None


def _with_credentials(config: EdgeConfig, state_dir: Path | None) -> tuple[EdgeConfig, str | None]:
    """The config to serve, and the line that tells clients which CA to trust.

    A config without a certificate gets the one kept in the state folder (made there
    when missing or unfit, tls.keep_credentials); the folder stays in the config, so a
    reload that still names no certificate finds the same files.
    """
    folder = state_dir or config.state_dir or default_state_dir()
    config = dataclasses.replace(config, state_dir=folder)
    if config.certificate is not None:
        return config, None
    pair, made = keep_credentials(folder, certificate_names(config.host))
    config = dataclasses.replace(config, certificate=pair.certificate, private_key=pair.private_key)
    when = "made now" if made else "kept from an earlier start"
    return config, (
        f"netsched-edge: clients trust the generated CA {pair.ca_certificate} "
        f"({when}; `netsched-edge ca` prints it)"
    )


def _print_note(note: str | None) -> None:
    if note is not None:
        print(note, flush=True)


def _print_ca(opts: argparse.Namespace) -> int:
    """`netsched-edge ca`: the kept CA's PEM (or path) on stdout; 1 when there is none."""
    folder: Path | None = opts.state_dir
    if folder is None and opts.config is not None:
        config = _load(opts.config)
        if config is None:
            return 2
        if config.certificate is not None:
            print(
                f"netsched-edge: {opts.config} names its own certificate "
                f"({config.certificate}): clients trust the CA that issued it",
                file=sys.stderr,
            )
            return 1
        folder = config.state_dir
    try:
        ca = kept_ca(folder or default_state_dir())
    except CredentialsError as exc:
        print(f"netsched-edge: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(f"{ca}\n" if opts.path else ca.read_text())
    return 0


def _load(path: str) -> EdgeConfig | None:
    """The config at `path`, its keys file and certificate checked; None (the error
    printed) if bad."""
    try:
        return read_config(path)
    except (ConfigError, KeysError) as exc:
        print(f"netsched-edge: config error: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["fleet"]:
        from .fleet.cli import main as fleet_main

        return fleet_main(args[1:])
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
    if opts.command == "ca":
        return _print_ca(opts)
    if opts.command == "check-config":
        config = _load(opts.file)
        if config is None:
            return 2
        print(f"{opts.file}: ok ({len(config.services)} services)")
        if opts.running is not None:
            running = _load(opts.running)
            if running is None:
                return 2
            if changed := restart_only_changes(running, config):
                print(f"{opts.file}: restart needed: {restart_note(changed)}")
            else:
                print(f"{opts.file}: a reload (SIGHUP) applies every change")
        return 0
    level = "debug" if opts.verbose else opts.log_level
    configure_logging(level, opts.log_format)
    # Workers are processes of their own: they set up their logging from these.
    os.environ.update({LEVEL_VARIABLE: level, FORMAT_VARIABLE: opts.log_format})
    config = _load(opts.config)
    if config is None:
        return 2
    try:
        config, ca_note = _with_credentials(config, opts.state_dir)
    except OSError as exc:
        print(
            f"netsched-edge: cannot start: state folder: {exc.filename}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    _raise_file_limit()
    try:
        fleet = _fleet_settings(opts, config)
    except ValueError as exc:  # a lease or hold out of range
        print(f"netsched-edge: {exc}", file=sys.stderr)
        return 2
    if fleet is not None and opts.workers > 1:
        return _serve_fleet_workers(config, opts.config, opts.workers, fleet, ca_note)
    if fleet is not None and config.port == 0:
        config = dataclasses.replace(config, port=_free_udp_port(config.host))
    if opts.workers > 1:
        return _serve_workers(config, opts.config, opts.workers, ca_note)
    return run_on_loop(_serve(config, opts.config, ca_note, fleet), opts.loop)


def _fleet_settings(opts: argparse.Namespace, config: EdgeConfig) -> FleetSettings | None:
    """What `--fleet-*` say; None without `--fleet-etcd`."""
    if opts.fleet_etcd is None:
        return None
    from .fleet.host import FleetSettings

    settings = FleetSettings(
        etcd=opts.fleet_etcd,
        name=opts.fleet_name or socket.gethostname(),
        address=opts.fleet_address or config.host,
        base_dir=Path(opts.config).resolve().parent,
    )
    if opts.fleet_prefix is not None:
        settings = dataclasses.replace(settings, prefix=opts.fleet_prefix)
    membership = settings.membership
    if opts.fleet_ttl is not None:
        membership = dataclasses.replace(membership, ttl_s=opts.fleet_ttl)
    if opts.fleet_idle_hold is not None:
        membership = dataclasses.replace(membership, idle_hold_s=opts.fleet_idle_hold)
    return dataclasses.replace(settings, membership=membership)


def _demo(opts: argparse.Namespace) -> int:
    from .demo import run_demo

    configure_logging("debug" if opts.verbose else "warning")
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


def _serve_workers(config: EdgeConfig, config_path: str, count: int, ca_note: str | None) -> int:
    from .workers import WorkerError, WorkerPool, supervise

    try:
        _check_addresses(config)
    except ListenError as exc:
        print(f"netsched-edge: cannot start: {exc}", file=sys.stderr)
        return 1
    pool = WorkerPool(config, count, config_path)

    def announce(port: int) -> None:
        print(f"netsched-edge listening on {config.host}:{port} ({count} workers)", flush=True)
        _print_note(ca_note)

    try:
        return supervise(pool, announce)
    except WorkerError as exc:
        print(f"netsched-edge: cannot start: {exc}", file=sys.stderr)
        return 1


def _serve_fleet_workers(
    config: EdgeConfig, config_path: str, count: int, fleet: FleetSettings, ca_note: str | None
) -> int:
    """`--workers N` in a fleet: the parent joins (a port per worker), the workers take
    the fleet's keys, CIDs and config themselves (fleet/pool.py)."""
    from .fleet.pool import serve_fleet_workers

    def announce(port: int) -> None:
        print(f"netsched-edge listening on {config.host}:{port} ({count} workers)", flush=True)
        _print_note(ca_note)

    return serve_fleet_workers(config, config_path, count, fleet, announce)


def _free_udp_port(host: str) -> int:
    """A UDP port free on `host` now: a fleet member registers its port when it joins,
    before the server binds it."""
    family, _, _, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind(address)
        return int(probe.getsockname()[1])


def _check_addresses(config: EdgeConfig) -> None:
    """Bind, then free, each fixed address the workers will listen on: one taken is said
    once here (ListenError) instead of by the worker that fails and its parent."""
    addresses = [("QUIC, UDP", socket.SOCK_DGRAM, config.host, config.port)]
    addresses += [
        (f"service {svc.name}, UDP", socket.SOCK_DGRAM, *svc.udp_listen)
        for svc in config.services
        if svc.udp_listen is not None
    ]
    if config.admin_host is not None and config.admin_port is not None:
        addresses.append(("admin, TCP", socket.SOCK_STREAM, config.admin_host, config.admin_port))
    for what, kind, host, port in addresses:
        if port == 0:
            continue
        with binding(what, host, port):
            family, _, _, _, address = socket.getaddrinfo(host, port, type=kind)[0]
            with socket.socket(family, kind) as probe:
                # As asyncio's servers do: a closed connection's TIME_WAIT is no tenant.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, kind == socket.SOCK_STREAM)
                probe.bind(address)


if __name__ == "__main__":
    sys.exit(main())
