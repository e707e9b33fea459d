"""Property tests of the SLO codecs (proto/slo.py) and our transport parameters.

The msgpack form (transport parameter and request heads), the `netsched-slo`
header and the RFC 9218 `priority` field: round trips, and arbitrary bytes,
arbitrary msgpack values, arbitrary text give a value or `SLOError` (the
priority parser never raises).
"""

from __future__ import annotations

import base64
import contextlib
import random

import msgpack
from aioquic.buffer import encode_uint_var
from fuzz_support import SLOS, TARGETS, fuzz_settings, holds_contract, mutate
from hypothesis import given
from hypothesis import strategies as st

from netsched_client.errors import SLOError
from netsched_client.proto import slo as slo_mod
from netsched_client.proto.transport_parameters import (
    decode_varint_value,
    encode_transport_parameter,
    find_transport_parameter,
)

MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=4) | st.sampled_from(["v", "dl", "u", "lt"]), children)
    ),
    max_leaves=20,
)


@fuzz_settings()
@given(SLOS)
def test_round_trip_msgpack_header_and_transport_parameter(slo: slo_mod.SLO) -> None:
    encoded = slo_mod.encode_slo(slo)
    assert slo_mod.decode_slo(encoded) == slo
    assert slo_mod.decode_slo_header(slo_mod.encode_slo_header(slo)) == slo
    padded = base64.urlsafe_b64encode(encoded).decode()
    assert slo_mod.decode_slo_header(f" \t{padded} ") == slo  # padding and blanks allowed
    params = encode_transport_parameter(0x0F, b"\x01") + encode_transport_parameter(
        slo_mod.SLO_TRANSPORT_PARAMETER, encoded
    )
    assert find_transport_parameter(params, slo_mod.SLO_TRANSPORT_PARAMETER) == encoded


@fuzz_settings()
@given(MSGPACK_VALUES)
def test_arbitrary_msgpack_values_are_an_slo_or_slo_error(value: object) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    holds_contract("slo", data)
    holds_contract("slo", msgpack.packb({"v": 1, "dl": value, "aff": value}, use_bin_type=True))


@fuzz_settings()
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    holds_contract("slo", data)
    holds_contract("slo_header", data)
    holds_contract("transport_params", data)


@fuzz_settings()
@given(st.randoms(use_true_random=False), st.sampled_from(sorted(TARGETS)))
def test_mutated_encodings(rng: random.Random, name: str) -> None:
    if name not in ("slo", "slo_header", "transport_params", "priority", "fec_params"):
        return
    target = TARGETS[name]
    holds_contract(name, mutate(rng, rng.choice(target.seeds), target.seeds, text=False))


@fuzz_settings()
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_header_values_of_any_text_give_an_slo_or_slo_error(value: str | bytes) -> None:
    with contextlib.suppress(SLOError):
        slo_mod.decode_slo_header(value)


def test_an_oversized_header_is_refused_before_decoding() -> None:
    value = "A" * (slo_mod.MAX_SLO_BYTES * 4 // 3 + 4)  # decodes to more than MAX_SLO_BYTES
    try:
        slo_mod.decode_slo_header(value)
    except SLOError as exc:
        assert "exceeds the limit" in str(exc)
    else:
        raise AssertionError("accepted")


@fuzz_settings()
@given(st.integers(0, 7), st.sampled_from([None, True, False]), st.sampled_from(["", ", x=1"]))
def test_priority_round_trip(urgency: int, incremental: bool | None, other: str) -> None:
    parts = [f"u={urgency}"]
    if incremental is not None:
        parts.append("i" if incremental else "i=?0")
    value = ", ".join(parts) + other
    assert slo_mod.parse_priority_header(value) == (urgency, incremental)
    assert slo_mod.parse_priority_header(value.encode()) == (urgency, incremental)


@fuzz_settings(300)
@given(st.text(max_size=1100) | st.binary(max_size=1100))
def test_priority_never_raises(value: str | bytes) -> None:
    urgency, incremental = slo_mod.parse_priority_header(value)
    assert urgency is None or 0 <= urgency <= 7
    assert incremental in (None, True, False)


@fuzz_settings(200)
@given(st.integers(0, 2**62 - 1), st.binary(max_size=4))
def test_varint_parameter_values(number: int, trailing: bytes) -> None:
    value = encode_uint_var(number)
    assert decode_varint_value(value) == number
    assert decode_varint_value(value + trailing) == (None if trailing else number)
    assert decode_varint_value(value[:-1]) is None
