"""Long-run fuzzing of every parser a peer (or an operator's file) reaches.

    .venv/bin/python bench/fuzz_long.py                      # 1,000,000 inputs per parser
    .venv/bin/python bench/fuzz_long.py --inputs 20000 --target mp_frame --target slo

Each target is a parser with its contract: on any input it returns a value or
raises one of its documented error types. Inputs are random bytes and
mutations of valid encodings (truncation, bit flips, byte edits, huge varints,
splices, trailing bytes), from a seeded RNG so that a run can be repeated. Per
target it prints the inputs run, the exceptions by type (documented ones are
expected; any other is a crash, shown with its first input) and the longest
time one input took. A hang is caught by faulthandler's watchdog, which runs
outside the GIL: an input running longer than `--hang-s` dumps every thread's
stack and exits with status 1.

tests/fuzz/ imports `TARGETS` to check the same contracts with hypothesis.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pylsqpack
from aioquic.buffer import Buffer, BufferReadError, encode_uint_var
from aioquic.quic.rangeset import RangeSet

from netsched_client.errors import FramingError, SLOError
from netsched_client.fec import frames as fec
from netsched_client.fec.params import (
    FEC_TRANSPORT_PARAMETER,
    FecParameters,
    FecTransportParameterError,
    decode_fec_parameters,
)
from netsched_client.proto import h3, hq
from netsched_client.proto import slo as slo_mod
from netsched_client.proto.framing import (
    ControlReader,
    Goaway,
    HeadReader,
    RequestHead,
    ResponseHead,
    decode_datagram,
    encode_datagram,
    encode_goaway,
    encode_request_head,
    encode_response_head,
)
from netsched_client.proto.multipath import frames as mp
from netsched_client.proto.transport_parameters import (
    decode_varint_value,
    encode_transport_parameter,
    find_transport_parameter,
)
from netsched_edge.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parent.parent
BATCH = 1000  # inputs between two re-arms of the hang watchdog


@dataclass(frozen=True)
class Target:
    """A parser, the errors it documents, and valid inputs to mutate."""

    name: str
    run: Callable[[bytes], object]
    errors: tuple[type[BaseException], ...]
    seeds: Sequence[bytes]
    text: bool = False  # mutate as text lines too (config)


# ------------------------------------------------------------------ parsers


def _mp_frame(data: bytes) -> object:
    # As the connection reads it: type, then the frame, then the packet's other frames.
    buf = Buffer(data=data)
    try:
        frame_type = buf.pull_uint_var()
    except BufferReadError:
        frame_type = mp.PATH_ACK
    with contextlib.suppress(mp.FrameEncodingError):
        mp.decode_frame(frame_type, buf)
    return mp.parse_frame(data)


def _fec_frame(data: bytes) -> object:
    buf = Buffer(data=data)
    try:
        frame_type = buf.pull_uint_var()
    except BufferReadError:
        frame_type = fec.REPAIR
    with contextlib.suppress(fec.FrameEncodingError):
        fec.decode_frame(frame_type, buf)
    return fec.parse_frame(data)


def _transport_parameters(data: bytes) -> object:
    """Our parameters as a handshake reads them out of the peer's list."""
    found = []
    for param_id in (slo_mod.SLO_TRANSPORT_PARAMETER, mp.TP_INITIAL_MAX_PATH_ID):
        value = find_transport_parameter(data, param_id)
        found.append(value)
        if value is not None:
            decode_varint_value(value)
    fec_value = find_transport_parameter(data, FEC_TRANSPORT_PARAMETER)
    if fec_value is not None:
        decode_fec_parameters(fec_value)
    if found[0] is not None:
        slo_mod.decode_slo(found[0])
    return found


