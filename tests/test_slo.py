"""SLO model, msgpack codec, header forms and the RFC 9218 priority parser."""

from __future__ import annotations

import base64
import math
from typing import Any

import msgpack
import pytest
from aioquic.buffer import encode_uint_var
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_client.errors import SLOError
from netsched_client.proto.slo import (
    DEFAULT_URGENCY,
    MAX_SLO_BYTES,
    SLO,
    SLO_TRANSPORT_PARAMETER,
    decode_slo,
    decode_slo_header,
    encode_slo,
    encode_slo_header,
    parse_priority_header,
    slo_from_map,
    slo_to_map,
)

fuzz = settings(deadline=None, max_examples=100)


def pack(value: object) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


FULL = SLO(
    deadline_ms=3_600_000,
    urgency=7,
    incremental=True,
    loss_tolerance=1.0,
    min_rate=10**12,
    service="s" * 64,
    affinity="€" * 42 + "ab",  # 128 UTF-8 bytes
    idempotent=False,
)

# -- constants -----------------------------------------------------------


def test_transport_parameter_codepoint() -> None:
    assert int.from_bytes(b"NSLO", "big") == SLO_TRANSPORT_PARAMETER
    assert (SLO_TRANSPORT_PARAMETER - 27) % 31 != 0, "must not be a greasing codepoint"
    assert encode_uint_var(SLO_TRANSPORT_PARAMETER) == bytes.fromhex("c00000004e534c4f")


def test_largest_slo_fits_the_limit() -> None:
    assert len(encode_slo(FULL)) <= MAX_SLO_BYTES
    assert decode_slo(encode_slo(FULL)) == FULL


# -- validation ----------------------------------------------------------

BAD_FIELDS: list[tuple[str, object]] = [
    ("deadline_ms", 0),
    ("deadline_ms", 3_600_001),
    ("deadline_ms", True),
    ("deadline_ms", 150.0),
    ("deadline_ms", "150"),
    ("urgency", -1),
    ("urgency", 8),
    ("urgency", False),
    ("incremental", 1),
    ("incremental", "yes"),
    ("loss_tolerance", -0.01),
    ("loss_tolerance", 1.01),
    ("loss_tolerance", math.nan),
    ("loss_tolerance", math.inf),
    ("loss_tolerance", True),
    ("loss_tolerance", "0.1"),
    ("min_rate", -1),
    ("min_rate", 10**12 + 1),
    ("min_rate", 1e6),
    ("service", ""),
    ("service", "s" * 65),
    ("service", "has space"),
    ("service", "a/b"),
    ("service", "vidéo"),
    ("service", b"video"),
    ("affinity", ""),
    ("affinity", "€" * 43),  # 43 characters but 129 UTF-8 bytes
    ("affinity", "\ud800"),  # a lone surrogate has no UTF-8 form
    ("affinity", 42),
    ("idempotent", 0),
    ("idempotent", "true"),
]


@pytest.mark.parametrize(("name", "value"), BAD_FIELDS)
def test_bad_field_values_are_rejected_with_the_field_name(name: str, value: Any) -> None:
    with pytest.raises(SLOError, match=rf"^slo\.{name}: .* \(got .+\)$"):
        SLO(**{name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("deadline_ms", 1),
        ("deadline_ms", 3_600_000),
        ("urgency", 0),
        ("urgency", 7),
        ("loss_tolerance", 0.0),
        ("min_rate", 0),
        ("service", "A-z_0.9"),
        ("affinity", "x"),
    ],
)
def test_boundary_values_are_accepted(name: str, value: Any) -> None:
    assert getattr(SLO(**{name: value}), name) == value


def test_integer_loss_tolerance_becomes_float() -> None:
    slo = SLO(loss_tolerance=1)
    assert type(slo.loss_tolerance) is float
    assert encode_slo(slo) == encode_slo(SLO(loss_tolerance=1.0))


def test_error_message_cuts_long_values_short() -> None:
    with pytest.raises(SLOError) as info:
        SLO(service="x" * 10_000)
    assert len(str(info.value)) < 200
    assert str(info.value).endswith("...)")


# -- merged / resolved ---------------------------------------------------


def test_merged_override_fields_win() -> None:
    defaults = SLO(deadline_ms=500, urgency=5, service="api")
    override = SLO(urgency=1, idempotent=True)
    assert defaults.merged(override) == SLO(
        deadline_ms=500, urgency=1, service="api", idempotent=True
    )
    assert defaults.merged(None) is defaults
    assert defaults.merged(SLO()) == defaults


