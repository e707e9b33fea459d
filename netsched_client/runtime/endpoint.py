"""UDP endpoints that host sans-IO QUIC connections.

`ServerEndpoint` routes datagrams to connections by destination connection ID
and creates a connection for each new client Initial that decrypts, within
the caps of `EndpointLimits` (Retry above a load threshold, a small timed table
for connections still waiting for their ClientHello), and answers short-header
packets to unknown connection IDs with stateless resets; its connections share
one `Ticker`, so each tick's sends, every connection's, leave as one batch
(the burst planner's order and grouping). `open_client_endpoint` binds one
socket for one outgoing connection. Batches go out through
`UdpSender.send_batch`, on the batched Cython socket of `netsched_client.io`
(sendmmsg/GSO out, recvmmsg/GRO in).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.crypto import CryptoError, CryptoPair
from aioquic.quic.events import ConnectionIdIssued, ConnectionIdRetired, ConnectionTerminated
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicHeader,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..io import BatchedUdpSocket, UdpSocket, UdpStats, attach, read_waiting
from ..io._common import set_dont_fragment
from .driver import ConnectionDriver, Datagram
from .planner import BurstPlanner
from .refusal import refusal_initial
from .ticker import TickedFlow, Ticker

log = logging.getLogger("netsched.endpoint")

ConnectionFactory = Callable[..., QuicConnection]


class UdpSender:
    """Owns one batched UDP socket (recvmmsg/GRO in, sendmmsg/GSO out).

    A connection's flush leaves as one `send_batch`; received datagrams come in
    batches, one wake-up each, and are handed to `datagram_received`.
    """

    _sock: UdpSocket | None = None
    _detach: Callable[[], None] | None = None

    def bind(
        self,
        family: socket.AddressFamily,
        local: tuple[str, int],
        setup: Callable[[socket.socket], None] | None = None,
    ) -> None:
        self._sock = BatchedUdpSocket(family, local, setup=quic_socket_setup(setup))
        self._detach = attach(asyncio.get_running_loop(), self._sock, self._on_batch)

    def _on_batch(self, batch: list[tuple[bytes, Any]]) -> None:
        for data, addr in batch:
            self.datagram_received(data, addr)

    def read_waiting(self) -> None:
        """Take in what the kernel holds now (the ticker's `read_first`, before timers)."""
        if self._sock is not None:
            read_waiting(self._sock, self._on_batch)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        raise NotImplementedError

    def send_batch(self, datagrams: list[Datagram]) -> None:
        if self._sock is not None:
            self._sock.send_batch([(data, addr) for data, addr, _ in datagrams])

    def close(self) -> None:
        if self._detach is not None:
            self._detach()
            self._detach = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    @property
    def udp_stats(self) -> UdpStats | None:
        """The socket's counters (send syscalls, datagrams, GSO messages); None once closed."""
        return None if self._sock is None else self._sock.stats

    @property
    def local_address(self) -> NetworkAddress:
        assert self._sock is not None
        return cast(NetworkAddress, self._sock.local_address)


@dataclass(frozen=True, slots=True)
class EndpointLimits:
    """What a server endpoint holds for its clients (the edge fills it from `[limits]`).

    A connection is *embryonic* from its first Initial that decrypts until a whole
    ClientHello was processed: such connections live in a table of their own,
    `max_embryonic` of them (the oldest goes first), each for `embryonic_timeout_s`
    at most, and count against neither cap. An Initial that does not decrypt takes
    no state at all. Caps count per client IP address (`max_connections_per_source`
    counts embryonic connections too). Once the connections held (embryonic or
    not) reach `retry_above` of `max_connections`, every new client must answer a
    Retry first (HAProxy's quic-force-retry-threshold); 1.0 never forces it.
    """

    max_connections: int = 10_000
    max_connections_per_source: int = 1_024
    retry_above: float = 0.5
    max_embryonic: int = 1_024
    embryonic_timeout_s: float = 10.0
    log_interval_s: float = 10.0  # at most one line per reason this often
    resets_per_second: float = 100.0  # stateless resets sent, at most
    refusals_per_second: float = 100.0  # stateless refusals (over a cap) sent, at most

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_source", "max_embryonic"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 < self.retry_above <= 1:
            raise ValueError(f"retry_above must be in (0, 1], got {self.retry_above!r}")
        if self.embryonic_timeout_s <= 0 or self.log_interval_s < 0:
            raise ValueError("embryonic_timeout_s must be > 0, log_interval_s >= 0")
        if self.resets_per_second < 0 or self.refusals_per_second < 0:
            raise ValueError("resets_per_second and refusals_per_second must be >= 0")

    @property
    def retry_threshold(self) -> int | None:
        """Connections held from which Retry is required; None: never."""
        if self.retry_above >= 1:
            return None
        return max(0, math.ceil(self.retry_above * self.max_connections))


@dataclass(frozen=True, slots=True)
class IntakeStats:
    """What became of new clients' datagrams, since the endpoint was made (a snapshot)."""

    connections: int  # now: a ClientHello processed
    embryonic: int  # now: an Initial decrypted, no whole ClientHello yet
    undecryptable: int  # Initials that did not decrypt: dropped, no state kept
    over_limit: int  # Initials over a cap (total or per source): refused or dropped
    refused: int  # connections closed with CONNECTION_REFUSED when their ClientHello came
    evicted: int  # embryonic connections dropped (table full or timed out)
    retries: int  # Retry packets sent
    resets: int  # stateless resets sent
    refusals: int  # stateless CONNECTION_REFUSED Initials sent (over a cap)


class RateLimitedLog:
    """One line per `interval` seconds for a kind of event, with the count of those not logged."""

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, kind: str, now: float, message: str, *args: object) -> bool:
        """Log `message` unless a line of this `kind` went out less than `interval` ago."""
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += " (%d more since the last such line)"
            args = (*args, suppressed)
        self._logger.log(level, message, *args)
        return True


