"""The UDP forwarder driven by an event loop: every test on asyncio and uvloop, both relays."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from test_forwarder import IMPLS, TIMEOUT, Recorder, RelayFactory, payload

from netsched_client.io import MAX_BATCHES_PER_WAKEUP, Address
from netsched_edge.forwarder import ForwarderStats, Relay, UdpForwarder

Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def run_(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(coro)

    return run_


class Endpoint(asyncio.DatagramProtocol):
    """Collects datagrams; a backend one also echoes them back with a b"re:" prefix."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.got: list[tuple[bytes, Address]] = []
        self.transport: Any = None
        self.changed = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.got.append((data, addr))
        self.changed.set()
        if self.echo:
            self.transport.sendto(b"re:" + data, addr)

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while len(self.got) < count:
                self.changed.clear()
                await self.changed.wait()

    @property
    def address(self) -> Address:
        addr: Address = self.transport.get_extra_info("sockname")
        return addr


async def endpoint(echo: bool = False) -> Endpoint:
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Endpoint(echo), local_addr=("127.0.0.1", 0)
    )
    return protocol


async def eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("cls", IMPLS)
def test_forwarder_relays_both_ways(run: Runner, cls: RelayFactory) -> None:
    async def main() -> None:
        backend = await endpoint(echo=True)
        clients = [await endpoint() for _ in range(3)]
        choose = Recorder()
        relay = cls(("127.0.0.1", 0), [backend.address], choose)
        forwarder = UdpForwarder(relay)
        sent = {c: [payload(c, i, 100 + 7 * i) for i in range(40)] for c in range(3)}
        for i in range(40):
            for c, client in enumerate(clients):
                client.transport.sendto(sent[c][i], forwarder.local_address)
            if i % 10 == 9:
                await asyncio.sleep(0)  # arrivals spread over several wake-ups
        for client in clients:
            await client.wait_for(40)
        forwarder.close()

        for c, client in enumerate(clients):
            assert [data for data, _ in client.got] == [b"re:" + data for data in sent[c]]
        assert len({source for _, source in backend.got}) == 3
        assert sorted(choose.calls) == sorted(client.address for client in clients)
        stats = forwarder.stats
        assert stats.to_clients == stats.to_backends == 120

    run(main())


@pytest.mark.parametrize("cls", IMPLS)
def test_forwarder_expires_idle_flows_on_its_timer(run: Runner, cls: RelayFactory) -> None:
    async def main() -> None:
        backend = await endpoint()
        client = await endpoint()
        choose = Recorder()
        relay = cls(("127.0.0.1", 0), [backend.address], choose, idle_timeout=0.1)
        forwarder = UdpForwarder(relay)
        client.transport.sendto(b"one", forwarder.local_address)
        await backend.wait_for(1)
        await eventually(lambda: forwarder.stats.flows_expired == 1)
        assert forwarder.stats.active_flows == 0
        client.transport.sendto(b"two", forwarder.local_address)
        await backend.wait_for(2)
        forwarder.close()

        assert [data for data, _ in backend.got] == [b"one", b"two"]
        assert choose.calls == [client.address] * 2  # the second datagram opened a new flow

    run(main())


class CountingRelay:
    """A relay that records how many `relay_front` calls each loop wake-up makes."""

    def __init__(self, relay: Relay, loop: asyncio.AbstractEventLoop) -> None:
        self._relay, self._loop = relay, loop
        self.per_wakeup: list[int] = []
        self._open = False

    def relay_front(self, now: float) -> int:
        if not self._open:
            self._open = True
            self.per_wakeup.append(0)
            self._loop.call_soon(self._end_wakeup)  # runs after this reader callback
        self.per_wakeup[-1] += 1
        return self._relay.relay_front(now)

    def _end_wakeup(self) -> None:
        self._open = False

    # the rest of the Relay interface, delegated
    local_address = property(lambda self: self._relay.local_address)
    batch = property(lambda self: self._relay.batch)
    idle_timeout = property(lambda self: self._relay.idle_timeout)
    stats = property(lambda self: self._relay.stats)

    def fileno(self) -> int:
        return self._relay.fileno()

    def upstream_fileno(self) -> int:
        return self._relay.upstream_fileno()

    def relay_upstream(self, now: float) -> int:
        return self._relay.relay_upstream(now)

    def expire(self, now: float) -> int:
        return self._relay.expire(now)

    def close(self) -> None:
        self._relay.close()


@pytest.mark.parametrize("cls", IMPLS)
def test_forwarder_reads_a_bounded_number_of_batches_per_wakeup(
    run: Runner, cls: RelayFactory
) -> None:
    async def main() -> None:
        backend = await endpoint()
        relay = CountingRelay(
            cls(("127.0.0.1", 0), [backend.address], lambda c: 0, batch=8),
            asyncio.get_running_loop(),
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for i in range(80):  # ten batches, queued before the loop looks
                client.sendto(payload(0, i), relay.local_address)
            forwarder = UdpForwarder(relay)
            await backend.wait_for(80)
            forwarder.close()

        assert [data for data, _ in backend.got] == [payload(0, i) for i in range(80)]
        assert max(relay.per_wakeup) == MAX_BATCHES_PER_WAKEUP  # bounded, and batched
        assert sum(relay.per_wakeup) >= 10

    run(main())


@pytest.mark.parametrize("cls", IMPLS)
def test_close_stops_relaying(run: Runner, cls: RelayFactory) -> None:
    async def main() -> None:
        backend = await endpoint()
        client = await endpoint()
        forwarder = UdpForwarder(cls(("127.0.0.1", 0), [backend.address], lambda c: 0))
        front = forwarder.local_address
        client.transport.sendto(b"before", front)
        await backend.wait_for(1)

        forwarder.close()
        forwarder.close()  # idempotent
        client.transport.sendto(b"after", front)
        await asyncio.sleep(0.05)

        assert [data for data, _ in backend.got] == [b"before"]
        assert isinstance(forwarder.stats, ForwarderStats)
        assert forwarder.stats.active_flows == 0

    run(main())
