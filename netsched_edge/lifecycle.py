"""Signals of a running edge process, as operators of nginx/Envoy/HAProxy expect them.

- SIGTERM, SIGINT: graceful drain (`EdgeServer.drain`: no new connections or
  requests, those under way get `drain_timeout_s`, then CONNECTION_CLOSE), then
  exit 0. Another one, a second or more later, cuts the drain short.
- SIGHUP: read the config file again. A config that does not load is rejected
  with its `file:line` error as one log line, and the running one keeps
  serving; a good one is applied with `EdgeServer.reload` (established
  connections stay).

`Lifecycle` does this for one event loop (the single process, or one worker of
`--workers N`); `install` it before the server starts, so that no signal finds
the default action (SIGHUP's is to die with status 129). The parent of the
workers has its own loop (`workers.supervise`): it checks a new config before
it forwards SIGHUP, and turns SIGTERM/SIGINT into SIGTERM for every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

from aioquic.quic.configuration import QuicConfiguration

from .config import ConfigError, EdgeConfig, load_config
from .keys import KeysError, load_keys
from .tls import CredentialsError, load_credentials

log = logging.getLogger("netsched.edge.lifecycle")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# A stop signal this soon after the first does not cut the drain short.
REPEAT_GRACE_S = 1.0


class Drainable(Protocol):
    config: EdgeConfig

    async def close(self) -> None: ...


# What `EdgeServer.reload` leaves as it was at start (the listening socket, the
# endpoint and its connection factory, the planner, the keys are made once): a
# change to these takes a drain and a restart. (key as the file spells it, field)
RESTART_KEYS: Final = (
    ("[edge] listen", "host"),
    ("[edge] listen", "port"),
    ("[edge] admin", "admin_host"),
    ("[edge] admin", "admin_port"),
    ("[edge] retry", "retry"),
    ("[edge] multipath", "multipath"),
    ("[edge] max_path_id", "max_path_id"),
    ("[edge] scheduler", "scheduler"),
    ("[edge] fec", "fec"),
    ("[edge] send_order", "send_order"),
    ("[edge] egress_mbps", "egress_mbps"),
    ("[edge] session_tickets", "session_tickets"),
    ("[edge] keys_file", "keys_file"),
    ("[edge] state_dir", "state_dir"),
)


def restart_only_changes(running: EdgeConfig, new: EdgeConfig) -> list[str]:
    """The keys that differ between `running` and `new` which a reload does not apply
    (each once, in the file's terms); empty when a reload applies all of `new`."""
    changed: list[str] = []
    for key, name in RESTART_KEYS:
        if getattr(running, name) != getattr(new, name) and key not in changed:
            changed.append(key)
    # 0-RTT on or off is read at start; "safe" versus "idempotent" applies at once.
    if (running.early_data == "off") != (new.early_data == "off"):
        changed.append("[edge] early_data (off versus on)")
    fronts = {s.name: s.udp_listen for s in running.services if s.udp_listen is not None}
    new_fronts = {s.name: s.udp_listen for s in new.services if s.udp_listen is not None}
    for name in sorted(fronts.keys() | new_fronts.keys()):
        if fronts.get(name) != new_fronts.get(name):
            changed.append(f"service {name}: udp_listen")
    return changed


def restart_note(changed: list[str]) -> str:
    """One line for the operator: what a reload kept, and what applies it."""
    return (
        f"{', '.join(changed)} changed: a reload keeps the running value; "
        "drain and restart the edge to apply"
    )


def read_config(path: str | Path) -> EdgeConfig:
    """The config at `path`, its keys file, certificate and key checked too; ConfigError
    or KeysError if bad."""
    config = load_config(path)
    if config.keys_file is not None:
        load_keys(config.keys_file)
    if config.certificate is not None and config.private_key is not None:
        try:
            load_credentials(
                QuicConfiguration(is_client=False), config.certificate, config.private_key
            )
        except CredentialsError as exc:
            raise ConfigError(str(exc), file=config.source, key="edge.certificate") from None
    return config


class Lifecycle:
    """Turns signals into drain and reload for `server`, on the running loop.

    `adapt` rewrites a freshly read config before it is applied (a worker keeps
    its port, and the certificate and keys its parent made).
    """

    def __init__(
        self,
        config_path: str | Path | None,
        *,
        adapt: Callable[[EdgeConfig], EdgeConfig] | None = None,
        stop_signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
    ) -> None:
        self._path = config_path
        self._adapt = adapt or (lambda config: config)
        self._stop_signals = stop_signals
        self._requests: asyncio.Queue[str] = asyncio.Queue()
        self._installed: list[signal.Signals] = []
        self.reloads = self.rejected_reloads = 0
        self.failed: str | None = None  # why `serve` stopped on its own, if it did

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._stop_signals:
            loop.add_signal_handler(sig, self._requests.put_nowait, "stop")
            self._installed.append(sig)
        loop.add_signal_handler(signal.SIGHUP, self._requests.put_nowait, "reload")
        self._installed.append(signal.SIGHUP)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed.clear()

    def fail(self, reason: str) -> None:
        """Stop serving as a stop signal would (drain, then return), and say why: the
        process then exits with status 1."""
        log.error("stopping: %s", reason)
        self.failed = reason
        self._requests.put_nowait("stop")

    async def serve(self, server: Drainable) -> None:
        """Until a stop signal: reload on SIGHUP. Then drain (a second stop signal ends it)."""
        while await self._requests.get() != "stop":
            self.reload(server)
        timeout = server.config.drain_timeout_s
        log.info("draining: in-flight requests get %.1f s", timeout)
        drain = getattr(server, "drain", None)
        if drain is None:
            log.warning("this edge cannot drain: closing at once")
            return
        drained = asyncio.ensure_future(drain(timeout))
        again = asyncio.ensure_future(self._next_stop(asyncio.get_running_loop().time()))
        try:
            done, _ = await asyncio.wait({drained, again}, return_when=asyncio.FIRST_COMPLETED)
            if again in done:
                log.warning("second stop signal: closing without waiting for the drain")
        finally:
            for task in (drained, again):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _next_stop(self, first: float) -> None:
        """A later stop signal; one within REPEAT_GRACE_S of the first is the same stop
        sent twice (systemd signals every process of the unit, the parent passes it on)."""
        loop = asyncio.get_running_loop()
        while True:
            request = await self._requests.get()  # a reload while draining: nothing to do
            if request == "stop" and loop.time() - first >= REPEAT_GRACE_S:
                return

    def reload(self, server: Drainable) -> bool:
        """Read the config again and apply it; False (logged, one line) when rejected."""
        if self._path is None:
            log.warning("SIGHUP: no config file to read again")
            return False
        try:
            config = self._adapt(read_config(self._path))
        except (ConfigError, KeysError) as exc:
            self.rejected_reloads += 1
            log.error("reload rejected, the running configuration stays: %s", exc)
            return False
        apply = getattr(server, "reload", None)
        if apply is None:
            log.warning("this edge cannot reload: the running configuration stays")
            return False
        try:
            apply(config)
        except Exception as exc:  # e.g. a certificate that does not load
            self.rejected_reloads += 1
            log.error("reload failed, the running configuration stays: %s", exc)
            return False
        self.reloads += 1  # the server logs what it applied
        return True


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux
    PR_SET_PDEATHSIG); False where there is no prctl."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
