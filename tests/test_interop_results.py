"""Result records: JSON round trip, Markdown matrix, whose failure a result is."""

from __future__ import annotations

import json

import pytest

from interop.cases import Role
from interop.results import Result, Verdict, from_json, markdown, merge, to_json

RESULTS = [
    Result("aioquic", "handshake", Role.CLIENT, Verdict.PASS, 1.25, client="netsched"),
    Result(
        "aioquic", "retry", Role.SERVER, Verdict.FAIL, 3.0, reason="no Retry", alpn="hq-interop"
    ),
    Result("ngtcp2", "handshake", Role.CLIENT, Verdict.PASS, 0.5, notes=("run over h3",)),
    Result("ngtcp2", "v2", Role.CLIENT, Verdict.UNSUPPORTED, reason="v2 draft only"),
    Result("aioquic", "retry", Role.BASELINE, Verdict.FAIL, 2.0, reason="peer bug"),
    Result("netsched", "retry", Role.BASELINE, Verdict.FAIL, 2.0, reason="our bug"),
    Result("picoquic", "handshake", Role.CLIENT, Verdict.KNOWN_ISSUE, 1.0, reason="known"),
]


def test_json_round_trip() -> None:
    meta, back = from_json(to_json(RESULTS, {"date": "today"}))
    assert meta == {"date": "today"}
    assert back == RESULTS


def test_from_json_names_the_bad_record() -> None:
    data = json.loads(to_json(RESULTS[:2], {}))
    data["results"][1]["verdict"] = "maybe"
    with pytest.raises(ValueError, match=r"results\[1\]"):
        from_json(json.dumps(data))


def test_who_is_blamed() -> None:
    blamed = [(r.peer, r.role) for r in RESULTS if r.blames_netsched]
    # A peer failing against itself is the peer's problem; our own baseline is ours.
    assert blamed == [("aioquic", Role.SERVER), ("netsched", Role.BASELINE)]


def test_markdown_matrix() -> None:
    text = markdown(RESULTS, title="T", meta={"date": "today"})
    lines = text.splitlines()
    client_table = lines.index("## NetSched client → peer server")
    assert lines[client_table + 2] == "| peer | handshake | v2 |"
    assert lines[client_table + 4] == "| aioquic | ✅ 1.2s |   |"
    assert lines[client_table + 5] == "| ngtcp2 | ✅ 0.5s | ⚪ |"
    assert "| picoquic | ⚠️ 1.0s |   |" in lines
    assert (
        lines[4]
        == "Summary: 2 pass, 3 fail, 1 known-issue, 1 unsupported (2 of the failures NetSched's)."
    )
    failures = lines.index("## Failures")
    assert lines[failures + 2] == "- **aioquic / retry / server** (hq-interop): no Retry"
    assert (
        lines[lines.index("## Known peer issues") + 2]
        == "- **picoquic / handshake / client**: known"
    )
    assert lines[lines.index("## Notes") + 2] == "- run over h3 (handshake)"
    assert "- date: today" in lines


def test_a_measurement_shows_in_its_cell_and_survives_json() -> None:
    measured = Result(
        "quic-go", "goodput", Role.CLIENT, Verdict.PASS, 2.0, measurement="93.4 Mbit/s"
    )
    _, (back,) = from_json(to_json([measured], {}))
    assert back.measurement == "93.4 Mbit/s"
    assert "| quic-go | ✅ 93.4 Mbit/s |" in markdown([back], title="T", meta={})


def test_tables_list_cases_in_the_case_table_order() -> None:
    results = [
        Result("aioquic", name, Role.CLIENT, Verdict.PASS, 1.0)
        for name in ("zerortt", "gone-case", "v2", "handshake", "retry")
    ]
    lines = markdown(results, title="T", meta={}).splitlines()
    # The case table's order; a case it no longer has (an old run's) last.
    assert "| peer | handshake | retry | v2 | zerortt | gone-case |" in lines


def test_merge_keeps_the_latest_result_and_every_run() -> None:
    first = [
        Result("aioquic", "handshake", Role.CLIENT, Verdict.FAIL, 1.0, reason="flaky"),
        Result("aioquic", "retry", Role.CLIENT, Verdict.PASS, 1.0),
    ]
    second = [
        Result("aioquic", "handshake", Role.CLIENT, Verdict.PASS, 2.0),
        Result("aioquic", "handshake", Role.SERVER, Verdict.PASS, 2.0),
    ]
    runs = [
        ("a", {"date": "d1", "command": "`c1`", "machine": "m", "peer aioquic": "old"}, first),
        ("b", {"date": "d2", "command": "`c2`", "peer aioquic": "new"}, second),
    ]
    meta, merged = merge(runs)
    assert merged == [second[0], first[1], second[1]]  # a replaced result keeps its place
    assert meta == {
        "run 1 (a)": "d1, `c1`: 1 of its 2 results shown",
        "run 2 (b)": "d2, `c2`: 2 of its 2 results shown",
        "machine": "m",
        "peer aioquic": "new",
    }
