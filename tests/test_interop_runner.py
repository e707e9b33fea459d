"""The runner: a real test between real processes on loopback, and how results are judged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interop.cases import CASES_BY_NAME, Role, Side
from interop.known import KnownIssue
from interop.peers import NETSCHED, Job, registry
from interop.procs import Launch
from interop.results import Result, Verdict
from interop.runner import Outcome, Runner, Settings, client_launch, judge, pairings, read_reports
from interop.tap import Observed, Trace
from interop.wire import QUIC_V1, Packet, PacketType


def clean_trace() -> Trace:
    trace = Trace()
    trace.packets = [Observed(False, Packet(PacketType.INITIAL, 1200, QUIC_V1, b"c", b"s"))]
    return trace


BASE = Result("aioquic", "handshake", Role.SERVER, Verdict.UNSUPPORTED)
ISSUE = KnownIssue("aioquic", "handshake", frozenset({Role.SERVER}), "a bug", "a log line")


def test_judge(tmp_path: Path) -> None:
    case = CASES_BY_NAME["handshake"]
    (tmp_path / "client.log").write_text("$ cmd\nTraceback\nBoom: it broke\n")
    ok = Outcome(exit_code=0, trace=clean_trace())
    assert judge(BASE, case, ok, tmp_path).verdict is Verdict.PASS
    stale = judge(BASE, case, ok, tmp_path, (ISSUE,))
    assert stale.verdict is Verdict.PASS and "did not reproduce: a bug" in stale.notes[0]
    crashed = judge(BASE, case, Outcome(exit_code=1, trace=clean_trace()), tmp_path)
    assert crashed.verdict is Verdict.FAIL
    assert crashed.reason == "client exited with status 1 (last log line: Boom: it broke)"
    known = judge(BASE, case, Outcome(exit_code=1), tmp_path, (ISSUE,))
    assert known.verdict is Verdict.KNOWN_ISSUE and known.reason.startswith("a bug (evidence")
    refused = judge(BASE, case, Outcome(exit_code=127), tmp_path)
    assert (refused.verdict, refused.reason) == (Verdict.UNSUPPORTED, "client exit status 127")
    bad_file = judge(BASE, case, Outcome(exit_code=0, files_problem="f: differs"), tmp_path)
    assert (bad_file.verdict, bad_file.reason) == (Verdict.FAIL, "f: differs")
    no_handshake = judge(BASE, case, Outcome(exit_code=0), tmp_path)
    assert no_handshake.reason.startswith("expected exactly one version")


async def test_netsched_against_itself_end_to_end(tmp_path: Path) -> None:
    peers = registry(tmp_path / "cache")
    lines: list[str] = []
    runner = Runner(Settings(results_dir=tmp_path, log=lines.append), peers[NETSCHED])
    try:
        results = await runner.run(
            [peers[NETSCHED], peers["aioquic"]],
            [CASES_BY_NAME["handshake"], CASES_BY_NAME["mp-failover"]],
            [Role.CLIENT, Role.BASELINE],
        )
    finally:
        runner.close()
    by_peer = {
        (r.peer, r.case): r for r in results if r.role is not Role.BASELINE or r.peer == NETSCHED
    }
    ours = by_peer[(NETSCHED, "handshake")]
    assert ours.verdict is Verdict.PASS, ours.reason
    assert ours.role is Role.BASELINE and ours.alpn == "hq-interop"
    assert ours.trace["handshakes"] == 1
    assert (tmp_path / ours.logs["server.log"]).read_text().startswith("$ ")
    assert "SERVER_HANDSHAKE_TRAFFIC_SECRET" in (tmp_path / ours.logs["client.keys"]).read_text()
    assert json.loads((tmp_path / "logs/netsched/baseline/handshake/trace.json").read_text())
    # Two client IPs through tap and relay; the relay cut 127.0.0.1 mid-transfer.
    failover = by_peer[(NETSCHED, "mp-failover")]
    assert failover.verdict is Verdict.PASS, failover.reason
    assert list(failover.trace["marks"]) == ["blackhole 127.0.0.1"]
    link = failover.trace["link"]
    assert link["127.0.0.1"]["server_to_client"]["dropped"] > 0
    assert link["127.0.0.2"]["server_to_client"]["dropped"] == 0
    # A peer whose install is missing is a setup failure, reported without running.
    missing = by_peer[("aioquic", "handshake")]
    assert missing.verdict is Verdict.SETUP_FAILED and "not installed" in missing.reason
    # NetSched plays itself only as a baseline; aioquic in both roles asked for.
    assert [(r.peer, r.role) for r in results[::2]] == [
        (NETSCHED, Role.BASELINE),
        ("aioquic", Role.CLIENT),
        ("aioquic", Role.BASELINE),
    ]
    assert len(lines) == 6 and " pass " in lines[0]


def test_pairings_cover_each_role_once(tmp_path: Path) -> None:
    peers = registry(tmp_path)
    roles = [p.role for p in pairings(peers["picoquic"], peers[NETSCHED], [Role.SERVER])]
    assert roles == [Role.SERVER]
    with pytest.raises(KeyError):
        pairings(peers["picoquic"], peers[NETSCHED], ["nonsense"])  # type: ignore[list-item]


def test_client_gets_the_case_locals_and_its_reports_are_read(tmp_path: Path) -> None:
    peers = registry(tmp_path)
    job = Job(Side.CLIENT, "mp-transfer", "hq-interop", 4433, tmp_path, tmp_path, tmp_path / "k")
    launch = client_launch(peers[NETSCHED], job, CASES_BY_NAME["mp-transfer"])
    assert launch.env["LOCALS"] == "127.0.0.1 127.0.0.2"
    plain = client_launch(peers[NETSCHED], job, CASES_BY_NAME["transfer"])
    assert "LOCALS" not in plain.env and isinstance(plain, Launch)
    log = tmp_path / "client.log"
    log.write_text('$ cmd\n{"event": "abandon", "local": "127.0.0.1"}\n{"event": 3}\nnot json\n')
    assert read_reports(log) == [{"event": "abandon", "local": "127.0.0.1"}]
    assert read_reports(tmp_path / "missing.log") == []
