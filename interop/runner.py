"""Run test cases: plan each (peer, case, role), run the two endpoints, judge the result.

One test: generate the case's files into a fresh www folder, start the server
and wait until its UDP port is bound, start the tap in front of it (and the
path lab relay, between the tap and the server or, when the case records
beside the server, in front of the tap), start the client with URLs pointing
at the front, wait for the client (the case's timeout), stop everything, then
check the downloads by hash and the trace by the case's rules. Every process
is stopped in a `finally`, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import random
import shutil
import string
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from netsched_edge.tls import generate_self_signed, key_usage
from netsched_lab.relay import UdpRelay

from . import known, procs, www
from .cases import H3, HQ, Case, Measurement, PathCut, Rebinding, Role, Scenario, Side, check
from .peers import Job, Peer
from .programs.contract import EXIT_UNSUPPORTED
from .programs.multipath import LOCALS, parse_reports
from .results import Result, Verdict
from .tap import LOOPBACK, Tap, Trace

SERVER_START_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 300
CUT_POLL_S = 0.005  # how often the relay looks at the tap's byte count for a PathCut
MAX_CLIENT_LOG = 4 << 20  # what of client.log is read for reports
MAX_EVIDENCE_LOG = 4 << 20  # what of a log is searched for a known issue's signs
# rebind-addr: the client's new addresses, one per rebinding (all on the loopback interface).
REBIND_NETWORK = ipaddress.ip_network("127.0.1.0/24")
# The runner inflates the leaf of its long chain with 20 random 250-character DNS names.
FAKE_NAMES = 20
FAKE_NAME_LENGTH = 250
CHAIN_VALID = datetime.timedelta(days=10)


@dataclass(frozen=True, slots=True)
class Pairing:
    """Which stack plays which side for a peer in a role."""

    peer: Peer
    role: Role
    client: Peer
    server: Peer


@dataclass(frozen=True, slots=True)
class Plan:
    """A test that can run (alpn set) or a result decided without running it."""

    alpn: str = ""
    notes: tuple[str, ...] = ()
    verdict: Verdict | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Settings:
    results_dir: Path
    seed: int = 1
    qlog: bool = False
    log: Callable[[str], None] = print
    known_issues: tuple[known.KnownIssue, ...] = known.KNOWN_ISSUES


@dataclass(slots=True)
class Outcome:
    """What one run produced, before it is judged."""

    exit_code: int | None = None
    server_exit: int | None = None
    problem: str = ""  # the run went wrong before the client could finish
    trace: Trace = field(default_factory=Trace)
    files_problem: str | None = None
    link: dict[str, object] = field(default_factory=dict)  # the relay's counters


def pairings(peer: Peer, ours: Peer, roles: Sequence[Role]) -> list[Pairing]:
    """The (client, server) pairs for `peer` in `roles`; NetSched itself only as a baseline."""
    sides = {
        Role.CLIENT: (ours, peer),
        Role.SERVER: (peer, ours),
        Role.BASELINE: (peer, peer),
    }
    if peer.name == ours.name:
        roles = [r for r in roles if r is Role.BASELINE]
    return [Pairing(peer, role, *sides[role]) for role in roles]


def plan(case: Case, client: Peer, server: Peer) -> Plan:
    """Decide whether a case can run between two endpoints, and over which ALPN."""
    if case.pending:
        return Plan(verdict=Verdict.PENDING, reason=case.pending)
    for peer, side in ((client, Side.CLIENT), (server, Side.SERVER)):
        reason = peer.unsupported(case, side)
        if reason is not None:
            return Plan(verdict=Verdict.UNSUPPORTED, reason=reason)
    common = [a for a in client.alpns(Side.CLIENT) if a in server.alpns(Side.SERVER)]
    notes = tuple(n for n in (case.weaker, case.scenario.description if case.scenario else "") if n)
    if case.alpn in common:
        return Plan(alpn=case.alpn, notes=notes)
    if case.alpn == HQ and H3 in common:
        only_h3 = client.name if HQ not in client.alpns(Side.CLIENT) else server.name
        return Plan(alpn=H3, notes=(f"run over h3: {only_h3} speaks no hq-interop", *notes))
    return Plan(
        verdict=Verdict.UNSUPPORTED,
        reason=f"no common ALPN for {case.alpn}: client {client.alpns(Side.CLIENT)}, "
        f"server {server.alpns(Side.SERVER)}",
    )


class Runner:
    def __init__(self, settings: Settings, ours: Peer) -> None:
        self.settings = settings
        self.ours = ours
        self._rng = random.Random(settings.seed)
        self._scratch = Path(tempfile.mkdtemp(prefix="netsched-interop-"))
        self._certs = make_certificates(self._scratch / "certs")
        self._chains: dict[int, Path] = {}

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)

    async def run(
        self, peers: Sequence[Peer], cases: Sequence[Case], roles: Sequence[Role]
    ) -> list[Result]:
        tests = [(p, c) for peer in peers for p in pairings(peer, self.ours, roles) for c in cases]
        results: list[Result] = []
        for index, (pairing, case) in enumerate(tests, 1):
            result = await self.run_test(pairing, case)
            results.append(result)
            self.settings.log(_progress(index, len(tests), result))
        return results

    async def run_test(self, pairing: Pairing, case: Case) -> Result:
        base = Result(
            peer=pairing.peer.name,
            case=case.name,
            role=pairing.role,
            verdict=Verdict.UNSUPPORTED,
            client=pairing.client.name,
            server=pairing.server.name,
        )
        missing = [p for p in (pairing.client, pairing.server) if p.status() is not None]
        if missing and not case.pending:
            reason = "; ".join(f"{p.name}: {p.status()}" for p in missing)
            return replace(base, verdict=Verdict.SETUP_FAILED, reason=reason)
        decided = plan(case, pairing.client, pairing.server)
        if decided.verdict is not None:
            return replace(base, verdict=decided.verdict, reason=decided.reason)
        logdir = self.settings.results_dir / "logs" / pairing.peer.name / pairing.role / case.name
        started = time.monotonic()
        outcome = await self._execute(pairing, case, decided.alpn, logdir)
        result = replace(
            base,
            alpn=decided.alpn,
            notes=decided.notes,
            duration_s=round(time.monotonic() - started, 2),
            logs=self._log_paths(logdir),
            trace={**outcome.trace.summary(), **({"link": outcome.link} if outcome.link else {})},
        )
        outcome.trace.keylog = read_keylog(logdir)
        outcome.trace.client_reports = read_reports(logdir / "client.log")
        (logdir / "trace.json").write_text(json.dumps(result.trace, indent=2))
        return judge(result, case, outcome, logdir, self.settings.known_issues)

    async def _execute(self, pairing: Pairing, case: Case, alpn: str, logdir: Path) -> Outcome:
        outcome = Outcome()
        logdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="case-", dir=self._scratch) as tmp:
            root = Path(tmp)
            files = www.generate(root / "www", case.file_sizes, self._rng, case.name_length)
            port = procs.free_udp_port(case.host)
            server_job = self._job(Side.SERVER, case, alpn, port, root, logdir)
            server = await procs.start(pairing.server.launch(server_job), logdir / "server.log")
            client: procs.Process | None = None
            tap: Tap | None = None
            link: _Link | None = None
            events: list[asyncio.Task[None]] = []
            try:
                if not await procs.wait_bound(server_job.port, server, SERVER_START_TIMEOUT_S):
                    outcome.server_exit = server.returncode
                    outcome.problem = f"server did not start (exit status {server.returncode})"
                    return outcome
                tap, link, front = await _network(case, server_job.port, self.settings.seed)
                host = f"[{case.host}]" if ":" in case.host else case.host
                urls = tuple(
                    f"https://{host}:{front}{pairing.server.url_path(f.name, alpn)}" for f in files
                )
                client_job = replace(
                    self._job(Side.CLIENT, case, alpn, front, root, logdir), requests=urls
                )
                client = await procs.start(
                    client_launch(pairing.client, client_job, case), logdir / "client.log"
                )
                if link is not None:
                    link.start_events(tap.trace)
                if case.scenario is not None and case.scenario.rebinding is not None:
                    events.append(asyncio.create_task(_rebind(tap, case.scenario.rebinding)))
                outcome.exit_code = await client.wait(case.timeout_s)
                outcome.server_exit = server.returncode
                if outcome.exit_code is None:
                    outcome.problem = f"client did not finish within {case.timeout_s:.0f} s"
                else:
                    outcome.files_problem = www.check_downloads(root / "downloads", files)
            finally:
                for task in events:
                    task.cancel()
                for process in (client, server):
                    if process is not None:
                        await process.stop()
                if tap is not None:
                    tap.close()
                    outcome.trace = tap.trace
                if link is not None:
                    outcome.link = await link.stop()
        return outcome

    def _job(self, side: Side, case: Case, alpn: str, port: int, root: Path, logdir: Path) -> Job:
        workdir = root / f"{side}-work"
        workdir.mkdir(exist_ok=True)
        qlog = logdir / f"{side}-qlog" if self.settings.qlog else None
        if qlog is not None:
            qlog.mkdir(parents=True, exist_ok=True)  # some stacks write there but never create it
        if side is Side.CLIENT:
            (root / "downloads").mkdir(exist_ok=True)
        return Job(
            side=side,
            testcase=case.endpoint_name(side),
            alpn=alpn,
            port=port,
            workdir=workdir,
            certs=self._certificates(case.cert_chain),
            keylog=logdir / f"{side}.keys",
            www=root / "www" if side is Side.SERVER else None,
            downloads=root / "downloads" if side is Side.CLIENT else None,
            qlog_dir=qlog,
            host=case.host,
        )

    def _certificates(self, chain: int) -> Path:
        """The suite's CA + leaf, or (made once per run) the runner's chain of `chain` certs."""
        if not chain:
            return self._certs
        if chain not in self._chains:
            self._chains[chain] = make_certificate_chain(self._scratch / f"chain-{chain}", chain)
        return self._chains[chain]

    def _log_paths(self, logdir: Path) -> dict[str, str]:
        root = self.settings.results_dir
        return {
            path.name: str(path.relative_to(root))
            for path in sorted(logdir.iterdir())
            if path.name.endswith((".log", ".keys", "-qlog"))
        }


def client_launch(peer: Peer, job: Job, case: Case) -> procs.Launch:
    """The client's launch, with the case's local addresses (LOCALS) where it has them."""
    launch = peer.launch(job)
    if not case.client_locals:
        return launch
    return replace(launch, env={**launch.env, LOCALS: " ".join(case.client_locals)})


async def _network(case: Case, server_port: int, seed: int) -> tuple[Tap, _Link | None, int]:
    """The tap and the relay (if the case has a scenario) in front of the server, in the
    case's order; returns them and the port the client connects to."""
    scenario = case.scenario
    if scenario is None:
        tap = Tap((case.host, server_port), host=case.host)
        return tap, None, await tap.start()
    if scenario.tap_at_server:
        tap = Tap((case.host, server_port), host=case.host)
        link = _Link(scenario, (case.host, await tap.start()), seed)
        try:
            return tap, link, await link.start()
        except OSError:
            tap.close()
            raise
    link = _Link(scenario, (case.host, server_port), seed)
    tap = Tap((case.host, await link.start()), host=case.host, follow_moves=scenario.client_moves)
    return tap, link, await tap.start()


