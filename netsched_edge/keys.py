"""Secrets the edge shares among its workers and hosts.

Three keys, each 32 random bytes:

- `retry`: AES-256-GCM key of the Retry tokens, so that a client's token is
  valid on whichever worker (or host) its next Initial reaches;
- `stateless_reset`: HMAC-SHA256 key from which each connection ID's stateless
  reset token is derived (RFC 9000 §10.3), so that a worker that lost a
  connection (restarted, or another host) can still end it for the client;
- `session_ticket`: AES-256-GCM key sealing TLS session tickets
  (`TicketSealer`), so that a client resumes on any worker.

Without `[edge] keys_file` the edge makes a fresh set at start, shared by the
workers of that process tree (`--workers N`). `keys_file` names a file that
several hosts can share; `netsched-edge generate-keys FILE` writes one. Its
format, version 1, is TOML:

    # netsched-edge keys: keep secret (mode 0600), identical on every host
    version = 1
    retry = "<64 hex digits>"
    stateless_reset = "<64 hex digits>"
    session_ticket = "<64 hex digits>"

Every mistake is a `KeysError` naming the file and, where it has one, the line.
"""

from __future__ import annotations

import datetime
import os
import re
import struct
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aioquic import tls
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from netsched_client.runtime.endpoint import EndpointKeys

KEYS_FORMAT_VERSION = 1
KEY_BYTES = 32
_KEY_NAMES = ("retry", "stateless_reset", "session_ticket")


class KeysError(ValueError):
    """A keys file that cannot be used, located as precisely as we can."""

    def __init__(self, message: str, *, file: str, line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        super().__init__(f"{file if line is None else f'{file}:{line}'}: {message}")


@dataclass(frozen=True, slots=True)
class EdgeKeys:
    retry: bytes
    stateless_reset: bytes
    session_ticket: bytes

    def __post_init__(self) -> None:
        for name in _KEY_NAMES:
            if len(getattr(self, name)) != KEY_BYTES:
                raise ValueError(f"{name} must be {KEY_BYTES} bytes")

    @classmethod
    def generate(cls) -> EdgeKeys:
        return cls(*(os.urandom(KEY_BYTES) for _ in _KEY_NAMES))

    def endpoint_keys(self) -> EndpointKeys:
        """What the QUIC endpoint needs (Retry tokens, stateless resets)."""
        return EndpointKeys(retry=self.retry, stateless_reset=self.stateless_reset)

    def ticket_sealer(self) -> TicketSealer:
        return TicketSealer(self.session_ticket)

    def dumps(self) -> str:
        lines = [
            "# netsched-edge keys: keep secret (mode 0600), identical on every host",
            f"version = {KEYS_FORMAT_VERSION}",
        ]
        lines += [f'{name} = "{getattr(self, name).hex()}"' for name in _KEY_NAMES]
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path) -> None:
        """Write the file readable by its owner only; an existing file is not replaced."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.dumps())


def load_keys(path: str | Path) -> EdgeKeys:
    """Read and check the keys file at `path`."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeysError(f"cannot read the keys file: {exc.strerror}", file=file) from None
    return parse_keys(data, file)


def parse_keys(data: bytes, file: str) -> EdgeKeys:
    """Check a keys file's contents; `file` names where they came from in errors
    (a path, or the etcd key the fleet keeps them under)."""
    try:
        text = data.decode("utf-8")
        values = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        bad_line = data.count(b"\n", 0, exc.start) + 1
        raise KeysError("the keys file is not valid UTF-8", file=file, line=bad_line) from None
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        where = int(match.group(1)) if match else None
        raise KeysError(f"not a TOML keys file: {exc}", file=file, line=where) from None

    def line_of(key: str) -> int | None:
        match = re.search(rf"^[ \t]*{key}[ \t]*=", text, re.MULTILINE)
        return None if match is None else text.count("\n", 0, match.start()) + 1

    version = values.get("version")
    if version != KEYS_FORMAT_VERSION:
        raise KeysError(
            f"version must be {KEYS_FORMAT_VERSION}, got {version!r}"
            + (" (a newer netsched-edge wrote it?)" if isinstance(version, int) else ""),
            file=file,
            line=line_of("version"),
        )
    unknown = sorted(set(values) - {"version", *_KEY_NAMES})
    if unknown:
        raise KeysError(f"unknown key {unknown[0]!r}", file=file, line=line_of(unknown[0]))
    keys: dict[str, bytes] = {}
    for name in _KEY_NAMES:
        value = values.get(name)
        if value is None:
            raise KeysError(f"{name} is missing", file=file)
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise KeysError(
                f"{name} must be {KEY_BYTES} bytes as 64 hex digits", file=file, line=line_of(name)
            )
        keys[name] = bytes.fromhex(value)
    if len(set(keys.values())) != len(keys):
        raise KeysError("the keys must differ from each other", file=file)
    return EdgeKeys(**keys)


