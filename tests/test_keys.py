"""Keys a fleet rotates: tickets sealed with the previous key still open, and keys
read from etcd are checked like a keys file."""

from __future__ import annotations

import os

import pytest
from ticket_support import session_ticket

from netsched_edge.keys import EdgeKeys, KeysError, TicketSealer, parse_keys


def test_previous_keys_open_tickets_and_never_seal() -> None:
    old, new = os.urandom(32), os.urandom(32)
    sealed_before = TicketSealer(old).seal(session_ticket(), context=b"h3")
    rotated = TicketSealer(new, previous=[old])
    opened = rotated.unseal(sealed_before, context=b"h3")
    assert opened is not None and opened.ticket == sealed_before
    assert rotated.unseal(sealed_before, context=b"hq-interop") is None  # context still binds
    sealed_after = rotated.seal(session_ticket())
    assert TicketSealer(new).unseal(sealed_after) is not None
    assert TicketSealer(old).unseal(sealed_after) is None  # sealed with the current key
    assert TicketSealer(new).unseal(sealed_before) is None  # once the grace is over


def test_keys_from_etcd_are_checked_like_a_file() -> None:
    keys = EdgeKeys.generate()
    assert parse_keys(keys.dumps().encode(), file="etcd:/netsched/keys/current") == keys
    with pytest.raises(KeysError, match=r"^etcd:/netsched/keys/current:3: retry must be"):
        parse_keys(b'version = 1\n\nretry = "00"\n', file="etcd:/netsched/keys/current")
