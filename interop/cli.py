"""`python -m interop setup | run | list`.

setup   install the peers (idempotent); one line per peer, exit 1 if any failed
run     run the matrix, print progress, write interop/results/<date>/
        (matrix.json, matrix.md, logs/); exit 1 when a failure is NetSched's
run --ci  the CI subset: handshake, transfer and retry, and mp-handshake,
        mp-transfer, mp-failover and mp-abandon where both sides do multipath,
        against aioquic, ngtcp2 and
        picoquic in roles client and server (cases.CI_CASES, peers.CI_PEERS);
        a CI peer that is not installed fails the run
list    peers (and whether they are installed) and cases
report  rewrite matrix.md of a results folder from its matrix.json (--publish: RESULTS.md too);
        report --publish DIR1 DIR2 ...: one RESULTS.md from several folders' matrix.json,
        a later folder's result for a peer, case and role replacing an earlier one's
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import cases as case_table
from . import peers as peer_table
from .cases import Role
from .peers import NETSCHED, Peer, SetupError
from .results import Result, Verdict, from_json, markdown, merge, summary, to_json
from .runner import Runner, Settings, rejudge_known

INTEROP_DIR = Path(__file__).resolve().parent
RESULTS_FILE = INTEROP_DIR / "RESULTS.md"
TITLE = "NetSched interop results"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m interop", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, help="where peers are installed")
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="install peers")
    setup.add_argument("--peers", nargs="+", metavar="PEER")
    run = sub.add_parser("run", help="run test cases")
    run.add_argument("--peers", nargs="+", metavar="PEER")
    run.add_argument("--cases", nargs="+", metavar="CASE")
    run.add_argument("--role", nargs="+", choices=[r.value for r in Role], metavar="ROLE")
    run.add_argument("--ci", action="store_true", help="the CI subset (see module help)")
    run.add_argument("--out", type=Path, help="results folder (default interop/results/<date>)")
    run.add_argument("--qlog", action="store_true", help="ask endpoints for qlog traces")
    run.add_argument("--seed", type=int, default=1, help="seed of file names and contents")
    run.add_argument("--publish", action="store_true", help="also write interop/RESULTS.md")
    sub.add_parser("list", help="list peers and cases")
    report = sub.add_parser("report", help="render results folders' matrix.json again")
    report.add_argument(
        "folders",
        nargs="+",
        type=Path,
        metavar="FOLDER",
        help="interop/results/<date>; several (oldest first) are merged, with --publish",
    )
    report.add_argument("--publish", action="store_true", help="also write interop/RESULTS.md")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    registry = peer_table.registry(args.cache or peer_table.default_cache())
    try:
        if args.command == "setup":
            return setup(peer_table.select(registry, args.peers))
        if args.command == "list":
            return list_all(registry)
        if args.command == "report":
            return report(args.folders, publish=args.publish)
        return run(args, registry)
    except ValueError as exc:
        print(f"interop: {exc}", file=sys.stderr)
        return EXIT_USAGE


def setup(peers: Sequence[Peer]) -> int:
    failed = 0
    for peer in peers:
        print(f"== {peer.name}: {peer.description}", flush=True)
        if peer.status() is None:
            print(f"ok {peer.name} (already installed)", flush=True)
            continue
        try:
            peer.install(lambda line: print(f"   {line}", flush=True))
        except SetupError as exc:
            failed += 1
            print(f"!! {peer.name}: cannot install: {exc}", flush=True)
            continue
        status = peer.status()
        print(f"ok {peer.name}" if status is None else f"!! {peer.name}: {status}", flush=True)
        failed += status is not None
    return EXIT_FAILED if failed else EXIT_OK


def list_all(registry: dict[str, Peer]) -> int:
    print("peers:")
    for peer in registry.values():
        print(f"  {peer.name:<9} {peer.status() or 'installed':<14} {peer.description}")
    print("cases:")
    for case in case_table.CASES:
        state = f"pending: {case.pending}" if case.pending else case.description
        print(f"  {case.name:<19} {state}")
    return EXIT_OK


def run(args: argparse.Namespace, registry: dict[str, Peer]) -> int:
    if args.ci:
        peer_names = args.peers or list(peer_table.CI_PEERS)
        case_names = args.cases or list(case_table.CI_CASES)
        roles = [Role(r) for r in args.role] if args.role else [Role.CLIENT, Role.SERVER]
    else:
        peer_names, case_names = args.peers, args.cases
        roles = [Role(r) for r in args.role] if args.role else list(Role)
    peers = peer_table.select(registry, peer_names)
    selected_cases = case_table.select(case_names)
    # Absolute: endpoints run in their own working directories and get paths under it.
    out = (args.out or _results_dir()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"interop: {len(peers)} peers x {len(selected_cases)} cases → {out}", flush=True)
    settings = Settings(results_dir=out, seed=args.seed, qlog=args.qlog, log=_print)
    runner = Runner(settings, registry[NETSCHED])
    try:
        results = asyncio.run(runner.run(peers, selected_cases, roles))
    finally:
        runner.close()
    (out / "matrix.json").write_text(to_json(results, _meta(args, peers)) + "\n")
    report([out], publish=args.publish)
    return _exit_status(results, ci=args.ci)


def report(folders: Sequence[Path], *, publish: bool) -> int:
    """Render one folder's matrix.json as its matrix.md (and RESULTS.md when publishing),
    or several folders' merged (`results.merge`, oldest first) as RESULTS.md."""
    runs = [(folder.name, *_read_matrix(folder)) for folder in folders]
    # The known-issue list may have grown since a run: its signs are read from the stored
    # reasons and logs (a failure becomes known-issue only on evidence, never a pass).
    runs = [
        (name, meta, [rejudge_known(r, f) for r in rs])
        for f, (name, meta, rs) in zip(folders, runs, strict=True)
    ]
    if len(runs) > 1 and not publish:
        raise ValueError("several results folders are merged only into RESULTS.md: add --publish")
    meta, results = merge(runs) if len(runs) > 1 else runs[0][1:]
    table = markdown(results, title=TITLE, meta=meta)
    if len(runs) == 1:
        (folders[0] / "matrix.md").write_text(table)
    if publish:
        RESULTS_FILE.write_text(table)
    return EXIT_OK