async def _rebind(tap: Tap, rebinding: Rebinding) -> None:
    """The client's NAT rebinding on the scenario's schedule (rebind-addr: a new IP each time)."""
    hosts = (str(ip) for ip in REBIND_NETWORK.hosts())
    await asyncio.sleep(rebinding.first_s)
    while True:
        tap.rebind(next(hosts) if rebinding.new_address else None)
        await asyncio.sleep(rebinding.every_s)


class _Link:
    """The path lab relay in front of the server or the tap, playing a case's scenario."""

    def __init__(self, scenario: Scenario, target: tuple[str, int], seed: int) -> None:
        self._scenario = scenario
        self._relay = UdpRelay(target, listen=(target[0], 0), default=scenario.profile, seed=seed)
        self._events: asyncio.Task[None] | None = None

    async def start(self) -> int:
        return int((await self._relay.start())[1])

    def start_events(self, trace: Trace) -> None:
        """Start the scenario's blackouts or path cut, against the running transfer."""
        if self._scenario.blackout is not None:
            self._events = asyncio.create_task(self._cycle(*self._scenario.blackout))
        elif self._scenario.cut is not None:
            self._events = asyncio.create_task(self._cut(self._scenario.cut, trace))

    async def _cycle(self, on_s: float, off_s: float) -> None:
        # The relay's only client is on LOOPBACK: the tap's upstream socket, or the client.
        while True:
            await asyncio.sleep(on_s)
            self._relay.blackhole(LOOPBACK)
            await asyncio.sleep(off_s)
            self._relay.restore(LOOPBACK)

    async def _cut(self, cut: PathCut, trace: Trace) -> None:
        # Counted in bytes the tap passed to the client, not in time: the cut
        # falls at the same point of the transfer on a fast or a slow machine.
        while trace.server_total < cut.after_bytes:
            await asyncio.sleep(CUT_POLL_S)
        self._relay.blackhole(cut.client_ip)
        trace.mark(cut.label)

    async def stop(self) -> dict[str, object]:
        """Stop the relay; its per-direction counters (per client IP when there are several)."""
        if self._events is not None:
            self._events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events
        ips = self._relay.client_ips()
        counters: dict[str, object] = (
            self._counters(LOOPBACK)
            if set(ips) <= {LOOPBACK}
            else {ip: self._counters(ip) for ip in ips}
        )
        await self._relay.stop()
        return counters

    def _counters(self, client_ip: str) -> dict[str, object]:
        up, down = self._relay.stats(client_ip)
        return {
            name: {
                "packets": stats.packets_in,
                "dropped": stats.dropped,
                "dropped_too_big": stats.dropped_too_big,  # above the lab's MTU (PMTU probes)
                **({"corrupted": stats.corrupted} if stats.corrupted else {}),
            }
            for name, stats in (("client_to_server", up), ("server_to_client", down))
        }


