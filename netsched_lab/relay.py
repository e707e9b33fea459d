"""Asyncio runtime of the path lab: a UDP relay that impairs each client IP's path.

The relay listens on one loopback address and forwards to one loopback target.
Every client source address (ip, port) gets its own upstream socket, so two
client 4-tuples stay two 4-tuples at the server (multipath on one machine: a
client bound to 127.0.0.1 and 127.0.0.2). The upstream socket is bound to the
client's own IP when it is a loopback address of the target's family, so the
server sees which path a packet came over.

A *path* is a client IP: its two `Link`s (up = client → server, down) are shared
by all flows from that IP and are configured by a `PathProfile`. Each link's
pending deliveries sit in a heap drained by one timer (the earliest delivery).

    python -m netsched_lab.relay --listen 127.0.0.1:9000 --target 127.0.0.1:4433 \
        --delay-ms 20 --loss 0.01 --profile 127.0.0.2:delay_ms=50,rate_mbps=20

Only loopback addresses are ever bound or sent to.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import ipaddress
import itertools
import math
import random
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from .impairment import Link, LinkSpec, LinkStats, PathProfile
from .options import DEFAULT_SELECTOR, LINK_OPTIONS, canonical_ip, parse_address, parse_profile

__all__ = ["NO_IMPAIRMENT", "PathProfile", "UdpRelay", "main"]

NO_IMPAIRMENT = PathProfile()
_MAX_DATAGRAM = 65_535
# Datagrams read per readiness callback: drains bursts in one go, yet lets the
# other sockets and the delivery timers run between rounds.
_READ_BATCH = 64
# Pending deliveries per direction of a path: bounds memory when a client floods
# a long-delay path (a rate limit bounds it already through queue_bytes).
_MAX_PENDING = 65_536

Address = tuple[str, int]


def _loopback_address(name: str, address: Address, *, min_port: int) -> Address:
    host, port = address
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{name} must be a loopback IP address, got host {host!r}") from None
    if not ip.is_loopback:
        raise ValueError(f"{name} must be in 127.0.0.0/8 or ::1, got {host!r}")
    if isinstance(port, bool) or not (isinstance(port, int) and min_port <= port <= 65535):
        raise ValueError(f"{name} port must be an integer in {min_port}..65535, got {port!r}")
    return str(ip), port


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _udp_socket(family: socket.AddressFamily, bind: Address | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if bind is not None:
            sock.bind(bind)
    except OSError:
        sock.close()
        raise
    return sock


class _Flow:
    """One client source address and its own upstream socket."""

    __slots__ = ("client", "closed", "last_active", "path", "sock")

    def __init__(self, client: Address, path: _Path, sock: socket.socket, now: float) -> None:
        self.client = client
        self.path = path
        self.sock = sock
        self.last_active = now
        self.closed = False


Deliver = Callable[[_Flow, bytes], None]
Drop = Callable[[], None]


class _Lane:
    """A link plus its pending deliveries, drained by one timer at the earliest."""

    def __init__(
        self, link: Link, loop: asyncio.AbstractEventLoop, deliver: Deliver, drop: Drop
    ) -> None:
        self.link = link
        self._loop = loop
        self._deliver = deliver
        self._drop = drop
        self._heap: list[tuple[float, int, bytes, _Flow]] = []
        self._order = itertools.count()  # ties keep submission order; flows never compare
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def submit(self, flow: _Flow, packet: bytes) -> None:
        now = self._loop.time()
        for deliver_at, data in self.link.submit(packet, now):
            if deliver_at <= now and not self._heap:
                self._deliver(flow, data)  # nothing queued ahead: skip a loop round trip
            elif len(self._heap) >= _MAX_PENDING:
                self._drop()
            else:
                heapq.heappush(self._heap, (deliver_at, next(self._order), data, flow))
        self._rearm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()

    def _rearm(self) -> None:
        if not self._heap:
            return
        due = self._heap[0][0]
        if self._timer is not None:
            if self._timer_at <= due:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(due, self._on_timer)
        self._timer_at = due

    def _on_timer(self) -> None:
        # asyncio may fire a hair early (clock resolution): never deliver before due.
        now = max(self._loop.time(), self._timer_at)
        self._timer = None
        self._timer_at = math.inf
        while self._heap and self._heap[0][0] <= now:
            _, _, data, flow = heapq.heappop(self._heap)
            if not flow.closed:
                self._deliver(flow, data)
        self._rearm()


class _Path:
    """Both lanes of one client IP and how many live flows use them."""

    __slots__ = ("down", "flows", "up")

    def __init__(self, up: _Lane, down: _Lane) -> None:
        self.up = up
        self.down = down
        self.flows = 0

    def close(self) -> None:
        self.up.close()
        self.down.close()


class UdpRelay:
    """UDP relay with per-client-IP impairment; see the module docstring."""

    def __init__(
        self,
        target: Address,
        *,
        listen: Address = ("127.0.0.1", 0),
        profiles: Mapping[str, PathProfile] | None = None,
        default: PathProfile = NO_IMPAIRMENT,
        seed: int = 0,
        max_flows: int = 256,
        idle_timeout_s: float = 60.0,
    ) -> None:
        self._target = _loopback_address("target", target, min_port=1)
        self._listen = _loopback_address("listen", listen, min_port=0)
        if isinstance(max_flows, bool) or not (isinstance(max_flows, int) and max_flows >= 1):
            raise ValueError(f"max_flows must be an integer >= 1, got {max_flows!r}")
        if not (math.isfinite(idle_timeout_s) and idle_timeout_s > 0):
            raise ValueError(f"idle_timeout_s must be a finite number > 0, got {idle_timeout_s!r}")
        self._default = _checked_profile("default", default)
        self._profiles = {
            canonical_ip(ip): _checked_profile(f"profiles[{ip!r}]", profile)
            for ip, profile in (profiles or {}).items()
        }
        self._seed = seed
        self._max_flows = max_flows
        self._idle_timeout = idle_timeout_s
        self._blackholed: set[str] = set()
        self._paths: dict[str, _Path] = {}
        self._flows: dict[Address, _Flow] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._refused = 0
        self._relay_drops = 0

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> Address:
        """Bind the listening socket; returns the bound (host, port)."""
        if self._loop is not None:
            raise RuntimeError("relay already started; a relay runs once")
        self._loop = asyncio.get_running_loop()
        self._sock = _udp_socket(_family(self._listen[0]), self._listen)
        self._loop.add_reader(self._sock.fileno(), self._on_client_readable)
        host, port = self._sock.getsockname()[:2]
        return host, port

    async def stop(self) -> None:
        """Close every flow and the listening socket; pending deliveries are dropped."""
        if self._sock is None or self._loop is None:
            return
        for flow in list(self._flows.values()):
            self._close_flow(flow)
        for path in self._paths.values():
            path.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None

    # -- live control ------------------------------------------------------------

    def set_profile(self, client_ip: str, profile: PathProfile) -> None:
        """Impair `client_ip`'s path by `profile` from the next packet on."""
        ip = canonical_ip(client_ip)
        self._profiles[ip] = _checked_profile("profile", profile)
        self._apply(ip)

    def blackhole(self, client_ip: str) -> None:
        """Drop everything on `client_ip`'s path, both ways, until `restore`."""
        ip = canonical_ip(client_ip)
        self._blackholed.add(ip)
        self._apply(ip)

    def restore(self, client_ip: str) -> None:
        """Undo `blackhole`: back to the path's profile."""
        ip = canonical_ip(client_ip)
        self._blackholed.discard(ip)
        self._apply(ip)

    # -- observation -------------------------------------------------------------

    def stats(self, client_ip: str) -> tuple[LinkStats, LinkStats]:
        """(up, down) counters of `client_ip`'s path; zeros if it sent nothing yet."""
        path = self._paths.get(canonical_ip(client_ip))
        if path is None:
            return LinkStats(), LinkStats()
        return path.up.link.stats, path.down.link.stats

    def client_ips(self) -> list[str]:
        """IPs with a path (kept after their flows close, for their totals)."""
        return sorted(self._paths)

    @property
    def flow_count(self) -> int:
        return len(self._flows)

    @property
    def refused_packets(self) -> int:
        """Client datagrams of new flows dropped: `max_flows` were open, or the
        upstream socket could not be opened."""
        return self._refused

    @property
    def relay_drops(self) -> int:
        """Datagrams the relay itself dropped, outside any link's impairment: the
        kernel refused to send (full buffer, port closed) or a lane held
        `_MAX_PENDING` deliveries already."""
        return self._relay_drops

    # -- profiles ----------------------------------------------------------------

    def _profile(self, ip: str) -> PathProfile:
        profile = self._profiles.get(ip, self._default)
        if ip not in self._blackholed:
            return profile
        return PathProfile(
            up=replace(profile.up, blackhole=True), down=replace(profile.down, blackhole=True)
        )

    def _apply(self, ip: str) -> None:
        path = self._paths.get(ip)
        if path is not None:
            profile = self._profile(ip)
            path.up.link.spec = profile.up
            path.down.link.spec = profile.down

    # -- flows and paths ---------------------------------------------------------

    def _path(self, ip: str, loop: asyncio.AbstractEventLoop) -> _Path:
        path = self._paths.get(ip)
        if path is None:
            if len(self._paths) >= self._max_flows:
                self._forget_unused_paths()
            profile = self._profile(ip)
            # Seeded per IP and direction: outcomes do not depend on which path came first.
            up = Link(profile.up, random.Random(f"{self._seed}/{ip}/up"))
            down = Link(profile.down, random.Random(f"{self._seed}/{ip}/down"))
            path = _Path(
                _Lane(up, loop, self._send_upstream, self._count_drop),
                _Lane(down, loop, self._send_down, self._count_drop),
            )
            self._paths[ip] = path
        return path

    def _forget_unused_paths(self) -> None:
        # Bounds memory against many source IPs; only paths without flows lose their totals.
        for ip in [ip for ip, path in self._paths.items() if path.flows == 0]:
            self._paths.pop(ip).close()

    def _open_flow(self, client: Address, now: float) -> _Flow | None:
        assert self._loop is not None
        if len(self._flows) >= self._max_flows:
            return None
        try:
            sock = _udp_socket(_family(self._target[0]), self._upstream_bind(client[0]))
            sock.connect(self._target)  # the kernel then passes up only the server's replies
        except OSError:
            return None
        path = self._path(client[0], self._loop)
        flow = _Flow(client, path, sock, now)
        path.flows += 1
        self._flows[client] = flow
        self._loop.add_reader(sock.fileno(), self._on_server_readable, flow)
        self._schedule_sweep()
        return flow

    def _upstream_bind(self, client_ip: str) -> Address | None:
        ip = ipaddress.ip_address(client_ip)
        if ip.is_loopback and _family(client_ip) == _family(self._target[0]):
            return client_ip, 0
        return None  # the kernel picks a loopback source to reach the loopback target

    def _close_flow(self, flow: _Flow) -> None:
        assert self._loop is not None
        flow.closed = True
        flow.path.flows -= 1
        del self._flows[flow.client]
        self._loop.remove_reader(flow.sock.fileno())
        flow.sock.close()

    def _schedule_sweep(self) -> None:
        assert self._loop is not None
        if self._sweeper is not None or not self._flows:
            return
        oldest = min(flow.last_active for flow in self._flows.values())
        self._sweeper = self._loop.call_at(oldest + self._idle_timeout, self._sweep)

    def _sweep(self) -> None:
        assert self._loop is not None
        self._sweeper = None
        expired = self._loop.time() - self._idle_timeout
        for flow in [flow for flow in self._flows.values() if flow.last_active <= expired]:
            self._close_flow(flow)
        self._schedule_sweep()

    # -- I/O -----------------------------------------------------------------------

    def _on_client_readable(self) -> None:
        assert self._sock is not None and self._loop is not None
        now = self._loop.time()
        for _ in range(_READ_BATCH):
            try:
                data, source = self._sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # a pending socket error is reported once; keep reading
            client: Address = (source[0], source[1])
            flow = self._flows.get(client) or self._open_flow(client, now)
            if flow is None:
                self._refused += 1
                continue
            flow.last_active = now
            flow.path.up.submit(flow, data)

    def _on_server_readable(self, flow: _Flow) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for _ in range(_READ_BATCH):
            try:
                data = flow.sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. ICMP port unreachable: the server is not listening (yet)
            flow.last_active = now
            flow.path.down.submit(flow, data)

    def _count_drop(self) -> None:
        self._relay_drops += 1

    def _send_upstream(self, flow: _Flow, data: bytes) -> None:
        try:
            flow.sock.send(data)
        except OSError:
            self._relay_drops += 1  # a full buffer drops, as a real link would

    def _send_down(self, flow: _Flow, data: bytes) -> None:
        assert self._sock is not None  # stop() closes the lanes before the socket
        try:
            self._sock.sendto(data, flow.client)
        except OSError:
            self._relay_drops += 1


