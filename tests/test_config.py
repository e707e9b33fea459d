from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_client.proto.slo import SLO
from netsched_edge.config import (
    BackendConfig,
    ConfigError,
    EdgeConfig,
    HealthConfig,
    LimitsConfig,
    ServiceConfig,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "edge.toml"

# A minimal valid service; its lines: 1 [[services]], 2 name, 3 [[services.backends]], 4 kind,
# 5 address.
SERVICE = (
    '[[services]]\nname = "api"\n[[services.backends]]\nkind = "http"\naddress = "127.0.0.1:80"\n'
)


def _parse(text: str, base_dir: Path | None = None) -> EdgeConfig:
    return parse_config(text, file="edge.toml", base_dir=base_dir)


def _error(text: str, base_dir: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        _parse(text, base_dir)
    return caught.value


# ---------------------------------------------------------------- valid files


def test_example_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.source == str(EXAMPLE)
    assert (config.host, config.port) == ("127.0.0.1", 4433)
    assert config.certificate is None and config.private_key is None
    assert config.default_slo == SLO(deadline_ms=2000, urgency=3, idempotent=False)
    api = config.service("api")
    assert api is not None
    assert [(b.name, b.host, b.port, b.weight) for b in api.backends] == [
        ("api-a", "127.0.0.1", 8081, 2.0),
        ("api-b", "::1", 8082, 1.0),
    ]
    assert api.timeout_s == 5.0
    telemetry = config.service("telemetry")
    assert telemetry is not None
    assert telemetry.policy == "consistent-hash"
    assert telemetry.health == HealthConfig(interval_s=2.0, timeout_s=1.0)
    assert [b.name for b in telemetry.backends] == ["telemetry-0", "telemetry-1"]
    assert {b.kind for b in telemetry.backends} == {"udp"}


def test_empty_file_gives_defaults() -> None:
    config = _parse("")
    assert config == EdgeConfig(source="edge.toml")
    assert config.alpn == ("netsched/1", "h3", "hq-interop")
    assert config.default_slo == SLO()
    assert config.service("api") is None


def test_every_key(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_text("x")
    (tmp_path / "tls" / "key.pem").write_text("x")
    (tmp_path / "www").mkdir()
    text = """
        [edge]
        listen = "[::]:0"
        certificate = "tls/cert.pem"
        private_key = "tls/key.pem"
        alpn = ["h3", "netsched/1"]
        cipher_suites = ["TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"]
        www = "www"
        idle_timeout_s = 5
        max_queue = 7
        drain_timeout_s = 0
        early_data = "idempotent"
        keys_file = "tls/key.pem"

        [limits]
        max_connections = 100
        max_connections_per_source = 10
        retry_above = 1.0
        max_header_bytes = 2048
        max_stream_buffer = 65536
        memory_budget_mb = 64
        max_datagram_queue = 8
        max_flows = 50
        max_flows_per_source = 5
        header_timeout_s = 1
        body_timeout_s = 2
        send_timeout_s = 3
        queue_timeout_s = 4

        [defaults]
        deadline_ms = 250
        urgency = 1
        incremental = true
        loss_tolerance = 0
        min_rate = 1000
        idempotent = true

        [[services]]
        name = "files"
        policy = "round-robin"
        load_cap = 2
        retries = 0
        timeout_s = 1.5
        read_timeout_s = 2.5
        max_body = 0
        max_queue = 3
        [services.health]
        interval_s = 3
        timeout_s = 3
        unhealthy_after = 1
        healthy_after = 5
        ejection_s = 0
        path = "/ready?full=1"
        max_ejection_percent = 100
        [[services.backends]]
        name = "disk"
        kind = "static"
        root = "www"
        weight = 0.25
        max_in_flight = 1
    """
    config = _parse(text, tmp_path)
    assert config == EdgeConfig(
        host="::",
        port=0,
        certificate=tmp_path / "tls" / "cert.pem",
        private_key=tmp_path / "tls" / "key.pem",
        alpn=("h3", "netsched/1"),
        cipher_suites=("TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"),
        www=tmp_path / "www",
        idle_timeout_s=5.0,
        max_queue=7,
        drain_timeout_s=0.0,
        early_data="idempotent",
        keys_file=tmp_path / "tls" / "key.pem",
        limits=LimitsConfig(
            max_connections=100,
            max_connections_per_source=10,
            retry_above=1.0,
            max_header_bytes=2048,
            max_stream_buffer=65536,
            memory_budget_mb=64,
            max_datagram_queue=8,
            max_flows=50,
            max_flows_per_source=5,
            header_timeout_s=1.0,
            body_timeout_s=2.0,
            send_timeout_s=3.0,
            queue_timeout_s=4.0,
        ),
        default_slo=SLO(
            deadline_ms=250,
            urgency=1,
            incremental=True,
            loss_tolerance=0.0,
            min_rate=1000,
            idempotent=True,
        ),
        services=(
            ServiceConfig(
                name="files",
                backends=(
                    BackendConfig(
                        name="disk",
                        kind="static",
                        root=tmp_path / "www",
                        weight=0.25,
                        max_in_flight=1,
                    ),
                ),
                policy="round-robin",
                load_cap=2,
                retries=0,
                timeout_s=1.5,
                read_timeout_s=2.5,
                max_body=0,
                max_queue=3,
                health=HealthConfig(
                    interval_s=3.0,
                    timeout_s=3.0,
                    unhealthy_after=1,
                    healthy_after=5,
                    ejection_s=0.0,
                    path="/ready?full=1",
                    max_ejection_percent=100,
                ),
            ),
        ),
        source="edge.toml",
    )
    assert isinstance(config.idle_timeout_s, float)
    assert config.service("files") is config.services[0]


def test_session_tickets_and_early_data() -> None:
    assert (EdgeConfig().session_tickets, EdgeConfig().early_data) == (True, "safe")
    config = _parse('[edge]\nearly_data = "off"\n')
    assert (config.session_tickets, config.early_data) == (True, "off")
    config = _parse('[edge]\nsession_tickets = false\nearly_data = "off"\n')
    assert (config.session_tickets, config.early_data) == (False, "off")
    # Without tickets the default early_data has nothing to apply to: no error, and off.
    config = _parse("[edge]\nsession_tickets = false\n")
    assert (config.session_tickets, config.early_data) == (False, "off")


def test_service_queue_defaults_to_the_edge_value() -> None:
    text = """
        [edge]
        max_queue = 5
        [[services]]
        name = "a"
        backends = [{ kind = "tcp", address = "127.0.0.1:9" }]
        [[services]]
        name = "b"
        max_queue = 2
        backends = [{ kind = "tcp", address = "127.0.0.1:9" }]
    """
    config = _parse(text)
    assert [s.max_queue for s in config.services] == [5, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[edge]\nmax_queue = 0\n", "edge.max_queue: must be at least 1, got 0"),
        ("[edge]\nmax_path_id = 16\n", "edge.max_path_id: must be between 0 and 15, got 16"),
        ("[limits]\nretry_above = 1.5\n", "limits.retry_above: must be at most 1.0, got 1.5"),
        ("[limits]\nmax_header_bytes = 10\n", "limits.max_header_bytes: must be between"),
        ("[limits]\nsend_timeout_s = 0\n", "limits.send_timeout_s:"),
        ("[limits]\nmax_conections = 1\n", "max_conections"),
    ],
)
def test_limits_are_checked(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(text)
    assert message in str(info.value)
    assert ":2:" in str(info.value) or "edge.toml:" in str(info.value)


def test_layouts_give_the_same_service() -> None:
    tables = """
        [[services]]
        name = "api"
        [services.health]
        interval_s = 2
        path = "/hz"
        [[services.backends]]
        kind = "tcp"
        address = "localhost:7"
        [[services.backends]]
        kind = "udp"
        address = "[fe80::1%eth0]:9"
    """
    inline = """
        [[services]]
        name = "api"
        health = { interval_s = 2, path = "/hz" }
        backends = [
            { kind = "tcp", address = "localhost:7" },  # comment
            { kind = "udp", address = "[fe80::1%eth0]:9" },
        ]
    """
    dotted = """
        services = [{ name = "api", health.interval_s = 2, health.path = "/hz", backends = [
            { kind = "tcp", address = "localhost:7" },
            { kind = "udp", address = "[fe80::1%eth0]:9" }
        ] }]
    """
    configs = [_parse(text) for text in (tables, inline, dotted)]
    assert configs[0] == configs[1] == configs[2]
    (service,) = configs[0].services
    assert service.health == HealthConfig(interval_s=2.0, path="/hz")
    assert [(b.name, b.kind, b.host, b.port) for b in service.backends] == [
        ("api-0", "tcp", "localhost", 7),
        ("api-1", "udp", "fe80::1%eth0", 9),
    ]


def test_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf" / "static").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    file = tmp_path / "conf" / "edge.toml"
    text = SERVICE.replace('"http"', '"static"').replace(
        'address = "127.0.0.1:80"', 'root = "static"'
    )
    text += f'[edge]\nwww = "{tmp_path / "elsewhere"}"\n'
    file.write_text(text)
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("conf/edge.toml"))
    assert config.source == "conf/edge.toml"
    assert config.services[0].backends[0].root == tmp_path / "conf" / "static"
    assert config.www == tmp_path / "elsewhere"  # absolute paths stay as written
    # Without a base directory, the current one is used.
    monkeypatch.chdir(tmp_path / "conf")
    assert parse_config(text).services[0].backends[0].root == tmp_path / "conf" / "static"


def test_service_lookup() -> None:
    config = _parse(SERVICE)
    assert config.service("api") is config.services[0]
    assert config.service("API") is None
    # The index is rebuilt by replace() and left out of equality and hashing.
    renamed = replace(config.services[0], name="web")
    moved = replace(config, services=(renamed,))
    assert moved.service("web") is renamed and moved.service("api") is None
    assert hash(config) == hash(_parse(SERVICE))


# ---------------------------------------------------------------- errors

ERRORS: list[tuple[str, str, int | None]] = [
    # TOML syntax, with tomllib's position
    ("[edge]\nlisten = \n", "invalid TOML at column 10: Invalid value", 2),
    ("[edge]\nlisten = 1\nlisten = 2\n", "invalid TOML at column 11: Cannot overwrite a value", 3),
    ('a = 1\nb = """x\n\n', "invalid TOML at end of file: Unterminated string", 2),
    # unknown keys
    (
        SERVICE + 'adress = "x"\n',
        "services[0].backends[0].adress: unknown key 'adress' (did you mean 'address'?)",
        6,
    ),
    ("[edgee]\n", "edgee: unknown key 'edgee' (did you mean 'edge'?)", 1),
    (
        "[edge]\nmax_queue = 1\nzzz = 1\n",
        "edge.zzz: unknown key 'zzz' (known keys: listen, certificate, private_key, alpn, "
        "cipher_suites, www, idle_timeout_s, max_queue, retry, send_order, multipath, "
        "scheduler, admin, max_path_id, congestion_control, fec, egress_mbps, session_tickets, "
        "early_data, "
        "drain_timeout_s, keys_file, state_dir)",
        3,
    ),
    (
        '[defaults]\nservice = "x"\n',
        "defaults.service: unknown key 'service' (known keys: "
        "deadline_ms, urgency, incremental, loss_tolerance, min_rate, idempotent)",
        2,
    ),
    (
        '"odd key" = 1\n',
        "odd key: unknown key 'odd key' (known keys: edge, limits, defaults, services)",
        1,
    ),
    # wrong types
    ("edge = 5\n", "edge: expected a table, got 5", 1),
    ('services = { name = "x" }\n', "services: expected an array of tables, got a table", 1),
    ('[edge]\nalpn = "h3"\n', "edge.alpn: expected an array of protocol names, got 'h3'", 2),
    ('[edge]\nfec = "yes"\n', "edge.fec: expected true or false, got 'yes'", 2),
    ("[edge]\nsession_tickets = 1\n", "edge.session_tickets: expected true or false, got 1", 2),
    (
        '[edge]\nearly_data = "all"\n',
        "edge.early_data: expected one of 'safe', 'idempotent', 'off', got 'all'",
        2,
    ),
    (
        '[edge]\nsession_tickets = false\nearly_data = "idempotent"\n',
        "edge.early_data: 'idempotent' needs session_tickets = true (0-RTT resumes a session)",
        3,
    ),
    ("[edge]\negress_mbps = 0\n", "edge.egress_mbps: must be greater than 0, got 0", 2),
    (
        '[edge]\ncipher_suites = "TLS_AES_128_GCM_SHA256"\n',
        "edge.cipher_suites: expected an array of cipher suite names, got 'TLS_AES_128_GCM_SHA256'",
        2,
    ),
    (
        SERVICE + "max_in_flight = 1.0\n",
        "services[0].backends[0].max_in_flight: expected an integer, got 1.0",
        6,
    ),
    (
        SERVICE + "weight = true\n",
        "services[0].backends[0].weight: expected a finite number, got true",
        6,
    ),
    (
        SERVICE + "weight = inf\n",
        "services[0].backends[0].weight: expected a finite number, got inf",
        6,
    ),
    (
        SERVICE.replace('"127.0.0.1:80"', "80"),
        "services[0].backends[0].address: expected host:port, got 80",
        5,
    ),
    ('[[services]]\nname = "a"\nhealth = 3\n', "services[0].health: expected a table, got 3", 3),
    (
        '[[services]]\nname = "a"\ntimeout_s = 1979-05-27\n',
        "services[0].timeout_s: expected a finite number, got a date/time",
        3,
    ),
    (
        "[defaults]\ndeadline_ms = 1\nincremental = 1\n",
        "defaults.incremental: must be a bool (got 1)",
        3,
    ),
    # malformed values
    (
        SERVICE.replace('"127.0.0.1:80"', '"x"'),
        "services[0].backends[0].address: expected host:port, got 'x'",
        5,
    ),
    (
        SERVICE.replace('"127.0.0.1:80"', '"::1:80"'),
        "services[0].backends[0].address: expected host:port, got '::1:80'",
        5,
    ),
    (
        SERVICE.replace('"127.0.0.1:80"', '"[nope]:80"'),
        "services[0].backends[0].address: expected host:port, got '[nope]:80'",
        5,
    ),
    (
        SERVICE.replace('"127.0.0.1:80"', '"-x:80"'),
        "services[0].backends[0].address: expected host:port, got '-x:80'",
        5,
    ),
    (
        SERVICE.replace('"api"', '"a b"'),
        "services[0].name: expected 1..64 characters of [A-Za-z0-9._-], got 'a b'",
        2,
    ),
    (
        SERVICE.replace('"api"', '"' + "a" * 65 + '"'),
        "services[0].name: expected 1..64 characters of [A-Za-z0-9._-], got '" + "a" * 65 + "'",
        2,
    ),
    (
        SERVICE.replace('"http"', '"grpc"'),
        "services[0].backends[0].kind: expected one of 'http', 'tcp', 'udp', 'static', got 'grpc'",
        4,
    ),
    (
        SERVICE.replace('"api"\n', '"api"\npolicy = "random"\n'),
        "services[0].policy: expected one of 'warm-first', 'least-in-flight', 'round-robin', "
        "'consistent-hash', got 'random'",
        3,
    ),
    (
        '[edge]\nalpn = ["h3", "h2"]\n',
        "edge.alpn[1]: expected one of 'netsched/1', 'h3', 'hq-interop', got 'h2'",
        2,
    ),
    (
        '[edge]\ncipher_suites = [\n  "TLS_AES_128_GCM_SHA256",\n  "AES_256_GCM_SHA384",\n]\n',
        "edge.cipher_suites[1]: expected one of 'TLS_AES_128_GCM_SHA256', "
        "'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256', got 'AES_256_GCM_SHA384'",
        4,
    ),
    (
        '[[services]]\nname = "a"\nhealth = { path = "/a b" }\n',
        "services[0].health.path: expected a path starting with '/' (printable ASCII, "
        "no spaces), got '/a b'",
        3,
    ),
    ('[edge]\nwww = ""\n', "edge.www: expected a path to a directory, got ''", 2),
    # out of range
    (
        SERVICE.replace('"127.0.0.1:80"', '"h:0"'),
        "services[0].backends[0].address: port must be between 1 and 65535, got 0",
        5,
    ),
    (
        '[edge]\nlisten = "[::]:70000"\n',
        "edge.listen: port must be between 0 and 65535, got 70000",
        2,
    ),
    (SERVICE + "weight = 0\n", "services[0].backends[0].weight: must be greater than 0, got 0", 6),
    (
        SERVICE + "max_in_flight = 0\n",
        "services[0].backends[0].max_in_flight: must be at least 1, got 0",
        6,
    ),
    (
        SERVICE.replace('"api"\n', '"api"\nretries = 4\n'),
        "services[0].retries: must be between 0 and 3, got 4",
        3,
    ),
    (
        '[[services]]\nname = "a"\nhealth.ejection_s = -1\n',
        "services[0].health.ejection_s: must be at least 0, got -1",
        3,
    ),
    ("[edge]\nidle_timeout_s = 0.0\n", "edge.idle_timeout_s: must be greater than 0, got 0.0", 2),
    ("[defaults]\nurgency = 9\n", "defaults.urgency: must be an int in 0..7 (got 9)", 2),
    (
        "[defaults]\nloss_tolerance = 1.5\n",
        "defaults.loss_tolerance: must be a number in 0.0..1.0 (got 1.5)",
        2,
    ),
    (
        SERVICE + "[services.health]\ninterval_s = 1\ntimeout_s = 2\n",
        "services[0].health.timeout_s: must not exceed interval_s (1), got 2",
        8,
    ),
    (
        '[[services]]\nname = "a"\nhealth = { interval_s = 0.25 }\n',
        "services[0].health.interval_s: must be at least timeout_s (0.5), got 0.25",
        3,
    ),
    # duplicates
    (SERVICE + SERVICE, "services[1].name: duplicate service name 'api' (also services[0])", 7),
    (
        SERVICE + '[[services.backends]]\nname = "api-0"\nkind = "tcp"\naddress = "h:1"\n',
        "services[0].backends[1].name: duplicate backend name 'api-0' "
        "(also services[0].backends[0])",
        7,
    ),
    ('[edge]\nalpn = ["h3",\n  "h3"]\n', "edge.alpn[1]: duplicate protocol 'h3'", 3),
    (
        '[edge]\ncipher_suites = ["TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"]\n',
        "edge.cipher_suites[1]: duplicate cipher suite 'TLS_AES_128_GCM_SHA256'",
        2,
    ),
    # missing required keys (located at their table)
    (SERVICE.replace('name = "api"\n', ""), "services[0].name: missing required key 'name'", 1),
    (
        SERVICE.replace('kind = "http"\n', ""),
        "services[0].backends[0].kind: missing required key 'kind'",
        3,
    ),
    (
        SERVICE.replace('address = "127.0.0.1:80"\n', ""),
        "services[0].backends[0].address: missing required key 'address' for kind 'http'",
        3,
    ),
    (
        '[[services]]\nname = "a"\n[[services.backends]]\nkind = "static"\n',
        "services[0].backends[0].root: missing required key 'root' for kind 'static'",
        3,
    ),
    ('[[services]]\nname = "api"\n', "services[0].backends: at least one backend is required", 1),
    (
        '[[services]]\nname = "api"\nbackends = []\n',
        "services[0].backends: at least one backend is required",
        3,
    ),
    ("[edge]\nalpn = []\n", "edge.alpn: at least one protocol is required", 2),
    (
        "[edge]\ncipher_suites = []\n",
        "edge.cipher_suites: at least one cipher suite is required",
        2,
    ),
    # keys that do not fit the rest
    (
        SERVICE.replace('"http"', '"static"'),
        "services[0].backends[0].address: key 'address' does not apply to kind 'static'",
        5,
    ),
    (
        SERVICE + 'root = "."\n',
        "services[0].backends[0].root: key 'root' does not apply to kind 'http'",
        6,
    ),
]


@pytest.mark.parametrize(("text", "message", "line"), ERRORS)
def test_error(text: str, message: str, line: int | None) -> None:
    error = _error(text)
    assert str(error) == f"edge.toml:{line}: {message}"
    assert error.line == line
    assert error.file == "edge.toml"
    key, _, rest = message.partition(": ")
    if message.startswith("invalid TOML"):
        assert (error.key, error.message) == (None, message)
    else:
        assert (error.key, error.message) == (key, rest)


def test_missing_files_and_partners(tmp_path: Path) -> None:
    error = _error('[edge]\ncertificate = "cert.pem"\n', tmp_path)
    assert str(error) == f"edge.toml:2: edge.certificate: no such file: '{tmp_path / 'cert.pem'}'"
    (tmp_path / "cert.pem").write_text("x")
    error = _error('[edge]\ncertificate = "cert.pem"\n', tmp_path)
    assert str(error) == (
        "edge.toml:1: edge.private_key: missing: 'certificate' is set, and the two go together"
    )
    error = _error('[edge]\nprivate_key = "cert.pem"\nwww = "cert.pem"\n', tmp_path)
    assert str(error) == f"edge.toml:3: edge.www: no such directory: '{tmp_path / 'cert.pem'}'"


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml")
    assert (
        str(caught.value)
        == f"{tmp_path / 'absent.toml'}: cannot read the file: No such file or directory"
    )
    assert (caught.value.key, caught.value.line) == (None, None)
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[edge]\n\nlisten = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    assert str(caught.value) == f"{bad}:3: the file is not valid UTF-8"


def test_error_format() -> None:
    assert str(ConfigError("m", file="f")) == "f: m"
    assert str(ConfigError("m", file="f", key="k")) == "f: k: m"
    assert str(ConfigError("m", file="f", line=3)) == "f:3: m"
    error = ConfigError("m", file="f", key="k", line=3)
    assert str(error) == "f:3: k: m"
    assert isinstance(error, ValueError)
    assert (error.message, error.file, error.key, error.line) == ("m", "f", "k", 3)


@pytest.mark.parametrize(
    ("path_line", "path"),
    [
        ('path = """/a[[b]]=#\'"""" # ends with a quote', "/a[[b]]=#'\""),
        ("path = '''/a'b''''' # ends with two quotes", "/a'b''"),
        ('path = "/a\\"=\\"[x]" # escaped quotes', '/a"="[x]'),
    ],
)
def test_lines_survive_strings_comments_and_crlf(path_line: str, path: str) -> None:
    # Brackets, quotes, '=' and '#' inside strings and comments must not confuse the
    # line finder, nor newlines inside multi-line strings.
    lines = [
        "# [[services]] this = 'is a comment'",
        "[[services]]",
        'name = """',  # a multi-line string; its first newline is trimmed
        'api"""',
        "[services.health]  # [edge]",
        path_line,
        'interval_s = 2 # x = "',
        "[[ services . 'backends' ]]",
        'kind = "tcp"',
        "address = '''h:1'''",
        "[[services.backends]]",
        "\"kind\" = 'tcp'",
        '"address" = "h:2"',
        'name = "b"',
    ]
    config = _parse("\n".join(lines))
    assert config.services[0].health.path == path
    assert [b.port for b in config.services[0].backends] == [1, 2]
    for newline in ("\n", "\r\n"):
        text = newline.join(lines)
        error = _error(text.replace("interval_s = 2", "interval_s = true"))
        assert (error.key, error.line) == ("services[0].health.interval_s", 7)
        # A name with an escaped quote and backslash: "a\"]\\"
        error = _error(text.replace('"b"', '"a\\"]\\\\"'))
        assert (error.key, error.line) == ("services[0].backends[1].name", 14)


# ---------------------------------------------------------------- properties

_NOISE = st.sampled_from(["", "# [[services]]", "   # x = [1, 2]", "\t", "# health = { a = 1 }"])
_SERVICE_OPTIONS = {
    "load_cap": st.integers(1, 50),
    "retries": st.integers(0, 3),
    "timeout_s": st.sampled_from([0.5, 2.0, 30.0]),
    "max_body": st.integers(0, 1 << 30),
}
_HEALTH_OPTIONS = {
    "unhealthy_after": st.integers(1, 9),
    "healthy_after": st.integers(1, 9),
    "ejection_s": st.sampled_from([0.0, 2.5, 60.0]),
}
_BACKEND_OPTIONS = {
    "weight": st.sampled_from([0.5, 1.0, 3.25]),
    "max_in_flight": st.integers(1, 1000),
}
_FLOAT_KEYS = {"timeout_s", "ejection_s", "weight", "idle_timeout_s"}


@dataclass
class _Doc:
    """A TOML text being written, remembering where each numeric key went."""

    draw: Any
    lines: list[str] = field(default_factory=list)
    spots: dict[str, tuple[int, str]] = field(default_factory=dict)  # key -> (line index, text)

    def add(self, line: str, keys: dict[str, str] | None = None) -> None:
        if self.draw(st.booleans()):
            self.lines.append(self.draw(_NOISE))
        for key, fragment in (keys or {}).items():
            self.spots[key] = (len(self.lines), fragment)
        self.lines.append(line)

    def text(self, corrupt: str | None = None) -> str:
        lines = list(self.lines)
        if corrupt is not None:
            index, fragment = self.spots[corrupt]
            written_key = fragment.split(" = ")[0]
            lines[index] = re.sub(
                r"(?<![\w.])" + re.escape(fragment), f'{written_key} = "oops"', lines[index]
            )
        return "\n".join(lines) + "\n"


def _options(draw: Any, options: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(sorted(options)), unique=True))
    return {key: draw(options[key]) for key in keys}


def _fragments(prefix: str, written: str, values: dict[str, Any]) -> dict[str, str]:
    return {f"{prefix}.{k}": f"{written}{k} = {v!r}" for k, v in values.items()}


def _write_service(doc: _Doc, draw: Any, index: int, max_queue: int) -> ServiceConfig:
    name = f"svc{index}"
    prefix = f"services[{index}]"
    options = _options(draw, _SERVICE_OPTIONS)
    health = _options(draw, _HEALTH_OPTIONS)
    health_layout = draw(st.sampled_from(["inline", "dotted", "table"]))
    inline_backends = draw(st.booleans())
    backends = [
        (
            draw(st.sampled_from(["http", "tcp", "udp"])),
            draw(st.integers(1, 65535)),
            draw(st.booleans()),
            _options(draw, _BACKEND_OPTIONS),
        )
        for _ in range(draw(st.integers(1, 3)))
    ]

    doc.add("[[services]]")
    doc.add(f'name = "{name}"')
    for fragment_key, fragment in _fragments(prefix, "", options).items():
        doc.add(fragment, {fragment_key: fragment})
    health_keys = _fragments(f"{prefix}.health", "", health)
    if health_layout == "inline":
        doc.add("health = { " + ", ".join(health_keys.values()) + " }", health_keys)
    if health_layout == "dotted":
        for key, fragment in _fragments(f"{prefix}.health", "health.", health).items():
            doc.add(fragment, {key: fragment})
    rendered = []
    for number, (kind, port, named, extra) in enumerate(backends):
        fields = [f'kind = "{kind}"', f'address = "127.0.0.1:{port}"']
        fields += [f'name = "b{number}"'] if named else []
        keys = _fragments(f"{prefix}.backends[{number}]", "", extra)
        rendered.append((fields + list(keys.values()), keys))
    if inline_backends:
        doc.add("backends = [")
        for fields, keys in rendered:
            doc.add("  { " + ", ".join(fields) + " },", keys)
        doc.add("]")
    if health_layout == "table":
        doc.add("[services.health]")
        for key, fragment in health_keys.items():
            doc.add(fragment, {key: fragment})
    if not inline_backends:
        for fields, keys in rendered:
            doc.add("[[services.backends]]")
            for line in fields:
                doc.add(line, {k: f for k, f in keys.items() if f == line})
    return ServiceConfig(
        name=name,
        backends=tuple(
            BackendConfig(
                name=f"b{number}" if named else f"{name}-{number}",
                kind=kind,
                host="127.0.0.1",
                port=port,
                **extra,
            )
            for number, (kind, port, named, extra) in enumerate(backends)
        ),
        health=HealthConfig(**health),
        **{"max_queue": max_queue, **options},
    )


@st.composite
def _documents(draw: Any) -> tuple[_Doc, EdgeConfig]:
    doc = _Doc(draw)
    edge = {"max_queue": draw(st.integers(1, 10_000)), "idle_timeout_s": 4.5}
    edge_first = draw(st.booleans())

    def write_edge() -> None:
        doc.add("[edge]")
        for key, fragment in _fragments("edge", "", edge).items():
            doc.add(fragment, {key: fragment})

    if edge_first:
        write_edge()
    services = tuple(
        _write_service(doc, draw, i, edge["max_queue"]) for i in range(draw(st.integers(1, 3)))
    )
    if not edge_first:
        write_edge()
    return doc, EdgeConfig(**edge, services=services, source="edge.toml")


@settings(max_examples=150, deadline=None)
@given(_documents(), st.data())
def test_generated_files_parse_and_errors_point_at_their_line(
    document: tuple[_Doc, EdgeConfig], data: st.DataObject
) -> None:
    doc, expected = document
    assert _parse(doc.text()) == expected
    key = data.draw(st.sampled_from(sorted(doc.spots)))
    error = _error(doc.text(corrupt=key))
    kind = "a finite number" if key.rsplit(".", 1)[-1] in _FLOAT_KEYS else "an integer"
    assert error.message == f"expected {kind}, got 'oops'"
    assert (error.key, error.line) == (key, doc.spots[key][0] + 1)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_text_gives_a_config_or_a_config_error(data: st.DataObject) -> None:
    # Single-character edits of a valid file reach odd but valid TOML that the
    # line finder must survive; plain random text exercises the syntax errors.
    base = EXAMPLE.read_text()
    position = data.draw(st.integers(0, len(base)))
    edit = data.draw(st.sampled_from(["", "[", "]", '"', "'", "=", "#", "\n", ".", "{", ",", "x"]))
    cut = data.draw(st.integers(0, 2))
    text = data.draw(st.one_of(st.just(base[:position] + edit + base[position + cut :]), st.text()))
    try:
        _parse(text)
    except ConfigError as error:
        assert error.line is None or 1 <= error.line <= text.count("\n") + 1