def _head(kind: str, data: bytes) -> object:
    """A head fed whole, then again split at a point the data chooses."""
    results = []
    split = data[-1] % (len(data) + 1) if data else 0
    for chunks in ((data,), (data[:split], data[split:])):
        reader: HeadReader[RequestHead] | HeadReader[ResponseHead]
        reader = HeadReader("request") if kind == "request" else HeadReader("response")
        head = None
        rest = b""
        for chunk in chunks:
            if head is None:
                head, rest = reader.feed(chunk)
            else:
                rest += chunk
        reader.finish()
        results.append((head, rest))
    if results[0] != results[1]:
        raise AssertionError(f"head differs when split at {split}: {results}")
    return results[0]


def _control(data: bytes) -> object:
    """The native client's control stream, fed in two pieces."""
    split = data[-1] % (len(data) + 1) if data else 0
    reader = ControlReader()
    return reader.feed(data[:split]) + reader.feed(data[split:])


def _headers_of(data: bytes) -> h3.Headers:
    """Header fields from bytes: fields split at NUL, name and value at the first ':' past 0."""
    headers: h3.Headers = []
    for item in data.split(b"\0"):
        colon = item.find(b":", 1)
        if colon < 0:
            headers.append((item, b""))
        else:
            headers.append((item[:colon], item[colon + 1 :]))
    return headers


def _bytes_of(headers: h3.Headers) -> bytes:
    return b"\0".join(name + b":" + value for name, value in headers)


def _h3_request(data: bytes) -> object:
    return h3.request_head(_headers_of(data))


def _h3_response(data: bytes) -> object:
    return h3.response_head(_headers_of(data))


def _hq_request(data: bytes) -> object:
    path = hq.parse_request_line(data)
    if path is not None and hq.request_line(path).rstrip(b"\r\n") != b"GET " + path.encode():
        raise AssertionError(f"parse_request_line accepted {path!r} that request_line refuses")
    return path


def _h3_frames(data: bytes) -> object:
    """Fed in chunks of 1..7 bytes, the bound reports what it reports fed the whole at once."""
    whole = h3.HeaderBound(1024).feed(data)
    scanner = h3.HeaderBound(1024)
    step = 1 + (data[0] % 7 if data else 0)
    found = [scanner.feed(data[i : i + step]) for i in range(0, len(data), step)]
    if [r for r in found if r is not None] != ([] if whole is None else [whole]):
        raise AssertionError(f"chunked {found} differs from whole {whole}")
    return whole


_CONFIG_DIR = Path(tempfile.gettempdir())


def _config(data: bytes) -> object:
    return parse_config(data.decode("utf-8", "replace"), file="fuzz.toml", base_dir=_CONFIG_DIR)


# ------------------------------------------------------------------ seeds


def _mp_seeds() -> list[bytes]:
    ranges = RangeSet()
    for start, stop in ((0, 3), (5, 9), (20, 21), (2**30, 2**30 + 7)):
        ranges.add(start, stop)
    frames: list[mp.MultipathFrame] = [
        mp.PathAck(0, ranges, 25),
        mp.PathAck(7, ranges, 0, (1, 2, 3)),
        mp.PathAbandon(3, mp.PATH_UNSTABLE_OR_POOR),
        mp.PathStatus(2, 9, True),
        mp.PathStatus(2, 10, False),
        mp.PathNewConnectionId(1, 4, 2, bytes(range(8)), bytes(16)),
        mp.PathRetireConnectionId(1, 3),
        mp.MaxPathId(15),
        mp.PathsBlocked(15),
        mp.PathCidsBlocked(4, 8),
    ]
    return [frame.encode() for frame in frames]


def _fec_seeds() -> list[bytes]:
    frames: list[fec.FecFrame] = [
        fec.SourceSymbolId(1234),
        fec.Repair(7, 100, 16, 15, bytes(range(64))),
        fec.SymbolAck((range(0, 4), range(10, 11), range(20, 40))),
        fec.FecWindow(3, 64),
    ]
    return [frame.encode() for frame in frames]


_SLOS = (
    slo_mod.SLO(),
    slo_mod.SLO(deadline_ms=250, urgency=1, incremental=True, loss_tolerance=0.25),
    slo_mod.SLO(min_rate=10**6, service="api.v2", affinity="user-42", idempotent=False),
)


