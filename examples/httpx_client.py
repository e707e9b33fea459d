"""httpx through a NetSched edge: one line changes, the app's calls stay as they are.

Start an edge with a service `api` (examples/edge.toml) and an HTTP backend
behind it, then:

    pip install 'netsched[httpx]'
    python examples/httpx_client.py 127.0.0.1:4433 --ca "$(netsched-edge ca)"

The URL's host names the service (`http://api/...`); `services=` maps other
host names. Every request is an ordinary httpx call; the SLO rides in
`extensions`, and `response.extensions["netsched"]` says how it went.
"""

from __future__ import annotations

import argparse
import asyncio

import httpx

from netsched_client import SLO
from netsched_client.httpx import DeadlineMissed, NetSchedTransport


async def main(edge: str, ca_file: str | None, insecure: bool) -> None:
    transport = NetSchedTransport(
        edge,
        ca_file=ca_file,
        verify=not insecure,
        slo=SLO(deadline_ms=500),  # every request's default deadline
        paths="auto",  # multipath over every local address, when the edge negotiates it
        fallback=httpx.AsyncHTTPTransport(),  # asked for: URLs the edge does not serve
    )
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get("http://api/", params={"q": "netsched"})
        info = r.extensions["netsched"]
        print(r.status_code, r.headers.get("content-type"), f"backend {info.backend}")
        print(
            f"  {info.latency_ms:.1f} ms, deadline met: {info.deadline_met}, {info.paths} path(s)"
        )

        try:  # an urgent request with a tight deadline
            r = await client.get(
                "http://api/", extensions={"netsched": {"deadline_ms": 50, "urgency": 0}}
            )
            print("urgent:", r.status_code)
        except httpx.TimeoutException as exc:  # DeadlineMissed is one
            print("urgent request missed its deadline:", isinstance(exc, DeadlineMissed))

        async with client.stream("GET", "http://api/") as r:  # streamed response
            size = sum([len(chunk) async for chunk in r.aiter_bytes()])
            print("streamed", size, "bytes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("edge", help="HOST:PORT of the edge")
    parser.add_argument("--ca", help="the edge's CA certificate (PEM)")
    parser.add_argument("-k", "--insecure", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.edge, args.ca, args.insecure))