def edge_keys(keys_file: Path | None) -> EdgeKeys:
    """The keys in `keys_file`, or a fresh set (for one process tree) when None."""
    return EdgeKeys.generate() if keys_file is None else load_keys(keys_file)


# -- session tickets ------------------------------------------------------------------------

_TICKET_VERSION = 1
# age_add, cipher suite, valid from, valid until (seconds), max early data (-1: none;
# aioquic offers 2**32 - 1).
_PLAIN_HEAD = "!IHqqq"
_NONCE = 12
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class TicketSealer:
    """Stateless TLS session tickets: the ticket identity a client presents is the
    session itself, sealed with a key every worker and host shares (AES-256-GCM).

    `seal` turns an aioquic `SessionTicket` into the identity to send in
    NewSessionTicket; `unseal` gives the ticket back (its `ticket` field set to
    the identity), or None for one sealed with another key, altered, expired,
    or sealed with another `context` (bind the ALPN there: a ticket resumes
    only the protocol it was issued for, as 0-RTT requires, RFC 8446 §4.2.10).
    A sealed ticket is not single-use: what limits a replayed 0-RTT flight is the
    record each edge process keeps of the tickets it took early data with
    (`tls_tickets.EdgeTickets`), and the safe methods the edge serves from 0-RTT.

    `previous` keys only open tickets (a fleet's rotated-out key during its
    grace period, docs/FLEET.md): new tickets are sealed with `key`.
    """

    def __init__(self, key: bytes, previous: Sequence[bytes] = ()) -> None:
        self._aead = AESGCM(key)
        self._openers = [self._aead, *(AESGCM(old) for old in previous)]

    def seal(self, ticket: tls.SessionTicket, context: bytes = b"") -> bytes:
        # A server's own tickets name no server (None): sealed as "" (no valid name).
        server_name = (ticket.server_name or "").encode()
        extensions = b"".join(
            struct.pack("!HH", kind, len(value)) + value for kind, value in ticket.other_extensions
        )
        plain = (
            struct.pack(
                _PLAIN_HEAD,
                ticket.age_add,
                int(ticket.cipher_suite),
                _seconds(ticket.not_valid_before),
                _seconds(ticket.not_valid_after),
                -1 if ticket.max_early_data_size is None else ticket.max_early_data_size,
            )
            + _opaque(ticket.resumption_secret)
            + _opaque(server_name)
            + _opaque(extensions)
        )
        nonce = os.urandom(_NONCE)
        header = bytes([_TICKET_VERSION])
        return header + nonce + self._aead.encrypt(nonce, plain, header + context)

    def unseal(
        self, identity: bytes, context: bytes = b"", now: datetime.datetime | None = None
    ) -> tls.SessionTicket | None:
        if len(identity) < 1 + _NONCE + 16 or identity[0] != _TICKET_VERSION:
            return None
        plain = self._open(identity, context)
        if plain is None:
            return None
        age_add, suite, valid_from, valid_until, early = struct.unpack_from(_PLAIN_HEAD, plain)
        offset = struct.calcsize(_PLAIN_HEAD)
        secret, offset = _pull_opaque(plain, offset)
        server_name, offset = _pull_opaque(plain, offset)
        extensions_data, _ = _pull_opaque(plain, offset)
        extensions = []
        at = 0
        while at < len(extensions_data):
            kind, length = struct.unpack_from("!HH", extensions_data, at)
            extensions.append((kind, extensions_data[at + 4 : at + 4 + length]))
            at += 4 + length
        ticket = tls.SessionTicket(
            age_add=age_add,
            cipher_suite=tls.CipherSuite(suite),
            not_valid_after=_EPOCH + datetime.timedelta(seconds=valid_until),
            not_valid_before=_EPOCH + datetime.timedelta(seconds=valid_from),
            resumption_secret=secret,
            server_name=server_name.decode(),
            ticket=identity,
            max_early_data_size=None if early < 0 else early,
            other_extensions=extensions,
        )
        now = now or datetime.datetime.now(datetime.UTC)
        if not ticket.not_valid_before <= now <= ticket.not_valid_after:
            return None
        return ticket

    def _open(self, identity: bytes, context: bytes) -> bytes | None:
        nonce, sealed, header = identity[1 : 1 + _NONCE], identity[1 + _NONCE :], identity[:1]
        for aead in self._openers:
            try:
                return aead.decrypt(nonce, sealed, header + context)
            except InvalidTag:
                continue
        return None


def _seconds(moment: datetime.datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int((moment - _EPOCH).total_seconds())


def _opaque(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _pull_opaque(data: bytes, offset: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from("!H", data, offset)
    start = offset + 2
    return data[start : start + length], start + length
