"""SLO metadata: the model, its msgpack codec, and the HTTP/3 header forms (sans-IO).

A client states its service-level objectives twice over: connection defaults in
the `SLO_TRANSPORT_PARAMETER` QUIC transport parameter and per-request
objectives in each request head (or the `netsched-slo` HTTP/3 header). Both
carry the same msgpack map, documented in docs/PROTOCOL.md:

    {"v": 1, "dl": deadline_ms, "u": urgency, "i": incremental, "lt": loss_tolerance,
     "mr": min_rate, "svc": service, "aff": affinity, "idem": idempotent}

Only set fields are sent; unknown keys are ignored so that later versions can add
fields; a known key with a bad value is an `SLOError` naming the field.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Final, TypeGuard

import msgpack

from netsched_client.errors import NetSchedError, SLOError

# "NSLO"; a 4-byte value, so it takes the 8-byte varint form on the wire. Not of
# the reserved greasing form 31 * N + 27.
SLO_TRANSPORT_PARAMETER: Final = 0x4E534C4F
SLO_VERSION: Final = 1
MAX_SLO_BYTES: Final = 512
DEFAULT_URGENCY: Final = 3  # RFC 9218 §4.1

MAX_DEADLINE_MS: Final = 3_600_000
MAX_MIN_RATE: Final = 10**12
MAX_AFFINITY_BYTES: Final = 128
# Base64 of MAX_SLO_BYTES without padding: anything longer cannot decode to a valid SLO.
_MAX_SLO_HEADER_CHARS: Final = (MAX_SLO_BYTES * 4 + 2) // 3
# Our bound on the RFC 9218 `priority` field; real ones are a few bytes long.
MAX_PRIORITY_FIELD_CHARS: Final = 1024

_SERVICE_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BASE64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_REPR_LIMIT: Final = 80


def show(value: object) -> str:
    """`repr(value)` cut short, so that a hostile value cannot bloat an error message."""
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def unpack_bounded(data: bytes, limit: int, error: type[NetSchedError], what: str) -> object:
    """Unpack one msgpack object of at most `limit` bytes, or raise `error`.

    Every container and string length is capped by `limit` so that a peer's
    length prefix cannot make the unpacker allocate more than it sent.
    """
    if len(data) > limit:
        raise error(f"{what}: {len(data)} bytes exceeds the limit of {limit}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=limit,
        )
    except (ValueError, msgpack.UnpackException) as exc:
        raise error(f"{what}: not a single valid msgpack object ({exc})") from None


def is_int(value: object) -> TypeGuard[int]:
    """An int that is not a bool (msgpack and Python both treat true as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(low: int, high: int) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        ok = is_int(value) and low <= value <= high
        return None if ok else f"must be an int in {low}..{high}"

    return check


def _check_bool(value: object) -> str | None:
    return None if isinstance(value, bool) else "must be a bool"


def _check_fraction(value: object) -> str | None:
    ok = (is_int(value) or isinstance(value, float)) and 0.0 <= value <= 1.0
    return None if ok else "must be a number in 0.0..1.0"


def service_name_problem(value: object) -> str | None:
    """What is wrong with `value` as a service name, or None if it is a valid one."""
    if isinstance(value, str) and _SERVICE_RE.fullmatch(value):
        return None
    return "must be 1..64 characters of [A-Za-z0-9._-]"


def _check_affinity(value: object) -> str | None:
    problem = f"must be a non-empty string of at most {MAX_AFFINITY_BYTES} UTF-8 bytes"
    if not isinstance(value, str) or not value:
        return problem
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates have no UTF-8 form
        return problem
    return None if size <= MAX_AFFINITY_BYTES else problem


# field name -> (wire key, validator). The order is the encoding order.
_FIELDS: Final[dict[str, tuple[str, Callable[[object], str | None]]]] = {
    "deadline_ms": ("dl", _int_in(1, MAX_DEADLINE_MS)),
    "urgency": ("u", _int_in(0, 7)),
    "incremental": ("i", _check_bool),
    "loss_tolerance": ("lt", _check_fraction),
    "min_rate": ("mr", _int_in(0, MAX_MIN_RATE)),
    "service": ("svc", service_name_problem),
    "affinity": ("aff", _check_affinity),
    "idempotent": ("idem", _check_bool),
}
_FIELD_BY_KEY: Final = {key: name for name, (key, _) in _FIELDS.items()}


@dataclass(frozen=True, slots=True)
class SLO:
    """Service-level objectives of a connection or a request; None means "not stated"."""

    deadline_ms: int | None = None
    urgency: int | None = None
    incremental: bool | None = None
    loss_tolerance: float | None = None
    min_rate: int | None = None
    service: str | None = None
    affinity: str | None = None
    idempotent: bool | None = None

    def __post_init__(self) -> None:
        for name, (_, check) in _FIELDS.items():
            value = getattr(self, name)
            if value is not None and (problem := check(value)) is not None:
                raise SLOError(f"slo.{name}: {problem} (got {show(value)})")
        if self.loss_tolerance is not None:
            # One type per field keeps the encoding of equal SLOs identical.
            object.__setattr__(self, "loss_tolerance", float(self.loss_tolerance))

    def merged(self, override: SLO | None) -> SLO:
        """This SLO with every field that `override` states replaced by its value."""
        if override is None:
            return self
        return replace(self, **_stated(override))

    def resolved(self) -> SLO:
        """This SLO with the defaults filled in where the protocol has one."""
        return _DEFAULTS.merged(self)


_DEFAULTS: Final = SLO(
    urgency=DEFAULT_URGENCY, incremental=False, loss_tolerance=0.0, idempotent=False
)


def _stated(slo: SLO) -> dict[str, Any]:
    return {f.name: v for f in fields(slo) if (v := getattr(slo, f.name)) is not None}


def slo_to_map(slo: SLO) -> dict[str, object]:
    """The wire map of `slo`: version first, then only the stated fields."""
    wire: dict[str, object] = {"v": SLO_VERSION}
    wire.update((_FIELDS[name][0], value) for name, value in _stated(slo).items())
    return wire


def slo_from_map(m: object) -> SLO:
    """Validate a decoded wire map; unknown keys are ignored, bad values raise `SLOError`."""
    if not isinstance(m, Mapping):
        raise SLOError(f"slo: expected a map (got {show(m)})")
    if "v" not in m:
        raise SLOError("slo.v: missing version key")
    version = m["v"]
    if not is_int(version) or version != SLO_VERSION:
        raise SLOError(f"unsupported SLO version (got {show(version)}; this peer speaks 1)")
    stated: dict[str, Any] = {}
    for key, value in m.items():
        name = _FIELD_BY_KEY.get(key)
        if name is None:
            continue
        if value is None:
            # Absent and null would otherwise be two encodings of "not stated".
            raise SLOError(f"slo.{name}: null is not allowed, omit the key '{key}' instead")
        stated[name] = value
    return SLO(**stated)


def encode_slo(slo: SLO) -> bytes:
    """The msgpack encoding carried by the transport parameter and request heads."""
    return bytes(msgpack.packb(slo_to_map(slo), use_bin_type=True))


def decode_slo(data: bytes) -> SLO:
    return slo_from_map(unpack_bounded(data, MAX_SLO_BYTES, SLOError, "slo"))


def encode_slo_header(slo: SLO) -> str:
    """The `netsched-slo` HTTP/3 header value: unpadded base64url of `encode_slo`."""
    return base64.urlsafe_b64encode(encode_slo(slo)).rstrip(b"=").decode("ascii")


def decode_slo_header(value: str | bytes) -> SLO:
    """Parse a `netsched-slo` header value; padding is optional, surrounding blanks ignored."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise SLOError("netsched-slo header: not ASCII") from None
    text = value.strip(" \t")
    if not _BASE64URL_RE.fullmatch(text):
        raise SLOError(f"netsched-slo header: not base64url (got {show(text)})")
    core = text.rstrip("=")
    if len(core) > _MAX_SLO_HEADER_CHARS:
        raise SLOError(
            f"netsched-slo header: {len(core)} characters exceeds the limit of "
            f"{_MAX_SLO_HEADER_CHARS}"
        )
    try:
        data = base64.urlsafe_b64decode(core + "=" * (-len(core) % 4))
    except binascii.Error:
        raise SLOError(f"netsched-slo header: bad base64url length (got {show(text)})") from None
    return decode_slo(data)


# RFC 8941 (Structured Field Values) dictionary grammar, enough to find the RFC
# 9218 members `u` and `i` while skipping any other member or parameter.
_SF_KEY = r"[a-z*][a-z0-9_.*-]*"
_SF_BARE_ITEM = (
    r"(?:-?[0-9]{1,12}\.[0-9]{1,3}"  # decimal
    r"|-?[0-9]{1,15}"  # integer
    r'|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\\"])*"'  # string
    r"|[A-Za-z*][!#$%&'*+.^_`|~0-9A-Za-z:/-]*"  # token
    r"|:[A-Za-z0-9+/=]*:"  # byte sequence
    r"|\?[01]"  # boolean
    r"|@-?[0-9]{1,15}"  # date (RFC 9651)
    r'|%"(?:[\x20\x21\x23\x24\x26-\x7e]|%[0-9a-f]{2})*")'  # display string (RFC 9651)
)
_SF_PARAMS = rf"(?:;[ ]*{_SF_KEY}(?:={_SF_BARE_ITEM})?)*"
_SF_ITEM = rf"{_SF_BARE_ITEM}{_SF_PARAMS}"
_SF_INNER_LIST = rf"\([ ]*(?:{_SF_ITEM}(?:[ ]+{_SF_ITEM})*[ ]*)?\){_SF_PARAMS}"
_SF_MEMBER_RE: Final = re.compile(
    rf"(?P<key>{_SF_KEY})(?:=(?P<value>{_SF_BARE_ITEM}|{_SF_INNER_LIST}))?{_SF_PARAMS}"
)
_SF_SEPARATOR_RE: Final = re.compile(r"[ \t]*,[ \t]*")
_SF_INTEGER_RE: Final = re.compile(r"-?[0-9]{1,15}")


def _sf_dictionary(text: str) -> dict[str, str | None] | None:
    """Member key -> raw value (None for a bare key, i.e. true); None if unparsable."""
    members: dict[str, str | None] = {}
    text = text.strip(" \t")
    pos = 0
    while pos < len(text):
        member = _SF_MEMBER_RE.match(text, pos)
        if member is None:
            return None
        members[member["key"]] = member["value"]  # RFC 8941: the last duplicate wins
        pos = member.end()
        if pos == len(text):
            break
        separator = _SF_SEPARATOR_RE.match(text, pos)
        if separator is None or separator.end() == len(text):
            return None
        pos = separator.end()
    return members


def _urgency_of(raw: str | None) -> int | None:
    if raw is None or not _SF_INTEGER_RE.fullmatch(raw):
        return None
    urgency = int(raw)
    return urgency if 0 <= urgency <= 7 else None


def _incremental_of(raw: str | None) -> bool | None:
    return {None: True, "?1": True, "?0": False}.get(raw)


def parse_priority_header(value: str | bytes) -> tuple[int | None, bool | None]:
    """(urgency, incremental) from an RFC 9218 `priority` field; None where not usable.

    As RFC 9218 §4 asks, unknown members, out-of-range values and values of the
    wrong type are ignored, and a field that is not a valid structured dictionary
    is ignored as a whole. Never raises.
    """
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if len(value) > MAX_PRIORITY_FIELD_CHARS:
        return None, None
    members = _sf_dictionary(value)
    if members is None:
        return None, None
    urgency = _urgency_of(members["u"]) if "u" in members else None
    incremental = _incremental_of(members["i"]) if "i" in members else None
    return urgency, incremental