def judge(
    result: Result,
    case: Case,
    outcome: Outcome,
    logdir: Path,
    known_issues: tuple[known.KnownIssue, ...] = known.KNOWN_ISSUES,
) -> Result:
    """The verdict of a finished test: exit statuses, downloads, then the case's rules."""
    if EXIT_UNSUPPORTED in (outcome.exit_code, outcome.server_exit):
        side = "client" if outcome.exit_code == EXIT_UNSUPPORTED else "server"
        return replace(result, verdict=Verdict.UNSUPPORTED, reason=f"{side} exit status 127")
    problems = _run_problems(outcome, logdir)
    if not problems:
        findings = check(case, outcome.trace)
        problems = list(findings.problems)
        result = replace(result, notes=result.notes + findings.notes)
    measured = case.measure(outcome.trace) if case.measure and not problems else None
    if isinstance(measured, str):
        problems = [measured]
    listed = known.listed(result.peer, result.case, result.role, known_issues)
    if not problems:
        stale = tuple(f"listed known issue did not reproduce: {i.summary}" for i in listed)
        figure = str(measured) if isinstance(measured, Measurement) else ""
        return replace(result, verdict=Verdict.PASS, notes=result.notes + stale, measurement=figure)
    reason = "; ".join(problems)
    evidence = _evidence(reason, logdir)
    issue = known.find(result.peer, result.case, result.role, evidence, known_issues)
    if issue is not None:
        return replace(
            result,
            verdict=Verdict.KNOWN_ISSUE,
            reason=f"{issue.describe()}; observed: {reason}",
        )
    # A listed issue whose signs this failure lacks: another failure, said so.
    unlike = tuple(
        f"not the known issue '{i.summary}', which wants {i.mismatch(evidence)}" for i in listed
    )
    return replace(result, verdict=Verdict.FAIL, reason=reason, notes=result.notes + unlike)


