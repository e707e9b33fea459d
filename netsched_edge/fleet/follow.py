"""Following a piece of the fleet's state in etcd through etcd's outages."""

from __future__ import annotations

import asyncio
import logging

from .etcd import EtcdError, EtcdUnavailable

log = logging.getLogger("netsched.edge.fleet")

# After etcd failed, how long a follower (or the key rotator) waits before it tries again.
RETRY_AFTER_S = 1.0


class Follower:
    """Read something, then watch it from the revision read, for as long as `run` runs.

    Subclasses implement `_follow` (set `etcd_available` once a read succeeded);
    `run` starts it again `RETRY_AFTER_S` after etcd failed. Meanwhile
    `etcd_available` is False and whatever was read last stays in use.
    """

    what = "fleet state"  # for the log

    def __init__(self) -> None:
        self.etcd_available = False

    async def run(self) -> None:
        while True:
            try:
                await self._follow()
            except EtcdUnavailable as exc:
                self.etcd_available = False
                log.warning("%s: etcd unavailable, keeping what was read last: %s", self.what, exc)
            except EtcdError as exc:  # e.g. a watch canceled by a compaction: read again
                log.error("%s: %s", self.what, exc)
            await asyncio.sleep(RETRY_AFTER_S)

    async def _follow(self) -> None:
        raise NotImplementedError
