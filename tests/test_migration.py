"""Session.migrate: the client moves to a new local address mid-session (real sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support import service

from netsched_client.proto.multipath import events as mpe
from netsched_edge.config import BackendConfig

BIG = bytes(range(256)) * (8 * 1024)  # 2 MiB: far beyond 3x what an unvalidated address may get


def _files(root: Path):
    (root / "big.bin").write_bytes(BIG)
    (root / "small.txt").write_bytes(b"small")
    return service("files", BackendConfig(name="f", kind="static", root=root), max_body=4 << 20)


def _edge_peer(edge) -> tuple[str, int]:
    (connection,) = edge.connections
    return connection._driver.quic._network_paths[0].addr


async def test_single_path_session_moves_with_a_new_connection_id(
    start_edge, open_client, www: Path
) -> None:
    edge = await start_edge(_files(www), multipath=False)
    session = await open_client(edge)
    assert not session.multipath
    assert (await session.request("files", meta={"path": "/small.txt"})).body == b"small"
    quic = session._driver.quic
    before_cid, before_addr = quic._peer_cid.cid, _edge_peer(edge)
    assert session.can_migrate
    assert await session.migrate() == 0
    response = await session.request("files", meta={"method": "GET", "path": "/big.bin"})
    assert response.body == BIG  # sent to the new address: the edge validated it
    after_addr = _edge_peer(edge)
    assert after_addr != before_addr
    assert after_addr[1] == session._paths._endpoint._path_sockets[0].local_address[1]
    assert quic._peer_cid.cid != before_cid  # RFC 9000 §9.5: unlinkable


async def test_multipath_session_moves_make_before_break(
    start_edge, open_client, www: Path
) -> None:
    edge = await start_edge(_files(www))
    session = await open_client(edge)
    assert session.multipath
    path_id = await session.migrate("127.0.0.2")
    assert path_id != 0
    response = await session.request("files", meta={"method": "GET", "path": "/big.bin"})
    assert response.body == BIG
    for _ in range(100):
        if any(isinstance(e, mpe.PathAbandoned) and e.path_id == 0 for e in session.path_events):
            break
        await asyncio.sleep(0.01)
    states = {p.path_id: p.state for p in session.paths}
    assert states[path_id] == "active" and states.get(0) != "active", states