def initial_decrypts(data: bytes, header: QuicHeader, header_end: int) -> bool:
    """Whether a client's first Initial opens with the Initial keys of its DCID.

    The keys are public (derived from the DCID), so this proves nothing about the
    sender; it only tells a QUIC client's packet from garbage shaped like one.
    """
    if header.version is None:
        return False
    crypto = CryptoPair()
    try:
        crypto.setup_initial(cid=header.destination_cid, is_client=False, version=header.version)
        crypto.decrypt_packet(data[: header.packet_length], header_end, 0)
    except (CryptoError, ValueError):  # ValueError: an unknown version, a short packet
        return False
    return True


@dataclass(frozen=True, slots=True)
class EndpointKeys:
    """Secrets that endpoints share (the workers of an edge, the hosts of a site).

    `retry` seals Retry tokens (AES-GCM): a token is good on any endpoint with
    the same key. `stateless_reset` derives each connection ID's stateless
    reset token (HMAC-SHA256, RFC 9000 §10.3): any endpoint with the same key
    can end a connection it does not know.

    `previous`: the keys rotated out, still good during a grace period (a fleet's
    rotation): their Retry tokens are accepted, and a stateless reset is sent with
    each key's token, since the endpoint answering a stray packet cannot know
    which key was in force when that CID was issued.
    """

    retry: bytes
    stateless_reset: bytes
    previous: EndpointKeys | None = None

    def __post_init__(self) -> None:
        if len(self.retry) not in (16, 32) or len(self.stateless_reset) < 16:
            raise ValueError("retry must be a 16- or 32-byte key, stateless_reset 16 bytes or more")
        if self.previous is not None and self.previous.previous is not None:
            raise ValueError("previous keys have no previous keys of their own")

    def generations(self) -> list[EndpointKeys]:
        """These keys, then the previous ones if any."""
        return [self] if self.previous is None else [self, self.previous]

    @classmethod
    def generate(cls) -> EndpointKeys:
        return cls(retry=os.urandom(32), stateless_reset=os.urandom(32))

    def reset_token(self, cid: bytes) -> bytes:
        """The stateless reset token of connection ID `cid`."""
        return hmac.new(self.stateless_reset, cid, hashlib.sha256).digest()[:RESET_TOKEN_BYTES]


RESET_TOKEN_BYTES = 16
# RFC 9000 §10.3: 5 bytes that look like a short header's, then the token.
MIN_RESET_BYTES = 5 + RESET_TOKEN_BYTES
# Resets are one byte shorter than what triggered them up to this size (§10.3), then this size.
MAX_RESET_BYTES = 43
# Clients send their Initial again at once after a Retry (RFC 9000 §8.1.4).
RETRY_TOKEN_LIFETIME_S = 30.0
_RETRY_TOKEN_FORMAT = 1
_NONCE_BYTES = 12


