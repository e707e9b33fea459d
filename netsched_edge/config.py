"""The edge's configuration file: TOML in, frozen dataclasses out.

Layout (every key optional unless noted):

    [edge]        listen = "host:port", certificate, private_key, alpn, cipher_suites, www,
                  idle_timeout_s, max_queue, retry, send_order, multipath, scheduler,
                  max_path_id, fec, egress_mbps, admin, session_tickets, early_data,
                  drain_timeout_s, keys_file, state_dir, congestion_control
    [limits]      what one peer or the whole process may hold, and for how long
                  (LimitsConfig below; docs/OPERATIONS.md lists them with defaults)
    [defaults]    SLO fields: deadline_ms, urgency, incremental, loss_tolerance,
                  min_rate, idempotent
    [[services]]  name (required), policy, load_cap, retries, timeout_s, read_timeout_s,
                  max_body, max_queue,
                  udp_listen ("host:port", udp backends only),
                  health = {...} or [services.health]
    [[services.backends]]  kind (required), name, address ("host:port" or
                  "[v6]:port", http/tcp/udp only), root (static only), weight,
                  max_in_flight

`session_tickets` (default true) lets clients resume TLS sessions; the
tickets live in the edge process that issued them, so with `--workers N` a
client resumes only when its next connection reaches the same worker (else
it gets a full handshake) unless `keys_file` names a file of shared keys.
`early_data` says what resumed clients may send in 0-RTT, which can be
replayed (RFC 8470): "safe" (the default) serves only safe methods (GET, HEAD,
OPTIONS) at once, "idempotent" also those the client marks idempotent, and
holds the rest until the handshake completes; "off" rejects 0-RTT.

Every mistake is a `ConfigError` that names the file, the dotted key with
indices (`services[0].backends[1].address`) and its line. tomllib reports no
positions, so `_KeyLines` rescans the (already valid) text for them.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from netsched_client.errors import SLOError
from netsched_client.proto.cc import CONGESTION_CONTROLS
from netsched_client.proto.multipath.scheduler import SCHEDULER_POLICIES
from netsched_client.proto.slo import SLO, service_name_problem, show

POLICIES: Final = ("warm-first", "least-in-flight", "round-robin", "consistent-hash")
BACKEND_KINDS: Final = ("http", "tcp", "udp", "static")
ALPN_PROTOCOLS: Final = ("netsched/1", "h3", "hq-interop")
# The TLS 1.3 suites aioquic implements, by their IANA names.
CIPHER_SUITES: Final = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)
_NETWORK_KINDS: Final = ("http", "tcp", "udp")
# BBR by default: through the path lab (bench/bench_cc.py, 20 Mbit/s, 50 ms RTT) it
# carried 1.1x NewReno's goodput on a clean path with a standing queue under 25 % of
# the RTT, and 6-13x at 1-5 % random loss, where NewReno fell to 1-3 Mbit/s.
EDGE_CONGESTION_CONTROL: Final = "bbr"
EARLY_DATA_MODES: Final = ("safe", "idempotent", "off")
_DEFAULT_EARLY_DATA: Final = "safe"
_DEFAULT_MAX_QUEUE: Final = 1024
MAX_PATH_ID: Final = 15


class ConfigError(ValueError):
    """A configuration mistake, located as precisely as we can."""

    def __init__(
        self, message: str, *, file: str, key: str | None = None, line: int | None = None
    ) -> None:
        self.message = message
        self.file = file
        self.key = key
        self.line = line
        where = file if line is None else f"{file}:{line}"
        super().__init__(f"{where}: {message}" if key is None else f"{where}: {key}: {message}")


@dataclass(frozen=True, slots=True)
class HealthConfig:
    interval_s: float = 1.0
    timeout_s: float = 0.5
    unhealthy_after: int = 3
    healthy_after: int = 2
    ejection_s: float = 5.0
    path: str = "/health"  # request target of HTTP health checks
    # Never eject more than this share of a service's backends (Envoy's max_ejection_percent):
    # failures that hit every backend at once are more likely ours or the client's.
    max_ejection_percent: int = 50
    # Below this share of backends available, route to all of them as if healthy (Envoy's
    # healthy_panic_threshold; 0: never): health tracking that takes most of a service out
    # is more likely wrong than right (e.g. checks starved of CPU).
    panic_threshold_percent: int = 50


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    kind: str  # one of BACKEND_KINDS
    host: str | None = None  # http/tcp/udp
    port: int | None = None  # http/tcp/udp
    root: Path | None = None  # static: an existing directory
    weight: float = 1.0
    max_in_flight: int = 64  # hard cap; beyond it requests queue at the edge


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    name: str
    backends: tuple[BackendConfig, ...]
    policy: str = "warm-first"
    load_cap: int = 8  # warm-first: prefer a warm backend while its in-flight < load_cap
    retries: int = 1  # retries of idempotent requests on another backend
    timeout_s: float = 10.0  # response-head timeout when the request has no deadline
    read_timeout_s: float = 30.0  # longest silence between two reads of a backend's body
    max_body: int = 1 << 20  # bytes, unary request/response bodies
    max_queue: int = 1024  # requests of this service waiting for a backend slot
    health: HealthConfig = HealthConfig()
    # UDP services: a plain UDP front ("host:port") relayed to the udp backends by
    # the Cython forwarder, one backend per client flow.
    udp_listen: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """What one peer, one request or the whole process may hold, and for how long."""

    max_connections: int = 10_000  # counted once a ClientHello decrypted
    max_connections_per_source: int = 1_024  # per client IP address
    # Above this share of max_connections every new client must answer a Retry (as HAProxy's
    # quic-force-retry-threshold); 1.0 never forces it, [edge] retry = true always does.
    retry_above: float = 0.5
    max_header_bytes: int = 64 * 1024  # one request or response head, any protocol
    max_stream_buffer: int = 1 << 20  # bytes buffered for one streaming request or response
    memory_budget_mb: int = 256  # all request/response buffering of the process; beyond: 503
    max_datagram_queue: int = 64  # DATAGRAM replies waiting to be sent, per connection
    max_flows: int | None = None  # UDP backend flows; None: from RLIMIT_NOFILE
    max_flows_per_source: int = 64  # UDP backend flows per client IP address
    header_timeout_s: float = 10.0  # a new stream must deliver its request head within this
    body_timeout_s: float = 30.0  # longest silence between two pieces of a request body
    send_timeout_s: float = 30.0  # longest a client may leave response data unacknowledged
    queue_timeout_s: float = 10.0  # longest wait for a backend slot without a deadline
    # Smoothed event-loop lag past which the edge refuses a share of new requests (503)
    # and clients (CONNECTION_REFUSED), all of them at twice it (overload.py); 0: never.
    shed_loop_lag_ms: float = 500.0


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    host: str = "127.0.0.1"
    port: int = 4433
    certificate: Path | None = None  # with private_key; both None -> generated self-signed
    private_key: Path | None = None
    alpn: tuple[str, ...] = ALPN_PROTOCOLS
    cipher_suites: tuple[str, ...] | None = None  # names from CIPHER_SUITES, in preference
    # order; None: aioquic's default (all three)
    www: Path | None = None  # hq-interop / HTTP/0.9 static root
    idle_timeout_s: float = 30.0
    max_queue: int = _DEFAULT_MAX_QUEUE  # per service, unless the service sets its own
    retry: bool = False  # validate client addresses with a Retry before any state is kept
    admin_host: str | None = None  # [edge] admin = "host:port": /metrics, /livez, /readyz
    admin_port: int | None = None
    send_order: str = (
        "edf"  # "edf": responses by deadline then urgency; "fifo": aioquic's round robin
    )
    multipath: bool = True  # offer draft-ietf-quic-multipath-21 (initial_max_path_id)
    # How a multipath connection spreads data over its paths: "lowest-rtt" (fill the
    # fastest path's window first) or "deadline" (by expected arrival, deadline and loss).
    scheduler: str = "deadline"
    max_path_id: int = 3  # paths per connection - 1 that a client may open
    # Each path's congestion controller for what the edge sends: "reno" (aioquic's
    # NewReno), "cubic", or "bbr" (netsched_client.proto.cc: loss without a queue is not
    # congestion, so a lossy radio link keeps its rate; see docs/CONGESTION.md).
    congestion_control: str = EDGE_CONGESTION_CONTROL
    fec: bool = True  # offer FEC (netsched_fec); repairs per request from its SLO (docs/FEC.md)
    # The edge's own send budget over all connections, planned by deadline (None: the
    # connections' congestion control alone). Set it below the uplink so that the
    # backlog forms here, where the send order applies, not in a router's queue.
    egress_mbps: float | None = None
    session_tickets: bool = True  # issue TLS session tickets (resumption); per process
    early_data: str = _DEFAULT_EARLY_DATA  # one of EARLY_DATA_MODES (0-RTT needs session_tickets)
    drain_timeout_s: float = 10.0  # SIGTERM/SIGINT: in-flight requests get this long to finish
    # Retry, stateless-reset and session-ticket keys shared by workers and hosts; None: a
    # fresh set per start, shared by the workers of one process tree.
    keys_file: Path | None = None
    # Where `netsched-edge serve` keeps a generated certificate and its CA (tls.py);
    # `--state-dir` overrides it, unset: tls.default_state_dir(). An EdgeServer made in
    # code without one generates into a temporary folder, removed when it closes.
    state_dir: Path | None = None
    limits: LimitsConfig = LimitsConfig()
    default_slo: SLO = SLO()  # noqa: RUF009 (frozen, so one shared instance is safe)
    services: tuple[ServiceConfig, ...] = ()
    source: str = "<default>"
    _by_name: Mapping[str, ServiceConfig] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Looked up per request, so index once.
        object.__setattr__(self, "_by_name", {s.name: s for s in self.services})

    def service(self, name: str) -> ServiceConfig | None:
        return self._by_name.get(name)


def load_config(path: str | Path) -> EdgeConfig:
    """Read and check the configuration file at `path`."""
    path = Path(path)
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", file=file) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError("the file is not valid UTF-8", file=file, line=line) from None
    return parse_config(text, file=file, base_dir=path.absolute().parent)


def parse_config(text: str, *, file: str = "<string>", base_dir: Path | None = None) -> EdgeConfig:
    """Check a configuration given as TOML text.

    Relative paths in it resolve against `base_dir` (the current directory when None).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(exc, text, file) from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise ConfigError(f"cannot read the file: {exc}", file=file) from None
    context = _Context(file, text, base_dir or Path.cwd())
    root = _Table(data, (), context)
    root.check_keys(("edge", "limits", "defaults", "services"))
    edge = _read_edge(root.table("edge"))
    return EdgeConfig(
        **edge,
        limits=_read_limits(root.table("limits")),
        default_slo=_read_slo(root.table("defaults")),
        services=_read_services(
            root.item("services"), max_queue=edge.get("max_queue", _DEFAULT_MAX_QUEUE)
        ),
        source=file,
    )


