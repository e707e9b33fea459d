"""Where the fleet keeps what in etcd: every key under one prefix, so that
several fleets (or test runs) can share one etcd cluster."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Layout:
    prefix: str = "/netsched/"

    def __post_init__(self) -> None:
        if not self.prefix.endswith("/"):
            raise ValueError(f"the fleet's etcd prefix must end with '/', got {self.prefix!r}")

    @property
    def members(self) -> str:
        """members/NAME: a live host's MemberInfo, under its member lease."""
        return f"{self.prefix}members/"

    def member(self, name: str) -> str:
        return f"{self.members}{name}"

    @property
    def server_ids(self) -> str:
        """server-ids/N: who holds QUIC-LB server ID N, under a lease outliving the
        holder by the connections' idle time."""
        return f"{self.prefix}server-ids/"

    def server_id(self, number: int) -> str:
        return f"{self.server_ids}{number:05d}"

    def leader(self, role: str) -> str:
        """leader/ROLE: the elected member's name, under its member lease."""
        return f"{self.prefix}leader/{role}"

    @property
    def keys(self) -> str:
        return f"{self.prefix}keys/"

    @property
    def keys_current(self) -> str:
        return f"{self.keys}current"

    @property
    def keys_previous(self) -> str:
        """The rotated-out keys, under a lease of the grace period."""
        return f"{self.keys}previous"

    @property
    def quic_lb(self) -> str:
        """The fleet's QUIC-LB configuration: CID lengths, rotation codepoint, key."""
        return f"{self.prefix}quic-lb"

    @property
    def quic_lb_previous(self) -> str:
        """The QUIC-LB configuration a rotation replaced, under a lease of its grace."""
        return f"{self.prefix}quic-lb-previous"

    @property
    def config(self) -> str:
        return f"{self.prefix}config"

    def config_status(self, name: str) -> str:
        return f"{self.prefix}config-status/{name}"
