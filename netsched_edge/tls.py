"""Throw-away TLS credentials for an edge started without a certificate.

We issue a private CA and a leaf signed by it rather than one self-signed
certificate: webpki-based QUIC stacks (qh3, rustls) refuse a leaf that is
itself a CA, and a separate CA file is what clients are told to trust.
Only the CA certificate is written out; its key is discarded, so nothing
else can ever be signed by it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERTIFICATE_FILE = "cert.pem"
PRIVATE_KEY_FILE = "key.pem"
CA_CERTIFICATE_FILE = "ca.pem"

# Tolerate clients whose clocks run a little behind ours.
_BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class CertificatePair:
    certificate: Path  # PEM chain: the leaf, then the CA
    private_key: Path  # PEM PKCS#8 key of the leaf, mode 0600
    ca_certificate: Path  # PEM CA certificate for clients to trust


def generate_self_signed(
    directory: Path,
    hostnames: Sequence[str] = ("localhost",),
    addresses: Sequence[str] = ("127.0.0.1", "::1"),
    *,
    valid_days: int = 30,
) -> CertificatePair:
    """Create a CA and a server certificate for `hostnames` and `addresses` in `directory`.

    Existing files of the same names are replaced atomically.
    """
    if valid_days < 1:
        raise ValueError(f"valid_days must be at least 1, got {valid_days}")
    san = _subject_alt_names(hostnames, addresses)
    not_before = datetime.datetime.now(datetime.UTC) - _BACKDATE
    not_after = not_before + _BACKDATE + datetime.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "NetSched edge test CA")])
    ca_cert = _ca_certificate(ca_key, ca_name, not_before, not_after)

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(san))])
    leaf_cert = _leaf_certificate(leaf_key, leaf_name, san, ca_key, ca_cert, not_before, not_after)

    directory.mkdir(parents=True, exist_ok=True)
    pair = CertificatePair(
        certificate=directory / CERTIFICATE_FILE,
        private_key=directory / PRIVATE_KEY_FILE,
        ca_certificate=directory / CA_CERTIFICATE_FILE,
    )
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(pair.private_key, key_pem, 0o600)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    _write_atomically(pair.ca_certificate, ca_pem, 0o644)
    _write_atomically(
        pair.certificate, leaf_cert.public_bytes(serialization.Encoding.PEM) + ca_pem, 0o644
    )
    return pair


def _subject_alt_names(
    hostnames: Sequence[str], addresses: Sequence[str]
) -> list[x509.GeneralName]:
    if isinstance(hostnames, str) or isinstance(addresses, str):
        # A bare string would be split into one name per character.
        raise TypeError("hostnames and addresses must be sequences of strings")
    names: list[x509.GeneralName] = []
    for hostname in hostnames:
        if not hostname or not hostname.isascii() or any(c.isspace() for c in hostname):
            raise ValueError(f"hostname must be a non-empty ASCII name, got {hostname!r}")
        names.append(x509.DNSName(hostname))
    for address in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            raise ValueError(f"address must be an IP address, got {address!r}") from None
    if not names:
        raise ValueError("at least one hostname or address is required")
    return names


def _common_name(san: list[x509.GeneralName]) -> str:
    # Clients match on the SAN; the CN is only a readable label (max 64 chars).
    return str(san[0].value)[:64]


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey,
    name: x509.Name,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf_certificate(
    key: ec.EllipticCurvePrivateKey,
    name: x509.Name,
    san: list[x509.GeneralName],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    # A CA only signs certificates; an ECDSA leaf only signs handshakes.
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    # A temporary file in the same folder, renamed over the target: a server reloading
    # concurrently never reads half a file, and the key is never readable by others.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
