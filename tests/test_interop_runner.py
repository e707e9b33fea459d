"""The runner: a real test between real processes on loopback, and how results are judged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import PolicyBuilder, Store

from interop import cli
from interop.cases import CASES, CASES_BY_NAME, Role, Side
from interop.known import KnownIssue, Sign, Source
from interop.peers import NETSCHED, Job, registry
from interop.procs import Launch
from interop.results import Result, Verdict, to_json
from interop.runner import (
    Outcome,
    Runner,
    Settings,
    client_launch,
    judge,
    make_certificate_chain,
    pairings,
    read_reports,
)
from interop.tap import Observed, Trace
from interop.wire import QUIC_V1, Packet, PacketType


def clean_trace() -> Trace:
    trace = Trace()
    trace.packets = [Observed(False, Packet(PacketType.INITIAL, 1200, QUIC_V1, b"c", b"s"))]
    return trace


BASE = Result("aioquic", "handshake", Role.SERVER, Verdict.UNSUPPORTED)
ISSUE = KnownIssue(
    "aioquic",
    "handshake",
    frozenset({Role.SERVER}),
    "a bug",
    "a log line",
    (Sign("Boom: it broke", Source.CLIENT_LOG),),
)


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
    # The same peer, case and role failing another way is a failure, and says so.
    (tmp_path / "client.log").write_text("$ cmd\nTimeout\n")
    other = judge(BASE, case, Outcome(exit_code=1), tmp_path, (ISSUE,))
    assert other.verdict is Verdict.FAIL
    assert other.notes == (
        "not the known issue 'a bug', which wants client.log with /Boom: it broke/",
    )
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
    # ... and the other path dropped only PMTU probes above the lab's 1500-byte MTU
    kept = link["127.0.0.2"]["server_to_client"]
    assert kept["dropped"] == kept["dropped_too_big"]
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


def test_certificate_chain_is_long_and_verifies(tmp_path: Path) -> None:
    folder = make_certificate_chain(tmp_path, 9)
    chain = x509.load_pem_x509_certificates((folder / "cert.pem").read_bytes())
    (root,) = x509.load_pem_x509_certificates((folder / "ca.pem").read_bytes())
    assert len(chain) == 9  # the leaf and 8 intermediates; the root only in ca.pem
    # Well over what the amplificationlimit rule wants the server to send.
    assert sum(len(c.public_bytes(Encoding.DER)) for c in chain) > 7500
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .max_chain_depth(16)
        .build_server_verifier(x509.DNSName("localhost"))
    )
    assert len(verifier.verify(chain[0], chain[1:])) == 10
    assert (folder / "priv.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
    with pytest.raises(ValueError, match="at least 2"):
        make_certificate_chain(tmp_path, 1)


def test_netsched_runs_every_case_in_both_roles(tmp_path: Path) -> None:
    """Resumption, 0-RTT and migration go through the SDK's and the edge's own API."""
    peers = registry(tmp_path)
    ours, aioquic = peers[NETSCHED], peers["aioquic"]
    assert [(c.name, s) for c in CASES for s in Side if ours.unsupported(c, s)] == []
    assert aioquic.unsupported(CASES_BY_NAME["zerortt"], Side.CLIENT) is None
    assert "active-migration" in str(
        aioquic.unsupported(CASES_BY_NAME["connectionmigration"], Side.CLIENT)
    )


def test_cli_run_resolves_a_relative_out_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []

    async def run(self: Runner, peers: object, cases: object, roles: object) -> list[Result]:
        seen.append(self.settings.results_dir)
        return []

    monkeypatch.setattr(Runner, "run", run)
    monkeypatch.chdir(tmp_path)
    argv = ["--cache", str(tmp_path / "cache"), "run", "--out", "rel/out", "--cases", "handshake"]
    assert cli.main([*argv, "--peers", NETSCHED]) == 0
    # Endpoints run in their own working directories: the folder they log to is absolute.
    assert seen == [tmp_path / "rel" / "out"]
    assert (tmp_path / "rel" / "out" / "matrix.json").is_file()


def test_cli_report_renders_one_folder_or_publishes_several_merged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = tmp_path / "RESULTS.md"
    monkeypatch.setattr(cli, "RESULTS_FILE", published)
    old, new = tmp_path / "2026-11-26", tmp_path / "2026-11-26-2"
    runs = {
        old: [Result("aioquic", "zerortt", Role.SERVER, Verdict.FAIL, 1.0, reason="too much")],
        new: [
            Result("aioquic", "zerortt", Role.SERVER, Verdict.PASS, 1.0),
            Result("aioquic", "handshake", Role.SERVER, Verdict.PASS, 1.0),
        ],
    }
    for folder, results in runs.items():
        folder.mkdir()
        meta = {"date": folder.name, "command": f"`run {folder.name}`"}
        (folder / "matrix.json").write_text(to_json(results, meta))
    # One folder: its matrix.md, as `run` writes it; nothing published.
    assert cli.main(["report", str(old)]) == 0
    assert "too much" in (old / "matrix.md").read_text() and not published.exists()
    # Several need --publish; the later run's zerortt replaces the earlier one's.
    assert cli.main(["report", str(old), str(new)]) == cli.EXIT_USAGE
    assert cli.main(["report", "--publish", str(old), str(new)]) == 0
    table = published.read_text()
    assert "Summary: 2 pass." in table and "too much" not in table
    assert "- run 1 (2026-11-26): 2026-11-26, `run 2026-11-26`: 0 of its 1 results shown" in table
    assert "| aioquic | ✅ 1.0s | ✅ 1.0s |" in table  # handshake before zerortt
    assert cli.main(["report", str(tmp_path / "missing")]) == cli.EXIT_USAGE


def test_qlog_folders_are_made_for_the_endpoints(tmp_path: Path) -> None:
    runner = Runner(Settings(results_dir=tmp_path / "out", qlog=True), registry(tmp_path)[NETSCHED])
    try:
        case = CASES_BY_NAME["ipv6"]
        job = runner._job(Side.SERVER, case, "hq-interop", 4433, tmp_path, tmp_path / "logs")
    finally:
        runner.close()
    assert job.qlog_dir is not None and job.qlog_dir.is_dir()
    assert job.host == "::1"  # the case's address family reaches the endpoint
