"""Stream and datagram framing of netsched/1 (sans-IO).

A request is one client-initiated bidirectional QUIC stream: a HEAD, then raw
body bytes until FIN. The response on the same stream is a HEAD, then body bytes
until FIN. A HEAD is a QUIC variable-length integer (RFC 9000 §16) giving the
size of the msgpack map that follows; docs/PROTOCOL.md lists the keys. The
edge's control messages (GOAWAY) travel on a server-initiated unidirectional
stream, each framed like a HEAD.

Decoding is strict about the keys it knows, ignores the keys it does not (so a
later version can add some), and never allocates more than the head limit. A
malformed head raises `FramingError` (the edge answers 400); a well-formed head
whose embedded SLO is invalid raises `SLOError` (the edge answers 422).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Final, Generic, Literal, TypeVar, cast, overload

import msgpack
from aioquic.buffer import encode_uint_var

from netsched_client.errors import FramingError
from netsched_client.proto.slo import (
    SLO,
    is_int,
    service_name_problem,
    show,
    slo_from_map,
    slo_to_map,
    unpack_bounded,
)

HEAD_VERSION: Final = 1
# Room for an HTTP request's or response's header fields (nginx's default buffers
# for a request head hold 8 KiB); heads stay bounded before any allocation.
MAX_HEAD_BYTES: Final = 16384
MAX_META_ENTRIES: Final = 16
MAX_META_KEY_CHARS: Final = 64
MAX_TEXT_CHARS: Final = 1024  # a meta value or a response message
MAX_BACKEND_CHARS: Final = 256
MAX_DURATION_MS: Final = 86_400_000  # one day: beyond any sane queue or backend time
MAX_DATAGRAM_SERVICE_CHARS: Final = 64
MAX_HEADER_FIELDS: Final = 128  # as the h3 front's MAX_FIELD_LINES
MAX_HEADER_NAME_CHARS: Final = 256
MAX_HEADER_VALUE_CHARS: Final = 8192
# RFC 9110 §5.1: a field name is a token.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
# Edge-defined fields (the h3 mapping, §7) are never application headers.
RESERVED_HEADER_PREFIX: Final = "netsched-"

HeaderFields = tuple[tuple[str, str], ...]


class Headers(Mapping[str, str]):
    """Header fields, read-only: names lowercase, repeats and order kept in `fields`.

    `headers[name]` joins a repeated field's values with ", " (RFC 9110 §5.3);
    `get_list(name)` keeps them apart (Set-Cookie cannot be joined).
    """

    __slots__ = ("fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] | Mapping[str, str] = ()) -> None:
        pairs = fields.items() if isinstance(fields, Mapping) else fields
        self.fields: HeaderFields = tuple((name.lower(), value) for name, value in pairs)

    def get_list(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.fields if key == name]

    def __getitem__(self, name: str) -> str:
        values = self.get_list(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self.fields))

    def __len__(self) -> int:
        return len({name for name, _ in self.fields})

    def __repr__(self) -> str:
        return f"Headers({list(self.fields)!r})"


def _fail(where: str, problem: str, value: object) -> FramingError:
    return FramingError(f"{where}: {problem} (got {show(value)})")


def _is_text(value: object, low: int, high: int) -> bool:
    """A str of low..high characters that has a UTF-8 form (no lone surrogates)."""
    if not isinstance(value, str) or not low <= len(value) <= high:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(where: str, value: object, low: int, high: int) -> None:
    if not _is_text(value, low, high):
        raise _fail(where, f"must be a string of {low}..{high} characters", value)


def _check_bool(where: str, value: object) -> None:
    if not isinstance(value, bool):
        raise _fail(where, "must be a bool", value)


def _check_service(where: str, value: object) -> None:
    if (problem := service_name_problem(value)) is not None:
        raise _fail(where, problem, value)


def _frozen_meta(where: str, meta: object) -> Mapping[str, str]:
    """A validated read-only copy, so a caller's later edits cannot bypass validation."""
    if not isinstance(meta, Mapping):
        raise _fail(where, "must be a map of strings", meta)
    if len(meta) > MAX_META_ENTRIES:
        raise _fail(where, f"must have at most {MAX_META_ENTRIES} entries", len(meta))
    for key, value in meta.items():
        _check_text(f"{where} key", key, 1, MAX_META_KEY_CHARS)
        _check_text(f"{where}[{show(key)}]", value, 0, MAX_TEXT_CHARS)
    return MappingProxyType(dict(meta))