def _tp_seeds() -> list[bytes]:
    return [
        encode_transport_parameter(0x01, encode_uint_var(30_000))
        + encode_transport_parameter(slo_mod.SLO_TRANSPORT_PARAMETER, slo_mod.encode_slo(slo))
        + encode_transport_parameter(mp.TP_INITIAL_MAX_PATH_ID, encode_uint_var(3))
        + encode_transport_parameter(FEC_TRANSPORT_PARAMETER, FecParameters().encode())
        for slo in _SLOS
    ]


def _request_heads() -> list[RequestHead]:
    return [
        RequestHead("api"),
        RequestHead("echo", slo=_SLOS[1], streaming=True, meta={"method": "PUT", "path": "/a"}),
        RequestHead("files", slo=_SLOS[2], meta={"k" * 64: "v" * 100}),
    ]


def _response_heads() -> list[ResponseHead]:
    return [
        ResponseHead(200),
        ResponseHead(503, "no backend", backend="b1", queue_ms=1.5, backend_ms=20),
        ResponseHead(200, meta={"content-type": "text/plain"}),
    ]


def _h3_request_seeds() -> list[bytes]:
    seeds = [_bytes_of(h3.request_headers(head, "localhost")) for head in _request_heads()]
    seeds.append(
        _bytes_of(
            [
                (b":method", b"GET"),
                (b":path", b"/www/index.html?q=1"),
                (b"priority", b'u=1, i, x=("a" 1);p=?0'),
            ]
        )
    )
    return seeds


def _h3_frame_seeds() -> list[bytes]:
    def frame(kind: int, body: bytes) -> bytes:
        return encode_uint_var(kind) + encode_uint_var(len(body)) + body

    return [
        frame(0x1, b"h" * 40) + frame(0x0, b"d" * 100) + frame(0x21, b"") + frame(0x1, b"t"),
        frame(0x1, b"x" * 2000),
        encode_uint_var(0x1) + encode_uint_var(2**62 - 1),
    ]


def _qpack_seeds() -> list[bytes]:
    encoder = pylsqpack.Encoder()
    encoder.apply_settings(4096, 16)
    blocks = [
        encoder.encode(i * 4, h3.request_headers(head, "host"))[1]
        for i, head in enumerate(_request_heads())
    ]
    blocks.append(bytes([2, 0]) + b"\x80" * 200)  # references to a dynamic entry
    return blocks


