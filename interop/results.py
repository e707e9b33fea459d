"""Results of a run: one record per peer x case x role, as JSON and as Markdown.

Verdicts, and who they count against:
- pass / fail: a real result. A fail in role client or server, or of NetSched
  against itself, counts against NetSched (the CI exit code), unless it
  matches a known peer bug (known-issue).
- known-issue: failed the way a documented bug of the peer makes it fail;
  `reason` names the bug and its evidence.
- unsupported: an endpoint cannot be told to do what the case needs (said
  before running) or answered the runner's exit status 127.
- pending: the case needs something that is not built yet.
- setup-failed: the peer is not installed (`python -m interop setup`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from .cases import CASES, Role

NETSCHED = "netsched"  # the peer name of this repository's stack (peers/netsched.py)


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    KNOWN_ISSUE = "known-issue"
    UNSUPPORTED = "unsupported"
    PENDING = "pending"
    SETUP_FAILED = "setup-failed"


SYMBOLS: Mapping[Verdict, str] = {
    Verdict.PASS: "✅",
    Verdict.FAIL: "❌",
    Verdict.KNOWN_ISSUE: "⚠️",
    Verdict.UNSUPPORTED: "⚪",
    Verdict.PENDING: "⏳",
    Verdict.SETUP_FAILED: "🚫",
}
LEGEND = (
    "✅ pass · ❌ fail · ⚠️ known peer issue (see reason) · ⚪ unsupported by an endpoint · "
    "⏳ pending (not built yet) · 🚫 peer not installed"
)
_ROLE_TITLES: Mapping[Role, str] = {
    Role.CLIENT: "NetSched client → peer server",
    Role.SERVER: "peer client → NetSched edge",
    Role.BASELINE: "peer client → same peer's server (baseline)",
}


@dataclass(frozen=True, slots=True)
class Result:
    peer: str
    case: str
    role: Role
    verdict: Verdict
    duration_s: float = 0.0
    reason: str = ""
    client: str = ""
    server: str = ""
    alpn: str = ""
    notes: tuple[str, ...] = ()  # weaker checks, protocol substitutions
    logs: Mapping[str, str] = field(default_factory=dict)  # name -> path
    trace: Mapping[str, Any] = field(default_factory=dict)  # the tap's summary
    measurement: str = ""  # a measurement case's figure (goodput), e.g. "93.4 Mbit/s"

    @property
    def blames_netsched(self) -> bool:
        """A failure with NetSched on one side (a peer against itself is the peer's)."""
        ours = self.role is not Role.BASELINE or self.peer == NETSCHED
        return self.verdict is Verdict.FAIL and ours


def to_json(results: Sequence[Result], meta: Mapping[str, Any]) -> str:
    return json.dumps(
        {"meta": dict(meta), "results": [asdict(r) for r in results]}, indent=2, sort_keys=False
    )


def from_json(text: str) -> tuple[dict[str, Any], list[Result]]:
    data = json.loads(text)
    results = []
    for index, item in enumerate(data.get("results", [])):
        try:
            item["role"] = Role(item["role"])
            item["verdict"] = Verdict(item["verdict"])
            item["notes"] = tuple(item.get("notes", ()))
            results.append(Result(**item))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"results[{index}]: {exc}") from None
    return dict(data.get("meta", {})), results


def merge(
    runs: Sequence[tuple[str, Mapping[str, Any], Sequence[Result]]],
) -> tuple[dict[str, Any], list[Result]]:
    """One matrix from several runs, each (name, meta, results), oldest first.

    A later run's result for a peer, case and role replaces an earlier one's.
    The meta names every run with its date and command, and how many of its
    results the matrix kept; the other meta entries (machine, peers) are
    taken from all runs, a later one's winning.
    """
    merged: dict[tuple[str, str, Role], tuple[int, Result]] = {}
    for index, (_, _, results) in enumerate(runs):
        merged.update(((r.peer, r.case, r.role), (index, r)) for r in results)
    kept = Counter(index for index, _ in merged.values())
    meta: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    for index, (name, run_meta, results) in enumerate(runs):
        meta[f"run {index + 1} ({name})"] = (
            f"{run_meta.get('date', 'no date')}, {run_meta.get('command', 'no command')}: "
            f"{kept[index]} of its {len(results)} results shown"
        )
        shared.update((k, v) for k, v in run_meta.items() if k not in ("date", "command"))
    return {**meta, **shared}, [r for _, r in merged.values()]