_TOML_POSITION = re.compile(
    r"(?P<message>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)",
    re.DOTALL,
)


def _syntax_error(exc: tomllib.TOMLDecodeError, text: str, file: str) -> ConfigError:
    match = _TOML_POSITION.fullmatch(str(exc))
    if match is None:
        return ConfigError(f"invalid TOML: {exc}", file=file)
    if match["line"] is None:
        return ConfigError(
            f"invalid TOML at end of file: {match['message']}",
            file=file,
            line=text.rstrip().count("\n") + 1,
        )
    return ConfigError(
        f"invalid TOML at column {match['column']}: {match['message']}",
        file=file,
        line=int(match["line"]),
    )


# ---------------------------------------------------------------- key paths and lines

_KeyPath = tuple[str | int, ...]


def _render_key(path: _KeyPath) -> str:
    """`("services", 0, "name")` -> `"services[0].name"`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


_BARE_KEY_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
)
_SCALAR_ENDS: Final = frozenset(",]}\n#")


class _KeyLines:
    """The line of every table and key of a TOML text that tomllib has accepted.

    A structural scan only: strings are skipped (their newlines counted), scalars
    are skipped up to their delimiter, arrays of tables are numbered as tomllib
    numbers them. Keys quoted with escapes are recorded undecoded, so lookups of
    them fall back to their table.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._line = 1
        self._lines: dict[_KeyPath, int] = {}
        self._array_lengths: dict[_KeyPath, int] = {}  # [[array of tables]] -> count so far
        self._scan()

    def line(self, path: _KeyPath) -> int | None:
        """The line of `path`, or of its nearest enclosing table or key that has one."""
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None

    def _scan(self) -> None:
        table: _KeyPath = ()
        while self._skip_blank():
            if self._text.startswith("[[", self._pos):
                table = self._array_header()
            elif self._text.startswith("[", self._pos):
                table = self._table_header()
            else:
                self._key_value(table)

    def _table_header(self) -> _KeyPath:
        line = self._line
        self._advance(1)
        path = self._resolve(self._keys())
        self._advance(1)  # "]"
        self._lines.setdefault(path, line)
        return path

    def _array_header(self) -> _KeyPath:
        line = self._line
        self._advance(2)
        keys = self._keys()
        self._advance(2)  # "]]"
        array = (*self._resolve(keys[:-1]), keys[-1])
        index = self._array_lengths.get(array, 0)
        self._array_lengths[array] = index + 1
        self._lines.setdefault(array, line)
        self._lines[(*array, index)] = line
        return (*array, index)

    def _resolve(self, keys: list[str]) -> _KeyPath:
        # In a header, a name of an array of tables means its last element so far.
        path: _KeyPath = ()
        for key in keys:
            path = (*path, key)
            if path in self._array_lengths:
                path = (*path, self._array_lengths[path] - 1)
        return path

    def _key_value(self, table: _KeyPath) -> None:
        line = self._line
        path = table
        for key in self._keys():
            path = (*path, key)
            self._lines.setdefault(path, line)
        self._skip_spaces()
        self._advance(1)  # "="
        self._skip_spaces()
        self._value(path)

    def _value(self, path: _KeyPath) -> None:
        char = self._text[self._pos : self._pos + 1]
        if char == "[":
            self._array(path)
        elif char == "{":
            self._inline_table(path)
        elif char in ('"', "'"):
            self._string()
        else:
            # At least one character, so that every step of a scan makes progress.
            end = self._pos + 1
            while end < len(self._text) and self._text[end] not in _SCALAR_ENDS:
                end += 1
            self._pos = end

    def _array(self, path: _KeyPath) -> None:
        self._advance(1)
        index = 0
        while self._skip_blank():
            char = self._text[self._pos]
            if char == "]":
                self._advance(1)
                return
            if char == ",":
                self._advance(1)
                continue
            self._lines.setdefault((*path, index), self._line)
            self._value((*path, index))
            index += 1

    def _inline_table(self, path: _KeyPath) -> None:
        self._advance(1)
        while self._skip_blank():
            char = self._text[self._pos]
            if char == "}":
                self._advance(1)
                return
            if char == ",":
                self._advance(1)
                continue
            self._key_value(path)

    def _keys(self) -> list[str]:
        keys: list[str] = []
        while True:
            self._skip_spaces()
            if self._text[self._pos : self._pos + 1] in ('"', "'"):
                keys.append(self._string())
            else:
                start = self._pos
                while self._pos < len(self._text) and self._text[self._pos] in _BARE_KEY_CHARS:
                    self._pos += 1
                keys.append(self._text[start : self._pos])
            self._skip_spaces()
            if not self._text.startswith(".", self._pos):
                return keys
            self._pos += 1

    def _string(self) -> str:
        """Skip a string of any of the four kinds; return its raw contents."""
        quote = self._text[self._pos]
        delimiter = quote * 3 if self._text.startswith(quote * 3, self._pos) else quote
        start = self._pos + len(delimiter)
        end = start
        while end < len(self._text) and not self._text.startswith(delimiter, end):
            # Only basic strings have escapes; a backslash there hides the next character.
            end += 2 if quote == '"' and self._text[end] == "\\" else 1
        if len(delimiter) == 3:
            # A multi-line string may end with one or two quotes just before its delimiter.
            for _ in range(2):
                if self._text.startswith(quote, end + 3):
                    end += 1
        self._advance(end + len(delimiter) - self._pos)
        return self._text[start:end]

    def _skip_spaces(self) -> None:
        while self._text[self._pos : self._pos + 1] in (" ", "\t"):
            self._pos += 1

    def _skip_blank(self) -> bool:
        """Skip whitespace, newlines and comments; False at the end of the text."""
        text = self._text
        while self._pos < len(text):
            char = text[self._pos]
            if char == "#":
                end = text.find("\n", self._pos)
                self._pos = len(text) if end < 0 else end
            elif char.isspace():
                self._advance(1)
            else:
                return True
        return False

    def _advance(self, count: int) -> None:
        self._line += self._text.count("\n", self._pos, self._pos + count)
        self._pos += count


