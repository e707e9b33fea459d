"""UDP forwarder at saturation: CPU µs per relayed datagram and kpps on one core.

A sender blasts datagrams (sendmmsg, 64 per call) at a relay, the relay
forwards them to a sink (recvmmsg, 64 per call); the relay runs alone on one
core, sender and sink share the other. The relay's CPU time (all its
threads, from /proc/<pid>/task/*/schedstat) over a measuring window, divided
by the datagrams the sink got in that window, is its µs/packet; kpps/core is
1000 / that, what one core sustains. Variants, all in the same run:

  asyncio  a plain asyncio relay: datagram endpoints, one flow endpoint per
           client, per-datagram Python callbacks (the edge's relay today)
  nginx    nginx's UDP stream proxy (`listen udp; proxy_pass`), one worker,
           sessions kept (proxy_timeout, no proxy_responses); skipped if absent
  floor    no relay: the sender sends straight to the sink on the relay's
           core. Its µs/packet is the sender's CPU per datagram sent plus the
           sink's per datagram received: one mmsg send and one mmsg receive,
           the kernel work of a relay that sends datagram by datagram
  ours     UdpForwarder(UdpRelay): mmsg only (gso=False) on uvloop; with UDP
           GSO runs (the default) on uvloop and on the asyncio loop
  front    the edge fleet's front (netsched_edge/fleet/front.py): the same relay
           with a QuicLbRouter, so every datagram's DCID is decrypted (QUIC-LB,
           four passes, three of them run back: three AES blocks, AES-NI) and
           looked up among the members before its flow is; uvloop, mmsg only
           (to compare with "ours, mmsg": the cost of the routing) and with GSO

Sender and sink call sendmmsg/recvmmsg through ctypes on prepared buffers, so
they make no Python objects per datagram. Ratios are printed because absolute
numbers drift on shared machines (goals: ours within 10 % of the floor,
≥ 1.45x nginx's packets per core). The flow design's costs follow: opening
and expiring a flow, and the worst case of per-flow upstream sockets.

    python bench/bench_forwarder.py [--seconds 2] [--repeat 3] [--flows 1] [--batch 64]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import uvloop

from netsched_client.proto.quic_lb import QuicLbScheme
from netsched_edge.forwarder import HAVE_NATIVE, HostRoute, QuicLbRouter, UdpForwarder, UdpRelay
from netsched_edge.forwarder.routing import rendezvous_seed
from netsched_edge.report import table

SIZES = (200, 1200)
HOST = "127.0.0.1"
BUFFER = 4 << 20  # every relay's front socket, sender and sink
SLOT = 2048  # the sink's receive slot: the largest datagram here is 1200 B
MSG_DONTWAIT = 0x40
SINK_NAP = 100e-6  # the sink sleeps after a short batch, so that it reads in full batches
WARMUP = 0.5  # seconds of traffic before the window opens
STARTUP = 20.0  # seconds a relay may take to pass its first datagram
NGINX_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")

Counter = Any  # a multiprocessing RawValue("Q"): one writer, read while it runs

# Every datagram sent is a QUIC short-header packet whose CID names the fleet's host 1,
# worker 0 (the fleet's scheme: 8-byte CIDs, four-pass); the other relays ignore it.
FLEET = QuicLbScheme(server_id_length=2, nonce_length=5, key=bytes(range(16)))
PACKET_HEAD = b"\x40" + FLEET.encode(b"\x01\x00", b"bench")


# -- sendmmsg / recvmmsg through ctypes ------------------------------------------------


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class _Vector:
    """`count` mmsghdrs over `count` buffers of `size` bytes (kept alive here)."""

    msgs: Any
    buffers: Any
    iovs: Any


def _vector(count: int, size: int, shared: bool) -> _Vector:
    """Receive slots, or (shared) one payload every message of a send points at: a
    QUIC short header for the fleet's host 1 (PACKET_HEAD), then zeros."""
    buffers = ctypes.create_string_buffer(size if shared else size * count)
    if shared:
        ctypes.memmove(buffers, PACKET_HEAD, min(size, len(PACKET_HEAD)))
    iovs = (_Iovec * count)()
    msgs = (_Mmsghdr * count)()
    base = ctypes.addressof(buffers)
    for i in range(count):
        iovs[i].iov_base = base if shared else base + i * size
        iovs[i].iov_len = size
        msgs[i].msg_hdr.msg_iov = ctypes.pointer(iovs[i])
        msgs[i].msg_hdr.msg_iovlen = 1
    return _Vector(msgs, buffers, iovs)