def header_fields(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> HeaderFields:
    """Pairs from a map (a `Headers` keeps its repeats) or an iterable of pairs, unchecked."""
    if isinstance(headers, Headers):
        return headers.fields
    if isinstance(headers, Mapping):
        return tuple(headers.items())
    return tuple(headers)


def _frozen_headers(where: str, headers: object) -> HeaderFields:
    """Validated (name, value) pairs in order, names lowercased (HTTP/2 and HTTP/3 rule).

    Values may not hold CR, LF or NUL (RFC 9110 §5.5): a header can never split
    into two on an HTTP/1.1 backend connection.
    """
    if isinstance(headers, str | bytes) or not isinstance(headers, Iterable):
        raise _fail(where, "must be (name, value) pairs or a map", headers)
    pairs = header_fields(headers)
    if len(pairs) > MAX_HEADER_FIELDS:
        raise _fail(where, f"must have at most {MAX_HEADER_FIELDS} fields", len(pairs))
    out: list[tuple[str, str]] = []
    for pair in pairs:
        if isinstance(pair, str | bytes) or not isinstance(pair, tuple | list) or len(pair) != 2:
            raise _fail(where, "each field must be a (name, value) pair", pair)
        name, value = pair
        if not _is_text(name, 1, MAX_HEADER_NAME_CHARS) or not _TOKEN.fullmatch(name.lower()):
            raise _fail(f"{where} name", "must be an RFC 9110 token", name)
        if name.lower().startswith(RESERVED_HEADER_PREFIX):
            raise _fail(f"{where} name", f"{RESERVED_HEADER_PREFIX}* names are the edge's", name)
        _check_text(f"{where}[{show(name)}]", value, 0, MAX_HEADER_VALUE_CHARS)
        if any(c in value for c in "\r\n\0"):
            raise _fail(f"{where}[{show(name)}]", "must not contain CR, LF or NUL", value)
        out.append((name.lower(), value))
    return tuple(out)


def _duration_ms(where: str, value: object) -> float | None:
    if value is None:
        return None
    # Bounded before float(): a huge int would overflow it.
    if (is_int(value) or isinstance(value, float)) and 0 <= value <= MAX_DURATION_MS:
        return float(value)
    raise _fail(where, f"must be a number of milliseconds in 0..{MAX_DURATION_MS}", value)


@dataclass(frozen=True, slots=True)
class RequestHead:
    """The head of a request stream (docs/PROTOCOL.md §4.2); `meta` is kept as a read-only copy.

    `headers`: the HTTP request's header fields for the backend, in order.
    """

    service: str
    slo: SLO | None = None
    streaming: bool = False
    meta: Mapping[str, str] = field(default_factory=dict)
    headers: HeaderFields = ()

    def __post_init__(self) -> None:
        _check_service("request.service", self.service)
        if self.slo is not None and not isinstance(self.slo, SLO):
            raise _fail("request.slo", "must be an SLO", self.slo)
        _check_bool("request.streaming", self.streaming)
        object.__setattr__(self, "meta", _frozen_meta("request.meta", self.meta))
        object.__setattr__(self, "headers", _frozen_headers("request.headers", self.headers))


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """The head of a response (docs/PROTOCOL.md §4.3); durations are in milliseconds.

    `from_backend`: status, headers and body are the backend's answer, passed on;
    otherwise a non-2xx status is the edge's own decision (unknown service, no
    backend, deadline, ...). `headers`: the backend's response header fields.
    """

    status: int
    message: str = ""
    backend: str | None = None
    queue_ms: float | None = None
    backend_ms: float | None = None
    meta: Mapping[str, str] = field(default_factory=dict)
    headers: HeaderFields = ()
    from_backend: bool = False

    def __post_init__(self) -> None:
        if not (is_int(self.status) and 100 <= self.status <= 999):
            raise _fail("response.status", "must be an int in 100..999", self.status)
        _check_text("response.message", self.message, 0, MAX_TEXT_CHARS)
        if self.backend is not None:
            _check_text("response.backend", self.backend, 1, MAX_BACKEND_CHARS)
        # Durations are normalised to float so equal heads encode identically.
        object.__setattr__(self, "queue_ms", _duration_ms("response.queue_ms", self.queue_ms))
        object.__setattr__(self, "backend_ms", _duration_ms("response.backend_ms", self.backend_ms))
        object.__setattr__(self, "meta", _frozen_meta("response.meta", self.meta))
        object.__setattr__(self, "headers", _frozen_headers("response.headers", self.headers))
        _check_bool("response.from_backend", self.from_backend)


HeadT = TypeVar("HeadT", RequestHead, ResponseHead)

# field name -> wire key, per head type
_REQUEST_KEYS: Final = {
    "service": "svc",
    "slo": "slo",
    "streaming": "st",
    "meta": "m",
    "headers": "h",
}
_RESPONSE_KEYS: Final = {
    "status": "s",
    "message": "msg",
    "backend": "be",
    "queue_ms": "tq",
    "backend_ms": "tb",
    "meta": "m",
    "headers": "h",
    "from_backend": "fb",
}
_REQUIRED: Final = object()


def _default_of(f: Field[Any]) -> object:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return _REQUIRED


def _wire_value(value: object) -> object:
    if isinstance(value, SLO):
        return slo_to_map(value)
    if isinstance(value, Mapping):
        return dict(value)  # msgpack packs dicts, not mapping proxies
    return value


def _encode_head(head: RequestHead | ResponseHead, keys: Mapping[str, str], kind: str) -> bytes:
    """Version first, then every field that differs from its default."""
    wire: dict[str, object] = {"v": HEAD_VERSION}
    for f in fields(head):
        value = getattr(head, f.name)
        default = _default_of(f)
        if default is _REQUIRED or value != default:
            wire[keys[f.name]] = _wire_value(value)
    payload = bytes(msgpack.packb(wire, use_bin_type=True))
    if len(payload) > MAX_HEAD_BYTES:
        raise FramingError(
            f"{kind} head: encodes to {len(payload)} bytes, the limit is {MAX_HEAD_BYTES}"
        )
    return encode_uint_var(len(payload)) + payload


def encode_request_head(head: RequestHead) -> bytes:
    return _encode_head(head, _REQUEST_KEYS, "request")


def encode_response_head(head: ResponseHead) -> bytes:
    return _encode_head(head, _RESPONSE_KEYS, "response")


def _stated_fields(
    payload: bytes, cls: type[HeadT], keys: Mapping[str, str], kind: str
) -> dict[str, Any]:
    """The head map's known fields by field name, after the checks every head shares."""
    # The reader has bounded the payload; no string or container can be longer than it.
    wire = unpack_bounded(payload, len(payload), FramingError, f"{kind} head")
    if not isinstance(wire, dict):
        raise _fail(f"{kind} head", "must be a msgpack map", wire)
    version = wire.get("v")
    if version is None:
        raise FramingError(f"{kind} head: missing version key 'v'")
    if not is_int(version) or version != HEAD_VERSION:
        raise _fail(
            f"{kind} head", f"unsupported head version, this peer speaks {HEAD_VERSION}", version
        )
    stated: dict[str, Any] = {}
    for f in fields(cls):
        key = keys[f.name]
        if key not in wire:
            if _default_of(f) is _REQUIRED:
                raise FramingError(f"{kind} head: missing key '{key}' ({f.name})")
            continue
        if wire[key] is None:
            # Absent and null would otherwise be two encodings of the default.
            raise FramingError(f"{kind}.{f.name}: null is not allowed, omit the key '{key}'")
        stated[f.name] = wire[key]
    return stated


def _decode_request(payload: bytes) -> RequestHead:
    stated = _stated_fields(payload, RequestHead, _REQUEST_KEYS, "request")
    slo_map = stated.pop("slo", None)
    head = RequestHead(**stated)
    # The SLO is checked last, so that an SLOError (422) means the head itself was fine.
    return head if slo_map is None else replace(head, slo=slo_from_map(slo_map))


def _decode_response(payload: bytes) -> ResponseHead:
    return ResponseHead(**_stated_fields(payload, ResponseHead, _RESPONSE_KEYS, "response"))


def _varint_size(first_byte: int) -> int:
    return 1 << (first_byte >> 6)


class HeadReader(Generic[HeadT]):
    """Collects one HEAD from the start of a stream, fed in chunks of any size.

    `HeadReader("request")` is a `HeadReader[RequestHead]`, `HeadReader("response")`
    a `HeadReader[ResponseHead]`. `feed()` returns `(None, b"")` until the head is
    complete, then `(head, the body bytes that followed it)`. Everything after
    that belongs to the body: feeding the reader again, or after it raised, is a
    bug (`RuntimeError`). Call `finish()` at stream FIN.
    """

    __slots__ = ("_buffer", "_decode", "_done", "_failed", "_head_size", "_kind", "_limit")

    @overload
    def __init__(
        self: HeadReader[RequestHead], kind: Literal["request"], limit: int = MAX_HEAD_BYTES
    ) -> None: ...
    @overload
    def __init__(
        self: HeadReader[ResponseHead], kind: Literal["response"], limit: int = MAX_HEAD_BYTES
    ) -> None: ...
    def __init__(self, kind: Literal["request", "response"], limit: int = MAX_HEAD_BYTES) -> None:
        decoders = {"request": _decode_request, "response": _decode_response}
        if kind not in decoders:
            raise ValueError(f"kind must be 'request' or 'response' (got {kind!r})")
        if limit < 1:
            raise ValueError(f"limit must be positive (got {limit})")
        # The overloads tie HeadT to `kind`; the table lookup cannot express that.
        self._decode: Callable[[bytes], HeadT] = cast(Callable[[bytes], HeadT], decoders[kind])
        self._kind = kind
        self._limit = limit
        self._buffer = bytearray()
        self._head_size: int | None = None  # size of the varint prefix plus the map
        self._done = False
        self._failed = False

    def feed(self, data: bytes) -> tuple[HeadT | None, bytes]:
        if self._done or self._failed:
            raise RuntimeError("HeadReader.feed() after the head was read or rejected")
        try:
            return self._consume(data)
        except Exception:
            self._failed = True
            raise

    def finish(self) -> None:
        """Call at stream FIN: a stream that ends inside its head is malformed."""
        if not self._done:
            raise FramingError(
                f"{self._kind} head: stream ended before the head was complete "
                f"({len(self._buffer)} bytes received)"
            )

    def _consume(self, data: bytes) -> tuple[HeadT | None, bytes]:
        # Take only the bytes the head still needs, so a big first chunk is not copied.
        used = 0
        while (wanted := self._wanted()) > 0 and used < len(data):
            chunk = data[used : used + wanted]
            self._buffer += chunk
            used += len(chunk)
            if self._head_size is None and len(self._buffer) == _varint_size(self._buffer[0]):
                self._head_size = len(self._buffer) + self._map_size()
        if self._wanted() > 0:
            return None, b""
        prefix = _varint_size(self._buffer[0])
        head = self._decode(bytes(self._buffer[prefix:]))
        self._done = True
        self._buffer = bytearray()
        return head, bytes(data[used:])

    def _wanted(self) -> int:
        if not self._buffer:
            return 1
        if self._head_size is None:
            return _varint_size(self._buffer[0]) - len(self._buffer)
        return self._head_size - len(self._buffer)

    def _map_size(self) -> int:
        size = int.from_bytes(self._buffer, "big") & ((1 << (8 * len(self._buffer) - 2)) - 1)
        if size == 0:
            raise FramingError(f"{self._kind} head: length is 0, a head is a non-empty map")
        if size > self._limit:
            raise FramingError(
                f"{self._kind} head: length {size} exceeds the limit of {self._limit} bytes"
            )
        return size


# -- control stream (docs/PROTOCOL.md §4.5) --------------------------------------

# A client request stream ID: bidirectional and client-initiated (RFC 9000 §2.1).
_MAX_STREAM_ID: Final = (1 << 62) - 1


@dataclass(frozen=True, slots=True)
class Goaway:
    """The edge drains the connection: requests on streams below `stream_id` are served,
    the others are refused (reset with ERROR_REFUSED) and may be sent on a new connection."""

    stream_id: int

    def __post_init__(self) -> None:
        if not (is_int(self.stream_id) and 0 <= self.stream_id <= _MAX_STREAM_ID):
            raise _fail(
                "goaway.stream_id", f"must be an int in 0..{_MAX_STREAM_ID}", self.stream_id
            )
        if self.stream_id % 4 != 0:
            raise _fail(
                "goaway.stream_id", "must be a client bidirectional stream ID", self.stream_id
            )


def encode_goaway(goaway: Goaway) -> bytes:
    payload = bytes(msgpack.packb({"v": HEAD_VERSION, "ga": goaway.stream_id}))
    return encode_uint_var(len(payload)) + payload


def _decode_control(payload: bytes) -> Goaway | None:
    """One control message: a Goaway, or None for a kind this peer does not know."""
    wire = unpack_bounded(payload, len(payload), FramingError, "control message")
    if not isinstance(wire, dict):
        raise _fail("control message", "must be a msgpack map", wire)
    if wire.get("v") != HEAD_VERSION or not is_int(wire.get("v")):
        raise _fail("control message", f"version must be {HEAD_VERSION}", wire.get("v"))
    if "ga" not in wire:
        return None  # a later kind of message: ignored, as unknown head keys are
    return Goaway(wire["ga"])


class ControlReader:
    """The messages of the edge's control stream, fed in chunks of any size.

    Each message is framed as a HEAD (varint length, then a msgpack map of at most
    MAX_HEAD_BYTES). `feed()` returns the messages completed by `data`; a
    malformed one raises FramingError and the reader is spent.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Goaway]:
        self._buffer += data
        messages: list[Goaway] = []
        while (message := self._next()) is not None:
            if isinstance(message, Goaway):
                messages.append(message)
        return messages

    def _next(self) -> Goaway | bool | None:
        """The next whole message (False: of an unknown kind), None when incomplete."""
        if not self._buffer:
            return None
        prefix = _varint_size(self._buffer[0])
        if len(self._buffer) < prefix:
            return None
        size = int.from_bytes(self._buffer[:prefix], "big") & ((1 << (8 * prefix - 2)) - 1)
        if not 0 < size <= MAX_HEAD_BYTES:
            raise _fail("control message", f"length must be 1..{MAX_HEAD_BYTES}", size)
        if len(self._buffer) < prefix + size:
            return None
        payload = bytes(self._buffer[prefix : prefix + size])
        del self._buffer[: prefix + size]
        message = _decode_control(payload)
        return False if message is None else message


def encode_datagram(service: str, payload: bytes) -> bytes:
    """A QUIC DATAGRAM frame payload: service length (1 byte), service, payload."""
    _check_service("datagram.service", service)
    return bytes([len(service)]) + service.encode("ascii") + payload


def decode_datagram(data: bytes) -> tuple[str, bytes]:
    if not data:
        raise FramingError("datagram: empty, expected a service length byte")
    size = data[0]
    if not 1 <= size <= MAX_DATAGRAM_SERVICE_CHARS:
        raise _fail("datagram", f"service length must be 1..{MAX_DATAGRAM_SERVICE_CHARS}", size)
    if len(data) < 1 + size:
        raise FramingError(
            f"datagram: service length is {size} but only {len(data) - 1} bytes follow"
        )
    service = data[1 : 1 + size].decode("latin-1")  # non-ASCII fails the name rule below
    _check_service("datagram.service", service)
    return service, bytes(data[1 + size :])