# ---------------------------------------------------------------- typed access to values


@dataclass(frozen=True, slots=True)
class _Context:
    file: str
    text: str
    base_dir: Path

    def error(self, path: _KeyPath, message: str) -> ConfigError:
        # Lines are found only once there is an error to report: a valid file never
        # depends on the best-effort scan.
        line = _KeyLines(self.text).line(path)
        return ConfigError(message, file=self.file, key=_render_key(path) or None, line=line)


@dataclass(frozen=True, slots=True)
class _Item:
    """One value of the file and where it is, so that a check can say where it failed."""

    value: object
    path: _KeyPath
    context: _Context

    def error(self, message: str) -> ConfigError:
        return self.context.error(self.path, message)

    def fail(self, expected: str) -> ConfigError:
        return self.error(f"expected {expected}, got {_show(self.value)}")


class _Table:
    """A TOML table (possibly absent, then empty) at a known key path."""

    def __init__(self, data: Mapping[str, object], path: _KeyPath, context: _Context) -> None:
        self.data = data
        self.path = path
        self.context = context

    def item(self, key: str) -> _Item | None:
        if key not in self.data:
            return None
        return _Item(self.data[key], (*self.path, key), self.context)

    def table(self, key: str) -> _Table:
        """The sub-table `key`; an absent one is empty."""
        item = self.item(key)
        return _Table({}, (*self.path, key), self.context) if item is None else _table(item)

    def error(self, key: str, message: str) -> ConfigError:
        return self.context.error((*self.path, key), message)

    def check_keys(self, allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = (
                    f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(allowed)}"
                )
                raise self.error(key, f"unknown key {key!r} ({hint})")

    def read(self, specs: Mapping[str, _Spec]) -> dict[str, Any]:
        """Check the keys and convert each one present, in file order.

        Keys that are absent are left out, so that the dataclass supplies their defaults.
        """
        self.check_keys(specs)
        return {
            key: specs[key](_Item(value, (*self.path, key), self.context))
            for key, value in self.data.items()
        }


