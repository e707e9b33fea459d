"""Multipath frames with arbitrary fields, or mangled, into a live two-path connection.

The frame codecs are fuzzed in test_fuzz_multipath_frames.py; here the frames
go through the connection's handlers too (path limits, CID bookkeeping, ACK
processing, abandon and status logic), on the in-memory network of
tests/mp_harness.py. The server must never raise out of `receive_datagram`,
never close with INTERNAL_ERROR (a peer's nonsense is a FRAME_ENCODING_ERROR,
a PROTOCOL_VIOLATION or another transport error, or is ignored), and never
leave a timer in the past that `handle_timer` does not move: in the edge's
event loop that is a busy loop.

Frames are queued with the client's private `_control` list, as
tests/test_multipath.py does: no public API writes a chosen frame.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted
from aioquic.quic.packet import QuicErrorCode
from fuzz_support import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from mp_harness import C2, SERVER, Net, make_net
from test_fuzz_multipath_frames import FRAMES

from netsched_client.proto.multipath import events as mpe
from netsched_client.proto.multipath import frames as mpf

SMALL = st.integers(0, 20)
STEP_S = 0.01
NEAR_FRAMES = st.one_of(  # fields near the limits the connection checks
    st.builds(mpf.PathAbandon, SMALL, st.integers(0, 2**62 - 1)),
    st.builds(mpf.PathStatus, SMALL, SMALL, st.booleans()),
    st.builds(
        mpf.PathNewConnectionId,
        SMALL,
        st.integers(0, 40),
        st.just(0),
        st.binary(min_size=1, max_size=20),
        st.binary(min_size=16, max_size=16),
    ),
    st.builds(mpf.PathRetireConnectionId, SMALL, SMALL),
    st.builds(mpf.MaxPathId, SMALL),
    st.builds(mpf.PathsBlocked, SMALL),
    st.builds(mpf.PathCidsBlocked, SMALL, SMALL),
)


class RawFrame(mpf.MaxPathId):
    """A frame written verbatim (type and body), to feed the peer malformed input."""

    def __init__(self, frame_type: int, body: bytes) -> None:
        super().__init__(0)
        object.__setattr__(self, "raw", (frame_type, body))

    def split(self) -> tuple[int, bytes]:
        return self.raw  # type: ignore[attr-defined,no-any-return]


@st.composite
def injected(draw: st.DrawFn) -> mpf.MultipathFrame:
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return draw(NEAR_FRAMES)
    frame = draw(FRAMES)
    if choice == 1:
        return frame
    frame_type, body = frame.split()
    cut = draw(st.integers(0, len(body)))
    return RawFrame(frame_type, body[:cut] + draw(st.binary(max_size=6)))


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mp-fuzz")


def _two_paths(cert_dir: Path) -> Net:
    net = make_net(cert_dir)
    assert net.run(2.0, until=lambda: bool(net.events("client", HandshakeCompleted)))
    net.run(0.2)
    net.client.open_path(C2, SERVER, net.now)
    assert net.run(2.0, until=lambda: bool(net.events("client", mpe.PathValidated)))
    return net


def _run_checking_timers(net: Net, seconds: float) -> None:
    """`net.run` in small steps, failing as soon as a timer stays in the past."""
    for _ in range(int(seconds / STEP_S)):
        net.run(STEP_S)  # raises if a receive_datagram raised
        for side, conn in (("server", net.server), ("client", net.client)):
            timer = conn.get_timer()
            if timer is not None and timer < net.now - STEP_S:
                conn.handle_timer(net.now)
                again = conn.get_timer()
                assert again is None or again > timer, f"{side} timer stuck at {timer}"


@fuzz_settings(40)
@given(st.lists(injected(), min_size=1, max_size=4))
def test_the_server_survives_any_multipath_frames(
    cert_dir: Path, frames: list[mpf.MultipathFrame]
) -> None:
    net = _two_paths(cert_dir)
    net.client._control.extend(frames)
    net.client.send_ping(1)  # a packet to carry them
    _run_checking_timers(net, 2.0)
    for side in ("server", "client"):
        for closed in net.events(side, ConnectionTerminated):
            assert closed.error_code != QuicErrorCode.INTERNAL_ERROR, (side, closed, frames)


def test_abandoning_path_0_leaves_no_timer_in_the_past(cert_dir: Path) -> None:
    net = _two_paths(cert_dir)
    net.client._control.append(mpf.PathAbandon(0, mpf.APPLICATION_ABANDON_PATH))
    net.client.send_ping(1)
    _run_checking_timers(net, 1.0)