def _udp_socket(connect_to: tuple[str, int] | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    sock.bind((HOST, 0))
    if connect_to is not None:
        sock.connect(connect_to)
    return sock


def _sink(batch: int, ports: mp.Queue[int], received: Counter, stop: Counter) -> None:
    """Count datagrams until told to stop, in full batches where it can."""
    sock = _udp_socket()
    ports.put(sock.getsockname()[1])
    vector = _vector(batch, SLOT, shared=False)
    recvmmsg, fd = _libc.recvmmsg, sock.fileno()
    while not stop.value:
        n = recvmmsg(fd, vector.msgs, batch, MSG_DONTWAIT, None)
        if n > 0:
            received.value += n
        if n < batch:
            time.sleep(SINK_NAP)


def _sender(target: int, size: int, batch: int, flows: int, sent: Counter, stop: Counter) -> None:
    """Send `size`-byte datagrams from `flows` sockets in turn, as fast as the kernel takes them."""
    socks = [_udp_socket((HOST, target)) for _ in range(flows)]
    run = max(1, batch // flows)  # so that one relay batch holds every flow
    vector = _vector(run, size, shared=True)
    sendmmsg, fds = _libc.sendmmsg, [s.fileno() for s in socks]
    total = 0
    while not stop.value:
        for fd in fds:
            total += max(sendmmsg(fd, vector.msgs, run, 0), 0)  # -1: ECONNREFUSED before start
        sent.value = total


# -- the relays ----------------------------------------------------------------------


class _AsyncioFlow(asyncio.DatagramProtocol):
    def __init__(self, front: asyncio.DatagramTransport, client: Any) -> None:
        self.front, self.client = front, client
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        for data in self.pending:
            transport.sendto(data)
        self.pending.clear()

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.sendto(data)
        elif len(self.pending) < 1024:
            self.pending.append(data)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.front.sendto(data, self.client)


class _AsyncioFront(asyncio.DatagramProtocol):
    """The plain relay: per datagram, a callback, a dict lookup and a sendto."""

    def __init__(self, backend: tuple[str, int]) -> None:
        self.backend = backend
        self.flows: dict[Any, _AsyncioFlow] = {}
        self.opening: set[asyncio.Future[Any]] = set()  # referenced until they are done
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            flow = self.flows[addr] = _AsyncioFlow(self.transport, addr)
            opening = asyncio.get_running_loop().create_datagram_endpoint(
                lambda: flow, remote_addr=self.backend
            )
            self.opening.add(asyncio.ensure_future(opening))
        flow.send(data)


async def _until(stop: Counter) -> None:
    while not stop.value:
        await asyncio.sleep(0.1)


async def _serve_asyncio(backend: int, batch: int, ports: mp.Queue[int], stop: Counter) -> None:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _AsyncioFront((HOST, backend)), local_addr=(HOST, 0)
    )
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    ports.put(transport.get_extra_info("sockname")[1])
    await _until(stop)
    transport.close()


async def _serve_ours(
    backend: int, batch: int, ports: mp.Queue[int], stop: Counter, gso: bool = True
) -> None:
    relay = UdpRelay((HOST, 0), [(HOST, backend)], lambda client: 0, batch=batch, gso=gso)
    forwarder = UdpForwarder(relay)
    ports.put(relay.local_address[1])
    await _until(stop)
    forwarder.close()


async def _serve_front(
    backend: int, batch: int, ports: mp.Queue[int], stop: Counter, gso: bool = True
) -> None:
    """The fleet front's relay: one member (host 1) with one worker, the sink."""
    router = QuicLbRouter(FLEET, rendezvous_seed(FLEET.key))
    router.set_routes([HostRoute(1, (0,))])
    relay = UdpRelay((HOST, 0), [], lambda client: None, batch=batch, gso=gso, router=router,
                     max_backends=1)  # fmt: skip
    relay.set_backend(0, (HOST, backend))
    forwarder = UdpForwarder(relay)
    ports.put(relay.local_address[1])
    await _until(stop)
    if relay.stats.no_backend:
        raise RuntimeError(f"front: datagrams not routed: {relay.stats}")
    forwarder.close()


SERVERS: dict[str, tuple[Callable[..., Any], Callable[[], asyncio.AbstractEventLoop]]] = {
    "asyncio": (_serve_asyncio, asyncio.new_event_loop),
    "ours, mmsg (uvloop)": (partial(_serve_ours, gso=False), uvloop.new_event_loop),
    "ours, mmsg+GSO (uvloop)": (_serve_ours, uvloop.new_event_loop),
    "ours, mmsg+GSO (asyncio)": (_serve_ours, asyncio.new_event_loop),
    "front, mmsg (uvloop)": (partial(_serve_front, gso=False), uvloop.new_event_loop),
    "front, mmsg+GSO (uvloop)": (_serve_front, uvloop.new_event_loop),
}
OURS = ("ours, mmsg (uvloop)", "ours, mmsg+GSO (uvloop)")
FRONTS = ("front, mmsg (uvloop)", "front, mmsg+GSO (uvloop)")


def _relay_process(
    variant: str, backend: int, batch: int, ports: mp.Queue[int], stop: Counter
) -> None:
    serve, loop_factory = SERVERS[variant]
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(backend, batch, ports, stop))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def nginx_missing() -> str | None:
    """Why nginx's UDP proxy cannot run here, or None."""
    if shutil.which("nginx") is None:
        return "nginx is not installed (apt-get install -y nginx libnginx-mod-stream)"
    if not NGINX_MODULE.exists():
        return f"{NGINX_MODULE} is missing (apt-get install -y libnginx-mod-stream)"
    return None