_Spec = Callable[[_Item], object]


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, str | int | float):
        return show(value)
    return "a date/time"


def _integer(minimum: int, maximum: int | None = None) -> _Spec:
    def convert(item: _Item) -> int:
        value = item.value
        if isinstance(value, bool) or not isinstance(value, int):
            raise item.fail("an integer")
        if maximum is not None and not minimum <= value <= maximum:
            raise item.error(f"must be between {minimum} and {maximum}, got {value}")
        if value < minimum:
            raise item.error(f"must be at least {minimum}, got {value}")
        return value

    return convert


def _number(minimum: float, *, inclusive: bool) -> _Spec:
    def convert(item: _Item) -> float:
        value = item.value
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
            raise item.fail("a finite number")
        if value < minimum or (value == minimum and not inclusive):
            bound = "at least" if inclusive else "greater than"
            raise item.error(f"must be {bound} {minimum:g}, got {show(value)}")
        return float(value)

    return convert


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def _choice(options: tuple[str, ...]) -> Callable[[_Item], str]:
    def convert(item: _Item) -> str:
        if not isinstance(item.value, str) or item.value not in options:
            raise item.fail("one of " + ", ".join(map(repr, options)))
        return item.value

    return convert


def _name(item: _Item) -> str:
    if not isinstance(item.value, str) or service_name_problem(item.value) is not None:
        raise item.fail("1..64 characters of [A-Za-z0-9._-]")
    return item.value


