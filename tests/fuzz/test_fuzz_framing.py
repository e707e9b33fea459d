"""Property tests of the native netsched/1 head and datagram framing (proto/framing.py).

A head round-trips fed whole, byte by byte and in random chunks, with the
body bytes after it handed back intact; arbitrary and mutated bytes give a
head or `FramingError` / `SLOError` (requests only), never another exception;
a declared length above the limit is refused from the length prefix alone.
"""

from __future__ import annotations

import itertools
import random

import pytest
from aioquic.buffer import encode_uint_var
from fuzz_support import SLOS, TARGETS, fuzz_settings, holds_contract, mutate
from hypothesis import given
from hypothesis import strategies as st

from netsched_client.errors import FramingError
from netsched_client.proto.framing import (
    MAX_HEAD_BYTES,
    HeadReader,
    RequestHead,
    ResponseHead,
    decode_datagram,
    encode_datagram,
    encode_request_head,
    encode_response_head,
)

SERVICE = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
TEXT = st.text(max_size=40)
META = st.dictionaries(st.text(min_size=1, max_size=16), TEXT, max_size=4)
REQUESTS = st.builds(RequestHead, SERVICE, st.none() | SLOS, st.booleans(), META)
DURATION = st.none() | st.floats(0, 86_400_000) | st.integers(0, 86_400_000)
RESPONSES = st.builds(
    ResponseHead,
    st.integers(100, 999),
    TEXT,
    st.none() | st.text(min_size=1, max_size=40),
    DURATION,
    DURATION,
    META,
)


def _read(kind: str, chunks: list[bytes]) -> tuple[object, bytes]:
    reader = HeadReader("request") if kind == "request" else HeadReader("response")
    head: object = None
    rest = b""
    for chunk in chunks:
        if head is None:
            head, rest = reader.feed(chunk)
        else:
            rest += chunk
    reader.finish()
    return head, rest


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@fuzz_settings()
@given(REQUESTS | RESPONSES, st.binary(max_size=32), st.lists(st.integers(0, 10_000), max_size=6))
def test_round_trip_whole_byte_by_byte_and_chunked(
    head: RequestHead | ResponseHead, body: bytes, cuts: list[int]
) -> None:
    if isinstance(head, RequestHead):
        kind, encoded = "request", encode_request_head(head)
    else:
        kind, encoded = "response", encode_response_head(head)
    data = encoded + body
    expected = (head, body)
    assert _read(kind, [data]) == expected
    assert _read(kind, _chunked(data, cuts)) == expected
    one_by_one = [data[i : i + 1] for i in range(len(data))]
    assert _read(kind, one_by_one) == expected


@fuzz_settings(200)
@given(REQUESTS, st.data())
def test_a_stream_ending_inside_its_head_is_a_framing_error(
    head: RequestHead, data: st.DataObject
) -> None:
    encoded = encode_request_head(head)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    reader = HeadReader("request")
    assert reader.feed(encoded[:cut]) == (None, b"")
    with pytest.raises(FramingError):
        reader.finish()


@fuzz_settings(200)
@given(st.integers(MAX_HEAD_BYTES + 1, 2**62 - 1))
def test_a_declared_length_above_the_limit_is_refused_from_the_prefix(length: int) -> None:
    reader = HeadReader("request")
    with pytest.raises(FramingError, match="exceeds the limit"):
        reader.feed(encode_uint_var(length))


@fuzz_settings()
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    holds_contract("request_head", data)
    holds_contract("response_head", data)
    holds_contract("datagram", data)


@fuzz_settings()
@given(st.binary(max_size=300))
def test_arbitrary_payload_behind_a_valid_length(payload: bytes) -> None:
    data = encode_uint_var(len(payload)) + payload
    holds_contract("request_head", data)
    holds_contract("response_head", data)


@fuzz_settings()
@given(
    st.randoms(use_true_random=False),
    st.sampled_from(["request_head", "response_head", "datagram"]),
)
def test_mutated_encodings(rng: random.Random, name: str) -> None:
    target = TARGETS[name]
    holds_contract(name, mutate(rng, rng.choice(target.seeds), target.seeds, text=False))


@fuzz_settings()
@given(SERVICE, st.binary(max_size=100))
def test_datagram_round_trip(service: str, payload: bytes) -> None:
    assert decode_datagram(encode_datagram(service, payload)) == (service, payload)