def _config_seeds() -> list[bytes]:
    minimal = (
        '[edge]\nlisten = "127.0.0.1:0"\n[limits]\nmax_header_bytes = 4096\n'
        '[[services]]\nname = "api"\n[[services.backends]]\nkind = "http"\n'
        'address = "127.0.0.1:80"\n'
    )
    return [(ROOT / "examples" / "edge.toml").read_bytes(), minimal.encode()]


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target("mp_frame", _mp_frame, (mp.FrameEncodingError,), _mp_seeds()),
        Target("fec_frame", _fec_frame, (fec.FrameEncodingError,), _fec_seeds()),
        Target(
            "slo",
            slo_mod.decode_slo,
            (SLOError,),
            [slo_mod.encode_slo(slo) for slo in _SLOS],
        ),
        Target(
            "slo_header",
            lambda data: slo_mod.decode_slo_header(data.decode("latin-1")),
            (SLOError,),
            [slo_mod.encode_slo_header(slo).encode() for slo in _SLOS],
        ),
        Target(
            "priority",
            slo_mod.parse_priority_header,
            (),
            [b"u=1, i", b'u=7;a=1, i=?0, x=("a" 1.5 :aGk=:);p, y=@12, z=%"%c3"', b"i=?1,u=0"],
        ),
        Target(
            "transport_params",
            _transport_parameters,
            (SLOError, FecTransportParameterError),
            _tp_seeds(),
        ),
        Target(
            "request_head",
            lambda data: _head("request", data),
            (FramingError, SLOError),
            [encode_request_head(head) + b"body" for head in _request_heads()],
        ),
        Target(
            "response_head",
            lambda data: _head("response", data),
            (FramingError,),
            [encode_response_head(head) for head in _response_heads()],
        ),
        Target(
            "control",
            _control,
            (FramingError,),
            [encode_goaway(Goaway(8)), encode_goaway(Goaway(0)) + encode_goaway(Goaway(2**20))],
        ),
        Target(
            "datagram",
            decode_datagram,
            (FramingError,),
            [encode_datagram("telemetry", b"\x00\x01payload"), encode_datagram("a", b"")],
        ),
        Target("h3_request", _h3_request, (FramingError, SLOError), _h3_request_seeds()),
        Target(
            "h3_response",
            _h3_response,
            (FramingError,),
            [_bytes_of(h3.response_headers(head)) for head in _response_heads()],
        ),
        Target("h3_frames", _h3_frames, (), _h3_frame_seeds()),
        Target(
            "qpack_lines",
            lambda data: h3.count_field_lines(data, h3.MAX_FIELD_LINES),
            (),
            _qpack_seeds(),
        ),
        Target(
            "hq_request",
            _hq_request,
            (),
            [b"GET /index.html\r\n", b"GET /a/b?c=d\n", b"GET /\r\n"],
        ),
        Target(
            "fec_params",
            decode_fec_parameters,
            (FecTransportParameterError,),
            [FecParameters().encode(), FecParameters(64, 1, 0).encode()],
        ),
        Target("config", _config, (ConfigError,), _config_seeds(), text=True),
    )
}


# ------------------------------------------------------------------ inputs

_HUGE_VARINTS = (
    encode_uint_var(2**62 - 1),
    encode_uint_var(2**32),
    encode_uint_var(2**32 - 1),
    encode_uint_var(0x3FFF),
    b"\xc0\x00\x00\x00\x00\x00\x00\x00",  # non-minimal zero
    b"\xff",
    b"\xbf\xff\xff\xff",
)
_TEXT_TOKENS = (
    "0",
    "-1",
    "1e309",
    "nan",
    "inf",
    "-0.0",
    "true",
    '""',
    '"x"',
    "[]",
    "{}",
    "18446744073709551616",
    "9" * 400,
    "9" * 5000,
    '"' + "a" * 300 + '"',
    '"../../../etc/passwd"',
    '"127.0.0.1:99999"',
    '"[::1]:0"',
    '"\\u0000"',
    "[[services]]",
    "[limits]",
    '{ kind = "udp" }',
    "= =",
)


def mutate(rng: random.Random, seed: bytes, seeds: Sequence[bytes], text: bool) -> bytes:
    """One mutation (sometimes stacked) of a valid input."""
    data = bytearray(seed)
    for _ in range(1 + (rng.random() < 0.3) * rng.randrange(1, 4)):
        choice = rng.randrange(9 if text else 8)
        if choice == 0 and data:  # truncate
            del data[rng.randrange(len(data)) :]
        elif choice == 1 and data:  # bit flips
            for _ in range(rng.randrange(1, 5)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif choice == 2 and data:  # overwrite a byte
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice == 3:  # insert bytes
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 9))
        elif choice == 4 and data:  # delete a run
            at = rng.randrange(len(data))
            del data[at : at + rng.randrange(1, 9)]
        elif choice == 5:  # a huge or odd varint in place of some bytes
            at = rng.randrange(len(data) + 1)
            data[at : at + rng.randrange(0, 9)] = rng.choice(_HUGE_VARINTS)
        elif choice == 6:  # splice with another seed
            other = rng.choice(seeds)
            data = data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]
        elif choice == 7:  # trailing bytes
            data += rng.randbytes(rng.randrange(1, 17))
        else:  # text: swap a value, duplicate or drop a line
            lines = bytes(data).split(b"\n")
            at = rng.randrange(len(lines))
            kind = rng.randrange(3)
            if kind == 0 and b"=" in lines[at]:
                key = lines[at].split(b"=", 1)[0]
                lines[at] = key + b"= " + rng.choice(_TEXT_TOKENS).encode()
            elif kind == 1:
                lines.insert(at, lines[rng.randrange(len(lines))])
            else:
                del lines[at]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


