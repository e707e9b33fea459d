"""Session tickets any worker or host opens, and 0-RTT accepted once per ticket.

The one module that reaches into aioquic's TLS for tickets. aioquic's server
(1.7.2, `tls.Context._server_handle_finished`) writes NewSessionTicket with a
random 64-byte identity into the handshake output and only then hands the
ticket to the application, so a handler cannot choose the identity the client
gets. `SealedTicketContext` lets aioquic finish the handshake with no ticket
handler, then writes NewSessionTicket itself with the sealed session
(`keys.TicketSealer`) as its identity, so that whoever holds the key opens it:
another worker, another host of the fleet, this one after a restart.

aioquic names used here, pinned by tests/test_ticket_sharing.py (source hashes
and kinds): `Context._server_handle_finished` (overridden: it must send no
ticket when `new_session_ticket_cb` is None), `Context._build_session_ticket`
(derives the resumption secret for a ticket nonce), `Context._psk_key_exchange_mode`
(None when the client cannot resume), `Context._max_early_data` (what a ticket
offers; None: no 0-RTT).

0-RTT anti-replay (RFC 8446 §8, RFC 9001 §9.2): a sealed ticket opens
anywhere, as often as it is presented, so `EdgeTickets` keeps, per process,
the tickets it accepted early data with (`admit_early_data`): one 0-RTT flight
per ticket; a ticket older than `EARLY_DATA_WINDOW_S` resumes without early
data, which bounds the record in time; a full record refuses early data rather
than forget an entry. docs/OPERATIONS.md says why once per process suffices
behind steering by connection ID, and where it does not.
"""

from __future__ import annotations

import datetime
import hashlib
import heapq
import os
import struct

from aioquic import tls
from aioquic.buffer import Buffer

from .keys import TicketSealer
from .tls import HelloRetryContext, enable_hello_retry

# What a ticket says it is good for (aioquic's own value); a fleet's key grace
# (`KeySchedule.grace_s`) shorter than this ends resumption sooner.
TICKET_LIFETIME_S = 86400
# Early data is accepted only with tickets issued this recently; the record of
# tickets used for it is kept as long.
EARLY_DATA_WINDOW_S = 3600.0
# Tickets recorded per process (16 bytes + a heap entry each); when full, early
# data is refused (a 1-RTT resumption) until entries age out.
EARLY_DATA_RECORDS = 100_000
# Clocks of the hosts sharing keys may differ this much (a ticket "from the future").
CLOCK_SKEW_S = 60.0


class EdgeTickets:
    """The session tickets of one edge process: sealed with the shared key in force
    (`sealer`, replaced when keys rotate), and the record of early data accepted."""

    def __init__(
        self,
        sealer: TicketSealer,
        *,
        early_window_s: float = EARLY_DATA_WINDOW_S,
        capacity: int = EARLY_DATA_RECORDS,
    ) -> None:
        self.sealer = sealer
        self._window = early_window_s
        self._capacity = capacity
        self._used: set[bytes] = set()
        self._expiry: list[tuple[float, bytes]] = []  # (forget at, digest), a min-heap

    def seal(self, ticket: tls.SessionTicket, alpn: str) -> bytes:
        # The ALPN is authenticated with the ticket: it resumes only that protocol,
        # as 0-RTT requires (RFC 8446 §4.2.10; aioquic does not check).
        return self.sealer.seal(ticket, context=alpn.encode())

    def open(self, identity: bytes, alpn: str) -> tls.SessionTicket | None:
        return self.sealer.unseal(identity, context=alpn.encode())

    def admit_early_data(self, ticket: tls.SessionTicket, now: datetime.datetime) -> bool:
        """Accept 0-RTT with `ticket` now? True once per ticket, for a recent one."""
        issued = ticket.not_valid_before.timestamp()
        at = now.timestamp()
        if not -CLOCK_SKEW_S <= at - issued <= self._window:
            return False
        self._forget_before(at)
        digest = hashlib.sha256(ticket.ticket).digest()[:16]
        if digest in self._used or len(self._used) >= self._capacity:
            return False
        self._used.add(digest)
        heapq.heappush(self._expiry, (issued + self._window + CLOCK_SKEW_S, digest))
        return True

    def _forget_before(self, at: float) -> None:
        while self._expiry and self._expiry[0][0] < at:
            _, digest = heapq.heappop(self._expiry)
            self._used.discard(digest)

    @property
    def recorded(self) -> int:
        """Tickets in the early-data record now."""
        return len(self._used)


class SealedTicketContext(HelloRetryContext):
    """aioquic's server TLS context (with HelloRetryRequest), issuing sealed tickets."""

    tickets: EdgeTickets | None = None
    resumed_ticket: tls.SessionTicket | None = None  # the ticket a client resumed with

    def _server_handle_finished(self, input_buf: Buffer, output_buf: Buffer) -> None:
        handler, self.new_session_ticket_cb = self.new_session_ticket_cb, None
        try:
            super()._server_handle_finished(input_buf, output_buf)
        finally:
            self.new_session_ticket_cb = handler
        if self.tickets is not None and self._psk_key_exchange_mode is not None:
            self._send_ticket(self.tickets, output_buf)

    def _send_ticket(self, tickets: EdgeTickets, output_buf: Buffer) -> None:
        message = tls.NewSessionTicket(
            ticket_lifetime=TICKET_LIFETIME_S,
            ticket_age_add=struct.unpack("I", os.urandom(4))[0],
            ticket_nonce=b"",
            ticket=b"",
            max_early_data_size=self._max_early_data,
        )
        ticket = self._build_session_ticket(message, self.handshake_extensions)
        message.ticket = ticket.ticket = tickets.seal(ticket, self.alpn_negotiated or "")
        tls.push_new_session_ticket(output_buf, message)
        if self.new_session_ticket_cb is not None:
            self.new_session_ticket_cb(ticket)

    def _open_ticket(self, identity: bytes) -> tls.SessionTicket | None:
        # aioquic negotiates the ALPN before it asks for the ticket.
        assert self.tickets is not None
        self.resumed_ticket = self.tickets.open(identity, self.alpn_negotiated or "")
        return self.resumed_ticket


def adopt(context: tls.Context, tickets: EdgeTickets | None, *, early_data: bool) -> None:
    """Make a server context aioquic built (inside QuicConnection._initialize, no factory
    to pass) issue and open sealed `tickets` (None: no tickets), offering 0-RTT in them
    when `early_data`. The class swap adds behaviour only, as `enable_hello_retry`'s."""
    enable_hello_retry(context)  # refuses a client's context
    context.__class__ = SealedTicketContext
    assert isinstance(context, SealedTicketContext)
    context.tickets = tickets
    if tickets is not None:
        context.get_session_ticket_cb = context._open_ticket
    if not early_data:
        context._max_early_data = None  # tickets then say no early data (aioquic offers it)
