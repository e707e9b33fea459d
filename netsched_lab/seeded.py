"""Seeded runs of the in-memory lab: the same seed replays the same packets.

Two things vary between otherwise identical runs of two protocol stacks in
virtual time: the random bytes they draw (`os.urandom`: connection IDs, reset
tokens, PATH_CHALLENGE data, TLS randoms, tickets) and the size of an ECDSA
signature (DER: 70 to 72 bytes) in the handshake. A size one byte off moves
every later arrival by its serialisation time, and the run diverges: the same
seed of the same scenario gave 91 % and 97 % of deadlines met. Here
`os.urandom` draws from a seeded generator while `seeded_randomness` is
active, and the server presents an Ed25519 certificate (deterministic
signatures of one size) built from fixed inputs. The key shares OpenSSL draws
still differ from run to run, in content only: their sizes are fixed.

For simulations only: nothing here is secret.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import ssl
from collections.abc import Iterator

from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

_KEY_SEED = bytes(range(32))
_VALID_FROM = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
_VALID_UNTIL = datetime.datetime(2035, 1, 1, tzinfo=datetime.UTC)


@contextlib.contextmanager
def seeded_randomness(seed: int) -> Iterator[None]:
    """`os.urandom` from a generator seeded with `seed` for the duration."""
    generator = random.Random(seed)
    real = os.urandom
    os.urandom = generator.randbytes
    try:
        yield
    finally:
        os.urandom = real


def fixed_configurations(alpn: str = "netsched/1") -> tuple[QuicConfiguration, QuicConfiguration]:
    """A client and a server configuration whose handshakes have the same sizes every run:
    the server's certificate is self-signed Ed25519 from a fixed key, serial and validity;
    the client does not verify it (the lab's peers are its own)."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(_KEY_SEED)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_VALID_FROM)
        .not_valid_after(_VALID_UNTIL)
        .sign(key, None)
    )
    client = QuicConfiguration(is_client=True, alpn_protocols=[alpn], server_name="localhost")
    client.verify_mode = ssl.CERT_NONE
    server = QuicConfiguration(is_client=False, alpn_protocols=[alpn])
    server.certificate = certificate
    server.private_key = key
    return client, server