_HTTP_TARGET = re.compile(r"/[!-~]{0,1023}")  # no spaces or controls: it goes in a request line


def _http_path(item: _Item) -> str:
    if not isinstance(item.value, str) or not _HTTP_TARGET.fullmatch(item.value):
        raise item.fail("a path starting with '/' (printable ASCII, no spaces)")
    return item.value


def _existing(what: str, test: Callable[[Path], bool]) -> _Spec:
    def convert(item: _Item) -> Path:
        if not isinstance(item.value, str) or not item.value:
            raise item.fail(f"a path to a {what}")
        path = item.context.base_dir / Path(item.value).expanduser()
        if not test(path):
            raise item.error(f"no such {what}: {str(path)!r}")
        return path

    return convert


def _boolean(item: _Item) -> bool:
    if not isinstance(item.value, bool):
        raise item.fail("true or false")
    return item.value


_file = _existing("file", Path.is_file)
_directory = _existing("directory", Path.is_dir)


_HOST_NAME = re.compile(r"(?![-.])[A-Za-z0-9_.-]{1,253}")
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})")


def _address(lowest_port: int) -> _Spec:
    """`host:port` or `[v6]:port` -> (host, port)."""

    def convert(item: _Item) -> tuple[str, int]:
        text = item.value
        match = _HOST_PORT.fullmatch(text) if isinstance(text, str) else None
        if match is None or not _valid_host(match["v6"], match["host"]):
            raise item.fail("host:port")
        port = int(match["port"])
        if not lowest_port <= port <= 65535:
            raise item.error(f"port must be between {lowest_port} and 65535, got {port}")
        return match["v6"] or match["host"], port

    return convert