def _checked_profile(name: str, profile: PathProfile) -> PathProfile:
    if not isinstance(profile, PathProfile):
        raise TypeError(f"{name} must be a PathProfile, got {type(profile).__name__}")
    return profile


# -- command line ------------------------------------------------------------------


def _argparse_type(key: str) -> Callable[[str], object]:
    parse = LINK_OPTIONS[key]

    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m netsched_lab.relay",
        description="UDP impairment relay on loopback: delay, loss, rate, blackholes per IP.",
    )
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--target", required=True, help="server HOST:PORT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-flows", type=int, default=256)
    parser.add_argument("--idle-timeout-s", type=float, default=60.0)
    group = parser.add_argument_group("default impairment, each direction")
    for key in LINK_OPTIONS:
        group.add_argument(f"--{key.replace('_', '-')}", dest=key, type=_argparse_type(key))
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="IP:KEY=VALUE,...",
        help="override the default for one client IP ('*' = the default itself); "
        "keys as the options above, prefix up./down. for one direction",
    )
    return parser


def _relay_from_args(args: argparse.Namespace) -> UdpRelay:
    given = {key: getattr(args, key) for key in LINK_OPTIONS if getattr(args, key) is not None}
    spec = LinkSpec(**given)
    default = PathProfile(up=spec, down=spec)
    profiles: dict[str, PathProfile] = {}
    for text in args.profile:
        selector, profile = parse_profile(text, default)
        if selector == DEFAULT_SELECTOR:
            default = profile
        else:
            profiles[selector] = profile
    return UdpRelay(
        parse_address(args.target),
        listen=parse_address(args.listen),
        profiles=profiles,
        default=default,
        seed=args.seed,
        max_flows=args.max_flows,
        idle_timeout_s=args.idle_timeout_s,
    )


async def _run(relay: UdpRelay) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    host, port = await relay.start()
    # Scripts wait for this line: the relay is ready and a signal stops it cleanly.
    print(f"listening on {host}:{port}", flush=True)
    try:
        await stopping.wait()
    finally:
        await relay.stop()
    for ip in relay.client_ips():
        up, down = relay.stats(ip)
        print(f"{ip} up {up}\n{ip} down {down}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        relay = _relay_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    try:
        asyncio.run(_run(relay))
    except OSError as error:  # e.g. the listen port is taken
        parser.exit(1, f"{parser.prog}: cannot relay: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