class RetryTokens:
    """Retry tokens sealed with a shared key: the client's address (authenticated,
    not stored), the original and Retry connection IDs, and when it was issued.

    `now` is wall-clock seconds, so that endpoints on other hosts (other
    monotonic clocks) agree on a token's age.

    `previous` keys only open tokens (sealed before a rotation).
    """

    def __init__(
        self, key: bytes, lifetime_s: float = RETRY_TOKEN_LIFETIME_S, previous: Sequence[bytes] = ()
    ) -> None:
        self._aead = AESGCM(key)
        self._openers = [self._aead, *(AESGCM(old) for old in previous)]
        self._lifetime = lifetime_s

    def create_token(
        self,
        address: NetworkAddress,
        original_destination_cid: bytes,
        retry_source_cid: bytes,
        now: float,
    ) -> bytes:
        plain = (
            int(now * 1000).to_bytes(8, "big")
            + bytes([len(original_destination_cid)])
            + original_destination_cid
            + retry_source_cid
        )
        nonce = os.urandom(_NONCE_BYTES)
        header = bytes([_RETRY_TOKEN_FORMAT])
        sealed = self._aead.encrypt(nonce, plain, header + _address_bytes(address))
        return header + nonce + sealed

    def validate_token(
        self, address: NetworkAddress, destination_cid: bytes, token: bytes, now: float
    ) -> bytes:
        """The original destination CID the token carries; ValueError if it is not good here."""
        if len(token) < 1 + _NONCE_BYTES + 16 or token[0] != _RETRY_TOKEN_FORMAT:
            raise ValueError("not one of our Retry tokens")
        plain = self._open(token, _address_bytes(address))
        if plain is None:
            raise ValueError("Retry token sealed with another key, or for another address")
        issued = int.from_bytes(plain[:8], "big") / 1000
        odcid_length = plain[8]
        original_destination_cid = plain[9 : 9 + odcid_length]
        # Clients send to the Retry's source CID: the token is good for that one only (§17.2.5.2).
        if plain[9 + odcid_length :] != destination_cid:
            raise ValueError("Retry token for another connection ID")
        if not -1 <= now - issued <= self._lifetime:
            raise ValueError("Retry token expired")
        return original_destination_cid

    def _open(self, token: bytes, address: bytes) -> bytes | None:
        nonce, sealed = token[1 : 1 + _NONCE_BYTES], token[1 + _NONCE_BYTES :]
        for aead in self._openers:
            try:
                return aead.decrypt(nonce, sealed, token[:1] + address)
            except InvalidTag:
                continue
        return None


def _address_bytes(address: NetworkAddress) -> bytes:
    return ipaddress.ip_address(address[0]).packed + int(address[1]).to_bytes(2, "big")


def _retry_tokens(keys: EndpointKeys) -> RetryTokens:
    previous = () if keys.previous is None else (keys.previous.retry,)
    return RetryTokens(keys.retry, previous=previous)


