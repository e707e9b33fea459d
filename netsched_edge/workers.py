"""`netsched-edge --workers N`: N shared-nothing edge processes on one UDP port.

Every worker binds the port with SO_REUSEPORT, and a classic BPF program
steers each datagram by the second octet of its destination CID. Our CIDs
are QUIC-LB (draft-ietf-quic-load-balancers-21) with a one-byte server ID
there, equal to the worker's index, so every packet of a connection — on
every path, after any migration — reaches the worker that owns it, with no
shared state. A client's first Initial carries a CID it chose; the same
byte of it picks a worker deterministically, so its retransmissions and
0-RTT packets follow it.

In a fleet (docs/FLEET.md) the CIDs are encrypted instead: the server ID is the
host's (from etcd) followed by the worker index, and the fleet's front
forwarder, which holds the key, sends each packet to its worker's own port. A
program without the key cannot read an encrypted CID, and any that could pick a
worker from it could be run by an observer too, so fleet workers do not share a
port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from netsched_client.proto.quic_lb import QuicLbConfig

from .config import ConfigError, EdgeConfig
from .keys import EdgeKeys, KeysError
from .lifecycle import Lifecycle, die_with_parent, read_config
from .tls import generate_self_signed

if TYPE_CHECKING:  # the fleet package needs httpx (the `fleet` extra)
    from .fleet.pool import WorkerFleet

log = logging.getLogger("netsched.edge.workers")

SO_ATTACH_REUSEPORT_CBPF = 51
# Classic BPF opcodes (linux/filter.h).
_LDB_ABS = 0x30  # A = packet[k]
_JSET = 0x45  # if A & k: skip jt else skip jf
_JA = 0x05  # skip k
_MOD = 0x94  # A %= k
_RET_A = 0x16  # return A
# Offsets into the UDP payload of the CID's second octet (the server ID).
_LONG_HEADER_SERVER_ID = 7  # flags(1) version(4) dcid_len(1) dcid[0](1)
_SHORT_HEADER_SERVER_ID = 2  # flags(1) dcid[0](1)


def steering_program(workers: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions: the socket index for a QUIC datagram."""
    return [
        (_LDB_ABS, 0, 0, 0),
        (_JSET, 0, 2, 0x80),  # long header?
        (_LDB_ABS, 0, 0, _LONG_HEADER_SERVER_ID),
        (_JA, 0, 0, 1),
        (_LDB_ABS, 0, 0, _SHORT_HEADER_SERVER_ID),
        (_MOD, 0, 0, workers),
        (_RET_A, 0, 0, 0),
    ]


class ReuseportSteering:
    """SO_REUSEPORT before bind (`__call__`), the steering program after (`attach`).

    The kernel keeps one program per reuseport group; a program attached to a
    socket before it joined the group would make it a group of its own.
    `attach` also keeps a duplicate of the socket (`take_attached_socket`): a
    worker hands it to its parent, which holds the worker's place in the group.
    """

    def __init__(self, workers: int) -> None:
        program = steering_program(workers)
        self._filters = (ctypes.c_uint64 * len(program))(
            *(struct.unpack("<Q", struct.pack("<HBBI", *insn))[0] for insn in program)
        )
        self._fprog = struct.pack("HxxxxxxQ", len(program), ctypes.addressof(self._filters))

    def __call__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)

    def attach(self, fd: int) -> None:
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, self._fprog)
        except BaseException:
            sock.close()
            raise
        _attached.append(sock)


# Duplicates of the sockets steering was attached to in this process (one per start).
_attached: list[socket.socket] = []


def take_attached_socket() -> socket.socket | None:
    """The socket the last `ReuseportSteering.attach` steered (the caller closes it)."""
    return _attached.pop() if _attached else None


class CidRotation:
    """The fleet's QUIC-LB key and codepoint a process issues CIDs under now: a config
    rotation (`quic-lb` in etcd) `switch`es it, and the CID factories of every
    connection (`RotatingCids`) read it at each call, so new connections and new
    CIDs of old ones move to the new configuration. The CID length stays."""

    def __init__(self, key: bytes, config_rotation: int) -> None:
        self.key = key
        self.config_rotation = config_rotation

    def switch(self, key: bytes, config_rotation: int) -> None:
        self.key, self.config_rotation = key, config_rotation


class RotatingCids:
    """One worker's CID factory under a `CidRotation` (what `WorkerIdentity.quic_lb`
    gives the edge in a fleet host that follows rotations)."""

    def __init__(self, fleet: FleetCids, rotation: CidRotation, index: int) -> None:
        self._fleet = fleet
        self._rotation = rotation
        self._index = index
        self._config = fleet.for_worker(index)

    @property
    def cid_length(self) -> int:
        return self._fleet.cid_length

    def generate(self) -> bytes:
        rotation = self._rotation
        if (rotation.key, rotation.config_rotation) != (
            self._config.key,
            self._config.config_rotation,
        ):
            self._config = self._fleet.for_worker(self._index)
        return self._config.generate()


