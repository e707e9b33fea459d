"""The edge's TLS: generated credentials, loading the configured ones, and
HelloRetryRequest for aioquic's server.

Credentials, for an edge started without a certificate: we issue a private CA
and a leaf signed by it rather than one self-signed certificate: webpki-based
QUIC stacks (qh3, rustls) refuse a leaf that is itself a CA, and a separate CA
file is what clients are told to trust. Only the CA certificate is written out;
its key is discarded, so nothing else can ever be signed by it.

Where they live (`keep_credentials`): `netsched-edge serve` keeps them in its
state folder (`--state-dir`, `[edge] state_dir`, else `default_state_dir()`)
and uses them again at the next start, so the CA that clients were told to
trust stays the same. They are made again, CA included, only when a file is
missing or does not match the others, the leaf expires within `RENEW_BEFORE`, or
it does not name the listening address. Every file is written to a temporary
name and renamed, under a lock on the folder, and temporary files a killed
writer left are removed: no reader ever finds half a file. An edge started
from code without a state folder uses a temporary one, removed when it closes.

HelloRetryRequest: see `HelloRetryContext`.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERTIFICATE_FILE = "cert.pem"
PRIVATE_KEY_FILE = "key.pem"
CA_CERTIFICATE_FILE = "ca.pem"
_LOCK_FILE = ".lock"

# Tolerate clients whose clocks run a little behind ours.
_BACKDATE = datetime.timedelta(hours=1)
# Kept credentials: valid a year, made again in their last month (at a start).
KEPT_VALID_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)
# Names every generated certificate carries: what a client on this host dials.
DEFAULT_HOSTNAMES: Final = ("localhost",)
DEFAULT_ADDRESSES: Final = ("127.0.0.1", "::1")
_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})


class CredentialsError(ValueError):
    """A configured certificate or private key that cannot serve: one line, naming the file."""


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
        .add_extension(key_usage(cert_sign=True), critical=True)
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
        .add_extension(key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def key_usage(*, cert_sign: bool) -> x509.KeyUsage:
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


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where `netsched-edge serve` keeps what it generates, unless told otherwise:
    $XDG_STATE_HOME/netsched-edge, else ~/.local/state/netsched-edge (the XDG Base
    Directory rules: a relative XDG_STATE_HOME is ignored)."""
    base = environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "netsched-edge"


def certificate_names(host: str) -> frozenset[str]:
    """The names a generated certificate carries for an edge listening on `host`: the
    loopback names, and `host` itself unless it is a wildcard address."""
    names = {*DEFAULT_HOSTNAMES, *DEFAULT_ADDRESSES}
    if host not in _WILDCARDS:
        names.add(_normal(host))
    return frozenset(names)