def test_merged_keeps_false_and_zero_overrides() -> None:
    merged = SLO(incremental=True, loss_tolerance=0.5).merged(
        SLO(incremental=False, loss_tolerance=0.0)
    )
    assert merged.incremental is False
    assert merged.loss_tolerance == 0.0


def test_resolved_fills_protocol_defaults_only() -> None:
    assert SLO().resolved() == SLO(
        urgency=DEFAULT_URGENCY, incremental=False, loss_tolerance=0.0, idempotent=False
    )
    stated = SLO(deadline_ms=10, urgency=0, incremental=True, loss_tolerance=0.2)
    resolved = stated.resolved()
    assert (resolved.deadline_ms, resolved.urgency, resolved.incremental) == (10, 0, True)
    assert resolved.loss_tolerance == 0.2
    assert resolved.min_rate is None and resolved.service is None and resolved.affinity is None


# -- encoding ------------------------------------------------------------


def test_encoding_has_version_first_and_only_set_fields() -> None:
    assert encode_slo(SLO()) == bytes.fromhex("81a17601")
    assert list(slo_to_map(SLO(service="a", deadline_ms=5))) == ["v", "dl", "svc"]
    assert msgpack.unpackb(encode_slo(SLO(urgency=2, incremental=False))) == {
        "v": 1,
        "u": 2,
        "i": False,
    }


# -- decoding ------------------------------------------------------------


def test_unknown_keys_are_ignored() -> None:
    data = pack({"v": 1, "dl": 40, "future": {"nested": [1, 2, {"x": b"\x00"}]}, b"bin": 1})
    assert decode_slo(data) == SLO(deadline_ms=40)


def test_integer_accepted_for_float_field() -> None:
    assert decode_slo(pack({"v": 1, "lt": 0})) == SLO(loss_tolerance=0.0)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ({"dl": 5}, r"^slo\.v: missing version key$"),
        ({"v": 2}, r"^unsupported SLO version \(got 2"),
        ({"v": True}, r"^unsupported SLO version \(got True"),
        ({"v": "1"}, r"^unsupported SLO version"),
        ({"v": 1.0}, r"^unsupported SLO version"),
        ({"v": 1, "dl": None}, r"^slo\.deadline_ms: null is not allowed, omit the key 'dl'"),
        ({"v": 1, "dl": 0}, r"^slo\.deadline_ms: must be an int in 1\.\.3600000 \(got 0\)$"),
        ({"v": 1, "u": True}, r"^slo\.urgency: "),
        ({"v": 1, "i": 1}, r"^slo\.incremental: must be a bool \(got 1\)$"),
        ({"v": 1, "svc": b"video"}, r"^slo\.service: "),
        ({"v": 1, "aff": ["x"]}, r"^slo\.affinity: "),
    ],
)
def test_bad_maps_are_rejected(wire: dict[str, object], message: str) -> None:
    with pytest.raises(SLOError, match=message):
        decode_slo(pack(wire))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x81\xa1v",  # truncated
        pack({"v": 1}) + b"\x00",  # trailing bytes
        pack([1, 2]),
        pack(1),
        b"\x81\xa1v\x01\xa1\xff",  # truncated str after a valid pair
        b"\x82\xa1v\x01\xa1\xff\x01",  # invalid UTF-8 key
        b"\x81\x01\x01",  # int key
        b"\xdf\xff\xff\xff\xff",  # map32 claiming 4 billion entries
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        b"\x91" * 400,  # deep nesting
    ],
)
def test_malformed_input_is_rejected(data: bytes) -> None:
    with pytest.raises(SLOError):
        decode_slo(data)


def test_oversize_is_rejected_before_parsing() -> None:
    data = pack({"v": 1, "pad": "x" * MAX_SLO_BYTES})
    with pytest.raises(SLOError, match=f"exceeds the limit of {MAX_SLO_BYTES}"):
        decode_slo(data)
    exactly = pack({"v": 1, "pad": "x" * (MAX_SLO_BYTES - 11)})
    assert len(exactly) == MAX_SLO_BYTES
    assert decode_slo(exactly) == SLO()


def test_slo_from_map_validates_like_decode() -> None:
    assert slo_from_map({"v": 1, "u": 0}) == SLO(urgency=0)
    with pytest.raises(SLOError, match=r"^slo: expected a map"):
        slo_from_map([("v", 1)])
    with pytest.raises(SLOError, match="unsupported SLO version"):
        slo_from_map({"v": 3})


# -- header form ---------------------------------------------------------