def rejudge_known(
    result: Result, folder: Path, known_issues: tuple[known.KnownIssue, ...] = known.KNOWN_ISSUES
) -> Result:
    """A stored failure, labelled known-issue if a listed issue's signs are in its stored
    reason and logs (a peer issue documented after the run); anything else as it was."""
    if result.verdict is not Verdict.FAIL or not result.logs:
        return result
    logdir = folder / Path(next(iter(result.logs.values()))).parent
    issue = known.find(
        result.peer, result.case, result.role, _evidence(result.reason, logdir), known_issues
    )
    if issue is None:
        return result
    reason = f"{issue.describe()}; observed: {result.reason}"
    return replace(result, verdict=Verdict.KNOWN_ISSUE, reason=reason)


def _evidence(reason: str, logdir: Path) -> known.Evidence:
    """The failure's reason, and its log folder's files as known issues' signs read them."""
    texts: dict[known.Source, str] = {known.Source.REASON: reason}

    def read(source: known.Source) -> str:
        if source not in texts:
            try:
                with (logdir / source.value).open(errors="replace") as file:
                    texts[source] = file.read(MAX_EVIDENCE_LOG)
            except OSError:
                texts[source] = ""
        return texts[source]

    return read


def read_keylog(logdir: Path) -> str:
    """The client's key log, else the server's: the first that has handshake secrets.

    The runner prefers the client's the same way (testcase.py `_keylog_file`).
    """
    for name in ("client.keys", "server.keys"):
        try:
            text = (logdir / name).read_text(errors="replace")
        except OSError:
            continue
        if "SERVER_HANDSHAKE_TRAFFIC_SECRET" in text:
            return text
    return ""


