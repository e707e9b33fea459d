"""The core's TLS adapter (#16, stage 4 part 2) and the codecs under the handshake:
transport parameters and the connection's own frames.

Two adapters handshake by handing each other their CRYPTO bytes per space;
the keys each side installs must open what the other seals. Parsers get
whole input, every truncation, trailing bytes and hypothesis garbage.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_client.core import control_frames, packet, protection, retry, transport_params
from netsched_client.core.errors import FrameError, PacketError
from netsched_client.core.tls_adapter import (
    CRYPTO_ERROR,
    Epoch,
    TlsAdapter,
    TlsAlert,
    TlsConfig,
    TrafficKeys,
)
from netsched_client.core.transport_params import TransportParameterError, TransportParameters
from netsched_edge.tls import generate_self_signed

ALPN = "netsched/1"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsConfig, TlsConfig]:
    certs = generate_self_signed(tmp_path_factory.mktemp("core-tls"))
    return configs(certs.ca_certificate, certs.certificate, certs.private_key)


def configs(ca: Path, cert: Path, key: Path) -> tuple[TlsConfig, TlsConfig]:
    client = TlsConfig(
        is_client=True, alpn_protocols=(ALPN,), server_name="localhost", cafile=str(ca)
    )
    server = TlsConfig(
        is_client=False,
        alpn_protocols=(ALPN,),
        certificate=x509.load_pem_x509_certificate(cert.read_bytes()),
        private_key=serialization.load_pem_private_key(key.read_bytes(), None),  # type: ignore[arg-type]
    )
    return client, server


def handshake(
    client: TlsAdapter, server: TlsAdapter
) -> tuple[list[TrafficKeys], list[TrafficKeys], dict[str, list[Epoch]]]:
    """Runs the handshake to its end; the keys each side installed and the spaces each
    side wrote CRYPTO data to, in order."""
    client.start()
    client_keys, server_keys = client.take_keys(), []
    spaces: dict[str, list[Epoch]] = {"client": [], "server": []}
    sender, receiver, name = client, server, "client"
    for _ in range(6):
        flights = sender.take_crypto()
        spaces[name] += list(flights)
        for epoch, data in flights.items():
            receiver.receive(epoch, data)
        (server_keys if receiver is server else client_keys).extend(receiver.take_keys())
        sender, receiver = receiver, sender
        name = "server" if name == "client" else "client"
    return client_keys, server_keys, spaces


def params(**fields: object) -> bytes:
    return transport_params.encode(replace(TransportParameters(), **fields))  # type: ignore[arg-type]


def test_two_adapters_complete_a_handshake_with_keys_per_space(
    pair: tuple[TlsConfig, TlsConfig],
) -> None:
    client_config, server_config = pair
    client = TlsAdapter(client_config, packet.VERSION_1, params(initial_max_data=111))
    server = TlsAdapter(server_config, packet.VERSION_1, params(initial_max_data=222))
    client_keys, server_keys, spaces = handshake(client, server)
    assert client.handshake_complete and server.handshake_complete
    assert client.alpn_protocol == server.alpn_protocol == ALPN
    # Each side reads the other's transport parameters from the extension.
    peer_of_client = client.peer_transport_parameters
    peer_of_server = server.peer_transport_parameters
    assert peer_of_client is not None and peer_of_server is not None
    assert transport_params.decode(peer_of_client).initial_max_data == 222
    assert transport_params.decode(peer_of_server).initial_max_data == 111
    # The ClientHello goes in Initial, the server's flight in Initial then Handshake, the
    # client's Finished in Handshake (RFC 9001 §4.1.4).
    assert spaces["client"] == [Epoch.INITIAL, Epoch.HANDSHAKE]
    assert spaces["server"] == [Epoch.INITIAL, Epoch.HANDSHAKE]
    # Handshake and 1-RTT secrets, both directions, on both sides; none for Initial.
    assert {(k.epoch, k.sending) for k in client_keys} == {
        (epoch, sending) for epoch in (Epoch.HANDSHAKE, Epoch.ONE_RTT) for sending in (True, False)
    }
    assert {(k.epoch, k.sending) for k in server_keys} == {
        (k.epoch, k.sending) for k in client_keys
    }
    # What one side seals with a space's keys, the other opens with its own.
    for epoch in (Epoch.HANDSHAKE, Epoch.ONE_RTT):
        sealing = next(k for k in client_keys if k.epoch is epoch and k.sending)
        opening = next(k for k in server_keys if k.epoch is epoch and not k.sending)
        assert sealing.secret == opening.secret
        header = packet.build_short_header(bytes(8), 7, 1)
        sealed = protection.protection(sealing.keys).seal(header, b"x" * 40, 7)
        _, pn, plain = protection.protection(opening.keys).open(sealed, 9, 6)
        assert (pn, plain) == (7, b"x" * 40)
    assert client.take_crypto() == {} and server.take_crypto() == {}


def test_version_2_derives_other_packet_keys(pair: tuple[TlsConfig, TlsConfig]) -> None:
    client_config, server_config = pair
    keys_by_version = {}
    for version in (packet.VERSION_1, packet.VERSION_2):
        client = TlsAdapter(client_config, version, params())
        server = TlsAdapter(server_config, version, params())
        client_keys, _, _ = handshake(client, server)
        keys_by_version[version] = client_keys[0]
    v1, v2 = keys_by_version[packet.VERSION_1], keys_by_version[packet.VERSION_2]
    assert v1.cipher_suite == v2.cipher_suite
    assert v1.keys.key != v2.keys.key  # "quicv2 key" labels (RFC 9369 §3.3.2)


def test_a_client_trusting_another_ca_gets_a_crypto_error(
    pair: tuple[TlsConfig, TlsConfig], tmp_path: Path
) -> None:
    other = generate_self_signed(tmp_path / "other")
    _, server_config = pair
    client_config = TlsConfig(
        is_client=True,
        alpn_protocols=(ALPN,),
        server_name="localhost",
        cafile=str(other.ca_certificate),
    )
    client = TlsAdapter(client_config, packet.VERSION_1, params())
    server = TlsAdapter(server_config, packet.VERSION_1, params())
    with pytest.raises(TlsAlert) as caught:
        handshake(client, server)
    assert caught.value.error_code == CRYPTO_ERROR + 42  # bad_certificate (RFC 9001 §4.8)


def test_no_common_alpn_is_no_application_protocol(pair: tuple[TlsConfig, TlsConfig]) -> None:
    client_config, server_config = pair
    client = TlsAdapter(replace(client_config, alpn_protocols=("h3",)), 1, params())
    server = TlsAdapter(server_config, 1, params())
    with pytest.raises(TlsAlert) as caught:
        handshake(client, server)
    assert caught.value.error_code == CRYPTO_ERROR + 120


def test_handshake_bytes_fed_one_at_a_time_complete_too(
    pair: tuple[TlsConfig, TlsConfig],
) -> None:
    client_config, server_config = pair
    client = TlsAdapter(client_config, 1, params())
    server = TlsAdapter(server_config, 1, params())
    client.start()
    for epoch, data in client.take_crypto().items():
        for index in range(len(data)):
            server.receive(epoch, data[index : index + 1])
    for epoch, data in server.take_crypto().items():
        for index in range(len(data)):
            client.receive(epoch, data[index : index + 1])
    assert client.handshake_complete


# -- transport parameters -------------------------------------------------------------------------


def test_transport_parameters_round_trip_and_defaults_are_not_sent() -> None:
    assert transport_params.encode(TransportParameters()) == b""
    full = TransportParameters(
        original_destination_connection_id=bytes(8),
        max_idle_timeout=30_000,
        stateless_reset_token=bytes(range(16)),
        max_udp_payload_size=1452,
        initial_max_data=1 << 20,
        initial_max_stream_data_bidi_local=1,
        initial_max_stream_data_bidi_remote=2,
        initial_max_stream_data_uni=3,
        initial_max_streams_bidi=100,
        initial_max_streams_uni=4,
        ack_delay_exponent=10,
        max_ack_delay=100,
        disable_active_migration=True,
        active_connection_id_limit=8,
        initial_source_connection_id=b"\x01\x02",
        retry_source_connection_id=b"\x03",
    )
    assert transport_params.decode(transport_params.encode(full)) == full
    # Exact bytes of one parameter: id 0x04, length 4, the varint 2^20.
    assert params(initial_max_data=1 << 20) == bytes.fromhex("0404 80100000")


def test_unknown_transport_parameters_are_skipped() -> None:
    grease = bytes.fromhex("4a1b 03 010203")  # a reserved id 31 * N + 27
    assert transport_params.decode(grease + params(initial_max_data=5)).initial_max_data == 5


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("04"),  # truncated
        bytes.fromhex("0402 05"),  # length beyond the extension
        bytes.fromhex("0401 05 0401 06"),  # repeated
        bytes.fromhex("0402 0500"),  # trailing bytes in a varint
        bytes.fromhex("0c01 00"),  # a flag with a value
        bytes.fromhex("0203 000000"),  # a reset token of 3 bytes
        bytes.fromhex("0301 05"),  # max_udp_payload_size below 1200
        bytes.fromhex("0a01 15"),  # ack_delay_exponent 21
        bytes.fromhex("0b04 80004000"),  # max_ack_delay 2^14
        bytes.fromhex("0e01 01"),  # active_connection_id_limit 1
        bytes.fromhex("0f15") + bytes(21),  # a 21-byte connection ID
    ],
)
def test_malformed_transport_parameters_are_transport_parameter_errors(data: bytes) -> None:
    with pytest.raises(TransportParameterError) as caught:
        transport_params.decode(data)
    assert caught.value.error_code == 0x08


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_garbage_transport_parameters_raise_only_transport_parameter_errors(data: bytes) -> None:
    with contextlib.suppress(TransportParameterError):
        transport_params.decode(data)


# -- the connection's own frames ------------------------------------------------------------------

FRAMES = [
    (
        control_frames.write_new_connection_id(5, 2, b"\xaa" * 8, bytes(range(16))),
        control_frames.parse_new_connection_id,
        (5, 2, b"\xaa" * 8, bytes(range(16))),
    ),
    (
        control_frames.write_retire_connection_id(300),
        control_frames.parse_retire_connection_id,
        (300,),
    ),
    (
        control_frames.write_path_data(control_frames.PATH_CHALLENGE_FRAME, b"12345678"),
        control_frames.parse_path_data,
        (control_frames.PATH_CHALLENGE_FRAME, b"12345678"),
    ),
    (
        control_frames.write_connection_close(False, 0x0A, 0x08, "bad"),
        control_frames.parse_connection_close,
        (False, 0x0A, 0x08, "bad"),
    ),
    (
        control_frames.write_connection_close(True, 7, 0, "bye"),
        control_frames.parse_connection_close,
        (True, 7, 0, "bye"),
    ),
    (bytes([0x07, 0x02, 0xAB, 0xCD]), control_frames.parse_new_token, (b"\xab\xcd",)),
]


@pytest.mark.parametrize(("frame", "parse", "fields"), FRAMES)
def test_frames_round_trip_at_an_offset_with_trailing_bytes(
    frame: bytes, parse: object, fields: tuple[object, ...]
) -> None:
    data = b"\xee" * 3 + frame + b"\xff" * 5
    parsed = parse(data, 3, len(data))  # type: ignore[operator]
    assert parsed[:-1] == fields
    assert parsed[-1] == 3 + len(frame)


@pytest.mark.parametrize(("frame", "parse", "fields"), FRAMES)
def test_every_truncation_of_a_frame_is_a_frame_error(
    frame: bytes, parse: object, fields: tuple[object, ...]
) -> None:
    for cut in range(len(frame)):
        with pytest.raises(FrameError):
            parse(frame[:cut], 0, cut)  # type: ignore[operator]


def test_exact_bytes_of_a_transport_close() -> None:
    # type 0x1c, PROTOCOL_VIOLATION, frame type 0x08, reason "x"
    assert control_frames.write_connection_close(False, 0x0A, 0x08, "x") == bytes.fromhex(
        "1c0a080178"
    )
    long = control_frames.write_connection_close(True, 1, 0, "y" * 1000)
    assert len(long) == 1 + 1 + 2 + control_frames.MAX_REASON_LENGTH


def test_a_new_connection_id_of_length_zero_or_21_is_a_frame_error() -> None:
    for length in (0, 21):
        frame = bytes([0x18, 1, 0, length]) + bytes(length) + bytes(16)
        with pytest.raises(FrameError):
            control_frames.parse_new_connection_id(frame)


def test_padding_runs_to_the_first_other_byte() -> None:
    assert control_frames.skip_padding(b"\x00\x00\x00\x01\x00", 0) == 3
    assert control_frames.skip_padding(b"\x00\x00", 0, 1) == 1


@settings(max_examples=300, deadline=None)
@given(st.integers(0x00, 0x1E), st.binary(max_size=40))
def test_garbage_frames_raise_only_frame_errors(frame_type: int, body: bytes) -> None:
    data = bytes([frame_type]) + body
    for parse in (
        control_frames.parse_new_token,
        control_frames.parse_new_connection_id,
        control_frames.parse_retire_connection_id,
        control_frames.parse_path_data,
        control_frames.parse_connection_close,
    ):
        try:
            parse(data, 0, len(data))
        except FrameError:
            pass
        except PacketError as exc:  # pragma: no cover - the assertion's message
            raise AssertionError(f"{parse.__name__}: {exc!r}") from exc


# -- Retry integrity tags ------------------------------------------------------------------------

RETRY_ODCID = bytes.fromhex("8394c8f03e515708")
RETRY_VECTORS = {
    # RFC 9001 §A.4 and RFC 9369 §A.4: a Retry to the example client's original DCID.
    packet.VERSION_1: "ff000000010008f067a5502a4262b5746f6b656e04a265ba2eff4d829058fb3f0f2496ba",
    packet.VERSION_2: "cf6b3343cf0008f067a5502a4262b5746f6b656ec8646ce8bfe33952d955543665dcc7b6",
}


@pytest.mark.parametrize("version", sorted(RETRY_VECTORS))
def test_retry_integrity_tags_match_the_rfc_vectors(version: int) -> None:
    retry_packet = bytes.fromhex(RETRY_VECTORS[version])
    assert retry.retry_tag(version, RETRY_ODCID, retry_packet[:-16]) == retry_packet[-16:]
    assert retry.check_retry(version, RETRY_ODCID, retry_packet)
    assert not retry.check_retry(version, RETRY_ODCID[:-1] + b"\x00", retry_packet)
    for index in range(len(retry_packet)):
        flipped = bytearray(retry_packet)
        flipped[index] ^= 0x01
        assert not retry.check_retry(version, RETRY_ODCID, bytes(flipped))
    assert not retry.check_retry(version, RETRY_ODCID, retry_packet[:16])