class TokenBucket:
    """At most `rate` events a second, in bursts of up to `rate` (sans-IO: `now` given)."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._tokens = rate
        self._at: float | None = None

    def take(self, now: float) -> bool:
        if self._at is not None and now > self._at:
            self._tokens = min(self._rate, self._tokens + (now - self._at) * self._rate)
        self._at = now if self._at is None else max(self._at, now)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def stateless_reset(received: bytes, token: bytes) -> bytes | None:
    """The stateless reset (RFC 9000 §10.3) answering `received`, or None when none may go.

    Always shorter than what triggered it (two endpoints that both lost state
    cannot ping-pong resets forever), never below the smallest valid size, and
    never an answer to our own reset reflected back.
    """
    size = min(len(received) - 1, MAX_RESET_BYTES)
    if size < MIN_RESET_BYTES or received[-RESET_TOKEN_BYTES:] == token:
        return None
    unpredictable = bytearray(os.urandom(size - RESET_TOKEN_BYTES))
    unpredictable[0] = 0x40 | (unpredictable[0] & 0x3F)  # short header form, fixed bit set
    return bytes(unpredictable) + token


class ServerEndpoint(UdpSender):
    """Accepts QUIC connections on one UDP socket.

    `planner` orders and groups the connections' sends (default: EDF, no
    egress budget); `ticker` runs it and holds the counters. `limits` bounds
    the connection table (EndpointLimits); `retry` = True asks every new
    client for a Retry, whatever the load. `keys` (shared with the other
    endpoints of the edge; default: a fresh set) seal Retry tokens and derive
    stateless reset tokens; `cid_factory` makes the Retry's source CID (the
    worker's routable CIDs, so that the client's next Initial comes back here).

    A short-header packet to a connection ID nobody here knows is answered
    with a stateless reset (rate-limited, `limits.resets_per_second`).

    `busy`, when set, is asked at each new client's first Initial: a reason
    (e.g. the edge is overloaded) turns the client away as a cap does.
    """

    def __init__(
        self,
        configuration: QuicConfiguration,
        on_connection: Callable[[ConnectionDriver], None],
        *,
        connection_factory: ConnectionFactory = QuicConnection,
        retry: bool = False,
        limits: EndpointLimits | None = None,
        keys: EndpointKeys | None = None,
        cid_factory: Callable[[], bytes] | None = None,
        planner: BurstPlanner[TickedFlow] | None = None,
    ) -> None:
        self._configuration = configuration
        self._on_connection = on_connection
        self._factory = connection_factory
        self._retry_always = retry
        self.keys = keys or EndpointKeys.generate()
        self._retry = _retry_tokens(self.keys)
        self._new_cid = cid_factory or (lambda: os.urandom(configuration.connection_id_length))
        self.limits = limits or EndpointLimits()
        self._resets = TokenBucket(self.limits.resets_per_second)
        self._refusals = TokenBucket(self.limits.refusals_per_second)
        self._routes: dict[bytes, ConnectionDriver] = {}
        self._drivers: set[ConnectionDriver] = set()
        self._established: set[ConnectionDriver] = set()
        self._embryonic: dict[ConnectionDriver, float] = {}  # -> when it expires (in order)
        self._source: dict[ConnectionDriver, str] = {}
        self._per_source: dict[str, int] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._undecryptable = self._over_limit = self._refused = 0
        self._evicted = self._retries = self._resets_sent = self._refusals_sent = 0
        self._loop = asyncio.get_running_loop()
        self._log = RateLimitedLog(log, self.limits.log_interval_s)
        self.ticker = Ticker(self.send_batch, self._loop, planner=planner)
        self.ticker.read_first = self.read_waiting
        self.busy: Callable[[], str | None] | None = None

    @property
    def connections(self) -> frozenset[ConnectionDriver]:
        return frozenset(self._drivers)

    def set_keys(self, keys: EndpointKeys) -> None:
        """New keys (a rotation): Retry tokens sealed with them, and with the previous
        ones accepted; resets sent for each; established connections keep their CIDs."""
        self.keys = keys
        self._retry = _retry_tokens(keys)

    def set_limits(self, limits: EndpointLimits) -> None:
        """New caps for new clients (a reload); connections already counted stay."""
        self.limits = limits
        self._resets = TokenBucket(limits.resets_per_second)
        self._refusals = TokenBucket(limits.refusals_per_second)
        self._log = RateLimitedLog(log, limits.log_interval_s)

    @property
    def intake(self) -> IntakeStats:
        return IntakeStats(
            connections=len(self._established),
            embryonic=len(self._embryonic),
            undecryptable=self._undecryptable,
            over_limit=self._over_limit,
            refused=self._refused,
            evicted=self._evicted,
            retries=self._retries,
            resets=self._resets_sent,
            refusals=self._refusals_sent,
        )

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        buf = Buffer(data=data)
        try:
            header = pull_quic_header(buf, host_cid_length=self._configuration.connection_id_length)
        except ValueError:
            return  # not QUIC, or mangled beyond parsing: drop
        driver = self._routes.get(header.destination_cid)
        if driver is not None:
            driver.datagram_received(data, addr)
            if driver in self._embryonic:
                self._check_client_hello(driver)
            return
        if header.version is None:
            self._reset(data, header.destination_cid, addr)
            return
        if header.packet_type == QuicPacketType.VERSION_NEGOTIATION:
            return  # never answer a VN with a VN (reflection loops)
        if len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            return  # RFC 9000 §5.2.2: no client's first datagram is that small, and no VN
        if header.version not in self._configuration.supported_versions:
            self._send(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=self._configuration.supported_versions,
                ),
                addr,
            )
            return
        if header.packet_type != QuicPacketType.INITIAL:
            return
        self._on_new_initial(data, addr, header, buf.tell())

    # -- intake: a client's first Initial -----------------------------------------------------

    def _on_new_initial(
        self, data: bytes, addr: NetworkAddress, header: QuicHeader, header_end: int
    ) -> None:
        now = self._loop.time()
        self._expire_embryonic(now)
        if not initial_decrypts(data, header, header_end):
            self._undecryptable += 1
            self._log.log(
                logging.INFO,
                "undecryptable",
                now,
                "dropping Initials that do not decrypt (%s)",
                addr[0],
            )
            return
        source = str(addr[0])
        limits = self.limits
        if self._per_source.get(source, 0) >= limits.max_connections_per_source:
            cap = limits.max_connections_per_source
            self._refuse(
                header,
                addr,
                now,
                "per-source",
                f"per-source connection limit {cap} reached",
                "too many connections from this address",
            )
            return
        if len(self._established) >= limits.max_connections:
            cap = limits.max_connections
            self._refuse(
                header, addr, now, "total", f"connection limit {cap} reached", "server busy"
            )
            return
        if self.busy is not None and (busy := self.busy()) is not None:
            self._refuse(header, addr, now, "busy", busy, "server busy")
            return
        original_dcid: bytes | None = header.destination_cid
        retry_scid: bytes | None = None
        if header.token:
            try:
                original_dcid = self._retry.validate_token(
                    addr, header.destination_cid, header.token, time.time()
                )
                retry_scid = header.destination_cid
            except ValueError:
                if self._retry_required():
                    return  # forged or stale token: drop (RFC 9000 §8.1.3 allows it)
        if retry_scid is None and self._retry_required():
            self._send_retry(addr, header.destination_cid, header.source_cid, header.version, now)
            return
        self._accept(data, addr, source, header.destination_cid, original_dcid, retry_scid, now)

    def _retry_required(self) -> bool:
        if self._retry_always:
            return True
        threshold = self.limits.retry_threshold
        return threshold is not None and len(self._established) + len(self._embryonic) >= threshold

    def _refuse(
        self, header: QuicHeader, addr: NetworkAddress, now: float, kind: str, why: str, reason: str
    ) -> None:
        """Turn a client away (over a cap, or `busy`): a stateless CONNECTION_REFUSED Initial
        with `reason` (the client fails in a round trip, not at its handshake timeout),
        within `refusals_per_second`; beyond that budget the Initial is dropped. `why` is
        logged, at most once per interval and `kind`."""
        self._over_limit += 1
        version, answered = header.version, False
        if version is not None and self._refusals.take(now):
            cids = (header.destination_cid, header.source_cid)
            self._send(refusal_initial(version, *cids, reason, self._new_cid()), addr)
            self._refusals_sent += 1
            answered = True
        self._log.log(
            logging.WARNING,
            kind,
            now,
            "%s: %s Initials (%s)",
            why,
            "refusing" if answered else "dropping",
            addr[0],
        )

    def _accept(
        self,
        data: bytes,
        addr: NetworkAddress,
        source: str,
        dcid: bytes,
        original_dcid: bytes | None,
        retry_scid: bytes | None,
        now: float,
    ) -> None:
        if len(self._embryonic) >= self.limits.max_embryonic:
            oldest = next(iter(self._embryonic))
            self._log.log(
                logging.WARNING,
                "embryonic",
                now,
                "%d connections wait for a ClientHello: dropping the oldest",
                self.limits.max_embryonic,
            )
            self._evict(oldest, "too many handshakes under way")
        quic = self._factory(
            configuration=self._configuration,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_scid,
        )
        driver = ConnectionDriver(quic, ticker=self.ticker)
        driver.add_event_handler(lambda event: self._on_event(driver, event))
        self._drivers.add(driver)
        self._source[driver] = source
        self._per_source[source] = self._per_source.get(source, 0) + 1
        self._embryonic[driver] = now + self.limits.embryonic_timeout_s
        self._arm_expiry()
        self._routes[dcid] = driver
        self._routes[quic.host_cid] = driver
        self._on_connection(driver)
        driver.datagram_received(data, addr)
        if driver in self._embryonic:
            self._check_client_hello(driver)

    def _check_client_hello(self, driver: ConnectionDriver) -> None:
        """Count an embryonic connection once its ClientHello was processed."""
        if not client_hello_processed(driver.quic):
            return
        del self._embryonic[driver]
        source = self._source[driver]
        # Sources were counted when their Initials came; the total may have filled since.
        if len(self._established) >= self.limits.max_connections:
            self._refused += 1
            self._log.log(
                logging.WARNING,
                "refused",
                self._loop.time(),
                "connection limit reached: refusing a connection from %s",
                source,
            )
            self._release(driver)
            driver.close(QuicErrorCode.CONNECTION_REFUSED, "server busy", transport=True)
            return
        self._established.add(driver)

    def _evict(self, driver: ConnectionDriver, reason: str) -> None:
        self._evicted += 1
        self._release(driver)
        driver.abandon(QuicErrorCode.CONNECTION_REFUSED, reason)

    def _expire_embryonic(self, now: float) -> None:
        # Oldest first, and they expire in that order (one timeout for all).
        while self._embryonic:
            driver, at = next(iter(self._embryonic.items()))
            if at > now:
                return
            self._evict(driver, "no ClientHello in time")

    def _arm_expiry(self) -> None:
        if self._expiry is not None or not self._embryonic:
            return
        first = next(iter(self._embryonic.values()))
        self._expiry = self._loop.call_at(first, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry = None
        self._expire_embryonic(self._loop.time())
        self._arm_expiry()

    def _release(self, driver: ConnectionDriver) -> None:
        """Stop counting `driver` against any cap (it is closing or gone)."""
        self._embryonic.pop(driver, None)
        self._established.discard(driver)
        source = self._source.pop(driver, None)
        if source is not None:
            left = self._per_source[source] - 1
            if left:
                self._per_source[source] = left
            else:
                del self._per_source[source]

    def _send_retry(
        self, addr: NetworkAddress, dcid: bytes, scid: bytes, version: int | None, now: float
    ) -> None:
        assert version is not None
        self._retries += 1
        source_cid = self._new_cid()
        token = self._retry.create_token(addr, dcid, source_cid, time.time())
        self._send(
            encode_quic_retry(
                version=version,
                source_cid=source_cid,
                destination_cid=scid,
                original_destination_cid=dcid,
                retry_token=token,
            ),
            addr,
        )

    def _reset(self, data: bytes, cid: bytes, addr: NetworkAddress) -> None:
        for keys in self.keys.generations():
            reset = stateless_reset(data, keys.reset_token(cid))
            if reset is not None and self._resets.take(self._loop.time()):
                self._resets_sent += 1
                self._send(reset, addr)

    def _on_event(self, driver: ConnectionDriver, event: object) -> None:
        if isinstance(event, ConnectionIdIssued):
            self._routes[event.connection_id] = driver
        elif isinstance(event, ConnectionIdRetired):
            self._routes.pop(event.connection_id, None)
        elif isinstance(event, ConnectionTerminated):
            self._release(driver)
            self._drivers.discard(driver)
            for cid in [cid for cid, d in self._routes.items() if d is driver]:
                del self._routes[cid]

    def _send(self, data: bytes, addr: NetworkAddress) -> None:
        self.send_batch([(data, addr, 0)])

    def close_all(self, error_code: int = 0, reason: str = "") -> None:
        for driver in list(self._drivers):
            driver.close(error_code, reason)

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for driver in list(self._drivers):
            driver.end_closing()  # their qlog traces end too: nothing is lost at a stop
        self.ticker.close()
        super().close()


def client_hello_processed(quic: QuicConnection) -> bool:
    """Whether a server connection's TLS has taken a whole ClientHello (not just an Initial)."""
    context = getattr(quic, "tls", None)  # made with the first Initial that arrived
    return context is not None and context.state is not tls.State.SERVER_EXPECT_CLIENT_HELLO