def generate(rng: random.Random, target: Target) -> bytes:
    roll = rng.random()
    if roll < 0.15:
        return rng.randbytes(rng.randrange(0, 64 if rng.random() < 0.9 else 2048))
    if roll < 0.25 and target.seeds:  # a valid prefix (the type) and noise
        seed = rng.choice(target.seeds)
        return seed[: rng.randrange(1, 5)] + rng.randbytes(rng.randrange(0, 48))
    return mutate(rng, rng.choice(target.seeds), target.seeds, target.text)


# ------------------------------------------------------------------ runner


@dataclass
class Result:
    name: str
    inputs: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    crashes: dict[str, bytes] = field(default_factory=dict)  # type -> first input
    max_s: float = 0.0
    slowest: bytes = b""
    slowest_again_s: float = 0.0  # the slowest input re-run alone, best of 5: noise or real?


def run_target(target: Target, inputs: int, seed: int, hang_s: float) -> Result:
    result = Result(target.name)
    rng = random.Random(f"{seed}:{target.name}")
    started = time.perf_counter()
    done = 0
    while done < inputs:
        faulthandler.dump_traceback_later(hang_s, exit=True)
        for _ in range(min(BATCH, inputs - done)):
            data = generate(rng, target)
            t0 = time.perf_counter()
            try:
                target.run(data)
                outcome = "ok"
            except target.errors as exc:
                outcome = type(exc).__name__
            except Exception as exc:  # a crash: anything the contract does not document
                outcome = "CRASH " + type(exc).__name__
                result.crashes.setdefault(outcome, data)
            elapsed = time.perf_counter() - t0
            if elapsed > result.max_s:
                result.max_s, result.slowest = elapsed, data
            result.outcomes[outcome] += 1
        done += min(BATCH, inputs - done)
    result.inputs = done
    result.seconds = time.perf_counter() - started
    result.slowest_again_s = min(_timed(target, result.slowest) for _ in range(5))
    faulthandler.cancel_dump_traceback_later()
    return result


def _timed(target: Target, data: bytes) -> float:
    t0 = time.perf_counter()
    with contextlib.suppress(Exception):
        target.run(data)
    return time.perf_counter() - t0


def report(result: Result) -> str:
    outcomes = ", ".join(f"{name} {count}" for name, count in result.outcomes.most_common())
    lines = [
        f"{result.name:<17} {result.inputs:>9} inputs in {result.seconds:6.1f} s  "
        f"mean {result.seconds / max(result.inputs, 1) * 1e6:5.1f} us  "
        f"max {result.max_s * 1e3:6.2f} ms (alone: {result.slowest_again_s * 1e3:.2f} ms)"
        f"  crashes {len(result.crashes)}",
        f"    {outcomes}",
    ]
    for kind, data in result.crashes.items():
        lines.append(f"    {kind}: first input {data[:200]!r}")
    if result.slowest_again_s > 0.01:
        lines.append(f"    slowest input ({len(result.slowest)} bytes): {result.slowest[:120]!r}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per parser")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="repeatable")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--hang-s", type=float, default=10.0, help="one input longer: a hang")
    args = parser.parse_args(argv)
    faulthandler.enable()
    crashed = False
    print(f"seed {args.seed}, {args.inputs} inputs per parser, hang watchdog {args.hang_s} s")
    for name in args.target or list(TARGETS):
        result = run_target(TARGETS[name], args.inputs, args.seed, args.hang_s)
        print(report(result), flush=True)
        crashed |= bool(result.crashes)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
