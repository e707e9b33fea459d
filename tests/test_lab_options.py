"""Text forms of link specs and path profiles (the relay's command line)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsched_lab.impairment import GilbertElliott, LinkSpec, PathProfile
from netsched_lab.options import apply_overrides, parse_address, parse_profile

BASE = PathProfile(up=LinkSpec(delay_ms=20, loss=0.01), down=LinkSpec(delay_ms=20, loss=0.01))


def test_profile_overrides_both_directions_on_top_of_the_default() -> None:
    ip, profile = parse_profile("127.0.0.2:delay_ms=50,loss=0.05,rate_mbps=20", BASE)
    assert ip == "127.0.0.2"
    expected = LinkSpec(delay_ms=50, loss=0.05, rate_mbps=20)
    assert profile == PathProfile(up=expected, down=expected)


def test_profile_direction_prefixes_and_every_value_kind() -> None:
    text = (
        "up.rate_mbps=5, down.blackhole=yes, bursty=0.02/4, queue_bytes=1000, down.rate_mbps=none"
    )
    profile = apply_overrides(PathProfile(down=LinkSpec(rate_mbps=1)), text)
    chain = GilbertElliott.from_loss_and_burst(0.02, 4)
    assert profile.up == LinkSpec(rate_mbps=5, bursty=chain, queue_bytes=1000)
    assert profile.down == LinkSpec(blackhole=True, bursty=chain, queue_bytes=1000)


@pytest.mark.parametrize(
    ("text", "selector"),
    [("::1:delay_ms=5", "::1"), ("[::1]:delay_ms=5", "::1"), ("*:delay_ms=5", "*")],
)
def test_profile_selectors(text: str, selector: str) -> None:
    ip, profile = parse_profile(text, PathProfile())
    assert ip == selector
    assert profile.up.delay_ms == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.2", "IP:key=value"),
        ("localhost:delay_ms=5", "IP address"),
        ("127.0.0.2:speed=5", "unknown link option 'speed'"),
        ("127.0.0.2:delay_ms", "key=value"),
        ("127.0.0.2:delay_ms=fast", "delay_ms: expected a number"),
        ("127.0.0.2:queue_bytes=1.5", "queue_bytes: expected an integer"),
        ("127.0.0.2:blackhole=maybe", "expected true or false"),
        ("127.0.0.2:bursty=0.02", "LOSS/MEAN_BURST"),
        ("127.0.0.2:side.loss=0.1", "'up' or 'down'"),
        ("127.0.0.2:loss=0.1,up.loss=0.2", "up.loss is set twice"),
        ("127.0.0.2:loss=3", "loss must be a probability"),
    ],
)
def test_bad_profiles_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_profile(text, PathProfile())


@given(st.floats(0, 1), st.floats(0, 10_000, allow_subnormal=False))
def test_numbers_round_trip_through_their_text_form(loss: float, delay: float) -> None:
    _, profile = parse_profile(f"127.0.0.3:loss={loss!r},up.delay_ms={delay!r}", PathProfile())
    assert profile.up == LinkSpec(loss=loss, delay_ms=delay)
    assert profile.down == LinkSpec(loss=loss)


def test_addresses() -> None:
    assert parse_address("127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad, message in [("9000", "HOST:PORT"), ("127.0.0.1:x", "integer"), ("h:70000", "port")]:
        with pytest.raises(ValueError, match=message):
            parse_address(bad)
