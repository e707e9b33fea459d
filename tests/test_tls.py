from __future__ import annotations

import asyncio
import datetime
import ipaddress
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from netsched_edge.tls import CertificatePair, generate_self_signed


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> CertificatePair:
    return generate_self_signed(tmp_path_factory.mktemp("tls"))


def _load(pair: CertificatePair) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    leaf, *chain = x509.load_pem_x509_certificates(pair.certificate.read_bytes())
    (ca,) = x509.load_pem_x509_certificates(pair.ca_certificate.read_bytes())
    assert chain == [ca]
    return leaf, chain[0], ca


def _verify(pair: CertificatePair, subject: x509.verification.Subject) -> None:
    leaf, _, ca = _load(pair)
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(subject)
    built = verifier.verify(leaf, [])
    assert built[0] == leaf
    assert built[-1] == ca


def test_files_load_into_aioquic(pair: CertificatePair) -> None:
    configuration = QuicConfiguration(is_client=False)
    configuration.load_cert_chain(pair.certificate, pair.private_key)
    leaf, _, ca = _load(pair)
    assert configuration.certificate == leaf
    assert configuration.certificate_chain == [ca]
    assert isinstance(configuration.private_key, ec.EllipticCurvePrivateKey)
    assert configuration.private_key.public_key() == leaf.public_key()


def test_key_file_is_private(pair: CertificatePair) -> None:
    assert stat.S_IMODE(pair.private_key.stat().st_mode) == 0o600
    assert pair.private_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    # Only three files: the CA key is never written.
    assert sorted(p.name for p in pair.certificate.parent.iterdir()) == [
        "ca.pem",
        "cert.pem",
        "key.pem",
    ]


def test_leaf_verifies_for_hostname_and_ip(pair: CertificatePair) -> None:
    _verify(pair, x509.DNSName("localhost"))
    _verify(pair, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    _verify(pair, x509.IPAddress(ipaddress.ip_address("::1")))


@pytest.mark.parametrize(
    "subject",
    [x509.DNSName("example.com"), x509.IPAddress(ipaddress.ip_address("127.0.0.2"))],
)
def test_leaf_does_not_verify_for_other_names(
    pair: CertificatePair, subject: x509.verification.Subject
) -> None:
    with pytest.raises(VerificationError):
        _verify(pair, subject)


def test_extensions_separate_ca_from_leaf(pair: CertificatePair) -> None:
    leaf, _, ca = _load(pair)
    ca_constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ca_constraints.critical and ca_constraints.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    assert leaf.issuer == ca.subject != leaf.subject


def test_custom_names_and_validity(tmp_path: Path) -> None:
    pair = generate_self_signed(
        tmp_path / "new" / "dir", ["edge.test", "alt.test"], ["10.1.2.3"], valid_days=2
    )
    leaf, _, _ = _load(pair)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["edge.test", "alt.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert datetime.timedelta(days=2) < lifetime <= datetime.timedelta(days=2, hours=1)
    _verify(pair, x509.DNSName("alt.test"))


def test_regenerating_replaces_files(tmp_path: Path) -> None:
    first = generate_self_signed(tmp_path)
    old = first.certificate.read_bytes()
    second = generate_self_signed(tmp_path)
    assert second == first
    assert second.certificate.read_bytes() != old
    assert stat.S_IMODE(second.private_key.stat().st_mode) == 0o600
    _verify(second, x509.DNSName("localhost"))


@pytest.mark.parametrize(
    ("hostnames", "addresses", "valid_days", "message"),
    [
        ((), (), 30, "at least one hostname or address is required"),
        (("",), (), 30, "hostname must be a non-empty ASCII name, got ''"),
        (("bad name",), (), 30, "hostname must be a non-empty ASCII name, got 'bad name'"),
        (("localhost",), ("300.1.1.1",), 30, "address must be an IP address, got '300.1.1.1'"),
        (("localhost",), (), 0, "valid_days must be at least 1, got 0"),
    ],
)
def test_bad_arguments(
    tmp_path: Path,
    hostnames: Sequence[str],
    addresses: Sequence[str],
    valid_days: int,
    message: str,
) -> None:
    with pytest.raises(ValueError) as caught:
        generate_self_signed(tmp_path, hostnames, addresses, valid_days=valid_days)
    assert str(caught.value) == message
    assert list(tmp_path.iterdir()) == []


def test_bare_string_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        generate_self_signed(tmp_path, "localhost")


async def _handshake(pair: CertificatePair, server_name: str, cafile: Path) -> None:
    server_configuration = QuicConfiguration(is_client=False, alpn_protocols=["netsched/1"])
    server_configuration.load_cert_chain(pair.certificate, pair.private_key)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: QuicServer(
            configuration=server_configuration, create_protocol=QuicConnectionProtocol
        ),
        local_addr=("127.0.0.1", 0),
    )
    try:
        port = transport.get_extra_info("sockname")[1]
        client_configuration = QuicConfiguration(
            is_client=True, alpn_protocols=["netsched/1"], server_name=server_name
        )
        client_configuration.load_verify_locations(cafile=str(cafile))
        async with (
            asyncio.timeout(10),
            connect("127.0.0.1", port, configuration=client_configuration) as client,
        ):
            await client.ping()
    finally:
        transport.close()


@pytest.mark.parametrize("server_name", ["localhost", "127.0.0.1"])
async def test_quic_handshake_trusts_the_ca(pair: CertificatePair, server_name: str) -> None:
    await _handshake(pair, server_name, pair.ca_certificate)


async def test_quic_handshake_refuses_another_ca(pair: CertificatePair, tmp_path: Path) -> None:
    other = generate_self_signed(tmp_path)
    with pytest.raises(ConnectionError):
        await _handshake(pair, "localhost", other.ca_certificate)
