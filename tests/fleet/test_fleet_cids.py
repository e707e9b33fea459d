"""The fleet's QUIC-LB configuration in etcd: one for every host, and the CIDs a
host's workers issue name that host and worker to the holder of the key only."""

from __future__ import annotations

import asyncio

import pytest

from netsched_edge.fleet.cid_config import FleetCidConfig, ensure_cid_config
from netsched_edge.fleet.etcd import Etcd, EtcdError
from netsched_edge.fleet.layout import Layout

pytestmark = pytest.mark.timeout(20)


async def test_every_host_gets_the_same_configuration(etcd: Etcd, layout: Layout) -> None:
    configs = await asyncio.gather(*(ensure_cid_config(etcd, layout) for _ in range(3)))
    assert configs[0] == configs[1] == configs[2]
    assert len(configs[0].key) == 16 and configs[0].scheme.cid_length == 8


async def test_a_hosts_cids_locate_its_workers(etcd: Etcd, layout: Layout) -> None:
    config = await ensure_cid_config(etcd, layout)
    for host, worker in ((1, 0), (7, 3), (255, 254)):
        issued = [config.for_host(host).for_worker(worker).generate() for _ in range(8)]
        assert {len(cid) for cid in issued} == {8}
        assert {config.locate(cid) for cid in issued} == {(host, worker)}
        assert len({cid[1:3] for cid in issued}) > 1  # the route is not in the clear
    other = FleetCidConfig(key=bytes(16), config_rotation=1)
    assert other.locate(config.for_host(1).for_worker(0).generate()) is None  # other codepoint


async def test_a_bad_configuration_in_etcd_is_an_error(etcd: Etcd, layout: Layout) -> None:
    await etcd.put(layout.quic_lb, b'{"key": "00", "config_rotation": 0}')
    with pytest.raises(EtcdError, match=f"etcd:{layout.quic_lb}: not a QUIC-LB configuration"):
        await ensure_cid_config(etcd, layout)
