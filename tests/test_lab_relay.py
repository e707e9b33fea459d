"""The UDP relay on real loopback sockets: paths by client IP, live control, QUIC through it."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import cast

import pytest
from aioquic.asyncio import connect
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration

from netsched_edge.tls import generate_self_signed
from netsched_lab.impairment import LinkSpec, PathProfile
from netsched_lab.relay import UdpRelay

Address = tuple[str, int]
REPO = Path(__file__).resolve().parents[1]
PATIENCE_S = 5.0  # generous: the machine may be busy; only silence tests wait less


class Endpoint(asyncio.DatagramProtocol):
    """A UDP socket whose datagrams land in a queue; `echo` sends each one back."""

    def __init__(self, *, echo: bool = False) -> None:
        self.echo = echo
        self.queue: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        source = (str(addr[0]), cast(int, addr[1]))
        self.queue.put_nowait((data, source))
        if self.echo and self.transport is not None:
            self.transport.sendto(data, source)

    def send(self, data: bytes, addr: Address) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    async def receive(self, count: int) -> list[tuple[bytes, Address]]:
        async with asyncio.timeout(PATIENCE_S):
            return [await self.queue.get() for _ in range(count)]

    async def silent_for(self, seconds: float) -> bool:
        await asyncio.sleep(seconds)
        return self.queue.empty()


async def endpoint(stack: AsyncExitStack, host: str, *, echo: bool = False) -> Endpoint:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: Endpoint(echo=echo), local_addr=(host, 0)
    )
    stack.callback(transport.close)
    return protocol


async def relay_to(
    stack: AsyncExitStack, target: Address, **kwargs: object
) -> tuple[UdpRelay, Address]:
    relay = UdpRelay(target, **kwargs)  # type: ignore[arg-type]
    address = await relay.start()
    stack.push_async_callback(relay.stop)
    return relay, address


def sources_by_tag(received: list[tuple[bytes, Address]]) -> dict[bytes, set[Address]]:
    tags: dict[bytes, set[Address]] = {}
    for data, source in received:
        tags.setdefault(data.split(b"-")[0], set()).add(source)
    return tags


async def test_two_client_ips_are_two_paths_with_their_own_profiles(stack: AsyncExitStack) -> None:
    server = await endpoint(stack, "127.0.0.1", echo=True)
    slow_dup = PathProfile(up=LinkSpec(duplicate=1.0), down=LinkSpec(delay_ms=150))
    relay, address = await relay_to(stack, server.address, profiles={"127.0.0.2": slow_dup})
    a = await endpoint(stack, "127.0.0.1")
    a2 = await endpoint(stack, "127.0.0.1")
    b = await endpoint(stack, "127.0.0.2")

    started = time.monotonic()
    for client, tag in ((a, b"a"), (a2, b"a2"), (b, b"b")):
        for i in range(3):
            client.send(b"%s-%d" % (tag, i), address)
    received = await server.receive(3 + 3 + 6)  # b's path duplicates every packet

    tags = sources_by_tag(received)
    assert sorted(len(sources) for sources in tags.values()) == [1, 1, 1]
    (tuple_a,), (tuple_a2,), (tuple_b,) = tags[b"a"], tags[b"a2"], tags[b"b"]
    assert len({tuple_a, tuple_a2, tuple_b}) == 3  # one upstream 4-tuple per client
    assert (tuple_a[0], tuple_a2[0], tuple_b[0]) == ("127.0.0.1", "127.0.0.1", "127.0.0.2")
    assert [data for data, _ in received].count(b"b-0") == 2
    assert [data for data, _ in received].count(b"a-0") == 1

    assert sorted(data for data, _ in await a.receive(3)) == [b"a-0", b"a-1", b"a-2"]
    assert len(await b.receive(6)) == 6
    assert time.monotonic() - started >= 0.15  # b's down link delays its replies
    up, down = relay.stats("127.0.0.2")
    assert (up.packets_in, up.duplicated, down.packets_in, down.delivered) == (3, 3, 6, 6)
    assert relay.stats("127.0.0.1")[0].packets_in == 6
    assert relay.client_ips() == ["127.0.0.1", "127.0.0.2"]
    assert relay.flow_count == 3


async def round_trip(client: Endpoint, relay_address: Address, data: bytes) -> bytes:
    client.send(data, relay_address)
    ((echoed, _),) = await client.receive(1)
    return echoed


async def test_blackhole_one_ip_while_the_other_keeps_flowing(stack: AsyncExitStack) -> None:
    server = await endpoint(stack, "127.0.0.1", echo=True)
    relay, address = await relay_to(stack, server.address)
    a = await endpoint(stack, "127.0.0.1")
    b = await endpoint(stack, "127.0.0.2")
    assert await round_trip(b, address, b"before") == b"before"

    relay.blackhole("127.0.0.2")
    for i in range(10):
        a.send(b"a-%d" % i, address)
        b.send(b"b-%d" % i, address)
    assert len(await a.receive(10)) == 10
    assert await b.silent_for(0.3)
    assert relay.stats("127.0.0.2")[0].dropped_blackhole == 10

    relay.restore("127.0.0.2")
    assert await round_trip(b, address, b"after") == b"after"
    up, down = relay.stats("127.0.0.2")
    assert (up.delivered, down.delivered) == (2, 2)


async def test_blackhole_drops_replies_too(stack: AsyncExitStack) -> None:
    server = await endpoint(stack, "127.0.0.1")  # answers by hand, after the blackhole
    relay, address = await relay_to(stack, server.address)
    client = await endpoint(stack, "127.0.0.2")
    client.send(b"question", address)
    ((_, upstream),) = await server.receive(1)
    relay.blackhole("127.0.0.2")
    server.send(b"answer", upstream)
    assert await client.silent_for(0.3)
    assert relay.stats("127.0.0.2")[1].dropped_blackhole == 1


async def test_set_profile_applies_live(stack: AsyncExitStack) -> None:
    server = await endpoint(stack, "127.0.0.1", echo=True)
    relay, address = await relay_to(stack, server.address)
    client = await endpoint(stack, "127.0.0.1")
    assert await round_trip(client, address, b"one") == b"one"
    relay.set_profile("127.0.0.1", PathProfile(up=LinkSpec(duplicate=1.0)))
    client.send(b"two", address)
    assert [data for data, _ in await client.receive(2)] == [b"two", b"two"]


async def test_idle_flows_close_and_max_flows_bounds_them(stack: AsyncExitStack) -> None:
    server = await endpoint(stack, "127.0.0.1", echo=True)
    relay, address = await relay_to(stack, server.address, max_flows=1, idle_timeout_s=0.2)
    a = await endpoint(stack, "127.0.0.1")
    b = await endpoint(stack, "127.0.0.1")
    assert await round_trip(a, address, b"a") == b"a"
    ((_, first_upstream),) = await server.receive(1)

    b.send(b"refused", address)
    assert await b.silent_for(0.05)
    assert relay.refused_packets == 1
    assert relay.flow_count == 1

    async with asyncio.timeout(PATIENCE_S):
        while relay.flow_count:
            await asyncio.sleep(0.05)
    assert await round_trip(b, address, b"b") == b"b"
    ((_, second_upstream),) = await server.receive(1)
    assert second_upstream != first_upstream  # a fresh upstream socket for the new flow
    assert relay.stats("127.0.0.1")[0].packets_in == 2  # the path's totals outlive flows


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": ("10.0.0.1", 4433)}, "target must be in 127.0.0.0/8"),
        ({"target": ("localhost", 4433)}, "target must be a loopback IP"),
        ({"target": ("127.0.0.1", 0)}, "target port"),
        ({"listen": ("0.0.0.0", 0)}, "listen must be in 127.0.0.0/8"),
        ({"listen": ("::", 0)}, "listen must be in"),
        ({"max_flows": 0}, "max_flows"),
        ({"idle_timeout_s": 0.0}, "idle_timeout_s"),
        ({"profiles": {"not-an-ip": PathProfile()}}, "IP address"),
    ],
)
def test_refuses_anything_but_loopback_and_bad_limits(
    kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"target": ("127.0.0.1", 4433), **kwargs}
    with pytest.raises(ValueError, match=message):
        UdpRelay(**arguments)  # type: ignore[arg-type]


async def test_ipv6_loopback(stack: AsyncExitStack) -> None:
    server = await endpoint(stack, "::1", echo=True)
    _, address = await relay_to(stack, server.address, listen=("::1", 0))
    client = await endpoint(stack, "::1")
    assert await round_trip(client, address, b"six") == b"six"


async def _echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read())
    writer.write_eof()


async def test_quic_handshake_and_request_through_a_delayed_lossy_relay(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    pair = generate_self_signed(tmp_path)
    server_config = QuicConfiguration(is_client=False, alpn_protocols=["echo"])
    server_config.load_cert_chain(pair.certificate, pair.private_key)
    tasks: set[asyncio.Task[None]] = set()

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(_echo_stream(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: QuicServer(configuration=server_config, stream_handler=on_stream),
        local_addr=("127.0.0.1", 0),
    )
    stack.callback(transport.close)
    server_address = transport.get_extra_info("sockname")[:2]
    lossy = LinkSpec(delay_ms=30, loss=0.02)
    relay, address = await relay_to(stack, server_address, default=PathProfile(lossy, lossy))

    client_config = QuicConfiguration(is_client=True, alpn_protocols=["echo"])
    client_config.server_name = "localhost"
    client_config.verify_mode = ssl.CERT_REQUIRED
    client_config.load_verify_locations(str(pair.ca_certificate))
    payload = os.urandom(60_000)
    started = time.monotonic()
    async with asyncio.timeout(15), connect(*address, configuration=client_config) as client:
        reader, writer = await client.create_stream()
        writer.write(payload)
        writer.write_eof()
        echoed = await reader.read()
    assert echoed == payload
    assert time.monotonic() - started >= 0.12  # at least two round trips of 2 x 30 ms
    up, down = relay.stats("127.0.0.1")
    assert up.bytes_in > len(payload) and down.bytes_in > len(payload)


async def test_command_line_relays_until_sigterm(stack: AsyncExitStack) -> None:
    server = await endpoint(stack, "127.0.0.1", echo=True)
    target = "{}:{}".format(*server.address)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netsched_lab.relay", "--target", target,
        "--delay-ms", "5", "--profile", "127.0.0.2:up.duplicate=1",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(PATIENCE_S * 2):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("listening on 127.0.0.1:")
        address = ("127.0.0.1", int(line.rsplit(":", 1)[1]))
        client = await endpoint(stack, "127.0.0.2")
        client.send(b"hello", address)
        assert [data for data, _ in await client.receive(2)] == [b"hello", b"hello"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await process.communicate()
    assert process.returncode == 0
    assert "127.0.0.2 up LinkStats(packets_in=1," in stderr.decode()