def keep_credentials(directory: Path, names: frozenset[str]) -> tuple[CertificatePair, bool]:
    """The generated credentials kept in `directory`, naming at least `names`, and
    whether they were made just now (the module's docstring says when)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds a private key
    wanted = frozenset(_normal(name) for name in names)
    with _locked(directory):
        for name in (CERTIFICATE_FILE, PRIVATE_KEY_FILE, CA_CERTIFICATE_FILE):
            for leftover in directory.glob(f".{name}.*"):  # a killed writer's temporary file
                leftover.unlink(missing_ok=True)
        pair = CertificatePair(
            certificate=directory / CERTIFICATE_FILE,
            private_key=directory / PRIVATE_KEY_FILE,
            ca_certificate=directory / CA_CERTIFICATE_FILE,
        )
        kept = _usable_names(pair, datetime.datetime.now(datetime.UTC))
        if kept is not None and wanted <= kept:
            return pair, False
        # Names another edge sharing the folder asked for stay: the CA changes once.
        everything = sorted(wanted | (kept or frozenset()))
        addresses = [name for name in everything if _is_address(name)]
        hostnames = [name for name in everything if not _is_address(name)]
        made = generate_self_signed(directory, hostnames, addresses, valid_days=KEPT_VALID_DAYS)
        return made, True


def kept_ca(directory: Path) -> Path:
    """The CA certificate kept in `directory`; CredentialsError when there is none."""
    path = directory / CA_CERTIFICATE_FILE
    try:
        x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise CredentialsError(
            f"no generated CA in {directory} (`netsched-edge serve` makes one at start)"
        ) from None
    except OSError as exc:
        raise CredentialsError(f"{path}: {exc.strerror}") from None
    except ValueError:
        raise CredentialsError(f"{path}: not a PEM certificate") from None
    return path


def load_credentials(
    configuration: QuicConfiguration, certificate: Path, private_key: Path
) -> None:
    """Give `configuration` the certificate chain and its key; CredentialsError, naming
    the file, when one does not read or parse, or the key is not the certificate's
    (aioquic would accept it, and every handshake would then fail)."""
    chain_pem, key_pem = _read(certificate), _read(private_key)
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise CredentialsError(f"{certificate}: no PEM certificate in it") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise CredentialsError(
            f"{private_key}: not a PEM private key (or one protected by a password)"
        ) from None
    if _public_bytes(chain[0].public_key()) != _public_bytes(key.public_key()):
        raise CredentialsError(f"{private_key}: not the key of the certificate in {certificate}")
    configuration.certificate = chain[0]
    configuration.certificate_chain = chain[1:]
    configuration.private_key = key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CredentialsError(f"{path}: {exc.strerror}") from None


def _public_bytes(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _usable_names(pair: CertificatePair, now: datetime.datetime) -> frozenset[str] | None:
    """The names the kept leaf carries, or None when the set is unusable: a file missing
    or unreadable, a key that is not the leaf's, a leaf its CA did not sign, or a leaf
    that expires within RENEW_BEFORE."""
    try:
        ca = x509.load_pem_x509_certificate(pair.ca_certificate.read_bytes())
        chain = x509.load_pem_x509_certificates(pair.certificate.read_bytes())
        key = serialization.load_pem_private_key(pair.private_key.read_bytes(), password=None)
        chain[0].verify_directly_issued_by(ca)
        san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return None
    if _public_bytes(chain[0].public_key()) != _public_bytes(key.public_key()):
        return None
    if chain[0].not_valid_after_utc - now < RENEW_BEFORE:
        return None
    addresses = (str(address) for address in san.get_values_for_type(x509.IPAddress))
    return frozenset((*san.get_values_for_type(x509.DNSName), *addresses))


def _normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    # Edges sharing a state folder start at once: one makes the credentials, the others
    # wait and find them. Closing the file releases the lock, also when the process dies.
    with open(directory / _LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# RFC 8446 §4.1.3: a ServerHello with this random is a HelloRetryRequest.
HELLO_RETRY_RANDOM: Final = bytes.fromhex(
    "CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C"
)


class HelloRetryContext(tls.Context):
    """aioquic's server TLS context, plus one HelloRetryRequest (RFC 8446 §4.1.4).

    aioquic (1.7.2) fails a ClientHello whose key shares are all in groups it
    lacks ("No supported key share"), though the hello may list a group it has:
    picoquic 1.1.53 by default sends only an X25519MLKEM768 share. Such a hello
    gets a HelloRetryRequest naming the client's most preferred group of ours;
    the second hello then runs through aioquic's own code, with the transcript
    that §4.4.1 prescribes: message_hash(first hello), the HRR, the second hello.
    """

    _retried = False
    _retry_suite: tls.CipherSuite | None = None
    _retry_transcript: bytes | None = None  # to open the next key schedule's transcript
    _schedule: tls.KeySchedule | None = None

    # aioquic starts a new key schedule, hence a new transcript, for every
    # ClientHello it handles; this is the one place to put the retry in front.
    @property
    def key_schedule(self) -> tls.KeySchedule | None:
        return self._schedule

    @key_schedule.setter
    def key_schedule(self, schedule: tls.KeySchedule | None) -> None:
        if schedule is not None and self._retry_transcript is not None:
            if schedule.cipher_suite != self._retry_suite:
                raise tls.AlertIllegalParameter("cipher suite changed after HelloRetryRequest")
            schedule.update_hash(self._retry_transcript)
            self._retry_transcript = None
        self._schedule = schedule

    def _server_handle_hello(
        self, input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer
    ) -> None:
        if not self._retried:
            hello = tls.pull_client_hello(input_buf)
            group = self._retry_group(hello)
            if group is not None:
                self._send_retry(hello, input_buf.data, group, initial_buf)
                return
            input_buf.seek(0)  # aioquic parses the hello itself
        super()._server_handle_hello(input_buf, initial_buf, handshake_buf)

    def _retry_group(self, hello: tls.ClientHello) -> int | None:
        """The group to ask for: None when a share is usable, or no listed group is ours."""
        if hello.key_share is None:
            return None  # no key_share extension at all: aioquic's alert is the answer
        if any(group in self._supported_groups for group, _ in hello.key_share):
            return None
        offered = hello.supported_groups or []
        return next((group for group in offered if group in self._supported_groups), None)

    def _send_retry(
        self, hello: tls.ClientHello, client_hello: bytes, group: int, initial_buf: Buffer
    ) -> None:
        suite = tls.negotiate(
            self._cipher_suites,
            hello.cipher_suites,
            tls.AlertHandshakeFailure("No supported cipher suite"),
        )
        digest = hashes.Hash(tls.cipher_suite_hash(suite))
        digest.update(client_hello)
        hello_hash = digest.finalize()
        message_hash = bytes([tls.HandshakeType.MESSAGE_HASH, 0, 0, len(hello_hash)]) + hello_hash
        retry = Buffer(capacity=256)
        tls.push_server_hello(
            retry,
            tls.ServerHello(
                random=HELLO_RETRY_RANDOM,
                legacy_session_id=hello.legacy_session_id,
                cipher_suite=suite,
                compression_method=tls.CompressionMethod.NULL,
                supported_version=tls.TLS_VERSION_1_3,
                other_extensions=[(tls.ExtensionType.KEY_SHARE, group.to_bytes(2, "big"))],
            ),
        )
        initial_buf.push_bytes(retry.data)
        self._retried = True
        self._retry_suite = suite
        self._retry_transcript = message_hash + retry.data


def enable_hello_retry(context: tls.Context) -> None:
    """Give an aioquic server context (made by QuicConnection itself) HelloRetryRequest.

    aioquic builds and configures its Context inside QuicConnection._initialize,
    so there is no factory to pass; HelloRetryContext adds behaviour only (no
    state of its own until a hello arrives), so the instance can take its class.
    """
    if context._is_client:
        raise ValueError("HelloRetryRequest is the server's: this context is a client's")
    context.__class__ = HelloRetryContext