def read_reports(log: Path) -> list[dict[str, object]]:
    """What the client program reported (programs/multipath.py), from its log."""
    try:
        with log.open(errors="replace") as file:
            return parse_reports(file.read(MAX_CLIENT_LOG))
    except OSError:
        return []


def _run_problems(outcome: Outcome, logdir: Path) -> list[str]:
    if outcome.problem:
        log = "server.log" if outcome.problem.startswith("server") else "client.log"
        return [f"{outcome.problem}{_tail(logdir / log)}"]
    if outcome.exit_code != 0:
        return [f"client exited with status {outcome.exit_code}{_tail(logdir / 'client.log')}"]
    if outcome.files_problem is not None:
        return [outcome.files_problem]
    return []


def _tail(log: Path) -> str:
    """The last meaningful line of a log, to put the cause in the reason."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines[1:] if line]  # [0] is the command
    return f" (last log line: {lines[-1][-LOG_TAIL_CHARS:]})" if lines else ""


def _progress(index: int, total: int, result: Result) -> str:
    width = len(str(total))
    line = (
        f"[{index:>{width}}/{total}] {result.peer:<9} {result.role:<8} {result.case:<19} "
        f"{result.verdict:<12}"
    )
    if result.duration_s:
        line += f" {result.duration_s:5.1f}s"
    if result.measurement:
        line += f"  {result.measurement}"
    if result.verdict is not Verdict.PASS and result.reason:
        line += f"  {result.reason[:160]}"
    return line


def make_certificate_chain(directory: Path, length: int) -> Path:
    """The runner's amplificationlimit certificates (its certs.sh with a chain length).

    A root (ca.pem) signs `length - 1` intermediates, the last of which signs
    the leaf; cert.pem is the leaf then the intermediates, leaf first. The leaf
    carries 20 random 250-character DNS names besides localhost and the
    loopback IPs, as the runner's does, so the chain is some 9 kB: a server
    cannot send it within 3x of one ClientHello.
    """
    if length < 2:
        raise ValueError(f"a chain needs at least 2 certificates, got {length}")
    rng = random.Random(length)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _chain_certificate(root_key, root_key, None, "interop root CA", now)
    issuer, issuer_key = root, root_key
    chain: list[x509.Certificate] = []
    for index in range(1, length):
        key = ec.generate_private_key(ec.SECP256R1())
        issuer = _chain_certificate(key, issuer_key, issuer, f"interop intermediate {index}", now)
        issuer_key = key
        chain.insert(0, issuer)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    fake = [
        "".join(rng.choice(string.ascii_lowercase) for _ in range(FAKE_NAME_LENGTH))
        for _ in range(FAKE_NAMES)
    ]
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in ("localhost", *fake)]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in (LOOPBACK, "::1")]
    leaf = _chain_certificate(leaf_key, issuer_key, issuer, "interop leaf", now, names)
    pem = serialization.Encoding.PEM
    (directory / "cert.pem").write_bytes(b"".join(c.public_bytes(pem) for c in (leaf, *chain)))
    (directory / "ca.pem").write_bytes(root.public_bytes(pem))
    (directory / "priv.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return directory


def _chain_certificate(
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    name: str,
    now: datetime.datetime,
    leaf_names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    """One certificate of the chain: a CA (no `leaf_names`) or the server's leaf."""
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])
    public = key.public_key()
    issuer_public = issuer_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + CHAIN_VALID)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False
        )
    )
    if leaf_names is None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        ).add_extension(key_usage(cert_sign=True), critical=True)
    else:
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(leaf_names), critical=False)
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_certificates(directory: Path) -> Path:
    """CA + leaf in the runner's layout: cert.pem (leaf, then CA), priv.key, ca.pem.

    A CA and a separate leaf, not one self-signed certificate: qh3 and
    webpki-based stacks refuse a leaf that is itself a CA (CA:TRUE), which is
    what a plain self-signed certificate is (netsched_edge/tls.py says the same).
    """
    pair = generate_self_signed(directory)
    pair.private_key.rename(directory / "priv.key")
    return directory
