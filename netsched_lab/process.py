"""The path lab relay in a process of its own, driven through a pipe.

A measurement that runs its client, the edge and the relay in one event loop
measures that loop's queue as much as the network: the relay's delays stretch
with the loop's load. Benchmarks and the demo put each in its own process
(`spawn_process`) and steer the relay with `RelayControl`:

    ("start", target_port, profiles, seed) -> the relay's port
    ("blackhole", ip) / ("restore", ip)    -> the CLOCK_MONOTONIC time it took effect
    ("profile", ip, PathProfile)           -> likewise
    ("stop",)                              -> per-IP (up, down) LinkStats
    ("exit",)
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .impairment import LinkStats
from .relay import UdpRelay

ANSWER_TIMEOUT_S = 30.0  # a child process starting, or answering a command
EXIT_GRACE_S = 1.0  # a child told to stop (its pipe closed) ends by itself within this
CLK_TCK = os.sysconf("SC_CLK_TCK")

RelayStats = dict[str, tuple[LinkStats, LinkStats]]


def relay_process(conn: Connection) -> None:
    """A child process's main: serve relay commands until "exit" (or the pipe closes)."""
    asyncio.run(_serve_relay(conn))


async def _serve_relay(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    relay: UdpRelay | None = None
    while True:
        try:
            command, *args = await loop.run_in_executor(None, conn.recv)
        except (EOFError, OSError):  # the parent closed its end (replies may be unread)
            command, args = "exit", []
        if command == "start" and relay is None:
            seed: int = args[2] if len(args) > 2 else 0
            relay = UdpRelay(("127.0.0.1", args[0]), profiles=args[1], seed=seed)
            conn.send((await relay.start())[1])
        elif command in ("blackhole", "restore", "profile") and relay is not None:
            if command == "blackhole":
                relay.blackhole(args[0])
            elif command == "restore":
                relay.restore(args[0])
            else:
                relay.set_profile(args[0], args[1])
            conn.send(time.monotonic())  # CLOCK_MONOTONIC: one clock for all processes
        elif command == "stop" and relay is not None:
            await relay.stop()
            conn.send({ip: relay.stats(ip) for ip in relay.client_ips()})
            relay = None
        elif command == "exit":
            if relay is not None:
                await relay.stop()
            return
        else:
            conn.send(RuntimeError(f"relay: unexpected command {command!r} now"))


class RelayControl:
    """The parent's end of the relay process's pipe."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._unread = 0  # replies to `send` not read yet
        self._answers: list[Any] = []

    def call(self, *command: object) -> Any:
        self._conn.send(command)
        self._collect()
        return self._reply()

    def send(self, *command: object) -> None:
        """Send without waiting (from inside a measurement); `answers()` has the reply."""
        self._conn.send(command)
        self._unread += 1

    def answers(self) -> list[Any]:
        """Replies to `send`, oldest first, each returned once."""
        self._collect()
        answers, self._answers = self._answers, []
        return answers

    def _collect(self) -> None:
        while self._unread:
            self._answers.append(self._reply())
            self._unread -= 1

    def _reply(self) -> Any:
        return receive(self._conn, "the relay process")


def receive(conn: Connection, who: str) -> Any:
    """The next reply on a child's pipe; RuntimeError when it does not come in time."""
    try:
        if not conn.poll(ANSWER_TIMEOUT_S):
            raise RuntimeError(f"{who} did not answer within {ANSWER_TIMEOUT_S} s")
        reply = conn.recv()
    except EOFError:
        raise RuntimeError(f"{who} exited") from None
    if isinstance(reply, Exception):
        raise reply
    return reply


def process_cpu(pid: int) -> float:
    """utime + stime of a process, all its threads, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": fields 3 onwards
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@contextmanager
def spawned(
    targets: list[tuple[Callable[..., None], tuple[object, ...]]],
) -> Iterator[list[tuple[int, Connection]]]:
    """Start each `target(*args, conn)` in a child process; yield (pid, our end of its
    pipe) for each; always stop them, however the block ends: our ends of the pipes
    close (a child that reads its pipe sees EOF and ends by itself, within `EXIT_GRACE_S`),
    then what still runs is terminated."""
    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    ends: list[tuple[int, Connection]] = []
    try:
        for target, args in targets:
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=target, args=(*args, theirs), daemon=True)
            proc.start()
            theirs.close()
            procs.append(proc)
            assert proc.pid is not None  # started
            ends.append((proc.pid, ours))
        yield ends
    finally:
        for _, conn in ends:
            conn.close()
        deadline = time.monotonic() + EXIT_GRACE_S
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