def markdown(results: Sequence[Result], *, title: str, meta: Mapping[str, Any]) -> str:
    """Tables per role (peers x cases); then what did not pass, with reasons; then notes."""
    lines = [f"# {title}", ""]
    lines += [f"- {key}: {value}" for key, value in meta.items()]
    lines += ["", f"Summary: {summary(results)}.", "", LEGEND, ""]
    for role in Role:
        subset = [r for r in results if r.role is role]
        if subset:
            lines += [f"## {_ROLE_TITLES[role]}", "", *_table(subset), ""]
    for heading, verdicts in _SECTIONS:
        shown = [r for r in results if r.verdict in verdicts]
        if shown:
            lines += [f"## {heading}", "", *(_detail(r) for r in shown), ""]
    notes = _notes(results)
    if notes:
        lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines)


_SECTIONS = (
    ("Failures", (Verdict.FAIL,)),
    ("Known peer issues", (Verdict.KNOWN_ISSUE,)),
    ("Unsupported and not installed", (Verdict.UNSUPPORTED, Verdict.SETUP_FAILED)),
)


def summary(results: Sequence[Result]) -> str:
    """Counts per verdict, and how many failures are NetSched's."""
    counts = [(v, sum(r.verdict is v for r in results)) for v in Verdict]
    text = ", ".join(f"{n} {v}" for v, n in counts if n)
    ours = sum(r.blames_netsched for r in results)
    return f"{text} ({ours} of the failures NetSched's)" if ours else text


def _notes(results: Sequence[Result]) -> list[str]:
    """Each note once, with the cases it was made for (weaker checks, links, h3 runs)."""
    cases: dict[str, list[str]] = {}
    for result in results:
        for note in result.notes:
            seen = cases.setdefault(note, [])
            if result.case not in seen:
                seen.append(result.case)
    return [f"- {note} ({', '.join(names)})" for note, names in cases.items()]


def _table(results: Sequence[Result]) -> list[str]:
    cases = sorted(_ordered(r.case for r in results), key=_case_order)
    peers = _ordered(r.peer for r in results)
    cell = {(r.peer, r.case): r for r in results}
    rows = ["| peer | " + " | ".join(cases) + " |", "|---" * (len(cases) + 1) + "|"]
    for peer in peers:
        cells = [_cell(cell.get((peer, case))) for case in cases]
        rows.append(f"| {peer} | " + " | ".join(cells) + " |")
    return rows


def _cell(result: Result | None) -> str:
    if result is None:
        return " "
    if result.measurement:
        return f"{SYMBOLS[result.verdict]} {result.measurement}"
    if result.verdict in (Verdict.PASS, Verdict.FAIL, Verdict.KNOWN_ISSUE):
        return f"{SYMBOLS[result.verdict]} {result.duration_s:.1f}s"
    return SYMBOLS[result.verdict]


def _detail(result: Result) -> str:
    text = f"- **{result.peer} / {result.case} / {result.role}**"
    if result.alpn:
        text += f" ({result.alpn})"
    return f"{text}: {result.reason}" if result.reason else text


_CASE_ORDER = {case.name: index for index, case in enumerate(CASES)}


def _case_order(name: str) -> int:
    """The case table's order; a case no longer in it (an old run's) goes last."""
    return _CASE_ORDER.get(name, len(_CASE_ORDER))


def _ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