def _valid_host(v6: str | None, host: str | None) -> bool:
    if host is not None:
        return _HOST_NAME.fullmatch(host) is not None
    try:
        ipaddress.IPv6Address(v6)
    except ValueError:
        return False
    return True


def _choices(options: tuple[str, ...], what: str) -> Callable[[_Item], tuple[str, ...]]:
    """A non-empty array of distinct `options`, order kept (it is a preference order)."""
    element_of = _choice(options)

    def convert(item: _Item) -> tuple[str, ...]:
        if not isinstance(item.value, list):
            raise item.fail(f"an array of {what} names")
        if not item.value:
            raise item.error(f"at least one {what} is required")
        chosen: list[str] = []
        for index, value in enumerate(item.value):
            element = _Item(value, (*item.path, index), item.context)
            name = element_of(element)
            if name in chosen:
                raise element.error(f"duplicate {what} {name!r}")
            chosen.append(name)
        return tuple(chosen)

    return convert


def _table(item: _Item) -> _Table:
    if not isinstance(item.value, dict):
        raise item.fail("a table")
    return _Table(item.value, item.path, item.context)


def _tables(item: _Item) -> list[_Table]:
    """An array of tables, written as [[name]] headers or as an array of inline tables."""
    value = item.value
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise item.fail("an array of tables")
    return [_table(_Item(v, (*item.path, i), item.context)) for i, v in enumerate(value)]


# ---------------------------------------------------------------- the sections