def _read_matrix(folder: Path) -> tuple[dict[str, Any], list[Result]]:
    try:
        text = (folder / "matrix.json").read_text()
    except OSError as exc:
        raise ValueError(f"{folder}: cannot read matrix.json: {exc.strerror}") from None
    try:
        return from_json(text)
    except ValueError as exc:
        raise ValueError(f"{folder}/matrix.json: {exc}") from None


def _exit_status(results: Sequence[Result], *, ci: bool) -> int:
    ours = [r for r in results if r.blames_netsched]
    setup_failures = [r for r in results if r.verdict is Verdict.SETUP_FAILED]
    print(f"interop: {summary(results)}", flush=True)
    for result in ours:
        print(f"FAIL {result.peer} {result.role} {result.case}: {result.reason}", flush=True)
    if ci and setup_failures:
        print("FAIL: CI peers are not installed; run `python -m interop setup`", flush=True)
        return EXIT_FAILED
    return EXIT_FAILED if ours else EXIT_OK


def _meta(args: argparse.Namespace, peers: Sequence[Peer]) -> dict[str, str]:
    command = "python -m interop run" + (" --ci" if args.ci else "")
    for flag in ("peers", "cases", "role"):
        value = getattr(args, flag)
        if value:
            command += f" --{flag} {' '.join(value)}"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"`{command}`",
        "machine": "one host, loopback only (127.0.0.1); loss cases through the path lab relay",
        **{f"peer {p.name}": p.description for p in peers},
    }


def _results_dir() -> Path:
    base = INTEROP_DIR / "results" / datetime.date.today().isoformat()
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _print(line: str) -> None:
    print(line, flush=True)
