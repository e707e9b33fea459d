"""The edge configuration kept in etcd, watched by every host.

`config` holds a TOML config (what `netsched-edge fleet put-config` wrote,
checked there first). Each host parses every new revision with the edge's own
`parse_config`, relative paths against its own directory (a certificate or a
static root must exist on that host), and either applies it (`apply`, the same
as a SIGHUP reload) or refuses it, keeping what it runs. Either way it says so
under `config-status/NAME`: the revision and "applied", or the error with its
line. While etcd is unavailable the host keeps its last good config.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, EdgeConfig, parse_config
from .etcd import Etcd, KeyValue
from .follow import Follower
from .layout import Layout

log = logging.getLogger("netsched.edge.fleet")


@dataclass(frozen=True, slots=True)
class ConfigStatus:
    """One host's verdict on a revision of the fleet's config."""

    revision: int
    applied: bool
    error: str | None = None

    def encode(self) -> bytes:
        return json.dumps(
            {"revision": self.revision, "applied": self.applied, "error": self.error}
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> ConfigStatus:
        fields = json.loads(data)
        return cls(int(fields["revision"]), bool(fields["applied"]), fields.get("error"))


def config_source(layout: Layout) -> str:
    """What errors name as the file: the etcd key."""
    return f"etcd:{layout.config}"


class ConfigWatcher(Follower):
    what = "fleet config"
    """Apply every new revision of the fleet's config on this host, or refuse it.

    `apply` gets each good config in revision order; when it raises, the revision
    counts as refused (its message goes to the status key). `lease` (the member
    lease) makes the status key go with the host.
    """

    def __init__(
        self,
        etcd: Etcd,
        layout: Layout,
        name: str,
        apply: Callable[[EdgeConfig], None],
        *,
        base_dir: Path,
        lease: int = 0,
    ) -> None:
        super().__init__()
        self.etcd = etcd
        self.layout = layout
        self.name = name
        self.apply = apply
        self.base_dir = base_dir
        self.lease = lease
        self.applied_revision = 0  # of the config running now (0: none from etcd yet)
        self.seen_revision = 0  # the last revision judged, applied or not
        self.status: ConfigStatus | None = None  # this host's verdict on it

    async def _follow(self) -> None:
        found, read_at = await self.etcd.get_prefix(self.layout.config, prefix=False)
        self.etcd_available = True
        if found:
            await self._judge(found[0])
        async with self.etcd.watch(
            self.layout.config, prefix=False, start_revision=read_at + 1
        ) as batches:
            async for events in batches:
                latest = events[-1]
                if latest.kind == "put":
                    await self._judge(latest.kv)
                else:
                    log.warning("fleet config deleted from etcd: keeping the running config")

    async def _judge(self, kv: KeyValue) -> None:
        """Apply or refuse a new revision; say so (again, for one judged while the
        status could not be written)."""
        if kv.mod_revision > self.seen_revision:
            self.seen_revision = kv.mod_revision
            self.status = self._try_apply(kv)
        if self.status is not None and self.status.revision == kv.mod_revision:
            await self.etcd.put(
                self.layout.config_status(self.name), self.status.encode(), self.lease
            )

    def _try_apply(self, kv: KeyValue) -> ConfigStatus:
        try:
            text = kv.value.decode("utf-8")
            config = parse_config(text, file=config_source(self.layout), base_dir=self.base_dir)
            self.apply(config)
        except (ConfigError, UnicodeDecodeError) as exc:
            log.error(
                "fleet config revision %d refused, the running one stays: %s", kv.mod_revision, exc
            )
            return ConfigStatus(kv.mod_revision, False, str(exc))
        except Exception as exc:  # apply failed: the host still runs the old config
            log.exception("fleet config revision %d could not be applied", kv.mod_revision)
            return ConfigStatus(kv.mod_revision, False, f"not applied: {exc!r}")
        self.applied_revision = kv.mod_revision
        log.info("fleet config revision %d applied", kv.mod_revision)
        return ConfigStatus(kv.mod_revision, True)


async def config_statuses(etcd: Etcd, layout: Layout) -> dict[str, ConfigStatus]:
    prefix = layout.config_status("")
    found, _ = await etcd.get_prefix(prefix)
    return {kv.key.removeprefix(prefix): ConfigStatus.decode(kv.value) for kv in found}