@contextmanager
def _nginx(backend: int) -> Iterator[tuple[int, int]]:
    """nginx proxying a free port to `backend`; yields (front port, pid)."""
    front = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp:
        conf = Path(tmp, "nginx.conf")
        conf.write_text(
            f"load_module {NGINX_MODULE};\n"
            "worker_processes 1;\nmaster_process off;\ndaemon off;\n"
            f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log warn;\n"
            "events { worker_connections 1024; }\n"
            "stream {\n  server {\n"
            f"    listen {HOST}:{front} udp rcvbuf={BUFFER} sndbuf={BUFFER};\n"
            f"    proxy_pass {HOST}:{backend};\n"
            "    proxy_timeout 60s;\n"  # sessions kept: no proxy_responses limit
            "  }\n}\n"
        )
        args = ["nginx", "-p", tmp, "-c", str(conf), "-e", f"{tmp}/error.log"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            yield front, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- measuring -----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of `pid` so far (ns resolution, softirq work included)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just ended
    return total / 1e9


def _pin(pid: int, core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(pid, {core})


@dataclass(frozen=True, slots=True)
class Result:
    us_per_packet: float
    delivered: int  # datagrams the sink got in the window
    sent: int  # datagrams the sender sent in the window
    seconds: float  # the window
    relay_busy: float  # the relay core's CPU share used by the relay (floor: the sink)

    @property
    def kpps_core(self) -> float:
        return 1e3 / self.us_per_packet

    @property
    def kpps_wall(self) -> float:
        return self.delivered / self.seconds / 1e3


class _Run:
    """One variant at one size: sink, relay, sender; a window of `seconds` at saturation."""

    def __init__(self, ctx: Any, args: argparse.Namespace, size: int) -> None:
        self.ctx, self.args, self.size = ctx, args, size
        self.received, self.sent, self.stop = (ctx.RawValue("Q", 0) for _ in range(3))
        self.cores: tuple[int | None, int | None] = (0, 1) if os.cpu_count() != 1 else (None, None)

    def start(self, stack: ExitStack, target: Callable[..., None], *args: Any) -> int:
        """Start a process; when `stack` closes, it is stopped by the stop flag (else killed)."""
        proc = self.ctx.Process(target=target, args=args, daemon=True)
        proc.start()
        stack.callback(self._stop, proc)
        pid: int = proc.pid
        return pid

    def _stop(self, proc: Any) -> None:
        self.stop.value = 1
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)

    def sink(self, stack: ExitStack, core: int | None) -> tuple[int, int]:
        ports: mp.Queue[int] = self.ctx.Queue()
        pid = self.start(stack, _sink, self.args.batch, ports, self.received, self.stop)
        _pin(pid, core)
        return ports.get(timeout=30), pid

    def relay(self, stack: ExitStack, variant: str, backend: int) -> tuple[int, int]:
        if variant == "nginx":
            front, pid = stack.enter_context(_nginx(backend))
        else:
            ports: mp.Queue[int] = self.ctx.Queue()
            args = (variant, backend, self.args.batch, ports, self.stop)
            pid = self.start(stack, _relay_process, *args)
            front = ports.get(timeout=30)
        _pin(pid, self.cores[1])
        return front, pid

    def measure(self, variant: str) -> Result:
        busy_core, relay_core = self.cores
        with ExitStack() as stack:
            floor = variant == "floor"
            backend, sink_pid = self.sink(stack, relay_core if floor else busy_core)
            front, relay_pid = (backend, sink_pid) if floor else self.relay(stack, variant, backend)
            args = (front, self.size, self.args.batch, self.args.flows, self.sent, self.stop)
            sender_pid = self.start(stack, _sender, *args)
            _pin(sender_pid, busy_core)
            self._wait_for_traffic(variant)
            time.sleep(WARMUP)
            before = self._snapshot(relay_pid, sender_pid)
            time.sleep(self.args.seconds)
            after = self._snapshot(relay_pid, sender_pid)
        return self._result(floor, before, after)

    def _wait_for_traffic(self, variant: str) -> None:
        deadline = time.monotonic() + STARTUP
        while not self.received.value:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{variant}: no datagram reached the sink in {STARTUP} s")
            time.sleep(0.05)

    def _snapshot(self, relay_pid: int, sender_pid: int) -> tuple[float, ...]:
        return (
            time.perf_counter(),
            float(self.received.value),
            float(self.sent.value),
            cpu_seconds(relay_pid),
            cpu_seconds(sender_pid),
        )

    @staticmethod
    def _result(floor: bool, before: tuple[float, ...], after: tuple[float, ...]) -> Result:
        delta = [a - b for a, b in zip(after, before, strict=True)]
        wall, delivered, sent, relay_cpu, sender_cpu = delta
        per_packet = relay_cpu / max(delivered, 1)
        if floor:  # the "relay" is the sink: add the sender's share
            per_packet += sender_cpu / max(sent, 1)
        return Result(per_packet * 1e6, int(delivered), int(sent), wall, relay_cpu / wall)


def _median(results: list[Result]) -> Result:
    return sorted(results, key=lambda r: r.us_per_packet)[len(results) // 2]


def _row(variant: str, r: Result, floor: Result) -> list[object]:
    return [
        variant,
        f"{r.us_per_packet:.2f}",
        f"{r.kpps_core:.0f}",
        f"{r.kpps_wall:.0f}",
        f"{r.relay_busy:.0%}",
        f"{r.us_per_packet / floor.us_per_packet:.2f}",
    ]


def _verdict(results: dict[str, Result], ours: str) -> list[str]:
    lines = []
    us = results[ours].us_per_packet
    floor = results["floor"].us_per_packet
    lines.append(
        f"{ours}: {us / floor:.2f}x the floor's µs/packet (goal ≤ 1.10: "
        f"{'met' if us <= 1.10 * floor else 'NOT met'})"
    )
    if "nginx" in results:
        speedup = results["nginx"].us_per_packet / us
        lines.append(
            f"{ours}: {speedup:.2f}x nginx's packets per core (goal ≥ 1.45: "
            f"{'met' if speedup >= 1.45 else 'NOT met'})"
        )
    lines.append(f"{ours}: {results['asyncio'].us_per_packet / us:.1f}x the asyncio relay's")
    return lines


def _front_verdict(results: dict[str, Result], front: str, ours: str) -> str:
    """The front with encrypted CIDs against the floor, and what the routing adds."""
    us = results[front].us_per_packet
    ratio = us / results["floor"].us_per_packet
    added = us - results[ours].us_per_packet
    return (
        f"{front}: {ratio:.2f}x the floor's µs/packet with the QUIC-LB decryption on "
        f"(goal ≤ 1.10: {'met' if ratio <= 1.10 else 'NOT met'}); {added:+.2f} µs/packet "
        f"against {ours}"
    )


# -- the flow design: one connected socket per flow, and what it costs ------------------------


def _drain(sock: socket.socket, vector: _Vector, batch: int) -> None:
    while _libc.recvmmsg(sock.fileno(), vector.msgs, batch, MSG_DONTWAIT, None) > 0:
        pass


def flow_lifetime_us(count: int) -> tuple[float, float]:
    """CPU µs to open a flow (choose, socket, connect, epoll_ctl, insert) and to expire one.

    `count` clients send one datagram each, twice: the first round opens the
    flows, the second relays through them; the difference is the opening.
    """
    sink = _udp_socket()
    relay = UdpRelay((HOST, 0), [sink.getsockname()], lambda client: 0, max_flows=count)
    clients = [_udp_socket() for _ in range(count)]
    vector = _vector(64, SLOT, shared=False)
    rounds = []
    try:
        for _ in range(2):
            for client in clients:
                client.sendto(b"x" * 200, relay.local_address)
            start = time.process_time()
            while relay.relay_front(0.0):
                pass
            rounds.append(time.process_time() - start)
            _drain(sink, vector, 64)
        start = time.process_time()
        relay.expire(1e9)
        closing = time.process_time() - start
        assert relay.stats.flows_opened == relay.stats.flows_expired == count, relay.stats
    finally:
        relay.close()
        for sock in [sink, *clients]:
            sock.close()
    return (rounds[0] - rounds[1]) / count * 1e6, closing / count * 1e6


def scattered_send_us(batch: int, rounds: int = 500) -> tuple[float, float]:
    """CPU µs per datagram when every datagram of a batch belongs to another flow.

    Per-flow sockets: `batch` connected sockets, one sendmmsg of 1 each; a
    NAT-style single upstream socket: one sendmmsg of `batch`. (With one flow
    per batch both are one sendmmsg.)
    """
    sink = _udp_socket()
    backend = sink.getsockname()
    flows = [_udp_socket(backend) for _ in range(batch)]
    single = _udp_socket(backend)
    one, many = _vector(1, 200, shared=True), _vector(batch, 200, shared=True)
    drain = _vector(64, SLOT, shared=False)
    per_flow = nat = 0.0
    try:
        for _ in range(rounds):
            start = time.thread_time()
            for sock in flows:
                _libc.sendmmsg(sock.fileno(), one.msgs, 1, 0)
            per_flow += time.thread_time() - start
            _drain(sink, drain, 64)
            start = time.thread_time()
            _libc.sendmmsg(single.fileno(), many.msgs, batch, 0)
            nat += time.thread_time() - start
            _drain(sink, drain, 64)
    finally:
        for sock in [sink, single, *flows]:
            sock.close()
    return per_flow / rounds / batch * 1e6, nat / rounds / batch * 1e6


def routing_ns(calls: int = 200_000) -> tuple[float, float]:
    """CPU ns the C router adds to a datagram: (a member's CID: parse, three AES blocks,
    table lookup; a client's Initial: the same, then rendezvous over 3 members).

    Each is timed against an empty datagram, which leaves route() at once: the
    difference is the routing alone, without the Python call around it.
    """
    router = QuicLbRouter(FLEET, rendezvous_seed(FLEET.key))
    router.set_routes([HostRoute(1, (0,)), HostRoute(2, (1,)), HostRoute(3, (2,))])
    short = PACKET_HEAD + bytes(40)
    initial = b"\xc0\x00\x00\x00\x01\x08" + bytes(range(8)) + bytes(40)
    costs = []
    for packet in (b"", short, initial):
        route = router.route_datagram
        start = time.thread_time()
        for _ in range(calls):
            route(packet)
        costs.append((time.thread_time() - start) / calls * 1e9)
    return costs[1] - costs[0], costs[2] - costs[0]


def print_flow_design(batch: int) -> None:
    opening, closing = flow_lifetime_us(2000)
    per_flow, nat = scattered_send_us(batch)
    print(
        "\nFlow design (one connected upstream socket per flow):\n"
        f"  open a flow {opening:.1f} µs, expire one {closing:.1f} µs (CPU, Cython relay)\n"
        f"  worst case, {batch} flows in one batch: {per_flow:.2f} µs/datagram to send "
        f"through their own sockets vs {nat:.2f} through one NAT-style socket"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring window per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is kept")
    parser.add_argument("--flows", type=int, default=1, help="client sockets (flows) to relay")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    if not HAVE_NATIVE:
        raise SystemExit("build the extension first: python setup.py build_ext --inplace")
    variants = ["floor", "nginx", *SERVERS]
    skipped = nginx_missing()
    if skipped:
        print(f"nginx skipped: {skipped}")
        variants.remove("nginx")
    ctx = mp.get_context("spawn")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # run the cleanups if killed
    print(
        f"{args.seconds:g} s windows, {args.flows} flow(s), batches of {args.batch}, "
        f"median of {args.repeat}; relay on core 1, sender and sink on core 0 "
        f"({os.cpu_count()} cores)"
    )
    headers = ["variant", "µs/pkt", "kpps/core", "kpps wall", "relay CPU", "x floor"]
    for size in SIZES:
        results = {
            v: _median([_Run(ctx, args, size).measure(v) for _ in range(args.repeat)])
            for v in variants
        }
        print(f"\n{size} B datagrams\n")
        print(table(headers, [_row(v, r, results["floor"]) for v, r in results.items()]))
        for ours in OURS:
            for line in _verdict(results, ours):
                print(line)
        for front, ours in zip(FRONTS, OURS, strict=True):
            print(_front_verdict(results, front, ours))
        if any(r.relay_busy < 0.8 for r in results.values()):
            print(
                "note: relay CPU below 80 %: the machine is shared or the sender could not "
                "keep up, so kpps wall understates; µs/pkt is CPU time and holds"
            )
    print_flow_design(args.batch)
    member, initial = routing_ns()
    aesni = "on" if QuicLbRouter(FLEET, 0).native_aes else "OFF"
    print(
        f"\nRouting in C (QuicLbRouter, AES-NI {aesni}): {member:.0f} ns per datagram "
        f"with a member's CID (three AES blocks), "
        f"{initial:.0f} ns for a client's Initial (then hashed over 3 members)"
    )


if __name__ == "__main__":
    main()