_EDGE_KEYS: Final[Mapping[str, _Spec]] = {
    "listen": _address(lowest_port=0),  # 0: any free port
    "certificate": _file,
    "private_key": _file,
    "alpn": _choices(ALPN_PROTOCOLS, "protocol"),
    "cipher_suites": _choices(CIPHER_SUITES, "cipher suite"),
    "www": _directory,
    "idle_timeout_s": _number(0, inclusive=False),
    "max_queue": _integer(1),
    "retry": _boolean,
    "send_order": _choice(("edf", "fifo")),
    "multipath": _boolean,
    "scheduler": _choice(SCHEDULER_POLICIES),
    "admin": _address(lowest_port=0),
    # Each path holds CIDs, keys and recovery state; a phone has a handful of interfaces.
    "max_path_id": _integer(0, MAX_PATH_ID),
    "congestion_control": _choice(CONGESTION_CONTROLS),
    "fec": _boolean,
    "egress_mbps": _number(0, inclusive=False),
    "session_tickets": _boolean,
    "early_data": _choice(EARLY_DATA_MODES),
    "drain_timeout_s": _number(0, inclusive=True),
    "keys_file": _file,
    "state_dir": _existing("directory", lambda path: path.is_dir() or not path.exists()),
}


def _read_edge(table: _Table) -> dict[str, Any]:
    values = table.read(_EDGE_KEYS)
    if "listen" in values:
        values["host"], values["port"] = values.pop("listen")
    if "admin" in values:
        values["admin_host"], values["admin_port"] = values.pop("admin")
    for key, other in (("certificate", "private_key"), ("private_key", "certificate")):
        if key in values and other not in values:
            raise table.error(other, f"missing: {key!r} is set, and the two go together")
    early = values.get("early_data", _DEFAULT_EARLY_DATA)
    if early != "off" and values.get("session_tickets") is False:
        if "early_data" not in values:
            values["early_data"] = "off"  # the default follows the tickets it needs
        else:
            raise table.error(
                "early_data", f"{early!r} needs session_tickets = true (0-RTT resumes a session)"
            )
    return values


_LIMITS_KEYS: Final[Mapping[str, _Spec]] = {
    "max_connections": _integer(1),
    "max_connections_per_source": _integer(1),
    "retry_above": _number(0, inclusive=False),
    "max_header_bytes": _integer(1024, 16 << 20),
    "max_stream_buffer": _integer(16 * 1024),
    "memory_budget_mb": _integer(1),
    "max_datagram_queue": _integer(1),
    "max_flows": _integer(1),
    "max_flows_per_source": _integer(1),
    "header_timeout_s": _number(0, inclusive=False),
    "body_timeout_s": _number(0, inclusive=False),
    "send_timeout_s": _number(0, inclusive=False),
    "queue_timeout_s": _number(0, inclusive=False),
    "shed_loop_lag_ms": _number(0, inclusive=True),
}


def _read_limits(table: _Table) -> LimitsConfig:
    values = table.read(_LIMITS_KEYS)
    if values.get("retry_above", 0.0) > 1.0:
        raise table.error("retry_above", f"must be at most 1.0, got {values['retry_above']:g}")
    return LimitsConfig(**values)


# The SLO dataclass checks types and ranges; here we only say which key was wrong.
_SLO_KEYS: Final = (
    "deadline_ms",
    "urgency",
    "incremental",
    "loss_tolerance",
    "min_rate",
    "idempotent",
)


def _read_slo(table: _Table) -> SLO:
    table.check_keys(_SLO_KEYS)
    values: dict[str, Any] = dict(table.data)
    try:
        return SLO(**values)
    except SLOError as exc:
        raise _slo_error(table, values, exc) from None


def _slo_error(table: _Table, values: dict[str, Any], exc: SLOError) -> ConfigError:
    for key, value in values.items():
        try:
            SLO(**{key: value})
        except SLOError as single:
            return table.error(key, str(single).removeprefix(f"slo.{key}: "))
    return table.context.error(table.path, str(exc))