@dataclasses.dataclass(frozen=True, slots=True)
class FleetCids:
    """A fleet host's encrypted QUIC-LB CIDs: server ID = the host's ID ‖ the worker index.

    The front forwarder decrypts the whole server ID: the host's part picks the
    host, the worker's part the port there (`WorkerPool.ports`). CIDs are 8
    bytes, the length the edge's QUIC configuration parses (a 1-byte host ID
    leaves a 5-byte nonce; four-pass encryption).
    """

    host_server_id: bytes
    key: bytes
    config_rotation: int = 0
    cid_length: int = 8
    # Followed rotations (FleetHost): the key and codepoint in force, else the ones above.
    rotation: CidRotation | None = dataclasses.field(default=None, compare=False)

    def for_worker(self, index: int) -> QuicLbConfig:
        """The worker's CIDs under the configuration in force now."""
        key, config_rotation = self.key, self.config_rotation
        if self.rotation is not None:
            key, config_rotation = self.rotation.key, self.rotation.config_rotation
        return QuicLbConfig(
            server_id=self.host_server_id + bytes([index]),
            config_rotation=config_rotation,
            cid_length=self.cid_length,
            key=key,
        )

    def issuer(self, index: int) -> QuicLbConfig | RotatingCids:
        """The worker's CID factory: one that follows rotations when there is any to follow."""
        if self.rotation is None:
            return self.for_worker(index)
        return RotatingCids(self, self.rotation, index)


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerIdentity:
    index: int
    count: int
    fleet: FleetCids | None = None

    def quic_lb(self) -> QuicLbConfig | RotatingCids:
        """Plaintext CIDs with the index as server ID (what the kernel's steering
        program reads), or the fleet's encrypted ones (following its rotations)."""
        if self.fleet is None:
            return QuicLbConfig(server_id=bytes([self.index]))
        return self.fleet.issuer(self.index)


@dataclasses.dataclass(frozen=True, slots=True)
class SharedSettings:
    """What the parent decides for every worker's config, at start and on every reload:
    the port worker 0 bound, and the certificate and keys it made when the file names none."""

    port: int
    certificate: Path | None = None
    private_key: Path | None = None
    keys_file: Path | None = None
    generated_in: Path | None = None  # the parent's directory of what it made
    state_dir: Path | None = None  # where the generated certificate is kept (tls.py)
    port_per_worker: bool = False  # fleet workers: port + index, or each an ephemeral one
    ports: tuple[int, ...] = ()  # fleet workers' ports picked before they start, if any

    def worker_port(self, index: int) -> int:
        if self.ports:
            return self.ports[index]
        if self.port_per_worker and self.port != 0:
            return self.port + index
        return self.port

    def apply(self, config: EdgeConfig, index: int) -> EdgeConfig:
        changes: dict[str, Any] = {"port": self.worker_port(index)}
        if config.state_dir is None and self.state_dir is not None:
            # A worker respawned after a reload keeps the certificate its peers present.
            changes.update(state_dir=self.state_dir)
        if config.certificate is None and self.certificate is not None:
            changes.update(certificate=self.certificate, private_key=self.private_key)
        if config.keys_file is None and self.keys_file is not None:
            changes.update(keys_file=self.keys_file)
        if index != 0:  # the admin endpoint is worker 0's alone
            changes.update(admin_host=None, admin_port=None)
        return dataclasses.replace(config, **changes)


def _worker_main(
    config: EdgeConfig,
    identity: WorkerIdentity,
    config_path: str | None,
    shared: SharedSettings,
    parent_pid: int,
    ready: Any,
    fleet: WorkerFleet | None = None,
) -> None:
    from .server import EdgeServer  # in the child: nothing of the parent's loop is shared

    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent_pid:
        return  # the parent died before the line above: nobody would supervise us
    # A terminal's ^C reaches the whole process group; the parent turns it into
    # SIGTERM for us, so a second signal does not cut the drain short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def run() -> None:
        lifecycle = Lifecycle(
            config_path,
            adapt=lambda new: shared.apply(new, identity.index),
            stop_signals=(signal.SIGTERM,),
        )
        lifecycle.install()
        server = EdgeServer(config, worker=identity)
        sock = None
        following = contextlib.AsyncExitStack()
        try:
            try:
                if fleet is not None:
                    from .fleet.pool import follow_fleet

                    await following.enter_async_context(follow_fleet(fleet, server, identity))
                await server.start()
            except (OSError, KeysError, TimeoutError) as exc:
                print(f"netsched-edge: worker {identity.index}: {exc}", file=sys.stderr)
                return
            sock = take_attached_socket()
            ready.put((identity.index, server.port, sock))
            await lifecycle.serve(server)
        finally:
            await following.aclose()
            await server.close()
            if sock is not None:
                sock.close()
            if os.getppid() != parent_pid and identity.index == 0 and shared.generated_in:
                # The parent died without cleaning up (SIGKILL): its key and CA go with us.
                shutil.rmtree(shared.generated_in, ignore_errors=True)

    asyncio.run(run())