class ClientEndpoint(UdpSender):
    """The sockets of one outgoing connection: the primary one (path 0) and one
    per extra path, each bound to the local address the path was opened from."""

    def __init__(self) -> None:
        self.driver: ConnectionDriver | None = None
        self._path_sockets: dict[int, PathSocket] = {}
        self.heard = asyncio.Event()  # a datagram arrived: someone listens (port_unreachable)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        if not self.heard.is_set():
            self.heard.set()
        if self.driver is not None:
            self.driver.datagram_received(data, addr)

    def send_batch(self, datagrams: list[Datagram]) -> None:
        if not self._path_sockets:
            super().send_batch(datagrams)
            return
        # One batch per socket, each path's datagrams in their order.
        batches: dict[UdpSender, list[Datagram]] = {}
        for datagram in datagrams:
            sender: UdpSender = self._path_sockets.get(datagram[2], self)
            batches.setdefault(sender, []).append(datagram)
        for sender, batch in batches.items():
            if sender is self:
                super().send_batch(batch)
            else:
                sender.send_batch(batch)

    async def open_path_socket(self, family: socket.AddressFamily, local_host: str) -> PathSocket:
        sock = PathSocket(self)
        sock.bind(family, (local_host, 0))
        return sock

    def read_waiting(self) -> None:
        super().read_waiting()
        for sock in list(self._path_sockets.values()):
            sock.read_waiting()

    def bind_path(self, path_id: int, sock: PathSocket) -> PathSocket | None:
        """`path_id`'s datagrams leave from `sock` now; the socket it replaces, if any."""
        previous = self._path_sockets.get(path_id)
        self._path_sockets[path_id] = sock
        return previous

    def release_path(self, path_id: int) -> None:
        sock = self._path_sockets.pop(path_id, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        for path_id in list(self._path_sockets):
            self.release_path(path_id)
        super().close()


class PathSocket(UdpSender):
    """An extra path's socket: what it receives goes to the owner's connection."""

    def __init__(self, owner: ClientEndpoint) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self._owner.datagram_received(data, addr)


async def resolve(host: str, port: int) -> tuple[socket.AddressFamily, NetworkAddress]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    return family, cast(NetworkAddress, sockaddr)


# How long a client waits to hear from the server before it probes for ICMP port
# unreachable: a live server answers within a round trip, so the probe rarely leaves.
PROBE_AFTER_S = 0.5


async def port_unreachable(
    family: socket.AddressFamily, addr: NetworkAddress, heard: asyncio.Event
) -> bool:
    """True once the OS reports that nothing listens at `addr` (ICMP port unreachable).

    Only a connected UDP socket hears of ICMP errors (without IP_RECVERR, whose error
    queue the batched sockets do not read), so this probes from a socket of its own
    with a zero-length datagram, which any QUIC server discards (RFC 9000 §14.1), and
    only if `heard` (the connection received a datagram) is still unset after
    PROBE_AFTER_S. False when the server was heard or the probe cannot be sent; never
    returns while the path stays silent: the caller cancels it.
    """
    try:
        async with asyncio.timeout(PROBE_AFTER_S):
            await heard.wait()
            return False
    except TimeoutError:
        pass
    loop = asyncio.get_running_loop()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.connect(addr)
            sock.send(b"")
            while True:
                await loop.sock_recv(sock, 2048)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False


async def open_server_endpoint(
    host: str,
    port: int,
    endpoint_factory: Callable[[], ServerEndpoint],
    setup: Callable[[socket.socket], None] | None = None,
) -> ServerEndpoint:
    """Bind a server endpoint; `setup` prepares the socket before bind (e.g. SO_REUSEPORT)."""
    family, addr = await resolve(host, port)
    endpoint = endpoint_factory()
    endpoint.bind(family, addr[:2], setup)
    return endpoint


async def open_client_endpoint(
    family: socket.AddressFamily, local_host: str | None = None, local_port: int = 0
) -> ClientEndpoint:
    if local_host is None:
        local_host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    endpoint = ClientEndpoint()
    endpoint.bind(family, (local_host, local_port))
    return endpoint


def quic_socket_setup(
    setup: Callable[[socket.socket], None] | None,
) -> Callable[[socket.socket], None]:
    """DF on every QUIC socket (the path MTU search needs probes that fail, not fragment),
    then the caller's own setup."""

    def run(sock: socket.socket) -> None:
        set_dont_fragment(sock)
        if setup is not None:
            setup(sock)

    return run