def _read_services(item: _Item | None, *, max_queue: int) -> tuple[ServiceConfig, ...]:
    if item is None:
        return ()
    services: list[ServiceConfig] = []
    first: dict[str, int] = {}
    for index, table in enumerate(_tables(item)):
        service = _read_service(table, max_queue=max_queue)
        if service.name in first:
            where = _render_key((*item.path, first[service.name]))
            raise table.error("name", f"duplicate service name {service.name!r} (also {where})")
        first[service.name] = index
        services.append(service)
    return tuple(services)


_SERVICE_KEYS: Final[Mapping[str, _Spec]] = {
    "name": _name,
    "backends": _tables,
    "policy": _choice(POLICIES),
    "load_cap": _integer(1),
    "retries": _integer(0, 3),
    "timeout_s": _number(0, inclusive=False),
    "read_timeout_s": _number(0, inclusive=False),
    "max_body": _integer(0),
    "max_queue": _integer(1),
    "health": lambda item: _read_health(_table(item)),
    "udp_listen": _address(lowest_port=0),
}


def _read_service(table: _Table, *, max_queue: int) -> ServiceConfig:
    values = table.read(_SERVICE_KEYS)
    values.setdefault("max_queue", max_queue)
    if "name" not in values:
        raise table.error("name", "missing required key 'name'")
    if not values.get("backends"):
        raise table.error("backends", "at least one backend is required")
    values["backends"] = _read_backends(values["backends"], values["name"])
    if "udp_listen" in values and any(b.kind != "udp" for b in values["backends"]):
        raise table.error("udp_listen", "a UDP front needs every backend of the service to be udp")
    return ServiceConfig(**values)


def _read_backends(tables: list[_Table], service: str) -> tuple[BackendConfig, ...]:
    backends: list[BackendConfig] = []
    first: dict[str, int] = {}
    for index, table in enumerate(tables):
        backend = _read_backend(table, default_name=f"{service}-{index}")
        if backend.name in first:
            where = _render_key((*table.path[:-1], first[backend.name]))
            raise table.error("name", f"duplicate backend name {backend.name!r} (also {where})")
        first[backend.name] = index
        backends.append(backend)
    return tuple(backends)


_BACKEND_KEYS: Final[Mapping[str, _Spec]] = {
    "name": _name,
    "kind": _choice(BACKEND_KINDS),
    "address": _address(lowest_port=1),
    "root": _directory,
    "weight": _number(0, inclusive=False),
    "max_in_flight": _integer(1),
}


def _read_backend(table: _Table, *, default_name: str) -> BackendConfig:
    values = table.read(_BACKEND_KEYS)
    kind = values.get("kind")
    if kind is None:
        raise table.error("kind", "missing required key 'kind'")
    needed, unused = ("address", "root") if kind in _NETWORK_KINDS else ("root", "address")
    if unused in values:
        raise table.error(unused, f"key {unused!r} does not apply to kind {kind!r}")
    if needed not in values:
        raise table.error(needed, f"missing required key {needed!r} for kind {kind!r}")
    if "address" in values:
        values["host"], values["port"] = values.pop("address")
    values.setdefault("name", default_name)
    return BackendConfig(**values)


_HEALTH_KEYS: Final[Mapping[str, _Spec]] = {
    "interval_s": _number(0, inclusive=False),
    "timeout_s": _number(0, inclusive=False),
    "unhealthy_after": _integer(1),
    "healthy_after": _integer(1),
    "ejection_s": _number(0, inclusive=True),
    "path": _http_path,
    "max_ejection_percent": _integer(0, 100),
    "panic_threshold_percent": _integer(0, 100),
}


def _read_health(table: _Table) -> HealthConfig:
    health = HealthConfig(**table.read(_HEALTH_KEYS))
    if health.timeout_s > health.interval_s:
        # A check must end before the next one starts. Blame the key the file set.
        if "timeout_s" in table.data:
            raise table.error(
                "timeout_s",
                f"must not exceed interval_s ({health.interval_s:g}), got {health.timeout_s:g}",
            )
        raise table.error(
            "interval_s",
            f"must be at least timeout_s ({health.timeout_s:g}), got {health.interval_s:g}",
        )
    return health
