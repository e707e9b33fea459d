"""The TLS 1.3 handshake for the core, through aioquic's `tls.Context` (RFC 9001 §4).

The one core module that touches aioquic: every aioquic name the core uses
is here, so a change of aioquic's internals is one file's change. Used:
`tls.Context` (its `handle_message`, `update_traffic_key_cb`,
`handshake_extensions`, `received_extensions`, `alpn_negotiated`, `state`,
`certificate`, `certificate_chain`, `certificate_private_key`), `tls.Epoch`,
`tls.Direction`, `tls.State`, `tls.Alert`, `tls.CipherSuite`,
`tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS`, `aioquic.buffer.Buffer`.

Driving contract (the connection's):
    TlsAdapter(config, version, transport_parameters)
    start()                        client: the ClientHello
    receive(epoch, data)           CRYPTO data in order, per packet-number space
    take_crypto() -> {epoch: data} handshake bytes to send, per space
    take_keys() -> [TrafficKeys]   the secrets TLS installed, in order, with packet keys
    handshake_complete, alpn_protocol, peer_transport_parameters
A TLS alert raises `TlsAlert`, whose error code is CRYPTO_ERROR (0x100) plus
the alert (RFC 9001 §4.8). 0-RTT is not offered nor accepted.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from aioquic import tls
from aioquic.buffer import Buffer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from netsched_client.core.errors import PacketError
from netsched_client.core.keys import PacketKeys, packet_keys

CRYPTO_ERROR: Final = 0x100
# What one handle_message call may write per epoch (a certificate chain fits easily).
_OUTPUT_CAPACITY: Final = 1 << 16


class Epoch(IntEnum):
    """The packet-number spaces a handshake writes to (RFC 9001 §4.1.4)."""

    INITIAL = 0
    HANDSHAKE = 1
    ONE_RTT = 2


_TO_TLS: Final = {
    Epoch.INITIAL: tls.Epoch.INITIAL,
    Epoch.HANDSHAKE: tls.Epoch.HANDSHAKE,
    Epoch.ONE_RTT: tls.Epoch.ONE_RTT,
}
_FROM_TLS: Final = {value: key for key, value in _TO_TLS.items()}
_DONE: Final = frozenset({tls.State.CLIENT_POST_HANDSHAKE, tls.State.SERVER_POST_HANDSHAKE})


# The key types aioquic's Context signs with.
PrivateKey = (
    dsa.DSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | rsa.RSAPrivateKey
)


class TlsAlert(PacketError):
    """TLS refused the handshake: CRYPTO_ERROR + the alert's description."""

    def __init__(self, description: int, message: str) -> None:
        super().__init__(message)
        self.error_code = CRYPTO_ERROR + description


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """One side's TLS settings. A client verifies the server against `cafile` / `cadata`
    (the system store when both are None) unless `verify_peer` is False."""

    is_client: bool
    alpn_protocols: tuple[str, ...] = ()
    server_name: str | None = None
    certificate: x509.Certificate | None = None
    certificate_chain: tuple[x509.Certificate, ...] = ()
    private_key: PrivateKey | None = None
    cafile: str | None = None
    cadata: bytes | None = None
    verify_peer: bool = True
    cipher_suites: tuple[int, ...] = ()  # TLS codes; empty: aioquic's defaults


@dataclass(frozen=True, slots=True)
class TrafficKeys:
    """A traffic secret TLS installed: one direction of one space, and its packet keys."""

    epoch: Epoch
    sending: bool
    cipher_suite: int
    secret: bytes
    keys: PacketKeys


class TlsAdapter:
    """One side's handshake: CRYPTO bytes in and out per space, secrets as packet keys."""

    def __init__(self, config: TlsConfig, version: int, transport_parameters: bytes) -> None:
        self.version = version
        self._keys: list[TrafficKeys] = []
        self._output = {epoch: Buffer(capacity=_OUTPUT_CAPACITY) for epoch in _TO_TLS.values()}
        self._context = _context(config)
        self._context.handshake_extensions = [
            (tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS, transport_parameters)
        ]
        self._context.update_traffic_key_cb = self._on_secret

    @property
    def handshake_complete(self) -> bool:
        return self._context.state in _DONE

    @property
    def alpn_protocol(self) -> str | None:
        return self._context.alpn_negotiated

    @property
    def peer_transport_parameters(self) -> bytes | None:
        """The peer's extension payload, once its hello or extensions arrived."""
        for ext_type, ext_data in self._context.received_extensions or []:
            if ext_type == tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS:
                return bytes(ext_data)
        return None

    def start(self) -> None:
        """The client's first flight (the ClientHello, in the Initial space)."""
        self._handle(b"")

    def receive(self, epoch: Epoch, data: bytes) -> None:
        """CRYPTO bytes the peer sent in `epoch`'s space, in order. TLS reassembles its
        messages across calls; the space only matters for the keys it checks next."""
        del epoch  # aioquic's Context reads one ordered stream across spaces
        self._handle(data)

    def take_crypto(self) -> dict[Epoch, bytes]:
        """Handshake bytes written since the last call, by space (spaces with none left out)."""
        out = {}
        for tls_epoch, buf in self._output.items():
            if buf.tell():
                out[_FROM_TLS[tls_epoch]] = buf.data
                buf.seek(0)
        return out

    def take_keys(self) -> list[TrafficKeys]:
        """The secrets installed since the last call, in the order TLS installed them."""
        keys, self._keys = self._keys, []
        return keys

    def _handle(self, data: bytes) -> None:
        try:
            self._context.handle_message(data, self._output)
        except tls.Alert as exc:
            raise TlsAlert(int(exc.description), str(exc) or type(exc).__name__) from None

    def _on_secret(
        self,
        direction: tls.Direction,
        epoch: tls.Epoch,
        cipher_suite: tls.CipherSuite,
        secret: bytes,
    ) -> None:
        if epoch not in _FROM_TLS:
            return  # 0-RTT: never offered, never accepted
        suite = int(cipher_suite)
        self._keys.append(
            TrafficKeys(
                epoch=_FROM_TLS[epoch],
                sending=direction == tls.Direction.ENCRYPT,
                cipher_suite=suite,
                secret=secret,
                keys=packet_keys(self.version, suite, secret),
            )
        )


def _context(config: TlsConfig) -> tls.Context:
    verify = ssl.CERT_REQUIRED if config.is_client and config.verify_peer else ssl.CERT_NONE
    suites = [tls.CipherSuite(code) for code in config.cipher_suites] or None
    context = tls.Context(
        is_client=config.is_client,
        alpn_protocols=list(config.alpn_protocols) or None,
        cadata=config.cadata,
        cafile=config.cafile,
        cipher_suites=suites,
        server_name=config.server_name,
        verify_mode=verify,
    )
    context.certificate = config.certificate
    context.certificate_chain = list(config.certificate_chain)
    context.certificate_private_key = config.private_key
    return context
