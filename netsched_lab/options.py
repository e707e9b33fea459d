"""Text forms of link specs and path profiles, for the relay's command line.

A profile override is `IP:key=value,key=value,...`; a key applies to both
directions unless prefixed `up.` (client → server) or `down.`. `*` instead of an
IP overrides the default profile. Keys are the `LinkSpec` fields; `bursty`
takes `LOSS/MEAN_BURST` (see `GilbertElliott.from_loss_and_burst`), `rate_mbps`
takes `none` to lift a limit, `blackhole` takes true/false.

    127.0.0.2:delay_ms=50,loss=0.05,rate_mbps=20
    ::1:up.rate_mbps=5,bursty=0.02/4
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from .impairment import GilbertElliott, PathProfile

DEFAULT_SELECTOR = "*"
_DIRECTIONS = ("up", "down")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _rate(text: str) -> float | None:
    return None if text.strip().lower() == "none" else _number(text)


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _bursty(text: str) -> GilbertElliott:
    loss, slash, burst = text.partition("/")
    if not slash:
        raise ValueError(f"expected LOSS/MEAN_BURST such as 0.02/4, got {text!r}")
    return GilbertElliott.from_loss_and_burst(_number(loss), _number(burst))


# LinkSpec field → parser of its text form.
LINK_OPTIONS: Mapping[str, Callable[[str], object]] = {
    "delay_ms": _number,
    "jitter_ms": _number,
    "loss": _number,
    "bursty": _bursty,
    "reorder": _number,
    "reorder_ms": _number,
    "duplicate": _number,
    "corrupt": _number,
    "rate_mbps": _rate,
    "burst_bytes": _integer,
    "queue_bytes": _integer,
    "blackhole": _flag,
    "mtu": _integer,
}


def parse_option(key: str, text: str) -> object:
    """The value of LinkSpec field `key` written as `text`."""
    parse = LINK_OPTIONS.get(key)
    if parse is None:
        raise ValueError(f"unknown link option {key!r}; known: {', '.join(LINK_OPTIONS)}")
    try:
        return parse(text)
    except ValueError as error:
        raise ValueError(f"{key}: {error}") from None


def apply_overrides(base: PathProfile, text: str) -> PathProfile:
    """`base` with the comma-separated `key=value` overrides of `text` applied."""
    # Any: each value has the type of its own LinkSpec field (checked by LinkSpec itself).
    changes: dict[str, dict[str, Any]] = {direction: {} for direction in _DIRECTIONS}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"expected key=value, got {item!r}")
        prefix, dot, key = name.strip().rpartition(".")
        directions = (prefix,) if dot else _DIRECTIONS
        if dot and prefix not in _DIRECTIONS:
            raise ValueError(f"direction must be 'up' or 'down', got {prefix!r} in {item!r}")
        parsed = parse_option(key, value.strip())
        for direction in directions:
            if key in changes[direction]:
                raise ValueError(f"{direction}.{key} is set twice in {text!r}")
            changes[direction][key] = parsed
    return PathProfile(
        up=replace(base.up, **changes["up"]),
        down=replace(base.down, **changes["down"]),
    )


def parse_profile(text: str, default: PathProfile) -> tuple[str, PathProfile]:
    """`IP:overrides` (or `*:overrides`) → (canonical IP or `*`, `default` with overrides)."""
    # Split at the last ':' before the first '=', so IPv6 addresses need no brackets.
    equals = text.find("=")
    colon = text.rfind(":", 0, equals if equals >= 0 else len(text))
    if colon < 0:
        raise ValueError(f"expected IP:key=value,..., got {text!r}")
    selector = text[:colon].strip().strip("[]")
    if selector != DEFAULT_SELECTOR:
        selector = canonical_ip(selector)
    return selector, apply_overrides(default, text[colon + 1 :])


def canonical_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"expected an IP address, got {text!r}") from None


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` → (host, port)."""
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    number = _integer(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port must be in 0..65535, got {number} in {text!r}")
    return host.strip("[]"), number