def test_header_round_trip_is_unpadded_base64url() -> None:
    slo = SLO(urgency=1)  # 7 bytes: base64 would pad it
    value = encode_slo_header(slo)
    assert value == base64.urlsafe_b64encode(encode_slo(slo)).decode().rstrip("=")
    assert "=" not in value
    assert decode_slo_header(value) == slo
    assert decode_slo_header(value.encode()) == slo
    padded = value + "=" * (-len(value) % 4)
    assert padded != value
    assert decode_slo_header(f" {padded}\t") == slo


@pytest.mark.parametrize(
    "value",
    [
        "gqF2AaF1Af+/",  # standard base64 alphabet
        "gqF2 AaF1AQ",
        "g",  # impossible length
        "A" * 700,  # too long
        "AAAA",  # valid base64url, not a valid SLO
        "gqF2AaF1AQ===",
        b"\xff\xfe",
    ],
)
def test_bad_header_values_are_rejected(value: str | bytes) -> None:
    with pytest.raises(SLOError):
        decode_slo_header(value)


# -- RFC 9218 priority ---------------------------------------------------


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("u=1, i", (1, True)),
        ("u=0", (0, None)),
        ("i", (None, True)),
        ("i=?0", (None, False)),
        ("i=?1, u=7", (7, True)),
        ("", (None, None)),
        ("u=8", (None, None)),  # out of range: ignored
        ("u=-1, i", (None, True)),
        ("u=1.0", (None, None)),  # wrong type: ignored
        ('u="1"', (None, None)),
        ("u=1, i=3", (1, None)),
        ("u=5, u=2", (2, None)),  # the last duplicate wins
        ('u=2;x=y, foo=(1 2 "a,b");q, i;z', (2, True)),  # unknown members and parameters
        ("  u=4 ,\ti  ", (4, True)),
        ("u=1,", (None, None)),  # not a dictionary: ignored as a whole
        ("U=1", (None, None)),
        ("u=1 i", (None, None)),
        ("u=" + "1" * 16, (None, None)),
        ("u=1, " + "a" * 2000, (None, None)),
    ],
)
def test_priority_header(field: str, expected: tuple[int | None, bool | None]) -> None:
    assert parse_priority_header(field) == expected
    assert parse_priority_header(field.encode()) == expected


@given(st.one_of(st.text(max_size=80), st.binary(max_size=80)))
@fuzz
def test_priority_header_never_raises(value: str | bytes) -> None:
    urgency, incremental = parse_priority_header(value)
    assert urgency is None or 0 <= urgency <= 7
    assert incremental in (None, True, False)


# -- property tests ------------------------------------------------------


def slos() -> st.SearchStrategy[SLO]:
    return st.builds(
        SLO,
        deadline_ms=st.none() | st.integers(1, 3_600_000),
        urgency=st.none() | st.integers(0, 7),
        incremental=st.none() | st.booleans(),
        loss_tolerance=st.none() | st.floats(0.0, 1.0) | st.integers(0, 1),
        min_rate=st.none() | st.integers(0, 10**12),
        service=st.none() | st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
        affinity=st.none() | st.text(st.characters(codec="utf-8"), min_size=1, max_size=32),
        idempotent=st.none() | st.booleans(),
    )


@given(slos())
@fuzz
def test_round_trip(slo: SLO) -> None:
    assert decode_slo(encode_slo(slo)) == slo
    assert decode_slo_header(encode_slo_header(slo)) == slo
    assert slo_from_map(slo_to_map(slo)) == slo


@given(slos(), slos())
@fuzz
def test_merged_takes_each_field_from_override_when_set(base: SLO, override: SLO) -> None:
    merged = base.merged(override)
    for name in SLO.__slots__:
        mine, theirs = getattr(base, name), getattr(override, name)
        assert getattr(merged, name) == (mine if theirs is None else theirs)


@given(st.binary(max_size=600))
@fuzz
def test_arbitrary_bytes_raise_only_slo_error(data: bytes) -> None:
    try:
        slo = decode_slo(data)
    except SLOError:
        return
    assert decode_slo(encode_slo(slo)) == slo


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)
slo_keys = st.sampled_from(["v", "dl", "u", "i", "lt", "mr", "svc", "aff", "idem", "x"])


@given(st.dictionaries(slo_keys, msgpack_values | st.integers(0, 8), max_size=9))
@fuzz
def test_arbitrary_maps_decode_or_raise_slo_error(wire: dict[str, Any]) -> None:
    try:
        slo = decode_slo(pack(wire))
    except SLOError:
        return
    assert wire["v"] == 1
    assert decode_slo(encode_slo(slo)) == slo


@given(st.text(max_size=100))
@fuzz
def test_arbitrary_header_values_raise_only_slo_error(value: str) -> None:
    try:
        slo = decode_slo_header(value)
    except SLOError:
        return
    assert decode_slo_header(encode_slo_header(slo)) == slo
