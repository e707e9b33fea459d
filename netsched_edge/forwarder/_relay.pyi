from collections.abc import Sequence

from netsched_client.io import Address

from .flows import Choose, ForwarderStats, Report

class UdpRelay:
    def __init__(
        self,
        listen: Address,
        backends: Sequence[Address],
        choose: Choose,
        *,
        max_flows: int | None = ...,
        idle_timeout: float = ...,
        batch: int = ...,
        rcvbuf: int = ...,
        sndbuf: int = ...,
        gso: bool = ...,
        reply_timeout: float | None = ...,
        report: Report | None = ...,
        max_flows_per_source: int | None = ...,
        fd_reserve: int | None = ...,
    ) -> None: ...
    @property
    def local_address(self) -> Address: ...
    @property
    def batch(self) -> int: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def stats(self) -> ForwarderStats: ...
    def fileno(self) -> int: ...
    def upstream_fileno(self) -> int: ...
    def relay_front(self, now: float) -> int: ...
    def relay_upstream(self, now: float) -> int: ...
    def expire(self, now: float) -> int: ...
    def close(self) -> None: ...