class WorkerError(RuntimeError):
    """A worker did not start."""


class WorkerPool:
    """N supervised workers on one port, started in index order (the kernel numbers
    reuseport sockets by the order they join the group, and steering returns the
    worker's index).

    The pool keeps a duplicate of every worker's socket. A worker that dies thus
    leaves its socket in the group, in its place; its replacement (same index)
    binds a new socket, which joins at the end, and the pool then closes the old
    one: the kernel moves the last socket of a group into the place of one that
    leaves, so the new worker gets its predecessor's index and every other
    worker keeps its own. Datagrams that reach the old socket meanwhile are lost.

    Workers get SIGTERM when the pool's process dies (PR_SET_PDEATHSIG: start
    the pool, and respawn workers, from a thread that lives as long as it).
    """

    def __init__(
        self,
        config: EdgeConfig,
        count: int,
        config_path: str | None = None,
        fleet: FleetCids | None = None,
        *,
        follow: WorkerFleet | None = None,
        ports: tuple[int, ...] = (),
    ) -> None:
        """`fleet`: the host's encrypted CIDs (a port per worker); `follow`: the fleet the
        workers take their keys and config from (netsched_edge.fleet.pool); `ports`:
        each worker's port, picked beforehand (the member key names them)."""
        if not 1 <= count <= 255:
            raise ValueError(f"workers must be 1..255, got {count}")
        self.count = count
        self.config = config
        self.config_path = config_path
        self.fleet = fleet
        self.follow = follow
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.ca_certificate: Path | None = None
        if ports and len(ports) != count:
            raise ValueError(f"{count} workers need {count} ports, got {ports}")
        self.shared = dataclasses.replace(
            self._shared_secrets(config), port_per_worker=fleet is not None, ports=tuple(ports)
        )
        self.ports = [0] * count  # each worker's bound port (all equal unless in a fleet)
        self._procs: list[Any] = [None] * count
        self._sockets: dict[int, socket.socket] = {}
        self._started_at = [0.0] * count
        self._retry_at = [0.0] * count
        self._stopping = False
        self.restarts = 0
        self.port = config.port

    def _shared_secrets(self, config: EdgeConfig) -> SharedSettings:
        """All workers present one certificate and share one set of keys (Retry,
        stateless reset, tickets): those the config names, or made once here."""
        shared = SharedSettings(port=config.port, state_dir=config.state_dir)
        if config.certificate is not None and config.keys_file is not None:
            return shared
        self._tmp = tempfile.TemporaryDirectory(prefix="netsched-workers-")
        tmp = Path(self._tmp.name)
        shared = dataclasses.replace(shared, generated_in=tmp)
        if config.certificate is None:
            pair = generate_self_signed(tmp)
            self.ca_certificate = pair.ca_certificate
            shared = dataclasses.replace(
                shared, certificate=pair.certificate, private_key=pair.private_key
            )
        if config.keys_file is None:
            keys_file = tmp / "keys.toml"
            EdgeKeys.generate().write(keys_file)
            shared = dataclasses.replace(shared, keys_file=keys_file)
        return shared

    def start(self, timeout: float = 30.0) -> int:
        try:
            for index in range(self.count):
                self._spawn(index, timeout)
        except BaseException:
            self.stop(timeout=2.0)
            raise
        return self.port

    def _spawn(self, index: int, timeout: float) -> None:
        ctx = mp.get_context("spawn")
        ready = ctx.Queue()
        proc = ctx.Process(
            target=_worker_main,
            args=(
                self.shared.apply(self.config, index),
                WorkerIdentity(index, self.count, self.fleet),
                self.config_path,
                self.shared,
                os.getpid(),
                ready,
                self.follow,
            ),
            daemon=True,
        )
        proc.start()
        self._procs[index] = proc
        self._started_at[index] = time.monotonic()
        try:
            _, port, sock = self._ready(proc, ready, index, timeout)
        finally:
            ready.close()
        old = self._sockets.pop(index, None)
        if sock is not None:
            self._sockets[index] = sock
        if old is not None:
            old.close()  # the new socket (the group's last) moves into the old one's place
        self.ports[index] = port
        if index == 0 and self.shared.port == 0:
            self.port = port
            if not self.shared.port_per_worker:  # the others join worker 0's port
                self.shared = dataclasses.replace(self.shared, port=port)

    @staticmethod
    def _ready(proc: Any, ready: Any, index: int, timeout: float) -> tuple[int, int, Any]:
        """What a starting worker reports (index, port, its socket); WorkerError if it
        exits first or takes longer than `timeout`."""
        give_up_at = time.monotonic() + timeout
        while True:
            try:
                return cast(tuple[int, int, Any], ready.get(timeout=SUPERVISE_POLL_S))
            except queue.Empty:
                pass
            if not proc.is_alive():
                status = _exit_status(proc.exitcode)
                raise WorkerError(f"worker {index} exited while starting ({status})")
            if time.monotonic() > give_up_at:
                proc.kill()
                raise WorkerError(f"worker {index} did not start within {timeout:g} s")

    def respawn_dead(self, timeout: float = 30.0) -> list[int]:
        """Start again, by index, the workers that exited; the indices restarted."""
        restarted = []
        for index, proc in enumerate(self._procs):
            if self._stopping or proc is None or proc.is_alive():
                continue
            now = time.monotonic()
            if now < self._retry_at[index]:
                continue
            lived = now - self._started_at[index]
            log.warning(
                "worker %d (pid %s) exited with %s after %.1f s: starting it again",
                index,
                proc.pid,
                _exit_status(proc.exitcode),
                lived,
            )
            try:
                self._spawn(index, timeout)
            except WorkerError as exc:
                log.error("%s", exc)
            # One that dies young waits before its next start (a crash loop costs little).
            self._retry_at[index] = time.monotonic() + (0.0 if lived > 10 else min(10.0, 1 + lived))
            self.restarts += 1
            restarted.append(index)
        return restarted

    def pids(self) -> list[int | None]:
        return [None if proc is None else proc.pid for proc in self._procs]

    def signal_all(self, sig: int) -> None:
        for proc in self._procs:
            if proc is not None and proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)

    def reload(self) -> bool:
        """Check the config file again; if good, every worker applies it (SIGHUP)."""
        if self.config_path is None:
            log.warning("SIGHUP: no config file to read again")
            return False
        try:
            config = read_config(self.config_path)
        except (ConfigError, KeysError) as exc:
            log.error("reload rejected, the running configuration stays: %s", exc)
            return False
        if (config.host, config.port) != (self.config.host, self.config.port):
            log.warning("reload: the listening address stays %s:%d", self.config.host, self.port)
        self.config = config  # for workers started from now on
        self.signal_all(signal.SIGHUP)
        return True

    def alive(self) -> bool:
        return any(proc is not None and proc.is_alive() for proc in self._procs)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to every worker (each drains), SIGKILL to those still there after `timeout`."""
        self._stopping = True
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            if proc is not None:
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.kill()
                    proc.join(2.0)
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
            self._tmp = None


def _exit_status(code: int | None) -> str:
    if code is None:
        return "no status"
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def supervise(pool: WorkerPool, announce: Callable[[int], None]) -> int:
    """Run `pool` until SIGTERM/SIGINT: restart workers that die, turn SIGHUP into a
    checked reload, then let the workers drain. Call from the main thread."""
    requests: queue.SimpleQueue[str] = queue.SimpleQueue()

    def on_signal(signum: int, frame: object) -> None:
        requests.put("reload" if signum == signal.SIGHUP else "stop")  # reentrant

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        announce(pool.start())
        while True:
            try:
                request = requests.get(timeout=SUPERVISE_POLL_S)
            except queue.Empty:
                pool.respawn_dead()
                continue
            if request == "stop":
                break
            pool.reload()
        _drain(pool, requests)
    finally:
        pool.stop(timeout=2.0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


# How often the parent looks for workers that exited.
SUPERVISE_POLL_S = 0.2


def _drain(pool: WorkerPool, requests: queue.SimpleQueue[str]) -> None:
    """SIGTERM to the workers (each drains for drain_timeout_s); a second stop signal
    is passed on too (they close at once)."""
    pool.signal_all(signal.SIGTERM)
    deadline = time.monotonic() + pool.config.drain_timeout_s + DRAIN_MARGIN_S
    while pool.alive() and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            if requests.get(timeout=SUPERVISE_POLL_S) == "stop":
                pool.signal_all(signal.SIGTERM)


# Beyond drain_timeout_s, what a worker gets to close its connections and exit.
DRAIN_MARGIN_S = 5.0
