"""NetSched path lab: impaired UDP paths on loopback for multipath tests and benchmarks.

`netsched_lab.impairment` is the sans-IO core (what a link does to a packet);
`netsched_lab.relay` runs it as an asyncio UDP relay (`UdpRelay`, and
`python -m netsched_lab.relay` on the command line). The relay is not imported
here, so that `-m netsched_lab.relay` runs it exactly once.
"""

from .impairment import GilbertElliott, Link, LinkSpec, LinkStats, PathProfile

__all__ = ["GilbertElliott", "Link", "LinkSpec", "LinkStats", "PathProfile"]
