"""Known peer issues match a failure by peer, case and role, and by the signs it shows."""

from __future__ import annotations

import json

import pytest

from interop.cases import CASES_BY_NAME, Role
from interop.known import KNOWN_ISSUES, KnownIssue, Sign, Source, find, listed

# trace.json of a qh3 client that never followed the server to v2 (a real run's summary).
V2_STUCK = json.dumps(
    {
        "long_header_packets": {"client initial": 24, "server handshake": 19},
        "server_initial_versions": ["0x00000001", "0x6b3343cf"],
    },
    indent=2,
)
GAVE_UP = "client exited with status 1 (last log line: qh3 endpoint: ConnectionError: )"


def lookup(peer: str, case: str, role: Role, texts: dict[Source, str]) -> KnownIssue | None:
    return find(peer, case, role, lambda source: texts.get(source, ""))


def test_an_issue_matches_only_the_failure_it_documents() -> None:
    capacity = {Source.SERVER_LOG: "RuntimeError: packet builder capacity exhausted"}
    assert lookup("qh3", "rebind-port", Role.CLIENT, capacity) is not None
    timeout = {Source.REASON: "client did not finish within 60 s", Source.SERVER_LOG: "ok"}
    assert listed("qh3", "rebind-port", Role.CLIENT)
    assert lookup("qh3", "rebind-port", Role.CLIENT, timeout) is None
    # Same evidence, a role the issue is not listed for.
    assert lookup("qh3", "rebind-port", Role.SERVER, capacity) is None


def test_absent_signs_tell_a_stuck_v2_client_from_one_that_got_further() -> None:
    stuck = {Source.REASON: GAVE_UP, Source.TRACE: V2_STUCK}
    issue = lookup("qh3", "v2", Role.SERVER, stuck)
    assert issue is not None and "does not follow" in issue.summary
    further = V2_STUCK.replace('"server handshake"', '"client handshake": 2, "server handshake"')
    assert lookup("qh3", "v2", Role.SERVER, {**stuck, Source.TRACE: further}) is None


def test_certificate_refusal_needs_a_client_that_never_reached_1rtt() -> None:
    summary = '{\n  "one_rtt_packets": {\n    "client": 0,\n    "server": 0\n  }\n}'
    refused = {Source.REASON: GAVE_UP, Source.TRACE: summary}
    assert lookup("qh3-1", "amplificationlimit", Role.BASELINE, refused) is not None
    later = {**refused, Source.TRACE: summary.replace('"client": 0', '"client": 40')}
    assert lookup("qh3-1", "amplificationlimit", Role.BASELINE, later) is None


def test_every_issue_names_a_listed_case_and_a_valid_sign() -> None:
    for issue in KNOWN_ISSUES:
        assert issue.case in CASES_BY_NAME and issue.signs
        for sign in issue.signs:
            assert sign.holds(lambda _: "") is sign.absent  # a regex that compiles
    with pytest.raises(ValueError, match="needs a sign"):
        KnownIssue("p", "handshake", frozenset({Role.CLIENT}), "s", "e", ())
    assert str(Sign("x", Source.TRACE, absent=True)) == "trace.json without /x/"


def test_a_stored_failure_is_rejudged_on_its_stored_evidence(tmp_path) -> None:
    """`report` applies a known issue listed after the run, from the run's reason and logs;
    another failure stays a failure, and a pass is never touched."""
    from interop.results import Result, Verdict
    from interop.runner import rejudge_known

    logdir = tmp_path / "logs" / "aioquic" / "client" / "connectionmigration"
    logdir.mkdir(parents=True)
    (logdir / "client.log").write_text("moved\n")
    logs = {"client.log": "logs/aioquic/client/connectionmigration/client.log"}
    challenge = (
        "first server packet on new path x did not contain a PATH_CHALLENGE frame (frames 0x2)"
    )
    failed = Result(
        "aioquic", "connectionmigration", Role.CLIENT, Verdict.FAIL, reason=challenge, logs=logs
    )
    assert rejudge_known(failed, tmp_path).verdict is Verdict.KNOWN_ISSUE
    other = Result(
        "aioquic", "connectionmigration", Role.CLIENT, Verdict.FAIL, reason="timeout", logs=logs
    )
    assert rejudge_known(other, tmp_path) == other
    passed = Result("aioquic", "connectionmigration", Role.CLIENT, Verdict.PASS, logs=logs)
    assert rejudge_known(passed, tmp_path) == passed
