"""`python -m netsched_edge.fleet` against a real etcd, as an operator runs it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from fleet_support import EtcdServer, config_text

from netsched_edge.fleet.config_watch import ConfigStatus
from netsched_edge.fleet.etcd import Etcd
from netsched_edge.fleet.layout import Layout
from netsched_edge.fleet.membership import Member, MembershipSettings

pytestmark = pytest.mark.timeout(20)


async def fleet(etcd_server: EtcdServer, layout: Layout, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "netsched_edge.fleet",
        "--etcd",
        etcd_server.endpoint,
        "--prefix",
        layout.prefix,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_put_config_checks_the_file_first(
    etcd_server: EtcdServer, etcd: Etcd, layout: Layout, tmp_path: Path
) -> None:
    good = tmp_path / "edge.toml"
    good.write_text(config_text("api"))
    status, out, _ = await fleet(etcd_server, layout, "put-config", str(good))
    kv = await etcd.get(layout.config)
    assert status == 0 and kv is not None and kv.value == good.read_bytes()
    assert f"revision {kv.mod_revision}" in out

    bad = tmp_path / "bad.toml"
    bad.write_text(config_text("api") + 'retries = "many"\n')
    status, _, err = await fleet(etcd_server, layout, "put-config", str(bad))
    assert status == 1 and f"{bad}:6: services[0].backends[0].retries: unknown key" in err
    assert (await etcd.get(layout.config)) == kv  # unchanged

    status, out, _ = await fleet(etcd_server, layout, "get-config")
    assert status == 0 and out == good.read_text()


async def test_members_shows_health_ids_and_config(
    etcd_server: EtcdServer, etcd: Etcd, layout: Layout
) -> None:
    revision = await etcd.put(layout.config, config_text("api").encode())
    settings = MembershipSettings(ttl_s=5, idle_hold_s=30)
    async with Member(etcd, layout, "edge-a", "192.0.2.1", (4433, 4434), settings) as a:
        await etcd.put(layout.config_status("edge-a"), ConfigStatus(revision, True).encode())
        async with Member(etcd, layout, "edge-b", "192.0.2.2", (), settings):
            refused = ConfigStatus(revision, False, "etcd:x:3: services[0].policy: no")
            await etcd.put(layout.config_status("edge-b"), refused.encode())
        status, out, _ = await fleet(etcd_server, layout, "members")
    assert status == 0
    lines = out.splitlines()
    assert lines[1].split()[:4] == ["1", "edge-a", "192.0.2.1", ":4433,4434"]
    assert lines[1].endswith(f"applied revision {revision}") and a.info is None
    assert "server ID 2 held for edge-b (gone): free in" in out  # edge-b left
    assert f"config: revision {revision}" in out and "key rotator: (none)" in out


async def test_no_etcd_is_one_line_and_status_1(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "netsched_edge.fleet",
        "--etcd",
        "http://127.0.0.1:9",
        "members",
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 1
    assert err.decode().startswith("netsched-edge fleet: etcd at http://127.0.0.1:9")
    assert len(err.decode().splitlines()) == 1


async def test_cid_schedule_sets_and_clears_the_rotation_schedule(
    etcd_server: EtcdServer, layout: Layout
) -> None:
    status, out, _ = await fleet(etcd_server, layout, "cid-schedule", "7200", "--grace", "600")
    assert status == 0, out
    assert "rotated every 7200 s by the key rotator (next in 7" in out
    assert out.rstrip().endswith("each replaced one routed 600 s more")
    status, out, _ = await fleet(etcd_server, layout, "members")
    assert status == 0 and "QUIC-LB codepoint 0, rotated every 7200 s" in out
    status, _, err = await fleet(etcd_server, layout, "cid-schedule", "60", "--grace", "600")
    assert status == 2 and "grace (600 s) <= every (60.0 s)" in err
    status, _, err = await fleet(etcd_server, layout, "cid-schedule", "never")
    assert status == 2 and "'off'" in err
    status, out, _ = await fleet(etcd_server, layout, "cid-schedule", "off")
    assert status == 0 and out.strip() == "QUIC-LB codepoint 0, rotated by hand (fleet rotate-cids)"
